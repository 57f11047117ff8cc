//! `tern check` against servers made to pass and to fail each check: `tern serve` (every check
//! passes), a scripted server with every fault (legacy TLS and CBC suites, STARTTLS command
//! injection, bare-LF end of data, open relay, a certificate for another name that expires in
//! days, no SIZE), and a signed test zone with a matching and a broken MTA-STS policy and TLSA
//! record.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use tests::dns::{Rr, TestDns};
use tests::hop::{certificate, next_hop, sha256};
use tests::https::TestHttps;
use tests::{run_bounded, tern_bin, Tern};

/// Runs `tern check ARGS --json`: the exit code and the findings as (host, check) → status.
async fn check(args: Vec<String>) -> (i32, Vec<(String, String, String, String)>) {
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_bounded(std::process::Command::new(tern_bin()).arg("check").args(&args).arg("--json"), b"")
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    let mut found = Vec::new();
    for r in v.as_array().unwrap() {
        for f in r["findings"].as_array().unwrap() {
            found.push((
                r["host"].as_str().unwrap().to_string(),
                f["check"].as_str().unwrap().to_string(),
                f["status"].as_str().unwrap().to_string(),
                f["detail"].as_str().unwrap().to_string(),
            ));
        }
    }
    (code, found)
}

fn status<'a>(found: &'a [(String, String, String, String)], host: &str, check: &str) -> &'a str {
    found
        .iter()
        .find(|f| f.0 == host && f.1 == check)
        .map(|f| f.2.as_str())
        .unwrap_or_else(|| panic!("no {check:?} for {host}: {found:#?}"))
}

#[tokio::test]
async fn tern_serve_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    // Not trusting loopback, so relaying from the checking host is refused as from anyone.
    let tern = Tern::serve(dir.path(), &["--trusted-network", "192.0.2.0/24"]);
    let ca = dir.path().join("tls/cert.pem");
    let args =
        ["--server", &tern.addr.to_string(), "--name", "mx.test", "--ca", ca.to_str().unwrap(), "--rcpt", "u@mx.test"];
    let (code, found) = check(args.iter().map(|s| s.to_string()).collect()).await;
    let fails: Vec<_> = found.iter().filter(|f| f.2 == "fail").collect();
    assert!(fails.is_empty() && code == 0, "{fails:#?}");
    for c in [
        "STARTTLS offered",
        "TLS 1.3",
        "TLS 1.0 refused",
        "TLS 1.1 refused",
        "non-AEAD suites refused",
        "certificate valid for the name",
        "STARTTLS injection",
        "second STARTTLS",
        "LF.LF",
        "CR.CRLF",
        "CRLF.NUL.CRLF",
        "plain",
        "source route",
        "null reverse-path",
        "postmaster",
        "SIZE",
        "line limit",
    ] {
        assert_eq!(status(&found, "mx.test", c), "pass", "{c}");
    }
    assert!(tern.terminate().success());
}

/// A server with every fault `tern check` looks for.
mod bad {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// AEAD suites (TLS 1.3, GCM, ChaCha20): a ClientHello offering none of them is a probe.
    fn aead(s: u16) -> bool {
        matches!(s, 0x1301..=0x1303 | 0xc02b..=0xc032 | 0x009c..=0x00a7 | 0xcca8..=0xccae)
    }

    /// The cipher suites of a ClientHello record.
    fn suites(hello: &[u8]) -> Vec<u16> {
        let Some(sid) = hello.get(43).map(|&n| n as usize) else { return Vec::new() };
        let at = 44 + sid;
        let Some(len) = hello.get(at..at + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return Vec::new();
        };
        hello
            .get(at + 2..at + 2 + len)
            .map(|s| s.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
            .unwrap_or_default()
    }

    /// Serves one connection as badly as the test needs.
    pub async fn serve(mut tcp: TcpStream, tls: Arc<rustls::ServerConfig>) {
        let _ = tcp.write_all(b"220 bad.test ESMTP\r\n").await;
        let mut buf: Vec<u8> = Vec::new();
        let mut io: Box<dyn super::Stream> = Box::new(tcp);
        let mut tcp_for_tls: Option<()> = Some(());
        let mut in_data = false;
        loop {
            // Lines already buffered are handled first, even across STARTTLS (the fault).
            let Some(end) = buf.windows(1).position(|w| w[0] == b'\n') else {
                let mut chunk = [0u8; 8192];
                match io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            if in_data {
                // Ends data at any "\n.\n" or "\n.\r\n" (the smuggling fault).
                let text = buf.clone();
                let stop = text
                    .windows(3)
                    .position(|w| w == b"\n.\n")
                    .map(|p| p + 3)
                    .or_else(|| text.windows(4).position(|w| w == b"\n.\r\n").map(|p| p + 4));
                match stop {
                    Some(p) => {
                        buf.drain(..p);
                        in_data = false;
                        let _ = io.write_all(b"250 queued\r\n").await;
                    }
                    None => {
                        let mut chunk = [0u8; 8192];
                        match io.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                }
                continue;
            }
            let line: Vec<u8> = buf.drain(..=end).collect();
            let cmd = String::from_utf8_lossy(&line).trim().to_ascii_uppercase();
            let verb = cmd.split(' ').next().unwrap_or("").to_string();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-bad.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go\r\n"
                }
                "QUIT" => {
                    let _ = io.write_all(b"221 bye\r\n").await;
                    return;
                }
                "STARTTLS" => {
                    let _ = io.write_all(b"220 go ahead\r\n").await;
                    if tcp_for_tls.take().is_none() {
                        return;
                    }
                    io = match upgrade(io, tls.clone()).await {
                        Some(t) => t,
                        None => return,
                    };
                    continue;
                }
                _ => b"250 ok\r\n",
            };
            if io.write_all(reply).await.is_err() {
                return;
            }
        }
    }

    /// TLS over the connection, or a hand-made ServerHello taking whatever legacy version and
    /// suite a probe offers (no real TLS 1.0 server is needed to be caught accepting it).
    async fn upgrade(io: Box<dyn super::Stream>, tls: Arc<rustls::ServerConfig>) -> Option<Box<dyn super::Stream>> {
        let mut io = io;
        let mut head = [0u8; 5];
        io.read_exact(&mut head).await.ok()?;
        let mut rest = vec![0u8; u16::from_be_bytes([head[3], head[4]]) as usize];
        io.read_exact(&mut rest).await.ok()?;
        let version = u16::from_be_bytes([rest[4], rest[5]]);
        let offered = suites(&[&head[..], &rest[..]].concat());
        if version < 0x0303 || !offered.iter().any(|&s| aead(s)) {
            let suite = offered.first().copied().unwrap_or(0x002f);
            let mut hello = vec![2, 0, 0, 38];
            hello.extend(version.to_be_bytes());
            hello.extend([7u8; 32]);
            hello.push(0);
            hello.extend(suite.to_be_bytes());
            hello.push(0);
            let mut record = vec![22, 3, 1, 0, hello.len() as u8];
            record.extend(hello);
            let _ = io.write_all(&record).await;
            return None;
        }
        // A real handshake: replay the ClientHello into rustls.
        let replay = Replay { first: [&head[..], &rest[..]].concat(), io };
        let accepted = tokio_rustls::TlsAcceptor::from(tls).accept(replay).await.ok()?;
        Some(Box::new(accepted))
    }

    /// A stream that first yields bytes already read.
    struct Replay {
        first: Vec<u8>,
        io: Box<dyn super::Stream>,
    }

    impl tokio::io::AsyncRead for Replay {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if !self.first.is_empty() {
                let n = self.first.len().min(buf.remaining());
                let taken: Vec<u8> = self.first.drain(..n).collect();
                buf.put_slice(&taken);
                return std::task::Poll::Ready(Ok(()));
            }
            std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Replay {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.io).poll_write(cx, data)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A scripted server on 127.0.0.1 running `conn` for each connection, until the handle drops.
async fn scripted<F, Fut>(conn: F) -> (std::net::SocketAddr, tokio_util::task::AbortOnDropHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(conn(tcp));
        }
    });
    (addr, tokio_util::task::AbortOnDropHandle::new(task))
}

/// A certificate for `names` that expires in `days`: its PEM file and a server configuration.
fn expiring(dir: &Path, names: &[&str], days: i64) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (dir.join("exp.pem"), dir.join("exp.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.clone(), smtp_server::tls::from_pem_files(&c, &k).unwrap())
}

#[tokio::test]
async fn a_faulty_server_fails_each_check() {
    let dir = tempfile::tempdir().unwrap();
    // Valid for other.test, not for bad.test, and only for three more days.
    let (ca, tls) = expiring(dir.path(), &["other.test"], 3);
    let (addr, _server) = scripted(move |tcp| bad::serve(tcp, tls.clone())).await;
    let args = [
        "--server",
        &addr.to_string(),
        "--name",
        "bad.test",
        "--ca",
        ca.to_str().unwrap(),
        "--rcpt",
        "u@bad.test",
        "--timeout",
        "5",
    ];
    let (code, found) = check(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 1, "{found:#?}");
    for (c, want) in [
        ("STARTTLS offered", "pass"),
        ("TLS 1.0 refused", "fail"),
        ("TLS 1.1 refused", "fail"),
        ("non-AEAD suites refused", "fail"),
        ("certificate valid for the name", "fail"),
        ("certificate expiry", "warn"),
        ("STARTTLS injection", "fail"),
        ("second STARTTLS", "fail"),
        ("LF.LF", "fail"),
        ("LF.CRLF", "fail"),
        ("CRLF.CR", "pass"),
        ("plain", "fail"),
        ("source route", "fail"),
        ("%-hack", "warn"),
        ("SIZE", "warn"),
        ("line limit", "warn"),
    ] {
        assert_eq!(status(&found, "bad.test", c), want, "{c}: {found:#?}");
    }
}

#[tokio::test]
async fn domain_policies_are_judged_with_the_relays_code() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["mx.b.test", "mx.c.test", "mta-sts.b.test", "mta-sts.c.test"];
    let (ca, tls, key) = certificate(dir.path(), "hop", &names);
    let (hop, _) = next_hop("127.0.0.1:0".parse().unwrap(), tls.clone(), true).await;
    let https = TestHttps::start("127.0.0.1", tls).await;
    // Only mx.b.test is in the policy: c.test's MX is not.
    https.respond("version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 604800\r\n");
    let dns = TestDns::signed("test").await;
    let spki = sha256(&key.public_key_der());
    for (d, tlsa) in [("b", spki.clone()), ("c", vec![0x55; 32])] {
        dns.set(&format!("{d}.test"), vec![Rr::Mx(10, format!("mx.{d}.test"))]);
        dns.set(&format!("mx.{d}.test"), vec![Rr::A([127, 0, 0, 1].into())]);
        dns.set(&format!("_{}._tcp.mx.{d}.test", hop.port()), vec![Rr::Tlsa(3, 1, 1, tlsa)]);
        dns.set(&format!("_mta-sts.{d}.test"), vec![Rr::Txt("v=STSv1; id=1;".into())]);
        dns.set(&format!("mta-sts.{d}.test"), vec![Rr::A([127, 0, 0, 1].into())]);
        let rpt = if d == "b" { "v=TLSRPTv1; rua=mailto:tls@b.test" } else { "v=TLSRPTv1;" };
        dns.set(&format!("_smtp._tls.{d}.test"), vec![Rr::Txt(rpt.into())]);
    }
    let anchor = dns.trust_anchor(dir.path());
    for (domain, mx, want) in [("b.test", "mx.b.test", "pass"), ("c.test", "mx.c.test", "fail")] {
        let args = [
            domain,
            "--dns-server",
            &dns.addr.to_string(),
            "--dnssec-trust-anchor",
            anchor.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
            "--port",
            &hop.port().to_string(),
            "--mta-sts-port",
            &https.addr.port().to_string(),
        ];
        let (_, found) = check(args.iter().map(|s| s.to_string()).collect()).await;
        assert_eq!(status(&found, domain, "MTA-STS"), want, "{domain}: {found:#?}");
        assert_eq!(status(&found, domain, "TLS-RPT"), want, "a record without rua: {found:#?}");
        assert_eq!(status(&found, mx, "DANE"), want, "{domain}: {found:#?}");
        assert_eq!(status(&found, mx, "certificate valid for the name"), "pass");
        assert_eq!(status(&found, mx, "REQUIRETLS offered"), "pass");
    }
}

/// A private Postfix instance (Debian's package, installed by `.ci/install-peers`) in a temp
/// dir on 127.0.0.1, with TLS 1.0 and bare-LF end of data allowed; stopped on drop.
struct Postfix {
    addr: std::net::SocketAddr,
    cert: std::path::PathBuf,
    _stop: Stop,
    _dir: tempfile::TempDir,
}

/// Stops the Postfix instance configured in this directory (then its foreground process).
struct Stop {
    conf: std::path::PathBuf,
    _child: tests::Killed,
}

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = run_bounded(std::process::Command::new("postfix").arg("-c").arg(&self.conf).arg("stop"), b"");
    }
}

impl Postfix {
    fn start() -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Postfix's own user must reach its data directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (conf, data, spool) = (d.join("etc"), d.join("data"), d.join("spool"));
        for p in [&conf, &data, &spool] {
            std::fs::create_dir_all(p).unwrap();
        }
        let chown = std::process::Command::new("chown").arg("postfix").arg(&data).status().unwrap();
        assert!(chown.success(), "the Postfix test needs root and a postfix user (run .ci/install-peers)");
        let (cert, key) = (conf.join("cert.pem"), conf.join("key.pem"));
        let ck = rcgen::generate_simple_self_signed(vec!["pf.test".to_string()]).unwrap();
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("Postfix installed");
        // The port is picked again when another program took it meanwhile (Postfix cannot be
        // told to take port 0 and say which it got).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let main = format!(
                "compatibility_level = 3.6\nqueue_directory = {}\ndata_directory = {}\nmail_owner = postfix\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = pf.test\nmydestination = pf.test\n\
                 mynetworks = 127.0.0.0/8\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
                 smtpd_tls_security_level = may\nsmtpd_tls_protocols = >=TLSv1\nsmtpd_forbid_bare_newline = no\n\
                 maillog_file = /dev/stdout\n",
                spool.display(),
                data.display(),
                cert.display(),
                key.display(),
            );
            std::fs::write(conf.join("main.cf"), main).unwrap();
            let smtp = master
                .lines()
                .map(|l| {
                    if l.starts_with("smtp ") && l.contains(" inet ") {
                        format!("127.0.0.1:{port} inet n - n - - smtpd")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(conf.join("master.cf"), smtp + "\n").unwrap();
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            // In the foreground (as in a container): `postfix start` needs a syslog this machine
            // may not have to say why it failed.
            let child = std::process::Command::new("postfix")
                .arg("-c")
                .arg(&conf)
                .arg("start-fg")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("postfix start-fg");
            let stop = Stop { conf: conf.clone(), _child: tests::Killed(child) };
            let start = std::time::Instant::now();
            while start.elapsed() < tests::WAIT {
                if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                    use std::io::Read;
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    let mut b = [0u8; 64];
                    let n = s.read(&mut b).unwrap_or(0);
                    if String::from_utf8_lossy(&b[..n]).starts_with("220 pf.test ESMTP Postfix") {
                        return Postfix { addr, cert, _stop: stop, _dir: dir };
                    }
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            drop(stop);
        }
        panic!("Postfix did not start");
    }
}

/// Postfix as Debian ships it, with TLS 1.0 on and bare-LF end of data allowed: the faults
/// tern check is for, found in a real server.
#[tokio::test]
async fn postfix_with_legacy_settings_is_caught() {
    let pf = tokio::task::spawn_blocking(Postfix::start).await.unwrap();
    let args = [
        "--server",
        &pf.addr.to_string(),
        "--name",
        "pf.test",
        "--ca",
        pf.cert.to_str().unwrap(),
        "--rcpt",
        "postmaster@pf.test",
        "--timeout",
        "5",
    ];
    let (code, found) = check(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 1);
    for (c, want) in [
        ("TLS 1.3", "pass"),
        ("TLS 1.0 refused", "fail"),
        ("non-AEAD suites refused", "fail"),
        ("certificate valid for the name", "pass"),
        ("STARTTLS injection", "pass"),
        ("LF.LF", "fail"),
        ("CR.CRLF", "pass"),
        ("plain", "fail"),
        ("null reverse-path", "pass"),
    ] {
        assert_eq!(status(&found, "pf.test", c), want, "{c}: {found:#?}");
    }
}

/// A server without STARTTLS that refuses `<>` and postmaster and advertises PIPELINING but
/// answers only the first command of each write.
async fn plain_server(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.write_all(b"220 plain.test ESMTP\r\n").await;
    let mut chunk = [0u8; 8192];
    loop {
        let n = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let first = String::from_utf8_lossy(&chunk[..n]).lines().next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = if first.starts_with("EHLO") {
            b"250-plain.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n"
        } else if first.starts_with("MAIL FROM:<>") || first.starts_with("RCPT TO:<POSTMASTER>") {
            b"550 no\r\n"
        } else if first.starts_with("RCPT") {
            b"554 5.7.1 relay denied\r\n"
        } else if first.starts_with("QUIT") {
            let _ = tcp.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if tcp.write_all(reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn no_starttls_no_null_sender_no_postmaster_and_broken_pipelining_fail() {
    let (addr, _server) = scripted(plain_server).await;
    let args = ["--server", &addr.to_string(), "--name", "plain.test", "--timeout", "2"];
    let (code, found) = check(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 1);
    for (c, want) in [
        ("STARTTLS offered", "fail"),
        ("null reverse-path", "fail"),
        ("postmaster", "fail"),
        ("PIPELINING", "fail"),
        ("plain", "pass"),
        ("end-of-data forms", "warn"),
    ] {
        assert_eq!(status(&found, "plain.test", c), want, "{c}: {found:#?}");
    }
}
