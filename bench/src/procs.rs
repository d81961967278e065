//! The processes the harness starts and the scratch space they run in: temporary
//! directories (tempfile's, removed on drop), children killed on drop (only our own PIDs,
//! never by name), commands run under a deadline, free loopback ports, and per-process
//! figures from /proc.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// How often process and port waits look again.
const POLL: Duration = Duration::from_millis(20);

/// A new directory `meshbench-LABEL-XXXXXX` under the system temp directory, removed with
/// everything in it when the handle drops.
pub fn temp_dir(label: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("meshbench-{label}-"))
        .tempdir()
        .with_context(|| format!("create a temporary directory for {label}"))
}

/// Writes `dir/name` and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// One long-running child with its output going to a log file.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout + stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if the process already exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of what it printed.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether a line of its log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        fs::read_to_string(&self.log)
            .map(|t| t.contains(needle))
            .unwrap_or(false)
    }

    /// SIGKILLs it (by its own PID) and reaps it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a command run to completion left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, stdout and stderr into files of `dir` (no pipe to fill up);
/// kills it and fails after `timeout`.
pub fn run_with_timeout(
    mut cmd: Command,
    dir: &Path,
    label: &str,
    timeout: Duration,
) -> Result<Finished> {
    let out_path = dir.join(format!("{label}.out"));
    let err_path = dir.join(format!("{label}.err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{label}: {:?} still ran after {timeout:?}",
                cmd.get_program()
            );
        }
        std::thread::sleep(POLL);
    };
    let mut stdout = String::new();
    File::open(&out_path)?.read_to_string(&mut stdout)?;
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// Whether `program` can be found on PATH (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    find_on_path(program).is_some()
}

/// The full path of `program` on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A loopback port that was free a moment ago, from 20000-31999: a port from the kernel's
/// ephemeral range (a `:0` bind) can be taken as the local port of any outgoing connection
/// (a link dial, an iperf3 client) before the tunnel binds it (seen on 2026-12-01: meshd
/// exited with "Address already in use" and a phase failed).
pub fn free_port() -> Result<u16> {
    let listener = meshd::ports::bind_below_ephemeral(std::net::Ipv4Addr::LOCALHOST.into())
        .context("pick a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts TCP connections on `addr`, checking that every one of
/// `procs` still runs; fails after `timeout`.
pub fn wait_listening(addr: SocketAddr, procs: &mut [&mut Proc], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `PING` to a Redis server at `addr` and expects `+PONG`, until it works or
/// `timeout` passes: the tunnel in front of a Redis target carries a whole round trip.
pub fn wait_redis_pong(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match redis_ping(addr, Duration::from_secs(2)) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no PONG through {addr} within {timeout:?}: {last}")
}

/// One connect → `PING` → `+PONG` → close.
pub fn redis_ping(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    if &buf != b"+PONG\r\n" {
        bail!("unexpected reply {:?}", String::from_utf8_lossy(&buf));
    }
    Ok(())
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat, counted
/// after the parenthesised command name, which may hold spaces).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second for /proc CPU times. Linux has reported 100 (USER_HZ) on every
/// architecture for decades, and reading sysconf would need unsafe code.
pub const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Quick self-check: an io error kind used by callers to recognise port exhaustion.
pub fn is_addr_exhausted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable
}
