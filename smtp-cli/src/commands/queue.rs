//! `tern queue`: look at and act on the spool, also while the server runs.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use smtp_relay::queue::RcptStatus;
use smtp_relay::{FsQueue, Queue, QueueError, ScanEntry};

/// Inspect or change the mail queue.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  tern queue list --data-dir ./tern-data")]
pub struct QueueArgs {
    #[command(subcommand)]
    pub action: QueueAction,
    /// Data directory.
    #[arg(long, global = true, default_value = "./tern-data")]
    pub data_dir: PathBuf,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages.
    List,
    /// Show one message's envelope, state and headers.
    Show {
        /// Queue id.
        id: String,
    },
    /// Retry every pending recipient now.
    Flush,
    /// Remove a message without notifying anyone.
    Delete {
        /// Queue id.
        id: String,
    },
}

pub async fn exec(args: QueueArgs) -> anyhow::Result<()> {
    let spool = args.data_dir.join("queue");
    let control = args.data_dir.join("control.sock");
    match args.action {
        QueueAction::List => list(&spool).await,
        QueueAction::Show { id } => show(&spool, &id).await,
        QueueAction::Flush => match smtp_relay::control::command(&control, "FLUSH").await? {
            Some(r) if r == "OK" => {
                println!("flush requested");
                Ok(())
            }
            Some(r) => anyhow::bail!("server said: {r}"),
            None => {
                let q = FsQueue::open(&spool)?;
                let mut n = 0;
                for e in q.scan_all().await? {
                    if let ScanEntry::Queued(mut m, _) = e {
                        m.recipients.iter_mut().for_each(|r| r.next_attempt = 0);
                        q.update(&m).await?;
                        n += 1;
                    }
                }
                println!("no server running; {n} messages marked for retry at the next start");
                Ok(())
            }
        },
        QueueAction::Delete { id } => match smtp_relay::control::command(&control, &format!("DELETE {id}")).await? {
            Some(r) if r == "OK" => {
                println!("deleted {id}");
                Ok(())
            }
            Some(r) => anyhow::bail!("server said: {r}"),
            None => {
                let q = FsQueue::open(&spool)?;
                q.remove(&id).await.map_err(|e| match e {
                    QueueError::NotFound(_) => anyhow::anyhow!("no queued message {id}"),
                    e => e.into(),
                })?;
                println!("deleted {id}");
                Ok(())
            }
        },
    }
}

async fn list(spool: &Path) -> anyhow::Result<()> {
    let q = FsQueue::read_only(spool)?;
    let entries = q.scan_all().await?;
    if entries.is_empty() {
        println!("queue is empty");
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:>8} {:<7} {:<6} {:<30} recipients (pending/total)\n",
        "ID", "SIZE", "STATE", "VERB", "FROM"
    ));
    for e in entries {
        match e {
            ScanEntry::Queued(m, size) => {
                let pending = m.recipients.iter().filter(|r| r.status == RcptStatus::Pending).count();
                out.push_str(&format!(
                    "{:<24} {size:>8} {:<7} {:<6} {:<30} {pending}/{}\n",
                    m.id,
                    "queued",
                    m.verb,
                    m.from.to_string(),
                    m.recipients.len()
                ));
            }
            ScanEntry::Corrupt { id, reason, .. } => {
                out.push_str(&format!("{id:<24} {:>8} {:<7} {reason}\n", "-", "corrupt"));
            }
        }
    }
    use std::io::Write;
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

async fn show(spool: &Path, id: &str) -> anyhow::Result<()> {
    let q = FsQueue::read_only(spool)?;
    let m = match q.load(id).await {
        Ok(m) => m,
        Err(QueueError::NotFound(_)) => {
            let (envelope, why) = q.inspect_corrupt(id)?;
            println!("id:       {id}\nstate:    corrupt (set aside in {}/corrupt)\nproblem:  {why}", spool.display());
            if let Some(m) = envelope {
                println!("from:     {}", m.from);
                for r in &m.recipients {
                    println!("to:       {}", r.path);
                }
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let body = q.body(id).await?;
    println!("id:       {}", m.id);
    println!("verb:     {}", m.verb);
    println!("from:     {}", m.from);
    println!(
        "arrival:  {}",
        smtp_proto::date::rfc5322_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.arrival))
    );
    if let Some(c) = m.client {
        println!("client:   {c} ({})", m.helo.as_deref().unwrap_or("?"));
    }
    for r in &m.recipients {
        let state = match &r.status {
            RcptStatus::Pending => format!("pending, {} attempts", r.attempts),
            RcptStatus::Delivered => "delivered".to_string(),
            RcptStatus::Failed(why) => format!("failed: {}", smtp_relay::dsn::one_line(why)),
        };
        println!("to:       {} [{state}]", r.path);
        if let Some(e) = &r.last_error {
            println!("          last error: {}", smtp_relay::dsn::one_line(e));
        }
    }
    let head = body.head(64 * 1024).await?;
    let end = headers_end(&head);
    println!("size:     {} bytes\n\n{}", body.len(), crate::commands::printable_lines(&head[..end]));
    Ok(())
}

fn headers_end(b: &[u8]) -> usize {
    b.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(b.len())
}
