//! The accept loop, connection limits and graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::server::ServerConfig;
use smtp_proto::{codes, Reply};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{BoxError, Error};
use crate::policy::{Decision, PolicyRequest};
use crate::transaction::Transaction;

/// Everything that shapes the server's behaviour.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The protocol session's limits and extensions (hostname, sizes, recipients, ...).
    pub session: ServerConfig,
    /// Plain listeners (STARTTLS offered when `tls` is set).
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314), e.g. port 465.
    pub implicit_tls: Vec<SocketAddr>,
    /// The TLS configuration, for STARTTLS and implicit TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Waiting for a command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for the next block of message data.
    pub data_timeout: Duration,
    /// Completing a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// A whole transaction, from MAIL to the end of data: per-read timeouts alone let a client
    /// that sends a byte now and then hold a transaction open for ever. Past it: `421 4.4.2`.
    pub transaction_deadline: Duration,
    /// Most connections at once; more get `421 4.7.0`.
    pub max_connections: usize,
    /// Most connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Leave the client's address and HELO name out of `Received:` for authenticated sessions.
    pub private_received_for_auth: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            session: ServerConfig::default(),
            listen: Vec::new(),
            implicit_tls: Vec::new(),
            tls: None,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(30),
            transaction_deadline: Duration::from_secs(600),
            max_connections: 4096,
            max_connections_per_ip: 256,
            private_received_for_auth: false,
        }
    }
}

/// Builds a [`Server`].
#[derive(Debug, Default)]
pub struct Builder {
    options: ServerOptions,
    /// Listeners bound elsewhere (socket activation, a test holding its port), plain first.
    adopted: Vec<std::net::TcpListener>,
}

impl Builder {
    /// Starts from defaults with the given host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        let mut options = ServerOptions::default();
        options.session.hostname = hostname.into();
        Builder { options, adopted: Vec::new() }
    }

    /// Adds a plain listener (STARTTLS when TLS is configured).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.options.listen.push(addr);
        self
    }

    /// Adds a plain listener that is already bound and listening, e.g. one handed over by a
    /// service manager or held by a test so that its port is never free in between.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.adopted.push(listener);
        self
    }

    /// Adds an implicit-TLS listener (RFC 8314).
    pub fn listen_implicit_tls(mut self, addr: SocketAddr) -> Self {
        self.options.implicit_tls.push(addr);
        self
    }

    /// Sets the TLS configuration (see [`crate::tls`]).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.options.tls = Some(config);
        self
    }

    /// Changes any option.
    pub fn options(mut self, f: impl FnOnce(&mut ServerOptions)) -> Self {
        f(&mut self.options);
        self
    }

    /// Binds the listeners. `policy` answers MAIL/RCPT/VRFY/EXPN/AUTH; `mail` takes each message
    /// and its reply is sent to the client.
    pub async fn bind<P, M>(self, policy: P, mail: M) -> Result<Server<P, M>, Error>
    where
        P: PolicyService,
        M: MailService,
    {
        let o = self.options;
        if o.listen.is_empty() && o.implicit_tls.is_empty() && self.adopted.is_empty() {
            return Err(Error::Config("no listener"));
        }
        if !o.implicit_tls.is_empty() && o.tls.is_none() {
            return Err(Error::Config("implicit TLS listener without a TLS configuration"));
        }
        let mut listeners = Vec::new();
        for l in self.adopted {
            let adopt = |l: std::net::TcpListener| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            };
            let addr = l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            listeners.push((adopt(l).map_err(|source| Error::Bind { addr, source })?, false));
        }
        for (addrs, implicit) in [(&o.listen, false), (&o.implicit_tls, true)] {
            for &addr in addrs {
                let l = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
                listeners.push((l, implicit));
            }
        }
        let shared = Arc::new(Shared::new(o, policy, mail));
        Ok(Server { shared, listeners })
    }
}

/// A policy service: `Service<PolicyRequest, Response = Decision>`, cloned per connection.
pub trait PolicyService:
    tower::Service<PolicyRequest, Response = Decision, Error: Into<BoxError>, Future: Send> + Clone + Send + Sync + 'static
{
}
impl<T> PolicyService for T where
    T: tower::Service<PolicyRequest, Response = Decision, Error: Into<BoxError>, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A mail service: `Service<Transaction, Response = Reply>`, cloned per connection. It is called
/// when the data starts; its future runs as its own task while the connection feeds the body.
pub trait MailService:
    tower::Service<Transaction, Response = Reply, Error: Into<BoxError>, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}
impl<T> MailService for T where
    T: tower::Service<Transaction, Response = Reply, Error: Into<BoxError>, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

pub(crate) struct Shared<P, M> {
    pub(crate) options: ServerOptions,
    pub(crate) acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) policy: P,
    pub(crate) mail: M,
    pub(crate) shutdown: CancellationToken,
    pub(crate) force: CancellationToken,
    pub(crate) tracker: TaskTracker,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: Mutex<usize>,
}

/// Transaction ids are unique in the process, however many servers or connections it runs.
static IDS: AtomicU64 = AtomicU64::new(0);

impl<P, M> Shared<P, M> {
    fn new(mut options: ServerOptions, policy: P, mail: M) -> Self {
        options.session.starttls = options.tls.is_some();
        Shared {
            acceptor: options.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            options,
            policy,
            mail,
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
            per_ip: Mutex::new(HashMap::new()),
            total: Mutex::new(0),
        }
    }

    /// A unique id: seconds since the epoch, the process id and a counter, in hex.
    pub(crate) fn next_id(&self) -> String {
        let n = IDS.fetch_add(1, Ordering::Relaxed);
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        format!("{secs:X}{:04X}{n:06X}", std::process::id() & 0xffff)
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnGuard<P, M>> {
        let mut total = self.total.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *total >= self.options.max_connections || *n >= self.options.max_connections_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(ConnGuard { shared: self.clone(), ip })
    }
}

/// Frees a connection slot when the connection ends.
pub(crate) struct ConnGuard<P, M> {
    shared: Arc<Shared<P, M>>,
    ip: IpAddr,
}

impl<P, M> Drop for ConnGuard<P, M> {
    fn drop(&mut self) {
        *self.shared.total.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A bound SMTP server; [`Server::run`] serves until shut down.
pub struct Server<P, M> {
    shared: Arc<Shared<P, M>>,
    listeners: Vec<(TcpListener, bool)>,
}

/// Stops a running server.
#[derive(Clone)]
pub struct ShutdownHandle {
    shutdown: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl ShutdownHandle {
    /// Graceful shutdown: stop accepting, close idle sessions with `421`, let transactions in
    /// flight finish for up to `grace`, then send `421` to the rest and close them.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            self.force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

impl Server<(), ()> {
    /// Starts building a server.
    pub fn builder(hostname: impl Into<String>) -> Builder {
        Builder::new(hostname)
    }
}

impl<P: PolicyService, M: MailService> Server<P, M> {
    /// The bound addresses, plain listeners first.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect()
    }

    /// A handle to stop the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shutdown: self.shared.shutdown.clone(),
            force: self.shared.force.clone(),
            tracker: self.shared.tracker.clone(),
        }
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called and every connection has ended.
    pub async fn run(self) {
        let mut loops = Vec::new();
        for (listener, implicit) in self.listeners {
            let shared = self.shared.clone();
            loops.push(tokio::spawn(accept_loop(shared, listener, implicit)));
        }
        for l in loops {
            let _ = l.await;
        }
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

async fn accept_loop<P: PolicyService, M: MailService>(
    shared: Arc<Shared<P, M>>,
    listener: TcpListener,
    implicit: bool,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        match shared.admit(peer.ip()) {
            Some(guard) => {
                let shared2 = shared.clone();
                let info = ConnectionInfo { peer, local, implicit_tls: implicit };
                shared.tracker.spawn(async move {
                    crate::conn::serve(shared2, tcp, info).await;
                    drop(guard);
                });
            }
            None => {
                metrics::counter!("tern_connections_refused_total", "reason" => "limit").increment(1);
                shared.tracker.spawn(refuse(tcp, codes::too_many_connections()));
            }
        }
    }
}

/// Where a connection comes from, for [`serve_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address (for `Received:`, logs and the policy service).
    pub peer: SocketAddr,
    /// This side's address.
    pub local: SocketAddr,
    /// Whether TLS starts at once (RFC 8314) instead of after STARTTLS; needs `options.tls`.
    pub implicit_tls: bool,
}

/// Serves one SMTP session over any byte stream — a Unix socket, an in-memory duplex, a
/// connection from the embedder's own accept loop — with the same driver [`Server`] runs for
/// each TCP connection (timeouts, STARTTLS, streaming bodies). Returns when the session ends.
/// Connection limits and graceful shutdown are the caller's: drop the future to end it.
pub async fn serve_connection<IO, P, M>(io: IO, info: ConnectionInfo, options: ServerOptions, policy: P, mail: M)
where
    IO: crate::conn::Io,
    P: PolicyService,
    M: MailService,
{
    crate::conn::serve(Arc::new(Shared::new(options, policy, mail)), io, info).await
}

async fn refuse(mut tcp: TcpStream, reply: Reply) {
    tracing::info!(peer = ?tcp.peer_addr().ok(), "connection refused: limit reached");
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&reply.to_bytes())).await;
    let _ = tcp.shutdown().await;
}
