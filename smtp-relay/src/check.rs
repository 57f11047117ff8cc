//! `tern check`: an operator's report card for one mail server or a domain's MX hosts.
//!
//! Every probe is bounded: one connection at a time, a time limit on each read, a few commands
//! per test. Nothing is delivered unless a recipient is named ([`CheckOptions::rcpt`]): the relay
//! probes stop at RCPT and reset, and the end-of-data probes run only with that recipient.
//! The domain's transport policy is judged with the relay's own MTA-STS, DANE and TLS-RPT code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use smtp_client::CertVerify;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dns::{MxAnswer, MxResolver, TlsaAnswer};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Pass,
    /// Wrong: the exit status says so.
    Fail,
    /// Worth a look.
    Warn,
    /// For information.
    Info,
}

impl Status {
    /// ✓, ✗, ! or ·.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Warn => "!",
            Status::Info => "·",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// The group: banner, tls, policy, smuggling, relay, hygiene.
    pub group: &'static str,
    /// The check.
    pub check: String,
    /// Its outcome.
    pub status: Status,
    /// A short reason.
    pub detail: String,
}

/// The findings for one host (or, with `host` empty, the domain's policy).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The host name checked.
    pub host: String,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// What was found.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    fn add(&mut self, group: &'static str, check: &str, status: Status, detail: impl Into<String>) {
        self.findings.push(Finding { group, check: check.to_string(), status, detail: detail.into() });
    }
}

/// What the checks use.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Our EHLO name.
    pub helo: String,
    /// A recipient the operator names: the end-of-data probes deliver to it.
    pub rcpt: Option<String>,
    /// Longest wait for any one reply or handshake.
    pub timeout: Duration,
    /// How certificates are judged (the web PKI, or a CA file).
    pub verify: CertVerify,
    /// The HTTPS port of MTA-STS policy hosts (443; another only for tests).
    pub mta_sts_port: u16,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            helo: "tern-check.invalid".into(),
            rcpt: None,
            timeout: Duration::from_secs(10),
            verify: CertVerify::WebPki,
            mta_sts_port: 443,
        }
    }
}

/// A certificate's expiry closer than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A reply: its code and text lines.
#[derive(Debug, Clone)]
struct Answer {
    code: u16,
    lines: Vec<String>,
}

impl Answer {
    fn text(&self) -> String {
        self.lines.join(" / ")
    }
}

/// What a TLS handshake showed.
#[derive(Debug, Clone)]
struct TlsFacts {
    version: String,
    cipher: String,
    group: String,
    chain: Vec<CertificateDer<'static>>,
}

/// One SMTP conversation with exact bytes.
struct Probe {
    io: Box<dyn Stream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Probe {
    async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Probe> {
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        Ok(Probe { io: Box::new(tcp), buf: Vec::new(), timeout })
    }

    /// Connects, reads the greeting and says EHLO: the probe and the EHLO reply.
    async fn greeted(addr: SocketAddr, o: &CheckOptions) -> std::io::Result<(Probe, Answer)> {
        let mut p = Probe::connect(addr, o.timeout).await?;
        p.reply().await?;
        let ehlo = p.cmd(&format!("EHLO {}", o.helo)).await?;
        Ok((p, ehlo))
    }

    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(self.timeout, self.io.write_all(data))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(self.timeout, self.io.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time"))??;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        if self.buf.len() + n > 64 * 1024 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "reply too long"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// One whole reply (all its lines).
    async fn reply(&mut self) -> std::io::Result<Answer> {
        let mut lines = Vec::new();
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
                let last = line.len() == 3 || line.as_bytes().get(3) == Some(&b' ');
                lines.push(line.get(4..).unwrap_or("").to_string());
                match code {
                    Some(code) if last => return Ok(Answer { code, lines }),
                    Some(_) => {}
                    None => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an SMTP reply")),
                }
            }
            self.fill().await?;
        }
    }

    async fn cmd(&mut self, line: &str) -> std::io::Result<Answer> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Whatever the server sends within `wait` without being asked.
    async fn unsolicited(&mut self, wait: Duration) -> Vec<u8> {
        let mut chunk = [0u8; 1024];
        let mut got = std::mem::take(&mut self.buf);
        if let Ok(Ok(n)) = tokio::time::timeout(wait, self.io.read(&mut chunk)).await {
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    /// The TLS handshake (after a 220 to STARTTLS).
    async fn handshake(self, name: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<(Probe, TlsFacts)> {
        let server = ServerName::try_from(name.to_string())
            .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("a valid name"));
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.timeout, connector.connect(server, self.io))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let c = tls.get_ref().1;
        let info = smtp_proto::tls_policy::TlsInfo::from_rustls(c);
        let facts = TlsFacts {
            version: info.version,
            cipher: info.cipher,
            group: c.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_default(),
            chain: c
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                .unwrap_or_default(),
        };
        Ok((Probe { io: Box::new(tls), buf: Vec::new(), timeout: self.timeout }, facts))
    }

    /// Connects, says EHLO and STARTTLS and shakes hands with `config`.
    async fn tls(
        addr: SocketAddr,
        name: &str,
        o: &CheckOptions,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<(Probe, TlsFacts)> {
        let (mut p, _) = Probe::greeted(addr, o).await?;
        let r = p.cmd("STARTTLS").await?;
        if r.code != 220 {
            return Err(std::io::Error::other(format!("STARTTLS answered {} {}", r.code, r.text())));
        }
        p.handshake(name, config).await
    }
}

fn insecure(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    smtp_client::tls::client_config_for(&CertVerify::Insecure, versions).expect("a valid client configuration")
}

/// Checks one server: banner, TLS, end-of-data handling, relaying, hygiene.
pub async fn check_server(addr: SocketAddr, name: &str, o: &CheckOptions) -> Report {
    let mut r = Report { host: name.to_string(), addr: Some(addr), findings: Vec::new() };
    let ehlo = match banner(&mut r, addr, o).await {
        Some(e) => e,
        None => return r,
    };
    let facts = tls(&mut r, addr, name, o, &ehlo).await;
    if facts.is_some() {
        injection(&mut r, addr, name, o).await;
    }
    smuggling(&mut r, addr, o).await;
    relay(&mut r, addr, name, o).await;
    hygiene(&mut r, addr, o, &ehlo).await;
    r
}

/// Reachability, greeting, EHLO: the EHLO keywords (upper case).
async fn banner(r: &mut Report, addr: SocketAddr, o: &CheckOptions) -> Option<Vec<String>> {
    let start = Instant::now();
    let mut p = match Probe::connect(addr, o.timeout).await {
        Ok(p) => p,
        Err(e) => {
            r.add("banner", "connect", Status::Fail, format!("{addr}: {e}"));
            return None;
        }
    };
    let greeting = match p.reply().await {
        Ok(g) => g,
        Err(e) => {
            r.add("banner", "greeting", Status::Fail, format!("no greeting: {e}"));
            return None;
        }
    };
    let waited = start.elapsed();
    if greeting.code != 220 {
        r.add(
            "banner",
            "greeting",
            Status::Fail,
            format!("{} {} (RFC 5321 4.2: 220 expected)", greeting.code, greeting.text()),
        );
        return None;
    }
    r.add("banner", "greeting", Status::Pass, format!("220 after {} ms: {}", waited.as_millis(), greeting.text()));
    let ehlo = match p.cmd(&format!("EHLO {}", o.helo)).await {
        Ok(e) if e.code == 250 => e,
        Ok(e) => {
            r.add("banner", "EHLO", Status::Fail, format!("{} {}", e.code, e.text()));
            return None;
        }
        Err(e) => {
            r.add("banner", "EHLO", Status::Fail, e.to_string());
            return None;
        }
    };
    let keywords: Vec<String> = ehlo.lines[1..].iter().map(|l| l.to_ascii_uppercase()).collect();
    r.add("banner", "EHLO", Status::Info, keywords.join(", "));
    let _ = p.cmd("QUIT").await;
    Some(keywords)
}

fn has(keywords: &[String], word: &str) -> bool {
    keywords.iter().any(|k| k.split(' ').next() == Some(word))
}

/// STARTTLS, versions, suites, certificate.
async fn tls(r: &mut Report, addr: SocketAddr, name: &str, o: &CheckOptions, ehlo: &[String]) -> Option<TlsFacts> {
    if !has(ehlo, "STARTTLS") {
        r.add(
            "tls",
            "STARTTLS offered",
            Status::Fail,
            "not in the EHLO reply (RFC 3207): mail to this host travels in clear",
        );
        return None;
    }
    r.add("tls", "STARTTLS offered", Status::Pass, "");
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    let facts = match Probe::tls(addr, name, o, insecure(&both)).await {
        Ok((mut p, f)) => {
            r.add("tls", "handshake", Status::Pass, format!("{} {} {}", f.version, f.cipher, f.group));
            // A second STARTTLS inside TLS must be refused.
            match p.cmd(&format!("EHLO {}", o.helo)).await {
                Ok(e) if has(&e.lines.iter().map(|l| l.to_ascii_uppercase()).collect::<Vec<_>>(), "REQUIRETLS") => {
                    r.add("tls", "REQUIRETLS offered", Status::Pass, "RFC 8689")
                }
                Ok(_) => r.add("tls", "REQUIRETLS offered", Status::Info, "not offered (RFC 8689)"),
                Err(e) => r.add("tls", "EHLO after STARTTLS", Status::Fail, e.to_string()),
            }
            match p.cmd("STARTTLS").await {
                Ok(a) if a.code == 220 => r.add(
                    "tls",
                    "second STARTTLS",
                    Status::Fail,
                    "220 inside TLS (RFC 3207 4.2: must not be offered again)",
                ),
                Ok(a) => r.add("tls", "second STARTTLS", Status::Pass, format!("{} {}", a.code, a.text())),
                Err(e) => r.add("tls", "second STARTTLS", Status::Warn, e.to_string()),
            }
            f
        }
        Err(e) => {
            r.add("tls", "handshake", Status::Fail, e.to_string());
            return None;
        }
    };
    for (label, version) in [("TLS 1.3", &rustls::version::TLS13), ("TLS 1.2", &rustls::version::TLS12)] {
        match Probe::tls(addr, name, o, insecure(&[version])).await {
            Ok((_, f)) => r.add("tls", label, Status::Pass, format!("accepted ({})", f.cipher)),
            Err(e) if version == &rustls::version::TLS13 => r.add(
                "tls",
                label,
                Status::Warn,
                format!("refused: {e} (the IETF's TLS 1.3 is the default to aim for)"),
            ),
            Err(e) => r.add("tls", label, Status::Info, format!("refused: {e}")),
        }
    }
    for (label, version, suites) in [
        ("TLS 1.0 refused", 0x0301u16, LEGACY_SUITES),
        ("TLS 1.1 refused", 0x0302, LEGACY_SUITES),
        ("non-AEAD suites refused", 0x0303, CBC_SUITES),
    ] {
        match legacy_hello(addr, name, o, version, suites).await {
            Ok(Some((v, suite))) => r.add(
                "tls",
                label,
                Status::Fail,
                format!(
                    "the server chose version {v:#06x} with suite {suite:#06x} (RFC 8996; RFC 7525: AEAD suites only)"
                ),
            ),
            Ok(None) => r.add("tls", label, Status::Pass, ""),
            Err(e) => r.add("tls", label, Status::Warn, format!("probe failed: {e}")),
        }
    }
    certificate(r, addr, name, o, &facts).await;
    Some(facts)
}

/// The chain judged as `o.verify` says, and its expiry.
async fn certificate(r: &mut Report, addr: SocketAddr, name: &str, o: &CheckOptions, facts: &TlsFacts) {
    let config = match smtp_client::tls::client_config(&o.verify) {
        Ok(c) => c,
        Err(e) => return r.add("tls", "certificate", Status::Warn, format!("cannot judge: {e}")),
    };
    match Probe::tls(addr, name, o, config).await {
        Ok(_) => r.add("tls", "certificate valid for the name", Status::Pass, name.to_string()),
        Err(e) => r.add("tls", "certificate valid for the name", Status::Fail, format!("{name}: {e}")),
    }
    let Some(end) = facts.chain.first() else { return };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match smtp_client::dane::not_after(end) {
        Some(t) if t <= now => r.add("tls", "certificate expiry", Status::Fail, "expired"),
        Some(t) if t - now < EXPIRY_WARNING.as_secs() => {
            r.add("tls", "certificate expiry", Status::Warn, format!("expires in {} days", (t - now) / 86_400))
        }
        Some(t) => r.add("tls", "certificate expiry", Status::Pass, format!("{} days left", (t - now) / 86_400)),
        None => r.add("tls", "certificate expiry", Status::Warn, "no readable expiry"),
    }
}

/// Suites an old client offers: CBC, RC4 and 3DES with RSA and ECDHE.
const LEGACY_SUITES: &[u16] = &[0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035, 0x000a, 0x0005];
/// TLS 1.2 suites without AEAD.
const CBC_SUITES: &[u16] = &[0xc027, 0xc028, 0xc023, 0xc024, 0xc013, 0xc009, 0x003c, 0x002f, 0x000a, 0x0005];

/// A hand-made ClientHello at `version` offering only `suites` (no supported_versions, so a
/// server cannot pick TLS 1.3): the version and suite of the ServerHello, or `None` when the
/// server refuses (an alert or a closed connection).
async fn legacy_hello(
    addr: SocketAddr,
    name: &str,
    o: &CheckOptions,
    version: u16,
    suites: &[u16],
) -> std::io::Result<Option<(u16, u16)>> {
    let (mut p, _) = Probe::greeted(addr, o).await?;
    let a = p.cmd("STARTTLS").await?;
    if a.code != 220 {
        return Err(std::io::Error::other(format!("STARTTLS answered {}", a.code)));
    }
    p.send(&client_hello(version, suites, name)).await?;
    let mut head = [0u8; 5];
    let read = tokio::time::timeout(o.timeout, p.io.read_exact(&mut head)).await;
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Ok(None),
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the ClientHello")),
    }
    if head[0] != 22 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.min(16 * 1024)];
    tokio::time::timeout(o.timeout, p.io.read_exact(&mut body))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "short ServerHello"))??;
    // Handshake type 2 (ServerHello), 3 length octets, then the version, 32 random octets and
    // a session id before the suite.
    if body.first() != Some(&2) || body.len() < 4 + 2 + 32 + 1 {
        return Ok(None);
    }
    let v = u16::from_be_bytes([body[4], body[5]]);
    let sid = body[38] as usize;
    let suite = body.get(39 + sid..41 + sid).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
    Ok(Some((v, suite)))
}

fn client_hello(version: u16, suites: &[u16], name: &str) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut exts = Vec::new();
    if ServerName::try_from(name).is_ok_and(|n| matches!(n, ServerName::DnsName(_))) {
        let mut sni = Vec::new();
        sni.extend(((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name.as_bytes());
        ext(&mut exts, 0x0000, &sni);
    }
    ext(&mut exts, 0x000a, &[0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
    ext(&mut exts, 0x000b, &[0x01, 0x00]);
    ext(&mut exts, 0x000d, &[0x00, 0x0a, 0x04, 0x01, 0x04, 0x03, 0x08, 0x04, 0x02, 0x01, 0x02, 0x03]);
    let mut hello = Vec::new();
    hello.extend(version.to_be_bytes());
    let random: [u8; 32] = rand::random();
    hello.extend(random);
    hello.push(0);
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]);
    hello.extend((exts.len() as u16).to_be_bytes());
    hello.extend(exts);
    let mut hs = vec![1];
    hs.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend(hello);
    let mut record = vec![22, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// STARTTLS command injection (CVE-2011-0411 and the 2021 USENIX study): a command sent in
/// the same packet as STARTTLS must not be answered inside TLS.
async fn injection(r: &mut Report, addr: SocketAddr, name: &str, o: &CheckOptions) {
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    let result = async {
        let (mut p, _) = Probe::greeted(addr, o).await?;
        p.send(b"STARTTLS\r\nNOOP\r\n").await?;
        let a = p.reply().await?;
        if a.code != 220 {
            return Ok::<_, std::io::Error>(Some(format!(
                "STARTTLS with a command behind it: {} {}",
                a.code,
                a.text()
            )));
        }
        let (mut p, _) = p.handshake(name, insecure(&both)).await?;
        let extra = p.unsolicited(Duration::from_millis(750).min(o.timeout)).await;
        Ok((!extra.is_empty()).then(|| String::from_utf8_lossy(&extra).trim().to_string()))
    }
    .await;
    match result {
        Ok(None) => r.add("tls", "STARTTLS injection", Status::Pass, "the command sent with STARTTLS was discarded"),
        Ok(Some(s)) if s.starts_with("STARTTLS with") => r.add("tls", "STARTTLS injection", Status::Pass, s),
        Ok(Some(s)) => r.add(
            "tls",
            "STARTTLS injection",
            Status::Fail,
            format!("answered a command sent before the handshake, inside TLS: {s:?} (RFC 3207 4.2)"),
        ),
        Err(e) => r.add("tls", "STARTTLS injection", Status::Warn, format!("probe failed: {e}")),
    }
}

/// The end-of-data forms of the 2023 SMTP smuggling reports. Only `CRLF.CRLF` may end data.
const SMUGGLING: [(&str, &[u8]); 6] = [
    ("LF.LF", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CR", b"\r.\r"),
    ("CRLF.NUL.CRLF", b"\r\n.\0\r\n"),
];

/// Whether the server ends data at a bare-LF/CR or NUL form: the smuggled `NOOP` behind it is
/// answered before the real end of data.
async fn smuggling(r: &mut Report, addr: SocketAddr, o: &CheckOptions) {
    let Some(rcpt) = &o.rcpt else {
        r.add(
            "smuggling",
            "end-of-data forms",
            Status::Warn,
            "not checked: give --rcpt (one message per form is delivered there)",
        );
        return;
    };
    for (label, form) in SMUGGLING {
        let result = async {
            let (mut p, _) = Probe::greeted(addr, o).await?;
            let m = p.cmd(&format!("MAIL FROM:<tern-check@{}>", o.helo)).await?;
            let t = p.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
            if m.code != 250 || t.code / 100 != 2 {
                return Ok::<_, std::io::Error>(Err(format!("recipient refused: {} {}", t.code, t.text())));
            }
            let d = p.cmd("DATA").await?;
            if d.code != 354 {
                return Ok(Err(format!("DATA: {} {}", d.code, d.text())));
            }
            let mut data = format!("Subject: tern check: end-of-data form {label}\r\n\r\ntest").into_bytes();
            data.extend_from_slice(form);
            data.extend_from_slice(b"NOOP\r\n");
            p.send(&data).await?;
            // A server that ended data at the form answers now (then the NOOP).
            let early = p.unsolicited(Duration::from_millis(750).min(o.timeout)).await;
            p.buf = early.clone();
            p.send(b"\r\n.\r\n").await?;
            let end = p.reply().await;
            let _ = p.cmd("QUIT").await;
            Ok(Ok((early, end.map(|a| a.code).unwrap_or(0))))
        }
        .await;
        match result {
            Ok(Ok((early, _))) if !early.is_empty() => r.add(
                "smuggling",
                label,
                Status::Fail,
                format!("ended data early and answered what followed: {:?}", String::from_utf8_lossy(&early).trim()),
            ),
            Ok(Ok((_, code))) => {
                r.add("smuggling", label, Status::Pass, format!("not an end of data ({code} at the real end)"))
            }
            Ok(Err(why)) => r.add("smuggling", label, Status::Warn, why),
            Err(e) => r.add("smuggling", label, Status::Warn, format!("probe failed: {e}")),
        }
    }
}

/// Mail to a foreign domain from this host, in plain, source-route, %-hack and quoted forms.
/// Stops at RCPT: nothing is sent.
async fn relay(r: &mut Report, addr: SocketAddr, name: &str, o: &CheckOptions) {
    let foreign = "relay-test@tern-check.invalid";
    let forms = [
        ("plain", format!("<{foreign}>")),
        ("source route", format!("<@{name}:{foreign}>")),
        ("%-hack", format!("<relay-test%tern-check.invalid@{name}>")),
        ("quoted", format!("<\"{foreign}\"@{name}>")),
    ];
    let result = async {
        let (mut p, _) = Probe::greeted(addr, o).await?;
        let mut out = Vec::new();
        for (label, path) in &forms {
            let m = p.cmd(&format!("MAIL FROM:<tern-check@{}>", o.helo)).await?;
            let t = if m.code == 250 { p.cmd(&format!("RCPT TO:{path}")).await? } else { m };
            out.push((*label, t));
            p.cmd("RSET").await?;
        }
        let _ = p.cmd("QUIT").await;
        Ok::<_, std::io::Error>(out)
    }
    .await;
    match result {
        Ok(out) => {
            for (label, a) in out {
                let accepted = a.code / 100 == 2;
                let status = match (accepted, label) {
                    (false, _) => Status::Pass,
                    (true, "plain" | "source route") => Status::Fail,
                    (true, _) => Status::Warn,
                };
                let detail = match status {
                    Status::Fail if addr.ip().is_loopback() => format!(
                        "open relay: {} {} (from this host, over loopback: a server that trusts local clients relays for them)",
                        a.code,
                        a.text()
                    ),
                    Status::Fail => format!("open relay: {} {} (from this host)", a.code, a.text()),
                    Status::Warn => {
                        format!("{} {}: accepted; it relays if the local part is routed on", a.code, a.text())
                    }
                    _ => format!("{} {}", a.code, a.text()),
                };
                r.add("relay", label, status, detail);
            }
        }
        Err(e) => r.add("relay", "relay probes", Status::Warn, format!("probe failed: {e}")),
    }
}

/// `<>` and postmaster accepted, SIZE and PIPELINING, line length, VRFY/EXPN.
async fn hygiene(r: &mut Report, addr: SocketAddr, o: &CheckOptions, ehlo: &[String]) {
    let result = async {
        let (mut p, _) = Probe::greeted(addr, o).await?;
        let null = p.cmd("MAIL FROM:<>").await?;
        let postmaster = if null.code == 250 {
            p.cmd("RCPT TO:<postmaster>").await?
        } else {
            p.cmd("RSET").await?;
            p.cmd(&format!("MAIL FROM:<tern-check@{}>", o.helo)).await?;
            p.cmd("RCPT TO:<postmaster>").await?
        };
        p.cmd("RSET").await?;
        // Three commands in one write: a pipelining server answers all three (RFC 2920 3.1).
        p.send(b"RSET\r\nNOOP\r\nNOOP\r\n").await?;
        let mut pipelined = 0;
        for _ in 0..3 {
            match p.reply().await {
                Ok(_) => pipelined += 1,
                Err(_) => break,
            }
        }
        let long = p.cmd(&format!("NOOP {}", "x".repeat(1100))).await?;
        let vrfy = p.cmd("VRFY postmaster").await?;
        let expn = p.cmd("EXPN postmaster").await?;
        // A line far past any sensible limit: refused, or the connection closed.
        let huge = p.cmd(&format!("NOOP {}", "x".repeat(70_000))).await.ok();
        let _ = p.cmd("QUIT").await;
        Ok::<_, std::io::Error>((null, postmaster, long, vrfy, expn, huge, pipelined))
    }
    .await;
    let (null, postmaster, long, vrfy, expn, huge, pipelined) = match result {
        Ok(x) => x,
        Err(e) => return r.add("hygiene", "probes", Status::Warn, format!("probe failed: {e}")),
    };
    let ok = |a: &Answer| if a.code == 250 { Status::Pass } else { Status::Fail };
    r.add("hygiene", "null reverse-path", ok(&null), format!("MAIL FROM:<> → {} (RFC 5321 4.5.5)", null.code));
    r.add(
        "hygiene",
        "postmaster",
        ok(&postmaster),
        format!("RCPT TO:<postmaster> → {} (RFC 5321 4.5.1)", postmaster.code),
    );
    r.add(
        "hygiene",
        "SIZE",
        if has(ehlo, "SIZE") { Status::Pass } else { Status::Warn },
        if has(ehlo, "SIZE") {
            "advertised (RFC 1870)"
        } else {
            "not advertised: senders learn the limit only after sending"
        },
    );
    match (has(ehlo, "PIPELINING"), pipelined) {
        (true, 3) => r.add(
            "hygiene",
            "PIPELINING",
            Status::Pass,
            "advertised, and three commands in one write got three replies",
        ),
        (true, n) => r.add(
            "hygiene",
            "PIPELINING",
            Status::Fail,
            format!("advertised, but three commands in one write got {n} replies (RFC 2920 3.1)"),
        ),
        (false, _) => r.add("hygiene", "PIPELINING", Status::Info, "not advertised"),
    }
    r.add(
        "hygiene",
        "line length",
        Status::Info,
        format!("a 1105-octet command → {} (RFC 5321 4.5.3.1.4: 512 is the least a server must take)", long.code),
    );
    match huge {
        Some(a) if a.code / 100 == 2 => r.add(
            "hygiene",
            "line limit",
            Status::Warn,
            format!("a 70 000-octet command → {}: taken (or cut short) instead of refused", a.code),
        ),
        Some(a) => r.add("hygiene", "line limit", Status::Pass, format!("a 70 000-octet command → {}", a.code)),
        None => r.add("hygiene", "line limit", Status::Pass, "a 70 000-octet command closed the connection"),
    }
    for (label, a) in [("VRFY", vrfy), ("EXPN", expn)] {
        let shown = if a.code == 250 { "answers: it tells who exists" } else { "does not tell" };
        r.add("hygiene", label, Status::Info, format!("{shown} ({} {})", a.code, a.text()));
    }
}

/// The domain's transport policy: MTA-STS, DANE for each MX (matched against what it
/// presents), TLS-RPT. The MX hosts found, in order.
pub async fn check_policy(domain: &str, resolver: &dyn MxResolver, o: &CheckOptions) -> (Report, Vec<String>) {
    let mut r = Report { host: domain.to_string(), addr: None, findings: Vec::new() };
    let (hosts, secure) = match resolver.mx_dnssec(domain).await {
        Ok((MxAnswer::Hosts(h), secure)) => (h, secure),
        Ok((MxAnswer::NullMx, _)) => {
            r.add("policy", "MX", Status::Info, "null MX (RFC 7505): the domain takes no mail");
            return (r, Vec::new());
        }
        Ok((MxAnswer::NoSuchDomain, _)) => {
            r.add("policy", "MX", Status::Fail, "the domain does not exist");
            return (r, Vec::new());
        }
        Err(e) => {
            r.add("policy", "MX", Status::Fail, e.to_string());
            return (r, Vec::new());
        }
    };
    r.add(
        "policy",
        "MX",
        Status::Info,
        format!("{} (DNSSEC {})", hosts.join(", "), if secure { "secure" } else { "insecure" }),
    );
    // MTA-STS (RFC 8461).
    let records = resolver.txt(&format!("_mta-sts.{domain}")).await.unwrap_or_default();
    let sts: Vec<&String> = records.iter().filter(|t| t.starts_with("v=STSv1")).collect();
    if sts.is_empty() {
        r.add("policy", "MTA-STS", Status::Info, "no _mta-sts TXT record (RFC 8461 3.1)");
    } else {
        match crate::mta_sts::Fetcher::new(&o.verify, o.mta_sts_port, o.timeout) {
            Ok(f) => match f.fetch(resolver, domain).await {
                Ok((policy, _)) => {
                    let unmatched: Vec<&String> = hosts.iter().filter(|h| !policy.allows(h)).collect();
                    let mode = format!("{:?}", policy.mode).to_ascii_lowercase();
                    if unmatched.is_empty() {
                        r.add(
                            "policy",
                            "MTA-STS",
                            Status::Pass,
                            format!("mode {mode}, max_age {}, every MX matches", policy.max_age),
                        );
                    } else {
                        r.add(
                            "policy",
                            "MTA-STS",
                            Status::Fail,
                            format!(
                                "mode {mode}: MX {unmatched:?} not matched by the policy's mx lines (RFC 8461 4.1)"
                            ),
                        );
                    }
                    if policy.max_age < 86_400 {
                        r.add(
                            "policy",
                            "MTA-STS max_age",
                            Status::Warn,
                            format!("{} s: RFC 8461 3.2 advises weeks", policy.max_age),
                        );
                    }
                }
                Err(e) => r.add("policy", "MTA-STS", Status::Fail, format!("{e} (RFC 8461 3.3)")),
            },
            Err(e) => r.add("policy", "MTA-STS", Status::Warn, format!("cannot fetch: {e}")),
        }
    }
    // TLS-RPT (RFC 8460).
    let rpt = resolver.txt(&format!("_smtp._tls.{domain}")).await.unwrap_or_default();
    match rpt.iter().find(|t| t.starts_with("v=TLSRPTv1")) {
        Some(t) => match crate::tls_rpt::parse_record(t) {
            Ok(rua) => r.add("policy", "TLS-RPT", Status::Pass, rua.join(", ")),
            Err(e) => r.add("policy", "TLS-RPT", Status::Fail, format!("{e} (RFC 8460 3)")),
        },
        None => r.add("policy", "TLS-RPT", Status::Info, "no _smtp._tls TXT record (RFC 8460 3)"),
    }
    (r, hosts)
}

/// DANE for one MX host: its TLSA records (DNSSEC) against the certificate it presents.
pub async fn check_dane(
    r: &mut Report,
    host: &str,
    addr: SocketAddr,
    resolver: &dyn MxResolver,
    o: &CheckOptions,
    mx_secure: bool,
) {
    if !mx_secure {
        return r.add(
            "policy",
            "DANE",
            Status::Info,
            "the MX records are not DNSSEC-signed: DANE does not apply (RFC 7672 2.2)",
        );
    }
    let records = match resolver.tlsa(host, addr.port()).await {
        Ok(TlsaAnswer::Secure(t)) if t.is_empty() => {
            return r.add("policy", "DANE", Status::Info, "no TLSA records (RFC 7672 2.2)");
        }
        Ok(TlsaAnswer::Secure(t)) => t,
        Ok(TlsaAnswer::Insecure) => return r.add("policy", "DANE", Status::Info, "TLSA records not signed"),
        Err(e) => {
            return r.add("policy", "DANE", Status::Fail, format!("TLSA look-up: {e} (RFC 7672 2.2.1: mail waits)"))
        }
    };
    let usable: Arc<[smtp_client::Tlsa]> = records.iter().filter(|t| t.usable()).cloned().collect();
    if usable.is_empty() {
        return r.add("policy", "DANE", Status::Warn, "only unusable TLSA records (PKIX usages, RFC 7672 3.1.3)");
    }
    let config = match smtp_client::tls::client_config(&CertVerify::Dane(usable)) {
        Ok(c) => c,
        Err(e) => return r.add("policy", "DANE", Status::Warn, e.to_string()),
    };
    match Probe::tls(addr, host, o, config).await {
        Ok(_) => r.add("policy", "DANE", Status::Pass, "the presented certificate matches the TLSA records"),
        Err(e) => {
            r.add("policy", "DANE", Status::Fail, format!("the presented certificate does not match: {e} (RFC 7672 3)"))
        }
    }
}

/// Checks a domain: its policy, then every MX host (first address) on `port`.
pub async fn check_domain(domain: &str, resolver: &dyn MxResolver, port: u16, o: &CheckOptions) -> Vec<Report> {
    let (policy, hosts) = check_policy(domain, resolver, o).await;
    let secure = policy.findings.iter().any(|f| f.check == "MX" && f.detail.ends_with("(DNSSEC secure)"));
    let mut out = vec![policy];
    for host in hosts {
        let addr = match resolver.addresses(&host).await {
            Ok(a) if !a.is_empty() => SocketAddr::new(a[0], port),
            Ok(_) | Err(_) => {
                let mut r = Report { host: host.clone(), addr: None, findings: Vec::new() };
                r.add("banner", "address", Status::Fail, "no address record");
                out.push(r);
                continue;
            }
        };
        let mut r = check_server(addr, &host, o).await;
        check_dane(&mut r, &host, addr, resolver, o, secure).await;
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hellos_are_well_formed_records() {
        let h = client_hello(0x0301, LEGACY_SUITES, "mx.example.org");
        assert_eq!(&h[..3], &[22, 3, 1]);
        assert_eq!(u16::from_be_bytes([h[3], h[4]]) as usize, h.len() - 5, "record length");
        assert_eq!(h[5], 1, "ClientHello");
        let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(hs_len, h.len() - 9, "handshake length");
        assert_eq!(&h[9..11], &[3, 1], "client version");
        assert!(h.windows(14).any(|w| w == b"mx.example.org"), "SNI");
        // No SNI for an address.
        let h = client_hello(0x0303, CBC_SUITES, "127.0.0.1");
        assert!(!h.windows(9).any(|w| w == b"127.0.0.1"));
    }

    #[test]
    fn keywords_match_whole_words() {
        let k = vec!["SIZE 1000".to_string(), "STARTTLS".into(), "8BITMIME".into()];
        assert!(has(&k, "SIZE") && has(&k, "STARTTLS") && !has(&k, "SMTPUTF8") && !has(&k, "8BIT"));
    }
}
