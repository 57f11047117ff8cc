//! `tern check`: is a mail server (or a domain's MX hosts) safe and standard?

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use smtp_relay::check::{CheckOptions, Report};

/// Check a domain's MX hosts (or one server): banner, STARTTLS and TLS versions, certificate,
/// STARTTLS injection, end-of-data smuggling, open relay, hygiene, and the domain's MTA-STS,
/// DANE and TLS-RPT. One line per check: ✓ pass, ✗ fail, ! warning, · information. Exit status
/// 0 only when nothing failed. Probes are bounded and stop at RCPT; mail is sent only to --rcpt.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tern check example.org\n  tern check --server mx.example.org:25 --rcpt postmaster@example.org"
)]
pub struct CheckArgs {
    /// The domain whose MX hosts to check (with its transport policy).
    #[arg(required_unless_present = "server")]
    pub domain: Option<String>,
    /// Check this one server, HOST:PORT, instead of a domain's MX hosts.
    #[arg(long, conflicts_with = "domain")]
    pub server: Option<String>,
    /// The name the server's certificate must be valid for (with --server; default its host).
    #[arg(long)]
    pub name: Option<String>,
    /// A recipient at the server: the end-of-data (smuggling) probes deliver one short message
    /// per form to it. Without it they are skipped.
    #[arg(long)]
    pub rcpt: Option<String>,
    /// The DNS server, HOST:PORT (default: the system's).
    #[arg(long)]
    pub dns_server: Option<String>,
    /// DNSKEY records to trust for DNSSEC instead of the root's key (a private zone).
    #[arg(long)]
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// CA certificates (PEM) to judge certificates by, instead of the web PKI roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The SMTP port of MX hosts.
    #[arg(long, default_value_t = 25)]
    pub port: u16,
    /// Seconds to wait for any one reply or handshake.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Our EHLO name.
    #[arg(long, default_value = "tern-check.invalid")]
    pub helo: String,
    /// One JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
    /// The HTTPS port MTA-STS policies are fetched from. For tests only.
    #[arg(long, hide = true, default_value_t = 443)]
    pub mta_sts_port: u16,
}

pub async fn exec(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let options = CheckOptions {
        helo: args.helo.clone(),
        rcpt: args.rcpt.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        verify: args.ca.clone().map_or(smtp_client::CertVerify::WebPki, smtp_client::CertVerify::CaFile),
        mta_sts_port: args.mta_sts_port,
    };
    let reports = match (&args.server, &args.domain) {
        (Some(server), _) => {
            let (host, port) = crate::commands::split_host_port(server)?;
            let addr = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port),
                Err(_) => tokio::net::lookup_host((host.as_str(), port))
                    .await?
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("{host}: no address"))?,
            };
            let name = args.name.clone().unwrap_or(host);
            vec![smtp_relay::check::check_server(addr, &name, &options).await]
        }
        (None, Some(domain)) => {
            let dns = match &args.dns_server {
                Some(d) => Some(d.parse().map_err(|_| anyhow::anyhow!("--dns-server {d:?}: expected HOST:PORT"))?),
                None => None,
            };
            let dnssec = smtp_relay::dns::Dnssec::On(args.dnssec_trust_anchor.clone());
            let resolver = smtp_relay::dns::HickoryMx::with_dnssec(dns, &dnssec)?;
            smtp_relay::check::check_domain(domain, &resolver, args.port, &options).await
        }
        (None, None) => anyhow::bail!("give a DOMAIN or --server HOST:PORT"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            print(r);
        }
    }
    let failed: usize =
        reports.iter().map(|r| r.findings.iter().filter(|f| f.status == smtp_relay::check::Status::Fail).count()).sum();
    if !args.json {
        println!("{}", if failed == 0 { "no check failed".to_string() } else { format!("{failed} checks failed") });
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print(r: &Report) {
    match r.addr {
        Some(a) => println!("{} [{a}]", r.host),
        None => println!("{} (domain)", r.host),
    }
    for f in &r.findings {
        let detail = if f.detail.is_empty() { String::new() } else { format!(": {}", f.detail) };
        println!("  {} {:<9} {}{detail}", f.status.mark(), f.group, f.check);
    }
}
