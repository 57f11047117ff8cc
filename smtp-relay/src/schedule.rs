//! The queue loop: which message is attempted when.
//!
//! The scheduler keeps a due-time index (next attempt → message id) and touches only due
//! messages: a tick never reads a message that is not due, and never reads a body at all until
//! a delivery needs it. The index is rebuilt at start from a scan of envelopes (no bodies), in
//! the background: new mail is accepted and delivered meanwhile, and a shutdown stops the scan.
//! A message just accepted comes in hand ([`Accepted`]: envelope, routes, body) and is attempted
//! at once without reading the queue.
//!
//! Delivery itself lives in [`crate::deliver::local`] and [`crate::deliver::remote`]; this module
//! applies the outcomes, back-off, expiry and notifications, and stores the new state.
//!
//! # A queue shared by several nodes
//! When the queue has [`Leases`](crate::queue::Leases) (PostgreSQL), there is no scan and no
//! index of the whole queue: the loop claims due messages from the database every
//! [`CLAIM_EVERY`], renews the leases of what it works on every third of the lease time, and
//! gives each message back with its new state after each pass. A node that dies stops renewing
//! and another node claims its messages once their leases expire. A message whose new state
//! cannot be stored stays in this node's memory (and lease) and is retried here, as below.
//!
//! # When state cannot be stored
//! The outcome of an attempt is kept in memory until it is stored: a recipient that got a `250`
//! is never attempted again by this process, even while the disk refuses the state file. The
//! store is retried with its own back-off ([`persist_retry`]), and the failure is logged when it
//! starts and when it ends, not per attempt.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_client::CertVerify;
use smtp_proto::{EnhancedCode, Reply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::deliver::local::LocalDelivery;
use crate::deliver::maildir::Maildir;
use crate::deliver::remote::RemoteDelivery;
use crate::deliver::terminal::Terminals;
use crate::deliver::Outcome;
use crate::dns::{HickoryMx, MxAnswer, MxResolver};
use crate::dsn::{self, Action};
use crate::queue::{millis, Queue, QueueError, QueueId, QueuedMessage, RcptStatus, ScanEntry, StoredBody};
use crate::route::{route_of, Route};
use crate::tls_rpt::Reporter;

/// Longest sleep of the queue loop when nothing is due (the clock may jump).
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// How often a node on a shared queue looks for due messages.
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// The most messages one claim takes.
const CLAIM_BATCH: usize = 200;
/// How often a node on a shared queue reads the queue's counts for the gauges.
const CENSUS_EVERY: Duration = Duration::from_secs(5);
/// Accepted messages kept in hand (with their bodies) beyond this many deliveries in flight
/// are handed over by id and read back when their turn comes: memory stays bounded under load.
const MAX_IN_HAND: usize = 1000;

/// A message the relay has just made durable, handed to the scheduler without a re-read.
#[derive(Debug)]
pub struct Accepted {
    /// Envelope and state (id set).
    pub msg: QueuedMessage,
    /// Each recipient's route, decided at acceptance.
    pub routes: Vec<Route>,
    /// Where its data is.
    pub body: StoredBody,
}

/// The relay's side of the hand-over to the scheduler.
#[derive(Clone, Debug)]
pub struct Handoff(mpsc::UnboundedSender<Accepted>);

impl Handoff {
    /// Gives the scheduler a message just made durable.
    pub fn accepted(&self, a: Accepted) {
        let _ = self.0.send(a);
    }
}

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

/// The wait before attempt `attempts + 1` after `attempts` failed ones: `first`, doubling,
/// at most `max`.
pub fn backoff(first: Duration, max: Duration, attempts: u32) -> Duration {
    first.saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(max)
}

/// The wait before storing a message's state again after `failures` failed stores: 1 s,
/// doubling, at most 5 minutes.
pub fn persist_retry(failures: u32) -> Duration {
    backoff(Duration::from_secs(1), Duration::from_secs(300), failures)
}

/// When `msg` next needs attention (milliseconds since the epoch), or `None` when it is done.
pub fn next_due(msg: &QueuedMessage, config: &RelayConfig) -> Option<u64> {
    if msg.recipients.iter().any(|r| r.status != RcptStatus::Pending && !r.notified) {
        return Some(0);
    }
    let pending = msg.recipients.iter().filter(|r| r.status == RcptStatus::Pending);
    let mut due = pending.map(|r| r.next_attempt).min()?;
    due = due.min(msg.arrival_plus_ms(config.queue_lifetime));
    if let (Some(after), false) = (config.delay_warning, msg.delay_warned) {
        due = due.min(msg.arrival_plus_ms(after));
    }
    Some(due)
}

/// Records each recipient's outcome of an attempt made at `now` (milliseconds since the epoch):
/// a transient failure is tried again after [`backoff`].
fn apply(cfg: &RelayConfig, msg: &mut QueuedMessage, outcomes: Vec<(usize, Outcome)>, now: u64) {
    let id = &msg.id;
    let residence = (now / 1000).saturating_sub(msg.arrival) as f64;
    for (i, o) in outcomes {
        if !matches!(o, Outcome::Retry(..)) {
            metrics::histogram!("tern_queue_residence_seconds").record(residence);
        }
        let r = &mut msg.recipients[i];
        match o {
            Outcome::Delivered(mta) => {
                r.status = RcptStatus::Delivered;
                // Handed to a next hop that takes NOTIFY: the notices are its to send.
                r.notified = mta.is_some();
                r.remote_mta = mta;
                tracing::info!(%id, to = %r.path, "delivered");
            }
            Outcome::Relayed(mta) => {
                r.status = RcptStatus::Delivered;
                r.remote_mta = Some(mta);
                tracing::info!(%id, to = %r.path, "relayed");
            }
            Outcome::Failed(why, mta) => {
                tracing::info!(%id, to = %r.path, reason = %dsn::one_line(&why), "failed");
                r.status = RcptStatus::Failed(why);
                r.remote_mta = mta;
            }
            Outcome::Retry(why, mta) => {
                r.attempts += 1;
                let wait = backoff(cfg.retry_interval, cfg.max_retry_interval, r.attempts);
                r.next_attempt = now.saturating_add(millis(wait));
                tracing::info!(%id, to = %r.path, reason = %dsn::one_line(&why), retry_in = ?wait, "deferred");
                r.last_error = Some(why);
                r.remote_mta = mta;
            }
        }
    }
}

/// Counts one recipient's attempt (`tern_deliveries_total`).
fn count_outcome(kind: &'static str, o: &Outcome) {
    let outcome = match o {
        Outcome::Delivered(_) | Outcome::Relayed(_) => "delivered",
        Outcome::Retry(..) => "deferred",
        Outcome::Failed(..) => "failed",
    };
    metrics::counter!("tern_deliveries_total", "outcome" => outcome, "kind" => kind).increment(1);
}

/// Delivers what the relay queued. Run it with [`Scheduler::run`].
pub struct Scheduler {
    config: Arc<RelayConfig>,
    queue: Arc<dyn Queue>,
    local: Arc<LocalDelivery>,
    accepted: mpsc::UnboundedReceiver<Accepted>,
    handoff: Handoff,
    commands: mpsc::UnboundedReceiver<Command>,
    handle: SchedulerHandle,
    resolver: Option<Arc<dyn MxResolver>>,
    msgauth: Option<Arc<crate::msgauth::MessageAuth>>,
}

/// One unit of work for a delivery task.
enum Job {
    /// Just accepted: everything in hand.
    Fresh(Box<Accepted>),
    /// Due: read the envelope (or the unsaved state in memory).
    Due(QueueId, bool),
    /// Claimed from a shared queue (its lease is held).
    Claimed(Box<crate::queue::Claim>),
}

/// What a finished task reports to the loop.
struct Done {
    id: QueueId,
    next: Option<u64>,
}

/// What delivery tasks share.
struct Ctx {
    config: Arc<RelayConfig>,
    queue: Arc<dyn Queue>,
    local: Arc<LocalDelivery>,
    remote: RemoteDelivery,
    resolver: Arc<dyn MxResolver>,
    handoff: Handoff,
    /// State that could not be stored yet, with the number of failed stores: it wins over
    /// what the queue holds.
    unsaved: Mutex<HashMap<QueueId, (QueuedMessage, u32)>>,
    /// DKIM keys for the mail the relay writes itself.
    msgauth: Option<Arc<crate::msgauth::MessageAuth>>,
    /// The mail store local mailboxes go to, when configured.
    lmtp: Option<crate::deliver::lmtp::LmtpDelivery>,
}

impl Scheduler {
    /// A scheduler over `queue` with its explicit dependencies, and the hand-over the relay's
    /// mail service uses. Fails only if the Maildir committer thread cannot start.
    pub fn new(
        config: Arc<RelayConfig>,
        queue: Arc<dyn Queue>,
        terminals: Arc<Terminals>,
    ) -> std::io::Result<(Handoff, Scheduler)> {
        let (tx, accepted) = mpsc::unbounded_channel();
        let handoff = Handoff(tx);
        let (ctx, commands) = mpsc::unbounded_channel();
        let handle = SchedulerHandle { tx: ctx };
        let maildir = Maildir::new(config.data_dir.join("mail"), &config.hostname);
        let local = Arc::new(LocalDelivery::new(maildir, terminals)?);
        let s = Scheduler {
            config,
            queue,
            local,
            accepted,
            handoff: handoff.clone(),
            commands,
            handle,
            resolver: None,
            msgauth: None,
        };
        Ok((handoff, s))
    }

    /// Uses `resolver` for MX lookups instead of hickory (tests, custom DNS).
    pub fn with_resolver(mut self, resolver: Arc<dyn MxResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Signs the notifications and reports the relay writes with these DKIM keys (when one
    /// covers their `From` domain: the host name's).
    pub fn with_msgauth(mut self, msgauth: Arc<crate::msgauth::MessageAuth>) -> Self {
        self.msgauth = Some(msgauth);
        self
    }

    /// Local delivery, shared with the relay's mail service for final delivery on receipt.
    pub fn local(&self) -> Arc<LocalDelivery> {
        self.local.clone()
    }

    /// A handle for `flush` and `delete`.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Rebuilds the index, delivers new messages as they arrive and due ones when due, until
    /// `shutdown` resolves. Deliveries in progress are abandoned at shutdown; their recipients
    /// stay pending in the queue.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let cfg = self.config.clone();
        let resolver: Arc<dyn MxResolver> = match self.resolver.take() {
            Some(r) => r,
            None => match HickoryMx::with_dnssec(cfg.dns_server, &cfg.dnssec()) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    tracing::error!(error = %e, "no DNS resolver; MX deliveries will be retried");
                    Arc::new(NoDns)
                }
            },
        };
        let ctx = Arc::new(Ctx {
            config: cfg.clone(),
            queue: self.queue.clone(),
            local: self.local.clone(),
            remote: RemoteDelivery::new(cfg.clone(), resolver.clone()).with_shared_limits(self.queue.clone()),
            resolver,
            handoff: self.handoff.clone(),
            unsaved: Mutex::default(),
            msgauth: self.msgauth.clone(),
            lmtp: cfg.lmtp.as_ref().and_then(|target| {
                crate::deliver::lmtp::LmtpDelivery::new(&cfg.hostname, target.clone())
                    .map_err(|e| tracing::error!(error = %e, "no LMTP client; local mail goes to Maildirs"))
                    .ok()
            }),
        });
        let cancel = CancellationToken::new();
        let shared = self.queue.leases().is_some();
        // The index is rebuilt from envelopes as the scan reads them; mail is accepted and
        // delivered meanwhile. A shared queue is not scanned: due messages are claimed.
        let (scan_tx, mut scanned) = mpsc::channel::<ScanEntry>(1024);
        if shared {
            drop(scan_tx);
            let (queue, cancel) = (self.queue.clone(), cancel.clone());
            tokio::spawn(async move { renew_leases(queue, cancel).await });
        } else {
            let (queue, cancel) = (self.queue.clone(), cancel.clone());
            tokio::spawn(async move {
                if let Err(e) = queue.scan(&cancel, scan_tx).await {
                    tracing::error!(error = %e, "queue scan failed");
                }
            });
        }
        if cfg.tls_reports {
            let (ctx, cancel) = (ctx.clone(), cancel.clone());
            tokio::spawn(async move {
                let verify = ctx.config.outbound_ca.clone().map_or(CertVerify::WebPki, CertVerify::CaFile);
                let reporter = match Reporter::new(&ctx.config.hostname, &verify) {
                    Ok(r) => r,
                    Err(e) => return tracing::error!(error = %e, "TLS reports will not be sent"),
                };
                let mut tick = tokio::time::interval(ctx.config.tls_report_interval);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => ctx.send_tls_reports(&reporter).await,
                    }
                }
            });
        }
        let mut scan_pending = !shared;
        let mut claim_tick = tokio::time::interval(CLAIM_EVERY);
        claim_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut claims = Claims::default();
        // Claimed again while this node's pass over it was still finishing (its state already
        // given back): its lease is held, so it is worked on as soon as that pass ends.
        let mut claimed_again: HashMap<QueueId, crate::queue::Claim> = HashMap::new();
        let mut backlog = false;
        // Claimed leases wait for slots: a node holds about what it can deliver soon.
        let claim_room = cfg.max_deliveries.saturating_mul(5).min(CLAIM_BATCH);
        let mut resumed = 0usize;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut index = Index::default();
        let mut census = Census::default();
        let mut in_flight: HashSet<QueueId> = HashSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            if !shared {
                census.publish();
            }
            let sleep = index.next_instant();
            tokio::select! {
                _ = &mut shutdown => break,
                e = scanned.recv(), if scan_pending => match e {
                    Some(ScanEntry::Queued(m, size)) if !in_flight.contains(&m.id) => {
                        if let Some(due) = next_due(&m, &cfg) {
                            census.add(&m.id, m.arrival, size);
                            index.insert(m.id.clone(), due);
                            resumed += 1;
                        }
                    }
                    Some(ScanEntry::Corrupt { id, envelope: Some(env), new: true, .. }) => {
                        let ctx = ctx.clone();
                        tasks.spawn(async move { ctx.notify_corrupt(&id, *env).await });
                    }
                    Some(_) => {}
                    None => {
                        scan_pending = false;
                        tracing::info!(messages = resumed, "resuming queued messages");
                    }
                },
                Some(a) = self.accepted.recv() => {
                    let id = a.msg.id.clone();
                    if !shared {
                        census.add(&id, a.msg.arrival, a.body.len());
                    }
                    index.remove(&id);
                    if in_flight.insert(id.clone()) {
                        let job = if tasks.len() < MAX_IN_HAND { Job::Fresh(Box::new(a)) } else { Job::Due(id, false) };
                        spawn(&mut tasks, &ctx, &done_tx, job);
                    }
                }
                Some(d) = done_rx.recv() => {
                    if let Some(claim) = claimed_again.remove(&d.id) {
                        spawn(&mut tasks, &ctx, &done_tx, Job::Claimed(Box::new(claim)));
                        continue;
                    }
                    in_flight.remove(&d.id);
                    if backlog && tasks.len() < claim_room / 2 {
                        backlog = false;
                        claim_tick.reset_immediately();
                    }
                    match d.next {
                        Some(due) => index.insert(d.id, due),
                        None => census.remove(&d.id),
                    }
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::Flush => {
                        if let Some(leases) = self.queue.leases() {
                            match leases.flush().await {
                                Ok(n) => tracing::info!(messages = n, "flush: every message of the shared queue is due"),
                                Err(e) => tracing::error!(error = %e, "flush: the shared queue cannot be reached"),
                            }
                            claim_tick.reset_immediately();
                        }
                        for id in index.drain() {
                            if in_flight.insert(id.clone()) {
                                spawn(&mut tasks, &ctx, &done_tx, Job::Due(id, true));
                            }
                        }
                    }
                    Command::Delete(id, reply) => {
                        index.remove(&id);
                        census.remove(&id);
                        ctx.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        let r = self.queue.remove(&id).await.map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = claim_tick.tick(), if shared => {
                    let Some(leases) = self.queue.leases() else { continue };
                    let room = claim_room.saturating_sub(tasks.len());
                    let got = claims.take(leases, room).await;
                    // A full claim: there is more due; claim again as soon as there is room.
                    backlog = room > 0 && got.len() == room;
                    for claim in got {
                        if in_flight.insert(claim.msg.id.clone()) {
                            index.remove(&claim.msg.id);
                            spawn(&mut tasks, &ctx, &done_tx, Job::Claimed(Box::new(claim)));
                        } else {
                            claimed_again.insert(claim.msg.id.clone(), claim);
                        }
                    }
                    if let Some(c) = claims.census(leases).await {
                        census.publish_shared(c);
                    }
                }
                _ = tokio::time::sleep_until(sleep) => {
                    for id in index.pop_due(QueuedMessage::now_ms()) {
                        if in_flight.insert(id.clone()) {
                            spawn(&mut tasks, &ctx, &done_tx, Job::Due(id, false));
                        }
                    }
                }
            }
        }
        cancel.cancel();
        tasks.abort_all();
        if let Some(leases) = self.queue.leases() {
            // State kept in memory gets one more try: what it says was delivered must not be
            // delivered again by the node that takes over.
            let unsaved: Vec<QueuedMessage> =
                ctx.unsaved.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, (m, _))| m).collect();
            for msg in unsaved {
                let due = next_due(&msg, &cfg).unwrap_or(0);
                let stored =
                    if msg.is_done() { self.queue.remove(&msg.id).await } else { leases.release(&msg, due).await };
                if let Err(e) = stored {
                    tracing::error!(id = %msg.id, error = %e, "state of a message lost at shutdown; its last attempt may be repeated");
                }
            }
            // What was in flight is left as a crash would leave it, but for the others to take
            // now rather than after the lease time.
            match leases.release_all().await {
                Ok(n) => tracing::info!(leases = n, "leases given back"),
                Err(e) => tracing::warn!(error = %e, "leases not given back; they expire"),
            }
        }
        let (full, resumed) = ctx.remote.handshakes();
        tracing::info!(full, resumed, "outbound TLS handshakes");
    }
}

fn spawn(tasks: &mut tokio::task::JoinSet<()>, ctx: &Arc<Ctx>, done: &mpsc::UnboundedSender<Done>, job: Job) {
    let (ctx, done) = (ctx.clone(), done.clone());
    tasks.spawn(async move {
        let id = match &job {
            Job::Fresh(a) => a.msg.id.clone(),
            Job::Due(id, _) => id.clone(),
            Job::Claimed(c) => c.msg.id.clone(),
        };
        let _in_flight = InFlight::new();
        let next = ctx.process(job).await;
        let _ = done.send(Done { id, next });
    });
}

/// Renews this node's leases every third of the lease time until `cancel`; failures are logged
/// when they start and when they end.
async fn renew_leases(queue: Arc<dyn Queue>, cancel: CancellationToken) {
    let Some(every) = queue.leases().map(|l| l.lease_time() / 3) else { return };
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(leases) = queue.leases() else { return };
        match leases.renew().await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("leases renewed again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot renew leases; other nodes may take this node's messages once they expire");
            }
            Err(_) => {}
        }
    }
}

/// Claims from a shared queue, with its failures logged once per outage, and the queue's counts
/// read now and then.
#[derive(Default)]
struct Claims {
    failing: bool,
    census_at: Option<tokio::time::Instant>,
}

impl Claims {
    async fn take(&mut self, leases: &dyn crate::queue::Leases, room: usize) -> Vec<crate::queue::Claim> {
        if room == 0 {
            return Vec::new();
        }
        match leases.claim(room).await {
            Ok(c) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("shared queue reachable again; deliveries resume");
                }
                c
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(error = %e, "shared queue unreachable; deliveries paused");
                }
                Vec::new()
            }
        }
    }

    async fn census(&mut self, leases: &dyn crate::queue::Leases) -> Option<crate::queue::QueueCensus> {
        let now = tokio::time::Instant::now();
        if self.failing || self.census_at.is_some_and(|at| now < at) {
            return None;
        }
        self.census_at = Some(now + CENSUS_EVERY);
        leases.census().await.ok()
    }
}

/// Counts a delivery task in `tern_deliveries_in_flight` while it lives (aborted tasks too).
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        metrics::gauge!("tern_deliveries_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("tern_deliveries_in_flight").decrement(1.0);
    }
}

/// Next-attempt times of the messages that are waiting (not in flight).
#[derive(Default)]
struct Index {
    by_time: BTreeSet<(u64, QueueId)>,
    by_id: HashMap<QueueId, u64>,
}

impl Index {
    fn insert(&mut self, id: QueueId, due: u64) {
        if let Some(old) = self.by_id.insert(id.clone(), due) {
            self.by_time.remove(&(old, id.clone()));
        }
        self.by_time.insert((due, id));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
    }

    fn pop_due(&mut self, now: u64) -> Vec<QueueId> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.by_time.first() {
            if *due > now {
                break;
            }
            let (_, id) = self.by_time.pop_first().expect("checked");
            self.by_id.remove(&id);
            out.push(id);
        }
        out
    }

    fn drain(&mut self) -> Vec<QueueId> {
        self.by_id.clear();
        std::mem::take(&mut self.by_time).into_iter().map(|(_, id)| id).collect()
    }

    /// When the loop should wake next.
    fn next_instant(&self) -> tokio::time::Instant {
        let now = QueuedMessage::now_ms();
        let wait = match self.by_time.first() {
            Some((due, _)) => Duration::from_millis(due.saturating_sub(now)).min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        tokio::time::Instant::now() + wait
    }
}

/// What the queue holds, for the `tern_queue_*` gauges: each message's arrival and size.
#[derive(Default)]
struct Census {
    by_id: HashMap<QueueId, (u64, u64)>,
    by_age: BTreeSet<(u64, QueueId)>,
    bytes: u64,
}

impl Census {
    fn add(&mut self, id: &str, arrival: u64, bytes: u64) {
        if self.by_id.insert(id.to_string(), (arrival, bytes)).is_none() {
            self.by_age.insert((arrival, id.to_string()));
            self.bytes += bytes;
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some((arrival, bytes)) = self.by_id.remove(id) {
            self.by_age.remove(&(arrival, id.to_string()));
            self.bytes -= bytes;
        }
    }

    /// The gauges from a shared queue's own counts.
    fn publish_shared(&self, c: crate::queue::QueueCensus) {
        metrics::gauge!("tern_queue_messages").set(c.messages as f64);
        metrics::gauge!("tern_queue_bytes").set(c.bytes as f64);
        let oldest = c.oldest.map_or(0, |arrival| QueuedMessage::now().saturating_sub(arrival));
        metrics::gauge!("tern_queue_oldest_message_age_seconds").set(oldest as f64);
    }

    fn publish(&self) {
        metrics::gauge!("tern_queue_messages").set(self.by_id.len() as f64);
        metrics::gauge!("tern_queue_bytes").set(self.bytes as f64);
        let oldest = self.by_age.first().map_or(0, |(arrival, _)| QueuedMessage::now().saturating_sub(*arrival));
        metrics::gauge!("tern_queue_oldest_message_age_seconds").set(oldest as f64);
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

impl Ctx {
    fn routes(&self, msg: &QueuedMessage) -> Vec<Route> {
        let c = &self.config;
        msg.recipients.iter().map(|r| route_of(&r.path, &c.hostname, &c.directory, c.source_routes)).collect()
    }

    /// One pass over a message; returns when it is next due (`None`: done or gone).
    async fn process(&self, job: Job) -> Option<u64> {
        // A lease just taken (at acceptance or by a claim) is good for the lease time; one held
        // longer (a retry of state kept in memory) is confirmed before anything is delivered.
        let recent_lease = !matches!(job, Job::Due(..));
        let (mut msg, routes, body, force, fresh, failures) = match job {
            Job::Fresh(a) => {
                let a = *a;
                (a.msg, a.routes, Some(a.body), false, true, 0)
            }
            Job::Due(id, force) => {
                let unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                let (msg, failures) = match unsaved {
                    Some(x) => x,
                    None => match self.queue.load(&id).await {
                        Ok(m) => (m, 0),
                        Err(QueueError::NotFound(_)) => return None,
                        Err(QueueError::Corrupt { envelope, .. }) => {
                            if let Some(env) = envelope {
                                self.notify_corrupt(&id, *env).await;
                            }
                            return None;
                        }
                        // Logged once by the queue; tried again later, the rest keeps flowing.
                        Err(_) => return Some(QueuedMessage::now_ms() + 60_000),
                    },
                };
                let routes = self.routes(&msg);
                (msg, routes, None, force, false, failures)
            }
            Job::Claimed(c) => {
                // State kept here after a failed store is newer than the database's.
                let unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.msg.id);
                let (msg, failures) = unsaved.unwrap_or((c.msg, 0));
                let routes = self.routes(&msg);
                (msg, routes, None, c.force, false, failures)
            }
        };
        let id = msg.id.clone();
        let now = QueuedMessage::now_ms();
        let due: Vec<usize> = msg
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RcptStatus::Pending && (force || r.next_attempt <= now))
            .map(|(i, _)| i)
            .collect();
        // The body is looked up only when an attempt or a notification needs it.
        let body = match body {
            Some(b) => b,
            None => match self.queue.body(&id).await {
                Ok(b) => b,
                Err(QueueError::NotFound(_)) => return None,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "queued message unreadable");
                    return Some(now + 60_000);
                }
            },
        };
        // Remote deliveries check the lease again if they waited long for their slots.
        if let (Some(l), false) = (self.queue.leases(), recent_lease) {
            match l.confirm(&id).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%id, "lease lost before delivery; left to the node that holds it");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, "cannot confirm the lease; retrying");
                    self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (msg, failures));
                    return Some(now + 5_000);
                }
            }
        }
        let mut groups: Vec<(smtp_proto::Domain, Vec<usize>)> = Vec::new();
        let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
        let mut to_store: Vec<usize> = Vec::new();
        for &i in &due {
            match &routes[i] {
                // Mailboxes go to the mail store when there is one (terminals stay local).
                Route::Mailbox(_) if self.lmtp.is_some() && msg.verb == smtp_proto::MailVerb::Mail => to_store.push(i),
                Route::Mailbox(user) => {
                    let thorough = !fresh || msg.recipients[i].attempts > 0;
                    let start = std::time::Instant::now();
                    let o = self.local.deliver(&msg, i, user, &body, thorough).await;
                    metrics::histogram!("tern_delivery_duration_seconds", "kind" => "local").record(start.elapsed());
                    count_outcome("local", &o);
                    outcomes.push((i, o));
                }
                Route::Remote(hop) => match groups.iter_mut().find(|(h, _)| h.canonical() == hop.canonical()) {
                    Some((_, idx)) => idx.push(i),
                    None => groups.push((hop.clone(), vec![i])),
                },
                Route::Refused(r) => {
                    let o = Outcome::Failed(r.clone(), None);
                    count_outcome("remote", &o);
                    outcomes.push((i, o));
                }
            }
        }
        let remote = futures_util::future::join_all(groups.iter().map(|(hop, idx)| async {
            let start = std::time::Instant::now();
            let r = self.remote.deliver(&msg, &body, hop, idx).await;
            metrics::histogram!("tern_delivery_duration_seconds", "kind" => "remote").record(start.elapsed());
            for (_, o) in &r {
                count_outcome("remote", o);
            }
            r
        }))
        .await;
        outcomes.extend(remote.into_iter().flatten());
        if let (Some(store), false) = (&self.lmtp, to_store.is_empty()) {
            let start = std::time::Instant::now();
            let stored = store.deliver(&msg, &body, &to_store).await;
            metrics::histogram!("tern_delivery_duration_seconds", "kind" => "local").record(start.elapsed());
            for (_, o) in &stored {
                count_outcome("local", o);
            }
            outcomes.extend(stored);
        }
        apply(&self.config, &mut msg, outcomes, now);
        if now >= msg.arrival_plus_ms(self.config.queue_lifetime) {
            for r in msg.recipients.iter_mut().filter(|r| r.status == RcptStatus::Pending) {
                let last = r.last_error.as_ref().map(dsn::one_line).unwrap_or_else(|| "no attempt succeeded".into());
                let text = format!("Delivery time expired; last error: {last}");
                r.status = RcptStatus::Failed(Reply::new(421, Some(EnhancedCode::new(4, 4, 7)), &text));
            }
        }
        self.notify(&mut msg, &body).await;
        self.persist(msg, failures).await
    }

    /// Stores the new state (or removes a finished message). On failure the state stays in
    /// memory, authoritative, and the store is tried again after [`persist_retry`].
    async fn persist(&self, msg: QueuedMessage, failures: u32) -> Option<u64> {
        let id = msg.id.clone();
        let done = msg.is_done();
        let leases = self.queue.leases();
        let r = match (done, leases) {
            (true, _) => self.queue.remove(&id).await,
            // Given back with its state: the database says when, and which node, next.
            (false, Some(l)) => l.release(&msg, next_due(&msg, &self.config).unwrap_or(0)).await,
            (false, None) => self.queue.update(&msg).await,
        };
        match r {
            // Deleted meanwhile (`tern queue delete`): nothing more to do.
            Err(QueueError::NotFound(_)) if done => None,
            Err(QueueError::NotFound(_)) if leases.is_some() => {
                tracing::warn!(%id, "message deleted, or its lease lost to another node, while it was worked on");
                None
            }
            Ok(()) if leases.is_some() => {
                if failures > 0 {
                    tracing::info!(%id, failures, "message state stored again");
                }
                None
            }
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(%id, failures, "message state stored again");
                }
                if done {
                    tracing::debug!(%id, "removed from queue");
                    return None;
                }
                next_due(&msg, &self.config)
            }
            Err(e) => {
                if failures == 0 {
                    tracing::error!(%id, error = %e, "cannot store message state; keeping it in memory and retrying");
                }
                let wait = millis(persist_retry(failures + 1));
                let due = next_due(&msg, &self.config).unwrap_or(u64::MAX).min(QueuedMessage::now_ms() + wait);
                self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (msg, failures + 1));
                Some(due)
            }
        }
    }

    /// Sends notifications: failures, successes when asked, and one delay warning.
    async fn notify(&self, msg: &mut QueuedMessage, body: &StoredBody) {
        let cfg = &self.config;
        let trusted = msg.trusted;
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
            if dsn::wanted(trusted, r, action) {
                by_action.iter_mut().find(|(a, _)| *a == action).expect("listed").1.push(i);
            }
        }
        if let Some(after) = cfg.delay_warning {
            if !msg.delay_warned && QueuedMessage::now_ms() >= msg.arrival_plus_ms(after) {
                let delayed: Vec<usize> = msg
                    .recipients
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.status == RcptStatus::Pending && dsn::wanted(trusted, r, Action::Delayed))
                    .map(|(i, _)| i)
                    .collect();
                if !delayed.is_empty() {
                    msg.delay_warned = true;
                    by_action.push((Action::Delayed, delayed));
                }
            }
        }
        for (action, idx) in by_action.into_iter().filter(|(_, v)| !v.is_empty()) {
            self.send_notice(msg, body, &idx, action).await;
        }
    }

    /// Queues one notification and hands it to the loop. Never about a message with a null
    /// reverse-path (RFC 788, RFC 3461).
    async fn send_notice(&self, msg: &QueuedMessage, body: &StoredBody, idx: &[usize], action: Action) {
        let Some(notice) = dsn::build(&self.config.hostname, msg, idx, action) else { return };
        let mut env = notice.envelope.clone();
        let signer = self.msgauth.as_ref().map(|a| (a, self.config.auth_max_size));
        match dsn::enqueue(self.queue.as_ref(), notice, body, signer).await {
            Ok(stored) => {
                tracing::info!(id = %msg.id, dsn = %stored.id, ?action, recipients = idx.len(), "notification queued");
                metrics::counter!("tern_notifications_total").increment(1);
                env.id = stored.id;
                let routes = self.routes(&env);
                self.handoff.accepted(crate::schedule::Accepted { msg: env, routes, body: stored.body });
            }
            Err(e) => tracing::error!(id = %msg.id, error = %e, ?action, "cannot queue notification"),
        }
    }

    /// Sends the TLS reports of finished days: HTTPS posts directly, mail through the queue.
    async fn send_tls_reports(&self, reporter: &Reporter) {
        let Some(reports) = self.remote.reports() else { return };
        for report in reporter.send_due(reports, self.resolver.as_ref(), std::time::SystemTime::now()).await {
            let (Ok(to), Ok(from)) = (
                smtp_proto::Path::parse(&format!("<{}>", report.to)),
                smtp_proto::Path::parse(&format!("<postmaster@{}>", self.config.hostname)),
            ) else {
                tracing::info!(to = %report.to, "TLS report address not usable");
                continue;
            };
            let mut env = QueuedMessage {
                id: String::new(),
                verb: smtp_proto::MailVerb::Mail,
                from: smtp_proto::ReversePath::Path(from),
                params: Default::default(),
                arrival: QueuedMessage::now(),
                client: None,
                helo: None,
                recipients: vec![crate::queue::RcptRecord::new(smtp_proto::ForwardPath::Path(to), Default::default())],
                delay_warned: false,
                trusted: false,
            };
            let message = match &self.msgauth {
                Some(auth) => auth.signed(report.message).await,
                None => report.message,
            };
            match self.queue.enqueue(env.clone(), message.into()).await {
                Ok(stored) => {
                    tracing::info!(id = %stored.id, to = %report.to, "TLS report queued");
                    env.id = stored.id;
                    let routes = self.routes(&env);
                    self.handoff.accepted(crate::schedule::Accepted { msg: env, routes, body: stored.body });
                }
                Err(e) => tracing::error!(to = %report.to, error = %e, "cannot queue TLS report"),
            }
        }
    }

    /// Tells the sender of a record that was found damaged and set aside: its pending
    /// recipients failed (the damaged content is not returned).
    async fn notify_corrupt(&self, id: &str, mut env: QueuedMessage) {
        let why = Reply::new(554, Some(EnhancedCode::new(5, 3, 0)), "The queued message was damaged and set aside");
        let mut idx = Vec::new();
        let trusted = env.trusted;
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.status == RcptStatus::Pending {
                r.status = RcptStatus::Failed(why.clone());
                if dsn::wanted(trusted, r, Action::Failed) {
                    idx.push(i);
                }
            }
        }
        tracing::warn!(%id, recipients = idx.len(), "damaged record: telling the sender");
        if !idx.is_empty() {
            self.send_notice(&env, &StoredBody::Memory(Default::default()), &idx, Action::Failed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::RcptRecord;
    use smtp_proto::{ForwardPath, Path, ReversePath};

    #[test]
    fn backoff_doubles_from_the_first_interval_to_the_cap() {
        let (first, max) = (Duration::from_millis(300), Duration::from_secs(4));
        let waits: Vec<u128> = (1..=6).map(|n| backoff(first, max, n).as_millis()).collect();
        assert_eq!(waits, [300, 600, 1200, 2400, 4000, 4000]);
        assert_eq!(backoff(first, max, 0), first, "before any failure");
        assert_eq!(backoff(first, Duration::MAX, 400), first.saturating_mul(1 << 16), "no overflow");
        assert_eq!(persist_retry(1), Duration::from_secs(1));
        assert_eq!(persist_retry(20), Duration::from_secs(300));
    }

    fn msg(arrival: u64) -> QueuedMessage {
        let rcpt = |n: u64| {
            let mut r = RcptRecord::new(ForwardPath::Path(Path::parse("<a@b.test>").unwrap()), Default::default());
            r.next_attempt = n;
            r
        };
        QueuedMessage {
            id: "Q".into(),
            verb: Default::default(),
            from: ReversePath::Null,
            params: Default::default(),
            arrival,
            client: None,
            helo: None,
            recipients: vec![rcpt(500_000), rcpt(300_000)],
            delay_warned: false,
            trusted: false,
        }
    }

    #[test]
    fn next_due_is_the_earliest_of_attempts_expiry_and_delay_warning() {
        // Arrival at 100 s; recipients due at 500 s and 300 s; due times in milliseconds.
        let mut cfg = RelayConfig::new("mx.test", "/nonexistent");
        cfg.queue_lifetime = Duration::from_secs(1000);
        let mut m = msg(100);
        assert_eq!(next_due(&m, &cfg), Some(300_000), "the earliest pending recipient");
        cfg.queue_lifetime = Duration::from_millis(150_250);
        assert_eq!(next_due(&m, &cfg), Some(250_250), "expiry comes first");
        cfg.queue_lifetime = Duration::from_secs(1000);
        cfg.delay_warning = Some(Duration::from_secs(50));
        assert_eq!(next_due(&m, &cfg), Some(150_000), "the delay warning comes first");
        m.delay_warned = true;
        assert_eq!(next_due(&m, &cfg), Some(300_000), "once warned, not again");
        m.recipients[1].status = RcptStatus::Delivered;
        assert_eq!(next_due(&m, &cfg), Some(0), "an outcome not yet notified is due now");
        m.recipients[1].notified = true;
        assert_eq!(next_due(&m, &cfg), Some(500_000));
        m.recipients[0].status = RcptStatus::Delivered;
        m.recipients[0].notified = true;
        assert_eq!(next_due(&m, &cfg), None, "done");
    }

    #[test]
    fn a_deferred_recipient_is_due_after_the_backoff_to_the_millisecond() {
        let mut cfg = RelayConfig::new("mx.test", "/nonexistent");
        cfg.retry_interval = Duration::from_millis(300);
        cfg.max_retry_interval = Duration::from_millis(1000);
        let mut m = msg(100);
        let retry = || Outcome::Retry(Reply::new(451, None, "later"), None);
        let mut dues = Vec::new();
        for now in [1_000_000, 2_000_000, 3_000_000, 4_000_000] {
            apply(&cfg, &mut m, vec![(0, retry())], now);
            dues.push(m.recipients[0].next_attempt - now);
        }
        assert_eq!(dues, [300, 600, 1000, 1000], "first interval, doubled, capped");
        assert_eq!(m.recipients[0].attempts, 4);
        assert_eq!(m.recipients[0].last_error.as_ref().map(|r| r.code()), Some(451));
        assert_eq!(m.recipients[1].next_attempt, 300_000, "the other recipient is untouched");
        apply(&cfg, &mut m, vec![(1, Outcome::Failed(Reply::new(550, None, "no"), None))], 5_000_000);
        assert!(matches!(m.recipients[1].status, RcptStatus::Failed(_)));
        assert_eq!(m.recipients[1].attempts, 0, "a final failure is not a retry");
    }

    #[test]
    fn the_index_hands_out_due_messages_once_in_time_order() {
        let mut index = Index::default();
        index.insert("B".into(), 20);
        index.insert("A".into(), 10);
        index.insert("C".into(), 30);
        index.insert("B".into(), 5);
        assert_eq!(index.pop_due(19), ["B", "A"]);
        assert!(index.pop_due(19).is_empty());
        index.remove("C");
        assert!(index.pop_due(100).is_empty());
        index.insert("D".into(), 1);
        assert_eq!(index.drain(), ["D"]);
    }
}
