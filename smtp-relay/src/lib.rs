//! `smtp-relay`: where Tern's policy lives and where mail goes.
//!
//! It supplies the two tower services `smtp-server` asks — [`RelayPolicy`] (who may relay, who
//! exists, terminals for SEND/SOML/SAML, VRFY/EXPN, AUTH) and [`RelayMail`] (a durable enqueue
//! before `250`) — and the [`Scheduler`] that delivers queued mail: local Maildir with a
//! `Return-Path:` line, live terminals (RFC 788), or the next hop over SMTP through
//! `smtp-client`, with retries, expiry and delivery status notifications (RFC 3464) sent with a
//! null reverse-path.
//!
//! It is not a protocol implementation (that is `smtp-proto`) and does no socket handling of
//! its own beyond the local control socket.
//!
//! # RFC 788 and RFC 5321
//! - Source routes: [`SourceRoutes::Strip`] (RFC 5321 3.6.1) is the default, because honouring
//!   routes lets anyone steer mail through this host. [`SourceRoutes::Honor`] implements RFC
//!   788 3.6: the relay removes itself from the forward-path and adds itself to the
//!   reverse-path. Relay permission is judged on the final destination in both modes.
//! - Return-Path: added at final delivery as the first line of the stored message (RFC 5321
//!   4.4 puts it at the beginning of the data, above the `Received:` lines).
//! - Partial success (RFC 788 DATA): recipients that fail after the `250` are notified about,
//!   the others are delivered.

mod commit;
pub mod control;
pub mod deliver;
pub mod directory;
pub mod dns;
pub mod dsn;
pub mod queue;
pub mod relay;
pub mod route;
pub mod schedule;

pub use directory::Directory;
pub use queue::{FsQueue, MessageWriter, Queue, QueueError, QueueId, QueuedMessage, ScanEntry, Stored, StoredBody};
pub use relay::{Relay, RelayConfig, RelayMail, RelayPolicy};
pub use route::{Cidr, SourceRoutes};
pub use schedule::{Accepted, Handoff, Scheduler, SchedulerHandle};
