//! `tern tls-report`: the day's TLS-RPT counts (RFC 8460) of a data directory: per recipient
//! domain and policy, the sessions that met it and the failures by result type.

use std::path::PathBuf;

use clap::Args;
use smtp_relay::tls_rpt::{read_day, utc_date, DayCounts};

/// Show today's TLS report counts.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  tern tls-report --data-dir ./tern-data --json")]
pub struct TlsReportArgs {
    /// Data directory.
    #[arg(long, default_value = "./tern-data")]
    pub data_dir: PathBuf,
    /// Another UTC day than today, YYYY-MM-DD.
    #[arg(long)]
    pub date: Option<String>,
    /// Print JSON (the counts as kept) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn exec(args: TlsReportArgs) -> anyhow::Result<()> {
    let date = args.date.unwrap_or_else(|| utc_date(std::time::SystemTime::now()));
    let valid = date.len() == 10 && date.bytes().enumerate().all(|(i, b)| matches!(i, 4 | 7) == (b == b'-'));
    anyhow::ensure!(valid && !date.contains(".."), "--date must be YYYY-MM-DD, got {date:?}");
    let dir = args.data_dir.join("tls-rpt");
    let path = dir.join(format!("{date}.json"));
    let sent = dir.join(format!("{date}.json.sent"));
    let counts =
        read_day(if path.exists() { &path } else { &sent }).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
    } else {
        print!("{}", table(&date, &counts));
    }
    Ok(())
}

/// The counts as a table: one line per domain and policy, then one per failure kind.
fn table(date: &str, counts: &DayCounts) -> String {
    let mut out = format!("TLS sessions on {date} (UTC), by policy domain\n");
    if counts.is_empty() {
        out.push_str("  none counted (only sessions under an MTA-STS or DANE policy are)\n");
    }
    for (domain, policies) in counts {
        for p in policies {
            let failed: u64 = p.failures.iter().map(|f| f.count).sum();
            out.push_str(&format!("{domain:<30} {:<16} ok {:>6}  failed {:>6}\n", p.policy.kind, p.success, failed));
            for f in &p.failures {
                let at = f.mx.as_deref().unwrap_or("-");
                out.push_str(&format!("    {:<26} {:>6}  {at}\n", f.result_type, f.count));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_relay::tls_rpt::{PolicyDesc, ResultType, TlsReports};

    #[test]
    fn the_table_lists_domains_policies_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let r = TlsReports::open(dir.path()).unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_061_600);
        r.record("b.test", &PolicyDesc::none(), None, None, Some(ResultType::StsPolicyFetchError), t);
        r.record("b.test", &PolicyDesc::none(), None, None, Some(ResultType::StsPolicyFetchError), t);
        let text = table("2026-11-30", &r.day("2026-11-30").unwrap());
        assert!(text.contains("b.test") && text.contains("no-policy-found"), "{text}");
        assert!(text.contains("sts-policy-fetch-error") && text.contains("     2  -"), "{text}");
        assert!(table("2026-11-30", &DayCounts::new()).contains("none counted"));
    }
}
