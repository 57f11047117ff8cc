//! Remote delivery: the next hop over SMTP through smtp-client's pooled service, with MX
//! lookups, static routes and a smarthost, per-destination and global concurrency limits, and
//! the outbound TLS mode.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use smtp_client::service::{Destination as Dest, SendRequest, SmtpService};
use smtp_client::{CertVerify, ClientOptions, SmtpClient, TlsMode, Tlsa};
use smtp_proto::Envelope;
use smtp_proto::{Domain, MailVerb};
use tokio::sync::Semaphore;

use super::{local_reply, Outcome};
use crate::config::RelayConfig;
use crate::dns::{MxAnswer, MxResolver, TlsaAnswer};
use crate::mta_sts::{Cached, Fetcher, Mode, Policy, StsCache};
use crate::queue::{QueuedMessage, RemoteHost, StoredBody};
use crate::tls_rpt::{PolicyDesc, ResultType, TlsReports};

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
    /// The message demands REQUIRETLS and the hop has no other secure route: only MX hosts
    /// with usable DANE records (RFC 7672) will do.
    RequireDane,
    /// `--route-tls DOMAIN=MODE`.
    Route(TlsMode),
    /// `--outbound-tls`.
    Default(TlsMode),
}

impl TlsPolicy {
    fn mode(&self) -> TlsMode {
        match self {
            TlsPolicy::RequireTls(m) | TlsPolicy::Route(m) | TlsPolicy::Default(m) => *m,
            TlsPolicy::Sts(_) | TlsPolicy::RequireDane => TlsMode::Required,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            TlsPolicy::RequireTls(_) => "requiretls",
            TlsPolicy::RequireDane => "requiretls-dane",
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

/// What DANE (RFC 7672) says about one MX host.
#[derive(Debug, Clone)]
enum Dane {
    /// Not applicable: the MX records or the host's TLSA records are not DNSSEC-signed, there
    /// are none, or DANE is off.
    None,
    /// Usable TLSA records: STARTTLS required, the server authenticated by them.
    Usable(Arc<[Tlsa]>),
    /// Signed TLSA records, none usable: STARTTLS required, without authentication.
    Unusable,
    /// The TLSA look-up failed or was bogus: the host is not tried.
    Failed(String),
}

/// A DANE-authenticating client and the records it checks.
type DaneClient = (Arc<[Tlsa]>, SmtpService);

/// One host to try for a next hop.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    addr: Option<SocketAddr>,
    port: u16,
    dane: Dane,
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
    /// Mandatory STARTTLS without authentication (DANE records all unusable).
    encrypt_only: Option<SmtpService>,
    /// One client per DANE-authenticated host, while its records stay the same (so TLS
    /// sessions resume).
    dane: Mutex<HashMap<String, DaneClient>>,
    /// TLS report counts (`None` when reports are off).
    reports: Option<TlsReports>,
    /// A queue shared with other nodes: destination limits hold across all of them.
    shared: Option<Arc<dyn crate::queue::Queue>>,
}

impl RemoteDelivery {
    /// Clients for every TLS mode, as `config` says.
    pub fn new(config: Arc<RelayConfig>, resolver: Arc<dyn MxResolver>) -> RemoteDelivery {
        let mut services = HashMap::new();
        for mode in [TlsMode::None, TlsMode::Opportunistic, TlsMode::Required, TlsMode::Implicit] {
            let verify = match (mode, &config.outbound_ca) {
                // RFC 7435: opportunistic TLS encrypts without insisting on authentication.
                (TlsMode::Opportunistic, _) => CertVerify::Insecure,
                (_, Some(ca)) => CertVerify::CaFile(ca.clone()),
                _ => CertVerify::WebPki,
            };
            if let Some(s) = client(&config, mode, verify) {
                services.insert(mode, s);
            }
        }
        let global = Semaphore::new(config.max_deliveries.max(1));
        let sts = config.mta_sts.then(|| sts_cache(&config)).flatten();
        let encrypt_only = client(&config, TlsMode::Required, CertVerify::Insecure);
        let reports = config.tls_reports.then(|| tls_reports(&config)).flatten();
        RemoteDelivery {
            config,
            resolver,
            services,
            global,
            per_host: Mutex::default(),
            sts,
            encrypt_only,
            dane: Mutex::default(),
            reports,
            shared: None,
        }
    }

    /// Holds each destination's connection limit across every node of `queue` (when it is
    /// shared), not only in this process.
    pub fn with_shared_limits(mut self, queue: Arc<dyn crate::queue::Queue>) -> Self {
        if queue.leases().is_some() {
            self.shared = Some(queue);
        }
        self
    }

    /// The TLS report counts (`None` when reports are off).
    pub fn reports(&self) -> Option<&TlsReports> {
        self.reports.as_ref()
    }

    /// (full, resumed) outbound TLS handshakes so far.
    pub fn handshakes(&self) -> (u64, u64) {
        let dane = self.dane.lock().unwrap_or_else(|e| e.into_inner());
        let all = self.services.values().chain(&self.encrypt_only).chain(dane.values().map(|(_, s)| s));
        all.map(|s| s.client().handshakes()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The hosts to try for a next hop: static route, smarthost, address literal, or MX, each
    /// with what DANE says about it. Under an MTA-STS policy in enforce mode only MX hosts it
    /// names are kept (RFC 8461 4.1), unless DANE applies to them (DANE wins, RFC 8461 2); a
    /// REQUIRETLS message keeps only hosts it may go to.
    async fn hosts_for(&self, hop: &Domain, policy: &TlsPolicy, requiretls: bool) -> Result<Vec<Target>, Outcome> {
        let cfg = &self.config;
        let key = hop.canonical();
        let target = |host: String, addr, port| Target { host, addr, port, dane: Dane::None };
        if let Some((h, p)) = cfg.routes.get(&key).or(cfg.relay_host.as_ref()) {
            return Ok(vec![target(h.clone(), None, *p)]);
        }
        let port = cfg.smtp_port;
        let name = match hop {
            Domain::Ipv4(ip) => {
                return Ok(vec![target(ip.to_string(), Some(SocketAddr::new((*ip).into(), port)), port)])
            }
            Domain::Ipv6(ip) => {
                return Ok(vec![target(ip.to_string(), Some(SocketAddr::new((*ip).into(), port)), port)])
            }
            Domain::Name(n) => n.clone(),
        };
        let looked_up = match cfg.dane {
            true => self.resolver.mx_dnssec(&name).await,
            false => self.resolver.mx(&name).await.map(|a| (a, false)),
        };
        let (mut hosts, secure) = match looked_up {
            Ok((MxAnswer::Hosts(h), secure)) => (h, secure),
            Ok((MxAnswer::NullMx, _)) => {
                let text = format!("{name} accepts no mail (null MX, RFC 7505)");
                return Err(Outcome::Failed(local_reply(556, (5, 1, 10), &text), None));
            }
            Ok((MxAnswer::NoSuchDomain, _)) => {
                let text = format!("Domain {name} does not exist");
                return Err(Outcome::Failed(local_reply(550, (5, 1, 2), &text), None));
            }
            Err(e) => return Err(Outcome::Retry(local_reply(451, (4, 4, 3), &e.to_string()), None)),
        };
        // RFC 7672 2.2: TLSA records count only behind a DNSSEC-secure MX answer.
        let mut dane = Vec::with_capacity(hosts.len());
        for h in &hosts {
            dane.push(match secure {
                false => Dane::None,
                true => match self.resolver.tlsa(h, port).await {
                    Ok(TlsaAnswer::Secure(records)) if records.iter().any(Tlsa::usable) => {
                        Dane::Usable(records.into_iter().filter(Tlsa::usable).collect())
                    }
                    Ok(TlsaAnswer::Secure(records)) if !records.is_empty() => Dane::Unusable,
                    Ok(_) => Dane::None,
                    Err(e) => Dane::Failed(e.to_string()),
                },
            });
        }
        let mut kept: Vec<(String, Dane)> = hosts.drain(..).zip(dane).collect();
        if let TlsPolicy::Sts(c) = policy {
            let unnamed = |(h, d): &(String, Dane)| matches!(d, Dane::None) && !c.policy.allows(h);
            for (h, _) in kept.iter().filter(|t| unnamed(t)) {
                tracing::warn!(domain = %name, mx = %h, policy = policy.name(), "MX host not named by the MTA-STS policy");
            }
            if policy.enforced().is_some() {
                for (h, _) in kept.iter().filter(|t| unnamed(t)) {
                    self.count(&name, &PolicyDesc::sts(&c.policy), Some(h), None, Some(ResultType::ValidationFailure));
                }
                kept.retain(|t| !unnamed(t));
                if kept.is_empty() {
                    let text = format!("No mail exchanger of {name} matches its MTA-STS policy");
                    return Err(Outcome::Retry(local_reply(451, (4, 7, 5), &text), None));
                }
            }
        }
        if requiretls {
            // Validated TLS only: DANE-authenticated hosts, or the hop's secure policy.
            let policy_secure = !matches!(policy, TlsPolicy::RequireDane);
            kept.retain(|(_, d)| {
                matches!(d, Dane::Usable(_) | Dane::Failed(_)) || (policy_secure && matches!(d, Dane::None))
            });
            if kept.is_empty() {
                let text = format!("REQUIRETLS: no secure route to {hop} (no MX host with usable DANE records, no MTA-STS policy in enforce mode, no static route with verified TLS)");
                return Err(Outcome::Failed(local_reply(550, (5, 7, 30), &text), None));
            }
        }
        let mut out = Vec::new();
        for (h, dane) in kept {
            match self.resolver.addresses(&h).await {
                Ok(addrs) => out.extend(addrs.into_iter().map(|ip| Target {
                    host: h.clone(),
                    addr: Some(SocketAddr::new(ip, port)),
                    port,
                    dane: dane.clone(),
                })),
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
                tracing::warn!(domain = %name, error = %e, result_type = e.result_type().as_str(), cached = found.policy.is_some(), "MTA-STS policy unavailable");
                let desc = found.policy.as_ref().map_or_else(PolicyDesc::none, |c| PolicyDesc::sts(&c.policy));
                self.count(name, &desc, None, None, Some(e.result_type()));
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
            let dane = cfg.dane && !routed && matches!(hop, Domain::Name(_));
            return match (routed, mode, unavailable) {
                (true, TlsMode::Required | TlsMode::Implicit, _) => Ok(TlsPolicy::RequireTls(mode)),
                _ if dane => Ok(TlsPolicy::RequireDane),
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
        let hosts = match self.hosts_for(hop, &policy, msg.params.requiretls).await {
            Ok(h) => h,
            Err(o) => return all(o),
        };
        // SOML and SAML become MAIL at the next hop: its mailbox delivery is what survives.
        let verb = if msg.verb == MailVerb::Send { MailVerb::Send } else { MailVerb::Mail };
        let envelope = super::envelope_for(msg, idx, verb);
        let requiretls = msg.params.requiretls;
        let mode = policy.mode();
        let mut last = local_reply(451, (4, 4, 1), "No host could be reached");
        for Target { host, addr, port, dane } in hosts {
            let waiting = std::time::Instant::now();
            // Per host: DANE when it applies (it wins over MTA-STS, RFC 8461 2), else the
            // hop's policy. `strict`: a TLS failure defers rather than downgrades.
            let (service, strict, name) = match &dane {
                Dane::Failed(e) => {
                    self.count(
                        &hop.to_string(),
                        &PolicyDesc::tlsa(&host, &[]),
                        Some(&host),
                        None,
                        Some(ResultType::DnssecInvalid),
                    );
                    tracing::warn!(id = %msg.id, destination = %host, error = %e, "DANE: TLSA look-up failed; host skipped");
                    last = local_reply(451, (4, 7, 5), &format!("{host}: DANE TLSA look-up failed: {e}"));
                    continue;
                }
                Dane::Usable(records) => (self.dane_service(&host, records), true, "dane"),
                Dane::Unusable => (self.encrypt_only.clone(), true, "dane-encrypt-only"),
                Dane::None => (self.services.get(&mode).cloned(), policy.enforced().is_some(), policy.name()),
            };
            let testing = matches!((&policy, &dane), (TlsPolicy::Sts(_), Dane::None)) && !strict;
            // Sessions held to a published policy are counted for TLS reports (RFC 8460).
            let reported = match (&dane, &policy) {
                (Dane::Usable(records), _) => Some(PolicyDesc::tlsa(&host, records)),
                (Dane::None, TlsPolicy::Sts(c)) => Some(PolicyDesc::sts(&c.policy)),
                _ => None,
            };
            // The destination's slot first, then a global one: deliveries waiting for a slow
            // destination hold no global slot, so they cannot starve other destinations.
            let slot = self.host_slot(&format!("{host}:{port}"));
            let _slot = slot.acquire().await;
            // On a shared queue, one of the destination's slots across the nodes, too.
            let _cluster = match self.shared.as_ref().and_then(|q| q.leases()) {
                Some(l) => match l.slot(&format!("{host}:{port}"), self.config.max_per_destination).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(id = %msg.id, destination = %host, error = %e, "no destination slot from the shared queue");
                        last = local_reply(451, (4, 3, 0), "Queue database unavailable");
                        break;
                    }
                },
                None => None,
            };
            let _global = self.global.acquire().await;
            // The lease may have run out while this waited for its slots (a quarter of the
            // lease time or more): make sure the message is still this node's, for the lease
            // time, before anything is sent.
            let leases = self.shared.as_ref().and_then(|q| q.leases());
            if let Some(l) = leases.filter(|l| waiting.elapsed() >= l.lease_time() / 4) {
                match l.confirm(&msg.id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(id = %msg.id, destination = %host, "lease lost before delivery; left to the node that holds it");
                        return all(Outcome::Retry(local_reply(451, (4, 3, 0), "Lease lost"), None));
                    }
                    Err(e) => {
                        tracing::warn!(id = %msg.id, error = %e, "cannot confirm the lease");
                        last = local_reply(451, (4, 3, 0), "Queue database unavailable");
                        break;
                    }
                }
            }
            let dest = Dest { host: host.clone(), port, addr };
            let mta = Some(RemoteHost { name: host.clone() });
            let attempt = async {
                let mut result = self.send(service.as_ref(), &dest, &envelope, body).await;
                if let Some(desc) = &reported {
                    let failure = match &result {
                        Err(e) if tls_failure(e) => Some(ResultType::of(e, matches!(dane, Dane::Usable(_)))),
                        _ => None,
                    };
                    if failure.is_some() || result.as_ref().is_ok_and(|o| o.tls.is_some()) {
                        self.count(&hop.to_string(), desc, Some(&host), addr.map(|a| a.ip()), failure);
                    }
                }
                let fallback = match &result {
                    Err(e) if tls_failure(e) && !requiretls && strict => {
                        if self.sender_waives_tls(body).await {
                            tracing::warn!(id = %msg.id, destination = %host, policy = name, error = %e, "TLS-Required: No: the policy's TLS check failed; delivering anyway (downgrade)");
                            true
                        } else {
                            tracing::warn!(id = %msg.id, destination = %host, policy = name, error = %e, "TLS not validated as the policy requires; deferred");
                            false
                        }
                    }
                    Err(e) if tls_failure(e) && !requiretls && testing => {
                        tracing::warn!(id = %msg.id, destination = %host, policy = name, error = %e, "MTA-STS testing mode: TLS not validated; delivering anyway (downgrade)");
                        true
                    }
                    _ => false,
                };
                if fallback {
                    result = self.send(self.services.get(&TlsMode::Opportunistic), &dest, &envelope, body).await;
                }
                let opportunistic = (mode == TlsMode::Opportunistic && matches!(dane, Dane::None)) || fallback;
                let mut downgraded = fallback;
                if let (true, Err(smtp_client::Error::Handshake(e))) = (opportunistic, &result) {
                    tracing::warn!(destination = %host, port, policy = name, error = %e, "STARTTLS failed; retrying once without TLS (downgrade)");
                    result = self.send(self.services.get(&TlsMode::None), &dest, &envelope, body).await;
                    downgraded = true;
                }
                (result, downgraded)
            };
            // A whole attempt has a deadline: per-step timeouts alone let a host that answers
            // slowly hold a slot for many minutes.
            let (result, downgraded) = match tokio::time::timeout(self.config.delivery_deadline, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(destination = %host, port, "delivery attempt deadline passed");
                    last = local_reply(451, (4, 4, 2), &format!("{host}: delivery attempt took too long"));
                    continue;
                }
            };
            match result {
                Ok(out) => {
                    let validated = strict && !downgraded && out.tls.is_some();
                    tracing::info!(id = %msg.id, destination = %host, port, policy = name, tls = out.tls.as_ref().map_or("none", |t| &t.version), validated, "sent to the next hop");
                    let tls_result = match (downgraded, &out.tls, validated) {
                        (true, _, _) => "downgraded",
                        (false, None, _) => "plaintext",
                        (false, Some(_), true) => "validated",
                        (false, Some(_), false) => "opportunistic",
                    };
                    metrics::counter!("tern_outbound_tls_total", "result" => tls_result).increment(1);
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
                // DANE or MTA-STS enforce: a host without valid TLS is passed over, and the
                // message waits.
                Err(e) if strict && tls_failure(&e) => {
                    let rule = if matches!(dane, Dane::None) { "the MTA-STS policy" } else { "DANE" };
                    last = local_reply(451, (4, 7, 5), &format!("{host}: {rule} requires valid TLS: {e}"));
                }
                Err(e) if e.is_permanent() => {
                    let r = e.reply().cloned().unwrap_or_else(|| local_reply(554, (5, 0, 0), &e.to_string()));
                    return all(Outcome::Failed(r, mta));
                }
                Err(e) => {
                    last = e.reply().cloned().unwrap_or_else(|| local_reply(451, (4, 4, 1), &format!("{host}: {e}")));
                    tracing::info!(destination = %host, port, policy = name, error = %e, "delivery attempt failed");
                }
            }
        }
        all(Outcome::Retry(last, None))
    }

    /// Counts a session for the TLS reports of `domain` (when reports are on).
    fn count(
        &self,
        domain: &str,
        desc: &PolicyDesc,
        mx: Option<&str>,
        ip: Option<IpAddr>,
        failure: Option<ResultType>,
    ) {
        if let Some(r) = &self.reports {
            r.record(domain, desc, mx, ip, failure, std::time::SystemTime::now());
        }
    }

    /// Whether the message carries `TLS-Required: No` (read from its head only when needed).
    async fn sender_waives_tls(&self, body: &StoredBody) -> bool {
        body.head(64 * 1024).await.is_ok_and(|h| tls_optional(&h))
    }

    /// The client for a DANE-authenticated host, kept while its records stay the same.
    fn dane_service(&self, host: &str, records: &Arc<[Tlsa]>) -> Option<SmtpService> {
        let mut map = self.dane.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, s)) = map.get(host) {
            if r == records {
                return Some(s.clone());
            }
        }
        let s = client(&self.config, TlsMode::Required, CertVerify::Dane(records.clone()))?;
        map.insert(host.to_string(), (records.clone(), s.clone()));
        Some(s)
    }

    async fn send(
        &self,
        service: Option<&SmtpService>,
        dest: &Dest,
        envelope: &Envelope,
        body: &StoredBody,
    ) -> Result<smtp_client::SendOutcome, smtp_client::Error> {
        let Some(service) = service else {
            return Err(smtp_client::Error::Refused("no SMTP client for this TLS mode"));
        };
        let body = super::client_body(body).await.map_err(smtp_client::Error::Io)?;
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

/// A pooled client for `mode` and `verify`, or `None` with the error logged.
fn client(config: &RelayConfig, mode: TlsMode, verify: CertVerify) -> Option<SmtpService> {
    let ehlo = Domain::parse(&config.hostname).unwrap_or(Domain::Name("localhost".into()));
    let mut o = ClientOptions::new(ehlo);
    o.tls = mode;
    o.verify = verify;
    match SmtpClient::new(o) {
        Ok(c) => Some(SmtpService::new(c, config.max_per_destination.max(1))),
        Err(e) => {
            tracing::error!(error = %e, ?mode, "cannot build SMTP client");
            None
        }
    }
}

/// The TLS report counter in `DATA_DIR/tls-rpt`, or `None` with the error logged.
fn tls_reports(config: &RelayConfig) -> Option<TlsReports> {
    TlsReports::open(config.data_dir.join("tls-rpt"))
        .map_err(|e| tracing::error!(error = %e, "TLS reports are off: cannot keep counts"))
        .ok()
}
