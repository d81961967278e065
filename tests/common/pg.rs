//! A real PostgreSQL server in a temporary directory, on a free port, trust auth,
//! superuser `postgres`. PostgreSQL refuses to run as root, so when the tests run as root
//! every PostgreSQL program runs as the `postgres` OS user (scripts/test creates it).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The directory holding initdb, pg_ctl and postgres: `$MESHD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else the directory of `initdb` on PATH (as scripts/test).
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHD_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists(),
            "MESHD_PG_BIN={} has no initdb",
            dir.display()
        );
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let initdb = dir.join("initdb");
        if initdb.exists() {
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            return real.parent().expect("initdb has a parent").to_path_buf();
        }
    }
    panic!("PostgreSQL server binaries not found: run scripts/test or apt-get install postgresql")
}

/// The uid and gid that PostgreSQL programs run as, or `None` to run them as ourselves.
fn unprivileged_ids() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if euid != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root needs a `postgres` OS user for PostgreSQL (scripts/test creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

/// A PostgreSQL server child process; stopped (fast shutdown) on drop.
pub struct PgServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl PgServer {
    /// Runs initdb into a temporary directory, starts postgres on a free port and waits
    /// until it accepts connections.
    pub fn start() -> Self {
        let bin = pg_bin();
        let ids = unprivileged_ids();
        let dir = tempfile::Builder::new()
            .prefix("meshd-pg-")
            .tempdir()
            .expect("tempdir");
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown pg dir");
        }
        let data = dir.path().join("data");
        let command = |program: &str, log: &str| -> Command {
            let mut cmd = Command::new(bin.join(program));
            cmd.current_dir(dir.path())
                .env("LC_ALL", "C")
                .stdin(Stdio::null());
            let log = File::create(dir.path().join(log)).expect("pg log");
            cmd.stdout(log.try_clone().expect("dup log")).stderr(log);
            if let Some((uid, gid)) = ids {
                cmd.uid(uid).gid(gid);
            }
            cmd
        };

        let status = command("initdb", "initdb.log")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C"])
            .status()
            .expect("spawn initdb");
        assert!(
            status.success(),
            "initdb failed ({status}): {}",
            read(&dir.path().join("initdb.log"))
        );

        let port = super::free_port();
        let child = command("postgres", "postgres.log")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .spawn()
            .expect("spawn postgres");
        let mut server = Self { child, port, dir };

        let pg_isready = if bin.join("pg_isready").exists() {
            bin.join("pg_isready")
        } else {
            PathBuf::from("pg_isready")
        };
        super::wait_until(
            Duration::from_secs(30),
            "postgres to accept connections",
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("postgres exited with {status}: {}", server.log());
                }
                Command::new(&pg_isready)
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .args(["-U", "postgres", "-d", "postgres", "-t", "1", "-q"])
                    .stdin(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            },
        );
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A tokio-postgres connection string for `host:port` (superuser, trust auth).
    pub fn conn_string(host: &str, port: u16) -> String {
        format!("host={host} port={port} user=postgres dbname=postgres connect_timeout=10")
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("postgres.log"))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart) would wait for every client,
        // and a tunnel may still hold one.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(super::POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
