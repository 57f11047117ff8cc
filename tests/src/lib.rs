//! Shared support for Tern's end-to-end tests: the `tern` binary as a child process, a raw SMTP
//! client, bounded waiting, and Maildir inspection. The README's examples compile as this
//! crate's doc tests (below).
#![doc = include_str!("../../README.md")]

pub mod dns;
pub mod hop;
pub mod https;
pub mod pg;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Upper bound for every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `tern` binary built by `cargo test --workspace` (next to the test executable).
pub fn tern_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("tern{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} not built: run `cargo test --workspace` (it builds the tern binary)", bin.display());
    bin
}

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing
/// running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with `stdin` as its input and returns (exit code, stdout, stderr); a child still
/// running after [`WAIT`] is killed and the test fails naming the command.
pub fn run_bounded(cmd: &mut Command, stdin: &[u8]) -> (i32, String, String) {
    use std::io::{Read, Write};
    let mut child =
        Killed(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start child"));
    let (mut input, mut out, mut err) = (
        child.0.stdin.take().expect("stdin"),
        child.0.stdout.take().expect("stdout"),
        child.0.stderr.take().expect("stderr"),
    );
    let stdin = stdin.to_vec();
    std::thread::spawn(move || input.write_all(&stdin));
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < WAIT, "{cmd:?} still running after {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().expect("reader")).into_owned();
    (status.code().unwrap_or(-1), text(out), text(err))
}

/// A loopback port that is bound but not listening: connecting to it is refused, and no other
/// test can take it while the socket is held. `listen()` on the socket opens it later.
pub fn refused_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = sock.local_addr().expect("local address");
    (sock, addr)
}

/// Polls `cond` every 10 ms until it holds; panics after [`WAIT`] with `what`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running `tern serve`.
pub struct Tern {
    /// The child process.
    pub child: Child,
    /// The first listening address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its stdout lines after startup, gathered by a thread.
    pub stdout: std::sync::mpsc::Receiver<String>,
    /// Where it serves metrics (`--metrics-listen`), if it does.
    pub metrics: Option<SocketAddr>,
}

impl Tern {
    /// Starts `tern serve --listen 127.0.0.1:0 --data-dir DIR ARGS...` and waits until it listens.
    pub fn serve(data_dir: &Path, args: &[&str]) -> Tern {
        let mut child = Command::new(tern_bin())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--hostname", "mx.test", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tern serve");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if std::env::var_os("TERN_TEST_LOG").is_some() {
                    eprintln!("[tern] {line}");
                }
                let _ = tx2.send(format!("log: {line}"));
            }
        });
        let start = Instant::now();
        let mut metrics = None;
        let addr = loop {
            let line = rx
                .recv_timeout(WAIT.saturating_sub(start.elapsed()))
                .unwrap_or_else(|_| panic!("tern serve did not start"));
            if let Some(rest) = line.strip_prefix("tern serve: metrics on http://") {
                metrics = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("tern serve: listening on ") {
                break rest.split(' ').next().and_then(|a| a.parse().ok()).expect("address in startup line");
            }
        };
        Tern { child, addr, data_dir: data_dir.to_path_buf(), stdout: rx, metrics }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(start.elapsed() < WAIT, "tern did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files in `DIR/mail/USER/new`.
pub fn maildir_files(data_dir: &Path, user: &str) -> Vec<PathBuf> {
    let dir = data_dir.join("mail").join(user).join("new");
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

/// A plain-TCP SMTP client speaking raw lines, for exact-reply tests.
pub struct Raw<S> {
    /// The stream.
    pub s: S,
}

impl Raw<tokio::net::TcpStream> {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> (Self, String) {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut r = Raw { s };
        let g = r.reply().await;
        (r, g)
    }

    /// Connects from a given local address (e.g. 127.0.0.2 to look untrusted).
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> (Self, String) {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(local, 0)).expect("bind local");
        let s = sock.connect(addr).await.expect("connect");
        let mut r = Raw { s };
        let g = r.reply().await;
        (r, g)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// Reads one whole (possibly multi-line) reply.
    pub async fn reply(&mut self) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, async {
            let mut b = [0u8; 1];
            loop {
                if self.s.read(&mut b).await.expect("read") == 0 {
                    break;
                }
                out.push(b[0]);
                if out.ends_with(b"\r\n") {
                    let last = out[..out.len() - 2].rsplit(|&c| c == b'\n').next().unwrap_or(&[]);
                    if last.len() >= 4 && last[3] == b' ' {
                        break;
                    }
                }
            }
        })
        .await
        .expect("reply in time");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Writes `line` and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.s.write_all(line.as_bytes()).await.expect("write");
        self.reply().await
    }

    /// A whole transaction; returns the final reply.
    pub async fn send_mail(&mut self, verb: &str, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("{verb} FROM:<{from}>\r\n")).await;
        assert!(r.starts_with("250"), "{verb}: {r}");
        let mut any = false;
        for t in to {
            any |= self.cmd(&format!("RCPT TO:<{t}>\r\n")).await.starts_with("250");
        }
        if !any {
            self.cmd("RSET\r\n").await;
            return "no recipient".into();
        }
        let r = self.cmd("DATA\r\n").await;
        assert!(r.starts_with("354"), "DATA: {r}");
        self.cmd(&format!("{body}\r\n.\r\n")).await
    }
}

/// A relay served in-process: `smtp-server` + `smtp-relay` + scheduler + control socket.
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The relay (queue, terminals).
    pub relay: smtp_relay::Relay,
    /// Its data directory.
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    shutdown: smtp_server::ShutdownHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Starts a relay with `config` on 127.0.0.1:0 (MX lookups answered by `resolver`, if given).
    pub async fn start(
        config: smtp_relay::RelayConfig,
        resolver: Option<std::sync::Arc<dyn smtp_relay::dns::MxResolver>>,
    ) -> InProcess {
        let queue = std::sync::Arc::new(smtp_relay::FsQueue::open(config.data_dir.join("queue")).expect("queue"));
        Self::start_with_queue(config, resolver, queue).await
    }

    /// Like [`InProcess::start`] on a socket from [`refused_port`], which starts listening now:
    /// the port was never free for another test to take.
    pub async fn start_held(
        socket: tokio::net::TcpSocket,
        config: smtp_relay::RelayConfig,
        resolver: Option<std::sync::Arc<dyn smtp_relay::dns::MxResolver>>,
    ) -> InProcess {
        let listener = socket.listen(1024).and_then(|l| l.into_std()).expect("listen");
        let queue = std::sync::Arc::new(smtp_relay::FsQueue::open(config.data_dir.join("queue")).expect("queue"));
        Self::launch(|b| b.listener(listener), config, resolver, queue).await
    }

    /// Like [`InProcess::start`] over a given queue (for example one that injects failures).
    pub async fn start_with_queue(
        config: smtp_relay::RelayConfig,
        resolver: Option<std::sync::Arc<dyn smtp_relay::dns::MxResolver>>,
        queue: std::sync::Arc<dyn smtp_relay::Queue>,
    ) -> InProcess {
        Self::launch(|b| b.listen(SocketAddr::from(([127, 0, 0, 1], 0))), config, resolver, queue).await
    }

    async fn launch(
        listen: impl FnOnce(smtp_server::Builder) -> smtp_server::Builder,
        config: smtp_relay::RelayConfig,
        resolver: Option<std::sync::Arc<dyn smtp_relay::dns::MxResolver>>,
        queue: std::sync::Arc<dyn smtp_relay::Queue>,
    ) -> InProcess {
        let data_dir = config.data_dir.clone();
        let hostname = config.hostname.clone();
        let auth = !config.auth_users.is_empty();
        let (relay, mut scheduler) = smtp_relay::Relay::new(config, queue).expect("relay");
        if let Some(r) = resolver {
            scheduler = scheduler.with_resolver(r);
        }
        let tls = smtp_server::tls::self_signed(&data_dir.join("tls"), &hostname).expect("tls");
        let server = listen(smtp_server::Server::builder(hostname))
            .tls(tls)
            .options(|o| {
                o.session.requiretls = true;
                if auth {
                    o.session.auth_mechanisms = vec![smtp_proto::auth::AuthMechanism::Plain];
                }
            })
            .bind(relay.policy(), relay.mail())
            .await
            .expect("bind");
        let addr = server.local_addrs()[0];
        let shutdown = server.shutdown_handle();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = scheduler.handle();
        let terminals = relay.terminals();
        let control = data_dir.join("control.sock");
        let tasks = vec![
            tokio::spawn(server.run()),
            tokio::spawn(scheduler.run(async move {
                let _ = stop_rx.await;
            })),
            tokio::spawn(async move {
                let _ = smtp_relay::control::serve(&control, terminals, handle).await;
            }),
        ];
        InProcess { addr, relay, data_dir, stop: Some(stop), shutdown, tasks }
    }

    /// Stops the server, the scheduler and the control socket.
    pub async fn stop(mut self) {
        self.shutdown.shutdown(Duration::from_secs(2)).await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}
