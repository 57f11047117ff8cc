//! Criterion benchmarks for the transport-security policy layer (issue 12's measurements):
//! an MTA-STS policy look-up with a warm cache and a cold one, DANE's validated look-ups, and
//! the delivery rate to one destination under DANE and under opportunistic TLS (both with
//! connection reuse and TLS resumption). Everything runs on loopback: a test DNS server (a
//! signed zone for DANE), an HTTPS policy host, a relay and a next hop.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use smtp_client::{CertVerify, ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;
use smtp_relay::dns::{Dnssec, HickoryMx, MxResolver};
use smtp_relay::mta_sts::{Fetcher, StsCache};
use smtp_relay::{Directory, RelayConfig};
use tests::dns::{Rr, TestDns};
use tests::hop::{certificate, next_hop, sha256};
use tests::https::TestHttps;
use tests::InProcess;

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls, key) = certificate(dir.path(), "p", &["mta-sts.b.test", "mx.b.test"]);
    let (https, dns) = rt.block_on(async { (TestHttps::start("127.0.0.1", tls).await, TestDns::signed("test").await) });
    https.respond("version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n");
    dns.set("_mta-sts.b.test", vec![Rr::Txt("v=STSv1; id=1".into())]);
    dns.set("mta-sts.b.test", vec![Rr::A([127, 0, 0, 1].into())]);
    dns.set("b.test", vec![Rr::Mx(10, "mx.b.test".into())]);
    dns.set("mx.b.test", vec![Rr::A([127, 0, 0, 1].into())]);
    dns.set("_25._tcp.mx.b.test", vec![Rr::Tlsa(3, 1, 1, sha256(&key.public_key_der()))]);
    let plain = HickoryMx::new(Some(dns.addr)).unwrap();
    let fetcher = Fetcher::new(&CertVerify::CaFile(ca), https.addr.port(), Duration::from_secs(5)).unwrap();
    let warm = StsCache::new(None, fetcher.clone()).unwrap();
    let now = 1_000_000;
    assert!(rt.block_on(warm.policy(&plain, "b.test", now)).policy.is_some());
    let mut g = c.benchmark_group("policy");
    g.bench_function("mta-sts warm (TXT look-up, cached policy)", |b| {
        b.iter(|| rt.block_on(warm.policy(&plain, "b.test", now)).policy.expect("policy"))
    });
    g.bench_function("mta-sts cold (TXT, A, HTTPS fetch)", |b| {
        b.iter(|| {
            let cold = StsCache::new(None, fetcher.clone()).unwrap();
            rt.block_on(cold.policy(&plain, "b.test", now)).policy.expect("policy")
        })
    });
    let anchor = dns.trust_anchor(dir.path());
    let secure = HickoryMx::with_dnssec(Some(dns.addr), &Dnssec::On(Some(anchor))).unwrap();
    g.bench_function("dane (validated MX and TLSA)", |b| {
        b.iter(|| {
            rt.block_on(async {
                assert!(secure.mx_dnssec("b.test").await.unwrap().1);
                secure.tlsa("mx.b.test", 25).await.unwrap()
            })
        })
    });
    g.finish();
}

/// Sends `n` messages to `to` through the relay at `addr` over one connection.
async fn submit(addr: SocketAddr, to: &str, n: u64) {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::None;
    let mut conn = SmtpClient::new(o).unwrap().connect_addr(addr, "127.0.0.1").await.unwrap();
    let env = Envelope::from_str_addr("alice@a.test").unwrap().to_str_addr(to).unwrap();
    for _ in 0..n {
        let out = conn.send(&env, bytes::Bytes::from_static(b"Subject: b\r\n\r\nbench\r\n").into()).await.unwrap();
        assert!(out.all_accepted());
    }
    conn.quit().await.unwrap();
}

fn delivery(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (_, tls, key) = certificate(certs.path(), "hop", &["mx.b.test", "mx.c.test"]);
    let (dns, hop) = rt
        .block_on(async { (TestDns::signed("test").await, next_hop("127.0.0.1:0".parse().unwrap(), tls, true).await) });
    let (port, seen) = (hop.0.port(), hop.1);
    for d in ["b", "c"] {
        dns.set(&format!("{d}.test"), vec![Rr::Mx(10, format!("mx.{d}.test"))]);
        dns.set(&format!("mx.{d}.test"), vec![Rr::A([127, 0, 0, 1].into())]);
    }
    // b.test: DANE-EE for the hop's key; c.test: signed, no TLSA records (opportunistic).
    dns.set(&format!("_{port}._tcp.mx.b.test"), vec![Rr::Tlsa(3, 1, 1, sha256(&key.public_key_der()))]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RelayConfig::new("a.test", dir.path());
    cfg.directory = Directory::new(["a.test".to_string()], Vec::<String>::new());
    cfg.dns_server = Some(dns.addr);
    cfg.dnssec_trust_anchor = Some(dns.trust_anchor(certs.path()));
    cfg.smtp_port = port;
    cfg.mta_sts = false;
    let a = rt.block_on(InProcess::start(cfg, None));
    let mut g = c.benchmark_group("delivery to one destination");
    g.sample_size(10);
    for (name, to) in [("dane", "bob@b.test"), ("opportunistic", "bob@c.test")] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                let before = seen.lock().unwrap().len() as u64;
                let start = Instant::now();
                rt.block_on(async {
                    submit(a.addr, to, n).await;
                    while (seen.lock().unwrap().len() as u64) < before + n {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
    rt.block_on(a.stop());
}

criterion_group!(benches, lookups, delivery);
criterion_main!(benches);
