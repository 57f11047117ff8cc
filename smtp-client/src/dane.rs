//! DANE for SMTP (RFC 7672): authenticating a server by TLSA records (RFC 6698) inside a rustls
//! certificate verifier, so the handshake's signature is checked against the very certificate
//! the records matched — never an accept-all handshake compared afterwards.
//!
//! Usable records are DANE-EE(3) — the server's own certificate or public key; no name or
//! expiry checks (RFC 7672 3.1.1) — and DANE-TA(2) — a certificate in the presented chain is
//! the trust anchor; the chain to it and the name are checked (RFC 7672 3.1.2). PKIX-TA(0) and
//! PKIX-EE(1) are unusable for SMTP (RFC 7672 3.1.3).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use smtp_proto::tls_policy::provider;

use crate::tls::NoVerify;

/// One TLSA record: certificate usage, selector, matching type and association data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// 2 = DANE-TA, 3 = DANE-EE (0 and 1, the PKIX usages, are unusable for SMTP).
    pub usage: u8,
    /// 0 = the whole certificate, 1 = its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 = the selected data itself, 1 = its SHA-256, 2 = its SHA-512.
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether an SMTP client can use the record (RFC 7672 3.1).
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2 && !self.data.is_empty()
    }

    /// Whether the record matches a certificate (DER).
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert,
            1 => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The SubjectPublicKeyInfo of a certificate (DER), found by walking the TBSCertificate:
/// `[0] version` (optional), serial, signature algorithm, issuer, validity, subject, SPKI.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let mut rest = tbs_after_version(cert)?;
    for _ in 0..5 {
        rest = der(rest)?.2;
    }
    let whole = rest;
    let (tag, _, after) = der(rest)?;
    (tag == 0x30).then(|| &whole[..whole.len() - after.len()])
}

/// A certificate's TBSCertificate from the serial number on (the optional `[0] version`
/// skipped).
fn tbs_after_version(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert_body, _) = der(cert)?;
    let (_, tbs, _) = der(cert_body)?;
    let (tag, _, after) = der(tbs)?;
    Some(if tag == 0xa0 { after } else { tbs })
}

/// When a certificate (DER) stops being valid, in seconds since the Unix epoch: the
/// `notAfter` of its validity (UTCTime or GeneralizedTime, UTC).
pub fn not_after(cert: &[u8]) -> Option<u64> {
    let mut rest = tbs_after_version(cert)?;
    for _ in 0..3 {
        rest = der(rest)?.2;
    }
    let (tag, validity, _) = der(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der(validity)?;
    let (tag, time, _) = der(rest)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        // UTCTime: YY 50-99 are 19YY (RFC 5280 4.1.2.5.1).
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u8> { rest.get(i..i + 2)?.parse().ok() };
    let date = time::Date::from_calendar_date(year, time::Month::try_from(field(0)?).ok()?, field(2)?).ok()?;
    let at = date.with_hms(field(4)?, field(6)?, field(8)?).ok()?.assume_utc();
    u64::try_from(at.unix_timestamp()).ok()
}

/// One DER element: its tag, contents, and what follows it.
fn der(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A rustls verifier that authenticates by TLSA records.
#[derive(Debug)]
pub(crate) struct DaneVerifier {
    records: Arc<[Tlsa]>,
    /// Handshake signatures, checked against the presented certificate's key.
    signatures: NoVerify,
}

impl DaneVerifier {
    pub(crate) fn new(records: Arc<[Tlsa]>) -> DaneVerifier {
        DaneVerifier { records, signatures: NoVerify(provider()) }
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let usable = self.records.iter().filter(|r| r.usable());
        // DANE-EE: the server's own certificate or key; no name or expiry checks.
        if usable.clone().any(|r| r.usage == 3 && r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a presented issuer certificate is the trust anchor; the chain to it is built
        // and the name checked as for any CA.
        for ta in intermediates.iter().filter(|c| usable.clone().any(|r| r.usage == 2 && r.matches(c))) {
            let mut roots = RootCertStore::empty();
            if roots.add(ta.clone().into_owned()).is_err() {
                continue;
            }
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.signatures.0.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            if let Ok(v) = verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                return Ok(v);
            }
        }
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(d: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, d).as_ref().to_vec()
    }

    fn sha512(d: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, d).as_ref().to_vec()
    }

    #[test]
    fn not_after_is_read_from_real_certificates() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        for (y, m, d) in [(2031, 7, 9), (2049, 12, 31), (2050, 1, 1), (2100, 2, 28)] {
            let mut p = rcgen::CertificateParams::new(vec!["mx.test".into()]).unwrap();
            p.not_after = rcgen::date_time_ymd(y, m, d);
            let cert = p.self_signed(&key).unwrap();
            let want = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d)
                .unwrap()
                .midnight()
                .assume_utc()
                .unix_timestamp() as u64;
            assert_eq!(not_after(cert.der()), Some(want), "{y}-{m}-{d}");
        }
        assert_eq!(not_after(b"junk"), None);
    }

    #[test]
    fn spki_is_found_in_real_certificates() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["mx.test".into()]).unwrap().self_signed(&key).unwrap();
            assert_eq!(spki(cert.der()), Some(key.public_key_der().as_slice()), "{alg:?}");
        }
        assert_eq!(spki(b""), None);
        assert_eq!(spki(&[0x30, 0x82, 0xff]), None, "a length past the end");
        assert_eq!(spki(&[0x30, 0x03, 0x30, 0x01, 0x00]), None, "too few fields");
    }

    #[test]
    fn matching_by_selector_and_matching_type() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.test".into()]).unwrap().self_signed(&key).unwrap();
        let (der, pk) = (cert.der().to_vec(), key.public_key_der());
        let rec = |usage, selector, matching, data: Vec<u8>| Tlsa { usage, selector, matching, data };
        for r in [
            rec(3, 0, 0, der.clone()),
            rec(3, 0, 1, sha256(&der)),
            rec(3, 0, 2, sha512(&der)),
            rec(3, 1, 0, pk.clone()),
            rec(3, 1, 1, sha256(&pk)),
            rec(3, 1, 2, sha512(&pk)),
        ] {
            assert!(r.usable() && r.matches(&der), "{r:?}");
        }
        let other = rcgen::KeyPair::generate().unwrap();
        for r in [rec(3, 1, 1, sha256(&other.public_key_der())), rec(3, 0, 1, sha512(&der)), rec(3, 1, 1, sha256(&der))]
        {
            assert!(!r.matches(&der), "{r:?}");
        }
        for r in [rec(0, 0, 1, sha256(&der)), rec(1, 1, 1, sha256(&pk)), rec(3, 2, 1, vec![1]), rec(3, 1, 3, vec![1])] {
            assert!(!r.usable(), "PKIX usages and unknown selectors or matching types: {r:?}");
        }
        assert!(!rec(3, 2, 0, der.clone()).matches(&der) && !rec(3, 0, 3, der.clone()).matches(&der));
        assert!(!rec(3, 0, 1, vec![]).usable(), "no data");
    }
}
