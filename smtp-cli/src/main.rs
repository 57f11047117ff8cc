//! `tern`: the command-line front end of the Tern SMTP toolkit. It parses arguments and
//! configuration, wires the library crates together and prints; no protocol logic lives here.

mod commands;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tern: SMTP server, relay, sender and load tools.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one message.
    Send(commands::send::SendArgs),
    /// Accept and discard mail, counting it.
    Sink(commands::sink::SinkArgs),
    /// Generate load against a server.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Send(a) => commands::send::exec(a).await,
            Command::Sink(a) => commands::sink::exec(a).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(a) => commands::bench::exec(a).await.map(|()| ExitCode::SUCCESS),
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
