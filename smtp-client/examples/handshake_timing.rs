//! Full vs resumed TLS handshake time against a local smtp-server (STARTTLS, TLS 1.3).
//!
//! `cargo run --release -p smtp-client --example handshake_timing`
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use smtp_client::{CertVerify, ClientOptions, SmtpClient, TlsMode};
use smtp_proto::{codes, Domain};
use smtp_server::{tls, AcceptAll, Server, Transaction};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mail = tower::service_fn(|_tx: Transaction| async { Ok::<_, std::convert::Infallible>(codes::ok()) });
    let server = Server::builder("mx.test")
        .listen("127.0.0.1:0".parse()?)
        .tls(tls::self_signed(dir.path(), "mx.test")?)
        .bind(AcceptAll, mail)
        .await?;
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    let options = || {
        let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
        o.tls = TlsMode::Required;
        o.verify = CertVerify::CaFile(dir.path().join("cert.pem"));
        o
    };
    let n = 200;
    let mut full = Vec::new();
    for _ in 0..n {
        let client = SmtpClient::new(options())?; // a fresh cache: always a full handshake
        let t = Instant::now();
        let c = client.connect_addr(addr, "mx.test").await?;
        full.push(t.elapsed());
        assert!(!c.tls_info().unwrap().resumed);
        c.quit().await?;
    }
    let shared = SmtpClient::new(options())?;
    shared.connect_addr(addr, "mx.test").await?.quit().await?;
    let mut resumed = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let c = shared.connect_addr(addr, "mx.test").await?;
        resumed.push(t.elapsed());
        c.quit().await?;
    }
    let (f, r) = shared.handshakes();
    println!("connect + greeting + EHLO + STARTTLS + TLS 1.3 handshake + EHLO, median of {n}:");
    println!("  full handshake:    {:?}", median(full));
    println!("  resumed handshake: {:?}  ({r} of {} resumed)", median(resumed), f + r);
    Ok(())
}
