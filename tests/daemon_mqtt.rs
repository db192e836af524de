//! The real `tidegate run` binary serving MQTT to Mosquitto's own command-line clients.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// True when `cmd` exists. In CI (`CI=true`) a missing test tool is a failure, not a skip.
fn have(cmd: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{cmd} is missing; .ci/run installs it (Debian package mosquitto-clients)"
        );
        eprintln!("skipping: {cmd} not installed (apt-get install mosquitto-clients)");
    }
    found
}

#[test]
fn mosquitto_sub_and_pub_at_once_both_protocols() {
    if !have("mosquitto_sub") || !have("mosquitto_pub") {
        return;
    }
    let cfg = TempConfig::new("");
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(&mut daemon, "tidegate is running", Duration::from_secs(20));
    let port = mqtt_port(&log).to_string();
    for version in ["mqttv311", "mqttv5"] {
        let sub = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "#",
                "-v",
                "-C",
                "2",
                "-W",
                "10",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        for (topic, qos) in [("site/a", "1"), ("site/b", "2")] {
            let ok = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-t",
                    topic,
                    "-q",
                    qos,
                    "-m",
                    &format!("hello {version}"),
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mosquitto_pub {version} failed");
        }
        let out = sub.wait_with_output().unwrap();
        assert!(out.status.success(), "mosquitto_sub {version}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                format!("site/a hello {version}"),
                format!("site/b hello {version}")
            ],
        );
    }
    signal(&daemon, "TERM");
    let (status, _) = wait_exit(&mut daemon, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}
