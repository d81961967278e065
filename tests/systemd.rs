//! meshd under a stand-in systemd: a unixgram socket in a temporary directory as
//! `NOTIFY_SOCKET`, as the service manager gives a `Type=notify` unit. The daemon must send
//! READY=1 once it serves, WATCHDOG=1 again and again at half of `WATCHDOG_USEC` when a
//! watchdog is set (`WatchdogSec=` in the shipped unit), and STOPPING=1 on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::mesh::TestMesh;
use common::servers::EchoServer;

/// The watchdog interval the test hands meshd: it must ping every 100 ms.
const WATCHDOG_USEC: u64 = 200_000;
/// How many pings the test waits for after READY=1.
const PINGS: usize = 5;

/// The notify socket and what arrived on it.
struct FakeSystemd {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl FakeSystemd {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next datagram, each line a `KEY=VALUE`; `None` when nothing came before
    /// `deadline`.
    fn next(&self, deadline: Instant) -> Option<(Instant, String)> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).trim_end().to_owned(),
            )),
            Err(_) => None,
        }
    }

    /// Waits for a datagram equal to `want`, returning those that came before it.
    fn wait_for(&self, want: &str, timeout: Duration) -> (Instant, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        while let Some((at, msg)) = self.next(deadline) {
            if msg == want {
                return (at, before);
            }
            before.push(msg);
        }
        panic!("no {want} within {timeout:?}; received {before:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_watchdog_pings_then_stopping() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    let systemd = FakeSystemd::new();
    let socket = systemd.path.to_string_lossy().into_owned();
    let usec = WATCHDOG_USEC.to_string();
    mesh.start_with_env("a", &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", &usec)]);

    let (ready_at, before) = systemd.wait_for("READY=1", Duration::from_secs(10));
    assert!(before.is_empty(), "messages before READY=1: {before:?}");
    // The admin server answers by the time READY=1 is sent.
    let status = common::netns::http_get(mesh.admin_addr("a"), "/healthz").await;
    assert!(
        status.is_ok(),
        "admin not serving after READY=1: {status:?}"
    );

    let mut pings = Vec::new();
    let deadline = ready_at + Duration::from_secs(5);
    while pings.len() < PINGS {
        match systemd.next(deadline) {
            Some((at, msg)) if msg == "WATCHDOG=1" => pings.push(at),
            Some((_, other)) => panic!("unexpected {other:?} while running"),
            None => panic!("{} WATCHDOG=1 in 5 s, wanted {PINGS}", pings.len()),
        }
    }
    // Half the interval is 100 ms: five pings take about 500 ms from READY=1; the bounds
    // tell "every half interval" from "once" or "as fast as it can" on a loaded machine.
    let span = pings[PINGS - 1] - ready_at;
    assert!(
        span >= Duration::from_millis(300) && span < Duration::from_millis(2500),
        "{PINGS} pings took {span:?} after READY=1 (want about 500 ms)"
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter()
            .all(|g| *g < Duration::from_micros(WATCHDOG_USEC)),
        "a gap between pings reached the whole watchdog interval: {gaps:?}"
    );

    mesh.signal("a", "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match systemd.next(deadline) {
            Some((_, msg)) if msg == "STOPPING=1" => break,
            Some((_, msg)) => seen.push(msg),
            None => panic!("no STOPPING=1 after SIGTERM; received {seen:?}"),
        }
    }
    assert!(
        seen.iter().all(|m| m == "WATCHDOG=1"),
        "unexpected messages before STOPPING=1: {seen:?}"
    );
    let exit = mesh.wait_exit("a", Duration::from_secs(10)).await;
    assert!(exit.success(), "meshd exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_without_watchdog_usec() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    let systemd = FakeSystemd::new();
    let socket = systemd.path.to_string_lossy().into_owned();
    // WATCHDOG_PID names another process: the watchdog is not meshd's (sd_watchdog_enabled).
    mesh.start_with_env(
        "a",
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    systemd.wait_for("READY=1", Duration::from_secs(10));
    // Reload: RELOADING=1 then READY=1, and nothing else in between.
    mesh.signal("a", "HUP");
    let (_, before) = systemd.wait_for("RELOADING=1", Duration::from_secs(10));
    assert!(before.is_empty(), "before RELOADING=1: {before:?}");
    let (_, before) = systemd.wait_for("READY=1", Duration::from_secs(10));
    assert!(
        before.is_empty(),
        "between RELOADING=1 and READY=1: {before:?}"
    );
    // A pinging meshd would have sent three or four pings in this time.
    let quiet = Instant::now() + Duration::from_millis(400);
    assert_eq!(systemd.next(quiet), None, "a datagram without a watchdog");
    assert!(mesh.stop("a").await.success());
}
