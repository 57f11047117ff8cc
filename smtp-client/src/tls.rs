//! TLS for the client: policies, certificate verification, and a shared resumption cache.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use smtp_proto::tls_policy::provider;

use crate::error::Error;

/// When to use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// Never (only for tests and trusted local links).
    None,
    /// STARTTLS when the server offers it, else plaintext (RFC 7435 opportunistic security).
    #[default]
    Opportunistic,
    /// STARTTLS or fail: never falls back to plaintext.
    Required,
    /// TLS from the first byte (RFC 8314), e.g. port 465.
    Implicit,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Default)]
pub enum CertVerify {
    /// Against the public web PKI roots (webpki-roots).
    #[default]
    WebPki,
    /// Against the certificates in a PEM file.
    CaFile(PathBuf),
    /// Not at all: encryption without authentication. Only for tests and opportunistic TLS.
    Insecure,
    /// By DANE TLSA records (RFC 7672), found with DNSSEC for the server's name.
    Dane(Arc<[crate::dane::Tlsa]>),
}

/// Builds a rustls client configuration: TLS 1.3 preferred, TLS 1.2 with AEAD suites only, an
/// in-memory resumption cache (shared by every connection made with this configuration), and
/// no early data.
pub fn client_config(verify: &CertVerify) -> Result<Arc<ClientConfig>, Error> {
    client_config_for(verify, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// [`client_config`] limited to `versions` (for probes that ask which versions a server takes).
pub fn client_config_for(
    verify: &CertVerify,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, Error> {
    let builder = ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let mut config = match verify {
        CertVerify::WebPki => {
            let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        CertVerify::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = RootCertStore::empty();
            let mut pins = Vec::new();
            let bad = |reason: &dyn std::fmt::Display| Error::CaFile { path: path.clone(), reason: reason.to_string() };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
            for c in certs {
                let c = c.map_err(|e| bad(&e))?;
                // Some certificates cannot be trust anchors; they still count as pins.
                let _ = roots.add(c.clone());
                pins.push(c);
            }
            if pins.is_empty() {
                return Err(bad(&"no certificate in the file"));
            }
            let inner = (!roots.is_empty())
                .then(|| {
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()
                })
                .transpose()
                .map_err(|e| bad(&e))?;
            let verifier = CaFileVerifier { inner, pins, signatures: NoVerify(provider()) };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        CertVerify::Dane(records) => {
            let verifier = crate::dane::DaneVerifier::new(records.clone());
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        CertVerify::Insecure => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider()))).with_no_client_auth()
        }
    };
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// Verification against a CA file, as chains to its certificates, or as a pin: a server
/// certificate byte-identical to one in the file is accepted when it is valid for the name
/// (a self-signed certificate made with `openssl req -x509` is marked as a CA, which the web
/// PKI rules refuse as an end entity; swaks, `openssl s_client` and msmtp accept it when it is
/// the trust anchor given). Handshake signatures are always checked.
#[derive(Debug)]
struct CaFileVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pins: Vec<CertificateDer<'static>>,
    /// Handshake signatures, checked against the presented certificate's key.
    signatures: NoVerify,
}

impl ServerCertVerifier for CaFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chained = match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        };
        match chained {
            Ok(v) => Ok(v),
            Err(e) if self.pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity).map_err(|_| e)?;
                rustls::client::verify_server_name(&cert, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
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

/// Accepts any certificate but still checks handshake signatures (the other verifiers here
/// delegate their signature checks to it).
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
