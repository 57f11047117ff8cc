//! smtp-client against independent servers: Postfix's smtp-sink and Python's aiosmtpd. Both are
//! installed by `.ci/install-peers` (run by `.ci/run`); a missing peer fails the test.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtp_client::{ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < tests::WAIT, "peer did not start listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client() -> SmtpClient {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::None;
    SmtpClient::new(o).unwrap()
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn postfix_smtp_sink() {
    let sink = std::path::Path::new("/usr/sbin/smtp-sink");
    assert!(sink.exists(), "Postfix smtp-sink missing: run .ci/install-peers");
    let addr = free_port();
    // smtp-sink runs as nobody: its dump file lives in a directory nobody may write to.
    let dumps = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let dump = dumps.path().join("received");
    let _child = Killed(
        Command::new(sink)
            .args(["-u", "nobody", "-D", dump.to_str().unwrap(), &format!("127.0.0.1:{}", addr.port()), "64"])
            .stdout(Stdio::null())
            // Kept, so that a failure to start says why.
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_listening(addr).await;
    let mut conn = client().connect_addr(addr, "127.0.0.1").await.unwrap();
    assert!(conn.capabilities().pipelining, "smtp-sink offers PIPELINING");
    let env = Envelope::from_str_addr("a@client.test")
        .unwrap()
        .to_str_addr("b@sink.test")
        .unwrap()
        .to_str_addr("c@sink.test")
        .unwrap();
    for i in 0..50 {
        let body = format!("Subject: {i}\r\n\r\n.line starting with a dot\r\nline\n");
        let out = conn.send(&env.0, body.into_bytes().into()).await.unwrap();
        assert!(out.all_accepted(), "{out:?}");
    }
    conn.quit().await.unwrap();
    // What smtp-sink received, unstuffed by it: each body exactly as sent (the bare LF made CRLF).
    let d = dump.clone();
    tests::wait_until("50 messages in smtp-sink's dump", move || {
        std::fs::read_to_string(&d).map(|t| t.matches("\nSubject: ").count() == 50).unwrap_or(false)
    })
    .await;
    let text = std::fs::read_to_string(&dump).unwrap();
    for i in 0..50 {
        let needle = format!("\nSubject: {i}\n\n.line starting with a dot\nline\n");
        assert!(text.contains(&needle), "message {i} not received exactly: {text}");
    }
    assert!(!text.contains("..line"), "a dot stuffed twice or not removed");
}

const AIOSMTPD: &str = r#"
import asyncio, json, sys
from aiosmtpd.controller import Controller

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bad"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                          "data": envelope.original_content.decode("utf-8", "replace")}), flush=True)
        return "250 2.0.0 Stored"

c = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("READY", flush=True)
sys.stdin.read()
c.stop()
"#;

#[tokio::test]
async fn python_aiosmtpd() {
    let addr = free_port();
    let mut child = Command::new("python3")
        .args(["-c", AIOSMTPD, &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = Killed(child);
    let first = lines.next().expect("aiosmtpd output").unwrap();
    assert_eq!(first, "READY", "aiosmtpd missing: run .ci/install-peers");
    wait_listening(addr).await;
    let mut conn = client().connect_addr(addr, "127.0.0.1").await.unwrap();
    let env = Envelope::from_str_addr("sender@client.test")
        .unwrap()
        .to_str_addr("one@py.test")
        .unwrap()
        .to_str_addr("bad1@py.test")
        .unwrap()
        .to_str_addr("two@py.test")
        .unwrap();
    let out = conn.send(&env.0, "Subject: interop\r\n\r\n.\r\n..two dots\r\nend".into()).await.unwrap();
    let refused: Vec<String> = out.rejected().map(|(p, r)| format!("{p} {}", r.code())).collect();
    assert_eq!(refused, ["<bad1@py.test> 550"]);
    assert_eq!(out.reply.unwrap().text(), "Stored");
    conn.quit().await.unwrap();
    let line = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap()).await.unwrap();
    drop(stdin);
    assert!(line.contains(r#""to": ["one@py.test", "two@py.test"]"#), "{line}");
    assert!(line.contains(r#"Subject: interop\r\n\r\n.\r\n..two dots\r\nend\r\n"#), "body unstuffed exactly: {line}");
    let _ = std::io::stdout().flush();
}
