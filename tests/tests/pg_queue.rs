//! The PostgreSQL queue against a real PostgreSQL server (started by each test in a temporary
//! directory): messages in and out, streamed data, leases between nodes, shared slots, schema
//! versions and a database that goes away.

use std::time::Duration;

use smtp_proto::command::{MailParams, RcptParams};
use smtp_proto::{ForwardPath, MailVerb, Path, ReversePath};
use smtp_relay::queue::{Leases, RcptRecord, RcptStatus};
use smtp_relay::{PgOptions, PgQueue, Queue, QueueError, QueuedMessage, ScanEntry, StoredBody};
use tests::pg::Postgres;
use tests::WAIT;
use tokio::io::AsyncReadExt;

fn msg(to: &[&str]) -> QueuedMessage {
    QueuedMessage {
        id: String::new(),
        verb: MailVerb::Mail,
        from: ReversePath::Path(Path::parse("<a@sender.test>").unwrap()),
        params: MailParams::default(),
        arrival: QueuedMessage::now(),
        client: None,
        helo: Some("client.test".into()),
        recipients: to
            .iter()
            .map(|t| RcptRecord::new(ForwardPath::Path(Path::parse(&format!("<{t}>")).unwrap()), RcptParams::default()))
            .collect(),
        delay_warned: false,
        trusted: true,
    }
}

fn options(node: &str, lease: Duration) -> PgOptions {
    PgOptions { node: node.into(), lease, pool_size: 4, existing_only: false }
}

async fn read(b: &StoredBody) -> Vec<u8> {
    let mut out = Vec::new();
    b.reader().await.unwrap().read_to_end(&mut out).await.unwrap();
    out
}

fn count(pg: &Postgres, sql: &str) -> u64 {
    let (code, out, err) = pg.sql("postgres", sql);
    assert_eq!(code, 0, "{sql}: {err}");
    out.trim().parse().unwrap_or_else(|_| panic!("{sql}: {out}"))
}

#[tokio::test]
async fn messages_go_in_and_come_out_whole_small_and_streamed() {
    let pg = Postgres::start();
    let q = PgQueue::connect(&pg.url(), options("a", Duration::from_secs(30))).await.unwrap();
    let small = q.enqueue(msg(&["x@dest.test", "y@dest.test"]), "Subject: s\r\n\r\nsmall\r\n".into()).await.unwrap();
    assert!(matches!(&small.body, StoredBody::Memory(b) if &b[..] == b"Subject: s\r\n\r\nsmall\r\n"));

    // 1 MiB + 5 in 64 KiB writes: four full chunks written as it arrives, one with the row.
    let big: Vec<u8> = (0..(1 << 20) + 5).map(|i| (i % 251) as u8).collect();
    let mut w = q.create(msg(&["z@dest.test"])).await.unwrap();
    for part in big.chunks(64 * 1024) {
        w.write(part).await.unwrap();
    }
    let stored = w.commit().await.unwrap();
    assert!(matches!(stored.body, StoredBody::Chunks { len, .. } if len == big.len() as u64), "{:?}", stored.body);
    assert_eq!(read(&stored.body).await, big);
    assert_eq!(count(&pg, &format!("SELECT count(*) FROM tern_chunk WHERE id = '{}'", stored.id)), 5);
    // Read back from the database, async and blocking, and the head alone.
    let again = q.body(&stored.id).await.unwrap();
    assert_eq!(read(&again).await, big);
    let blocking = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut again.reader_blocking().unwrap(), &mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert_eq!(blocking, big);
    assert_eq!(&q.body(&stored.id).await.unwrap().head(10).await.unwrap()[..], &big[..10]);
    assert_eq!(read(&q.body(&small.id).await.unwrap()).await, b"Subject: s\r\n\r\nsmall\r\n");

    // State: stored, loaded back, listed.
    let mut m = q.load(&small.id).await.unwrap();
    assert_eq!((m.recipients.len(), m.helo.as_deref(), m.trusted), (2, Some("client.test"), true));
    m.recipients[0].status = RcptStatus::Delivered;
    m.recipients[1].attempts = 2;
    m.recipients[1].next_attempt = 12_345;
    q.update(&m).await.unwrap();
    assert_eq!(q.load(&small.id).await.unwrap(), m);
    let all = q.scan_all().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .any(|e| matches!(e, ScanEntry::Queued(x, size) if x.id == stored.id && *size == big.len() as u64)));

    q.remove(&stored.id).await.unwrap();
    assert!(matches!(q.remove(&stored.id).await, Err(QueueError::NotFound(_))));
    let mut gone = m.clone();
    gone.id = stored.id.clone();
    assert!(matches!(q.update(&gone).await, Err(QueueError::NotFound(_))), "no state for a removed message");
    assert!(matches!(q.load(&stored.id).await, Err(QueueError::NotFound(_))));
    assert_eq!(count(&pg, "SELECT count(*) FROM tern_chunk"), 1, "only the small message's data is left");
}

#[tokio::test]
async fn an_abandoned_message_leaves_no_data_behind() {
    let pg = Postgres::start();
    let q = PgQueue::connect(&pg.url(), options("a", Duration::from_secs(30))).await.unwrap();
    let mut w = q.create(msg(&["z@dest.test"])).await.unwrap();
    w.write(&vec![b'x'; 600 * 1024]).await.unwrap();
    assert_eq!(count(&pg, "SELECT count(*) FROM tern_chunk"), 2);
    drop(w);
    let start = std::time::Instant::now();
    while count(&pg, "SELECT count(*) FROM tern_chunk") != 0 {
        assert!(start.elapsed() < WAIT, "chunks of an abandoned message stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&pg, "SELECT count(*) FROM tern_message"), 0);
}

#[tokio::test]
async fn a_lease_lets_one_node_work_on_a_message_until_it_expires() {
    let pg = Postgres::start();
    let a = PgQueue::connect(&pg.url(), options("a", Duration::from_millis(1500))).await.unwrap();
    let b = PgQueue::connect(&pg.url(), options("b", Duration::from_millis(1500))).await.unwrap();
    let id = a.enqueue(msg(&["x@dest.test"]), "hi\r\n".into()).await.unwrap().id;
    // The accepting node holds it.
    assert_eq!((a.node(), a.lease_time()), ("a", Duration::from_millis(1500)));
    assert!(b.claim(10).await.unwrap().is_empty(), "A's fresh message is A's");
    assert!(a.renew().await.unwrap() >= 1);
    assert!(a.confirm(&id).await.unwrap() && !b.confirm(&id).await.unwrap(), "only the holder may deliver");
    // Renewed, a lease outlives its time: B still cannot take it after twice the lease time.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.renew().await.unwrap() >= 1);
        assert!(b.claim(10).await.unwrap().is_empty(), "a renewed lease was taken");
    }
    // A gives it back with its state, due now: B takes it, and A no longer can.
    let mut m = a.load(&id).await.unwrap();
    m.recipients[0].attempts = 1;
    a.release(&m, 0).await.unwrap();
    let got = b.claim(10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].msg.recipients[0].attempts, got[0].force), (1, false));
    assert!(a.claim(10).await.unwrap().is_empty(), "B holds it");
    assert!(!a.confirm(&id).await.unwrap(), "A gave it back: A must not deliver it now");
    // B dies (no renewal): after the lease time A resumes it, and B's late state is refused.
    let start = std::time::Instant::now();
    let again = loop {
        let c = a.claim(10).await.unwrap();
        if !c.is_empty() {
            break c;
        }
        assert!(start.elapsed() < WAIT, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(start.elapsed() >= Duration::from_millis(900), "taken before the lease ran out: {:?}", start.elapsed());
    assert_eq!(again[0].msg.id, id);
    assert!(matches!(b.release(&got[0].msg, 0).await, Err(QueueError::NotFound(_))), "a lost lease stores nothing");
    // Not due yet: not claimed by anyone; a flush makes it due, with every recipient forced.
    a.release(&again[0].msg, QueuedMessage::now_ms() + 3_600_000).await.unwrap();
    assert!(b.claim(10).await.unwrap().is_empty());
    assert_eq!(b.flush().await.unwrap(), 1);
    let forced = b.claim(10).await.unwrap();
    assert!(forced.len() == 1 && forced[0].force);
    let census = a.census().await.unwrap();
    assert_eq!((census.messages, census.bytes), (1, 4));
}

/// A slot, or a failure after [`WAIT`] (never a hang).
async fn bounded(
    f: impl std::future::Future<Output = Result<Box<dyn smtp_relay::queue::SlotLease>, QueueError>>,
) -> Box<dyn smtp_relay::queue::SlotLease> {
    tokio::time::timeout(WAIT, f).await.expect("a free slot in time").unwrap()
}

#[tokio::test]
async fn destination_slots_are_shared_by_the_nodes() {
    let pg = Postgres::start();
    // Leases far longer than the test: only a release frees a slot, never an expiry.
    let long = Duration::from_secs(3600);
    let a = PgQueue::connect(&pg.url(), options("a", long)).await.unwrap();
    let b = PgQueue::connect(&pg.url(), options("b", long)).await.unwrap();
    let s1 = bounded(a.slot("mx.dest.test:25", 2)).await;
    let _s2 = bounded(b.slot("mx.dest.test:25", 2)).await;
    let other = bounded(a.slot("mx.other.test:25", 2)).await;
    let b2 = b.clone();
    let third = tokio::spawn(async move { b2.slot("mx.dest.test:25", 2).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection to a destination limited to two");
    drop(s1);
    tokio::time::timeout(WAIT, third).await.expect("slot given back").unwrap().unwrap();
    // Slots dropped and left idle go back to the database: only the one still held stays taken.
    drop(other);
    let owners = || pg.sql("postgres", "SELECT count(*) FROM tern_slot WHERE owner IS NOT NULL").1.trim().to_string();
    let start = std::time::Instant::now();
    while owners() != "1" {
        assert!(start.elapsed() < WAIT, "an idle slot was never released: {} held", owners());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A slot kept idle for one destination is never reused for another.
    drop(bounded(a.slot("mx.x.test:25", 1)).await);
    let y = bounded(a.slot("mx.y.test:25", 1)).await;
    let (_, held, _) = pg.sql("postgres", "SELECT count(*) FROM tern_slot WHERE dest = 'mx.y.test:25' AND owner = 'a'");
    assert_eq!(held.trim(), "1", "mx.y.test's own slot is taken");
    drop(y);
    // Shutting a node down gives back what it holds.
    assert!(b.release_all().await.unwrap() >= 1);
    a.release_all().await.unwrap();
    assert_eq!(owners(), "0");
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_an_absent_database_is_an_error() {
    let pg = Postgres::start();
    let q = PgQueue::connect(&pg.url(), options("a", Duration::from_secs(30))).await.unwrap();
    assert_eq!(q.schema_version().await.unwrap(), smtp_relay::queue::SCHEMA_VERSION);
    // Connecting again migrates nothing and keeps the data.
    q.enqueue(msg(&["x@dest.test"]), "hi\r\n".into()).await.unwrap();
    let again = PgQueue::connect(&pg.url(), options("b", Duration::from_secs(30))).await.unwrap();
    assert_eq!(again.list().await.unwrap().len(), 1);
    // Synchronous commit for tern's sessions even where the server's default is off.
    let (code, _, err) = pg.sql("postgres", "ALTER SYSTEM SET synchronous_commit = off");
    assert_eq!(code, 0, "{err}");
    pg.sql("postgres", "SELECT pg_reload_conf()");
    let fresh = PgQueue::connect(&pg.url(), options("s", Duration::from_secs(30))).await.unwrap();
    let rows = fresh.sessions_synchronous_commit().await.unwrap();
    assert_eq!(rows, "on");
    let (code, _, err) = pg.sql("postgres", "UPDATE tern_schema SET version = 99");
    assert_eq!(code, 0, "{err}");
    match PgQueue::connect(&pg.url(), options("c", Duration::from_secs(30))).await {
        Err(e @ QueueError::SchemaTooNew { found: 99, .. }) => assert!(e.to_string().contains("newer"), "{e}"),
        other => panic!("{other:?}"),
    }
    let (_sock, addr) = tests::refused_port();
    let url = format!("postgres://tern@{addr}/postgres");
    match PgQueue::connect(&url, options("d", Duration::from_secs(30))).await {
        Err(QueueError::Database(e)) => assert!(e.contains("refused") || e.contains("connect"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Tools that only read leave an empty database alone.
    let empty = pg.database("empty");
    let tool = PgOptions { existing_only: true, ..options("e", Duration::from_secs(30)) };
    assert!(
        matches!(PgQueue::connect(&empty, tool).await, Err(QueueError::Database(e)) if e.contains("no tern queue"))
    );
}

#[tokio::test]
async fn a_lost_database_fails_writes_and_they_work_again_when_it_returns() {
    let pg = Postgres::start();
    let q = PgQueue::connect(&pg.url(), options("a", Duration::from_secs(30))).await.unwrap();
    let id = q.enqueue(msg(&["x@dest.test"]), "one\r\n".into()).await.unwrap().id;
    pg.stop();
    assert!(matches!(q.enqueue(msg(&["x@dest.test"]), "two\r\n".into()).await, Err(QueueError::Database(_))));
    assert!(q.claim(10).await.is_err());
    pg.start_again();
    let start = std::time::Instant::now();
    let two = loop {
        match q.enqueue(msg(&["x@dest.test"]), "two\r\n".into()).await {
            Ok(s) => break s.id,
            Err(e) => assert!(start.elapsed() < WAIT, "the queue did not come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut ids = vec![id, two];
    ids.sort();
    assert_eq!(q.list().await.unwrap(), ids, "nothing lost, nothing doubled");
}

#[tokio::test]
async fn tls_to_the_database_is_verified_with_rustls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, _, _) = tests::hop::certificate(certs.path(), "db", &["127.0.0.1"]);
    let pg = Postgres::start_tls(&cert, &certs.path().join("db.key"));
    let base = format!("postgres://tern@127.0.0.1:{}/postgres", pg.port);
    // The server's certificate, trusted by its CA file: TLS, and the queue works.
    let url = format!("{base}?sslmode=require&sslrootcert={}", cert.display());
    let q = PgQueue::connect(&url, options("a", Duration::from_secs(30))).await.unwrap();
    let id = q.enqueue(msg(&["x@dest.test"]), "over TLS\r\n".into()).await.unwrap().id;
    assert_eq!(q.list().await.unwrap(), [id]);
    // Not trusted (the web PKI does not know it): refused, not used without verification.
    match PgQueue::connect(&format!("{base}?sslmode=require"), options("b", Duration::from_secs(30))).await {
        Err(QueueError::Database(e)) => assert!(e.to_lowercase().contains("certificate"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Without TLS the server (hostssl only) says no.
    match PgQueue::connect(&format!("{base}?sslmode=disable"), options("c", Duration::from_secs(30))).await {
        Err(QueueError::Database(e)) => assert!(e.contains("pg_hba.conf"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_share_commits_within_the_batch_limits() {
    use smtp_relay::queue::{PG_BATCH_BYTES, PG_BATCH_MESSAGES, PG_CHUNK};
    let pg = Postgres::start();
    let q = PgQueue::connect(&pg.url(), options("a", Duration::from_secs(30))).await.unwrap();
    // 300 small messages at once: fewer commits than messages, none over the message limit.
    let small = (0..300).map(|i| {
        let q = q.clone();
        tokio::spawn(async move { q.enqueue(msg(&["x@dest.test"]), format!("m{i}\r\n").into()).await.unwrap() })
    });
    for t in small.collect::<Vec<_>>() {
        t.await.unwrap();
    }
    let s = q.commit_stats();
    eprintln!("300 small messages: {s:?}");
    assert_eq!(s.messages, 300);
    assert!(s.commits < 300, "no batching: {s:?}");
    assert!(s.commits >= 2, "300 messages cannot fit one commit of at most {PG_BATCH_MESSAGES}: {s:?}");
    assert!(s.most_messages <= PG_BATCH_MESSAGES as u64, "{s:?}");
    // 60 messages of one chunk each at once (15 MiB in all): batches stop near the byte limit.
    let body = bytes::Bytes::from(vec![b'x'; PG_CHUNK - 10]);
    let big = (0..60).map(|_| {
        let (q, body) = (q.clone(), body.clone());
        tokio::spawn(async move { q.enqueue(msg(&["x@dest.test"]), body).await.unwrap() })
    });
    for t in big.collect::<Vec<_>>() {
        t.await.unwrap();
    }
    let s = q.commit_stats();
    eprintln!("then 60 one-chunk messages: {s:?}");
    assert_eq!(s.messages, 360);
    assert!(s.most_bytes < (PG_BATCH_BYTES + PG_CHUNK) as u64, "a batch over the byte limit: {s:?}");
    assert_eq!(q.list().await.unwrap().len(), 360, "every message stored once");
}
