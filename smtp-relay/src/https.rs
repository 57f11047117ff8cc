//! A small HTTPS client (hyper over rustls) for the transport-security policy work: fetching
//! MTA-STS policies and posting TLS reports. One request per connection, the peer's
//! certificate checked as outbound TLS is (the web PKI, or a CA file), the response body
//! bounded, the whole exchange within a time limit. Redirects are never followed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use smtp_client::CertVerify;
use tokio_rustls::TlsConnector;

use crate::dns::MxResolver;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpsError {
    /// The host could not be reached or the exchange failed (address, connection, TLS other
    /// than the certificate, HTTP, size, time limit).
    #[error("{0}")]
    Failed(String),
    /// The host's certificate is not valid for its name.
    #[error("certificate not valid: {0}")]
    Certificate(String),
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The media type (the `Content-Type` header), empty when absent.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
}

/// The client.
#[derive(Clone)]
pub struct HttpsClient {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").field("timeout", &self.timeout).finish()
    }
}

impl HttpsClient {
    /// Verifies hosts as `verify` says; gives each request `timeout`.
    pub fn new(verify: &CertVerify, timeout: Duration) -> Result<HttpsClient, smtp_client::Error> {
        let mut config = (*smtp_client::tls::client_config(verify)?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsClient { tls: TlsConnector::from(Arc::new(config)), timeout })
    }

    /// `GET https://HOST:PORT/PATH`, reading at most `limit` octets of body.
    pub async fn get(
        &self,
        resolver: &dyn MxResolver,
        host: &str,
        port: u16,
        path: &str,
        limit: usize,
    ) -> Result<Response, HttpsError> {
        let req = hyper::Request::get(path).body(Full::new(Bytes::new()));
        self.send(resolver, host, port, req, limit).await
    }

    /// `POST https://HOST:PORT/PATH` with `body` of media type `content_type`.
    pub async fn post(
        &self,
        resolver: &dyn MxResolver,
        url: &HttpsUrl,
        content_type: &str,
        body: Bytes,
    ) -> Result<Response, HttpsError> {
        let req = hyper::Request::post(&url.path).header(CONTENT_TYPE, content_type).body(Full::new(body));
        self.send(resolver, &url.host, url.port, req, 64 * 1024).await
    }

    async fn send(
        &self,
        resolver: &dyn MxResolver,
        host: &str,
        port: u16,
        req: Result<hyper::Request<Full<Bytes>>, hyper::http::Error>,
        limit: usize,
    ) -> Result<Response, HttpsError> {
        let mut req = req.map_err(|e| HttpsError::Failed(e.to_string()))?;
        let headers = req.headers_mut();
        headers.insert(HOST, host.parse().map_err(|_| HttpsError::Failed(format!("bad host name {host:?}")))?);
        headers.insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
        match tokio::time::timeout(self.timeout, self.exchange(resolver, host, port, req, limit)).await {
            Ok(r) => r,
            Err(_) => Err(HttpsError::Failed(format!("no answer within {:?}", self.timeout))),
        }
    }

    async fn exchange(
        &self,
        resolver: &dyn MxResolver,
        host: &str,
        port: u16,
        req: hyper::Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Response, HttpsError> {
        let failed = |s: String| HttpsError::Failed(s);
        let addrs = resolver.addresses(host).await.map_err(|e| failed(e.to_string()))?;
        let mut tcp = Err(failed("no address".to_string()));
        for ip in addrs {
            match tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(s) => {
                    tcp = Ok(s);
                    break;
                }
                Err(e) => tcp = Err(failed(format!("{ip} port {port}: {e}"))),
            }
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| failed("not a valid host name".to_string()))?;
        let tls = self.tls.connect(name, tcp?).await.map_err(|e| match certificate_error(&e) {
            Some(reason) => HttpsError::Certificate(reason),
            None => failed(format!("TLS: {e}")),
        })?;
        let http = |e: hyper::Error| failed(format!("HTTP: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(http)?;
        let _conn = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
        let response = sender.send_request(req).await.map_err(http)?;
        let status = response.status().as_u16();
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| failed(format!("body: {e} (at most {limit} octets)")))?
            .to_bytes();
        Ok(Response { status, content_type, body })
    }
}

/// An `https:` URI's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// The host name.
    pub host: String,
    /// The port (443 unless given).
    pub port: u16,
    /// The path and query (`/` at least).
    pub path: String,
}

impl HttpsUrl {
    /// Parses `https://HOST[:PORT][/PATH]`; `None` for anything else (other schemes, user
    /// info, IP literals in brackets).
    pub fn parse(uri: &str) -> Option<HttpsUrl> {
        let rest = uri.strip_prefix("https://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 443),
        };
        let plain = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        plain.then(|| HttpsUrl { host: host.to_ascii_lowercase(), port, path: path.to_string() })
    }
}

/// The verifier's complaint when a handshake failed on the peer's certificate.
fn certificate_error(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => Some(e.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls() {
        let u = HttpsUrl::parse("https://Reports.Example.com:8443/tls/rpt?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("reports.example.com", 8443, "/tls/rpt?x=1"));
        assert_eq!(HttpsUrl::parse("https://r.test").unwrap().path, "/");
        assert_eq!(HttpsUrl::parse("https://r.test").unwrap().port, 443);
        for bad in
            ["http://r.test/", "https://", "https://u@r.test/", "https://r.test:x/", "mailto:a@b", "https://[::1]/"]
        {
            assert_eq!(HttpsUrl::parse(bad), None, "{bad}");
        }
    }
}
