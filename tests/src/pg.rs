//! A private PostgreSQL server for the tests: `initdb` and `pg_ctl` from Debian's packages
//! (installed by `.ci/install-peers`), run in a temporary directory on a free loopback port, as
//! the unprivileged `postgres` user when the tests run as root. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run_bounded;

/// A running test database server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    /// Extra server settings (`-c NAME=VALUE ...`).
    extra: String,
}

/// The directory of PostgreSQL's server programs (the newest installed version).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().expect("PostgreSQL server programs not found under /usr/lib/postgresql: run .ci/install-peers")
}

fn is_root() -> bool {
    let (code, out, _) = run_bounded(Command::new("id").arg("-u"), b"");
    code == 0 && out.trim() == "0"
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Postgres {
    /// Creates a database cluster and starts it (fsync on: the durability tests rely on it).
    pub fn start() -> Postgres {
        let pg = Postgres::init();
        pg.start_again();
        pg
    }

    /// The same, accepting only TLS connections over TCP, with this certificate and key (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> Postgres {
        let mut pg = Postgres::init();
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = pg.dir.path().join(to);
            std::fs::copy(from, &dest).expect("copy certificate");
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            if pg.as_postgres {
                let (code, _, err) = run_bounded(Command::new("chown").arg("postgres:").arg(&dest), b"");
                assert_eq!(code, 0, "chown: {err}");
            }
        }
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
        let hba_path = pg.dir.path().join("pg_hba.conf");
        std::fs::write(&hba_path, hba).expect("pg_hba.conf");
        if pg.as_postgres {
            let (code, _, err) = run_bounded(Command::new("chown").arg("postgres:").arg(&hba_path), b"");
            assert_eq!(code, 0, "chown: {err}");
        }
        let d = pg.dir.path().display();
        pg.extra = format!(
            "-c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key -c hba_file={d}/pg_hba.conf"
        );
        pg.start_again();
        pg
    }

    fn init() -> Postgres {
        let dir = tempfile::Builder::new().prefix("tern-pg").tempdir().expect("tempdir");
        let as_postgres = is_root();
        if as_postgres {
            let (code, _, err) = run_bounded(Command::new("chown").arg("postgres:").arg(dir.path()), b"");
            assert_eq!(code, 0, "chown: {err}");
        }
        let pg = Postgres { bin: bin_dir(), port: free_port(), dir, as_postgres, extra: String::new() };
        let data = pg.data();
        let (code, out, err) = pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "tern", "-E", "UTF8", "--no-sync"]);
        assert_eq!(code, 0, "initdb failed: {out}{err}");
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir(self.dir.path());
        run_bounded(&mut cmd, b"")
    }

    /// Starts the server (again) on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=64MB {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let log = self.dir.path().join("log").display().to_string();
        let (code, out, err) =
            self.run("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "-t", "25", "start"]);
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        assert_eq!(code, 0, "pg_ctl start failed: {out}{err}\n{log}");
    }

    /// Stops the server (fast shutdown: connections are closed at once).
    pub fn stop(&self) {
        let (code, out, err) = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "-t", "25", "stop"]);
        assert_eq!(code, 0, "pg_ctl stop failed: {out}{err}");
    }

    /// The connection URL of database `postgres` as user `tern`.
    pub fn url(&self) -> String {
        format!("postgres://tern@127.0.0.1:{}/postgres", self.port)
    }

    /// A new empty database on this server, and its URL (one per test on a shared server).
    pub fn database(&self, name: &str) -> String {
        let (code, out, err) = self.sql("postgres", &format!("CREATE DATABASE {name}"));
        assert_eq!(code, 0, "create database: {out}{err}");
        format!("postgres://tern@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` with psql against database `db`; (exit code, stdout, stderr).
    pub fn sql(&self, db: &str, sql: &str) -> (i32, String, String) {
        let port = self.port.to_string();
        self.run(
            "psql",
            &["-h", "127.0.0.1", "-p", &port, "-U", "tern", "-d", db, "-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql],
        )
    }

    /// The directory holding the server's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "-t", "10", "stop"]);
    }
}
