//! Mail acknowledged with 250 is never lost: SIGKILL the server while 20 clients send, restart
//! it, and find every acknowledged message exactly once (in a Maildir or still in the spool).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use smtp_client::{ClientOptions, Envelope, SmtpClient, TlsMode};
use smtp_proto::Domain;
use tests::{maildir_files, wait_until, Tern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &[]);
    let addr = tern.addr;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut o = ClientOptions::new(Domain::parse("load.test").unwrap());
    o.tls = TlsMode::None;
    let client = SmtpClient::new(o).unwrap();
    let env = Envelope::from_str_addr("load@load.test").unwrap().to_str_addr("crash@mx.test").unwrap().0;
    let mut workers = Vec::new();
    for w in 0..20 {
        let (client, env, acked) = (client.clone(), env.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let Ok(mut conn) = client.connect_addr(addr, "127.0.0.1").await else { return };
            for i in 0..25 {
                let token = format!("msg-{w}-{i}");
                let body = format!("Subject: {token}\r\nX-Token: {token}\r\n\r\nbody of {token}\r\n");
                match conn.send(&env, body.into_bytes().into()).await {
                    Ok(o) if o.all_accepted() => {
                        acked.lock().unwrap().insert(token);
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill the server in the middle of the run.
    let a = acked.clone();
    wait_until("some messages acknowledged", || a.lock().unwrap().len() >= 150).await;
    tern.kill();
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 150 && acked.len() < 500, "the kill landed mid-run ({} acked)", acked.len());

    // Restart on the same data directory: the spool is recovered and delivered.
    let tern = Tern::serve(dir.path(), &[]);
    let data = dir.path().to_path_buf();
    wait_until("the recovered spool to drain", || {
        std::fs::read_dir(data.join("queue/msg")).map(|d| d.count() == 0).unwrap_or(false)
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in maildir_files(&data, "crash") {
        let text = std::fs::read_to_string(&f).unwrap();
        let token = text.lines().find_map(|l| l.strip_prefix("X-Token: ")).expect("token header").to_string();
        *seen.entry(token).or_default() += 1;
    }
    for t in &acked {
        assert_eq!(seen.get(t), Some(&1), "acknowledged message {t} must be delivered exactly once");
    }
    assert!(seen.values().all(|&n| n == 1), "no message twice");
    let status = tern.terminate();
    assert!(status.success());
}
