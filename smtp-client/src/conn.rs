//! Connecting, negotiating (EHLO/HELO, STARTTLS, AUTH) and sending over one SMTP connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smtp_proto::auth::{AuthMechanism, Secret};
use smtp_proto::client::{BodyFacts, ClientConfig, ClientEvent, ClientSession, CommandKind, DataMode, EnvelopeOutcome};
pub use smtp_proto::tls_policy::TlsInfo;
use smtp_proto::{Capabilities, Command, Domain, DotStuffer, Envelope, ForwardPath, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::error::{Error, Phase};
use crate::message::Body;
use crate::tls::{client_config, CertVerify, TlsMode};

/// How long to wait at each step (RFC 5321 4.5.3.2 defaults).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The 220 greeting (5 minutes).
    pub greeting: Duration,
    /// A reply to MAIL, RCPT, EHLO and other commands (5 minutes).
    pub command: Duration,
    /// The TLS handshake.
    pub tls: Duration,
    /// Sending a block of data, and the DATA command's 354 (3 and 2 minutes).
    pub data_block: Duration,
    /// The reply after the end of data (10 minutes).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            tls: Duration::from_secs(60),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The name sent in EHLO/HELO.
    pub ehlo_name: Domain,
    /// When to use TLS.
    pub tls: TlsMode,
    /// How to check the server's certificate.
    pub verify: CertVerify,
    /// Credentials for AUTH (PLAIN preferred, else LOGIN).
    pub auth: Option<(String, Secret)>,
    /// Allow AUTH on an unencrypted connection (off: the password would travel in clear).
    pub allow_plaintext_auth: bool,
    /// Use BDAT when the server offers CHUNKING and PIPELINING.
    pub use_chunking: bool,
    /// Speak LMTP (RFC 2033) to a mail store: LHLO, and each accepted recipient's own reply
    /// after the data (in [`SendOutcome::data`]).
    pub lmtp: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl ClientOptions {
    /// Defaults: opportunistic STARTTLS verified against web PKI roots, no AUTH.
    pub fn new(ehlo_name: Domain) -> Self {
        ClientOptions {
            ehlo_name,
            tls: TlsMode::Opportunistic,
            verify: CertVerify::WebPki,
            auth: None,
            allow_plaintext_auth: false,
            use_chunking: true,
            lmtp: false,
            timeouts: Timeouts::default(),
        }
    }
}

/// Counts TLS handshakes.
#[derive(Debug, Default)]
struct Stats {
    full: AtomicU64,
    resumed: AtomicU64,
}

/// Makes connections. Cheap to clone; clones share the TLS resumption cache and counters.
#[derive(Debug, Clone)]
pub struct SmtpClient {
    options: Arc<ClientOptions>,
    tls: Option<Arc<rustls::ClientConfig>>,
    stats: Arc<Stats>,
}

/// Chunk size for reading and writing message data.
const CHUNK: usize = 64 * 1024;

impl SmtpClient {
    /// A client with these options.
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        let tls = match options.tls {
            TlsMode::None => None,
            _ => Some(client_config(&options.verify)?),
        };
        Ok(SmtpClient { options: Arc::new(options), tls, stats: Arc::default() })
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// (full, resumed) TLS handshakes made so far by this client and its clones.
    pub fn handshakes(&self) -> (u64, u64) {
        (self.stats.full.load(Ordering::Relaxed), self.stats.resumed.load(Ordering::Relaxed))
    }

    /// A copy of this client with another TLS mode, sharing the resumption cache.
    pub fn with_tls_mode(&self, mode: TlsMode) -> Result<Self, Error> {
        let mut options = (*self.options).clone();
        options.tls = mode;
        let tls = match (mode, &self.tls) {
            (TlsMode::None, _) => None,
            (_, Some(t)) => Some(t.clone()),
            (_, None) => Some(client_config(&options.verify)?),
        };
        Ok(SmtpClient { options: Arc::new(options), tls, stats: self.stats.clone() })
    }

    /// Resolves `host` and connects to the first address that answers.
    pub async fn connect(&self, host: &str, port: u16) -> Result<Connection, Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| Error::Resolve { host: host.to_string(), source })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match self.connect_addr(addr, host).await {
                Ok(c) => return Ok(c),
                Err(e @ Error::Connect { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Resolve {
            host: host.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        }))
    }

    /// Connects to `addr`; `server_name` is checked against the certificate.
    pub async fn connect_addr(&self, addr: SocketAddr, server_name: &str) -> Result<Connection, Error> {
        let t = self.options.timeouts;
        let tcp = tokio::time::timeout(t.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(Phase::Connect))?
            .map_err(|source| Error::Connect { addr: addr.to_string(), source })?;
        let _ = tcp.set_nodelay(true);
        self.start(Either::Left(tcp), server_name).await
    }

    /// Connects to a Unix-domain socket (an LMTP mail store on this host). No TLS: the socket
    /// never leaves the machine, so a TLS mode other than `None` is refused.
    pub async fn connect_unix(&self, path: &std::path::Path) -> Result<Connection, Error> {
        if self.options.tls != TlsMode::None {
            return Err(Error::Refused("TLS over a Unix socket"));
        }
        let t = self.options.timeouts;
        let unix = tokio::time::timeout(t.connect, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| Error::Timeout(Phase::Connect))?
            .map_err(|source| Error::Connect { addr: path.display().to_string(), source })?;
        self.start(Either::Right(unix), "localhost").await
    }

    /// Greeting, EHLO (or LHLO), STARTTLS and AUTH as the options say, over a fresh stream.
    async fn start(
        &self,
        stream: Either<TcpStream, tokio::net::UnixStream>,
        server_name: &str,
    ) -> Result<Connection, Error> {
        let t = self.options.timeouts;
        let mut config = ClientConfig::new(self.options.ehlo_name.clone());
        config.lmtp = self.options.lmtp;
        let mut conn = Connection {
            client: self.clone(),
            server_name: server_name.to_string(),
            io: Some(Either::Left(stream)),
            session: ClientSession::new(config.clone()),
            buf: vec![0u8; 16 * 1024],
            tls_info: None,
        };
        if self.options.tls == TlsMode::Implicit {
            conn.upgrade().await?;
            conn.session = ClientSession::new_tls(config);
        }
        conn.expect_ready(t.greeting, Phase::Greeting).await?;
        let offered = conn.session.capabilities().starttls;
        match self.options.tls {
            TlsMode::Required if !offered => return Err(Error::TlsUnavailable),
            TlsMode::Required | TlsMode::Opportunistic if offered => conn.starttls().await?,
            _ => {}
        }
        if let Some((user, pass)) = &self.options.auth {
            conn.authenticate(user, pass).await?;
        }
        Ok(conn)
    }
}

/// An open SMTP connection, ready for transactions.
pub struct Connection {
    client: SmtpClient,
    server_name: String,
    /// `None` only after a failed TLS upgrade: the connection is then unusable.
    io: Option<Either<Either<TcpStream, tokio::net::UnixStream>, TlsStream<TcpStream>>>,
    session: ClientSession,
    buf: Vec<u8>,
    tls_info: Option<TlsInfo>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("server", &self.server_name).field("tls", &self.tls_info).finish()
    }
}

/// The result of sending one message: every recipient's reply, and the final reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// Each recipient with the server's reply to its RCPT.
    pub recipients: Vec<(ForwardPath, Reply)>,
    /// The reply to the end of data; `None` when no recipient was accepted. With several
    /// transactions (RCPTMAX), the first failure or else the last success.
    pub reply: Option<Reply>,
    /// For each recipient (same order), the reply to the end of data of the transaction that
    /// carried it: `None` when it was refused at RCPT or its transaction was not completed.
    /// With one transaction every accepted recipient has `reply`; with several (RCPTMAX) each
    /// has its own, so a later transaction's failure never undoes an earlier delivery.
    pub data: Vec<Option<Reply>>,
    /// Whether the server offered DSN (RFC 3461), so NOTIFY, ORCPT, RET and ENVID went with
    /// the message and the notices are the server's to send.
    pub dsn: bool,
    /// The TLS session the message went over (`None`: plaintext).
    pub tls: Option<TlsInfo>,
}

impl SendOutcome {
    /// Whether the message was accepted for every recipient.
    pub fn all_accepted(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_positive) && self.recipients.iter().all(|(_, r)| r.is_positive())
    }

    /// The recipients the server refused, with its replies.
    pub fn rejected(&self) -> impl Iterator<Item = &(ForwardPath, Reply)> {
        self.recipients.iter().filter(|(_, r)| !r.is_positive())
    }
}

impl Connection {
    /// What the server advertised.
    pub fn capabilities(&self) -> &Capabilities {
        self.session.capabilities()
    }

    /// TLS parameters, when TLS is up.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_ref()
    }

    /// Whether another transaction may start on this connection (RFC 9422 MAILMAX).
    pub fn can_send(&self) -> bool {
        self.session.may_start_transaction()
    }

    async fn write_out(&mut self, phase: Phase, wait: Duration) -> Result<(), Error> {
        while let Some(out) = self.session.poll_output() {
            let io = self.io.as_mut().ok_or_else(closed)?;
            tokio::time::timeout(wait, io.write_all(&out)).await.map_err(|_| Error::Timeout(phase))??;
        }
        Ok(())
    }

    /// Writes pending output, then reads until the session yields an event.
    async fn next_event(&mut self, wait: Duration, phase: Phase) -> Result<ClientEvent, Error> {
        loop {
            self.write_out(phase, wait).await?;
            if let Some(ev) = self.session.poll_event() {
                if let ClientEvent::Failed(command, reply) = ev {
                    return Err(Error::Rejected { command, reply });
                }
                return Ok(ev);
            }
            let io = self.io.as_mut().ok_or_else(closed)?;
            io.flush().await?;
            let n = tokio::time::timeout(wait, io.read(&mut self.buf)).await.map_err(|_| Error::Timeout(phase))??;
            if n == 0 {
                return Err(closed());
            }
            self.session.handle_input(&self.buf[..n])?;
        }
    }

    async fn expect_ready(&mut self, wait: Duration, phase: Phase) -> Result<(), Error> {
        match self.next_event(wait, phase).await? {
            ClientEvent::Ready => Ok(()),
            _ => Err(Error::Misuse("out of sequence: expected greeting and EHLO")),
        }
    }

    async fn upgrade(&mut self) -> Result<(), Error> {
        let Some(config) = self.client.tls.clone() else { return Err(Error::Refused("TLS is disabled")) };
        let tcp = match self.io.take() {
            Some(Either::Left(Either::Left(tcp))) => tcp,
            other => {
                self.io = other;
                return Err(Error::Refused("TLS already active, or not over TCP"));
            }
        };
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|_| Error::ServerName(self.server_name.clone()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.client.options.timeouts.tls, connector.connect(name, tcp))
            .await
            .map_err(|_| Error::Timeout(Phase::Tls))?
            .map_err(Error::Handshake)?;
        let info = TlsInfo::from_rustls(tls.get_ref().1);
        let counter = if info.resumed { &self.client.stats.resumed } else { &self.client.stats.full };
        counter.fetch_add(1, Ordering::Relaxed);
        self.tls_info = Some(info);
        self.io = Some(Either::Right(tls));
        Ok(())
    }

    async fn starttls(&mut self) -> Result<(), Error> {
        self.session.start_tls()?;
        match self.next_event(self.client.options.timeouts.command, Phase::Command).await? {
            ClientEvent::StartTls => {}
            _ => return Err(Error::Misuse("out of sequence: expected 220 to STARTTLS")),
        }
        self.upgrade().await?;
        self.session.tls_established();
        self.expect_ready(self.client.options.timeouts.command, Phase::Command).await
    }

    async fn authenticate(&mut self, user: &str, pass: &Secret) -> Result<(), Error> {
        if self.tls_info.is_none() && !self.client.options.allow_plaintext_auth {
            return Err(Error::Refused("AUTH refused over an unencrypted connection"));
        }
        let offered = &self.capabilities().auth;
        let mech = if offered.iter().any(|m| m == "PLAIN") {
            AuthMechanism::Plain
        } else if offered.iter().any(|m| m == "LOGIN") {
            AuthMechanism::Login
        } else {
            return Err(Error::ExtensionMissing("AUTH PLAIN or LOGIN"));
        };
        self.session.auth(mech, user, pass)?;
        match self.next_event(self.client.options.timeouts.command, Phase::Command).await? {
            ClientEvent::Auth(r) if r.code() == 235 => Ok(()),
            ClientEvent::Auth(reply) => Err(Error::Rejected { command: CommandKind::Auth, reply }),
            _ => Err(Error::Misuse("out of sequence: expected AUTH reply")),
        }
    }

    /// The envelope fitted to the server (see [`ClientSession::negotiate`]).
    fn prepare(&self, env: &Envelope, body: &Body) -> Result<Envelope, Error> {
        let facts = match body {
            Body::Bytes(b) => BodyFacts { size: Some(b.len() as u64), eight_bit: b.iter().any(|&c| c >= 0x80) },
            Body::Reader(_) => BodyFacts::default(),
        };
        Ok(self.session.negotiate(env, facts)?)
    }

    /// Sends MAIL and RCPTs only; the caller looks at the replies, then calls
    /// [`Connection::data`] or [`Connection::rset`].
    pub async fn envelope(&mut self, env: &Envelope) -> Result<EnvelopeOutcome, Error> {
        self.session.send_envelope(env, DataMode::Later)?;
        match self.next_event(self.client.options.timeouts.command, Phase::Command).await? {
            ClientEvent::Envelope(o) => Ok(o),
            _ => Err(Error::Misuse("out of sequence: expected envelope replies")),
        }
    }

    /// Sends the body after [`Connection::envelope`] accepted at least one recipient. Over LMTP
    /// the reply is the first recipient's failure, or else the last success (use
    /// [`Connection::send`] for each recipient's own).
    pub async fn data(&mut self, body: Body) -> Result<Reply, Error> {
        if self.use_bdat() {
            return self.send_bdat(body).await;
        }
        self.session.start_data()?;
        match self.next_event(self.client.options.timeouts.data_block, Phase::Data).await? {
            ClientEvent::Envelope(o) if o.data_ready() => {}
            ClientEvent::Envelope(o) => {
                let reply = o.data.unwrap_or_else(|| o.mail.clone());
                return Err(Error::Rejected { command: CommandKind::Data, reply });
            }
            _ => return Err(Error::Misuse("out of sequence: expected reply to DATA")),
        }
        let replies = self.send_body(body).await?;
        merged(&replies).ok_or(Error::Misuse("no reply to the end of data"))
    }

    fn use_bdat(&self) -> bool {
        let c = self.capabilities();
        self.client.options.use_chunking && !self.client.options.lmtp && c.chunking && c.pipelining
    }

    /// The body after a 354: the replies to its end (one, or one per accepted LMTP recipient).
    async fn send_body(&mut self, body: Body) -> Result<Vec<Reply>, Error> {
        let t = self.client.options.timeouts;
        match body {
            Body::Bytes(b) => {
                for chunk in b.chunks(CHUNK) {
                    self.session.send_data(chunk);
                    self.write_out(Phase::Data, t.data_block).await?;
                }
            }
            Body::Reader(mut r) => {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = read_block(&mut r, &mut buf, t.data_block).await?;
                    if n == 0 {
                        break;
                    }
                    self.session.send_data(&buf[..n]);
                    self.write_out(Phase::Data, t.data_block).await?;
                }
            }
        }
        let n = self.session.data_replies();
        self.session.finish_data();
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(self.final_reply().await?);
        }
        Ok(replies)
    }

    async fn final_reply(&mut self) -> Result<Reply, Error> {
        match self.next_event(self.client.options.timeouts.data_end, Phase::Data).await? {
            ClientEvent::Message(r) => Ok(r),
            _ => Err(Error::Misuse("out of sequence: expected reply to the message")),
        }
    }

    /// BDAT (RFC 3030): canonical CRLF line ends, no dot stuffing, counted chunks.
    async fn send_bdat(&mut self, body: Body) -> Result<Reply, Error> {
        let t = self.client.options.timeouts;
        let mut norm = DotStuffer::line_normalizer();
        let mut out = BytesMut::new();
        match body {
            Body::Bytes(b) => {
                norm.stuff(&b, &mut out);
                norm.finish_lines(&mut out);
                self.session.send_bdat(&out, true)?;
            }
            Body::Reader(mut r) => {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = read_block(&mut r, &mut buf, t.data_block).await?;
                    if n == 0 {
                        norm.finish_lines(&mut out);
                        self.session.send_bdat(&out, true)?;
                        break;
                    }
                    norm.stuff(&buf[..n], &mut out);
                    if !out.is_empty() {
                        self.session.send_bdat(&out, false)?;
                        out.clear();
                    }
                    self.write_out(Phase::Data, t.data_block).await?;
                }
            }
        }
        self.final_reply().await
    }

    /// Sends one message: envelope (pipelined with DATA when possible), then the body to the
    /// accepted recipients. More recipients than the server's RCPTMAX (RFC 9422) are split
    /// across transactions. A refused recipient is reported, not fatal.
    pub async fn send(&mut self, env: &Envelope, body: Body) -> Result<SendOutcome, Error> {
        let env = self.prepare(env, &body)?;
        let max = self.session.recipients_per_transaction();
        if env.recipients.len() <= max {
            return self.send_one(&env, body).await;
        }
        // Several transactions need the body several times.
        let bytes = match body {
            Body::Bytes(b) => b,
            Body::Reader(mut r) => {
                let mut v = Vec::new();
                r.read_to_end(&mut v).await?;
                Bytes::from(v)
            }
        };
        let mut all = SendOutcome {
            recipients: Vec::new(),
            reply: None,
            data: Vec::new(),
            dsn: self.capabilities().dsn,
            tls: self.tls_info.clone(),
        };
        for (n, group) in env.recipients.chunks(max).enumerate() {
            let part = Envelope { recipients: group.to_vec(), ..env.clone() };
            let result = match self.can_send() {
                true => self.send_one(&part, Body::Bytes(bytes.clone())).await,
                false => Err(Error::Refused("the server's MAILMAX is reached; use a new connection")),
            };
            let o = match result {
                Ok(o) => o,
                // Nothing was completed: the error is the outcome.
                Err(e) if n == 0 => return Err(e),
                // Earlier transactions were delivered: report them, and this group and the
                // rest as not sent (transient), so no delivered recipient is sent again.
                Err(e) => {
                    let why = e.reply().cloned().unwrap_or_else(|| {
                        Reply::new(451, Some(smtp_proto::EnhancedCode::new(4, 4, 0)), &format!("Not sent: {e}"))
                    });
                    for r in &env.recipients[n * max..] {
                        all.recipients.push((r.path.clone(), why.clone()));
                        all.data.push(None);
                    }
                    if all.reply.as_ref().is_none_or(|r| r.is_positive()) {
                        all.reply = Some(why);
                    }
                    break;
                }
            };
            all.recipients.extend(o.recipients);
            all.data.extend(o.data);
            let keep = all.reply.as_ref().is_some_and(|r| !r.is_positive());
            if !keep && o.reply.is_some() {
                all.reply = o.reply;
            }
        }
        Ok(all)
    }

    async fn send_one(&mut self, env: &Envelope, body: Body) -> Result<SendOutcome, Error> {
        let bdat = self.use_bdat();
        let mode = if bdat { DataMode::Later } else { DataMode::Data };
        self.session.send_envelope(env, mode)?;
        let o = match self.next_event(self.client.options.timeouts.command, Phase::Command).await? {
            ClientEvent::Envelope(o) => o,
            _ => return Err(Error::Misuse("out of sequence: expected envelope replies")),
        };
        if !o.mail.is_positive() {
            return Err(Error::Rejected { command: CommandKind::Mail, reply: o.mail });
        }
        let recipients: Vec<(ForwardPath, Reply)> =
            env.recipients.iter().map(|r| r.path.clone()).zip(o.recipients.iter().cloned()).collect();
        let any = o.accepted().next().is_some();
        let mut replies = Vec::new();
        let reply = match (bdat, any) {
            (true, true) => Some(self.send_bdat(body).await?),
            (false, true) if o.data_ready() => {
                replies = self.send_body(body).await?;
                merged(&replies)
            }
            (false, true) => {
                let reply = o.data.unwrap_or_else(|| Reply::new(554, None, "DATA not accepted"));
                return Err(Error::Rejected { command: CommandKind::Data, reply });
            }
            (true, false) => {
                self.rset().await?;
                None
            }
            (false, false) => None,
        };
        let mut own = replies.into_iter();
        let data = recipients
            .iter()
            .map(|(_, r)| match (r.is_positive(), self.client.options.lmtp) {
                (false, _) => None,
                (true, true) => own.next(),
                (true, false) => reply.clone(),
            })
            .collect();
        Ok(SendOutcome { recipients, reply, data, dsn: self.capabilities().dsn, tls: self.tls_info.clone() })
    }

    async fn simple(&mut self, cmd: Command) -> Result<Reply, Error> {
        self.session.command(cmd)?;
        match self.next_event(self.client.options.timeouts.command, Phase::Command).await? {
            ClientEvent::Reply(_, r) => Ok(r),
            _ => Err(Error::Misuse("out of sequence: expected a reply")),
        }
    }

    /// RSET: abandons the current transaction.
    pub async fn rset(&mut self) -> Result<Reply, Error> {
        self.simple(Command::Rset).await
    }

    /// NOOP: checks the connection is alive.
    pub async fn noop(&mut self) -> Result<Reply, Error> {
        self.simple(Command::Noop(None)).await
    }

    /// VRFY (RFC 788 4.1.1).
    pub async fn vrfy(&mut self, who: &str) -> Result<Reply, Error> {
        self.simple(Command::vrfy(who)?).await
    }

    /// EXPN (RFC 788 4.1.1).
    pub async fn expn(&mut self, list: &str) -> Result<Reply, Error> {
        self.simple(Command::expn(list)?).await
    }

    /// QUIT, then close.
    pub async fn quit(mut self) -> Result<Reply, Error> {
        let r = self.simple(Command::Quit).await;
        if let Some(io) = self.io.as_mut() {
            let _ = io.shutdown().await;
        }
        r
    }
}

/// Reads the next block of a streamed body, within the data-block timeout.
async fn read_block(
    r: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    buf: &mut [u8],
    wait: Duration,
) -> Result<usize, Error> {
    Ok(tokio::time::timeout(wait, r.read(buf)).await.map_err(|_| Error::Timeout(Phase::Data))??)
}

fn closed() -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed by server"))
}

/// The reply that stands for a message answered once per recipient (LMTP), or once: the first
/// failure, or else the last success.
fn merged(replies: &[Reply]) -> Option<Reply> {
    replies.iter().find(|r| !r.is_positive()).or(replies.last()).cloned()
}
