//! Messages to send: envelope and body, and a builder for the minimal RFC 5322 header block.

use std::time::SystemTime;

use bytes::Bytes;
use smtp_proto::InvalidInput;
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
