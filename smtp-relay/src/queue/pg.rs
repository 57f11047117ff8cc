//! A queue in PostgreSQL, shared by every relay node that points at the same database.
//!
//! Tables (created and migrated at start, versioned in `tern_schema`):
//! - `tern_message`: one row per message: the envelope (the spool's own encoding), the state,
//!   the size, when it is next due, and the lease (`owner`, `lease_until`).
//! - `tern_chunk`: the message data in chunks of [`CHUNK`] octets, streamed in while the message
//!   arrives and read back one chunk at a time: no layer holds a whole large message.
//! - `tern_slot`: per-destination connection slots shared by the nodes.
//!
//! # Durability
//! The data chunks of a large message are written as they arrive, with asynchronous commit;
//! the message's row (and its last chunk) is inserted by a committer that batches concurrent
//! messages into one transaction with synchronous commit. PostgreSQL's log is sequential, so
//! that commit's flush also covers the earlier chunks: when [`MessageWriter::commit`] returns,
//! everything is on disk, and many messages share one flush.
//!
//! # Leases
//! A message row is inserted with the accepting node's lease, so it delivers it at once. Other
//! nodes take due messages with `FOR UPDATE SKIP LOCKED`; a node renews its leases while it
//! works; a node that dies has its leases expire and another node resumes its messages. The
//! state of every attempt is stored, with synchronous commit, as the lease is given back.
//! Leases compare the nodes' wall clocks: keep them in sync (NTP) and the skew well under the
//! lease time.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};

use super::record::{apply_state, decode_header, encode_header, encode_state, RecordError};
use super::{
    ChunkSource, Claim, Leases, MessageWriter, Queue, QueueCensus, QueueError, QueueId, QueuedMessage, RcptStatus,
    ScanEntry, SlotLease, Stored, StoredBody,
};

/// The newest schema version this program knows.
pub const SCHEMA_VERSION: i32 = 1;

/// Size of the data chunks: a message up to this size is one row insert at commit.
pub const CHUNK: usize = 256 * 1024;

/// The most an envelope may take (as in the file spool: about 20 000 long recipients).
const MAX_ENVELOPE: usize = 4 * 1024 * 1024 - 64;

/// The most messages one commit takes.
pub const BATCH_MESSAGES: usize = 256;
/// A commit takes no more messages once it carries this many data octets.
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How long one database operation may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// A destination slot given back by a delivery is kept this long for the node's next delivery
/// to the same destination (no database round trip) before it is released.
const SLOT_IDLE: Duration = Duration::from_millis(200);
/// A node hands a slot back to the other nodes after holding it this long, busy or not.
const SLOT_HOLD: Duration = Duration::from_secs(2);

/// Statement parameters.
type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Advisory lock key taken while the schema is migrated (one node at a time).
const MIGRATION_LOCK: i64 = 0x7465_726e_0001;

/// Each migration takes the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE tern_message (
        id text PRIMARY KEY,
        envelope bytea NOT NULL,
        state bytea,
        size bigint NOT NULL,
        chunks integer NOT NULL,
        arrival bigint NOT NULL,
        due bigint NOT NULL,
        force boolean NOT NULL DEFAULT false,
        owner text,
        lease_until bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX tern_message_due ON tern_message (due);
    CREATE INDEX tern_message_owner ON tern_message (owner) WHERE owner IS NOT NULL;
    CREATE TABLE tern_chunk (
        id text NOT NULL,
        seq integer NOT NULL,
        data bytea NOT NULL,
        written bigint NOT NULL,
        PRIMARY KEY (id, seq)
    );
    CREATE TABLE tern_slot (
        dest text NOT NULL,
        slot integer NOT NULL,
        owner text,
        lease_until bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (dest, slot)
    );"];

/// How a [`PgQueue`] behaves.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// This node's name in leases (unique per process; a restarted node is a new one).
    pub node: String,
    /// How long a lease lasts unless renewed (renewed every third of it).
    pub lease: Duration,
    /// Database connections in the pool.
    pub pool_size: usize,
    /// Leave the schema alone: fail unless it is there, at this program's version (tools).
    pub existing_only: bool,
}

impl PgOptions {
    /// Defaults for a node called `hostname`: a 30-second lease and 16 connections.
    pub fn new(hostname: &str) -> PgOptions {
        PgOptions {
            node: format!("{hostname}/{}/{:08x}", std::process::id(), rand::random::<u32>()),
            lease: Duration::from_secs(30),
            pool_size: 16,
            existing_only: false,
        }
    }
}

/// How the committers have batched new messages so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions that stored new messages.
    pub commits: u64,
    /// Messages they stored.
    pub messages: u64,
    /// The most messages one transaction stored.
    pub most_messages: u64,
    /// The most data octets one transaction carried with its rows.
    pub most_bytes: u64,
}

/// The PostgreSQL queue. Cheap to clone.
#[derive(Clone)]
pub struct PgQueue {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    options: PgOptions,
    /// Id parts: a random tag per process and a counter.
    tag: u16,
    counter: AtomicU32,
    /// Messages waiting for the committer.
    commits: mpsc::Sender<Pending>,
    /// What the committers did.
    stats: Arc<Mutex<CommitStats>>,
    /// Destinations whose slot rows exist.
    slot_rows: Mutex<std::collections::HashSet<(String, usize)>>,
    /// Slots this node holds but is not using: (destination, slot) → (taken at, idle since).
    idle_slots: Mutex<std::collections::HashMap<(String, i32), (tokio::time::Instant, tokio::time::Instant)>>,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue").field("node", &self.inner.options.node).finish()
    }
}

/// A database error as one line, with its causes (tokio-postgres keeps the server's message in
/// the source).
fn db_err(e: impl std::error::Error) -> QueueError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    QueueError::Database(text)
}

/// Runs one database operation with a time limit.
async fn within<T>(f: impl std::future::Future<Output = Result<T, QueueError>>) -> Result<T, QueueError> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(QueueError::Database(format!("no answer within {OP_TIMEOUT:?}"))))
}

fn now_ms() -> i64 {
    i64::try_from(QueuedMessage::now_ms()).unwrap_or(i64::MAX)
}

/// A `u64` time as a database `bigint` (saturating).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Splits `sslrootcert=PATH` off a connection URL (tokio-postgres does not read it).
fn split_root_cert(url: &str) -> (String, Option<std::path::PathBuf>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), None) };
    let mut ca = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(path) => {
                ca = Some(std::path::PathBuf::from(path));
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (url, ca)
}

impl PgQueue {
    /// Connects to `url` (`postgres://user:pass@host:port/db?sslmode=require&sslrootcert=CA.pem`),
    /// creates or migrates the schema and starts the committer. TLS to the database goes through
    /// rustls, verified against the web PKI roots or `sslrootcert`. Fails, with the reason, when
    /// the database cannot be reached or holds a newer schema.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgQueue, QueueError> {
        let (url, ca) = split_root_cert(url);
        let mut config = tokio_postgres::Config::from_str(&url).map_err(db_err)?;
        // Our sessions commit synchronously whatever the server's default says: a `250` waits
        // for the flush (only data chunks opt out, covered by their message's commit).
        let session = match config.get_options() {
            Some(o) => format!("-c synchronous_commit=on {o}"),
            None => "-c synchronous_commit=on".to_string(),
        };
        config.options(&session);
        let verify = ca.map_or(smtp_client::CertVerify::WebPki, smtp_client::CertVerify::CaFile);
        let tls_config = smtp_client::tls::client_config_for(&verify, rustls::DEFAULT_VERSIONS)
            .map_err(|e| QueueError::Database(format!("TLS: {e}")))?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(db_err)?;
        migrate(&pool, options.existing_only).await?;
        let (commits, rx) = mpsc::channel(1024);
        let q = PgQueue {
            inner: Arc::new(Inner {
                pool,
                options,
                tag: rand::random(),
                counter: AtomicU32::new(0),
                commits,
                stats: Arc::default(),
                slot_rows: Mutex::default(),
                idle_slots: Mutex::default(),
            }),
        };
        // Two committers: one sends a batch while the other waits for its flush.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..2 {
            let (pool, rx, stats) = (q.inner.pool.clone(), rx.clone(), q.inner.stats.clone());
            tokio::spawn(committer(pool, rx, stats));
        }
        if !q.inner.options.existing_only {
            q.tidy().await;
        }
        Ok(q)
    }

    /// How the committers have batched new messages so far.
    pub fn commit_stats(&self) -> CommitStats {
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `synchronous_commit` setting of this queue's database sessions (`on` unless the
    /// URL's options override it).
    pub async fn sessions_synchronous_commit(&self) -> Result<String, QueueError> {
        let row = self.row("SHOW synchronous_commit", &[]).await?;
        Ok(row.map(|r| r.get::<_, String>(0)).unwrap_or_default())
    }

    /// The schema version the database holds.
    pub async fn schema_version(&self) -> Result<i32, QueueError> {
        let row = self.row("SELECT max(version) FROM tern_schema", &[]).await?;
        Ok(row.and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0))
    }

    /// Removes data chunks older than an hour that no message owns (writers that died).
    async fn tidy(&self) {
        let sql = "DELETE FROM tern_chunk c WHERE written < $1 AND NOT EXISTS
                   (SELECT 1 FROM tern_message m WHERE m.id = c.id)";
        match self.exec(sql, &[&(now_ms() - 3_600_000)]).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(chunks = n, "removed data of messages never committed"),
            Err(e) => tracing::warn!(error = %e, "could not tidy the queue"),
        }
    }

    fn new_id(&self) -> QueueId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("{micros:013X}{:04X}{:04X}", self.inner.tag, n & 0xffff)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, QueueError> {
        self.inner.pool.get().await.map_err(db_err)
    }

    fn lease_until(&self) -> i64 {
        now_ms().saturating_add(big(super::millis(self.inner.options.lease)))
    }

    /// Runs one statement (prepared once per pooled connection) within the time limit: how many
    /// rows it changed.
    async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, QueueError> {
        within(async {
            let c = self.client().await?;
            let st = c.prepare_cached(sql).await.map_err(db_err)?;
            c.execute(&st, params).await.map_err(db_err)
        })
        .await
    }

    /// Runs one query the same way: its rows.
    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<tokio_postgres::Row>, QueueError> {
        within(async {
            let c = self.client().await?;
            let st = c.prepare_cached(sql).await.map_err(db_err)?;
            c.query(&st, params).await.map_err(db_err)
        })
        .await
    }

    /// The first row of a query, if any.
    async fn row(&self, sql: &str, params: Params<'_>) -> Result<Option<tokio_postgres::Row>, QueueError> {
        Ok(self.rows(sql, params).await?.into_iter().next())
    }
}

/// Creates or migrates the schema under an advisory lock; refuses a newer one.
async fn migrate(pool: &Pool, existing_only: bool) -> Result<(), QueueError> {
    within(async {
        let mut c = pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
        let exists: bool = tx
            .query_one("SELECT to_regclass('tern_schema') IS NOT NULL", &[])
            .await
            .map_err(db_err)?
            .get(0);
        let found = if exists {
            let row = tx.query_one("SELECT max(version) FROM tern_schema", &[]).await.map_err(db_err)?;
            row.get::<_, Option<i32>>(0).unwrap_or(0)
        } else {
            0
        };
        if found > SCHEMA_VERSION {
            return Err(QueueError::SchemaTooNew { found, known: SCHEMA_VERSION });
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        if existing_only {
            return Err(QueueError::Database(format!(
                "no tern queue (schema version {found}, expected {SCHEMA_VERSION}) in this database; start tern serve on it first"
            )));
        }
        tx.batch_execute("CREATE TABLE IF NOT EXISTS tern_schema (version integer NOT NULL)")
            .await
            .map_err(db_err)?;
        for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).await.map_err(db_err)?;
            tracing::info!(version = v + 1, "queue schema migrated");
        }
        tx.execute("DELETE FROM tern_schema", &[]).await.map_err(db_err)?;
        tx.execute("INSERT INTO tern_schema (version) VALUES ($1)", &[&SCHEMA_VERSION]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    })
    .await
}

/// A message ready to be made durable by the committer.
struct Pending {
    id: QueueId,
    envelope: Vec<u8>,
    size: i64,
    chunks: i32,
    arrival: i64,
    lease: (String, i64),
    /// The last (or only) chunk, written with the row.
    last: Option<(i32, Bytes)>,
    done: oneshot::Sender<Result<(), QueueError>>,
}

/// Commits waiting messages in batches: one transaction, one flush, for all of them.
async fn committer(pool: Pool, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>, stats: Arc<Mutex<CommitStats>>) {
    loop {
        let mut batch = Vec::new();
        let mut bytes;
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            bytes = first.last.as_ref().map_or(0, |(_, b)| b.len());
            batch.push(first);
            while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.last.as_ref().map_or(0, |(_, b)| b.len());
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
        }
        let result = within(commit_batch(&pool, &batch)).await;
        if result.is_ok() {
            metrics::counter!("tern_queue_db_commits_total").increment(1);
            metrics::counter!("tern_queue_db_committed_messages_total").increment(batch.len() as u64);
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            s.commits += 1;
            s.messages += batch.len() as u64;
            s.most_messages = s.most_messages.max(batch.len() as u64);
            s.most_bytes = s.most_bytes.max(bytes as u64);
        }
        for p in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(QueueError::Database(e.to_string())),
            };
            let _ = p.done.send(r);
        }
    }
}

async fn commit_batch(pool: &Pool, batch: &[Pending]) -> Result<(), QueueError> {
    let mut c = pool.get().await.map_err(db_err)?;
    let tx = c.transaction().await.map_err(db_err)?;
    let chunk = tx
        .prepare_cached("INSERT INTO tern_chunk (id, seq, data, written) VALUES ($1, $2, $3, $4)")
        .await
        .map_err(db_err)?;
    let row = tx
        .prepare_cached(
            "INSERT INTO tern_message (id, envelope, size, chunks, arrival, due, owner, lease_until)
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
        )
        .await
        .map_err(db_err)?;
    let now = now_ms();
    // Sent together (tokio-postgres pipelines them), answered together.
    let (t, chunk, row) = (&tx, &chunk, &row);
    let ops = batch.iter().map(|p| async move {
        if let Some((seq, data)) = &p.last {
            t.execute(chunk, &[&p.id, seq, &&data[..], &now]).await?;
        }
        t.execute(row, &[&p.id, &p.envelope, &p.size, &p.chunks, &p.arrival, &p.lease.0, &p.lease.1]).await
    });
    for r in futures_util::future::join_all(ops).await {
        r.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// A message being written: data goes out in chunks as it fills them.
struct PgWriter {
    queue: PgQueue,
    id: QueueId,
    arrival: i64,
    envelope: Vec<u8>,
    buf: BytesMut,
    /// Chunks written so far.
    seq: i32,
    len: u64,
    done: bool,
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        if self.done || self.seq == 0 {
            return;
        }
        // Aborted: its chunks go (start-up tidies them if this does not run).
        let (q, id) = (self.queue.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = q.exec("DELETE FROM tern_chunk WHERE id = $1", &[&id]).await;
            });
        }
    }
}

impl PgWriter {
    /// Writes one full chunk, with asynchronous commit: the message's own commit flushes it.
    async fn put_chunk(&mut self, data: Bytes) -> Result<(), QueueError> {
        let (id, seq) = (self.id.clone(), self.seq);
        within(async {
            let mut c = self.queue.client().await?;
            let tx = c.transaction().await.map_err(db_err)?;
            tx.batch_execute("SET LOCAL synchronous_commit TO OFF").await.map_err(db_err)?;
            tx.execute(
                &tx.prepare_cached("INSERT INTO tern_chunk (id, seq, data, written) VALUES ($1, $2, $3, $4)")
                    .await
                    .map_err(db_err)?,
                &[&id, &seq, &&data[..], &now_ms()],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)
        })
        .await?;
        self.seq += 1;
        Ok(())
    }
}

#[async_trait::async_trait]
impl MessageWriter for PgWriter {
    fn id(&self) -> &str {
        &self.id
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), QueueError> {
        self.buf.extend_from_slice(data);
        self.len += data.len() as u64;
        while self.buf.len() >= CHUNK {
            let chunk = self.buf.split_to(CHUNK).freeze();
            self.put_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Stored, QueueError> {
        let rest = self.buf.split().freeze();
        let last = (!rest.is_empty()).then(|| (self.seq, rest.clone()));
        let chunks = self.seq + i32::from(last.is_some());
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            id: self.id.clone(),
            envelope: std::mem::take(&mut self.envelope),
            size: big(self.len),
            chunks,
            arrival: self.arrival,
            lease: (self.queue.inner.options.node.clone(), self.queue.lease_until()),
            last,
            done: tx,
        };
        self.queue.inner.commits.send(pending).await.map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)??;
        self.done = true;
        let body = if self.seq == 0 {
            StoredBody::Memory(rest)
        } else {
            StoredBody::Chunks { source: Arc::new(self.queue.clone()), id: self.id.clone(), len: self.len }
        };
        Ok(Stored { id: self.id.clone(), body })
    }
}

/// A row back into a message: the envelope, then the state when there is one.
fn decode_row(envelope: &[u8], state: Option<&[u8]>) -> Result<QueuedMessage, RecordError> {
    let (mut msg, ..) = decode_header(envelope)?;
    if let Some(state) = state {
        apply_state(&mut msg, state)?;
    }
    Ok(msg)
}

/// When a message next needs attention, as far as the queue alone can tell (without the
/// relay's delay-warning and lifetime settings): now if a final state is unreported, else the
/// earliest pending recipient's next attempt.
fn due_of(msg: &QueuedMessage) -> u64 {
    if msg.recipients.iter().any(|r| r.status != RcptStatus::Pending && !r.notified) {
        return 0;
    }
    msg.recipients.iter().filter(|r| r.status == RcptStatus::Pending).map(|r| r.next_attempt).min().unwrap_or(0)
}

#[async_trait::async_trait]
impl ChunkSource for PgQueue {
    async fn chunk(&self, id: &str, seq: u32) -> std::io::Result<Option<Bytes>> {
        let seq = i32::try_from(seq).map_err(std::io::Error::other)?;
        let row = self
            .row("SELECT data FROM tern_chunk WHERE id = $1 AND seq = $2", &[&id, &seq])
            .await
            .map_err(std::io::Error::other)?;
        Ok(row.map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }
}

#[async_trait::async_trait]
impl Queue for PgQueue {
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    async fn create(&self, mut msg: QueuedMessage) -> Result<Box<dyn MessageWriter>, QueueError> {
        msg.id = self.new_id();
        let (envelope, _) = encode_header(&msg, 0);
        if envelope.len() > MAX_ENVELOPE {
            return Err(QueueError::EnvelopeTooLarge { size: envelope.len(), limit: MAX_ENVELOPE });
        }
        // Fail before the data comes when the database is gone (451, not a wasted transfer).
        if self.inner.pool.status().available == 0 && self.inner.pool.status().size == 0 {
            drop(self.client().await?);
        }
        Ok(Box::new(PgWriter {
            queue: self.clone(),
            id: msg.id,
            arrival: big(msg.arrival),
            envelope,
            buf: BytesMut::new(),
            seq: 0,
            len: 0,
            done: false,
        }))
    }

    async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError> {
        let row = self.row("SELECT envelope, state FROM tern_message WHERE id = $1", &[&id]).await?;
        let row = row.ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        let (envelope, state): (Vec<u8>, Option<Vec<u8>>) = (row.get(0), row.get(1));
        decode_row(&envelope, state.as_deref()).map_err(|reason| QueueError::Corrupt {
            id: id.to_string(),
            reason,
            envelope: None,
        })
    }

    async fn body(&self, id: &str) -> Result<StoredBody, QueueError> {
        let row = self.row("SELECT size, chunks FROM tern_message WHERE id = $1", &[&id]).await?;
        let row = row.ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        let (size, chunks): (i64, i32) = (row.get(0), row.get(1));
        if chunks <= 1 {
            let data = self.chunk(id, 0).await?.unwrap_or_default();
            return Ok(StoredBody::Memory(data));
        }
        Ok(StoredBody::Chunks { source: Arc::new(self.clone()), id: id.to_string(), len: size as u64 })
    }

    async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError> {
        let sql = "UPDATE tern_message SET state = $2, due = $3 WHERE id = $1";
        match self.exec(sql, &[&msg.id, &encode_state(msg), &big(due_of(msg))]).await? {
            0 => Err(QueueError::NotFound(msg.id.clone())),
            _ => Ok(()),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), QueueError> {
        // One statement: the row and its data go together (one round trip, one commit).
        let sql = "WITH m AS (DELETE FROM tern_message WHERE id = $1 RETURNING id),
                        d AS (DELETE FROM tern_chunk WHERE id = $1)
                   SELECT count(*) FROM m";
        let n: i64 = self.row(sql, &[&id]).await?.map_or(0, |r| r.get(0));
        if n == 0 {
            return Err(QueueError::NotFound(id.to_string()));
        }
        Ok(())
    }

    async fn scan(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
        found: mpsc::Sender<ScanEntry>,
    ) -> Result<(), QueueError> {
        use futures_util::TryStreamExt;
        let c = self.client().await?;
        let rows = within(async {
            c.query_raw("SELECT id, envelope, state, size FROM tern_message", std::iter::empty::<i32>())
                .await
                .map_err(db_err)
        })
        .await?;
        futures_util::pin_mut!(rows);
        loop {
            let row = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = rows.try_next() => match r.map_err(db_err)? {
                    Some(row) => row,
                    None => return Ok(()),
                },
            };
            let (id, envelope, state, size): (String, Vec<u8>, Option<Vec<u8>>, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let entry = match decode_row(&envelope, state.as_deref()) {
                Ok(m) => ScanEntry::Queued(Box::new(m), size as u64),
                Err(reason) => ScanEntry::Corrupt { id, reason: reason.to_string(), envelope: None, new: false },
            };
            if found.send(entry).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// A destination slot this node holds. Dropped, it is kept idle for [`SLOT_IDLE`] for this
/// node's next delivery to the destination, then released (at once after [`SLOT_HOLD`]); see
/// [`PgQueue::park_slot`].
struct PgSlot {
    queue: PgQueue,
    dest: String,
    slot: i32,
    taken: tokio::time::Instant,
}

impl SlotLease for PgSlot {}

impl Drop for PgSlot {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (q, key, taken) = (self.queue.clone(), (std::mem::take(&mut self.dest), self.slot), self.taken);
        rt.spawn(async move { q.park_slot(key, taken).await });
    }
}

impl PgQueue {
    /// A slot just given back by a delivery: kept idle for this node's next delivery to the
    /// destination, then released to every node. While the database is away the release fails:
    /// the slot stays this node's (its lease renewed, usable here) and is released later.
    async fn park_slot(&self, key: (String, i32), taken: tokio::time::Instant) {
        if taken.elapsed() >= SLOT_HOLD && self.release_slot(&key).await {
            return;
        }
        let mut wait = SLOT_IDLE;
        loop {
            let since = tokio::time::Instant::now();
            self.inner.idle_slots.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), (taken, since));
            tokio::time::sleep(wait).await;
            // Taken again meanwhile: its next holder parks it.
            let unused = {
                let mut idle = self.inner.idle_slots.lock().unwrap_or_else(|e| e.into_inner());
                let unused = idle.get(&key).is_some_and(|(_, s)| *s == since);
                if unused {
                    idle.remove(&key);
                }
                unused
            };
            if !unused || self.release_slot(&key).await {
                return;
            }
            wait = Duration::from_secs(1);
        }
    }

    /// Gives a destination slot back to every node; whether the database took it.
    async fn release_slot(&self, (dest, slot): &(String, i32)) -> bool {
        let sql = "UPDATE tern_slot SET owner = NULL, lease_until = 0 WHERE dest = $1 AND slot = $2 AND owner = $3";
        self.exec(sql, &[dest, slot, &self.inner.options.node]).await.is_ok()
    }

    /// An idle slot of `dest` this node still holds, if any.
    fn idle_slot(&self, dest: &str, max: i32) -> Option<PgSlot> {
        let mut idle = self.inner.idle_slots.lock().unwrap_or_else(|e| e.into_inner());
        let key = idle.keys().find(|(d, s)| d == dest && *s < max).cloned()?;
        let (taken, _) = idle.remove(&key)?;
        Some(PgSlot { queue: self.clone(), dest: key.0, slot: key.1, taken })
    }
}

#[async_trait::async_trait]
impl Leases for PgQueue {
    fn node(&self) -> &str {
        &self.inner.options.node
    }

    fn lease_time(&self) -> Duration {
        self.inner.options.lease
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claim>, QueueError> {
        let now = now_ms();
        let sql = "WITH c AS (
                       SELECT id, force FROM tern_message
                       WHERE due <= $1 AND (owner IS NULL OR lease_until < $1)
                       ORDER BY due LIMIT $2::int8 FOR UPDATE SKIP LOCKED)
                   UPDATE tern_message m SET owner = $3, lease_until = $4, force = false
                   FROM c WHERE m.id = c.id
                   RETURNING m.id, m.envelope, m.state, c.force";
        let rows = self.rows(sql, &[&now, &(limit as i64), &self.inner.options.node, &self.lease_until()]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, envelope, state, force): (String, Vec<u8>, Option<Vec<u8>>, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            match decode_row(&envelope, state.as_deref()) {
                Ok(msg) => out.push(Claim { msg, force }),
                Err(e) => {
                    // Parked, not claimed again and again; `tern queue list` shows it.
                    tracing::error!(%id, error = %e, "damaged queue row set aside");
                    let park = "UPDATE tern_message SET due = $2, owner = NULL WHERE id = $1";
                    let _ = self.exec(park, &[&id, &i64::MAX]).await;
                }
            }
        }
        Ok(out)
    }

    async fn release(&self, msg: &QueuedMessage, due: u64) -> Result<(), QueueError> {
        let sql = "UPDATE tern_message
                   SET state = $2, due = CASE WHEN force THEN 0 ELSE $3::int8 END, owner = NULL, lease_until = 0
                   WHERE id = $1 AND owner = $4";
        match self.exec(sql, &[&msg.id, &encode_state(msg), &big(due), &self.inner.options.node]).await? {
            0 => Err(QueueError::NotFound(msg.id.clone())),
            _ => Ok(()),
        }
    }

    async fn confirm(&self, id: &str) -> Result<bool, QueueError> {
        let sql = "UPDATE tern_message SET lease_until = $3 WHERE id = $1 AND owner = $2";
        Ok(self.exec(sql, &[&id, &self.inner.options.node, &self.lease_until()]).await? == 1)
    }

    async fn renew(&self) -> Result<u64, QueueError> {
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.inner.options.node, &self.lease_until()];
        let m = self.exec("UPDATE tern_message SET lease_until = $2 WHERE owner = $1", &args).await?;
        Ok(m + self.exec("UPDATE tern_slot SET lease_until = $2 WHERE owner = $1", &args).await?)
    }

    async fn release_all(&self) -> Result<u64, QueueError> {
        let node = &self.inner.options.node;
        let m = self.exec("UPDATE tern_message SET owner = NULL, lease_until = 0 WHERE owner = $1", &[node]).await?;
        Ok(m + self.exec("UPDATE tern_slot SET owner = NULL, lease_until = 0 WHERE owner = $1", &[node]).await?)
    }

    async fn flush(&self) -> Result<u64, QueueError> {
        self.exec("UPDATE tern_message SET due = 0, force = true WHERE due < $1", &[&i64::MAX]).await
    }

    async fn census(&self) -> Result<QueueCensus, QueueError> {
        let sql = "SELECT count(*), coalesce(sum(size), 0)::bigint, min(arrival) FROM tern_message";
        let row = self.row(sql, &[]).await?.ok_or_else(|| QueueError::Database("no census row".into()))?;
        Ok(QueueCensus {
            messages: row.get::<_, i64>(0) as u64,
            bytes: row.get::<_, i64>(1) as u64,
            oldest: row.get::<_, Option<i64>>(2).map(|a| a as u64),
        })
    }

    async fn slot(&self, dest: &str, max: usize) -> Result<Box<dyn SlotLease>, QueueError> {
        let max = i32::try_from(max.max(1)).unwrap_or(i32::MAX);
        let key = (dest.to_string(), max as usize);
        let known = self.inner.slot_rows.lock().unwrap_or_else(|e| e.into_inner()).contains(&key);
        if !known {
            let sql = "INSERT INTO tern_slot (dest, slot) SELECT $1, g FROM generate_series(0, $2 - 1) g
                       ON CONFLICT DO NOTHING";
            self.exec(sql, &[&dest, &max]).await?;
            self.inner.slot_rows.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
        }
        if let Some(s) = self.idle_slot(dest, max) {
            return Ok(Box::new(s));
        }
        let take = "UPDATE tern_slot SET owner = $3, lease_until = $4
                    WHERE (dest, slot) = (
                        SELECT dest, slot FROM tern_slot
                        WHERE dest = $1 AND slot < $2 AND (owner IS NULL OR lease_until < $5)
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING slot";
        let mut wait = Duration::from_millis(10);
        loop {
            let got = self.row(take, &[&dest, &max, &self.inner.options.node, &self.lease_until(), &now_ms()]).await?;
            if let Some(row) = got {
                let taken = tokio::time::Instant::now();
                return Ok(Box::new(PgSlot { queue: self.clone(), dest: dest.to_string(), slot: row.get(0), taken }));
            }
            tokio::time::sleep(wait).await;
            if let Some(s) = self.idle_slot(dest, max) {
                return Ok(Box::new(s));
            }
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_certificate_is_split_off_the_url() {
        let (u, ca) = split_root_cert("postgres://h/db?sslmode=require&sslrootcert=/x/ca.pem");
        assert_eq!(u, "postgres://h/db?sslmode=require");
        assert_eq!(ca.as_deref(), Some(std::path::Path::new("/x/ca.pem")));
        let (u, ca) = split_root_cert("postgres://h/db?sslrootcert=/ca.pem");
        assert_eq!((u.as_str(), ca.is_some()), ("postgres://h/db", true));
        let (u, ca) = split_root_cert("postgres://h/db");
        assert_eq!((u.as_str(), ca), ("postgres://h/db", None));
    }

    #[test]
    fn the_queue_alone_says_when_a_message_is_due() {
        use crate::queue::RcptRecord;
        use smtp_proto::{ForwardPath, Path, Reply};
        let rcpt = |next: u64| {
            let mut r = RcptRecord::new(ForwardPath::Path(Path::parse("<a@b.test>").unwrap()), Default::default());
            r.next_attempt = next;
            r
        };
        let mut m = QueuedMessage {
            id: "Q".into(),
            verb: Default::default(),
            from: smtp_proto::ReversePath::Null,
            params: Default::default(),
            arrival: 1,
            client: None,
            helo: None,
            recipients: vec![rcpt(700), rcpt(500), rcpt(900)],
            delay_warned: false,
            trusted: false,
        };
        assert_eq!(due_of(&m), 500, "the earliest pending recipient");
        m.recipients[1].status = RcptStatus::Delivered;
        assert_eq!(due_of(&m), 0, "an outcome not yet notified is due now");
        m.recipients[1].notified = true;
        assert_eq!(due_of(&m), 700);
        m.recipients[0].status = RcptStatus::Failed(Reply::new(550, None, "no"));
        m.recipients[0].notified = true;
        m.recipients[2].status = RcptStatus::Delivered;
        m.recipients[2].notified = true;
        assert_eq!(due_of(&m), 0, "done: due for removal");
        // A row's envelope and state back into the message; damage is an error, not a guess.
        let (envelope, _) = encode_header(&m, 4);
        let back = decode_row(&envelope, Some(&encode_state(&m))).unwrap();
        assert_eq!(back.recipients, m.recipients);
        assert!(decode_row(&envelope, None).unwrap().recipients.iter().all(|r| r.status == RcptStatus::Pending));
        assert!(decode_row(b"garbage", None).is_err());
        assert!(decode_row(&envelope, Some(b"garbage")).is_err());
    }

    #[test]
    fn database_errors_keep_their_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = db_err(Outer(std::io::Error::other("connection refused")));
        assert_eq!(e.to_string(), "queue database: outer: connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("outer: connection refused")]
        struct Said(#[source] std::io::Error);
        let e = db_err(Said(std::io::Error::other("connection refused")));
        assert_eq!(e.to_string(), "queue database: outer: connection refused", "not repeated");
        assert_eq!(big(u64::MAX), i64::MAX);
        assert_eq!(big(5), 5);
    }

    #[test]
    fn every_schema_version_has_its_migration() {
        assert_eq!(MIGRATIONS.len(), SCHEMA_VERSION as usize);
    }
}
