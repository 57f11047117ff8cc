//! The relay's sending half end to end: multi-hop source routes, retries, DSNs, expiry, DNS.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use smtp_relay::dns::{DnsError, MxAnswer, MxResolver};
use smtp_relay::{Directory, RelayConfig, SourceRoutes};
use tests::{maildir_files, refused_port, wait_until, InProcess, Raw};

fn cfg(host: &str, dir: &Path, domains: &[&str], users: &[&str]) -> RelayConfig {
    let mut c = RelayConfig::new(host, dir);
    c.directory = Directory::new(domains.iter().map(|d| d.to_string()), users.iter().map(|u| u.to_string()));
    c.retry_interval = Duration::from_millis(300);
    c.max_retry_interval = Duration::from_millis(600);
    c
}

fn queue_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("queue/msg")).map(|d| d.count() == 0).unwrap_or(false)
}

fn read_all(files: &[std::path::PathBuf]) -> Vec<String> {
    files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
}

async fn submit(addr: SocketAddr, from: &str, rcpt: &str, body: &str) -> String {
    let (mut c, _) = Raw::connect(addr).await;
    c.cmd("EHLO client.test\r\n").await;
    let r = c.cmd(&format!("MAIL FROM:{from}\r\n")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd(&format!("RCPT TO:{rcpt}\r\n")).await;
    assert!(r.starts_with("250"), "{rcpt}: {r}");
    c.cmd("DATA\r\n").await;
    c.cmd(&format!("{body}\r\n.\r\n")).await
}

#[tokio::test]
async fn three_hops_along_an_rfc788_source_route() {
    let (da, db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = cfg("c.test", dc.path(), &["c.test", "d.test"], &[]);
    c.source_routes = SourceRoutes::Honor;
    let c = InProcess::start(c, None).await;
    let mut b = cfg("b.test", db.path(), &["b.test"], &[]);
    b.source_routes = SourceRoutes::Honor;
    b.routes.insert("c.test".into(), ("127.0.0.1".into(), c.addr.port()));
    let b = InProcess::start(b, None).await;
    let mut a = cfg("a.test", da.path(), &["a.test"], &[]);
    a.source_routes = SourceRoutes::Honor;
    a.routes.insert("b.test".into(), ("127.0.0.1".into(), b.addr.port()));
    let a = InProcess::start(a, None).await;
    let r =
        submit(a.addr, "<x@origin.test>", "<@a.test,@b.test,@c.test:user@d.test>", "Subject: routed\r\n\r\nhop hop")
            .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until("delivery at C", || maildir_files(dc.path(), "user").len() == 1).await;
    let m = read_all(&maildir_files(dc.path(), "user")).remove(0);
    // Each relay moved itself from the forward-path to the reverse-path (RFC 788 3.6).
    assert!(m.starts_with("Return-Path: <@c.test,@b.test,@a.test,x@origin.test>\n"), "{m}");
    assert_eq!(m.matches("Received: ").count(), 3, "{m}");
    assert!(m.contains("by c.test (Tern)") && m.contains("by b.test (Tern)") && m.contains("by a.test (Tern)"));
    assert!(m.contains("with ESMTPS"), "hops used STARTTLS: {m}");
    for r in [a, b, c] {
        r.stop().await;
    }
}

#[tokio::test]
async fn next_hop_down_then_up_and_restart_mid_retries() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b_socket, b_addr) = refused_port();
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.routes.insert("b.test".into(), ("127.0.0.1".into(), b_addr.port()));
    let a = InProcess::start(a_cfg.clone(), None).await;
    assert!(submit(a.addr, "<x@a.test>", "<bob@b.test>", "Subject: patience\r\n\r\nlater").await.starts_with("250"));
    let q = a.relay.queue();
    let id = q.list().await.unwrap().remove(0);
    let qa = q.clone();
    let id2 = id.clone();
    let attempts = move || {
        let (q, id) = (qa.clone(), id2.clone());
        async move { q.load(&id).await.map(|m| m.recipients[0].attempts).unwrap_or(0) }
    };
    tokio::time::timeout(tests::WAIT, async {
        while attempts().await < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("retried while the next hop is down");
    let m = q.load(&id).await.unwrap();
    assert!(
        m.recipients[0].last_error.as_ref().is_some_and(|r| r.to_string().contains("4.4.1")),
        "{:?}",
        m.recipients[0].last_error
    );
    // Restart A in the middle of its retries: the state survives.
    a.stop().await;
    let a = InProcess::start(a_cfg, None).await;
    let m = a.relay.queue().load(&id).await.unwrap();
    assert!(m.recipients[0].attempts >= 2);
    // B comes up and receives the message.
    let b = InProcess::start_held(b_socket, cfg("b.test", db.path(), &["b.test"], &[]), None).await;
    wait_until("delivery at B", || maildir_files(db.path(), "bob").len() == 1).await;
    wait_until("A's queue drained", || queue_empty(da.path())).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn permanent_failure_notifies_the_local_sender() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = InProcess::start(cfg("b.test", db.path(), &["b.test"], &["bob"]), None).await;
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.routes.insert("b.test".into(), ("127.0.0.1".into(), b.addr.port()));
    let a = InProcess::start(a_cfg, None).await;
    let r = submit(
        a.addr,
        "<alice@a.test> ENVID=env42",
        "<nobody@b.test> NOTIFY=FAILURE ORCPT=rfc822;nobody@b.test",
        "Subject: lost\r\nFrom: alice@a.test\r\n\r\nsecret",
    )
    .await;
    assert!(r.starts_with("250"));
    wait_until("the DSN in alice's mailbox", || maildir_files(da.path(), "alice").len() == 1).await;
    let dsn = read_all(&maildir_files(da.path(), "alice")).remove(0);
    for needle in [
        "Return-Path: <>\n",
        "Subject: Undelivered Mail Returned to Sender",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Type: message/delivery-status",
        "Original-Envelope-Id: env42",
        "Original-Recipient: rfc822; nobody@b.test",
        "Final-Recipient: rfc822; nobody@b.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; 127.0.0.1",
        "Diagnostic-Code: smtp; 550 5.1.1",
        "Content-Type: text/rfc822-headers\n\nReceived: from client.test",
        "Subject: lost\nFrom: alice@a.test\n\n--",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
    }
    assert!(!dsn.contains("secret"));
    wait_until("queues drained", || queue_empty(da.path())).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn notify_never_null_sender_and_expiry() {
    let da = tempfile::tempdir().unwrap();
    let (_held, dead) = refused_port();
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.routes.insert("dead.test".into(), ("127.0.0.1".into(), dead.port()));
    a_cfg.queue_lifetime = Duration::from_secs(1);
    let a = InProcess::start(a_cfg, None).await;
    // NOTIFY=NEVER: no report.
    assert!(submit(a.addr, "<quiet@a.test>", "<x@dead.test> NOTIFY=NEVER", "Subject: q\r\n\r\nq")
        .await
        .starts_with("250"));
    // Null reverse-path: never a report about a report.
    assert!(submit(a.addr, "<>", "<y@dead.test>", "Subject: n\r\n\r\nn").await.starts_with("250"));
    // Plain: expires and is reported as failed with 4.4.7.
    assert!(submit(a.addr, "<loud@a.test>", "<z@dead.test>", "Subject: e\r\n\r\ne").await.starts_with("250"));
    wait_until("expiry report", || maildir_files(da.path(), "loud").len() == 1).await;
    let dsn = read_all(&maildir_files(da.path(), "loud")).remove(0);
    assert!(dsn.contains("Action: failed") && dsn.contains("Status: 4.4.7"), "{dsn}");
    wait_until("queue drained", || queue_empty(da.path())).await;
    assert!(maildir_files(da.path(), "quiet").is_empty());
    let all_users: Vec<_> =
        std::fs::read_dir(da.path().join("mail")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(all_users, vec![std::ffi::OsString::from("loud")], "no other report was written");
    a.stop().await;
}

/// A fake DNS: MX records and addresses from a table.
struct FakeDns {
    port_host: String,
}

#[async_trait::async_trait]
impl MxResolver for FakeDns {
    async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        Ok(match domain {
            "mx.example" => MxAnswer::Hosts(vec!["broken-mx.example".into(), self.port_host.clone()]),
            "nullmx.example" => MxAnswer::NullMx,
            "flaky.example" => return Err(DnsError("SERVFAIL".into())),
            _ => MxAnswer::NoSuchDomain,
        })
    }
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        Ok(match host {
            "good-mx.example" => vec!["127.0.0.1".parse().unwrap()],
            _ => vec![],
        })
    }
}

#[tokio::test]
async fn mx_lookup_through_the_resolver_trait() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = InProcess::start(cfg("b.test", db.path(), &["mx.example"], &[]), None).await;
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.smtp_port = b.addr.port();
    let dns: Arc<dyn MxResolver> = Arc::new(FakeDns { port_host: "good-mx.example".into() });
    let a = InProcess::start(a_cfg, Some(dns)).await;
    assert!(submit(a.addr, "<s@a.test>", "<u@mx.example>", "Subject: via mx\r\n\r\nx").await.starts_with("250"));
    wait_until("delivery through MX", || maildir_files(db.path(), "u").len() == 1).await;
    // A null MX fails at once (RFC 7505) and is reported.
    assert!(submit(a.addr, "<s@a.test>", "<u@nullmx.example>", "Subject: null\r\n\r\nx").await.starts_with("250"));
    wait_until("null MX report", || maildir_files(da.path(), "s").len() == 1).await;
    let dsn = read_all(&maildir_files(da.path(), "s")).remove(0);
    assert!(dsn.contains("Status: 5.1.10") && dsn.contains("null MX"), "{dsn}");
    a.stop().await;
    b.stop().await;
}

/// A next hop that offers STARTTLS but answers the handshake with garbage. Counts connections
/// and records whether a message arrived in plaintext.
async fn broken_tls_server() -> (SocketAddr, Arc<std::sync::Mutex<(u32, bool)>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let state = Arc::new(std::sync::Mutex::new((0u32, false)));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            st.lock().unwrap().0 += 1;
            let st = st.clone();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                let _ = w.write_all(b"220 broken.test ESMTP\r\n").await;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-broken.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                        "STAR" => {
                            let _ = w.write_all(b"220 go ahead\r\n").await;
                            let _ = w.write_all(b"this is not a TLS server hello\r\n").await;
                            return;
                        }
                        "DATA" => {
                            let _ = w.write_all(b"354 go\r\n").await;
                            loop {
                                line.clear();
                                if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == ".\r\n" {
                                    break;
                                }
                            }
                            st.lock().unwrap().1 = true;
                            b"250 2.0.0 got it\r\n"
                        }
                        "QUIT" => b"221 bye\r\n",
                        _ => b"250 OK\r\n",
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (addr, state)
}

#[tokio::test]
async fn opportunistic_tls_downgrades_once_required_never() {
    let da = tempfile::tempdir().unwrap();
    let (addr, state) = broken_tls_server().await;
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.routes.insert("broken.test".into(), ("127.0.0.1".into(), addr.port()));
    a_cfg.routes.insert("strict.test".into(), ("127.0.0.1".into(), addr.port()));
    a_cfg.tls_per_domain.insert("strict.test".into(), smtp_client::TlsMode::Required);
    let a = InProcess::start(a_cfg, None).await;
    // Opportunistic: the failed handshake is followed by one plaintext delivery.
    assert!(submit(a.addr, "<s@a.test>", "<u@broken.test>", "Subject: d\r\n\r\nx").await.starts_with("250"));
    let st = state.clone();
    wait_until("plaintext delivery after the failed handshake", move || st.lock().unwrap().1).await;
    assert_eq!(state.lock().unwrap().0, 2, "one TLS attempt, one plaintext retry");
    wait_until("queue drained", || queue_empty(da.path())).await;
    // Required: never in plaintext; the message stays queued for retry.
    *state.lock().unwrap() = (0, false);
    assert!(submit(a.addr, "<s@a.test>", "<u@strict.test>", "Subject: r\r\n\r\nx").await.starts_with("250"));
    let st = state.clone();
    wait_until("two TLS attempts", move || st.lock().unwrap().0 >= 2).await;
    assert!(!state.lock().unwrap().1, "a required-TLS route never sends in plaintext");
    assert!(!queue_empty(da.path()));
    a.stop().await;
}

#[tokio::test]
async fn delay_warning_and_success_notice() {
    let da = tempfile::tempdir().unwrap();
    let (_held, dead) = refused_port();
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.routes.insert("slow.test".into(), ("127.0.0.1".into(), dead.port()));
    a_cfg.delay_warning = Some(Duration::from_secs(0));
    let a = InProcess::start(a_cfg, None).await;
    // Still retrying: one "delayed" report, not a failure.
    assert!(submit(a.addr, "<w@a.test>", "<x@slow.test> NOTIFY=DELAY,FAILURE", "Subject: slow\r\n\r\nx")
        .await
        .starts_with("250"));
    wait_until("delay warning", || maildir_files(da.path(), "w").len() == 1).await;
    let dsn = read_all(&maildir_files(da.path(), "w")).remove(0);
    assert!(dsn.contains("Action: delayed") && dsn.contains("Status: 4."), "{dsn}");
    assert!(!queue_empty(da.path()), "the message is still queued");
    // NOTIFY=SUCCESS on a local delivery: a "delivered" report.
    assert!(submit(a.addr, "<s@a.test>", "<bob@a.test> NOTIFY=SUCCESS", "Subject: ok\r\n\r\ny")
        .await
        .starts_with("250"));
    wait_until("success notice", || maildir_files(da.path(), "s").len() == 1).await;
    let dsn = read_all(&maildir_files(da.path(), "s")).remove(0);
    assert!(
        dsn.contains("Action: delivered")
            && dsn.contains("Status: 2.0.0")
            && dsn.contains("Final-Recipient: rfc822; bob@a.test"),
        "{dsn}"
    );
    assert_eq!(maildir_files(da.path(), "bob").len(), 1);
    // Only one delay warning per message, however many attempts follow.
    let q = a.relay.queue();
    tokio::time::timeout(tests::WAIT, async {
        loop {
            // One read of every envelope: no window between listing and loading.
            let mut attempts = 0;
            for e in q.scan_all().await.unwrap() {
                if let smtp_relay::ScanEntry::Queued(m, _) = e {
                    if m.recipients[0].path.to_string() == "<x@slow.test>" {
                        attempts = m.recipients[0].attempts;
                    }
                }
            }
            if attempts >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("more attempts");
    assert_eq!(maildir_files(da.path(), "w").len(), 1);
    a.stop().await;
}

/// One message for two next hops: each hop gets exactly its own recipients, all of them in one
/// transaction.
#[tokio::test]
async fn recipients_are_grouped_by_next_hop() {
    let (da, db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = InProcess::start(cfg("b.test", db.path(), &["b.test"], &["bob", "bea"]), None).await;
    let c = InProcess::start(cfg("c.test", dc.path(), &["c.test"], &["cat"]), None).await;
    let mut a_cfg = cfg("a.test", da.path(), &["a.test"], &[]);
    a_cfg.routes.insert("b.test".into(), ("127.0.0.1".into(), b.addr.port()));
    a_cfg.routes.insert("c.test".into(), ("127.0.0.1".into(), c.addr.port()));
    let a = InProcess::start(a_cfg, None).await;
    let (mut s, _) = Raw::connect(a.addr).await;
    s.cmd("EHLO client.test\r\n").await;
    let r = s
        .send_mail("MAIL", "x@a.test", &["bob@b.test", "cat@c.test", "bea@b.test"], "Subject: two hops\r\n\r\nhi")
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until("three deliveries", || {
        maildir_files(db.path(), "bob").len() == 1
            && maildir_files(db.path(), "bea").len() == 1
            && maildir_files(dc.path(), "cat").len() == 1
    })
    .await;
    wait_until("A's queue drained", || queue_empty(da.path())).await;
    assert!(maildir_files(dc.path(), "bob").is_empty() && maildir_files(db.path(), "cat").is_empty());
    // B's two copies came in one transaction: the same id in B's Received line.
    let b_id = |user: &str| {
        let m = read_all(&maildir_files(db.path(), user)).remove(0);
        let line = m.lines().find(|l| l.contains("by b.test (Tern)")).unwrap().to_string();
        line.split(" id ").nth(1).unwrap().split(|c: char| c == ';' || c.is_whitespace()).next().unwrap().to_string()
    };
    assert_eq!(b_id("bob"), b_id("bea"));
    for r in [a, b, c] {
        r.stop().await;
    }
}
