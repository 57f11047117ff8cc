//! Fetching a policy file over HTTPS (RFC 8461 3.3): `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`,
//! a WebPKI-valid certificate for that name, status 200 only (no redirects followed), a
//! `text/plain` body of at most 64 KB, all within a time limit.

use std::time::Duration;

use smtp_client::CertVerify;

use super::{parse_policy, Policy, StsError};
use crate::dns::MxResolver;
use crate::https::{HttpsClient, HttpsError};
use crate::tls_rpt::ResultType;

/// The largest policy file read (RFC 8461 3.3 suggests 64 KB).
pub const MAX_POLICY: usize = 64 * 1024;

/// Why a policy could not be had. Each maps to a TLS-RPT result type (RFC 8460 4.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy host could not be reached or did not answer as RFC 8461 3.3 requires
    /// (address, connection, HTTP status, media type, size, time limit).
    #[error("MTA-STS policy fetch from {host}: {reason}")]
    Fetch {
        /// `mta-sts.DOMAIN`.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The policy host's certificate is not valid for its name.
    #[error("MTA-STS policy host {host}: certificate not valid: {reason}")]
    WebPki {
        /// `mta-sts.DOMAIN`.
        host: String,
        /// What the verifier said.
        reason: String,
    },
    /// The policy file was fetched but does not parse.
    #[error("MTA-STS policy from {host}: {error}")]
    Invalid {
        /// `mta-sts.DOMAIN`.
        host: String,
        /// The parse error.
        error: StsError,
    },
}

impl FetchError {
    /// The RFC 8460 4.3 result type to report.
    pub fn result_type(&self) -> ResultType {
        match self {
            FetchError::Fetch { .. } => ResultType::StsPolicyFetchError,
            FetchError::WebPki { .. } => ResultType::StsWebpkiInvalid,
            FetchError::Invalid { .. } => ResultType::StsPolicyInvalid,
        }
    }
}

/// Fetches policy files.
#[derive(Debug, Clone)]
pub struct Fetcher {
    https: HttpsClient,
    port: u16,
}

impl Fetcher {
    /// Verifies policy hosts as `verify` says (the web PKI in production), connects to `port`
    /// (443; another only in tests), and gives a whole fetch `timeout`.
    pub fn new(verify: &CertVerify, port: u16, timeout: Duration) -> Result<Fetcher, smtp_client::Error> {
        Ok(Fetcher { https: HttpsClient::new(verify, timeout)?, port })
    }

    /// Fetches and parses the policy of `domain`; returns it with its text (for the cache).
    pub async fn fetch(&self, resolver: &dyn MxResolver, domain: &str) -> Result<(Policy, String), FetchError> {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        let fetch_error = |reason: String| FetchError::Fetch { host: host.clone(), reason };
        let response =
            self.https.get(resolver, &host, self.port, "/.well-known/mta-sts.txt", MAX_POLICY).await.map_err(|e| {
                match e {
                    HttpsError::Certificate(reason) => FetchError::WebPki { host: host.clone(), reason },
                    HttpsError::Failed(reason) => fetch_error(reason),
                }
            })?;
        // RFC 8461 3.3: only 200 counts; redirects are not followed.
        if response.status != 200 {
            return Err(fetch_error(format!("HTTP status {} (only 200 is accepted)", response.status)));
        }
        let media = response.content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/plain") {
            return Err(fetch_error(format!("media type {:?}, not text/plain", response.content_type)));
        }
        let invalid = |error| FetchError::Invalid { host: host.clone(), error };
        let text = String::from_utf8(response.body.to_vec())
            .map_err(|_| invalid(StsError::Policy { line: None, reason: "not UTF-8 text" }))?;
        let policy = parse_policy(&text).map_err(invalid)?;
        Ok((policy, text))
    }
}
