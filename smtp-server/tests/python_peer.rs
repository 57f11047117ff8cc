//! Interop with Python's standard library: smtplib as a client (STARTTLS, AUTH, SMTPUTF8) and
//! ssl offering only TLS 1.2 CBC suites, which must be refused. python3 is on every machine.

use std::time::Duration;

use smtp_proto::auth::AuthMechanism;
use smtp_proto::{codes, Reply};
use smtp_server::{tls, AcceptAll, Server, Transaction};
use std::sync::{Arc, Mutex};

async fn python(script: &str, args: &[String]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3").arg("-c").arg(script).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("python finished in time")
    .expect("python3 runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context(cafile=sys.argv[2])
with smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=10) as s:
    s.ehlo()
    assert s.has_extn("starttls")
    s.starttls(context=ctx)
    s.ehlo()
    assert not s.has_extn("starttls")
    print("cipher", s.sock.version())
    refused = s.sendmail("a@b.test", ["c@d.test", "e@f.test"], b"Subject: py\r\n\r\nline one\r\n.dot line\r\n")
    assert refused == {}, refused
    s.send_message.__doc__
    s.sendmail("用户@例子.test", ["c@d.test"], "Subject: utf8\r\n\r\nhé\r\n".encode(), mail_options=["SMTPUTF8"])
print("ok")
"#;

const CBC_ONLY: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA:AES256-SHA")
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
try:
    ctx.wrap_socket(sock, server_hostname="mx.test")
    print("handshake succeeded")
    sys.exit(1)
except ssl.SSLError as e:
    print("refused", e)
"#;

const OLD_TLS: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = ssl.TLSVersion.TLSv1_1
ctx.set_ciphers("ALL:@SECLEVEL=0")
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
try:
    ctx.wrap_socket(sock, server_hostname="mx.test")
    print("handshake succeeded")
    sys.exit(1)
except (ssl.SSLError, OSError) as e:
    print("refused", e)
"#;

/// Each transaction received, with its collected data.
type Inbox = Arc<Mutex<Vec<(Arc<Transaction>, bytes::Bytes)>>>;

#[tokio::test]
async fn smtplib_starttls_and_weak_tls_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inbox: Inbox = Arc::default();
    let inbox2 = inbox.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let inbox = inbox2.clone();
        async move {
            let data = tx.body.collect(1 << 20).await?;
            inbox.lock().unwrap().push((Arc::new(tx), data));
            Ok::<Reply, smtp_server::BodyError>(codes::message_accepted())
        }
    });
    let server = Server::builder("mx.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .listen_implicit_tls("127.0.0.1:0".parse().unwrap())
        .tls(tls::self_signed(dir.path(), "mx.test").unwrap())
        .options(|o| o.session.auth_mechanisms = vec![AuthMechanism::Plain])
        .bind(AcceptAll, mail)
        .await
        .unwrap();
    let addrs = server.local_addrs();
    tokio::spawn(server.run());
    let cert = dir.path().join("cert.pem").display().to_string();

    let (ok, out) = python(SMTPLIB, &[addrs[0].port().to_string(), cert]).await;
    assert!(ok, "{out}");
    assert!(out.contains("cipher TLSv1.3"), "{out}");
    let txs = inbox.lock().unwrap().clone();
    assert_eq!(txs.len(), 2);
    assert_eq!(txs[0].0.envelope.recipients.len(), 2);
    assert!(txs[0].1.ends_with(b"line one\r\n.dot line\r\n"));
    assert!(txs[1].0.envelope.params.smtputf8);

    // The refusals must come from the server (an alert it sent), not from a client library
    // that would not even offer these.
    let (ok, out) = python(CBC_ONLY, &[addrs[1].port().to_string()]).await;
    assert!(ok && out.contains("refused") && out.contains("ALERT_HANDSHAKE_FAILURE"), "{out}");
    let (ok, out) = python(OLD_TLS, &[addrs[1].port().to_string()]).await;
    assert!(ok && out.contains("refused") && out.contains("ALERT"), "{out}");
}
