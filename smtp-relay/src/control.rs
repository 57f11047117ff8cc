//! The control socket `DATA_DIR/control.sock`: terminals (`WATCH user`) and queue commands
//! (`FLUSH`, `DELETE id`) from `tern` while the server runs.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::deliver::terminal::Terminals;
use crate::schedule::SchedulerHandle;

/// Serves the control socket at `path` (a stale socket file is replaced).
pub async fn serve(path: &Path, terminals: Arc<Terminals>, scheduler: SchedulerHandle) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (terminals, scheduler) = (terminals.clone(), scheduler.clone());
        tokio::spawn(async move {
            if let Err(e) = session(stream, terminals, scheduler).await {
                tracing::debug!(error = %e, "control session ended");
            }
        });
    }
}

async fn session(stream: UnixStream, terminals: Arc<Terminals>, scheduler: SchedulerHandle) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), r.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = line.trim_end();
    match line.split_once(' ').unwrap_or((line, "")) {
        ("WATCH", user) => terminals.attach(r, w, user.to_lowercase()).await,
        ("FLUSH", "") => {
            scheduler.flush();
            w.write_all(b"OK\n").await
        }
        ("DELETE", id) => match scheduler.delete(id).await {
            Ok(()) => w.write_all(b"OK\n").await,
            Err(e) => w.write_all(format!("ERR {e}\n").as_bytes()).await,
        },
        _ => w.write_all(b"ERR expected WATCH user, FLUSH or DELETE id\n").await,
    }
}

/// Sends one queue command to a running server; `Ok(None)` when no server listens.
pub async fn command(path: &Path, cmd: &str) -> std::io::Result<Option<String>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    Ok(Some(line.trim_end().to_string()))
}
