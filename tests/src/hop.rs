//! Next hops for delivery tests: SMTP servers with STARTTLS and a chosen certificate that
//! keep what they receive, and certificates made for them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use smtp_server::{AcceptAll, Server, Transaction};

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

/// An SMTP server on `listen` with STARTTLS (`tls`) and REQUIRETLS, accepting everything.
pub async fn next_hop(listen: SocketAddr, tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Seen) {
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
        .options(|o| o.session.requiretls = true)
        .bind(AcceptAll, mail)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    (addr, seen)
}
