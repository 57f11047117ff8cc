//! `tern sink`: accept and discard mail, counting it (like Postfix's smtp-sink).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use smtp_proto::codes;
use smtp_server::{AcceptAll, Server, Transaction};

/// Accept and discard mail, counting messages and bytes.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  tern sink --listen 127.0.0.1:2526")]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Host name in the greeting.
    #[arg(long, default_value = "sink.localhost")]
    pub hostname: String,
    /// Most concurrent connections.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
}

pub async fn exec(args: SinkArgs) -> anyhow::Result<()> {
    let messages = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (m, b) = (messages.clone(), bytes.clone());
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let (m, b) = (m.clone(), b.clone());
        async move {
            // Counted as it streams; nothing is kept.
            while let Some(chunk) = tx.body.chunk().await? {
                b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            m.fetch_add(1, Ordering::Relaxed);
            Ok::<_, smtp_server::BodyError>(codes::ok())
        }
    });
    let server = Server::builder(args.hostname)
        .listen(args.listen)
        .options(|o| {
            o.max_connections = args.max_connections;
            o.max_connections_per_ip = args.max_connections;
        })
        .bind(AcceptAll, mail)
        .await?;
    let mut signals = crate::signals::Shutdown::install()?;
    let addr = server.local_addrs()[0];
    println!("tern sink listening on {addr}");
    let handle = server.shutdown_handle();
    let started = Instant::now();
    let run = tokio::spawn(server.run());
    signals.wait().await;
    handle.shutdown(Duration::from_secs(5)).await;
    let _ = run.await;
    let secs = started.elapsed().as_secs_f64();
    let n = messages.load(Ordering::Relaxed);
    println!(
        "tern sink: {n} messages, {} bytes in {secs:.1} s ({:.0} messages/s)",
        bytes.load(Ordering::Relaxed),
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}
