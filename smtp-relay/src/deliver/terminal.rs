//! Live terminals for RFC 788's SEND, SOML and SAML.
//!
//! A user "watches" by connecting to the relay's control socket (`DATA_DIR/control.sock`) and
//! sending `WATCH user`. Each message is then written as `MESSAGE <length>` and the data; the
//! terminal answers `OK` when it has shown it. A terminal that does not answer, or goes away,
//! counts as not delivered, so the mailbox path still applies where the verb allows it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How long a terminal has to acknowledge a message.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

struct Delivery {
    body: Bytes,
    ack: oneshot::Sender<bool>,
}

/// A registered terminal: its id and where to send it messages.
type Slot = (u64, mpsc::Sender<Delivery>);

/// The terminals currently watching, by user.
#[derive(Default)]
pub struct Terminals {
    by_user: Mutex<HashMap<String, Vec<Slot>>>,
    next: Mutex<u64>,
}

impl std::fmt::Debug for Terminals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminals").finish_non_exhaustive()
    }
}

impl Terminals {
    /// Whether `user` has a live terminal.
    pub fn is_active(&self, user: &str) -> bool {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&user.to_lowercase()) {
            Some(list) => {
                list.retain(|(_, tx)| !tx.is_closed());
                !list.is_empty()
            }
            None => false,
        }
    }

    /// Shows `body` on one of `user`'s terminals; true once a terminal acknowledged it.
    pub async fn deliver(&self, user: &str, body: Bytes) -> bool {
        let senders: Vec<mpsc::Sender<Delivery>> = {
            let map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&user.to_lowercase()).map(|l| l.iter().map(|(_, s)| s.clone()).collect()).unwrap_or_default()
        };
        for tx in senders {
            let (ack, wait) = oneshot::channel();
            if tx.send(Delivery { body: body.clone(), ack }).await.is_err() {
                continue;
            }
            if let Ok(Ok(true)) = tokio::time::timeout(ACK_TIMEOUT * 2, wait).await {
                return true;
            }
        }
        false
    }

    fn register(&self, user: &str) -> (u64, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(8);
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        self.by_user.lock().unwrap_or_else(|e| e.into_inner()).entry(user.to_lowercase()).or_default().push((id, tx));
        (id, rx)
    }

    fn unregister(&self, user: &str, id: u64) {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(&user.to_lowercase()) {
            list.retain(|(i, _)| *i != id);
        }
    }

    /// Runs a terminal session for `user` on a control-socket connection (after its `WATCH`
    /// line) until the terminal goes away.
    pub(crate) async fn attach(
        &self,
        mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut w: tokio::net::unix::OwnedWriteHalf,
        user: String,
    ) -> std::io::Result<()> {
        if !crate::directory::safe_local(&user) {
            w.write_all(b"ERR bad user name\n").await?;
            return Ok(());
        }
        let mut line = String::new();
        let (id, mut rx) = self.register(&user);
        w.write_all(format!("OK watching {user}\n").as_bytes()).await?;
        tracing::info!(%user, "terminal attached");
        let result = async {
            loop {
                tokio::select! {
                    d = rx.recv() => {
                        let Some(d) = d else { return Ok(()) };
                        w.write_all(format!("MESSAGE {}\n", d.body.len()).as_bytes()).await?;
                        w.write_all(&d.body).await?;
                        line.clear();
                        let ok = matches!(tokio::time::timeout(ACK_TIMEOUT, r.read_line(&mut line)).await, Ok(Ok(n)) if n > 0 && line.trim_end() == "OK");
                        let _ = d.ack.send(ok);
                        if !ok {
                            return Ok(());
                        }
                    }
                    n = r.read_line(&mut line) => {
                        // Anything unsolicited, or end of file, ends the session.
                        let _ = n?;
                        return Ok(());
                    }
                }
            }
        }
        .await;
        self.unregister(&user, id);
        tracing::info!(%user, "terminal detached");
        result
    }
}

/// The watching side: a connection that receives messages for one user.
pub struct TerminalClient {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl TerminalClient {
    /// Connects to the relay's terminal socket and starts watching for `user`.
    pub async fn watch(socket: &Path, user: &str) -> std::io::Result<TerminalClient> {
        let (r, mut w) = UnixStream::connect(socket).await?.into_split();
        w.write_all(format!("WATCH {user}\n").as_bytes()).await?;
        let mut r = BufReader::new(r);
        let mut line = String::new();
        r.read_line(&mut line).await?;
        if !line.starts_with("OK") {
            return Err(std::io::Error::other(line.trim_end().to_string()));
        }
        Ok(TerminalClient { r, w })
    }

    /// Waits for the next message, acknowledges it and returns it; `None` when the relay closed.
    pub async fn next_message(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let len: usize = line
            .trim_end()
            .strip_prefix("MESSAGE ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("unexpected line {line:?}")))?;
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        self.w.write_all(b"OK\n").await?;
        Ok(Some(body))
    }
}
