//! Fault injection (issue 20, part 2): two real daemons, each in a network namespace of its
//! own, a (exports the services, accepts the link) and b (has the forwards, dials), joined
//! by a veth pair; an attacker namespace x hangs off a on a second veth when a case needs
//! one. Faults are kills and signals of a daemon, nftables rules inside the namespaces
//! (black hole, TCP resets) and a veth taken down.
//!
//! Each case prints one table row of what it measured (`--nocapture` shows it) and asserts
//! a bound only where the bound is a protocol timer (ping interval, handshake deadline,
//! redial delay) or a ratio, never a speed. Needs root: it fails, never skips, without.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use common::checked::{self, Dir, Outcome};
use common::client::{expect_closed, Closed};
use common::mesh::TestMesh;
use common::netns::{veth, Netns};
use common::sample;

const MIB: u64 = 1 << 20;

/// a's address on the a–b veth: its mesh endpoint.
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// b's address on the a–b veth: where its dials come from.
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// a's address on the a–x veth.
const A_X_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);

/// The attacker's `i`-th source address.
fn x_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1, 10 + i as u8)
}

/// How long a daemon gets to bring its first link up.
const LINK_UP: Duration = Duration::from_secs(15);
/// How often the cases poll a daemon's /metrics while they time an event.
const METRICS_POLL: Duration = Duration::from_millis(5);
/// Scheduling slack on top of a bound made of `timer` periods (ping intervals, handshake
/// deadlines): the timer's wake-up, the metrics update and this test's 5 ms poll and HTTP
/// round trip, on two cores that also run the other test thread. Half a period, at most
/// 500 ms: an event one period late still fails.
fn slack(timer: Duration) -> Duration {
    (timer / 2).min(Duration::from_millis(500))
}

/// The namespaces of one case: deleted (with their veths and nftables tables) on drop.
struct Lab {
    a: Netns,
    b: Netns,
    x: Option<Netns>,
}

/// How the path between a and b is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Every packet dropped, both ways: no reset, only silence.
    Drop,
    /// Every TCP packet answered with a reset, both ways (resets themselves let through,
    /// so that they reach the sockets).
    Reset,
}

impl Lab {
    /// Namespaces `<case>a` and `<case>b` on a veth, each with an empty nftables input
    /// chain to block with; and, when `attacker_ips > 0`, `<case>x` with that many source
    /// addresses on a veth to a.
    fn new(case: &str, attacker_ips: usize) -> Self {
        common::netns::require_root_and_tools();
        let a = Netns::new(&format!("{case}a"));
        let b = Netns::new(&format!("{case}b"));
        veth(&a, A_IP, &b, B_IP, "v0");
        for ns in [&a, &b] {
            ns.nft(
                "table inet faults {\n\
                 \tchain input { type filter hook input priority 0; policy accept; }\n\
                 }\n",
            );
        }
        let x = (attacker_ips > 0).then(|| {
            let x = Netns::new(&format!("{case}x"));
            veth(&a, A_X_IP, &x, x_ip(0), "vx");
            for i in 1..attacker_ips {
                x.ip(&["addr", "add", &format!("{}/24", x_ip(i)), "dev", "vx"]);
            }
            x.ip(&["route", "add", "10.77.0.0/24", "via", &A_X_IP.to_string()]);
            x
        });
        Self { a, b, x }
    }

    fn x(&self) -> &Netns {
        self.x.as_ref().expect("this lab has no attacker namespace")
    }

    /// Breaks the a–b path both ways.
    fn block(&self, how: Block) {
        let verdict = match how {
            Block::Drop => "drop",
            Block::Reset => "tcp flags & rst == 0 reject with tcp reset",
        };
        for (ns, from) in [(&self.a, B_IP), (&self.b, A_IP)] {
            ns.nft(&format!(
                "add rule inet faults input ip saddr {from} {verdict}\n"
            ));
        }
    }

    /// Restores the a–b path.
    fn unblock(&self) {
        for ns in [&self.a, &self.b] {
            ns.nft("flush chain inet faults input\n");
        }
    }
}

/// a exports each `(service, target)` to b, and b has a forward to each. Daemons run in
/// the lab's namespaces; nothing is started yet.
fn lab_mesh(lab: &Lab, limits: &str, services: &[(&str, SocketAddr)]) -> TestMesh {
    let mut builder = TestMesh::builder()
        .mesh_toml(limits)
        .endpoint_ip("a", IpAddr::V4(A_IP))
        .netns("a", lab.a.name())
        .endpoint_ip("b", IpAddr::V4(B_IP))
        .netns("b", lab.b.name());
    for (service, target) in services {
        builder = builder
            .service("a", service, *target, &["b"])
            .forward("b", &format!("a/{service}"));
    }
    builder.build()
}

/// Starts a then b and waits until b's link to a is up (log line and metric).
async fn start_mesh(mesh: &mut TestMesh, lab: &Lab) {
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    wait_link(mesh, lab, "b", 1.0, LINK_UP).await;
}

fn ns_of<'l>(lab: &'l Lab, daemon: &str) -> &'l Netns {
    match daemon {
        "a" => &lab.a,
        "b" => &lab.b,
        other => panic!("no daemon {other} in the lab"),
    }
}

/// `meshd_link_up` of `daemon`'s link to the other one, read from its /metrics.
async fn link_up(mesh: &TestMesh, lab: &Lab, daemon: &str) -> f64 {
    let (peer, direction) = if daemon == "b" {
        ("a", "dialer")
    } else {
        ("b", "acceptor")
    };
    let (_, text) = ns_of(lab, daemon)
        .http_get(mesh.admin_addr(daemon), "/metrics")
        .await;
    sample(
        &text,
        &format!("meshd_link_up{{peer=\"{peer}\",direction=\"{direction}\"}}"),
    )
}

/// Polls `daemon`'s `meshd_link_up` every 5 ms until it equals `want`; returns when it
/// was first seen so. Panics after `timeout`.
async fn wait_link(
    mesh: &TestMesh,
    lab: &Lab,
    daemon: &str,
    want: f64,
    timeout: Duration,
) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if link_up(mesh, lab, daemon).await == want {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{daemon}'s meshd_link_up did not become {want} within {timeout:?}; its log:\n{}",
            mesh.log(daemon)
        );
        tokio::time::sleep(METRICS_POLL).await;
    }
}

/// A counter of one of `daemon`'s metrics (the first sample line starting with `line`).
async fn metric(mesh: &TestMesh, lab: &Lab, daemon: &str, line: &str) -> f64 {
    let (_, text) = ns_of(lab, daemon)
        .http_get(mesh.admin_addr(daemon), "/metrics")
        .await;
    sample(&text, line)
}

/// One checked stream through b's forward to a's `chk` service, run in b's namespace.
async fn checked_stream(lab: &Lab, forward: SocketAddr, dir: Dir, seed: u64, len: u64) -> Outcome {
    lab.b
        .run(checked::run(
            forward,
            dir,
            seed,
            len,
            Duration::from_secs(60),
            Arc::new(AtomicU64::new(0)),
        ))
        .await
}

/// Prints one row of the faults table.
fn row(case: &str, figures: &str, bound: &str, pass: bool) {
    println!(
        "FAULTS | {case} | {figures} | {bound} | {}",
        if pass { "pass" } else { "FAIL" }
    );
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `RestartSec` of the shipped systemd unit: how long a host's meshd stays down after it
/// died before systemd starts it again.
fn unit_restart_sec() -> Duration {
    let unit = include_str!("../packaging/systemd/meshd.service");
    let secs: f64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("RestartSec="))
        .expect("RestartSec= in packaging/systemd/meshd.service")
        .trim()
        .parse()
        .expect("RestartSec in plain seconds");
    Duration::from_secs_f64(secs)
}

/// Case 1. kill -9 of the exporting (accepting) daemon: b marks the link down as soon as
/// the kernel closes the dead daemon's socket (well before a ping could tell), every
/// stream open at the kill ends in an error at b's clients, never a clean end; systemd's
/// RestartSec later a is back, and b is linked again within 2 s of that restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_acceptor_resets_streams_and_is_redialed() {
    const PING: Duration = Duration::from_secs(5);
    const BULK: u64 = 1 << 40;
    const RELINK_BOUND: Duration = Duration::from_secs(2);
    let lab = Lab::new("k", 0);
    let (target, target_stats) = lab.a.run(checked::start_target()).await;
    let mut mesh = lab_mesh(
        &lab,
        &format!("[limits]\nping_interval_ms = {}", PING.as_millis()),
        &[("chk", target)],
    );
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/chk");

    // Three downloads and three uploads in full flight, and two idle streams.
    let progress: Vec<_> = (0..6).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let bulk: Vec<_> = progress
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dir = if i % 2 == 0 { Dir::Down } else { Dir::Up };
            lab.b.spawn(checked::run(
                forward,
                dir,
                i as u64,
                BULK,
                Duration::from_secs(60),
                p.clone(),
            ))
        })
        .collect();
    let idle: Vec<_> = (0..2)
        .map(|_| {
            lab.b.spawn(async move {
                let mut s = checked::open_idle(forward).await.expect("open idle stream");
                expect_closed(
                    &mut s,
                    Duration::from_secs(30),
                    "an idle stream at the kill",
                )
                .await
            })
        })
        .collect();
    common::wait_until_async(LINK_UP, "every bulk stream moving data", || {
        let moving = progress
            .iter()
            .all(|p| p.load(Ordering::Relaxed) >= 4 * MIB);
        async move { moving }
    })
    .await;
    // Every stream open at a too, the idle ones included (they sent only their header).
    common::wait_until_async(LINK_UP, "8 streams active on a", || async {
        metric(
            &mesh,
            &lab,
            "a",
            "meshd_streams_active{peer=\"b\",service=\"chk\"}",
        )
        .await
            >= 8.0
    })
    .await;

    let killed = Instant::now();
    mesh.kill("a");
    let down = wait_link(&mesh, &lab, "b", 0.0, Duration::from_secs(30)).await - killed;

    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut clean = Vec::new();
    for task in bulk {
        let outcome = common::within(Duration::from_secs(30), "a bulk stream to end", task)
            .await
            .expect("bulk stream task");
        match &outcome {
            Outcome::Error { stage, kind } => {
                *ends.entry(format!("{stage} {kind:?}")).or_default() += 1
            }
            other => clean.push(format!("{other:?}")),
        }
    }
    for task in idle {
        match common::within(Duration::from_secs(30), "an idle stream to end", task)
            .await
            .expect("idle stream task")
        {
            Closed::Error(kind) => *ends.entry(format!("idle {kind:?}")).or_default() += 1,
            other => clean.push(format!("idle: {other:?}")),
        }
    }

    // systemd restarts a dead meshd RestartSec after it died: that is the outage to
    // model, not a condition to wait for.
    let outage = unit_restart_sec();
    tokio::time::sleep_until((killed + outage).into()).await;
    let redials = metric(
        &mesh,
        &lab,
        "b",
        "meshd_link_failures_total{peer=\"a\",reason=\"unreachable\"}",
    )
    .await;
    mesh.start("a");
    let restarted = Instant::now();
    let relink = wait_link(&mesh, &lab, "b", 1.0, Duration::from_secs(40)).await - restarted;
    let fresh = checked_stream(&lab, forward, Dir::Up, 99, 4 * MIB).await;

    let pass = down < PING
        && redials > 0.0
        && relink <= RELINK_BOUND
        && clean.is_empty()
        && fresh == Outcome::Complete;
    row(
        "1 kill -9 of the acceptor",
        &format!(
            "link down at b {} after the kill; {redials} refused redials while a was down; relinked {} after a restart {} later; stream ends at b: {ends:?}, clean ends: {}; a's target saw {} clean short uploads from the dead daemon",
            ms(down),
            ms(relink),
            ms(outage),
            clean.len(),
            target_stats.uploads_short.load(Ordering::Relaxed),
        ),
        &format!("down < ping interval {}; relink <= {}", ms(PING), ms(RELINK_BOUND)),
        pass,
    );
    assert!(
        down < PING,
        "b took {down:?} to see the link down: a ping timeout, not the kernel's reset"
    );
    assert!(
        clean.is_empty(),
        "streams open at the kill ended without an error at b's clients: {clean:?}"
    );
    assert!(redials > 0.0, "b did not redial while a was down");
    assert!(
        relink <= RELINK_BOUND,
        "b relinked {relink:?} after a restarted (bound {RELINK_BOUND:?}); b's log:\n{}",
        mesh.log("b")
    );
    assert_eq!(fresh, Outcome::Complete, "a stream after the relink");
}

/// Case 2. Black hole: every packet between a and b dropped, both ways, so no reset ever
/// arrives. Both daemons declare the link dead within 3 ping intervals (the dead-peer
/// rule), b's /healthz turns 503; once the path is back, b relinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_is_detected_within_three_ping_intervals() {
    const PING: Duration = Duration::from_millis(1000);
    let lab = Lab::new("h", 0);
    let (target, _) = lab.a.run(checked::start_target()).await;
    let mut mesh = lab_mesh(
        &lab,
        &format!("[limits]\nping_interval_ms = {}", PING.as_millis()),
        &[("chk", target)],
    );
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/chk");
    let (healthy, _) = lab.b.http_get(mesh.admin_addr("b"), "/healthz").await;
    assert_eq!(healthy, 200, "b's /healthz with the link up");

    let blocked = Instant::now();
    lab.block(Block::Drop);
    let (mut down_a, mut down_b) = (None, None);
    let deadline = blocked + Duration::from_secs(20);
    while down_a.is_none() || down_b.is_none() {
        assert!(
            Instant::now() < deadline,
            "the black hole was not detected within 20 s (a: {down_a:?}, b: {down_b:?})"
        );
        if down_a.is_none() && link_up(&mesh, &lab, "a").await == 0.0 {
            down_a = Some(blocked.elapsed());
        }
        if down_b.is_none() && link_up(&mesh, &lab, "b").await == 0.0 {
            down_b = Some(blocked.elapsed());
        }
        tokio::time::sleep(METRICS_POLL).await;
    }
    let (down_a, down_b) = (down_a.expect("a"), down_b.expect("b"));
    let (health, why) = lab.b.http_get(mesh.admin_addr("b"), "/healthz").await;
    let reason = mesh
        .find_log_line("b", &["link down", "peer=a"])
        .unwrap_or_default();

    let unblocked = Instant::now();
    lab.unblock();
    let relink = wait_link(&mesh, &lab, "b", 1.0, Duration::from_secs(60)).await - unblocked;
    let fresh = checked_stream(&lab, forward, Dir::Down, 7, 4 * MIB).await;

    let bound = PING * 3 + slack(PING);
    let pass = down_a <= bound && down_b <= bound && health == 503 && fresh == Outcome::Complete;
    row(
        "2 black hole (nft drop both ways)",
        &format!(
            "dead at b after {}, at a after {}; b /healthz {health}; relinked {} after the path came back",
            ms(down_b),
            ms(down_a),
            ms(relink)
        ),
        &format!("<= 3 x {} + {} slack", ms(PING), ms(slack(PING))),
        pass,
    );
    assert!(
        reason.contains("ping_timeout"),
        "b's link should die of the ping timeout, not of a reset: {reason}"
    );
    assert!(
        down_b <= bound,
        "b saw the black hole after {down_b:?} (bound {bound:?})"
    );
    assert!(
        down_a <= bound,
        "a saw the black hole after {down_a:?} (bound {bound:?})"
    );
    assert_eq!(health, 503, "b's /healthz with the link down: {why}");
    assert_eq!(fresh, Outcome::Complete, "a stream after the relink");
}

/// A target that writes a constant buffer to every connection until the write fails;
/// `written()[i]` counts connection i's bytes, in accept order.
struct Source {
    addr: SocketAddr,
    written: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl Source {
    /// Binds 127.0.0.1:0 in the caller's namespace and serves on the caller's runtime.
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind source");
        let addr = listener.local_addr().expect("source addr");
        let written: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::default();
        let w = written.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = Arc::new(AtomicU64::new(0));
                w.lock().expect("source lock").push(count.clone());
                tokio::spawn(async move {
                    let buf = vec![0x5Au8; 256 * 1024];
                    while s.write_all(&buf).await.is_ok() {
                        count.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Self { addr, written }
    }

    /// Bytes written to the `i`-th connection so far, if it exists.
    fn written(&self, i: usize) -> Option<u64> {
        self.written
            .lock()
            .expect("source lock")
            .get(i)
            .map(|c| c.load(Ordering::Relaxed))
    }

    fn connections(&self) -> usize {
        self.written.lock().expect("source lock").len()
    }
}

/// Reads a download through `forward` for `warmup + window` and returns the rate over the
/// window, in bytes per second. Runs in the caller's namespace.
async fn download_rate(forward: SocketAddr, warmup: Duration, window: Duration) -> f64 {
    let mut s = TcpStream::connect(forward).await.expect("connect forward");
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    while start.elapsed() < warmup {
        let n = s.read(&mut buf).await.expect("read warm-up");
        assert!(n > 0, "download ended during warm-up");
    }
    let from = Instant::now();
    let mut bytes = 0u64;
    while from.elapsed() < window {
        let n = s.read(&mut buf).await.expect("read download");
        assert!(n > 0, "download ended");
        bytes += n as u64;
    }
    bytes as f64 / from.elapsed().as_secs_f64()
}

/// Case 4. A client that stops reading one stream does not slow another stream of the
/// same link below half its solo rate. A solo window first, then rounds of (a window
/// beside a stalled stream, a solo window); each beside-window is compared with the mean
/// of the solo windows on either side of it, and the median of those ratios is judged,
/// so load from the other test thread on a two-core machine weighs on both sides alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_leaves_another_stream_at_least_half_its_rate() {
    const ROUNDS: usize = 5;
    const WARMUP: Duration = Duration::from_millis(300);
    const WINDOW: Duration = Duration::from_secs(1);
    const MIN_RATIO: f64 = 0.5;
    let lab = Lab::new("s", 0);
    let source = Arc::new(lab.a.run(Source::start()).await);
    let mut mesh = lab_mesh(&lab, "", &[("src", source.addr)]);
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/src");

    let mut solo = vec![lab.b.run(download_rate(forward, WARMUP, WINDOW)).await];
    let mut beside = Vec::new();
    let mut held_back = Vec::new();
    for _ in 0..ROUNDS {
        // The stalled stream: connected, never read. It is stalled once the source's
        // writes to it stop growing (every window and socket buffer on the way full).
        let index = source.connections();
        let stalled = lab
            .b
            .run(async move { TcpStream::connect(forward).await.expect("connect stalled") })
            .await;
        let mut last = (0u64, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = source.written(index).unwrap_or(0);
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() >= Duration::from_millis(500) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stalled stream never stalled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        held_back.push(last.0 / MIB);
        beside.push(lab.b.run(download_rate(forward, WARMUP, WINDOW)).await);
        let still = source.written(index).unwrap_or(0);
        assert_eq!(
            still, last.0,
            "the stalled stream moved while nobody read it"
        );
        drop(stalled);
        solo.push(lab.b.run(download_rate(forward, WARMUP, WINDOW)).await);
    }
    let mut ratios: Vec<f64> = beside
        .iter()
        .enumerate()
        .map(|(i, b)| b / ((solo[i] + solo[i + 1]) / 2.0))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ROUNDS / 2];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64 / MIB as f64;
    let pass = median >= MIN_RATIO;
    row(
        "4 stalled reader beside a download",
        &format!(
            "solo {:.0} MiB/s, beside the stall {:.0} MiB/s (means of {} and {ROUNDS} windows of {}); ratios {}, median {median:.2}; stalled stream held back after {held_back:?} MiB",
            mean(&solo),
            mean(&beside),
            solo.len(),
            ms(WINDOW),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
        ),
        &format!("median ratio >= {MIN_RATIO}"),
        pass,
    );
    assert!(
        pass,
        "a stalled reader slowed another stream of its link to {median:.2} of its solo rate (ratios {ratios:?})"
    );
}

/// Case 5. SIGSTOP of one daemon for twice the dead-peer timeout, then SIGCONT: first the
/// acceptor, then the dialer. Each time the other side declares the link dead, and after
/// SIGCONT both sides are linked again and a fresh stream works, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_dead_peer_timeout_then_sigcont_recovers() {
    const PING: Duration = Duration::from_millis(500);
    // meshd's dead-peer timeout: three ping intervals without a PONG.
    const DEAD: Duration = Duration::from_millis(3 * 500);
    let lab = Lab::new("p", 0);
    let (target, _) = lab.a.run(checked::start_target()).await;
    let mut mesh = lab_mesh(
        &lab,
        &format!(
            "[limits]\nping_interval_ms = {}\nhandshake_timeout_ms = 1000",
            PING.as_millis()
        ),
        &[("chk", target)],
    );
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/chk");
    let pid_a = mesh.pid("a");
    let pid_b = mesh.pid("b");

    let mut figures = Vec::new();
    let mut checks = Vec::new();
    let mut pass = true;
    for (stopped, watcher) in [("a", "b"), ("b", "a")] {
        let at = Instant::now();
        mesh.signal(stopped, "STOP");
        let seen = wait_link(&mesh, &lab, watcher, 0.0, Duration::from_secs(20)).await - at;
        // The fault is "stopped for longer than the dead-peer timeout": a duration of the
        // scenario, not a condition.
        tokio::time::sleep_until((at + DEAD * 2).into()).await;
        mesh.signal(stopped, "CONT");
        let resumed = Instant::now();
        let up_b = wait_link(&mesh, &lab, "b", 1.0, Duration::from_secs(40)).await - resumed;
        let up_a = wait_link(&mesh, &lab, "a", 1.0, Duration::from_secs(40)).await - resumed;
        let fresh = checked_stream(&lab, forward, Dir::Up, 5, 4 * MIB).await;
        let bound = DEAD + slack(PING);
        pass &= seen <= bound && fresh == Outcome::Complete;
        figures.push(format!(
            "{stopped} stopped {}: {watcher} saw it dead after {}, after SIGCONT b up in {}, a up in {}, fresh stream {fresh:?}",
            ms(DEAD * 2),
            ms(seen),
            ms(up_b),
            ms(up_a)
        ));
        checks.push((stopped, watcher, seen, fresh));
    }
    let restarted = mesh.pid("a") != pid_a || mesh.pid("b") != pid_b;
    row(
        "5 SIGSTOP 2x dead timeout, SIGCONT",
        &figures.join("; "),
        &format!("dead seen <= 3 x {} + {}", ms(PING), ms(slack(PING))),
        pass && !restarted,
    );
    for (stopped, watcher, seen, fresh) in checks {
        let bound = DEAD + slack(PING);
        assert!(
            seen <= bound,
            "{watcher} saw {stopped} dead after {seen:?} (bound {bound:?})"
        );
        assert_eq!(fresh, Outcome::Complete, "a stream after {stopped} resumed");
    }
    assert!(!restarted, "a daemon was restarted");
}

/// One fault of the flapping case, and how long the path stays broken.
#[derive(Clone, Copy, Debug)]
enum Flap {
    /// nftables answers every TCP packet with a reset, both ways.
    Reset(Duration),
    /// nftables drops everything, both ways.
    Drop(Duration),
    /// a's end of the veth is down (b's loses carrier).
    LinkDown(Duration),
}

impl Flap {
    fn hold(self) -> Duration {
        match self {
            Flap::Reset(d) | Flap::Drop(d) | Flap::LinkDown(d) => d,
        }
    }

    fn apply(self, lab: &Lab) {
        match self {
            Flap::Reset(_) => lab.block(Block::Reset),
            Flap::Drop(_) => lab.block(Block::Drop),
            Flap::LinkDown(_) => {
                lab.a.ip(&["link", "set", "v0", "down"]);
            }
        }
    }

    fn restore(self, lab: &Lab) {
        match self {
            Flap::Reset(_) | Flap::Drop(_) => lab.unblock(),
            Flap::LinkDown(_) => {
                lab.a.ip(&["link", "set", "v0", "up"]);
            }
        }
    }

    fn label(self) -> String {
        match self {
            Flap::Reset(d) => format!("reset {}", ms(d)),
            Flap::Drop(d) => format!("drop {}", ms(d)),
            Flap::LinkDown(d) => format!("veth down {}", ms(d)),
        }
    }
}

/// Case 3. The a–b path broken and restored 20 times (resets, black holes past the
/// dead-peer timeout, the veth taken down, and short drops the link rides out) while a
/// fixed number of 10 MiB SHA-checked streams run, up and down, several at a time. Every
/// stream must end complete with the right digest or with an error: zero silent
/// truncations and zero corrupted streams, seen from either end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_link_never_truncates_or_corrupts_a_stream() {
    const PING: Duration = Duration::from_millis(300);
    // The issue's 1000 streams fit: about 70 s with the flaps on two cores.
    const STREAMS: u64 = 1000;
    const LEN: u64 = 10 * MIB;
    const CONCURRENCY: usize = 8;
    const FLAPS: usize = 20;
    let dead = PING * 3;
    let cycle = [
        Flap::Reset(Duration::from_millis(300)),
        Flap::Drop(dead * 2),
        Flap::LinkDown(dead * 2),
        Flap::Drop(dead / 2),
        Flap::LinkDown(dead / 2),
    ];
    let lab = Lab::new("f", 0);
    let (target, target_stats) = lab.a.run(checked::start_target()).await;
    let mut mesh = lab_mesh(
        &lab,
        &format!(
            "[limits]\nping_interval_ms = {}\nlink_wait_ms = 10000",
            PING.as_millis()
        ),
        &[("chk", target)],
    );
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/chk");
    let started = Instant::now();

    // The streams: CONCURRENCY workers in b's namespace take the next seed until all
    // STREAMS have run; even seeds upload, odd ones download.
    let next = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let outcomes: Arc<Mutex<Vec<(u64, Outcome)>>> = Arc::default();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, finished, outcomes) = (next.clone(), finished.clone(), outcomes.clone());
            lab.b.spawn(async move {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= STREAMS {
                        return;
                    }
                    let dir = if seed % 2 == 0 { Dir::Up } else { Dir::Down };
                    let outcome = checked::run(
                        forward,
                        dir,
                        seed,
                        LEN,
                        Duration::from_secs(60),
                        Arc::new(AtomicU64::new(0)),
                    )
                    .await;
                    outcomes.lock().expect("outcomes").push((seed, outcome));
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // The flaps, spread over the run: flap i once i/(FLAPS+1) of the streams finished.
    let mut flap_log = Vec::new();
    for i in 1..=FLAPS {
        let due = STREAMS * i as u64 / (FLAPS as u64 + 1);
        common::wait_until_async(
            Duration::from_secs(60),
            "streams to make progress between flaps",
            || {
                let done = finished.load(Ordering::Relaxed) >= due;
                async move { done }
            },
        )
        .await;
        let flap = cycle[(i - 1) % cycle.len()];
        flap.apply(&lab);
        // How long the path stays broken is the fault itself, not a wait for a condition.
        tokio::time::sleep(flap.hold()).await;
        flap.restore(&lab);
        let restored = Instant::now();
        let up = wait_link(&mesh, &lab, "b", 1.0, Duration::from_secs(40)).await - restored;
        flap_log.push(format!("{} (up {})", flap.label(), ms(up)));
    }
    for worker in workers {
        common::within(
            Duration::from_secs(120),
            "the stream workers to finish",
            worker,
        )
        .await
        .expect("stream worker");
    }
    let wall = started.elapsed();

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut complete, mut truncated, mut corrupted, mut hung) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for (seed, outcome) in &outcomes {
        match outcome {
            Outcome::Complete => complete += 1,
            Outcome::Error { stage, kind } => {
                *errors.entry(format!("{stage} {kind:?}")).or_default() += 1
            }
            o if o.is_silent_truncation() => truncated.push((*seed, o.clone())),
            o @ Outcome::Corrupted { .. } => corrupted.push((*seed, o.clone())),
            o => hung.push((*seed, o.clone())),
        }
    }
    let target_short = target_stats.uploads_short.load(Ordering::Relaxed);
    let target_long = target_stats.uploads_long.load(Ordering::Relaxed);
    let links = metric(&mesh, &lab, "b", "meshd_link_established_total{peer=\"a\"}").await;
    let pass = truncated.is_empty()
        && corrupted.is_empty()
        && hung.is_empty()
        && target_short == 0
        && target_long == 0
        && complete > 0;
    row(
        "3 flapping link",
        &format!(
            "{} x 10 MiB streams in {:.1} s ({CONCURRENCY} at a time), {FLAPS} flaps, {links} links made: {complete} complete, errors {errors:?}, silent truncations {} (+{target_short} seen by the target), corrupted {} (+{target_long}), hung {}",
            outcomes.len(),
            wall.as_secs_f64(),
            truncated.len(),
            corrupted.len(),
            hung.len()
        ),
        "truncated = 0, corrupted = 0",
        pass,
    );
    println!("FAULTS | 3 flaps: {}", flap_log.join(", "));
    assert_eq!(outcomes.len() as u64, STREAMS, "every stream ran");
    assert!(
        complete > 0,
        "no stream completed: the case checked nothing"
    );
    assert!(
        truncated.is_empty() && target_short == 0,
        "silent truncations: {truncated:?}; the target saw {target_short} uploads end cleanly short"
    );
    assert!(
        corrupted.is_empty() && target_long == 0,
        "corrupted streams: {corrupted:?}; the target saw {target_long} uploads end cleanly long"
    );
    assert!(
        hung.is_empty(),
        "streams that neither ended nor failed: {hung:?}"
    );
}

/// What one kind of pre-auth attack saw.
#[derive(Debug, Default)]
struct AttackReport {
    /// Connections made.
    connected: usize,
    /// Connections meshd closed (EOF or reset) while the attacker still held them.
    closed: usize,
    /// The slowest of those closes, from the connection's establishment.
    slowest_close: Duration,
    /// connect() failures.
    connect_failed: usize,
}

/// Pre-auth attacks on the mesh port.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// 4 KiB of random bytes: meshd must close at the bad preamble.
    Garbage,
    /// A preamble that claims to be b, then a handshake message that never completes,
    /// one byte every 50 ms: cut by the handshake deadline.
    Slowloris,
    /// A preamble and half a handshake message, then the attacker vanishes: its source
    /// can send no FIN or reset (an nftables rule in x), so meshd holds a connection
    /// nobody will ever speak on again, until the deadline.
    HalfOpen,
}

/// The 72-byte cleartext preamble of a noise dial from `name`.
fn preamble(name: &str) -> Vec<u8> {
    let mut p = b"MSHD".to_vec();
    p.extend_from_slice(&[meshd::proto::handshake::VERSION, 1, name.len() as u8, 0]);
    let mut padded = [0u8; 64];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    p.extend_from_slice(&padded);
    p
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    socket.connect(to).await
}

/// Reads until the peer closes (EOF or error); `Some(elapsed since from)`, or `None` when
/// `timeout` passed first.
async fn until_closed(s: &mut TcpStream, from: Instant, timeout: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::from_std(from + timeout);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(from.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One attack connection from `src`; whether meshd closed it and when.
async fn attack_once(
    kind: Attack,
    i: usize,
    src: Ipv4Addr,
    to: SocketAddr,
) -> std::io::Result<Option<Duration>> {
    let mut s = connect_from(src, to).await?;
    // From the connection, as meshd's handshake deadline: a connect that waited for a
    // SYN retransmission must not count against it.
    let started = Instant::now();
    let give_up = Duration::from_secs(10);
    match kind {
        Attack::Garbage => {
            let _ = s
                .write_all(&common::data::XorShift::new(i as u64).bytes(4096))
                .await;
            Ok(until_closed(&mut s, started, give_up).await)
        }
        Attack::Slowloris => {
            let mut msg = preamble("b");
            msg.extend_from_slice(&400u16.to_be_bytes());
            msg.extend_from_slice(&common::data::XorShift::new(i as u64).bytes(400));
            let mut buf = [0u8; 64];
            for byte in msg {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Ok(Some(started.elapsed())),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if s.write_all(&[byte]).await.is_err() {
                            return Ok(Some(started.elapsed()));
                        }
                    }
                }
                if started.elapsed() > give_up {
                    return Ok(None);
                }
            }
            Ok(until_closed(&mut s, started, give_up).await)
        }
        Attack::HalfOpen => {
            let mut msg = preamble("b");
            msg.extend_from_slice(&300u16.to_be_bytes());
            msg.extend_from_slice(&common::data::XorShift::new(i as u64).bytes(150));
            // No delay: the bytes leave in this write, before the FIN that close would
            // otherwise carry on the same segment (and that x drops).
            s.set_nodelay(true)?;
            s.write_all(&msg).await?;
            drop(s);
            Ok(None)
        }
    }
}

/// `n` attack connections of `kind` from `src`, at most `in_flight` at a time. A
/// half-open connection counts as in flight for `hold` after the attacker vanished: meshd
/// holds it that long (its handshake deadline), so this paces them to about `in_flight`
/// pending at once instead of one burst far past the pending cap.
async fn attack(
    kind: Attack,
    n: usize,
    in_flight: usize,
    hold: Duration,
    src: Ipv4Addr,
    to: SocketAddr,
) -> AttackReport {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        set.spawn(async move {
            let r = attack_once(kind, i, src, to).await;
            if matches!(kind, Attack::HalfOpen) {
                tokio::time::sleep(hold).await;
            }
            drop(permit);
            r
        });
    }
    let mut report = AttackReport::default();
    while let Some(r) = set.join_next().await {
        match r.expect("attack task") {
            Ok(closed) => {
                report.connected += 1;
                if let Some(t) = closed {
                    report.closed += 1;
                    report.slowest_close = report.slowest_close.max(t);
                }
            }
            Err(_) => report.connect_failed += 1,
        }
    }
    report
}

/// Runs checked streams of `len` through `forward` back to back (alternating up and
/// down) until `stop` is set; returns every outcome. Runs in b's namespace.
async fn carry(forward: SocketAddr, len: u64, stop: Arc<AtomicBool>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut seed = 1000;
    while !stop.load(Ordering::Relaxed) {
        let dir = if seed % 2 == 0 { Dir::Up } else { Dir::Down };
        outcomes.push(
            checked::run(
                forward,
                dir,
                seed,
                len,
                Duration::from_secs(60),
                Arc::new(AtomicU64::new(0)),
            )
            .await,
        );
        seed += 1;
    }
    outcomes
}

/// Case 6. From the attacker namespace: 1000 connections of garbage, 1000 slowloris
/// handshakes and 1000 half-open ones to a's mesh port. a's resident memory grows by
/// less than 20 MiB, every slowloris is cut by the handshake deadline, and the
/// established link carries SHA-checked streams throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_floods_leave_memory_bounded_and_the_link_working() {
    const EACH: usize = 1000;
    const IN_FLIGHT: usize = 50;
    const HANDSHAKE: Duration = Duration::from_millis(500);
    const RSS_BOUND_KIB: u64 = 20 * 1024;
    let lab = Lab::new("g", 2);
    let (target, _) = lab.a.run(checked::start_target()).await;
    // No per-source rate limit: one attacker address must reach the handshake code
    // rather than be turned away at accept (case 7 covers the limit).
    let mut mesh = lab_mesh(
        &lab,
        &format!(
            "[limits]\nhandshake_timeout_ms = {}\nhandshake_rate_per_source = 0",
            HANDSHAKE.as_millis()
        ),
        &[("chk", target)],
    );
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/chk");
    let port = mesh.mesh_addr("a");
    let (loud, silent) = (x_ip(0), x_ip(1));
    lab.x().nft(&format!(
        "table inet faults {{\n\
         \tchain output {{ type filter hook output priority 0; policy accept;\n\
         \t\tip saddr {silent} tcp flags & (fin | rst) != 0 drop\n\
         \t}}\n\
         }}\n"
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let carrier = lab.b.spawn(carry(forward, 16 * MIB, stop.clone()));
    // The baseline includes the carrier's buffers: the largest of a few samples taken
    // while it runs.
    let mut baseline = 0;
    for _ in 0..10 {
        baseline = baseline.max(mesh.rss_kib("a"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let garbage = lab.x().spawn(attack(
        Attack::Garbage,
        EACH,
        IN_FLIGHT,
        HANDSHAKE,
        loud,
        port,
    ));
    let slowloris = lab.x().spawn(attack(
        Attack::Slowloris,
        EACH,
        IN_FLIGHT,
        HANDSHAKE,
        loud,
        port,
    ));
    let half_open = lab.x().spawn(attack(
        Attack::HalfOpen,
        EACH,
        IN_FLIGHT,
        HANDSHAKE,
        silent,
        port,
    ));
    let mut peak = baseline;
    while !(garbage.is_finished() && slowloris.is_finished() && half_open.is_finished()) {
        peak = peak.max(mesh.rss_kib("a"));
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the attacks did not finish within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attack_time = started.elapsed();
    let garbage = garbage.await.expect("garbage attack");
    let slowloris = slowloris.await.expect("slowloris attack");
    let half_open = half_open.await.expect("half-open attack");
    // Half-open connections outlive the attacker by one handshake deadline.
    let settle = Instant::now() + HANDSHAKE + slack(HANDSHAKE);
    while Instant::now() < settle {
        peak = peak.max(mesh.rss_kib("a"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let carried = common::within(Duration::from_secs(90), "the carrier to finish", carrier)
        .await
        .expect("carrier task");
    let failures = {
        let (_, text) = lab.a.http_get(mesh.admin_addr("a"), "/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("meshd_handshake_failures_total{") && !l.ends_with(" 0"))
            .map(|l| {
                l.trim_start_matches("meshd_handshake_failures_total")
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };

    let growth = peak.saturating_sub(baseline);
    let complete = carried.iter().filter(|o| **o == Outcome::Complete).count();
    let cut_bound = HANDSHAKE + slack(HANDSHAKE);
    let pass = growth < RSS_BOUND_KIB
        && complete == carried.len()
        && complete > 0
        && garbage.closed == garbage.connected
        && slowloris.closed == slowloris.connected
        && slowloris.slowest_close <= cut_bound
        && mesh.is_running("a");
    row(
        "6 pre-auth garbage / slowloris / half-open x1000",
        &format!(
            "RSS of a {} -> peak {} KiB (+{growth} KiB) over {:.1} s; garbage {}/{} closed (slowest {}), slowloris {}/{} cut (slowest {}), half-open {} sent; link carried {complete}/{} x 16 MiB checked streams; a's handshake failures: {failures}",
            baseline,
            peak,
            attack_time.as_secs_f64(),
            garbage.closed,
            garbage.connected + garbage.connect_failed,
            ms(garbage.slowest_close),
            slowloris.closed,
            slowloris.connected + slowloris.connect_failed,
            ms(slowloris.slowest_close),
            half_open.connected,
            carried.len()
        ),
        &format!("RSS growth < {} MiB; slowloris cut <= {}", RSS_BOUND_KIB / 1024, ms(cut_bound)),
        pass,
    );
    assert!(
        mesh.is_running("a"),
        "a died under the attack:\n{}",
        mesh.log("a")
    );
    assert!(
        growth < RSS_BOUND_KIB,
        "a's RSS grew by {growth} KiB under pre-auth attack (bound {RSS_BOUND_KIB} KiB)"
    );
    assert_eq!(
        garbage.connected, EACH,
        "every garbage connection was made: {garbage:?}"
    );
    assert_eq!(
        garbage.closed, EACH,
        "meshd closed every garbage connection: {garbage:?}"
    );
    assert_eq!(
        slowloris.connected, EACH,
        "every slowloris connection was made: {slowloris:?}"
    );
    assert_eq!(
        slowloris.closed, EACH,
        "meshd cut every slowloris: {slowloris:?}"
    );
    assert!(
        slowloris.slowest_close <= cut_bound,
        "a slowloris lived {:?}, past the handshake deadline {HANDSHAKE:?}",
        slowloris.slowest_close
    );
    assert_eq!(
        half_open.connected, EACH,
        "every half-open connection was made: {half_open:?}"
    );
    assert!(complete > 0, "the link carried no stream during the attack");
    assert_eq!(
        complete,
        carried.len(),
        "streams on the established link failed during the attack: {carried:?}"
    );
}

/// Case 7. Several attacker addresses flood a's mesh port beyond the per-source handshake
/// rate, which together keeps the global cap of pending handshakes full; meanwhile the
/// established link carries a stream, and b, killed with -9 and restarted, gets its link
/// back with its first dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_the_accept_limits_lets_a_legitimate_redial_through() {
    const SOURCES: usize = 8;
    const HELD_PER_SOURCE: usize = 64;
    const ATTEMPT_EVERY: Duration = Duration::from_millis(10);
    const RATE: u32 = 10;
    const PENDING: u32 = 32;
    const HANDSHAKE: Duration = Duration::from_millis(2000);
    let lab = Lab::new("r", SOURCES);
    let (target, _) = lab.a.run(checked::start_target()).await;
    let mut mesh = lab_mesh(
        &lab,
        &format!(
            "[limits]\nhandshake_rate_per_source = {RATE}\nmax_pending_handshakes = {PENDING}\nhandshake_timeout_ms = {}",
            HANDSHAKE.as_millis()
        ),
        &[("chk", target)],
    );
    start_mesh(&mut mesh, &lab).await;
    let forward = mesh.forward_addr("b", "a/chk");
    let port = mesh.mesh_addr("a");

    // Each source connects every 10 ms (100 attempts per second against a limit of 10)
    // and holds what meshd accepts, silent, until meshd closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for src in 0..SOURCES {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        flooders.push(lab.x().spawn(async move {
            let held = Arc::new(tokio::sync::Semaphore::new(HELD_PER_SOURCE));
            let mut tick = tokio::time::interval(ATTEMPT_EVERY);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = held.clone().try_acquire_owned() else {
                    continue;
                };
                attempts.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Ok(mut s) = connect_from(x_ip(src), port).await {
                        let _ = until_closed(&mut s, Instant::now(), HANDSHAKE * 2).await;
                    }
                    drop(permit);
                });
            }
        }));
    }
    let rate_limited = "meshd_handshake_failures_total{reason=\"rate_limited\"}";
    let overloaded = "meshd_handshake_failures_total{reason=\"overloaded\"}";
    common::wait_until_async(
        Duration::from_secs(20),
        "the flood to hit both the rate limit and the pending cap",
        || async {
            metric(&mesh, &lab, "a", rate_limited).await > 0.0
                && metric(&mesh, &lab, "a", overloaded).await > 0.0
        },
    )
    .await;
    let during = checked_stream(&lab, forward, Dir::Down, 77, 16 * MIB).await;

    mesh.kill("b");
    mesh.start("b");
    let restarted = Instant::now();
    let up = mesh_link_within(&mesh, &lab, Duration::from_secs(40)).await;
    let redial = up.map(|t| t - restarted);
    let failed_dials = mesh
        .current_log("b")
        .lines()
        .filter(|l| l.contains("link dial failed"))
        .count();
    let after = if redial.is_some() {
        Some(checked_stream(&lab, forward, Dir::Up, 78, 4 * MIB).await)
    } else {
        None
    };
    let counts = (
        metric(&mesh, &lab, "a", rate_limited).await,
        metric(&mesh, &lab, "a", overloaded).await,
    );
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        common::within(HANDSHAKE * 3, "a flood loop to stop", f)
            .await
            .expect("flood loop");
    }

    let pass = during == Outcome::Complete
        && failed_dials == 0
        && redial.is_some_and(|r| r <= HANDSHAKE)
        && after == Some(Outcome::Complete);
    row(
        "7 flood at the accept limits, legitimate redial",
        &format!(
            "{} attempts from {SOURCES} sources; a refused {} rate-limited, {} over the pending cap; stream during the flood {during:?}; restarted b linked in {} after {failed_dials} failed dials",
            attempts.load(Ordering::Relaxed),
            counts.0,
            counts.1,
            redial.map_or("never (40 s)".to_owned(), ms)
        ),
        &format!("first dial gets through, within the handshake deadline {}", ms(HANDSHAKE)),
        pass,
    );
    assert_eq!(
        during,
        Outcome::Complete,
        "the established link during the flood"
    );
    let redial = redial.unwrap_or_else(|| {
        panic!(
            "b never got its link back during the flood; b's log:\n{}",
            mesh.log("b")
        )
    });
    assert_eq!(
        failed_dials,
        0,
        "the restarted b's dials were turned away by the flood ({redial:?} to get through); its log:\n{}",
        mesh.current_log("b")
    );
    assert!(
        redial <= HANDSHAKE,
        "b needed {redial:?} to get its link back during the flood"
    );
    assert_eq!(after, Some(Outcome::Complete), "a stream over the new link");
}

/// When b's link is next seen up, polling for at most `timeout`; `None` if it never was.
async fn mesh_link_within(mesh: &TestMesh, lab: &Lab, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // b's admin server may not be up yet right after the restart.
        if let Ok((_, text)) = lab
            .b
            .run(common::netns::http_get(mesh.admin_addr("b"), "/metrics"))
            .await
        {
            if sample(&text, "meshd_link_up{peer=\"a\",direction=\"dialer\"}") == 1.0 {
                return Some(Instant::now());
            }
        }
        tokio::time::sleep(METRICS_POLL).await;
    }
    None
}
