//! MTA-STS (RFC 8461), sending side: the `_mta-sts` TXT record, the policy file, matching MX
//! host names against a policy ([`mod@self`]); fetching the policy over HTTPS ([`fetch`]); and the
//! policy cache that decides when to fetch ([`cache`]). Delivery applies the result
//! (`deliver::remote`).

pub mod cache;
pub mod fetch;

pub use cache::{Cached, Found, StsCache};
pub use fetch::{FetchError, Fetcher};

/// Why a TXT record or a policy file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The `_mta-sts` TXT record (RFC 8461 3.1).
    #[error("MTA-STS TXT record: {0}")]
    Record(&'static str),
    /// The policy file (RFC 8461 3.2), with the 1-based line when one is to blame.
    #[error("MTA-STS policy{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Policy {
        /// The line, when one is to blame.
        line: Option<usize>,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The `_mta-sts.DOMAIN` TXT record: the policy's current id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// Changes whenever the policy changes (1 to 32 letters and digits).
    pub id: String,
}

/// Parses one TXT record (its strings joined): `v=STSv1; id=...;` with `v` first, other fields
/// ignored (RFC 8461 3.1).
pub fn parse_record(txt: &str) -> Result<StsRecord, StsError> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(StsError::Record("does not start with v=STSv1"));
    }
    let mut id = None;
    for f in fields {
        let (k, v) = f.split_once('=').ok_or(StsError::Record("a field without '='"))?;
        if k.trim() == "id" {
            let v = v.trim();
            if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(StsError::Record("id must be 1 to 32 letters and digits"));
            }
            id = Some(v.to_string());
        }
    }
    Ok(StsRecord { id: id.ok_or(StsError::Record("no id"))? })
}

/// What a sender does with a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only MX hosts the policy names, over TLS valid for the MX name; else defer.
    Enforce,
    /// Deliver as usual, and report failures (TLS-RPT).
    Testing,
    /// No policy (a domain retiring MTA-STS).
    None,
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: Mode,
    /// MX patterns: host names, or `*.` and a domain for any one label below it.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached (at most 31557600, one year).
    pub max_age: u64,
}

/// The largest `max_age` (RFC 8461 3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Parses a policy file: `key: value` lines (CRLF or LF); `version: STSv1`, `mode`, `max_age`
/// and, unless the mode is `none`, at least one `mx` are required; unknown keys are ignored
/// (RFC 8461 3.2).
pub fn parse_policy(text: &str) -> Result<Policy, StsError> {
    let bad = |line: usize, reason| StsError::Policy { line: Some(line), reason };
    let (mut version, mut mode, mut max_age, mut mx) = (false, None, None, Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or(bad(i + 1, "not `key: value`"))?;
        let value = value.trim();
        match key.trim() {
            "version" if value == "STSv1" => version = true,
            "version" => return Err(bad(i + 1, "version must be STSv1")),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(bad(i + 1, "mode must be enforce, testing or none")),
                })
            }
            "max_age" => {
                let n: u64 = (!value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| value.parse().ok())
                    .flatten()
                    .ok_or(bad(i + 1, "max_age must be a number of seconds"))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" if valid_pattern(value) => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            "mx" => return Err(bad(i + 1, "mx must be a host name or *.domain")),
            _ => {}
        }
    }
    let missing = |reason| StsError::Policy { line: None, reason };
    if !version {
        return Err(missing("no `version: STSv1`"));
    }
    let mode = mode.ok_or(missing("no mode"))?;
    let max_age = max_age.ok_or(missing("no max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(missing("no mx"));
    }
    Ok(Policy { mode, mx, max_age })
}

fn valid_pattern(p: &str) -> bool {
    let host = p.strip_prefix("*.").unwrap_or(p).trim_end_matches('.');
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Whether `host` matches one `mx` pattern: equal ignoring case and a trailing dot, or, for
/// `*.domain`, exactly one label in front of `domain` (RFC 8461 4.1).
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
        None => host == pattern,
    }
}

impl Policy {
    /// Whether the policy lets mail go to MX host `host`.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        assert_eq!(parse_record("v=STSv1; id=20160831085700Z;").unwrap().id, "20160831085700Z");
        assert_eq!(parse_record("v=STSv1;id=abc; ext=1").unwrap().id, "abc", "unknown fields are ignored");
        for (bad, why) in [
            ("id=abc; v=STSv1", "does not start with v=STSv1"),
            ("v=STSv2; id=abc", "does not start with v=STSv1"),
            ("v=STSv1", "no id"),
            ("v=STSv1; id=", "id must be 1 to 32 letters and digits"),
            ("v=STSv1; id=a_b", "id must be 1 to 32 letters and digits"),
            ("v=STSv1; id=123456789012345678901234567890123", "id must be 1 to 32 letters and digits"),
            ("v=STSv1; junk", "a field without '='"),
        ] {
            assert_eq!(parse_record(bad), Err(StsError::Record(why)), "{bad:?}");
        }
    }

    #[test]
    fn the_rfc_example_policy() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let p = parse_policy(text).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net", "backupmx.example.com"]);
        assert!(p.allows("mail.example.com") && p.allows("MAIL.Example.com.") && p.allows("mx1.example.net"));
        assert!(!p.allows("a.b.example.net"), "one label only");
        assert!(!p.allows("example.net") && !p.allows("mail.example.com.evil.test") && !p.allows("evil.test"));
    }

    #[test]
    fn bad_policies_say_what_and_where() {
        let cases = [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", StsError::Policy { line: None, reason: "no `version: STSv1`" }),
            ("version: STSv2\n", StsError::Policy { line: Some(1), reason: "version must be STSv1" }),
            (
                "version: STSv1\nmode: strict\n",
                StsError::Policy { line: Some(2), reason: "mode must be enforce, testing or none" },
            ),
            (
                "version: STSv1\nmode: testing\nmax_age: -5\n",
                StsError::Policy { line: Some(3), reason: "max_age must be a number of seconds" },
            ),
            (
                "version: STSv1\nmode: testing\nmx: bad host\n",
                StsError::Policy { line: Some(3), reason: "mx must be a host name or *.domain" },
            ),
            ("version: STSv1\nmode: testing\nmax_age: 5\n", StsError::Policy { line: None, reason: "no mx" }),
            ("version: STSv1\nmx: a.test\nmax_age: 5\n", StsError::Policy { line: None, reason: "no mode" }),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", StsError::Policy { line: None, reason: "no max_age" }),
            ("version: STSv1\ngarbage\n", StsError::Policy { line: Some(2), reason: "not `key: value`" }),
        ];
        for (text, want) in cases {
            assert_eq!(parse_policy(text), Err(want.clone()), "{text:?}");
        }
        assert_eq!(
            StsError::Policy { line: Some(2), reason: "mode must be enforce, testing or none" }.to_string(),
            "MTA-STS policy, line 2: mode must be enforce, testing or none"
        );
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\nextra: ignored\n").unwrap();
        assert_eq!((none.mode, none.max_age, none.mx.len()), (Mode::None, MAX_AGE_LIMIT, 0), "capped, no mx needed");
    }
}
