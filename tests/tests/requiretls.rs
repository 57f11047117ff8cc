//! REQUIRETLS (RFC 8689) end to end: refused over plaintext, delivered only over a secure route
//! with validated TLS to a next hop that passes the flag on, and otherwise returned with 5.7.30
//! and a notice that carries the header only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use smtp_client::TlsMode;
use smtp_relay::dns::{DnsError, MxAnswer, MxResolver};
use smtp_relay::{Directory, RelayConfig};
use smtp_server::tls;
use tests::hop::{next_hop, submit_tls};
use tests::{maildir_files, wait_until, InProcess, Raw};

/// The message every test here submits with REQUIRETLS.
const SEALED: &str = "Subject: sealed\r\n\r\nsecret body\r\n";

/// DNS without DNSSEC: every domain has one MX, `mx.DOMAIN`, at 127.0.0.1.
struct UnsignedDns;

#[async_trait::async_trait]
impl MxResolver for UnsignedDns {
    async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        Ok(MxAnswer::Hosts(vec![format!("mx.{domain}")]))
    }
    async fn addresses(&self, _: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
        Ok(vec![[127, 0, 0, 1].into()])
    }
}

fn relay(dir: &Path) -> RelayConfig {
    let mut c = RelayConfig::new("a.test", dir);
    c.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
    c.retry_interval = Duration::from_millis(300);
    c.max_retry_interval = Duration::from_millis(600);
    c
}

#[tokio::test]
async fn requiretls_over_plaintext_is_refused_with_5_7_10() {
    let dir = tempfile::tempdir().unwrap();
    let a = InProcess::start(relay(dir.path()), None).await;
    let (mut c, _) = Raw::connect(a.addr).await;
    let ehlo = c.cmd("EHLO client.test\r\n").await;
    assert!(!ehlo.contains("REQUIRETLS"), "not offered in plaintext: {ehlo}");
    let r = c.cmd("MAIL FROM:<alice@a.test> REQUIRETLS\r\n").await;
    assert!(r.starts_with("530 5.7.10"), "{r}");
    a.stop().await;
}

#[tokio::test]
async fn delivered_only_over_a_secure_route_and_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    // Both hops present the same certificate, which A's CA file pins: validated TLS to each.
    let hops = tempfile::tempdir().unwrap();
    let config = tls::self_signed(hops.path(), "hop.test").unwrap();
    let ca = hops.path().join("cert.pem");
    let (good, good_seen) = next_hop("127.0.0.1:0".parse().unwrap(), config.clone(), true).await;
    let (plain, plain_seen) = next_hop("127.0.0.1:0".parse().unwrap(), config, false).await;
    let mut cfg = relay(dir.path());
    // b.test: static route, verified TLS (the hop's certificate pinned) and REQUIRETLS there.
    cfg.routes.insert("b.test".into(), ("127.0.0.1".into(), good.port()));
    cfg.tls_per_domain.insert("b.test".into(), TlsMode::Required);
    cfg.outbound_ca = Some(ca);
    // c.test: a static route, but opportunistic TLS: not a secure policy.
    cfg.routes.insert("c.test".into(), ("127.0.0.1".into(), good.port()));
    // d.test: verified TLS, but the hop does not offer REQUIRETLS.
    cfg.routes.insert("d.test".into(), ("127.0.0.1".into(), plain.port()));
    cfg.tls_per_domain.insert("d.test".into(), TlsMode::Required);
    let a = InProcess::start(cfg, Some(Arc::new(UnsignedDns))).await;

    let out = submit_tls(a.addr, "bob@b.test", SEALED, true).await;
    assert!(out.all_accepted(), "{out:?}");
    let gs = good_seen.clone();
    wait_until("delivery at b.test", move || gs.lock().unwrap().len() == 1).await;
    let got = good_seen.lock().unwrap()[0].clone();
    assert!(got.requiretls, "REQUIRETLS passed on to the next hop");
    assert!(got.tls && got.data.contains("secret body"), "{got:?}");

    // e.test has no static route and its MX records are not DNSSEC-signed: no DANE, no
    // secure route.
    for to in ["carol@c.test", "dave@d.test", "erin@e.test"] {
        assert!(submit_tls(a.addr, to, SEALED, true).await.all_accepted());
    }
    let d = dir.path().to_path_buf();
    wait_until("three notices to alice", move || maildir_files(&d, "alice").len() == 3).await;
    let mut notices: Vec<String> =
        maildir_files(dir.path(), "alice").iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    let rcpts = ["carol@c.test", "dave@d.test", "erin@e.test"];
    notices.sort_by_key(|n| rcpts.iter().position(|r| n.contains(&format!("Final-Recipient: rfc822; {r}"))));
    for (n, rcpt) in notices.iter().zip(rcpts) {
        assert!(n.contains(&format!("Final-Recipient: rfc822; {rcpt}")), "{n}");
        assert!(n.contains("Status: 5.7.30") && n.contains("Action: failed"), "{n}");
        assert!(n.contains("Content-Type: text/rfc822-headers"), "header only (RFC 8689 5): {n}");
        assert!(n.contains("Subject: sealed") && !n.contains("secret body"), "{n}");
    }
    assert!(notices[0].contains("no secure route to c.test"), "{}", notices[0]);
    assert!(notices[1].contains("does not offer REQUIRETLS"), "{}", notices[1]);
    assert!(notices[2].contains("no secure route to e.test"), "{}", notices[2]);
    assert_eq!(good_seen.lock().unwrap().len(), 1, "nothing went to c.test's hop");
    assert!(plain_seen.lock().unwrap().is_empty(), "nothing went to a hop without REQUIRETLS");
    a.stop().await;
}
