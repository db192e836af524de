//! Password hashes: argon2id in PHC string form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
//! as printed by `tidegate passwd` and stored in `broker.users` and `web.users`.
//!
//! The broker and the web server verify logins with [`verify`]; the config validator checks a
//! hash's form with [`check_hash_format`] so a pasted-in-half hash is a config error, not a
//! login that can never succeed.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use password_hash::rand_core::OsRng;

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
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
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
