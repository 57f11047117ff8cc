//! One module per subcommand: its arguments and `exec`.

pub mod bench;
pub mod check;
pub mod dkim;
pub mod passwd;
pub mod queue;
pub mod send;
pub mod serve;
pub mod sink;
pub mod tls_report;
pub mod watch;

/// Splits `HOST:PORT` (IPv6 hosts in brackets).
pub fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("expected HOST:PORT, got {s}"))?;
    let port = port.parse().map_err(|_| anyhow::anyhow!("bad port in {s}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// Text someone else wrote (message headers, terminal messages), made safe to print: CRLF
/// becomes a newline and every other control character but TAB is escaped.
pub fn printable_lines(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.split("\r\n").map(|l| smtp_proto::escape_controls(l).into_owned()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_lines_escape_what_could_drive_a_terminal() {
        assert_eq!(
            super::printable_lines(b"Subject: \x1b]0;owned\x07\r\nX: a\tb\r\n"),
            "Subject: \\x1b]0;owned\\x07\nX: a\tb\n"
        );
    }
}
