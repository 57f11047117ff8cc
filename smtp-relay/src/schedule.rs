//! The scheduler: takes queued messages to their recipients — local Maildir, terminals, or the
//! next hop over SMTP — retries transient failures with back-off, expires old mail, and sends
//! delivery status notifications.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use smtp_client::service::{Destination as Dest, SendRequest, SmtpService};
use smtp_client::{CertVerify, ClientOptions, SmtpClient, TlsMode};
use smtp_proto::client::MessageEnvelope;
use smtp_proto::{Domain, MailVerb};
use tokio::sync::{mpsc, Semaphore};

use crate::directory::{Lookup, Target};
use crate::dns::{HickoryMx, MxAnswer, MxResolver};
use crate::dsn::{self, Action};
use crate::queue::{QueueError, QueueId, QueuedMessage, RcptStatus};
use crate::relay::Relay;
use crate::route::{classify, Destination};

/// Asks a running scheduler to act now.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Command {
    Flush,
    Delete(QueueId, tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl SchedulerHandle {
    /// Retries every pending recipient now.
    pub fn flush(&self) {
        let _ = self.tx.send(Command::Flush);
    }

    /// Removes a message from the queue (no notification is sent).
    pub async fn delete(&self, id: &str) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Command::Delete(id.to_string(), tx)).map_err(|_| "scheduler stopped".to_string())?;
        rx.await.map_err(|_| "scheduler stopped".to_string())?
    }
}

/// Delivers what the relay queued. Run it with [`Scheduler::run`].
pub struct Scheduler {
    relay: Relay,
    wake: mpsc::UnboundedReceiver<QueueId>,
    commands: mpsc::UnboundedReceiver<Command>,
    handle: SchedulerHandle,
    resolver: Option<Arc<dyn MxResolver>>,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
enum Outcome {
    Delivered(Option<String>),
    Failed(String, Option<String>),
    Retry(String, Option<String>),
}

impl Scheduler {
    pub(crate) fn new(relay: Relay, wake: mpsc::UnboundedReceiver<QueueId>) -> Self {
        let (tx, commands) = mpsc::unbounded_channel();
        Scheduler { relay, wake, commands, handle: SchedulerHandle { tx }, resolver: None }
    }

    /// Uses `resolver` for MX lookups instead of hickory (tests, custom DNS).
    pub fn with_resolver(mut self, resolver: Arc<dyn MxResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// A handle for `flush` and `delete`.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Resumes every queued message, then delivers new ones as they arrive and retries due ones,
    /// until `shutdown` resolves. Deliveries in progress are abandoned at shutdown; their
    /// recipients stay pending in the queue.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let cfg = &self.relay.core.config;
        let resolver: Arc<dyn MxResolver> = match self.resolver.take() {
            Some(r) => r,
            None => match HickoryMx::new(cfg.dns_server) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    tracing::error!(error = %e, "no DNS resolver; MX deliveries will be retried");
                    Arc::new(NoDns)
                }
            },
        };
        let recovered: HashSet<QueueId> = match self.relay.core.queue.list().await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %e, "queue scan failed");
                HashSet::new()
            }
        };
        if !recovered.is_empty() {
            tracing::info!(messages = recovered.len(), "resuming queued messages");
        }
        let worker = Arc::new(Worker::new(self.relay.clone(), resolver, recovered));
        let tick_every = (cfg.retry_interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let mut tick = tokio::time::interval(tick_every);
        tokio::pin!(shutdown);
        let tasks = TaskSet(Mutex::new(tokio::task::JoinSet::new()));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(id) = self.wake.recv() => { tasks.spawn(worker.clone().process(id, false)); }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::Flush => worker.clone().scan(&tasks, true).await,
                    Command::Delete(id, reply) => {
                        let r = worker.relay.core.queue.remove(&id).await.map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                },
                _ = tick.tick() => worker.clone().scan(&tasks, false).await,
            }
        }
        tasks.abort_all();
        let (full, resumed) = worker.handshakes();
        tracing::info!(full, resumed, "outbound TLS handshakes");
    }
}

/// The scheduler's delivery tasks.
struct TaskSet(Mutex<tokio::task::JoinSet<()>>);

impl TaskSet {
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(f);
    }

    fn abort_all(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
    }
}

struct NoDns;

#[async_trait::async_trait]
impl MxResolver for NoDns {
    async fn mx(&self, _: &str) -> Result<MxAnswer, crate::dns::DnsError> {
        Err(crate::dns::DnsError("no resolver configured".into()))
    }
    async fn addresses(&self, _: &str) -> Result<Vec<std::net::IpAddr>, crate::dns::DnsError> {
        Err(crate::dns::DnsError("no resolver configured".into()))
    }
}

struct Worker {
    relay: Relay,
    resolver: Arc<dyn MxResolver>,
    services: HashMap<TlsMode, SmtpService>,
    in_flight: Mutex<HashSet<QueueId>>,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Messages found in the queue at start: an earlier run may have delivered some recipients.
    recovered: HashSet<QueueId>,
}

struct InFlight<'a>(&'a Mutex<HashSet<QueueId>>, QueueId);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

impl Worker {
    fn new(relay: Relay, resolver: Arc<dyn MxResolver>, recovered: HashSet<QueueId>) -> Worker {
        let cfg = &relay.core.config;
        let ehlo = Domain::parse(&cfg.hostname).unwrap_or(Domain::Name("localhost".into()));
        let mut services = HashMap::new();
        for mode in [TlsMode::None, TlsMode::Opportunistic, TlsMode::Required, TlsMode::Implicit] {
            let mut o = ClientOptions::new(ehlo.clone());
            o.tls = mode;
            o.verify = match (mode, &cfg.outbound_ca) {
                // RFC 7435: opportunistic TLS encrypts without insisting on authentication.
                (TlsMode::Opportunistic, _) => CertVerify::Insecure,
                (_, Some(ca)) => CertVerify::CaFile(ca.clone()),
                _ => CertVerify::WebPki,
            };
            match SmtpClient::new(o) {
                Ok(c) => {
                    services.insert(mode, SmtpService::new(c, cfg.max_per_destination.max(1)));
                }
                Err(e) => tracing::error!(error = %e, ?mode, "cannot build SMTP client"),
            }
        }
        let global = Arc::new(Semaphore::new(cfg.max_deliveries.max(1)));
        Worker { relay, resolver, services, in_flight: Mutex::default(), global, per_host: Mutex::default(), recovered }
    }

    async fn scan(self: Arc<Self>, tasks: &TaskSet, force: bool) {
        match self.relay.core.queue.list().await {
            Ok(ids) => {
                for id in ids {
                    tasks.spawn(self.clone().process(id, force));
                }
            }
            Err(e) => tracing::error!(error = %e, "queue scan failed"),
        }
    }

    async fn process(self: Arc<Self>, id: QueueId, force: bool) {
        if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone()) {
            return;
        }
        let _guard = InFlight(&self.in_flight, id.clone());
        match self.deliver_message(&id, force).await {
            Ok(()) | Err(QueueError::NotFound(_)) => {}
            Err(e) => tracing::error!(%id, error = %e, "delivery pass failed"),
        }
    }

    async fn deliver_message(&self, id: &str, force: bool) -> Result<(), QueueError> {
        let core = &self.relay.core;
        let cfg = &core.config;
        let queue = &core.queue;
        let (mut msg, body) = queue.load_with_body(id).await?;
        let now = QueuedMessage::now();
        let due: Vec<usize> = msg
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RcptStatus::Pending && (force || r.next_attempt <= now))
            .map(|(i, _)| i)
            .collect();
        let expired = now >= msg.arrival + cfg.queue_lifetime.as_secs();
        let needs_notice = msg.recipients.iter().any(|r| r.status != RcptStatus::Pending && !r.notified);
        if due.is_empty() && !expired && !needs_notice {
            return Ok(());
        }
        let mut groups: HashMap<String, (Domain, Vec<usize>)> = HashMap::new();
        let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
        for &i in &due {
            let (dest, _) = classify(&msg.recipients[i].path, &cfg.hostname, &cfg.directory, cfg.source_routes);
            match dest {
                Destination::Local(name) => outcomes.push((i, self.deliver_local(&msg, i, &name, &body).await)),
                Destination::Remote { next_hop, .. } => {
                    groups.entry(next_hop.canonical()).or_insert_with(|| (next_hop, Vec::new())).1.push(i);
                }
                Destination::Unsupported => {
                    outcomes.push((i, Outcome::Failed("550 5.1.3 Unsupported address".into(), None)))
                }
            }
        }
        let remote = futures_util::future::join_all(
            groups.into_values().map(|(hop, idx)| self.deliver_remote(&msg, body.clone(), hop, idx)),
        )
        .await;
        outcomes.extend(remote.into_iter().flatten());
        for (i, o) in outcomes {
            let r = &mut msg.recipients[i];
            match o {
                Outcome::Delivered(mta) => {
                    r.status = RcptStatus::Delivered;
                    r.remote_mta = mta;
                    tracing::info!(%id, to = %r.path, "delivered");
                }
                Outcome::Failed(why, mta) => {
                    tracing::info!(%id, to = %r.path, reason = %why, "failed");
                    r.status = RcptStatus::Failed(why);
                    r.remote_mta = mta;
                }
                Outcome::Retry(why, mta) => {
                    r.attempts += 1;
                    let backoff = cfg
                        .retry_interval
                        .saturating_mul(1 << r.attempts.saturating_sub(1).min(16))
                        .min(cfg.max_retry_interval);
                    r.next_attempt = now + backoff.as_secs().max(1);
                    tracing::info!(%id, to = %r.path, reason = %why, retry_in = backoff.as_secs(), "deferred");
                    r.last_error = Some(why);
                    r.remote_mta = mta;
                }
            }
        }
        if now >= msg.arrival + cfg.queue_lifetime.as_secs() {
            for r in msg.recipients.iter_mut().filter(|r| r.status == RcptStatus::Pending) {
                let last = r.last_error.clone().unwrap_or_else(|| "no attempt succeeded".into());
                r.status = RcptStatus::Failed(format!("421 4.4.7 Delivery time expired; last error: {last}"));
            }
        }
        self.notify(&mut msg, &body).await?;
        if msg.is_done() {
            queue.remove(id).await?;
            tracing::info!(%id, "removed from queue");
        } else {
            queue.update(&msg).await?;
        }
        Ok(())
    }

    /// Sends notifications: failures, successes when asked, and one delay warning.
    async fn notify(&self, msg: &mut QueuedMessage, body: &[u8]) -> Result<(), QueueError> {
        let cfg = &self.relay.core.config;
        let mut by_action: Vec<(Action, Vec<usize>)> = vec![(Action::Failed, vec![]), (Action::Delivered, vec![])];
        for (i, r) in msg.recipients.iter_mut().enumerate() {
            let action = match r.status {
                RcptStatus::Failed(_) => Action::Failed,
                RcptStatus::Delivered => Action::Delivered,
                RcptStatus::Pending => continue,
            };
            if r.notified {
                continue;
            }
            r.notified = true;
            if dsn::wanted(r, action) {
                by_action.iter_mut().find(|(a, _)| *a == action).expect("listed").1.push(i);
            }
        }
        if let Some(after) = cfg.delay_warning {
            if !msg.delay_warned && QueuedMessage::now() >= msg.arrival + after.as_secs() {
                let delayed: Vec<usize> = msg
                    .recipients
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.status == RcptStatus::Pending && dsn::wanted(r, Action::Delayed))
                    .map(|(i, _)| i)
                    .collect();
                if !delayed.is_empty() {
                    msg.delay_warned = true;
                    by_action.push((Action::Delayed, delayed));
                }
            }
        }
        for (action, idx) in by_action.into_iter().filter(|(_, v)| !v.is_empty()) {
            // Never a notification about a message with a null reverse-path (RFC 788, RFC 3461).
            let Some((env, data)) = dsn::build(&cfg.hostname, msg, body, &idx, action) else { continue };
            let dsn_id = self.relay.core.queue.enqueue(env, data.into()).await?;
            tracing::info!(id = %msg.id, dsn = %dsn_id, ?action, recipients = idx.len(), "notification queued");
            let _ = self.relay.core.wake.send(dsn_id);
        }
        Ok(())
    }

    async fn deliver_local(&self, msg: &QueuedMessage, i: usize, name: &str, body: &Bytes) -> Outcome {
        let core = &self.relay.core;
        let user = match core.config.directory.lookup(name) {
            Lookup::User(Target::Local(u)) => u,
            _ if name.eq_ignore_ascii_case("postmaster") => "postmaster".to_string(),
            _ => return Outcome::Failed("550 5.1.1 No such user here".into(), None),
        };
        let terminal = || async { core.terminals.deliver(&user, body.clone()).await };
        let to_maildir = || async {
            let key = format!("{}R{i}", msg.id);
            // After a restart or a failed attempt the file may already be there.
            let thorough = msg.recipients[i].attempts > 0 || self.recovered.contains(&msg.id);
            match core.maildir.deliver_grouped(&core.commit, &user, &key, msg.arrival, &msg.from, body, thorough).await
            {
                Ok(_) => Outcome::Delivered(None),
                Err(e) => Outcome::Retry(format!("451 4.3.0 Local delivery failed: {e}"), None),
            }
        };
        match msg.verb {
            MailVerb::Mail => to_maildir().await,
            // RFC 788 3.4: SEND only to a terminal; SOML terminal or else mailbox; SAML both.
            MailVerb::Send => match terminal().await {
                true => Outcome::Delivered(None),
                false => Outcome::Failed("450 4.2.1 User not active at a terminal".into(), None),
            },
            MailVerb::Soml => match terminal().await {
                true => Outcome::Delivered(None),
                false => to_maildir().await,
            },
            MailVerb::Saml => {
                let _ = terminal().await;
                to_maildir().await
            }
        }
    }

    /// The hosts to try for a next hop: static route, smarthost, address literal, or MX.
    async fn hosts_for(&self, hop: &Domain) -> Result<Vec<(String, Option<SocketAddr>, u16)>, Outcome> {
        let cfg = &self.relay.core.config;
        let key = hop.canonical();
        if let Some((h, p)) = cfg.routes.get(&key).or(cfg.relay_host.as_ref()) {
            return Ok(vec![(h.clone(), None, *p)]);
        }
        let port = cfg.smtp_port;
        let name = match hop {
            Domain::Ipv4(ip) => return Ok(vec![(ip.to_string(), Some(SocketAddr::new((*ip).into(), port)), port)]),
            Domain::Ipv6(ip) => return Ok(vec![(ip.to_string(), Some(SocketAddr::new((*ip).into(), port)), port)]),
            Domain::Name(n) => n.clone(),
        };
        let hosts = match self.resolver.mx(&name).await {
            Ok(MxAnswer::Hosts(h)) => h,
            Ok(MxAnswer::NullMx) => {
                return Err(Outcome::Failed(format!("556 5.1.10 {name} accepts no mail (null MX, RFC 7505)"), None))
            }
            Ok(MxAnswer::NoSuchDomain) => {
                return Err(Outcome::Failed(format!("550 5.1.2 Domain {name} does not exist"), None))
            }
            Err(e) => return Err(Outcome::Retry(format!("451 4.4.3 {e}"), None)),
        };
        let mut out = Vec::new();
        for h in hosts {
            match self.resolver.addresses(&h).await {
                Ok(addrs) => out.extend(addrs.into_iter().map(|ip| (h.clone(), Some(SocketAddr::new(ip, port)), port))),
                Err(e) => tracing::info!(host = %h, error = %e, "MX host does not resolve"),
            }
        }
        if out.is_empty() {
            return Err(Outcome::Retry(format!("451 4.4.4 No address for any mail exchanger of {name}"), None));
        }
        Ok(out)
    }

    fn host_slot(&self, host: &str) -> Arc<Semaphore> {
        let n = self.relay.core.config.max_per_destination.max(1);
        self.per_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    async fn deliver_remote(
        &self,
        msg: &QueuedMessage,
        body: Bytes,
        hop: Domain,
        idx: Vec<usize>,
    ) -> Vec<(usize, Outcome)> {
        let cfg = &self.relay.core.config;
        let all = |o: Outcome| idx.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
        let hosts = match self.hosts_for(&hop).await {
            Ok(h) => h,
            Err(o) => return all(o),
        };
        let envelope = MessageEnvelope {
            // SOML and SAML become MAIL at the next hop: its mailbox delivery is what survives.
            verb: if msg.verb == MailVerb::Send { MailVerb::Send } else { MailVerb::Mail },
            from: msg.from.clone(),
            params: msg.params.clone(),
            recipients: idx
                .iter()
                .map(|&i| (msg.recipients[i].path.clone(), msg.recipients[i].params.clone()))
                .collect(),
        };
        let mode = cfg.tls_per_domain.get(&hop.canonical()).copied().unwrap_or(cfg.outbound_tls);
        let mut last = String::from("451 4.4.1 No host could be reached");
        for (host, addr, port) in hosts {
            let _global = self.global.acquire().await;
            let slot = self.host_slot(&host);
            let _slot = slot.acquire().await;
            let dest = Dest { host: host.clone(), port, addr };
            let req = SendRequest { destination: dest, envelope: envelope.clone(), body: body.clone() };
            let mut result = self.send(mode, req.clone()).await;
            if let (TlsMode::Opportunistic, Err(smtp_client::Error::Tls(e))) = (mode, &result) {
                tracing::warn!(destination = %host, port, error = %e, "STARTTLS failed; retrying once without TLS (downgrade)");
                result = self.send(TlsMode::None, req).await;
            }
            match result {
                Ok(out) => {
                    let data = out.reply.clone();
                    return idx
                        .iter()
                        .zip(out.recipients)
                        .map(|(&i, (_, rcpt))| {
                            let mta = Some(host.clone());
                            let o = match (&rcpt, &data) {
                                (r, _) if r.is_permanent() => Outcome::Failed(r.to_string(), mta),
                                (r, _) if !r.is_positive() => Outcome::Retry(r.to_string(), mta),
                                (_, Some(d)) if d.is_positive() => Outcome::Delivered(mta),
                                (_, Some(d)) if d.is_permanent() => Outcome::Failed(d.to_string(), mta),
                                (_, Some(d)) => Outcome::Retry(d.to_string(), mta),
                                (_, None) => Outcome::Retry("451 4.3.0 Message data not accepted".into(), mta),
                            };
                            (i, o)
                        })
                        .collect();
                }
                Err(e) if e.is_permanent() => {
                    let text = e.reply().map(|r| r.to_string()).unwrap_or_else(|| format!("554 5.0.0 {e}"));
                    return all(Outcome::Failed(text, Some(host)));
                }
                Err(e) => {
                    last = e.reply().map(|r| r.to_string()).unwrap_or_else(|| format!("451 4.4.1 {host}: {e}"));
                    tracing::info!(destination = %host, port, error = %e, "delivery attempt failed");
                }
            }
        }
        all(Outcome::Retry(last, None))
    }

    /// (full, resumed) outbound TLS handshakes so far.
    fn handshakes(&self) -> (u64, u64) {
        self.services.values().map(|s| s.client().handshakes()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    async fn send(&self, mode: TlsMode, req: SendRequest) -> Result<smtp_client::SendOutcome, smtp_client::Error> {
        match self.services.get(&mode) {
            Some(s) => s.send(req).await,
            None => Err(smtp_client::Error::Refused("no SMTP client for this TLS mode")),
        }
    }
}
