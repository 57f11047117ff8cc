//! The client's error type: each variant tells whether a retry could help.

use smtp_proto::client::CommandKind;
use smtp_proto::{InvalidInput, Reply};

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
    /// The TLS handshake failed (transient; an opportunistic sender may retry in plaintext).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
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
    /// The server broke the protocol (transient).
    #[error("protocol error: {0}")]
    Protocol(String),
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
}

impl Error {
    /// Whether trying again later could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Rejected { reply, .. } => !reply.is_permanent(),
            Error::TooLarge { .. } | Error::ExtensionMissing(_) | Error::Invalid(_) | Error::Refused(_) => false,
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

impl From<smtp_proto::client::ClientError> for Error {
    fn from(e: smtp_proto::client::ClientError) -> Self {
        Error::Protocol(e.to_string())
    }
}
