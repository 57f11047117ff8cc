//! Message authentication costs: DKIM signing and SPF/DKIM/DMARC verification of a 10 KiB
//! message (RSA-2048 and Ed25519; verification through a local DNS server whose answers the
//! resolver caches),
//! and the durable accept rate of a relay with signing on and off.
//!
//! `cargo bench -p tests --bench msgauth`
#![allow(missing_docs)] // criterion's macros

use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use smtp_client::{ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;
use smtp_relay::msgauth::{DkimSpec, MessageAuth, Origin};
use smtp_relay::{Directory, RelayConfig};
use tests::dns::{Rr, TestDns};
use tests::InProcess;

/// A 10 KiB message from `from`.
fn message(from: &str) -> bytes::Bytes {
    let mut m = format!("From: <{from}>\r\nTo: <bob@b.test>\r\nSubject: bench\r\nMessage-ID: <b@x>\r\n\r\n");
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() < 10 * 1024 {
        m.push_str(line);
    }
    m.into()
}

/// A key for `domain` in `dir`, published in `dns`: its spec.
fn key(dir: &Path, dns: &TestDns, domain: &str, ed25519: bool) -> DkimSpec {
    let (pem, record) = smtp_relay::msgauth::generate_key(ed25519).unwrap();
    let file = dir.join(format!("{domain}.pem"));
    std::fs::write(&file, pem).unwrap();
    // Cacheable answers, as real zones give: the verification cost is then the checks'.
    dns.set(&format!("s._domainkey.{domain}"), vec![Rr::Txt(record), Rr::Ttl(3600)]);
    dns.set(domain, vec![Rr::Txt("v=spf1 ip4:127.0.0.1 -all".into()), Rr::Ttl(3600)]);
    dns.set(&format!("_dmarc.{domain}"), vec![Rr::Txt("v=DMARC1; p=reject".into()), Rr::Ttl(3600)]);
    DkimSpec { domain: domain.into(), selector: "s".into(), key_file: file }
}

fn sign_and_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(TestDns::start());
    let dir = tempfile::tempdir().unwrap();
    let specs = [key(dir.path(), &dns, "rsa.test", false), key(dir.path(), &dns, "ed.test", true)];
    let signer = MessageAuth::new("mx.a.test", &specs, None, false).unwrap();
    let verifier = {
        let _guard = rt.enter();
        let resolver = smtp_relay::dns::HickoryMx::new(Some(dns.addr)).unwrap();
        std::sync::Arc::new(MessageAuth::new("mx.b.test", &[], Some(resolver.authenticator()), true).unwrap())
    };
    let mut g = c.benchmark_group("10 KiB message");
    for (name, from) in [("rsa-2048", "alice@rsa.test"), ("ed25519", "alice@ed.test")] {
        let m = message(from);
        g.bench_function(format!("sign {name}"), |b| b.iter(|| signer.sign(&m).expect("signed")));
        let signed: bytes::Bytes = [signer.sign(&m).unwrap().into_bytes(), m.to_vec()].concat().into();
        let origin = Origin { ip: [127, 0, 0, 1].into(), helo: "client.test", mail_from: from, trusted: false };
        let checked = rt.block_on(verifier.check(origin, signed.clone())).unwrap();
        assert!(checked.prefix.contains("dkim=pass"), "{}", checked.prefix);
        g.bench_function(format!("verify {name} (SPF, DKIM, DMARC)"), |b| {
            b.iter(|| rt.block_on(verifier.check(origin, signed.clone())).unwrap())
        });
    }
    g.finish();
}

/// Sends `n` 10 KiB messages from `from` through `addr` over one connection.
async fn submit(addr: std::net::SocketAddr, from: &str, n: u64) {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::None;
    let mut conn = SmtpClient::new(o).unwrap().connect_addr(addr, "127.0.0.1").await.unwrap();
    let env = Envelope::from_str_addr(from).unwrap().to_str_addr("bob@a.test").unwrap();
    let m = message(from);
    for _ in 0..n {
        assert!(conn.send(&env, m.clone().into()).await.unwrap().all_accepted());
    }
    conn.quit().await.unwrap();
}

fn accept_rate(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(TestDns::start());
    let keys = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("durable accept, 10 KiB, one connection");
    g.sample_size(10);
    for (name, dkim) in [("signing off", vec![]), ("signing rsa-2048", vec![key(keys.path(), &dns, "a.test", false)])] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RelayConfig::new("a.test", dir.path());
        cfg.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
        cfg.dns_server = Some(dns.addr);
        cfg.dkim = dkim;
        let a = rt.block_on(InProcess::start(cfg, None));
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                let start = Instant::now();
                rt.block_on(submit(a.addr, "alice@a.test", n));
                start.elapsed()
            })
        });
        rt.block_on(a.stop());
    }
    g.finish();
}

criterion_group!(benches, sign_and_verify, accept_rate);
criterion_main!(benches);
