//! `smtp-proto`: the sans-io core of Tern's SMTP — RFC 788 as first specified, brought up to
//! RFC 5321 and its ESMTP extensions.
//!
//! This crate parses and writes SMTP commands and replies, does dot transparency, and runs the
//! receiver's ([`server::ServerSession`]) and sender's ([`client::ClientSession`]) state
//! machines. It does no I/O, has no runtime and reads no clock: a driver feeds it the bytes it
//! read, writes the bytes it asks to write, and applies the timeouts it names. `smtp-server` and
//! `smtp-client` are such drivers over tokio.
//!
//! The `rustls` feature adds the one piece both drivers need from their TLS library: the
//! crypto provider restricted to the cipher policy and the facts of a connection
//! ([`tls_policy::TlsInfo`]). rustls is itself sans-io, so the crate still does no I/O.
//!
//! It is not a mail parser (RFC 5322 headers and MIME are out of scope) and it holds no policy:
//! who may relay and who exists are the driver's decisions, asked through decision events.
//!
//! # The contract
//! - Input: `handle_input(&[u8])` with whatever was read, however it was split. Results never
//!   depend on the split.
//! - Output: `poll_output()` gives bytes to write; `poll_event()` gives events. Incomplete input
//!   is a state, never an error.
//! - A peer's mistake becomes an SMTP reply with an enhanced status code; only policy (too many
//!   errors) or QUIT closes a session. No input makes this crate panic, and every buffer it keeps
//!   is bounded.
//!
//! # RFC 788 and RFC 5321
//! Where they differ, this crate follows RFC 788 when that is safe and RFC 5321 otherwise:
//! SEND, SOML and SAML are accepted and advertised (RFC 5321 appendix F.6); RFC 788's
//! source-route spelling `<@A,@B,C@D>` is parsed beside RFC 821's `<@A,@B:C@D>` and written back
//! as received; the null reverse-path `<>` is supported for notifications. Bare LF line ends,
//! tolerated by some RFC 788-era hosts, are refused in DATA by default (SMTP smuggling).

pub mod address;
pub mod auth;
pub mod client;
pub mod command;
pub mod data;
pub mod date;
pub mod envelope;
pub mod error;
pub mod extension;
pub mod reply;
pub mod server;
pub mod tls_policy;

pub use address::{Domain, ForwardPath, Mailbox, Path, ReversePath, RouteStyle};
pub use command::{Command, MailParams, MailVerb, RcptParams};
pub use data::{DotStuffer, DotUnstuffer, LineEndingPolicy};
pub use envelope::{Envelope, Recipient};
pub use error::{CommandError, InvalidInput, ReplyError};
pub use extension::Capabilities;
pub use reply::{codes, escape_controls, EnhancedCode, Reply, ReplyParser};
