//! The policy cache (RFC 8461 5.1): in memory and on disk under `DATA_DIR/mta-sts/`, so that a
//! restart keeps every policy. A policy is fetched again when the TXT record's id changes or its
//! `max_age` has run out; a failed fetch keeps the cached policy while it is unexpired.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::fetch::{FetchError, Fetcher};
use super::{parse_policy, parse_record, Mode, Policy};
use crate::dns::MxResolver;

/// A policy as cached: the TXT id it was fetched under and when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The `_mta-sts` record's id when the policy was fetched.
    pub id: String,
    /// When it was fetched (Unix seconds).
    pub fetched: u64,
    /// The policy.
    pub policy: Policy,
}

impl Cached {
    /// Whether the policy may still be used at `now` (Unix seconds).
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }
}

/// What a look-up found: the policy to apply, if any, and a failure to report (a failed fetch,
/// with or without a cached policy to fall back on).
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The policy in force (`None`: the domain has none, or it expired; `mode: none` counts as
    /// none).
    pub policy: Option<Arc<Cached>>,
    /// Why the policy could not be refreshed.
    pub failure: Option<FetchError>,
}

/// Policies by domain.
#[derive(Debug)]
pub struct StsCache {
    dir: Option<PathBuf>,
    fetcher: Fetcher,
    entries: Mutex<HashMap<String, Option<Arc<Cached>>>>,
}

impl StsCache {
    /// A cache kept in `dir` (created if needed; memory only when `None`).
    pub fn new(dir: Option<PathBuf>, fetcher: Fetcher) -> std::io::Result<StsCache> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)?;
        }
        Ok(StsCache { dir, fetcher, entries: Mutex::default() })
    }

    /// The policy in force for `domain` at `now` (Unix seconds), following RFC 8461 5.1.
    pub async fn policy(&self, resolver: &dyn MxResolver, domain: &str, now: u64) -> Found {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain).filter(|c| c.fresh(now));
        let record = match resolver.txt(&format!("_mta-sts.{domain}")).await {
            // RFC 8461 3.1: records not starting with v=STSv1 are ignored; other than exactly
            // one means no usable record (a cached policy still holds: 5.1).
            Ok(txts) => {
                let mut ours = txts.iter().filter(|t| t.starts_with("v=STSv1"));
                match (ours.next(), ours.next()) {
                    (Some(one), None) => parse_record(one).ok(),
                    _ => None,
                }
            }
            Err(e) => {
                tracing::info!(%domain, error = %e, "MTA-STS TXT look-up failed; using the cached policy if any");
                None
            }
        };
        let Some(record) = record else {
            return Found { policy: cached.filter(|c| c.policy.mode != Mode::None), failure: None };
        };
        if let Some(c) = cached.as_ref().filter(|c| c.id == record.id) {
            return Found { policy: Some(c.clone()).filter(|c| c.policy.mode != Mode::None), failure: None };
        }
        match self.fetcher.fetch(resolver, &domain).await {
            Ok((policy, text)) => {
                let fresh = Arc::new(Cached { id: record.id, fetched: now, policy });
                tracing::info!(%domain, id = %fresh.id, mode = ?fresh.policy.mode, max_age = fresh.policy.max_age, "MTA-STS policy fetched");
                self.store(&domain, &fresh, &text);
                Found { policy: Some(fresh).filter(|c| c.policy.mode != Mode::None), failure: None }
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, cached = cached.is_some(), "MTA-STS policy refresh failed");
                Found { policy: cached.filter(|c| c.policy.mode != Mode::None), failure: Some(e) }
            }
        }
    }

    /// The cached policy of `domain` (lower case), from memory or else from disk.
    fn cached(&self, domain: &str) -> Option<Arc<Cached>> {
        if let Some(c) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(domain) {
            return c.clone();
        }
        let loaded = self.path(domain).and_then(|p| std::fs::read_to_string(p).ok()).and_then(|s| decode(&s));
        let loaded = loaded.map(Arc::new);
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(domain.to_string(), loaded.clone());
        loaded
    }

    /// Keeps a fetched policy in memory and on disk (written whole, then renamed into place; a
    /// cache lost in a crash is fetched again, so it is not fsynced).
    fn store(&self, domain: &str, c: &Arc<Cached>, text: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(domain.to_string(), Some(c.clone()));
        let Some(path) = self.path(domain) else { return };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let data = format!("{} {}\n{text}", c.id, c.fetched);
        if let Err(e) = std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(%domain, error = %e, "cannot write the MTA-STS policy cache");
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The cache file of a domain; `None` for names that are not plain host names.
    fn path(&self, domain: &str) -> Option<PathBuf> {
        let plain = !domain.is_empty()
            && domain.len() <= 253
            && !domain.starts_with('.')
            && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        self.dir.as_ref().filter(|_| plain).map(|d| d.join(domain))
    }
}

/// A cache file: `ID FETCHED` on the first line, then the policy text as fetched.
fn decode(s: &str) -> Option<Cached> {
    let (first, text) = s.split_once('\n')?;
    let (id, fetched) = first.split_once(' ')?;
    let record = parse_record(&format!("v=STSv1; id={id}")).ok()?;
    Some(Cached { id: record.id, fetched: fetched.parse().ok()?, policy: parse_policy(text).ok()? })
}
