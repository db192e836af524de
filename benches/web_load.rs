//! The web server under load, against the real release daemon (issue #6's server-side figures):
//!
//! 1. Dashboard load: time to first byte of `/` and the full load of `/` plus every asset it
//!    names (sequential, one keep-alive connection, as a browser's first view without cache),
//!    with and without gzip; median and p95 over N rounds.
//! 2. The daemon's RSS idle, then with 3 SSE clients connected.
//! 3. SSE delivery with 1000 tags changing every second (10 simulated devices × 100 random
//!    tags at 1 s): value events per second each SSE client receives, against the reference
//!    in the same run — the readings per second an MQTT subscriber to `devices/#` receives
//!    from the broker.
//!
//! Run: `cargo build --release && cargo bench --bench web_load` (uses target/release/tidegate).

#[path = "support/daemon.rs"]
mod daemon;

use std::io::{BufRead, Read};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 50;
const SSE_SECONDS: u64 = 20;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tidegate");
    assert!(bin.exists(), "build it first: cargo build --release");
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "gateway:\n  data_dir: {}\nbroker:\n  listeners: [{{bind: 127.0.0.1:0}}]\nweb:\n  bind: 127.0.0.1:0\nlog:\n  format: text\ndevices:\n",
        dir.path().join("data").display()
    );
    for d in 0..10 {
        config.push_str(&format!(
            "  - name: dev{d}\n    driver: simulated\n    poll_interval: 1s\n    tags:\n"
        ));
        for t in 0..100 {
            config.push_str(&format!(
                "      - {{ name: t{t}, signal: random, min: 0, max: 1000 }}\n"
            ));
        }
    }
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, config).unwrap();
    let daemon::Daemon {
        mut child,
        log: mut err,
        web,
        mqtt,
    } = daemon::start(bin.as_ref(), &path);
    let pid = child.id();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    let base = format!("http://127.0.0.1:{web}");
    let password = std::fs::read_to_string(dir.path().join("data/initial-admin-password"))
        .unwrap()
        .trim()
        .to_string();

    // 1. Dashboard load.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let index = agent
        .get(&format!("{base}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let mut assets: Vec<String> = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in index.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            if !url.starts_with("http")
                && !url.starts_with('#')
                && !assets.contains(&url.to_string())
            {
                assets.push(url.to_string());
            }
        }
    }
    // Modules import others: load those named with `from './x.js'` too.
    let mut i = 0;
    while i < assets.len() {
        if assets[i].ends_with(".js") {
            let text = agent
                .get(&format!(
                    "{base}/{}",
                    assets[i].trim_start_matches(['.', '/'])
                ))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap_or_default();
            for part in text
                .split("from '")
                .skip(1)
                .chain(text.split("from \"").skip(1))
            {
                let url = part.split(['\'', '"']).next().unwrap().to_string();
                let url = url.trim_start_matches("./").to_string();
                if url.ends_with(".js")
                    && !assets
                        .iter()
                        .any(|a| a.trim_start_matches(['.', '/']) == url)
                {
                    assets.push(url);
                }
            }
        }
        i += 1;
    }
    println!(
        "dashboard: / + {} assets: {}",
        assets.len(),
        assets.join(" ")
    );
    for gzip in [false, true] {
        let (mut ttfb, mut full, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        for _ in 0..ROUNDS {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            let get = |p: &str| {
                let mut r = agent.get(&format!("{base}/{p}"));
                if gzip {
                    r = r.header("accept-encoding", "gzip");
                }
                r
            };
            let start = Instant::now();
            let mut resp = get("").call().unwrap();
            ttfb.push(start.elapsed().as_secs_f64() * 1000.0);
            let mut total = resp.body_mut().read_to_vec().unwrap().len();
            for a in &assets {
                total += get(a.trim_start_matches(['.', '/']))
                    .call()
                    .unwrap()
                    .body_mut()
                    .read_to_vec()
                    .unwrap()
                    .len();
            }
            full.push(start.elapsed().as_secs_f64() * 1000.0);
            bytes = total;
        }
        println!(
            "dashboard {}: TTFB median {:.2} ms p95 {:.2} ms; full load median {:.2} ms p95 {:.2} ms; {} bytes on the wire (bodies)",
            if gzip { "gzip" } else { "identity" },
            percentile(&mut ttfb.clone(), 0.5),
            percentile(&mut ttfb, 0.95),
            percentile(&mut full.clone(), 0.5),
            percentile(&mut full, 0.95),
            bytes
        );
    }

    // Log in (one session shared by the SSE clients, as three tabs of one browser would).
    let mut resp = agent
        .post(&format!("{base}/api/login"))
        .header("content-type", "application/json")
        .send(format!(r#"{{"username":"admin","password":"{password}"}}"#))
        .unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let _ = resp.body_mut().read_to_string();

    std::thread::sleep(Duration::from_secs(3));
    let idle = rss_kib(pid);

    // 2 + 3. Three SSE clients and an MQTT subscriber, counted over the same window.
    let counts: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let lagged = Arc::new(AtomicU64::new(0));
    for c in &counts {
        let (c, lagged, cookie, base) = (c.clone(), lagged.clone(), cookie.clone(), base.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            let resp = agent
                .get(&format!("{base}/api/events?logs=0"))
                .header("cookie", &cookie)
                .call()
                .unwrap();
            let mut lines = std::io::BufReader::new(resp.into_body().into_reader()).lines();
            while let Some(Ok(line)) = lines.next() {
                if line == "event: value" {
                    c.fetch_add(1, Ordering::Relaxed);
                } else if line == "event: lagged" {
                    lagged.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let mqtt_count = Arc::new(AtomicU64::new(0));
    {
        let mqtt_count = mqtt_count.clone();
        std::thread::spawn(move || {
            let mut opts = rumqttc::MqttOptions::new("bench-ref", "127.0.0.1", mqtt);
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut conn) = rumqttc::Client::new(opts, 1000);
            client
                .subscribe("devices/+/+", rumqttc::QoS::AtMostOnce)
                .unwrap();
            for ev in conn.iter() {
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev {
                    if !p.topic.ends_with("$status") {
                        mqtt_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    let start: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let mqtt_start = mqtt_count.load(Ordering::Relaxed);
    let mut rss_max = 0;
    let t0 = Instant::now();
    for _ in 0..SSE_SECONDS {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(rss_kib(pid));
    }
    let secs = t0.elapsed().as_secs_f64();
    let rates: Vec<f64> = counts
        .iter()
        .zip(&start)
        .map(|(c, s)| (c.load(Ordering::Relaxed) - s) as f64 / secs)
        .collect();
    let mqtt_rate = (mqtt_count.load(Ordering::Relaxed) - mqtt_start) as f64 / secs;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = cpu.split(") ").nth(1).unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    println!("RSS idle (1000 tags at 1 s, logged in, no SSE): {idle} KiB");
    println!("RSS with 3 SSE clients (max over {SSE_SECONDS} s): {rss_max} KiB");
    println!(
        "SSE value events/s per client: {} (lagged events: {}); reference, MQTT subscriber to devices/+/+: {:.0} msg/s",
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        lagged.load(Ordering::Relaxed),
        mqtt_rate
    );
    println!(
        "daemon CPU time since start: {:.1} s (user+sys)",
        ticks / 100.0
    );
    let _ = child.kill();
    let _ = child.wait();
}
