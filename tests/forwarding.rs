//! Streams through a two-peer mesh: b's forward → link → a's service. Real servers at the
//! far end (redis, PostgreSQL), byte-exact bulk transfers, half-close, many connections.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::data::{send_random, XorShift};
use common::mesh::TestMesh;
use common::pg::PgServer;
use common::redis::{RedisServer, Resp};
use common::servers::{EchoServer, ReplyServer, SinkServer};

const LINK_UP: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;

/// a exports `svc` at `target` to b; b has a forward to it. Both started, link up.
async fn two_peers(target: SocketAddr) -> TestMesh {
    let mut mesh = TestMesh::builder()
        .service("a", "svc", target, &["b"])
        .forward("b", "a/svc")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_10000_set_get_through_forward() {
    let redis = RedisServer::start();
    let mesh = two_peers(redis.addr()).await;
    let forward = mesh.forward_addr("b", "a/svc");
    let checked = tokio::task::spawn_blocking(move || {
        let mut r = Resp::connect(forward).expect("connect through forward");
        let mut rng = XorShift::new(1);
        let mut checked = 0;
        for batch in 0..100 {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
                .map(|i| {
                    let len = 1 + (batch * 100 + i) % 300;
                    (format!("key:{batch}:{i}").into_bytes(), rng.bytes(len))
                })
                .collect();
            r.set_many(&pairs).expect("pipelined SET through forward");
            let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
            let values = r.get_many(&keys).expect("pipelined GET through forward");
            for ((k, want), got) in pairs.iter().zip(values) {
                assert_eq!(
                    got.as_deref(),
                    Some(want.as_slice()),
                    "value of {}",
                    String::from_utf8_lossy(k)
                );
                checked += 1;
            }
        }
        checked
    })
    .await
    .expect("redis client");
    assert_eq!(checked, 10_000);
    // The values really are in this redis, not an artefact of the client.
    let mut direct = Resp::connect(redis.addr()).expect("connect direct");
    assert!(direct.get(b"key:99:99").expect("GET").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_10000_rows_through_forward() {
    let pg = PgServer::start();
    let target = SocketAddr::from(([127, 0, 0, 1], pg.port()));
    let mesh = two_peers(target).await;
    let forward = mesh.forward_addr("b", "a/svc");
    common::within(
        Duration::from_secs(180),
        "a postgres session through the forward",
        postgres_session(forward),
    )
    .await;
}

/// Creates a table, inserts 10,000 rows in one transaction and reads them all back.
async fn postgres_session(forward: SocketAddr) {
    let (mut client, connection) = tokio_postgres::connect(
        &PgServer::conn_string("127.0.0.1", forward.port()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect through forward");
    let conn = tokio::spawn(connection);

    let v = |id: i64| (id * 7919) % 100_003;
    let s = |id: i64| format!("row-{id}-{:x}", id * 2_654_435_761);
    client
        .batch_execute("create table t (id int8 primary key, v int8 not null, s text not null)")
        .await
        .expect("create table");
    let tx = client.transaction().await.expect("begin");
    for chunk in 0..10i64 {
        let values: Vec<String> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|id| format!("({id}, {}, '{}')", v(id), s(id)))
            .collect();
        let n = tx
            .execute(&format!("insert into t values {}", values.join(",")), &[])
            .await
            .expect("insert");
        assert_eq!(n, 1000);
    }
    tx.commit().await.expect("commit");

    let row = client
        .query_one("select count(*), sum(v)::int8 from t", &[])
        .await
        .expect("aggregate");
    assert_eq!(row.get::<_, i64>(0), 10_000);
    assert_eq!(row.get::<_, i64>(1), (0..10_000).map(v).sum::<i64>());
    let sample = client
        .query_one("select v, s from t where id = $1", &[&4321i64])
        .await
        .expect("sample");
    assert_eq!(sample.get::<_, i64>(0), v(4321));
    assert_eq!(sample.get::<_, String>(1), s(4321));
    let rows = client
        .query("select id, v, s from t order by id", &[])
        .await
        .expect("read back");
    assert_eq!(rows.len(), 10_000);
    for (i, row) in rows.iter().enumerate() {
        let id = i as i64;
        assert_eq!(row.get::<_, i64>(0), id);
        assert_eq!(row.get::<_, i64>(1), v(id));
        assert_eq!(row.get::<_, String>(2), s(id));
    }
    drop(client);
    common::within(Duration::from_secs(10), "postgres connection to end", conn)
        .await
        .expect("join")
        .expect("connection");
}

/// Sends `len` random bytes of `seed` to `addr` and checks what `sink` received.
/// Returns the elapsed time until the sink saw the end.
async fn transfer(addr: SocketAddr, sink: &mut SinkServer, seed: u64, len: u64) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let sent = send_random(&mut s, seed, len).await.expect("send");
    let got = sink.next_result(Duration::from_secs(300)).await;
    let elapsed = start.elapsed();
    assert!(got.clean_eof, "the sink saw a reset instead of an EOF");
    assert_eq!(got.digest, sent, "bytes differ after the transfer");
    elapsed
}

fn mib_per_s(len: u64, d: Duration) -> f64 {
    len as f64 / MIB as f64 / d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_one_stream_sha256_equal() {
    let mut sink = SinkServer::start().await;
    let len = 1024 * MIB;
    let direct = common::within(
        Duration::from_secs(300),
        "1 GiB direct",
        transfer(sink.addr(), &mut sink, 11, len),
    )
    .await;
    let mesh = two_peers(sink.addr()).await;
    let forward = mesh.forward_addr("b", "a/svc");
    let tunnelled = common::within(
        Duration::from_secs(600),
        "1 GiB through meshd",
        transfer(forward, &mut sink, 12, len),
    )
    .await;
    eprintln!(
        "1 GiB, one stream: direct {:.0} MiB/s, through meshd {:.0} MiB/s",
        mib_per_s(len, direct),
        mib_per_s(len, tunnelled)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streams_of_16_mib_sha256_equal() {
    let mut sink = SinkServer::start().await;
    let mesh = two_peers(sink.addr()).await;
    let forward = mesh.forward_addr("b", "a/svc");
    let len = 16 * MIB;
    let start = Instant::now();
    let senders: Vec<_> = (0..64u64)
        .map(|seed| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(forward).await.expect("connect");
                send_random(&mut s, 100 + seed, len).await.expect("send")
            })
        })
        .collect();
    let mut sent = common::within(Duration::from_secs(600), "64 senders", async {
        let mut sent = Vec::new();
        for sender in senders {
            sent.push(sender.await.expect("sender"));
        }
        sent
    })
    .await;
    let mut received = Vec::new();
    for _ in 0..64 {
        let got = sink.next_result(Duration::from_secs(300)).await;
        assert!(got.clean_eof, "a sink connection saw a reset");
        received.push(got.digest);
    }
    eprintln!(
        "64 x 16 MiB through meshd: {:.0} MiB/s in total",
        mib_per_s(64 * len, start.elapsed())
    );
    sent.sort();
    received.sort();
    assert_eq!(sent.len(), 64);
    assert_eq!(received, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_carries_the_reply() {
    let reply = ReplyServer::start(MIB as usize).await;
    let mesh = two_peers(reply.addr()).await;
    let forward = mesh.forward_addr("b", "a/svc");
    let request = XorShift::new(3).bytes(100 * 1024);
    let mut s = TcpStream::connect(forward).await.expect("connect");
    s.write_all(&request).await.expect("write request");
    s.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    common::within(
        Duration::from_secs(30),
        "the reply after half-close",
        s.read_to_end(&mut back),
    )
    .await
    .expect("read reply");
    assert_eq!(back.len(), reply.reply().len());
    assert!(back == reply.reply(), "reply bytes differ");
    assert_eq!(reply.received(), request.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_short_connections() {
    let echo = EchoServer::start().await;
    let mesh = two_peers(echo.addr()).await;
    let forward = mesh.forward_addr("b", "a/svc");
    let tasks: Vec<_> = (0..500u64)
        .map(|i| {
            tokio::spawn(async move {
                let payload = XorShift::new(i).bytes(16);
                common::client::echo_exact(forward, &payload, Duration::from_secs(30)).await
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if let Err(e) = task.await.expect("join") {
            failures.push((i, e.to_string()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 500 connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Echo through a two-peer mesh built by `builder` (a exports `svc`, b forwards to it).
async fn echo_with(builder: common::mesh::TestMeshBuilder, echo: &EchoServer) {
    let mut mesh = builder
        .service("a", "svc", echo.addr(), &["b"])
        .forward("b", "a/svc")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let payload = XorShift::new(5).bytes(64 * 1024);
    common::client::echo_exact(
        mesh.forward_addr("b", "a/svc"),
        &payload,
        Duration::from_secs(10),
    )
    .await
    .expect("echo through the forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_with_mesh_secret_forwards() {
    let echo = EchoServer::start().await;
    echo_with(TestMesh::builder().auth("noise").mesh_secret(), &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_mode_forwards() {
    let echo = EchoServer::start().await;
    echo_with(TestMesh::builder().auth("psk").mesh_secret(), &echo).await;
}

/// Credit keeps flowing when every write is small: 2 MiB in 500-byte writes (each sent on
/// its own, TCP_NODELAY), echoed back as they come, through the smallest stream window
/// (16 KiB, no growth). Each direction's credit is returned over a hundred times, from
/// local writes of a few hundred bytes each, and every byte comes back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_writes_far_beyond_the_window_keep_their_credit_flowing() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .mesh_toml("[limits]\nstream_window = 16384\nmax_stream_window = 16384\n")
        .service("a", "svc", echo.addr(), &["b"])
        .forward("b", "a/svc")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    let payload = XorShift::new(21).bytes(2 * MIB as usize);
    let s = TcpStream::connect(mesh.forward_addr("b", "a/svc"))
        .await
        .expect("connect through the forward");
    s.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(500) {
            wr.write_all(piece).await.expect("write a piece");
        }
        wr
    });
    let mut back = vec![0u8; payload.len()];
    common::within(
        Duration::from_secs(60),
        "2 MiB of small writes through a 16 KiB window",
        rd.read_exact(&mut back),
    )
    .await
    .expect("read the echo");
    let _wr = writer.await.expect("writer");
    assert!(back == payload, "the echo differs");
}
