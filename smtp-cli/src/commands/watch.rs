//! `tern watch USER`: a live terminal for RFC 788's SEND, SOML and SAML.

use std::path::PathBuf;

use clap::Args;
use smtp_relay::deliver::terminal::TerminalClient;

/// Show messages sent to USER with SEND, SOML or SAML as they arrive.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  tern watch alice --data-dir ./tern-data")]
pub struct WatchArgs {
    /// The local user to watch for.
    pub user: String,
    /// Data directory of the running server.
    #[arg(long, default_value = "./tern-data")]
    pub data_dir: PathBuf,
}

pub async fn exec(args: WatchArgs) -> anyhow::Result<()> {
    let socket = args.data_dir.join("control.sock");
    let mut term = TerminalClient::watch(&socket, &args.user)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the server at {}: {e}", socket.display()))?;
    let mut signals = crate::signals::Shutdown::install()?;
    println!("watching for {} (Ctrl-C to stop)", args.user);
    loop {
        tokio::select! {
            _ = signals.wait() => return Ok(()),
            m = term.next_message() => match m? {
                Some(body) => {
                    println!("----- message -----");
                    println!("{}", crate::commands::printable_lines(&body).trim_end());
                    println!("-------------------");
                }
                None => {
                    println!("server closed the terminal");
                    return Ok(());
                }
            },
        }
    }
}
