//! Remote delivery: the next hop over SMTP through smtp-client's pooled service, with MX
//! lookups, static routes and a smarthost, per-destination and global concurrency limits, and
//! the outbound TLS mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use smtp_client::service::{Destination as Dest, SendRequest, SmtpService};
use smtp_client::{Body, CertVerify, ClientOptions, SmtpClient, TlsMode};
use smtp_proto::{Domain, MailVerb};
use smtp_proto::{Envelope, Recipient};
use tokio::sync::Semaphore;

use super::{local_reply, Outcome};
use crate::config::RelayConfig;
use crate::dns::{MxAnswer, MxResolver};
use crate::mta_sts::{Cached, Fetcher, Mode, Policy, StsCache};
use crate::queue::{QueuedMessage, RemoteHost, StoredBody};

/// Which rule chose a delivery's TLS mode (logged with each delivery), in the order of
/// precedence: REQUIRETLS, MTA-STS, `--route-tls`, `--outbound-tls`.
#[derive(Debug, Clone)]
enum TlsPolicy {
    /// The message demands REQUIRETLS (RFC 8689) and the hop has a static route configured
    /// with verified TLS.
    RequireTls(TlsMode),
    /// The domain publishes an MTA-STS policy (RFC 8461) in enforce or testing mode: TLS
    /// valid for the MX name is tried first.
    Sts(Arc<Cached>),
    /// `--route-tls DOMAIN=MODE`.
    Route(TlsMode),
    /// `--outbound-tls`.
    Default(TlsMode),
}

impl TlsPolicy {
    fn mode(&self) -> TlsMode {
        match self {
            TlsPolicy::RequireTls(m) | TlsPolicy::Route(m) | TlsPolicy::Default(m) => *m,
            TlsPolicy::Sts(_) => TlsMode::Required,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            TlsPolicy::RequireTls(_) => "requiretls",
            TlsPolicy::Sts(c) if c.policy.mode == Mode::Enforce => "mta-sts-enforce",
            TlsPolicy::Sts(_) => "mta-sts-testing",
            TlsPolicy::Route(_) => "route-tls",
            TlsPolicy::Default(_) => "outbound-tls",
        }
    }

    /// The MTA-STS policy in enforce mode, if that is what applies.
    fn enforced(&self) -> Option<&Policy> {
        match self {
            TlsPolicy::Sts(c) if c.policy.mode == Mode::Enforce => Some(&c.policy),
            _ => None,
        }
    }
}

/// Whether a failed attempt failed on TLS itself: not offered, or the certificate or handshake
/// did not pass.
fn tls_failure(e: &smtp_client::Error) -> bool {
    matches!(
        e,
        smtp_client::Error::Handshake(_) | smtp_client::Error::TlsUnavailable | smtp_client::Error::ServerName(_)
    )
}

/// Whether a message's header section has `TLS-Required: No` (RFC 8689 5): its sender prefers
/// delivery over the recipient domain's TLS policy.
fn tls_optional(head: &[u8]) -> bool {
    let end = memchr::memmem::find(head, b"\r\n\r\n").unwrap_or(head.len());
    head[..end].split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                line[..colon].eq_ignore_ascii_case(b"TLS-Required")
                    && line[colon + 1..].trim_ascii().eq_ignore_ascii_case(b"No")
            }
            None => false,
        }
    })
}

/// Sends to next hops.
pub struct RemoteDelivery {
    config: Arc<RelayConfig>,
    resolver: Arc<dyn MxResolver>,
    services: HashMap<TlsMode, SmtpService>,
    global: Semaphore,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// MTA-STS policies (`None` when turned off).
    sts: Option<StsCache>,
}

impl RemoteDelivery {
    /// Clients for every TLS mode, as `config` says.
    pub fn new(config: Arc<RelayConfig>, resolver: Arc<dyn MxResolver>) -> RemoteDelivery {
        let ehlo = Domain::parse(&config.hostname).unwrap_or(Domain::Name("localhost".into()));
        let mut services = HashMap::new();
        for mode in [TlsMode::None, TlsMode::Opportunistic, TlsMode::Required, TlsMode::Implicit] {
            let mut o = ClientOptions::new(ehlo.clone());
            o.tls = mode;
            o.verify = match (mode, &config.outbound_ca) {
                // RFC 7435: opportunistic TLS encrypts without insisting on authentication.
                (TlsMode::Opportunistic, _) => CertVerify::Insecure,
                (_, Some(ca)) => CertVerify::CaFile(ca.clone()),
                _ => CertVerify::WebPki,
            };
            match SmtpClient::new(o) {
                Ok(c) => {
                    services.insert(mode, SmtpService::new(c, config.max_per_destination.max(1)));
                }
                Err(e) => tracing::error!(error = %e, ?mode, "cannot build SMTP client"),
            }
        }
        let global = Semaphore::new(config.max_deliveries.max(1));
        let sts = config.mta_sts.then(|| sts_cache(&config)).flatten();
        RemoteDelivery { config, resolver, services, global, per_host: Mutex::default(), sts }
    }

    /// (full, resumed) outbound TLS handshakes so far.
    pub fn handshakes(&self) -> (u64, u64) {
        self.services.values().map(|s| s.client().handshakes()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The hosts to try for a next hop: static route, smarthost, address literal, or MX. Under
    /// an MTA-STS policy in enforce mode only MX hosts it names are kept (RFC 8461 4.1).
    async fn hosts_for(
        &self,
        hop: &Domain,
        policy: &TlsPolicy,
    ) -> Result<Vec<(String, Option<SocketAddr>, u16)>, Outcome> {
        let cfg = &self.config;
        let key = hop.canonical();
        if let Some((h, p)) = cfg.routes.get(&key).or(cfg.relay_host.as_ref()) {
            return Ok(vec![(h.clone(), None, *p)]);
        }
        let port = cfg.smtp_port;
        let name = match hop {
            Domain::Ipv4(ip) => return Ok(vec![(ip.to_string(), Some(SocketAddr::new((*ip).into(), port)), port)]),
            Domain::Ipv6(ip) => return Ok(vec![(ip.to_string(), Some(SocketAddr::new((*ip).into(), port)), port)]),
            Domain::Name(n) => n.clone(),
        };
        let mut hosts = match self.resolver.mx(&name).await {
            Ok(MxAnswer::Hosts(h)) => h,
            Ok(MxAnswer::NullMx) => {
                let text = format!("{name} accepts no mail (null MX, RFC 7505)");
                return Err(Outcome::Failed(local_reply(556, (5, 1, 10), &text), None));
            }
            Ok(MxAnswer::NoSuchDomain) => {
                let text = format!("Domain {name} does not exist");
                return Err(Outcome::Failed(local_reply(550, (5, 1, 2), &text), None));
            }
            Err(e) => return Err(Outcome::Retry(local_reply(451, (4, 4, 3), &e.to_string()), None)),
        };
        if let TlsPolicy::Sts(c) = policy {
            for h in hosts.iter().filter(|h| !c.policy.allows(h)) {
                tracing::warn!(domain = %name, mx = %h, policy = policy.name(), "MX host not named by the MTA-STS policy");
            }
            if policy.enforced().is_some() {
                hosts.retain(|h| c.policy.allows(h));
                if hosts.is_empty() {
                    let text = format!("No mail exchanger of {name} matches its MTA-STS policy");
                    return Err(Outcome::Retry(local_reply(451, (4, 7, 5), &text), None));
                }
            }
        }
        let mut out = Vec::new();
        for h in hosts {
            match self.resolver.addresses(&h).await {
                Ok(addrs) => out.extend(addrs.into_iter().map(|ip| (h.clone(), Some(SocketAddr::new(ip, port)), port))),
                Err(e) => tracing::info!(host = %h, error = %e, "MX host does not resolve"),
            }
        }
        if out.is_empty() {
            let text = format!("No address for any mail exchanger of {name}");
            return Err(Outcome::Retry(local_reply(451, (4, 4, 4), &text), None));
        }
        Ok(out)
    }

    /// The transport-security policy for `hop`, decided in one place, in RFC 8689 / RFC 8461
    /// order: REQUIRETLS, MTA-STS, the static per-domain mode, the default. A REQUIRETLS
    /// message without a secure route fails here (5.7.30), before any MX look-up; one whose
    /// domain's policy could not be had is deferred.
    async fn tls_policy(&self, hop: &Domain, requiretls: bool) -> Result<TlsPolicy, Outcome> {
        let cfg = &self.config;
        let key = hop.canonical();
        let configured = cfg.tls_per_domain.get(&key).copied();
        let routed = cfg.routes.contains_key(&key) || cfg.relay_host.is_some();
        let mut unavailable = None;
        if let (false, Some(sts), Domain::Name(name)) = (routed, &self.sts, hop) {
            let found = sts.policy(self.resolver.as_ref(), name, QueuedMessage::now()).await;
            if let Some(e) = &found.failure {
                tracing::warn!(domain = %name, error = %e, result_type = e.result_type(), cached = found.policy.is_some(), "MTA-STS policy unavailable");
            }
            match found.policy {
                Some(c) if !requiretls || c.policy.mode == Mode::Enforce => return Ok(TlsPolicy::Sts(c)),
                _ => unavailable = found.failure,
            }
        }
        if requiretls {
            // RFC 8689 4.2.1: only a next hop found through a secure policy, over validated TLS:
            // MTA-STS in enforce mode (above), or a static route or smarthost configured with
            // verified TLS (--route-tls DOMAIN=required).
            let mode = configured.unwrap_or(cfg.outbound_tls);
            return match (routed, mode, unavailable) {
                (true, TlsMode::Required | TlsMode::Implicit, _) => Ok(TlsPolicy::RequireTls(mode)),
                (_, _, Some(e)) => {
                    let text = format!("REQUIRETLS: the TLS policy of {hop} is unavailable: {e}");
                    Err(Outcome::Retry(local_reply(451, (4, 7, 5), &text), None))
                }
                _ => {
                    let text = format!("REQUIRETLS: no secure route to {hop} (no MTA-STS policy in enforce mode, no static route with verified TLS)");
                    Err(Outcome::Failed(local_reply(550, (5, 7, 30), &text), None))
                }
            };
        }
        Ok(configured.map_or(TlsPolicy::Default(cfg.outbound_tls), TlsPolicy::Route))
    }

    /// The concurrency limit of one destination (`host:port`).
    fn host_slot(&self, host: &str) -> Arc<Semaphore> {
        let n = self.config.max_per_destination.max(1);
        self.per_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    /// Sends `msg` to the recipients at `idx`, all for next hop `hop`.
    pub async fn deliver(
        &self,
        msg: &QueuedMessage,
        body: &StoredBody,
        hop: &Domain,
        idx: &[usize],
    ) -> Vec<(usize, Outcome)> {
        let all = |o: Outcome| idx.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
        let policy = match self.tls_policy(hop, msg.params.requiretls).await {
            Ok(p) => p,
            Err(o) => {
                tracing::info!(id = %msg.id, %hop, outcome = ?o, "REQUIRETLS message has no secure route");
                return all(o);
            }
        };
        let hosts = match self.hosts_for(hop, &policy).await {
            Ok(h) => h,
            Err(o) => return all(o),
        };
        let envelope = Envelope {
            // SOML and SAML become MAIL at the next hop: its mailbox delivery is what survives.
            verb: if msg.verb == MailVerb::Send { MailVerb::Send } else { MailVerb::Mail },
            from: msg.from.clone(),
            params: msg.params.clone(),
            recipients: idx
                .iter()
                .map(|&i| Recipient { path: msg.recipients[i].path.clone(), params: msg.recipients[i].params.clone() })
                .collect(),
        };
        let requiretls = msg.params.requiretls;
        let mode = policy.mode();
        let mut last = local_reply(451, (4, 4, 1), "No host could be reached");
        for (host, addr, port) in hosts {
            // The destination's slot first, then a global one: deliveries waiting for a slow
            // destination hold no global slot, so they cannot starve other destinations.
            let slot = self.host_slot(&format!("{host}:{port}"));
            let _slot = slot.acquire().await;
            let _global = self.global.acquire().await;
            let dest = Dest { host: host.clone(), port, addr };
            let mta = Some(RemoteHost { name: host.clone() });
            let attempt = async {
                let mut result = self.send(mode, &dest, &envelope, body).await;
                let fallback = match (&policy, &result) {
                    (TlsPolicy::Sts(_), Err(e)) if tls_failure(e) && !requiretls => {
                        if policy.enforced().is_none() {
                            tracing::warn!(id = %msg.id, destination = %host, policy = policy.name(), error = %e, "MTA-STS testing mode: TLS not validated; delivering anyway (downgrade)");
                            true
                        } else if self.sender_waives_tls(body).await {
                            tracing::warn!(id = %msg.id, destination = %host, policy = policy.name(), error = %e, "TLS-Required: No: the policy's TLS check failed; delivering anyway (downgrade)");
                            true
                        } else {
                            tracing::warn!(id = %msg.id, destination = %host, policy = policy.name(), error = %e, "MTA-STS enforce: TLS not validated; deferred");
                            false
                        }
                    }
                    _ => false,
                };
                if fallback {
                    result = self.send(TlsMode::Opportunistic, &dest, &envelope, body).await;
                }
                let opportunistic = mode == TlsMode::Opportunistic || fallback;
                if let (true, Err(smtp_client::Error::Handshake(e))) = (opportunistic, &result) {
                    tracing::warn!(destination = %host, port, policy = policy.name(), error = %e, "STARTTLS failed; retrying once without TLS (downgrade)");
                    result = self.send(TlsMode::None, &dest, &envelope, body).await;
                }
                result
            };
            // A whole attempt has a deadline: per-step timeouts alone let a host that answers
            // slowly hold a slot for many minutes.
            let result = match tokio::time::timeout(self.config.delivery_deadline, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(destination = %host, port, "delivery attempt deadline passed");
                    last = local_reply(451, (4, 4, 2), &format!("{host}: delivery attempt took too long"));
                    continue;
                }
            };
            match result {
                Ok(out) => {
                    tracing::info!(id = %msg.id, destination = %host, port, policy = policy.name(), ?mode, "sent to the next hop");
                    let dsn = out.dsn;
                    // Each recipient by its own transaction's end-of-data reply (RCPTMAX may
                    // have split the envelope): a later transaction's failure never turns an
                    // earlier delivery into a retry or a bounce.
                    return idx
                        .iter()
                        .zip(out.recipients.iter().zip(out.data.iter()))
                        .map(|(&i, ((_, rcpt), data))| {
                            let mta = mta.clone();
                            let o = match (rcpt, data) {
                                (r, _) if r.is_permanent() => Outcome::Failed(r.clone(), mta),
                                (r, _) if !r.is_positive() => Outcome::Retry(r.clone(), mta),
                                (_, Some(d)) if d.is_positive() && dsn => Outcome::Delivered(mta),
                                (_, Some(d)) if d.is_positive() => Outcome::Relayed(RemoteHost { name: host.clone() }),
                                (_, Some(d)) if d.is_permanent() => Outcome::Failed(d.clone(), mta),
                                (_, Some(d)) => Outcome::Retry(d.clone(), mta),
                                (_, None) => {
                                    Outcome::Retry(local_reply(451, (4, 3, 0), "Message data not accepted"), mta)
                                }
                            };
                            (i, o)
                        })
                        .collect();
                }
                // The hop cannot pass REQUIRETLS on, or offers no TLS at all: returned, 5.7.30.
                Err(e @ (smtp_client::Error::ExtensionMissing("REQUIRETLS") | smtp_client::Error::TlsUnavailable))
                    if requiretls =>
                {
                    let r = local_reply(550, (5, 7, 30), &format!("REQUIRETLS: {host}: {e}"));
                    return all(Outcome::Failed(r, mta));
                }
                // MTA-STS enforce: a host without valid TLS is passed over, and the message waits.
                Err(e) if policy.enforced().is_some() && tls_failure(&e) => {
                    last = local_reply(451, (4, 7, 5), &format!("{host}: MTA-STS policy requires valid TLS: {e}"));
                }
                Err(e) if e.is_permanent() => {
                    let r = e.reply().cloned().unwrap_or_else(|| local_reply(554, (5, 0, 0), &e.to_string()));
                    return all(Outcome::Failed(r, mta));
                }
                Err(e) => {
                    last = e.reply().cloned().unwrap_or_else(|| local_reply(451, (4, 4, 1), &format!("{host}: {e}")));
                    tracing::info!(destination = %host, port, policy = policy.name(), error = %e, "delivery attempt failed");
                }
            }
        }
        all(Outcome::Retry(last, None))
    }

    /// Whether the message carries `TLS-Required: No` (read from its head only when needed).
    async fn sender_waives_tls(&self, body: &StoredBody) -> bool {
        body.head(64 * 1024).await.is_ok_and(|h| tls_optional(&h))
    }

    async fn send(
        &self,
        mode: TlsMode,
        dest: &Dest,
        envelope: &Envelope,
        body: &StoredBody,
    ) -> Result<smtp_client::SendOutcome, smtp_client::Error> {
        let Some(service) = self.services.get(&mode) else {
            return Err(smtp_client::Error::Refused("no SMTP client for this TLS mode"));
        };
        let body = match body {
            StoredBody::Memory(b) => Body::Bytes(b.clone()),
            StoredBody::File { .. } => match body.reader().await {
                Ok(r) => Body::Reader(r),
                Err(e) => return Err(smtp_client::Error::Io(e)),
            },
        };
        service.send(SendRequest { destination: dest.clone(), envelope: envelope.clone(), body }).await
    }
}

/// The MTA-STS cache for `config` (policies verified as outbound TLS is: the web PKI, or
/// `outbound_ca`), or `None` with an error logged.
fn sts_cache(config: &RelayConfig) -> Option<StsCache> {
    let verify = config.outbound_ca.clone().map_or(CertVerify::WebPki, CertVerify::CaFile);
    let built = Fetcher::new(&verify, config.mta_sts_port, std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())
        .and_then(|f| StsCache::new(Some(config.data_dir.join("mta-sts")), f).map_err(|e| e.to_string()));
    built.map_err(|e| tracing::error!(error = %e, "MTA-STS is off: cannot set it up")).ok()
}
