//! Memory of the daemons at idle and with 500 open forwarded connections. Prints the
//! figures (for the closing report); asserts only that every connection really works.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::mesh::TestMesh;
use common::servers::EchoServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_idle_and_with_500_open_connections() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", Duration::from_secs(10)).await;
    let forward = mesh.forward_addr("b", "a/echo");
    // One stream first, so both sides have touched every code path once.
    common::client::echo_exact(forward, b"warm up", Duration::from_secs(10))
        .await
        .expect("warm-up echo");
    let idle = (mesh.rss_kib("a"), mesh.rss_kib("b"));

    let mut held = Vec::with_capacity(500);
    for i in 0..500u32 {
        let mut s = common::within(
            Duration::from_secs(10),
            "connect to the forward",
            TcpStream::connect(forward),
        )
        .await
        .expect("connect");
        let msg = format!("conn {i:05}\n");
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        common::within(
            Duration::from_secs(10),
            "echo on a held connection",
            s.read_exact(&mut back),
        )
        .await
        .expect("read echo");
        assert_eq!(back, msg.as_bytes());
        held.push(s);
    }
    let busy = (mesh.rss_kib("a"), mesh.rss_kib("b"));
    eprintln!(
        "RSS idle: a {} KiB, b {} KiB; with 500 open connections: a {} KiB, b {} KiB; \
         per connection (both ends): {:.1} KiB",
        idle.0,
        idle.1,
        busy.0,
        busy.1,
        ((busy.0 + busy.1) as f64 - (idle.0 + idle.1) as f64) / 500.0
    );
    assert_eq!(held.len(), 500);
    drop(held);
}
