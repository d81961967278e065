//! The mesh listener's front door under idle connections: sources that open connections
//! and never send a byte must not keep a real peer's link from coming up.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mesh::TestMesh;
use common::servers::EchoServer;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

const LOG: Duration = Duration::from_secs(10);
/// How long the real peer's link may take to come up.
const LINK_UP_BUDGET: Duration = Duration::from_secs(2);
const IDLE_PER_SOURCE: usize = 100;
/// Pause before an idle connection that meshd closed is opened again.
const REOPEN_AFTER: Duration = Duration::from_millis(50);
/// Bound on the reopenings of one idle connection.
const MAX_REOPEN: usize = 10_000;

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    socket.connect(to).await
}

/// Holds one idle connection from `src` to `to`, sending nothing, and opens it again
/// whenever meshd closes it, until `stop`.
async fn hold_idle(src: Ipv4Addr, to: SocketAddr, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 64];
    for _ in 0..MAX_REOPEN {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut s) = connect_from(src, to).await {
            // Until meshd closes it (EOF or reset) or the test is over.
            loop {
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {}
                    Err(_) if stop.load(Ordering::Relaxed) => return,
                    Err(_) => {}
                }
            }
        }
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}

async fn failures(admin: SocketAddr, reason: &str) -> f64 {
    let line = format!("meshd_handshake_failures_total{{reason=\"{reason}\"}}");
    let text = tokio::task::spawn_blocking(move || common::metrics_text(admin))
        .await
        .expect("metrics task");
    common::sample(&text, &line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_two_sources_do_not_block_a_peers_link() {
    let echo = EchoServer::start().await;
    // The rate limit is raised so that each source really gets its 100 connections in:
    // this test is about the pending-handshake caps.
    let mut mesh = TestMesh::builder()
        .service("a", "svc", echo.addr(), &["b"])
        .forward("b", "a/svc")
        .mesh_toml("[limits]\nhandshake_rate_per_source = 1000\n")
        .build();
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LOG).await;
    let port = mesh.mesh_addr("a");
    let admin = mesh.admin_addr("a");

    let stop = Arc::new(AtomicBool::new(false));
    let mut idle = Vec::new();
    for src in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)] {
        for _ in 0..IDLE_PER_SOURCE {
            idle.push(tokio::spawn(hold_idle(src, port, stop.clone())));
        }
    }
    // 200 idle connections: a has seen them all once it refused each source's 92 over
    // the per-source cap of 8, or (without that cap) evicted 72 at the global cap of 128.
    let over_share = (2 * (IDLE_PER_SOURCE - 8)) as f64;
    common::wait_until_async(
        Duration::from_secs(20),
        "a to have turned away the idle connections beyond its caps",
        || async {
            failures(admin, "pending_per_source").await >= over_share
                || failures(admin, "overloaded").await >= (2 * IDLE_PER_SOURCE - 128) as f64
        },
    )
    .await;

    let started = Instant::now();
    mesh.start("b");
    mesh.wait_link_up("a", "b", Duration::from_secs(20)).await;
    let took = started.elapsed();
    let per_source = failures(admin, "pending_per_source").await;
    let overloaded = failures(admin, "overloaded").await;
    stop.store(true, Ordering::Relaxed);
    for task in idle {
        let _ = task.await;
    }
    eprintln!(
        "b's link up on a after {} ms; a refused {per_source} idle connections over the \
         per-source cap and evicted {overloaded} at the global cap",
        took.as_millis()
    );
    // 8 pending per source: the two sources hold 16 slots of 128, so nobody, least of
    // all b, was evicted to make room, and each source's other 92 were refused.
    assert_eq!(overloaded, 0.0, "handshakes evicted at the global cap");
    assert!(
        per_source >= over_share,
        "only {per_source} connections refused over the per-source cap"
    );
    assert!(
        took < LINK_UP_BUDGET,
        "b's link took {took:?} to come up, over {LINK_UP_BUDGET:?}"
    );
}
