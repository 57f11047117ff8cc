//! Error types, split by blame: a peer's malformed command ([`CommandError`]), a peer's
//! malformed reply ([`ReplyError`]), or a caller building an invalid value ([`InvalidInput`]).

use crate::reply::{codes, Reply};

/// A command line the peer sent could not be accepted. Each variant maps to the reply the server
/// sends for it ([`CommandError::reply`]); none ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The verb is unknown: `500 5.5.1`.
    #[error("unrecognized command")]
    Unrecognized,
    /// The verb is known but its arguments are malformed: `501 5.5.4`.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// A known parameter with a value this implementation does not support: `504 5.5.4`.
    #[error("parameter not implemented: {0}")]
    ParamNotImplemented(String),
    /// A MAIL/RCPT parameter that is unknown or not enabled here: `555 5.5.4`.
    #[error("parameter not recognized: {0}")]
    ParamUnrecognized(String),
    /// The command line is longer than the configured limit: `500 5.5.2`.
    #[error("line too long")]
    LineTooLong,
    /// The HELO/EHLO argument is not a domain or address literal (for example a name with
    /// control or bidirectional-override characters): `501 5.5.2`.
    #[error("bad HELO/EHLO name: {0}")]
    BadHelloName(&'static str),
}

impl CommandError {
    /// The SMTP reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => codes::unrecognized(),
            CommandError::Syntax(what) => {
                let r = codes::syntax();
                Reply::new(r.code(), r.enhanced(), &format!("Syntax error: {what}"))
            }
            CommandError::ParamNotImplemented(p) => {
                let r = codes::param_not_implemented();
                Reply::new(r.code(), r.enhanced(), &format!("Parameter not implemented: {p}"))
            }
            CommandError::ParamUnrecognized(p) => {
                let r = codes::params_unrecognized();
                Reply::new(r.code(), r.enhanced(), &format!("Parameter not recognized: {p}"))
            }
            CommandError::LineTooLong => codes::line_too_long(),
            CommandError::BadHelloName(what) => {
                Reply::new(501, Some(crate::reply::EnhancedCode::new(5, 5, 2)), &format!("Bad HELO/EHLO name: {what}"))
            }
        }
    }
}

/// A reply the peer sent could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A reply line does not start with a three-digit code and a separator.
    #[error("malformed reply line")]
    Syntax,
    /// A line of a multi-line reply carries a different code than the first.
    #[error("reply code changed inside a multi-line reply")]
    CodeMismatch,
    /// A reply line is longer than the configured limit.
    #[error("reply line too long")]
    LineTooLong,
    /// A multi-line reply has more lines than the configured limit.
    #[error("too many lines in one reply")]
    TooManyLines,
}

/// A value built by the caller is not valid on the wire (for example an address with CR or LF).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidInput {
    /// What was being built ("mailbox", "domain", ...).
    pub what: &'static str,
    /// Why it was refused.
    pub reason: &'static str,
}
