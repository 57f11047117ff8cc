//! SMTP TLS reporting (RFC 8460), sending side: every delivery session held to an MTA-STS or
//! DANE policy is counted, per recipient (policy) domain and UTC day, as a success or as a
//! failure of one of the result types of RFC 8460 4.3; the counts are kept in
//! `DATA_DIR/tls-rpt/YYYY-MM-DD.json` (rewritten on each change: counts, not mail, so not
//! fsynced). Once a day is over, each domain that publishes `_smtp._tls` TXT
//! `v=TLSRPTv1; rua=...` gets the day's aggregate report (RFC 8460 4.4, gzip): by mail through
//! the relay's own queue for `mailto:` and by HTTPS POST for `https:`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dns::MxResolver;
use crate::https::{HttpsClient, HttpsUrl};

/// Why a session failed (RFC 8460 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultType {
    /// The receiver did not offer STARTTLS.
    StarttlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// Any other validation failure (also: an MX host a policy does not name).
    ValidationFailure,
    /// No TLSA record matched the certificate (DANE).
    TlsaInvalid,
    /// The TLSA records could not be validated with DNSSEC.
    DnssecInvalid,
    /// DANE was required but no usable records were found.
    DaneRequired,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// The MTA-STS policy did not parse.
    StsPolicyInvalid,
    /// The MTA-STS policy host's certificate was not valid.
    StsWebpkiInvalid,
}

impl ResultType {
    /// The name RFC 8460 gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The result type of a failed TLS session (`dane`: held to TLSA records).
    pub fn of(e: &smtp_client::Error, dane: bool) -> ResultType {
        use rustls::CertificateError as C;
        let cert = match e {
            smtp_client::Error::TlsUnavailable => return ResultType::StarttlsNotSupported,
            smtp_client::Error::Handshake(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            _ => None,
        };
        match cert {
            Some(rustls::Error::InvalidCertificate(c)) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => ResultType::CertificateHostMismatch,
                C::Expired | C::ExpiredContext { .. } => ResultType::CertificateExpired,
                C::ApplicationVerificationFailure if dane => ResultType::TlsaInvalid,
                C::UnknownIssuer | C::BadSignature => ResultType::CertificateNotTrusted,
                _ => ResultType::ValidationFailure,
            },
            _ => ResultType::ValidationFailure,
        }
    }
}

/// The policy a session was held to, as a report names it (RFC 8460 4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDesc {
    /// `sts`, `tlsa` or `no-policy-found`.
    #[serde(rename = "policy-type")]
    pub kind: String,
    /// The policy: the MTA-STS policy's lines, or the TLSA records in presentation form.
    #[serde(rename = "policy-string", default, skip_serializing_if = "Vec::is_empty")]
    pub strings: Vec<String>,
    /// MTA-STS `mx` patterns, or the MX host of TLSA records.
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx: Vec<String>,
}

impl PolicyDesc {
    /// An MTA-STS policy.
    pub fn sts(p: &crate::mta_sts::Policy) -> PolicyDesc {
        let mode = match p.mode {
            crate::mta_sts::Mode::Enforce => "enforce",
            crate::mta_sts::Mode::Testing => "testing",
            crate::mta_sts::Mode::None => "none",
        };
        let mut strings = vec!["version: STSv1".to_string(), format!("mode: {mode}")];
        strings.extend(p.mx.iter().map(|m| format!("mx: {m}")));
        strings.push(format!("max_age: {}", p.max_age));
        PolicyDesc { kind: "sts".into(), strings, mx: p.mx.clone() }
    }

    /// The TLSA records of one MX host.
    pub fn tlsa(host: &str, records: &[smtp_client::Tlsa]) -> PolicyDesc {
        let strings = records
            .iter()
            .map(|r| {
                let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
                format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
            })
            .collect();
        PolicyDesc { kind: "tlsa".into(), strings, mx: vec![host.to_string()] }
    }

    /// No policy could be had (its fetch failed).
    pub fn none() -> PolicyDesc {
        PolicyDesc { kind: "no-policy-found".into(), strings: Vec::new(), mx: Vec::new() }
    }
}

/// Failed sessions of one kind to one place (RFC 8460 4.4 `failure-details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// The RFC 8460 4.3 result type.
    #[serde(rename = "result-type")]
    pub result_type: String,
    /// The MX host tried.
    #[serde(rename = "receiving-mx-hostname", default, skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    /// Its address.
    #[serde(rename = "receiving-ip", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// How many sessions failed so.
    #[serde(rename = "failed-session-count")]
    pub count: u64,
}

/// The counts for one policy of one domain on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// The policy.
    pub policy: PolicyDesc,
    /// Sessions that met it.
    pub success: u64,
    /// Sessions that did not, by kind.
    pub failures: Vec<FailureDetail>,
}

/// One day's counts: by policy domain.
pub type DayCounts = BTreeMap<String, Vec<PolicyCounts>>;

/// The UTC date (`YYYY-MM-DD`) of `t`.
pub fn utc_date(t: SystemTime) -> String {
    let d = time::OffsetDateTime::from(t).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The counter: today's counts in memory, every day's on disk.
#[derive(Debug)]
pub struct TlsReports {
    dir: PathBuf,
    today: Mutex<(String, DayCounts)>,
}

impl TlsReports {
    /// Counts kept in `dir` (created if needed).
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<TlsReports> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(TlsReports { dir, today: Mutex::new((String::new(), DayCounts::new())) })
    }

    /// Counts one session for `domain`: a success, or a failure of `failure`'s kind.
    pub fn record(
        &self,
        domain: &str,
        policy: &PolicyDesc,
        mx: Option<&str>,
        ip: Option<IpAddr>,
        failure: Option<ResultType>,
        now: SystemTime,
    ) {
        let date = utc_date(now);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut guard = self.today.lock().unwrap_or_else(|e| e.into_inner());
        if guard.0 != date {
            let loaded = self.day(&date).unwrap_or_default();
            *guard = (date.clone(), loaded);
        }
        let policies = guard.1.entry(domain).or_default();
        let counts = match policies.iter_mut().position(|p| p.policy == *policy) {
            Some(i) => &mut policies[i],
            None => {
                policies.push(PolicyCounts { policy: policy.clone(), success: 0, failures: Vec::new() });
                policies.last_mut().expect("just pushed")
            }
        };
        match failure {
            None => counts.success += 1,
            Some(r) => {
                let (mx, kind) = (mx.map(str::to_string), r.as_str());
                match counts.failures.iter_mut().find(|f| f.result_type == kind && f.mx == mx && f.ip == ip) {
                    Some(f) => f.count += 1,
                    None => counts.failures.push(FailureDetail { result_type: kind.into(), mx, ip, count: 1 }),
                }
            }
        }
        let json = serde_json::to_vec_pretty(&guard.1).unwrap_or_default();
        let (path, tmp) = (self.path(&date), self.dir.join(format!(".{date}.tmp")));
        if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, "cannot write TLS report counts");
        }
    }

    /// The counts of `date` (`YYYY-MM-DD`), empty when none were kept.
    pub fn day(&self, date: &str) -> std::io::Result<DayCounts> {
        read_day(&self.path(date))
    }

    /// Days before `today` whose reports have not been sent.
    pub fn unsent_days(&self, today: &str) -> Vec<String> {
        let mut days: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .filter(|d| d.len() == 10 && d.as_str() < today)
            .collect();
        days.sort();
        days
    }

    /// Marks a day's reports sent (its file is kept as `DATE.json.sent`).
    pub fn mark_sent(&self, date: &str) -> std::io::Result<()> {
        let path = self.path(date);
        std::fs::rename(&path, path.with_extension("json.sent"))
    }

    fn path(&self, date: &str) -> PathBuf {
        self.dir.join(format!("{date}.json"))
    }
}

/// Reads a day's counts from `path`.
pub fn read_day(path: &Path) -> std::io::Result<DayCounts> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DayCounts::new()),
        Err(e) => Err(e),
    }
}

/// The report URIs of a `_smtp._tls` TXT record: `v=TLSRPTv1; rua=URI[,URI...]` (RFC 8460 3).
pub fn parse_record(txt: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=TLSRPTv1") {
        return Err("does not start with v=TLSRPTv1");
    }
    for f in fields {
        if let Some(uris) = f.strip_prefix("rua=") {
            let uris: Vec<String> = uris.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
            if uris.is_empty() {
                return Err("empty rua");
            }
            return Ok(uris);
        }
    }
    Err("no rua")
}

/// The aggregate report (RFC 8460 4.4) of `domain` for `date`, as JSON.
pub fn report_json(submitter: &str, date: &str, domain: &str, policies: &[PolicyCounts]) -> String {
    let policies: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| {
            let mut policy = serde_json::to_value(&p.policy).unwrap_or_default();
            policy["policy-domain"] = domain.into();
            let failed: u64 = p.failures.iter().map(|f| f.count).sum();
            serde_json::json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": p.success,
                    "total-failure-session-count": failed,
                },
                "failure-details": p.failures,
            })
        })
        .collect();
    serde_json::json!({
        "organization-name": submitter,
        "date-range": {
            "start-datetime": format!("{date}T00:00:00Z"),
            "end-datetime": format!("{date}T23:59:59Z"),
        },
        "contact-info": format!("postmaster@{submitter}"),
        "report-id": report_id(submitter, date, domain),
        "policies": policies,
    })
    .to_string()
}

fn report_id(submitter: &str, date: &str, domain: &str) -> String {
    format!("{date}T00:00:00Z_{domain}@{submitter}")
}

/// Gzip (RFC 8460 5.3: reports travel compressed).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The report message for mail (RFC 8460 5.3): headers and a multipart/report body whose
/// report part is the gzipped JSON, base64.
pub fn report_mail(submitter: &str, date: &str, domain: &str, to: &str, gz: &[u8], now: SystemTime) -> Vec<u8> {
    use base64::Engine;
    let id = report_id(submitter, date, domain);
    let boundary = format!("tlsrpt-{}", now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let lines: Vec<&str> = b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!(
        "From: TLS reports <postmaster@{submitter}>\r\nTo: <{to}>\r\n\
Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>\r\n\
Date: {}\r\nMessage-ID: <{}.tlsrpt@{submitter}>\r\nTLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {submitter}\r\n\
Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n\
--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
This is an aggregate TLS report from {submitter} for {domain}, {date} (RFC 8460).\r\n\r\n\
--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment;\r\n\tfilename=\"{submitter}!{domain}!{date}T00:00:00Z!{date}T23:59:59Z.json.gz\"\r\n\r\n\
{}\r\n--{boundary}--\r\n",
        smtp_proto::date::rfc5322_date(now),
        boundary,
        lines.join("\r\n"),
    )
    .into_bytes()
}

/// A report to go by mail: recipient and message.
#[derive(Debug, Clone)]
pub struct MailReport {
    /// The `mailto:` address.
    pub to: String,
    /// The message.
    pub message: Vec<u8>,
}

/// Sends the reports of finished days.
#[derive(Debug)]
pub struct Reporter {
    submitter: String,
    https: HttpsClient,
}

impl Reporter {
    /// Reports from `submitter` (this host's name); HTTPS peers verified as `verify` says.
    pub fn new(submitter: &str, verify: &smtp_client::CertVerify) -> Result<Reporter, smtp_client::Error> {
        Ok(Reporter { submitter: submitter.to_string(), https: HttpsClient::new(verify, Duration::from_secs(60))? })
    }

    /// For each finished day: each counted domain's report goes to its `rua` URIs (HTTPS
    /// posts here; mail reports returned for the caller to queue); the day is marked sent.
    pub async fn send_due(&self, reports: &TlsReports, resolver: &dyn MxResolver, now: SystemTime) -> Vec<MailReport> {
        let mut mail = Vec::new();
        for date in reports.unsent_days(&utc_date(now)) {
            let counts = match reports.day(&date) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%date, error = %e, "unreadable TLS report counts; skipped");
                    DayCounts::new()
                }
            };
            for (domain, policies) in &counts {
                let uris = match resolver.txt(&format!("_smtp._tls.{domain}")).await {
                    Ok(txts) => txts.iter().find_map(|t| parse_record(t).ok()).unwrap_or_default(),
                    Err(e) => {
                        tracing::info!(%domain, error = %e, "TLS-RPT record look-up failed; no report");
                        continue;
                    }
                };
                if uris.is_empty() {
                    continue;
                }
                let json = report_json(&self.submitter, &date, domain, policies);
                let gz = Bytes::from(gzip(json.as_bytes()));
                for uri in uris {
                    if let Some(to) = uri.strip_prefix("mailto:") {
                        let to = to.split('?').next().unwrap_or(to).to_string();
                        let message = report_mail(&self.submitter, &date, domain, &to, &gz, now);
                        mail.push(MailReport { to, message });
                    } else if let Some(url) = HttpsUrl::parse(&uri) {
                        match self.https.post(resolver, &url, "application/tlsrpt+gzip", gz.clone()).await {
                            Ok(r) if (200..300).contains(&r.status) => {
                                tracing::info!(%domain, %date, %uri, "TLS report posted")
                            }
                            Ok(r) => tracing::warn!(%domain, %date, %uri, status = r.status, "TLS report refused"),
                            Err(e) => tracing::warn!(%domain, %date, %uri, error = %e, "TLS report not posted"),
                        }
                    } else {
                        tracing::info!(%domain, %uri, "TLS report URI not supported");
                    }
                }
            }
            if let Err(e) = reports.mark_sent(&date) {
                tracing::warn!(%date, error = %e, "cannot mark TLS reports sent");
            }
        }
        mail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_records() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:r@x.test,https://r.x.test/p").unwrap(),
            ["mailto:r@x.test", "https://r.x.test/p"]
        );
        assert_eq!(parse_record("v=TLSRPTv2; rua=mailto:r@x.test"), Err("does not start with v=TLSRPTv1"));
        assert_eq!(parse_record("v=TLSRPTv1;"), Err("no rua"));
        assert_eq!(parse_record("v=TLSRPTv1; rua="), Err("empty rua"));
    }

    #[test]
    fn counts_add_up_by_policy_and_kind_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let r = TlsReports::open(dir.path()).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_061_600); // 2026-11-30 18:00 UTC
        let sts = PolicyDesc {
            kind: "sts".into(),
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx: vec!["mx.b.test".into()],
        };
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        r.record("B.test.", &sts, Some("mx.b.test"), None, None, t);
        r.record("b.test", &sts, Some("mx.b.test"), None, None, t);
        for _ in 0..3 {
            r.record("b.test", &sts, Some("mx.b.test"), Some(ip), Some(ResultType::CertificateNotTrusted), t);
        }
        r.record("c.test", &PolicyDesc::none(), None, None, Some(ResultType::StsPolicyFetchError), t);
        let day = TlsReports::open(dir.path()).unwrap().day("2026-11-30").unwrap();
        assert_eq!(day["b.test"][0].success, 2);
        assert_eq!(
            day["b.test"][0].failures,
            [FailureDetail {
                result_type: "certificate-not-trusted".into(),
                mx: Some("mx.b.test".into()),
                ip: Some(ip),
                count: 3
            }]
        );
        assert_eq!(day["c.test"][0].policy.kind, "no-policy-found");
        let json: serde_json::Value =
            serde_json::from_str(&report_json("a.test", "2026-11-30", "b.test", &day["b.test"])).unwrap();
        assert_eq!(json["policies"][0]["summary"]["total-failure-session-count"], 3);
        assert_eq!(json["policies"][0]["policy"]["policy-domain"], "b.test");
        assert_eq!(json["date-range"]["start-datetime"], "2026-11-30T00:00:00Z");
        assert_eq!(json["policies"][0]["failure-details"][0]["receiving-ip"], "127.0.0.2");
        // Only finished days are due; a sent day is not due again.
        assert!(r.unsent_days("2026-11-30").is_empty());
        assert_eq!(r.unsent_days("2026-12-01"), ["2026-11-30"]);
        r.mark_sent("2026-11-30").unwrap();
        assert!(r.unsent_days("2026-12-01").is_empty());
    }

    #[test]
    fn tls_errors_map_to_result_types() {
        let cert = |c: rustls::CertificateError| {
            smtp_client::Error::Handshake(std::io::Error::other(rustls::Error::InvalidCertificate(c)))
        };
        use rustls::CertificateError as C;
        assert_eq!(ResultType::of(&smtp_client::Error::TlsUnavailable, false), ResultType::StarttlsNotSupported);
        assert_eq!(ResultType::of(&cert(C::NotValidForName), false), ResultType::CertificateHostMismatch);
        assert_eq!(ResultType::of(&cert(C::Expired), false), ResultType::CertificateExpired);
        assert_eq!(ResultType::of(&cert(C::UnknownIssuer), false), ResultType::CertificateNotTrusted);
        assert_eq!(ResultType::of(&cert(C::ApplicationVerificationFailure), true), ResultType::TlsaInvalid);
        assert_eq!(ResultType::of(&cert(C::ApplicationVerificationFailure), false), ResultType::ValidationFailure);
        assert_eq!(ResultType::DnssecInvalid.as_str(), "dnssec-invalid");
    }
}
