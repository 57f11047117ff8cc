//! Delivery: [`local`] (Maildir, terminals for SEND/SOML/SAML), [`lmtp`] (local mailboxes in a
//! mail store) and [`remote`] (the next hop over SMTP). Each attempt ends in an [`Outcome`] per recipient, carrying the reply that decided it.

pub mod lmtp;
pub mod local;
pub mod maildir;
pub mod remote;
pub mod terminal;

use smtp_proto::{EnhancedCode, Reply};

use crate::queue::RemoteHost;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered here (the host is `None`), or accepted by the next hop named here.
    Delivered(Option<RemoteHost>),
    /// Accepted by a next hop that does not take NOTIFY (RFC 3461 has no DSN extension
    /// there): a success notice, if asked for, says `relayed` (RFC 3464 2.3.3). A next hop
    /// with DSN support gets NOTIFY passed on and sends its own notices: that is `Delivered`.
    Relayed(RemoteHost),
    /// Failed for good.
    Failed(Reply, Option<RemoteHost>),
    /// Failed for now; retried later.
    Retry(Reply, Option<RemoteHost>),
}

/// A reply made here (for local failures).
pub(crate) fn local_reply(code: u16, (c, s, d): (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(c, s, d)), text)
}

/// The envelope of `msg` for its recipients at `idx`, with `verb`.
pub(crate) fn envelope_for(
    msg: &crate::queue::QueuedMessage,
    idx: &[usize],
    verb: smtp_proto::MailVerb,
) -> smtp_proto::Envelope {
    smtp_proto::Envelope {
        verb,
        from: msg.from.clone(),
        params: msg.params.clone(),
        recipients: idx
            .iter()
            .map(|&i| smtp_proto::Recipient {
                path: msg.recipients[i].path.clone(),
                params: msg.recipients[i].params.clone(),
            })
            .collect(),
    }
}

/// A stored message's data as a client body: in memory, or read from its file as it is sent.
pub(crate) async fn client_body(body: &crate::queue::StoredBody) -> std::io::Result<smtp_client::Body> {
    Ok(match body {
        crate::queue::StoredBody::Memory(b) => smtp_client::Body::Bytes(b.clone()),
        crate::queue::StoredBody::File { .. } | crate::queue::StoredBody::Chunks { .. } => {
            smtp_client::Body::Reader(body.reader().await?)
        }
    })
}
