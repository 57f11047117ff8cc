//! The `tern` binary driven as a user would.

use std::process::Command;
use std::time::Duration;

use tests::{maildir_files, run_bounded, tern_bin, wait_until, Killed, Raw, Tern, WAIT};

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    run_bounded(Command::new(tern_bin()).args(args), stdin)
}

#[tokio::test]
async fn serve_send_smtplib_queue_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &[]);
    let server = tern.addr.to_string();
    // tern send, body from stdin, no headers: a minimal header block is added.
    let (code, out, err) =
        run(&["send", "--server", &server, "--from", "me@example.org", "--to", "bob@localhost"], b"hello bob\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("<bob@localhost>: 250 2.1.5") && out.contains("250 2.0.0 Ok: queued as "), "{out}");
    // A refused recipient: exit status 1.
    let (code, out, _) = run(
        &[
            "send",
            "--server",
            &server,
            "--from",
            "me@example.org",
            "--to",
            "bob@localhost",
            "--to",
            "x%y@localhost",
            "--tls",
            "none",
        ],
        b"Subject: s\n\nhi\n",
    );
    // The %-routed local part is refused (550 5.1.3); bob's copy still goes: exit status 1.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("<x%y@localhost>: 550 5.1.3") && out.contains("250 2.0.0"), "{out}");
    // Python's smtplib.
    let py = format!(
        "import smtplib\nwith smtplib.SMTP('127.0.0.1', {}, timeout=10) as s:\n    s.sendmail('py@example.org', ['carol@mx.test'], b'Subject: from python\\r\\n\\r\\nhi\\r\\n')\n",
        tern.addr.port()
    );
    let (code, _, err) = run_bounded(Command::new("python3").arg("-c").arg(&py), b"");
    assert_eq!(code, 0, "{err}");
    let data = dir.path().to_path_buf();
    wait_until("bob's and carol's mail", || {
        maildir_files(&data, "bob").len() == 2 && maildir_files(&data, "carol").len() == 1
    })
    .await;
    // The first message (over STARTTLS, the default of tern send) is the one without a Subject.
    let bob = maildir_files(&data, "bob")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find(|m| m.contains("Subject: tern send"))
        .expect("tern send's message");
    assert!(
        bob.starts_with(
            "Return-Path: <me@example.org>\nReceived: from localhost ([127.0.0.1])\n\tby mx.test (Tern) with ESMTPS"
        ),
        "{bob}"
    );
    assert!(
        bob.contains("\nSubject: tern send\n") && bob.contains("Message-ID: <") && bob.ends_with("\nhello bob\n"),
        "{bob}"
    );
    let carol = std::fs::read_to_string(&maildir_files(&data, "carol")[0]).unwrap();
    assert!(carol.contains("Subject: from python"));
    // tern queue list works while the server runs: everything was delivered, so it is empty.
    let msg = dir.path().join("queue/msg");
    wait_until("the queue to drain", move || std::fs::read_dir(&msg).map(|d| d.count() == 0).unwrap_or(false)).await;
    let (code, out, err) = run(&["queue", "list", "--data-dir", dir.path().to_str().unwrap()], b"");
    assert_eq!((code, out.as_str()), (0, "queue is empty\n"), "{err}");
    let status = tern.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(!dir.path().join("control.sock").exists());
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "hostname = \"mx.test\"\nmax_recipients = -3\n").unwrap();
    let (code, _, err) =
        run(&["serve", "--config", cfg.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap()], b"");
    assert_eq!(code, 78, "{err}");
    assert!(
        err.starts_with(&format!("tern: config error in {}, line 2, key `max_recipients`:", cfg.display())),
        "{err}"
    );
    std::fs::write(&cfg, "trusted_network = [\"10.0.0.0/99\"]\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()], b"");
    assert_eq!(code, 78);
    assert!(err.contains("line 1, key `trusted_network`"), "{err}");
    // Nothing was bound or created on failure.
    assert!(!dir.path().join("queue").exists());
}

#[tokio::test]
async fn config_file_and_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "max_recipients = 1\nuser = [\"alice\"]\n").unwrap();
    let tern = Tern::serve(dir.path(), &["--config", cfg.to_str().unwrap(), "--max-recipients", "2"]);
    let (mut c, _) = Raw::connect(tern.addr).await;
    c.cmd("EHLO t\r\n").await;
    c.cmd("MAIL FROM:<a@b.test>\r\n").await;
    assert!(c.cmd("RCPT TO:<nobody@mx.test>\r\n").await.starts_with("550 5.1.1"), "users from the file");
    assert!(c.cmd("RCPT TO:<alice@mx.test>\r\n").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>\r\n").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@mx.test>\r\n").await.starts_with("452"), "flag wins: 2 recipients");
    drop(tern);
}

#[test]
fn bench_against_sink_reports() {
    let mut sink = Killed(
        Command::new(tern_bin())
            .args(["sink", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(sink.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("tern sink listening on ").expect(&first).to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let j = json.to_str().unwrap();
    let (code, out, err) = run(
        &["bench", "--server", &addr, "--connections", "4", "--messages", "200", "--size", "2048", "--json", j],
        b"",
    );
    let _ = Command::new("kill").arg("-TERM").arg(sink.0.id().to_string()).status();
    let start = std::time::Instant::now();
    while sink.0.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(20));
    }
    let summary: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("200 sent, 200 accepted"), "{out}");
    assert!(out.contains("messages/s") && out.contains("latency ms: p50"), "{out}");
    assert!(summary.iter().any(|l| l.starts_with("tern sink: 200 messages")), "{summary:?}");
    // The latency histogram as bars, and the same results as JSON.
    assert!(out.lines().any(|l| l.contains(" ms ") && l.trim_end().ends_with('#')), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((v["sent"].as_u64(), v["accepted"].as_u64(), v["size"].as_u64()), (Some(200), Some(200), Some(2048)));
    let buckets = v["latency_ms"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(), 200, "{v}");
    assert!(v["latency_ms"]["p50"].as_f64().unwrap() <= v["latency_ms"]["p99"].as_f64().unwrap());
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--version"], b"");
    assert_eq!(code, 0);
    assert!(out.starts_with("tern "));
    for sub in ["serve", "send", "queue", "bench", "sink", "watch"] {
        let (code, out, _) = run(&[sub, "--help"], b"");
        assert_eq!(code, 0, "{sub}");
        assert!(out.contains("Example"), "{sub} --help has an example:\n{out}");
    }
}

#[tokio::test]
async fn queue_list_show_flush_delete_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (_held, dead) = tests::refused_port();
    let route = format!("far.test=127.0.0.1:{}", dead.port());
    let tern = Tern::serve(dir.path(), &["--route", &route, "--log-format", "json"]);
    let (code, out, _) = run(
        &["send", "--server", &tern.addr.to_string(), "--from", "me@mx.test", "--to", "x@far.test", "--tls", "none"],
        b"Subject: \x1b]0;owned\x07\n\nhi\n",
    );
    assert_eq!(code, 0, "{out}");
    let id = out.lines().last().unwrap().rsplit(' ').next().unwrap().to_string();
    let data = dir.path().to_str().unwrap();
    let (code, out, _) = run(&["queue", "list", "--data-dir", data], b"");
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("<me@mx.test>") && out.contains("1/1"), "{out}");
    let d = dir.path().to_path_buf();
    let shown = id.clone();
    wait_until("a failed attempt recorded", move || {
        let (_, out, _) = run(&["queue", "show", &shown, "--data-dir", d.to_str().unwrap()], b"");
        out.contains("last error:")
    })
    .await;
    let (code, out, _) = run(&["queue", "show", &id, "--data-dir", data], b"");
    assert_eq!(code, 0);
    assert!(out.contains("to:       <x@far.test> [pending"), "{out}");
    // Headers someone else wrote are shown with their control characters escaped.
    assert!(out.contains("Subject: \\x1b]0;owned\\x07") && !out.contains('\x1b'), "{out}");
    // The same for machines, and the counts.
    let (code, out, _) = run(&["queue", "list", "--json", "--data-dir", data], b"");
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = &list.as_array().unwrap()[0];
    assert_eq!(
        (m["id"].as_str(), m["state"].as_str(), m["from"].as_str()),
        (Some(id.as_str()), Some("queued"), Some("<me@mx.test>"))
    );
    let r = &m["recipients"][0];
    assert_eq!((r["to"].as_str(), r["state"].as_str()), (Some("<x@far.test>"), Some("pending")));
    assert!(r["attempts"].as_u64().unwrap() >= 1 && r["last_error"].is_string(), "{m}");
    let (code, out, _) = run(&["queue", "show", &id, "--json", "--data-dir", data], b"");
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(shown["headers"].as_str().unwrap().contains("Subject: \x1b]0;owned"), "{shown}");
    assert_eq!(shown["size"], m["size"]);
    let (code, out, _) = run(&["queue", "stats", "--json", "--data-dir", data], b"");
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((st["messages"].as_u64(), st["recipients"]["pending"].as_u64()), (Some(1), Some(1)), "{st}");
    assert_eq!(st["pending_by_destination"][0]["destination"].as_str(), Some("far.test"));
    assert_eq!(st["oldest"]["id"].as_str(), Some(id.as_str()));
    assert_eq!(st["bytes"], m["size"]);
    let (_, out, _) = run(&["queue", "stats", "--data-dir", data], b"");
    assert!(out.contains("messages:   1 (") && out.contains("1 pending") && out.contains("far.test"), "{out}");
    let (code, out, _) = run(&["queue", "flush", "--data-dir", data], b"");
    assert_eq!((code, out.trim()), (0, "flush requested"));
    let (code, out, _) = run(&["queue", "delete", &id, "--data-dir", data], b"");
    assert_eq!((code, out.trim().to_string()), (0, format!("deleted {id}")));
    // Deleting what is not there is an error, not "deleted".
    let (code, out, err) = run(&["queue", "delete", &id, "--data-dir", data], b"");
    assert!(code != 0 && out.is_empty() && err.contains(&format!("no queued message {id}")), "{code} {out} {err}");
    let (_, out, _) = run(&["queue", "list", "--data-dir", data], b"");
    assert!(out.contains("queue is empty"), "{out}");
    let (_, out, _) = run(&["queue", "list", "--json", "--data-dir", data], b"");
    assert_eq!(out.trim(), "[]");
    let logs: Vec<String> =
        tern.stdout.try_iter().filter_map(|l| l.strip_prefix("log: ").map(str::to_string)).collect();
    assert!(
        !logs.is_empty() && logs.iter().all(|l| l.starts_with('{') && l.ends_with('}')),
        "JSON log lines: {logs:?}"
    );
    let status = tern.terminate();
    assert!(status.success());
}

#[test]
fn one_server_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = Tern::serve(dir.path(), &[]);
    let (code, _, err) = run(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()], b"");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is in use by another tern serve"), "{err}");
    assert!(first.terminate().success(), "the first server is unharmed");
}

#[test]
fn damaged_records_are_listed_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("queue");
    for sub in ["msg", "corrupt", "tmp"] {
        std::fs::create_dir_all(q.join(sub)).unwrap();
    }
    let record = "TERN-SPOOL 1\nid BROKEN1\narrival 1\nmail MAIL FROM:<who@sender.test>\n\
                  rcpt RCPT TO:<x@far.test>\nbody 00000000000000000100\nshort\r\n";
    std::fs::write(q.join("corrupt/BROKEN1"), record).unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["queue", "list", "--data-dir", data], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("BROKEN1") && l.contains("corrupt")), "{out}");
    let (code, out, err) = run(&["queue", "show", "BROKEN1", "--data-dir", data], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state:    corrupt") && out.contains("header says 100"), "{out}");
    assert!(out.contains("from:     <who@sender.test>") && out.contains("to:       <x@far.test>"), "{out}");
    // No server running: deleting an id that is not queued fails clearly.
    let (code, _, err) = run(&["queue", "delete", "NOSUCH1", "--data-dir", data], b"");
    assert!(code != 0 && err.contains("no queued message NOSUCH1"), "{code} {err}");
}

#[tokio::test]
async fn connection_limits_are_settable() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &["--max-connections-per-ip", "2"]);
    let (_a, g1) = tests::Raw::connect(tern.addr).await;
    let (_b, g2) = tests::Raw::connect(tern.addr).await;
    let (_c, g3) = tests::Raw::connect(tern.addr).await;
    assert!(g1.starts_with("220") && g2.starts_with("220"), "{g1}{g2}");
    assert!(g3.starts_with("421 4.7.0"), "the third from one address is refused: {g3}");
    // TOML key too.
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "max_connections = 1\n").unwrap();
    drop((_a, _b, _c));
    let tern2 = Tern::serve(&dir.path().join("two"), &["--config", cfg.to_str().unwrap()]);
    let (_d, g4) = tests::Raw::connect(tern2.addr).await;
    let (_e, g5) = tests::Raw::connect(tern2.addr).await;
    assert!(g4.starts_with("220") && g5.starts_with("421 4.7.0"), "{g4}{g5}");
    assert!(tern.terminate().success() && tern2.terminate().success());
}

#[tokio::test]
async fn private_files_whatever_the_umask_and_no_shared_data_dir() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // A data directory others can write to is refused, naming it.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, err) = run(&["serve", "--listen", "127.0.0.1:0", "--data-dir", shared.path().to_str().unwrap()], b"");
    assert!(code != 0 && err.contains("writable by group or others"), "{code} {err}");
    // Under umask 000, everything tern creates is still owner-only.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let script = format!(
        "umask 000; exec {} serve --listen 127.0.0.1:0 --hostname mx.test --data-dir {}",
        tests::tern_bin().display(),
        data.display()
    );
    let mut child = Killed(
        Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("tern serve: listening on ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "tern serve did not start");
    }
    let addr: std::net::SocketAddr =
        line["tern serve: listening on ".len()..].split(' ').next().unwrap().parse().unwrap();
    let (mut c, _) = tests::Raw::connect(addr).await;
    c.cmd("EHLO c\r\n").await;
    assert!(c
        .send_mail("MAIL", "a@x.test", &["u@mx.test", "v@mx.test"], "Subject: p\r\n\r\nprivate")
        .await
        .starts_with("250"));
    let d = data.clone();
    wait_until("delivered", move || maildir_files(&d, "u").len() == 1 && maildir_files(&d, "v").len() == 1).await;
    for p in ["", "queue", "queue/msg", "queue/free", "mail", "mail/u", "mail/u/new", "tls"] {
        assert_eq!(mode(&data.join(p)), 0o700, "{p}");
    }
    assert_eq!(mode(&maildir_files(&data, "u")[0]), 0o600);
    assert_eq!(mode(&data.join("control.sock")), 0o600);
    for f in std::fs::read_dir(data.join("queue/free")).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    drop(child);
}

#[test]
fn passwords_are_hashes_made_by_tern_passwd() {
    let (code, out, err) = run(&["passwd"], b"correct horse\n");
    assert_eq!(code, 0, "{err}");
    let hash = out.trim().to_string();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("tern.toml");
    // A plaintext password is refused, naming the entry and its line.
    std::fs::write(&cfg, "hostname = \"mx.test\"\n[auth_users]\nbob = \"correct horse\"\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], b"");
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("line 3") && err.contains("auth_users.bob") && err.contains("tern passwd"), "{err}");
    // The hash is accepted.
    std::fs::write(&cfg, format!("hostname = \"mx.test\"\n[auth_users]\nbob = \"{hash}\"\n")).unwrap();
    let tern = Tern::serve(&data, &["--config", cfg.to_str().unwrap()]);
    assert!(tern.terminate().success());
}

#[test]
fn a_bad_aliases_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "staff: alice, bob\nno colon on this line\n").unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--aliases",
            aliases.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&aliases.display().to_string()) && err.contains("line 2"), "{err}");
}

#[test]
fn dkim_keygen_writes_a_private_key_and_serve_checks_keys_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("s1.pem");
    let k = key.to_str().unwrap();
    let (code, out, err) =
        run(&["dkim", "keygen", "--domain", "a.test", "--selector", "s1", "--ed25519", "--out", k], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("s1._domainkey.a.test. IN TXT ( \"v=DKIM1; k=ed25519; p="), "{out}");
    assert!(out.contains(&format!("--dkim a.test=s1:{k}")), "{out}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // Never over an existing key.
    let before = std::fs::read(&key).unwrap();
    let (code, _, err) = run(&["dkim", "keygen", "--domain", "a.test", "--selector", "s1", "--out", k], b"");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exists") && err.lines().count() == 1, "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // RSA records are longer than one TXT string: split.
    let rsa = dir.path().join("r.pem");
    let (code, out, _) =
        run(&["dkim", "keygen", "--domain", "a.test", "--selector", "r", "--out", rsa.to_str().unwrap()], b"");
    assert_eq!(code, 0);
    assert!(out.contains("k=rsa; p=") && out.matches('"').count() >= 4, "{out}");
    // tern serve loads the keys before it listens: a good one starts, a bad one stops it.
    let data = dir.path().join("data");
    let tern = Tern::serve(&data, &["--dkim", &format!("a.test=s1:{k}")]);
    assert!(tern.terminate().success());
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    for spec in [format!("a.test=s1:{}", junk.display()), "a.test".to_string()] {
        let (code, _, err) =
            run(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--dkim", &spec], b"");
        assert_eq!(code, 78, "{err}");
        assert!(err.contains("dkim") && err.lines().count() == 1, "{err}");
    }
}

/// Issue 18: SIGTERM while a transaction is in flight: it finishes (250, delivered), then the
/// server says 421 and exits cleanly.
#[tokio::test]
async fn sigterm_lets_a_transaction_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &[]);
    let (mut c, _) = Raw::connect(tern.addr).await;
    c.cmd("EHLO c\r\n").await;
    assert!(c.cmd("MAIL FROM:<a@x.test>\r\n").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<u@mx.test>\r\n").await.starts_with("250"));
    assert!(c.cmd("DATA\r\n").await.starts_with("354"));
    let st = Command::new("kill").arg("-TERM").arg(tern.child.id().to_string()).status().unwrap();
    assert!(st.success());
    // Still accepted after the signal.
    let r = c.cmd("Subject: late\r\n\r\nin flight\r\n.\r\n").await;
    assert!(r.starts_with("250"), "{r}");
    assert!(c.reply().await.starts_with("421 4.3.2"));
    let d = dir.path().to_path_buf();
    wait_until("delivered", move || maildir_files(&d, "u").len() == 1).await;
    let status = tern.terminate();
    assert!(status.success(), "{status:?}");
}

/// Issue 18: `tern watch` end to end: a SEND reaches the watching terminal, control
/// characters escaped.
#[tokio::test]
async fn tern_watch_shows_send_messages() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let tern = Tern::serve(dir.path(), &[]);
    let mut watch = Killed(
        Command::new(tern_bin())
            .args(["watch", "alice", "--data-dir", dir.path().to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let out = std::io::BufReader::new(watch.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || rx.recv_timeout(WAIT).expect("a line from tern watch");
    assert_eq!(next(), "watching for alice (Ctrl-C to stop)");
    let (mut c, _) = Raw::connect(tern.addr).await;
    c.cmd("HELO c\r\n").await;
    let r = c.send_mail("SEND", "x@y.test", &["alice@mx.test"], "Subject: hi\r\n\r\nlook \x1b[2J here").await;
    assert!(r.starts_with("250"), "{r}");
    let mut lines = vec![next()];
    while lines.last().map(String::as_str) != Some("-------------------") {
        lines.push(next());
    }
    let shown = lines.join("\n");
    assert!(shown.starts_with("----- message -----") && shown.contains("look \\x1b[2J here"), "{shown}");
    assert!(!shown.contains('\x1b'));
    drop(watch);
    assert!(tern.terminate().success());
}
