//! Service extensions: what an EHLO reply advertises (RFC 5321 4.1.1.1) and how to build one.

use crate::reply::Reply;

/// The limits of RFC 9422 (LIMITS extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// `RCPTMAX`: most recipients per transaction.
    pub rcpt_max: Option<u32>,
    /// `MAILMAX`: most transactions per session.
    pub mail_max: Option<u32>,
}

/// The extensions a server offers, parsed from or written into an EHLO reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `SIZE [n]` (RFC 1870): `Some(0)` when offered without a fixed limit.
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `CHUNKING` (RFC 3030).
    pub chunking: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `REQUIRETLS` (RFC 8689), offered only under TLS.
    pub requiretls: bool,
    /// `AUTH` mechanisms (RFC 4954), upper case.
    pub auth: Vec<String>,
    /// `LIMITS` (RFC 9422).
    pub limits: Option<Limits>,
    /// `SEND`, `SOML`, `SAML` (RFC 788 commands, RFC 5321 appendix F.6).
    pub send: bool,
    /// `SOML`.
    pub soml: bool,
    /// `SAML`.
    pub saml: bool,
    /// `VRFY` is listed (informational).
    pub vrfy: bool,
    /// `EXPN` is listed (informational).
    pub expn: bool,
    /// `HELP` is listed (informational).
    pub help: bool,
    /// Extension lines not understood here, as sent.
    pub other: Vec<String>,
}

impl Capabilities {
    /// Reads the extension lines of an EHLO reply (every line after the first).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                "CHUNKING" => c.chunking = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "REQUIRETLS" => c.requiretls = true,
                "AUTH" => c.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                "SEND" => c.send = true,
                "SOML" => c.soml = true,
                "SAML" => c.saml = true,
                "VRFY" => c.vrfy = true,
                "EXPN" => c.expn = true,
                "HELP" => c.help = true,
                "LIMITS" => {
                    let mut l = Limits::default();
                    for w in words {
                        if let Some((k, v)) = w.split_once('=') {
                            match k.to_ascii_uppercase().as_str() {
                                "RCPTMAX" => l.rcpt_max = v.parse().ok(),
                                "MAILMAX" => l.mail_max = v.parse().ok(),
                                _ => {}
                            }
                        }
                    }
                    c.limits = Some(l);
                }
                _ => c.other.push(line.clone()),
            }
        }
        c
    }

    /// The extension lines to advertise, in a stable order.
    pub fn to_lines(&self) -> Vec<String> {
        let flags = |pairs: &[(bool, &str)]| -> Vec<String> {
            pairs.iter().filter(|(on, _)| *on).map(|(_, s)| s.to_string()).collect()
        };
        let mut v = flags(&[(self.pipelining, "PIPELINING")]);
        if let Some(n) = self.size {
            v.push(if n == 0 { "SIZE".into() } else { format!("SIZE {n}") });
        }
        v.extend(flags(&[
            (self.eight_bit_mime, "8BITMIME"),
            (self.smtputf8, "SMTPUTF8"),
            (self.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (self.chunking, "CHUNKING"),
            (self.dsn, "DSN"),
            (self.starttls, "STARTTLS"),
            (self.requiretls, "REQUIRETLS"),
        ]));
        if !self.auth.is_empty() {
            v.push(format!("AUTH {}", self.auth.join(" ")));
        }
        if let Some(l) = self.limits {
            let mut s = String::from("LIMITS");
            if let Some(r) = l.rcpt_max {
                s.push_str(&format!(" RCPTMAX={r}"));
            }
            if let Some(m) = l.mail_max {
                s.push_str(&format!(" MAILMAX={m}"));
            }
            v.push(s);
        }
        v.extend(flags(&[
            (self.send, "SEND"),
            (self.soml, "SOML"),
            (self.saml, "SAML"),
            (self.vrfy, "VRFY"),
            (self.expn, "EXPN"),
            (self.help, "HELP"),
        ]));
        v.extend(self.other.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_reply() {
        let caps = Capabilities {
            pipelining: true,
            size: Some(1000),
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            chunking: true,
            dsn: true,
            starttls: true,
            auth: vec!["PLAIN".into(), "LOGIN".into()],
            limits: Some(Limits { rcpt_max: Some(100), mail_max: Some(50) }),
            send: true,
            soml: true,
            saml: true,
            help: true,
            ..Default::default()
        };
        let mut lines = vec!["mx.test".to_string()];
        lines.extend(caps.to_lines());
        let reply = Reply::multiline(250, None, lines);
        assert_eq!(Capabilities::from_ehlo(&reply), caps);
    }
}
