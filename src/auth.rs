//! Password hashes: argon2id in PHC string form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
//! as printed by `tidegate passwd` and stored in `broker.users` and `web.users`.
//!
//! The broker and the web server verify logins with [`verify`]; the config validator checks a
//! hash's form with [`check_hash_format`] so a pasted-in-half hash is a config error, not a
//! login that can never succeed.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use password_hash::rand_core::OsRng;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Hashes `password` with argon2id and a random salt (the crate's default cost: 19 MiB,
/// 2 passes — OWASP's recommendation, about 50 ms on a Raspberry Pi 4).
///
/// Fails only if the system's random source fails.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// True when `password` matches the PHC string `hash`. A malformed hash never matches.
///
/// Unbounded: the CLI and tests use it; logins go through [`Verifier`].
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Password checks with bounded concurrency and memory, shared by the MQTT broker and the
/// web server (SPEC §3.2).
///
/// Each argon2 check needs its cost in memory (19 MiB for `tidegate passwd`'s hashes). Run
/// without a bound, a flood of CONNECTs or logins held gigabytes at once, and glibc kept most
/// of it afterwards. So:
/// - at most [`MAX_CONCURRENT`] checks run at once, on the blocking pool;
/// - each running check allocates its argon2 memory so that it goes back to the system when
///   the check ends (see [`argon2_memory`]): password checks never hold more than
///   `MAX_CONCURRENT` × a hash's cost, and after a flood the RSS falls back;
/// - at most [`MAX_WAITING`] checks wait for a turn, each at most [`MAX_WAIT`]; a source (an
///   IP address, an IPv6 /64, or the web server as a whole) has at most [`MAX_PER_SOURCE`]
///   checks running or waiting. Beyond that a check is refused at once with [`Busy`] (MQTT:
///   CONNACK "server busy"; web: 503), which costs nothing.
///
/// One flooding source thus never holds more than `MAX_PER_SOURCE` places in the line, and a
/// client elsewhere waits for at most a few checks.
#[derive(Clone)]
pub struct Verifier(Arc<VerifierInner>);

/// Password checks that run at once, process-wide. Two keep a Raspberry Pi responsive (it
/// has four cores, shared with the broker and the drivers) and bound the memory they take to
/// 2 × 19 MiB.
pub const MAX_CONCURRENT: usize = 2;
/// Password checks that may wait for a turn, process-wide.
pub const MAX_WAITING: usize = 32;
/// Password checks one source may have running or waiting.
pub const MAX_PER_SOURCE: usize = 4;
/// How long a check waits for its turn before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Who asks for a password check, for [`MAX_PER_SOURCE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A network peer: an IPv4 address or an IPv6 /64 (one host usually holds a whole /64).
    Net(IpAddr),
    /// The web server's logins and password changes, together.
    Web,
}

impl Source {
    pub fn net(ip: IpAddr) -> Self {
        Source::Net(source_key(ip))
    }
}

/// The address a source is counted under: IPv4 (and IPv4-mapped IPv6) as is, IPv6 by /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A password check refused because too many are running or waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once; try again shortly")]
pub struct Busy;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("available", &self.0.permits.available_permits())
            .field("waiting", &self.0.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct VerifierInner {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    per_source: Mutex<HashMap<Source, usize>>,
    max_waiting: usize,
    max_per_source: usize,
    max_wait: Duration,
    refused: AtomicU64,
}

/// Holds a source's place until the check ends (also when the caller gave up on it).
struct SourceSlot {
    inner: Arc<VerifierInner>,
    source: Source,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut all = lock(&self.inner.per_source);
        if let Some(n) = all.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                all.remove(&self.source);
            }
        }
    }
}

/// Counts a waiting check until it has its turn or gives up (cancel-safe).
struct WaitSlot<'a>(&'a AtomicUsize);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Verifier {
    /// The process-wide verifier the broker and the web server share.
    pub fn global() -> &'static Verifier {
        static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
        V.get_or_init(|| Verifier::new(MAX_CONCURRENT, MAX_WAITING, MAX_PER_SOURCE, MAX_WAIT))
    }

    /// A verifier with its own bounds (tests; the daemon uses [`Verifier::global`]).
    pub fn new(
        concurrent: usize,
        max_waiting: usize,
        max_per_source: usize,
        max_wait: Duration,
    ) -> Self {
        Verifier(Arc::new(VerifierInner {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            max_waiting,
            max_per_source: max_per_source.max(1),
            max_wait,
            refused: AtomicU64::new(0),
        }))
    }

    /// Checks refused with [`Busy`] so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// True when `password` matches the PHC string `hash` (a malformed hash never matches),
    /// checked on the blocking pool within the bounds above.
    ///
    /// Fails with [`Busy`] when `source` already has [`MAX_PER_SOURCE`] checks under way, or
    /// the line is full, or the turn did not come within [`MAX_WAIT`].
    pub async fn verify(&self, source: Source, password: &[u8], hash: &str) -> Result<bool, Busy> {
        let inner = &self.0;
        let busy = || {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            Busy
        };
        let slot = {
            let mut all = lock(&inner.per_source);
            let n = all.entry(source).or_insert(0);
            if *n >= inner.max_per_source {
                drop(all);
                return Err(busy());
            }
            *n += 1;
            SourceSlot {
                inner: inner.clone(),
                source,
            }
        };
        let permit = match inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if inner.waiting.fetch_add(1, Ordering::AcqRel) >= inner.max_waiting {
                    inner.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(busy());
                }
                let _waiting = WaitSlot(&inner.waiting);
                match tokio::time::timeout(inner.max_wait, inner.permits.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    // Timed out, or the semaphore closed (it never is).
                    _ => return Err(busy()),
                }
            }
        };
        let password = password.to_vec();
        let hash = hash.to_string();
        // The permit and the source's place move into the blocking task: they are held until
        // the hash is done, even when the caller stops waiting for it (a closed connection).
        let task = tokio::task::spawn_blocking(move || {
            let ok = verify_bounded(&password, &hash);
            drop(permit);
            drop(slot);
            ok
        });
        Ok(task.await.unwrap_or(false))
    }
}

/// Allocations at least this big (in 1 KiB blocks: 33 MiB) are always served by `mmap` and
/// given back by `munmap` when freed. glibc's malloc moves its mmap threshold up to the size
/// of large blocks freed, but never above 32 MiB on 64-bit systems (512 KiB on 32-bit ones);
/// below the threshold, a freed 19 MiB argon2 buffer stays in a malloc arena, which is how
/// 300 logins left 6.9 GiB resident. musl always maps large allocations.
const RETURNED_BLOCKS: usize = 33 * 1024;

/// argon2's working memory for a hash of `blocks` KiB: its capacity is at least
/// [`RETURNED_BLOCKS`], so the allocator maps it on its own and unmaps it when it is dropped;
/// only the `blocks` used are ever touched, so only they count in the RSS.
fn argon2_memory(blocks: usize) -> Vec<Block> {
    let mut memory = Vec::with_capacity(blocks.max(RETURNED_BLOCKS));
    memory.resize(blocks, Block::new());
    memory
}

/// [`verify`], with argon2's memory from [`argon2_memory`].
fn verify_bounded(password: &[u8], hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut memory = argon2_memory(params.block_count());
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Checks that `hash` is an argon2 PHC string, with a message saying what is wrong.
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not a password hash ({e}); make one with `tidegate passwd`"))?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => {
            return Err(format!(
                "the hash uses {other}; tidegate accepts argon2id (make one with `tidegate passwd`)"
            ))
        }
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("the hash has no salt or no hash value; it looks cut short".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("S3cret", &h));
        assert!(check_hash_format(&h).is_ok());
        assert!(check_hash_format("$argon2id$v=19$m=19456").is_err());
        assert!(check_hash_format("plaintext").is_err());
        assert!(!verify("x", "garbage"));
    }

    /// A cheap hash (256 KiB, one pass) for tests that verify many.
    fn cheap_hash(password: &str) -> String {
        let params = Params::new(256, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn the_verifier_agrees_with_verify() {
        let v = Verifier::new(2, 4, 4, Duration::from_secs(5));
        let h = cheap_hash("s3cret");
        let src = Source::net("10.0.0.1".parse().unwrap());
        assert_eq!(v.verify(src, b"s3cret", &h).await, Ok(true));
        assert_eq!(v.verify(src, b"S3cret", &h).await, Ok(false));
        assert_eq!(v.verify(src, b"x", "garbage").await, Ok(false));
        let real = hash_password("long one").unwrap();
        assert_eq!(v.verify(Source::Web, b"long one", &real).await, Ok(true));
        assert_eq!(v.verify(Source::Web, b"long two", &real).await, Ok(false));
    }

    #[test]
    fn argon2_memory_is_big_enough_to_be_given_back() {
        let m = argon2_memory(Params::DEFAULT_M_COST as usize);
        assert_eq!(m.len(), Params::DEFAULT_M_COST as usize);
        // Above glibc's highest dynamic mmap threshold (32 MiB).
        assert!(m.capacity() * Block::SIZE > 32 << 20);
    }

    #[tokio::test]
    async fn the_verifier_bounds_the_line_and_each_source() {
        // Every turn taken: checks wait (at most 2), per source at most 2.
        let v = Verifier::new(1, 2, 2, Duration::from_secs(600));
        let all = v.0.permits.clone().try_acquire_many_owned(1).unwrap();
        let h = cheap_hash("pw");
        let a = Source::net("10.0.0.1".parse().unwrap());
        let b = Source::net("10.0.0.2".parse().unwrap());
        let spawn = |s: Source| {
            let (v, h) = (v.clone(), h.clone());
            tokio::spawn(async move { v.verify(s, b"pw", &h).await })
        };
        let a1 = spawn(a);
        let a2 = spawn(a);
        tokio::task::yield_now().await;
        while v.0.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        // Source a has its two places; the line (2) is full too.
        assert_eq!(v.verify(a, b"pw", &h).await, Err(Busy));
        assert_eq!(v.verify(b, b"pw", &h).await, Err(Busy));
        assert_eq!(v.refused(), 2);
        drop(all);
        assert_eq!(a1.await.unwrap(), Ok(true));
        assert_eq!(a2.await.unwrap(), Ok(true));
        assert_eq!(v.verify(b, b"pw", &h).await, Ok(true));
        assert!(lock(&v.0.per_source).is_empty());
    }

    #[test]
    fn ipv6_sources_count_by_64() {
        let a = source_key("2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped = source_key("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(mapped, "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}

/// The file under `data_dir` holding the generated web admin password (SPEC §3.1).
pub const INITIAL_ADMIN_PASSWORD_FILE: &str = "initial-admin-password";

/// Returns the generated admin password, making it on first start: 20 random characters
/// written to `<data_dir>/initial-admin-password` with mode 0600. Used when `web.users` is
/// empty; the user changes it in the UI.
///
/// Fails when the file cannot be read or written, or the system's random source fails.
pub fn initial_admin_password(data_dir: &std::path::Path) -> std::io::Result<(String, bool)> {
    use password_hash::rand_core::RngCore;
    let path = data_dir.join(INITIAL_ADMIN_PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Unambiguous characters only: it is read off a terminal and typed into a browser.
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut password = String::with_capacity(20);
    while password.len() < 20 {
        let byte = (OsRng.next_u32() & 0xff) as usize;
        // Rejection sampling keeps every character equally likely.
        if byte < 256 - 256 % ALPHABET.len() {
            password.push(ALPHABET[byte % ALPHABET.len()] as char);
        }
    }
    write_private(&path, &password)?;
    Ok((password, true))
}

/// The file under `data_dir` holding the argon2 hash of the admin password set in the web UI,
/// which replaces the generated one while `web.users` is empty.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// The admin password hash set in the web UI (`<data_dir>/admin-password`), if there is one.
///
/// Fails when the file cannot be read, or does not hold a password hash (a hand-edited or
/// damaged file must not silently bring back the generated password).
pub fn stored_admin_hash(data_dir: &std::path::Path) -> std::io::Result<Option<String>> {
    let path = data_dir.join(ADMIN_PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let hash = text.trim();
            check_hash_format(hash).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {e}; delete the file to go back to a generated password",
                        path.display()
                    ),
                )
            })?;
            Ok(Some(hash.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Keeps `hash` as the admin password set in the web UI, then removes the generated password's
/// file, which no longer logs anyone in.
///
/// Fails when the file cannot be written; the previous password stays in force then.
pub fn store_admin_hash(data_dir: &std::path::Path, hash: &str) -> std::io::Result<()> {
    write_private(&data_dir.join(ADMIN_PASSWORD_FILE), hash)?;
    match std::fs::remove_file(data_dir.join(INITIAL_ADMIN_PASSWORD_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `text` and a newline to `path` with mode 0600: a temporary file, fsync, rename, then
/// fsync of the directory, so a power cut leaves the old file or the new one. When a step before
/// the rename fails (a full disk), the temporary file is removed: no empty `*.tmp` is left.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{text}")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        match std::fs::remove_file(&tmp) {
            Err(r) if r.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
                file = %tmp.display(),
                error = %r,
                "Cannot remove a temporary file after a failed write"
            ),
            _ => {}
        }
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod initial_password_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Issue 12 finding 13: a full disk left a 0-byte `admin-password.tmp` behind. The
    /// temporary file is made a link to /dev/full, a real device where every write fails with
    /// ENOSPC.
    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("admin-password.tmp");
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let e = store_admin_hash(dir.path(), "$argon2id$v=19$m=19456,t=2,p=1$x$y").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "the temporary file is left"
        );
        assert!(!dir.path().join(ADMIN_PASSWORD_FILE).exists());
    }

    #[test]
    fn generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, new1) = initial_admin_password(dir.path()).unwrap();
        let (p2, new2) = initial_admin_password(dir.path()).unwrap();
        assert!(new1 && !new2);
        assert_eq!(p1, p2);
        assert_eq!(p1.len(), 20);
        let mode = std::fs::metadata(dir.path().join(INITIAL_ADMIN_PASSWORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_stored_admin_hash_replaces_the_generated_password() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stored_admin_hash(dir.path()).unwrap(), None);
        initial_admin_password(dir.path()).unwrap();
        let hash = hash_password("chosen in the UI").unwrap();
        store_admin_hash(dir.path(), &hash).unwrap();
        assert_eq!(stored_admin_hash(dir.path()).unwrap(), Some(hash));
        assert!(!dir.path().join(INITIAL_ADMIN_PASSWORD_FILE).exists());
        let file = dir.path().join(ADMIN_PASSWORD_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A damaged file is an error, not a silent return to a generated password.
        std::fs::write(&file, "plaintext\n").unwrap();
        let e = stored_admin_hash(dir.path()).unwrap_err();
        assert!(e.to_string().contains("delete the file"), "{e}");
    }
}
