//! Password hashes for AUTH: argon2id in PHC string form (`$argon2id$v=19$m=…$…`), made by
//! `tern passwd`. Passwords are never stored or compared in clear; verification is the
//! argon2 crate's constant-time comparison, run off the async threads (it is slow on purpose).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Why a configured password entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an argon2id password hash (make one with `tern passwd`): {0}")]
pub struct NotAHash(String);

/// A checked password hash.
#[derive(Clone)]
pub struct PasswordHashString(String);

impl std::fmt::Debug for PasswordHashString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHashString(argon2id)")
    }
}

impl PasswordHashString {
    /// Accepts only a well-formed argon2id PHC string; plaintext is refused.
    pub fn parse(s: &str) -> Result<Self, NotAHash> {
        let h = PasswordHash::new(s).map_err(|e| NotAHash(e.to_string()))?;
        if h.algorithm.as_str() != "argon2id" {
            return Err(NotAHash(format!("algorithm {}", h.algorithm)));
        }
        Ok(PasswordHashString(s.to_string()))
    }

    /// Hashes a password with a fresh random salt (argon2id, the crate's default parameters).
    pub fn hash(password: &str) -> Result<Self, NotAHash> {
        let salt = SaltString::generate(&mut OsRng);
        let h = Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| NotAHash(e.to_string()))?;
        Ok(PasswordHashString(h.to_string()))
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `password` matches (blocking: call it from a blocking thread).
    pub fn verify(&self, password: &str) -> bool {
        match PasswordHash::new(&self.0) {
            Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_plaintext_is_refused() {
        let h = PasswordHashString::hash("s3cret").unwrap();
        assert!(h.as_str().starts_with("$argon2id$"));
        assert!(h.verify("s3cret") && !h.verify("s3cret "));
        let back = PasswordHashString::parse(h.as_str()).unwrap();
        assert!(back.verify("s3cret"));
        assert!(PasswordHashString::parse("s3cret").is_err());
        assert!(PasswordHashString::parse("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").is_err());
    }
}
