//! The filesystem spool with group commit.
//!
//! Layout under `DIR/queue/`: `tmp/` (files being written), `msg/ID` (envelope and body),
//! `msg/ID.st` (delivery state), `corrupt/` (damaged records set aside).
//!
//! Durability: a committer thread takes every write waiting at that moment as one batch, writes
//! each to `tmp/`, makes all of them durable with a single `syncfs`, renames them into `msg/`,
//! and makes the renames durable with a single fsync of `msg/`. Only then are the callers told,
//! so a `250` is sent only for mail that survives a crash, and twenty concurrent transactions
//! cost two disk flushes, not twenty (group commit). A process killed before the rename leaves
//! only a file in `tmp/`, which recovery sets aside: never half a message in `msg/`.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::record::{apply_state, decode, encode, encode_state};
use super::{Queue, QueueError, QueueId, QueuedMessage};

/// Most writes committed in one batch.
const MAX_BATCH: usize = 256;

enum Job {
    Write { name: String, data: Vec<u8>, done: oneshot::Sender<io::Result<()>> },
    Remove { names: Vec<String>, done: oneshot::Sender<io::Result<()>> },
}

/// The default [`Queue`]: a directory of files, fsync'd with group commit.
pub struct FsQueue {
    dir: PathBuf,
    /// `None` for a read-only view.
    jobs: Option<Mutex<mpsc::Sender<Job>>>,
    counter: AtomicU64,
}

impl std::fmt::Debug for FsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsQueue").field("dir", &self.dir).finish()
    }
}

impl FsQueue {
    /// Opens (creating if needed) the spool in `dir` and starts its committer thread. Leftovers
    /// of an interrupted write are set aside in `corrupt/`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsQueue> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["tmp", "msg", "corrupt"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for entry in fs::read_dir(dir.join("tmp"))? {
            let entry = entry?;
            let to = dir.join("corrupt").join(format!("tmp-{}", entry.file_name().to_string_lossy()));
            tracing::warn!(file = %entry.path().display(), "interrupted spool write set aside");
            fs::rename(entry.path(), to)?;
        }
        let (tx, rx) = mpsc::channel();
        let committer_dir = dir.clone();
        std::thread::Builder::new().name("tern-spool-commit".into()).spawn(move || committer(committer_dir, rx))?;
        Ok(FsQueue { dir, jobs: Some(Mutex::new(tx)), counter: AtomicU64::new(0) })
    }

    /// A read-only view of a spool that a running server may be writing (for `tern queue`):
    /// it never moves, removes or writes anything.
    pub fn read_only(dir: impl AsRef<Path>) -> io::Result<FsQueue> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join("msg").is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no spool in {}", dir.display())));
        }
        Ok(FsQueue { dir, jobs: None, counter: AtomicU64::new(0) })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn new_id(&self) -> QueueId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{micros:013X}{:02X}{:04X}", std::process::id() & 0xff, n & 0xffff)
    }

    async fn submit(&self, make: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Job) -> Result<(), QueueError> {
        let (done, wait) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(QueueError::Closed)?;
        jobs.lock().unwrap_or_else(|e| e.into_inner()).send(make(done)).map_err(|_| QueueError::Closed)?;
        wait.await.map_err(|_| QueueError::Closed)?.map_err(QueueError::Io)
    }

    fn read(&self, id: &str) -> Result<Vec<u8>, QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        fs::read(self.dir.join("msg").join(id)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QueueError::NotFound(id.to_string()),
            _ => QueueError::Io(e),
        })
    }

    fn set_aside(&self, id: &str, why: &dyn std::fmt::Display) {
        if self.jobs.is_none() {
            tracing::warn!(%id, reason = %why, "corrupt spool record");
            return;
        }
        tracing::error!(%id, reason = %why, "corrupt spool record set aside");
        for name in [id.to_string(), format!("{id}.st")] {
            let from = self.dir.join("msg").join(&name);
            if from.exists() {
                let _ = fs::rename(&from, self.dir.join("corrupt").join(&name));
            }
        }
    }

    fn decode_full(&self, id: &str, data: &[u8]) -> Result<(QueuedMessage, usize), QueueError> {
        let corrupt = |reason| QueueError::Corrupt { id: id.to_string(), reason };
        let (mut msg, off) = decode(data).map_err(corrupt)?;
        match fs::read(self.dir.join("msg").join(format!("{id}.st"))) {
            Ok(st) => apply_state(&mut msg, &st).map_err(corrupt)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(QueueError::Io(e)),
        }
        Ok((msg, off))
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[async_trait::async_trait]
impl Queue for FsQueue {
    async fn enqueue(&self, mut msg: QueuedMessage, body: Bytes) -> Result<QueueId, QueueError> {
        msg.id = self.new_id();
        let data = encode(&msg, &body);
        let name = msg.id.clone();
        self.submit(|done| Job::Write { name, data, done }).await?;
        Ok(msg.id)
    }

    async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError> {
        let data = self.read(id)?;
        match self.decode_full(id, &data) {
            Ok((m, _)) => Ok(m),
            Err(e @ QueueError::Corrupt { .. }) => {
                self.set_aside(id, &e);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn body(&self, id: &str) -> Result<Bytes, QueueError> {
        let data = self.read(id)?;
        let (_, off) = self.decode_full(id, &data)?;
        Ok(Bytes::from(data).slice(off..))
    }

    async fn load_with_body(&self, id: &str) -> Result<(QueuedMessage, Bytes), QueueError> {
        let data = self.read(id)?;
        match self.decode_full(id, &data) {
            Ok((m, off)) => Ok((m, Bytes::from(data).slice(off..))),
            Err(e @ QueueError::Corrupt { .. }) => {
                self.set_aside(id, &e);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError> {
        let data = encode_state(msg);
        let name = format!("{}.st", msg.id);
        self.submit(|done| Job::Write { name, data, done }).await
    }

    async fn remove(&self, id: &str) -> Result<(), QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let names = vec![id.to_string(), format!("{id}.st")];
        self.submit(|done| Job::Remove { names, done }).await
    }

    async fn list(&self) -> Result<Vec<QueueId>, QueueError> {
        let mut ids = Vec::new();
        let mut states = HashSet::new();
        for entry in fs::read_dir(self.dir.join("msg"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".st") {
                Some(id) => {
                    states.insert(id.to_string());
                }
                None if valid_id(&name) => ids.push(name),
                None => tracing::warn!(file = %name, "unexpected file in spool"),
            }
        }
        let mut good = Vec::with_capacity(ids.len());
        for id in ids {
            let data = match fs::read(self.dir.join("msg").join(&id)) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match self.decode_full(&id, &data) {
                Ok(_) => good.push(id),
                Err(e @ QueueError::Corrupt { .. }) => self.set_aside(&id, &e),
                Err(e) => return Err(e),
            }
        }
        for orphan in states.iter().filter(|s| self.jobs.is_some() && !good.contains(s)) {
            let _ = fs::remove_file(self.dir.join("msg").join(format!("{orphan}.st")));
        }
        good.sort();
        Ok(good)
    }
}

fn committer(dir: PathBuf, rx: mpsc::Receiver<Job>) {
    let tmp = dir.join("tmp");
    let msg = dir.join("msg");
    let mut seq: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        // 1. Write every file of the batch to tmp/.
        let mut written: Vec<(PathBuf, PathBuf, oneshot::Sender<io::Result<()>>)> = Vec::new();
        let mut removes = Vec::new();
        for job in batch {
            match job {
                Job::Write { name, data, done } => {
                    seq += 1;
                    let t = tmp.join(format!("{name}.{seq}"));
                    match write_file(&t, &data) {
                        Ok(()) => written.push((t, msg.join(&name), done)),
                        Err(e) => {
                            let _ = fs::remove_file(&t);
                            let _ = done.send(Err(e));
                        }
                    }
                }
                Job::Remove { names, done } => removes.push((names, done)),
            }
        }
        // 2. One flush makes all of their data durable.
        let synced = if written.is_empty() { Ok(()) } else { sync_fs(&tmp) };
        if let Err(e) = synced {
            for (t, _, done) in written.drain(..) {
                let _ = fs::remove_file(&t);
                let _ = done.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
        }
        // 3. Rename into place, apply removals, one fsync of msg/ for all the names.
        let mut results = Vec::new();
        for (t, to, done) in written {
            results.push((fs::rename(&t, &to), done));
        }
        for (names, done) in removes {
            let mut r = Ok(());
            for n in names {
                if let Err(e) = fs::remove_file(msg.join(&n)) {
                    if e.kind() != io::ErrorKind::NotFound {
                        r = Err(e);
                    }
                }
            }
            results.push((r, done));
        }
        let dir_sync = File::open(&msg).and_then(|d| d.sync_all());
        for (r, done) in results {
            let r = match (&r, &dir_sync) {
                (Ok(()), Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                _ => r,
            };
            let _ = done.send(r);
        }
    }
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(data)
}

/// Flushes the whole filesystem holding `dir` (one flush for a batch of files).
fn sync_fs(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{RcptRecord, RcptStatus};
    use smtp_proto::{ForwardPath, Path as SPath, ReversePath};

    fn msg() -> QueuedMessage {
        QueuedMessage {
            id: String::new(),
            verb: Default::default(),
            from: ReversePath::Null,
            params: Default::default(),
            arrival: 1,
            client: None,
            helo: None,
            recipients: vec![RcptRecord::new(ForwardPath::Path(SPath::parse("<a@b>").unwrap()), Default::default())],
            delay_warned: false,
        }
    }

    #[tokio::test]
    async fn enqueue_update_remove_and_concurrent_batches() {
        let dir = tempfile::tempdir().unwrap();
        let q = std::sync::Arc::new(FsQueue::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move { q.enqueue(msg(), format!("body {i}").into()).await.unwrap() }));
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
        m.recipients[0].status = RcptStatus::Failed("550 no".into());
        q.update(&m).await.unwrap();
        assert_eq!(q.load(&ids[0]).await.unwrap(), m);
        assert!(q.body(&ids[0]).await.unwrap().starts_with(b"body "));
        q.remove(&ids[0]).await.unwrap();
        assert!(matches!(q.load(&ids[0]).await, Err(QueueError::NotFound(_))));
        assert_eq!(q.list().await.unwrap().len(), 49);
        assert!(matches!(q.load("../etc").await, Err(QueueError::NotFound(_))));
    }

    #[tokio::test]
    async fn crash_leftovers_and_corruption_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let q = FsQueue::open(dir.path()).unwrap();
            q.enqueue(msg(), "whole".into()).await.unwrap()
        };
        // A process killed between write and rename leaves a file in tmp/ only.
        let half = encode(&msg(), b"half a mess");
        fs::write(dir.path().join("tmp").join("X.1"), &half[..half.len() - 4]).unwrap();
        // A damaged record in msg/.
        fs::write(dir.path().join("msg").join("BROKEN1"), b"TERN-SPOOL 1\nid BROKEN1\nbody 99\nxx").unwrap();
        let q = FsQueue::open(dir.path()).unwrap();
        assert_eq!(q.list().await.unwrap(), vec![id.clone()]);
        assert_eq!(&q.body(&id).await.unwrap()[..], b"whole");
        let aside: Vec<String> = fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert!(aside.contains(&"tmp-X.1".to_string()) && aside.contains(&"BROKEN1".to_string()), "{aside:?}");
    }
}
