//! Fetching a policy file over HTTPS (RFC 8461 3.3): `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`,
//! a WebPKI-valid certificate for that name, status 200 only (no redirects followed), a
//! `text/plain` body of at most 64 KB, all within a time limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use smtp_client::CertVerify;
use tokio_rustls::TlsConnector;

use super::{parse_policy, Policy, StsError};
use crate::dns::MxResolver;

/// The largest policy file read (RFC 8461 3.3 suggests 64 KB).
pub const MAX_POLICY: usize = 64 * 1024;

/// Why a policy could not be had. Each maps to a TLS-RPT result type (RFC 8460 4.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy host could not be reached or did not answer as RFC 8461 3.3 requires
    /// (address, connection, HTTP status, media type, size, time limit).
    #[error("MTA-STS policy fetch from {host}: {reason}")]
    Fetch {
        /// `mta-sts.DOMAIN`.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The policy host's certificate is not valid for its name.
    #[error("MTA-STS policy host {host}: certificate not valid: {reason}")]
    WebPki {
        /// `mta-sts.DOMAIN`.
        host: String,
        /// What the verifier said.
        reason: String,
    },
    /// The policy file was fetched but does not parse.
    #[error("MTA-STS policy from {host}: {error}")]
    Invalid {
        /// `mta-sts.DOMAIN`.
        host: String,
        /// The parse error.
        error: StsError,
    },
}

impl FetchError {
    /// The RFC 8460 4.3 result type to report.
    pub fn result_type(&self) -> &'static str {
        match self {
            FetchError::Fetch { .. } => "sts-policy-fetch-error",
            FetchError::WebPki { .. } => "sts-webpki-invalid",
            FetchError::Invalid { .. } => "sts-policy-invalid",
        }
    }
}

/// Fetches policy files.
#[derive(Clone)]
pub struct Fetcher {
    tls: TlsConnector,
    port: u16,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("port", &self.port).field("timeout", &self.timeout).finish()
    }
}

impl Fetcher {
    /// Verifies policy hosts as `verify` says (the web PKI in production), connects to `port`
    /// (443; another only in tests), and gives a whole fetch `timeout`.
    pub fn new(verify: &CertVerify, port: u16, timeout: Duration) -> Result<Fetcher, smtp_client::Error> {
        let mut config = (*smtp_client::tls::client_config(verify)?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher { tls: TlsConnector::from(Arc::new(config)), port, timeout })
    }

    /// Fetches and parses the policy of `domain`; returns it with its text (for the cache).
    pub async fn fetch(&self, resolver: &dyn MxResolver, domain: &str) -> Result<(Policy, String), FetchError> {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        let text = match tokio::time::timeout(self.timeout, self.get(resolver, &host)).await {
            Ok(r) => r?,
            Err(_) => return Err(fetch_error(&host, format!("no answer within {:?}", self.timeout))),
        };
        let policy = parse_policy(&text).map_err(|error| FetchError::Invalid { host, error })?;
        Ok((policy, text))
    }

    async fn get(&self, resolver: &dyn MxResolver, host: &str) -> Result<String, FetchError> {
        let addrs = resolver.addresses(host).await.map_err(|e| fetch_error(host, e.to_string()))?;
        let mut tcp = Err(fetch_error(host, "no address".to_string()));
        for ip in addrs {
            match tokio::net::TcpStream::connect(SocketAddr::new(ip, self.port)).await {
                Ok(s) => {
                    tcp = Ok(s);
                    break;
                }
                Err(e) => tcp = Err(fetch_error(host, format!("{ip} port {}: {e}", self.port))),
            }
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| fetch_error(host, "not a valid host name".to_string()))?;
        let tls = self.tls.connect(name, tcp?).await.map_err(|e| match certificate_error(&e) {
            Some(reason) => FetchError::WebPki { host: host.to_string(), reason },
            None => fetch_error(host, format!("TLS: {e}")),
        })?;
        let http = |e: hyper::Error| fetch_error(host, format!("HTTP: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(http)?;
        let _conn = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(HOST, host)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_error(host, e.to_string()))?;
        let response = sender.send_request(request).await.map_err(http)?;
        // RFC 8461 3.3: only 200 counts; redirects are not followed.
        if response.status() != hyper::StatusCode::OK {
            return Err(fetch_error(host, format!("HTTP status {} (only 200 is accepted)", response.status())));
        }
        let media = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !media.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/plain") {
            return Err(fetch_error(host, format!("media type {media:?}, not text/plain")));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY)
            .collect()
            .await
            .map_err(|e| fetch_error(host, format!("body: {e} (at most {MAX_POLICY} octets)")))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| FetchError::Invalid {
            host: host.to_string(),
            error: StsError::Policy { line: None, reason: "not UTF-8 text" },
        })
    }
}

fn fetch_error(host: &str, reason: String) -> FetchError {
    FetchError::Fetch { host: host.to_string(), reason }
}

/// The verifier's complaint when a handshake failed on the peer's certificate.
fn certificate_error(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => Some(e.to_string()),
        _ => None,
    }
}
