//! Maildir delivery (`DATA_DIR/mail/USER/{tmp,new,cur}`), with the return-path line.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use smtp_proto::ReversePath;

use crate::commit::{append_blocking, create_dir_durable, create_file, GroupCommit, Op};
use crate::queue::StoredBody;

/// Mailbox directories remembered as existing.
#[cfg(not(test))]
const MAX_KNOWN_MAILDIRS: usize = 4096;
#[cfg(test)]
const MAX_KNOWN_MAILDIRS: usize = 8;

/// Bytes copied per block when a large message is streamed from the spool into a mailbox.
const COPY_BLOCK: usize = 64 * 1024;

/// Delivers into Maildirs under one root.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
    /// Users whose Maildir is known to exist (saves three mkdir calls per delivery).
    known: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Maildir {
    /// Maildirs under `root` (`DATA_DIR/mail`).
    pub fn new(root: impl Into<PathBuf>, hostname: &str) -> Self {
        let hostname = hostname.replace(['/', ':'], "_");
        Maildir { root: root.into(), hostname, known: Default::default() }
    }

    /// The Maildir of `user`.
    pub fn user_dir(&self, user: &str) -> PathBuf {
        self.root.join(user)
    }

    /// Delivers `body` to `user`, with `Return-Path: <reverse-path>` as its first line (RFC 5321
    /// 4.4, RFC 788's return path line). Line ends are written as LF, as Maildir readers expect.
    ///
    /// The file name is derived from `key` (queue id and recipient index), so delivering the same
    /// recipient again after a crash finds the earlier copy instead of making a second one.
    /// Writes to `tmp/`, fsyncs, renames into `new/`, fsyncs `new/`.
    pub fn deliver(&self, user: &str, key: &str, arrival: u64, from: &ReversePath, body: &[u8]) -> io::Result<PathBuf> {
        let (dir, name) = match self.prepare(user, key, arrival, true)? {
            Ok(existing) => return Ok(existing),
            Err(target) => target,
        };
        let tmp = dir.join("tmp").join(&name);
        let dest = dir.join("new").join(&name);
        let written = (|| {
            let mut f = create_file(&tmp)?;
            f.write_all(&content(from, body))?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        File::open(dir.join("new"))?.sync_all()?;
        Ok(dest)
    }
}

impl Maildir {
    /// Creates the Maildir if needed; `Ok(Ok(path))` when this delivery was already made,
    /// `Ok(Err((dir, name)))` when it is still to do. `new/` and `cur/` (where readers move
    /// mail, possibly many files) are looked at only when `thorough`, i.e. when an earlier
    /// attempt or an earlier run may have written the file.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        user: &str,
        key: &str,
        arrival: u64,
        thorough: bool,
    ) -> io::Result<Result<PathBuf, (PathBuf, String)>> {
        let dir = self.user_dir(user);
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).contains(user);
        if !known {
            for sub in ["tmp", "new", "cur"] {
                create_dir_durable(&dir.join(sub))?;
            }
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a flood of new local parts (catch-all) cannot grow it without end; it is
            // only a cache of directories known to exist.
            if known.len() >= MAX_KNOWN_MAILDIRS {
                known.clear();
            }
            known.insert(user.to_string());
        }
        let name = format!("{arrival}.T{key}.{}", self.hostname);
        if !thorough {
            // A message accepted by this process and never attempted: no earlier copy.
            return Ok(Err((dir, name)));
        }
        let new = dir.join("new").join(&name);
        if new.is_file() {
            return Ok(Ok(new));
        }
        Ok(match find_in_cur(&dir, &name)? {
            Some(existing) => Ok(existing),
            None => Err((dir, name)),
        })
    }

    /// Like [`Maildir::deliver`] from a queued body, with the file's flush shared with
    /// concurrent deliveries through the relay's group commit. A small body in memory is
    /// written by the committer; a large one is streamed from the spool file in blocks, so a
    /// delivery holds [`COPY_BLOCK`] octets at a time, never the message.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn deliver_grouped(
        &self,
        commit: &GroupCommit,
        user: &str,
        key: &str,
        arrival: u64,
        from: &ReversePath,
        body: &StoredBody,
        thorough: bool,
    ) -> io::Result<PathBuf> {
        let this = self.clone();
        let (user, key, from, body) = (user.to_string(), key.to_string(), from.clone(), body.clone());
        let prepared = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let (dir, name) = match this.prepare(&user, &key, arrival, thorough)? {
                Ok(existing) => return Ok(Err(existing)),
                Err(target) => target,
            };
            let tmp = dir.join("tmp").join(&name);
            let dest = dir.join("new").join(&name);
            let op = match &body {
                StoredBody::Memory(b) => {
                    Op::Write { tmp, dest: dest.clone(), data: content(&from, b).into(), reuse: false }
                }
                StoredBody::File { .. } | StoredBody::Chunks { .. } => match stream_content(&tmp, &from, &body) {
                    Ok(file) => Op::Sync { file, tmp, dest: dest.clone() },
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                },
            };
            Ok(Ok((op, dest)))
        })
        .await
        .map_err(io::Error::other)??;
        match prepared {
            Err(existing) => Ok(existing),
            Ok((op, dest)) => {
                commit.run(op).await?;
                Ok(dest)
            }
        }
    }
}

/// CRLF to LF over a stream cut anywhere: a CR at the end of one block is held back until
/// the next block shows whether an LF follows.
#[derive(Debug, Default)]
struct LfConverter {
    cr: bool,
}

impl LfConverter {
    fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        if std::mem::take(&mut self.cr) && chunk[0] != b'\n' {
            out.push(b'\r');
        }
        if chunk.last() == Some(&b'\r') {
            self.cr = true;
            chunk = &chunk[..chunk.len() - 1];
        }
        crlf_to_lf(chunk, out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.cr) {
            out.push(b'\r');
        }
    }
}

/// Writes the return-path line and the body (CRLF to LF) into a new file at `tmp`, block by
/// block.
fn stream_content(tmp: &Path, from: &ReversePath, body: &StoredBody) -> io::Result<File> {
    let mut f = create_file(tmp)?;
    f.write_all(format!("Return-Path: {from}\n").as_bytes())?;
    let mut input = body.reader_blocking()?;
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut out = Vec::with_capacity(COPY_BLOCK + 1);
    let mut lf = LfConverter::default();
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.clear();
        lf.push(&buf[..n], &mut out);
        f.write_all(&out)?;
    }
    out.clear();
    lf.finish(&mut out);
    f.write_all(&out)?;
    Ok(f)
}

/// A message being written straight into a Maildir as it arrives (final delivery before the
/// `250`): the return-path line, then the data with LF line ends. Small messages stay in one
/// buffer written by the committer; larger ones go to `tmp/` in blocks of [`COPY_BLOCK`].
/// Dropped without [`MaildirWriter::commit`], it removes what it wrote.
#[derive(Debug)]
pub(crate) struct MaildirWriter {
    tmp: PathBuf,
    dest: PathBuf,
    buf: Vec<u8>,
    lf: LfConverter,
    file: Option<File>,
    done: bool,
}

impl Drop for MaildirWriter {
    fn drop(&mut self) {
        if !self.done && self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl MaildirWriter {
    /// Appends data (CRLF to LF).
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.lf.push(data, &mut self.buf);
        if self.buf.len() >= COPY_BLOCK {
            self.spill().await?;
        }
        Ok(())
    }

    async fn spill(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf).into();
        self.file = Some(append_blocking(self.file.take(), &self.tmp, vec![data]).await?);
        Ok(())
    }

    /// Makes the message durable in `new/` (sharing the flush through `commit`).
    pub(crate) async fn commit(mut self, commit: &GroupCommit) -> io::Result<PathBuf> {
        self.lf.finish(&mut self.buf);
        let op = match self.file.take() {
            None => Op::Write {
                tmp: self.tmp.clone(),
                dest: self.dest.clone(),
                data: std::mem::take(&mut self.buf).into(),
                reuse: false,
            },
            Some(file) => {
                let rest = std::mem::take(&mut self.buf).into();
                let file = append_blocking(Some(file), &self.tmp, vec![rest]).await?;
                Op::Sync { file, tmp: self.tmp.clone(), dest: self.dest.clone() }
            }
        };
        // The committer removes the temporary file if anything fails from here on.
        self.done = true;
        commit.run(op).await?;
        Ok(self.dest.clone())
    }
}

impl Maildir {
    /// Starts writing a message for `user` as it arrives; see [`MaildirWriter`].
    pub(crate) async fn begin(
        &self,
        user: &str,
        key: &str,
        arrival: u64,
        from: &ReversePath,
    ) -> io::Result<MaildirWriter> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).contains(user);
        let prepared = if known {
            // Nothing to create and nothing to look up: no trip to a blocking thread.
            self.prepare(user, key, arrival, false)?
        } else {
            let this = self.clone();
            let (user, key) = (user.to_string(), key.to_string());
            tokio::task::spawn_blocking(move || this.prepare(&user, &key, arrival, false))
                .await
                .map_err(io::Error::other)??
        };
        let Err((dir, name)) = prepared else {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "message already delivered"));
        };
        let mut buf = Vec::with_capacity(1024);
        buf.extend_from_slice(format!("Return-Path: {from}\n").as_bytes());
        Ok(MaildirWriter {
            tmp: dir.join("tmp").join(&name),
            dest: dir.join("new").join(&name),
            buf,
            lf: LfConverter::default(),
            file: None,
            done: false,
        })
    }
}

/// The stored file: the return-path line, then the message with LF line ends.
fn content(from: &ReversePath, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(format!("Return-Path: {from}\n").as_bytes());
    crlf_to_lf(body, &mut out);
    out
}

fn find_in_cur(dir: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    for e in fs::read_dir(dir.join("cur"))? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(name) {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

fn crlf_to_lf(body: &[u8], out: &mut Vec<u8>) {
    let mut rest = body;
    while let Some(p) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..p]);
        out.push(b'\n');
        rest = &rest[p + 2..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_once_with_return_path() {
        let root = tempfile::tempdir().unwrap();
        let m = Maildir::new(root.path(), "mx.test");
        let from = ReversePath::Path(smtp_proto::Path::parse("<a@b.test>").unwrap());
        let p = m.deliver("bob", "ID1R0", 7, &from, b"Received: x\r\nSubject: s\r\n\r\nhi\r\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"Return-Path: <a@b.test>\nReceived: x\nSubject: s\n\nhi\n");
        assert_eq!(m.deliver("bob", "ID1R0", 7, &from, b"again").unwrap(), p);
        // Moved to cur/ by a reader: still found.
        let cur = root.path().join("bob/cur").join(format!("{}:2,S", p.file_name().unwrap().to_string_lossy()));
        fs::rename(&p, &cur).unwrap();
        assert_eq!(m.deliver("bob", "ID1R0", 7, &from, b"again").unwrap(), cur);
        assert_eq!(fs::read_dir(root.path().join("bob/new")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(root.path().join("bob/tmp")).unwrap().count(), 0);
        let null = m.deliver("bob", "ID2R0", 7, &ReversePath::Null, b"x").unwrap();
        assert!(fs::read(null).unwrap().starts_with(b"Return-Path: <>\n"));
    }

    #[test]
    fn the_cache_of_known_mailboxes_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let m = Maildir::new(root.path(), "mx.test");
        for i in 0..3 * MAX_KNOWN_MAILDIRS {
            m.deliver(&format!("user{i}"), &format!("Q{i}R0"), 7, &ReversePath::Null, b"x\r\n").unwrap();
            assert!(m.known.lock().unwrap().len() <= MAX_KNOWN_MAILDIRS);
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 3 * MAX_KNOWN_MAILDIRS, "all delivered");
    }

    /// Durability order for mailboxes, from memory, from the spool, and on receipt.
    #[tokio::test]
    async fn deliveries_are_flushed_renamed_and_the_directory_flushed_before_success() {
        let root = tempfile::tempdir().unwrap();
        let m = Maildir::new(root.path(), "mx.test");
        let (commit, steps) = GroupCommit::recording("test-maildir").unwrap();
        let spool = root.path().join("spool");
        fs::write(&spool, vec![b'a'; 2 * COPY_BLOCK]).unwrap();
        let bodies = [
            StoredBody::Memory("m\r\n".into()),
            StoredBody::File { path: spool, offset: 0, len: 2 * COPY_BLOCK as u64 },
        ];
        for (i, body) in bodies.iter().enumerate() {
            let p = m
                .deliver_grouped(&commit, "bob", &format!("Q{i}R0"), 7, &ReversePath::Null, body, false)
                .await
                .unwrap();
            crate::commit::assert_durable_order(&steps, &p);
        }
        for size in [10, 3 * COPY_BLOCK] {
            let mut w = m.begin("bob", &format!("D{size}R0"), 7, &ReversePath::Null).await.unwrap();
            w.write(&vec![b'z'; size]).await.unwrap();
            let p = w.commit(&commit).await.unwrap();
            crate::commit::assert_durable_order(&steps, &p);
        }
    }

    #[tokio::test]
    async fn failed_deliveries_leave_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let m = Maildir::new(root.path(), "mx.test");
        let commit = GroupCommit::start("test-commit").unwrap();
        let spool = root.path().join("spool");
        fs::write(&spool, vec![b'a'; 3 * COPY_BLOCK]).unwrap();
        let bodies = [
            StoredBody::Memory("small\r\n".into()),
            StoredBody::File { path: spool, offset: 0, len: 3 * COPY_BLOCK as u64 },
        ];
        for (i, body) in bodies.iter().enumerate() {
            let key = format!("Q{i}R0");
            // Something that is not a file sits where the message goes: the rename fails.
            let name = format!("7.T{key}.mx.test");
            fs::create_dir_all(root.path().join("bob/new").join(&name).join("x")).unwrap();
            let r = m.deliver_grouped(&commit, "bob", &key, 7, &ReversePath::Null, body, false).await;
            assert!(r.is_err(), "{r:?}");
            assert_eq!(fs::read_dir(root.path().join("bob/tmp")).unwrap().count(), 0, "body {i}");
        }
        // And a delivery that works, from each kind of body.
        for (i, body) in bodies.iter().enumerate() {
            let p = m
                .deliver_grouped(&commit, "bob", &format!("OK{i}R0"), 7, &ReversePath::Null, body, false)
                .await
                .unwrap();
            assert!(fs::read(p).unwrap().starts_with(b"Return-Path: <>\n"));
        }
    }

    #[test]
    fn streamed_copy_converts_line_ends_across_blocks() {
        let root = tempfile::tempdir().unwrap();
        // CRLF pairs split at every block boundary, and a lone CR that must stay.
        let mut body = Vec::new();
        while body.len() < 3 * COPY_BLOCK {
            body.extend_from_slice(b"line\r\nx\ry\r\n");
        }
        body.truncate(COPY_BLOCK - 1);
        body.extend_from_slice(b"\r\nend\r");
        let spool = root.path().join("spool");
        fs::write(&spool, [&b"HEAD"[..], &body].concat()).unwrap();
        let stored = StoredBody::File { path: spool, offset: 4, len: body.len() as u64 };
        let tmp = root.path().join("out");
        drop(stream_content(&tmp, &ReversePath::Null, &stored).unwrap());
        let mut want = b"Return-Path: <>\n".to_vec();
        crlf_to_lf(&body, &mut want);
        assert_eq!(fs::read(&tmp).unwrap(), want);
    }
}
