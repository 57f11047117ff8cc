//! What the mail service receives at the end of data, and the `Received:` line.

use std::net::SocketAddr;
use std::time::SystemTime;

use smtp_proto::{Domain, Envelope};

use crate::body::Body;
use crate::tls::TlsInfo;

/// Facts about the SMTP session, passed with every policy question and transaction.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The HELO/EHLO name, once given.
    pub helo: Option<Domain>,
    /// Whether the client used EHLO.
    pub extended: bool,
    /// TLS parameters, when TLS is up.
    pub tls: Option<TlsInfo>,
    /// The authenticated user, after AUTH.
    pub authenticated: Option<String>,
}

/// One message, handed to the mail service when its data starts; the data follows in `body`,
/// and the service's reply answers the end of data.
#[derive(Debug)]
pub struct Transaction {
    /// A unique id for logs and `Received:`.
    pub id: String,
    /// The session it arrived in.
    pub session: SessionInfo,
    /// The verb, reverse-path and MAIL parameters, and the accepted recipients with theirs.
    pub envelope: Envelope,
    /// This server's `Received:` line (with CRLF), to be stored in front of the data.
    pub received: String,
    /// When the data started.
    pub received_at: SystemTime,
    /// The data as received (unstuffed), streamed.
    pub body: Body,
}

/// The `Received:` time-stamp line (RFC 5321 4.4, RFC 8314 7.4 for TLS) with CRLF.
///
/// With `private` (authenticated submissions, when configured) the client's address and HELO name
/// are left out: fewer long-term identifying values travel with the message.
pub fn received_line(
    hostname: &str,
    id: &str,
    s: &SessionInfo,
    single_rcpt: Option<&str>,
    at: SystemTime,
    private: bool,
) -> String {
    let mut out = String::from("Received: ");
    if !private {
        let helo = s.helo.as_ref().map(|d| d.to_string()).unwrap_or_else(|| "unknown".into());
        out.push_str(&format!("from {helo} ([{}])\r\n\t", s.peer.ip()));
    }
    let mut with = String::from(if s.extended { "ESMTP" } else { "SMTP" });
    if s.tls.is_some() {
        with.push('S');
    }
    if s.authenticated.is_some() {
        with.push('A');
    }
    if !s.extended {
        with = if s.tls.is_some() { "SMTPS".into() } else { "SMTP".into() };
    }
    out.push_str(&format!("by {hostname} (Tern) with {with} id {id}"));
    if let Some(tls) = &s.tls {
        out.push_str(&format!("\r\n\t(version={} cipher={})", tls.version, tls.cipher));
    }
    if let Some(r) = single_rcpt {
        out.push_str(&format!("\r\n\tfor {r}"));
    }
    out.push_str(&format!(";\r\n\t{}\r\n", smtp_proto::date::rfc5322_date(at)));
    out
}
