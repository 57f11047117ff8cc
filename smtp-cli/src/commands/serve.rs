//! `tern serve`: the mail server and relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use smtp_proto::auth::AuthMechanism;
use smtp_relay::password::PasswordHashString;
use smtp_relay::{Cidr, Directory, FsQueue, Relay, RelayConfig, SourceRoutes};
use smtp_server::{tls, Server, ServerOptions};

use crate::config::{self, ConfigError, FileConfig};

/// Run the SMTP server and relay.
///
/// With no flags and no config file it listens on 127.0.0.1:2525, keeps its data in
/// ./tern-data, delivers mail for any user at this host or localhost into
/// ./tern-data/mail/USER/new, offers STARTTLS with a generated certificate, and relays for
/// loopback clients. Every flag can also be set in a TOML file given with --config (flags win).
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  tern serve --listen 0.0.0.0:25 --hostname mx.example.org --local-domain example.org"
)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Plain listener with STARTTLS (repeatable). Default 127.0.0.1:2525.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Implicit-TLS listener, RFC 8314 (repeatable).
    #[arg(long)]
    pub implicit_tls: Vec<String>,
    /// Host name for the greeting and Received lines. Default: the system's.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Data directory (queue/, mail/, tls/). Default ./tern-data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A domain delivered here (repeatable). Default: the host name and localhost.
    #[arg(long)]
    pub local_domain: Vec<String>,
    /// A local user (repeatable). Without any, every local part is accepted.
    #[arg(long)]
    pub user: Vec<String>,
    /// Aliases file (`name: member, member`).
    #[arg(long)]
    pub aliases: Option<PathBuf>,
    /// Static route DOMAIN=HOST:PORT (repeatable).
    #[arg(long)]
    pub route: Vec<String>,
    /// Send all non-local mail through HOST:PORT.
    #[arg(long)]
    pub relay_host: Option<String>,
    /// A network allowed to relay, CIDR (repeatable). Default: loopback.
    #[arg(long)]
    pub trusted_network: Vec<String>,
    /// Certificate chain, PEM (with --tls-key). Default: generated into DATA_DIR/tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key, PEM.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest message, bytes. Default 26214400.
    #[arg(long)]
    pub max_message_size: Option<u64>,
    /// Most recipients per message. Default 100.
    #[arg(long)]
    pub max_recipients: Option<usize>,
    /// First retry after a transient failure, seconds (doubling). Default 300.
    #[arg(long)]
    pub retry_interval: Option<u64>,
    /// Give up and notify the sender after this many seconds. Default 432000 (5 days).
    #[arg(long)]
    pub queue_lifetime: Option<u64>,
    /// RFC 788 source routes: honor or strip. Default strip.
    #[arg(long)]
    pub source_routes: Option<String>,
    /// Close idle connections after this many seconds: sets both --command-timeout and
    /// --data-timeout. Default 300.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Longest wait for the next command, seconds (RFC 5321 4.5.3.2.7: at least 300). Default 300.
    #[arg(long)]
    pub command_timeout: Option<u64>,
    /// Longest wait for the next block of message data, seconds (RFC 5321 4.5.3.2.6). Default 300.
    #[arg(long)]
    pub data_timeout: Option<u64>,
    /// Most connections at once. Default 4096.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections at once from one IP address. Default 256.
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Longest transaction, MAIL to end of data, in seconds (besides per-read timeouts).
    /// Default 600.
    #[arg(long)]
    pub transaction_deadline: Option<u64>,
    /// Most outbound deliveries at once. Default 20.
    #[arg(long)]
    pub max_deliveries: Option<usize>,
    /// Most outbound deliveries at once to one host. Default 5.
    #[arg(long)]
    pub max_per_destination: Option<usize>,
    /// Longest delivery attempt to one host, in seconds. Default 600.
    #[arg(long)]
    pub delivery_deadline: Option<u64>,
    /// TLS for outbound deliveries: opportunistic (default), required or none.
    #[arg(long)]
    pub outbound_tls: Option<String>,
    /// Outbound TLS for one destination domain, DOMAIN=opportunistic|required|none (repeatable).
    #[arg(long)]
    pub route_tls: Vec<String>,
    /// CA certificates (PEM) that verified outbound TLS and MTA-STS policy hosts are checked
    /// against, instead of the web PKI roots.
    #[arg(long)]
    pub outbound_ca: Option<PathBuf>,
    /// The DNS server for MX, address and policy look-ups, HOST:PORT. Default: the system's
    /// (/etc/resolv.conf).
    #[arg(long)]
    pub dns_server: Option<String>,
    /// Do not apply recipient domains' MTA-STS policies (RFC 8461; on by default).
    #[arg(long)]
    pub no_mta_sts: bool,
    /// Do not count TLS sessions or send daily TLS reports (RFC 8460; on by default).
    #[arg(long)]
    pub no_tls_reports: bool,
    /// Do not use DANE (RFC 7672; on by default: MX and TLSA records are validated with
    /// DNSSEC, which needs a DNS server that passes DNSSEC records on).
    #[arg(long)]
    pub no_dane: bool,
    /// DNSKEY records (zone-file lines) to trust for DNSSEC instead of the root's key: for a
    /// private or test zone.
    #[arg(long)]
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Sign mail from trusted and authenticated clients whose From domain is DOMAIN with DKIM,
    /// DOMAIN=SELECTOR:KEYFILE (repeatable; make a key with `tern dkim keygen`).
    #[arg(long, value_name = "DOMAIN=SELECTOR:KEYFILE")]
    pub dkim: Vec<String>,
    /// Do not check SPF, DKIM and DMARC on mail from other clients (on by default; the
    /// result goes in an Authentication-Results header).
    #[arg(long)]
    pub no_auth_verify: bool,
    /// Act on DMARC policies: refuse mail that fails DMARC at a p=reject domain (550 5.7.1),
    /// mark p=quarantine failures (X-Tern-DMARC header), defer on DNS failures (451 4.7.0).
    #[arg(long)]
    pub dmarc_enforce: bool,
    /// Deliver local mailboxes over LMTP (RFC 2033) to a mail store at HOST:PORT or at a Unix
    /// socket (an absolute path), such as Dovecot's or Cyrus's, instead of into DATA_DIR/mail
    /// Maildirs.
    #[arg(long, value_name = "HOST:PORT|PATH")]
    pub lmtp: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics and health at /healthz (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Keep the queue in PostgreSQL, shared by every node given the same URL
    /// (postgres://USER:PASS@HOST:PORT/DB[?sslmode=require&sslrootcert=CA.pem]), instead of
    /// DATA_DIR/queue.
    #[arg(long, value_name = "postgres://…")]
    pub queue: Option<String>,
    /// Seconds a node's lease on a shared-queue message lasts unless renewed (default 30): how
    /// long a dead node's messages wait before another node takes them.
    #[arg(long, value_name = "SECS")]
    pub queue_lease: Option<u64>,
    /// The HTTPS port MTA-STS policies are fetched from. For tests only. Default 443.
    #[arg(long, hide = true)]
    pub mta_sts_port: Option<u16>,
}

/// The resolved settings: the libraries' defaults with the file and the flags applied.
pub struct Settings {
    pub hostname: String,
    pub data_dir: PathBuf,
    /// Listeners, TLS, session limits and timeouts (starts from `ServerOptions::default()`).
    pub server: ServerOptions,
    /// Routing, queue and delivery (starts from `RelayConfig::new`).
    pub relay: RelayConfig,
    /// Where `/metrics` and `/healthz` are served (off when `None`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A shared queue's URL (`None`: the data directory's spool) and lease time.
    pub queue: Option<(String, Duration)>,
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn many(flag: Vec<String>, file: Option<Vec<String>>) -> Vec<String> {
    if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag
    }
}

fn host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?))
}

/// Merges flags over the file over defaults and validates everything, before anything binds.
pub fn settings(args: ServeArgs) -> Result<Settings, ConfigError> {
    let (file, text, name) = match &args.config {
        Some(p) => {
            let (c, t) = config::load(p)?;
            (c, t, p.display().to_string())
        }
        None => (FileConfig::default(), String::new(), "command line".to_string()),
    };
    let mut server = server_options(&args, &file);
    let err = |key: &str, msg: String| ConfigError::value(&name, key, config::line_of_key(&text, key), msg);
    let addrs = |key: &str, v: Vec<String>| -> Result<Vec<SocketAddr>, ConfigError> {
        v.iter().map(|a| a.parse().map_err(|_| err(key, format!("{a:?} is not an address:port")))).collect()
    };
    let mut listen = addrs("listen", many(args.listen, file.listen))?;
    let implicit_tls = addrs("implicit_tls", many(args.implicit_tls, file.implicit_tls))?;
    if listen.is_empty() && implicit_tls.is_empty() {
        listen.push(SocketAddr::from(([127, 0, 0, 1], 2525)));
    }
    let hostname = pick(args.hostname, file.hostname).unwrap_or_else(config::system_hostname);
    if smtp_proto::Domain::parse(&hostname).is_err() {
        return Err(err("hostname", format!("{hostname:?} is not a host name")));
    }
    let data_dir = pick(args.data_dir, file.data_dir).unwrap_or_else(|| PathBuf::from("./tern-data"));
    let mut domains = many(args.local_domain, file.local_domain);
    if domains.is_empty() {
        domains = vec![hostname.clone(), "localhost".into()];
    }
    for d in &domains {
        if smtp_proto::Domain::parse(d).is_err() {
            return Err(err("local_domain", format!("{d:?} is not a domain")));
        }
    }
    let users = many(args.user, file.user);
    let mut directory = Directory::new(domains, users);
    if let Some(a) = pick(args.aliases, file.aliases) {
        directory.load_aliases(&a).map_err(|e| ConfigError {
            file: e.file.clone(),
            line: (e.line > 0).then_some(e.line),
            key: Some("aliases".into()),
            message: e.message,
        })?;
    }
    let mut relay = RelayConfig::new(&hostname, &data_dir);
    relay.directory = directory;
    for r in many(args.route, file.route) {
        let (d, hp) = r.split_once('=').ok_or_else(|| err("route", format!("{r:?} is not DOMAIN=HOST:PORT")))?;
        let hp = host_port(hp).ok_or_else(|| err("route", format!("{r:?} is not DOMAIN=HOST:PORT")))?;
        relay.routes.insert(d.to_lowercase(), hp);
    }
    if let Some(h) = pick(args.relay_host, file.relay_host) {
        relay.relay_host = Some(host_port(&h).ok_or_else(|| err("relay_host", format!("{h:?} is not HOST:PORT")))?);
    }
    let trusted = many(args.trusted_network, file.trusted_network);
    if !trusted.is_empty() {
        relay.trusted = trusted
            .iter()
            .map(|c| c.parse::<Cidr>().map_err(|e| err("trusted_network", e)))
            .collect::<Result<_, _>>()?;
    }
    if let Some(s) = pick(args.retry_interval, file.retry_interval) {
        relay.retry_interval = Duration::from_secs(s.max(1));
        relay.max_retry_interval = relay.max_retry_interval.max(relay.retry_interval);
    }
    if let Some(s) = pick(args.queue_lifetime, file.queue_lifetime) {
        relay.queue_lifetime = Duration::from_secs(s);
    }
    if let Some(m) = pick(args.source_routes, file.source_routes) {
        relay.source_routes = m.parse::<SourceRoutes>().map_err(|e| err("source_routes", e))?;
    }
    let tls_mode = |key: &str, m: &str| match m {
        "opportunistic" => Ok(smtp_client::TlsMode::Opportunistic),
        "required" => Ok(smtp_client::TlsMode::Required),
        "none" => Ok(smtp_client::TlsMode::None),
        _ => Err(err(key, format!("{m:?}: expected opportunistic, required or none"))),
    };
    if let Some(m) = pick(args.outbound_tls, file.outbound_tls) {
        relay.outbound_tls = tls_mode("outbound_tls", &m)?;
    }
    for r in many(args.route_tls, file.route_tls) {
        let (d, m) = r.split_once('=').ok_or_else(|| err("route_tls", format!("{r:?} is not DOMAIN=MODE")))?;
        relay.tls_per_domain.insert(d.to_lowercase(), tls_mode("route_tls", m)?);
    }
    if let Some(ca) = pick(args.outbound_ca, file.outbound_ca) {
        relay.outbound_ca = Some(ca);
    }
    if let Some(d) = pick(args.dns_server, file.dns_server) {
        let addr = d.parse().map_err(|_| err("dns_server", format!("{d:?} is not an address and port (HOST:PORT)")))?;
        relay.dns_server = Some(addr);
    }
    if args.no_mta_sts || file.mta_sts == Some(false) {
        relay.mta_sts = false;
    }
    if args.no_tls_reports || file.tls_reports == Some(false) {
        relay.tls_reports = false;
    }
    if args.no_dane || file.dane == Some(false) {
        relay.dane = false;
    }
    if let Some(f) = pick(args.dnssec_trust_anchor, file.dnssec_trust_anchor) {
        smtp_relay::dns::trust_anchors(&f).map_err(|e| err("dnssec_trust_anchor", e.to_string()))?;
        relay.dnssec_trust_anchor = Some(f);
    }
    if let Some(p) = pick(args.mta_sts_port, file.mta_sts_port) {
        relay.mta_sts_port = p;
    }
    if let Some(l) = pick(args.lmtp, file.lmtp) {
        relay.lmtp = Some(if l.starts_with('/') {
            smtp_relay::deliver::lmtp::LmtpTarget::Unix(l.into())
        } else {
            let (host, port) = crate::commands::split_host_port(&l).map_err(|e| err("lmtp", e.to_string()))?;
            smtp_relay::deliver::lmtp::LmtpTarget::Tcp(host, port)
        });
    }
    for d in many(args.dkim, file.dkim) {
        relay.dkim.push(d.parse().map_err(|e: smtp_relay::msgauth::MsgAuthError| err("dkim", e.to_string()))?);
    }
    // Keys are loaded now, so a bad one stops the start with its file named.
    smtp_relay::msgauth::MessageAuth::new(&hostname, &relay.dkim, None, false)
        .map_err(|e| err("dkim", e.to_string()))?;
    if args.no_auth_verify || file.auth_verify == Some(false) {
        relay.auth_verify = false;
    }
    if args.dmarc_enforce || file.dmarc_enforce == Some(true) {
        relay.dmarc_enforce = true;
    }
    if let Some(n) = pick(args.max_deliveries, file.max_deliveries) {
        relay.max_deliveries = n.max(1);
    }
    if let Some(n) = pick(args.max_per_destination, file.max_per_destination) {
        relay.max_per_destination = n.max(1);
    }
    if let Some(s) = pick(args.delivery_deadline, file.delivery_deadline) {
        relay.delivery_deadline = Duration::from_secs(s.max(1));
    }
    let mut auth_users = HashMap::new();
    for (user, hash) in file.auth_users.unwrap_or_default() {
        // A plaintext password is refused, naming the entry: hashes only (tern passwd).
        let key = format!("auth_users.{user}");
        let h = PasswordHashString::parse(&hash)
            .map_err(|e| ConfigError::value(&name, &key, config::line_of_key(&text, &user), e.to_string()))?;
        auth_users.insert(user, h);
    }
    relay.auth_users = auth_users;
    prepare_data_dir(&data_dir).map_err(|m| err("data_dir", m))?;
    let tls = match (pick(args.tls_cert, file.tls_cert), pick(args.tls_key, file.tls_key)) {
        (Some(c), Some(k)) => tls::from_pem_files(&c, &k).map_err(|e| err("tls_cert", e.to_string()))?,
        (None, None) => {
            tls::self_signed(&data_dir.join("tls"), &hostname).map_err(|e| err("tls_cert", e.to_string()))?
        }
        _ => return Err(err("tls_cert", "tls_cert and tls_key go together".into())),
    };
    (server.listen, server.implicit_tls, server.tls) = (listen, implicit_tls, Some(tls));
    server.session.hostname = hostname.clone();
    // The relay honours REQUIRETLS (RFC 8689): it is offered on TLS sessions.
    server.session.requiretls = true;
    if !relay.auth_users.is_empty() {
        server.session.auth_mechanisms = vec![AuthMechanism::Plain, AuthMechanism::Login];
    }
    let metrics_listen = match pick(args.metrics_listen, file.metrics_listen) {
        Some(a) => Some(a.parse().map_err(|_| err("metrics_listen", format!("{a:?} is not an address and port")))?),
        None => None,
    };
    let queue = match pick(args.queue, file.queue) {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let lease = args.queue_lease.or(file.queue_lease).unwrap_or(30).max(1);
            Some((url, Duration::from_secs(lease)))
        }
        Some(_) => return Err(err("queue", "expected a postgres://… URL".to_string())),
        None => None,
    };
    Ok(Settings { hostname, data_dir, server, relay, metrics_listen, queue })
}

/// Limits and timeouts: `ServerOptions::default()` with the file's values, then the flags'.
fn server_options(args: &ServeArgs, file: &FileConfig) -> ServerOptions {
    let mut server = ServerOptions::default();
    let secs = |s: u64| Duration::from_secs(s.max(1));
    if let Some(n) = args.max_message_size.or(file.max_message_size) {
        server.session.max_message_size = n;
    }
    if let Some(n) = args.max_recipients.or(file.max_recipients) {
        server.session.max_recipients = n.max(1);
    }
    // --idle-timeout sets both waits; the specific flags win over it.
    if let Some(t) = args.idle_timeout.or(file.idle_timeout) {
        (server.command_timeout, server.data_timeout) = (secs(t), secs(t));
    }
    if let Some(t) = args.command_timeout.or(file.command_timeout) {
        server.command_timeout = secs(t);
    }
    if let Some(t) = args.data_timeout.or(file.data_timeout) {
        server.data_timeout = secs(t);
    }
    if let Some(n) = args.max_connections.or(file.max_connections) {
        server.max_connections = n.max(1);
    }
    if let Some(n) = args.max_connections_per_ip.or(file.max_connections_per_ip) {
        server.max_connections_per_ip = n.max(1);
    }
    if let Some(t) = args.transaction_deadline.or(file.transaction_deadline) {
        server.transaction_deadline = secs(t);
    }
    server
}

/// Creates the data directory owner-only (0700, whatever the umask), or checks that an existing
/// one is not writable by group or others: mail and the queue live there, and the control
/// socket in it can watch mail and delete the queue.
fn prepare_data_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", dir.display())),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => Err(format!(
            "{} is writable by group or others (mode {:o}); run chmod 700 on it",
            dir.display(),
            m.permissions().mode() & 0o777
        )),
        Ok(_) => Ok(()),
        Err(_) => std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("{}: {e}", dir.display())),
    }
}

/// Reads only the log format from the config file (logging starts before the rest is checked).
pub fn log_format(args: &ServeArgs) -> Option<String> {
    let p = args.config.as_ref()?;
    config::load(p).ok().and_then(|(c, _)| c.log_format)
}

/// The warning for a server reachable beyond loopback that accepts every local part.
fn catch_all_warning(s: &Settings) -> Option<&'static str> {
    let public = s.server.listen.iter().chain(&s.server.implicit_tls).any(|a| !a.ip().is_loopback());
    (public && s.relay.directory.is_catch_all()).then_some(
        "listening beyond loopback with no --user and no aliases: every local part is accepted and gets a mailbox",
    )
}

pub async fn exec(s: Settings) -> anyhow::Result<()> {
    let mut signals = crate::signals::Shutdown::install()?;
    std::fs::create_dir_all(&s.data_dir).map_err(|e| anyhow::anyhow!("{}: {e}", s.data_dir.display()))?;
    // One server per data directory: a second one would recover (move aside) the first one's
    // writes in progress and deliver its queue twice.
    let control = s.data_dir.join("control.sock");
    if tokio::net::UnixStream::connect(&control).await.is_ok() {
        anyhow::bail!("{} is in use by another tern serve", s.data_dir.display());
    }
    // The metrics listener first: a bad address stops the start before anything is served.
    let metrics = match s.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("metrics listener {addr}: {e}"))?;
            let handle = smtp_relay::observe::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
            Some((listener, handle))
        }
        None => None,
    };
    let health = smtp_relay::observe::Health::default();
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics.map(|(listener, handle)| {
        println!(
            "tern serve: metrics on http://{}/metrics",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        tokio::spawn(smtp_relay::observe::serve(listener, handle, health.clone(), async move {
            let _ = metrics_stopped.await;
        }))
    });
    let queue: Arc<dyn smtp_relay::Queue> = match &s.queue {
        Some((url, lease)) => {
            let options = smtp_relay::PgOptions { lease: *lease, ..smtp_relay::PgOptions::new(&s.hostname) };
            Arc::new(smtp_relay::PgQueue::connect(url, options).await.map_err(|e| anyhow::anyhow!("queue: {e}"))?)
        }
        None => Arc::new(FsQueue::open(s.data_dir.join("queue")).map_err(|e| anyhow::anyhow!("queue: {e}"))?),
    };
    let queue_place = match (&s.queue, queue.leases()) {
        (Some(_), Some(l)) => format!("a shared PostgreSQL queue as node {}", l.node()),
        _ => format!("{}/queue", s.data_dir.display()),
    };
    if let Some(w) = catch_all_warning(&s) {
        tracing::warn!("{w}");
    }
    let (relay, scheduler) = Relay::new(s.relay, queue)?;
    let handle = scheduler.handle();
    let plain_listeners = s.server.listen.len();
    let builder = Server::builder(s.hostname.clone()).options(|o| *o = s.server);
    let server = builder.bind(relay.policy(), relay.mail()).await?;
    let terminals = relay.terminals();
    let control_task = {
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = smtp_relay::control::serve(&control, terminals, handle).await {
                tracing::error!(error = %e, "control socket failed");
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler_task = tokio::spawn(scheduler.run(async move {
        let _ = stop_rx.await;
    }));
    let shutdown = server.shutdown_handle();
    let addrs = server.local_addrs();
    // The listeners are bound and the queue is open: ready, before the start-up lines say so.
    health.ready();
    for (i, a) in addrs.iter().enumerate() {
        let kind = if i < plain_listeners { "SMTP with STARTTLS" } else { "SMTP over implicit TLS" };
        println!("tern serve: listening on {a} ({kind}) as {}", s.hostname);
    }
    println!("tern serve: local mail goes to {}/mail/USER/new; queue in {queue_place}", s.data_dir.display(),);
    let run = tokio::spawn(server.run());
    signals.wait().await;
    tracing::info!("shutting down");
    health.stopping();
    shutdown.shutdown(Duration::from_secs(10)).await;
    let _ = run.await;
    let _ = stop_tx.send(());
    let _ = scheduler_task.await;
    control_task.abort();
    let _ = metrics_stop.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&control);
    println!("tern serve: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn settings_for(args: &[&str]) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_string();
        let mut argv = vec!["tern", "--data-dir", &data, "--hostname", "mx.test"];
        argv.extend(args);
        settings(Cli::parse_from(argv).serve).unwrap()
    }

    #[test]
    fn shared_queue_and_mail_store_flags() {
        use smtp_relay::deliver::lmtp::LmtpTarget;
        let s = settings_for(&[]);
        assert!(s.queue.is_none() && s.relay.lmtp.is_none());
        let s = settings_for(&["--queue", "postgres://tern@db/q", "--queue-lease", "7", "--lmtp", "/run/dovecot/lmtp"]);
        assert_eq!(s.queue, Some(("postgres://tern@db/q".to_string(), Duration::from_secs(7))));
        assert_eq!(s.relay.lmtp, Some(LmtpTarget::Unix("/run/dovecot/lmtp".into())));
        let s = settings_for(&["--queue", "postgresql://db/q", "--lmtp", "store.test:24"]);
        assert_eq!(s.queue.map(|(_, lease)| lease), Some(Duration::from_secs(30)), "the default lease");
        assert_eq!(s.relay.lmtp, Some(LmtpTarget::Tcp("store.test".into(), 24)));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_string();
        let bad = Cli::parse_from(["tern", "--data-dir", &data, "--queue", "mysql://db"]).serve;
        assert!(settings(bad).is_err_and(|e| e.to_string().contains("postgres://")));
    }

    #[test]
    fn transaction_deadline_flag() {
        assert_eq!(settings_for(&[]).server.transaction_deadline, Duration::from_secs(600));
        let s = settings_for(&["--transaction-deadline", "30"]);
        assert_eq!(s.server.transaction_deadline, Duration::from_secs(30));
    }

    #[test]
    fn transport_policy_flags_and_keys() {
        let s = settings_for(&[]);
        assert!(s.relay.mta_sts && s.relay.mta_sts_port == 443 && s.relay.dns_server.is_none());
        assert!(s.relay.dane && s.relay.dnssec_trust_anchor.is_none());
        let s = settings_for(&[
            "--dns-server",
            "127.0.0.1:5353",
            "--outbound-ca",
            "/etc/ca.pem",
            "--no-mta-sts",
            "--mta-sts-port",
            "8443",
            "--no-dane",
            "--no-tls-reports",
        ]);
        assert!(!s.relay.dane && !s.relay.tls_reports);
        assert_eq!(s.relay.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(s.relay.outbound_ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert!(!s.relay.mta_sts);
        assert_eq!(s.relay.mta_sts_port, 8443);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tern.toml");
        std::fs::write(&file, "dns_server = \"[::1]:53\"\nmta_sts = false\noutbound_ca = \"/ca.pem\"\n").unwrap();
        let s = settings_for(&["--config", file.to_str().unwrap()]);
        assert_eq!((s.relay.dns_server, s.relay.mta_sts), (Some("[::1]:53".parse().unwrap()), false));
        let data = dir.path().join("data");
        let argv = ["tern", "--data-dir", data.to_str().unwrap(), "--dns-server", "localhost"];
        let e = settings(Cli::parse_from(argv).serve).err().unwrap();
        assert!(e.to_string().contains("key `dns_server`: \"localhost\" is not an address and port"), "{e}");
        let anchor = dir.path().join("anchor.key");
        std::fs::write(&anchor, "test. 3600 IN DNSKEY 257 3 13 not-base64\n").unwrap();
        let argv = ["tern", "--data-dir", data.to_str().unwrap(), "--dnssec-trust-anchor", anchor.to_str().unwrap()];
        let e = settings(Cli::parse_from(argv).serve).err().unwrap();
        assert!(e.to_string().contains("key `dnssec_trust_anchor`") && e.to_string().contains("anchor.key"), "{e}");
        std::fs::write(&file, "dane = false\n").unwrap();
        assert!(!settings_for(&["--config", file.to_str().unwrap()]).relay.dane);
    }

    #[test]
    fn message_authentication_flags_and_keys() {
        let s = settings_for(&[]);
        assert!(s.relay.auth_verify && !s.relay.dmarc_enforce && s.relay.dkim.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, smtp_relay::msgauth::generate_key(true).unwrap().0).unwrap();
        let spec = format!("Example.org=s1:{}", key.display());
        let s = settings_for(&["--dkim", &spec, "--no-auth-verify", "--dmarc-enforce"]);
        assert!(!s.relay.auth_verify && s.relay.dmarc_enforce);
        assert_eq!(
            (s.relay.dkim[0].domain.as_str(), s.relay.dkim[0].key_file.as_path()),
            ("example.org", key.as_path())
        );
        let file = dir.path().join("tern.toml");
        let toml = format!("dkim = [\"a.test=s:{}\"]\nauth_verify = false\ndmarc_enforce = true\n", key.display());
        std::fs::write(&file, toml).unwrap();
        let s = settings_for(&["--config", file.to_str().unwrap()]);
        assert!(!s.relay.auth_verify && s.relay.dmarc_enforce && s.relay.dkim[0].domain == "a.test");
        let data = dir.path().join("data");
        let missing = format!("a.test=s:{}", dir.path().join("missing.pem").display());
        let argv = ["tern", "--data-dir", data.to_str().unwrap(), "--dkim", &missing];
        let e = settings(Cli::parse_from(argv).serve).err().unwrap();
        assert!(e.to_string().contains("key `dkim`") && e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn command_and_data_timeouts_are_separate() {
        let s = settings_for(&["--idle-timeout", "400", "--data-timeout", "900"]);
        assert_eq!(
            (s.server.command_timeout, s.server.data_timeout),
            (Duration::from_secs(400), Duration::from_secs(900))
        );
        let s = settings_for(&["--command-timeout", "360"]);
        assert_eq!(
            (s.server.command_timeout, s.server.data_timeout),
            (Duration::from_secs(360), Duration::from_secs(300))
        );
    }

    /// The embedded default is the libraries' defaults, and `--help` states them truly.
    #[test]
    fn defaults_come_from_the_libraries_and_help_states_them() {
        use clap::CommandFactory;
        let s = settings_for(&[]);
        let (lib, relay) = (ServerOptions::default(), RelayConfig::new("mx.test", "/x"));
        assert_eq!(s.server.session.max_message_size, lib.session.max_message_size);
        assert_eq!(s.server.session.max_recipients, lib.session.max_recipients);
        assert_eq!((s.server.command_timeout, s.server.data_timeout), (lib.command_timeout, lib.data_timeout));
        assert_eq!(
            (s.server.max_connections, s.server.max_connections_per_ip),
            (lib.max_connections, lib.max_connections_per_ip)
        );
        assert_eq!(s.server.transaction_deadline, lib.transaction_deadline);
        assert_eq!((s.relay.retry_interval, s.relay.queue_lifetime), (relay.retry_interval, relay.queue_lifetime));
        assert_eq!(
            (s.relay.max_deliveries, s.relay.max_per_destination),
            (relay.max_deliveries, relay.max_per_destination)
        );
        assert_eq!(s.relay.delivery_deadline, relay.delivery_deadline);
        let help: std::collections::HashMap<String, String> = Cli::command()
            .get_arguments()
            .map(|a| (a.get_id().to_string(), a.get_help().map(|h| h.to_string()).unwrap_or_default()))
            .collect();
        let stated = |id: &str| -> u64 {
            let h = &help[id];
            let n = h.split("Default ").nth(1).unwrap_or_else(|| panic!("{id}: no default in {h:?}"));
            n.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        };
        let secs = |d: Duration| d.as_secs();
        for (id, value) in [
            ("max_message_size", lib.session.max_message_size),
            ("max_recipients", lib.session.max_recipients as u64),
            ("idle_timeout", secs(lib.command_timeout)),
            ("command_timeout", secs(lib.command_timeout)),
            ("data_timeout", secs(lib.data_timeout)),
            ("max_connections", lib.max_connections as u64),
            ("max_connections_per_ip", lib.max_connections_per_ip as u64),
            ("transaction_deadline", secs(lib.transaction_deadline)),
            ("retry_interval", secs(relay.retry_interval)),
            ("queue_lifetime", secs(relay.queue_lifetime)),
            ("max_deliveries", relay.max_deliveries as u64),
            ("max_per_destination", relay.max_per_destination as u64),
            ("delivery_deadline", secs(relay.delivery_deadline)),
        ] {
            assert_eq!(stated(id), value, "--{} help", id.replace('_', "-"));
        }
    }

    #[test]
    fn warns_when_a_public_catch_all_would_make_any_mailbox() {
        assert!(catch_all_warning(&settings_for(&[])).is_none(), "loopback only");
        assert!(catch_all_warning(&settings_for(&["--listen", "0.0.0.0:25"])).is_some());
        assert!(catch_all_warning(&settings_for(&["--listen", "[::]:25", "--user", "bob"])).is_none());
    }
}
