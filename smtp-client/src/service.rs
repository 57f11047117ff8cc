//! A tower [`Service`](tower::Service) that sends one message to one destination, reusing connections from a
//! small pool per destination.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use smtp_proto::Envelope;

use crate::conn::{Connection, SendOutcome, SmtpClient};
use crate::error::Error;
use crate::message::Body;

/// Where to send: host (name or address) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Host name or IP address (also the name checked against the certificate).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// An address already resolved for `host` (for example from an MX lookup); when `None`,
    /// `host` is resolved with the system resolver.
    pub addr: Option<std::net::SocketAddr>,
}

/// One message for one destination.
#[derive(Debug)]
pub struct SendRequest {
    /// The next hop.
    pub destination: Destination,
    /// The envelope.
    pub envelope: Envelope,
    /// The message: in memory, or streamed from a reader (a relay's spool file).
    pub body: Body,
}

/// Sends messages, keeping up to `max_idle` open connections per destination for reuse (RSET
/// before each reuse checks the connection is still alive).
#[derive(Clone)]
pub struct SmtpService {
    client: SmtpClient,
    pool: Arc<Mutex<HashMap<Destination, Vec<Connection>>>>,
    max_idle: usize,
}

impl SmtpService {
    /// A service over `client` keeping `max_idle` idle connections per destination.
    pub fn new(client: SmtpClient, max_idle: usize) -> Self {
        SmtpService { client, pool: Arc::default(), max_idle }
    }

    /// The client (for handshake counters).
    pub fn client(&self) -> &SmtpClient {
        &self.client
    }

    fn take(&self, d: &Destination) -> Option<Connection> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).get_mut(d).and_then(Vec::pop)
    }

    fn put(&self, d: Destination, c: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.entry(d).or_default();
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    /// Sends one message, on a pooled connection when one is alive.
    pub async fn send(&self, req: SendRequest) -> Result<SendOutcome, Error> {
        let d = req.destination;
        let mut conn = loop {
            match self.take(&d) {
                Some(mut c) => {
                    if c.can_send() && c.rset().await.is_ok_and(|r| r.is_positive()) {
                        break c;
                    }
                }
                None => match d.addr {
                    Some(addr) => break self.client.connect_addr(addr, &d.host).await?,
                    None => break self.client.connect(&d.host, d.port).await?,
                },
            }
        };
        let outcome = conn.send(&req.envelope, req.body).await?;
        if conn.can_send() {
            self.put(d, conn);
        } else {
            let _ = conn.quit().await;
        }
        Ok(outcome)
    }
}

impl tower::Service<SendRequest> for SmtpService {
    type Response = SendOutcome;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<SendOutcome, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SendRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}
