//! One module per subcommand: its arguments and `exec`.

pub mod bench;
pub mod queue;
pub mod send;
pub mod serve;
pub mod sink;
pub mod watch;

/// Splits `HOST:PORT` (IPv6 hosts in brackets).
pub fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("expected HOST:PORT, got {s}"))?;
    let port = port.parse().map_err(|_| anyhow::anyhow!("bad port in {s}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}
