//! Observability end to end: a running `tern serve --metrics-listen`, mail sent (accepted,
//! refused, over full and resumed TLS), delivered locally and deferred remotely, then
//! `/metrics` scraped and parsed by Python's prometheus_client parser (an independent reader of
//! the text format); `/healthz` while serving and while shutting down; the Grafana dashboard
//! queries only metrics the server exports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use smtp_client::{CertVerify, ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;
use tests::{maildir_files, refused_port, run_bounded, wait_until, Raw, Tern, WAIT};

/// One HTTP GET: (status, body).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The samples of a scrape, parsed by prometheus_client: "name{k=v,...}" (labels sorted) to
/// value.
fn parse(text: &str) -> HashMap<String, f64> {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {}\n\
        for fam in text_string_to_metric_families(sys.stdin.read()):\n    \
            for s in fam.samples:\n        \
                labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n        \
                out[f'{s.name}{{{labels}}}'] = s.value\n\
        print(json.dumps(out))\n";
    let (code, out, err) = run_bounded(std::process::Command::new("python3").args(["-c", script]), text.as_bytes());
    assert_eq!(code, 0, "prometheus_client could not parse the scrape: {err}\n{text}");
    serde_json::from_str(&out).unwrap()
}

/// A sample's value (0 when absent).
fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[tokio::test]
async fn counters_match_what_was_done_and_health_follows_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (_held, dead) = refused_port();
    let route = format!("dead.test={dead}");
    let tern = Tern::serve(dir.path(), &["--metrics-listen", "127.0.0.1:0", "--route", &route]);
    let m = tern.metrics.expect("metrics address printed");
    assert_eq!(get(m, "/healthz").await.unwrap(), (200, "ok\n".to_string()));
    assert_eq!(get(m, "/nothing").await.unwrap().0, 404);

    // Two TLS connections from one client: a full handshake, then a resumed one.
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::Required;
    o.verify = CertVerify::Insecure;
    let client = SmtpClient::new(o).unwrap();
    let body = || bytes::Bytes::from_static(b"Subject: m\r\n\r\nhello\r\n").into();
    let mut c = client.connect_addr(tern.addr, "127.0.0.1").await.unwrap();
    // One local recipient (delivered on receipt), two (through the queue), one remote (deferred).
    for to in [&["u@mx.test"][..], &["u@mx.test", "v@mx.test"], &["x@dead.test"]] {
        let mut env = Envelope::from_str_addr("s@client.test").unwrap();
        for t in to {
            env = env.to_str_addr(t).unwrap();
        }
        assert!(c.send(&env, body()).await.unwrap().all_accepted());
    }
    c.quit().await.unwrap();
    let c = client.connect_addr(tern.addr, "127.0.0.1").await.unwrap();
    c.quit().await.unwrap();
    assert_eq!(client.handshakes(), (1, 1), "full, then resumed");
    // In plaintext: a bad command (500) and a recipient the policy refuses (SEND to a remote
    // address: 550).
    let (mut raw, _) = Raw::connect(tern.addr).await;
    raw.cmd("EHLO raw.test\r\n").await;
    assert!(raw.cmd("BOGUS\r\n").await.starts_with("500"));
    assert!(raw.cmd("SEND FROM:<s@client.test>\r\n").await.starts_with("250"));
    assert!(raw.cmd("RCPT TO:<r@remote.test>\r\n").await.starts_with("550"));
    raw.cmd("QUIT\r\n").await;

    let d = dir.path().to_path_buf();
    wait_until("three local deliveries", move || {
        maildir_files(&d, "u").len() == 2 && maildir_files(&d, "v").len() == 1
    })
    .await;
    let deferred = "tern_deliveries_total{kind=remote,outcome=deferred}";
    let start = std::time::Instant::now();
    let s = loop {
        let s = scrape(m).await;
        // Every delivery task finished and counted (the in-flight gauge drops after the
        // outcome is counted), every connection closed.
        let settled = value(&s, "tern_deliveries_in_flight{}") == 0.0
            && value(&s, "tern_connections_open{}") == 0.0
            && value(&s, "tern_queue_messages{}") == 1.0;
        if value(&s, deferred) >= 1.0 && settled {
            break s;
        }
        assert!(start.elapsed() < WAIT, "no deferred remote attempt: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = [
        ("tern_messages_accepted_total{}", 3.0),
        ("tern_accept_duration_seconds_count{}", 3.0),
        ("tern_recipients_total{result=accepted}", 4.0),
        ("tern_recipients_total{result=refused}", 1.0),
        ("tern_connections_accepted_total{}", 3.0),
        ("tern_connections_open{}", 0.0),
        ("tern_tls_sessions_total{handshake=full,version=TLSv1.3}", 1.0),
        ("tern_tls_sessions_total{handshake=resumed,version=TLSv1.3}", 1.0),
        ("tern_tls_sessions_total{handshake=full,version=TLSv1.2}", 0.0),
        ("tern_deliveries_total{kind=local,outcome=delivered}", 3.0),
        ("tern_deliveries_total{kind=remote,outcome=delivered}", 0.0),
        ("tern_deliveries_total{kind=remote,outcome=failed}", 0.0),
        ("tern_delivery_duration_seconds_count{kind=local}", 2.0),
        ("tern_queue_residence_seconds_count{}", 2.0),
        ("tern_queue_messages{}", 1.0),
        ("tern_deliveries_in_flight{}", 0.0),
        ("tern_auth_failures_total{}", 0.0),
    ];
    for (key, want) in expect {
        assert_eq!(value(&s, key), want, "{key}");
    }
    assert_eq!(value(&s, "tern_replies_rejected_total{class=5xx}"), 2.0, "500 and 550");
    assert_eq!(value(&s, "tern_replies_rejected_total{class=4xx}"), 0.0);
    assert!(value(&s, "tern_accepted_bytes_total{}") > 3.0 * 20.0);
    assert!(value(&s, "tern_queue_bytes{}") > 0.0);
    assert!(value(&s, "tern_delivery_duration_seconds_count{kind=remote}") >= 1.0);
    // No label takes unbounded values: no addresses, domains or ids anywhere.
    for key in s.keys() {
        assert!(!key.contains('@') && !key.contains(".test") && !key.contains("127.0.0.1"), "{key}");
    }

    // Every metric the dashboard queries is exported.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/grafana/tern.json")).unwrap(),
    )
    .unwrap();
    let names: std::collections::BTreeSet<&str> = s.keys().map(|k| k.split('{').next().unwrap()).collect();
    let mut queried = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("tern_"))
            {
                assert!(names.contains(word), "panel {:?} queries {word}, which is not exported", panel["title"]);
                queried += 1;
            }
        }
    }
    assert!(queried >= 20, "{queried}");
    for name in smtp_relay::observe::metric_names() {
        assert!(names.iter().any(|n| n.starts_with(name)), "{name} registered but not exported");
    }

    // Shutdown with a transaction in flight: /healthz says 503 while it finishes.
    let (mut raw, _) = Raw::connect(tern.addr).await;
    raw.cmd("EHLO raw.test\r\n").await;
    raw.cmd("MAIL FROM:<s@client.test>\r\n").await;
    raw.cmd("RCPT TO:<u@mx.test>\r\n").await;
    assert!(raw.cmd("DATA\r\n").await.starts_with("354"));
    let _ = std::process::Command::new("kill").arg("-TERM").arg(tern.child.id().to_string()).status();
    let start = std::time::Instant::now();
    loop {
        let (status, body) = get(m, "/healthz").await.unwrap();
        if status == 503 {
            assert_eq!(body, "shutting down\n");
            break;
        }
        assert!(start.elapsed() < WAIT, "still {status} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(raw.cmd("Subject: last\r\n\r\nin flight\r\n.\r\n").await.starts_with("250"));
    let status = tern.terminate();
    assert!(status.success(), "{status:?}");
    assert!(get(m, "/healthz").await.is_err(), "the metrics listener is closed after exit");
}
