//! `smtp-server`: an async SMTP receiver on tokio and rustls, driving `smtp-proto`'s
//! [`ServerSession`](smtp_proto::server::ServerSession) per connection.
//!
//! It accepts connections (plain with STARTTLS, RFC 3207, and implicit TLS, RFC 8314), applies
//! timeouts (RFC 5321 4.5.3.2), connection limits and graceful shutdown, stamps the `Received:`
//! line, and hands every decision to tower services the embedder supplies: a policy service
//! (MAIL, RCPT, VRFY, EXPN, AUTH) and a mail service called with each [`Transaction`] when its
//! data starts, the body following as a bounded stream ([`Body`]). Any tower
//! middleware (timeout, concurrency limit, load shedding) composes around them; a failing
//! service becomes `451 4.3.0`, never a dropped connection.
//!
//! [`Server`] runs TCP listeners; [`serve_connection`] runs the same per-connection driver over
//! any [`Io`] stream (a Unix socket, an in-memory duplex in tests, your own accept loop).
//!
//! It is not a queue or a relay: what happens to a message is the mail service's business (see
//! `smtp-relay`).
//!
//! # TLS
//! TLS 1.3 is preferred; TLS 1.2 is allowed only with ECDHE and AEAD suites; nothing older, no
//! CBC, no RC4. Repeated clients resume with session tickets. 0-RTT early data stays off: SMTP
//! commands pipelined into early data could be replayed by an attacker.
//!
//! # Example
//! ```no_run
//! use smtp_server::{AcceptAll, Server, Transaction};
//! use smtp_proto::{codes, Reply};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mail = tower::service_fn(|mut tx: Transaction| async move {
//!     // Small messages can be collected; a relay streams `tx.body.chunk()` to disk instead.
//!     let data = tx.body.collect(1 << 20).await?;
//!     println!("{} bytes from {}", data.len(), tx.envelope.from);
//!     Ok::<Reply, smtp_server::BodyError>(codes::message_accepted())
//! });
//! let server = Server::builder("mx.example.org")
//!     .listen("127.0.0.1:2525".parse()?)
//!     .bind(AcceptAll, mail)
//!     .await?;
//! server.run().await;
//! # Ok(()) }
//! ```

pub mod body;
mod conn;
pub mod error;
pub mod policy;
mod server;
pub mod tls;
pub mod transaction;

pub use body::{Body, BodyError};
pub use conn::service_error_reply;
pub use conn::Io;
pub use error::{BoxError, Error};
pub use policy::{AcceptAll, Decision, PolicyKind, PolicyRequest};
pub use server::{
    serve_connection, Builder, ConnectionInfo, MailService, PolicyService, Server, ServerOptions, ShutdownHandle,
};
pub use tls::TlsInfo;
pub use transaction::{SessionInfo, Transaction};
