//! `tern`: the command-line front end of the Tern SMTP toolkit. It parses arguments and
//! configuration, wires the library crates together and prints; no protocol logic lives here.
//!
//! Exit status: 0 success, 1 failure, 2 usage, 69/75 permanent/temporary delivery failure
//! (`send`), 78 configuration error.

mod commands;
mod config;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tern: SMTP server, relay, sender and load tools.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format for `serve`: human or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the SMTP server and relay.
    Serve(Box<commands::serve::ServeArgs>),
    /// Send one message.
    Send(commands::send::SendArgs),
    /// Inspect or change the mail queue.
    Queue(commands::queue::QueueArgs),
    /// Generate load against a server.
    Bench(commands::bench::BenchArgs),
    /// Accept and discard mail, counting it.
    Sink(commands::sink::SinkArgs),
    /// Show SEND/SOML/SAML messages for a user live.
    Watch(commands::watch::WatchArgs),
    /// Print an argon2id hash of a password (for auth_users in the config).
    Passwd(commands::passwd::PasswdArgs),
    /// Show the day's TLS report counts (RFC 8460).
    TlsReport(commands::tls_report::TlsReportArgs),
    /// DKIM keys: `tern dkim keygen`.
    Dkim(commands::dkim::DkimArgs),
    /// Check a mail server or a domain's MX hosts: TLS, smuggling, relaying, policy.
    Check(commands::check::CheckArgs),
}

fn init_logging(format: Option<&str>, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format.unwrap_or("human") {
        "human" => builder.init(),
        "json" => builder.json().init(),
        other => return Err(format!("unknown log format {other:?} (human or json)")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads;
    let format = match &cli.command {
        Command::Serve(a) => cli.log_format.clone().or_else(|| commands::serve::log_format(a)),
        _ => cli.log_format.clone(),
    };
    // The server logs a line per connection and delivery; the tools only warnings.
    let level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    if let Err(e) = init_logging(format.as_deref(), level) {
        eprintln!("tern: {e}");
        return ExitCode::from(78);
    }
    // Configuration is checked before the runtime starts and before anything binds.
    let command = match cli.command {
        Command::Serve(a) => match commands::serve::settings(*a) {
            Ok(s) => Ok(s),
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::from(78);
            }
        },
        other => Err(other),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Ok(settings) => commands::serve::exec(settings).await.map(|()| ExitCode::SUCCESS),
            Err(Command::Send(a)) => commands::send::exec(a).await,
            Err(Command::Queue(a)) => commands::queue::exec(a).await.map(|()| ExitCode::SUCCESS),
            Err(Command::Sink(a)) => commands::sink::exec(a).await.map(|()| ExitCode::SUCCESS),
            Err(Command::Bench(a)) => commands::bench::exec(a).await.map(|()| ExitCode::SUCCESS),
            Err(Command::Watch(a)) => commands::watch::exec(a).await.map(|()| ExitCode::SUCCESS),
            Err(Command::Passwd(a)) => commands::passwd::exec(a).map(|()| ExitCode::SUCCESS),
            Err(Command::TlsReport(a)) => commands::tls_report::exec(a).map(|()| ExitCode::SUCCESS),
            Err(Command::Dkim(a)) => commands::dkim::exec(a).map(|()| ExitCode::SUCCESS),
            Err(Command::Check(a)) => commands::check::exec(a).await,
            Err(Command::Serve(_)) => Ok(ExitCode::from(70)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::from(1)
        }
    }
}
