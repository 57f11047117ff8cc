//! Delivery: [`local`] (Maildir, terminals for SEND/SOML/SAML) and [`remote`] (the next hop over
//! SMTP). Each attempt ends in an [`Outcome`] per recipient, carrying the reply that decided it.

pub mod local;
pub mod maildir;
pub mod remote;
pub mod terminal;

use smtp_proto::{EnhancedCode, Reply};

use crate::queue::RemoteHost;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or accepted by the next hop, named here).
    Delivered(Option<RemoteHost>),
    /// Failed for good.
    Failed(Reply, Option<RemoteHost>),
    /// Failed for now; retried later.
    Retry(Reply, Option<RemoteHost>),
}

/// A reply made here (for local failures).
pub(crate) fn local_reply(code: u16, (c, s, d): (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(c, s, d)), text)
}
