//! The spool's on-disk format: a versioned, line-based envelope (commands as SMTP writes them,
//! parsed back with smtp-proto) followed by the body, and a small state file per message.
//!
//! The envelope ends with `body LENGTH`, the length written with a fixed width: the body is
//! streamed into the file after the envelope, and the length is filled in at the end, in place,
//! before the file is flushed and renamed into the queue. Reading an envelope never reads the
//! body; the file's size tells whether the body is whole.
//!
//! State files (version 2) store each reply with smtp-proto's own serialiser, as a block of
//! `LENGTH` octets after its line (`failed 0 27`), so a multi-line reply survives exactly.
//! Version 1 state files (reply texts on one line) are still read.

use std::fmt::Write as _;

use bytes::BytesMut;
use smtp_proto::{Command, EnhancedCode, Reply, ReplyParser};

use super::{QueuedMessage, RcptRecord, RcptStatus, RemoteHost};

const MAGIC: &str = "TERN-SPOOL 1";
const STATE_MAGIC_V1: &str = "TERN-STATE 1";
const STATE_MAGIC: &str = "TERN-STATE 2";
/// Digits of the body length in the envelope (fits any `u64`).
const LEN_WIDTH: usize = 20;

/// What is wrong with a spool record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RecordError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> RecordError {
    RecordError { line, message: message.into() }
}

/// The envelope, ending with the `body` line; `len_at` is the offset of the length digits, to
/// be filled in with [`length_digits`] once the body is written.
pub(crate) fn encode_header(msg: &QueuedMessage, body_len: u64) -> (Vec<u8>, usize) {
    let mut s = String::with_capacity(256);
    let _ = writeln!(s, "{MAGIC}");
    let _ = writeln!(s, "id {}", msg.id);
    let _ = writeln!(s, "arrival {}", msg.arrival);
    if let Some(c) = msg.client {
        let _ = writeln!(s, "client {c}");
    }
    if let Some(h) = &msg.helo {
        let _ = writeln!(s, "helo {h}");
    }
    if msg.trusted {
        let _ = writeln!(s, "trusted 1");
    }
    let mail = Command::Mail { verb: msg.verb, from: msg.from.clone(), params: msg.params.clone() };
    let _ = writeln!(s, "mail {mail}");
    for r in &msg.recipients {
        let rcpt = Command::Rcpt { to: r.path.clone(), params: r.params.clone() };
        let _ = writeln!(s, "rcpt {rcpt}");
    }
    s.push_str("body ");
    let len_at = s.len();
    s.push_str(&length_digits(body_len));
    s.push('\n');
    (s.into_bytes(), len_at)
}

/// A body length as written in the envelope.
pub(crate) fn length_digits(len: u64) -> String {
    format!("{len:0LEN_WIDTH$}")
}

/// Writes the envelope and body as one spool file (tests).
#[cfg(test)]
pub(crate) fn encode(msg: &QueuedMessage, body: &[u8]) -> Vec<u8> {
    let mut out = encode_header(msg, body.len() as u64).0;
    out.extend_from_slice(body);
    out
}

/// Reads a spool file back from its whole content: the message (all recipients pending) and
/// the body's offset.
#[cfg(test)]
pub(crate) fn decode(data: &[u8]) -> Result<(QueuedMessage, usize), RecordError> {
    let (msg, off, len) = decode_header(data)?;
    if (data.len() - off) as u64 != len {
        return Err(err(0, format!("body is {} octets, header says {len}", data.len() - off)));
    }
    Ok((msg, off))
}

/// Reads an envelope from the start of a spool file: the message (all recipients pending), the
/// body's offset and its declared length. `Err` with "truncated header" when `data` ends first.
pub(crate) fn decode_header(data: &[u8]) -> Result<(QueuedMessage, usize, u64), RecordError> {
    let mut msg = QueuedMessage {
        id: String::new(),
        verb: Default::default(),
        from: smtp_proto::ReversePath::Null,
        params: Default::default(),
        arrival: 0,
        client: None,
        helo: None,
        recipients: Vec::new(),
        delay_warned: false,
        trusted: false,
    };
    let mut pos = 0;
    let mut lineno = 0;
    let mut have_mail = false;
    loop {
        lineno += 1;
        let nl = memchr::memchr(b'\n', &data[pos..]).ok_or_else(|| err(lineno, "truncated header"))?;
        let line = std::str::from_utf8(&data[pos..pos + nl]).map_err(|_| err(lineno, "not UTF-8"))?;
        pos += nl + 1;
        if lineno == 1 {
            if line != MAGIC {
                return Err(err(1, format!("unknown format {line:?}")));
            }
            continue;
        }
        let (key, value) = line.split_once(' ').ok_or_else(|| err(lineno, "expected `key value`"))?;
        match key {
            "id" => msg.id = value.to_string(),
            "arrival" => msg.arrival = value.parse().map_err(|_| err(lineno, "bad arrival"))?,
            "client" => msg.client = Some(value.parse().map_err(|_| err(lineno, "bad client address"))?),
            "helo" => msg.helo = Some(value.to_string()),
            "trusted" => msg.trusted = value == "1",
            "mail" => match Command::parse(value.as_bytes()) {
                Ok(Command::Mail { verb, from, params }) => {
                    msg.verb = verb;
                    msg.from = from;
                    msg.params = params;
                    have_mail = true;
                }
                _ => return Err(err(lineno, "bad mail line")),
            },
            "rcpt" => match Command::parse(value.as_bytes()) {
                Ok(Command::Rcpt { to, params }) => msg.recipients.push(RcptRecord::new(to, params)),
                _ => return Err(err(lineno, "bad rcpt line")),
            },
            "body" => {
                let len: u64 = value.parse().map_err(|_| err(lineno, "bad body length"))?;
                if msg.id.is_empty() || !have_mail || msg.recipients.is_empty() {
                    return Err(err(lineno, "id, mail and rcpt lines are required"));
                }
                return Ok((msg, pos, len));
            }
            _ => return Err(err(lineno, format!("unknown key {key:?}"))),
        }
    }
}

/// Writes the state file.
pub(crate) fn encode_state(msg: &QueuedMessage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = |s: String| {
        out.extend_from_slice(s.as_bytes());
        out.push(b'\n');
    };
    line(STATE_MAGIC.to_string());
    line(format!("delay-warned {}", u8::from(msg.delay_warned)));
    let mut blocks: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, r) in msg.recipients.iter().enumerate() {
        let mta = r.remote_mta.as_ref().map(|m| m.name.as_str()).unwrap_or("-");
        let next = format!("{}.{:03}", r.next_attempt / 1000, r.next_attempt % 1000);
        line(format!("rcpt {i} {} {next} {} {mta}", r.attempts, u8::from(r.notified)));
        match &r.status {
            RcptStatus::Pending => line(format!("status {i} pending")),
            RcptStatus::Delivered => line(format!("status {i} delivered")),
            RcptStatus::Failed(reply) => blocks.push((format!("failed {i}"), reply.to_bytes())),
        }
        if let Some(e) = &r.last_error {
            blocks.push((format!("error {i}"), e.to_bytes()));
        }
        for (head, bytes) in blocks.drain(..) {
            line(format!("{head} {}", bytes.len()));
            out_block(&mut line, bytes);
        }
    }
    out
}

fn out_block(line: &mut impl FnMut(String), bytes: Vec<u8>) {
    // A serialised reply is CRLF-terminated text; it is written whole, then a newline.
    line(String::from_utf8_lossy(&bytes).into_owned());
}

/// Seconds since the epoch with an optional three-digit millisecond fraction (`1700000000.250`;
/// records written before due times had milliseconds hold whole seconds), as milliseconds.
fn parse_millis(text: &str) -> Option<u64> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, "000"));
    if frac.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    secs.parse::<u64>().ok()?.checked_mul(1000)?.checked_add(frac.parse().ok()?)
}

/// Parses one serialised reply.
fn parse_reply(bytes: &[u8], lineno: usize) -> Result<Reply, RecordError> {
    let mut buf = BytesMut::from(bytes);
    match ReplyParser::default().parse(&mut buf) {
        Ok(Some(r)) if buf.is_empty() => Ok(r),
        _ => Err(err(lineno, "bad reply")),
    }
}

/// A version 1 reply text (`"550 5.1.1 why"`, or a local reason without a code).
fn reply_from_v1(text: &str) -> Reply {
    let mut buf = BytesMut::from(format!("{text}\r\n").as_bytes());
    match ReplyParser::default().parse(&mut buf) {
        Ok(Some(r)) => r,
        _ => Reply::new(554, Some(EnhancedCode::new(5, 0, 0)), text),
    }
}

/// Applies a state file to a decoded message.
pub(crate) fn apply_state(msg: &mut QueuedMessage, data: &[u8]) -> Result<(), RecordError> {
    let v1 = data.starts_with(format!("{STATE_MAGIC_V1}\n").as_bytes());
    if !v1 && !data.starts_with(format!("{STATE_MAGIC}\n").as_bytes()) {
        return Err(err(1, "unknown state format"));
    }
    let mut pos = STATE_MAGIC.len() + 1;
    let mut lineno = 1;
    while pos < data.len() {
        lineno += 1;
        let nl = memchr::memchr(b'\n', &data[pos..]).ok_or_else(|| err(lineno, "truncated line"))?;
        let line = std::str::from_utf8(&data[pos..pos + nl]).map_err(|_| err(lineno, "not UTF-8"))?;
        pos += nl + 1;
        let mut parts = line.splitn(3, ' ');
        let key = parts.next().unwrap_or("");
        if key == "delay-warned" {
            msg.delay_warned = parts.next() == Some("1");
            continue;
        }
        let idx: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(|| err(lineno, "bad recipient index"))?;
        let rest = parts.next().unwrap_or("");
        let r = msg.recipients.get_mut(idx).ok_or_else(|| err(lineno, "recipient index out of range"))?;
        // A version 2 reply block: LENGTH octets, then a newline.
        let mut block = || -> Result<Reply, RecordError> {
            let n: usize = rest.parse().map_err(|_| err(lineno, "bad block length"))?;
            let bytes = data.get(pos..pos + n).ok_or_else(|| err(lineno, "truncated reply"))?;
            let reply = parse_reply(bytes, lineno)?;
            pos += n + 1;
            lineno += reply.lines().len();
            Ok(reply)
        };
        match key {
            "rcpt" => {
                let mut f = rest.split(' ');
                r.attempts = f.next().and_then(|v| v.parse().ok()).ok_or_else(|| err(lineno, "bad attempts"))?;
                r.next_attempt = f.next().and_then(parse_millis).ok_or_else(|| err(lineno, "bad next attempt"))?;
                r.notified = f.next() == Some("1");
                r.remote_mta = f.next().filter(|m| *m != "-").map(|m| RemoteHost { name: m.to_string() });
            }
            "status" => {
                r.status = match rest.split_once(' ') {
                    _ if rest == "pending" => RcptStatus::Pending,
                    _ if rest == "delivered" => RcptStatus::Delivered,
                    Some(("failed", why)) if v1 => RcptStatus::Failed(reply_from_v1(why)),
                    _ => return Err(err(lineno, "bad status")),
                }
            }
            "failed" if !v1 => r.status = RcptStatus::Failed(block()?),
            "error" if v1 => r.last_error = Some(reply_from_v1(rest)),
            "error" => r.last_error = Some(block()?),
            _ => return Err(err(lineno, format!("unknown key {key:?}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::{ForwardPath, MailVerb, Path, ReversePath};

    fn sample() -> QueuedMessage {
        let mut m = decode(&encode(
            &QueuedMessage {
                id: "ABC123".into(),
                verb: MailVerb::Saml,
                from: ReversePath::Path(Path::parse("<@A,x@y>").unwrap()),
                params: smtp_proto::MailParams { size: Some(5), requiretls: true, ..Default::default() },
                arrival: 1_700_000_000,
                client: Some("127.0.0.1:2525".parse().unwrap()),
                helo: Some("client.test".into()),
                recipients: vec![
                    RcptRecord::new(ForwardPath::Path(Path::parse("<@B,c@d>").unwrap()), Default::default()),
                    RcptRecord::new(ForwardPath::Postmaster, Default::default()),
                ],
                delay_warned: false,
                trusted: true,
            },
            b"hello",
        ))
        .unwrap()
        .0;
        m.recipients[0].status =
            RcptStatus::Failed(Reply::multiline(550, Some(EnhancedCode::new(5, 1, 1)), ["no such user", "really"]));
        m.recipients[0].remote_mta = Some(RemoteHost { name: "mx.d".into() });
        m.recipients[0].attempts = 2;
        m.recipients[0].notified = true;
        m.recipients[1].last_error = Some(Reply::new(421, None, "later"));
        m.recipients[1].next_attempt = 1_700_000_300_250;
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = encode(&m, b"hello");
        let (mut back, off) = decode(&bytes).unwrap();
        assert_eq!(&bytes[off..], b"hello");
        apply_state(&mut back, &encode_state(&m)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn version_1_state_is_read() {
        let mut m = sample();
        let v1 = b"TERN-STATE 1\ndelay-warned 1\nrcpt 0 3 99 1 mx.d\nstatus 0 failed 550 5.1.1 gone\nerror 1 connection refused\n";
        apply_state(&mut m, v1).unwrap();
        assert!(m.delay_warned);
        assert_eq!(
            m.recipients[0].status,
            RcptStatus::Failed(Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "gone"))
        );
        assert_eq!(m.recipients[1].last_error.as_ref().map(|r| r.code()), Some(554));
        assert_eq!(m.recipients[0].next_attempt, 99_000, "whole seconds then, milliseconds now");
    }

    #[test]
    fn due_times_keep_their_milliseconds() {
        let state = String::from_utf8(encode_state(&sample())).unwrap();
        assert!(state.contains("\nrcpt 1 0 1700000300.250 0 -\n"), "{state}");
        assert_eq!(parse_millis("12.005"), Some(12_005));
        assert_eq!(parse_millis("12"), Some(12_000));
        for bad in ["12.5", "12.0050", "x.000", "12.-01", "", "18446744073709552.000"] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn damage_is_reported_with_line_numbers() {
        let mut bytes = encode(&sample(), b"hello");
        bytes.truncate(bytes.len() - 1);
        let e = decode(&bytes).unwrap_err();
        assert!(e.message.contains("header says 5"), "{e}");
        assert_eq!(decode(b"TERN-SPOOL 1\nid X\nmail FOO\n").unwrap_err().line, 3);
        assert_eq!(decode(b"OTHER\n").unwrap_err().line, 1);
        assert!(decode(b"TERN-SPOOL 1\nid X").is_err());
    }
}
