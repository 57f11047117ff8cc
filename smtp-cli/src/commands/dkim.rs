//! `tern dkim keygen`: a new DKIM key and the DNS record to publish for it.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

/// DKIM keys for `tern serve --dkim`.
#[derive(Debug, Args)]
pub struct DkimArgs {
    #[command(subcommand)]
    pub command: DkimCommand,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Write a new private key (mode 0600) and print the TXT record to publish.
    #[command(after_help = "Example:\n  tern dkim keygen --domain example.org --selector s2026 --ed25519")]
    Keygen(KeygenArgs),
}

/// `tern dkim keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The signing domain (d=).
    #[arg(long)]
    pub domain: String,
    /// The selector (s=): the record goes at SELECTOR._domainkey.DOMAIN.
    #[arg(long)]
    pub selector: String,
    /// An Ed25519 key (RFC 8463) instead of RSA-2048. Not every verifier knows Ed25519 yet:
    /// publish an RSA key beside it under another selector.
    #[arg(long)]
    pub ed25519: bool,
    /// Where to write the key. Default: SELECTOR.DOMAIN.pem in the current directory. An
    /// existing file is never overwritten.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn exec(args: DkimArgs) -> anyhow::Result<()> {
    let DkimCommand::Keygen(a) = args.command;
    let spec = format!("{}={}:key", a.domain, a.selector);
    let spec: smtp_relay::msgauth::DkimSpec = spec
        .parse()
        .map_err(|_| anyhow::anyhow!("--domain {:?} and --selector {:?} must be domain names", a.domain, a.selector))?;
    let out = a.out.unwrap_or_else(|| PathBuf::from(format!("{}.{}.pem", spec.selector, spec.domain)));
    let (pem, record) = smtp_relay::msgauth::generate_key(a.ed25519)?;
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&out)
            .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?
    };
    f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    // A TXT string holds at most 255 octets (RFC 1035 3.3.14): longer records are split.
    let strings: Vec<String> =
        record.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    println!("; key written to {} ({})", out.display(), if a.ed25519 { "Ed25519" } else { "RSA-2048" });
    println!("{}._domainkey.{}. IN TXT ( {} )", spec.selector, spec.domain, strings.join(" "));
    println!("; then: tern serve --dkim {}={}:{}", spec.domain, spec.selector, out.display());
    Ok(())
}
