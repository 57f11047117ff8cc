//! SASL PLAIN and LOGIN for SMTP AUTH (RFC 4954, RFC 4616), with a redacting [`Secret`].

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A SASL mechanism this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// LOGIN (draft-murchison-sasl-login).
    Login,
}

impl AuthMechanism {
    /// The mechanism name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
        }
    }

    /// Looks a name up, case-insensitively.
    pub fn from_name(name: &str) -> Option<AuthMechanism> {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(AuthMechanism::Plain),
            "LOGIN" => Some(AuthMechanism::Login),
            _ => None,
        }
    }
}

/// A secret value (a password): `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a client presented in AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authorization identity (PLAIN only; usually empty).
    pub authzid: String,
    /// The user name (authentication identity).
    pub username: String,
    /// The password.
    pub password: Secret,
}

/// Decodes base64 (RFC 4954 4: `=` is an empty response).
pub fn decode_b64(s: &[u8]) -> Option<Vec<u8>> {
    if s == b"=" {
        return Some(Vec::new());
    }
    STANDARD.decode(s).ok()
}

/// Encodes base64.
pub fn encode_b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// Parses a PLAIN response `authzid NUL authcid NUL passwd`.
pub fn parse_plain(decoded: &[u8]) -> Option<Credentials> {
    let s = std::str::from_utf8(decoded).ok()?;
    let mut it = s.split('\0');
    let (z, u, p) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || u.is_empty() {
        return None;
    }
    Some(Credentials { authzid: z.into(), username: u.into(), password: Secret::new(p) })
}

/// The PLAIN initial response for `username` / `password`, base64-encoded.
pub fn plain_response(username: &str, password: &Secret) -> String {
    encode_b64(format!("\0{username}\0{}", password.expose()).as_bytes())
}
