//! The client against smtp-server on loopback and against scripted misbehaving servers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_client::service::{Destination, SendRequest, SmtpService};
use smtp_client::{Body, CertVerify, ClientOptions, Envelope, Error, SmtpClient, TlsMode};
use smtp_proto::auth::{AuthMechanism, Secret};
use smtp_proto::{codes, Domain, Reply};
use smtp_server::{tls, Decision, PolicyKind, PolicyRequest, Server, ServerOptions, Transaction};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);
type Inbox = Arc<Mutex<Vec<Got>>>;

/// A transaction the test server received, with its collected data.
struct Got {
    tx: Transaction,
    data: bytes::Bytes,
}

impl std::ops::Deref for Got {
    type Target = Transaction;
    fn deref(&self) -> &Transaction {
        &self.tx
    }
}

#[derive(Clone)]
struct Policy;
impl tower::Service<PolicyRequest> for Policy {
    type Response = Decision;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Decision, Self::Error>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: PolicyRequest) -> Self::Future {
        std::future::ready(Ok(match req.kind {
            PolicyKind::Rcpt { to, .. } if to.to_string().contains("bad") => Decision::Respond(codes::no_such_user()),
            PolicyKind::Mail { from, .. } if from.to_string().contains("refused") => {
                Decision::Respond(Reply::new(550, Some(smtp_proto::EnhancedCode::new(5, 7, 1)), "not you"))
            }
            PolicyKind::Auth { credentials, .. } if credentials.password.expose() == "pw" => Decision::Accept,
            PolicyKind::Auth { .. } => Decision::Respond(codes::auth_failed()),
            _ => Decision::Accept,
        }))
    }
}

struct Srv {
    addr: SocketAddr,
    inbox: Inbox,
    cert: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn server(tweak: impl FnOnce(&mut ServerOptions)) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let inbox: Inbox = Arc::default();
    let i2 = inbox.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let i = i2.clone();
        async move {
            let data = tx.body.collect(1 << 24).await?;
            i.lock().unwrap().push(Got { tx, data });
            Ok::<_, smtp_server::BodyError>(codes::message_accepted())
        }
    });
    let s = Server::builder("mx.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .tls(tls::self_signed(dir.path(), "mx.test").unwrap())
        .options(|o| {
            o.session.auth_mechanisms = vec![AuthMechanism::Plain, AuthMechanism::Login];
            tweak(o)
        })
        .bind(Policy, mail)
        .await
        .unwrap();
    let addr = s.local_addrs()[0];
    tokio::spawn(s.run());
    Srv { addr, inbox, cert: dir.path().join("cert.pem"), _dir: dir }
}

fn options(tls: TlsMode, cert: &std::path::Path) -> ClientOptions {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = tls;
    o.verify = CertVerify::CaFile(cert.to_path_buf());
    o.timeouts.command = Duration::from_secs(10);
    o.timeouts.greeting = Duration::from_secs(10);
    o
}

fn env(rcpts: &[&str]) -> Envelope {
    let mut e = Envelope::from_str_addr("sender@a.test").unwrap();
    for r in rcpts {
        e = e.to_str_addr(r).unwrap();
    }
    e
}

#[tokio::test]
async fn five_recipients_two_refused_and_body_is_safe() {
    let s = server(|_| {}).await;
    for use_chunking in [true, false] {
        let mut o = options(TlsMode::Required, &s.cert);
        o.use_chunking = use_chunking;
        let client = SmtpClient::new(o).unwrap();
        let mut conn = client.connect("127.0.0.1", s.addr.port()).await.unwrap();
        assert_eq!(conn.tls_info().unwrap().version, "TLSv1.3");
        let body = "Subject: x\n\n.\r\nMAIL FROM:<evil@x>\r\n.\n..two\rend";
        let out = conn.send(&env(&["a@x", "bad1@x", "c@x", "bad2@x", "e@x"]), body.into()).await.unwrap();
        let rejected: Vec<String> = out.rejected().map(|(p, r)| format!("{p} {}", r.code())).collect();
        assert_eq!(rejected, ["<bad1@x> 550", "<bad2@x> 550"]);
        assert!(out.reply.as_ref().unwrap().is_positive());
        assert!(!out.all_accepted());
        conn.quit().await.unwrap();
    }
    let inbox = s.inbox.lock().unwrap();
    assert_eq!(inbox.len(), 2);
    for tx in inbox.iter() {
        assert_eq!(tx.envelope.recipients.len(), 3);
        let b = String::from_utf8(tx.data.to_vec()).unwrap();
        assert!(b.ends_with("Subject: x\r\n\r\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n..two\r\nend\r\n"), "{b:?}");
    }
}

/// Sends three messages through the pooled service to `port`, each accepted.
async fn send_three(svc: &SmtpService, port: u16) {
    for i in 0..3 {
        let req = SendRequest {
            destination: Destination { host: "127.0.0.1".into(), port, addr: None },
            envelope: env(&["r@x"]),
            body: format!("Subject: {i}\r\n\r\nhi\r\n").into_bytes().into(),
        };
        let out = tower::ServiceExt::oneshot(svc.clone(), req).await.unwrap();
        assert!(out.all_accepted());
    }
}

#[tokio::test]
async fn resumption_auth_and_pooled_reuse() {
    let s = server(|_| {}).await;
    let mut o = options(TlsMode::Required, &s.cert);
    o.auth = Some(("u".into(), Secret::new("pw")));
    let client = SmtpClient::new(o).unwrap();
    for _ in 0..3 {
        let conn = client.connect("127.0.0.1", s.addr.port()).await.unwrap();
        conn.quit().await.unwrap();
    }
    assert_eq!(client.handshakes(), (1, 2), "one full handshake, then resumed ones");
    // Pooled service: three messages over one connection.
    let svc = SmtpService::new(client.clone(), 2);
    send_three(&svc, s.addr.port()).await;
    let inbox = s.inbox.lock().unwrap();
    let ports: std::collections::HashSet<u16> = inbox.iter().map(|t| t.session.peer.port()).collect();
    assert_eq!(ports.len(), 1, "one connection reused");
    assert!(inbox.iter().all(|t| t.session.authenticated.as_deref() == Some("u")));
}

#[tokio::test]
async fn auth_refused_over_plaintext_and_wrong_password() {
    let s = server(|_| {}).await;
    let mut o = options(TlsMode::None, &s.cert);
    o.auth = Some(("u".into(), Secret::new("pw")));
    let err = SmtpClient::new(o).unwrap().connect("127.0.0.1", s.addr.port()).await.unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    let mut o = options(TlsMode::Required, &s.cert);
    o.auth = Some(("u".into(), Secret::new("wrong")));
    let err = SmtpClient::new(o).unwrap().connect("127.0.0.1", s.addr.port()).await.unwrap_err();
    assert_eq!(err.reply().map(Reply::code), Some(535));
    assert!(err.is_permanent());
}

#[tokio::test]
async fn size_utf8_and_limits() {
    let s = server(|o| {
        o.session.max_message_size = 100;
        o.session.smtputf8 = false;
        o.session.max_recipients = 2;
    })
    .await;
    let client = SmtpClient::new(options(TlsMode::None, &s.cert)).unwrap();
    let mut conn = client.connect("127.0.0.1", s.addr.port()).await.unwrap();
    let err = conn.send(&env(&["a@x"]), vec![b'x'; 101].into()).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { size: 101, max: 100 }), "{err}");
    let utf8 = Envelope::from_str_addr("用户@例子.test").unwrap().to_str_addr("a@x").unwrap();
    let err = conn.send(&utf8, "hi".into()).await.unwrap_err();
    assert!(matches!(err, Error::ExtensionMissing("SMTPUTF8")), "{err}");
    // RCPTMAX=2: five recipients go in three transactions.
    let out = conn.send(&env(&["a@x", "b@x", "c@x", "d@x", "e@x"]), "hi\r\n".into()).await.unwrap();
    assert!(out.all_accepted());
    assert_eq!(out.recipients.len(), 5);
    assert_eq!(s.inbox.lock().unwrap().iter().map(|t| t.envelope.recipients.len()).collect::<Vec<_>>(), [2, 2, 1]);
    // Streamed body.
    let (mut w, r) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        for _ in 0..5 {
            w.write_all(b"0123456789\n").await.unwrap();
        }
    });
    let out = conn.send(&env(&["a@x"]), Body::Reader(Box::new(r))).await.unwrap();
    assert!(out.all_accepted());
    assert_eq!(s.inbox.lock().unwrap().len(), 4);
}

/// A scripted server: for each step, read one line (if `None` is not given) then write the
/// reply pieces, flushing between them (separate TCP segments with NODELAY).
async fn scripted(steps: Vec<(bool, Vec<&'static str>)>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (r, mut w) = tcp.into_split();
        let mut r = BufReader::new(r);
        for (read, pieces) in steps {
            if read {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    return;
                }
            }
            for p in pieces {
                w.write_all(p.as_bytes()).await.unwrap();
                w.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
        // Then hang up.
    });
    addr
}

fn plain_client() -> SmtpClient {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::None;
    SmtpClient::new(o).unwrap()
}

#[tokio::test]
async fn helo_fallback_and_split_multiline() {
    let addr = scripted(vec![
        (false, vec!["220 old.host ready\r\n"]),
        (true, vec!["500 Command unrecognized\r\n"]),
        (true, vec!["250 old.host\r\n"]),
        (true, vec!["250 OK\r\n"]),
        (true, vec!["250 OK\r\n"]),
        (true, vec!["354 go\r\n"]),
        (true, vec!["250-first\r", "\n250-sec", "ond\r\n25", "0 done\r\n"]),
    ])
    .await;
    let mut conn = plain_client().connect("127.0.0.1", addr.port()).await.unwrap();
    assert!(!conn.capabilities().pipelining);
    let out = tokio::time::timeout(WAIT, conn.send(&env(&["a@x"]), "hi\r\n".into())).await.unwrap().unwrap();
    assert_eq!(out.reply.unwrap().lines(), ["first", "second", "done"]);
}

#[tokio::test]
async fn greeting_4xx_is_transient() {
    let addr = scripted(vec![(false, vec!["421 4.3.2 busy, try later\r\n"])]).await;
    let err = plain_client().connect("127.0.0.1", addr.port()).await.unwrap_err();
    assert_eq!(err.reply().map(Reply::code), Some(421));
    assert!(err.is_transient());
}

#[tokio::test]
async fn drop_mid_data_is_an_error() {
    let addr = scripted(vec![
        (false, vec!["220 x\r\n"]),
        (true, vec!["250-x\r\n250 PIPELINING\r\n"]),
        (true, vec![]),
        (true, vec![]),
        (true, vec!["250 ok\r\n250 ok\r\n354 go\r\n"]),
        (true, vec![]),
    ])
    .await;
    let mut conn = plain_client().connect("127.0.0.1", addr.port()).await.unwrap();
    let err =
        tokio::time::timeout(WAIT, conn.send(&env(&["a@x"]), "line\r\nline\r\n".into())).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn starttls_required_never_falls_back() {
    let addr = scripted(vec![(false, vec!["220 x\r\n"]), (true, vec!["250-x\r\n250 PIPELINING\r\n"])]).await;
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::Required;
    let err = SmtpClient::new(o).unwrap().connect("127.0.0.1", addr.port()).await.unwrap_err();
    assert!(matches!(err, Error::TlsUnavailable), "{err}");
}

/// A self-signed certificate marked as a CA (what `openssl req -x509` makes) in `dir`.
fn ca_flagged_cert(dir: &std::path::Path, name: &str, file: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Issue 11 item 20: the exact certificate in the CA file is accepted as a pin, for its name,
/// even when it is marked as a CA; another certificate or another name is not.
#[tokio::test]
async fn ca_file_pins_a_self_signed_ca_flagged_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca_flagged_cert(dir.path(), "mx.test", "server");
    let (other, _) = ca_flagged_cert(dir.path(), "mx.test", "other");
    let server = Server::builder("mx.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .tls(tls::from_pem_files(&cert, &key).unwrap())
        .bind(
            smtp_server::AcceptAll,
            tower::service_fn(|_tx: Transaction| async { Ok::<_, std::convert::Infallible>(codes::ok()) }),
        )
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    let client = |ca: &std::path::Path| {
        let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
        o.tls = TlsMode::Required;
        o.verify = CertVerify::CaFile(ca.to_path_buf());
        SmtpClient::new(o).unwrap()
    };
    let conn = client(&cert).connect_addr(addr, "mx.test").await.expect("pinned certificate accepted");
    assert!(conn.tls_info().is_some());
    conn.quit().await.unwrap();
    assert!(client(&cert).connect_addr(addr, "other.test").await.is_err(), "the name is still checked");
    assert!(client(&other).connect_addr(addr, "mx.test").await.is_err(), "only the exact certificate");
}

/// A TCP proxy in front of `server` that keeps every byte the client sent.
async fn recording_proxy(server: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut ur, &mut cw).await });
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, seen)
}

/// Issue 18: the client's choice of BDAT (RFC 3030) or DATA is seen on the wire.
#[tokio::test]
async fn bdat_or_data_on_the_wire() {
    let s = server(|_| {}).await;
    for use_chunking in [true, false] {
        let (proxy, seen) = recording_proxy(s.addr).await;
        let mut o = options(TlsMode::None, &s.cert);
        o.use_chunking = use_chunking;
        let client = SmtpClient::new(o).unwrap();
        let mut conn = client.connect("127.0.0.1", proxy.port()).await.unwrap();
        let out = conn.send(&env(&["a@x"]), "Subject: w\r\n\r\n.dot\r\n".into()).await.unwrap();
        assert!(out.all_accepted());
        conn.quit().await.unwrap();
        let wire = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        if use_chunking {
            assert!(wire.contains("BDAT ") && wire.contains(" LAST\r\n") && !wire.contains("\r\nDATA\r\n"), "{wire}");
            assert!(wire.contains("\r\n.dot\r\n"), "no dot-stuffing in BDAT: {wire}");
        } else {
            assert!(wire.contains("\r\nDATA\r\n") && !wire.contains("BDAT"), "{wire}");
            assert!(wire.contains("\r\n..dot\r\n"), "dot-stuffed in DATA: {wire}");
        }
    }
}

/// Issue 18: MAILMAX (RFC 9422) — the server refuses transactions past it, and the pooled
/// client opens a new connection instead of trying.
#[tokio::test]
async fn mailmax_on_both_sides() {
    let s = server(|o| o.session.max_transactions = Some(1)).await;
    let client = SmtpClient::new(options(TlsMode::None, &s.cert)).unwrap();
    let svc = SmtpService::new(client, 2);
    send_three(&svc, s.addr.port()).await;
    let ports: std::collections::HashSet<u16> = s.inbox.lock().unwrap().iter().map(|t| t.session.peer.port()).collect();
    assert_eq!(ports.len(), 3, "one transaction per connection");
    // The server side, on the wire: a second MAIL in the session is refused.
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut lines = BufReader::new(&mut raw);
    let mut greeting = String::new();
    lines.read_line(&mut greeting).await.unwrap();
    let script = "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<a@b>\r\nQUIT\r\n";
    lines.get_mut().write_all(script.as_bytes()).await.unwrap();
    let mut all = String::new();
    while lines.read_line(&mut all).await.unwrap() > 0 {}
    assert!(all.contains("LIMITS") && all.contains("MAILMAX=1"), "{all}");
    assert!(all.contains("452 4.5.3"), "{all}");
}

/// Issue 18: a server that pipelines a reply behind its `220` to STARTTLS (response injection,
/// the mirror of CVE-2011-0411): the client discards it and the real handshake succeeds; the
/// capabilities are the ones given after TLS.
#[tokio::test]
async fn starttls_response_injection_is_discarded_before_a_real_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let tls_config = tls::self_signed(dir.path(), "mx.test").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut plain = BufReader::new(tcp);
        let mut line = String::new();
        plain.get_mut().write_all(b"220 mx.test ESMTP\r\n").await.unwrap();
        plain.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("EHLO"), "{line}");
        plain.get_mut().write_all(b"250-mx.test\r\n250 STARTTLS\r\n").await.unwrap();
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        assert_eq!(line, "STARTTLS\r\n");
        // The injection: a reply the client never asked for, in the same segment as the 220.
        plain.get_mut().write_all(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n").await.unwrap();
        let tcp = plain.into_inner();
        let tls = tokio_rustls::TlsAcceptor::from(tls_config).accept(tcp).await.expect("a real handshake");
        let mut tls = BufReader::new(tls);
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("EHLO"), "EHLO again after TLS: {line}");
        tls.get_mut().write_all(b"250-mx.test\r\n250 SIZE 1000\r\n").await.unwrap();
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        assert_eq!(line, "QUIT\r\n");
        tls.get_mut().write_all(b"221 bye\r\n").await.unwrap();
    });
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::Required;
    o.verify = CertVerify::Insecure;
    let client = SmtpClient::new(o).unwrap();
    let conn = client.connect_addr(addr, "mx.test").await.expect("connected over TLS");
    assert!(conn.tls_info().is_some());
    assert_eq!(conn.capabilities().size, Some(1000), "capabilities from after TLS");
    assert!(conn.capabilities().auth.is_empty(), "nothing of the injected reply");
    conn.quit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}

/// AUTH picks PLAIN when offered, else LOGIN; either alone works.
#[tokio::test]
async fn auth_with_either_mechanism_alone() {
    for mech in [AuthMechanism::Plain, AuthMechanism::Login] {
        let s = server(|o| o.session.auth_mechanisms = vec![mech]).await;
        let mut o = options(TlsMode::Required, &s.cert);
        o.auth = Some(("u".into(), Secret::new("pw")));
        let mut conn = SmtpClient::new(o).unwrap().connect("127.0.0.1", s.addr.port()).await.unwrap();
        let out = conn.send(&env(&["a@x.test"]), "Subject: auth\r\n\r\nhi".into()).await.unwrap();
        assert!(out.all_accepted(), "{mech:?}: {out:?}");
        assert_eq!(s.inbox.lock().unwrap()[0].session.authenticated.as_deref(), Some("u"), "{mech:?}");
    }
}

/// RCPTMAX splits: a refusal of the first transaction is the send's error; a failure after a
/// delivered transaction reports every later recipient as not sent, each exactly once.
#[tokio::test]
async fn rcptmax_split_failures_blame_the_right_recipients() {
    let s = server(|o| o.session.max_recipients = 2).await;
    let client = SmtpClient::new(options(TlsMode::None, &s.cert)).unwrap();
    let mut conn = client.connect("127.0.0.1", s.addr.port()).await.unwrap();
    let mut refused = env(&["a@x.test", "b@x.test", "c@x.test"]);
    refused.from = Envelope::from_str_addr("refused@a.test").unwrap().from;
    let err = conn.send(&refused, "x".into()).await.unwrap_err();
    assert!(matches!(&err, Error::Rejected { reply, .. } if reply.code() == 550), "{err}");
    conn.quit().await.unwrap();
    // MAILMAX=1 as well: the second transaction cannot start on this connection.
    let s = server(|o| {
        o.session.max_recipients = 2;
        o.session.max_transactions = Some(1);
    })
    .await;
    let client = SmtpClient::new(options(TlsMode::None, &s.cert)).unwrap();
    let mut conn = client.connect("127.0.0.1", s.addr.port()).await.unwrap();
    let out = conn.send(&env(&["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"]), "x".into()).await.unwrap();
    let got: Vec<(String, u16)> = out.recipients.iter().map(|(p, r)| (p.to_string(), r.code())).collect();
    assert_eq!(
        got,
        [("<a@x.test>", 250), ("<b@x.test>", 250), ("<c@x.test>", 451), ("<d@x.test>", 451), ("<e@x.test>", 451)]
            .map(|(p, c)| (p.to_string(), c)),
    );
    assert_eq!(out.data.iter().filter(|d| d.is_some()).count(), 2, "two recipients got the data");
    assert_eq!(s.inbox.lock().unwrap().len(), 1);
}

/// The two-step API (envelope, look at the replies, then the body), with a streamed body over
/// DATA and over BDAT; opportunistic TLS to a server without STARTTLS stays in plaintext.
#[tokio::test]
async fn envelope_then_streamed_data_or_bdat() {
    let s = server(|o| o.tls = None).await;
    for chunking in [false, true] {
        let mut o = options(TlsMode::Opportunistic, &s.cert);
        o.use_chunking = chunking;
        let mut conn = SmtpClient::new(o).unwrap().connect("127.0.0.1", s.addr.port()).await.unwrap();
        assert!(conn.tls_info().is_none(), "no STARTTLS offered: plaintext");
        assert!(format!("{conn:?}").contains("Connection") && format!("{conn:?}").contains("127.0.0.1"));
        let o = conn.envelope(&env(&["ok@x.test", "bad@x.test"])).await.unwrap();
        assert_eq!(o.accepted().collect::<Vec<_>>(), [0], "the caller sees the refusal before the body");
        let body = format!("Subject: stream\r\n\r\n{}\n.leading dot\r\nend", "0123456789".repeat(20_000));
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = Box::new(std::io::Cursor::new(body.into_bytes()));
        let reply = conn.data(Body::Reader(reader)).await.unwrap();
        assert_eq!(reply.code(), 250, "chunking {chunking}");
        if !chunking {
            // Every recipient refused: DATA is refused too, and no body is sent.
            conn.envelope(&env(&["bad@x.test"])).await.unwrap();
            let err = conn.data("never sent".into()).await.unwrap_err();
            assert!(matches!(&err, Error::Rejected { reply, .. } if reply.code() == 554), "{err}");
        }
        conn.quit().await.unwrap();
    }
    let inbox = s.inbox.lock().unwrap();
    assert_eq!(inbox.len(), 2);
    for got in inbox.iter() {
        let text = String::from_utf8_lossy(&got.data);
        assert!(text.ends_with("0123456789\r\n.leading dot\r\nend\r\n"), "line ends made CRLF, the dot kept once");
        assert_eq!(got.data.len(), "Subject: stream\r\n\r\n".len() + 200_000 + "\r\n.leading dot\r\nend\r\n".len());
    }
}

/// DANE (RFC 7672) in a real handshake: DANE-EE matches the server's own certificate or key
/// whatever its name or expiry; DANE-TA makes a CA in the presented chain the anchor and still
/// checks the name; anything else, and the PKIX usages, fail the handshake.
#[tokio::test]
async fn dane_records_authenticate_the_server_inside_the_handshake() {
    use smtp_client::Tlsa;
    let dir = tempfile::tempdir().unwrap();
    // A private CA, and a server certificate it issued for mx.test, expired last year.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Test DANE CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mx.test".to_string()]).unwrap();
    let mut expired = params.clone();
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    let old = expired.signed_by(&key, &ca, &ca_key).unwrap();
    let start = |leaf: &rcgen::Certificate, tag: &str| {
        let (c, k) = (dir.path().join(format!("{tag}.pem")), dir.path().join(format!("{tag}.key")));
        std::fs::write(&c, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let config = tls::from_pem_files(&c, &k).unwrap();
        async move {
            let server = Server::builder("mx.test")
                .listen("127.0.0.1:0".parse().unwrap())
                .tls(config)
                .bind(
                    smtp_server::AcceptAll,
                    tower::service_fn(|_tx: Transaction| async { Ok::<_, std::convert::Infallible>(codes::ok()) }),
                )
                .await
                .unwrap();
            let addr = server.local_addrs()[0];
            tokio::spawn(server.run());
            addr
        }
    };
    let (fresh, stale) = (start(&leaf, "fresh").await, start(&old, "stale").await);
    let sha256 = |d: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, d).as_ref().to_vec();
    let client = |records: Vec<Tlsa>| {
        let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
        o.tls = TlsMode::Required;
        o.verify = CertVerify::Dane(records.into());
        SmtpClient::new(o).unwrap()
    };
    let ee_key = Tlsa { usage: 3, selector: 1, matching: 1, data: sha256(&key.public_key_der()) };
    let ee_cert = Tlsa { usage: 3, selector: 0, matching: 1, data: sha256(leaf.der()) };
    let ta = Tlsa { usage: 2, selector: 0, matching: 1, data: sha256(ca.der()) };
    let pkix = Tlsa { usage: 1, selector: 1, matching: 1, data: sha256(&key.public_key_der()) };
    let wrong = Tlsa { usage: 3, selector: 1, matching: 1, data: sha256(&ca_key.public_key_der()) };

    // DANE-EE: no name check, no expiry check.
    for (records, addr, name) in [
        (vec![ee_key.clone()], stale, "other.test"),
        (vec![wrong.clone(), ee_cert.clone()], fresh, "mx.test"),
        (vec![ta.clone()], fresh, "mx.test"),
    ] {
        let conn = client(records.clone()).connect_addr(addr, name).await;
        let conn = conn.unwrap_or_else(|e| panic!("{records:?} at {name}: {e}"));
        assert!(conn.tls_info().is_some());
        conn.quit().await.unwrap();
    }
    // DANE-TA checks the name and the dates; wrong keys and PKIX usages fail.
    for (records, addr, name) in [
        (vec![ta.clone()], fresh, "other.test"),
        (vec![ta.clone()], stale, "mx.test"),
        (vec![wrong.clone()], fresh, "mx.test"),
        (vec![pkix.clone()], fresh, "mx.test"),
        (vec![], fresh, "mx.test"),
    ] {
        let e = client(records.clone()).connect_addr(addr, name).await.err();
        assert!(matches!(e, Some(smtp_client::Error::Handshake(_))), "{records:?} at {name}: {e:?}");
    }
}

/// Accepted recipients but a refused DATA: the refusal is the error and no body is sent (the
/// server would read it as commands).
#[tokio::test]
async fn a_refused_data_after_accepted_recipients_is_the_error_and_sends_no_body() {
    let addr = scripted(vec![
        (false, vec!["220 x\r\n"]),
        (true, vec!["250 x\r\n"]),
        (true, vec!["250 2.1.0 ok\r\n"]),
        (true, vec!["250 2.1.5 ok\r\n"]),
        (true, vec!["554 5.5.1 not today\r\n"]),
        (true, vec!["500 5.5.2 a body line was read as a command\r\n"]),
    ])
    .await;
    let mut conn = plain_client().connect("127.0.0.1", addr.port()).await.unwrap();
    let env = Envelope::from_str_addr("a@client.test").unwrap().to_str_addr("b@x.test").unwrap();
    let e = conn.send(&env, bytes::Bytes::from_static(b"Subject: s\r\n\r\nbody\r\n").into()).await.unwrap_err();
    match e {
        Error::Rejected { reply, .. } => assert_eq!(reply.to_string(), "554 5.5.1 not today"),
        other => panic!("{other:?}"),
    }
}

/// RCPTMAX splits a message into transactions; its overall reply is the first failure, or
/// else the last success, and each recipient keeps its own transaction's reply.
#[tokio::test]
async fn split_transactions_report_the_first_failure_or_the_last_success() {
    let script = |ends: [&'static str; 3]| {
        let mut steps = vec![(false, vec!["220 x\r\n"]), (true, vec!["250-x\r\n250 LIMITS RCPTMAX=1\r\n"])];
        for end in ends {
            steps.extend([
                (true, vec!["250 2.1.0 ok\r\n"]),
                (true, vec!["250 2.1.5 ok\r\n"]),
                (true, vec!["354 go\r\n"]),
                (true, vec![]),
                (true, vec![]),
                (true, vec![]),
                (true, vec![end]),
            ]);
        }
        scripted(steps)
    };
    let env = Envelope::from_str_addr("a@client.test")
        .unwrap()
        .to_str_addr("b1@x.test")
        .unwrap()
        .to_str_addr("b2@x.test")
        .unwrap()
        .to_str_addr("b3@x.test")
        .unwrap();
    let send = |addr: SocketAddr, env: Envelope| async move {
        let mut conn = plain_client().connect("127.0.0.1", addr.port()).await.unwrap();
        conn.send(&env, bytes::Bytes::from_static(b"Subject: s\r\n\r\nbody\r\n").into()).await.unwrap()
    };
    let text = |r: &Option<smtp_proto::Reply>| r.as_ref().map(|r| r.to_string()).unwrap_or_default();
    let addr = script(["250 2.0.0 first\r\n", "451 4.3.0 second\r\n", "250 2.0.0 third\r\n"]).await;
    let out = send(addr, env.clone()).await;
    assert_eq!(text(&out.reply), "451 4.3.0 second");
    let each: Vec<String> = out.data.iter().map(text).collect();
    assert_eq!(each, ["250 2.0.0 first", "451 4.3.0 second", "250 2.0.0 third"]);
    let addr = script(["250 2.0.0 first\r\n", "250 2.0.0 second\r\n", "250 2.0.0 third\r\n"]).await;
    assert_eq!(text(&send(addr, env).await.reply), "250 2.0.0 third");
}

#[tokio::test]
async fn lmtp_reports_each_recipients_own_reply() {
    let addr = scripted(vec![
        (false, vec!["220 store LMTP ready\r\n"]),
        (true, vec!["250-store\r\n250 ENHANCEDSTATUSCODES\r\n"]),
        (true, vec!["250 2.1.0 ok\r\n"]),
        (true, vec!["250 2.1.5 ok\r\n"]),
        (true, vec!["250 2.1.5 ok\r\n"]),
        (true, vec!["550 5.1.1 no such user\r\n"]),
        (true, vec!["354 go\r\n"]),
        (true, vec![]),
        (true, vec!["250 2.0.0 a stored\r\n", "452 4.2.2 b over quota\r\n"]),
    ])
    .await;
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::None;
    o.lmtp = true;
    let mut conn = SmtpClient::new(o).unwrap().connect("127.0.0.1", addr.port()).await.unwrap();
    let out =
        tokio::time::timeout(WAIT, conn.send(&env(&["a@s", "b@s", "c@s"]), "hi\r\n".into())).await.unwrap().unwrap();
    let codes: Vec<Option<u16>> = out.data.iter().map(|r| r.as_ref().map(|r| r.code())).collect();
    assert_eq!(codes, [Some(250), Some(452), None], "each recipient its own reply (RFC 2033 4.2)");
    assert_eq!(out.reply.unwrap().code(), 452, "the first failure stands for the message");
    assert_eq!(out.recipients[2].1.code(), 550);
}
