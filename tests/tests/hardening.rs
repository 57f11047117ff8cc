//! Hostile clients and hostile next hops, end to end (issue 11): each test reproduces an attack
//! and shows it no longer works.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use smtp_proto::codes;
use smtp_relay::{Directory, RelayConfig};
use smtp_server::{Decision, PolicyKind, PolicyRequest, Server, Transaction};
use tests::{maildir_files, wait_until, InProcess, Raw};

fn cfg(dir: &Path) -> RelayConfig {
    let mut c = RelayConfig::new("mx.local.test", dir);
    c.directory = Directory::new(["local.test".to_string()], ["bob".into(), "victim".into()]);
    // Only 127.0.0.1 is trusted: 127.0.0.2 plays a client from anywhere.
    c.trusted = vec!["127.0.0.1/32".parse().unwrap()];
    c.retry_interval = Duration::from_secs(1);
    c
}

/// A next hop on 127.0.0.1 with these services; its port.
async fn next_hop<P: smtp_server::PolicyService, M: smtp_server::MailService>(
    tweak: impl FnOnce(&mut smtp_server::ServerOptions),
    policy: P,
    mail: M,
) -> u16 {
    let hop = Server::builder("hop.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .options(tweak)
        .bind(policy, mail)
        .await
        .unwrap();
    let port = hop.local_addrs()[0].port();
    tokio::spawn(hop.run());
    port
}

/// The relay's configuration with `fwd@local.test` forwarded to `someone@remote.test`, routed to
/// the next hop on `port` without TLS.
fn forwarding(dir: &Path, port: u16) -> RelayConfig {
    let aliases = dir.join("aliases");
    std::fs::write(&aliases, "fwd: someone@remote.test\n").unwrap();
    let mut c = cfg(dir);
    c.directory.load_aliases(&aliases).unwrap();
    c.routes.insert("remote.test".into(), ("127.0.0.1".into(), port));
    c.outbound_tls = smtp_client::TlsMode::None;
    c
}

fn queue_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("queue/msg")).map(|d| d.count() == 0).unwrap_or(false)
}

async fn transaction(from_ip: &str, addr: SocketAddr, mail: &str, rcpt: &str) -> String {
    let (mut c, _) = Raw::connect_from(from_ip.parse().unwrap(), addr).await;
    c.cmd("EHLO client.test\r\n").await;
    let r = c.cmd(&format!("MAIL FROM:{mail}\r\n")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd(&format!("RCPT TO:{rcpt}\r\n")).await;
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA\r\n").await.starts_with("354"));
    c.cmd("Subject: spam\r\n\r\nthe whole spam\r\n.\r\n").await
}

/// Item 1: `MAIL FROM:<victim> RET=FULL` + `NOTIFY=SUCCESS` from anywhere must not make this
/// host mail the victim a copy; a trusted sender still gets its success notice.
#[tokio::test]
async fn success_notices_only_for_trusted_senders() {
    let dir = tempfile::tempdir().unwrap();
    let relay = InProcess::start(cfg(dir.path()), None).await;
    let r =
        transaction("127.0.0.2", relay.addr, "<victim@local.test> RET=FULL", "<bob@local.test> NOTIFY=SUCCESS,FAILURE")
            .await;
    assert!(r.starts_with("250"), "{r}");
    let d = dir.path().to_path_buf();
    wait_until("delivered, queue empty", move || maildir_files(&d, "bob").len() == 1 && queue_empty(&d)).await;
    assert!(maildir_files(dir.path(), "victim").is_empty(), "no notice for an untrusted sender");
    // The same from a trusted address: RFC 3461 as written.
    let r =
        transaction("127.0.0.1", relay.addr, "<victim@local.test> RET=FULL", "<bob@local.test> NOTIFY=SUCCESS").await;
    assert!(r.starts_with("250"), "{r}");
    let d = dir.path().to_path_buf();
    wait_until("the success notice", move || maildir_files(&d, "victim").len() == 1).await;
    let notice = std::fs::read_to_string(&maildir_files(dir.path(), "victim")[0]).unwrap();
    assert!(notice.contains("Action: delivered") && notice.contains("the whole spam"), "{notice}");
    relay.stop().await;
}

/// Item 1: a failure notice for untrusted mail never goes to an address literal (the client
/// would pick the host this relay connects to) and never carries the content.
#[tokio::test]
async fn no_notice_to_an_address_literal_from_untrusted_mail() {
    let dir = tempfile::tempdir().unwrap();
    // A next hop that refuses every recipient for good.
    let refuse = tower::service_fn(|req: PolicyRequest| async move {
        Ok::<_, std::convert::Infallible>(match req.kind {
            PolicyKind::Rcpt { .. } => Decision::Respond(codes::no_such_user()),
            _ => Decision::Accept,
        })
    });
    let mail = tower::service_fn(|_tx: Transaction| async { Ok::<_, std::convert::Infallible>(codes::ok()) });
    let port = next_hop(|_| {}, refuse, mail).await;
    let relay = InProcess::start(forwarding(dir.path(), port), None).await;
    let r = transaction("127.0.0.2", relay.addr, "<x@[127.0.0.1]> RET=FULL", "<fwd@local.test>").await;
    assert!(r.starts_with("250"), "{r}");
    // The failure is recorded and the message leaves the queue with no notice queued (a
    // notice to [127.0.0.1]:25 would sit in the queue, deferred).
    let d = dir.path().to_path_buf();
    wait_until("the queue to drain", move || queue_empty(&d)).await;
    relay.stop().await;
}

/// Item 3: an `AUTH=` identity is passed on only when this host vouches for it (RFC 4954 5).
#[tokio::test]
async fn auth_identity_is_not_forwarded_for_a_client_that_made_it_up() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = seen.clone();
    let policy = tower::service_fn(move |req: PolicyRequest| {
        let seen = s2.clone();
        async move {
            if let PolicyKind::Mail { params, .. } = &req.kind {
                let auth = params.auth.as_ref().map(|a| a.as_str().to_string()).unwrap_or_default();
                seen.lock().unwrap().push(auth);
            }
            Ok::<_, std::convert::Infallible>(Decision::Accept)
        }
    });
    let mail = tower::service_fn(|mut tx: Transaction| async move {
        tx.body.collect(1 << 20).await?;
        Ok::<_, smtp_server::BodyError>(codes::message_accepted())
    });
    let port =
        next_hop(|o| o.session.auth_mechanisms = vec![smtp_proto::auth::AuthMechanism::Plain], policy, mail).await;
    let mut c = forwarding(dir.path(), port);
    // AUTH offered, so clients may give AUTH= (RFC 4954 5).
    c.auth_users.insert("u".into(), smtp_relay::password::PasswordHashString::hash("p").unwrap());
    let relay = InProcess::start(c, None).await;
    let r = transaction("127.0.0.2", relay.addr, "<a@x.test> AUTH=ceo+40victim.test", "<fwd@local.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let s = seen.clone();
    wait_until("the first message at the next hop", move || s.lock().unwrap().len() == 1).await;
    let r = transaction("127.0.0.1", relay.addr, "<a@x.test> AUTH=boss+40x.test", "<fwd@local.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let s = seen.clone();
    wait_until("the second message at the next hop", move || s.lock().unwrap().len() == 2).await;
    assert_eq!(*seen.lock().unwrap(), ["<>", "boss+40x.test"], "made up: <>; from a trusted client: kept");
    relay.stop().await;
}

/// Item 12: success at a next hop is "relayed" when it cannot take NOTIFY (RFC 3464 2.3.3);
/// when it can, NOTIFY goes along and the notices are its own.
#[tokio::test]
async fn success_at_a_next_hop_is_relayed_or_passed_on() {
    use std::sync::{Arc, Mutex};
    for dsn in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let notify: Arc<Mutex<Vec<String>>> = Arc::default();
        let n2 = notify.clone();
        let policy = tower::service_fn(move |req: PolicyRequest| {
            let notify = n2.clone();
            async move {
                if let PolicyKind::Rcpt { params, .. } = &req.kind {
                    notify.lock().unwrap().push(format!("{:?}", params.notify));
                }
                Ok::<_, std::convert::Infallible>(Decision::Accept)
            }
        });
        let mail = tower::service_fn(|mut tx: Transaction| async move {
            tx.body.collect(1 << 20).await?;
            Ok::<_, smtp_server::BodyError>(codes::message_accepted())
        });
        let port = next_hop(|o| o.session.dsn = dsn, policy, mail).await;
        let relay = InProcess::start(forwarding(dir.path(), port), None).await;
        let r = transaction("127.0.0.1", relay.addr, "<bob@local.test>", "<fwd@local.test> NOTIFY=SUCCESS").await;
        assert!(r.starts_with("250"), "{r}");
        let n = notify.clone();
        wait_until("the next hop's RCPT", move || n.lock().unwrap().len() == 1).await;
        let d = dir.path().to_path_buf();
        if dsn {
            wait_until("the queue to drain", move || queue_empty(&d)).await;
            assert!(notify.lock().unwrap()[0].contains("success: true"), "{:?}", notify.lock().unwrap());
            assert!(maildir_files(dir.path(), "bob").is_empty(), "the next hop sends the notice, not this one");
        } else {
            wait_until("the success notice", move || maildir_files(&d, "bob").len() == 1).await;
            let notice = std::fs::read_to_string(&maildir_files(dir.path(), "bob")[0]).unwrap();
            assert!(notice.contains("Action: relayed") && notice.contains("Remote-MTA: dns; 127.0.0.1"), "{notice}");
        }
        relay.stop().await;
    }
}

/// Item 9: a destination that accepts connections and never greets cannot hold the slots
/// other destinations need; its attempts end at the delivery deadline.
#[tokio::test]
async fn a_silent_destination_does_not_starve_the_others() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    // Accepts TCP, never says a word (connections are held open until the test ends).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let h2 = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            h2.lock().unwrap().push(s);
        }
    });
    let got: Arc<Mutex<usize>> = Arc::default();
    let g2 = got.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let got = g2.clone();
        async move {
            tx.body.collect(1 << 20).await?;
            *got.lock().unwrap() += 1;
            Ok::<_, smtp_server::BodyError>(codes::message_accepted())
        }
    });
    let good = Server::builder("good.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .bind(smtp_server::AcceptAll, mail)
        .await
        .unwrap();
    let good_port = good.local_addrs()[0].port();
    tokio::spawn(good.run());
    let mut c = cfg(dir.path());
    c.routes.insert("slow.test".into(), ("127.0.0.1".into(), silent_port));
    c.routes.insert("good.test".into(), ("127.0.0.1".into(), good_port));
    c.outbound_tls = smtp_client::TlsMode::None;
    c.max_deliveries = 4;
    c.max_per_destination = 2;
    // Longer than the test waits: the good delivery must not need a slow attempt to end.
    c.delivery_deadline = Duration::from_secs(120);
    let relay = InProcess::start(c, None).await;
    for i in 0..10 {
        let r = transaction("127.0.0.1", relay.addr, "<bob@local.test>", &format!("<u{i}@slow.test>")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    let h = held.clone();
    wait_until("the silent host holding its slots", move || h.lock().unwrap().len() >= 2).await;
    let r = transaction("127.0.0.1", relay.addr, "<bob@local.test>", "<someone@good.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let g = got.clone();
    wait_until("the good destination's delivery", move || *g.lock().unwrap() == 1).await;
    assert_eq!(held.lock().unwrap().len(), 2, "the silent host gets its two slots, no more");
    relay.stop().await;
}

/// Item 9: a whole delivery attempt has a deadline, however slowly the host answers.
#[tokio::test]
async fn a_delivery_attempt_ends_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut c = cfg(dir.path());
    c.routes.insert("slow.test".into(), ("127.0.0.1".into(), port));
    c.delivery_deadline = Duration::from_secs(1);
    let relay = InProcess::start(c, None).await;
    let r = transaction("127.0.0.1", relay.addr, "<bob@local.test>", "<x@slow.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let q = relay.relay.queue();
    tokio::time::timeout(tests::WAIT, async {
        loop {
            let entries = q.scan_all().await.unwrap();
            let timed_out = entries.iter().any(|e| match e {
                smtp_relay::ScanEntry::Queued(m, _) => m.recipients[0]
                    .last_error
                    .as_ref()
                    .is_some_and(|r| r.code() == 451 && r.text().contains("took too long")),
                _ => false,
            });
            if timed_out {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the attempt ended at its deadline and was recorded");
    relay.stop().await;
}

/// Item 10: a next hop with `LIMITS RCPTMAX=1` that refuses the second MAIL (451): the first
/// recipient, delivered, is never sent again; the second is retried.
#[tokio::test]
async fn rcptmax_split_never_sends_a_delivered_recipient_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mails = Arc::new(AtomicUsize::new(0));
    let m2 = mails.clone();
    let policy = tower::service_fn(move |req: PolicyRequest| {
        let mails = m2.clone();
        async move {
            Ok::<_, std::convert::Infallible>(match req.kind {
                // Only the first transaction ever is accepted; every later one: 451.
                PolicyKind::Mail { .. } if mails.fetch_add(1, Ordering::SeqCst) >= 1 => Decision::Respond(
                    smtp_proto::Reply::new(451, Some(smtp_proto::EnhancedCode::new(4, 3, 0)), "later"),
                ),
                _ => Decision::Accept,
            })
        }
    });
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g2 = got.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let got = g2.clone();
        async move {
            tx.body.collect(1 << 20).await?;
            got.lock().unwrap().extend(tx.envelope.recipients.iter().map(|r| r.path.to_string()));
            Ok::<_, smtp_server::BodyError>(codes::message_accepted())
        }
    });
    let port = next_hop(|o| o.session.max_recipients = 1, policy, mail).await;
    let mut c = cfg(dir.path());
    c.routes.insert("remote.test".into(), ("127.0.0.1".into(), port));
    c.outbound_tls = smtp_client::TlsMode::None;
    c.max_retry_interval = Duration::from_secs(1);
    let relay = InProcess::start(c, None).await;
    let (mut cl, _) = Raw::connect(relay.addr).await;
    cl.cmd("EHLO c\r\n").await;
    let r = cl.send_mail("MAIL", "bob@local.test", &["a@remote.test", "b@remote.test"], "Subject: two\r\n\r\nx").await;
    assert!(r.starts_with("250"), "{r}");
    let m = mails.clone();
    wait_until("two retries", move || m.load(Ordering::SeqCst) >= 4).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|p| *p == "<a@remote.test>").count(), 1, "{got:?}");
    relay.stop().await;
}
