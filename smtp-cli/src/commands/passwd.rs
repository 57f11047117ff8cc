//! `tern passwd`: an argon2id hash of a password, for `auth_users` in the config file.

use std::io::BufRead;

use clap::Args;
use smtp_relay::password::PasswordHashString;

/// Print an argon2id hash of the password read from standard input (one line), for the
/// `auth_users` table of the config file. Passwords are never stored in clear.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  echo 'correct horse' | tern passwd")]
pub struct PasswdArgs {}

pub fn exec(_: PasswdArgs) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    let hash = PasswordHashString::hash(password).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", hash.as_str());
    Ok(())
}
