//! LMTP delivery (RFC 2033) to a mail store: a scripted LMTP server that answers each
//! recipient on its own after the data (250, 452, 550); the relay records each outcome.

use std::sync::{Arc, Mutex};

use smtp_relay::deliver::lmtp::LmtpTarget;
use smtp_relay::queue::{QueuedMessage, RcptStatus};
use smtp_relay::{Directory, RelayConfig};
use tests::{InProcess, Raw};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// An LMTP server on TCP: see [`lmtp_session`]. Returns its address and the commands it saw.
async fn store() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(lmtp_session(tcp, seen2.clone()));
        }
    });
    (addr, seen)
}

/// An LMTP server on a Unix socket at `path`: see [`lmtp_session`].
fn unix_store(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(lmtp_session(s, seen2.clone()));
        }
    });
    seen
}

/// One LMTP session: RCPT of `nobody` is refused; after the data `alice` gets 250, `bob` 452
/// (over quota) and anyone else 550. Every command goes to `seen`.
async fn lmtp_session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static>(
    stream: S,
    seen: Arc<Mutex<Vec<String>>>,
) {
    {
        {
            {
                let (r, mut w) = tokio::io::split(stream);
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 store LMTP\r\n").await;
                let mut rcpts: Vec<String> = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_string();
                    seen.lock().unwrap().push(cmd.clone());
                    let upper = cmd.to_ascii_uppercase();
                    let reply = if upper.starts_with("LHLO") {
                        "250-store\r\n250 ENHANCEDSTATUSCODES\r\n".to_string()
                    } else if upper.starts_with("RCPT") && upper.contains("NOBODY") {
                        "550 5.1.1 no such user\r\n".to_string()
                    } else if upper.starts_with("RCPT") {
                        rcpts.push(upper.clone());
                        "250 2.1.5 ok\r\n".to_string()
                    } else if upper == "DATA" {
                        let _ = w.write_all(b"354 go\r\n").await;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                        }
                        std::mem::take(&mut rcpts)
                            .iter()
                            .map(|r| {
                                if r.contains("ALICE") {
                                    "250 2.0.0 stored\r\n"
                                } else if r.contains("BOB") {
                                    "452 4.2.2 over quota\r\n"
                                } else {
                                    "550 5.2.1 mailbox disabled\r\n"
                                }
                            })
                            .collect()
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        "250 2.0.0 ok\r\n".to_string()
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A relay for a.test whose local mailboxes go to the LMTP store on `port`.
async fn relay(dir: &std::path::Path, port: u16) -> InProcess {
    relay_to(dir, LmtpTarget::Tcp("127.0.0.1".into(), port)).await
}

/// A relay for a.test whose local mailboxes go to the LMTP store at `target`.
async fn relay_to(dir: &std::path::Path, target: LmtpTarget) -> InProcess {
    let mut cfg = RelayConfig::new("a.test", dir);
    cfg.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
    cfg.lmtp = Some(target);
    cfg.retry_interval = std::time::Duration::from_secs(3600);
    InProcess::start(cfg, None).await
}

/// Submits one message from s@a.test to `to` and returns its queue id.
async fn submit(a: &InProcess, to: &[&str], data: &str) -> String {
    let (mut c, _) = Raw::connect(a.addr).await;
    c.cmd("EHLO client.test\r\n").await;
    let r = c.send_mail("MAIL", "s@a.test", to, data).await;
    assert!(r.starts_with("250"), "{r}");
    r.rsplit(' ').next().unwrap().trim().to_string()
}

/// The queued message `id` once every recipient still pending has been tried.
async fn attempted(a: &InProcess, id: &str) -> QueuedMessage {
    let q = a.relay.queue();
    let start = std::time::Instant::now();
    loop {
        let m = q.load(id).await;
        if let Ok(m) = &m {
            if m.recipients.iter().all(|r| r.status != RcptStatus::Pending || r.attempts >= 1) {
                return m.clone();
            }
        }
        assert!(start.elapsed() < tests::WAIT, "no attempt recorded: {m:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_recipient_gets_the_stores_own_answer() {
    let (addr, seen) = store().await;
    let dir = tempfile::tempdir().unwrap();
    let a = relay(dir.path(), addr.port()).await;
    let to = ["alice@a.test", "bob@a.test", "carol@a.test", "nobody@a.test"];
    let id = submit(&a, &to, "Subject: to the store\r\n\r\nhello\r\n").await;
    let m = attempted(&a, &id).await;
    let state: Vec<String> = m
        .recipients
        .iter()
        .map(|r| match &r.status {
            RcptStatus::Delivered => "delivered".to_string(),
            RcptStatus::Failed(why) => format!("failed {}", why.code()),
            RcptStatus::Pending => format!("pending {}", r.last_error.as_ref().map_or(0, |e| e.code())),
        })
        .collect();
    assert_eq!(state, ["delivered", "pending 452", "failed 550", "failed 550"], "{m:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "LHLO a.test", "{seen:?}");
    assert!(seen.iter().any(|l| l.eq_ignore_ascii_case("RCPT TO:<alice@a.test>")), "{seen:?}");
    // Nothing went to a Maildir: the store is the only delivery.
    assert!(tests::maildir_files(dir.path(), "alice").is_empty());
    a.stop().await;
}

#[tokio::test]
async fn a_store_that_is_down_defers_and_nothing_is_lost() {
    let (_held, dead) = tests::refused_port();
    let dir = tempfile::tempdir().unwrap();
    let a = relay(dir.path(), dead.port()).await;
    let id = submit(&a, &["alice@a.test"], "Subject: later\r\n\r\nx\r\n").await;
    let r = &attempted(&a, &id).await.recipients[0];
    assert_eq!(r.status, RcptStatus::Pending);
    assert!(r.attempts >= 1 && r.last_error.as_ref().is_some_and(|e| e.code() / 100 == 4), "{r:?}");
    a.stop().await;
}

#[tokio::test]
async fn a_store_on_a_unix_socket_gets_the_mail_too() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lmtp.sock");
    let seen = unix_store(&socket);
    let a = relay_to(dir.path(), LmtpTarget::Unix(socket)).await;
    // Bob (452) keeps the message queued, so its state can be read.
    let to = ["alice@a.test", "carol@a.test", "bob@a.test"];
    let id = submit(&a, &to, "Subject: over a socket\r\n\r\nhi\r\n").await;
    let m = attempted(&a, &id).await;
    assert_eq!(m.recipients[0].status, RcptStatus::Delivered, "{m:?}");
    assert!(matches!(&m.recipients[1].status, RcptStatus::Failed(r) if r.code() == 550), "{m:?}");
    assert_eq!(m.recipients[2].last_error.as_ref().map(|e| e.code()), Some(452), "{m:?}");
    assert_eq!(seen.lock().unwrap()[0], "LHLO a.test");
    a.stop().await;
}

#[tokio::test]
async fn tls_over_a_unix_socket_is_refused_not_attempted() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = smtp_client::ClientOptions::new(smtp_proto::Domain::parse("a.test").unwrap());
    o.tls = smtp_client::TlsMode::Required;
    let client = smtp_client::SmtpClient::new(o).unwrap();
    let e = client.connect_unix(&dir.path().join("none.sock")).await.unwrap_err();
    assert!(e.to_string().contains("Unix socket"), "{e}");
    o = smtp_client::ClientOptions::new(smtp_proto::Domain::parse("a.test").unwrap());
    o.tls = smtp_client::TlsMode::None;
    let e = smtp_client::SmtpClient::new(o).unwrap().connect_unix(&dir.path().join("none.sock")).await.unwrap_err();
    assert!(e.to_string().contains("none.sock"), "{e}");
}
