//! The embedded MQTT broker (MQTT 3.1, 3.1.1 and 5.0 on one port).
//!
//! So far: [`codec`], the strict, fuzzable packet codec the broker is built on.

pub mod codec;
