//! The relay's configuration: everything the policy, the mail service, the scheduler and
//! delivery decide with. Its own module, so that each of them depends on it and none on another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use smtp_client::TlsMode;

use crate::directory::Directory;
use crate::route::{Cidr, SourceRoutes};

/// Everything the relay decides with.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This host's name (Received, Maildir names, DSNs).
    pub hostname: String,
    /// The data directory: `queue/`, `mail/`, `terminal.sock`.
    pub data_dir: PathBuf,
    /// Local domains, users, aliases.
    pub directory: Directory,
    /// Networks allowed to relay without AUTH.
    pub trusted: Vec<Cidr>,
    /// RFC 788 source routes: honor or strip.
    pub source_routes: SourceRoutes,
    /// More `Received:` lines than this means a loop: `554 5.4.6`.
    pub max_received: usize,
    /// Users allowed to AUTH, with their password hashes (argon2id, `tern passwd`).
    pub auth_users: HashMap<String, crate::password::PasswordHashString>,
    /// Failed AUTH attempts one address may make per hour before `421 4.7.0`.
    pub auth_failure_budget: u32,
    /// Static routes: domain (lower case) to `host:port`.
    pub routes: HashMap<String, (String, u16)>,
    /// Send all non-local mail through this host.
    pub relay_host: Option<(String, u16)>,
    /// The DNS server for MX lookups (the system's when `None`).
    pub dns_server: Option<std::net::SocketAddr>,
    /// Port for MX and address deliveries (25).
    pub smtp_port: u16,
    /// First retry after a transient failure; later ones double, up to `max_retry_interval`.
    pub retry_interval: Duration,
    /// Longest wait between retries.
    pub max_retry_interval: Duration,
    /// After this, pending recipients fail and the sender is notified.
    pub queue_lifetime: Duration,
    /// Warn the sender once when a message has waited this long (`None`: never).
    pub delay_warning: Option<Duration>,
    /// Outbound TLS (opportunistic by default).
    pub outbound_tls: TlsMode,
    /// CA file to verify `required` TLS destinations against (web PKI roots when `None`).
    pub outbound_ca: Option<PathBuf>,
    /// DANE (RFC 7672): validate MX and TLSA records with DNSSEC and authenticate next hops
    /// by their TLSA records. Needs a resolver that passes DNSSEC records on.
    pub dane: bool,
    /// DNSKEY records (zone-file lines) to trust instead of the root's key: for a private or
    /// test zone.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Count sessions held to MTA-STS and DANE policies and send the daily TLS reports
    /// (RFC 8460) to domains that ask for them.
    pub tls_reports: bool,
    /// How often finished days' TLS reports are looked for (an hour).
    pub tls_report_interval: Duration,
    /// Apply recipient domains' MTA-STS policies (RFC 8461); policies are cached in
    /// `DATA_DIR/mta-sts/`.
    pub mta_sts: bool,
    /// The HTTPS port MTA-STS policies are fetched from (443; another only for tests).
    pub mta_sts_port: u16,
    /// Per-domain TLS overrides.
    pub tls_per_domain: HashMap<String, TlsMode>,
    /// Most deliveries at once.
    pub max_deliveries: usize,
    /// Most connections at once to one destination: well below `max_deliveries`, so that one
    /// slow or hostile destination leaves slots for the others.
    pub max_per_destination: usize,
    /// Longest delivery attempt to one host, connection to last reply.
    pub delivery_deadline: Duration,
    /// Deliver a message for one local mailbox into its Maildir before the `250` (final
    /// delivery on receipt, as an LMTP server does) instead of queueing it first: half the
    /// disk work. Messages that need the queue (several or remote recipients, SEND/SOML/SAML,
    /// a success notification) always take it.
    pub deliver_on_receipt: bool,
    /// DKIM keys by signing domain: mail from trusted or authenticated sessions whose `From`
    /// domain has one is signed before it is stored.
    pub dkim: Vec<crate::msgauth::DkimSpec>,
    /// Check SPF, DKIM and DMARC on mail from other sessions and add `Authentication-Results`.
    pub auth_verify: bool,
    /// Act on DMARC policies: `p=reject` failures get `550 5.7.1`, `p=quarantine` failures a
    /// header to filter on, DNS failures `451 4.7.0`.
    pub dmarc_enforce: bool,
    /// Deliver local mailboxes over LMTP (RFC 2033) to this mail store (TCP or a Unix socket;
    /// Dovecot, Cyrus) instead of into Maildirs; SEND/SOML/SAML still reach terminals.
    pub lmtp: Option<crate::deliver::lmtp::LmtpTarget>,
    /// Largest message held in memory to sign or verify (10 MiB); a larger one streams to
    /// disk unsigned, or with SPF checked only.
    pub auth_max_size: usize,
}

impl RelayConfig {
    /// Defaults for `hostname` and `data_dir`: local domains are the host name and `localhost`,
    /// any local part is accepted, loopback may relay, routes are stripped, Postfix-like retries.
    pub fn new(hostname: &str, data_dir: impl Into<PathBuf>) -> Self {
        RelayConfig {
            hostname: hostname.to_string(),
            data_dir: data_dir.into(),
            directory: Directory::new([hostname.to_string(), "localhost".to_string()], Vec::<String>::new()),
            trusted: Cidr::loopback(),
            source_routes: SourceRoutes::Strip,
            max_received: 100,
            auth_users: HashMap::new(),
            auth_failure_budget: 10,
            routes: HashMap::new(),
            relay_host: None,
            dns_server: None,
            smtp_port: 25,
            retry_interval: Duration::from_secs(300),
            max_retry_interval: Duration::from_secs(4000),
            queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_warning: None,
            outbound_tls: TlsMode::Opportunistic,
            outbound_ca: None,
            dane: true,
            dnssec_trust_anchor: None,
            tls_reports: true,
            tls_report_interval: Duration::from_secs(3600),
            mta_sts: true,
            mta_sts_port: 443,
            tls_per_domain: HashMap::new(),
            max_deliveries: 20,
            max_per_destination: 5,
            delivery_deadline: Duration::from_secs(600),
            deliver_on_receipt: true,
            dkim: Vec::new(),
            auth_verify: true,
            dmarc_enforce: false,
            auth_max_size: 10 * 1024 * 1024,
            lmtp: None,
        }
    }
}

impl RelayConfig {
    /// The DNSSEC validation DANE needs, as configured.
    pub fn dnssec(&self) -> crate::dns::Dnssec {
        match self.dane {
            true => crate::dns::Dnssec::On(self.dnssec_trust_anchor.clone()),
            false => crate::dns::Dnssec::Off,
        }
    }
}
