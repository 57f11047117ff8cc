//! `tern serve` settings: the TOML config file, overridden by flags, with defaults.
//!
//! A config error names the file, the line and the key, and `tern` exits with status 78
//! (EX_CONFIG) before binding anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The config file: every `tern serve` flag, by the same name with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<String>>,
    pub implicit_tls: Option<Vec<String>>,
    pub hostname: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub local_domain: Option<Vec<String>>,
    pub user: Option<Vec<String>>,
    pub aliases: Option<PathBuf>,
    pub route: Option<Vec<String>>,
    pub relay_host: Option<String>,
    pub trusted_network: Option<Vec<String>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_message_size: Option<u64>,
    pub max_recipients: Option<usize>,
    pub retry_interval: Option<u64>,
    pub queue_lifetime: Option<u64>,
    pub source_routes: Option<String>,
    pub idle_timeout: Option<u64>,
    pub command_timeout: Option<u64>,
    pub data_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub transaction_deadline: Option<u64>,
    pub max_deliveries: Option<usize>,
    pub max_per_destination: Option<usize>,
    pub delivery_deadline: Option<u64>,
    pub log_format: Option<String>,
    pub outbound_tls: Option<String>,
    pub route_tls: Option<Vec<String>>,
    pub outbound_ca: Option<PathBuf>,
    pub dns_server: Option<String>,
    /// `false` turns MTA-STS off (`--no-mta-sts`).
    pub mta_sts: Option<bool>,
    pub mta_sts_port: Option<u16>,
    /// `false` turns TLS reports off (`--no-tls-reports`).
    pub tls_reports: Option<bool>,
    /// `false` turns DANE off (`--no-dane`).
    pub dane: Option<bool>,
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// The LMTP mail store for local mailboxes, HOST:PORT (`--lmtp`).
    pub lmtp: Option<String>,
    /// Where `/metrics` and `/healthz` are served (`--metrics-listen`).
    pub metrics_listen: Option<String>,
    /// A shared queue in PostgreSQL (`--queue`).
    pub queue: Option<String>,
    /// Its lease time in seconds (`--queue-lease`).
    pub queue_lease: Option<u64>,
    /// DKIM keys, "DOMAIN=SELECTOR:KEYFILE" (`--dkim`).
    pub dkim: Option<Vec<String>>,
    /// `false` turns SPF/DKIM/DMARC checks off (`--no-auth-verify`).
    pub auth_verify: Option<bool>,
    /// `true` acts on DMARC policies (`--dmarc-enforce`).
    pub dmarc_enforce: Option<bool>,
    /// AUTH users: name = "password" (only offered under TLS).
    pub auth_users: Option<HashMap<String, String>>,
}

/// A config error: where and what.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config error in {}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about a value from the file (`line` when known) or a flag.
    pub fn value(file: &str, key: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_string(), line, key: Some(key.to_string()), message: message.into() }
    }
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<(FileConfig, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        key: None,
        message: e.to_string(),
    })?;
    match toml::from_str::<FileConfig>(&text) {
        Ok(c) => Ok((c, text)),
        Err(e) => {
            let line = e.span().map(|s| line_of(&text, s.start));
            let message = e.message().to_string();
            let key = e
                .span()
                .and_then(|s| {
                    let l = text[..s.start.min(text.len())].rsplit('\n').next().unwrap_or("").to_string()
                        + text[s.start.min(text.len())..].split('\n').next().unwrap_or("");
                    l.split_once('=').map(|(k, _)| k.trim().to_string())
                })
                .or_else(|| message.split('`').nth(1).map(str::to_string));
            Err(ConfigError { file, line, key, message })
        }
    }
}

/// The 1-based line holding byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The line of `key = ...` in the file text, for errors found after parsing.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key)).map(|i| i + 1)
}

/// This machine's host name.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && smtp_proto::Domain::parse(s).is_ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tern.toml");
        std::fs::write(&p, "hostname = \"mx.test\"\nmax_recipients = \"many\"\n").unwrap();
        let e = load(&p).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("max_recipients")), "{e}");
        std::fs::write(&p, "hostname = \"mx.test\"\n\nlisen = [\"x\"]\n").unwrap();
        let e = load(&p).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("lisen")), "{e}");
        assert!(e
            .to_string()
            .starts_with(&format!("config error in {}, line 3, key `lisen`: unknown field", p.display())));
    }
}
