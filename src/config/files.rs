//! The files a config names — TLS certificates, keys and CAs, uplink password files — and the
//! rules they must follow (docs/SECURITY.md, "Secret files").
//!
//! Every such file is opened without blocking and must be a regular file (a symlink to one is
//! fine): a FIFO or a device named as a certificate would otherwise block `check`, a config
//! apply or the start forever. Each is at most [`MAX_FILE`] bytes.
//!
//! A `password_file` is the one file whose content leaves the gateway (it is sent to the
//! uplink's broker as the MQTT password), so a config — which a web admin can edit — must not be
//! able to send any other file to a broker of its choosing (`password_file: /etc/shadow` with
//! `url` pointing at the attacker). A password file must therefore:
//! - lie in the config file's directory (or below it), or in systemd's credentials directory
//!   (`$CREDENTIALS_DIRECTORY`, `LoadCredential=`); `gateway.data_dir` does not count, since a
//!   config can point it anywhere;
//! - hold one line of at most [`MAX_PASSWORD`] bytes;
//! - be owned by root or by the user tidegate runs as, and be neither readable nor writable by
//!   others nor writable by its group (`chmod 0640`, or `0600`).
//!
//! TLS private keys must be owned by root or the service user and not be writable by group or
//! others (whoever can replace the key can impersonate the gateway). Their content never
//! leaves the gateway (a key only signs; a certificate is public by design), so they may live
//! anywhere, e.g. under /etc/letsencrypt/.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest certificate, key or CA bundle read (the Debian CA bundle is about 220 KB).
pub const MAX_FILE: u64 = 1 << 20;
/// The largest password file: one line.
pub const MAX_PASSWORD: u64 = 4096;

/// Opens `path` without blocking (a FIFO or a device does not hang the caller), and checks it
/// is a regular file of at most `max` bytes. Fails with a sentence naming the file.
fn open_regular(path: &Path, max: u64) -> Result<(File, Metadata), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (a directory, FIFO, socket or device cannot be used)",
            path.display()
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "{} is {} bytes, over the {} byte limit for this file",
            path.display(),
            meta.len(),
            max
        ));
    }
    Ok((file, meta))
}

/// Reads a regular file of at most `max` bytes (see [`open_regular`]).
///
/// Fails when the file cannot be opened or read, is not a regular file, or is too big.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let (file, _) = open_regular(path, max)?;
    read_capped(file, path, max)
}

fn read_capped(file: File, path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    // `take` guards a file that grows between the size check and the read.
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if data.len() as u64 > max {
        return Err(format!(
            "{} is over the {max} byte limit for this file",
            path.display()
        ));
    }
    Ok(data)
}

fn check_inside(path: &Path, real: &Path, allowed: &[PathBuf]) -> Result<(), String> {
    let inside = allowed.iter().any(|d| {
        d.canonicalize()
            .map(|d| real.starts_with(&d))
            .unwrap_or(false)
    });
    if inside {
        return Ok(());
    }
    let dirs: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "{} is outside the directories password files may be read from ({}): \
         keep it beside the config file",
        path.display(),
        dirs.join(", ")
    ))
}

/// The certificates of a PEM file (a chain, or a CA bundle), read under the rules above.
///
/// Fails when the file breaks a rule, cannot be read, or holds a malformed PEM section.
pub fn read_certs(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = read_regular(path, MAX_FILE)?;
    rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))
}

/// The private key of a PEM file, read under the rules above (owner, not writable by
/// others).
///
/// Fails when the file breaks a rule, cannot be read, or holds no usable key.
pub fn read_private_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    let (file, meta) = open_regular(path, MAX_FILE)?;
    check_owner_and_writers(path, &meta)?;
    let pem = read_capped(file, path, MAX_FILE)?;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("cannot read private key {}: {e}", path.display()))
}

/// The user id tidegate runs as: the owner of `/proc/self`.
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Owned by root or by us, and not writable by group or others.
fn check_owner_and_writers(path: &Path, meta: &Metadata) -> Result<(), String> {
    let uid = meta.uid();
    if uid != 0 && Some(uid) != own_uid() {
        return Err(format!(
            "{} must be owned by root or by the user tidegate runs as (it is owned by uid {uid})",
            path.display()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must not be writable by its group or others (mode {:04o}; try chmod 0640)",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Checks a certificate or CA file: regular, at most [`MAX_FILE`] bytes.
pub fn check_public(path: &Path) -> Result<(), String> {
    open_regular(path, MAX_FILE).map(|_| ())
}

/// Checks a TLS private key: regular, at most [`MAX_FILE`] bytes, owned by root or the
/// service user, not writable by group or others.
pub fn check_private_key(path: &Path) -> Result<(), String> {
    let (_, meta) = open_regular(path, MAX_FILE)?;
    check_owner_and_writers(path, &meta)
}

/// Where password files may live: the config file's directory, and systemd's credentials
/// directory when tidegate runs with one.
pub fn secret_dirs(config_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match config_dir {
        Some(d) => dirs.push(d.to_path_buf()),
        // Without a config file (`parse` of a text), relative paths are taken from the working
        // directory, so that is the config's directory.
        None => dirs.extend(std::env::current_dir().ok()),
    }
    if let Some(d) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// The password of a `password` / `password_file` pair (an uplink's, an OPC UA device's
/// `auth`): the inline one, else the file's, read by [`read_password`] without the directory
/// rule (the config was validated, and no longer knows its directory). Blocking.
pub fn configured_password(
    password: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, String> {
    match (password, file) {
        (Some(p), _) => Ok(Some(p.to_string())),
        (None, Some(f)) => read_password(f, None).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a `password_file` under the rules in the module doc: the password is its one line,
/// without the line end. `allowed` are the directories it may lie in ([`secret_dirs`]); `None`
/// skips that one rule, for the uplink reading the file of a config already validated (which
/// no longer knows the config's directory).
///
/// Fails with a sentence saying which rule the file breaks.
pub fn read_password(path: &Path, allowed: Option<&[PathBuf]>) -> Result<String, String> {
    // Symlinks are resolved first, so a link in /etc/tidegate to /etc/shadow is refused.
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Some(allowed) = allowed {
        check_inside(path, &real, allowed)?;
    }
    let (file, meta) = open_regular(&real, MAX_PASSWORD)?;
    check_owner_and_writers(path, &meta)?;
    if meta.mode() & 0o007 != 0 {
        return Err(format!(
            "{} must not be readable by others (mode {:04o}; try chmod 0640)",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    let data = read_capped(file, path, MAX_PASSWORD)?;
    let text =
        String::from_utf8(data).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let line = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if line.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "{} must hold the password on one line and nothing else",
            path.display()
        ));
    }
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn password_files_follow_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        let ok = write(dir.path(), "pw", "s3cret\n", 0o640);
        assert_eq!(read_password(&ok, Some(&allowed)).unwrap(), "s3cret");
        let crlf = write(dir.path(), "crlf", "s3cret\r\n", 0o600);
        assert_eq!(read_password(&crlf, Some(&allowed)).unwrap(), "s3cret");

        let cases = [
            (write(dir.path(), "lines", "a\nb\n", 0o600), "one line"),
            (write(dir.path(), "empty", "", 0o600), "is empty"),
            (
                write(dir.path(), "world", "pw\n", 0o644),
                "readable by others",
            ),
            (
                write(dir.path(), "gw", "pw\n", 0o660),
                "writable by its group",
            ),
            (
                write(dir.path(), "big", &"x".repeat(5000), 0o600),
                "byte limit",
            ),
            (write(other.path(), "pw", "pw\n", 0o600), "outside"),
        ];
        for (path, want) in cases {
            let e = read_password(&path, Some(&allowed)).unwrap_err();
            assert!(e.contains(want), "{}: {e}", path.display());
        }
        // A symlink beside the config pointing outside it is judged by its target.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(other.path().join("pw"), &link).unwrap();
        let e = read_password(&link, Some(&allowed)).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        // /etc/shadow-like: multi-line, outside.
        let e = read_password(Path::new("/etc/passwd"), Some(&allowed)).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        let e = check_public(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = check_private_key(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = check_public(dir.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = check_public(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_password(&fifo, Some(&[dir.path().to_path_buf()])).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn keys_must_not_be_writable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "k", "key", 0o644);
        check_private_key(&key).unwrap();
        let key = write(dir.path(), "k2", "key", 0o666);
        let e = check_private_key(&key).unwrap_err();
        assert!(e.contains("writable"), "{e}");
    }
}
