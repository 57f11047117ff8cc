//! The per-connection driver: feeds the socket to a `ServerSession`, answers its decisions
//! through the tower services, swaps plain TCP for TLS on STARTTLS, and applies timeouts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_proto::server::{Event, ServerSession, Timeout};
use smtp_proto::{codes, ForwardPath, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tower::{Service, ServiceExt};

use crate::body::{Body, BodySender};
use crate::error::BoxError;
use crate::policy::{Decision, PolicyKind, PolicyRequest};
use crate::server::{ConnectionInfo, MailService, PolicyService, Shared};
use crate::tls::TlsInfo;
use crate::transaction::{received_line, SessionInfo, Transaction};

/// The plain stream, or TLS over it after STARTTLS or on an implicit-TLS listener. The TLS state
/// is boxed so a plain idle connection's future stays small.
type Transport<IO> = Either<IO, Box<TlsStream<IO>>>;

/// Bytes read per system call.
const READ_CHUNK: usize = 16 * 1024;

/// A byte stream an SMTP session can run over (see [`crate::serve_connection`]): TCP, Unix
/// sockets and tokio's in-memory duplex implement it; so can any `AsyncRead + AsyncWrite` stream
/// with an empty `impl`.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Reads what is available; `None` at the end of the stream. This version reads into a
    /// fresh 16 KiB buffer; sockets wait for readability first, so an idle connection holds no
    /// read buffer.
    fn read_some(&mut self) -> impl std::future::Future<Output = std::io::Result<Option<Vec<u8>>>> + Send {
        async move {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = self.read(&mut buf).await?;
            buf.truncate(n);
            Ok((n > 0).then_some(buf))
        }
    }
}

/// Waits for readability, then reads into a stack buffer: nothing is held while idle.
macro_rules! socket_io {
    ($t:ty) => {
        impl Io for $t {
            async fn read_some(&mut self) -> std::io::Result<Option<Vec<u8>>> {
                loop {
                    self.readable().await?;
                    let mut buf = [0u8; READ_CHUNK];
                    match self.try_read(&mut buf) {
                        Ok(0) => return Ok(None),
                        Ok(n) => return Ok(Some(buf[..n].to_vec())),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    };
}
socket_io!(TcpStream);
socket_io!(UnixStream);
impl Io for tokio::io::DuplexStream {}

/// The one place where a failed service becomes an SMTP reply: `451 4.3.0`, never a dropped
/// connection.
pub fn service_error_reply(e: &BoxError) -> Reply {
    tracing::warn!(error = %e, "service failed");
    codes::local_error()
}

async fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    svc.ready().await.map_err(Into::into)?.call(req).await.map_err(Into::into)
}

enum End {
    Closed,
    Error,
}

struct Conn<P, M> {
    shared: Arc<Shared<P, M>>,
    session: ServerSession,
    info: SessionInfo,
    policy: P,
    mail: M,
    /// The transaction whose data is arriving: the body's sender and the mail service's task.
    data: Option<Transfer>,
    messages: u32,
}

/// A body in flight to the mail service.
struct Transfer {
    id: String,
    recipients: usize,
    body: Option<BodySender>,
    reply: tokio::task::JoinHandle<Result<Reply, BoxError>>,
}

pub(crate) async fn serve<IO: Io, P: PolicyService, M: MailService>(
    shared: Arc<Shared<P, M>>,
    io: IO,
    ConnectionInfo { peer, local, implicit_tls: implicit }: ConnectionInfo,
) {
    let mut info = SessionInfo { peer, local, helo: None, extended: false, tls: None, authenticated: None };
    metrics::counter!("tern_connections_accepted_total").increment(1);
    let _open = OpenConnection::new();
    let cfg = shared.options.session.clone();
    let (transport, session) = if implicit {
        let Some(acceptor) = shared.acceptor.clone() else { return };
        match Box::pin(tokio::time::timeout(shared.options.tls_handshake_timeout, acceptor.accept(io))).await {
            Ok(Ok(tls)) => {
                let tls_info = TlsInfo::from_rustls(tls.get_ref().1);
                count_tls(&tls_info);
                info.tls = Some(tls_info);
                (Either::Right(Box::new(tls)), ServerSession::new_tls(cfg))
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "implicit TLS handshake failed");
                metrics::counter!("tern_connections_refused_total", "reason" => "tls_handshake").increment(1);
                return;
            }
            Err(_) => {
                metrics::counter!("tern_connections_refused_total", "reason" => "tls_handshake").increment(1);
                return;
            }
        }
    } else {
        (Either::Left(io), ServerSession::new(cfg))
    };
    let mut conn = Conn {
        policy: shared.policy.clone(),
        mail: shared.mail.clone(),
        shared,
        session,
        info,
        data: None,
        messages: 0,
    };
    let end = conn.run(transport).await;
    tracing::info!(%peer, messages = conn.messages, tls = conn.info.tls.is_some(), clean = matches!(end, End::Closed), "connection closed");
}

/// Counts an open connection (`tern_connections_open`) for as long as it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        metrics::gauge!("tern_connections_open").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("tern_connections_open").decrement(1.0);
    }
}

fn count_tls(info: &TlsInfo) {
    let handshake = if info.resumed { "resumed" } else { "full" };
    metrics::counter!("tern_tls_sessions_total", "version" => info.version.clone(), "handshake" => handshake)
        .increment(1);
}

/// Counts the 4xx and 5xx replies in a batch of output (the last line of each reply: code and
/// a space).
fn count_rejections(out: &[u8]) {
    let (mut four, mut five) = (0u64, 0u64);
    for line in out.split(|&b| b == b'\n') {
        if line.len() >= 4 && line[3] == b' ' && line[1].is_ascii_digit() && line[2].is_ascii_digit() {
            match line[0] {
                b'4' => four += 1,
                b'5' => five += 1,
                _ => {}
            }
        }
    }
    if four > 0 {
        metrics::counter!("tern_replies_rejected_total", "class" => "4xx").increment(four);
    }
    if five > 0 {
        metrics::counter!("tern_replies_rejected_total", "class" => "5xx").increment(five);
    }
}

impl<P: PolicyService, M: MailService> Conn<P, M> {
    async fn run<IO: Io>(&mut self, mut transport: Transport<IO>) -> End {
        let mut tls_buf = Vec::new();
        // When the transaction in progress (MAIL accepted) must be over.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            while let Some(ev) = self.session.poll_event() {
                match ev {
                    Event::StartTls => {
                        if !self.write_out(&mut transport).await {
                            return End::Error;
                        }
                        transport = match Box::pin(self.upgrade(transport)).await {
                            Some(t) => t,
                            None => return End::Error,
                        };
                    }
                    Event::Close(_) => {
                        self.write_out(&mut transport).await;
                        let _ = transport.shutdown().await;
                        return End::Closed;
                    }
                    // Boxed: the rare, large futures (service calls) do not bloat every idle
                    // connection's state machine.
                    other => Box::pin(self.event(other)).await,
                }
            }
            if !self.write_out(&mut transport).await {
                return End::Error;
            }
            if !self.session.wants_input() {
                // Only reachable with a decision pending, which events above always answer.
                return End::Error;
            }
            let mut wait = match self.session.timeout() {
                Timeout::Command => self.shared.options.command_timeout,
                Timeout::Data => self.shared.options.data_timeout,
            };
            let in_transaction = self.session.envelope().is_some();
            deadline = match (in_transaction, deadline) {
                (false, _) => None,
                (true, None) => Some(tokio::time::Instant::now() + self.shared.options.transaction_deadline),
                (true, d) => d,
            };
            let over_deadline =
                deadline.is_some_and(|d| d.saturating_duration_since(tokio::time::Instant::now()) < wait);
            if let Some(d) = deadline.filter(|_| over_deadline) {
                wait = d.saturating_duration_since(tokio::time::Instant::now());
            }
            let read = tokio::select! {
                biased;
                _ = self.shared.force.cancelled() => return Box::pin(self.goodbye(&mut transport, codes::shutting_down())).await,
                _ = self.shared.shutdown.cancelled(), if !in_transaction => {
                    return Box::pin(self.goodbye(&mut transport, codes::shutting_down())).await;
                }
                r = tokio::time::timeout(wait, read_some(&mut transport, &mut tls_buf)) => r,
            };
            match read {
                Err(_) if over_deadline => {
                    tracing::info!(peer = %self.info.peer, "transaction deadline passed");
                    let r = Reply::new(
                        421,
                        Some(smtp_proto::EnhancedCode::new(4, 4, 2)),
                        "Transaction took too long, closing connection",
                    );
                    return Box::pin(self.goodbye(&mut transport, r)).await;
                }
                Err(_) => return Box::pin(self.goodbye(&mut transport, codes::timeout())).await,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    // Closed without QUIT: treated as RSET, nothing half-received goes on.
                    return End::Error;
                }
                Ok(Ok(Some(data))) => self.session.handle_input(&data),
            }
        }
    }

    async fn goodbye<IO: Io>(&mut self, transport: &mut Transport<IO>, reply: Reply) -> End {
        let _ = self.write_out(transport).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), transport.write_all(&reply.to_bytes())).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), transport.shutdown()).await;
        End::Closed
    }

    /// Writes pending output (one write per batch of replies: RFC 2920).
    async fn write_out<IO: Io>(&mut self, transport: &mut Transport<IO>) -> bool {
        let Some(out) = self.session.poll_output() else { return true };
        count_rejections(&out);
        let wait = self.shared.options.command_timeout;
        let res = tokio::time::timeout(wait, async {
            transport.write_all(&out).await?;
            transport.flush().await
        })
        .await;
        matches!(res, Ok(Ok(())))
    }

    async fn upgrade<IO: Io>(&mut self, transport: Transport<IO>) -> Option<Transport<IO>> {
        let (Either::Left(io), Some(acceptor)) = (transport, self.shared.acceptor.clone()) else { return None };
        // The session discarded everything buffered behind STARTTLS, and nothing sits in a read
        // buffer here: the handshake starts from a clean socket (RFC 3207 4.2, CVE-2011-0411).
        match Box::pin(tokio::time::timeout(self.shared.options.tls_handshake_timeout, acceptor.accept(io))).await {
            Ok(Ok(tls)) => {
                let info = TlsInfo::from_rustls(tls.get_ref().1);
                count_tls(&info);
                tracing::debug!(peer = %self.info.peer, version = %info.version, cipher = %info.cipher, resumed = info.resumed, "STARTTLS");
                self.info.tls = Some(info);
                self.info.helo = None;
                self.info.authenticated = None;
                self.session.tls_established();
                Some(Either::Right(Box::new(tls)))
            }
            Ok(Err(e)) => {
                tracing::info!(peer = %self.info.peer, error = %e, "STARTTLS handshake failed");
                metrics::counter!("tern_connections_refused_total", "reason" => "tls_handshake").increment(1);
                None
            }
            Err(_) => None,
        }
    }

    async fn decide(&mut self, kind: PolicyKind) {
        let req = PolicyRequest { session: self.info.clone(), kind };
        match call(&mut self.policy, req).await {
            Ok(Decision::Accept) => self.session.accept(),
            Ok(Decision::Respond(r)) => self.session.respond(r),
            Err(e) => self.session.respond(service_error_reply(&e)),
        }
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Hello { extended, domain } => {
                self.info.helo = Some(domain);
                self.info.extended = extended;
                self.session.accept();
            }
            Event::Mail { verb, from, params } => self.decide(PolicyKind::Mail { verb, from, params }).await,
            Event::Rcpt { to, params } => {
                let env = self.session.envelope().expect("RCPT only inside a transaction");
                let (verb, from) = (env.verb, env.from.clone());
                self.decide(PolicyKind::Rcpt { verb, from, to, params }).await
            }
            Event::Verify(s) => self.decide(PolicyKind::Verify(s)).await,
            Event::Expand(s) => self.decide(PolicyKind::Expand(s)).await,
            Event::Auth { mechanism, credentials } => {
                let user = credentials.username.clone();
                self.decide(PolicyKind::Auth { mechanism, credentials }).await;
                if self.session.is_authenticated() {
                    self.info.authenticated = Some(user);
                }
            }
            Event::DataStart => self.start_data().await,
            // Dropping the sender tells the service the data is incomplete: it stores nothing.
            Event::DataAborted(_) | Event::Reset => self.data = None,
            Event::DataChunk(b) => {
                if let Some(sender) = self.data.as_ref().and_then(|t| t.body.as_ref()) {
                    let wait = self.shared.options.data_timeout;
                    if !matches!(tokio::time::timeout(wait, sender.chunk(b)).await, Ok(true)) {
                        // The service answered early or stalled; the rest of the data is read and
                        // dropped, and the end of data gets the service's reply.
                        if let Some(t) = &mut self.data {
                            t.body = None;
                        }
                    }
                }
            }
            Event::DataEnd => {
                let reply = self.finish_data().await;
                self.session.respond(reply);
            }
            Event::StartTls | Event::Close(_) => {}
        }
    }

    /// Calls the mail service with the envelope as the data starts; the body follows.
    async fn start_data(&mut self) {
        let env = self.session.envelope().expect("data starts inside a transaction").clone();
        let id = self.shared.next_id();
        let at = SystemTime::now();
        let single = match env.recipients.as_slice() {
            [r] => match &r.path {
                ForwardPath::Path(p) => Some(format!("<{}>", p.mailbox)),
                ForwardPath::Postmaster => Some("<postmaster>".into()),
            },
            _ => None,
        };
        let private = self.shared.options.private_received_for_auth && self.info.authenticated.is_some();
        let hostname = &self.shared.options.session.hostname;
        let received = received_line(hostname, &id, &self.info, single.as_deref(), at, private);
        let (sender, body) = Body::channel();
        let recipients = env.recipients.len();
        let tx =
            Transaction { id: id.clone(), session: self.info.clone(), envelope: env, received, received_at: at, body };
        let call = match self.mail.ready().await {
            Ok(svc) => svc.call(tx),
            Err(e) => {
                let e: BoxError = e.into();
                let reply = tokio::spawn(async move { Err(e) });
                self.data = Some(Transfer { id, recipients, body: None, reply });
                return;
            }
        };
        let reply = tokio::spawn(async move { call.await.map_err(Into::into) });
        self.data = Some(Transfer { id, recipients, body: Some(sender), reply });
    }

    /// Marks the data complete and waits for the mail service's reply.
    async fn finish_data(&mut self) -> Reply {
        let Some(Transfer { id, recipients: n, body, reply }) = self.data.take() else { return codes::local_error() };
        if let Some(sender) = body {
            sender.end().await;
        }
        let result = match reply.await {
            Ok(r) => r,
            Err(e) => Err(BoxError::from(format!("mail service task failed: {e}"))),
        };
        match result {
            Ok(reply) => {
                self.messages += 1;
                tracing::info!(peer = %self.info.peer, %id, recipients = n, code = reply.code(), "message");
                reply
            }
            Err(e) => service_error_reply(&e),
        }
    }
}

/// Reads what is available: from the plain stream, or through TLS into the connection's buffer.
async fn read_some<IO: Io>(transport: &mut Transport<IO>, tls_buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    match transport {
        Either::Left(io) => io.read_some().await,
        Either::Right(tls) => {
            tls_buf.resize(READ_CHUNK, 0);
            let n = tls.read(tls_buf).await?;
            Ok((n > 0).then(|| tls_buf[..n].to_vec()))
        }
    }
}
