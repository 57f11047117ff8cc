//! `tern bench`: a load generator (like Postfix's smtp-source) with a latency report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use smtp_client::{CertVerify, ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;

/// Send many messages over concurrent connections and report throughput and latency.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  tern bench --server 127.0.0.1:2526 --connections 20 --messages 10000 --size 1024")]
pub struct BenchArgs {
    /// The server, HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Messages to send in all.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub recipients: usize,
    /// Use STARTTLS (certificates are not verified: a load tool).
    #[arg(long)]
    pub tls: bool,
    /// Stop after this many seconds even if messages remain.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Domain of the recipients (user0@DOMAIN, user1@DOMAIN, ...).
    #[arg(long, default_value = "sink.localhost")]
    pub rcpt_domain: String,
    /// Open a new connection for every message instead of reusing one.
    #[arg(long)]
    pub no_reuse: bool,
    /// Also write the results as JSON to FILE: totals, percentiles and the latency
    /// histogram's buckets, for plotting.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Totals {
    latency: Option<Histogram<u64>>,
    failures: BTreeMap<String, u64>,
}

pub async fn exec(args: BenchArgs) -> anyhow::Result<()> {
    let (host, port) = crate::commands::split_host_port(&args.server)?;
    let mut options = ClientOptions::new(Domain::parse("bench.localhost")?);
    options.tls = if args.tls { TlsMode::Required } else { TlsMode::None };
    options.verify = CertVerify::Insecure;
    let client = SmtpClient::new(options)?;
    let body = bench_body(args.size);
    let mut env = Envelope::from_str_addr("bench@bench.localhost")?;
    for i in 0..args.recipients.max(1) {
        env = env.to_str_addr(&format!("user{i}@{}", args.rcpt_domain))?;
    }
    let env = Arc::new(env);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs(d));
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(args.messages);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (client, env, body, next, done, totals, bar) =
            (client.clone(), env.clone(), body.clone(), next.clone(), done.clone(), totals.clone(), bar.clone());
        let (host, total, reuse) = (host.clone(), args.messages, !args.no_reuse);
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            let mut conn = None;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t0 = Instant::now();
                if conn.is_none() {
                    match client.connect(&host, port).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            *failures.entry(failure_key(&e)).or_default() += 1;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().expect("connected above");
                match c.send(&env, body.clone().into()).await {
                    Ok(o) if o.all_accepted() => {
                        let _ = hist.record(t0.elapsed().as_micros() as u64);
                    }
                    Ok(o) => {
                        let code = o.reply.map(|r| r.code().to_string()).unwrap_or_else(|| "rcpt".into());
                        *failures.entry(code).or_default() += 1;
                    }
                    Err(e) => {
                        *failures.entry(failure_key(&e)).or_default() += 1;
                        conn = None;
                    }
                }
                if !reuse {
                    if let Some(c) = conn.take() {
                        let _ = c.quit().await;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
            if let Some(c) = conn {
                let _ = c.quit().await;
            }
            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
            match &mut t.latency {
                Some(h) => {
                    let _ = h.add(&hist);
                }
                None => t.latency = Some(hist),
            }
            for (k, v) in failures {
                *t.failures.entry(k).or_default() += v;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    let t = totals.lock().unwrap_or_else(|e| e.into_inner());
    let ok = t.latency.as_ref().map_or(0, |h| h.len());
    let ms = |v: u64| v as f64 / 1000.0;
    println!("tern bench: {} sent, {ok} accepted in {secs:.2} s", done.load(Ordering::Relaxed));
    println!("  throughput: {:.0} messages/s, {:.2} MB/s", ok as f64 / secs, ok as f64 * args.size as f64 / secs / 1e6);
    if let Some(h) = &t.latency {
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
        print!("{}", bars(&buckets(h), 40));
    }
    let failed: u64 = t.failures.values().sum();
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "server": args.server,
            "connections": args.connections,
            "size": args.size,
            "recipients": args.recipients,
            "tls": args.tls,
            "sent": done.load(Ordering::Relaxed),
            "accepted": ok,
            "seconds": secs,
            "messages_per_second": ok as f64 / secs,
            "failures": t.failures,
            "latency_ms": t.latency.as_ref().map(|h| serde_json::json!({
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "max": ms(h.max()),
                "buckets": buckets(h).iter().map(|(le, n)| serde_json::json!({ "le_ms": le, "count": n })).collect::<Vec<_>>(),
            })),
        });
        std::fs::write(path, format!("{v:#}\n")).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    println!("  failures: {failed}");
    for (k, v) in &t.failures {
        println!("    {k}: {v}");
    }
    let (full, resumed) = client.handshakes();
    if args.tls {
        println!("  TLS handshakes: {full} full, {resumed} resumed");
    }
    if failed > 0 {
        anyhow::bail!("{failed} messages failed");
    }
    Ok(())
}

/// The latency histogram in buckets whose upper bounds double from 0.1 ms: (bound in ms,
/// messages in the bucket), from the first non-empty bucket to the last.
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let (mut lower, mut upper) = (0u64, 100u64);
    while lower <= h.max() {
        out.push((upper as f64 / 1000.0, h.count_between(lower, upper.saturating_sub(1))));
        lower = upper;
        upper = upper.saturating_mul(2);
    }
    let first = out.iter().position(|(_, n)| *n > 0).unwrap_or(0);
    out.split_off(first)
}

/// Text bars for `buckets`, the longest `width` characters.
fn bars(buckets: &[(f64, u64)], width: usize) -> String {
    let most = buckets.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let mut out = String::new();
    for (le, n) in buckets {
        let len = ((*n as f64 / most as f64) * width as f64).ceil() as usize;
        out.push_str(&format!("  < {le:>9.1} ms {n:>9} {}\n", "#".repeat(len)));
    }
    out
}

fn failure_key(e: &smtp_client::Error) -> String {
    match e.reply() {
        Some(r) => r.code().to_string(),
        None => format!("{e}").chars().take(40).collect(),
    }
}

/// A message of `size` bytes: headers, then 76-character lines.
fn bench_body(size: usize) -> bytes::Bytes {
    let mut v = b"From: bench@bench.localhost\r\nTo: user0@sink.localhost\r\nSubject: tern bench\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    while v.len() < size {
        v.extend_from_slice(&line[..line.len().min(size - v.len()).max(2)]);
    }
    if !v.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_double_and_bars_scale() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [150, 160, 170, 900, 5_000] {
            h.record(v).unwrap();
        }
        let b = buckets(&h);
        assert_eq!(b[0], (0.2, 3), "100-199 µs: {b:?}");
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert!(b.windows(2).all(|w| (w[1].0 - 2.0 * w[0].0).abs() < 1e-9), "{b:?}");
        let text = bars(&b, 10);
        assert!(text.lines().next().unwrap().ends_with(&"#".repeat(10)), "{text}");
        assert!(text.contains("< 0.2 ms") || text.contains("<       0.2 ms"), "{text}");
    }
}
