//! The admin server against hostile clients, on a real `meshd`: `POST /reload` refuses a
//! foreign `Host` (DNS rebinding) or `Origin` (cross-site POST) without reloading, and
//! connections left silent cannot keep a `/metrics` scrape waiting.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::mesh::TestMesh;
use common::{metrics_text, sample};

const READY: Duration = Duration::from_secs(10);
const ANSWER: Duration = Duration::from_secs(10);

/// Sends one raw request head; returns the status code and the body. `None` when the
/// server closed the connection without an HTTP answer.
async fn exchange(admin: SocketAddr, head: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    common::within(ANSWER, "admin answer", s.read_to_end(&mut raw))
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Starts one daemon and waits until its admin server answers.
async fn one_daemon() -> (TestMesh, SocketAddr) {
    let mut mesh = TestMesh::builder().peer("a").build();
    mesh.start("a");
    let admin = mesh.admin_addr("a");
    common::wait_until_async(READY, "the admin server to answer", || async move {
        exchange(admin, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_some()
    })
    .await;
    (mesh, admin)
}

fn reloads_ok(admin: SocketAddr) -> f64 {
    sample(
        &metrics_text(admin),
        "meshd_config_reloads_total{result=\"success\"}",
    )
}

fn post_reload(host: &str, extra: &str) -> String {
    format!("POST /reload HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_foreign_host_or_origin_and_reloads_for_a_local_one() {
    let (mesh, admin) = one_daemon().await;
    let port = admin.port();
    assert_eq!(reloads_ok(admin), 0.0, "no reload yet");

    for (what, head) in [
        ("a rebinding Host", post_reload("evil.example", "")),
        (
            "a rebinding Host with the port",
            post_reload(&format!("evil.example:{port}"), ""),
        ),
        (
            "a local Host on another port",
            post_reload("127.0.0.1:1", ""),
        ),
        (
            "a cross-site Origin",
            post_reload(
                &format!("127.0.0.1:{port}"),
                "Origin: http://evil.example\r\n",
            ),
        ),
        (
            "an opaque Origin",
            post_reload(&format!("127.0.0.1:{port}"), "Origin: null\r\n"),
        ),
    ] {
        let (status, body) = exchange(admin, &head)
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(status, 403, "{what}: {body}");
        assert!(
            body.contains("Host") || body.contains("Origin"),
            "{what}: the body does not say why: {body}"
        );
    }
    assert_eq!(reloads_ok(admin), 0.0, "a refused POST /reload reloaded");
    assert!(
        mesh.find_log_line("a", &["config reloaded"]).is_none(),
        "a refused POST /reload reloaded:\n{}",
        mesh.log("a")
    );

    let local = [
        format!("127.0.0.1:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
    ];
    for (n, host) in local.iter().enumerate() {
        let (status, body) = exchange(admin, &post_reload(host, ""))
            .await
            .unwrap_or_else(|| panic!("Host {host}: no answer"));
        assert_eq!(status, 200, "Host {host}: {body}");
        assert_eq!(
            reloads_ok(admin),
            (n + 1) as f64,
            "Host {host}: not reloaded"
        );
    }
    let same_origin = format!("Origin: http://127.0.0.1:{port}\r\n");
    let (status, body) = exchange(admin, &post_reload(&local[0], &same_origin))
        .await
        .expect("same-origin POST: no answer");
    assert_eq!(status, 200, "same-origin POST: {body}");

    // Scrapers name the daemon however they reach it: GETs stay open to any Host.
    let (status, body) = exchange(admin, "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await
        .expect("GET /metrics: no answer");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_delay_a_metrics_scrape() {
    let (_mesh, admin) = one_daemon().await;
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(TcpStream::connect(admin).await.expect("idle connect"));
    }
    // A scraper that gets no answer retries at once; count the time to the first answer.
    let start = Instant::now();
    let mut attempts = 0;
    let (status, body) = loop {
        attempts += 1;
        if let Some(answer) = exchange(admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await {
            break answer;
        }
        assert!(
            start.elapsed() < ANSWER,
            "no /metrics answer in {ANSWER:?} with 32 idle connections open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = start.elapsed();
    eprintln!("/metrics answered after {took:?} ({attempts} attempts) with 32 idle connections");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("meshd_build_info"), "{body}");
    assert!(
        took < Duration::from_millis(500),
        "/metrics took {took:?} with 32 idle connections open"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_head_deadline() {
    let (_mesh, admin) = one_daemon().await;
    let mut silent = TcpStream::connect(admin).await.expect("connect");
    let start = Instant::now();
    let mut rest = Vec::new();
    let n = common::within(
        Duration::from_secs(4),
        "the server to close a silent connection",
        silent.read_to_end(&mut rest),
    )
    .await
    .expect("read");
    let took = start.elapsed();
    eprintln!("a silent connection was closed after {took:?}");
    assert_eq!(n, 0, "a silent connection got an answer: {rest:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, before the 2 s head deadline"
    );
}
