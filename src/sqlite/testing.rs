//! Test support shared by the broker store's and the uplink queue's tests: re-running the
//! test binary as a child process (to `kill -9` it mid-write, or to run it under
//! `RLIMIT_FSIZE`), and a small tmpfs to fill up. The child side of such a test is an ordinary
//! `#[test]` that returns at once unless its environment variable is set.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The test `short` of `module` (as `module_path!()` gives it) alone in a child process of
/// this test binary, with `env` set to `value`.
pub fn child_test(module: &str, short: &str, env: &str, value: &Path) -> Command {
    let without_crate = module.split_once("::").map_or(module, |(_, rest)| rest);
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        &format!("{without_crate}::{short}"),
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(env, value)
    .stdin(Stdio::null());
    cmd
}

/// Runs the child test under `ulimit -f` (1-2 MiB) with SIGXFSZ ignored, so growing a file
/// past the limit fails the write(2) with EFBIG instead of killing the process; asserts that
/// it passed and printed `marker`.
pub fn run_under_fsize_limit(module: &str, short: &str, env: &str, value: &Path, marker: &str) {
    let child = child_test(module, short, env, value);
    // `ulimit -f` counts 512-byte blocks in sh (1 MiB) and 1 KiB blocks in bash (2 MiB).
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 2048 && trap '' XFSZ && exec \"$0\" \"$@\"")
        .arg(child.get_program())
        .args(child.get_args())
        .envs(child.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(marker),
        "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}

/// Spawns `child` (a writer that prints one line `ack ...` per acknowledged write, see
/// [`child_test`]), reads its acknowledgements with `parse` (given what follows `ack `) until
/// it has `n`, then kills it with SIGKILL mid-write. Returns every acknowledgement it printed,
/// those between the count and the kill included. Its stderr goes to `stderr_path`, shown
/// when it stops acknowledging.
pub fn acks_until_kill9<T: Send + 'static>(
    mut child: Command,
    stderr_path: &Path,
    n: usize,
    parse: fn(&str) -> Option<T>,
) -> Vec<T> {
    let mut child = child
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<T>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(ack) = line.strip_prefix("ack ").and_then(parse) else {
                continue;
            };
            if tx.send(ack).is_err() {
                break;
            }
        }
    });

    let mut acked = Vec::new();
    while acked.len() < n {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => acked.push(a),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                let _ = std::fs::File::open(stderr_path).map(|mut f| f.read_to_string(&mut err));
                panic!(
                    "child stopped acking after {} acks ({e:?}); stderr:\n{err}",
                    acked.len()
                );
            }
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "child must have been killed: {status:?}");
    reader.join().expect("reader");
    acked.extend(rx.try_iter()); // acks printed between our count and the kill
    acked
}

/// A 2 MiB tmpfs mounted for one test, unmounted when dropped (even when an assertion fails).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it at `dir/mnt`. Needs `mount` (root or CAP_SYS_ADMIN); where that is not
    /// allowed, prints why `test` is skipped and returns `None` — unless CI=true, where a
    /// missing capability is a failure, not a skip.
    pub fn mount(dir: &Path, test: &str) -> Option<Tmpfs> {
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount a tmpfs in CI"
            );
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs(mnt))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `len` bytes of deterministic garbage (xorshift): not a SQLite file.
pub fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The files in `dir` that a corrupt database was moved to (`*.corrupt-*`), sorted.
pub fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    found.sort();
    found
}

/// Cuts the database at `path` (more than 400 kB, checkpointed) to half its length; returns
/// the new length.
pub fn truncate_to_half(path: &Path) -> u64 {
    let len = std::fs::metadata(path).expect("meta").len();
    assert!(len > 400_000, "database unexpectedly small: {len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for truncate")
        .set_len(len / 2)
        .expect("truncate");
    len / 2
}
