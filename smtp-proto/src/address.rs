//! Domains, mailboxes and paths (RFC 5321 4.1.2, RFC 6531 for UTF-8, RFC 788 3.6 source routes).
//!
//! Every type here is validated when it is built, so writing it to the wire cannot inject CR, LF,
//! NUL or any other byte outside the grammar.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::{CommandError, InvalidInput};

/// A domain: a name (`mx.example`, U-labels allowed) or an address literal
/// (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name, case preserved.
    Name(String),
    /// `[a.b.c.d]`
    Ipv4(Ipv4Addr),
    /// `[IPv6:...]`
    Ipv6(Ipv6Addr),
}

impl Domain {
    /// Parses a domain or address literal; the whole input must be consumed.
    pub fn parse(s: &str) -> Result<Domain, InvalidInput> {
        let mut p = Parser::new(s.as_bytes());
        let d = p.domain(false).map_err(|reason| InvalidInput { what: "domain", reason })?;
        if !p.at_end() {
            return Err(InvalidInput { what: "domain", reason: "trailing characters" });
        }
        Ok(d)
    }

    /// The name in lower case for comparisons, or the literal's wire form.
    pub fn canonical(&self) -> String {
        match self {
            Domain::Name(n) => n.to_lowercase(),
            other => other.to_string(),
        }
    }

    /// Whether two domains name the same host (names compare case-insensitively).
    pub fn eq_ignore_case(&self, other: &Domain) -> bool {
        match (self, other) {
            (Domain::Name(a), Domain::Name(b)) => a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase(),
            (a, b) => a == b,
        }
    }

    /// Whether the name has non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        matches!(self, Domain::Name(n) if !n.is_ascii())
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
        }
    }
}

impl FromStr for Domain {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s)
    }
}

/// A mailbox `local-part@domain`. The local part is kept in its wire form (a dot-string or a
/// quoted string), case preserved (RFC 5321 2.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Builds a mailbox from an unquoted local part; quotes it when the grammar requires.
    pub fn new(local_part: &str, domain: Domain) -> Result<Mailbox, InvalidInput> {
        let bad = |reason| InvalidInput { what: "mailbox", reason };
        if local_part.is_empty() {
            return Err(bad("empty local part"));
        }
        if is_dot_string(local_part.as_bytes()) {
            return Ok(Mailbox { local: local_part.to_string(), domain });
        }
        let mut q = String::with_capacity(local_part.len() + 2);
        q.push('"');
        for c in local_part.chars() {
            match c {
                '"' | '\\' => {
                    q.push('\\');
                    q.push(c)
                }
                ' '..='~' => q.push(c),
                c if !c.is_ascii() => q.push(c),
                _ => return Err(bad("control character in local part")),
            }
        }
        q.push('"');
        Ok(Mailbox { local: q, domain })
    }

    /// Parses `local@domain`.
    pub fn parse(s: &str) -> Result<Mailbox, InvalidInput> {
        let mut p = Parser::new(s.as_bytes());
        let m = p.mailbox().map_err(|reason| InvalidInput { what: "mailbox", reason })?;
        if !p.at_end() {
            return Err(InvalidInput { what: "mailbox", reason: "trailing characters" });
        }
        Ok(m)
    }

    /// The local part as written on the wire (quoted if it was quoted).
    pub fn local_wire(&self) -> &str {
        &self.local
    }

    /// The local part with quoting removed.
    pub fn local_part(&self) -> Cow<'_, str> {
        match self.local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            None => Cow::Borrowed(&self.local),
            Some(inner) => {
                let mut out = String::with_capacity(inner.len());
                let mut esc = false;
                for c in inner.chars() {
                    if esc || c != '\\' {
                        out.push(c);
                        esc = false;
                    } else {
                        esc = true;
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether the mailbox has non-ASCII characters (needs SMTPUTF8, RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || self.domain.is_utf8()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl FromStr for Mailbox {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mailbox::parse(s)
    }
}

/// How a source route was written: RFC 821's `<@A,@B:C@D>` or RFC 788's `<@A,@B,C@D>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteStyle {
    /// `@A,@B:user@host` (RFC 821, RFC 5321 obsolete syntax).
    #[default]
    Colon,
    /// `@A,@B,user@host` (RFC 788).
    Comma,
}

/// A path: an optional source route (hosts to pass through, RFC 788 3.6) and a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// The hosts of the source route, first hop first; usually empty.
    pub route: Vec<Domain>,
    /// The mailbox.
    pub mailbox: Mailbox,
    /// How the route is written back out.
    pub style: RouteStyle,
}

impl Path {
    /// A path with no source route.
    pub fn new(mailbox: Mailbox) -> Path {
        Path { route: Vec::new(), mailbox, style: RouteStyle::Colon }
    }

    /// Parses `<...>` (angle brackets required).
    pub fn parse(s: &str) -> Result<Path, InvalidInput> {
        let mut p = Parser::new(s.as_bytes());
        let path = p.path().map_err(|reason| InvalidInput { what: "path", reason })?;
        if !p.at_end() {
            return Err(InvalidInput { what: "path", reason: "trailing characters" });
        }
        Ok(path)
    }

    /// Whether any part needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        self.mailbox.is_utf8() || self.route.iter().any(Domain::is_utf8)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<")?;
        for (i, hop) in self.route.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "@{hop}")?;
        }
        if !self.route.is_empty() {
            f.write_str(match self.style {
                RouteStyle::Colon => ":",
                RouteStyle::Comma => ",",
            })?;
        }
        write!(f, "{}>", self.mailbox)
    }
}

/// The argument of MAIL FROM: a path, or `<>` for notifications (RFC 788 3.6, RFC 5321 4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the null reverse-path. Mail with it never causes a notification.
    Null,
    /// A path to return notifications to.
    Path(Path),
}

impl ReversePath {
    /// The mailbox, if not null.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Path(p) => Some(&p.mailbox),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Path(p) => p.fmt(f),
        }
    }
}

/// The argument of RCPT TO: a path, or the bare `<Postmaster>` (RFC 5321 4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain: this host's postmaster.
    Postmaster,
    /// A path to deliver to.
    Path(Path),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Path(p) => p.fmt(f),
        }
    }
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

fn is_dot_string(s: &[u8]) -> bool {
    !s.is_empty()
        && s.split(|&b| b == b'.').all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)))
        && std::str::from_utf8(s).is_ok()
}

/// A cursor over the bytes of a command argument.
pub(crate) struct Parser<'a> {
    s: &'a [u8],
    pub(crate) pos: usize,
}

type PResult<T> = Result<T, &'static str>;

impl<'a> Parser<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Parser { s, pos: 0 }
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.s[self.pos.min(self.s.len())..]
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    /// `Domain` or address literal. `lenient` also allows `_` in labels (for HELO names).
    pub(crate) fn domain(&mut self, lenient: bool) -> PResult<Domain> {
        if self.eat(b'[') {
            let body = self.take_while(|b| b != b']' && b != b'[' && b != b'\\' && b > 32 && b < 127);
            if !self.eat(b']') {
                return Err("unterminated address literal");
            }
            let body = std::str::from_utf8(body).map_err(|_| "bad address literal")?;
            if let Some(v6) = body.get(..5).filter(|t| t.eq_ignore_ascii_case("IPv6:")) {
                let _ = v6;
                return body[5..].parse().map(Domain::Ipv6).map_err(|_| "bad IPv6 address literal");
            }
            return body.parse().map(Domain::Ipv4).map_err(|_| "bad address literal");
        }
        let start = self.pos;
        loop {
            let label =
                self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80 || (lenient && b == b'_'));
            if label.is_empty() {
                return Err("bad domain");
            }
            if label[0] == b'-' || label[label.len() - 1] == b'-' {
                return Err("domain label starts or ends with a hyphen");
            }
            if label.len() > 63 && label.is_ascii() {
                return Err("domain label too long");
            }
            if !(self.peek() == Some(b'.') && self.s.get(self.pos + 1).is_some_and(|&b| b != b'.')) {
                break;
            }
            self.pos += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| "domain is not UTF-8")?;
        if name.len() > 255 {
            return Err("domain too long");
        }
        if !name.is_ascii() && !name.chars().all(u_label_char) {
            return Err("domain has characters no U-label may hold (controls, format or bidi marks)");
        }
        Ok(Domain::Name(name.to_string()))
    }

    /// `Local-part "@" Domain`
    pub(crate) fn mailbox(&mut self) -> PResult<Mailbox> {
        let start = self.pos;
        if self.eat(b'"') {
            loop {
                match self.peek() {
                    None => return Err("unterminated quoted string"),
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'\\') => {
                        self.pos += 1;
                        match self.peek() {
                            Some(32..=126) => self.pos += 1,
                            _ => return Err("bad quoted pair"),
                        }
                    }
                    Some(32 | 33 | 35..=91 | 93..=126 | 0x80..) => self.pos += 1,
                    Some(_) => return Err("bad character in quoted string"),
                }
            }
        } else {
            let dot = self.take_while(|b| is_atext(b) || b == b'.');
            if !is_dot_string(dot) {
                return Err("bad local part");
            }
        }
        let local = std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| "local part is not UTF-8")?.to_string();
        if !self.eat(b'@') {
            return Err("missing @domain");
        }
        let domain = self.domain(false)?;
        Ok(Mailbox { local, domain })
    }

    /// `"<" [ A-d-l ":" | A-d-l "," ] Mailbox ">"` (RFC 821/5321 and RFC 788 route forms).
    pub(crate) fn path(&mut self) -> PResult<Path> {
        if !self.eat(b'<') {
            return Err("path must be in angle brackets");
        }
        let mut route = Vec::new();
        let mut style = RouteStyle::Colon;
        while self.eat(b'@') {
            route.push(self.domain(false)?);
            if self.eat(b':') {
                style = RouteStyle::Colon;
                break;
            }
            if !self.eat(b',') {
                return Err("bad source route");
            }
            if self.peek() != Some(b'@') {
                style = RouteStyle::Comma;
                break;
            }
        }
        let mailbox = self.mailbox()?;
        if !self.eat(b'>') {
            return Err("missing >");
        }
        Ok(Path { route, mailbox, style })
    }

    pub(crate) fn reverse_path(&mut self) -> PResult<ReversePath> {
        if self.rest().starts_with(b"<>") {
            self.pos += 2;
            return Ok(ReversePath::Null);
        }
        self.path().map(ReversePath::Path)
    }

    pub(crate) fn forward_path(&mut self) -> PResult<ForwardPath> {
        let rest = self.rest();
        if rest.len() >= 12 && rest[..12].eq_ignore_ascii_case(b"<postmaster>") {
            self.pos += 12;
            return Ok(ForwardPath::Postmaster);
        }
        self.path().map(ForwardPath::Path)
    }
}

impl From<InvalidInput> for CommandError {
    fn from(e: InvalidInput) -> Self {
        CommandError::Syntax(e.reason)
    }
}

/// Whether `c` may appear in a domain name label (RFC 5890 U-labels are made of letters,
/// marks and digits; RFC 5892 disallows controls, spaces, and format characters such as the
/// bidirectional overrides and zero-width characters, which would let a name display as
/// another, e.g. in a `Received:` line). Without the full IDNA tables this refuses what can
/// never be valid; it does not prove a name is a registrable U-label.
pub(crate) fn u_label_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFF}' | '\u{E0000}'..='\u{E0FFF}')
        || ('\u{E000}'..='\u{F8FF}').contains(&c)
        || c >= '\u{F0000}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc788_comma_route_and_rfc821_colon_route() {
        let p = Path::parse("<@ONE,@TWO,JOE@THREE>").unwrap();
        assert_eq!(p.route, vec![Domain::Name("ONE".into()), Domain::Name("TWO".into())]);
        assert_eq!(p.mailbox.to_string(), "JOE@THREE");
        assert_eq!(p.style, RouteStyle::Comma);
        assert_eq!(p.to_string(), "<@ONE,@TWO,JOE@THREE>");
        let q = Path::parse("<@A,@B:C@D>").unwrap();
        assert_eq!(q.style, RouteStyle::Colon);
        assert_eq!(q.to_string(), "<@A,@B:C@D>");
        assert_eq!(q.route.len(), 2);
    }

    #[test]
    fn quoted_local_parts_and_literals() {
        let m = Mailbox::parse(r#""john \"jr\" doe"@[192.0.2.1]"#).unwrap();
        assert_eq!(m.local_part(), r#"john "jr" doe"#);
        assert_eq!(m.domain(), &Domain::Ipv4("192.0.2.1".parse().unwrap()));
        let m = Mailbox::parse("a@[IPv6:2001:db8::1]").unwrap();
        assert_eq!(m.to_string(), "a@[IPv6:2001:db8::1]");
        let m = Mailbox::new("b@other", Domain::parse("us.test").unwrap()).unwrap();
        assert_eq!(m.to_string(), r#""b@other"@us.test"#);
        assert_eq!(m.local_part(), "b@other");
        assert!(Mailbox::new("a\r\nb", Domain::parse("x").unwrap()).is_err());
    }

    #[test]
    fn utf8_mailboxes() {
        let m = Mailbox::parse("用户@例子.广告").unwrap();
        assert!(m.is_utf8());
        assert_eq!(m.local_part(), "用户");
    }

    #[test]
    fn rejects() {
        for bad in
            ["a..b@x", ".a@x", "a.@x", "a@", "a@-x", "a@x-", "a@x..y", "a@x.", "a b@x", "a@[1.2.3]", "a@[IPv6:zz]"]
        {
            assert!(Mailbox::parse(bad).is_err(), "{bad}");
        }
        assert!(Path::parse("a@b").is_err());
        assert!(Path::parse("<@a b@c>").is_err());
    }

    #[test]
    fn case_preserved_domain_compare() {
        let m = Mailbox::parse("MiXeD@Example.ORG").unwrap();
        assert_eq!(m.to_string(), "MiXeD@Example.ORG");
        assert!(m.domain().eq_ignore_case(&Domain::parse("example.org").unwrap()));
    }
}
