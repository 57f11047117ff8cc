//! Failure paths of the message path, each injected for real: a queue that cannot store state,
//! bad and damaged entries in the spool, a full disk. Nothing acknowledged is lost, nothing is
//! delivered twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::{codes, Reply};
use smtp_relay::queue::StoredBody;
use smtp_relay::{Directory, MessageWriter, Queue, QueueError, QueuedMessage, RelayConfig, ScanEntry};
use smtp_server::{Decision, PolicyKind, PolicyRequest, Server, Transaction};
use tests::{maildir_files, wait_until, InProcess, Raw};
use tokio_util::sync::CancellationToken;

fn cfg(dir: &Path) -> RelayConfig {
    let mut c = RelayConfig::new("mx.local.test", dir);
    c.directory = Directory::new(["local.test".to_string()], ["alice".to_string(), "sender".to_string()]);
    c.retry_interval = Duration::from_secs(1);
    c.max_retry_interval = Duration::from_secs(1);
    c
}

/// An FsQueue whose state writes and removals fail with ENOSPC while `failing` is set.
struct FlakyQueue {
    inner: smtp_relay::FsQueue,
    failing: AtomicBool,
    failed_writes: AtomicUsize,
}

impl FlakyQueue {
    fn fail(&self) -> Result<(), QueueError> {
        if self.failing.load(Ordering::SeqCst) {
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(QueueError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Queue for FlakyQueue {
    async fn create(&self, msg: QueuedMessage) -> Result<Box<dyn MessageWriter>, QueueError> {
        self.inner.create(msg).await
    }
    async fn load(&self, id: &str) -> Result<QueuedMessage, QueueError> {
        self.inner.load(id).await
    }
    async fn body(&self, id: &str) -> Result<StoredBody, QueueError> {
        self.inner.body(id).await
    }
    async fn update(&self, msg: &QueuedMessage) -> Result<(), QueueError> {
        self.fail()?;
        self.inner.update(msg).await
    }
    async fn remove(&self, id: &str) -> Result<(), QueueError> {
        self.fail()?;
        self.inner.remove(id).await
    }
    async fn scan(
        &self,
        cancel: &CancellationToken,
        found: tokio::sync::mpsc::Sender<ScanEntry>,
    ) -> Result<(), QueueError> {
        self.inner.scan(cancel, found).await
    }
}

/// A next hop that accepts every recipient but `later@…` (450) and counts what it gets.
struct NextHop {
    addr: SocketAddr,
    delivered: Arc<Mutex<HashMap<String, usize>>>,
    deferred: Arc<AtomicUsize>,
}

async fn next_hop() -> NextHop {
    let delivered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let deferred = Arc::new(AtomicUsize::new(0));
    let d2 = deferred.clone();
    let policy = tower::service_fn(move |req: PolicyRequest| {
        let d = d2.clone();
        async move {
            Ok::<_, std::convert::Infallible>(match req.kind {
                PolicyKind::Rcpt { to, .. } if to.to_string().starts_with("<later@") => {
                    d.fetch_add(1, Ordering::SeqCst);
                    Decision::Respond(Reply::new(450, Some(smtp_proto::EnhancedCode::new(4, 2, 0)), "Try later"))
                }
                _ => Decision::Accept,
            })
        }
    });
    let got = delivered.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let got = got.clone();
        async move {
            tx.body.collect(1 << 20).await?;
            let mut g = got.lock().unwrap();
            for r in &tx.envelope.recipients {
                *g.entry(r.path.to_string()).or_default() += 1;
            }
            Ok::<_, smtp_server::BodyError>(codes::message_accepted())
        }
    });
    let server = Server::builder("hop.test").listen("127.0.0.1:0".parse().unwrap()).bind(policy, mail).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    NextHop { addr, delivered, deferred }
}

async fn submit(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let (mut c, _) = Raw::connect(addr).await;
    c.cmd("EHLO client.test\r\n").await;
    assert!(c.cmd(&format!("MAIL FROM:<{from}>\r\n")).await.starts_with("250"));
    for t in to {
        let r = c.cmd(&format!("RCPT TO:<{t}>\r\n")).await;
        assert!(r.starts_with("250"), "{t}: {r}");
    }
    assert!(c.cmd("DATA\r\n").await.starts_with("354"));
    c.cmd(&format!("{body}\r\n.\r\n")).await
}

#[tokio::test]
async fn delivered_recipients_are_never_sent_again_while_state_cannot_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let hop = next_hop().await;
    let mut c = cfg(dir.path());
    c.routes.insert("remote.test".into(), ("127.0.0.1".into(), hop.addr.port()));
    let queue = Arc::new(FlakyQueue {
        inner: smtp_relay::FsQueue::open(dir.path().join("queue")).unwrap(),
        failing: AtomicBool::new(true),
        failed_writes: AtomicUsize::new(0),
    });
    let relay = InProcess::start_with_queue(c, None, queue.clone()).await;
    let r = submit(
        relay.addr,
        "s@origin.test",
        &["alice@local.test", "ok@remote.test", "later@remote.test"],
        "Subject: once\r\n\r\nonly once",
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // Several attempts for the deferred recipient, each followed by a failed state write.
    wait_until("three attempts for later@", || hop.deferred.load(Ordering::SeqCst) >= 3).await;
    assert!(queue.failed_writes.load(Ordering::SeqCst) >= 2, "state writes are retried");
    assert_eq!(hop.delivered.lock().unwrap().get("<ok@remote.test>"), Some(&1), "remote recipient once");
    assert_eq!(maildir_files(dir.path(), "alice").len(), 1, "local recipient once");
    // The disk comes back: the state is stored, and still nothing is sent twice.
    queue.failing.store(false, Ordering::SeqCst);
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    let state = dir.path().join("queue/msg").join(format!("{id}.st"));
    wait_until("state stored", || state.exists()).await;
    let attempts = hop.deferred.load(Ordering::SeqCst);
    wait_until("one more attempt", || hop.deferred.load(Ordering::SeqCst) > attempts).await;
    assert_eq!(hop.delivered.lock().unwrap().get("<ok@remote.test>"), Some(&1));
    assert_eq!(maildir_files(dir.path(), "alice").len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn bad_queue_entries_do_not_stop_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("queue/msg");
    std::fs::create_dir_all(msg.join("0DIRECTORY")).unwrap();
    std::fs::write(msg.join("stray.file"), b"not mail").unwrap();
    let relay = InProcess::start(cfg(dir.path()), None).await;
    let r = submit(relay.addr, "s@origin.test", &["alice@local.test"], "Subject: flows\r\n\r\nstill flowing").await;
    assert!(r.starts_with("250"), "{r}");
    wait_until("delivered", || maildir_files(dir.path(), "alice").len() == 1).await;
    let rest: Vec<String> =
        std::fs::read_dir(&msg).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(rest.len(), 2, "only the bad entries stay: {rest:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_damaged_record_is_set_aside_and_its_sender_told() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("queue/msg");
    std::fs::create_dir_all(&msg).unwrap();
    // The envelope reads back; the body is shorter than the envelope says.
    std::fs::write(
        msg.join("BROKEN1"),
        "TERN-SPOOL 1\nid BROKEN1\narrival 1\nmail MAIL FROM:<sender@local.test>\n\
         rcpt RCPT TO:<x@remote.test>\nbody 00000000000000000100\nSubject: lost\r\n",
    )
    .unwrap();
    let relay = InProcess::start(cfg(dir.path()), None).await;
    wait_until("a notification to the sender", || maildir_files(dir.path(), "sender").len() == 1).await;
    let dsn = std::fs::read_to_string(&maildir_files(dir.path(), "sender")[0]).unwrap();
    for needle in ["Return-Path: <>", "Final-Recipient: rfc822; x@remote.test", "Action: failed", "Status: 5.3.0"] {
        assert!(dsn.contains(needle), "{needle:?} in\n{dsn}");
    }
    assert!(dir.path().join("queue/corrupt/BROKEN1").exists());
    relay.stop().await;
    // Told once: a restart does not tell again.
    let relay = InProcess::start(cfg(dir.path()), None).await;
    let r = submit(relay.addr, "s@origin.test", &["alice@local.test"], "Subject: later\r\n\r\nx").await;
    assert!(r.starts_with("250"), "{r}");
    wait_until("delivered", || maildir_files(dir.path(), "alice").len() == 1).await;
    assert_eq!(maildir_files(dir.path(), "sender").len(), 1);
    relay.stop().await;
}

/// A full disk (a real 1 MiB tmpfs; the tests run as root, as CI does): `452 4.3.1`, nothing
/// left behind, and the next message that fits is accepted.
#[tokio::test]
async fn full_disk_answers_452_4_3_1() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a tmpfs needs root (CI runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let relay = InProcess::start(cfg(&mnt), None).await;
    let line = "x".repeat(998);
    let big: String = std::iter::repeat_n(line.as_str(), 2048).collect::<Vec<_>>().join("\r\n");
    let r = submit(relay.addr, "s@origin.test", &["alice@local.test"], &big).await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    let tmp: Vec<_> = std::fs::read_dir(mnt.join("queue/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    let r = submit(relay.addr, "s@origin.test", &["alice@local.test"], "Subject: small\r\n\r\nfits").await;
    assert!(r.starts_with("250"), "{r}");
    wait_until("delivered", || maildir_files(&mnt, "alice").len() == 1).await;
    relay.stop().await;
}

/// A crash after a queued message's Maildir delivery was renamed into place but before the
/// queue recorded it: on restart the delivery is looked for — also in `cur/`, where a reader
/// may already have moved it — and not made a second time.
#[tokio::test]
async fn a_delivery_made_just_before_a_crash_is_not_made_again() {
    use smtp_proto::{ForwardPath, Path as SPath, ReversePath};
    let dir = tempfile::tempdir().unwrap();
    let q = smtp_relay::FsQueue::open(dir.path().join("queue")).unwrap();
    let path = |s: &str| SPath::parse(s).unwrap();
    let msg = QueuedMessage {
        id: String::new(),
        verb: Default::default(),
        from: ReversePath::Path(path("<s@origin.test>")),
        params: Default::default(),
        arrival: QueuedMessage::now(),
        client: None,
        helo: None,
        recipients: vec![smtp_relay::queue::RcptRecord::new(
            ForwardPath::Path(path("<alice@local.test>")),
            Default::default(),
        )],
        delay_warned: false,
        trusted: false,
    };
    let stored = q.enqueue(msg.clone(), "Subject: once\r\n\r\nonly once\r\n".into()).await.unwrap();
    drop(q);
    // The copy the crashed run wrote, already moved to cur/ and flagged seen by a reader.
    let mailbox = dir.path().join("mail/alice");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mailbox.join(sub)).unwrap();
    }
    let name = format!("{}.T{}R0.mx.local.test:2,S", msg.arrival, stored.id);
    std::fs::write(mailbox.join("cur").join(&name), "Subject: once\n\nonly once\n").unwrap();
    let relay = InProcess::start(cfg(dir.path()), None).await;
    let queue = relay.relay.queue();
    tokio::time::timeout(tests::WAIT, async {
        while !queue.list().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the queue drains");
    assert!(maildir_files(dir.path(), "alice").is_empty(), "no second copy in new/");
    assert_eq!(std::fs::read_dir(mailbox.join("cur")).unwrap().count(), 1);
    relay.stop().await;
}
