//! Where a queued message's data can be read: kept in memory when small, else a region of its
//! spool file.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

/// A queued message's data (this host's `Received:` line first).
#[derive(Debug, Clone)]
pub enum StoredBody {
    /// Small messages: the buffer the spool file was written from, shared, not copied.
    Memory(Bytes),
    /// A region of a file.
    File {
        /// The file.
        path: PathBuf,
        /// Where the data starts.
        offset: u64,
        /// How long it is.
        len: u64,
    },
}

impl StoredBody {
    /// The data's length in octets.
    pub fn len(&self) -> u64 {
        match self {
            StoredBody::Memory(b) => b.len() as u64,
            StoredBody::File { len, .. } => *len,
        }
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A blocking reader (for use inside `spawn_blocking`).
    pub fn reader_blocking(&self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            StoredBody::Memory(b) => Ok(Box::new(io::Cursor::new(b.clone()))),
            StoredBody::File { path, offset, len } => {
                let mut f = std::fs::File::open(path)?;
                f.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(f.take(*len)))
            }
        }
    }

    /// An async reader (the file is read in blocks off the async threads by tokio).
    pub async fn reader(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        match self {
            StoredBody::Memory(b) => Ok(Box::new(io::Cursor::new(b.clone()))),
            StoredBody::File { path, offset, len } => {
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(SeekFrom::Start(*offset)).await?;
                Ok(Box::new(tokio::io::BufReader::with_capacity(64 * 1024, f).take(*len)))
            }
        }
    }

    /// At most the first `max` octets (headers for notifications and `tern queue show`).
    pub async fn head(&self, max: usize) -> io::Result<Bytes> {
        match self {
            StoredBody::Memory(b) => Ok(b.slice(..b.len().min(max))),
            StoredBody::File { .. } => {
                let mut out = Vec::new();
                self.reader().await?.take(max as u64).read_to_end(&mut out).await?;
                Ok(out.into())
            }
        }
    }
}
