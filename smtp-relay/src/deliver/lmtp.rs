//! Final delivery of local mailboxes over LMTP (RFC 2033) to a mail store (Dovecot, Cyrus):
//! one transaction per message for all its local recipients, each recipient's outcome from its
//! own reply after the data. The store is reached over TCP or a Unix socket.

use smtp_client::{ClientOptions, SmtpClient, TlsMode};
use smtp_proto::{Domain, MailVerb};

use super::{client_body, envelope_for, local_reply, Outcome};
use crate::queue::{QueuedMessage, StoredBody};

/// Where the mail store listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    /// A host and port.
    Tcp(String, u16),
    /// A Unix-domain socket (Dovecot's `lmtp` socket, say).
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpTarget::Tcp(host, port) => write!(f, "{host}:{port}"),
            LmtpTarget::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The LMTP client for one mail store.
#[derive(Clone)]
pub struct LmtpDelivery {
    client: SmtpClient,
    target: LmtpTarget,
}

impl LmtpDelivery {
    /// Delivers to the LMTP server at `target`, saying LHLO `hostname`.
    pub fn new(hostname: &str, target: LmtpTarget) -> Result<LmtpDelivery, smtp_client::Error> {
        let name = Domain::parse(hostname).map_err(|_| smtp_client::Error::ServerName(hostname.to_string()))?;
        let mut o = ClientOptions::new(name);
        o.tls = TlsMode::None;
        o.lmtp = true;
        Ok(LmtpDelivery { client: SmtpClient::new(o)?, target })
    }

    /// Delivers `msg` to its recipients at `idx` (local mailboxes): each one's outcome.
    pub async fn deliver(&self, msg: &QueuedMessage, body: &StoredBody, idx: &[usize]) -> Vec<(usize, Outcome)> {
        let all = |o: Outcome| idx.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
        let envelope = envelope_for(msg, idx, MailVerb::Mail);
        let data = match client_body(body).await {
            Ok(d) => d,
            Err(e) => return all(Outcome::Retry(local_reply(451, (4, 3, 0), &format!("queue read: {e}")), None)),
        };
        let sent = async {
            let mut conn = match &self.target {
                LmtpTarget::Tcp(host, port) => self.client.connect(host, *port).await?,
                LmtpTarget::Unix(path) => self.client.connect_unix(path).await?,
            };
            let out = conn.send(&envelope, data).await?;
            let _ = conn.quit().await;
            Ok::<_, smtp_client::Error>(out)
        };
        let out = match sent.await {
            Ok(out) => out,
            Err(e) if e.is_permanent() => {
                let r = e.reply().cloned().unwrap_or_else(|| local_reply(550, (5, 3, 0), &format!("LMTP: {e}")));
                return all(Outcome::Failed(r, None));
            }
            Err(e) => {
                tracing::info!(id = %msg.id, store = %self.target, error = %e, "LMTP delivery failed; will retry");
                let r = e.reply().cloned().unwrap_or_else(|| local_reply(451, (4, 4, 1), &format!("LMTP: {e}")));
                return all(Outcome::Retry(r, None));
            }
        };
        idx.iter()
            .zip(out.recipients.iter().zip(out.data.iter()))
            .map(|(&i, ((_, rcpt), data))| {
                let o = match (rcpt, data) {
                    (r, _) if r.is_permanent() => Outcome::Failed(r.clone(), None),
                    (r, _) if !r.is_positive() => Outcome::Retry(r.clone(), None),
                    (_, Some(d)) if d.is_positive() => Outcome::Delivered(None),
                    (_, Some(d)) if d.is_permanent() => Outcome::Failed(d.clone(), None),
                    (_, Some(d)) => Outcome::Retry(d.clone(), None),
                    (_, None) => Outcome::Retry(local_reply(451, (4, 3, 0), "LMTP: message data not accepted"), None),
                };
                tracing::info!(id = %msg.id, to = %msg.recipients[i].path, store = %self.target, outcome = ?o, "LMTP");
                (i, o)
            })
            .collect()
    }
}
