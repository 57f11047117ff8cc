//! Several `tern serve` nodes on one PostgreSQL queue (a private server per test): mail sent to
//! random nodes, one node killed with SIGKILL mid-run, the database stopped mid-load. Every
//! acknowledged message reaches the next hop; duplicates are counted and reported.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_client::{ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::{Domain, EnhancedCode, Reply};
use tests::pg::Postgres;
use tests::{run_bounded, tern_bin, Tern};

/// The most a whole phase (all sends, or all deliveries) may take.
const PHASE: Duration = Duration::from_secs(240);

/// A next hop that records the `X-Token` of each message it accepts, defers everything while
/// closed, and tracks how many transactions it serves at once.
struct Hop {
    addr: SocketAddr,
    received: Arc<Mutex<HashMap<String, usize>>>,
    open: Arc<AtomicBool>,
    most_at_once: Arc<AtomicUsize>,
}

async fn hop(open: bool, delay: Duration) -> Hop {
    use smtp_server::{AcceptAll, Server, Transaction};
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let open = Arc::new(AtomicBool::new(open));
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (got, is_open, most2) = (received.clone(), open.clone(), most.clone());
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let (got, is_open, active, most) = (got.clone(), is_open.clone(), active.clone(), most2.clone());
        async move {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let data = tx.body.collect(1 << 20).await;
            tokio::time::sleep(delay).await;
            active.fetch_sub(1, Ordering::SeqCst);
            let data = data?;
            if !is_open.load(Ordering::SeqCst) {
                return Ok(Reply::new(451, Some(EnhancedCode::new(4, 3, 0)), "Not now"));
            }
            let text = String::from_utf8_lossy(&data).into_owned();
            if let Some(t) = text.lines().find_map(|l| l.strip_prefix("X-Token: ")) {
                *got.lock().unwrap().entry(t.to_string()).or_default() += 1;
            }
            Ok::<_, smtp_server::BodyError>(smtp_proto::codes::message_accepted())
        }
    });
    let server =
        Server::builder("hop.test").listen("127.0.0.1:0".parse().unwrap()).bind(AcceptAll, mail).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    Hop { addr, received, open, most_at_once: most }
}

fn node(dir: &std::path::Path, url: &str, hop: SocketAddr, lease: &str) -> Tern {
    let route = format!("far.test=127.0.0.1:{}", hop.port());
    Tern::serve(
        dir,
        &[
            "--queue",
            url,
            "--queue-lease",
            lease,
            "--route",
            &route,
            "--outbound-tls",
            "none",
            "--retry-interval",
            "1",
            "--max-per-destination",
            "3",
        ],
    )
}

/// Tokens acknowledged with 250, and those sent more than once because an attempt ended
/// without an answer (the node died after storing it, maybe): the sender's own duplicates.
#[derive(Default, Clone)]
struct Sent {
    acked: Arc<Mutex<HashSet<String>>>,
    resent: Arc<Mutex<HashSet<String>>>,
}

impl Sent {
    fn acked(&self) -> HashSet<String> {
        self.acked.lock().unwrap().clone()
    }
}

/// Sends `total` messages from `workers` connections, each to a random live node (a new one
/// every 50 messages, or when its node dies), recording them in `sent`.
fn send_load(
    live: Arc<Mutex<Vec<SocketAddr>>>,
    total: usize,
    workers: usize,
    sent: Sent,
    prefix: &'static str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut o = ClientOptions::new(Domain::parse("load.test").unwrap());
    o.tls = TlsMode::None;
    let client = SmtpClient::new(o).unwrap();
    let env = Envelope::from_str_addr("load@load.test").unwrap().to_str_addr("x@far.test").unwrap();
    (0..workers)
        .map(|w| {
            let (client, env, sent, live) = (client.clone(), env.clone(), sent.clone(), live.clone());
            tokio::spawn(async move {
                let mine = total / workers + usize::from(w < total % workers);
                let (mut i, mut tries) = (0, 0);
                let start = Instant::now();
                while i < mine {
                    assert!(start.elapsed() < PHASE, "worker {w}: sends did not finish");
                    let addr = {
                        let l = live.lock().unwrap();
                        l[rand_index(l.len())]
                    };
                    let Ok(mut conn) = client.connect_addr(addr, "127.0.0.1").await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    for _ in 0..50 {
                        if i == mine {
                            break;
                        }
                        tries += 1;
                        assert!(tries < mine * 20 + 100, "worker {w}: too many refusals");
                        let token = format!("{prefix}-{w}-{i}");
                        let body = format!("Subject: {token}\r\nX-Token: {token}\r\n\r\nbody of {token}\r\n");
                        match conn.send(&env, body.into_bytes().into()).await {
                            Ok(o) if o.all_accepted() => {
                                sent.acked.lock().unwrap().insert(token);
                                i += 1;
                            }
                            // Refused (451 while the database is away): this message again, on
                            // a new connection.
                            Ok(_) => break,
                            // No answer (the node died): maybe stored; sent again all the same.
                            Err(_) => {
                                sent.resent.lock().unwrap().insert(token);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

fn rand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() % n as u64) as usize
}

/// Waits, bounded by [`PHASE`], until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PHASE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn queued(pg: &Postgres) -> u64 {
    let (code, out, err) = pg.sql("postgres", "SELECT count(*) FROM tern_message");
    assert_eq!(code, 0, "{err}");
    out.trim().parse().unwrap()
}

/// `tern queue list --json --queue URL` from a node's data directory: the ids it shows.
fn listed(url: &str, dir: &std::path::Path) -> Vec<String> {
    let (code, out, err) = run_bounded(
        std::process::Command::new(tern_bin()).args(["queue", "list", "--json", "--queue", url, "--data-dir"]).arg(dir),
        b"",
    );
    assert_eq!(code, 0, "tern queue list: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<String> = v.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// Reports and checks a run: nothing acknowledged is lost. Returns how many messages the relay
/// delivered twice (not counting those the sender itself sent twice).
fn report(what: &str, sent: &Sent, received: &HashMap<String, usize>) -> usize {
    let (acked, resent) = (sent.acked(), sent.resent.lock().unwrap().clone());
    let lost: Vec<&String> = acked.iter().filter(|t| !received.contains_key(*t)).collect();
    let twice: Vec<&String> = received.iter().filter(|(_, &n)| n > 1).map(|(t, _)| t).collect();
    let relay_twice = twice.iter().filter(|t| !resent.contains(**t)).count();
    eprintln!(
        "{what}: {} acknowledged, {} delivered, {} lost, {} delivered more than once ({} of them sent twice by the sender after a connection died, {relay_twice} by the relay)",
        acked.len(),
        received.len(),
        lost.len(),
        twice.len(),
        twice.len() - relay_twice,
    );
    assert!(lost.is_empty(), "acknowledged messages never delivered: {:?}", &lost[..lost.len().min(10)]);
    assert!(received.values().all(|&n| n <= 2), "nothing three times");
    relay_twice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_queue_and_a_killed_node_loses_nothing() {
    let pg = Postgres::start();
    let url = pg.url();
    // Closed at first: everything stays queued, so every node's view can be compared.
    let hop = hop(false, Duration::ZERO).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<Tern>> = dirs.iter().map(|d| Some(node(d.path(), &url, hop.addr, "3"))).collect();
    let live = Arc::new(Mutex::new(nodes.iter().map(|n| n.as_ref().unwrap().addr).collect::<Vec<_>>()));
    let sent = Sent::default();
    let workers = send_load(live.clone(), 5000, 8, sent.clone(), "c");
    let a = sent.acked.clone();
    wait_for("2000 messages acknowledged", || a.lock().unwrap().len() >= 2000).await;
    // SIGKILL node 0 mid-run; the senders move to the others.
    let dead = nodes[0].take().unwrap();
    live.lock().unwrap().retain(|a| *a != dead.addr);
    dead.kill();
    for w in workers {
        w.await.unwrap();
    }
    let acked = sent.acked();
    assert_eq!(acked.len(), 5000);
    // Restarted later, on its data directory.
    nodes[0] = Some(node(dirs[0].path(), &url, hop.addr, "3"));
    // One queue, whichever node looks.
    let views: Vec<Vec<String>> = dirs.iter().map(|d| listed(&url, d.path())).collect();
    assert!(views[0].len() >= acked.len(), "{} queued, {} acknowledged", views[0].len(), acked.len());
    assert!(views.iter().all(|v| *v == views[0]), "the nodes list different queues");

    // Open the next hop and flush from any node: everything is delivered, by all three.
    hop.open.store(true, Ordering::SeqCst);
    let (code, out, err) = run_bounded(
        std::process::Command::new(tern_bin())
            .args(["queue", "flush", "--queue", &url, "--data-dir"])
            .arg(dirs[1].path()),
        b"",
    );
    assert_eq!(code, 0, "flush: {out}{err}");
    let start = Instant::now();
    let r = hop.received.clone();
    let left = |pg: &Postgres| {
        pg.sql(
            "postgres",
            "SELECT id, due, owner, lease_until, force, extract(epoch from now())::bigint FROM tern_message LIMIT 5",
        )
        .1
    };
    let all = || acked.iter().all(|t| r.lock().unwrap().contains_key(t));
    let start_wait = Instant::now();
    while !all() {
        assert!(start_wait.elapsed() < PHASE, "not all delivered; left in the queue: {}", left(&pg));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("the queue to empty", || queued(&pg) == 0).await;
    eprintln!("5000 queued messages delivered by three nodes in {:?}", start.elapsed());
    let received = hop.received.lock().unwrap().clone();
    let twice = report("three nodes, one killed", &sent, &received);
    assert_eq!(twice, 0, "no delivery was in flight at the kill (the next hop deferred everything)");
    let most = hop.most_at_once.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} transactions at once to a destination limited to 3 across the nodes");
    for n in nodes.into_iter().flatten() {
        assert!(n.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_deliveries_are_resumed_by_another_node() {
    let pg = Postgres::start();
    let url = pg.url();
    // A slow next hop: deliveries are in flight when the kill lands.
    let hop = hop(true, Duration::from_millis(30)).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let victim = node(d1.path(), &url, hop.addr, "2");
    let survivor = node(d2.path(), &url, hop.addr, "2");
    let live = Arc::new(Mutex::new(vec![victim.addr]));
    let sent = Sent::default();
    for w in send_load(live, 300, 6, sent.clone(), "r") {
        w.await.unwrap();
    }
    let acked = sent.acked();
    // Everything went to the victim; kill it while it delivers.
    let r = hop.received.clone();
    wait_for("deliveries under way", || r.lock().unwrap().len() >= 20).await;
    let at_kill = hop.received.lock().unwrap().len();
    assert!(at_kill < acked.len(), "the kill landed after the last delivery");
    victim.kill();
    let killed = Instant::now();
    // Nothing moves until the victim's leases expire; then the survivor takes over.
    let r = hop.received.clone();
    wait_for("a delivery by the survivor", || r.lock().unwrap().len() > at_kill + 3).await;
    eprintln!("a dead node's messages were resumed {:?} after the kill (lease 2 s)", killed.elapsed());
    wait_for("every acknowledged message delivered", || acked.iter().all(|t| r.lock().unwrap().contains_key(t))).await;
    wait_for("the queue to empty", || queued(&pg) == 0).await;
    let received = hop.received.lock().unwrap().clone();
    let twice = report("killed mid-delivery", &sent, &received);
    // Only what was in flight at the kill (sent, outcome not yet stored) can arrive twice:
    // at most the destination's three slots.
    assert!(twice <= 3, "{twice} messages arrived twice: more than were in flight at the kill");
    assert!(survivor.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_250_while_the_database_is_down_and_nothing_lost() {
    let pg = Postgres::start();
    let url = pg.url();
    let hop = hop(true, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = node(dir.path(), &url, hop.addr, "3");
    let live = Arc::new(Mutex::new(vec![tern.addr]));
    let sent = Sent::default();
    let workers = send_load(live, 1500, 4, sent.clone(), "d");
    let a = sent.acked.clone();
    wait_for("some messages acknowledged", || a.lock().unwrap().len() >= 300).await;
    pg.stop();
    let down_from = sent.acked().len();
    // While it is down: a new transaction is refused with 451 4.3.0, never 250.
    let mut o = ClientOptions::new(Domain::parse("probe.test").unwrap());
    o.tls = TlsMode::None;
    let probe = SmtpClient::new(o).unwrap();
    let env = Envelope::from_str_addr("p@probe.test").unwrap().to_str_addr("x@far.test").unwrap();
    let mut conn = probe.connect_addr(tern.addr, "127.0.0.1").await.unwrap();
    let refused = conn.send(&env, "Subject: probe\r\n\r\nprobe\r\n".as_bytes().to_vec().into()).await.unwrap();
    let reply = refused.reply.map(|r| r.to_string()).unwrap_or_default();
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = sent.acked().len();
    assert!(during <= down_from + 8, "acknowledged while the database was down: {down_from} → {during}");
    pg.start_again();
    for w in workers {
        w.await.unwrap();
    }
    let acked = sent.acked();
    assert_eq!(acked.len(), 1500);
    let r = hop.received.clone();
    wait_for("every acknowledged message delivered", || acked.iter().all(|t| r.lock().unwrap().contains_key(t))).await;
    wait_for("the queue to empty", || queued(&pg) == 0).await;
    let received = hop.received.lock().unwrap().clone();
    let twice = report("database stopped mid-load", &sent, &received);
    // Deliveries whose state could not be stored while it was down are kept in memory, never
    // made again.
    assert_eq!(twice, 0);
    assert!(tern.terminate().success());
}

#[test]
fn a_database_that_is_not_there_stops_the_start_with_one_line() {
    let (_sock, addr) = tests::refused_port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://tern@{addr}/postgres");
    let (code, out, err) = run_bounded(
        std::process::Command::new(tern_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--queue", &url, "--data-dir"])
            .arg(dir.path()),
        b"",
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("queue database") && err.lines().count() <= 2, "{err}");
    assert!(!out.contains("listening"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_gives_its_leases_back_at_once() {
    let pg = Postgres::start();
    let url = pg.url();
    // A next hop that never finishes: the node's deliveries hold their leases (30 s) when it stops.
    let hop = hop(true, Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = node(dir.path(), &url, hop.addr, "30");
    let live = Arc::new(Mutex::new(vec![tern.addr]));
    let sent = Sent::default();
    for w in send_load(live, 5, 1, sent.clone(), "t") {
        w.await.unwrap();
    }
    let most = hop.most_at_once.clone();
    wait_for("deliveries in flight", || most.load(Ordering::SeqCst) >= 3).await;
    let held = |pg: &Postgres| {
        let (code, out, err) = pg.sql("postgres", "SELECT count(*) FROM tern_message WHERE owner IS NOT NULL");
        assert_eq!(code, 0, "{err}");
        out.trim().parse::<u64>().unwrap()
    };
    assert!(held(&pg) >= 3, "deliveries in flight hold leases");
    assert!(tern.terminate().success());
    assert_eq!(queued(&pg), 5, "nothing delivered, nothing lost");
    assert_eq!(held(&pg), 0, "every lease given back: another node takes them now, not in 30 s");
    let (code, out, err) = pg.sql("postgres", "SELECT count(*) FROM tern_slot WHERE owner IS NOT NULL");
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
}

/// `tern queue ARGS --queue URL` from `dir`: (exit code, stdout, stderr).
fn queue_cli(url: &str, dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    run_bounded(
        std::process::Command::new(tern_bin()).arg("queue").args(args).args(["--queue", url, "--data-dir"]).arg(dir),
        b"",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_queue_shows_counts_and_deletes_on_the_shared_queue() {
    let pg = Postgres::start();
    let url = pg.url();
    let hop = hop(false, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let tern = node(dir.path(), &url, hop.addr, "30");
    let live = Arc::new(Mutex::new(vec![tern.addr]));
    for w in send_load(live, 3, 1, Sent::default(), "q") {
        w.await.unwrap();
    }
    let other = tempfile::tempdir().unwrap();
    let ids = listed(&url, other.path());
    assert_eq!(ids.len(), 3, "seen from another data directory too");
    let (code, out, err) = queue_cli(&url, other.path(), &["show", "--json", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"].as_str(), Some(ids[0].as_str()));
    assert_eq!(v["recipients"][0]["to"].as_str(), Some("<x@far.test>"));
    assert!(v["headers"].as_str().unwrap().contains("X-Token: q-0-"), "{v}");
    let (code, out, err) = queue_cli(&url, other.path(), &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["messages"].as_u64(), v["recipients"]["pending"].as_u64()), (Some(3), Some(3)), "{v}");
    let (code, out, err) = queue_cli(&url, other.path(), &["delete", &ids[1]]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(listed(&url, other.path()), vec![ids[0].clone(), ids[2].clone()]);
    let (code, _, err) = queue_cli(&url, other.path(), &["delete", &ids[1]]);
    assert!(code != 0 && err.contains("no queued message") && err.lines().count() == 1, "{err}");
    let (code, _, err) = queue_cli(&url, other.path(), &["show", &ids[1]]);
    assert!(code != 0 && err.contains("no queued message"), "{err}");
    assert!(tern.terminate().success());
}
