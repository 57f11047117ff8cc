//! The memory bound of the message path: 20 concurrent 20 MiB transfers into `tern serve` keep
//! the server within 64 MiB of its idle size, during and after. Half of them go to one
//! mailbox (delivered on receipt), half to two (through the queue, then both Maildirs). The
//! same with the queue in PostgreSQL: the data goes into the database in chunks and comes
//! back one chunk at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tests::{maildir_files, wait_until, Raw, Tern};

const CLIENTS: usize = 20;
const SIZE: usize = 20 * 1024 * 1024;
const BOUND_KB: u64 = 64 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_20_mib_messages_stay_within_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &["--max-message-size", "30000000"]);
    let queue = dir.path().join("queue/msg");
    twenty_big(tern, dir.path(), || std::fs::read_dir(&queue).map(|d| d.count() == 0).unwrap_or(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_within_64_mib_on_a_postgresql_queue() {
    let pg = tests::pg::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &["--max-message-size", "30000000", "--queue", &pg.url()]);
    twenty_big(tern, dir.path(), || pg.sql("postgres", "SELECT count(*) FROM tern_message").1.trim() == "0").await;
}

/// Sends the twenty messages to `tern` (data in `dir`) and checks its memory until they are
/// delivered and `queue_empty` says the queue is empty.
async fn twenty_big(tern: Tern, dir: &std::path::Path, queue_empty: impl FnMut() -> bool) {
    let pid = tern.child.id();
    // Idle, after one small message went all the way through.
    let (mut c, _) = Raw::connect(tern.addr).await;
    c.cmd("EHLO c\r\n").await;
    assert!(c.send_mail("MAIL", "a@x.test", &["u@mx.test"], "Subject: warm\r\n\r\nup").await.starts_with("250"));
    wait_until("first delivery", || maildir_files(dir, "u").len() == 1).await;
    let idle = rss_kb(pid);
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let line = [vec![b'x'; 998], b"\r\n".to_vec()].concat();
    let body: Arc<Vec<u8>> = Arc::new(line.repeat(SIZE / line.len()));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (addr, body) = (tern.addr, body.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut c, _) = Raw::connect(addr).await;
            c.cmd("EHLO c\r\n").await;
            assert!(c.cmd("MAIL FROM:<a@x.test>\r\n").await.starts_with("250"));
            assert!(c.cmd("RCPT TO:<u@mx.test>\r\n").await.starts_with("250"));
            if i % 2 == 1 {
                assert!(c.cmd("RCPT TO:<v@mx.test>\r\n").await.starts_with("250"));
            }
            assert!(c.cmd("DATA\r\n").await.starts_with("354"));
            c.s.write_all(format!("Subject: big {i}\r\n\r\n").as_bytes()).await.unwrap();
            c.s.write_all(&body).await.unwrap();
            c.cmd(".\r\n").await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.starts_with("250"), "{r}");
    }
    wait_until("every big message delivered", || {
        maildir_files(dir, "u").len() == CLIENTS + 1 && maildir_files(dir, "v").len() == CLIENTS / 2
    })
    .await;
    wait_until("the queue emptied", queue_empty).await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (peak, after) = (peak.load(Ordering::Relaxed), rss_kb(pid));
    eprintln!("RSS idle {idle} kB, peak {peak} kB, after delivery {after} kB");
    assert!(peak <= idle + BOUND_KB, "peak {peak} kB vs idle {idle} kB");
    assert!(after <= idle + BOUND_KB, "after delivery {after} kB vs idle {idle} kB");
    let sizes: Vec<u64> = maildir_files(dir, "u").iter().map(|f| std::fs::metadata(f).unwrap().len()).collect();
    assert!(sizes.iter().filter(|s| **s > SIZE as u64 - 2 * 1024 * 1024).count() == CLIENTS, "{sizes:?}");
    assert!(tern.terminate().success());
}
