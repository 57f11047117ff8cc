//! Maildir delivery (`DATA_DIR/mail/USER/{tmp,new,cur}`), with the return-path line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use smtp_proto::ReversePath;

use crate::commit::{GroupCommit, Op};

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
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&content(from, body))?;
        f.sync_all()?;
        drop(f);
        let dest = dir.join("new").join(&name);
        fs::rename(&tmp, &dest)?;
        File::open(dir.join("new"))?.sync_all()?;
        Ok(dest)
    }
}

impl Maildir {
    /// Creates the Maildir if needed; `Ok(Ok(path))` when this delivery was already made,
    /// `Ok(Err((dir, name)))` when it is still to do. `new/` is always checked; `cur/` (where
    /// readers move mail, possibly many files) only when `thorough`, i.e. when an earlier
    /// attempt may have written the file.
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
                fs::create_dir_all(dir.join(sub))?;
            }
            self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(user.to_string());
        }
        let name = format!("{arrival}.T{key}.{}", self.hostname);
        let new = dir.join("new").join(&name);
        if new.exists() {
            return Ok(Ok(new));
        }
        Ok(match thorough.then(|| find_in_cur(&dir, &name)).transpose()?.flatten() {
            Some(existing) => Ok(existing),
            None => Err((dir, name)),
        })
    }

    /// Like [`Maildir::deliver`], with the file's flush shared with concurrent deliveries
    /// through the relay's group commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn deliver_grouped(
        &self,
        commit: &GroupCommit,
        user: &str,
        key: &str,
        arrival: u64,
        from: &ReversePath,
        body: &[u8],
        thorough: bool,
    ) -> io::Result<PathBuf> {
        let this = self.clone();
        let (user, key) = (user.to_string(), key.to_string());
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&user, &key, arrival, thorough))
            .await
            .map_err(io::Error::other)??;
        let (dir, name) = match prepared {
            Ok(existing) => return Ok(existing),
            Err(target) => target,
        };
        let dest = dir.join("new").join(&name);
        commit
            .run(Op::Write { tmp: dir.join("tmp").join(&name), dest: dest.clone(), data: content(from, body) })
            .await?;
        Ok(dest)
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
}
