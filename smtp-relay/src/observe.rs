//! Metrics and health over HTTP: Prometheus text at `/metrics`, `/healthz`.
//!
//! The crates record through the `metrics` facade (a no-op until a recorder is installed);
//! [`install`] installs the Prometheus recorder process-wide, describes every `tern_` metric
//! and registers its fixed label sets at zero, so a dashboard sees each series from the start.
//! No label takes unbounded values: no domains, addresses or IPs.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Buckets (seconds) for every latency histogram: 0.5 ms to 10 minutes.
const BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 600.0];

/// The counters, gauges and histograms, with their help texts and fixed label sets.
/// (name, kind, help, label sets)
#[allow(clippy::type_complexity)]
const METRICS: &[(&str, Kind, &str, &[&[(&str, &str)]])] = &[
    ("tern_connections_accepted_total", Kind::Counter, "SMTP connections accepted.", &[&[]]),
    (
        "tern_connections_refused_total",
        Kind::Counter,
        "SMTP connections refused, by reason.",
        &[&[("reason", "limit")], &[("reason", "tls_handshake")]],
    ),
    ("tern_connections_open", Kind::Gauge, "SMTP connections open now.", &[&[]]),
    (
        "tern_tls_sessions_total",
        Kind::Counter,
        "Inbound TLS sessions, by protocol version and handshake (full or resumed).",
        &[
            &[("version", "TLSv1.3"), ("handshake", "full")],
            &[("version", "TLSv1.3"), ("handshake", "resumed")],
            &[("version", "TLSv1.2"), ("handshake", "full")],
            &[("version", "TLSv1.2"), ("handshake", "resumed")],
        ],
    ),
    (
        "tern_replies_rejected_total",
        Kind::Counter,
        "Commands answered with a 4xx or 5xx reply, by class.",
        &[&[("class", "4xx")], &[("class", "5xx")]],
    ),
    ("tern_messages_accepted_total", Kind::Counter, "Messages accepted (250 at the end of data).", &[&[]]),
    ("tern_accepted_bytes_total", Kind::Counter, "Octets of accepted messages.", &[&[]]),
    (
        "tern_recipients_total",
        Kind::Counter,
        "RCPT commands, by result.",
        &[&[("result", "accepted")], &[("result", "refused")]],
    ),
    ("tern_auth_failures_total", Kind::Counter, "Failed AUTH attempts.", &[&[]]),
    (
        "tern_deliveries_total",
        Kind::Counter,
        "Delivery attempts per recipient, by outcome and kind.",
        &[
            &[("outcome", "delivered"), ("kind", "local")],
            &[("outcome", "delivered"), ("kind", "remote")],
            &[("outcome", "deferred"), ("kind", "local")],
            &[("outcome", "deferred"), ("kind", "remote")],
            &[("outcome", "failed"), ("kind", "local")],
            &[("outcome", "failed"), ("kind", "remote")],
        ],
    ),
    ("tern_deliveries_in_flight", Kind::Gauge, "Messages being delivered now.", &[&[]]),
    ("tern_notifications_total", Kind::Counter, "Delivery status notifications queued.", &[&[]]),
    ("tern_queue_messages", Kind::Gauge, "Messages in the queue.", &[&[]]),
    ("tern_queue_bytes", Kind::Gauge, "Octets of message data in the queue.", &[&[]]),
    ("tern_queue_oldest_message_age_seconds", Kind::Gauge, "Age of the oldest queued message.", &[&[]]),
    (
        "tern_queue_db_commits_total",
        Kind::Counter,
        "Transactions that stored new messages in a shared (PostgreSQL) queue.",
        &[&[]],
    ),
    (
        "tern_queue_db_committed_messages_total",
        Kind::Counter,
        "Messages those transactions stored: over tern_queue_db_commits_total, messages per commit.",
        &[&[]],
    ),
    (
        "tern_outbound_tls_total",
        Kind::Counter,
        "Outbound sessions, by TLS result: validated, encrypted without validation, plaintext, \
         or a downgrade (TLS-Required: No, MTA-STS testing mode).",
        &[
            &[("result", "validated")],
            &[("result", "opportunistic")],
            &[("result", "plaintext")],
            &[("result", "downgraded")],
        ],
    ),
    (
        "tern_accept_duration_seconds",
        Kind::Histogram,
        "From the end of data to the 250: the durable write (fsync) wait.",
        &[&[]],
    ),
    (
        "tern_delivery_duration_seconds",
        Kind::Histogram,
        "One delivery attempt (a local mailbox, or one next hop for its recipients), by kind.",
        &[&[("kind", "local")], &[("kind", "remote")]],
    ),
    (
        "tern_queue_residence_seconds",
        Kind::Histogram,
        "From acceptance to a recipient's final outcome (delivered or failed).",
        &[&[]],
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric name [`install`] registers.
pub fn metric_names() -> impl Iterator<Item = &'static str> {
    METRICS.iter().map(|m| m.0)
}

/// Health as `/healthz` reports it.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicU8>);

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Health {
    /// Listeners bound and the queue loaded: 200 from now on.
    pub fn ready(&self) {
        let _ = self.0.compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Shutting down: 503 from now on.
    pub fn stopping(&self) {
        self.0.store(STOPPING, Ordering::SeqCst);
    }

    fn status(&self) -> (u16, &'static str) {
        match self.0.load(Ordering::SeqCst) {
            READY => (200, "ok\n"),
            STOPPING => (503, "shutting down\n"),
            _ => (503, "starting\n"),
        }
    }
}

/// Installs the Prometheus recorder for this process and registers every metric at zero.
/// Fails if a recorder is installed already.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    for (name, kind, help, label_sets) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help),
        }
        for labels in *label_sets {
            let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, *v)).collect();
            match kind {
                Kind::Counter => metrics::counter!(*name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(*name, labels).increment(0.0),
                // A histogram has no zero value to record; its series appear with the first
                // observation, the `_count` of the others reads as absent until then.
                Kind::Histogram => {}
            }
        }
    }
    Ok(handle)
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves; runs the
/// recorder's upkeep meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    health: Health,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (handle, health) = (handle.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, ctype, body) = match (req.method(), req.uri().path()) {
                    (&hyper::Method::GET, "/metrics") => (200, "text/plain; version=0.0.4", handle.render()),
                    (&hyper::Method::GET, "/healthz") => {
                        let (s, t) = health.status();
                        (s, "text/plain", t.to_string())
                    }
                    _ => (404, "text/plain", "not found: /metrics or /healthz\n".to_string()),
                };
                let resp = hyper::Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
    upkeep.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_503_until_ready_and_from_shutdown_on() {
        let h = Health::default();
        assert_eq!(h.status().0, 503, "starting");
        h.ready();
        assert_eq!(h.status(), (200, "ok\n"));
        h.stopping();
        assert_eq!(h.status(), (503, "shutting down\n"));
        h.ready();
        assert_eq!(h.status().0, 503, "never ready again once stopping");
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, kind, help, labels) in METRICS {
            assert!(name.starts_with("tern_") && !help.is_empty(), "{name}");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
            assert!(!labels.is_empty(), "{name}: at least the empty label set");
        }
    }
}
