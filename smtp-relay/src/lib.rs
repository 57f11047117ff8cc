//! `smtp-relay`: where Tern's policy lives and where mail goes.
//!
//! It supplies the two tower services `smtp-server` asks — [`RelayPolicy`] (who may relay, who
//! exists, terminals for SEND/SOML/SAML, VRFY/EXPN, AUTH) and [`RelayMail`] (a durable enqueue
//! before `250`) — and the [`Scheduler`] that delivers queued mail: local Maildir with a
//! `Return-Path:` line, live terminals (RFC 788), or the next hop over SMTP through
//! `smtp-client`, or a mail store over LMTP, with retries, expiry and delivery status
//! notifications (RFC 3464) sent with a null reverse-path.
//!
//! It is not a protocol implementation (that is `smtp-proto`) and does no socket handling of
//! its own beyond the local control socket.
//!
//! # One message, end to end
//! `smtp-server` calls [`RelayMail`] when the data starts. The relay routes each recipient
//! once ([`route::Route`]) and streams the body, chunk by chunk, into the queue
//! ([`Queue::create`]; `queue/fs.rs` writes blocks off the async threads, [`PgQueue`] writes
//! chunks into PostgreSQL for a queue shared by several nodes, with leases) or, for a message
//! for one local mailbox, straight into that Maildir. Only when the message is durable does the
//! `250` go out; the scheduler then gets it in hand ([`Accepted`]: envelope, routes, body
//! handle), with no re-read. [`schedule`] is the queue loop (a due-time index, back-off,
//! expiry, notifications); [`deliver::local`] and [`deliver::remote`] deliver. Every outcome
//! carries the [`smtp_proto::Reply`] that decided it, stored with smtp-proto's serialiser and
//! read by [`dsn`] as it is. No layer holds a whole message: memory per transfer is a few
//! hundred kilobytes whatever the message size.
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
//! - Final delivery on receipt ([`RelayConfig::deliver_on_receipt`], on by default): a message
//!   for one local mailbox is in the mailbox, durably, before the `250`, which is when RFC 5321
//!   6.1 hands responsibility over; it never sits in the queue. A mailbox that cannot be
//!   written answers `451`/`452` and the client keeps the message.

pub mod check;
mod commit;
pub mod config;
pub mod control;
pub mod deliver;
pub mod directory;
pub mod dns;
pub mod dsn;
pub mod https;
pub mod msgauth;
pub mod mta_sts;
pub mod observe;
pub mod password;
pub mod queue;
pub mod relay;
pub mod route;
pub mod schedule;
pub mod tls_rpt;

pub use directory::Directory;
pub use queue::{
    FsQueue, Leases, MessageWriter, PgOptions, PgQueue, Queue, QueueError, QueueId, QueuedMessage, ScanEntry, Stored,
    StoredBody,
};
pub use relay::{Relay, RelayConfig, RelayMail, RelayPolicy};
pub use route::{Cidr, SourceRoutes};
pub use schedule::{Accepted, Handoff, Scheduler, SchedulerHandle};
