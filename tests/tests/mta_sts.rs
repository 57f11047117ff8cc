//! MTA-STS (RFC 8461) end to end: a DNS server and an HTTPS policy host started by the test, the
//! relay's real resolver and fetcher, next hops with a trusted certificate and a man in the
//! middle with an untrusted one (same names, another key) on another loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smtp_client::CertVerify;
use smtp_relay::dns::HickoryMx;
use smtp_relay::mta_sts::{FetchError, Fetcher, Mode, StsCache};
use smtp_relay::{Directory, RelayConfig};
use tests::dns::{Rr, TestDns};
use tests::hop::{last_error, next_hop, submit_tls, Seen};
use tests::https::TestHttps;
use tests::{wait_until, InProcess};

/// The names every certificate here carries.
const NAMES: [&str; 7] =
    ["mx.b.test", "mx.c.test", "mx.d.test", "mta-sts.b.test", "mta-sts.c.test", "mta-sts.d.test", "other.d.test"];

fn certificate(dir: &Path, tag: &str) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let (cert, config, _) = tests::hop::certificate(dir, tag, &NAMES);
    (cert, config)
}

/// DNS, the policy host, a trusted next hop on 127.0.0.1 and a man in the middle on 127.0.0.2
/// (same port, so MX records choose between them by address).
struct World {
    dns: TestDns,
    https: TestHttps,
    port: u16,
    good: Seen,
    mitm: Seen,
    ca: PathBuf,
    _certs: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let certs = tempfile::tempdir().unwrap();
        let (ca, good_tls) = certificate(certs.path(), "good");
        let (_, bad_tls) = certificate(certs.path(), "mitm");
        let (good_addr, good) = next_hop("127.0.0.1:0".parse().unwrap(), good_tls.clone(), true).await;
        let (_, mitm) = next_hop(SocketAddr::from(([127, 0, 0, 2], good_addr.port())), bad_tls, true).await;
        let https = TestHttps::start("127.0.0.1", good_tls).await;
        let dns = TestDns::start().await;
        World { dns, https, port: good_addr.port(), good, mitm, ca, _certs: certs }
    }

    /// Publishes `domain`: a policy id, the policy host, one MX at `mx` with address `ip`.
    fn domain(&self, domain: &str, id: &str, mx: &str, ip: [u8; 4]) {
        self.dns.set(&format!("_mta-sts.{domain}"), vec![Rr::Txt(format!("v=STSv1; id={id};"))]);
        self.dns.set(&format!("mta-sts.{domain}"), vec![Rr::A([127, 0, 0, 1].into())]);
        self.dns.set(domain, vec![Rr::Mx(10, mx.to_string())]);
        self.dns.set(mx, vec![Rr::A(ip.into())]);
    }

    fn policy(&self, mode: &str) {
        self.https.respond(&format!(
            "version: STSv1\r\nmode: {mode}\r\nmx: mx.b.test\r\nmx: mx.c.test\r\nmx: mx.d.test\r\nmax_age: 86400\r\n"
        ));
    }

    fn relay(&self, dir: &Path) -> RelayConfig {
        let mut c = RelayConfig::new("a.test", dir);
        c.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
        c.retry_interval = Duration::from_millis(300);
        c.max_retry_interval = Duration::from_millis(600);
        c.dns_server = Some(self.dns.addr);
        c.smtp_port = self.port;
        c.mta_sts_port = self.https.addr.port();
        c.dane = false;
        c.outbound_ca = Some(self.ca.clone());
        c
    }

    fn fetcher(&self) -> Fetcher {
        Fetcher::new(&CertVerify::CaFile(self.ca.clone()), self.https.addr.port(), Duration::from_secs(10)).unwrap()
    }
}

#[tokio::test]
async fn enforce_delivers_over_validated_tls_and_defers_a_man_in_the_middle() {
    let w = World::new().await;
    w.policy("enforce");
    w.domain("b.test", "1", "mx.b.test", [127, 0, 0, 1]);
    w.domain("c.test", "1", "mx.c.test", [127, 0, 0, 2]);
    w.domain("d.test", "1", "other.d.test", [127, 0, 0, 1]);
    let dir = tempfile::tempdir().unwrap();
    let a = InProcess::start(w.relay(dir.path()), None).await;

    // The true MX with a trusted certificate: delivered, encrypted; REQUIRETLS is satisfied
    // by the policy and passed on.
    assert!(submit_tls(a.addr, "bob@b.test", "Subject: one\r\n\r\nfirst\r\n", false).await.all_accepted());
    assert!(submit_tls(a.addr, "bob@b.test", "Subject: two\r\n\r\nsealed\r\n", true).await.all_accepted());
    let good = w.good.clone();
    wait_until("two deliveries to mx.b.test", move || good.lock().unwrap().len() == 2).await;
    let mut seen = w.good.lock().unwrap().clone();
    seen.sort_by_key(|s| s.data.contains("sealed"));
    assert!(seen.iter().all(|s| s.tls), "over TLS: {seen:?}");
    assert_eq!((seen[0].requiretls, seen[1].requiretls), (false, true), "REQUIRETLS passed on only for the sealed one");

    // A man in the middle for mx.c.test: refused, the message waits.
    assert!(submit_tls(a.addr, "carol@c.test", "Subject: three\r\n\r\nkept back\r\n", false).await.all_accepted());
    let e = last_error(&a, "carol@c.test").await;
    assert!(e.starts_with("451 4.7.5") && e.contains("MTA-STS policy requires valid TLS"), "{e}");
    // An MX the policy does not name: not tried at all.
    assert!(submit_tls(a.addr, "dave@d.test", "Subject: four\r\n\r\nnowhere\r\n", false).await.all_accepted());
    let e = last_error(&a, "dave@d.test").await;
    assert!(e.starts_with("451 4.7.5") && e.contains("matches its MTA-STS policy"), "{e}");
    assert_eq!(w.good.lock().unwrap().len(), 2, "nothing for d.test went to other.d.test");

    // TLS-Required: No (RFC 8689 4.2.2): the sender prefers delivery; it goes, encrypted
    // without authentication.
    assert!(submit_tls(a.addr, "carol@c.test", "TLS-Required: No\r\nSubject: five\r\n\r\nwaived\r\n", false)
        .await
        .all_accepted());
    let mitm = w.mitm.clone();
    wait_until("the waived message at the man in the middle", move || !mitm.lock().unwrap().is_empty()).await;
    let got = w.mitm.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only the waived message: {got:?}");
    assert!(got[0].data.contains("waived") && got[0].tls, "{got:?}");
    assert_eq!(w.https.count(), 3, "one policy fetch per domain, then the cache: {:?}", w.https.requests());
    assert!(w.https.requests()[0].starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"));
    a.stop().await;
}

#[tokio::test]
async fn testing_mode_delivers_despite_a_failed_check() {
    let w = World::new().await;
    w.policy("testing");
    w.domain("c.test", "1", "mx.c.test", [127, 0, 0, 2]);
    let dir = tempfile::tempdir().unwrap();
    let a = InProcess::start(w.relay(dir.path()), None).await;
    assert!(submit_tls(a.addr, "carol@c.test", "Subject: t\r\n\r\ntesting\r\n", false).await.all_accepted());
    let mitm = w.mitm.clone();
    wait_until("delivery in testing mode", move || mitm.lock().unwrap().len() == 1).await;
    // ...and the failed check is counted for the domain's TLS report.
    let day = smtp_relay::tls_rpt::utc_date(std::time::SystemTime::now());
    let counts = smtp_relay::tls_rpt::read_day(&dir.path().join("tls-rpt").join(format!("{day}.json"))).unwrap();
    let c = &counts["c.test"][0];
    assert!(c.policy.strings.contains(&"mode: testing".to_string()), "{c:?}");
    assert_eq!((c.success, c.failures[0].result_type.as_str(), c.failures[0].count), (0, "certificate-not-trusted", 1));
    // REQUIRETLS needs a policy in enforce mode: testing is not a secure route.
    assert!(submit_tls(a.addr, "carol@c.test", "Subject: t\r\n\r\nsealed\r\n", true).await.all_accepted());
    let d = dir.path().to_path_buf();
    wait_until("a 5.7.30 notice", move || tests::maildir_files(&d, "alice").len() == 1).await;
    let notice = std::fs::read_to_string(&tests::maildir_files(dir.path(), "alice")[0]).unwrap();
    assert!(notice.contains("Status: 5.7.30") && notice.contains("no secure route to c.test"), "{notice}");
    assert_eq!(w.mitm.lock().unwrap().len(), 1);
    a.stop().await;
}

#[tokio::test]
async fn the_cached_policy_survives_a_failed_refresh_and_a_restart_until_it_expires() {
    let w = World::new().await;
    w.policy("enforce");
    w.domain("b.test", "1", "mx.b.test", [127, 0, 0, 1]);
    let dir = tempfile::tempdir().unwrap();
    let resolver = HickoryMx::new(Some(w.dns.addr)).unwrap();
    let cache = StsCache::new(Some(dir.path().to_path_buf()), w.fetcher()).unwrap();
    let now = 1_000_000;
    let found = cache.policy(&resolver, "b.test", now).await;
    let p = found.policy.expect("fetched");
    assert_eq!((p.id.as_str(), p.policy.mode, p.fetched), ("1", Mode::Enforce, now));
    assert!(found.failure.is_none());
    assert!(cache.policy(&resolver, "B.test.", now + 10).await.policy.is_some());
    assert_eq!(w.https.count(), 1, "same id: the cache answers");

    // A new id, and the policy host fails: the cached policy holds, the failure is reported.
    w.dns.set("_mta-sts.b.test", vec![Rr::Txt("v=STSv1; id=2".into())]);
    w.https.respond_raw("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let found = cache.policy(&resolver, "b.test", now + 20).await;
    assert_eq!(found.policy.map(|c| c.id.clone()), Some("1".to_string()));
    let e = found.failure.expect("reported");
    assert_eq!(e.result_type().as_str(), "sts-policy-fetch-error", "{e}");
    assert!(e.to_string().contains("HTTP status 500"), "{e}");
    assert_eq!(w.https.count(), 2);

    // A restart reads the policy back from disk; without a TXT record it still holds.
    w.dns.set("_mta-sts.b.test", vec![]);
    let again = StsCache::new(Some(dir.path().to_path_buf()), w.fetcher()).unwrap();
    let found = again.policy(&resolver, "b.test", now + 30).await;
    assert_eq!(found.policy.map(|c| (c.id.clone(), c.fetched)), Some(("1".to_string(), now)));
    // Past max_age it is gone.
    assert!(again.policy(&resolver, "b.test", now + 86_400).await.policy.is_none());
    // A DNS failure is not a reason to drop it either.
    w.dns.set("_mta-sts.b.test", vec![Rr::ServFail]);
    assert!(again.policy(&resolver, "b.test", now + 40).await.policy.is_some());
    assert_eq!(w.https.count(), 2, "no fetch without a usable record");
}

#[tokio::test]
async fn policy_hosts_that_answer_wrongly_are_refused_with_the_report_type() {
    let w = World::new().await;
    w.domain("b.test", "1", "mx.b.test", [127, 0, 0, 1]);
    let resolver = HickoryMx::new(Some(w.dns.addr)).unwrap();
    let fetcher = w.fetcher();
    let ok = "version: STSv1\nmode: enforce\nmx: mx.b.test\nmax_age: 60\n";
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            b"HTTP/1.1 301 Moved\r\nLocation: https://mta-sts.b.test/x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "sts-policy-fetch-error",
            "HTTP status 301",
        ),
        (
            format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{ok}", ok.len()).into_bytes(),
            "sts-policy-fetch-error",
            "not text/plain",
        ),
        (
            format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 70000\r\n\r\n{}", "x".repeat(70_000))
                .into_bytes(),
            "sts-policy-fetch-error",
            "at most 65536",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n\r\nversion: STSv1\r\n".to_vec(),
            "sts-policy-invalid",
            "no mode",
        ),
    ];
    for (raw, kind, text) in cases {
        w.https.respond_raw(raw);
        let e = fetcher.fetch(&resolver, "b.test").await.expect_err(text);
        assert_eq!(e.result_type().as_str(), kind, "{e}");
        assert!(e.to_string().contains(text), "{e}");
    }
    // Chunked transfer coding and media type parameters are fine.
    w.https.respond_raw(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: Text/Plain; charset=us-ascii\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{ok}\r\n0\r\n\r\n",
        ok.len()
    ));
    let (p, text) = fetcher.fetch(&resolver, "b.test").await.unwrap();
    assert_eq!((p.mode, text.as_str()), (Mode::Enforce, ok));

    // A policy host whose certificate is not trusted.
    let certs = tempfile::tempdir().unwrap();
    let (_, untrusted) = certificate(certs.path(), "other");
    let fake = TestHttps::start("127.0.0.1", untrusted).await;
    fake.respond(ok);
    let f = Fetcher::new(&CertVerify::CaFile(w.ca.clone()), fake.addr.port(), Duration::from_secs(10)).unwrap();
    let e = f.fetch(&resolver, "b.test").await.unwrap_err();
    assert!(matches!(e, FetchError::WebPki { .. }), "{e}");
    assert_eq!(e.result_type().as_str(), "sts-webpki-invalid");
    // No address for the policy host.
    let e = f.fetch(&resolver, "nowhere.test").await.unwrap_err();
    assert_eq!(e.result_type().as_str(), "sts-policy-fetch-error", "{e}");
}

/// The report part of a TLS report mail: base64 of gzipped JSON.
fn report_of_mail(mail: &str) -> serde_json::Value {
    use base64::Engine;
    let part = mail.split("Content-Type: application/tlsrpt+gzip").nth(1).expect("a report part");
    let b64: String = part.split("\n\n").nth(1).unwrap().split("--").next().unwrap().split_whitespace().collect();
    gunzip_json(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
}

fn gunzip_json(gz: &[u8]) -> serde_json::Value {
    use std::io::Read;
    let mut json = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut json).unwrap();
    serde_json::from_str(&json).unwrap()
}

/// TLS-RPT (RFC 8460): sessions under a policy are counted per domain and day; once the day is
/// over, each domain's report goes to its `rua`: by mail through the queue, and by HTTPS POST.
#[tokio::test]
async fn finished_days_are_reported_by_mail_and_by_https() {
    let w = World::new().await;
    w.policy("enforce");
    w.domain("b.test", "1", "mx.b.test", [127, 0, 0, 1]);
    w.domain("c.test", "1", "mx.c.test", [127, 0, 0, 2]);
    w.dns.set("_smtp._tls.b.test", vec![Rr::Txt("v=TLSRPTv1; rua=mailto:reports@a.test".into())]);
    let post = format!("https://mta-sts.c.test:{}/tlsrpt", w.https.addr.port());
    w.dns.set("_smtp._tls.c.test", vec![Rr::Txt(format!("v=TLSRPTv1; rua={post}"))]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = w.relay(dir.path());
    cfg.tls_report_interval = Duration::from_millis(100);
    let a = InProcess::start(cfg.clone(), None).await;
    assert!(submit_tls(a.addr, "bob@b.test", "Subject: ok\r\n\r\nfine\r\n", false).await.all_accepted());
    assert!(submit_tls(a.addr, "carol@c.test", "Subject: no\r\n\r\nintercepted\r\n", false).await.all_accepted());
    let good = w.good.clone();
    wait_until("delivery to b.test", move || good.lock().unwrap().len() == 1).await;
    assert!(last_error(&a, "carol@c.test").await.starts_with("451 4.7.5"));
    a.stop().await;

    // Today's counts, as `tern tls-report` shows them; then the day is over.
    let now = std::time::SystemTime::now();
    let counts = dir.path().join("tls-rpt").join(format!("{}.json", smtp_relay::tls_rpt::utc_date(now)));
    let today = smtp_relay::tls_rpt::read_day(&counts).unwrap();
    assert_eq!(today["b.test"][0].success, 1);
    assert_eq!(today["c.test"][0].failures[0].result_type, "certificate-not-trusted");
    let tern = |args: &[&str]| {
        let mut cmd = std::process::Command::new(tests::tern_bin());
        cmd.arg("tls-report").arg("--data-dir").arg(dir.path()).args(args);
        tests::run_bounded(&mut cmd, b"")
    };
    let (code, out, err) = tern(&["--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["b.test"][0]["success"], 1, "{out}");
    let (code, out, _) = tern(&[]);
    assert!(code == 0 && out.contains("certificate-not-trusted") && out.contains("mx.c.test"), "{out}");
    let (code, _, err) = tern(&["--date", "../../etc"]);
    assert_eq!((code, err.trim()), (1, "tern: --date must be YYYY-MM-DD, got \"../../etc\""));
    let yesterday = smtp_relay::tls_rpt::utc_date(now - Duration::from_secs(86_400));
    std::fs::rename(&counts, counts.with_file_name(format!("{yesterday}.json"))).unwrap();

    let a = InProcess::start(cfg, None).await;
    let d = dir.path().to_path_buf();
    wait_until("the mailed report", move || tests::maildir_files(&d, "reports").len() == 1).await;
    // Maildir keeps lines with LF endings.
    let mail = std::fs::read_to_string(&tests::maildir_files(dir.path(), "reports")[0]).unwrap();
    assert!(mail.contains("TLS-Report-Domain: b.test\n") && mail.contains("report-type=\"tlsrpt\""), "{mail}");
    let report = report_of_mail(&mail);
    assert_eq!(report["date-range"]["start-datetime"], format!("{yesterday}T00:00:00Z"));
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts");
    assert_eq!(policy["policy"]["policy-domain"], "b.test");
    assert_eq!(policy["summary"]["total-successful-session-count"], 1);
    assert_eq!(policy["summary"]["total-failure-session-count"], 0);

    let https = &w.https;
    wait_until("the posted report", || https.requests().iter().any(|r| r.starts_with("POST /tlsrpt "))).await;
    let posted = https.raw_requests().into_iter().find(|r| r.starts_with(b"POST /tlsrpt ")).unwrap();
    let head = String::from_utf8_lossy(&posted[..tests::https::head_end(&posted)]).to_ascii_lowercase();
    assert!(head.contains("content-type: application/tlsrpt+gzip"), "{head}");
    let report = gunzip_json(&posted[tests::https::head_end(&posted)..]);
    let failure = &report["policies"][0]["failure-details"][0];
    assert_eq!(failure["result-type"], "certificate-not-trusted");
    assert_eq!(failure["receiving-mx-hostname"], "mx.c.test");
    assert_eq!(failure["receiving-ip"], "127.0.0.2");
    assert!(failure["failed-session-count"].as_u64().unwrap() >= 1);
    let sent = dir.path().join("tls-rpt").join(format!("{yesterday}.json.sent"));
    wait_until("the day marked sent", || sent.exists()).await;
    a.stop().await;
}
