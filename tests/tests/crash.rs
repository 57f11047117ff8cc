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
    let env = Envelope::from_str_addr("load@load.test").unwrap().to_str_addr("crash@mx.test").unwrap();
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

/// SIGKILL while deliveries to a next hop are in flight: after a restart every acknowledged
/// message reaches the next hop, and only the few that were in flight at the kill (sent, but
/// their outcome not yet stored) can arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_remote_delivery_loses_nothing() {
    use smtp_server::{AcceptAll, Server, Transaction};
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let got = received.clone();
    let mail = tower::service_fn(move |mut tx: Transaction| {
        let got = got.clone();
        async move {
            let data = tx.body.collect(1 << 20).await?;
            // A slow next hop, so that deliveries are in flight when the kill lands.
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            let text = String::from_utf8_lossy(&data).into_owned();
            if let Some(t) = text.lines().find_map(|l| l.strip_prefix("X-Token: ")) {
                *got.lock().unwrap().entry(t.to_string()).or_default() += 1;
            }
            Ok::<_, smtp_server::BodyError>(smtp_proto::codes::message_accepted())
        }
    });
    let hop = Server::builder("hop.test").listen("127.0.0.1:0".parse().unwrap()).bind(AcceptAll, mail).await.unwrap();
    let route = format!("far.test=127.0.0.1:{}", hop.local_addrs()[0].port());
    tokio::spawn(hop.run());

    let dir = tempfile::tempdir().unwrap();
    let args = ["--route", route.as_str(), "--outbound-tls", "none"];
    let tern = Tern::serve(dir.path(), &args);
    let addr = tern.addr;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut o = ClientOptions::new(Domain::parse("load.test").unwrap());
    o.tls = TlsMode::None;
    let client = SmtpClient::new(o).unwrap();
    let env = Envelope::from_str_addr("load@load.test").unwrap().to_str_addr("x@far.test").unwrap();
    let mut workers = Vec::new();
    for w in 0..10 {
        let (client, env, acked) = (client.clone(), env.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let Ok(mut conn) = client.connect_addr(addr, "127.0.0.1").await else { return };
            for i in 0..40 {
                let token = format!("remote-{w}-{i}");
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
    let r = received.clone();
    wait_until("deliveries under way", || r.lock().unwrap().len() >= 60).await;
    tern.kill();
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 60, "{} acked", acked.len());
    let tern = Tern::serve(dir.path(), &args);
    let data = dir.path().to_path_buf();
    wait_until("the recovered spool to drain", || {
        std::fs::read_dir(data.join("queue/msg")).map(|d| d.count() == 0).unwrap_or(false)
    })
    .await;
    let received = received.lock().unwrap().clone();
    for t in &acked {
        assert!(received.contains_key(t), "acknowledged message {t} never reached the next hop");
    }
    let twice = received.values().filter(|&&n| n > 1).count();
    assert!(twice <= 20, "{twice} messages arrived twice: more than were in flight at the kill");
    assert!(received.values().all(|&n| n <= 2), "nothing three times");
    assert!(tern.terminate().success());
}
