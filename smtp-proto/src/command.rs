//! SMTP commands: RFC 788's set (HELO, MAIL, RCPT, DATA, RSET, SEND, SOML, SAML, VRFY, EXPN,
//! HELP, NOOP, QUIT) and today's additions (EHLO, BDAT, STARTTLS, AUTH), with the ESMTP
//! parameters of MAIL and RCPT.
//!
//! Verbs and the `FROM:` / `TO:` keywords are case-insensitive (RFC 788 4.1.2, RFC 5321 2.4);
//! mailboxes keep their case. [`Command::parse`] takes one line without its line ending and never
//! panics; [`Command::write_to`] writes the line with CRLF.

use std::fmt;

use crate::address::{Domain, ForwardPath, Parser, ReversePath};
use crate::error::{CommandError, InvalidInput};

/// The verb that started a mail transaction (RFC 788 3.1 and 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MailVerb {
    /// MAIL: deliver to mailboxes.
    #[default]
    Mail,
    /// SEND: deliver to the user's terminal only.
    Send,
    /// SOML: send to the terminal or, if the user is not active, mail.
    Soml,
    /// SAML: send to the terminal and mail.
    Saml,
}

impl MailVerb {
    /// The verb as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MailVerb::Mail => "MAIL",
            MailVerb::Send => "SEND",
            MailVerb::Soml => "SOML",
            MailVerb::Saml => "SAML",
        }
    }
}

impl fmt::Display for MailVerb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `BODY=` (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `7BIT`
    SevenBit,
    /// `8BITMIME`
    EightBitMime,
}

/// `RET=` (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// Return the full message in a failure notification.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// An xtext value (RFC 3461 4): printable ASCII with `+XX` escapes, kept in encoded form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XText(String);

impl XText {
    /// Validates an encoded xtext.
    pub fn from_encoded(s: &str) -> Result<XText, InvalidInput> {
        let bad = InvalidInput { what: "xtext", reason: "not valid xtext" };
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => {
                    if !(b.get(i + 1).is_some_and(|c| c.is_ascii_hexdigit())
                        && b.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit()))
                    {
                        return Err(bad);
                    }
                    i += 3;
                }
                33..=60 | 62..=126 => i += 1,
                _ => return Err(bad),
            }
        }
        Ok(XText(s.to_string()))
    }

    /// Encodes arbitrary text as xtext.
    pub fn encode(s: &str) -> XText {
        let mut out = String::with_capacity(s.len());
        for &b in s.as_bytes() {
            match b {
                33..=42 | 44..=60 | 62..=126 => out.push(b as char),
                _ => out.push_str(&format!("+{b:02X}")),
            }
        }
        XText(out)
    }

    /// The encoded form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The decoded bytes.
    pub fn decode(&self) -> Vec<u8> {
        let b = self.0.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'+' {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("3F");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }
}

/// `NOTIFY=` (RFC 3461 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `NEVER`
    Never,
    /// Any of `SUCCESS`, `FAILURE`, `DELAY`.
    On {
        /// Notify on delivery.
        success: bool,
        /// Notify on failure.
        failure: bool,
        /// Notify on delay.
        delay: bool,
    },
}

/// `ORCPT=addr-type;xtext` (RFC 3461 4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt {
    /// The address type, usually `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The original recipient, xtext-encoded.
    pub addr: XText,
}

/// The ESMTP parameters of MAIL (and SEND, SOML, SAML).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MailParams {
    /// `SIZE=` declared message size (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461).
    pub envid: Option<XText>,
    /// `AUTH=` the submitter's identity, xtext, or `<>` as `XText("<>")` (RFC 4954 5).
    pub auth: Option<XText>,
    /// `REQUIRETLS` (RFC 8689): every hop must be reached over validated TLS and pass it on.
    pub requiretls: bool,
}

/// The ESMTP parameters of RCPT.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461).
    pub orcpt: Option<Orcpt>,
}

/// One SMTP command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// HELO (`extended == false`, RFC 788) or EHLO (RFC 5321).
    Hello {
        /// EHLO rather than HELO.
        extended: bool,
        /// The client's name for itself.
        domain: Domain,
    },
    /// MAIL, SEND, SOML or SAML `FROM:<reverse-path>` with parameters.
    Mail {
        /// Which of the four verbs.
        verb: MailVerb,
        /// The reverse-path.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// RCPT `TO:<forward-path>` with parameters.
    Rcpt {
        /// The forward-path.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// DATA
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets in this chunk.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// RSET
    Rset,
    /// VRFY string
    Vrfy(Text),
    /// EXPN string
    Expn(Text),
    /// `HELP [topic]`
    Help(Option<Text>),
    /// `NOOP [string]`
    Noop(Option<Text>),
    /// QUIT
    Quit,
    /// STARTTLS (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954)
    Auth {
        /// The SASL mechanism, upper case.
        mechanism: Text,
        /// The base64 initial response, `=` for an empty one.
        initial: Option<Text>,
    },
}

/// A command argument: non-empty text with no control characters (so no CR, LF or NUL), so
/// that no [`Command`] value can ever write more than one line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    /// Checks `s`: `what` names it in the error.
    pub fn new(s: &str, what: &'static str) -> Result<Text, InvalidInput> {
        if s.is_empty() || s.chars().any(char::is_control) {
            return Err(InvalidInput { what, reason: "empty or has control characters" });
        }
        Ok(Text(s.to_string()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A parsed argument, or the peer's syntax error.
fn parsed_text(s: &str) -> Result<Text, CommandError> {
    Text::new(s, "argument").map_err(|_| CommandError::Syntax("control characters in the argument"))
}

impl Command {
    /// A VRFY command for `s` (refused if it holds control characters).
    pub fn vrfy(s: &str) -> Result<Command, InvalidInput> {
        Text::new(s, "VRFY argument").map(Command::Vrfy)
    }

    /// An EXPN command for `s` (refused if it holds control characters).
    pub fn expn(s: &str) -> Result<Command, InvalidInput> {
        Text::new(s, "EXPN argument").map(Command::Expn)
    }

    /// Parses one command line without its CRLF.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let sp = memchr::memchr(b' ', line).unwrap_or(line.len());
        let verb = &line[..sp];
        let arg = if sp < line.len() { &line[sp + 1..] } else { &[][..] };
        let upper: [u8; 8] = {
            let mut u = [0u8; 8];
            if verb.len() > 8 {
                return Err(CommandError::Unrecognized);
            }
            for (d, s) in u.iter_mut().zip(verb) {
                *d = s.to_ascii_uppercase();
            }
            u
        };
        let verb = &upper[..verb.len()];
        if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(CommandError::Syntax("control characters in command line"));
        }
        let no_arg = |cmd: Command| {
            if arg.iter().all(|&b| b == b' ') {
                Ok(cmd)
            } else {
                Err(CommandError::Syntax("no arguments allowed"))
            }
        };
        let text = || std::str::from_utf8(arg).map_err(|_| CommandError::Syntax("argument is not UTF-8"));
        match verb {
            b"HELO" | b"EHLO" => {
                let s = text()?.trim_end();
                let mut p = Parser::new(s.as_bytes());
                let domain = p.domain(true).map_err(CommandError::BadHelloName)?;
                if !p.at_end() {
                    return Err(CommandError::BadHelloName("HELO/EHLO takes one domain"));
                }
                Ok(Command::Hello { extended: verb == b"EHLO", domain })
            }
            b"MAIL" | b"SEND" | b"SOML" | b"SAML" => {
                let verb = match verb {
                    b"MAIL" => MailVerb::Mail,
                    b"SEND" => MailVerb::Send,
                    b"SOML" => MailVerb::Soml,
                    _ => MailVerb::Saml,
                };
                let rest = keyword(arg, b"FROM:")?;
                let mut p = Parser::new(rest);
                let from = p.reverse_path().map_err(CommandError::Syntax)?;
                let params = parse_mail_params(p.rest())?;
                Ok(Command::Mail { verb, from, params })
            }
            b"RCPT" => {
                let rest = keyword(arg, b"TO:")?;
                let mut p = Parser::new(rest);
                let to = p.forward_path().map_err(CommandError::Syntax)?;
                let params = parse_rcpt_params(p.rest())?;
                Ok(Command::Rcpt { to, params })
            }
            b"DATA" => no_arg(Command::Data),
            b"RSET" => no_arg(Command::Rset),
            b"QUIT" => no_arg(Command::Quit),
            b"STARTTLS" => no_arg(Command::StartTls),
            b"BDAT" => {
                let s = text()?;
                let mut it = s.split(' ');
                let size = it
                    .next()
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(CommandError::Syntax("BDAT needs a size"))?;
                let size: u64 = size.parse().map_err(|_| CommandError::Syntax("BDAT size too large"))?;
                let last = match it.next() {
                    None => false,
                    Some(l) if l.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(CommandError::Syntax("BDAT size [LAST]")),
                };
                if it.next().is_some() {
                    return Err(CommandError::Syntax("BDAT size [LAST]"));
                }
                Ok(Command::Bdat { size, last })
            }
            b"VRFY" | b"EXPN" => {
                let s = text()?.trim();
                if s.is_empty() {
                    return Err(CommandError::Syntax("argument required"));
                }
                let s = parsed_text(s)?;
                Ok(if verb == b"VRFY" { Command::Vrfy(s) } else { Command::Expn(s) })
            }
            b"HELP" | b"NOOP" => {
                let s = text()?.trim();
                let s = (!s.is_empty()).then(|| parsed_text(s)).transpose()?;
                Ok(if verb == b"HELP" { Command::Help(s) } else { Command::Noop(s) })
            }
            b"AUTH" => {
                let s = text()?;
                let mut it = s.split(' ');
                let mech = it.next().unwrap_or("");
                if mech.is_empty() || !mech.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
                }
                let initial = it.next();
                if it.next().is_some()
                    || initial.is_some_and(|i| {
                        !i.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) || i.is_empty()
                    })
                {
                    return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
                }
                let initial = initial.map(parsed_text).transpose()?;
                Ok(Command::Auth { mechanism: parsed_text(&mech.to_ascii_uppercase())?, initial })
            }
            _ => Err(CommandError::Unrecognized),
        }
    }

    /// Appends the command line with CRLF. Infallible: every field was validated when built.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{self}\r\n");
    }

    /// The command line with CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Command {
    /// The command line without CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Hello { extended, domain } => write!(f, "{} {domain}", if *extended { "EHLO" } else { "HELO" }),
            Command::Mail { verb, from, params } => {
                write!(f, "{verb} FROM:{from}")?;
                if let Some(n) = params.size {
                    write!(f, " SIZE={n}")?;
                }
                match params.body {
                    Some(Body::SevenBit) => f.write_str(" BODY=7BIT")?,
                    Some(Body::EightBitMime) => f.write_str(" BODY=8BITMIME")?,
                    None => {}
                }
                if params.smtputf8 {
                    f.write_str(" SMTPUTF8")?;
                }
                if params.requiretls {
                    f.write_str(" REQUIRETLS")?;
                }
                match params.ret {
                    Some(Ret::Full) => f.write_str(" RET=FULL")?,
                    Some(Ret::Hdrs) => f.write_str(" RET=HDRS")?,
                    None => {}
                }
                if let Some(e) = &params.envid {
                    write!(f, " ENVID={}", e.as_str())?;
                }
                if let Some(a) = &params.auth {
                    write!(f, " AUTH={}", a.as_str())?;
                }
                Ok(())
            }
            Command::Rcpt { to, params } => {
                write!(f, "RCPT TO:{to}")?;
                match params.notify {
                    Some(Notify::Never) => f.write_str(" NOTIFY=NEVER")?,
                    Some(Notify::On { success, failure, delay }) => {
                        let mut v = Vec::new();
                        if success {
                            v.push("SUCCESS");
                        }
                        if failure {
                            v.push("FAILURE");
                        }
                        if delay {
                            v.push("DELAY");
                        }
                        write!(f, " NOTIFY={}", v.join(","))?;
                    }
                    None => {}
                }
                if let Some(o) = &params.orcpt {
                    write!(f, " ORCPT={};{}", o.addr_type, o.addr.as_str())?;
                }
                Ok(())
            }
            Command::Data => f.write_str("DATA"),
            Command::Bdat { size, last } => write!(f, "BDAT {size}{}", if *last { " LAST" } else { "" }),
            Command::Rset => f.write_str("RSET"),
            Command::Vrfy(s) => write!(f, "VRFY {s}"),
            Command::Expn(s) => write!(f, "EXPN {s}"),
            Command::Help(None) => f.write_str("HELP"),
            Command::Help(Some(s)) => write!(f, "HELP {s}"),
            Command::Noop(None) => f.write_str("NOOP"),
            Command::Noop(Some(s)) => write!(f, "NOOP {s}"),
            Command::Quit => f.write_str("QUIT"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Auth { mechanism, initial: None } => write!(f, "AUTH {mechanism}"),
            Command::Auth { mechanism, initial: Some(i) } => write!(f, "AUTH {mechanism} {i}"),
        }
    }
}

/// Strips a case-insensitive `FROM:` / `TO:` and any spaces after it.
fn keyword<'a>(arg: &'a [u8], kw: &[u8]) -> Result<&'a [u8], CommandError> {
    if arg.len() < kw.len() || !arg[..kw.len()].eq_ignore_ascii_case(kw) {
        return Err(CommandError::Syntax(if kw == b"TO:" {
            "expected TO:<forward-path>"
        } else {
            "expected FROM:<reverse-path>"
        }));
    }
    let mut rest = &arg[kw.len()..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    Ok(rest)
}

/// Splits ` KEY=VALUE KEY` into pairs; checks RFC 5321 4.1.2 esmtp-keyword/esmtp-value syntax.
fn params(rest: &[u8]) -> Result<Vec<(String, Option<&str>)>, CommandError> {
    let s = std::str::from_utf8(rest).map_err(|_| CommandError::Syntax("parameters are not UTF-8"))?;
    if !s.is_empty() && !s.starts_with(' ') {
        return Err(CommandError::Syntax("expected a space before parameters"));
    }
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for p in s.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || k.starts_with('-') {
            return Err(CommandError::Syntax("bad parameter keyword"));
        }
        if let Some(v) = v {
            if v.is_empty() || v.bytes().any(|b| b == b'=' || b < 33 || b == 127) {
                return Err(CommandError::Syntax("bad parameter value"));
            }
        }
        let k = k.to_ascii_uppercase();
        if out.iter().any(|(o, _)| *o == k) {
            return Err(CommandError::Syntax("duplicate parameter"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn need(v: Option<&str>) -> Result<&str, CommandError> {
    v.ok_or(CommandError::Syntax("parameter needs a value"))
}

fn parse_mail_params(rest: &[u8]) -> Result<MailParams, CommandError> {
    let mut m = MailParams::default();
    for (k, v) in params(rest)? {
        match k.as_str() {
            "SIZE" => {
                let v = need(v)?;
                if !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::Syntax("SIZE must be a number"));
                }
                m.size = Some(v.parse().map_err(|_| CommandError::Syntax("SIZE too large"))?);
            }
            "BODY" => {
                let v = need(v)?;
                m.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => return Err(CommandError::ParamNotImplemented("BODY=BINARYMIME".into())),
                    _ => return Err(CommandError::Syntax("BODY=7BIT|8BITMIME")),
                });
            }
            "SMTPUTF8" => {
                if v.is_some() {
                    return Err(CommandError::Syntax("SMTPUTF8 takes no value"));
                }
                m.smtputf8 = true;
            }
            "REQUIRETLS" => {
                if v.is_some() {
                    return Err(CommandError::Syntax("REQUIRETLS takes no value"));
                }
                m.requiretls = true;
            }
            "RET" => {
                m.ret = Some(match need(v)?.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(CommandError::Syntax("RET=FULL|HDRS")),
                });
            }
            "ENVID" => {
                let x = XText::from_encoded(need(v)?)?;
                if x.as_str().len() > 100 {
                    return Err(CommandError::Syntax("ENVID too long"));
                }
                m.envid = Some(x);
            }
            "AUTH" => {
                let v = need(v)?;
                m.auth = Some(if v == "<>" { XText("<>".into()) } else { XText::from_encoded(v)? });
            }
            _ => return Err(CommandError::ParamUnrecognized(k)),
        }
    }
    Ok(m)
}

fn parse_rcpt_params(rest: &[u8]) -> Result<RcptParams, CommandError> {
    let mut r = RcptParams::default();
    for (k, v) in params(rest)? {
        let v = v.ok_or(CommandError::Syntax("parameter needs a value"));
        match k.as_str() {
            "NOTIFY" => {
                let v = v?.to_ascii_uppercase();
                if v == "NEVER" {
                    r.notify = Some(Notify::Never);
                    continue;
                }
                let (mut success, mut failure, mut delay) = (false, false, false);
                for item in v.split(',') {
                    let flag = match item {
                        "SUCCESS" => &mut success,
                        "FAILURE" => &mut failure,
                        "DELAY" => &mut delay,
                        _ => return Err(CommandError::Syntax("NOTIFY=NEVER or SUCCESS,FAILURE,DELAY")),
                    };
                    if *flag {
                        return Err(CommandError::Syntax("NOTIFY lists an item twice"));
                    }
                    *flag = true;
                }
                r.notify = Some(Notify::On { success, failure, delay });
            }
            "ORCPT" => {
                let (t, a) = v?.split_once(';').ok_or(CommandError::Syntax("ORCPT=type;address"))?;
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(CommandError::Syntax("ORCPT address type"));
                }
                r.orcpt = Some(Orcpt { addr_type: t.to_string(), addr: XText::from_encoded(a)? });
            }
            _ => return Err(CommandError::ParamUnrecognized(k)),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Path, RouteStyle};

    fn p(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    /// One test per vector: input line, expected result (the re-serialised form or an error).
    macro_rules! vectors {
        ($($name:ident: $input:expr => $expect:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = p($input).map(|c| c.to_string());
                assert_eq!(got, $expect, "input {:?}", $input);
            }
        )*};
    }

    #[test]
    fn no_command_value_writes_two_lines() {
        for bad in ["a\r\nRSET", "a\nb", "a\rb", "a\0b", "\u{85}", ""] {
            assert!(Command::vrfy(bad).is_err(), "{bad:?}");
            assert!(Command::expn(bad).is_err(), "{bad:?}");
            assert!(Text::new(bad, "x").is_err(), "{bad:?}");
        }
        let ok = Command::vrfy("Smith").unwrap();
        assert_eq!(ok.to_string(), "VRFY Smith");
        // A parsed control character is the peer's syntax error.
        assert_eq!(p("NOOP a\x01b"), Err(CommandError::Syntax("control characters in the argument")));
        assert_eq!(p("HELP \x1b[2J"), Err(CommandError::Syntax("control characters in the argument")));
    }

    vectors! {
        helo: "HELO relay.example" => Ok("HELO relay.example".into());
        ehlo_lower: "ehlo Relay.Example" => Ok("EHLO Relay.Example".into());
        ehlo_literal: "EHLO [192.0.2.1]" => Ok("EHLO [192.0.2.1]".into());
        ehlo_u_label: "EHLO b\u{fc}cher.example" => Ok("EHLO b\u{fc}cher.example".into());
        ehlo_bidi_override: "EHLO evil\u{202e}moc.example" => Err(CommandError::BadHelloName("domain has characters no U-label may hold (controls, format or bidi marks)"));
        ehlo_nel: "EHLO a\u{85}b.example" => Err(CommandError::BadHelloName("domain has characters no U-label may hold (controls, format or bidi marks)"));
        mail_zero_width_domain: "MAIL FROM:<a@pay\u{200b}pal.example>" => Err(CommandError::Syntax("domain has characters no U-label may hold (controls, format or bidi marks)"));
        mail_case: "mail from:<Smith@Alpha.ARPA>" => Ok("MAIL FROM:<Smith@Alpha.ARPA>".into());
        mail_null: "MAIL FROM:<>" => Ok("MAIL FROM:<>".into());
        mail_space: "MAIL FROM: <a@b>" => Ok("MAIL FROM:<a@b>".into());
        send: "SEND FROM:<Smith@Alpha.ARPA>" => Ok("SEND FROM:<Smith@Alpha.ARPA>".into());
        soml: "SOML FROM:<a@b>" => Ok("SOML FROM:<a@b>".into());
        saml: "saml FROM:<a@b>" => Ok("SAML FROM:<a@b>".into());
        rcpt_788_route: "RCPT TO:<@A,@B,C@D>" => Ok("RCPT TO:<@A,@B,C@D>".into());
        rcpt_821_route: "RCPT TO:<@A,@B:C@D>" => Ok("RCPT TO:<@A,@B:C@D>".into());
        rcpt_postmaster: "RCPT TO:<postmaster>" => Ok("RCPT TO:<Postmaster>".into());
        mail_params: "MAIL FROM:<a@b> size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1" => Ok("MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1".into());
        rcpt_params: "RCPT TO:<a@b> NOTIFY=failure,delay ORCPT=rfc822;a+40b" => Ok("RCPT TO:<a@b> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+40b".into());
        bdat: "BDAT 100 LAST" => Ok("BDAT 100 LAST".into());
        bdat_huge: "BDAT 18446744073709551615 LAST" => Ok("BDAT 18446744073709551615 LAST".into());
        auth: "AUTH plain AGEAYg==" => Ok("AUTH PLAIN AGEAYg==".into());
        vrfy: "VRFY Smith" => Ok("VRFY Smith".into());
        help: "HELP mail" => Ok("HELP mail".into());
        noop: "NOOP" => Ok("NOOP".into());
        unknown: "FOO bar" => Err(CommandError::Unrecognized);
        empty: "" => Err(CommandError::Unrecognized);
        size_overflow: "MAIL FROM:<a@b> SIZE=99999999999999999999" => Err(CommandError::Syntax("SIZE too large"));
        bdat_overflow: "BDAT 18446744073709551616" => Err(CommandError::Syntax("BDAT size too large"));
        unknown_param: "MAIL FROM:<a@b> FOO=1" => Err(CommandError::ParamUnrecognized("FOO".into()));
        binarymime: "MAIL FROM:<a@b> BODY=BINARYMIME" => Err(CommandError::ParamNotImplemented("BODY=BINARYMIME".into()));
        no_brackets: "MAIL FROM:a@b" => Err(CommandError::Syntax("path must be in angle brackets"));
        data_arg: "DATA now" => Err(CommandError::Syntax("no arguments allowed"));
        vrfy_empty: "VRFY" => Err(CommandError::Syntax("argument required"));
        dup_param: "MAIL FROM:<a@b> SIZE=1 SIZE=2" => Err(CommandError::Syntax("duplicate parameter"));
        nul: "NOOP \0" => Err(CommandError::Syntax("control characters in command line"));
    }

    #[test]
    fn rfc788_relay_example_parses_to_typed_route() {
        let Command::Rcpt { to: ForwardPath::Path(path), .. } = p("RCPT TO:<@A,@B,C@D>").unwrap() else { panic!() };
        assert_eq!(path.style, RouteStyle::Comma);
        assert_eq!(path.route.len(), 2);
        let Command::Mail { from: ReversePath::Path(from), .. } = p("MAIL FROM:<@A,X@Y>").unwrap() else { panic!() };
        assert_eq!(
            from,
            Path {
                route: vec![Domain::parse("A").unwrap()],
                mailbox: "X@Y".parse().unwrap(),
                style: RouteStyle::Comma
            }
        );
    }

    #[test]
    fn xtext_round_trip() {
        let x = XText::encode("a+b=c d");
        assert_eq!(x.as_str(), "a+2Bb+3Dc+20d");
        assert_eq!(x.decode(), b"a+b=c d");
        assert!(XText::from_encoded("a+2").is_err());
        assert!(XText::from_encoded("a+zz").is_err());
    }
}
