//! The daemon's one wall clock: Unix time in milliseconds, as readings' `ts`, the broker
//! store's expiry times, the uplink ledger and the config history use it.

/// Unix time in milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
