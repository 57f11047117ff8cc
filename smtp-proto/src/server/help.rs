//! HELP texts (RFC 788 4.1.1: "HELP ... the receiver sends helpful information").

use crate::reply::{EnhancedCode, Reply};

const TOPICS: &[(&str, &str)] = &[
    ("HELO", "HELO <domain>: identify yourself (RFC 788)"),
    ("EHLO", "EHLO <domain>: identify yourself and ask for extensions (RFC 5321)"),
    ("MAIL", "MAIL FROM:<reverse-path> [params]: start a transaction delivering to mailboxes"),
    ("SEND", "SEND FROM:<reverse-path>: start a transaction delivering to terminals only"),
    ("SOML", "SOML FROM:<reverse-path>: deliver to the terminal if active, else the mailbox"),
    ("SAML", "SAML FROM:<reverse-path>: deliver to the terminal and the mailbox"),
    ("RCPT", "RCPT TO:<forward-path> [params]: add a recipient"),
    ("DATA", "DATA: send the message, end with <CRLF>.<CRLF>"),
    ("BDAT", "BDAT <size> [LAST]: send a chunk of the message (RFC 3030)"),
    ("RSET", "RSET: abort the current transaction"),
    ("VRFY", "VRFY <string>: verify a user name"),
    ("EXPN", "EXPN <string>: expand a mailing list"),
    ("HELP", "HELP [command]: this help"),
    ("NOOP", "NOOP: do nothing"),
    ("QUIT", "QUIT: close the connection"),
    ("STARTTLS", "STARTTLS: begin TLS negotiation (RFC 3207)"),
    ("AUTH", "AUTH <mechanism> [initial-response]: authenticate (RFC 4954)"),
];

/// The reply to `HELP [topic]`.
pub(crate) fn reply(topic: Option<&str>) -> Reply {
    let code = Some(EnhancedCode::new(2, 0, 0));
    match topic {
        None => Reply::multiline(
            214,
            code,
            [
                "Commands:".to_string(),
                TOPICS.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(" "),
                "Use HELP <command> for details".to_string(),
            ],
        ),
        Some(t) => match TOPICS.iter().find(|(v, _)| v.eq_ignore_ascii_case(t)) {
            Some((_, text)) => Reply::new(214, code, text),
            None => Reply::new(504, Some(EnhancedCode::new(5, 5, 4)), "HELP topic unknown"),
        },
    }
}
