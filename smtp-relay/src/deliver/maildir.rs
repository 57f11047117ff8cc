//! Maildir delivery (`DATA_DIR/mail/USER/{tmp,new,cur}`), with the return-path line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use smtp_proto::ReversePath;

/// Delivers into Maildirs under one root.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
}

impl Maildir {
    /// Maildirs under `root` (`DATA_DIR/mail`).
    pub fn new(root: impl Into<PathBuf>, hostname: &str) -> Self {
        let hostname = hostname.replace(['/', ':'], "_");
        Maildir { root: root.into(), hostname }
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
        let dir = self.user_dir(user);
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let name = format!("{arrival}.T{key}.{}", self.hostname);
        if let Some(existing) = find_existing(&dir, &name)? {
            return Ok(existing);
        }
        let tmp = dir.join("tmp").join(&name);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut out = Vec::with_capacity(body.len() + 64);
        out.extend_from_slice(format!("Return-Path: {from}\n").as_bytes());
        crlf_to_lf(body, &mut out);
        f.write_all(&out)?;
        f.sync_all()?;
        drop(f);
        let dest = dir.join("new").join(&name);
        fs::rename(&tmp, &dest)?;
        File::open(dir.join("new"))?.sync_all()?;
        Ok(dest)
    }
}

fn find_existing(dir: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    let new = dir.join("new").join(name);
    if new.exists() {
        return Ok(Some(new));
    }
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
