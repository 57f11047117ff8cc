//! Message authentication on acceptance, built on `mail-auth`: DKIM signing (RFC 6376, RFC 8463)
//! of mail from trusted or authenticated sessions, and SPF (RFC 7208), DKIM and DMARC (RFC 7489)
//! verification of everything else, reported in one `Authentication-Results:` field (RFC 8601).
//!
//! Both need the whole message: when either is on, the relay holds the data in memory (up to
//! the server's size limit) before storing it, because the new header fields go in front.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcOutput, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use smtp_proto::{EnhancedCode, Reply};

/// The header fields signed by default (RFC 6376 5.4.1); `From` is listed twice so a second
/// `From` added later breaks the signature (oversigning).
pub const SIGNED_HEADERS: [&str; 17] = [
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "Resent-From",
    "Resent-Date",
];

/// The header field added to mail that fails DMARC at a domain asking for quarantine, when
/// DMARC is enforced (a mailbox filter can file it as spam).
pub const QUARANTINE_HEADER: &str = "X-Tern-DMARC";

/// A problem with the message-authentication configuration.
#[derive(Debug, thiserror::Error)]
pub enum MsgAuthError {
    /// `--dkim` is not `DOMAIN=SELECTOR:KEYFILE`.
    #[error("--dkim {0:?}: expected DOMAIN=SELECTOR:KEYFILE")]
    Spec(String),
    /// A key file could not be read or is not a usable key.
    #[error("DKIM key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The system could not make a key (no randomness).
    #[error("cannot generate a DKIM key: {0}")]
    Generate(String),
}

/// One signing domain, as configured: `DOMAIN=SELECTOR:KEYFILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSpec {
    /// The signing domain (`d=`), lower case.
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// A PEM private key: RSA (PKCS#8 or PKCS#1, at least 2048 bits) or Ed25519 (PKCS#8).
    pub key_file: PathBuf,
}

impl FromStr for DkimSpec {
    type Err = MsgAuthError;

    fn from_str(s: &str) -> Result<DkimSpec, MsgAuthError> {
        let bad = || MsgAuthError::Spec(s.to_string());
        let (domain, rest) = s.split_once('=').ok_or_else(bad)?;
        let (selector, key) = rest.split_once(':').ok_or_else(bad)?;
        let label = |l: &str| {
            !l.is_empty()
                && l.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        };
        if !label(domain) || !label(selector) || key.is_empty() {
            return Err(bad());
        }
        Ok(DkimSpec { domain: domain.to_ascii_lowercase(), selector: selector.to_string(), key_file: key.into() })
    }
}

/// A loaded private key.
enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// Reads a DKIM private key (PEM): RSA of at least 2048 bits, or Ed25519.
fn load_key(path: &Path) -> Result<Key, MsgAuthError> {
    let err = |reason: String| MsgAuthError::Key { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| err(format!("no private key in PEM ({e})")))?;
    let key = match &der {
        PrivateKeyDer::Pkcs1(k) => Key::Rsa(RsaKey::from_der(k.secret_pkcs1_der()).map_err(|e| err(e.to_string()))?),
        PrivateKeyDer::Pkcs8(k) => match RsaKey::<Sha256>::from_pkcs8_der(k.secret_pkcs8_der()) {
            Ok(rsa) => Key::Rsa(rsa),
            Err(_) => Key::Ed25519(
                Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der())
                    .map_err(|_| err("neither an RSA nor an Ed25519 key".into()))?,
            ),
        },
        _ => return Err(err("an EC key: DKIM signs with RSA or Ed25519".into())),
    };
    if let Key::Rsa(k) = &key {
        // The public key is PKCS#1: SEQUENCE { modulus, exponent }; the modulus length is
        // enough to tell a 1024-bit key (RFC 8301 3.2: at least 1024, we ask 2048).
        let bits = rsa_modulus_bits(&k.public_key());
        if bits < 2048 {
            return Err(err(format!("an RSA key of {bits} bits: at least 2048 are needed")));
        }
    }
    Ok(key)
}

/// The bit length of the modulus in a PKCS#1 `RSAPublicKey` (0 if it does not parse).
fn rsa_modulus_bits(der: &[u8]) -> usize {
    // DER length at `i`: (length, header bytes).
    fn len(d: &[u8], i: usize) -> Option<(usize, usize)> {
        let first = *d.get(i)? as usize;
        if first < 0x80 {
            return Some((first, 1));
        }
        let n = first & 0x7f;
        let mut l = 0usize;
        for k in 0..n {
            l = l.checked_mul(256)? + *d.get(i + 1 + k)? as usize;
        }
        Some((l, 1 + n))
    }
    let parse = || -> Option<usize> {
        (der.first()? == &0x30).then_some(())?;
        let (_, h) = len(der, 1)?;
        let i = 1 + h;
        (der.get(i)? == &0x02).then_some(())?;
        let (l, h) = len(der, i + 1)?;
        let start = i + 1 + h;
        let m = der.get(start..start + l)?;
        let m = match m.iter().position(|&b| b != 0) {
            Some(p) => &m[p..],
            None => return Some(0),
        };
        Some(m.len() * 8 - m[0].leading_zeros() as usize)
    };
    parse().unwrap_or(0)
}

/// A signing domain ready to sign.
enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl Signer {
    fn new(spec: &DkimSpec) -> Result<Signer, MsgAuthError> {
        fn build<K: SigningKey<Hasher = Sha256>>(key: K, spec: &DkimSpec) -> DkimSigner<K, Done> {
            DkimSigner::from_key(key)
                .domain(&spec.domain)
                .selector(&spec.selector)
                .headers(SIGNED_HEADERS)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
        }
        Ok(match load_key(&spec.key_file)? {
            Key::Rsa(k) => Signer::Rsa(build(k, spec)),
            Key::Ed25519(k) => Signer::Ed25519(build(k, spec)),
        })
    }

    fn sign(&self, message: &[u8]) -> mail_auth::Result<String> {
        Ok(match self {
            Signer::Rsa(s) => s.sign(message)?.to_header(),
            Signer::Ed25519(s) => s.sign(message)?.to_header(),
        })
    }
}

/// What one message's session tells the checks.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The reverse-path as text (empty for the null reverse-path).
    pub mail_from: &'a str,
    /// A trusted network or an authenticated session: signed, not verified.
    pub trusted: bool,
}

/// The header fields to put in front of a message, and the message with any forged
/// `Authentication-Results` of ours taken out.
#[derive(Debug)]
pub struct Checked {
    /// Complete header fields, each ending in CRLF.
    pub prefix: String,
    /// The message as it is to be stored after `prefix`.
    pub message: bytes::Bytes,
}

/// DKIM signing and SPF/DKIM/DMARC verification for one relay.
pub struct MessageAuth {
    hostname: String,
    signers: HashMap<String, Signer>,
    verifier: Option<MessageAuthenticator>,
    enforce: bool,
}

impl std::fmt::Debug for MessageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageAuth")
            .field("hostname", &self.hostname)
            .field("signing", &self.signers.keys().collect::<Vec<_>>())
            .field("verify", &self.verifier.is_some())
            .field("enforce", &self.enforce)
            .finish()
    }
}

impl MessageAuth {
    /// Loads the keys; `verifier` (a resolver, see [`crate::dns::HickoryMx::authenticator`])
    /// turns verification on; `enforce` acts on DMARC policies.
    pub fn new(
        hostname: &str,
        dkim: &[DkimSpec],
        verifier: Option<MessageAuthenticator>,
        enforce: bool,
    ) -> Result<MessageAuth, MsgAuthError> {
        let mut signers = HashMap::new();
        for s in dkim {
            signers.insert(s.domain.clone(), Signer::new(s)?);
        }
        Ok(MessageAuth { hostname: hostname.to_string(), signers, verifier, enforce })
    }

    /// Whether mail from a session (trusted or not) is signed or verified, so the relay must
    /// hold it before storing it; otherwise its data streams straight to disk.
    pub fn wants(&self, trusted: bool) -> bool {
        match trusted {
            true => !self.signers.is_empty(),
            false => self.verifier.is_some(),
        }
    }

    /// Signs (trusted origin) or verifies (anyone else) `message`; `Err` is the reply that
    /// refuses it (DMARC enforcement).
    pub async fn check(self: &Arc<Self>, origin: Origin<'_>, message: bytes::Bytes) -> Result<Checked, Reply> {
        if origin.trusted {
            // An RSA signature takes most of a millisecond: off the async worker threads.
            let (me, m) = (self.clone(), message.clone());
            let prefix = tokio::task::spawn_blocking(move || me.sign(&m)).await.ok().flatten().unwrap_or_default();
            return Ok(Checked { prefix, message });
        }
        match &self.verifier {
            Some(v) => {
                let (prefix, message) = self.verify(v, origin, Some(message)).await?;
                Ok(Checked { prefix, message: message.unwrap_or_default() })
            }
            None => Ok(Checked { prefix: String::new(), message }),
        }
    }

    /// The header fields for a message too large to hold: unsigned (trusted origin) or with
    /// SPF checked only (DKIM and DMARC need the whole message; nothing is enforced).
    pub async fn too_large(&self, origin: Origin<'_>) -> String {
        match (&self.verifier, origin.trusted) {
            (Some(v), false) => {
                tracing::info!(peer = %origin.ip, "message too large to verify; SPF only");
                self.verify(v, origin, None).await.map(|(p, _)| p).unwrap_or_default()
            }
            (_, true) if !self.signers.is_empty() => {
                tracing::warn!(peer = %origin.ip, "message too large to sign; it goes unsigned");
                String::new()
            }
            _ => String::new(),
        }
    }

    /// `message` with a `DKIM-Signature` in front when its `From` domain has a key (signed on
    /// a blocking thread): for mail the relay writes itself (notifications, TLS reports).
    pub async fn signed(self: &Arc<Self>, message: Vec<u8>) -> Vec<u8> {
        if self.signers.is_empty() {
            return message;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || match me.sign(&message) {
            Some(sig) => [sig.into_bytes(), message].concat(),
            None => message,
        })
        .await
        .unwrap_or_default()
    }

    /// The `DKIM-Signature` field for a message whose `From` domain has a key (`None` when none
    /// does, or the message has no header to sign).
    pub fn sign(&self, message: &[u8]) -> Option<String> {
        let from = from_domain(message)?;
        match self.signers.get(&from)?.sign(message) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(domain = %from, error = %e, "DKIM signing failed; the message goes unsigned");
                None
            }
        }
    }

    /// Verifies `message` (SPF only when `None`): the header fields to add and the message
    /// without forged results.
    async fn verify(
        &self,
        v: &MessageAuthenticator,
        o: Origin<'_>,
        message: Option<bytes::Bytes>,
    ) -> Result<(String, Option<bytes::Bytes>), Reply> {
        let host = self.hostname.as_str();
        let helo = if o.helo.is_empty() { "unknown" } else { o.helo };
        // SPF for MAIL FROM, or for the HELO name with the null reverse-path (RFC 7208 2.4).
        let mail_domain = o.mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        let mut spf = if o.mail_from.is_empty() {
            v.verify_spf(mail_auth::spf::verify::SpfParameters::verify_ehlo(o.ip, helo, host)).await
        } else {
            v.verify_spf(mail_auth::spf::verify::SpfParameters::verify_mail_from(o.ip, helo, host, o.mail_from)).await
        };
        if spf.result() == SpfResult::None && dns_trouble(v, mail_domain).await {
            spf = SpfOutput::new(mail_domain.to_string()).with_result(SpfResult::TempError);
        }
        let mut ar = AuthenticationResults::new(host);
        ar = if o.mail_from.is_empty() {
            ar.with_spf_ehlo_result(&spf, o.ip, helo)
        } else {
            ar.with_spf_mailfrom_result(&spf, o.ip, o.mail_from, helo)
        };
        let (mut prefix, action) = match message.as_deref().and_then(AuthenticatedMessage::parse) {
            Some(parsed) => {
                let dkim = v.verify_dkim(&parsed).await;
                let from = parsed.from.first().cloned().unwrap_or_default();
                let mut dmarc = v
                    .verify_dmarc(
                        mail_auth::dmarc::verify::DmarcParameters::new(&parsed, &dkim, mail_domain, &spf)
                            .with_domain_suffix_fn(|d| psl::domain_str(d).unwrap_or(d)),
                    )
                    .await;
                // mail-auth 0.7 leaves both results `None` when neither SPF nor DKIM passed,
                // even with a record: under RFC 7489 6.6.2 that is a DMARC failure.
                let unaligned = |r: &DmarcResult| matches!(r, DmarcResult::None);
                if dmarc.dmarc_record().is_none() && !dmarc.domain().is_empty() {
                    let d = dmarc.domain().to_string();
                    if dns_trouble(v, &format!("_dmarc.{d}")).await {
                        let e =
                            || DmarcResult::TempError(mail_auth::Error::DnsError(format!("_dmarc.{d}: DNS failure")));
                        dmarc = DmarcOutput::new(d.clone()).with_spf_result(e()).with_dkim_result(e());
                    }
                }
                if dmarc.dmarc_record().is_some() && unaligned(dmarc.spf_result()) && unaligned(dmarc.dkim_result()) {
                    dmarc = dmarc
                        .with_spf_result(DmarcResult::Fail(mail_auth::Error::NotAligned))
                        .with_dkim_result(DmarcResult::Fail(mail_auth::Error::NotAligned));
                }
                ar = ar.with_dkim_results(&dkim, &from).with_dmarc_result(&dmarc);
                // DMARC fails when neither identifier passes aligned and one of them failed
                // (an absent DKIM signature is `None`, not `Fail`).
                let results = [dmarc.dkim_result(), dmarc.spf_result()];
                let pass = results.iter().any(|r| matches!(r, DmarcResult::Pass));
                let temp = !pass && results.iter().any(|r| matches!(r, DmarcResult::TempError(_)));
                let failed = !pass && !temp && results.iter().any(|r| matches!(r, DmarcResult::Fail(_)));
                let action = match (failed, temp, dmarc.policy()) {
                    (true, _, Policy::Reject) => Action::Reject(dmarc.domain().to_string()),
                    (true, _, Policy::Quarantine) => Action::Quarantine(dmarc.domain().to_string()),
                    (false, true, _) => Action::Defer(dmarc.domain().to_string()),
                    _ => Action::Accept,
                };
                tracing::info!(
                    spf = ?spf.result(),
                    dkim = ?dkim.iter().map(|d| d.result()).collect::<Vec<_>>(),
                    dmarc_domain = dmarc.domain(),
                    dmarc_policy = %dmarc.policy(),
                    dmarc_dkim = ?dmarc.dkim_result(),
                    dmarc_spf = ?dmarc.spf_result(),
                    "message authentication"
                );
                // RFC 8601 2.7.1: a signature that was processed but did not verify is `fail`;
                // mail-auth calls a body hash mismatch `neutral`.
                (
                    ar.to_header()
                        .replace("dkim=neutral (body hash did not verify)", "dkim=fail (body hash did not verify)"),
                    action,
                )
            }
            // Too large, or no header section mail-auth can parse: SPF only.
            None => (ar.to_header(), Action::Accept),
        };
        if self.enforce {
            match action {
                Action::Reject(d) => {
                    return Err(Reply::new(
                        550,
                        Some(EnhancedCode::new(5, 7, 1)),
                        &format!("Message rejected: it fails DMARC and {d} asks for rejection"),
                    ))
                }
                Action::Defer(d) => {
                    return Err(Reply::new(
                        451,
                        Some(EnhancedCode::new(4, 7, 0)),
                        &format!("DMARC for {d} could not be checked now (DNS); try again later"),
                    ))
                }
                Action::Quarantine(d) => prefix.push_str(&format!("{QUARANTINE_HEADER}: quarantine ({d})\r\n")),
                Action::Accept => {}
            }
        }
        Ok((prefix, message.map(|m| strip_results(&m, host))))
    }
}

/// Whether a TXT look-up of `name` fails for a reason other than the name or record not
/// existing (SERVFAIL, REFUSED, a time-out). mail-auth 0.7 reads a SERVFAIL as "no record",
/// which would turn a temporary failure into `none` (RFC 7208 4.4 and RFC 7489 6.6.3 want
/// `temperror`); this tells them apart when a check found nothing.
async fn dns_trouble(v: &MessageAuthenticator, name: &str) -> bool {
    use mail_auth::hickory_resolver::proto::op::ResponseCode;
    use mail_auth::hickory_resolver::proto::ProtoErrorKind;
    use mail_auth::hickory_resolver::ResolveErrorKind;
    match v.resolver().txt_lookup(format!("{}.", name.trim_end_matches('.'))).await {
        Ok(_) => false,
        Err(e) => match e.kind() {
            ResolveErrorKind::Proto(p) => match p.kind() {
                ProtoErrorKind::NoRecordsFound { response_code, .. } => {
                    !matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError)
                }
                _ => true,
            },
            _ => true,
        },
    }
}

/// What the DMARC outcome asks for.
enum Action {
    Accept,
    Reject(String),
    Quarantine(String),
    Defer(String),
}

/// The domain of the first `From:` address, lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = AuthenticatedMessage::parse(message)?;
    let from = parsed.from.first()?;
    Some(from.rsplit_once('@')?.1.trim_end_matches('>').to_ascii_lowercase())
}

/// `message` without the `Authentication-Results` fields whose authserv-id is `host` (RFC 8601
/// 5: a result claiming to be ours that arrived with the message is a forgery).
pub fn strip_results(message: &bytes::Bytes, host: &str) -> bytes::Bytes {
    let mut keep: Vec<std::ops::Range<usize>> = Vec::new();
    let mut removed = false;
    let mut i = 0;
    let mut dropping = false;
    while i < message.len() {
        let end = memchr::memchr(b'\n', &message[i..]).map_or(message.len(), |p| i + p + 1);
        let line = &message[i..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = line[0] == b' ' || line[0] == b'\t';
        if !continuation {
            dropping = is_our_result(message, i, host);
            removed |= dropping;
        }
        if !dropping {
            match keep.last_mut() {
                Some(r) if r.end == i => r.end = end,
                _ => keep.push(i..end),
            }
        }
        i = end;
    }
    if !removed {
        return message.clone();
    }
    let mut out = Vec::with_capacity(message.len());
    for r in keep {
        out.extend_from_slice(&message[r]);
    }
    out.extend_from_slice(&message[i..]);
    tracing::info!(authserv_id = host, "removed a forged Authentication-Results field");
    out.into()
}

/// Whether the field starting at `start` is `Authentication-Results` with authserv-id `host`
/// (the value's first token, before `;`, comments and white space aside; folded lines count).
fn is_our_result(message: &[u8], start: usize, host: &str) -> bool {
    const NAME: &[u8] = b"authentication-results";
    let rest = &message[start..];
    let Some(colon) = memchr::memchr(b':', rest) else { return false };
    if !rest[..colon].trim_ascii_end().eq_ignore_ascii_case(NAME) {
        return false;
    }
    let mut id = Vec::new();
    let mut depth = 0u32;
    for &b in &rest[colon + 1..] {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            b';' => break,
            b' ' | b'\t' | b'\r' | b'\n' if id.is_empty() => {}
            b' ' | b'\t' | b'\r' | b'\n' => break,
            _ => id.push(b),
        }
        if id.len() > 255 {
            return false;
        }
    }
    id.eq_ignore_ascii_case(host.as_bytes())
}

/// A new DKIM key for `tern dkim keygen`: the private key as PKCS#8 PEM and the DNS TXT record
/// to publish at `SELECTOR._domainkey.DOMAIN`.
pub fn generate_key(ed25519: bool) -> Result<(String, String), MsgAuthError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let (der, record) = if ed25519 {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| MsgAuthError::Generate(e.to_string()))?;
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| MsgAuthError::Generate(e.to_string()))?;
        let public = pair.public_key().as_ref().to_vec();
        (pkcs8.as_ref().to_vec(), format!("v=DKIM1; k=ed25519; p={}", b64(&public)))
    } else {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| MsgAuthError::Generate(e.to_string()))?;
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der =
            pair.as_der().map_err(|e| MsgAuthError::Generate(e.to_string()))?;
        let spki: aws_lc_rs::encoding::PublicKeyX509Der = pair
            .public_key()
            .as_der()
            .map_err(|e: aws_lc_rs::error::Unspecified| MsgAuthError::Generate(e.to_string()))?;
        (pkcs8.as_ref().to_vec(), format!("v=DKIM1; k=rsa; p={}", b64(spki.as_ref())))
    };
    let body = b64(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, record))
}

fn b64(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_wrong() {
        let s: DkimSpec = "Example.COM=s1:/etc/k.pem".parse().unwrap();
        assert_eq!(
            (s.domain.as_str(), s.selector.as_str(), s.key_file.as_path()),
            ("example.com", "s1", Path::new("/etc/k.pem"))
        );
        for bad in
            ["example.com", "example.com=s1", "=s1:k", "example.com=:k", "example.com=s1:", "ex ample=s1:k", "a..b=s:k"]
        {
            let e = bad.parse::<DkimSpec>().unwrap_err();
            assert!(e.to_string().contains("DOMAIN=SELECTOR:KEYFILE"), "{bad}: {e}");
        }
    }

    #[test]
    fn generated_keys_load_and_sign_and_short_rsa_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for ed in [false, true] {
            let (pem, record) = generate_key(ed).unwrap();
            assert!(record.starts_with(if ed { "v=DKIM1; k=ed25519; p=" } else { "v=DKIM1; k=rsa; p=" }), "{record}");
            let path = dir.path().join(format!("k{ed}.pem"));
            std::fs::write(&path, pem).unwrap();
            let spec = DkimSpec { domain: "a.test".into(), selector: "s".into(), key_file: path };
            let auth = MessageAuth::new("mx.a.test", &[spec], None, false).unwrap();
            let h = auth.sign(b"From: Alice <alice@A.test>\r\nSubject: hi\r\n\r\nbody\r\n").expect("signed");
            assert!(h.starts_with("DKIM-Signature:") && h.contains("d=a.test") && h.contains("s=s"), "{h}");
            assert!(h.contains(if ed { "a=ed25519-sha256" } else { "a=rsa-sha256" }), "{h}");
            assert!(h.contains("c=relaxed/relaxed"), "{h}");
            assert!(h.contains("h=Subject:From:From:"), "signed bottom-up, From oversigned: {h}");
            assert!(auth.sign(b"From: bob@b.test\r\n\r\nx\r\n").is_none(), "no key for b.test");
        }
        // A file that holds no key, or no file: refused, naming the file.
        let short = dir.path().join("short.pem");
        std::fs::write(&short, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let spec = DkimSpec { domain: "a.test".into(), selector: "s".into(), key_file: short.clone() };
        let e = MessageAuth::new("h", &[spec], None, false).unwrap_err();
        assert!(e.to_string().contains("short.pem"), "{e}");
        let missing = DkimSpec { domain: "a.test".into(), selector: "s".into(), key_file: dir.path().join("nope") };
        assert!(MessageAuth::new("h", &[missing], None, false).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn modulus_length_is_read_from_pkcs1() {
        // SEQUENCE { INTEGER (0x00 0x80 + 127 more bytes: 1024 bits), INTEGER 65537 }
        let mut m = vec![0x00, 0x80];
        m.extend(std::iter::repeat_n(1u8, 127));
        let mut der = vec![0x30, 0x81, (4 + m.len() + 5) as u8, 0x02, 0x81, m.len() as u8];
        der.extend(&m);
        der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(rsa_modulus_bits(&der), 1024);
        assert_eq!(rsa_modulus_bits(b"junk"), 0);
        assert_eq!(rsa_modulus_bits(&[]), 0);
    }

    #[test]
    fn only_our_authentication_results_are_removed() {
        let m = bytes::Bytes::from_static(
            b"Authentication-Results: MX.A.test; dkim=pass\r\n\
              Received: x\r\n\
              Authentication-Results: (forged) mx.a.test;\r\n\tspf=pass\r\n\
              Authentication-Results: other.test; spf=fail\r\n\
              Authentication-Results: mx.a.test.evil; spf=pass\r\n\
              Subject: s\r\n\
              \r\n\
              Authentication-Results: mx.a.test; in the body\r\n",
        );
        let out = strip_results(&m, "mx.a.test");
        assert_eq!(
            &out[..],
            &b"Received: x\r\n\
              Authentication-Results: other.test; spf=fail\r\n\
              Authentication-Results: mx.a.test.evil; spf=pass\r\n\
              Subject: s\r\n\
              \r\n\
              Authentication-Results: mx.a.test; in the body\r\n"[..]
        );
        let clean = bytes::Bytes::from_static(b"Subject: s\r\n\r\nbody");
        assert_eq!(strip_results(&clean, "mx.a.test"), clean);
        assert_eq!(strip_results(&bytes::Bytes::new(), "mx.a.test"), bytes::Bytes::new());
    }

    proptest::proptest! {
        /// Any bytes: no panic; the header section loses only whole fields of ours and the
        /// body is never touched.
        #[test]
        fn stripping_is_total_and_keeps_everything_but_our_fields(
            head in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just("Authentication-Results: mx.a.test; spf=pass\r\n".to_string()),
                proptest::strategy::Just("Authentication-Results: (c) MX.A.TEST ;\r\n\tdkim=pass\r\n".to_string()),
                proptest::strategy::Just("Authentication-Results: other.test; x\r\n".to_string()),
                "[A-Za-z-]{1,12}: [ -~]{0,30}\r\n",
                "[ \t][ -~]{0,20}\r\n",
            ], 0..8),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let text = format!("{}\r\n", head.concat());
            let mut m = text.clone().into_bytes();
            m.extend(&body);
            let out = strip_results(&bytes::Bytes::from(m.clone()), "mx.a.test");
            proptest::prop_assert!(out.ends_with(&body));
            let kept = String::from_utf8_lossy(&out[..out.len() - body.len()]).to_ascii_lowercase();
            proptest::prop_assert!(!kept.contains("authentication-results: mx.a.test"));
            proptest::prop_assert!(!kept.contains("mx.a.test ;"));
            proptest::prop_assert_eq!(kept.matches("other.test").count(), text.to_ascii_lowercase().matches("other.test").count());
        }

        /// Any bytes to sign or strip: an answer, never a panic.
        #[test]
        fn arbitrary_messages_never_panic(m in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let m = bytes::Bytes::from(m);
            let _ = strip_results(&m, "mx.a.test");
            let _ = from_domain(&m);
        }
    }
}
