//! A two-peer mesh of real `meshd` processes for the metrics and Prometheus tests: peer
//! `a` forwards to `b/echo`, whose target is a server in the test process. Also a tiny HTTP
//! GET, an OpenMetrics sample reader and bounded polling.
//!
//! Kept apart from the shared `tests/common` fixture on purpose (that one is written on
//! another branch); only `tests/metrics.rs` and `tests/prometheus.rs` use this.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `f` every `every` until it returns `Some`, for at most `limit`; panics with `what`
/// (and the last observation) otherwise.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => thread::sleep(every),
        }
    }
}

/// Shorthand: poll every 50 ms for up to 10 s.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    wait_for(what, Duration::from_secs(10), Duration::from_millis(50), f)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    ports::free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

#[path = "../common/ports.rs"]
mod ports;

/// `GET path` over HTTP/1.1; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head in {text:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// One sample line of an OpenMetrics exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an exposition (comments skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never contain commas or quotes.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("label k=v");
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value: value.parse().expect("numeric sample value"),
        });
    }
    out
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A server standing in for a service: reads its client to the end, then answers
/// `reply_len` bytes and closes. Reports what it read on the returned channel.
pub fn sink_then_reply(reply_len: usize) -> (SocketAddr, std::sync::mpsc::Receiver<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut n = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let reply = vec![0x5au8; reply_len];
                let _ = conn.write_all(&reply);
                let _ = conn.shutdown(Shutdown::Write);
                let _ = tx.send(n);
            });
        }
    });
    (addr, rx)
}

/// The files of a two-peer mesh in a temp dir.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub a_admin: SocketAddr,
    pub b_admin: SocketAddr,
    pub b_mesh: SocketAddr,
    pub entrance: SocketAddr,
    pub target: SocketAddr,
}

impl Mesh {
    /// Writes the manifest, keys and host configs. `target` is b's `echo` service target.
    pub fn new(target: SocketAddr, ping_interval_ms: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let peers = root.join("peers");
        fs::create_dir(&peers).expect("mkdir peers");
        let b_mesh: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let entrance: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let a_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let b_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let a_mesh = free_port();
        let key_a = meshd::keys::create_private_key_file(&root.join("a.key")).expect("key a");
        let key_b = meshd::keys::create_private_key_file(&root.join("b.key")).expect("key b");
        fs::write(
            peers.join("mesh.toml"),
            format!(
                "mesh_id = \"metrics-test\"\n[limits]\nping_interval_ms = {ping_interval_ms}\n\
                 handshake_timeout_ms = 1000\nlink_wait_ms = 5000\n"
            ),
        )
        .expect("mesh.toml");
        fs::write(
            peers.join("a.toml"),
            format!(
                "endpoints = [\"127.0.0.1:{a_mesh}\"]\npublic_key = \"{key_a}\"\n\n\
                 [[forwards]]\nlisten = \"{entrance}\"\nto = \"b/echo\"\n"
            ),
        )
        .expect("a.toml");
        fs::write(
            peers.join("b.toml"),
            format!(
                "endpoints = [\"{b_mesh}\"]\npublic_key = \"{key_b}\"\n\n\
                 [services.echo]\ntarget = \"{target}\"\nallow = [\"a\"]\n"
            ),
        )
        .expect("b.toml");
        for (name, listen, admin) in [
            ("a", format!("127.0.0.1:{a_mesh}"), a_admin),
            ("b", b_mesh.to_string(), b_admin),
        ] {
            let state = root.join(format!("state-{name}"));
            fs::create_dir(&state).expect("state dir");
            fs::write(
                root.join(format!("{name}-host.toml")),
                format!(
                    "name = \"{name}\"\nmanifest = \"peers\"\nkey = \"{name}.key\"\n\
                     listen = \"{listen}\"\nadmin = \"{admin}\"\nstate_dir = \"{}\"\n",
                    state.display()
                ),
            )
            .expect("host config");
        }
        Self {
            dir,
            a_admin,
            b_admin,
            b_mesh,
            entrance,
            target,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Starts peer `name` ("a" or "b") and waits for its admin server.
    pub fn start(&self, name: &str) -> Daemon {
        let admin = if name == "a" {
            self.a_admin
        } else {
            self.b_admin
        };
        Daemon::start(self.root(), name, admin)
    }

    /// The private key file's text of peer `name` (to check that no log holds it).
    pub fn private_key_text(&self, name: &str) -> String {
        fs::read_to_string(self.root().join(format!("{name}.key")))
            .expect("key file")
            .trim()
            .to_owned()
    }
}

/// A running `meshd` child process; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts meshd `name` and waits for its admin server. The ports were free when the
    /// configs were written, but a concurrent test's outgoing connection can hold one for a
    /// moment: a start that fails to bind is retried a few times.
    fn start(root: &Path, name: &str, admin: SocketAddr) -> Self {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        for attempt in 1.. {
            let n = STARTS.fetch_add(1, Ordering::Relaxed);
            let log = root.join(format!("{name}-{n}.log"));
            let err = fs::File::create(&log).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_meshd"))
                .arg("--config")
                .arg(root.join(format!("{name}-host.toml")))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("spawn meshd");
            let mut d = Self { child, admin, log };
            let log_path = d.log.clone();
            let child = &mut d.child;
            let started = eventually(&format!("meshd {name} admin at {admin}"), || {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    if attempt < 5 && log.contains("cannot listen") {
                        return Ok(false);
                    }
                    panic!("meshd {name} exited with {status}:\n{log}");
                }
                http_get(admin, "/healthz").map(|_| true)
            });
            if started {
                return d;
            }
            thread::sleep(Duration::from_millis(200));
        }
        unreachable!("the loop returns or panics")
    }

    /// GET /metrics.
    pub fn metrics(&self) -> Result<String, String> {
        match http_get(self.admin, "/metrics")? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("/metrics answered {code}: {body}")),
        }
    }

    /// GET /status, parsed.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        match http_get(self.admin, "/status")? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            (code, body) => Err(format!("/status answered {code}: {body}")),
        }
    }

    /// The state ("up"/"down") of the link to `peer` in `direction`, from /status.
    pub fn link(&self, peer: &str, direction: &str) -> Result<serde_json::Value, String> {
        let status = self.status()?;
        status["links"]
            .as_array()
            .and_then(|links| {
                links
                    .iter()
                    .find(|l| l["peer"] == peer && l["direction"] == direction)
                    .cloned()
            })
            .ok_or_else(|| format!("no {direction} link to {peer} in {status}"))
    }

    /// Waits until the link to `peer` in `direction` is in `state`; returns its entry.
    pub fn wait_link(&self, peer: &str, direction: &str, state: &str) -> serde_json::Value {
        eventually(&format!("{direction} link to {peer} {state}"), || {
            let link = self.link(peer, direction)?;
            if link["state"] == state {
                Ok(link)
            } else {
                Err(link.to_string())
            }
        })
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) to this child.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `send` bytes through the entrance, half-closes, and reads the reply to its end.
pub fn transfer(entrance: SocketAddr, send: usize) -> usize {
    let mut s = TcpStream::connect(entrance).expect("connect entrance");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut left = send;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("write through the mesh");
        left -= n;
    }
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got += n,
            Err(e) => panic!("read through the mesh after {got} bytes: {e}"),
        }
    }
}
