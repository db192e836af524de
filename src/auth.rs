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
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Checks that `hash` is an argon2 PHC string, with a message saying what is wrong.
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| {
        format!("not a password hash ({e}); make one with `tidegate passwd`")
    })?;
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
