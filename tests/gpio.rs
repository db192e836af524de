//! The gpio driver's real backend (the GPIO character device) through the `tidegate run`
//! binary. There is no GPIO chip where these tests run (nor the gpio-sim kernel module), so
//! this covers what can be covered for real: a chip that is missing or is not a GPIO chip
//! puts the device offline with the reason, and the daemon keeps serving. Edges, debounce and
//! outputs are tested against the simulated chip in `src/drivers/gpio/tests.rs`.

mod common;

use common::mqtt::{options, Client};
use common::*;
use rumqttc::{Event, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;

async fn status_of(addr: SocketAddr, device: &str) -> serde_json::Value {
    let (c, _) = Client::connect(options(addr, "gpio-test")).await;
    let mut c = c;
    c.client
        .subscribe(format!("devices/{device}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let topic = format!("devices/{device}/$status");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = tokio::time::timeout(left, c.events.recv())
            .await
            .expect("an offline status in time")
            .expect("client alive");
        if let Ok(Event::Incoming(Packet::Publish(p))) = e {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            if p.topic == topic && v["online"] == false {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_chip_puts_the_device_offline_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gpiochip9");
    let not_a_chip = dir.path().join("gpiochip8");
    std::fs::write(&not_a_chip, b"plain file").unwrap();
    let cfg = TempConfig::new(&format!(
        "devices:\n  - name: door\n    driver: gpio\n    chip: {}\n    poll_interval: 200ms\n    tags:\n      - {{name: open, line: 17, direction: input, edge: both, debounce: 20ms}}\n      - {{name: siren, line: 27, direction: output, writable: true}}\n  - name: gate\n    driver: gpio\n    chip: {}\n    poll_interval: 200ms\n    tags: [{{name: in, line: 3, direction: input}}]\n",
        missing.display(),
        not_a_chip.display()
    ));
    let mut daemon = Daemon(Some(spawn_run(&cfg.path)));
    let child = daemon.0.as_mut().unwrap();
    let log = stderr_until(child, "tidegate is running", Duration::from_secs(30));
    if let Some(mut err) = child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", mqtt_port(&log)).parse().unwrap();

    let s = status_of(addr, "door").await;
    let error = s["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("cannot request line 17 of {}:", missing.display())),
        "{s}"
    );
    let s = status_of(addr, "gate").await;
    let error = s["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "cannot request line 3 of {}:",
            not_a_chip.display()
        )),
        "{s}"
    );
    let mut child = daemon.0.take().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "still serving");
    signal(&child, "TERM");
    let (status, _) = wait_exit(&mut child, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}

/// The daemon under test; killed if the test fails before stopping it.
struct Daemon(Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
