//! Next hops for delivery tests: SMTP servers with STARTTLS and a chosen certificate that
//! keep what they receive, and certificates made for them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use smtp_client::{CertVerify, ClientOptions, Envelope, SendOutcome, SmtpClient, TlsMode};
use smtp_proto::command::Ret;
use smtp_proto::Domain;
use smtp_server::{AcceptAll, Server, Transaction};

use crate::InProcess;

/// One message as a next hop received it.
#[derive(Debug, Clone)]
pub struct HopMail {
    /// Whether MAIL carried REQUIRETLS.
    pub requiretls: bool,
    /// Whether the session was encrypted.
    pub tls: bool,
    /// The message data.
    pub data: String,
}

/// What a next hop received so far.
pub type Seen = Arc<Mutex<Vec<HopMail>>>;

/// SHA-256, for TLSA record data.
pub fn sha256(d: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, d).as_ref().to_vec()
}

/// A self-signed certificate for `names` in `dir`: its PEM file, a server configuration, and
/// its key (for TLSA records).
pub fn certificate(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, Arc<rustls::ServerConfig>, rcgen::KeyPair) {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let (cert, key) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let config = smtp_server::tls::from_pem_files(&cert, &key).unwrap();
    (cert, config, ck.key_pair)
}

/// An SMTP server on `listen` with STARTTLS (`tls`), offering REQUIRETLS or not, accepting
/// everything.
pub async fn next_hop(listen: SocketAddr, tls: Arc<rustls::ServerConfig>, requiretls: bool) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let seen = seen2.clone();
        async move {
            let data = tx.body.collect(1 << 20).await?;
            seen.lock().unwrap().push(HopMail {
                requiretls: tx.envelope.params.requiretls,
                tls: tx.session.tls.is_some(),
                data: String::from_utf8_lossy(&data).into_owned(),
            });
            Ok::<_, smtp_server::BodyError>(smtp_proto::codes::message_accepted())
        }
    });
    let server = Server::builder("hop.test")
        .listen(listen)
        .tls(tls)
        .options(|o| o.session.requiretls = requiretls)
        .bind(AcceptAll, mail)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    (addr, seen)
}

/// Submits one message from `alice@a.test` to `to` at `addr` over STARTTLS (the certificate is
/// not checked). With `requiretls` the MAIL command carries REQUIRETLS (which must be offered)
/// and RET=FULL, so a notice could carry the body if the relay forgot RFC 8689 5.
pub async fn submit_tls(addr: SocketAddr, to: &str, body: &str, requiretls: bool) -> SendOutcome {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::Required;
    o.verify = CertVerify::Insecure;
    let mut conn = SmtpClient::new(o).unwrap().connect_addr(addr, "127.0.0.1").await.unwrap();
    let mut env = Envelope::from_str_addr("alice@a.test").unwrap().to_str_addr(to).unwrap();
    if requiretls {
        assert!(conn.capabilities().requiretls, "REQUIRETLS offered under TLS");
        env.params.requiretls = true;
        env.params.ret = Some(Ret::Full);
    }
    let out = conn.send(&env, bytes::Bytes::from(body.to_string()).into()).await.unwrap();
    conn.quit().await.unwrap();
    out
}

/// Waits until the queued message for `rcpt` has been tried and returns its last error.
pub async fn last_error(a: &InProcess, rcpt: &str) -> String {
    let q = a.relay.queue();
    let found = tokio::time::timeout(crate::WAIT, async {
        loop {
            for id in q.list().await.unwrap() {
                let Ok(m) = q.load(&id).await else { continue };
                let r = &m.recipients[0];
                if r.path.to_string().contains(rcpt) && r.attempts >= 1 {
                    return r.last_error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no attempt for {rcpt}"))
}
