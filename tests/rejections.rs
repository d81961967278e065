//! What meshd refuses: configs that would expose a forward, links with a wrong key or an
//! unknown name, streams to a service the peer may not open or that does not exist. For
//! each refused stream the target (a `CountingServer`) must see no connection and no byte.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::client::{echo_exact, expect_rejected};
use common::mesh::TestMesh;
use common::servers::{CountingServer, EchoServer};

const LINK_UP: Duration = Duration::from_secs(10);
const LOG: Duration = Duration::from_secs(10);
const CLOSE: Duration = Duration::from_secs(15);
const PROBE: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

fn assert_untouched(target: &CountingServer) {
    assert_eq!(
        (target.connections(), target.bytes()),
        (0, 0),
        "the target saw (connections, bytes) through a refused stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_guard_refuses_a_non_public_forward_on_all_addresses() {
    let echo = EchoServer::start().await;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let listen = SocketAddr::new(any, common::free_port_on(any));
    let mut mesh = TestMesh::builder()
        .service("a", "svc", echo.addr(), &["b"])
        .forward_at("b", listen, "a/svc", false)
        .build();
    let (status, output) = mesh.run_to_exit("b", Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(64), "exit status; output:\n{output}");
    assert!(
        output.contains("forwards[0]"),
        "the error names the forward:\n{output}"
    );
    assert!(
        output.contains("b.toml"),
        "the error names the file:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_guard_accepts_a_public_forward() {
    let echo = EchoServer::start().await;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let port = common::free_port_on(any);
    let mut mesh = TestMesh::builder()
        .service("a", "svc", echo.addr(), &["b"])
        .forward_at("b", SocketAddr::new(any, port), "a/svc", true)
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    echo_exact(local, b"public forward ok", Duration::from_secs(10))
        .await
        .expect("echo through the public forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_rejected_at_the_handshake() {
    let target = CountingServer::start().await;
    let mut mesh = TestMesh::builder()
        .service("a", "svc", target.addr(), &["b"])
        .forward("b", "a/svc")
        .manifest_override("b", |_| {})
        .build();
    // b got a new key and its own manifest copy says so (its config is valid), but a's
    // manifest still lists the old key: a must refuse b's handshake.
    let new_key = mesh.replace_key("b");
    let b_file = mesh.manifest_dir_of("b").join("b.toml");
    let text = std::fs::read_to_string(&b_file).expect("read b.toml");
    let rewritten: String = text
        .lines()
        .map(|l| {
            if l.starts_with("public_key") {
                format!("public_key = \"{}\"\n", new_key.to_base64())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(text, rewritten, "b.toml has no public_key line");
    std::fs::write(&b_file, rewritten).expect("write b.toml");
    mesh.start("a");
    mesh.start("b");
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"wrong_key\""], LOG)
        .await;
    let forward = mesh.forward_addr("b", "a/svc");
    expect_rejected(forward, PROBE, CLOSE, "stream without a link").await;
    assert!(
        mesh.find_log_line("b", &["link up"]).is_none(),
        "b brought a link up with a wrong key:\n{}",
        mesh.log("b")
    );
    assert_untouched(&target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peer_is_rejected_at_the_handshake() {
    let target = CountingServer::start().await;
    // c knows a and itself; a's manifest has never heard of c.
    let mut mesh = TestMesh::builder()
        .peer("b")
        .service("a", "svc", target.addr(), &["b", "c"])
        .forward("c", "a/svc")
        .manifest_override("a", |m| m.remove_peer("c"))
        .build();
    mesh.start("a");
    mesh.start("c");
    mesh.wait_for_log_line("a", &["handshake rejected", "unknown peer"], LOG)
        .await;
    let forward = mesh.forward_addr("c", "a/svc");
    expect_rejected(forward, PROBE, CLOSE, "stream from an unknown peer").await;
    assert!(
        mesh.find_log_line("c", &["link up"]).is_none(),
        "c brought a link up although a does not know it:\n{}",
        mesh.log("c")
    );
    assert_untouched(&target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_not_allowed_is_refused_at_open() {
    let target = CountingServer::start().await;
    // b's copy says a allows b; a's own copy allows only c (c never runs).
    let mut mesh = TestMesh::builder()
        .service("a", "svc", target.addr(), &["b"])
        .forward("b", "a/svc")
        .peer("c")
        .manifest_override("a", |m| {
            m.peer_mut("a").services.get_mut("svc").expect("svc").allow = vec!["c".into()];
            m.peer_mut("b").forwards.clear();
        })
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let forward = mesh.forward_addr("b", "a/svc");
    expect_rejected(forward, PROBE, CLOSE, "stream to a service b may not open").await;
    mesh.wait_for_log_line("a", &["open refused", "not allowed"], LOG)
        .await;
    assert_untouched(&target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_refused_at_open() {
    let target = CountingServer::start().await;
    let echo = EchoServer::start().await;
    // b's copy says a exports `ghost`; a's own copy has no such service.
    let mut mesh = TestMesh::builder()
        .service("a", "svc", echo.addr(), &["b"])
        .service("a", "ghost", target.addr(), &["b"])
        .forward("b", "a/ghost")
        .manifest_override("a", |m| {
            m.peer_mut("a").services.remove("ghost");
            m.peer_mut("b").forwards.clear();
        })
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let forward = mesh.forward_addr("b", "a/ghost");
    expect_rejected(forward, PROBE, CLOSE, "stream to an unknown service").await;
    mesh.wait_for_log_line("a", &["open refused", "unknown service"], LOG)
        .await;
    assert_untouched(&target);
}

/// Relays one connection from `listener` to `upstream` and hands back the first bytes the
/// client sent (the dialer's preamble and msg1).
async fn capture_first_flight(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    want: usize,
) -> (Vec<u8>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, _) = listener.accept().await.expect("accept dialer");
    let mut first = vec![0u8; want];
    client
        .read_exact(&mut first)
        .await
        .expect("read first flight");
    let mut server = tokio::net::TcpStream::connect(upstream)
        .await
        .expect("connect acceptor");
    server
        .write_all(&first)
        .await
        .expect("forward first flight");
    let relay = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
    (first, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_handshake_is_rejected_even_after_restart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = EchoServer::start().await;
    // b dials a through a relay owned by the test, which records b's first flight.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let relay_addr = relay.local_addr().expect("relay addr");
    let mut mesh = TestMesh::builder()
        .service("a", "svc", echo.addr(), &["b"])
        .forward("b", "a/svc")
        .manifest_override("b", move |m| m.peer_mut("a").endpoint = relay_addr)
        .build();
    mesh.start("a");
    // The relay connects to a as soon as b's first flight is in: a must be listening.
    mesh.wait_for_log("a", "meshd ready", LOG).await;
    mesh.start("b");
    // preamble (72) + u16 length + IKpsk2 msg1 (32 e + 48 s + 8 timestamp + 16 tag = 104).
    let (first, _relay_task) = common::within(
        Duration::from_secs(10),
        "b dialing through the relay",
        capture_first_flight(relay, mesh.mesh_addr("a"), 72 + 2 + 104),
    )
    .await;
    assert_eq!(&first[..4], b"MSHD");
    mesh.wait_link_up("b", "a", LINK_UP).await;

    let replay = |addr: SocketAddr, first: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect a");
        s.write_all(&first).await.expect("send replay");
        let mut buf = [0u8; 64];
        // a must close without answering msg2.
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a kept a replayed handshake open")
            .unwrap_or(0);
        assert_eq!(n, 0, "a answered a replayed handshake");
    };
    replay(mesh.mesh_addr("a"), first.clone()).await;
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"replay\""], LOG)
        .await;

    // The high-water mark survives a restart of the acceptor.
    mesh.kill("a");
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LOG).await;
    replay(mesh.mesh_addr("a"), first).await;
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"replay\""], LOG)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_mode_with_another_mesh_secret_is_rejected() {
    let target = CountingServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("psk")
        .mesh_secret()
        .service("a", "svc", target.addr(), &["b"])
        .forward("b", "a/svc")
        .build();
    // b runs with a different mesh secret file.
    let other = mesh.dir().join("other.secret");
    meshd::keys::create_mesh_secret_file(&other).expect("other secret");
    let cfg_path = mesh.host_config_path("b");
    let cfg = std::fs::read_to_string(&cfg_path).expect("read b config");
    let cfg: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("mesh_secret") {
                format!("mesh_secret = {:?}\n", other.to_str().expect("utf-8"))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(
        cfg.contains("other.secret"),
        "b's config has no mesh_secret line"
    );
    std::fs::write(&cfg_path, cfg).expect("write b config");
    mesh.start("a");
    mesh.start("b");
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"decrypt\""], LOG)
        .await;
    let forward = mesh.forward_addr("b", "a/svc");
    expect_rejected(forward, PROBE, CLOSE, "stream over a wrong psk").await;
    assert_untouched(&target);
}
