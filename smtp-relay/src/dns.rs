//! Finding the next hop for a domain: MX records (RFC 5321 5.1), null MX (RFC 7505), and the
//! address fallback; TXT records for policies; and, validated with DNSSEC, the MX records and
//! TLSA records DANE needs (RFC 7672) — behind a trait so tests can answer without a DNS server.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hickory_proto::dnssec::{Proof, TrustAnchors};
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, Resolver};
use rand::seq::SliceRandom;
use smtp_client::Tlsa;

/// The answer for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Hosts to try, in order (preference, random among equals).
    Hosts(Vec<String>),
    /// The domain publishes a null MX: it accepts no mail (permanent failure).
    NullMx,
    /// The domain does not exist (permanent failure).
    NoSuchDomain,
}

/// A DNS failure that may go away (transient).
#[derive(Debug, Clone, thiserror::Error)]
#[error("DNS lookup failed: {0}")]
pub struct DnsError(pub String);

/// Looks up mail exchangers and addresses.
#[async_trait::async_trait]
pub trait MxResolver: Send + Sync + 'static {
    /// The hosts to try for `domain`: its MX hosts, else the domain itself (implicit MX).
    async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError>;
    /// The addresses of `host`.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
    /// The TXT records at `name`, each one's strings joined; empty when there are none. The
    /// default knows no TXT records (a resolver for tests that only routes mail).
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let _ = name;
        Ok(Vec::new())
    }
    /// [`MxResolver::mx`] validated with DNSSEC: the answer and whether it is secure. A bogus
    /// answer is an error (RFC 7672 2.2.1: such mail is deferred). The default validates
    /// nothing: every answer is insecure.
    async fn mx_dnssec(&self, domain: &str) -> Result<(MxAnswer, bool), DnsError> {
        Ok((self.mx(domain).await?, false))
    }
    /// The TLSA records of `_PORT._tcp.HOST` (RFC 7672 2.2.2), validated with DNSSEC. A bogus
    /// answer or a failed look-up is an error. The default: insecure.
    async fn tlsa(&self, host: &str, port: u16) -> Result<TlsaAnswer, DnsError> {
        let _ = (host, port);
        Ok(TlsaAnswer::Insecure)
    }
}

/// What DNSSEC says about a host's TLSA records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// Validated: these records (none, when their absence is proven).
    Secure(Vec<Tlsa>),
    /// Not signed: DANE does not apply.
    Insecure,
}

/// Orders MX records: by preference, shuffled among equal preferences (RFC 5321 5.1).
pub fn order_mx(mut records: Vec<(u16, String)>) -> Vec<String> {
    records.shuffle(&mut rand::rng());
    records.sort_by_key(|(pref, _)| *pref);
    records.into_iter().map(|(_, h)| h).collect()
}

/// DNSSEC validation for [`HickoryMx`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dnssec {
    /// No validation: DANE is off.
    Off,
    /// Validate from the root's trust anchor (built into hickory), or from the DNSKEY records
    /// in a file (zone-file lines, for a private or test zone).
    On(Option<std::path::PathBuf>),
}

/// hickory-resolver, with the system configuration or a given DNS server; a second,
/// validating resolver for DANE's look-ups.
pub struct HickoryMx {
    resolver: Resolver<TokioConnectionProvider>,
    secure: Option<Resolver<TokioConnectionProvider>>,
}

impl HickoryMx {
    /// Uses `server` (e.g. a local test DNS server), or the system's resolv.conf when `None`;
    /// no DNSSEC validation.
    pub fn new(server: Option<SocketAddr>) -> Result<HickoryMx, DnsError> {
        Self::with_dnssec(server, &Dnssec::Off)
    }

    /// [`HickoryMx::new`] with DNSSEC validation as `dnssec` says.
    pub fn with_dnssec(server: Option<SocketAddr>, dnssec: &Dnssec) -> Result<HickoryMx, DnsError> {
        let builder = || -> Result<_, DnsError> {
            Ok(match server {
                Some(addr) => {
                    let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                    Resolver::builder_with_config(
                        ResolverConfig::from_parts(None, vec![], group),
                        TokioConnectionProvider::default(),
                    )
                }
                None => Resolver::builder_tokio().map_err(|e| DnsError(e.to_string()))?,
            })
        };
        let secure = match dnssec {
            Dnssec::Off => None,
            Dnssec::On(anchor) => {
                let mut b = builder()?;
                b.options_mut().validate = true;
                if let Some(path) = anchor {
                    b = b.with_trust_anchor(Arc::new(trust_anchors(path)?));
                }
                Some(b.build())
            }
        };
        Ok(HickoryMx { resolver: builder()?.build(), secure })
    }

    /// SPF, DKIM and DMARC look-ups (`mail-auth`) through the same (non-validating) resolver
    /// and its cache.
    pub fn authenticator(&self) -> mail_auth::MessageAuthenticator {
        mail_auth::MessageAuthenticator(self.resolver.clone())
    }
}

/// Reads DNSKEY records (zone-file lines) to trust; an error names the file.
pub fn trust_anchors(path: &Path) -> Result<TrustAnchors, DnsError> {
    let anchors = TrustAnchors::from_file(path).map_err(|e| DnsError(format!("{}: {e}", path.display())))?;
    if anchors.is_empty() {
        return Err(DnsError(format!("{}: no DNSKEY record", path.display())));
    }
    Ok(anchors)
}

/// Secure when every record is; an error when any is bogus.
fn proven<'a>(proofs: impl Iterator<Item = Proof> + 'a, what: &str) -> Result<bool, DnsError> {
    let mut secure = true;
    for p in proofs {
        match p {
            Proof::Secure => {}
            Proof::Insecure => secure = false,
            Proof::Bogus | Proof::Indeterminate => {
                return Err(DnsError(format!("{what}: DNSSEC validation failed ({p})")))
            }
        }
    }
    Ok(secure)
}

fn fqdn(domain: &str) -> String {
    if domain.ends_with('.') {
        domain.to_string()
    } else {
        format!("{domain}.")
    }
}

fn is_nx(e: &ResolveError) -> bool {
    e.is_nx_domain()
}

#[async_trait::async_trait]
impl MxResolver for HickoryMx {
    async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        match self.resolver.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .iter()
                    .map(|mx| (mx.preference(), mx.exchange().to_utf8().trim_end_matches('.').to_string()))
                    .collect();
                // RFC 7505: a single MX with an empty exchange (".") means "no mail here".
                if records.len() == 1 && records[0].1.is_empty() {
                    return Ok(MxAnswer::NullMx);
                }
                let hosts = order_mx(records.into_iter().filter(|(_, h)| !h.is_empty()).collect());
                Ok(MxAnswer::Hosts(hosts))
            }
            Err(e) if is_nx(&e) => Ok(MxAnswer::NoSuchDomain),
            // RFC 5321 5.1: no MX records: the domain itself is the implicit MX.
            Err(e) if e.is_no_records_found() => Ok(MxAnswer::Hosts(vec![domain.to_string()])),
            Err(e) => Err(DnsError(e.to_string())),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) if is_nx(&e) || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(DnsError(e.to_string())),
        }
    }

    async fn mx_dnssec(&self, domain: &str) -> Result<(MxAnswer, bool), DnsError> {
        let Some(secure) = &self.secure else { return Ok((self.mx(domain).await?, false)) };
        match secure.lookup(fqdn(domain), RecordType::MX).await {
            Ok(lookup) => {
                let sec = proven(lookup.dnssec_iter().map(|r| r.proof()), &format!("MX of {domain}"))?;
                let records: Vec<(u16, String)> = lookup
                    .iter()
                    .filter_map(|r| match r {
                        RData::MX(mx) => {
                            Some((mx.preference(), mx.exchange().to_utf8().trim_end_matches('.').to_string()))
                        }
                        _ => None,
                    })
                    .collect();
                if records.len() == 1 && records[0].1.is_empty() {
                    return Ok((MxAnswer::NullMx, sec));
                }
                let hosts = order_mx(records.into_iter().filter(|(_, h)| !h.is_empty()).collect());
                Ok((MxAnswer::Hosts(hosts), sec))
            }
            Err(e) if is_nx(&e) => Ok((MxAnswer::NoSuchDomain, false)),
            Err(e) if e.is_no_records_found() => Ok((MxAnswer::Hosts(vec![domain.to_string()]), false)),
            Err(e) => Err(DnsError(format!("MX of {domain}: {e}"))),
        }
    }

    async fn tlsa(&self, host: &str, port: u16) -> Result<TlsaAnswer, DnsError> {
        let Some(secure) = &self.secure else { return Ok(TlsaAnswer::Insecure) };
        let name = format!("_{port}._tcp.{}", fqdn(host));
        match secure.lookup(name.clone(), RecordType::TLSA).await {
            Ok(lookup) => {
                if !proven(lookup.dnssec_iter().map(|r| r.proof()), &name)? {
                    return Ok(TlsaAnswer::Insecure);
                }
                let records = lookup
                    .iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage().into(),
                            selector: t.selector().into(),
                            matching: t.matching().into(),
                            data: t.cert_data().to_vec(),
                        }),
                        _ => None,
                    })
                    .collect();
                Ok(TlsaAnswer::Secure(records))
            }
            // A validated negative answer (hickory checks the NSEC proof, else it is an error
            // below): securely no TLSA records.
            Err(e) if is_nx(&e) || e.is_no_records_found() => Ok(TlsaAnswer::Secure(Vec::new())),
            Err(e) => Err(DnsError(format!("{name}: {e}"))),
        }
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(l) => Ok(l
                .iter()
                .map(|t| t.txt_data().iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                .collect()),
            Err(e) if is_nx(&e) || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(DnsError(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_with_shuffled_ties() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = order_mx(vec![(20, "c".into()), (10, "a".into()), (10, "b".into()), (30, "d".into())]);
            assert_eq!(&o[2..], ["c", "d"]);
            seen_first.insert(o[0].clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are tried in random order");
    }
}
