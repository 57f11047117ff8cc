//! Integration tests over real loopback TCP and TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::auth::AuthMechanism;
use smtp_proto::{codes, Reply};
use smtp_server::{
    tls, AcceptAll, Decision, PolicyKind, PolicyRequest, Server, ServerOptions, ShutdownHandle, Transaction,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

type Inbox = Arc<Mutex<Vec<Got>>>;

/// A complete transaction as the test service saw it: the envelope, and the `Received:` line
/// followed by the collected data.
#[derive(Clone)]
struct Got {
    tx: Arc<Transaction>,
    message: bytes::Bytes,
}

impl std::ops::Deref for Got {
    type Target = Transaction;
    fn deref(&self) -> &Transaction {
        &self.tx
    }
}

struct TestServer {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    inbox: Inbox,
    handle: ShutdownHandle,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
}

/// A policy that knows one user (`u` / `p`) and refuses recipients whose local part is `bad`.
#[derive(Clone)]
struct TestPolicy;

impl tower::Service<PolicyRequest> for TestPolicy {
    type Response = Decision;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Decision, Self::Error>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: PolicyRequest) -> Self::Future {
        std::future::ready(Ok(match req.kind {
            PolicyKind::Rcpt { to, .. } if to.to_string().starts_with("<bad") => {
                Decision::Respond(codes::no_such_user())
            }
            PolicyKind::Auth { credentials, .. }
                if credentials.username == "u" && credentials.password.expose() == "p" =>
            {
                Decision::Accept
            }
            PolicyKind::Auth { .. } => Decision::Respond(codes::auth_failed()),
            _ => Decision::Accept,
        }))
    }
}

/// A mail service that collects every message into `inbox` and answers `250 queued as ID`.
fn collecting(inbox: Inbox) -> impl smtp_server::MailService {
    tower::service_fn(move |mut tx: Transaction| {
        let inbox = inbox.clone();
        async move {
            let id = tx.id.clone();
            let data = tx.body.collect(1 << 24).await?;
            let message = [tx.received.as_bytes(), &data[..]].concat().into();
            inbox.lock().unwrap().push(Got { tx: Arc::new(tx), message });
            Ok::<_, smtp_server::BodyError>(Reply::new(
                250,
                Some(smtp_proto::EnhancedCode::new(2, 0, 0)),
                &format!("queued as {id}"),
            ))
        }
    })
}

async fn start(tweak: impl FnOnce(&mut ServerOptions)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let tls_config = tls::self_signed(dir.path(), "mx.test").unwrap();
    let inbox: Inbox = Arc::default();
    let mail = collecting(inbox.clone());
    let server = Server::builder("mx.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .listen_implicit_tls("127.0.0.1:0".parse().unwrap())
        .tls(tls_config)
        .options(|o| {
            o.session.auth_mechanisms = vec![AuthMechanism::Plain, AuthMechanism::Login];
            tweak(o)
        })
        .bind(TestPolicy, mail)
        .await
        .unwrap();
    let addrs = server.local_addrs();
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    TestServer {
        addr: addrs[0],
        tls_addr: addrs.get(1).copied(),
        inbox,
        handle,
        task,
        cert: dir.path().join("cert.pem"),
        _dir: dir,
    }
}

/// Reads one whole reply (all lines), bounded by [`WAIT`].
async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            out.push(b[0]);
            if out.ends_with(b"\r\n") {
                let last = out[..out.len() - 2].rsplit(|&c| c == b'\n').next().unwrap();
                if last.len() >= 4 && last[3] == b' ' {
                    break;
                }
            }
        }
    })
    .await
    .expect("reply in time");
    String::from_utf8_lossy(&out).into_owned()
}

async fn send<S: AsyncWrite + AsyncRead + Unpin>(s: &mut S, line: &str) -> String {
    s.write_all(line.as_bytes()).await.unwrap();
    reply(s).await
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(reply(&mut s).await.starts_with("220 mx.test ESMTP"));
    s
}

async fn wait_for(inbox: &Inbox, n: usize) {
    tokio::time::timeout(WAIT, async {
        while inbox.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("messages delivered in time");
}

fn tls_client(
    cert: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn plain_transaction_with_received_line() {
    let t = start(|_| {}).await;
    let mut s = connect(t.addr).await;
    let ehlo = send(&mut s, "EHLO client.test\r\n").await;
    assert!(
        ehlo.contains("250-STARTTLS\r\n") && ehlo.contains("LIMITS RCPTMAX=100") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(send(&mut s, "MAIL FROM:<a@b.test>\r\n").await.starts_with("250 2.1.0"));
    assert!(send(&mut s, "RCPT TO:<bad@x.test>\r\n").await.starts_with("550 5.1.1"));
    assert!(send(&mut s, "RCPT TO:<c@x.test>\r\n").await.starts_with("250 2.1.5"));
    assert!(send(&mut s, "DATA\r\n").await.starts_with("354"));
    let r = send(&mut s, "Subject: hi\r\n\r\n..dot\r\n.\r\n").await;
    assert!(r.starts_with("250 2.0.0 queued as "), "{r}");
    assert!(send(&mut s, "QUIT\r\n").await.starts_with("221"));
    wait_for(&t.inbox, 1).await;
    let tx = t.inbox.lock().unwrap()[0].clone();
    let body = String::from_utf8(tx.message.to_vec()).unwrap();
    assert!(
        body.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Tern) with ESMTP id "),
        "{body}"
    );
    assert!(body.contains("\tfor <c@x.test>;"));
    assert!(body.ends_with("\r\nSubject: hi\r\n\r\n.dot\r\n"));
    assert_eq!(tx.envelope.recipients.len(), 1);
    assert_eq!(tx.envelope.verb, smtp_proto::MailVerb::Mail);
}

#[tokio::test]
async fn pipelined_and_byte_at_a_time() {
    let t = start(|_| {}).await;
    let mut s = connect(t.addr).await;
    s.write_all(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<bad@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    while !all.contains("354 ") {
        all.push_str(&reply(&mut s).await);
    }
    let codes: Vec<&str> = all.lines().filter(|l| l.as_bytes()[3] == b' ').map(|l| &l[..3]).collect();
    assert_eq!(codes, ["250", "250", "250", "550", "250", "354"]);
    for b in b"x\r\n.\r\n" {
        s.write_all(&[*b]).await.unwrap();
    }
    assert!(reply(&mut s).await.starts_with("250"));
    wait_for(&t.inbox, 1).await;
    assert_eq!(t.inbox.lock().unwrap()[0].envelope.recipients.len(), 2);
    // And a whole session one byte at a time.
    let mut s = connect(t.addr).await;
    for b in b"HELO a\r\nSAML FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" {
        s.write_all(&[*b]).await.unwrap();
    }
    for expect in ["250", "250", "250", "354"] {
        assert!(reply(&mut s).await.starts_with(expect));
    }
    assert!(send(&mut s, "y\r\n.\r\n").await.starts_with("250"));
    wait_for(&t.inbox, 2).await;
    assert_eq!(t.inbox.lock().unwrap()[1].envelope.verb, smtp_proto::MailVerb::Saml);
}

#[tokio::test]
async fn starttls_tls13_discards_plaintext_and_resumes() {
    let t = start(|_| {}).await;
    let config = tls_client(&t.cert, &[&rustls::version::TLS13]);
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut kinds = Vec::new();
    for round in 0..2 {
        let mut s = connect(t.addr).await;
        send(&mut s, "EHLO a\r\n").await;
        // A pipelined NOOP behind STARTTLS must not be answered (CVE-2011-0411).
        assert!(send(&mut s, "STARTTLS\r\nNOOP\r\n").await.starts_with("220 2.0.0"));
        let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
        let mut tls = connector.connect(name, s).await.unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        kinds.push(conn.handshake_kind());
        let ehlo = send(&mut tls, "EHLO a\r\n").await;
        assert!(ehlo.starts_with("250-mx.test"), "plaintext NOOP leaked into TLS: {ehlo}");
        assert!(!ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
        assert!(send(&mut tls, "STARTTLS\r\n").await.starts_with("503"));
        assert!(send(&mut tls, "AUTH PLAIN AHUAcA==\r\n").await.starts_with("235 2.7.0"));
        send(&mut tls, "MAIL FROM:<a@b>\r\n").await;
        send(&mut tls, "RCPT TO:<c@d>\r\n").await;
        send(&mut tls, "DATA\r\n").await;
        assert!(send(&mut tls, "hi\r\n.\r\n").await.starts_with("250"));
        wait_for(&t.inbox, round + 1).await;
    }
    assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]);
    let tx = t.inbox.lock().unwrap()[0].clone();
    let tls = tx.session.tls.clone().unwrap();
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tx.session.authenticated.as_deref(), Some("u"));
    let body = String::from_utf8(tx.message.to_vec()).unwrap();
    assert!(body.contains("with ESMTPSA id") && body.contains("(version=TLSv1.3 cipher=TLS13_"), "{body}");
}

#[tokio::test]
async fn implicit_tls_and_tls12_aead() {
    let t = start(|o| o.private_received_for_auth = true).await;
    let config = tls_client(&t.cert, &[&rustls::version::TLS12]);
    let tcp = TcpStream::connect(t.tls_addr.unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert!(format!("{suite:?}").contains("GCM") || format!("{suite:?}").contains("CHACHA20"));
    assert!(reply(&mut tls).await.starts_with("220"));
    let ehlo = send(&mut tls, "EHLO a\r\n").await;
    assert!(!ehlo.contains("STARTTLS"));
    assert!(send(&mut tls, "AUTH LOGIN dQ==\r\n").await.starts_with("334 UGFzc3dvcmQ6"));
    assert!(send(&mut tls, "cA==\r\n").await.starts_with("235"));
    for line in ["MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n", "x\r\n.\r\n"] {
        send(&mut tls, line).await;
    }
    wait_for(&t.inbox, 1).await;
    let body = String::from_utf8(t.inbox.lock().unwrap()[0].message.to_vec()).unwrap();
    assert!(body.starts_with("Received: by mx.test (Tern) with ESMTPSA"), "privacy option: {body}");
    assert!(!body.contains("127.0.0.1"));
}

#[tokio::test]
async fn bad_inputs_never_break_the_server() {
    let t = start(|_| {}).await;
    // 1 MiB line without CRLF, then a normal command.
    let mut s = connect(t.addr).await;
    s.write_all(&vec![b'A'; 1 << 20]).await.unwrap();
    assert!(send(&mut s, "\r\nNOOP\r\n").await.starts_with("500 5.5.2"));
    assert!(reply(&mut s).await.starts_with("250"));
    // NUL bytes.
    let r = send(&mut s, "NO\0OP\r\n").await;
    assert!(r.starts_with("501 5.5.4 Syntax error: control characters"), "{r}");
    // 10 000 RCPTs pipelined on a fresh session: 100 accepted, the rest 452, which are not
    // errors (RFC 5321 4.5.3.1.10): the transaction keeps its 100 recipients and goes on.
    let mut s = connect(t.addr).await;
    send(&mut s, "EHLO a\r\n").await;
    send(&mut s, "MAIL FROM:<a@b>\r\n").await;
    let mut input = "RCPT TO:<x@y>\r\n".repeat(10_000);
    input.push_str("DATA\r\nSubject: many\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move { w.write_all(input.as_bytes()).await.is_ok() });
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut all)).await.expect("closed in time").unwrap();
    let all = String::from_utf8(all).unwrap();
    let count = |code: &str| all.lines().filter(|l| l.starts_with(code)).count();
    assert_eq!(count("250 2.1.5"), 100);
    assert_eq!(count("452 4.5.3"), 9_900);
    assert!(all.ends_with("221 2.0.0 Bye\r\n") && all.contains("354 "), "{}", &all[all.len() - 200..]);
    let _ = writer.await;
    wait_for(&t.inbox, 1).await;
    assert_eq!(
        t.inbox
            .lock()
            .unwrap()
            .iter()
            .find(|g| g.envelope.recipients.len() == 100)
            .map(|g| g.envelope.recipients.len()),
        Some(100)
    );
    // Smuggling body: refused, session in sync.
    let mut s = connect(t.addr).await;
    for l in ["EHLO a\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n"] {
        send(&mut s, l).await;
    }
    let r = send(&mut s, "a\n.\nMAIL FROM:<evil@x>\r\n.\r\n").await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    assert!(send(&mut s, "NOOP\r\n").await.starts_with("250"));
    // Disconnect mid-DATA: nothing is delivered.
    let mut s = connect(t.addr).await;
    for l in ["EHLO a\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n"] {
        send(&mut s, l).await;
    }
    s.write_all(b"half a message").await.unwrap();
    drop(s);
    // The server keeps serving.
    let mut s = connect(t.addr).await;
    assert!(send(&mut s, "NOOP\r\n").await.starts_with("250"));
    assert_eq!(t.inbox.lock().unwrap().len(), 1, "only the 100-recipient message");
}

#[tokio::test]
async fn idle_client_gets_421_and_limits_apply() {
    let t = start(|o| {
        o.command_timeout = Duration::from_millis(300);
        o.max_connections_per_ip = 2;
    })
    .await;
    let mut a = connect(t.addr).await;
    let _b = connect(t.addr).await;
    let mut c = TcpStream::connect(t.addr).await.unwrap();
    assert!(reply(&mut c).await.starts_with("421 4.7.0"));
    // `a` sends nothing: the server times out and says so.
    assert!(reply(&mut a).await.starts_with("421 4.4.2"));
}

#[tokio::test]
async fn graceful_shutdown() {
    let t = start(|_| {}).await;
    let mut idle = connect(t.addr).await;
    let mut busy = connect(t.addr).await;
    for l in ["EHLO a\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n"] {
        send(&mut busy, l).await;
    }
    let handle = t.handle.clone();
    let stopper = tokio::spawn(async move { handle.shutdown(Duration::from_secs(5)).await });
    assert!(reply(&mut idle).await.starts_with("421 4.3.2"));
    // The transaction in flight finishes.
    assert!(send(&mut busy, "body\r\n.\r\n").await.starts_with("250"));
    assert!(reply(&mut busy).await.starts_with("421 4.3.2"));
    tokio::time::timeout(WAIT, stopper).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, t.task).await.unwrap().unwrap();
    assert!(TcpStream::connect(t.addr).await.is_err(), "listener closed");
    assert_eq!(t.inbox.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn service_errors_become_451_through_tower_middleware() {
    // A mail service that is too slow, wrapped in tower's timeout layer.
    let slow = tower::service_fn(|_tx: Transaction| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, std::convert::Infallible>(codes::message_accepted())
    });
    let mail = tower::ServiceBuilder::new().timeout(Duration::from_millis(100)).concurrency_limit(4).service(slow);
    let server = Server::builder("mx.test").listen("127.0.0.1:0".parse().unwrap()).bind(AcceptAll, mail).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    let mut s = connect(addr).await;
    for l in ["HELO a\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n"] {
        send(&mut s, l).await;
    }
    let r = send(&mut s, "x\r\n.\r\n").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(send(&mut s, "NOOP\r\n").await.starts_with("250"), "connection kept");
}

#[tokio::test]
async fn ipv6_listener() {
    let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
        panic!("IPv6 loopback unavailable on this machine");
    };
    drop(l);
    let server = Server::builder("mx.test")
        .listen("[::1]:0".parse().unwrap())
        .bind(AcceptAll, tower::service_fn(|_tx: Transaction| async { Ok::<_, std::convert::Infallible>(codes::ok()) }))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    let mut s = connect(addr).await;
    assert!(send(&mut s, "EHLO [IPv6:::1]\r\n").await.starts_with("250-mx.test greets [IPv6:::1]"));
}

#[tokio::test]
async fn a_dribbling_transaction_meets_its_deadline() {
    let t = start(|o| {
        o.transaction_deadline = Duration::from_secs(1);
        o.data_timeout = Duration::from_secs(5);
    })
    .await;
    let mut s = connect(t.addr).await;
    for l in ["EHLO a\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n"] {
        send(&mut s, l).await;
    }
    // One byte every 100 ms: each read is well within the data timeout.
    let started = std::time::Instant::now();
    let mut closed = String::new();
    while started.elapsed() < WAIT {
        if s.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            closed.push_str(&String::from_utf8_lossy(&buf[..n]));
            if n == 0 || closed.ends_with("\r\n") {
                break;
            }
        }
    }
    assert!(closed.starts_with("421 4.4.2 Transaction took too long"), "{closed:?}");
    assert!(t.inbox.lock().unwrap().is_empty());
}

/// Issue 18: BDAT over TCP (RFC 3030), and the size limit applied to chunks.
#[tokio::test]
async fn bdat_over_tcp_and_its_size_limit() {
    let t = start(|o| o.session.max_message_size = 20).await;
    let mut s = connect(t.addr).await;
    assert!(send(&mut s, "EHLO a\r\n").await.contains("250-CHUNKING"));
    send(&mut s, "MAIL FROM:<a@b>\r\n").await;
    send(&mut s, "RCPT TO:<c@d>\r\n").await;
    assert!(send(&mut s, "BDAT 5\r\nab\r\nx").await.starts_with("250 2.0.0 5 octets"));
    let r = send(&mut s, "BDAT 3 LAST\r\ny\r\n").await;
    assert!(r.starts_with("250 2.0.0 queued as"), "{r}");
    wait_for(&t.inbox, 1).await;
    assert!(t.inbox.lock().unwrap()[0].message.ends_with(b"ab\r\nxy\r\n"));
    // A chunk past the size limit: 552, read and dropped, the session in sync.
    send(&mut s, "MAIL FROM:<a@b>\r\n").await;
    send(&mut s, "RCPT TO:<c@d>\r\n").await;
    let r = send(&mut s, &format!("BDAT 30 LAST\r\n{}", "z".repeat(30))).await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(send(&mut s, "NOOP\r\n").await.starts_with("250"));
    assert_eq!(t.inbox.lock().unwrap().len(), 1);
}

/// Issue 18: a transaction that does not finish within the grace period is cut off with 421
/// and nothing of it is delivered; the server still stops.
#[tokio::test]
async fn shutdown_cuts_off_a_transaction_past_its_grace() {
    let t = start(|_| {}).await;
    let mut busy = connect(t.addr).await;
    for l in ["EHLO a\r\n", "MAIL FROM:<a@b>\r\n", "RCPT TO:<c@d>\r\n", "DATA\r\n"] {
        send(&mut busy, l).await;
    }
    busy.write_all(b"half of a message\r\n").await.unwrap();
    let handle = t.handle.clone();
    let stopper = tokio::spawn(async move { handle.shutdown(Duration::from_millis(500)).await });
    // Never finished: after the grace, the server closes it.
    let r = reply(&mut busy).await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, busy.read_to_end(&mut rest)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0, "closed after the 421");
    tokio::time::timeout(WAIT, stopper).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, t.task).await.unwrap().unwrap();
    assert!(t.inbox.lock().unwrap().is_empty(), "nothing half-received is passed on");
}

/// The same driver over streams that are not TCP: an in-memory duplex and a Unix socket.
#[tokio::test]
async fn serve_connection_runs_over_any_stream() {
    let inbox: Inbox = Arc::default();
    let info = smtp_server::ConnectionInfo {
        peer: "192.0.2.7:4000".parse().unwrap(),
        local: "192.0.2.1:25".parse().unwrap(),
        implicit_tls: false,
    };
    let mut options = ServerOptions::default();
    options.session.hostname = "mx.test".into();
    async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
        assert!(reply(s).await.starts_with("220 mx.test"));
        assert!(send(s, "EHLO c.test\r\n").await.starts_with("250-mx.test"));
        assert!(send(s, "MAIL FROM:<a@c.test>\r\n").await.starts_with("250"));
        assert!(send(s, "RCPT TO:<b@mx.test>\r\n").await.starts_with("250"));
        assert!(send(s, "DATA\r\n").await.starts_with("354"));
        assert!(send(s, "Subject: x\r\n\r\n..dot\r\n.\r\n").await.starts_with("250 2.0.0 queued as"));
        assert!(send(s, "QUIT\r\n").await.starts_with("221"));
    }
    let (mut client, server_io) = tokio::io::duplex(4096);
    let served = tokio::spawn(smtp_server::serve_connection(
        server_io,
        info,
        options.clone(),
        TestPolicy,
        collecting(inbox.clone()),
    ));
    transaction(&mut client).await;
    tokio::time::timeout(WAIT, served).await.expect("the session ends after QUIT").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtp.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (inbox2, options2) = (inbox.clone(), options.clone());
    let served = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        smtp_server::serve_connection(io, info, options2, TestPolicy, collecting(inbox2)).await
    });
    transaction(&mut tokio::net::UnixStream::connect(&path).await.unwrap()).await;
    tokio::time::timeout(WAIT, served).await.expect("the session ends after QUIT").unwrap();
    let got = inbox.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    for g in &got {
        assert!(g.received.contains("from c.test ([192.0.2.7])"), "{}", g.received);
        assert!(g.message.ends_with(b"Subject: x\r\n\r\n.dot\r\n"));
    }
    assert_ne!(got[0].id, got[1].id, "ids stay unique across drivers");
}
