//! DANE (RFC 7672) end to end: a DNSSEC-signed test zone served by the test's DNS server, its
//! key given to the relay as the trust anchor, the relay's real validating resolver, and next
//! hops with the certificate the TLSA records name and a man in the middle with another one
//! (on another loopback address, same port).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use smtp_relay::dns::{Dnssec, HickoryMx, MxAnswer, MxResolver, TlsaAnswer};
use smtp_relay::{Directory, RelayConfig};
use tests::dns::{Rr, TestDns};
use tests::hop::{certificate, last_error, next_hop, sha256, submit_tls, Seen};
use tests::{wait_until, InProcess};

/// The signed zone, a next hop on 127.0.0.1 whose key the TLSA records name, and a man in
/// the middle on 127.0.0.2.
struct World {
    dns: TestDns,
    port: u16,
    good: Seen,
    mitm: Seen,
    /// `3 1 1` for the true hop's key.
    tlsa: Rr,
    anchor: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (_, good_tls, key) = certificate(dir.path(), "good", &["mx.example"]);
        let (_, bad_tls, _) = certificate(dir.path(), "mitm", &["mx.example"]);
        let (addr, good) = next_hop("127.0.0.1:0".parse().unwrap(), good_tls, true).await;
        let (_, mitm) = next_hop(SocketAddr::from(([127, 0, 0, 2], addr.port())), bad_tls, true).await;
        let dns = TestDns::signed("test").await;
        let anchor = dns.trust_anchor(dir.path());
        let tlsa = Rr::Tlsa(3, 1, 1, sha256(&key.public_key_der()));
        World { dns, port: addr.port(), good, mitm, tlsa, anchor, _dir: dir }
    }

    /// `domain` has one MX, `mx.DOMAIN`, at `ip`, with `tlsa` records for port 25's stand-in.
    fn domain(&self, domain: &str, ip: [u8; 4], tlsa: Vec<Rr>) {
        let mx = format!("mx.{domain}");
        self.dns.set(domain, vec![Rr::Mx(10, mx.clone())]);
        self.dns.set(&mx, vec![Rr::A(ip.into())]);
        self.dns.set(&format!("_{}._tcp.{mx}", self.port), tlsa);
    }

    fn resolver(&self) -> HickoryMx {
        HickoryMx::with_dnssec(Some(self.dns.addr), &Dnssec::On(Some(self.anchor.clone()))).unwrap()
    }

    fn relay(&self, dir: &Path) -> RelayConfig {
        let mut c = RelayConfig::new("a.test", dir);
        c.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
        c.retry_interval = Duration::from_millis(300);
        c.max_retry_interval = Duration::from_millis(600);
        c.dns_server = Some(self.dns.addr);
        c.dnssec_trust_anchor = Some(self.anchor.clone());
        c.smtp_port = self.port;
        c.mta_sts = false;
        c
    }
}

#[tokio::test]
async fn the_validating_resolver_tells_secure_from_bogus() {
    let w = World::new().await;
    w.domain("b.test", [127, 0, 0, 1], vec![w.tlsa.clone(), Rr::Tlsa(1, 1, 1, vec![7; 32])]);
    w.domain("c.test", [127, 0, 0, 1], vec![]);
    w.dns.set("bogus.test", vec![Rr::Mx(10, "mx.b.test".into()), Rr::Bogus]);
    w.dns.set(&format!("_{}._tcp.mx.bogus.test", w.port), vec![w.tlsa.clone(), Rr::Bogus]);
    let r = w.resolver();
    assert_eq!(r.mx_dnssec("b.test").await.unwrap(), (MxAnswer::Hosts(vec!["mx.b.test".into()]), true));
    let Ok(TlsaAnswer::Secure(records)) = r.tlsa("mx.b.test", w.port).await else { panic!("secure TLSA") };
    assert_eq!(records.len(), 2);
    assert_eq!(records.iter().filter(|t| t.usable()).count(), 1, "usage 1 is unusable");
    assert_eq!(r.tlsa("mx.c.test", w.port).await.unwrap(), TlsaAnswer::Secure(vec![]), "absence proven");
    let e = r.mx_dnssec("bogus.test").await.unwrap_err();
    assert!(e.to_string().contains("bogus.test"), "{e}");
    assert!(r.tlsa("mx.bogus.test", w.port).await.is_err(), "a bogus TLSA answer is an error");
    // Without the zone's key nothing is secure (the root's key does not sign this zone), so
    // DANE never applies.
    let untrusting = HickoryMx::with_dnssec(Some(w.dns.addr), &Dnssec::On(None)).unwrap();
    let r2 = untrusting.mx_dnssec("b.test").await;
    assert!(!matches!(r2, Ok((_, true))), "{r2:?}");
    // And without DNSSEC, DANE's look-ups say "insecure".
    let plain = HickoryMx::new(Some(w.dns.addr)).unwrap();
    assert!(!plain.mx_dnssec("b.test").await.unwrap().1);
    assert_eq!(plain.tlsa("mx.b.test", w.port).await.unwrap(), TlsaAnswer::Insecure);
}

#[tokio::test]
async fn dane_delivers_to_the_named_key_and_defers_anyone_else() {
    let w = World::new().await;
    w.domain("b.test", [127, 0, 0, 1], vec![w.tlsa.clone()]);
    // A man in the middle answers for c.test's MX: TLSA names the true key.
    w.domain("c.test", [127, 0, 0, 2], vec![w.tlsa.clone()]);
    // d.test's TLSA records are bogus.
    w.domain("d.test", [127, 0, 0, 1], vec![w.tlsa.clone(), Rr::Bogus]);
    // e.test: signed, only a PKIX record (unusable): encrypted, not authenticated.
    w.domain("e.test", [127, 0, 0, 2], vec![Rr::Tlsa(1, 1, 1, vec![7; 32])]);
    // f.test: signed, no TLSA records: today's opportunistic TLS.
    w.domain("f.test", [127, 0, 0, 2], vec![]);
    let dir = tempfile::tempdir().unwrap();
    let a = InProcess::start(w.relay(dir.path()), None).await;

    assert!(submit_tls(a.addr, "bob@b.test", "Subject: 1\r\n\r\nto the true key\r\n", false).await.all_accepted());
    assert!(submit_tls(a.addr, "bob@b.test", "Subject: 2\r\n\r\nsealed\r\n", true).await.all_accepted());
    let good = w.good.clone();
    wait_until("two DANE deliveries", move || good.lock().unwrap().len() == 2).await;
    let mut got = w.good.lock().unwrap().clone();
    got.sort_by_key(|m| m.data.contains("sealed"));
    assert!(got.iter().all(|m| m.tls), "{got:?}");
    assert_eq!((got[0].requiretls, got[1].requiretls), (false, true), "REQUIRETLS went on over DANE");

    assert!(submit_tls(a.addr, "carol@c.test", "Subject: 3\r\n\r\nintercepted?\r\n", false).await.all_accepted());
    let e = last_error(&a, "carol@c.test").await;
    assert!(e.starts_with("451 4.7.5") && e.contains("DANE requires valid TLS"), "{e}");
    assert!(submit_tls(a.addr, "dave@d.test", "Subject: 4\r\n\r\nbogus\r\n", false).await.all_accepted());
    let e = last_error(&a, "dave@d.test").await;
    assert!(e.starts_with("451 4.7.5") && e.contains("DANE TLSA look-up failed"), "{e}");

    assert!(submit_tls(a.addr, "erin@e.test", "Subject: 5\r\n\r\nencrypt only\r\n", false).await.all_accepted());
    assert!(submit_tls(a.addr, "frank@f.test", "Subject: 6\r\n\r\nopportunistic\r\n", false).await.all_accepted());
    let mitm = w.mitm.clone();
    wait_until("two deliveries without DANE authentication", move || mitm.lock().unwrap().len() == 2).await;
    let got = w.mitm.lock().unwrap().clone();
    assert!(got.iter().all(|m| m.tls && !m.data.contains("intercepted")), "{got:?}");
    assert_eq!(w.good.lock().unwrap().len(), 2, "nothing for d.test was delivered");
    a.stop().await;
}

#[tokio::test]
async fn tls_required_no_overrides_a_failed_dane_check_but_requiretls_never_does() {
    let w = World::new().await;
    w.domain("c.test", [127, 0, 0, 2], vec![w.tlsa.clone()]);
    w.domain("f.test", [127, 0, 0, 2], vec![]);
    let dir = tempfile::tempdir().unwrap();
    let a = InProcess::start(w.relay(dir.path()), None).await;
    assert!(submit_tls(a.addr, "carol@c.test", "TLS-Required: No\r\nSubject: w\r\n\r\nwaived\r\n", false)
        .await
        .all_accepted());
    let mitm = w.mitm.clone();
    wait_until("the waived message", move || mitm.lock().unwrap().len() == 1).await;
    // REQUIRETLS to a signed domain without TLSA records: no secure route, returned.
    assert!(submit_tls(a.addr, "frank@f.test", "Subject: r\r\n\r\nsealed\r\n", true).await.all_accepted());
    let d = dir.path().to_path_buf();
    wait_until("a 5.7.30 notice", move || tests::maildir_files(&d, "alice").len() == 1).await;
    let notice = std::fs::read_to_string(&tests::maildir_files(dir.path(), "alice")[0]).unwrap();
    assert!(notice.contains("Status: 5.7.30") && notice.contains("no secure route to f.test"), "{notice}");
    assert_eq!(w.mitm.lock().unwrap().len(), 1);
    a.stop().await;
}

/// The resolver the relay builds refuses a trust-anchor file without a key.
#[tokio::test]
async fn a_trust_anchor_file_without_a_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.key");
    std::fs::write(&file, "; nothing here\n").unwrap();
    let e = HickoryMx::with_dnssec(None, &Dnssec::On(Some(file))).err().expect("refused");
    assert!(e.to_string().contains("empty.key"), "{e}");
}
