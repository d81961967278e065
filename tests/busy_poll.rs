//! Busy polling (`busy_poll_us`): small round trips make the daemons poll, polling stops by
//! itself once the traffic stops (the counter stands still and the processes use no CPU),
//! and `busy_poll_us = 0` never polls.

mod common;

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::mesh::TestMesh;
use common::servers::EchoServer;
use common::{metrics_text, sample};

const LINK_UP: Duration = Duration::from_secs(15);
const POLLED: &str = "meshd_busy_poll_seconds_total";

/// A two-peer mesh (b forwards to a's echo service) with `busy_poll_us` set on both.
async fn mesh_with(busy_poll_us: u64, echo: &EchoServer) -> TestMesh {
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    for name in ["a", "b"] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mesh.host_config_path(name))
            .expect("open host config");
        writeln!(f, "busy_poll_us = {busy_poll_us}").expect("append busy_poll_us");
    }
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh
}

/// `n` echo round trips of 64 bytes on one connection, each checked.
async fn round_trips(mesh: &TestMesh, n: usize) {
    let mut s = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect");
    let mut back = [0u8; 64];
    for i in 0..n {
        let msg = [(i % 251) as u8; 64];
        s.write_all(&msg).await.expect("write");
        common::within(
            Duration::from_secs(10),
            "echo reply",
            s.read_exact(&mut back),
        )
        .await
        .expect("read");
        assert_eq!(back, msg, "round trip {i}");
    }
}

fn polled(mesh: &TestMesh, name: &str) -> f64 {
    sample(&metrics_text(mesh.admin_addr(name)), POLLED)
}

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_round_trips_are_polled_for_and_polling_stops_with_them() {
    let echo = EchoServer::start().await;
    // A 2 ms maximum: loopback round trips are far shorter even on a loaded machine, so
    // the window grows and the daemons poll.
    let mut mesh = mesh_with(2000, &echo).await;
    round_trips(&mesh, 3000).await;
    let after = polled(&mesh, "a") + polled(&mesh, "b");
    assert!(after > 0.0, "no polling during 3000 small round trips");

    // Quiet now: the windows run out within microseconds. Over the next second the
    // counter must stand still and the daemons must be asleep.
    common::wait_until(Duration::from_secs(5), "polling to stop", || {
        let before = polled(&mesh, "a") + polled(&mesh, "b");
        std::thread::sleep(Duration::from_millis(50));
        polled(&mesh, "a") + polled(&mesh, "b") == before
    });
    let (pa, pb) = (
        mesh.pid("a").expect("a runs"),
        mesh.pid("b").expect("b runs"),
    );
    let ticks = cpu_ticks(pa) + cpu_ticks(pb);
    let counted = polled(&mesh, "a") + polled(&mesh, "b");
    std::thread::sleep(Duration::from_secs(1));
    let idle_ticks = cpu_ticks(pa) + cpu_ticks(pb) - ticks;
    let idle_polled = polled(&mesh, "a") + polled(&mesh, "b") - counted;
    assert!(
        idle_polled < 0.001,
        "{idle_polled:.4} s of polling in a quiet second"
    );
    // Keepalive pings and the metrics scrapes cost a little; polling would cost 100.
    assert!(
        idle_ticks <= 5,
        "idle daemons used {idle_ticks} CPU ticks (1/100 s) in one second"
    );

    // Traffic again: polling resumes.
    round_trips(&mesh, 1000).await;
    assert!(polled(&mesh, "a") + polled(&mesh, "b") > counted + idle_polled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_poll_us_0_never_polls() {
    let echo = EchoServer::start().await;
    let mesh = mesh_with(0, &echo).await;
    round_trips(&mesh, 2000).await;
    assert_eq!(polled(&mesh, "a"), 0.0);
    assert_eq!(polled(&mesh, "b"), 0.0);
}
