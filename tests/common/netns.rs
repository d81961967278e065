//! Network namespaces for the fault tests: each test creates its own namespaces (named
//! after the test process's pid, so parallel runs never meet), joins them with veth
//! pairs on 10.x addresses, breaks the path between them with nftables rules that live
//! inside those namespaces, and deletes everything when dropped, also after a panic.
//!
//! Sockets belong to the namespace of the thread that creates them, so every namespace
//! gets its own tokio runtime whose threads all entered it ([`Netns::spawn`]); the test's
//! own runtime only awaits the results. Daemons run under `ip netns exec`, which execs
//! the daemon itself: the PID the test holds is meshd's, and it is killed by that PID.

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Worker threads of each namespace's runtime: two cores, so two.
const NS_WORKERS: usize = 2;

/// Fails the test, with what to do, unless it runs as root with `ip` and `nft` at hand.
/// The fault tests need all three; skipping would report checks that never ran.
pub fn require_root_and_tools() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .expect("Uid line in /proc/self/status");
    assert_eq!(
        euid, "0",
        "the fault tests create network namespaces and nftables rules and must run as \
         root (CI does); run `sudo -E cargo test --test faults` or scripts/test as root"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is missing: install {package} (scripts/test does, as root)"
        );
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread into the namespace mounted at `path`.
fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns only reads its two integer arguments; the fd stays open across the
    // call, and a network namespace switch affects this thread alone.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// A network namespace this test created; deleted on drop.
pub struct Netns {
    name: String,
    runtime: OnceLock<Runtime>,
}

impl Netns {
    /// Creates namespace `mf<pid><tag>` with its loopback up. `tag` tells the cases and
    /// roles of one test process apart.
    pub fn new(tag: &str) -> Self {
        let name = format!("mf{}{tag}", std::process::id());
        // A namespace left by an earlier process with the same pid would make `add` fail;
        // it is ours by name, so take it down first.
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self {
            name,
            runtime: OnceLock::new(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Loads `ruleset` (nft syntax) into this namespace's nftables.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(ruleset.as_bytes())
            .expect("write nft ruleset");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft in {} failed ({}) on:\n{ruleset}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            let path = format!("/run/netns/{}", self.name);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(NS_WORKERS)
                .thread_name(format!("ns-{}", self.name))
                .on_thread_start(move || enter(&path))
                .enable_all()
                .build()
                .expect("build namespace runtime")
        })
    }

    /// Runs `fut` on this namespace's runtime: every socket it creates is in here.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime().spawn(fut)
    }

    /// Runs `fut` in this namespace and waits for its result; panics if it panicked.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(fut).await.expect("task in a namespace panicked")
    }

    /// `GET path` from an HTTP server in this namespace (a daemon's admin address): the
    /// status code and the body.
    pub async fn http_get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let owned = path.to_owned();
        self.run(async move { http_get(addr, &owned).await })
            .await
            .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime blocks, which an async test must not do: let it go.
            rt.shutdown_background();
        }
        // Deleting a namespace deletes its interfaces (and so both ends of its veths) and
        // its nftables tables with it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A veth pair named `ifname` on both sides, `a_ip` in `a` and `b_ip` in `b` (a /24),
/// both ends up.
pub fn veth(a: &Netns, a_ip: Ipv4Addr, b: &Netns, b_ip: Ipv4Addr, ifname: &str) {
    a.ip(&[
        "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", &format!("{a_ip}/24"), "dev", ifname]);
    b.ip(&["addr", "add", &format!("{b_ip}/24"), "dev", ifname]);
    a.ip(&["link", "set", ifname, "up"]);
    b.ip(&["link", "set", ifname, "up"]);
}

/// A minimal `GET` (HTTP/1.1, `Connection: close`); runs in the caller's namespace.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
