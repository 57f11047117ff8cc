//! smtp-client against independent servers: Postfix's smtp-sink and Python's aiosmtpd. Both are
//! installed by `.ci/install-peers` (run by `.ci/run`); a missing peer fails the test.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use smtp_client::{ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;
use tests::Killed;

/// Waits until `child` greets on `addr` with a banner naming `banner`; `false` when the child
/// exited first (its port was taken) or another program answers there.
async fn greets(child: &mut std::process::Child, addr: SocketAddr, banner: &str) -> bool {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let mut greeting = [0u8; 256];
            let read = tokio::time::timeout(tests::WAIT, s.read(&mut greeting)).await;
            let n = read.ok().and_then(Result::ok).unwrap_or(0);
            return String::from_utf8_lossy(&greeting[..n]).starts_with(&format!("220 {banner}"));
        }
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        assert!(start.elapsed() < tests::WAIT, "peer did not start listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client() -> SmtpClient {
    let mut o = ClientOptions::new(Domain::parse("client.test").unwrap());
    o.tls = TlsMode::None;
    SmtpClient::new(o).unwrap()
}

#[tokio::test]
async fn postfix_smtp_sink() {
    let sink = std::path::Path::new("/usr/sbin/smtp-sink");
    assert!(sink.exists(), "Postfix smtp-sink missing: run .ci/install-peers");
    // smtp-sink runs as nobody: its dump file lives in a directory nobody may write to.
    let dumps = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let dump = dumps.path().join("received");
    // smtp-sink binds its own port and cannot report which one it got: pick one, and when
    // another process took it first (the sink exits, or someone else greets), pick again.
    let mut attempts = 0;
    let (addr, _child) = loop {
        attempts += 1;
        assert!(attempts <= 5, "smtp-sink could not bind a port in 5 attempts (its stderr says why)");
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut child = Killed(
            Command::new(sink)
                .args(["-u", "nobody", "-h", "sink.tern.test", "-D", dump.to_str().unwrap()])
                .args([&format!("127.0.0.1:{}", addr.port()), "64"])
                .stdout(Stdio::null())
                // Kept, so that a failure to start says why.
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        if greets(&mut child.0, addr, "sink.tern.test").await {
            break (addr, child);
        }
    };
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
        let out = conn.send(&env, body.into_bytes().into()).await.unwrap();
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
from aiosmtpd.smtp import SMTP

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

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler()), host="127.0.0.1", port=0)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()

asyncio.run(main())
"#;

#[tokio::test]
async fn python_aiosmtpd() {
    let mut child =
        Command::new("python3").args(["-c", AIOSMTPD]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = Killed(child);
    // The peer binds port 0 itself and says which port it got: no window for another test.
    let first = lines.next().expect("aiosmtpd output").unwrap();
    let port = first.strip_prefix("READY ").expect("aiosmtpd missing: run .ci/install-peers");
    let addr = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().unwrap()));
    let mut conn = client().connect_addr(addr, "127.0.0.1").await.unwrap();
    let env = Envelope::from_str_addr("sender@client.test")
        .unwrap()
        .to_str_addr("one@py.test")
        .unwrap()
        .to_str_addr("bad1@py.test")
        .unwrap()
        .to_str_addr("two@py.test")
        .unwrap();
    let out = conn.send(&env, "Subject: interop\r\n\r\n.\r\n..two dots\r\nend".into()).await.unwrap();
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
