//! Self-tests of the test fixtures in `tests/common`: they must hold before any test that
//! relies on them can mean anything. None of these starts meshd.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::data::{send_random, sha256_hex, XorShift};
use common::mesh::TestMesh;
use common::pg::PgServer;
use common::redis::{RedisServer, Resp};
use common::servers::{CountingServer, EchoServer, ReplyServer, SinkServer};

const T: Duration = Duration::from_secs(10);

#[test]
fn redis_fixture_set_get_100_keys() {
    let redis = RedisServer::start();
    let mut r = Resp::connect(redis.addr()).expect("connect");
    for i in 0..100 {
        r.set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .expect("SET");
    }
    for i in 0..100 {
        assert_eq!(
            r.get(format!("k{i}").as_bytes()).expect("GET"),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert_eq!(r.get(b"missing").expect("GET"), None);

    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
        .map(|i| (format!("p{i}").into_bytes(), XorShift::new(i).bytes(100)))
        .collect();
    r.set_many(&pairs).expect("pipelined SET");
    let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let values = r.get_many(&keys).expect("pipelined GET");
    assert_eq!(values.len(), pairs.len());
    for ((_, want), got) in pairs.iter().zip(values) {
        assert_eq!(got.as_deref(), Some(want.as_slice()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fixture_select_1() {
    let pg = PgServer::start();
    let (client, connection) = tokio_postgres::connect(
        &PgServer::conn_string("127.0.0.1", pg.port()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", pg.log()));
    let conn = tokio::spawn(connection);
    let row = client
        .query_one("select 1::int4", &[])
        .await
        .expect("select 1");
    assert_eq!(row.get::<_, i32>(0), 1);
    drop(client);
    common::within(T, "connection task to end", conn)
        .await
        .expect("join")
        .expect("connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_echoes_and_honours_half_close() {
    let echo = EchoServer::start().await;
    let mut s = TcpStream::connect(echo.addr()).await.expect("connect");
    let payload = XorShift::new(7).bytes(300 * 1024);
    s.write_all(&payload).await.expect("write");
    s.shutdown().await.expect("shutdown write");
    let mut back = Vec::new();
    common::within(T, "echo until EOF", s.read_to_end(&mut back))
        .await
        .expect("read");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_server_reports_length_and_sha256() {
    let mut sink = SinkServer::start().await;
    let mut s = TcpStream::connect(sink.addr()).await.expect("connect");
    let sent = send_random(&mut s, 42, 5 * 1024 * 1024 + 3)
        .await
        .expect("send");
    let got = sink.next_result(T).await;
    assert!(got.clean_eof);
    assert_eq!(got.digest, sent);
    // The digest is of the right bytes, not merely self-consistent.
    let mut s = TcpStream::connect(sink.addr()).await.expect("connect");
    let bytes = XorShift::new(9).bytes(1000);
    s.write_all(&bytes).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let got = sink.next_result(T).await;
    assert_eq!(got.digest.bytes, 1000);
    assert_eq!(got.digest.sha256, sha256_hex(&bytes));
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_server_counts_connections_and_bytes() {
    let counting = CountingServer::start().await;
    assert_eq!((counting.connections(), counting.bytes()), (0, 0));
    let mut s = TcpStream::connect(counting.addr()).await.expect("connect");
    s.write_all(&[1u8; 1234]).await.expect("write");
    s.shutdown().await.expect("shutdown");
    common::wait_until_async(T, "1234 bytes counted", || async {
        counting.bytes() == 1234
    })
    .await;
    assert_eq!(counting.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_server_replies_after_half_close() {
    let reply = ReplyServer::start(1024 * 1024).await;
    let mut s = TcpStream::connect(reply.addr()).await.expect("connect");
    s.write_all(b"request").await.expect("write");
    s.shutdown().await.expect("shutdown write");
    let mut back = Vec::new();
    common::within(T, "reply until EOF", s.read_to_end(&mut back))
        .await
        .expect("read");
    assert_eq!(back.len(), 1024 * 1024);
    assert!(back == reply.reply(), "reply bytes differ");
    assert_eq!(reply.received(), 7);
}

fn parse(path: &std::path::Path) -> toml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

#[test]
fn test_mesh_writes_manifest_keys_and_host_configs() {
    let target: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mesh = TestMesh::builder()
        .mesh_id("fixture")
        .auth("psk")
        .mesh_secret()
        .mesh_toml("[limits]\nping_interval_ms = 500")
        .peer("a")
        .service("a", "echo", target, &["b", "c"])
        .forward("b", "a/echo")
        .peer("c")
        .manifest_override("a", |m| m.remove_peer("c"))
        .build();

    let mesh_toml = parse(&mesh.manifest_dir().join("mesh.toml"));
    assert_eq!(mesh_toml["mesh_id"].as_str(), Some("fixture"));
    assert_eq!(mesh_toml["auth"].as_str(), Some("psk"));
    assert_eq!(
        mesh_toml["limits"]["ping_interval_ms"].as_integer(),
        Some(500)
    );

    let names = ["a", "b", "c"];
    for name in names {
        let peer = parse(&mesh.manifest_dir().join(format!("{name}.toml")));
        let endpoints = peer["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints[0].as_str(),
            Some(mesh.mesh_addr(name).to_string().as_str())
        );
        let key = meshd::keys::load_private_key(&mesh.key_path(name)).expect("key file");
        assert_eq!(
            peer["public_key"].as_str(),
            Some(key.public_key().to_base64().as_str())
        );
        let mode = std::fs::metadata(mesh.key_path(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}'s key file mode");

        let host = parse(&mesh.host_config_path(name));
        let table = host.as_table().expect("table");
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "admin",
                "drain_grace_ms",
                "key",
                "listen",
                "manifest",
                "mesh_secret",
                "name",
                "state_dir"
            ]
        );
        assert_eq!(host["name"].as_str(), Some(name));
        assert_eq!(
            host["listen"].as_str(),
            Some(mesh.mesh_addr(name).to_string().as_str())
        );
        assert_eq!(
            host["key"].as_str(),
            Some(mesh.key_path(name).to_str().unwrap())
        );
        assert!(std::path::Path::new(host["state_dir"].as_str().unwrap()).is_dir());
        let secret = host["mesh_secret"].as_str().expect("mesh_secret");
        assert!(meshd::keys::load_mesh_secret(std::path::Path::new(secret)).is_ok());
        assert_ne!(host["admin"].as_str(), host["listen"].as_str());
        assert_eq!(
            host["manifest"].as_str(),
            Some(mesh.manifest_dir_of(name).to_str().unwrap())
        );
    }

    let a = parse(&mesh.manifest_dir().join("a.toml"));
    let echo = &a["services"]["echo"];
    assert_eq!(echo["target"].as_str(), Some("127.0.0.1:9"));
    let allow: Vec<&str> = echo["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(allow, ["b", "c"]);

    let b = parse(&mesh.manifest_dir().join("b.toml"));
    let forwards = b["forwards"].as_array().expect("forwards");
    assert_eq!(forwards.len(), 1);
    assert_eq!(forwards[0]["to"].as_str(), Some("a/echo"));
    let listen = mesh.forward_addr("b", "a/echo");
    assert!(listen.ip().is_loopback());
    assert_eq!(
        forwards[0]["listen"].as_str(),
        Some(listen.to_string().as_str())
    );
    assert!(forwards[0].get("public").is_none());

    // a reads its own copy: c is gone, and so is every reference to it.
    let own = mesh.manifest_dir_of("a");
    assert_eq!(own, mesh.dir().join("a").join("peers"));
    assert!(!own.join("c.toml").exists());
    assert!(own.join("b.toml").exists() && own.join("mesh.toml").exists());
    let a_own = parse(&own.join("a.toml"));
    let allow = a_own["services"]["echo"]["allow"].as_array().unwrap();
    assert_eq!(allow.len(), 1);
    assert_eq!(allow[0].as_str(), Some("b"));
    assert_eq!(mesh.manifest_dir_of("b"), mesh.manifest_dir());
}
