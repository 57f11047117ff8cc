//! The filesystem spool with group commit.
//!
//! Layout under `DIR/queue/`: `tmp/` (files being written), `msg/ID` (envelope, then body),
//! `msg/ID.st` (delivery state, once there is any), `corrupt/` (damaged records set aside),
//! `free/` (files of delivered messages, kept for reuse).
//!
//! Creating and deleting a file per message was the largest cost of the accept path (ext4's
//! inode allocator, most of the server's CPU time under load): a finished message's file is
//! renamed into `free/` instead of unlinked, and the next message is written over it in place
//! and renamed into `msg/`. A file is reused only after its rename into `free/` is durable, so
//! it can never be a queued message and a new one at once; what a crash leaves in `free/` is
//! never read.
//!
//! A message is streamed into `tmp/ID`: the envelope first, then the data in blocks of
//! [`WRITE_BLOCK`] written from a blocking thread, then the body length filled in. Small
//! messages never touch the disk before the commit: their one buffer is written by the
//! committer. Durability goes through [`GroupCommit`]: the files of every commit waiting at a
//! moment are flushed together (concurrent `fdatasync`), renamed into `msg/`, and the renames
//! made durable with one fsync of `msg/`. Only then are the callers told, so a `250` is sent
//! only for mail that survives a crash. A process killed before the rename leaves only a file in
//! `tmp/`, which the next start sets aside: never half a message in `msg/`. Every error path
//! removes its temporary file.
//!
//! Reading the queue never reads bodies: an envelope is read from the head of its file, and the
//! file's size tells whether the body is whole.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::record::{apply_state, decode_header, encode_header, encode_state, length_digits, RecordError};
use super::{MessageWriter, Queue, QueueError, QueueId, QueuedMessage, ScanEntry, Stored, StoredBody};
use crate::commit::{append_blocking, create_dir_durable, GroupCommit, Op};

/// Data buffered per message before it is written out: the memory one incoming message holds.
pub const WRITE_BLOCK: usize = 128 * 1024;
/// Envelope bytes read per attempt when scanning (most envelopes are far smaller).
const HEAD_READ: usize = 4096;
/// An envelope larger than this is damaged.
const MAX_HEADER: usize = 4 * 1024 * 1024;
/// Threads reading records during a scan.
const SCAN_THREADS: usize = 8;
/// Files kept in `free/` for reuse; more are removed.
const MAX_FREE: usize = 1024;

/// The default [`Queue`]: a directory of files, fsync'd with group commit.
#[derive(Clone)]
pub struct FsQueue {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// `None` for a read-only view.
    commit: Option<GroupCommit>,
    counter: AtomicU64,
    /// Names in `msg/` already logged as unusable (logged once, not per scan).
    logged: Mutex<HashSet<String>>,
    /// Files in `free/` ready to be written over.
    free: Mutex<Vec<PathBuf>>,
    /// Messages known to have a state file (the others need no unlink when they go).
    stated: Mutex<HashSet<QueueId>>,
    /// This process's id, part of every queue id.
    pid: u32,
}

impl std::fmt::Debug for FsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsQueue").field("dir", &self.inner.dir).finish()
    }
}

impl FsQueue {
    /// Opens (creating if needed, durably) the spool in `dir` and starts its committer thread.
    /// Leftovers of an interrupted write are set aside in `corrupt/`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsQueue> {
        Self::open_with(dir, GroupCommit::start("tern-spool-commit")?)
    }

    /// [`FsQueue::open`] with a given committer (tests record its steps).
    pub(crate) fn open_with(dir: impl AsRef<Path>, commit: GroupCommit) -> io::Result<FsQueue> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["tmp", "msg", "corrupt", "free"] {
            create_dir_durable(&dir.join(sub))?;
        }
        let mut free = Vec::new();
        for entry in fs::read_dir(dir.join("free"))? {
            let path = entry?.path();
            if free.len() < MAX_FREE && path.is_file() {
                free.push(path);
            } else {
                let _ = fs::remove_file(path);
            }
        }
        for entry in fs::read_dir(dir.join("tmp"))? {
            let entry = entry?;
            let to = dir.join("corrupt").join(format!("tmp-{}", entry.file_name().to_string_lossy()));
            tracing::warn!(file = %entry.path().display(), "interrupted spool write set aside");
            fs::rename(entry.path(), to)?;
        }
        let q = FsQueue::with(dir, Some(commit));
        *q.inner.free.lock().unwrap_or_else(|e| e.into_inner()) = free;
        Ok(q)
    }

    /// A read-only view of a spool that a running server may be writing (for `tern queue`):
    /// it never moves, removes or writes anything.
    pub fn read_only(dir: impl AsRef<Path>) -> io::Result<FsQueue> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join("msg").is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no spool in {}", dir.display())));
        }
        Ok(FsQueue::with(dir, None))
    }

    fn with(dir: PathBuf, commit: Option<GroupCommit>) -> FsQueue {
        FsQueue {
            inner: Arc::new(Inner {
                dir,
                commit,
                counter: AtomicU64::new(0),
                logged: Mutex::default(),
                free: Mutex::default(),
                stated: Mutex::default(),
                pid: std::process::id(),
            }),
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reads a record that was set aside in `corrupt/`: its envelope where readable, and why it
    /// is damaged (for `tern queue show`).
    pub fn inspect_corrupt(&self, id: &str) -> Result<(Option<QueuedMessage>, String), QueueError> {
        if !valid_name(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let path = self.inner.dir.join("corrupt").join(id);
        if !path.is_file() {
            return Err(QueueError::NotFound(id.to_string()));
        }
        Ok(match self.inner.read_record(&path, id) {
            Ok(_) => (None, "set aside; the record reads back whole now".into()),
            Err(e) => {
                let env = envelope_of(&e);
                (env, e.to_string())
            }
        })
    }

    fn commit(&self) -> Result<&GroupCommit, QueueError> {
        self.inner.commit.as_ref().ok_or(QueueError::Closed)
    }

    fn new_id(&self) -> QueueId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("{micros:013X}{:02X}{:04X}", self.inner.pid & 0xff, n & 0xffff)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| QueueError::Io(io::Error::other(e)))?
    }
}

fn envelope_of(e: &QueueError) -> Option<QueuedMessage> {
    match e {
        QueueError::Corrupt { envelope, .. } => envelope.as_deref().cloned(),
        _ => None,
    }
}

/// A record read back: envelope and state, the body's offset and length.
type Record = (QueuedMessage, u64, u64);

/// Reads until `buf` is full or the file ends; the octets read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a small file (a state file) with as few calls as its size allows.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1024];
    let mut n = read_full(&mut f, &mut buf)?;
    while n == buf.len() {
        buf.resize(buf.len() * 2, 0);
        n += read_full(&mut f, &mut buf[n..])?;
    }
    buf.truncate(n);
    Ok(buf)
}

/// Queue ids: letters and digits.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Names in `corrupt/` (ids, `tmp-` leftovers, `.st` files).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 80 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
}

impl Inner {
    fn msg_path(&self, id: &str) -> PathBuf {
        self.dir.join("msg").join(id)
    }

    /// Logs a problem with a queue entry once per process.
    fn log_once(&self, name: &str, what: &dyn std::fmt::Display) {
        if self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string()) {
            tracing::error!(entry = %name, problem = %what, "queue entry skipped");
        }
    }

    /// Reads an envelope and state (not the body) from `path`; returns the message, the body's
    /// offset and length.
    fn read_record(&self, path: &Path, id: &str) -> Result<Record, QueueError> {
        self.read_record_with(path, id, None)
    }

    /// [`Inner::read_record`]; `has_state` says whether a state file exists, when the caller
    /// knows (a scan does, from the directory listing: no open is tried in vain). A small file
    /// is read with one `read`, its size known from it.
    fn read_record_with(&self, path: &Path, id: &str, has_state: Option<bool>) -> Result<Record, QueueError> {
        let corrupt = |reason, envelope: Option<&QueuedMessage>| QueueError::Corrupt {
            id: id.to_string(),
            reason,
            envelope: envelope.map(|m| Box::new(m.clone())),
        };
        let mut f = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QueueError::NotFound(id.to_string()),
            _ => QueueError::Io(e),
        })?;
        let mut head = vec![0u8; HEAD_READ];
        let mut filled = read_full(&mut f, &mut head)?;
        let mut size = (filled < head.len()).then_some(filled as u64);
        let (mut msg, off, len) = loop {
            match decode_header(&head[..filled]) {
                Ok(x) => break x,
                Err(e) if e.message == "truncated header" && size.is_none() && head.len() < MAX_HEADER => {
                    let more = head.len().min(MAX_HEADER - head.len());
                    head.resize(head.len() + more, 0);
                    filled += read_full(&mut f, &mut head[filled..])?;
                    if filled < head.len() {
                        size = Some(filled as u64);
                    }
                }
                Err(e) => return Err(corrupt(e, None)),
            }
        };
        if msg.id != id {
            return Err(corrupt(RecordError { line: 2, message: format!("id {} in a file named {id}", msg.id) }, None));
        }
        let size = match size {
            Some(s) => s,
            None => f.metadata()?.len(),
        };
        if size != off as u64 + len {
            let e = RecordError {
                line: 0,
                message: format!("body is {} octets, header says {len}", size.saturating_sub(off as u64)),
            };
            return Err(corrupt(e, Some(&msg)));
        }
        if has_state != Some(false) {
            let st = path.with_file_name(format!("{id}.st"));
            match read_small(&st) {
                Ok(data) => {
                    apply_state(&mut msg, &data).map_err(|e| corrupt(e, Some(&msg)))?;
                    self.stated.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(QueueError::Io(e)),
            }
        }
        Ok((msg, off as u64, len))
    }

    /// Moves a damaged record to `corrupt/`; `true` when this call moved it.
    fn set_aside(&self, id: &str, why: &dyn std::fmt::Display) -> bool {
        if self.commit.is_none() {
            self.log_once(id, why);
            return false;
        }
        let mut moved = false;
        for name in [id.to_string(), format!("{id}.st")] {
            let from = self.dir.join("msg").join(&name);
            if from.exists() && fs::rename(&from, self.dir.join("corrupt").join(&name)).is_ok() {
                moved = true;
            }
        }
        if moved {
            tracing::error!(%id, reason = %why, "corrupt spool record set aside");
            let _ = File::open(self.dir.join("msg")).and_then(|d| d.sync_all());
        } else {
            self.log_once(id, why);
        }
        moved
    }

    /// Loads a record, setting it aside when damaged.
    fn load(&self, id: &str) -> Result<Record, QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        match self.read_record(&self.msg_path(id), id) {
            Err(e @ QueueError::Corrupt { .. }) => {
                self.set_aside(id, &e);
                Err(e)
            }
            Err(QueueError::Io(e)) => {
                // Unreadable (a directory, no permission): skipped and logged once; the rest of
                // the queue keeps flowing.
                self.log_once(id, &e);
                Err(QueueError::Io(e))
            }
            other => other,
        }
    }

    /// Scans the spool, handing each entry to `found` as it is read (8 threads read records;
    /// nothing is gathered, so memory stays flat for any queue size). Stops early when `cancel`
    /// is cancelled or `found` says to (its receiver went away).
    fn scan(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
        found: &(dyn Fn(ScanEntry) -> bool + Sync),
    ) -> Result<(), QueueError> {
        let mut ids = Vec::new();
        let mut states = HashSet::new();
        for entry in fs::read_dir(self.dir.join("msg"))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".st") {
                Some(id) => {
                    states.insert(id.to_string());
                }
                None if valid_id(&name) => ids.push(name),
                None => self.log_once(&name, &"not a queue file"),
            }
        }
        ids.sort();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let reported: Mutex<HashSet<String>> = Mutex::default();
        // The reads are syscall-bound when cached and latency-bound when not: in parallel.
        let per = ids.len().div_ceil(SCAN_THREADS).max(1);
        std::thread::scope(|s| {
            for chunk in ids.chunks(per) {
                let (states, stop, reported) = (&states, &stop, &reported);
                s.spawn(move || {
                    for id in chunk {
                        if cancel.is_cancelled() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let has_state = Some(states.contains(id));
                        let entry = match self.read_record_with(&self.msg_path(id), id, has_state) {
                            Ok((m, _, len)) => ScanEntry::Queued(Box::new(m), len),
                            Err(QueueError::NotFound(_)) => continue,
                            Err(e @ QueueError::Corrupt { .. }) => {
                                let new = self.set_aside(id, &e);
                                reported.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
                                let envelope = envelope_of(&e).map(Box::new);
                                ScanEntry::Corrupt { id: id.clone(), reason: e.to_string(), envelope, new }
                            }
                            Err(e) => {
                                self.log_once(id, &e);
                                continue;
                            }
                        };
                        if !found(entry) {
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                });
            }
        });
        if cancel.is_cancelled() || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.commit.is_some() {
            let listed: HashSet<&String> = ids.iter().collect();
            for orphan in states.iter().filter(|s| !listed.contains(s) && valid_id(s)) {
                let _ = fs::remove_file(self.dir.join("msg").join(format!("{orphan}.st")));
            }
        }
        if let Ok(rd) = fs::read_dir(self.dir.join("corrupt")) {
            let reported = reported.into_inner().unwrap_or_else(|e| e.into_inner());
            let mut seen: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".st") && !reported.contains(n))
                .collect();
            seen.sort();
            for id in seen {
                if !found(ScanEntry::Corrupt { id, reason: "set aside earlier".into(), envelope: None, new: false }) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// A message being streamed into `tmp/`.
struct FsWriter {
    queue: FsQueue,
    id: QueueId,
    tmp: PathBuf,
    /// The envelope; its length digits are filled in at commit.
    header: Vec<u8>,
    len_at: usize,
    buf: BytesMut,
    /// The file, once a block has been written out.
    file: Option<File>,
    body_len: u64,
    done: bool,
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.done {
            // Aborted (client went away, data refused, an error): nothing stays in tmp/.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl FsWriter {
    /// Writes the buffer out (and the envelope, the first time) from a blocking thread.
    async fn spill(&mut self) -> Result<(), QueueError> {
        let data = self.buf.split().freeze();
        let file = self.file.take();
        let mut parts = Vec::with_capacity(2);
        if file.is_none() {
            parts.push(bytes::Bytes::from(self.header.clone()));
        }
        parts.push(data);
        self.file = Some(append_blocking(file, &self.tmp, parts).await?);
        Ok(())
    }
}

#[async_trait::async_trait]
impl MessageWriter for FsWriter {
    fn id(&self) -> &str {
        &self.id
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), QueueError> {
        self.buf.extend_from_slice(data);
        self.body_len += data.len() as u64;
        if self.buf.len() >= WRITE_BLOCK {
            self.spill().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Stored, QueueError> {
        let commit = self.queue.commit()?.clone();
        let dest = self.queue.inner.msg_path(&self.id);
        let digits = length_digits(self.body_len);
        let off = self.header.len() as u64;
        let body = match self.file.take() {
            None => {
                // Small (never spilled: at most WRITE_BLOCK): one buffer, written by the
                // committer, and kept in memory for the first delivery (no re-read).
                let at = self.len_at;
                self.header[at..at + digits.len()].copy_from_slice(digits.as_bytes());
                let mut data = std::mem::take(&mut self.header);
                data.extend_from_slice(&self.buf);
                let whole = Bytes::from(data);
                let op = Op::Write { tmp: self.tmp.clone(), dest: dest.clone(), data: whole.clone(), reuse: true };
                commit.run(op).await?;
                StoredBody::Memory(whole.slice(off as usize..))
            }
            Some(file) => {
                let rest = self.buf.split().freeze();
                let at = self.len_at as u64;
                let file = tokio::task::spawn_blocking(move || -> io::Result<File> {
                    let mut f = file;
                    f.write_all(&rest)?;
                    f.write_all_at(digits.as_bytes(), at)?;
                    Ok(f)
                })
                .await
                .map_err(|e| QueueError::Io(io::Error::other(e)))??;
                commit.run(Op::Sync { file, tmp: self.tmp.clone(), dest: dest.clone() }).await?;
                StoredBody::File { path: dest, offset: off, len: self.body_len }
            }
        };
        self.done = true;
        Ok(Stored { id: self.id.clone(), body })
    }
}

#[async_trait::async_trait]
impl Queue for FsQueue {
    async fn create(&self, mut msg: QueuedMessage) -> Result<Box<dyn MessageWriter>, QueueError> {
        self.commit()?;
        msg.id = self.new_id();
        let (header, len_at) = encode_header(&msg, 0);
        // A header the reader would stop at is refused here: never a 250 for a record that
        // cannot be read back.
        if header.len() > MAX_HEADER - 64 {
            return Err(QueueError::EnvelopeTooLarge { size: header.len(), limit: MAX_HEADER - 64 });
        }
        let recycled = self.inner.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let tmp = recycled.unwrap_or_else(|| self.inner.dir.join("tmp").join(&msg.id));
        Ok(Box::new(FsWriter {
            queue: self.clone(),
            id: msg.id,
            tmp,
            header,
            len_at,
            buf: BytesMut::new(),
            file: None,
            body_len: 0,
            done: false,
        }))
    }

    async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError> {
        let id = id.to_string();
        self.blocking(move |q| q.load(&id).map(|(m, ..)| m)).await
    }

    async fn body(&self, id: &str) -> Result<StoredBody, QueueError> {
        let id = id.to_string();
        self.blocking(move |q| {
            let (_, offset, len) = q.load(&id)?;
            Ok(StoredBody::File { path: q.msg_path(&id), offset, len })
        })
        .await
    }

    async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError> {
        let commit = self.commit()?;
        let name = format!("{}.st", msg.id);
        let seq = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.dir.join("tmp").join(format!("{name}.{seq}"));
        let op = Op::Write {
            tmp,
            dest: self.inner.dir.join("msg").join(name),
            data: encode_state(msg).into(),
            reuse: false,
        };
        commit.run(op).await.map_err(QueueError::Io)?;
        self.inner.stated.lock().unwrap_or_else(|e| e.into_inner()).insert(msg.id.clone());
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let commit = self.commit()?;
        let stated = self.inner.stated.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let state: Vec<PathBuf> =
            stated.then(|| self.inner.dir.join("msg").join(format!("{id}.st"))).into_iter().collect();
        let keep = self.inner.free.lock().unwrap_or_else(|e| e.into_inner()).len() < MAX_FREE;
        if !keep {
            if !self.inner.msg_path(id).exists() {
                return Err(QueueError::NotFound(id.to_string()));
            }
            let paths = [vec![self.inner.msg_path(id)], state].concat();
            return commit.run(Op::Remove { paths }).await.map_err(QueueError::Io);
        }
        let to = self.inner.dir.join("free").join(id);
        let op = Op::Recycle { from: self.inner.msg_path(id), to: to.clone(), remove: state };
        commit.run(op).await.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QueueError::NotFound(id.to_string()),
            _ => QueueError::Io(e),
        })?;
        if to.is_file() {
            self.inner.free.lock().unwrap_or_else(|e| e.into_inner()).push(to);
        }
        Ok(())
    }

    async fn scan(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
        found: tokio::sync::mpsc::Sender<ScanEntry>,
    ) -> Result<(), QueueError> {
        let cancel = cancel.clone();
        self.blocking(move |q| q.scan(&cancel, &|e| found.blocking_send(e).is_ok())).await
    }

    async fn scan_all(&self) -> Result<Vec<ScanEntry>, QueueError> {
        // Gathered straight from the reading threads, without a channel between.
        self.blocking(|q| {
            let all = Mutex::new(Vec::new());
            q.scan(&tokio_util::sync::CancellationToken::new(), &|e| {
                all.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                true
            })?;
            let mut all = all.into_inner().unwrap_or_else(|e| e.into_inner());
            all.sort_unstable_by(|a, b| a.id().cmp(b.id()));
            Ok(all)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{RcptRecord, RcptStatus};
    use smtp_proto::{ForwardPath, Path as SPath, ReversePath};
    use tokio::io::AsyncReadExt;

    fn msg() -> QueuedMessage {
        QueuedMessage {
            id: String::new(),
            verb: Default::default(),
            from: ReversePath::Path(SPath::parse("<s@here.test>").unwrap()),
            params: Default::default(),
            arrival: 1,
            client: None,
            helo: None,
            recipients: vec![RcptRecord::new(ForwardPath::Path(SPath::parse("<a@b>").unwrap()), Default::default())],
            delay_warned: false,
            trusted: false,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    }

    /// Every entry of the streamed [`Queue::scan`] (FsQueue's `scan_all` reads another way),
    /// with the scan cancelled before it starts when `cancelled`.
    async fn streamed_scan(q: &FsQueue, cancelled: bool) -> Vec<ScanEntry> {
        let cancel = tokio_util::sync::CancellationToken::new();
        if cancelled {
            cancel.cancel();
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let gather = async {
            let mut v = Vec::new();
            while let Some(e) = rx.recv().await {
                v.push(e);
            }
            v
        };
        let (r, found) = tokio::join!(q.scan(&cancel, tx), gather);
        r.unwrap();
        found
    }

    async fn read(b: &StoredBody) -> Vec<u8> {
        let mut out = Vec::new();
        b.reader().await.unwrap().read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn enqueue_update_remove_and_concurrent_batches() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move { q.enqueue(msg(), format!("body {i}").into()).await.unwrap().id }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let mut listed = q.list().await.unwrap();
        listed.sort();
        ids.sort();
        assert_eq!(listed, ids);
        let mut m = q.load(&ids[0]).await.unwrap();
        m.recipients[0].status = RcptStatus::Failed(smtp_proto::codes::no_such_user());
        q.update(&m).await.unwrap();
        assert_eq!(q.load(&ids[0]).await.unwrap(), m);
        assert!(read(&q.body(&ids[0]).await.unwrap()).await.starts_with(b"body "));
        q.remove(&ids[0]).await.unwrap();
        assert!(matches!(q.load(&ids[0]).await, Err(QueueError::NotFound(_))));
        assert!(matches!(q.remove(&ids[0]).await, Err(QueueError::NotFound(_))), "removing twice");
        assert_eq!(q.list().await.unwrap().len(), 49);
        assert!(matches!(q.load("../etc").await, Err(QueueError::NotFound(_))));
        assert!(names(&dir.path().join("tmp")).is_empty());
    }

    /// Durability order: write, fdatasync, rename, directory fsync, and only then the caller is
    /// told (SIGKILL cannot see a missing flush: the page cache survives it).
    #[tokio::test]
    async fn a_message_is_flushed_renamed_and_its_directory_flushed_before_commit_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, steps) = GroupCommit::recording("test-spool").unwrap();
        let q = FsQueue::open_with(dir.path(), commit).unwrap();
        let small = q.enqueue(msg(), "small".into()).await.unwrap();
        crate::commit::assert_durable_order(&steps, &dir.path().join("msg").join(&small.id));
        let mut w = q.create(msg()).await.unwrap();
        w.write(&vec![b'x'; 3 * WRITE_BLOCK]).await.unwrap();
        let large = w.commit().await.unwrap();
        crate::commit::assert_durable_order(&steps, &dir.path().join("msg").join(&large.id));
        // Reused files and state files take the same path.
        q.remove(&small.id).await.unwrap();
        let reused = q.enqueue(msg(), "again".into()).await.unwrap();
        crate::commit::assert_durable_order(&steps, &dir.path().join("msg").join(&reused.id));
        let m = q.load(&reused.id).await.unwrap();
        q.update(&m).await.unwrap();
        crate::commit::assert_durable_order(&steps, &dir.path().join("msg").join(format!("{}.st", reused.id)));
    }

    #[tokio::test]
    async fn streamed_large_message_reads_back_and_files_are_reused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let block: Vec<u8> = (0..=255u8).cycle().take(50_000).collect();
        let mut w = q.create(msg()).await.unwrap();
        for _ in 0..10 {
            w.write(&block).await.unwrap();
        }
        let stored = w.commit().await.unwrap();
        assert!(matches!(stored.body, StoredBody::File { len: 500_000, .. }), "{:?}", stored.body);
        assert_eq!(read(&stored.body).await, block.repeat(10));
        assert_eq!(read(&q.body(&stored.id).await.unwrap()).await, block.repeat(10));
        // Small messages stay in hand.
        let small = q.enqueue(msg(), "tiny".into()).await.unwrap();
        assert!(matches!(&small.body, StoredBody::Memory(b) if &b[..] == b"tiny"));
        // A finished message's file is kept and written over by the next one.
        let inode = fs::metadata(dir.path().join("msg").join(&small.id)).unwrap().ino();
        q.remove(&small.id).await.unwrap();
        assert_eq!(names(&dir.path().join("free")), vec![small.id.clone()]);
        let next = q.enqueue(msg(), "second".into()).await.unwrap();
        let path = dir.path().join("msg").join(&next.id);
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "the free file was reused");
        assert_eq!(read(&q.body(&next.id).await.unwrap()).await, b"second", "no tail of the old content");
        assert!(names(&dir.path().join("free")).is_empty());
    }

    #[tokio::test]
    async fn temporary_files_never_stay_behind() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        // Aborted transfer: the writer is dropped after a block was written out.
        let mut w = q.create(msg()).await.unwrap();
        w.write(&vec![b'x'; WRITE_BLOCK + 1]).await.unwrap();
        assert_eq!(names(&dir.path().join("tmp")).len(), 1);
        drop(w);
        assert!(names(&dir.path().join("tmp")).is_empty());
        // The rename fails (a directory is in the way), small and large.
        for size in [10, WRITE_BLOCK * 2] {
            let mut w = q.create(msg()).await.unwrap();
            let blocker = dir.path().join("msg").join(w.id());
            fs::create_dir(&blocker).unwrap();
            fs::write(blocker.join("x"), b"x").unwrap();
            w.write(&vec![b'y'; size]).await.unwrap();
            assert!(w.commit().await.is_err());
            assert!(names(&dir.path().join("tmp")).is_empty(), "size {size}");
        }
        // A state file that cannot be renamed into place.
        let s = q.enqueue(msg(), "m".into()).await.unwrap();
        let m = q.load(&s.id).await.unwrap();
        let blocker = dir.path().join("msg").join(format!("{}.st", s.id));
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), b"x").unwrap();
        assert!(q.update(&m).await.is_err());
        assert!(names(&dir.path().join("tmp")).is_empty());
    }

    #[tokio::test]
    async fn bad_entries_are_skipped_and_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let good = q.enqueue(msg(), "fine".into()).await.unwrap().id;
        fs::create_dir(dir.path().join("msg").join("0DIRECTORY")).unwrap();
        fs::write(dir.path().join("msg").join("stray.name"), b"?").unwrap();
        for _ in 0..3 {
            assert_eq!(q.list().await.unwrap(), vec![good.clone()]);
        }
        assert!(q.load("0DIRECTORY").await.is_err());
        assert_eq!(q.inner.logged.lock().unwrap().len(), 2, "one log line per bad entry");
    }

    #[tokio::test]
    async fn corrupt_records_are_listed_once_new_and_inspectable() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let q = FsQueue::open(dir.path()).unwrap();
            q.enqueue(msg(), "whole".into()).await.unwrap().id
        };
        // A process killed between write and rename leaves a file in tmp/ only.
        let mut m = msg();
        m.id = "HALF1".into();
        let half = super::super::record::encode(&m, b"half a mess");
        fs::write(dir.path().join("tmp").join("X.1"), &half[..half.len() - 4]).unwrap();
        // A damaged record in msg/ whose envelope is readable (the body is short).
        m.id = "BROKEN1".into();
        let rec = super::super::record::encode(&m, b"0123456789");
        fs::write(dir.path().join("msg").join("BROKEN1"), &rec[..rec.len() - 3]).unwrap();
        // One whose envelope is not.
        fs::write(dir.path().join("msg").join("BROKEN2"), b"TERN-SPOOL 1\nid BROKEN2\nmail FOO\n").unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let first = q.scan_all().await.unwrap();
        let corrupt = |entries: &[ScanEntry], want: &str| {
            entries.iter().find_map(|e| match e {
                ScanEntry::Corrupt { id, envelope, new, .. } if id == want => Some((envelope.is_some(), *new)),
                _ => None,
            })
        };
        assert_eq!(corrupt(&first, "BROKEN1"), Some((true, true)));
        assert_eq!(corrupt(&first, "BROKEN2"), Some((false, true)));
        assert_eq!(corrupt(&first, "tmp-X.1"), Some((false, false)));
        assert!(first.iter().any(|e| matches!(e, ScanEntry::Queued(m, 5) if m.id == id)));
        let second = q.scan_all().await.unwrap();
        assert_eq!(corrupt(&second, "BROKEN1"), Some((false, false)), "told once");
        let (env, why) = q.inspect_corrupt("BROKEN1").unwrap();
        assert_eq!(env.unwrap().from.to_string(), "<s@here.test>");
        assert!(why.contains("header says 10"), "{why}");
        assert_eq!(read(&q.body(&id).await.unwrap()).await, b"whole");
        // Only names inside corrupt/ are read: no way out of it to a queued message.
        fs::write(dir.path().join("corrupt").join("x".repeat(81)), b"junk").unwrap();
        for outside in [format!("../msg/{id}"), String::new(), "x".repeat(81)] {
            assert!(matches!(q.inspect_corrupt(&outside), Err(QueueError::NotFound(_))), "{outside:?}");
        }
        fs::write(dir.path().join("corrupt").join("x".repeat(80)), b"junk").unwrap();
        assert!(q.inspect_corrupt(&"x".repeat(80)).is_ok(), "80 characters is a name");
    }

    /// ENOSPC on a real, tiny filesystem (tmpfs; the tests run as root, as CI does).
    #[tokio::test]
    async fn full_disk_is_reported_as_such_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs needs root (CI runs as root)");
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _guard = Unmount(&mnt);
        let q = FsQueue::open(&mnt).unwrap();
        let mut w = q.create(msg()).await.unwrap();
        let mut err = None;
        for _ in 0..8 {
            if let Err(e) = w.write(&vec![b'z'; WRITE_BLOCK]).await {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => w.commit().await.unwrap_err(),
        };
        assert!(err.is_storage_full(), "{err}");
        assert!(names(&mnt.join("tmp")).is_empty());
        // Space is back: the next message goes through.
        let s = q.enqueue(msg(), "small".into()).await.unwrap();
        assert_eq!(q.list().await.unwrap(), vec![s.id]);
    }

    /// An envelope far larger than one read and a state file far larger than its first buffer
    /// are read whole (the reads grow), and a scan finds the message too.
    #[tokio::test]
    async fn large_envelopes_and_states_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let mut m = msg();
        m.recipients = (0..400)
            .map(|i| {
                let p = SPath::parse(&format!("<recipient-number-{i:04}@a-rather-long-domain-name.test>")).unwrap();
                RcptRecord::new(ForwardPath::Path(p), Default::default())
            })
            .collect();
        let id = q.enqueue(m, "body".into()).await.unwrap().id;
        let mut m = q.load(&id).await.unwrap();
        assert_eq!(m.recipients.len(), 400, "an envelope of ~25 KiB, over six reads of {HEAD_READ}");
        for (i, r) in m.recipients.iter_mut().enumerate() {
            r.last_error = Some(smtp_proto::Reply::new(451, None, &format!("try later, recipient {i}")));
            r.attempts = 3;
        }
        q.update(&m).await.unwrap();
        let again = q.load(&id).await.unwrap();
        assert_eq!(again, m, "a state file of ~20 KiB round-trips");
        assert_eq!(read(&q.body(&id).await.unwrap()).await, b"body");
        let found = streamed_scan(&q, false).await;
        assert!(matches!(&found[..], [ScanEntry::Queued(f, _)] if **f == m), "the streamed scan finds it whole");
    }

    /// The free list is bounded: on open, files past `MAX_FREE` (and anything not a file) are
    /// removed; a message removed while the list is full is deleted, not kept for reuse.
    #[tokio::test]
    async fn the_free_list_never_grows_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        drop(FsQueue::open(dir.path()).unwrap());
        let free = dir.path().join("free");
        for i in 0..MAX_FREE + 3 {
            std::fs::write(free.join(format!("F{i}")), b"old").unwrap();
        }
        std::fs::create_dir(free.join("adir")).unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let listed = q.inner.free.lock().unwrap().clone();
        assert_eq!(listed.len(), MAX_FREE);
        assert!(listed.iter().all(|p| p.is_file()), "only files are reused");
        assert_eq!(names(&free).len(), MAX_FREE + 1, "the extra files are removed (a directory stays)");
        assert_eq!(format!("{q:?}"), format!("FsQueue {{ dir: {:?} }}", dir.path()));
        // One file is taken for this message; the list is full again before it goes.
        let id = q.enqueue(msg(), "body".into()).await.unwrap().id;
        assert_eq!(q.inner.free.lock().unwrap().len(), MAX_FREE - 1);
        q.inner.free.lock().unwrap().push(free.join("F0"));
        q.remove(&id).await.unwrap();
        assert!(!free.join(&id).exists() && !dir.path().join("msg").join(&id).exists(), "deleted, not recycled");
        assert_eq!(q.inner.free.lock().unwrap().len(), MAX_FREE);
        assert!(matches!(q.remove(&id).await, Err(QueueError::NotFound(_))), "and gone");
    }

    /// Messages that never spilled (up to `WRITE_BLOCK`) are kept in hand after the commit (no read back for the
    /// first delivery); an envelope over a megabyte (far over one read) reads back.
    #[tokio::test]
    async fn medium_messages_stay_in_memory_and_megabyte_envelopes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let stored = q.enqueue(msg(), vec![b'm'; 100_000].into()).await.unwrap();
        assert!(matches!(&stored.body, StoredBody::Memory(b) if b.len() == 100_000), "{:?}", stored.body);
        let mut m = msg();
        let long = ["l", "m", "n"].map(|c| c.repeat(60)).join(".");
        m.recipients = (0..6000)
            .map(|i| {
                let p = SPath::parse(&format!("<r{i}@{long}.test>")).unwrap();
                RcptRecord::new(ForwardPath::Path(p), Default::default())
            })
            .collect();
        let id = q.enqueue(m, "body".into()).await.unwrap().id;
        assert!(fs::metadata(dir.path().join("msg").join(&id)).unwrap().len() > 1_200_000);
        assert_eq!(q.load(&id).await.unwrap().recipients.len(), 6000);
    }

    /// A state file that exists but cannot be read is an error, never "no state yet": reading
    /// the message without it would deliver again to recipients already done.
    #[tokio::test]
    async fn an_unreadable_state_file_is_an_error_not_a_fresh_message() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let id = q.enqueue(msg(), "body".into()).await.unwrap().id;
        assert!(q.load(&id).await.is_ok(), "no state file: the envelope's state");
        std::fs::create_dir(dir.path().join("msg").join(format!("{id}.st"))).unwrap();
        let e = q.load(&id).await.unwrap_err();
        assert!(matches!(&e, QueueError::Io(io) if io.raw_os_error() == Some(21)), "EISDIR: {e:?}");
    }

    /// An envelope the reader could not read back whole is refused when the message is
    /// created; one just under the limit is stored and read back. (A read stops at
    /// `MAX_HEADER`, never running on past it.)
    #[tokio::test]
    async fn envelopes_over_the_record_limit_are_refused_not_stored_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let long = ["l", "m", "n"].map(|c| c.repeat(60)).join(".");
        let with = |n: usize| {
            let mut m = msg();
            m.recipients = (0..n)
                .map(|i| {
                    let p = SPath::parse(&format!("<r{i:05}@{long}.test>")).unwrap();
                    RcptRecord::new(ForwardPath::Path(p), Default::default())
                })
                .collect();
            m
        };
        let per = encode_header(&with(2), 0).0.len() - encode_header(&with(1), 0).0.len();
        let fits = (MAX_HEADER - 64 - encode_header(&with(0), 0).0.len()) / per;
        let id = q.enqueue(with(fits), "body".into()).await.unwrap().id;
        assert!(fs::metadata(dir.path().join("msg").join(&id)).unwrap().len() > (MAX_HEADER - 4096) as u64);
        assert_eq!(q.load(&id).await.unwrap().recipients.len(), fits, "read back whole, just under the limit");
        let e = q.create(with(fits + 1)).await.err().expect("refused");
        assert!(matches!(e, QueueError::EnvelopeTooLarge { limit, .. } if limit == MAX_HEADER - 64), "{e}");
        assert!(names(&dir.path().join("tmp")).is_empty());
        // A record whose header runs on past the limit is damaged, and says so at once.
        let mut huge = b"TERN-SPOOL 1\nid BIG1\n".to_vec();
        huge.resize(MAX_HEADER + 100_000, b'x');
        fs::write(dir.path().join("msg").join("BIG1"), huge).unwrap();
        let e = q.load("BIG1").await.unwrap_err();
        assert!(matches!(&e, QueueError::Corrupt { .. }), "{e}");
    }

    /// `tern queue` reads a running server's spool through a view that never writes.
    #[tokio::test]
    async fn a_read_only_view_reads_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FsQueue::read_only(dir.path()).is_err(), "no spool there");
        let q = FsQueue::open(dir.path()).unwrap();
        let id = q.enqueue(msg(), "body".into()).await.unwrap().id;
        let view = FsQueue::read_only(dir.path()).unwrap();
        let mut m = view.load(&id).await.unwrap();
        assert_eq!(view.list().await.unwrap(), vec![id.clone()]);
        m.recipients[0].attempts = 1;
        assert!(matches!(view.update(&m).await, Err(QueueError::Closed)));
        assert!(matches!(view.remove(&id).await, Err(QueueError::Closed)));
        assert!(matches!(view.enqueue(msg(), "x".into()).await, Err(QueueError::Closed)));
        assert_eq!(q.load(&id).await.unwrap().recipients[0].attempts, 0, "nothing changed");
    }

    /// What a scan yields and tidies: nothing once cancelled; an orphaned state file is removed
    /// by the writable queue only; a `.st` file in `corrupt/` is never listed as a record.
    #[tokio::test]
    async fn scans_stop_when_cancelled_and_tidy_only_when_writable() {
        let dir = tempfile::tempdir().unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        let id = q.enqueue(msg(), "body".into()).await.unwrap().id;
        let mut m = q.load(&id).await.unwrap();
        m.recipients[0].attempts = 2;
        q.update(&m).await.unwrap();
        for old in ["OLD1", "OLD1.st", "OLD2"] {
            std::fs::write(dir.path().join("corrupt").join(old), b"junk").unwrap();
        }
        let orphan = dir.path().join("msg/ORPHAN1.st");
        std::fs::write(&orphan, b"TERN-STATE 2\n").unwrap();
        let scan = |q: FsQueue, cancelled: bool| async move {
            let mut ids: Vec<String> = streamed_scan(&q, cancelled).await.iter().map(|e| e.id().to_string()).collect();
            ids.sort();
            ids
        };
        assert!(scan(q.clone(), true).await.is_empty(), "a cancelled scan yields nothing");
        assert!(orphan.exists(), "and tidies nothing");
        let view = FsQueue::read_only(dir.path()).unwrap();
        let mut both = vec!["OLD1".to_string(), "OLD2".to_string(), id.clone()];
        both.sort();
        assert_eq!(scan(view, false).await, both);
        assert!(orphan.exists(), "a read-only view removes nothing");
        let q2 = q.clone();
        assert_eq!(scan(q, false).await, both, "each corrupt record once, a .st never");
        assert!(!orphan.exists(), "a state file without its message is removed");
        assert_eq!(q2.load(&id).await.unwrap().recipients[0].attempts, 2, "a message's own state stays");
    }
}
