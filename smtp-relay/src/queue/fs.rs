//! The filesystem spool with group commit.
//!
//! Layout under `DIR/queue/`: `tmp/` (files being written), `msg/ID` (envelope and body),
//! `msg/ID.st` (delivery state), `corrupt/` (damaged records set aside).
//!
//! Durability goes through [`GroupCommit`]: every write waiting at a moment is written to `tmp/`,
//! made durable with one `syncfs`, renamed into `msg/`, and the renames made durable with one
//! fsync of `msg/`. Only then are the callers told, so a `250` is sent only for mail that
//! survives a crash, and twenty concurrent transactions cost two disk flushes, not twenty. A
//! process killed before the rename leaves only a file in `tmp/`, which recovery sets aside:
//! never half a message in `msg/`.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::record::{apply_state, decode, encode, encode_state};
use super::{Queue, QueueError, QueueId, QueuedMessage};
use crate::commit::{GroupCommit, Op};

/// The default [`Queue`]: a directory of files, fsync'd with group commit.
pub struct FsQueue {
    dir: PathBuf,
    /// `None` for a read-only view.
    commit: Option<GroupCommit>,
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
        let commit = GroupCommit::start("tern-spool-commit")?;
        Ok(FsQueue { dir, commit: Some(commit), counter: AtomicU64::new(0) })
    }

    /// A read-only view of a spool that a running server may be writing (for `tern queue`):
    /// it never moves, removes or writes anything.
    pub fn read_only(dir: impl AsRef<Path>) -> io::Result<FsQueue> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join("msg").is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no spool in {}", dir.display())));
        }
        Ok(FsQueue { dir, commit: None, counter: AtomicU64::new(0) })
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

    /// Writes `msg/NAME` durably (through `tmp/`), sharing the flush with concurrent writers.
    async fn write(&self, name: &str, data: Vec<u8>) -> Result<(), QueueError> {
        let commit = self.commit.as_ref().ok_or(QueueError::Closed)?;
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join("tmp").join(format!("{name}.{seq}"));
        commit.run(Op::Write { tmp, dest: self.dir.join("msg").join(name), data }).await.map_err(QueueError::Io)
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
        if self.commit.is_none() {
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
        self.write(&msg.id, encode(&msg, &body)).await?;
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
        self.write(&format!("{}.st", msg.id), encode_state(msg)).await
    }

    async fn remove(&self, id: &str) -> Result<(), QueueError> {
        if !valid_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let commit = self.commit.as_ref().ok_or(QueueError::Closed)?;
        let paths = vec![self.dir.join("msg").join(id), self.dir.join("msg").join(format!("{id}.st"))];
        commit.run(Op::Remove { paths }).await.map_err(QueueError::Io)
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
        for orphan in states.iter().filter(|s| self.commit.is_some() && !good.contains(s)) {
            let _ = fs::remove_file(self.dir.join("msg").join(format!("{orphan}.st")));
        }
        good.sort();
        Ok(good)
    }
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
        use std::fs;
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
