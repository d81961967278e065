//! meshd under hostile input and failures: garbage and truncated handshakes on the mesh
//! port leave the existing link working; a peer killed and restarted is redialed; SIGTERM
//! exits cleanly.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::client::{echo_exact, expect_closed, expect_rejected};
use common::data::XorShift;
use common::mesh::TestMesh;
use common::servers::EchoServer;
use common::{metrics_text, sample};

const LINK_UP: Duration = Duration::from_secs(10);
const ECHO: Duration = Duration::from_secs(10);

/// a exports an echo service to b; b has a forward to it. Both started, link up, echo ok.
async fn echo_mesh(echo: &EchoServer, mesh_toml: &str) -> TestMesh {
    let mut mesh = TestMesh::builder()
        .mesh_toml(mesh_toml)
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    echo_exact(mesh.forward_addr("b", "a/echo"), b"before", ECHO)
        .await
        .expect("echo through the link");
    mesh
}

/// The cleartext preamble: magic, version, mode (1 noise, 2 psk), name length, reserved,
/// name zero-padded to 64 bytes.
fn preamble(mode: u8, name: &str) -> Vec<u8> {
    let mut p = b"MSHD".to_vec();
    p.extend_from_slice(&[meshd::proto::handshake::VERSION, mode, name.len() as u8, 0]);
    let mut padded = [0u8; 64];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    p.extend_from_slice(&padded);
    assert_eq!(p.len(), 72);
    p
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .expect("connect to the mesh port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_mesh_port_is_cut_and_the_link_survives() {
    let echo = EchoServer::start().await;
    let mut mesh = echo_mesh(&echo, "[limits]\nhandshake_timeout_ms = 1000").await;
    let a = mesh.mesh_addr("a");

    // 1. Garbage: closed at once.
    let mut s = connect(a).await;
    let _ = s.write_all(&XorShift::new(666).bytes(4096)).await;
    expect_closed(&mut s, Duration::from_secs(2), "4 KiB of garbage").await;

    // 2. A valid preamble, then a truncated handshake message, then EOF.
    let mut s = connect(a).await;
    let mut msg = preamble(1, "b");
    msg.extend_from_slice(&96u16.to_be_bytes());
    msg.extend_from_slice(&XorShift::new(7).bytes(20));
    s.write_all(&msg).await.expect("write truncated handshake");
    s.shutdown().await.expect("half-close");
    expect_closed(&mut s, Duration::from_secs(3), "a truncated handshake").await;

    // 3. A preamble and a maximal length prefix, then silence: cut by the deadline.
    let mut s = connect(a).await;
    let mut msg = preamble(1, "b");
    msg.extend_from_slice(&[0xFF, 0xFF]);
    s.write_all(&msg).await.expect("write length prefix");
    expect_closed(&mut s, Duration::from_secs(6), "a stalled handshake").await;

    echo_exact(mesh.forward_addr("b", "a/echo"), b"after bad input", ECHO)
        .await
        .expect("echo through the existing link after bad input");
    assert!(mesh.is_running("a"), "a died:\n{}", mesh.log("a"));
    assert!(mesh.is_running("b"), "b died:\n{}", mesh.log("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_is_redialed_after_restart() {
    let echo = EchoServer::start().await;
    let mut mesh = echo_mesh(&echo, "").await;
    let forward = mesh.forward_addr("b", "a/echo");

    mesh.kill("a");
    expect_rejected(forward, b"while a is down", ECHO, "stream while a is down").await;

    mesh.start("a");
    common::wait_until_async(
        Duration::from_secs(15),
        "an echo through b's forward after a restarted",
        || async {
            echo_exact(forward, b"after restart", Duration::from_secs(2))
                .await
                .is_ok()
        },
    )
    .await;
    assert!(mesh.is_running("b"), "b died:\n{}", mesh.log("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero() {
    let echo = EchoServer::start().await;
    let mut mesh = echo_mesh(&echo, "").await;
    let status = mesh.stop("b").await;
    assert!(
        status.success(),
        "b exited with {status}:\n{}",
        mesh.log("b")
    );
    let status = mesh.stop("a").await;
    assert!(
        status.success(),
        "a exited with {status}:\n{}",
        mesh.log("a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_stall_other_streams_of_the_link() {
    use common::servers::SinkServer;
    let echo = EchoServer::start().await;
    let mut sink = SinkServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .service("a", "sink", sink.addr(), &["b"])
        .forward("b", "a/echo")
        .forward("b", "a/sink")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;

    // Stream 1 sends up to 128 MiB (more than every socket buffer on the path can hold) to the echo service and never reads the echo: its window fills
    // at every hop and the stream stalls, with the writer blocked.
    let mut stalled = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect echo forward");
    let blocked = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        while written < 128 << 20 {
            if stalled.write_all(&chunk).await.is_err() {
                break;
            }
            written += chunk.len();
        }
        (written, stalled)
    });

    // Stream 2 on the same link still carries 64 MiB intact.
    let mut s = TcpStream::connect(mesh.forward_addr("b", "a/sink"))
        .await
        .expect("connect sink forward");
    let sent = common::within(
        Duration::from_secs(60),
        "64 MiB beside a stalled stream",
        common::data::send_random(&mut s, 99, 64 << 20),
    )
    .await
    .expect("send");
    let got = sink.next_result(Duration::from_secs(60)).await;
    assert_eq!(got.digest.bytes, sent.bytes);
    assert_eq!(got.digest.sha256, sent.sha256);
    assert!(
        !blocked.is_finished(),
        "the stalled writer finished: flow control did not hold it back"
    );
    blocked.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_a_dead_link_reaches_the_client_as_a_reset() {
    use tokio::io::AsyncReadExt;
    let echo = EchoServer::start().await;
    let mut mesh = echo_mesh(&echo, "").await;
    let mut s = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect");
    s.write_all(b"mid-transfer").await.expect("write");
    let mut back = [0u8; 12];
    common::within(ECHO, "echo before the cut", s.read_exact(&mut back))
        .await
        .expect("read echo");
    mesh.kill("a");
    let mut buf = [0u8; 64];
    let r = common::within(
        Duration::from_secs(10),
        "the cut to reach the client",
        s.read(&mut buf),
    )
    .await;
    match r {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "expected a TCP reset, got {e}"
        ),
        Ok(n) => panic!("the client saw a clean read of {n} bytes instead of a reset"),
    }
}

/// A flood of connections from one source is refused at accept (counted, logged once),
/// while the established link keeps serving and the real peer still gets back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_source_is_rate_limited() {
    let echo = EchoServer::start().await;
    let mut mesh = echo_mesh(
        &echo,
        "[limits]\nhandshake_rate_per_source = 2\nhandshake_timeout_ms = 1000",
    )
    .await;
    let a = mesh.mesh_addr("a");
    // 40 connections at once from 127.0.0.1; the bucket holds at most 4 (burst = 2 × 2/s).
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(connect(a).await);
    }
    let admin = mesh.admin_addr("a");
    common::wait_until(
        Duration::from_secs(10),
        "rate-limited connections counted",
        || {
            sample(
                &metrics_text(admin),
                "meshd_handshake_failures_total{reason=\"rate_limited\"}",
            ) >= 30.0
        },
    );
    drop(held);
    let lines = mesh
        .current_log("a")
        .lines()
        .filter(|l| l.contains("handshake rejected") && l.contains("rate_limited"))
        .count();
    assert_eq!(
        lines,
        1,
        "one log line per source per 10 s:\n{}",
        mesh.log("a")
    );

    echo_exact(mesh.forward_addr("b", "a/echo"), b"during the flood", ECHO)
        .await
        .expect("the established link is unaffected");
    // b redials from the same address once tokens are back (2 per second).
    mesh.restart("b").await;
    mesh.wait_link_up("b", "a", LINK_UP).await;
    echo_exact(mesh.forward_addr("b", "a/echo"), b"after the flood", ECHO)
        .await
        .expect("echo over the new link");
}
