//! `tern queue`: look at and act on the spool, also while the server runs.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use smtp_relay::queue::RcptStatus;
use smtp_relay::{FsQueue, PgOptions, PgQueue, Queue, QueueError, ScanEntry};

/// Inspect or change the mail queue.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  tern queue list --data-dir ./tern-data")]
pub struct QueueArgs {
    #[command(subcommand)]
    pub action: QueueAction,
    /// Data directory.
    #[arg(long, global = true, default_value = "./tern-data")]
    pub data_dir: PathBuf,
    /// A shared queue in PostgreSQL (as given to `tern serve --queue`): any node's view.
    #[arg(long, global = true, value_name = "postgres://…")]
    pub queue: Option<String>,
}

/// The queue a command looks at: the data directory's spool (read-only, so it is safe while
/// the server runs) or a shared queue in PostgreSQL.
struct Opened {
    queue: Arc<dyn Queue>,
    /// The spool, for records set aside as damaged.
    spool: Option<(FsQueue, PathBuf)>,
}

impl Opened {
    async fn open(args: &QueueArgs) -> anyhow::Result<Opened> {
        match &args.queue {
            Some(url) => {
                let options = PgOptions { existing_only: true, pool_size: 2, ..PgOptions::new("tern-queue") };
                let q = PgQueue::connect(url, options).await?;
                Ok(Opened { queue: Arc::new(q), spool: None })
            }
            None => {
                let spool = args.data_dir.join("queue");
                let q = FsQueue::read_only(&spool)?;
                Ok(Opened { queue: Arc::new(q.clone()), spool: Some((q, spool)) })
            }
        }
    }

    /// A message that is not in the queue: set aside as damaged (spool), or not there.
    fn missing(&self, id: &str) -> anyhow::Result<(Option<smtp_relay::QueuedMessage>, String, String)> {
        match &self.spool {
            Some((q, dir)) => {
                let (envelope, why) = q.inspect_corrupt(id)?;
                Ok((envelope, why, format!("{}/corrupt", dir.display())))
            }
            None => anyhow::bail!("no queued message {id}"),
        }
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope, state and headers.
    Show {
        /// Queue id.
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Counts: messages and recipients by state, pending recipients by destination domain,
    /// bytes, the oldest message.
    Stats {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
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
    match (&args.action, &args.queue) {
        (QueueAction::Flush, None) => spool_flush(&args.data_dir).await,
        (QueueAction::Delete { id }, None) => spool_delete(&args.data_dir, id).await,
        _ => look(args).await,
    }
}

/// Flushes the spool through the running server (its control socket), else directly.
async fn spool_flush(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let spool = data_dir.join("queue");
    match smtp_relay::control::command(&data_dir.join("control.sock"), "FLUSH").await? {
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
    }
}

/// Deletes from the spool through the running server (its control socket), else directly.
async fn spool_delete(data_dir: &std::path::Path, id: &str) -> anyhow::Result<()> {
    match smtp_relay::control::command(&data_dir.join("control.sock"), &format!("DELETE {id}")).await? {
        Some(r) if r == "OK" => {
            println!("deleted {id}");
            Ok(())
        }
        Some(r) => anyhow::bail!("server said: {r}"),
        None => {
            let q = FsQueue::open(data_dir.join("queue"))?;
            q.remove(id).await.map_err(|e| match e {
                QueueError::NotFound(_) => anyhow::anyhow!("no queued message {id}"),
                e => e.into(),
            })?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

/// Looks at the queue (either kind), or changes a shared one: a flush makes every message due
/// (the nodes claim them within a second); a delete removes the row, and the node working on
/// it, if any, finds it gone when it stores its outcome.
async fn look(args: QueueArgs) -> anyhow::Result<()> {
    let opened = Opened::open(&args).await?;
    let q = &opened.queue;
    match args.action {
        QueueAction::List { json: false } => list(&opened).await,
        QueueAction::List { json: true } => list_json(&opened).await,
        QueueAction::Show { id, json: false } => show(&opened, &id).await,
        QueueAction::Show { id, json: true } => show_json(&opened, &id).await,
        QueueAction::Stats { json } => stats(&opened, json).await,
        QueueAction::Flush => {
            let leases = q.leases().ok_or_else(|| anyhow::anyhow!("this queue is not shared"))?;
            let n = leases.flush().await?;
            println!("flush requested: {n} messages due now");
            Ok(())
        }
        QueueAction::Delete { id } => {
            q.remove(&id).await.map_err(|e| match e {
                QueueError::NotFound(_) => anyhow::anyhow!("no queued message {id}"),
                e => e.into(),
            })?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

async fn list_json(opened: &Opened) -> anyhow::Result<()> {
    let all: Vec<serde_json::Value> = opened.queue.scan_all().await?.iter().map(entry_json).collect();
    println!("{}", serde_json::Value::Array(all));
    Ok(())
}

async fn list(opened: &Opened) -> anyhow::Result<()> {
    let entries = opened.queue.scan_all().await?;
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

async fn show(opened: &Opened, id: &str) -> anyhow::Result<()> {
    let q = &opened.queue;
    let m = match q.load(id).await {
        Ok(m) => m,
        Err(QueueError::NotFound(_)) => {
            let (envelope, why, aside) = opened.missing(id)?;
            println!("id:       {id}\nstate:    corrupt (set aside in {aside})\nproblem:  {why}");
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

/// A recipient's state as a word.
fn rcpt_state(s: &RcptStatus) -> &'static str {
    match s {
        RcptStatus::Pending => "pending",
        RcptStatus::Delivered => "delivered",
        RcptStatus::Failed(_) => "failed",
    }
}

/// One message (or damaged record) as JSON.
fn message_json(m: &smtp_relay::QueuedMessage, size: u64) -> serde_json::Value {
    let rcpts: Vec<serde_json::Value> = m
        .recipients
        .iter()
        .map(|r| {
            serde_json::json!({
                "to": r.path.to_string(),
                "state": rcpt_state(&r.status),
                "attempts": r.attempts,
                "next_attempt_ms": r.next_attempt,
                "last_error": r.last_error.as_ref().map(smtp_relay::dsn::one_line),
                "failure": match &r.status { RcptStatus::Failed(why) => Some(smtp_relay::dsn::one_line(why)), _ => None },
            })
        })
        .collect();
    serde_json::json!({
        "id": m.id,
        "state": "queued",
        "size": size,
        "verb": m.verb.to_string(),
        "from": m.from.to_string(),
        "arrival": m.arrival,
        "client": m.client.map(|c| c.to_string()),
        "helo": m.helo,
        "recipients": rcpts,
    })
}

fn entry_json(e: &ScanEntry) -> serde_json::Value {
    match e {
        ScanEntry::Queued(m, size) => message_json(m, *size),
        ScanEntry::Corrupt { id, reason, .. } => serde_json::json!({ "id": id, "state": "corrupt", "reason": reason }),
    }
}

async fn show_json(opened: &Opened, id: &str) -> anyhow::Result<()> {
    let q = &opened.queue;
    let v = match q.load(id).await {
        Ok(m) => {
            let body = q.body(id).await?;
            let head = body.head(64 * 1024).await?;
            let mut v = message_json(&m, body.len());
            v["headers"] = String::from_utf8_lossy(&head[..headers_end(&head)]).into_owned().into();
            v
        }
        Err(QueueError::NotFound(_)) => {
            let (envelope, why, _) = opened.missing(id)?;
            let mut v = serde_json::json!({ "id": id, "state": "corrupt", "reason": why });
            if let Some(m) = envelope {
                v["from"] = m.from.to_string().into();
                v["recipients"] = m.recipients.iter().map(|r| serde_json::Value::from(r.path.to_string())).collect();
            }
            v
        }
        Err(e) => return Err(e.into()),
    };
    println!("{v}");
    Ok(())
}

/// Queue counts for `tern queue stats`.
async fn stats(opened: &Opened, json: bool) -> anyhow::Result<()> {
    let q = &opened.queue;
    let (mut messages, mut corrupt, mut bytes) = (0u64, 0u64, 0u64);
    let mut by_state: std::collections::BTreeMap<&str, u64> =
        ["pending", "delivered", "failed"].into_iter().map(|s| (s, 0)).collect();
    let mut by_destination: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut oldest: Option<(u64, String)> = None;
    for e in q.scan_all().await? {
        match e {
            ScanEntry::Queued(m, size) => {
                messages += 1;
                bytes += size;
                if oldest.as_ref().is_none_or(|(a, _)| m.arrival < *a) {
                    oldest = Some((m.arrival, m.id.clone()));
                }
                for r in &m.recipients {
                    *by_state.entry(rcpt_state(&r.status)).or_default() += 1;
                    if r.status == RcptStatus::Pending {
                        let dest = match &r.path {
                            smtp_proto::ForwardPath::Path(p) => p.mailbox.domain().to_string().to_ascii_lowercase(),
                            smtp_proto::ForwardPath::Postmaster => "postmaster".to_string(),
                        };
                        *by_destination.entry(dest).or_default() += 1;
                    }
                }
            }
            ScanEntry::Corrupt { .. } => corrupt += 1,
        }
    }
    let mut dests: Vec<(String, u64)> = by_destination.into_iter().collect();
    dests.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let now = smtp_relay::QueuedMessage::now();
    let oldest = oldest.map(|(a, id)| (now.saturating_sub(a), id));
    if json {
        let v = serde_json::json!({
            "messages": messages,
            "corrupt": corrupt,
            "bytes": bytes,
            "recipients": by_state,
            "pending_by_destination": dests.iter().map(|(d, n)| serde_json::json!({ "destination": d, "recipients": n })).collect::<Vec<_>>(),
            "oldest": oldest.as_ref().map(|(age, id)| serde_json::json!({ "id": id, "age_seconds": age })),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "messages:   {messages} ({bytes} bytes){}",
        if corrupt > 0 { format!(", {corrupt} damaged") } else { String::new() }
    );
    println!(
        "recipients: {} pending, {} delivered, {} failed",
        by_state["pending"], by_state["delivered"], by_state["failed"]
    );
    if let Some((age, id)) = &oldest {
        println!("oldest:     {id}, {age} s old");
    }
    if !dests.is_empty() {
        println!("pending by destination:");
        for (d, n) in dests.iter().take(20) {
            println!("  {n:>8}  {d}");
        }
        if dests.len() > 20 {
            println!("  ({} more destinations)", dests.len() - 20);
        }
    }
    Ok(())
}
