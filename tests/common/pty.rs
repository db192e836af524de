//! A pseudo-terminal pair made by socat, standing in for a serial port (USB adapter, RS-485
//! bus): the daemon opens one end, the test the other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A pseudo-terminal pair: the daemon opens `dev`, the test is the sensor on `peer`.
pub struct Pty {
    child: Child,
    pub dev: PathBuf,
    pub peer: PathBuf,
}

impl Pty {
    pub fn new(dir: &Path, name: &str) -> Pty {
        let dev = dir.join(format!("{name}-dev"));
        let peer = dir.join(format!("{name}-peer"));
        Pty::start(dev, peer)
    }

    pub fn start(dev: PathBuf, peer: PathBuf) -> Pty {
        // Stale links from a killed socat would stop a new one from linking.
        let _ = std::fs::remove_file(&dev);
        let _ = std::fs::remove_file(&peer);
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", peer.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs");
        let start = std::time::Instant::now();
        while !(dev.exists() && peer.exists()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "socat made no pty pair"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Pty { child, dev, peer }
    }

    /// The sensor's end.
    pub fn open_peer(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.peer)
            .unwrap()
    }

    /// Ends socat (a USB adapter unplugged): both ends of the pair vanish.
    pub fn unplug(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new pair under the same names (the adapter plugged in again).
    pub fn replug(&mut self) {
        self.unplug();
        *self = Pty::start(self.dev.clone(), self.peer.clone());
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
