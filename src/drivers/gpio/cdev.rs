//! The real backend: the Linux GPIO character device through the `gpiocdev` crate (pure Rust,
//! uAPI v2, falling back to v1 on kernels before 5.10). Not exercised by the test suite: the
//! machines tidegate is built and tested on have no GPIO chip (and no gpio-sim module); the
//! driver logic above it is tested against [`super::sim`].

use super::{Chip, LineSpec, Lines};
use crate::config::Bias;
use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
use gpiocdev::tokio::AsyncRequest;
use gpiocdev::Request;
use std::path::PathBuf;

/// A chip by name (`gpiochip0` is `/dev/gpiochip0`) or path.
pub struct Cdev {
    path: PathBuf,
}

impl Cdev {
    pub fn new(chip: &str) -> Self {
        let path = if chip.starts_with('/') {
            PathBuf::from(chip)
        } else {
            PathBuf::from("/dev").join(chip)
        };
        Cdev { path }
    }
}

impl Chip for Cdev {
    type Lines = CdevLines;

    fn request(&mut self, consumer: &str, lines: &[LineSpec]) -> Result<CdevLines, String> {
        let mut b = Request::builder();
        b.on_chip(&self.path).with_consumer(consumer);
        for l in lines {
            b.with_line(l.offset);
            match l.output {
                Some(initial) => {
                    b.as_output(Value::from(initial));
                }
                None => {
                    b.as_input().with_bias(l.bias.and_then(|b| match b {
                        Bias::AsIs => None,
                        Bias::Disabled => Some(gpiocdev::line::Bias::Disabled),
                        Bias::PullUp => Some(gpiocdev::line::Bias::PullUp),
                        Bias::PullDown => Some(gpiocdev::line::Bias::PullDown),
                    }));
                    if l.edges {
                        b.with_edge_detection(EdgeDetection::BothEdges);
                    }
                }
            }
            if l.active_low {
                b.as_active_low();
            }
        }
        let offsets: Vec<String> = lines.iter().map(|l| l.offset.to_string()).collect();
        let req = b.request().map_err(|e| {
            format!(
                "cannot request lines {} of {}: {e}",
                offsets.join(", "),
                self.path.display()
            )
        })?;
        Ok(CdevLines {
            req: AsyncRequest::new(req),
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

pub struct CdevLines {
    req: AsyncRequest,
}

impl Lines for CdevLines {
    fn get(&mut self, offset: u32) -> Result<bool, String> {
        let req: &Request = self.req.as_ref();
        req.value(offset)
            .map(|v| v == Value::Active)
            .map_err(|e| e.to_string())
    }

    fn set(&mut self, offset: u32, active: bool) -> Result<(), String> {
        let req: &Request = self.req.as_ref();
        req.set_value(offset, Value::from(active))
            .map_err(|e| e.to_string())
    }

    async fn next_edge(&mut self) -> Result<(u32, bool), String> {
        let e = self
            .req
            .read_edge_event()
            .await
            .map_err(|e| e.to_string())?;
        Ok((e.offset, e.kind == EdgeKind::Rising))
    }
}
