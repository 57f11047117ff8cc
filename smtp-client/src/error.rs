//! The client's error type: each variant tells whether a retry could help.

use std::path::PathBuf;

use smtp_proto::client::{ClientError, CommandKind};
use smtp_proto::{InvalidInput, Reply, ReplyError};

/// Which step timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// Waiting for the 220 greeting.
    Greeting,
    /// TLS handshake.
    Tls,
    /// Waiting for a reply to a command.
    Command,
    /// Sending message data or waiting for its final reply.
    Data,
}

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made (transient).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host name did not resolve (transient).
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed, e.g. the certificate was refused (transient; an opportunistic
    /// sender may retry in plaintext).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The host name cannot be used to check a certificate (permanent).
    #[error("{0:?} cannot be a TLS server name")]
    ServerName(String),
    /// A CA file could not be used (permanent: a configuration error).
    #[error("{}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS configuration (permanent).
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// TLS is required but the server does not offer STARTTLS (transient: the server may be
    /// fixed; never fall back to plaintext).
    #[error("TLS required but the server does not offer STARTTLS")]
    TlsUnavailable,
    /// A step took too long (transient).
    #[error("timeout during {0:?}")]
    Timeout(Phase),
    /// The server refused a command; transient or permanent by its code.
    #[error("{command:?} refused: {reply}")]
    Rejected {
        /// The command refused.
        command: CommandKind,
        /// The server's reply.
        reply: Reply,
    },
    /// The server sent something that is not an SMTP reply, or too long a one (transient: the
    /// blame is the server's, and another attempt may reach a better one).
    #[error("malformed reply: {0}")]
    Malformed(#[from] ReplyError),
    /// The server sent a reply to no command (transient).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(Reply),
    /// The connection failed (transient).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The message is larger than the server's SIZE (permanent).
    #[error("message of {size} octets exceeds the server's limit of {max}")]
    TooLarge {
        /// The message size.
        size: u64,
        /// The server's limit.
        max: u64,
    },
    /// The message needs an extension the server lacks, e.g. SMTPUTF8 (permanent).
    #[error("the server does not offer {0}, which this message needs")]
    ExtensionMissing(&'static str),
    /// An address or header holds forbidden characters (permanent).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The client was asked for something unsafe or impossible, e.g. AUTH over plaintext.
    #[error("{0}")]
    Refused(&'static str),
    /// The caller used the connection out of order, e.g. a second envelope before the first
    /// one's replies (permanent: the same call would fail again; it is a bug to fix, not a
    /// failure to retry).
    #[error("misuse: {0}")]
    Misuse(&'static str),
}

impl Error {
    /// Whether trying again later could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Rejected { reply, .. } => !reply.is_permanent(),
            Error::TooLarge { .. }
            | Error::ExtensionMissing(_)
            | Error::Invalid(_)
            | Error::Refused(_)
            | Error::Misuse(_)
            | Error::ServerName(_)
            | Error::CaFile { .. }
            | Error::TlsConfig(_) => false,
            _ => true,
        }
    }

    /// Whether the failure is final.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The server's reply, when the error is a refusal.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Error::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// The server's faults stay transient; the caller's misuse is permanent.
impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Malformed(e) => Error::Malformed(e),
            ClientError::Unexpected(r) => Error::UnexpectedReply(r),
            ClientError::Misuse(m) => Error::Misuse(m),
            ClientError::ExtensionMissing(x) => Error::ExtensionMissing(x),
            ClientError::TooLarge { size, max } => Error::TooLarge { size, max },
            // ClientError is non-exhaustive: anything new is treated as the server's fault.
            other => Error::Io(std::io::Error::other(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_decides_retry() {
        let transient = |e: ClientError| Error::from(e).is_transient();
        assert!(transient(ClientError::Malformed(ReplyError::LineTooLong)), "the server's fault");
        assert!(transient(ClientError::Unexpected(Reply::new(250, None, "?"))), "the server's fault");
        assert!(!transient(ClientError::Misuse("no recipients")), "the caller's bug is not retried");
        let refused = |code| Error::Rejected { command: CommandKind::Rcpt, reply: Reply::new(code, None, "x") };
        assert!(refused(451).is_transient() && refused(550).is_permanent());
        assert!(Error::Handshake(std::io::Error::other("bad certificate")).is_transient());
        assert!(Error::ServerName("a b".into()).is_permanent());
        assert!(Error::Timeout(Phase::Data).is_transient());
    }
}
