//! The queue: where accepted mail waits, durably, until every recipient is delivered or has
//! finally failed.
//!
//! [`Queue`] is the interface; [`FsQueue`] is the default, a filesystem spool. A message goes
//! in as a stream ([`Queue::create`] → [`MessageWriter::write`] → [`MessageWriter::commit`]),
//! so no layer holds a whole message; what comes back from the commit is a [`StoredBody`] the
//! scheduler delivers from without reading the queue again. Envelopes and state are read
//! without bodies ([`Queue::scan`], [`Queue::load`]). The trait speaks in records and ids so
//! that [`PgQueue`], a PostgreSQL queue shared by several relays, implements it too; a shared
//! queue also hands out [`Leases`], so that each message is worked on by one node at a time.

mod body;
mod fs;
mod pg;
mod record;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use smtp_proto::command::{MailParams, RcptParams};
use smtp_proto::{ForwardPath, MailVerb, Reply, ReversePath};

pub use body::{ChunkSource, StoredBody};
pub use fs::FsQueue;
pub use pg::{
    CommitStats, PgOptions, PgQueue, BATCH_BYTES as PG_BATCH_BYTES, BATCH_MESSAGES as PG_BATCH_MESSAGES,
    CHUNK as PG_CHUNK, SCHEMA_VERSION,
};
pub use record::RecordError;

/// A queue id: letters and digits, unique across restarts.
pub type QueueId = String;

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptStatus {
    /// Not yet delivered; `attempts` failed tries so far.
    Pending,
    /// Delivered (or relayed) successfully.
    Delivered,
    /// Finally failed; the reply says why (the next hop's, or a local one).
    Failed(Reply),
}

/// The host that answered for a recipient (for `Remote-MTA:` in notifications).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHost {
    /// The host name (or address) that was connected to.
    pub name: String,
}

impl std::fmt::Display for RemoteHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptRecord {
    /// The forward-path (after any source-route rewrite).
    pub path: ForwardPath,
    /// DSN parameters.
    pub params: RcptParams,
    /// The state.
    pub status: RcptStatus,
    /// Failed delivery attempts.
    pub attempts: u32,
    /// Earliest next attempt, milliseconds since the epoch (0: now).
    pub next_attempt: u64,
    /// The last transient error, for `tern queue show` and delay warnings.
    pub last_error: Option<Reply>,
    /// The host that accepted or refused it, for notifications.
    pub remote_mta: Option<RemoteHost>,
    /// Whether the sender was told about this recipient's final state.
    pub notified: bool,
}

impl RcptRecord {
    /// A new pending recipient.
    pub fn new(path: ForwardPath, params: RcptParams) -> Self {
        RcptRecord {
            path,
            params,
            status: RcptStatus::Pending,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            remote_mta: None,
            notified: false,
        }
    }
}

/// A queued message's envelope and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The queue id.
    pub id: QueueId,
    /// MAIL, SEND, SOML or SAML.
    pub verb: MailVerb,
    /// The reverse-path (after any source-route rewrite).
    pub from: ReversePath,
    /// MAIL parameters.
    pub params: MailParams,
    /// When it was accepted, seconds since the epoch.
    pub arrival: u64,
    /// The client's address, if it came over SMTP.
    pub client: Option<SocketAddr>,
    /// The client's HELO name.
    pub helo: Option<String>,
    /// Recipients and their state.
    pub recipients: Vec<RcptRecord>,
    /// Whether a delay warning was sent.
    pub delay_warned: bool,
    /// Whether it came from a trusted network or an authenticated session: only those get
    /// success and delay notices, returned content and notices to address literals.
    pub trusted: bool,
}

/// One entry found by [`Queue::scan`].
#[derive(Debug, Clone)]
pub enum ScanEntry {
    /// A message waiting (envelope and state, no body) and its body's size.
    Queued(Box<QueuedMessage>, u64),
    /// A damaged record, set aside: listed so an operator sees it.
    Corrupt {
        /// Its id (file name).
        id: QueueId,
        /// What is wrong.
        reason: String,
        /// The envelope, when enough of the record is readable to tell the sender.
        envelope: Option<Box<QueuedMessage>>,
        /// Whether it was set aside by this scan (so the sender is told once).
        new: bool,
    },
}

impl ScanEntry {
    /// The entry's queue id.
    pub fn id(&self) -> &str {
        match self {
            ScanEntry::Queued(m, _) => &m.id,
            ScanEntry::Corrupt { id, .. } => id,
        }
    }
}

/// A message just made durable: everything the scheduler needs to deliver it without reading
/// the queue again.
#[derive(Debug)]
pub struct Stored {
    /// The queue id.
    pub id: QueueId,
    /// Where its data can be read.
    pub body: StoredBody,
}

/// A message being written into the queue. Dropping it without [`commit`](Self::commit) removes
/// everything written so far.
#[async_trait::async_trait]
pub trait MessageWriter: Send {
    /// The id the message will have.
    fn id(&self) -> &str;
    /// Appends data (buffered; written out in large blocks off the async threads).
    async fn write(&mut self, data: &[u8]) -> Result<(), QueueError>;
    /// Makes the message durable: when this returns `Ok`, it survives a crash.
    async fn commit(self: Box<Self>) -> Result<Stored, QueueError>;
}

impl QueuedMessage {
    /// Whether every recipient is delivered or finally failed.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status != RcptStatus::Pending)
    }

    /// Seconds since the epoch, now (the unit of `arrival`).
    pub fn now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    /// Milliseconds since the epoch, now (the unit of due times such as `next_attempt`).
    pub fn now_ms() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    /// `arrival + after`, in milliseconds since the epoch.
    pub fn arrival_plus_ms(&self, after: Duration) -> u64 {
        self.arrival.saturating_mul(1000).saturating_add(millis(after))
    }
}

/// A duration in whole milliseconds (saturating), the unit of due times.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The spool could not be written or read.
    #[error("queue I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A spool record is damaged; it was set aside.
    #[error("corrupt queue record {id}: {reason}")]
    Corrupt {
        /// The record.
        id: QueueId,
        /// What is wrong.
        reason: RecordError,
        /// The envelope, when enough of the record is readable to tell the sender.
        envelope: Option<Box<QueuedMessage>>,
    },
    /// No such message.
    #[error("no queued message {0}")]
    NotFound(QueueId),
    /// The queue is shutting down, or is a read-only view.
    #[error("queue closed")]
    Closed,
    /// The queue's database failed or cannot be reached.
    #[error("queue database: {0}")]
    Database(String),
    /// The database holds a queue schema newer than this program knows: refused, never
    /// downgraded.
    #[error("queue schema version {found} is newer than this tern's ({known}); upgrade tern")]
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// The newest version this program knows.
        known: i32,
    },
    /// The envelope (mostly its recipients) is larger than a queue record can hold: refused
    /// before anything is accepted, never stored unreadable.
    #[error("envelope of {size} octets is over the queue's limit of {limit}")]
    EnvelopeTooLarge {
        /// The encoded envelope's size.
        size: usize,
        /// The most a record's envelope may take.
        limit: usize,
    },
}

impl QueueError {
    /// Whether the storage is full (ENOSPC, EDQUOT): `452 4.3.1` rather than `451 4.3.0`.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, QueueError::Io(e) if is_storage_full(e))
    }
}

/// Whether an I/O error means the disk or the quota is full.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// A message claimed from a shared queue, with whether a flush asked for every recipient now.
#[derive(Debug)]
pub struct Claim {
    /// Envelope and state.
    pub msg: QueuedMessage,
    /// Retry every pending recipient now, whatever its next attempt says.
    pub force: bool,
}

/// What a shared queue holds, for the `tern_queue_*` gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCensus {
    /// Messages.
    pub messages: u64,
    /// Their data, in octets.
    pub bytes: u64,
    /// The oldest one's arrival, seconds since the epoch (`None`: empty).
    pub oldest: Option<u64>,
}

/// A slot held in a shared concurrency limit; given back when dropped.
pub trait SlotLease: Send {}

/// The leases of a queue shared by several relays: a node works on a message only while it
/// holds its lease, renews its leases while it works, and a node that dies has them expire so
/// that another node resumes its messages.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// This node's name in the leases.
    fn node(&self) -> &str;
    /// How long a lease lasts unless renewed.
    fn lease_time(&self) -> Duration;
    /// Takes the lease of up to `limit` due messages whose lease is free or expired.
    async fn claim(&self, limit: usize) -> Result<Vec<Claim>, QueueError>;
    /// Stores a message's new state with the time it is next due (milliseconds since the epoch)
    /// and gives its lease back. `NotFound` when the message is gone or its lease was lost.
    async fn release(&self, msg: &QueuedMessage, due: u64) -> Result<(), QueueError>;
    /// Extends this node's lease on one message right before it is delivered: `false` when the
    /// lease was lost (expired and taken by another node, or the message deleted), and the
    /// delivery must not be made.
    async fn confirm(&self, id: &str) -> Result<bool, QueueError>;
    /// Extends every lease this node holds (messages and slots); returns how many.
    async fn renew(&self) -> Result<u64, QueueError>;
    /// Gives back every lease this node holds, messages and slots, as it stops: other nodes take
    /// its messages at once instead of after the lease time. Returns how many.
    async fn release_all(&self) -> Result<u64, QueueError>;
    /// Makes every message due now, every pending recipient included; returns how many.
    async fn flush(&self) -> Result<u64, QueueError>;
    /// Counts of the whole shared queue.
    async fn census(&self) -> Result<QueueCensus, QueueError>;
    /// One of `max` slots of destination `dest`, shared by every node; waits for one to free.
    async fn slot(&self, dest: &str, max: usize) -> Result<Box<dyn SlotLease>, QueueError>;
}

/// A durable queue of messages.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The leases, when several relays share this queue (`None`: this process owns it).
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }
    /// Starts a new message; its id replaces the one in `msg`.
    async fn create(&self, msg: QueuedMessage) -> Result<Box<dyn MessageWriter>, QueueError>;
    /// Stores a whole message from memory (notifications, tests).
    async fn enqueue(&self, msg: QueuedMessage, body: Bytes) -> Result<Stored, QueueError> {
        let mut w = self.create(msg).await?;
        w.write(&body).await?;
        w.commit().await
    }
    /// The envelope and state of a message (the body is not read).
    async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError>;
    /// Where a message's data can be read.
    async fn body(&self, id: &str) -> Result<StoredBody, QueueError>;
    /// Stores new state for a message, durably.
    async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError>;
    /// Removes a message whose recipients are all done.
    async fn remove(&self, id: &str) -> Result<(), QueueError>;
    /// Sends every message's envelope and state (no bodies), and the damaged records set
    /// aside, to `found` as they are read, in no particular order. Entries that are not records
    /// at all are skipped (and logged once). Stops early once `cancel` is cancelled or `found`
    /// is closed.
    async fn scan(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
        found: tokio::sync::mpsc::Sender<ScanEntry>,
    ) -> Result<(), QueueError>;
    /// Every entry of [`Queue::scan`], gathered and sorted by id (for tools and tests; the
    /// scheduler takes them as they come).
    async fn scan_all(&self) -> Result<Vec<ScanEntry>, QueueError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let cancel = tokio_util::sync::CancellationToken::new();
        let gather = async move {
            let mut v = Vec::new();
            while let Some(e) = rx.recv().await {
                v.push(e);
            }
            v
        };
        let (r, mut all) = tokio::join!(self.scan(&cancel, tx), gather);
        r?;
        all.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(all)
    }
    /// Ids of the messages waiting (damaged records left out), sorted.
    async fn list(&self) -> Result<Vec<QueueId>, QueueError> {
        Ok(self
            .scan_all()
            .await?
            .into_iter()
            .filter_map(|e| match e {
                ScanEntry::Queued(m, _) => Some(m.id),
                ScanEntry::Corrupt { .. } => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An FsQueue seen only through the required methods, so the provided ones run.
    struct Plain(FsQueue);

    #[async_trait::async_trait]
    impl Queue for Plain {
        async fn create(&self, msg: QueuedMessage) -> Result<Box<dyn MessageWriter>, QueueError> {
            self.0.create(msg).await
        }
        async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError> {
            self.0.load(id).await
        }
        async fn body(&self, id: &str) -> Result<StoredBody, QueueError> {
            self.0.body(id).await
        }
        async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError> {
            self.0.update(msg).await
        }
        async fn remove(&self, id: &str) -> Result<(), QueueError> {
            self.0.remove(id).await
        }
        async fn scan(
            &self,
            cancel: &tokio_util::sync::CancellationToken,
            found: tokio::sync::mpsc::Sender<ScanEntry>,
        ) -> Result<(), QueueError> {
            self.0.scan(cancel, found).await
        }
    }

    fn msg() -> QueuedMessage {
        let path = ForwardPath::Path(smtp_proto::Path::parse("<a@b.test>").unwrap());
        QueuedMessage {
            id: String::new(),
            verb: MailVerb::Mail,
            from: ReversePath::Null,
            params: MailParams::default(),
            arrival: QueuedMessage::now(),
            client: None,
            helo: None,
            recipients: vec![
                RcptRecord::new(path.clone(), RcptParams::default()),
                RcptRecord::new(path, RcptParams::default()),
            ],
            delay_warned: false,
            trusted: false,
        }
    }

    #[tokio::test]
    async fn the_provided_scan_gathers_every_entry_sorted_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let q = Plain(FsQueue::open(dir.path()).unwrap());
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(q.enqueue(msg(), format!("body {i}").into()).await.unwrap().id);
        }
        ids.sort();
        let all = q.scan_all().await.unwrap();
        assert_eq!(all.iter().map(ScanEntry::id).collect::<Vec<_>>(), ids);
        assert_eq!(q.list().await.unwrap(), ids);
    }

    #[test]
    fn done_means_no_recipient_pending() {
        let mut m = msg();
        assert!(!m.is_done());
        m.recipients[0].status = RcptStatus::Delivered;
        assert!(!m.is_done(), "one still pending");
        m.recipients[1].status = RcptStatus::Failed(Reply::new(550, None, "no"));
        assert!(m.is_done());
    }

    #[test]
    fn clocks_and_full_disks() {
        let (s, ms) = (QueuedMessage::now(), QueuedMessage::now_ms());
        assert!(s > 1_700_000_000 && ms / 1000 >= s && ms / 1000 <= s + 1, "{s} {ms}");
        let mut m = msg();
        m.arrival = 100;
        assert_eq!(m.arrival_plus_ms(Duration::from_millis(250)), 100_250);
        assert_eq!(m.arrival_plus_ms(Duration::MAX), u64::MAX, "saturates");
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(is_storage_full(&full) && QueueError::Io(full).is_storage_full());
        assert!(is_storage_full(&std::io::Error::from(std::io::ErrorKind::QuotaExceeded)));
        assert!(!QueueError::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied)).is_storage_full());
        assert!(!QueueError::Closed.is_storage_full());
    }
}
