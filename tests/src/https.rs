//! An HTTPS server for tests (MTA-STS policy hosts): TLS through rustls with a given
//! certificate, answering every request with the response the test sets, bytes as given, so
//! that bad answers (redirects, wrong media types, huge bodies) can be served too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running HTTPS server; stops when dropped.
pub struct TestHttps {
    /// Where it listens.
    pub addr: SocketAddr,
    response: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl TestHttps {
    /// Serves on `ip` (port chosen by the system) with `config`.
    pub async fn start(ip: &str, config: Arc<rustls::ServerConfig>) -> TestHttps {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind test HTTPS");
        let addr = listener.local_addr().unwrap();
        let response: Arc<Mutex<Vec<u8>>> = Arc::default();
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (resp, reqs) = (response.clone(), requests.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, resp, reqs) = (acceptor.clone(), resp.clone(), reqs.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // The body, by Content-Length (requests here are small).
                    let end = head_end(&head);
                    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0)
                        .min(1 << 20);
                    while head.len() < end + len {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    reqs.lock().unwrap().push(head);
                    let out = resp.lock().unwrap().clone();
                    let _ = tls.write_all(&out).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TestHttps { addr, response, requests, _task: tokio_util::task::AbortOnDropHandle::new(task) }
    }

    /// Answers from now on with exactly `raw` (status line, headers and body).
    pub fn respond_raw(&self, raw: impl Into<Vec<u8>>) {
        *self.response.lock().unwrap() = raw.into();
    }

    /// Answers from now on with `200 OK`, `text/plain` and `body`.
    pub fn respond(&self, body: &str) {
        self.respond_raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
    }

    /// The requests' heads so far.
    pub fn requests(&self) -> Vec<String> {
        self.raw_requests().iter().map(|r| String::from_utf8_lossy(&r[..head_end(r)]).into_owned()).collect()
    }

    /// The requests so far, whole (head and body).
    pub fn raw_requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests came.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Where a request's head ends (after its blank line).
pub fn head_end(request: &[u8]) -> usize {
    request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |p| p + 4)
}
