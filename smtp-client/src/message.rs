//! Messages to send: envelope and body, and a builder for the minimal RFC 5322 header block.

use std::time::SystemTime;

use bytes::Bytes;
use smtp_proto::client::MessageEnvelope;
use smtp_proto::{ForwardPath, InvalidInput, MailParams, MailVerb, Mailbox, Path, RcptParams, ReversePath};
use tokio::io::AsyncRead;

/// The body of a message.
pub enum Body {
    /// In memory.
    Bytes(Bytes),
    /// Streamed, so a large message is never held whole in memory. Its size is unknown in
    /// advance (no SIZE pre-check).
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Body::Bytes({} octets)", b.len()),
            Body::Reader(_) => f.write_str("Body::Reader"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Bytes(b)
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Body::Bytes(b.into())
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

/// Builds an envelope from validated addresses.
#[derive(Debug, Clone)]
pub struct Envelope(pub MessageEnvelope);

impl Envelope {
    /// An envelope with sender `from` (`None` for the null reverse-path `<>`).
    pub fn new(from: Option<Mailbox>) -> Self {
        Envelope(MessageEnvelope {
            verb: MailVerb::Mail,
            from: from.map_or(ReversePath::Null, |m| ReversePath::Path(Path::new(m))),
            params: MailParams::default(),
            recipients: Vec::new(),
        })
    }

    /// Parses the sender; an address with CR, LF, NUL or bad syntax is refused here, before
    /// anything reaches the wire.
    pub fn from_str_addr(from: &str) -> Result<Self, InvalidInput> {
        if from.is_empty() || from == "<>" {
            return Ok(Self::new(None));
        }
        Ok(Self::new(Some(parse_addr(from)?)))
    }

    /// Adds a recipient.
    pub fn to(mut self, to: Mailbox) -> Self {
        self.0.recipients.push((ForwardPath::Path(Path::new(to)), RcptParams::default()));
        self
    }

    /// Parses and adds a recipient.
    pub fn to_str_addr(self, to: &str) -> Result<Self, InvalidInput> {
        Ok(self.to(parse_addr(to)?))
    }

    /// Adds a recipient with a full forward-path (source route, DSN parameters).
    pub fn to_path(mut self, to: ForwardPath, params: RcptParams) -> Self {
        self.0.recipients.push((to, params));
        self
    }

    /// Sets the verb (RFC 788 SEND, SOML, SAML).
    pub fn verb(mut self, verb: MailVerb) -> Self {
        self.0.verb = verb;
        self
    }

    /// Sets MAIL parameters (DSN RET/ENVID, BODY, ...).
    pub fn params(mut self, params: MailParams) -> Self {
        self.0.params = params;
        self
    }
}

fn parse_addr(s: &str) -> Result<Mailbox, InvalidInput> {
    let s = s.trim();
    let inner = s.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(s);
    Mailbox::parse(inner)
}

/// A header value: refused if it holds CR, LF or NUL (header injection).
fn header_value(v: &str) -> Result<&str, InvalidInput> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(InvalidInput { what: "header value", reason: "contains CR, LF or NUL" });
    }
    Ok(v)
}

/// Whether `body` starts with a header block (a `Name:` first line).
pub fn has_headers(body: &[u8]) -> bool {
    let first = body.split(|&b| b == b'\n').next().unwrap_or(&[]);
    match first.iter().position(|&b| b == b':') {
        Some(p) if p > 0 => first[..p].iter().all(|&b| b.is_ascii_graphic() && b != b':'),
        _ => false,
    }
}

/// Prepends `From`, `To`, `Subject`, `Date` and `Message-ID` to a body without headers.
pub fn with_minimal_headers(
    from: &str,
    to: &[String],
    subject: &str,
    host: &str,
    body: &[u8],
) -> Result<Bytes, InvalidInput> {
    let date = smtp_proto::date::rfc5322_date(SystemTime::now());
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", header_value(from)?));
    let to: Vec<&str> = to.iter().map(|t| header_value(t)).collect::<Result<_, _>>()?;
    out.push_str(&format!("To: {}\r\n", to.join(", ")));
    out.push_str(&format!("Subject: {}\r\n", header_value(subject)?));
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!("Message-ID: <{nanos:x}.{}@{}>\r\n\r\n", std::process::id(), header_value(host)?));
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    Ok(v.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_refused_at_build_time() {
        assert!(Envelope::from_str_addr("a@b\r\nRCPT TO:<x@y>").is_err());
        assert!(Envelope::from_str_addr("a@b").unwrap().to_str_addr("c@d>\r\nDATA").is_err());
        assert!(with_minimal_headers("a@b", &["c@d".into()], "hi\r\nBcc: x@y", "h", b"").is_err());
        assert!(with_minimal_headers("a@b\0", &["c@d".into()], "hi", "h", b"").is_err());
    }

    #[test]
    fn headers_detection() {
        assert!(has_headers(b"Subject: x\r\n\r\nbody"));
        assert!(!has_headers(b"hello world\r\n"));
        let m = with_minimal_headers("a@b", &["c@d".into()], "s", "h.test", b"text").unwrap();
        assert!(m.starts_with(b"From: a@b\r\nTo: c@d\r\nSubject: s\r\nDate: "));
        assert!(m.ends_with(b"@h.test>\r\n\r\ntext"));
    }
}
