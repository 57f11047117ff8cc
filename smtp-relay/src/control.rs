//! The control socket `DATA_DIR/control.sock`: terminals (`WATCH user`) and queue commands
//! (`FLUSH`, `DELETE id`) from `tern` while the server runs.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::deliver::terminal::Terminals;
use crate::schedule::SchedulerHandle;

/// Longest command line: a peer cannot grow memory by sending no newline.
const MAX_LINE: u64 = 1024;
/// Time to send the command line.
const LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the control socket at `path` (a stale socket file is replaced). The socket is made
/// owner-only (0600) whatever the umask: it can watch mail and delete the queue.
pub async fn serve(path: &Path, terminals: Arc<Terminals>, scheduler: SchedulerHandle) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
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
    tokio::time::timeout(LINE_TIMEOUT, (&mut r).take(MAX_LINE).read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if !line.ends_with('\n') {
        return w.write_all(b"ERR line too long or incomplete\n").await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owner_only_and_bounded_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (_handoff, scheduler) = crate::Scheduler::new(
            Arc::new(crate::RelayConfig::new("mx.test", dir.path())),
            Arc::new(crate::FsQueue::open(dir.path().join("queue")).unwrap()),
            Arc::default(),
        )
        .unwrap();
        let handle = scheduler.handle();
        let p = path.clone();
        tokio::spawn(async move { serve(&p, Arc::default(), handle).await });
        let start = std::time::Instant::now();
        while !path.exists() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "socket never appeared");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut s = UnixStream::connect(&path).await.unwrap();
        // A megabyte without a newline: refused after the bound, not buffered.
        let _ = s.write_all(&vec![b'A'; 1 << 20]).await;
        let mut reply = String::new();
        let _ = BufReader::new(&mut s).read_line(&mut reply).await;
        assert_eq!(reply, "ERR line too long or incomplete\n");
        assert_eq!(
            command(&path, "NOPE").await.unwrap().as_deref(),
            Some("ERR expected WATCH user, FLUSH or DELETE id")
        );
    }
}
