//! `tern send`: send one message, swaks-style, and print what the server said.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use smtp_client::message::{has_headers, with_minimal_headers};
use smtp_client::{CertVerify, ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::auth::Secret;
use smtp_proto::Domain;
use tokio::io::AsyncReadExt;

/// TLS choice on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TlsArg {
    /// STARTTLS, required.
    Starttls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
    /// No TLS.
    None,
    /// STARTTLS when offered, unauthenticated (RFC 7435).
    Opportunistic,
}

/// Send one message and print the server's replies.
///
/// Exit status: 0 when every recipient was accepted, 1 when some were refused, 75 on a
/// temporary failure, 69 on a permanent one.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  echo hello | tern send --server 127.0.0.1:2525 --from me@example.org --to you@localhost"
)]
pub struct SendArgs {
    /// The server, HOST:PORT.
    #[arg(long)]
    pub server: String,
    /// The sender (empty or `<>` for the null reverse-path).
    #[arg(long)]
    pub from: String,
    /// A recipient; repeat for more.
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// TLS mode.
    #[arg(long, value_enum, default_value = "opportunistic")]
    pub tls: TlsArg,
    /// Do not verify the server's certificate.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Verify the server's certificate against this PEM file.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// AUTH credentials as USER:PASS (needs TLS).
    #[arg(long)]
    pub auth: Option<String>,
    /// Message file, or `-` for standard input (the default).
    #[arg(long, default_value = "-")]
    pub body: String,
    /// Subject, when a header block is added.
    #[arg(long, default_value = "tern send")]
    pub subject: String,
    /// Name to send in EHLO.
    #[arg(long, default_value = "localhost")]
    pub ehlo: String,
}

pub async fn exec(args: SendArgs) -> anyhow::Result<std::process::ExitCode> {
    let (host, port) = crate::commands::split_host_port(&args.server)?;
    let mut options = ClientOptions::new(Domain::parse(&args.ehlo)?);
    options.tls = match args.tls {
        TlsArg::Starttls => TlsMode::Required,
        TlsArg::Implicit => TlsMode::Implicit,
        TlsArg::None => TlsMode::None,
        TlsArg::Opportunistic => TlsMode::Opportunistic,
    };
    options.verify = match (&args.ca, args.insecure, args.tls) {
        (Some(ca), _, _) => CertVerify::CaFile(ca.clone()),
        (None, true, _) | (None, false, TlsArg::Opportunistic) => CertVerify::Insecure,
        _ => CertVerify::WebPki,
    };
    if let Some(auth) = &args.auth {
        let (u, p) = auth.split_once(':').ok_or_else(|| anyhow::anyhow!("--auth wants USER:PASS"))?;
        options.auth = Some((u.to_string(), Secret::new(p)));
    }
    let mut env = Envelope::from_str_addr(&args.from)?;
    for to in &args.to {
        env = env.to_str_addr(to)?;
    }
    let mut body = Vec::new();
    if args.body == "-" {
        tokio::io::stdin().read_to_end(&mut body).await?;
    } else {
        body = tokio::fs::read(&args.body).await.map_err(|e| anyhow::anyhow!("{}: {e}", args.body))?;
    }
    let body = if has_headers(&body) {
        body.into()
    } else {
        let from = if args.from.is_empty() { "<>".to_string() } else { args.from.clone() };
        with_minimal_headers(&from, &args.to, &args.subject, &args.ehlo, &body)?
    };
    let client = SmtpClient::new(options)?;
    let result = async {
        let mut conn = client.connect(&host, port).await?;
        let out = conn.send(&env, body.into()).await?;
        let _ = conn.quit().await;
        Ok::<_, smtp_client::Error>(out)
    }
    .await;
    match result {
        Ok(out) => {
            for (rcpt, reply) in &out.recipients {
                println!("{rcpt}: {reply}");
            }
            match &out.reply {
                Some(r) => println!("{r}"),
                None => println!("no recipient accepted; message not sent"),
            }
            Ok(std::process::ExitCode::from(if out.all_accepted() { 0 } else { 1 }))
        }
        Err(e) => {
            eprintln!("tern send: {e}");
            Ok(std::process::ExitCode::from(if e.is_transient() { 75 } else { 69 }))
        }
    }
}
