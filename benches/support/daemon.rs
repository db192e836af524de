//! Shared by the benches that drive the release daemon: start `tidegate run -c CONFIG` and
//! read the web and MQTT ports it bound from its log, up to "tidegate is running".

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// A started daemon: the process, the rest of its log, and the ports it bound (0 when that
/// listener is off).
pub struct Daemon {
    pub child: Child,
    pub log: std::io::BufReader<ChildStderr>,
    pub web: u16,
    pub mqtt: u16,
}

/// Starts `bin run -c config` and waits for it to be running.
pub fn start(bin: &Path, config: &Path) -> Daemon {
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut web, mut mqtt) = (0u16, 0u16);
    let mut line = String::new();
    while log.read_line(&mut line).unwrap() > 0 {
        let port = |marker: &str| -> Option<u16> {
            let rest = line.split(marker).nth(1)?;
            rest.split_whitespace()
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        if let Some(p) = port("Web UI listening on ") {
            web = p;
        }
        if let Some(p) = port("MQTT broker listening on ") {
            mqtt = p;
        }
        if line.contains("tidegate is running") {
            break;
        }
        line.clear();
    }
    Daemon {
        child,
        log,
        web,
        mqtt,
    }
}
