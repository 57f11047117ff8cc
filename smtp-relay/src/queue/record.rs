//! The spool's on-disk format: a versioned, line-based envelope (commands as SMTP writes them,
//! parsed back with smtp-proto) followed by the body, and a small state file per message.

use std::fmt::Write as _;

use smtp_proto::Command;

use super::{QueuedMessage, RcptRecord, RcptStatus};

const MAGIC: &str = "TERN-SPOOL 1";
const STATE_MAGIC: &str = "TERN-STATE 1";

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

/// Writes the envelope and body as one spool file.
pub(crate) fn encode(msg: &QueuedMessage, body: &[u8]) -> Vec<u8> {
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
    let mail = Command::Mail { verb: msg.verb, from: msg.from.clone(), params: msg.params.clone() };
    let _ = writeln!(s, "mail {mail}");
    for r in &msg.recipients {
        let rcpt = Command::Rcpt { to: r.path.clone(), params: r.params.clone() };
        let _ = writeln!(s, "rcpt {rcpt}");
    }
    let _ = writeln!(s, "body {}", body.len());
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads a spool file back: the message (all recipients pending) and the body's offset.
pub(crate) fn decode(data: &[u8]) -> Result<(QueuedMessage, usize), RecordError> {
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
                let len: usize = value.parse().map_err(|_| err(lineno, "bad body length"))?;
                if data.len() - pos != len {
                    return Err(err(lineno, format!("body is {} octets, header says {len}", data.len() - pos)));
                }
                if msg.id.is_empty() || !have_mail || msg.recipients.is_empty() {
                    return Err(err(lineno, "id, mail and rcpt lines are required"));
                }
                return Ok((msg, pos));
            }
            _ => return Err(err(lineno, format!("unknown key {key:?}"))),
        }
    }
}

/// Writes the state file.
pub(crate) fn encode_state(msg: &QueuedMessage) -> Vec<u8> {
    let mut s = String::new();
    let _ = writeln!(s, "{STATE_MAGIC}");
    let _ = writeln!(s, "delay-warned {}", u8::from(msg.delay_warned));
    for (i, r) in msg.recipients.iter().enumerate() {
        let status = match &r.status {
            RcptStatus::Pending => "pending".to_string(),
            RcptStatus::Delivered => "delivered".to_string(),
            RcptStatus::Failed(why) => format!("failed {}", one_line(why)),
        };
        let mta = r.remote_mta.as_deref().unwrap_or("-");
        let _ = writeln!(s, "rcpt {i} {} {} {} {mta}", r.attempts, r.next_attempt, u8::from(r.notified));
        let _ = writeln!(s, "status {i} {status}");
        if let Some(e) = &r.last_error {
            let _ = writeln!(s, "error {i} {}", one_line(e));
        }
    }
    s.into_bytes()
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Applies a state file to a decoded message.
pub(crate) fn apply_state(msg: &mut QueuedMessage, data: &[u8]) -> Result<(), RecordError> {
    let text = std::str::from_utf8(data).map_err(|_| err(1, "not UTF-8"))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l == STATE_MAGIC => {}
        _ => return Err(err(1, "unknown state format")),
    }
    for (i, line) in lines {
        let lineno = i + 1;
        let mut parts = line.splitn(3, ' ');
        let key = parts.next().unwrap_or("");
        let flag = |v: Option<&str>| v == Some("1");
        if key == "delay-warned" {
            msg.delay_warned = flag(parts.next());
            continue;
        }
        let idx: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(|| err(lineno, "bad recipient index"))?;
        let rest = parts.next().unwrap_or("");
        let r = msg.recipients.get_mut(idx).ok_or_else(|| err(lineno, "recipient index out of range"))?;
        match key {
            "rcpt" => {
                let mut f = rest.split(' ');
                r.attempts = f.next().and_then(|v| v.parse().ok()).ok_or_else(|| err(lineno, "bad attempts"))?;
                r.next_attempt =
                    f.next().and_then(|v| v.parse().ok()).ok_or_else(|| err(lineno, "bad next attempt"))?;
                r.notified = f.next() == Some("1");
                r.remote_mta = f.next().filter(|m| *m != "-").map(str::to_string);
            }
            "status" => {
                r.status = match rest.split_once(' ') {
                    _ if rest == "pending" => RcptStatus::Pending,
                    _ if rest == "delivered" => RcptStatus::Delivered,
                    Some(("failed", why)) => RcptStatus::Failed(why.to_string()),
                    _ => return Err(err(lineno, "bad status")),
                }
            }
            "error" => r.last_error = Some(rest.to_string()),
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
                params: smtp_proto::MailParams { size: Some(5), ..Default::default() },
                arrival: 1_700_000_000,
                client: Some("127.0.0.1:2525".parse().unwrap()),
                helo: Some("client.test".into()),
                recipients: vec![
                    RcptRecord::new(ForwardPath::Path(Path::parse("<@B,c@d>").unwrap()), Default::default()),
                    RcptRecord::new(ForwardPath::Postmaster, Default::default()),
                ],
                delay_warned: false,
            },
            b"hello",
        ))
        .unwrap()
        .0;
        m.recipients[0].status = RcptStatus::Failed("550 5.1.1 no".into());
        m.recipients[0].attempts = 2;
        m.recipients[0].notified = true;
        m.recipients[1].last_error = Some("421 later".into());
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
