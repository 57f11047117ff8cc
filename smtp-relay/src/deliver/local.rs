//! Local delivery: a user's Maildir, or a live terminal for RFC 788's SEND, SOML and SAML.

use std::sync::Arc;

use smtp_proto::MailVerb;

use super::maildir::{Maildir, MaildirWriter};
use super::terminal::Terminals;
use super::{local_reply, Outcome};
use crate::commit::GroupCommit;
use crate::queue::{QueuedMessage, StoredBody};

/// Largest message shown on a terminal (SEND/SOML/SAML are for short notes).
const MAX_TERMINAL_MESSAGE: usize = 1024 * 1024;

/// Delivers to local users.
pub struct LocalDelivery {
    maildir: Maildir,
    terminals: Arc<Terminals>,
    commit: GroupCommit,
}

impl LocalDelivery {
    /// Maildirs under `maildir`, terminals from `terminals`; starts the committer thread that
    /// Maildir writes share.
    pub fn new(maildir: Maildir, terminals: Arc<Terminals>) -> std::io::Result<LocalDelivery> {
        Ok(LocalDelivery { maildir, terminals, commit: GroupCommit::start("tern-maildir-commit")? })
    }

    /// Starts a final delivery to `user` while the data arrives (before the `250`).
    pub(crate) async fn begin(&self, user: &str, key: &str, msg: &QueuedMessage) -> std::io::Result<MaildirWriter> {
        self.maildir.begin(user, key, msg.arrival, &msg.from).await
    }

    /// Makes a delivery started with [`LocalDelivery::begin`] durable.
    pub(crate) async fn finish(&self, w: MaildirWriter) -> std::io::Result<std::path::PathBuf> {
        w.commit(&self.commit).await
    }

    /// Delivers recipient `i` of `msg` to `user`. `thorough`: an earlier attempt (or an earlier
    /// run) may have written the file already, so look for it everywhere first.
    pub async fn deliver(
        &self,
        msg: &QueuedMessage,
        i: usize,
        user: &str,
        body: &StoredBody,
        thorough: bool,
    ) -> Outcome {
        let terminal = || async {
            match body.head(MAX_TERMINAL_MESSAGE).await {
                Ok(b) => self.terminals.deliver(user, b).await,
                Err(_) => false,
            }
        };
        let to_maildir = || async {
            let key = format!("{}R{i}", msg.id);
            match self.maildir.deliver_grouped(&self.commit, user, &key, msg.arrival, &msg.from, body, thorough).await {
                Ok(_) => Outcome::Delivered(None),
                Err(e) => {
                    tracing::warn!(id = %msg.id, %user, error = %e, "local delivery failed");
                    let (code, ec) =
                        if crate::queue::is_storage_full(&e) { (452, (4, 3, 1)) } else { (451, (4, 3, 0)) };
                    Outcome::Retry(local_reply(code, ec, &format!("Local delivery failed: {e}")), None)
                }
            }
        };
        match msg.verb {
            MailVerb::Mail => to_maildir().await,
            // RFC 788 3.4: SEND only to a terminal; SOML terminal or else mailbox; SAML both.
            MailVerb::Send => match terminal().await {
                true => Outcome::Delivered(None),
                false => Outcome::Failed(local_reply(450, (4, 2, 1), "User not active at a terminal"), None),
            },
            MailVerb::Soml => match terminal().await {
                true => Outcome::Delivered(None),
                false => to_maildir().await,
            },
            MailVerb::Saml => {
                let _ = terminal().await;
                to_maildir().await
            }
        }
    }
}
