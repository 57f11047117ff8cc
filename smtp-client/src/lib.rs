//! `smtp-client`: an async SMTP sender on tokio and rustls, driving `smtp-proto`'s
//! [`ClientSession`](smtp_proto::client::ClientSession).
//!
//! For sending through a relay (submission with AUTH) and for MTA-to-MTA delivery: EHLO with
//! HELO fallback for RFC 788 servers, STARTTLS policies (none, opportunistic, required,
//! implicit), TLS session resumption shared across connections, AUTH PLAIN/LOGIN only under TLS
//! unless allowed, PIPELINING, BDAT, SIZE pre-check, 8BITMIME/SMTPUTF8 negotiation, RFC 9422
//! LIMITS, per-recipient results, connection reuse and a pooled tower [`Service`](service::SmtpService).
//!
//! It is not a queue: retries and bounces are `smtp-relay`'s job; every [`Error`] says whether a
//! retry could help.
//!
//! Bodies are always sent with CRLF line ends and dot-stuffed after every line break, and
//! addresses are validated when built, so no caller's data can end the message early or inject
//! commands.
//!
//! # Example
//! ```no_run
//! use smtp_client::{ClientOptions, Envelope, SmtpClient, TlsMode};
//! use smtp_proto::Domain;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut options = ClientOptions::new(Domain::parse("client.example")?);
//! options.tls = TlsMode::Required;
//! let client = SmtpClient::new(options)?;
//! let mut conn = client.connect("mx.example.org", 25).await?;
//! let env = Envelope::from_str_addr("alice@example.com")?.to_str_addr("bob@example.org")?;
//! let outcome = conn.send(&env, "Subject: hello\r\n\r\nHi Bob\r\n".into()).await?;
//! for (rcpt, reply) in outcome.rejected() {
//!     eprintln!("{rcpt} refused: {reply}");
//! }
//! conn.quit().await?;
//! # Ok(()) }
//! ```

mod conn;
pub mod dane;
pub mod error;
pub mod message;
pub mod service;
pub mod tls;

pub use conn::{ClientOptions, Connection, SendOutcome, SmtpClient, Timeouts, TlsInfo};
pub use dane::Tlsa;
pub use error::{Error, Phase};
pub use message::Body;
pub use smtp_proto::{Envelope, Recipient};
pub use tls::{CertVerify, TlsMode};
