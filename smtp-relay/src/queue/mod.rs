//! The queue: where accepted mail waits, durably, until every recipient is delivered or has
//! finally failed.
//!
//! [`Queue`] is the interface; [`FsQueue`] is the default, a filesystem spool. The trait speaks
//! in whole records and ids so that a database-backed queue shared by several relays can
//! implement it too.

mod fs;
mod record;

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use smtp_proto::command::{MailParams, RcptParams};
use smtp_proto::{ForwardPath, MailVerb, ReversePath};

pub use fs::FsQueue;
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
    /// Finally failed; the text says why (an SMTP reply or a local reason).
    Failed(String),
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
    /// Earliest next attempt, seconds since the epoch (0: now).
    pub next_attempt: u64,
    /// The last transient error, for `tern queue show`.
    pub last_error: Option<String>,
    /// The host that accepted or refused it, for notifications.
    pub remote_mta: Option<String>,
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
}

impl QueuedMessage {
    /// Whether every recipient is delivered or finally failed.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status != RcptStatus::Pending)
    }

    /// Seconds since the epoch, now.
    pub fn now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
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
    },
    /// No such message.
    #[error("no queued message {0}")]
    NotFound(QueueId),
    /// The queue is shutting down.
    #[error("queue closed")]
    Closed,
}

/// A durable queue of messages.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Stores a new message; when this returns `Ok`, the message survives a crash. The id in
    /// `msg` is replaced by the queue's own.
    async fn enqueue(&self, msg: QueuedMessage, body: Bytes) -> Result<QueueId, QueueError>;
    /// The envelope and state of a message.
    async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError>;
    /// The message data.
    async fn body(&self, id: &str) -> Result<Bytes, QueueError>;
    /// Envelope, state and data together (one read where the queue can).
    async fn load_with_body(&self, id: &str) -> Result<(QueuedMessage, Bytes), QueueError> {
        Ok((self.load(id).await?, self.body(id).await?))
    }
    /// Stores new state for a message, durably.
    async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError>;
    /// Removes a message whose recipients are all done.
    async fn remove(&self, id: &str) -> Result<(), QueueError>;
    /// Ids of every message in the queue (damaged records are set aside and logged).
    async fn list(&self) -> Result<Vec<QueueId>, QueueError>;
}
