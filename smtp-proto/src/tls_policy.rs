//! The TLS cipher-suite policy both drivers apply: AEAD only, forward secrecy only.
//!
//! Following the TLS 1.3 working group's goals (replace RC4, fix CBC): every TLS 1.3 suite
//! (all AEAD), and TLS 1.2 only with ECDHE key exchange and AES-GCM or ChaCha20-Poly1305.
//! Suites are IANA code points so this crate needs no TLS library; with the `rustls` feature it
//! also builds the crypto provider and reads a connection's facts ([`TlsInfo`]) for both drivers.

/// IANA code points of the allowed suites.
pub const ALLOWED_CIPHER_SUITES: &[u16] = &[
    0x1301, // TLS13_AES_128_GCM_SHA256
    0x1302, // TLS13_AES_256_GCM_SHA384
    0x1303, // TLS13_CHACHA20_POLY1305_SHA256
    0xC02B, // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    0xC02C, // TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    0xC02F, // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    0xC030, // TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    0xCCA8, // TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    0xCCA9, // TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
];

/// Whether the suite with this IANA code point is allowed.
pub fn is_allowed_cipher_suite(code: u16) -> bool {
    ALLOWED_CIPHER_SUITES.contains(&code)
}

/// The conventional name of a TLS protocol version from its wire code (`0x0304` is `TLSv1.3`),
/// as written in `Received:` lines and logs.
pub fn version_name(code: u16) -> String {
    match code {
        0x0304 => "TLSv1.3".into(),
        0x0303 => "TLSv1.2".into(),
        0x0302 => "TLSv1.1".into(),
        0x0301 => "TLSv1.0".into(),
        other => format!("0x{other:04x}"),
    }
}

/// The negotiated TLS parameters of a connection, for `Received:` lines, logs and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2` (see [`version_name`]).
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

#[cfg(feature = "rustls")]
impl TlsInfo {
    /// The facts of an established rustls connection (client or server side).
    pub fn from_rustls(conn: &rustls::CommonState) -> TlsInfo {
        let version =
            conn.protocol_version().map(|v| version_name(u16::from(v))).unwrap_or_else(|| "unknown".to_string());
        let cipher = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        TlsInfo { version, cipher, resumed }
    }
}

/// The crypto provider both drivers use: aws-lc-rs restricted to [`ALLOWED_CIPHER_SUITES`].
#[cfg(feature = "rustls")]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.retain(|s| is_allowed_cipher_suite(u16::from(s.suite())));
    std::sync::Arc::new(p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_names() {
        assert_eq!(super::version_name(0x0304), "TLSv1.3");
        assert_eq!(super::version_name(0x0303), "TLSv1.2");
        assert_eq!(super::version_name(0x7f1c), "0x7f1c");
    }
}
