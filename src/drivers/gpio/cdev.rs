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

    /// One kernel request per line: uAPI v1 can only detect edges on single-line requests and
    /// needs every line of a request configured alike, and v2 has room for at most 10
    /// distinct line configurations per request. If one line cannot be had, the ones
    /// already requested are released (dropped) with the error.
    fn request(&mut self, consumer: &str, lines: &[LineSpec]) -> Result<CdevLines, String> {
        let mut held = Vec::with_capacity(lines.len());
        for l in lines {
            let mut b = Request::builder();
            b.on_chip(&self.path)
                .with_consumer(consumer)
                .with_line(l.offset);
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
            let req = b.request().map_err(|e| {
                format!(
                    "cannot request line {} of {}: {e}",
                    l.offset,
                    self.path.display()
                )
            })?;
            held.push(Held {
                offset: l.offset,
                edges: l.edges,
                req: AsyncRequest::new(req),
            });
        }
        Ok(CdevLines { held })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

struct Held {
    offset: u32,
    edges: bool,
    req: AsyncRequest,
}

pub struct CdevLines {
    held: Vec<Held>,
}

impl CdevLines {
    fn req(&self, offset: u32) -> Result<&Request, String> {
        self.held
            .iter()
            .find(|h| h.offset == offset)
            .map(|h| h.req.as_ref())
            .ok_or_else(|| format!("line {offset} is not requested"))
    }
}

impl Lines for CdevLines {
    fn get(&mut self, offset: u32) -> Result<bool, String> {
        self.req(offset)?
            .value(offset)
            .map(|v| v == Value::Active)
            .map_err(|e| e.to_string())
    }

    fn set(&mut self, offset: u32, active: bool) -> Result<(), String> {
        self.req(offset)?
            .set_value(offset, Value::from(active))
            .map_err(|e| e.to_string())
    }

    async fn next_edge(&mut self) -> Result<(u32, bool), String> {
        let waits: Vec<_> = self
            .held
            .iter()
            .filter(|h| h.edges)
            .map(|h| Box::pin(h.req.read_edge_event()))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        // Each read is cancel-safe, so dropping the others loses no event.
        let (e, _, _) = futures_util::future::select_all(waits).await;
        let e = e.map_err(|e| e.to_string())?;
        Ok((e.offset, e.kind == EdgeKind::Rising))
    }
}
