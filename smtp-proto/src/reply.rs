//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 3463), their parser and a catalogue
//! of the standard replies this crate sends.

use std::fmt;

use bytes::{Buf, BytesMut};
use memchr::memchr;

use crate::error::ReplyError;

/// An enhanced mail system status code (RFC 3463): `class.subject.detail`, e.g. `2.1.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject, 0..=999.
    pub subject: u16,
    /// The detail, 0..=999.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code; `class` must be 2, 4 or 5 and the other parts below 1000 (RFC 3463 2).
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        assert!(class == 2 || class == 4 || class == 5);
        assert!(subject < 1000 && detail < 1000);
        EnhancedCode { class, subject, detail }
    }

    /// Parses `d.ddd.ddd` at the start of `text`; returns the code and the rest after one space.
    fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class: u8 = parse_digits(parts.next()?, 1)?.try_into().ok()?;
        let subject = parse_digits(parts.next()?, 3)?;
        let detail = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let rest = text.get(end + 1..).unwrap_or("");
        Some((EnhancedCode { class, subject, detail }, rest))
    }
}

fn parse_digits(s: &str, max_len: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// An SMTP reply: a three-digit code, an optional enhanced status code and one or more text lines.
///
/// Text never holds CR, LF or NUL: constructors replace them with spaces, so writing a reply
/// cannot inject a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

fn clean(text: &str) -> String {
    text.chars().map(|c| if matches!(c, '\r' | '\n' | '\0') { ' ' } else { c }).collect()
}

impl Reply {
    /// A one-line reply. `code` must be in 200..=599.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        Self::multiline(code, enhanced, [text])
    }

    /// A reply of several lines (RFC 5321 4.2.1); an empty iterator gives one empty line.
    pub fn multiline<I, S>(code: u16, enhanced: Option<EnhancedCode>, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        assert!((200..600).contains(&code), "reply code out of range");
        let mut lines: Vec<String> = lines.into_iter().map(|l| clean(l.as_ref())).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply { code, enhanced, lines }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// All text lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        self.code < 300
    }

    /// 3xx: more input is expected (354, 334).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: a transient failure; the same command may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: a permanent failure.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form, every line ending in CRLF.
    pub fn write_to(&self, out: &mut impl bytes::BufMut) {
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { b' ' } else { b'-' };
            let mut head = [0u8; 4];
            head[0] = b'0' + (self.code / 100) as u8;
            head[1] = b'0' + (self.code / 10 % 10) as u8;
            head[2] = b'0' + (self.code % 10) as u8;
            head[3] = sep;
            out.put_slice(&head);
            if let Some(e) = self.enhanced {
                out.put_slice(e.to_string().as_bytes());
                out.put_u8(b' ');
            }
            out.put_slice(line.as_bytes());
            out.put_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Default longest reply line accepted by [`ReplyParser`] (RFC 5321 4.5.3.1.5 says 512; we allow
/// more for lenient peers).
pub const MAX_REPLY_LINE: usize = 4096;
/// Default largest number of lines in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 256;

/// `s` with every control character except TAB written as an escape (`\x1b`, `\u{85}`):
/// text a peer chose (reply text, headers, message bodies) can then be shown on a terminal or
/// written to a log without moving the cursor, retitling the window or faking log lines.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A streaming reply parser with bounded memory: feed it the receive buffer, take whole replies.
/// Control characters a peer puts in reply text (other than TAB) arrive escaped
/// ([`escape_controls`]): RFC 5321 4.2 reply text is printable, and it is logged and shown.
#[derive(Debug)]
pub struct ReplyParser {
    max_line: usize,
    max_lines: usize,
    partial: Option<(u16, Vec<String>)>,
}

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new(MAX_REPLY_LINE, MAX_REPLY_LINES)
    }
}

impl ReplyParser {
    /// A parser with the given bounds on line length and line count.
    pub fn new(max_line: usize, max_lines: usize) -> Self {
        ReplyParser { max_line, max_lines, partial: None }
    }

    /// Takes complete lines from the front of `buf`; returns `Ok(None)` while a reply is still
    /// incomplete. Lines may end in CRLF or a bare LF. The buffer never has to hold more than one
    /// line: an over-long line or an endless multi-line reply is an error.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = memchr(b'\n', buf) else {
                if buf.len() > self.max_line {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if nl > self.max_line {
                return Err(ReplyError::LineTooLong);
            }
            let mut line = &buf[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let (code, last, text) = parse_reply_line(line)?;
            buf.advance(nl + 1);
            let (pcode, lines) = self.partial.get_or_insert_with(|| (code, Vec::new()));
            if *pcode != code {
                self.partial = None;
                return Err(ReplyError::CodeMismatch);
            }
            lines.push(text);
            if lines.len() > self.max_lines {
                self.partial = None;
                return Err(ReplyError::TooManyLines);
            }
            if last {
                let (code, lines) = self.partial.take().expect("set above");
                return Ok(Some(build_parsed(code, lines)));
            }
        }
    }
}

fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Syntax);
    }
    let code = (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    if !(200..600).contains(&code) {
        return Err(ReplyError::Syntax);
    }
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyError::Syntax),
    };
    if text.contains(&0) || text.contains(&b'\r') {
        return Err(ReplyError::Syntax);
    }
    Ok((code, last, escape_controls(&String::from_utf8_lossy(text)).into_owned()))
}

/// Recognises an enhanced code on the first line; strips the same code from the other lines.
fn build_parsed(code: u16, mut lines: Vec<String>) -> Reply {
    let class = (code / 100) as u8;
    let enhanced = EnhancedCode::parse_prefix(&lines[0]).filter(|(e, _)| e.class == class).map(|(e, _)| e);
    if let Some(e) = enhanced {
        let prefix = e.to_string();
        for l in &mut lines {
            if let Some(rest) = l.strip_prefix(&prefix) {
                *l = rest.strip_prefix(' ').unwrap_or(rest).to_string();
            }
        }
    }
    Reply { code, enhanced, lines }
}

macro_rules! catalogue {
    ($($(#[$doc:meta])* $name:ident => $code:literal, ($c:literal, $s:literal, $d:literal), $text:literal;)*) => {
        /// The standard replies, with their enhanced status codes (RFC 3463, RFC 5248).
        pub mod codes {
            use super::{EnhancedCode, Reply};
            $(
                $(#[$doc])*
                pub fn $name() -> Reply {
                    Reply::new($code, Some(EnhancedCode::new($c, $s, $d)), $text)
                }
            )*
        }
    };
}

catalogue! {
    /// `250 2.0.0 OK`
    ok => 250, (2, 0, 0), "OK";
    /// `250 2.1.0` after MAIL.
    sender_ok => 250, (2, 1, 0), "Sender OK";
    /// `250 2.1.5` after RCPT.
    recipient_ok => 250, (2, 1, 5), "Recipient OK";
    /// `250 2.0.0` after the end of data.
    message_accepted => 250, (2, 0, 0), "Message accepted";
    /// `221 2.0.0` after QUIT.
    closing => 221, (2, 0, 0), "Bye";
    /// `235 2.7.0` after successful AUTH.
    auth_ok => 235, (2, 7, 0), "Authentication successful";
    /// `252 2.5.2` for VRFY/EXPN the server will not or cannot answer (RFC 5321 3.5.3).
    cannot_verify => 252, (2, 5, 2), "Cannot VRFY user, but will accept message and attempt delivery";
    /// `354` after DATA (no enhanced code needed, but harmless).
    start_data => 354, (2, 0, 0), "Start mail input; end with <CRLF>.<CRLF>";
    /// `220 2.0.0` after STARTTLS.
    ready_for_tls => 220, (2, 0, 0), "Ready to start TLS";
    /// `421 4.7.0` when too many errors happened in one session.
    too_many_errors => 421, (4, 7, 0), "Too many errors, closing connection";
    /// `421 4.4.2` when the client was idle too long (RFC 5321 4.5.3.2).
    timeout => 421, (4, 4, 2), "Timeout, closing connection";
    /// `421 4.3.2` when the server shuts down.
    shutting_down => 421, (4, 3, 2), "Service shutting down, closing connection";
    /// `421 4.7.0` when the server has too many connections.
    too_many_connections => 421, (4, 7, 0), "Too many connections, try again later";
    /// `451 4.3.0` when a local service failed.
    local_error => 451, (4, 3, 0), "Local error in processing, try again later";
    /// `452 4.5.3` past the recipient limit (RFC 5321 4.5.3.1.10, RFC 9422).
    too_many_recipients => 452, (4, 5, 3), "Too many recipients";
    /// `452 4.5.3` past the per-session transaction limit (RFC 9422 MAILMAX).
    too_many_transactions => 452, (4, 5, 3), "Too many transactions in this session";
    /// `500 5.5.1` for an unknown verb.
    unrecognized => 500, (5, 5, 1), "Command unrecognized";
    /// `500 5.5.2` for a command line over the limit (RFC 5321 4.5.3.1.4).
    line_too_long => 500, (5, 5, 2), "Line too long";
    /// `501 5.5.4` for bad arguments.
    syntax => 501, (5, 5, 4), "Syntax error in parameters or arguments";
    /// `502 5.5.1` for a command this server does not offer.
    not_implemented => 502, (5, 5, 1), "Command not implemented";
    /// `503 5.5.1` for a command out of sequence.
    bad_sequence => 503, (5, 5, 1), "Bad sequence of commands";
    /// `504 5.5.4` for a parameter this server does not implement.
    param_not_implemented => 504, (5, 5, 4), "Command parameter not implemented";
    /// `530 5.7.0` when the server requires STARTTLS first.
    tls_required => 530, (5, 7, 0), "Must issue a STARTTLS command first";
    /// `535 5.7.8` for wrong credentials (RFC 4954).
    auth_failed => 535, (5, 7, 8), "Authentication credentials invalid";
    /// `538 5.7.11` when AUTH needs encryption (RFC 4954).
    encryption_required => 538, (5, 7, 11), "Encryption required for requested authentication mechanism";
    /// `552 5.3.4` for a message over the size limit (RFC 1870).
    too_big => 552, (5, 3, 4), "Message size exceeds fixed maximum message size";
    /// `554 5.5.1` for DATA with no accepted recipient (RFC 5321 3.3).
    no_valid_recipients => 554, (5, 5, 1), "No valid recipients";
    /// `550 5.6.0` for a body with bare CR or LF (SMTP smuggling defence).
    bare_line_ending => 550, (5, 6, 0), "Message refused: bare CR or LF in data (RFC 5321 2.3.8)";
    /// `550 5.6.0` for a body with NUL characters (RFC 5321 4.1.1.4: not in message data).
    nul_in_data => 550, (5, 6, 0), "Message refused: NUL characters in data (RFC 5321 4.1.1.4)";
    /// `555 5.5.4` for unrecognised MAIL/RCPT parameters (RFC 5321 4.1.1.11).
    params_unrecognized => 555, (5, 5, 4), "MAIL FROM/RCPT TO parameters not recognized or not implemented";
    /// `554 5.4.6` when a routing loop is detected.
    loop_detected => 554, (5, 4, 6), "Routing loop detected";
    /// `554 5.7.1` when relaying is denied.
    relay_denied => 554, (5, 7, 1), "Relay access denied";
    /// `550 5.1.1` for an unknown local user.
    no_such_user => 550, (5, 1, 1), "No such user";
    /// `501 5.0.0` when the client cancels AUTH with `*`.
    auth_cancelled => 501, (5, 0, 0), "Authentication cancelled";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::default();
        let mut buf = BytesMut::from(input);
        let mut v = Vec::new();
        while let Some(r) = p.parse(&mut buf)? {
            v.push(r);
        }
        Ok(v)
    }

    #[test]
    fn single_and_multiline() {
        let r = parse_all(b"250 2.1.0 Sender OK\r\n").unwrap();
        assert_eq!(r[0].code(), 250);
        assert_eq!(r[0].enhanced(), Some(EnhancedCode::new(2, 1, 0)));
        assert_eq!(r[0].text(), "Sender OK");
        let r = parse_all(b"250-mx.test greets you\r\n250-PIPELINING\r\n250 SIZE 1000\r\n").unwrap();
        assert_eq!(r[0].lines(), ["mx.test greets you", "PIPELINING", "SIZE 1000"]);
        assert_eq!(r[0].enhanced(), None);
    }

    #[test]
    fn round_trip() {
        let r = Reply::multiline(550, Some(EnhancedCode::new(5, 1, 1)), ["no such", "user here"]);
        let bytes = r.to_bytes();
        assert_eq!(bytes, b"550-5.1.1 no such\r\n550 5.1.1 user here\r\n");
        assert_eq!(parse_all(&bytes).unwrap(), vec![r]);
    }

    #[test]
    fn text_cannot_inject() {
        let r = Reply::new(250, None, "ok\r\nRCPT TO:<x@y>");
        assert_eq!(r.to_bytes(), b"250 ok  RCPT TO:<x@y>\r\n");
    }

    #[test]
    fn control_characters_in_reply_text_arrive_escaped() {
        let mut buf = BytesMut::from(&b"451 4.1.1 \x1b]0;owned\x07 later\ttab\r\n"[..]);
        let r = ReplyParser::default().parse(&mut buf).unwrap().unwrap();
        assert_eq!(r.lines(), ["\\x1b]0;owned\\x07 later\ttab"]);
        assert_eq!(escape_controls("a\u{85}b\u{9b}c"), "a\\u{85}b\\u{9b}c");
        assert!(matches!(escape_controls("plain"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn split_anywhere_and_errors() {
        let input = b"250-a\r\n250 b\r\n";
        for split in 0..input.len() {
            let mut p = ReplyParser::default();
            let mut buf = BytesMut::from(&input[..split]);
            let first = p.parse(&mut buf).unwrap();
            buf.extend_from_slice(&input[split..]);
            let r = first.or_else(|| p.parse(&mut buf).unwrap()).unwrap();
            assert_eq!(r.lines(), ["a", "b"]);
        }
        assert_eq!(parse_all(b"250-a\r\n251 b\r\n"), Err(ReplyError::CodeMismatch));
        assert_eq!(parse_all(b"abc\r\n"), Err(ReplyError::Syntax));
        assert_eq!(parse_all(b"199 x\r\n"), Err(ReplyError::Syntax));
        let mut p = ReplyParser::new(10, 3);
        assert_eq!(p.parse(&mut BytesMut::from(&b"250 0123456789abc"[..])), Err(ReplyError::LineTooLong));
        let mut p = ReplyParser::new(10, 3);
        assert_eq!(p.parse(&mut BytesMut::from(&b"250-a\n250-a\n250-a\n250-a\n"[..])), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn enhanced_class_must_match() {
        let r = parse_all(b"250 5.1.1 odd\r\n").unwrap();
        assert_eq!(r[0].enhanced(), None);
        assert_eq!(r[0].text(), "5.1.1 odd");
    }
}
