//! The message body as it arrives: a bounded stream of unstuffed chunks from the connection to
//! the mail service.
//!
//! The connection calls the mail service when the data starts (after `354`, or with the first
//! `BDAT` chunk) and feeds it the body through a channel of [`BODY_CHANNEL_CHUNKS`] chunks, each
//! at most one socket read. While the service does not take chunks, the connection does not
//! read the socket: a slow disk slows the client down instead of filling memory. No layer holds
//! the whole message unless the service asks for it with [`Body::collect`].
//!
//! The stream ends with `Ok(None)` only when the data was complete (`CRLF.CRLF` or `BDAT LAST`)
//! and accepted by the session's checks; a message that was refused (too big, bare line ending,
//! refused chunk), reset, or cut off by the client ends with [`BodyError`], and the service's
//! reply is then never sent. A service must treat an error as "nothing was received".

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Chunks buffered between the connection and the mail service (each at most one socket read,
/// 16 KiB): the memory one transfer can hold beyond what the service itself buffers.
pub const BODY_CHANNEL_CHUNKS: usize = 4;

/// What travels from the connection to the service.
#[derive(Debug)]
pub(crate) enum Piece {
    Chunk(Bytes),
    End,
}

/// Why a body ended without being complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The session refused the data (size, line endings, refused chunk) or the transaction was
    /// reset, or the client went away: nothing was received.
    #[error("message data incomplete: the transfer was aborted")]
    Aborted,
    /// [`Body::collect`] found more data than its limit.
    #[error("message data larger than {0} octets")]
    TooLarge(usize),
}

/// The unstuffed message data of one transaction, streamed. See the module documentation.
#[derive(Debug)]
pub struct Body {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Channel(mpsc::Receiver<Piece>),
    Ready(Option<Bytes>),
    Done,
}

/// The connection's end of a [`Body`].
#[derive(Debug)]
pub(crate) struct BodySender(mpsc::Sender<Piece>);

impl BodySender {
    /// Passes a chunk on, waiting while the service is behind; `false` when the service has
    /// stopped reading (it answered already or failed).
    pub(crate) async fn chunk(&self, b: Bytes) -> bool {
        self.0.send(Piece::Chunk(b)).await.is_ok()
    }

    /// Marks the data complete.
    pub(crate) async fn end(self) {
        let _ = self.0.send(Piece::End).await;
    }
}

impl Body {
    /// A streamed body and the sender the connection feeds.
    pub(crate) fn channel() -> (BodySender, Body) {
        let (tx, rx) = mpsc::channel(BODY_CHANNEL_CHUNKS);
        (BodySender(tx), Body { inner: Inner::Channel(rx) })
    }

    /// A complete body already in memory (for tests and for services that build transactions
    /// themselves).
    pub fn from_bytes(b: impl Into<Bytes>) -> Body {
        Body { inner: Inner::Ready(Some(b.into())) }
    }

    /// The next chunk; `Ok(None)` once the data is complete.
    ///
    /// Cancel safety: dropping the future before it completes loses no chunk.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match &mut self.inner {
            Inner::Channel(rx) => match rx.recv().await {
                Some(Piece::Chunk(b)) => Ok(Some(b)),
                Some(Piece::End) => {
                    self.inner = Inner::Done;
                    Ok(None)
                }
                None => {
                    self.inner = Inner::Done;
                    Err(BodyError::Aborted)
                }
            },
            Inner::Ready(b) => match b.take() {
                Some(b) => Ok(Some(b)),
                None => {
                    self.inner = Inner::Done;
                    Ok(None)
                }
            },
            Inner::Done => Ok(None),
        }
    }

    /// The whole data in one buffer, at most `limit` octets: the simple path for services that
    /// handle small messages. A relay or anything that stores mail should stream with
    /// [`Body::chunk`] instead.
    pub async fn collect(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut out = BytesMut::new();
        while let Some(b) = self.chunk().await? {
            if out.len() + b.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn complete_only_with_end_marker() {
        let (tx, mut body) = Body::channel();
        let feed = tokio::spawn(async move {
            assert!(tx.chunk(Bytes::from_static(b"ab")).await);
            assert!(tx.chunk(Bytes::from_static(b"cd")).await);
            tx.end().await;
        });
        assert_eq!(&body.collect(10).await.unwrap()[..], b"abcd");
        feed.await.unwrap();

        let (tx, mut body) = Body::channel();
        assert!(tx.chunk(Bytes::from_static(b"ab")).await);
        drop(tx);
        assert_eq!(body.chunk().await.unwrap().as_deref(), Some(&b"ab"[..]));
        assert_eq!(body.chunk().await, Err(BodyError::Aborted), "a dropped sender is not an end");

        let (tx, mut body) = Body::channel();
        assert!(tx.chunk(Bytes::from_static(b"abcdef")).await);
        tx.end().await;
        assert_eq!(body.collect(3).await, Err(BodyError::TooLarge(3)));
        assert_eq!(&Body::from_bytes("xyz").collect(3).await.unwrap()[..], b"xyz");
    }
}
