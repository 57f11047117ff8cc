//! Where a queued message's data can be read: kept in memory when small, else a region of its
//! spool file, or chunks in a database read one at a time.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Numbered chunks kept elsewhere (a database), fetched one at a time as they are read:
    /// one chunk in memory per reader.
    Chunks {
        /// Where the chunks are.
        source: Arc<dyn ChunkSource>,
        /// The message's queue id.
        id: String,
        /// The total length.
        len: u64,
    },
}

/// Reads a message's data chunk by chunk (the database queue's bodies).
#[async_trait::async_trait]
pub trait ChunkSource: Send + Sync + std::fmt::Debug {
    /// Chunk `seq` (from 0) of message `id`; `None` past the last one.
    async fn chunk(&self, id: &str, seq: u32) -> io::Result<Option<Bytes>>;
}

/// A blocking reader over chunks (each fetched on the runtime the blocking thread belongs to).
struct BlockingChunks {
    source: Arc<dyn ChunkSource>,
    id: String,
    seq: u32,
    current: io::Cursor<Bytes>,
    handle: tokio::runtime::Handle,
}

impl Read for BlockingChunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = Read::read(&mut self.current, buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.handle.block_on(self.source.chunk(&self.id, self.seq))? {
                Some(c) => {
                    self.seq += 1;
                    self.current = io::Cursor::new(c);
                }
                None => return Ok(0),
            }
        }
    }
}

/// The chunks of `id` in order, as a stream for an async reader.
fn chunk_stream(
    source: Arc<dyn ChunkSource>,
    id: String,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Unpin {
    Box::pin(futures_util::stream::try_unfold((source, id, 0u32), |(source, id, seq)| async move {
        Ok(source.chunk(&id, seq).await?.map(|c| (c, (source, id, seq + 1))))
    }))
}

impl StoredBody {
    /// The data's length in octets.
    pub fn len(&self) -> u64 {
        match self {
            StoredBody::Memory(b) => b.len() as u64,
            StoredBody::File { len, .. } | StoredBody::Chunks { len, .. } => *len,
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
            StoredBody::Chunks { source, id, .. } => Ok(Box::new(BlockingChunks {
                source: source.clone(),
                id: id.clone(),
                seq: 0,
                current: io::Cursor::new(Bytes::new()),
                handle: tokio::runtime::Handle::try_current().map_err(io::Error::other)?,
            })),
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
            StoredBody::Chunks { source, id, .. } => {
                Ok(Box::new(tokio_util::io::StreamReader::new(chunk_stream(source.clone(), id.clone()))))
            }
        }
    }

    /// At most the first `max` octets (headers for notifications and `tern queue show`).
    pub async fn head(&self, max: usize) -> io::Result<Bytes> {
        match self {
            StoredBody::Memory(b) => Ok(b.slice(..b.len().min(max))),
            StoredBody::File { .. } | StoredBody::Chunks { .. } => {
                let mut out = Vec::new();
                self.reader().await?.take(max as u64).read_to_end(&mut out).await?;
                Ok(out.into())
            }
        }
    }
}
