//! The relay's two tower services: the policy service (who may send what to whom) and the mail
//! service (durable enqueue before `250`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smtp_proto::command::{Orcpt, RcptParams, XText};
use smtp_proto::{codes, EnhancedCode, ForwardPath, MailVerb, Mailbox, Path, Reply};
use smtp_server::{Decision, PolicyKind, PolicyRequest, Transaction};

pub use crate::config::RelayConfig;
use crate::deliver::local::LocalDelivery;
use crate::deliver::maildir::MaildirWriter;
use crate::deliver::terminal::Terminals;
use crate::directory::{Lookup, Target};
use crate::msgauth::{MessageAuth, Origin};
use crate::queue::{Queue, QueuedMessage, RcptRecord};
use crate::route::{classify, prepend_route, strip_route, Destination, SourceRoutes};
use crate::schedule::{Accepted, Handoff, Scheduler};

/// A relay: hands out the policy and mail services for `smtp-server`. The [`Scheduler`] that
/// delivers what they queue is built beside it, from the same parts.
#[derive(Clone)]
pub struct Relay {
    failures: Arc<AuthFailures>,
    msgauth: Arc<MessageAuth>,
    config: Arc<RelayConfig>,
    queue: Arc<dyn Queue>,
    terminals: Arc<Terminals>,
    local: Arc<LocalDelivery>,
    handoff: Handoff,
}

impl Relay {
    /// Builds the relay and its scheduler (run it with [`Scheduler::run`]) over one queue.
    /// Fails if a DKIM key cannot be loaded, no resolver can be made for verification, or the
    /// thread that commits local deliveries cannot start.
    pub fn new(config: RelayConfig, queue: Arc<dyn Queue>) -> std::io::Result<(Relay, Scheduler)> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let verifier = match config.auth_verify {
            true => {
                Some(crate::dns::HickoryMx::new(config.dns_server).map_err(|e| invalid(e.to_string()))?.authenticator())
            }
            false => None,
        };
        let msgauth = MessageAuth::new(&config.hostname, &config.dkim, verifier, config.dmarc_enforce)
            .map_err(|e| invalid(e.to_string()))?;
        let msgauth = Arc::new(msgauth);
        let config = Arc::new(config);
        let terminals = Arc::<Terminals>::default();
        let (handoff, scheduler) = Scheduler::new(config.clone(), queue.clone(), terminals.clone())?;
        let scheduler = scheduler.with_msgauth(msgauth.clone());
        let local = scheduler.local();
        Ok((Relay { failures: Arc::default(), msgauth, config, queue, terminals, local, handoff }, scheduler))
    }

    /// The policy service: MAIL, RCPT (relay rules, users, terminals), VRFY, EXPN, AUTH.
    pub fn policy(&self) -> RelayPolicy {
        RelayPolicy { config: self.config.clone(), terminals: self.terminals.clone(), failures: self.failures.clone() }
    }

    /// The mail service: the body streamed into the queue, made durable, then `250` with the
    /// queue id; the scheduler gets the message in hand.
    pub fn mail(&self) -> RelayMail {
        RelayMail {
            msgauth: self.msgauth.clone(),
            config: self.config.clone(),
            queue: self.queue.clone(),
            local: self.local.clone(),
            handoff: self.handoff.clone(),
        }
    }

    /// The live terminals (attached through [`crate::control::serve`]).
    pub fn terminals(&self) -> Arc<Terminals> {
        self.terminals.clone()
    }

    /// The queue.
    pub fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }
}

/// The relay's policy service.
#[derive(Clone)]
pub struct RelayPolicy {
    config: Arc<RelayConfig>,
    terminals: Arc<Terminals>,
    failures: Arc<AuthFailures>,
}

fn reply(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(e.0, e.1, e.2)), text)
}

impl RelayPolicy {
    fn decide(&self, req: PolicyRequest) -> Decision {
        let c = &self.config;
        match req.kind {
            PolicyKind::Mail { .. } => Decision::Accept,
            PolicyKind::Rcpt { verb, to, .. } => {
                let may_relay =
                    req.session.authenticated.is_some() || c.trusted.iter().any(|n| n.contains(req.session.peer.ip()));
                match classify(&to, &c.hostname, &c.directory, c.source_routes).0 {
                    Destination::Local(name) => self.local_rcpt(verb, &name, matches!(to, ForwardPath::Postmaster)),
                    _ if !may_relay => Decision::Respond(codes::relay_denied()),
                    Destination::Unsupported => Decision::Respond(reply(
                        550,
                        (5, 1, 3),
                        "Routing with %, ! or @ in the local part is not supported",
                    )),
                    Destination::Remote { .. } if verb == MailVerb::Send => {
                        Decision::Respond(reply(550, (5, 5, 1), "SEND is delivered to local terminals only"))
                    }
                    Destination::Remote { .. } => Decision::Accept,
                }
            }
            PolicyKind::Verify(arg) => Decision::Respond(self.vrfy(&arg)),
            PolicyKind::Expand(arg) => Decision::Respond(self.expn(&arg)),
            // Answered in `call` (a slow hash, off the async threads, and throttled).
            PolicyKind::Auth { .. } => Decision::Respond(codes::auth_failed()),
            _ => Decision::Accept,
        }
    }

    fn local_rcpt(&self, verb: MailVerb, name: &str, postmaster: bool) -> Decision {
        let lookup = self.config.directory.lookup(name);
        let target_user = match &lookup {
            // RFC 5321 4.5.1: postmaster is always accepted.
            Lookup::Unknown if postmaster || name.eq_ignore_ascii_case("postmaster") => Some("postmaster".to_string()),
            Lookup::Unknown => return Decision::Respond(codes::no_such_user()),
            Lookup::User(Target::Local(u)) => Some(u.clone()),
            _ => None,
        };
        if verb == MailVerb::Send {
            // RFC 788 3.4: SEND needs the user active at a terminal.
            match target_user {
                Some(u) if self.terminals.is_active(&u) => {}
                Some(_) => {
                    return Decision::Respond(reply(450, (4, 2, 1), "User not active at a terminal; try SOML or MAIL"))
                }
                None => return Decision::Respond(reply(550, (5, 5, 1), "SEND needs a single local user, not a list")),
            }
        }
        Decision::Accept
    }

    fn split_arg(&self, arg: &str) -> Option<String> {
        let a = arg.trim().trim_start_matches('<').trim_end_matches('>');
        match a.split_once('@') {
            None => Some(a.to_string()),
            Some(_) => {
                let m = Mailbox::parse(a).ok()?;
                let c = &self.config;
                crate::route::is_me(m.domain(), &c.hostname, &c.directory).then(|| m.local_part().into_owned())
            }
        }
    }

    fn addr(&self, t: &Target) -> String {
        match t {
            Target::Local(u) => format!("<{u}@{}>", self.config.hostname),
            Target::Remote(m) => format!("<{m}>"),
        }
    }

    /// VRFY (RFC 788 4.1.1, RFC 5321 3.5): a user's mailbox, 550 for nobody, 252 for elsewhere.
    fn vrfy(&self, arg: &str) -> Reply {
        let Some(local) = self.split_arg(arg) else { return codes::cannot_verify() };
        match self.config.directory.lookup(&local) {
            Lookup::User(t) => reply(250, (2, 1, 5), &self.addr(&t)),
            Lookup::List(_) => reply(553, (5, 1, 4), "That is a mailing list; use EXPN"),
            Lookup::Unknown if !self.config.directory.has_users() => codes::cannot_verify(),
            Lookup::Unknown => codes::no_such_user(),
        }
    }

    /// EXPN (RFC 788 4.1.1): a list's members, one per line.
    fn expn(&self, arg: &str) -> Reply {
        let Some(local) = self.split_arg(arg) else { return codes::cannot_verify() };
        match self.config.directory.lookup(&local) {
            Lookup::List(members) => {
                Reply::multiline(250, Some(EnhancedCode::new(2, 1, 5)), members.iter().map(|t| self.addr(t)))
            }
            Lookup::User(_) => reply(550, (5, 1, 1), "Not a mailing list"),
            Lookup::Unknown => codes::no_such_user(),
        }
    }
}

/// AUTH failures per client address within [`AUTH_FAILURE_WINDOW`].
#[derive(Debug, Default)]
pub struct AuthFailures {
    by_ip: std::sync::Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

/// How long failed AUTH attempts count against an address.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(3600);
/// Addresses remembered at most (the oldest are forgotten first).
const MAX_AUTH_FAILURE_ADDRESSES: usize = 10_000;

impl AuthFailures {
    /// Failures of `ip` still in the window.
    fn count(&self, ip: std::net::IpAddr) -> u32 {
        let map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).filter(|(_, since)| since.elapsed() < AUTH_FAILURE_WINDOW).map(|(n, _)| *n).unwrap_or(0)
    }

    /// Records a failure; returns the count.
    fn fail(&self, ip: std::net::IpAddr) -> u32 {
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_AUTH_FAILURE_ADDRESSES {
            map.retain(|_, (_, since)| since.elapsed() < AUTH_FAILURE_WINDOW);
            if map.len() >= MAX_AUTH_FAILURE_ADDRESSES {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= AUTH_FAILURE_WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
        e.0
    }
}

/// The wait before answering the `n`th failed AUTH from one address: 250 ms, doubling, at
/// most 8 s. A guesser gets a few tries a minute instead of thousands a second.
pub fn auth_failure_delay(n: u32) -> Duration {
    Duration::from_millis(250).saturating_mul(1 << n.saturating_sub(1).min(5)).min(Duration::from_secs(8))
}

impl RelayPolicy {
    /// AUTH: the password checked against its argon2id hash on a blocking thread; each failure
    /// is logged (peer and user, never the password) and answered after a growing delay; past
    /// the per-address budget the answer is `421 4.7.0` and the session closes.
    async fn auth(self, req: PolicyRequest) -> Decision {
        let PolicyKind::Auth { credentials, .. } = req.kind else { return self.decide(req) };
        let ip = req.session.peer.ip();
        let budget = self.config.auth_failure_budget;
        let too_many = || reply(421, (4, 7, 0), "Too many authentication failures, closing connection");
        if self.failures.count(ip) >= budget {
            tracing::warn!(peer = %req.session.peer, user = %credentials.username, "AUTH refused: failure budget spent");
            return Decision::Respond(too_many());
        }
        let hash = self.config.auth_users.get(&credentials.username).cloned();
        let password = credentials.password.expose().to_string();
        let ok = tokio::task::spawn_blocking(move || hash.is_some_and(|h| h.verify(&password))).await.unwrap_or(false);
        if ok {
            return Decision::Accept;
        }
        let n = self.failures.fail(ip);
        metrics::counter!("tern_auth_failures_total").increment(1);
        tracing::warn!(peer = %req.session.peer, user = %credentials.username, failures = n, "AUTH failed");
        tokio::time::sleep(auth_failure_delay(n)).await;
        if n >= budget {
            return Decision::Respond(too_many());
        }
        Decision::Respond(codes::auth_failed())
    }
}

impl tower::Service<PolicyRequest> for RelayPolicy {
    type Response = Decision;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PolicyRequest) -> Self::Future {
        if matches!(req.kind, PolicyKind::Auth { .. }) {
            let me = self.clone();
            return Box::pin(async move { Ok(me.auth(req).await) });
        }
        let rcpt = matches!(req.kind, PolicyKind::Rcpt { .. });
        let d = self.decide(req);
        if rcpt {
            let result = match &d {
                Decision::Respond(r) if r.code() >= 400 => "refused",
                _ => "accepted",
            };
            metrics::counter!("tern_recipients_total", "result" => result).increment(1);
        }
        Box::pin(std::future::ready(Ok(d)))
    }
}

/// The relay's mail service.
#[derive(Clone)]
pub struct RelayMail {
    msgauth: Arc<MessageAuth>,
    config: Arc<RelayConfig>,
    queue: Arc<dyn Queue>,
    local: Arc<LocalDelivery>,
    handoff: Handoff,
}

/// Counts `Received:` header fields as the data streams by, up to the first empty line.
#[derive(Debug, Default)]
pub struct ReceivedCounter {
    count: usize,
    /// The start of the current line (only its first 9 octets matter).
    line: Vec<u8>,
    /// The current line is longer than the prefix (no need to keep more).
    long: bool,
    done: bool,
}

impl ReceivedCounter {
    /// Feeds the next part of the message.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !self.done && !data.is_empty() {
            let (part, end) = match memchr::memchr(b'\n', data) {
                Some(nl) => (&data[..nl], Some(nl)),
                None => (data, None),
            };
            if !self.long {
                let room = 10 - self.line.len().min(10);
                self.line.extend_from_slice(&part[..part.len().min(room)]);
                self.long = self.line.len() >= 10;
            }
            match end {
                Some(nl) => {
                    let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                    if line.is_empty() {
                        self.done = true;
                    } else if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
                        self.count += 1;
                    }
                    self.line.clear();
                    self.long = false;
                    data = &data[nl + 1..];
                }
                None => data = &[],
            }
        }
    }

    /// `Received:` fields seen so far.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Counts `Received:` header fields (before the first empty line).
pub fn count_received(body: &[u8]) -> usize {
    let mut c = ReceivedCounter::default();
    c.feed(body);
    c.count()
}

/// `452 4.3.1` (storage full), `552 5.3.4` (an envelope too large to queue) or `451 4.3.0` for
/// a queue failure.
fn queue_error_reply(e: &crate::queue::QueueError) -> Reply {
    if e.is_storage_full() {
        reply(452, (4, 3, 1), "Insufficient system storage, try again later")
    } else if let crate::queue::QueueError::EnvelopeTooLarge { .. } = e {
        reply(552, (5, 3, 4), "Too many recipients for one message; send it in parts")
    } else {
        codes::local_error()
    }
}

/// Counts an accepted message of `size` octets whose data ended at `data_end`.
fn accepted(size: u64, data_end: std::time::Instant) {
    metrics::counter!("tern_messages_accepted_total").increment(1);
    metrics::counter!("tern_accepted_bytes_total").increment(size);
    metrics::histogram!("tern_accept_duration_seconds").record(data_end.elapsed());
}

/// Where an incoming message is written as it arrives.
enum Sink {
    /// The queue (then the scheduler).
    Queue(Box<dyn crate::queue::MessageWriter>),
    /// Straight into one local mailbox (final delivery on receipt).
    Mailbox(MaildirWriter),
}

impl Sink {
    async fn write(&mut self, data: &[u8]) -> Result<(), Reply> {
        match self {
            Sink::Queue(w) => w.write(data).await.map_err(|e| {
                tracing::error!(error = %e, "queue write failed");
                queue_error_reply(&e)
            }),
            Sink::Mailbox(w) => w.write(data).await.map_err(|e| {
                tracing::error!(error = %e, "mailbox write failed");
                queue_error_reply(&e.into())
            }),
        }
    }
}

impl RelayMail {
    /// Turns a transaction into a queue record and routes each recipient once.
    fn record(&self, tx: &Transaction) -> (QueuedMessage, Vec<crate::route::Route>) {
        let c = &self.config;
        let mut recipients: Vec<RcptRecord> = Vec::new();
        let mut removed_hops = Vec::new();
        let mut push = |path: ForwardPath, params: RcptParams| {
            if !recipients.iter().any(|r| r.path == path) {
                recipients.push(RcptRecord::new(path, params));
            }
        };
        for r in &tx.envelope.recipients {
            let (dest, removed) = classify(&r.path, &c.hostname, &c.directory, c.source_routes);
            if removed_hops.is_empty() {
                removed_hops = removed;
            }
            match dest {
                Destination::Remote { path, .. } => push(ForwardPath::Path(path), r.params.clone()),
                Destination::Unsupported => {}
                Destination::Local(name) => {
                    let targets = match c.directory.lookup(&name) {
                        Lookup::User(t) => vec![t],
                        Lookup::List(ts) => ts,
                        Lookup::Unknown => vec![Target::Local("postmaster".into())],
                    };
                    // Local targets are written as user@hostname, so one user reached through several
                    // names or lists gets one copy; the address the sender used stays in ORCPT.
                    let original = match &r.path {
                        ForwardPath::Path(p) => p.mailbox.to_string(),
                        ForwardPath::Postmaster => "postmaster".to_string(),
                    };
                    for t in targets {
                        let mailbox = match t {
                            Target::Local(u) => match Mailbox::new(&u, smtp_proto::Domain::Name(c.hostname.clone())) {
                                Ok(m) => m,
                                Err(_) => continue,
                            },
                            Target::Remote(m) => m,
                        };
                        let mut params = r.params.clone();
                        if params.orcpt.is_none() && mailbox.to_string() != original {
                            params.orcpt = Some(Orcpt { addr_type: "rfc822".into(), addr: XText::encode(&original) });
                        }
                        push(ForwardPath::Path(Path::new(mailbox)), params);
                    }
                }
            }
        }
        let from = match c.source_routes {
            SourceRoutes::Honor => prepend_route(&tx.envelope.from, &removed_hops),
            SourceRoutes::Strip => strip_route(&tx.envelope.from),
        };
        let routes = recipients
            .iter()
            .map(|r| crate::route::route_of(&r.path, &c.hostname, &c.directory, c.source_routes))
            .collect();
        // RFC 4954 5: the AUTH= identity is passed on only when this host vouches for it: it
        // is the session's authenticated user, or a trusted client supplied it. Otherwise the
        // next hop gets `AUTH=<>` (identity unknown), never a name the client made up.
        let mut params = tx.envelope.params.clone();
        if let Some(claimed) = &params.auth {
            let trusted_net = c.trusted.iter().any(|n| n.contains(tx.session.peer.ip()));
            let own = tx.session.authenticated.as_deref().is_some_and(|u| claimed.decode() == u.as_bytes());
            let vouched = match &tx.session.authenticated {
                Some(_) => own,
                None => trusted_net,
            };
            if !vouched {
                params.auth = Some(XText::from_encoded("<>").expect("valid xtext"));
            }
        }
        let msg = QueuedMessage {
            id: String::new(),
            verb: tx.envelope.verb,
            from,
            params,
            arrival: QueuedMessage::now(),
            client: Some(tx.session.peer),
            helo: tx.session.helo.as_ref().map(|d| d.to_string()),
            recipients,
            delay_warned: false,
            trusted: tx.session.authenticated.is_some() || c.trusted.iter().any(|n| n.contains(tx.session.peer.ip())),
        };
        (msg, routes)
    }

    /// The local user a message can be delivered to on receipt, when it can (see
    /// [`RelayConfig::deliver_on_receipt`]).
    fn on_receipt(&self, msg: &QueuedMessage, routes: &[crate::route::Route]) -> Option<String> {
        use smtp_proto::command::Notify;
        let [crate::route::Route::Mailbox(user)] = routes else { return None };
        let success = msg.trusted && matches!(msg.recipients[0].params.notify, Some(Notify::On { success: true, .. }));
        // With a mail store (LMTP) local mail is queued and handed over by the scheduler.
        let maildirs = self.config.lmtp.is_none();
        (self.config.deliver_on_receipt && maildirs && msg.verb == MailVerb::Mail && !success).then(|| user.clone())
    }

    /// Streams the body into the queue (or one local mailbox); replies only once the message
    /// is durable, or with why not. Nothing is kept of a transfer that did not complete.
    async fn accept(self, mut tx: Transaction) -> Reply {
        let (mut msg, routes) = self.record(&tx);
        if msg.recipients.is_empty() {
            // Read (and drop) the data: the reply comes at its end.
            while let Ok(Some(_)) = tx.body.chunk().await {}
            return reply(554, (5, 1, 1), "No deliverable recipients");
        }
        // Data held for signing or verification and not yet written: the whole message, or
        // the first part of one too large to hold.
        let mut held: Option<Bytes> = None;
        if self.msgauth.wants(msg.trusted) {
            let mut data = BytesMut::new();
            let mut complete = false;
            while data.len() <= self.config.auth_max_size {
                match tx.body.chunk().await {
                    Ok(Some(c)) => data.extend_from_slice(&c),
                    Ok(None) => {
                        complete = true;
                        break;
                    }
                    Err(e) => return reply(451, (4, 3, 0), &e.to_string()),
                }
            }
            let mail_from = tx.envelope.from.mailbox().map(|m| m.to_string()).unwrap_or_default();
            let helo = tx.session.helo.as_ref().map(|d| d.to_string()).unwrap_or_default();
            let origin = Origin { ip: tx.session.peer.ip(), helo: &helo, mail_from: &mail_from, trusted: msg.trusted };
            if complete {
                match self.msgauth.check(origin, data.freeze()).await {
                    Ok(checked) => {
                        tx.received.push_str(&checked.prefix);
                        held = Some(checked.message);
                    }
                    Err(refused) => return refused,
                }
            } else {
                tx.received.push_str(&self.msgauth.too_large(origin).await);
                held = Some(data.freeze());
            }
        }
        let mut counter = ReceivedCounter::default();
        counter.feed(tx.received.as_bytes());
        let direct = match self.on_receipt(&msg, &routes) {
            Some(user) => {
                msg.id = tx.id.clone();
                match self.local.begin(&user, &format!("{}R0", tx.id), &msg).await {
                    Ok(w) => Some(Sink::Mailbox(w)),
                    Err(e) => {
                        tracing::info!(%user, error = %e, "no delivery on receipt; queueing");
                        None
                    }
                }
            }
            None => None,
        };
        let mut sink = match direct {
            Some(s) => s,
            None => match self.queue.create(msg.clone()).await {
                Ok(w) => Sink::Queue(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a queue file");
                    return queue_error_reply(&e);
                }
            },
        };
        let mut failed: Option<Reply> = sink.write(tx.received.as_bytes()).await.err();
        let mut size = 0u64;
        let data_end: std::time::Instant;
        loop {
            let next = match held.take() {
                Some(h) => Ok(Some(h)),
                None => tx.body.chunk().await,
            };
            match next {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    counter.feed(&chunk);
                    // After a failure the rest of the data is read and dropped, so the client
                    // gets the reply at the end of data, as RFC 5321 4.1.1.4 wants.
                    if failed.is_none() {
                        failed = sink.write(&chunk).await.err();
                    }
                }
                Ok(None) => {
                    data_end = std::time::Instant::now();
                    break;
                }
                // Aborted: the sink is dropped and its temporary file removed.
                Err(e) => return reply(451, (4, 3, 0), &e.to_string()),
            }
        }
        if let Some(r) = failed {
            return r;
        }
        if counter.count() > self.config.max_received {
            return codes::loop_detected();
        }
        match sink {
            Sink::Mailbox(w) => match self.local.finish(w).await {
                Ok(path) => {
                    accepted(size, data_end);
                    metrics::counter!("tern_deliveries_total", "outcome" => "delivered", "kind" => "local")
                        .increment(1);
                    let id = &tx.id;
                    tracing::info!(%id, from = %tx.envelope.from, to = %msg.recipients[0].path, size, file = %path.display(), "delivered on receipt");
                    reply(250, (2, 0, 0), &format!("Ok: queued as {id}"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "mailbox delivery failed");
                    queue_error_reply(&e.into())
                }
            },
            Sink::Queue(writer) => match writer.commit().await {
                Ok(stored) => {
                    accepted(size, data_end);
                    let id = stored.id.clone();
                    tracing::info!(%id, from = %tx.envelope.from, recipients = tx.envelope.recipients.len(), size, "queued");
                    msg.id = id.clone();
                    self.handoff.accepted(Accepted { msg, routes, body: stored.body });
                    reply(250, (2, 0, 0), &format!("Ok: queued as {id}"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "enqueue failed");
                    queue_error_reply(&e)
                }
            },
        }
    }
}

impl tower::Service<Transaction> for RelayMail {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, tx: Transaction) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(me.accept(tx).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_errors_become_replies_that_say_what_to_do() {
        use crate::queue::QueueError;
        let full = QueueError::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(queue_error_reply(&full).to_string(), "452 4.3.1 Insufficient system storage, try again later");
        let big = QueueError::EnvelopeTooLarge { size: 5, limit: 4 };
        assert!(queue_error_reply(&big).to_string().starts_with("552 5.3.4 Too many recipients"));
        assert!(queue_error_reply(&QueueError::Closed).to_string().starts_with("451 4.3.0"));
    }

    #[test]
    fn auth_failure_delays_grow_to_a_cap() {
        let d: Vec<u64> = (1..=8).map(|n| auth_failure_delay(n).as_millis() as u64).collect();
        assert_eq!(d, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[tokio::test(start_paused = true)]
    async fn auth_is_hashed_throttled_and_budgeted_per_address() {
        use smtp_proto::auth::{AuthMechanism, Credentials, Secret};
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let mut c = RelayConfig::new("mx.test", dir.path());
        c.auth_users.insert("u".into(), crate::password::PasswordHashString::hash("right").unwrap());
        c.auth_failure_budget = 3;
        let queue = Arc::new(crate::FsQueue::open(dir.path().join("queue")).unwrap());
        let (relay, _scheduler) = Relay::new(c, queue).unwrap();
        let ask = |ip: &str, password: &str| {
            let peer: std::net::SocketAddr = format!("{ip}:1000").parse().unwrap();
            let session = smtp_server::SessionInfo {
                peer,
                local: peer,
                helo: None,
                extended: true,
                tls: None,
                authenticated: None,
            };
            let credentials =
                Credentials { authzid: String::new(), username: "u".into(), password: Secret::new(password) };
            let kind = PolicyKind::Auth { mechanism: AuthMechanism::Plain, credentials };
            relay.policy().oneshot(PolicyRequest { session, kind })
        };
        let code = |d: Decision| match d {
            Decision::Accept => 235,
            Decision::Respond(r) => r.code(),
        };
        let started = tokio::time::Instant::now();
        assert_eq!(code(ask("192.0.2.1", "wrong").await.unwrap()), 535);
        assert_eq!(code(ask("192.0.2.1", "wrong").await.unwrap()), 535);
        assert!(started.elapsed() >= Duration::from_millis(750), "each failure waits longer");
        assert_eq!(code(ask("192.0.2.1", "wrong").await.unwrap()), 421, "the budget is spent");
        assert_eq!(code(ask("192.0.2.1", "right").await.unwrap()), 421, "even the right password, for an hour");
        assert_eq!(code(ask("192.0.2.2", "right").await.unwrap()), 235, "other addresses are not affected");
    }

    #[test]
    fn received_counting_stops_at_body() {
        assert_eq!(count_received(b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: body\r\n"), 2);
    }
}
