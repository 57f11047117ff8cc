//! Message authentication end to end: tern A signs (RSA and Ed25519) mail from its trusted
//! clients and relays it to tern B, which checks SPF, DKIM and DMARC against a DNS server
//! started by the test and says what it found in one Authentication-Results field; DMARC
//! enforcement refuses at the end of DATA; dkimpy (an independent verifier) accepts A's
//! signatures.

use std::path::Path;

use smtp_relay::{Directory, RelayConfig};
use tests::dns::{Rr, TestDns};
use tests::{maildir_files, wait_until, InProcess, Raw};

/// DNS with keys, SPF and DMARC records; A (signing a.test with RSA and e.test with Ed25519)
/// and B (mx.b.test, verifying, DMARC enforced, no trusted networks).
struct World {
    dns: TestDns,
    a: InProcess,
    b: InProcess,
    a_dir: tempfile::TempDir,
    b_dir: tempfile::TempDir,
    /// The published key records: (selector, record).
    records: Vec<(String, String)>,
}

impl World {
    async fn new() -> World {
        let dns = TestDns::start().await;
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut records = Vec::new();
        let mut dkim = Vec::new();
        for (domain, selector, ed) in [("a.test", "rsa1", false), ("e.test", "ed1", true)] {
            let (pem, record) = smtp_relay::msgauth::generate_key(ed).unwrap();
            let file = a_dir.path().join(format!("{selector}.pem"));
            std::fs::write(&file, pem).unwrap();
            dns.set(&format!("{selector}._domainkey.{domain}"), vec![Rr::Txt(record.clone())]);
            records.push((format!("{selector}._domainkey.{domain}"), record));
            dkim.push(format!("{domain}={selector}:{}", file.display()).parse().unwrap());
            dns.set(domain, vec![Rr::Txt("v=spf1 ip4:127.0.0.1 -all".into())]);
            dns.set(&format!("_dmarc.{domain}"), vec![Rr::Txt("v=DMARC1; p=reject".into())]);
        }
        // c.test: mail may come only from 192.0.2.1, no DMARC. d.test: the same, p=reject.
        // q.test: the same, p=quarantine.
        for d in ["c.test", "d.test", "q.test"] {
            dns.set(d, vec![Rr::Txt("v=spf1 ip4:192.0.2.1 -all".into())]);
        }
        dns.set("_dmarc.d.test", vec![Rr::Txt("v=DMARC1; p=reject".into())]);
        dns.set("_dmarc.q.test", vec![Rr::Txt("v=DMARC1; p=quarantine".into())]);

        let mut bc = RelayConfig::new("mx.b.test", b_dir.path());
        bc.directory = Directory::new(["b.test".to_string()], Vec::<String>::new());
        bc.trusted = vec![];
        bc.dns_server = Some(dns.addr);
        bc.dmarc_enforce = true;
        let b = InProcess::start(bc, None).await;

        let mut ac = RelayConfig::new("mx.a.test", a_dir.path());
        ac.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
        ac.routes.insert("b.test".into(), ("127.0.0.1".into(), b.addr.port()));
        ac.dns_server = Some(dns.addr);
        ac.dkim = dkim;
        let a = InProcess::start(ac, None).await;
        World { dns, a, b, a_dir, b_dir, records }
    }

    /// Waits for the `n`th message in B's mailbox for `user` and returns it.
    async fn received(&self, user: &str, n: usize) -> String {
        let d = self.b_dir.path().to_path_buf();
        let u = user.to_string();
        wait_until("a message at B", move || maildir_files(&d, &u).len() >= n).await;
        let mut files = maildir_files(self.b_dir.path(), user);
        files.sort_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        std::fs::read_to_string(&files[n - 1]).unwrap()
    }
}

/// Submits a message and returns the reply to its end of data.
async fn submit(addr: std::net::SocketAddr, from: &str, to: &str, data: &str) -> String {
    let (mut c, _) = Raw::connect(addr).await;
    c.cmd("EHLO client.test\r\n").await;
    c.send_mail("MAIL", from, &[to], data).await
}

/// B's Authentication-Results field (unfolded), asserting there is exactly one with its id.
fn our_results(message: &str) -> String {
    let unfolded = message.replace("\r\n", "\n").replace("\n\t", " ").replace("\n ", " ");
    let ours: Vec<&str> =
        unfolded.lines().filter(|l| l.to_ascii_lowercase().starts_with("authentication-results: mx.b.test")).collect();
    assert_eq!(ours.len(), 1, "one result of ours: {message}");
    ours[0].to_string()
}

/// A message as stored in a Maildir (LF line ends) with CRLF line ends again.
fn crlf(stored: &str) -> String {
    stored.replace("\r\n", "\n").replace('\n', "\r\n")
}

fn message(from: &str, subject: &str) -> String {
    format!("From: <{from}>\r\nTo: <bob@b.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\nHello,\r\n.. a dotted line\r\nbye\r\n")
}

#[tokio::test]
async fn signed_at_a_verified_at_b_with_both_key_types() {
    let w = World::new().await;
    for (i, from) in ["alice@a.test", "eve@e.test"].into_iter().enumerate() {
        let r = submit(w.a.addr, from, "bob@b.test", &message(from, &format!("signed{i}"))).await;
        assert!(r.starts_with("250"), "{r}");
        let got = w.received("bob", i + 1).await;
        let domain = from.split('@').nth(1).unwrap();
        assert!(got.contains("DKIM-Signature: v=1;"), "{got}");
        let ar = our_results(&got);
        assert!(ar.contains("dkim=pass") && ar.contains(&format!("header.d={domain}")), "{ar}");
        assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{ar}");
    }
    w.a.stop().await;
    w.b.stop().await;
}

#[tokio::test]
async fn a_body_changed_in_transit_fails_dkim() {
    let w = World::new().await;
    assert!(submit(w.a.addr, "alice@a.test", "bob@b.test", &message("alice@a.test", "orig")).await.starts_with("250"));
    let signed = w.received("bob", 1).await;
    // Resubmit what A sent (from its DKIM-Signature on), with one body line changed.
    let start = signed.find("DKIM-Signature:").unwrap();
    let tampered = crlf(&signed[start..]).replace("bye", "goodbye").replace("\r\n.", "\r\n..");
    let r = submit(w.b.addr, "alice@a.test", "bob@b.test", tampered.trim_end()).await;
    assert!(r.starts_with("250"), "SPF still aligns, so DMARC passes: {r}");
    let ar = our_results(&w.received("bob", 2).await);
    assert!(ar.contains("dkim=fail"), "{ar}");
    assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{ar}");
    w.a.stop().await;
    w.b.stop().await;
}

#[tokio::test]
async fn spf_fail_dmarc_reject_and_quarantine() {
    let w = World::new().await;
    // c.test: -all from the wrong address, no DMARC record: accepted, recorded as a fail.
    let r = submit(w.b.addr, "carl@c.test", "bob@b.test", &message("carl@c.test", "c")).await;
    assert!(r.starts_with("250"), "{r}");
    let got = w.received("bob", 1).await;
    let ar = our_results(&got);
    assert!(ar.contains("spf=fail") && ar.contains("smtp.mailfrom=carl@c.test"), "{ar}");
    assert!(!got.contains("X-Tern-DMARC"), "{got}");
    // d.test: fails DMARC at a p=reject domain: refused at the end of data, nothing stored.
    let r = submit(w.b.addr, "dan@d.test", "bob@b.test", &message("dan@d.test", "d")).await;
    assert!(r.starts_with("550 5.7.1") && r.contains("d.test"), "{r}");
    // q.test: p=quarantine: accepted and marked.
    let r = submit(w.b.addr, "quinn@q.test", "bob@b.test", &message("quinn@q.test", "q")).await;
    assert!(r.starts_with("250"), "{r}");
    let got = w.received("bob", 2).await;
    assert!(got.contains("X-Tern-DMARC: quarantine (q.test)"), "{got}");
    assert!(our_results(&got).contains("dmarc=fail"), "{got}");
    assert_eq!(maildir_files(w.b_dir.path(), "bob").len(), 2, "the rejected message was not stored");
    w.a.stop().await;
    w.b.stop().await;
}

#[tokio::test]
async fn dns_failures_defer_only_when_dmarc_is_enforced() {
    let w = World::new().await;
    w.dns.set("t.test", vec![Rr::ServFail]);
    w.dns.set("_dmarc.t.test", vec![Rr::ServFail]);
    let r = submit(w.b.addr, "tom@t.test", "bob@b.test", &message("tom@t.test", "t")).await;
    assert!(r.starts_with("451 4.7.0") && r.contains("t.test"), "enforced: {r}");
    // The same mail at a relay that does not enforce: accepted, the result says temperror.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RelayConfig::new("mx.b.test", dir.path());
    cfg.directory = Directory::new(["b.test".to_string()], Vec::<String>::new());
    cfg.trusted = vec![];
    cfg.dns_server = Some(w.dns.addr);
    let c = InProcess::start(cfg, None).await;
    let r = submit(c.addr, "tom@t.test", "bob@b.test", &message("tom@t.test", "t")).await;
    assert!(r.starts_with("250"), "not enforced: {r}");
    let d = dir.path().to_path_buf();
    wait_until("delivery at C", move || maildir_files(&d, "bob").len() == 1).await;
    let got = std::fs::read_to_string(&maildir_files(dir.path(), "bob")[0]).unwrap();
    let ar = our_results(&got);
    assert!(ar.contains("spf=temperror") && ar.contains("dmarc=temperror"), "{ar}");
    c.stop().await;
    w.a.stop().await;
    w.b.stop().await;
}

#[tokio::test]
async fn a_forged_result_with_our_id_is_removed_and_others_kept() {
    let w = World::new().await;
    let forged = format!(
        "Authentication-Results: mx.b.test;\r\n\tdkim=pass header.d=bank.test\r\nAuthentication-Results: elsewhere.test; spf=pass\r\n{}",
        message("carl@c.test", "forged")
    );
    assert!(submit(w.b.addr, "carl@c.test", "bob@b.test", &forged).await.starts_with("250"));
    let got = w.received("bob", 1).await;
    let ar = our_results(&got);
    assert!(ar.contains("spf=fail") && !got.contains("bank.test"), "{got}");
    assert!(got.contains("Authentication-Results: elsewhere.test; spf=pass"), "{got}");
    w.a.stop().await;
    w.b.stop().await;
}

#[tokio::test]
async fn malformed_signatures_and_huge_headers_get_a_result_not_a_crash() {
    let w = World::new().await;
    let bad = [
        "DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=rsa1; b=!!!notbase64; bh=; h=From\r\n",
        "DKIM-Signature: v=9; a=rot13; d=; s=\r\n",
        "DKIM-Signature: garbage without tags\r\n",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=nokey.test; s=x; h=From; bh=AAAA; b=AAAA\r\n",
    ]
    .concat();
    let huge = format!("X-Long: {}\r\n", "y".repeat(200_000));
    for (i, head) in [bad, huge].iter().enumerate() {
        let data = format!("{head}{}", message("alice@a.test", &format!("bad{i}")));
        let r = submit(w.b.addr, "alice@a.test", "bob@b.test", &data).await;
        assert!(r.starts_with("250"), "SPF passes and aligns: {r}");
        let ar = our_results(&w.received("bob", i + 1).await);
        assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{ar}");
        if i == 0 {
            assert!(!ar.contains("dkim=pass") && ar.contains("dkim="), "{ar}");
        }
    }
    w.a.stop().await;
    w.b.stop().await;
}

/// Verifies `message` with dkimpy, answering its key look-ups from `records`.
fn dkimpy_verifies(dir: &Path, message: &str, records: &[(String, String)]) -> bool {
    let msg = dir.join("msg.eml");
    std::fs::write(&msg, crlf(message)).unwrap();
    let keys: serde_json::Value =
        records.iter().map(|(n, r)| (format!("{n}."), serde_json::Value::from(r.clone()))).collect();
    let script = format!(
        "import dkim, json, sys\n\
         keys = json.loads({keys:?})\n\
         def dns(name, timeout=5):\n    return keys.get(name.decode(), '').encode()\n\
         ok = dkim.verify(open({msg:?}, 'rb').read(), dnsfunc=dns)\n\
         print('pass' if ok else 'fail')\n",
        keys = keys.to_string(),
        msg = msg.display().to_string(),
    );
    let (code, stdout, stderr) = tests::run_bounded(std::process::Command::new("python3").args(["-c", &script]), b"");
    assert_eq!(code, 0, "dkimpy: {stdout} {stderr}");
    stdout.trim() == "pass"
}

#[tokio::test]
async fn dkimpy_accepts_our_signatures_and_refuses_a_changed_body() {
    let w = World::new().await;
    for (i, from) in ["alice@a.test", "eve@e.test"].into_iter().enumerate() {
        assert!(submit(w.a.addr, from, "bob@b.test", &message(from, &format!("py{i}"))).await.starts_with("250"));
        let got = w.received("bob", i + 1).await;
        assert!(dkimpy_verifies(w.a_dir.path(), &got, &w.records), "{from}: {got}");
        assert!(!dkimpy_verifies(w.a_dir.path(), &got.replace("bye", "ciao"), &w.records), "{from}");
    }
    let _ = &w.dns;
    w.a.stop().await;
    w.b.stop().await;
}

#[tokio::test]
async fn the_relays_own_notifications_are_signed() {
    let w = World::new().await;
    // A relay named a.test (its notices come from MAILER-DAEMON@a.test) with a.test's key;
    // z.test goes to B, which refuses relaying: a failure notice to alice at once.
    let dir = tempfile::tempdir().unwrap();
    let (pem, record) = smtp_relay::msgauth::generate_key(false).unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, pem).unwrap();
    let mut cfg = RelayConfig::new("a.test", dir.path());
    cfg.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
    cfg.routes.insert("z.test".into(), ("127.0.0.1".into(), w.b.addr.port()));
    cfg.dkim = vec![format!("a.test=own:{}", key.display()).parse().unwrap()];
    let a = InProcess::start(cfg, None).await;
    assert!(submit(a.addr, "alice@a.test", "bob@z.test", &message("alice@a.test", "bounce")).await.starts_with("250"));
    let d = dir.path().to_path_buf();
    wait_until("a failure notice for alice", move || maildir_files(&d, "alice").len() == 1).await;
    let notice = std::fs::read_to_string(&maildir_files(dir.path(), "alice")[0]).unwrap();
    assert!(notice.contains("DKIM-Signature: v=1;") && notice.contains("d=a.test"), "{notice}");
    assert!(notice.contains("MAILER-DAEMON@a.test"), "{notice}");
    let records = vec![("own._domainkey.a.test".to_string(), record)];
    assert!(dkimpy_verifies(dir.path(), &notice[notice.find("DKIM-Signature").unwrap()..], &records), "{notice}");
    a.stop().await;
    w.a.stop().await;
    w.b.stop().await;
}
