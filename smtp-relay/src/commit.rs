//! Group commit: many small durable file operations share one flush.
//!
//! A committer thread takes every operation waiting at that moment as one batch: it writes each
//! new file under its temporary name, flushes all of their data at once (the `fdatasync` calls
//! are issued concurrently, so the filesystem journal commits them together), renames them into
//! place, applies removals, and makes the directory entries durable with one fsync per directory
//! for the whole batch. Only then is each caller told. A crash before the rename leaves only a
//! temporary file; after the directory fsync, the file is durable.
//!
//! (A single `syncfs` per batch was tried first: on a filesystem shared with other work it
//! writes back everything dirty and was several times slower than concurrent `fdatasync`.)

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

/// Most operations committed in one batch.
const MAX_BATCH: usize = 256;

/// One durable file operation.
#[derive(Debug)]
pub(crate) enum Op {
    /// Write `data` to `tmp`, then rename it to `dest`. With `reuse`, `tmp` may be a file kept
    /// for reuse, written over in place.
    Write { tmp: PathBuf, dest: PathBuf, data: bytes::Bytes, reuse: bool },
    /// `file` (open on `tmp`) is written already: flush it, then rename it to `dest`.
    Sync { file: File, tmp: PathBuf, dest: PathBuf },
    /// Remove these files (missing ones are fine).
    Remove { paths: Vec<PathBuf> },
    /// Rename `from` to `to` (a file kept for reuse: no inode to free now and allocate again
    /// for the next message), and remove `remove`.
    Recycle { from: PathBuf, to: PathBuf, remove: Vec<PathBuf> },
}

struct Job {
    op: Op,
    done: oneshot::Sender<io::Result<()>>,
}

/// A handle to a committer thread (clones share it).
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: Arc<Mutex<mpsc::Sender<Job>>>,
}

impl GroupCommit {
    /// Starts a committer thread called `name`.
    pub(crate) fn start(name: &str) -> io::Result<GroupCommit> {
        Self::start_with(name, None)
    }

    /// A committer that records every file-system step it takes, in order (tests assert the
    /// durability order with it: a missing flush cannot be seen any other way).
    #[cfg(test)]
    pub(crate) fn recording(name: &str) -> io::Result<(GroupCommit, Steps)> {
        let steps = Steps::default();
        Ok((Self::start_with(name, Some(steps.clone()))?, steps))
    }

    fn start_with(name: &str, rec: Option<Steps>) -> io::Result<GroupCommit> {
        let (tx, rx) = mpsc::channel();
        let (stage_tx, stage_rx) = mpsc::channel();
        let flushers = Flushers::start(name)?;
        let r2 = rec.clone();
        std::thread::Builder::new()
            .name(format!("{name}-data"))
            .spawn(move || committer(rx, stage_tx, flushers, r2))?;
        std::thread::Builder::new().name(format!("{name}-names")).spawn(move || finisher(stage_rx, rec))?;
        Ok(GroupCommit { tx: Arc::new(Mutex::new(tx)) })
    }

    /// Runs `op` durably, sharing the flush with whatever else is pending.
    pub(crate) async fn run(&self, op: Op) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        let closed = || io::Error::other("committer stopped");
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(Job { op, done }).map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

type Done = oneshot::Sender<io::Result<()>>;

/// One file-system step of the committer, as recorded for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A file's data was written (under its temporary name).
    Written(PathBuf),
    /// Its data was flushed (`fdatasync`).
    Synced(PathBuf),
    /// It was renamed into place.
    Renamed(PathBuf, PathBuf),
    /// A directory was flushed (`fsync`).
    DirSynced(PathBuf),
    /// The caller was told the file at this path is durable.
    Replied(PathBuf),
}

/// The steps recorded so far.
pub(crate) type Steps = Arc<Mutex<Vec<Step>>>;

fn note(rec: &Option<Steps>, step: Step) {
    if let Some(r) = rec {
        r.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }
}
/// Files to remove, and a file to rename for reuse instead of removing it.
type Removal = (Vec<PathBuf>, Option<(PathBuf, PathBuf)>, Done);

/// A batch whose data is durable, waiting for its names.
struct Staged {
    writes: Vec<(PathBuf, PathBuf, Done)>,
    removes: Vec<Removal>,
}

/// Stage one: write and flush the data of each batch. Stage two ([`finisher`]) runs in its own
/// thread, so one batch's directory flush overlaps the next batch's data flush; batches keep
/// their order, and a removal can only follow the write it removes (it was acknowledged first).
fn committer(rx: mpsc::Receiver<Job>, next: mpsc::Sender<Staged>, flushers: Flushers, rec: Option<Steps>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        // 1. Write the new files under their temporary names.
        let mut written = Vec::new();
        let mut removes = Vec::new();
        for Job { op, done } in batch {
            match op {
                Op::Write { tmp, dest, data, reuse } => match write_file(&tmp, &data, reuse) {
                    Ok(file) => {
                        note(&rec, Step::Written(tmp.clone()));
                        written.push((Arc::new(file), tmp, dest, done))
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        let _ = done.send(Err(e));
                    }
                },
                Op::Sync { file, tmp, dest } => {
                    note(&rec, Step::Written(tmp.clone()));
                    written.push((Arc::new(file), tmp, dest, done))
                }
                Op::Remove { paths } => removes.push((paths, None, done)),
                Op::Recycle { from, to, remove } => removes.push((remove, Some((from, to)), done)),
            }
        }
        // 2. Flush all of their data together.
        let files: Vec<Flush> =
            written.iter().map(|(f, tmp, ..)| Flush { file: f.clone(), path: tmp.clone(), rec: rec.clone() }).collect();
        let synced = flushers.sync_data_all(&files);
        drop(files);
        let mut writes = Vec::new();
        for ((_, tmp, dest, done), r) in written.into_iter().zip(synced) {
            match r {
                Ok(()) => writes.push((tmp, dest, done)),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    let _ = done.send(Err(e));
                }
            }
        }
        if next.send(Staged { writes, removes }).is_err() {
            return;
        }
    }
}

/// Stage two: rename into place and remove; then one fsync per directory touched.
fn finisher(rx: mpsc::Receiver<Staged>, rec: Option<Steps>) {
    while let Ok(Staged { writes, removes }) = rx.recv() {
        let mut dirs = BTreeSet::new();
        let mut results = Vec::new();
        for (tmp, dest, done) in writes {
            dirs.insert(parent(&dest));
            let r = fs::rename(&tmp, &dest);
            match &r {
                Ok(()) => note(&rec, Step::Renamed(tmp.clone(), dest.clone())),
                // Nothing is left behind in tmp/ on any error path.
                Err(_) => {
                    let _ = fs::remove_file(&tmp);
                }
            }
            results.push((r, done, Some(dest)));
        }
        for (paths, recycle, done) in removes {
            let mut r = Ok(());
            if let Some((from, to)) = recycle {
                dirs.insert(parent(&from));
                if let Err(e) = fs::rename(&from, &to) {
                    // Not kept for reuse then; a file that is not there is an error here (the
                    // caller asked to remove a message that does not exist).
                    if let Err(e2) = fs::remove_file(&from) {
                        r = Err(if e2.kind() == io::ErrorKind::NotFound { e2 } else { e });
                    }
                }
            }
            for p in paths {
                dirs.insert(parent(&p));
                if let Err(e) = fs::remove_file(&p) {
                    if e.kind() != io::ErrorKind::NotFound {
                        r = Err(e);
                    }
                }
            }
            results.push((r, done, None));
        }
        let dir_sync = dirs.iter().try_for_each(|d| {
            File::open(d).and_then(|f| f.sync_all())?;
            note(&rec, Step::DirSynced(d.clone()));
            Ok::<(), io::Error>(())
        });
        for (r, done, dest) in results {
            let r = match (r, &dir_sync) {
                (Ok(()), Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                (r, _) => r,
            };
            if let (Ok(()), Some(dest)) = (&r, dest) {
                note(&rec, Step::Replied(dest));
            }
            let _ = done.send(r);
        }
    }
}

/// Writes `data` as the whole content of `path`. With `reuse`, a file kept for reuse is
/// overwritten in place (no new inode, no blocks freed and allocated again) and cut to length.
fn write_file(path: &Path, data: &[u8], reuse: bool) -> io::Result<File> {
    if !reuse {
        let mut f = create_file(path)?;
        f.write_all(data)?;
        return Ok(f);
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    f.write_all(data)?;
    if f.metadata()?.len() > data.len() as u64 {
        f.set_len(data.len() as u64)?;
    }
    Ok(f)
}

/// Appends `parts` to `file` (creating `path` when there is no file yet) on a blocking thread:
/// how a message being received is written out block by block. On failure the file is
/// removed at once (a full disk gets its space back) and the error returned.
pub(crate) async fn append_blocking(file: Option<File>, path: &Path, parts: Vec<bytes::Bytes>) -> io::Result<File> {
    let p = path.to_path_buf();
    let r = tokio::task::spawn_blocking(move || -> io::Result<File> {
        let mut f = match file {
            Some(f) => f,
            None => create_file(&p)?,
        };
        for part in parts {
            f.write_all(&part)?;
        }
        Ok(f)
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r);
    if r.is_err() {
        let _ = fs::remove_file(path);
    }
    r
}

/// Creates (or truncates) a file readable by its owner only: queued mail and mailboxes are
/// private.
pub(crate) fn create_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// `create_dir_all` that makes each directory it creates durable: the parent of every new
/// directory is fsync'd, so a crash cannot lose a mailbox or spool directory that a durable
/// file was then written into.
pub(crate) fn create_dir_durable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(p)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    File::open(parent(path))?.sync_all()
}

/// Threads that issue flushes beside the committer thread.
const SYNC_THREADS: usize = 7;
/// Files per flush thread: small batches are flushed from the committer thread alone.
const FILES_PER_THREAD: usize = 2;

/// A part of a batch for a flush thread: its files, and where to say how each went.
type FlushJob = (Vec<Flush>, mpsc::Sender<Vec<io::Result<()>>>);

/// A file to flush, its path (for the record), and the recorder.
#[derive(Clone)]
struct Flush {
    file: Arc<File>,
    path: PathBuf,
    rec: Option<Steps>,
}

impl Flush {
    /// `fdatasync`, recorded when it succeeds.
    fn run(&self) -> io::Result<()> {
        self.file.sync_data()?;
        note(&self.rec, Step::Synced(self.path.clone()));
        Ok(())
    }
}

/// Long-lived threads that `fdatasync` parts of a batch (started once: spawning threads per
/// batch cost more than the flushes they shared).
struct Flushers {
    senders: Vec<mpsc::Sender<FlushJob>>,
}

impl Flushers {
    fn start(name: &str) -> io::Result<Flushers> {
        let mut senders = Vec::new();
        for i in 0..SYNC_THREADS {
            let (tx, rx) = mpsc::channel::<FlushJob>();
            std::thread::Builder::new().name(format!("{name}-sync{i}")).spawn(move || {
                for (files, done) in rx {
                    let _ = done.send(files.iter().map(Flush::run).collect());
                }
            })?;
            senders.push(tx);
        }
        Ok(Flushers { senders })
    }

    /// `fdatasync` on every file, issued from several threads at once so that the device
    /// works on them together instead of one after another.
    fn sync_data_all(&self, files: &[Flush]) -> Vec<io::Result<()>> {
        if files.len() <= FILES_PER_THREAD {
            return files.iter().map(Flush::run).collect();
        }
        let per = files.len().div_ceil(SYNC_THREADS + 1).max(FILES_PER_THREAD);
        let mut chunks = files.chunks(per);
        let own = chunks.next().unwrap_or_default();
        let mut waits = Vec::new();
        for (chunk, tx) in chunks.zip(&self.senders) {
            let (done, wait) = mpsc::channel();
            let sent = tx.send((chunk.to_vec(), done)).is_ok();
            waits.push((chunk, sent.then_some(wait)));
        }
        let mut out: Vec<io::Result<()>> = own.iter().map(Flush::run).collect();
        for (chunk, wait) in waits {
            match wait.and_then(|w| w.recv().ok()) {
                Some(r) => out.extend(r),
                None => out.extend(chunk.iter().map(Flush::run)),
            }
        }
        out
    }
}

/// Asserts that the file now at `dest` was written, flushed, renamed into place and its
/// directory flushed, in that order, before its writer was told it is durable.
#[cfg(test)]
pub(crate) fn assert_durable_order(steps: &Steps, dest: &Path) {
    let steps = steps.lock().unwrap().clone();
    let at = |want: &dyn Fn(&Step) -> bool, what: &str| {
        steps.iter().position(want).unwrap_or_else(|| panic!("no {what} for {}: {steps:?}", dest.display()))
    };
    let renamed = at(&|s| matches!(s, Step::Renamed(_, d) if d == dest), "rename");
    let Step::Renamed(tmp, _) = &steps[renamed] else { unreachable!() };
    let written = at(&|s| *s == Step::Written(tmp.clone()), "write");
    let synced = at(&|s| *s == Step::Synced(tmp.clone()), "fdatasync");
    // The directory as the standard library sees it, not through `parent` (tested here too).
    let dir = dest.parent().expect("a file in a directory").to_path_buf();
    let dir_synced = steps[renamed..].iter().position(|s| *s == Step::DirSynced(dir.clone())).map(|p| p + renamed);
    let dir_synced = dir_synced.unwrap_or_else(|| panic!("no directory fsync after the rename: {steps:?}"));
    let replied = at(&|s| *s == Step::Replied(dest.to_path_buf()), "reply");
    assert!(written < synced && synced < renamed && renamed < dir_synced && dir_synced < replied, "{steps:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn removing_what_is_not_there_is_fine_and_files_are_cut_to_length() {
        let dir = tempfile::tempdir().unwrap();
        let c = GroupCommit::start("test-commit").unwrap();
        let gone = dir.path().join("gone");
        c.run(Op::Remove { paths: vec![gone.clone()] }).await.expect("a missing file is already removed");
        // A longer file written over with shorter content keeps no tail.
        let (tmp, dest) = (dir.path().join("t"), dir.path().join("d"));
        std::fs::write(&tmp, b"a much longer old content").unwrap();
        c.run(Op::Write { tmp, dest: dest.clone(), data: "short".into(), reuse: true }).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"short");
    }

    #[test]
    fn a_file_in_the_way_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_durable(&file).is_err());
        let nested = dir.path().join("a/b/c");
        create_dir_durable(&nested).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(parent(&nested), dir.path().join("a/b"));
        assert_eq!(parent(Path::new("top")), PathBuf::from("."));
    }
}
