//! The relay's receiving half end to end over loopback: Maildir, directory, terminals, rules.

use std::time::Duration;

use smtp_relay::deliver::terminal::TerminalClient;
use smtp_relay::{Cidr, Directory, RelayConfig};
use tests::{maildir_files, wait_until, InProcess, Raw};

fn config(dir: &std::path::Path) -> RelayConfig {
    let mut c = RelayConfig::new("mx.test", dir);
    let mut d = Directory::new(
        ["mx.test".to_string(), "example.test".to_string()],
        ["alice", "bob", "carol"].map(String::from),
    );
    d.add_alias("staff", vec!["alice".into(), "bob".into(), "team".into()]);
    d.add_alias("team", vec!["carol".into(), "staff".into()]);
    c.directory = d;
    c.trusted = vec!["127.0.0.1/32".parse::<Cidr>().unwrap()];
    c.retry_interval = Duration::from_millis(500);
    c
}

#[tokio::test]
async fn maildir_with_return_path_and_received_and_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let relay = InProcess::start(config(dir.path()), None).await;
    let (mut c, greeting) = Raw::connect(relay.addr).await;
    assert!(greeting.starts_with("220 mx.test ESMTP"));
    c.cmd("EHLO client.test\r\n").await;
    let r = c
        .send_mail("MAIL", "sender@far.test", &["alice@example.test", "staff@mx.test"], "Subject: hi\r\n\r\nbody")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let data = dir.path().to_path_buf();
    wait_until("deliveries", || {
        maildir_files(&data, "alice").len() == 1
            && maildir_files(&data, "bob").len() == 1
            && maildir_files(&data, "carol").len() == 1
    })
    .await;
    let m = std::fs::read_to_string(&maildir_files(&data, "alice")[0]).unwrap();
    assert!(m.starts_with("Return-Path: <sender@far.test>\nReceived: from client.test ([127.0.0.1])\n\tby mx.test (Tern) with ESMTP id "), "{m}");
    assert!(m.ends_with("Subject: hi\n\nbody\n"));
    // Delivered once to alice although she is both direct and in the list.
    wait_until("queue empty", || std::fs::read_dir(data.join("queue/msg")).unwrap().count() == 0).await;
    relay.stop().await;
}

#[tokio::test]
async fn vrfy_expn_and_unknown_users() {
    let dir = tempfile::tempdir().unwrap();
    let relay = InProcess::start(config(dir.path()), None).await;
    let (mut c, _) = Raw::connect(relay.addr).await;
    c.cmd("EHLO client.test\r\n").await;
    assert_eq!(c.cmd("VRFY alice\r\n").await, "250 2.1.5 <alice@mx.test>\r\n");
    assert!(c.cmd("VRFY <bob@example.test>\r\n").await.starts_with("250 2.1.5 <bob@mx.test>"));
    assert!(c.cmd("VRFY nobody\r\n").await.starts_with("550 5.1.1"));
    assert!(c.cmd("VRFY someone@elsewhere.test\r\n").await.starts_with("252"));
    assert!(c.cmd("VRFY staff\r\n").await.starts_with("553"));
    let expn = c.cmd("EXPN staff\r\n").await;
    assert_eq!(expn, "250-2.1.5 <alice@mx.test>\r\n250-2.1.5 <bob@mx.test>\r\n250 2.1.5 <carol@mx.test>\r\n");
    assert!(c.cmd("EXPN alice\r\n").await.starts_with("550"));
    c.cmd("MAIL FROM:<x@y.test>\r\n").await;
    assert!(c.cmd("RCPT TO:<nobody@mx.test>\r\n").await.starts_with("550 5.1.1"));
    assert!(c.cmd("RCPT TO:<postmaster>\r\n").await.starts_with("250"), "postmaster is always accepted");
    relay.stop().await;
}

#[tokio::test]
async fn send_soml_saml_and_terminals() {
    let dir = tempfile::tempdir().unwrap();
    let relay = InProcess::start(config(dir.path()), None).await;
    let data = dir.path().to_path_buf();
    let (mut c, _) = Raw::connect(relay.addr).await;
    c.cmd("HELO client.test\r\n").await;
    // SEND with nobody at a terminal: refused; to a list or a remote address: refused for good
    // (RFC 788 3.4: SEND reaches a user's terminal, here).
    c.cmd("SEND FROM:<x@y.test>\r\n").await;
    assert!(c.cmd("RCPT TO:<alice@mx.test>\r\n").await.starts_with("450 4.2.1"));
    let list = c.cmd("RCPT TO:<staff@mx.test>\r\n").await;
    assert!(list.starts_with("550 5.5.1 SEND needs a single local user"), "{list}");
    let remote = c.cmd("RCPT TO:<someone@remote.test>\r\n").await;
    assert!(remote.starts_with("550 5.5.1 SEND is delivered to local terminals only"), "{remote}");
    c.cmd("RSET\r\n").await;
    // SOML and SAML without a terminal: the mailbox.
    assert!(c.send_mail("SOML", "x@y.test", &["alice@mx.test"], "soml one").await.starts_with("250"));
    assert!(c.send_mail("SAML", "x@y.test", &["alice@mx.test"], "saml one").await.starts_with("250"));
    wait_until("two mailbox deliveries", || maildir_files(&data, "alice").len() == 2).await;
    // Now alice watches.
    let mut term = TerminalClient::watch(&data.join("control.sock"), "alice").await.unwrap();
    wait_until("terminal registered", || relay.relay.terminals().is_active("alice")).await;
    assert!(c
        .send_mail("SEND", "x@y.test", &["alice@mx.test"], "Subject: send\r\n\r\nto the terminal")
        .await
        .starts_with("250"));
    let got = tokio::time::timeout(tests::WAIT, term.next_message()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&got).ends_with("to the terminal\r\n"));
    assert!(c.send_mail("SOML", "x@y.test", &["alice@mx.test"], "soml two").await.starts_with("250"));
    let got = tokio::time::timeout(tests::WAIT, term.next_message()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&got).ends_with("soml two\r\n"));
    assert!(c.send_mail("SAML", "x@y.test", &["alice@mx.test"], "saml two").await.starts_with("250"));
    let got = tokio::time::timeout(tests::WAIT, term.next_message()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&got).ends_with("saml two\r\n"));
    wait_until("SAML also in the mailbox", || maildir_files(&data, "alice").len() == 3).await;
    // The terminal goes away: SOML falls back to the mailbox, nothing is lost.
    drop(term);
    wait_until("terminal gone", || !relay.relay.terminals().is_active("alice")).await;
    assert!(c.send_mail("SOML", "x@y.test", &["alice@mx.test"], "soml three").await.starts_with("250"));
    wait_until("SOML fell back to the mailbox", || maildir_files(&data, "alice").len() == 4).await;
    relay.stop().await;
}

#[tokio::test]
async fn relay_denied_for_untrusted_on_final_destination() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.source_routes = smtp_relay::SourceRoutes::Honor;
    let relay = InProcess::start(cfg, None).await;
    let (mut c, _) = Raw::connect_from("127.0.0.2".parse().unwrap(), relay.addr).await;
    c.cmd("EHLO outsider.test\r\n").await;
    c.cmd("MAIL FROM:<spammer@bad.test>\r\n").await;
    for rcpt in [
        "<victim@other.test>",
        "<@mx.test:victim@other.test>",
        "<@mx.test,victim@other.test>",
        "<victim%other.test@mx.test>",
        "<other.test!victim@mx.test>",
        "<\"victim@other.test\"@mx.test>",
        "<victim@[192.0.2.1]>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}\r\n")).await;
        assert!(r.starts_with("554 5.7.1"), "{rcpt}: {r}");
    }
    assert!(c.cmd("RCPT TO:<victim@other.test.>\r\n").await.starts_with("501"), "trailing dot is a syntax error");
    assert!(c.cmd("RCPT TO:<alice@mx.test>\r\n").await.starts_with("250"), "local mail is fine");
    // From the trusted address, relaying is allowed.
    let (mut t, _) = Raw::connect(relay.addr).await;
    t.cmd("EHLO insider.test\r\n").await;
    t.cmd("MAIL FROM:<me@mx.test>\r\n").await;
    assert!(t.cmd("RCPT TO:<friend@other.test>\r\n").await.starts_with("250"));
    relay.stop().await;
}

#[tokio::test]
async fn loop_detection() {
    let dir = tempfile::tempdir().unwrap();
    let relay = InProcess::start(config(dir.path()), None).await;
    let (mut c, _) = Raw::connect(relay.addr).await;
    c.cmd("EHLO client.test\r\n").await;
    let body = "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(100) + "\r\nbody";
    let r = c.send_mail("MAIL", "a@b.test", &["alice@mx.test"], &body).await;
    assert!(r.starts_with("554 5.4.6"), "{r}");
    let body = "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(99) + "\r\nbody";
    assert!(c.send_mail("MAIL", "a@b.test", &["alice@mx.test"], &body).await.starts_with("250"));
    relay.stop().await;
}
