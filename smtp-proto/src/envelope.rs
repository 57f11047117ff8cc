//! The envelope of one message — who sends, to whom, with which ESMTP parameters — as both
//! sides see it: the receiver builds it from MAIL and RCPT, the sender writes it as MAIL and
//! RCPT. One type for both, so a relay can hand what it received to what it sends.

use crate::address::{ForwardPath, Mailbox, Path, ReversePath};
use crate::command::{MailParams, MailVerb, RcptParams};
use crate::error::InvalidInput;

/// One recipient: a forward-path and its RCPT parameters (NOTIFY, ORCPT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward-path as given.
    pub path: ForwardPath,
    /// Its ESMTP parameters.
    pub params: RcptParams,
}

impl Recipient {
    /// A recipient without parameters.
    pub fn new(path: ForwardPath) -> Self {
        Recipient { path, params: RcptParams::default() }
    }
}

/// The envelope of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The verb that starts it: MAIL, or RFC 788's SEND, SOML or SAML.
    pub verb: MailVerb,
    /// The reverse-path (`<>` for notifications).
    pub from: ReversePath,
    /// MAIL parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH).
    pub params: MailParams,
    /// The recipients, in order.
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// A MAIL envelope with reverse-path `from` and no recipients yet.
    pub fn new(from: ReversePath) -> Self {
        Envelope { verb: MailVerb::Mail, from, params: MailParams::default(), recipients: Vec::new() }
    }

    /// Parses the sender (`a@b`, `<a@b>`; empty or `<>` is the null reverse-path). An address
    /// with CR, LF, NUL or bad syntax is refused here, before anything reaches the wire.
    pub fn from_str_addr(from: &str) -> Result<Self, InvalidInput> {
        if from.trim().is_empty() || from.trim() == "<>" {
            return Ok(Self::new(ReversePath::Null));
        }
        Ok(Self::new(ReversePath::Path(Path::new(parse_addr(from)?))))
    }

    /// Adds a recipient mailbox.
    pub fn to(mut self, to: Mailbox) -> Self {
        self.recipients.push(Recipient::new(ForwardPath::Path(Path::new(to))));
        self
    }

    /// Parses and adds a recipient (`a@b` or `<a@b>`).
    pub fn to_str_addr(self, to: &str) -> Result<Self, InvalidInput> {
        Ok(self.to(parse_addr(to)?))
    }

    /// Adds a recipient with a full forward-path (source route, DSN parameters).
    pub fn to_path(mut self, path: ForwardPath, params: RcptParams) -> Self {
        self.recipients.push(Recipient { path, params });
        self
    }

    /// Sets the verb (RFC 788 SEND, SOML, SAML).
    pub fn verb(mut self, verb: MailVerb) -> Self {
        self.verb = verb;
        self
    }

    /// Sets the MAIL parameters (DSN RET/ENVID, BODY, ...).
    pub fn params(mut self, params: MailParams) -> Self {
        self.params = params;
        self
    }
}

fn parse_addr(s: &str) -> Result<Mailbox, InvalidInput> {
    let s = s.trim();
    let inner = s.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(s);
    Mailbox::parse(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_from_text() {
        let e = Envelope::from_str_addr("<a@b.test>").unwrap().to_str_addr("c@d.test").unwrap();
        assert_eq!(e.from.to_string(), "<a@b.test>");
        assert_eq!(e.recipients.iter().map(|r| r.path.to_string()).collect::<Vec<_>>(), ["<c@d.test>"]);
        assert_eq!(Envelope::from_str_addr("<>").unwrap().from, ReversePath::Null);
        assert!(Envelope::from_str_addr("a@b\r\nRCPT TO:<x@y>").is_err());
        assert!(Envelope::from_str_addr("a@b").unwrap().to_str_addr("c@d>\r\nDATA").is_err());
        assert!(Envelope::new(ReversePath::Null).to_str_addr("x@y\0").is_err());
    }
}
