//! Finding the next hop for a domain: MX records (RFC 5321 5.1), null MX (RFC 7505), and the
//! address fallback — behind a trait so tests can answer without a DNS server.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, Resolver};
use rand::seq::SliceRandom;

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
}

/// Orders MX records: by preference, shuffled among equal preferences (RFC 5321 5.1).
pub fn order_mx(mut records: Vec<(u16, String)>) -> Vec<String> {
    records.shuffle(&mut rand::rng());
    records.sort_by_key(|(pref, _)| *pref);
    records.into_iter().map(|(_, h)| h).collect()
}

/// hickory-resolver, with the system configuration or a given DNS server.
pub struct HickoryMx {
    resolver: Resolver<TokioConnectionProvider>,
}

impl HickoryMx {
    /// Uses `server` (e.g. a local test DNS server), or the system's resolv.conf when `None`.
    pub fn new(server: Option<SocketAddr>) -> Result<HickoryMx, DnsError> {
        let builder = match server {
            Some(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => Resolver::builder_tokio().map_err(|e| DnsError(e.to_string()))?,
        };
        Ok(HickoryMx { resolver: builder.build() })
    }
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
