//! SIGTERM drains, through a two-peer mesh of real `meshd` processes (b's forward → link →
//! a's echo service; b dials):
//! - on either end, a 256 MiB SHA-checked stream open at the signal completes; meanwhile
//!   a new connection is refused, the draining host exits 0 by itself once the stream is
//!   done, and after a restart of a the next stream finds its way again;
//! - a stream that outlives `drain_grace_ms` is reset (ECONNRESET at the client, never a
//!   clean end) and the daemon exits 0; a second SIGTERM resets at once.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::client::{echo_exact, expect_rejected, Closed};
use common::data::{hex, RandomStream};
use common::mesh::TestMesh;
use common::servers::EchoServer;
use common::{metrics_text, sample};

const LINK_UP: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;
/// The stream that must survive a drain.
const STREAM: u64 = 256 * MIB;
/// Sent before the signal, so the stream is well under way when the drain starts.
const BEFORE_SIGNAL: u64 = 16 * MIB;
/// How long a drained host may take to exit after its last stream ended.
const EXIT_AFTER_DRAIN: Duration = Duration::from_secs(5);
/// `[limits] link_wait_ms` of these meshes: how long b holds a new connection while no
/// link to a is usable.
const LINK_WAIT_MS: u64 = 1000;
/// `drain_grace_ms` of the host whose stream must outlive its grace.
const SHORT_GRACE_MS: u64 = 1000;
/// The daemon's final flush after the grace (src/daemon.rs `FINAL_FLUSH`) and slack for
/// this shared machine.
const AFTER_GRACE: Duration = Duration::from_secs(5);

async fn echo_mesh(draining: &str, grace_ms: u64) -> (TestMesh, EchoServer) {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .mesh_toml(&format!("[limits]\nlink_wait_ms = {LINK_WAIT_MS}\n"))
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .drain_grace(draining, grace_ms)
        .build();
    mesh.start_all();
    mesh.wait_for_log_line("b", &["link up", "peer=a"], LINK_UP)
        .await;
    (mesh, echo)
}

/// Writes the next pieces of `source` until `upto` bytes of it went out in all (or it
/// ends), without finishing.
async fn write_until(
    w: &mut (impl AsyncWriteExt + Unpin),
    source: &mut RandomStream,
    written: &mut u64,
    upto: u64,
) -> io::Result<()> {
    while *written < upto {
        let piece = source.next_piece();
        if piece.is_empty() {
            break;
        }
        w.write_all(piece).await?;
        *written += piece.len() as u64;
    }
    Ok(())
}

/// Reads to the end; returns the length and SHA-256 of what came back, or the error.
async fn read_all(mut r: impl AsyncReadExt + Unpin) -> io::Result<(u64, String)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex(ctx.finish().as_ref())));
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
}

/// A drain of `draining` while a 256 MiB echo stream runs through b's forward.
async fn a_stream_survives_the_drain_of(draining: &str) {
    let (mut mesh, _echo) = echo_mesh(draining, 20_000).await;
    let forward = mesh.forward_addr("b", "a/echo");
    let client = TcpStream::connect(forward).await.expect("connect forward");
    let (rd, mut wr) = client.into_split();
    let reader = tokio::spawn(read_all(rd));
    let mut source = RandomStream::new(7, STREAM);
    let mut written = 0;
    write_until(&mut wr, &mut source, &mut written, BEFORE_SIGNAL)
        .await
        .expect("the first part of the stream");

    let signalled = Instant::now();
    mesh.signal(draining, "TERM");
    mesh.wait_for_log_line(draining, &["draining: no new connections"], LINK_UP)
        .await;
    // No new work: the draining host's ports refuse connections; b refuses a new stream
    // to a draining a after link_wait (its link to a takes no new streams).
    let refused = if draining == "b" {
        let r = expect_rejected(forward, b"new", LINK_UP, "a new connection to b's forward").await;
        assert_eq!(
            r,
            Closed::Refused,
            "b's forward still accepts while b drains"
        );
        r
    } else {
        let r = TcpStream::connect(mesh.mesh_addr("a")).await;
        assert!(r.is_err(), "a's mesh port still accepts while a drains");
        mesh.wait_for_log_line("b", &["peer is going away", "peer=a"], LINK_UP)
            .await;
        let r = expect_rejected(forward, b"new", LINK_UP, "a new stream to a draining a").await;
        assert!(
            matches!(r, Closed::Error(_)),
            "a new stream to a draining a ended with {r:?}, not a reset"
        );
        r
    };
    let admin = mesh.admin_addr(draining);
    let metrics = metrics_text(admin);
    assert_eq!(
        sample(&metrics, "meshd_draining"),
        1.0,
        "meshd_draining while draining"
    );

    write_until(&mut wr, &mut source, &mut written, STREAM)
        .await
        .expect("the rest of the stream, during the drain");
    wr.shutdown().await.expect("finish the upload");
    let sent = source.sha256();
    let (got, digest) = common::within(Duration::from_secs(60), "the echo", reader)
        .await
        .expect("reader task")
        .unwrap_or_else(|e| panic!("the echo failed during {draining}'s drain: {e}"));
    let done = signalled.elapsed();
    assert_eq!(got, STREAM, "the echo came back short");
    assert_eq!(digest, sent, "the echo differs from what was sent");

    let status = mesh.wait_exit(draining, EXIT_AFTER_DRAIN).await;
    let exited = signalled.elapsed();
    assert!(
        status.success(),
        "{draining} exited with {status} after its drain"
    );
    mesh.find_log_line(draining, &["drained: every stream finished"])
        .unwrap_or_else(|| {
            panic!(
                "no 'drained' line in {draining}'s log:\n{}",
                mesh.log(draining)
            )
        });
    println!(
        "{draining} drained: 256 MiB stream intact {done:?} after SIGTERM, exit 0 after {exited:?}; \
         a new connection meanwhile: {refused:?}"
    );

    // Back again: b (restarted if it was the one stopped) finds a.
    mesh.start(draining);
    let back = Instant::now();
    common::wait_until_async(
        Duration::from_secs(15),
        "a stream after the restart",
        || async {
            echo_exact(forward, b"after the restart", Duration::from_secs(2))
                .await
                .is_ok()
        },
    )
    .await;
    println!(
        "{draining} restarted: a stream crossed again after {:?}",
        back.elapsed()
    );
    if draining == "a" {
        mesh.find_log_line("b", &["link closed", "peer_went_away"])
            .unwrap_or_else(|| panic!("b did not log a's orderly close:\n{}", mesh.log("b")));
        // Dial failures while a was down count; the end of the drained link does not.
        let metrics = metrics_text(mesh.admin_addr("b"));
        let orderly: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("meshd_link_failures_total{") && l.contains("peer=\"a\""))
            .filter(|l| l.contains("reason=\"closed\"") || l.contains("reason=\"peer_went_away\""))
            .filter(|l| !l.ends_with(" 0"))
            .collect();
        assert!(
            orderly.is_empty(),
            "a's drain counted as a link failure on b: {orderly:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_stream_finishes_through_a_drain_of_the_dialer() {
    a_stream_survives_the_drain_of("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_stream_finishes_through_a_drain_of_the_exporter() {
    a_stream_survives_the_drain_of("a").await;
}

/// An idle stream through b's forward, known to be up (one echo crossed).
async fn idle_stream(forward: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(forward).await.expect("connect forward");
    s.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    common::within(LINK_UP, "the first echo", s.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(&back, b"ping");
    s
}

/// How the client's stream ended, watched for up to `timeout`, and when: measured from
/// `since` (taken before the signal was sent, so the daemon's grace starts after it).
async fn end_of(s: &mut TcpStream, since: Instant, timeout: Duration) -> (Closed, Duration) {
    let closed = common::client::expect_closed(s, timeout, "the idle stream").await;
    (closed, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_outlives_the_grace_is_reset_and_meshd_exits_0() {
    for draining in ["a", "b"] {
        let (mut mesh, _echo) = echo_mesh(draining, SHORT_GRACE_MS).await;
        let mut s = idle_stream(mesh.forward_addr("b", "a/echo")).await;
        let signalled = Instant::now();
        mesh.signal(draining, "TERM");
        let grace = Duration::from_millis(SHORT_GRACE_MS);
        let (closed, after) = end_of(&mut s, signalled, grace + AFTER_GRACE).await;
        assert!(
            matches!(closed, Closed::Error(io::ErrorKind::ConnectionReset)),
            "the stream past {draining}'s grace ended with {closed:?}, not a reset"
        );
        assert!(
            after >= Duration::from_millis(SHORT_GRACE_MS),
            "the stream was reset {after:?} after SIGTERM, before the grace of {SHORT_GRACE_MS} ms"
        );
        let status = mesh.wait_exit(draining, AFTER_GRACE).await;
        assert!(
            status.success(),
            "{draining} exited with {status} after its grace"
        );
        println!("{draining}: idle stream reset {after:?} after SIGTERM (grace {SHORT_GRACE_MS} ms), exit 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_resets_open_streams_at_once() {
    let (mut mesh, _echo) = echo_mesh("b", 20_000).await;
    let mut s = idle_stream(mesh.forward_addr("b", "a/echo")).await;
    mesh.signal("b", "TERM");
    mesh.wait_for_log_line("b", &["draining: no new connections"], LINK_UP)
        .await;
    let again = Instant::now();
    mesh.signal("b", "TERM");
    let (closed, after) = end_of(&mut s, again, AFTER_GRACE).await;
    assert!(
        matches!(closed, Closed::Error(io::ErrorKind::ConnectionReset)),
        "after a second SIGTERM the stream ended with {closed:?}, not a reset"
    );
    let status = mesh.wait_exit("b", AFTER_GRACE).await;
    assert!(status.success(), "b exited with {status}");
    println!("second SIGTERM: stream reset {after:?} after it, exit 0");
}
