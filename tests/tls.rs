//! `auth = "tls"` links: real streams (redis, a SHA-256-checked 256 MiB transfer), a mesh
//! mixing tls and noise pairs, every certificate refusal (each logged with its reason,
//! counted, and with no byte reaching the target), and certificate rotation by SIGHUP.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd::config::{AuthMode, PeerName};
use meshd::proto::frame::Frame;
use meshd::proto::handshake::Preamble;
use meshd::tls::certgen::{self, Issued, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::client::expect_rejected;
use common::data::{send_random, XorShift};
use common::mesh::TestMesh;
use common::redis::{RedisServer, Resp};
use common::rogue::{read_mux_record, tls13_client_config, tls_link_up, tls_preamble_sent};
use common::servers::{CountingServer, EchoServer, SinkServer};
use common::{metrics_text, sample};

const LINK_UP: Duration = Duration::from_secs(10);
const LOG: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;

fn sighup(mesh: &mut TestMesh, name: &str) {
    let pid = mesh
        .pid(name)
        .unwrap_or_else(|| panic!("{name} is not running"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {pid} failed");
}

fn days(from: i64, to: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now + time::Duration::days(from),
        not_after: now + time::Duration::days(to),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_256_mib_sha256_over_a_tls_link() {
    let redis = RedisServer::start();
    let mut sink = SinkServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "redis", redis.addr(), &["b"])
        .service("a", "sink", sink.addr(), &["b"])
        .forward("b", "a/redis")
        .forward("b", "a/sink")
        .build();
    mesh.start("a");
    mesh.start("b");
    let (a_cert, _) = mesh.cert_paths("a");
    let a_fp = fingerprint_of(&a_cert);
    // The dialer saw the acceptor's certificate, and says the link is tls.
    mesh.wait_for_log_line(
        "b",
        &[
            "link up",
            "peer=a",
            "auth=tls",
            &format!("peer_cert={a_fp}"),
        ],
        LINK_UP,
    )
    .await;

    let forward = mesh.forward_addr("b", "a/redis");
    let checked = tokio::task::spawn_blocking(move || {
        let mut r = Resp::connect(forward).expect("connect through forward");
        let mut rng = XorShift::new(7);
        let mut checked = 0;
        for batch in 0..20 {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
                .map(|i| (format!("k:{batch}:{i}").into_bytes(), rng.bytes(1 + i * 7)))
                .collect();
            r.set_many(&pairs).expect("SET through a tls link");
            let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
            for ((_, want), got) in pairs.iter().zip(r.get_many(&keys).expect("GET")) {
                assert_eq!(got.as_deref(), Some(want.as_slice()));
                checked += 1;
            }
        }
        checked
    })
    .await
    .expect("redis client");
    assert_eq!(checked, 2000);
    let mut direct = Resp::connect(redis.addr()).expect("connect direct");
    assert!(
        direct.get(b"k:19:99").expect("GET").is_some(),
        "values are in the real redis"
    );

    let forward = mesh.forward_addr("b", "a/sink");
    let len = 256 * MIB;
    let started = std::time::Instant::now();
    let sent = common::within(Duration::from_secs(300), "256 MiB over tls", async {
        let mut s = TcpStream::connect(forward).await.expect("connect");
        send_random(&mut s, 99, len).await.expect("send")
    })
    .await;
    let got = sink.next_result(Duration::from_secs(300)).await;
    assert!(got.clean_eof, "the sink saw a reset instead of an EOF");
    assert_eq!(got.digest, sent, "bytes differ after 256 MiB over tls");
    eprintln!(
        "256 MiB over a tls link: {:.0} MiB/s",
        len as f64 / MIB as f64 / started.elapsed().as_secs_f64()
    );
}

fn fingerprint_of(cert: &std::path::Path) -> String {
    let der = CertificateDer::pem_file_iter(cert)
        .expect("open cert")
        .next()
        .expect("one cert")
        .expect("pem");
    meshd::tls::fingerprint(&der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_pair_and_a_noise_pair_carry_streams_at_once() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("noise")
        .tls()
        .mesh_toml("[[pairs]]\npeers = [\"a\", \"b\"]\nauth = \"tls\"")
        .service("a", "echo", echo.addr(), &["b", "c"])
        .forward("b", "a/echo")
        .forward("c", "a/echo")
        .build();
    mesh.start_all();
    mesh.wait_for_log_line(
        "b",
        &["link up", "peer=a", "auth=tls", "peer_cert=sha256:"],
        LINK_UP,
    )
    .await;
    mesh.wait_for_log_line("c", &["link up", "peer=a", "auth=noise"], LINK_UP)
        .await;
    mesh.wait_for_log_line("a", &["link up", "peer=b", "auth=tls"], LINK_UP)
        .await;
    mesh.wait_for_log_line("a", &["link up", "peer=c", "auth=noise"], LINK_UP)
        .await;

    // /status says which link runs which mode.
    let status = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(mesh.admin_addr("a")).expect("admin");
        write!(
            s,
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let body = out.split("\r\n\r\n").nth(1).expect("body").to_owned();
        serde_json::from_str::<serde_json::Value>(&body).expect("status json")
    };
    let auth_of = |peer: &str| {
        status["links"]
            .as_array()
            .expect("links")
            .iter()
            .find(|l| l["peer"] == peer)
            .map(|l| l["auth"].clone())
    };
    assert_eq!(auth_of("b"), Some(serde_json::json!("tls")), "{status}");
    assert_eq!(auth_of("c"), Some(serde_json::json!("noise")), "{status}");

    // Both links carry 32 MiB each way at the same time, byte for byte.
    let run = |addr: SocketAddr, seed: u64| async move {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut wr) = s.into_split();
        let len = 32 * MIB as usize;
        let payload = XorShift::new(seed).bytes(len);
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&payload).await.expect("write");
            wr.shutdown().await.expect("shutdown");
        });
        let mut back = Vec::with_capacity(len);
        rd.read_to_end(&mut back).await.expect("read");
        writer.await.expect("writer");
        assert!(
            back == expected,
            "echo differs on the link from seed {seed}"
        );
    };
    common::within(Duration::from_secs(120), "two links at once", async {
        tokio::join!(
            run(mesh.forward_addr("b", "a/echo"), 1),
            run(mesh.forward_addr("c", "a/echo"), 2)
        )
    })
    .await;
}

/// A hand-made tls dialer: the preamble naming `claimed`, then a TLS 1.3 client handshake
/// presenting `cert`, then (if the client side finished) one mux record opening `service`
/// with `probe` as its first data. Returns whether the client-side handshake finished.
async fn raw_tls_dial(
    addr: SocketAddr,
    claimed: &str,
    server: &str,
    cert: &Issued,
    trusted_ca_pem: &str,
    service: &str,
    probe: &[u8],
) -> bool {
    let config = tls13_client_config(trusted_ca_pem, cert);
    let tcp = tls_preamble_sent(addr, claimed).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server.to_owned()).expect("server name");
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let mut record = vec![0, 0];
    Frame::Open { stream: 1, service }.encode(&mut record);
    Frame::Data {
        stream: 1,
        data: probe,
    }
    .encode(&mut record);
    let len = (record.len() - 2) as u16;
    record[..2].copy_from_slice(&len.to_be_bytes());
    let _ = tls.write_all(&record).await;
    let _ = tls.flush().await;
    // The acceptor must end the connection: an alert, a close, or a reset; never data.
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Err(_) => panic!("the acceptor kept a refused tls connection open"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the acceptor sent {n} bytes of stream data on a refused link"),
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_refusals_are_logged_counted_and_reach_nothing() {
    let target = CountingServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "svc", target.addr(), &["b"])
        .peer("b")
        .peer("c")
        .build();
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LINK_UP).await;
    let addr = mesh.mesh_addr("a");
    let ca = mesh.ca();
    let (ca_cert, ca_key) = (ca.cert_pem.clone(), ca.key_pem.to_string());
    let valid = Validity::days_from_now(2);
    let foreign_ca = certgen::new_ca("foreign CA", valid).expect("foreign ca");
    // Another CA under the mesh CA's very name: webpki picks the issuer by name, finds
    // ours, and the signature does not verify.
    let mesh_ca_name = {
        let der = CertificateDer::from_pem_slice(ca_cert.as_bytes()).expect("ca pem");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("ca der");
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .expect("mesh CA common name")
            .to_owned();
        name
    };
    let twin_ca = certgen::new_ca(&mesh_ca_name, valid).expect("twin ca");
    use certgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};

    let cases: Vec<(&str, &str, Issued)> = vec![
        (
            "cert_expired",
            "b",
            certgen::issue(&ca_cert, &ca_key, "b", days(-10, -1)).expect("expired"),
        ),
        (
            "cert_not_yet_valid",
            "b",
            certgen::issue(&ca_cert, &ca_key, "b", days(1, 10)).expect("future"),
        ),
        (
            "cert_unknown_issuer",
            "b",
            certgen::issue(&foreign_ca.cert_pem, &foreign_ca.key_pem, "b", valid).expect("foreign"),
        ),
        (
            "cert_unknown_issuer",
            "b",
            certgen::self_signed("b", valid).expect("self-signed"),
        ),
        (
            "cert_unknown_issuer",
            "b",
            certgen::issue(&twin_ca.cert_pem, &twin_ca.key_pem, "b", valid).expect("twin"),
        ),
        (
            // Of the mesh CA, for b, but made for key encipherment only.
            "cert_wrong_usage",
            "b",
            certgen::issue_with_usages(
                &ca_cert,
                &ca_key,
                "b",
                valid,
                &[Ku::KeyEncipherment],
                &[Eku::ServerAuth, Eku::ClientAuth],
            )
            .expect("no digitalSignature"),
        ),
        (
            // Of the mesh CA, for b, but a server-only certificate.
            "cert_wrong_usage",
            "b",
            certgen::issue_with_usages(
                &ca_cert,
                &ca_key,
                "b",
                valid,
                &[Ku::DigitalSignature],
                &[Eku::ServerAuth],
            )
            .expect("no clientAuth"),
        ),
        (
            // Valid under the CA, but for another peer than the one claimed.
            "cert_wrong_name",
            "b",
            certgen::issue(&ca_cert, &ca_key, "c", valid).expect("wrong san"),
        ),
        (
            // Valid under the CA, for a name the manifest does not have.
            "unknown_peer",
            "ghost",
            certgen::issue(&ca_cert, &ca_key, "ghost", valid).expect("ghost"),
        ),
    ];
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (reason, claimed, cert) in &cases {
        let before = sample(
            &metrics_text(mesh.admin_addr("a")),
            &format!("meshd_handshake_failures_total{{reason=\"{reason}\"}}"),
        );
        *expected.entry(reason).or_insert(before) += 1.0;
        raw_tls_dial(
            addr,
            claimed,
            "a",
            cert,
            &ca_cert,
            "svc",
            b"GET / HTTP/1.0\r\n\r\n",
        )
        .await;
        mesh.wait_for_log_line(
            "a",
            &["handshake rejected", &format!("reason=\"{reason}\"")],
            LOG,
        )
        .await;
        let want = expected[reason];
        common::wait_until_async(LOG, &format!("{reason} counted"), || async {
            sample(
                &metrics_text(mesh.admin_addr("a")),
                &format!("meshd_handshake_failures_total{{reason=\"{reason}\"}}"),
            ) >= want
        })
        .await;
    }
    // The log line says why in words, not only as a label.
    let line = mesh
        .find_log_line("a", &["handshake rejected", "cert_wrong_name"])
        .expect("wrong-name line");
    assert!(line.contains("does not name b"), "{line}");
    for words in [
        "lacks digitalSignature key usage",
        "lacks clientAuth extended key usage",
        "not issued by the mesh CA (signature does not verify under it",
    ] {
        assert!(
            mesh.find_log_line("a", &["handshake rejected", words])
                .is_some(),
            "no rejection saying {words:?}:\n{}",
            mesh.current_log("a")
        );
    }
    // A correct certificate still gets in afterwards (the listener is healthy), yet the
    // target saw nothing from any refused attempt.
    assert_eq!(
        (target.connections(), target.bytes()),
        (0, 0),
        "a refused link reached the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_off_the_allow_list_is_refused_over_tls() {
    let target = CountingServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "svc", target.addr(), &["b"])
        .forward("b", "a/svc")
        .peer("c")
        // b's copy says a allows b; a's own copy allows only c.
        .manifest_override("a", |m| {
            m.peer_mut("a").services.get_mut("svc").expect("svc").allow = vec!["c".into()];
            m.peer_mut("b").forwards.clear();
        })
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    expect_rejected(
        mesh.forward_addr("b", "a/svc"),
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(15),
        "stream to a service b is not allowed to open",
    )
    .await;
    mesh.wait_for_log_line("a", &["open refused", "reason=\"acl\""], LOG)
        .await;
    let m = metrics_text(mesh.admin_addr("a"));
    assert_eq!(
        sample(
            &m,
            "meshd_streams_total{peer=\"b\",service=\"svc\",result=\"refused\"}"
        ),
        1.0,
        "the refused open is counted:\n{m}"
    );
    assert_eq!((target.connections(), target.bytes()), (0, 0));
}

/// The dialer checks the acceptor's certificate too: an acceptor whose certificate (valid
/// under the CA) names another peer is refused before any stream is offered to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_refuses_an_acceptor_certificate_for_another_name() {
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "svc", "127.0.0.1:9".parse().expect("addr"), &["b"])
        .forward("b", "a/svc")
        .peer("c")
        .build();
    // A stand-in for "a" on a's endpoint, presenting c's certificate.
    let ca = mesh.ca();
    let impostor =
        certgen::issue(&ca.cert_pem, &ca.key_pem, "c", Validity::days_from_now(1)).expect("cert");
    let config = rustls::ServerConfig::builder_with_provider(meshd::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(impostor.der.clone())],
            PrivateKeyDer::from_pem_slice(impostor.key_pem.as_bytes()).expect("key"),
        )
        .expect("server config");
    let listener = TcpListener::bind(mesh.mesh_addr("a"))
        .await
        .expect("bind a's endpoint");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let got = received.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut pre = [0u8; meshd::proto::handshake::PREAMBLE_LEN];
            if tcp.read_exact(&mut pre).await.is_err() {
                continue;
            }
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    got.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    mesh.start("b");
    mesh.wait_for_log_line(
        "b",
        &["link dial failed", "reason=\"cert_wrong_name\""],
        LOG,
    )
    .await;
    let m = metrics_text(mesh.admin_addr("b"));
    assert!(
        sample(
            &m,
            "meshd_link_failures_total{peer=\"a\",reason=\"cert_wrong_name\"}"
        ) >= 1.0,
        "dial failure not counted:\n{m}"
    );
    assert!(
        mesh.find_log_line("b", &["link up"]).is_none(),
        "b brought the link up"
    );
    server.abort();
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "b sent data to an impostor"
    );
}

/// Echoes `line` on a held connection and checks it.
async fn echo_line(s: &mut TcpStream, line: &[u8]) {
    s.write_all(line).await.expect("write on the open stream");
    let mut back = vec![0u8; line.len()];
    common::within(
        Duration::from_secs(10),
        "echo on the open stream",
        s.read_exact(&mut back),
    )
    .await
    .expect("read on the open stream");
    assert_eq!(back, line, "the open stream corrupted a line");
}

/// A tls mesh where b forwards to a's echo service, both running and the link up; returns
/// it with b's certificate file and that certificate's fingerprint.
async fn tls_echo_link_up(echo: &EchoServer) -> (TestMesh, std::path::PathBuf, String) {
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start("a");
    mesh.start("b");
    let (b_cert, _) = mesh.cert_paths("b");
    let old_fp = fingerprint_of(&b_cert);
    mesh.wait_for_log_line(
        "a",
        &["link up", "peer=b", &format!("peer_cert={old_fp}")],
        LINK_UP,
    )
    .await;
    (mesh, b_cert, old_fp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_by_sighup_keeps_open_streams_and_reaches_the_next_link() {
    let echo = EchoServer::start().await;
    let (mut mesh, b_cert, old_fp) = tls_echo_link_up(&echo).await;

    let mut open = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect");
    let mut rng = XorShift::new(5);
    for _ in 0..10 {
        echo_line(&mut open, &rng.bytes(64 * 1024)).await;
    }

    // A bad certificate file first: the reload is refused, logged and counted, and the
    // daemon keeps the material it has.
    std::fs::write(&b_cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("break cert");
    sighup(&mut mesh, "b");
    mesh.wait_for_log_line("b", &["reload failed", "cert"], LOG)
        .await;
    let m = metrics_text(mesh.admin_addr("b"));
    assert_eq!(
        sample(&m, "meshd_config_reloads_total{result=\"failure\"}"),
        1.0,
        "{m}"
    );
    echo_line(&mut open, b"still fine after a refused reload\n").await;

    // Now a good new certificate.
    let new_fp = mesh.issue_cert("b", Validity::days_from_now(3));
    assert_ne!(new_fp, old_fp);
    sighup(&mut mesh, "b");
    mesh.wait_for_log_line("b", &["tls material reloaded", &new_fp], LOG)
        .await;
    for _ in 0..10 {
        echo_line(&mut open, &rng.bytes(64 * 1024)).await;
    }
    open.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest)
        .await
        .expect("clean end of the open stream");
    assert!(rest.is_empty());
    // The stream ran on the link made with the old certificate; no link was made since.
    assert!(mesh
        .find_log_line("a", &["link up", "peer=b", &new_fp])
        .is_none());

    // The next link (the acceptor restarts) is authenticated with the new certificate.
    mesh.restart("a").await;
    mesh.wait_for_log_line(
        "a",
        &["link up", "peer=b", &format!("peer_cert={new_fp}")],
        LINK_UP,
    )
    .await;
    common::client::echo_exact(
        mesh.forward_addr("b", "a/echo"),
        b"over the new link\n",
        Duration::from_secs(10),
    )
    .await
    .expect("echo over the link made with the new certificate");
}

/// The `setup_us` field of the dialer's `link up` line.
fn setup_us(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("setup_us="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no setup_us in {line:?}"))
}

/// 1 GiB over a tls link and over a noise link of the same mesh, one after the other,
/// each SHA-256 checked; prints both rates and link setup times (for the comparison in
/// the README and the issue notes, not asserted: timings on a shared machine are noise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_over_tls_and_over_noise_sha256_equal() {
    let mut sink = SinkServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("noise")
        .tls()
        .mesh_toml("[[pairs]]\npeers = [\"a\", \"b\"]\nauth = \"tls\"")
        .service("a", "sink", sink.addr(), &["b", "c"])
        .forward("b", "a/sink")
        .forward("c", "a/sink")
        .build();
    mesh.start_all();
    let tls_line = mesh
        .wait_for_log_line("b", &["link up", "peer=a", "auth=tls"], LINK_UP)
        .await;
    let noise_line = mesh
        .wait_for_log_line("c", &["link up", "peer=a", "auth=noise"], LINK_UP)
        .await;
    let len = 1024 * MIB;
    let mut rates = Vec::new();
    for (from, seed) in [("b", 21), ("c", 22)] {
        let forward = mesh.forward_addr(from, "a/sink");
        let started = std::time::Instant::now();
        let sent = common::within(Duration::from_secs(300), "1 GiB", async {
            let mut s = TcpStream::connect(forward).await.expect("connect");
            send_random(&mut s, seed, len).await.expect("send")
        })
        .await;
        let got = sink.next_result(Duration::from_secs(300)).await;
        let secs = started.elapsed().as_secs_f64();
        assert!(got.clean_eof, "the sink saw a reset instead of an EOF");
        assert_eq!(got.digest, sent, "bytes differ after 1 GiB from {from}");
        rates.push(len as f64 / MIB as f64 / secs);
    }
    eprintln!(
        "1 GiB one stream: tls {:.0} MiB/s, noise {:.0} MiB/s; link setup: tls {} us, noise {} us",
        rates[0],
        rates[1],
        setup_us(&tls_line),
        setup_us(&noise_line)
    );
}

/// Garbage where a ClientHello should be, and a dialer that stalls mid-handshake, are
/// refused with their reasons and counted; the listener keeps serving a real peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalls_after_a_tls_preamble_are_refused_and_the_link_still_comes_up() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .mesh_toml("[limits]\nhandshake_timeout_ms = 1000")
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LINK_UP).await;
    let addr = mesh.mesh_addr("a");
    let preamble = Preamble {
        mode: AuthMode::Tls,
        name: PeerName::new("b").expect("name"),
    }
    .encode();

    // A preamble, then 4 KiB that is not TLS.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&preamble).await.expect("preamble");
    let _ = s.write_all(&XorShift::new(3).bytes(4096)).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a TLS alert may come first
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the acceptor kept a garbage connection open"
    );
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"tls\""], LOG)
        .await;

    // A preamble and then silence: cut at the handshake deadline.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled.write_all(&preamble).await.expect("preamble");
    mesh.wait_for_log_line("a", &["handshake rejected", "reason=\"timeout\""], LOG)
        .await;
    let m = metrics_text(mesh.admin_addr("a"));
    assert!(
        sample(&m, "meshd_handshake_failures_total{reason=\"tls\"}") >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "meshd_handshake_failures_total{reason=\"timeout\"}") >= 1.0,
        "{m}"
    );

    // The real peer still gets in and carries a stream.
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    common::client::echo_exact(
        mesh.forward_addr("b", "a/echo"),
        b"after the garbage\n",
        Duration::from_secs(10),
    )
    .await
    .expect("echo over tls after refused garbage");
}

/// A dialer whose certificate the acceptor refuses (b's certificate comes from a second CA
/// that b trusts but a does not yet, as mid-way through a CA rotation) fails to dial: it
/// never logs `link up`, counts each attempt as `cert_refused_by_peer`, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_whose_certificate_is_refused_never_reports_link_up() {
    let target = CountingServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "svc", target.addr(), &["b"])
        .forward("b", "a/svc")
        .build();
    let second = certgen::new_ca("meshd test CA 2", Validity::days_from_now(2)).expect("ca 2");
    let b_cert = certgen::issue(
        &second.cert_pem,
        &second.key_pem,
        "b",
        Validity::days_from_now(2),
    )
    .expect("b cert under ca 2");
    mesh.write_cert("b", &b_cert);
    // b trusts both CAs, so it accepts a's certificate; a trusts only the first.
    let both = mesh.dir().join("b/ca-both.crt");
    std::fs::write(&both, format!("{}{}", mesh.ca().cert_pem, second.cert_pem))
        .expect("write both CAs");
    let config = mesh.host_config_path("b");
    let text = std::fs::read_to_string(&config).expect("read b's config");
    let ca_line = format!("ca = \"{}\"", mesh.ca_path().display());
    assert!(text.contains(&ca_line), "{text}");
    std::fs::write(
        &config,
        text.replace(&ca_line, &format!("ca = \"{}\"", both.display())),
    )
    .expect("point b at both CAs");

    mesh.start("a");
    mesh.start("b");
    mesh.wait_for_log_line(
        "a",
        &["handshake rejected", "reason=\"cert_unknown_issuer\""],
        LOG,
    )
    .await;
    let line = mesh
        .wait_for_log_line(
            "b",
            &["link dial failed", "reason=\"cert_refused_by_peer\""],
            LOG,
        )
        .await;
    assert!(
        line.contains("refused this host's certificate") && line.contains("UnknownCA"),
        "{line}"
    );
    // Redialed and refused again: still never up.
    common::wait_until_async(LOG, "a second refused dial counted", || async {
        sample(
            &metrics_text(mesh.admin_addr("b")),
            "meshd_link_failures_total{peer=\"a\",reason=\"cert_refused_by_peer\"}",
        ) >= 2.0
    })
    .await;
    let m = metrics_text(mesh.admin_addr("b"));
    assert_eq!(
        sample(
            &m,
            "meshd_link_failures_total{peer=\"a\",reason=\"tls_alert\"}"
        ),
        0.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "meshd_link_established_total{peer=\"a\"}"),
        0.0,
        "{m}"
    );
    assert!(
        mesh.find_log_line("b", &["link up"]).is_none(),
        "b logged link up with a refused certificate:\n{}",
        mesh.current_log("b")
    );
    assert_eq!((target.connections(), target.bytes()), (0, 0));
}

/// A client offering only TLS 1.2 (with a certificate of the mesh CA for a real peer) is
/// refused by the acceptor, logged and counted as `tls_incompatible`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_client_is_refused() {
    let target = CountingServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "svc", target.addr(), &["b"])
        .peer("b")
        .build();
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LINK_UP).await;
    let ca = mesh.ca();
    let b =
        certgen::issue(&ca.cert_pem, &ca.key_pem, "b", Validity::days_from_now(1)).expect("b cert");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("tls12")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from(b.der.clone())],
        PrivateKeyDer::from_pem_slice(b.key_pem.as_bytes()).expect("key"),
    )
    .expect("client config");
    let tcp = tls_preamble_sent(mesh.mesh_addr("a"), "b").await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("a".to_owned()).expect("name");
    let result = common::within(
        Duration::from_secs(10),
        "the TLS 1.2 handshake ends",
        connector.connect(name, tcp),
    )
    .await;
    assert!(result.is_err(), "a TLS 1.2 handshake succeeded");
    let line = mesh
        .wait_for_log_line(
            "a",
            &["handshake rejected", "reason=\"tls_incompatible\""],
            LOG,
        )
        .await;
    assert!(line.contains("TLS 1.3"), "{line}");
    common::wait_until_async(LOG, "tls_incompatible counted", || async {
        sample(
            &metrics_text(mesh.admin_addr("a")),
            "meshd_handshake_failures_total{reason=\"tls_incompatible\"}",
        ) == 1.0
    })
    .await;
    assert_eq!((target.connections(), target.bytes()), (0, 0));
}

/// SIGHUP with the certificate file gone: the reload fails (logged with the file and
/// counted), and the old material keeps serving, for new links too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_certificate_file_fails_the_reload_and_the_old_one_keeps_serving() {
    let echo = EchoServer::start().await;
    let (mut mesh, b_cert, old_fp) = tls_echo_link_up(&echo).await;

    std::fs::remove_file(&b_cert).expect("remove b's certificate");
    sighup(&mut mesh, "b");
    let line = mesh
        .wait_for_log_line("b", &["reload failed", "cert"], LOG)
        .await;
    assert!(
        line.contains(&b_cert.display().to_string()),
        "the error names the file: {line}"
    );
    common::wait_until_async(LOG, "the failed reload counted", || async {
        sample(
            &metrics_text(mesh.admin_addr("b")),
            "meshd_config_reloads_total{result=\"failure\"}",
        ) == 1.0
    })
    .await;
    assert!(
        mesh.find_log_line("b", &["tls material reloaded"])
            .is_none(),
        "{}",
        mesh.current_log("b")
    );

    // A new link (the acceptor restarts) still comes up, with the old certificate.
    mesh.restart("a").await;
    mesh.wait_for_log_line(
        "a",
        &["link up", "peer=b", &format!("peer_cert={old_fp}")],
        LINK_UP,
    )
    .await;
    common::client::echo_exact(
        mesh.forward_addr("b", "a/echo"),
        b"on the old certificate\n",
        Duration::from_secs(10),
    )
    .await
    .expect("echo over a link made after the failed reload");
}

/// A wrong pinned `ca_fingerprint` stops `meshd --config` with exit 64 before it binds any
/// port (its mesh and admin ports are held here: a bind attempt would exit 1), with an
/// error naming the host file, line and field, and where the pin is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_ca_exits_64_before_binding_and_names_file_line_and_field() {
    let pin = format!("sha256:{}", "0f".repeat(32));
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .mesh_toml(&format!("ca_fingerprint = \"{pin}\""))
        .peer("a")
        .peer("b")
        .build();
    let mesh_toml = std::fs::read_to_string(mesh.manifest_dir().join("mesh.toml")).expect("read");
    let pin_line = mesh_toml
        .lines()
        .position(|l| l.starts_with("ca_fingerprint"))
        .expect("pin written")
        + 1;
    let config = mesh.host_config_path("a");
    let ca_line = std::fs::read_to_string(&config)
        .expect("read host config")
        .lines()
        .position(|l| l.starts_with("ca = "))
        .expect("ca line")
        + 1;
    let _mesh_port = std::net::TcpListener::bind(mesh.mesh_addr("a")).expect("hold mesh port");
    let _admin_port = std::net::TcpListener::bind(mesh.admin_addr("a")).expect("hold admin port");

    let (status, out) = mesh.run_to_exit("a", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(64), "{out}");
    let want = format!("{}:{ca_line}: ca: ", config.display());
    let line = out
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no line with {want:?} in:\n{out}"));
    assert!(line.contains("does not pin"), "{line}");
    assert!(
        line.contains(&format!("mesh.toml:{pin_line}: ca_fingerprint")),
        "{line}"
    );
    assert!(line.contains(&pin), "{line}");
    assert!(!out.contains("cannot listen"), "{out}");
}

/// A reload that adds a forward (so a new dialer) and a new certificate at once: the new
/// link is made with the new certificate, never the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_dialled_by_a_reload_uses_that_reloads_certificate() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    let full = mesh.spec().clone();
    let mut without = full.clone();
    without.peer_mut("b").forwards.clear();
    without.write(&mesh.manifest_dir());
    let (b_cert, _) = mesh.cert_paths("b");
    let old_fp = fingerprint_of(&b_cert);
    mesh.start("a");
    mesh.start("b");
    mesh.wait_for_log("b", "meshd ready", LINK_UP).await;

    let new_fp = mesh.issue_cert("b", Validity::days_from_now(3));
    full.write(&mesh.manifest_dir());
    // Through the admin server: a request waits for the daemon's loop, where a SIGHUP
    // this early could arrive before the handler is installed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["reload", "--admin", &mesh.admin_addr("b").to_string()])
        .output()
        .expect("run meshctl reload");
    assert!(out.status.success(), "{out:?}");
    mesh.wait_for_log_line(
        "a",
        &["link up", "peer=b", &format!("peer_cert={new_fp}")],
        LINK_UP,
    )
    .await;
    assert!(
        mesh.find_log_line("a", &["link up", &old_fp]).is_none(),
        "a link was made with the old certificate:\n{}",
        mesh.current_log("a")
    );
    common::client::echo_exact(
        mesh.forward_addr("b", "a/echo"),
        b"over the reloaded link\n",
        Duration::from_secs(10),
    )
    .await
    .expect("echo over the link dialled by the reload");
}

/// A plain rustls dialer (rustls's buffered API and record layer, mux records as the byte
/// stream `u16 length ‖ frames`) against a meshd acceptor: the link runs standard records,
/// which rustls reads (it refuses any record over 2^14 + 256 bytes), and a stream echoes
/// 200 KiB byte for byte, beside a meshd pair's link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rustls_dialer_gets_standard_records_and_a_byte_exact_stream() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .service("a", "echo", echo.addr(), &["b", "c"])
        .forward("b", "a/echo")
        .peer("c")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("a", "b", LINK_UP).await;
    mesh.wait_link_up("b", "a", LINK_UP).await;

    // c: a certificate of the mesh CA, no ALPN.
    let ca = mesh.ca();
    let c_cert = certgen::issue(&ca.cert_pem, &ca.key_pem, "c", Validity::days_from_now(2))
        .expect("issue c");
    assert!(tls13_client_config(&ca.cert_pem, &c_cert)
        .alpn_protocols
        .is_empty());
    let tcp = tls_preamble_sent(mesh.mesh_addr("a"), "c").await;
    // The handshake, then the acceptor's confirmation (a PING), as a meshd dialer waits.
    let mut tls = tls_link_up(tcp, "a", &ca.cert_pem, &c_cert).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);

    // Under one stream window each way, so no WINDOW frame is needed.
    let sent = XorShift::new(11).bytes(200 * 1024);
    let mut first = true;
    for piece in sent.chunks(16_000) {
        let mut record = vec![0, 0];
        if first {
            // Wire version 2: a link's first frame announces the sender's stream window;
            // without it the acceptor could send only INITIAL_CREDIT back.
            Frame::Settings { window: 256 * 1024 }.encode(&mut record);
            Frame::Open {
                stream: 1,
                service: "echo",
            }
            .encode(&mut record);
            first = false;
        }
        Frame::Data {
            stream: 1,
            data: piece,
        }
        .encode(&mut record);
        let len = (record.len() - 2) as u16;
        record[..2].copy_from_slice(&len.to_be_bytes());
        tls.write_all(&record)
            .await
            .expect("send through the older dialer");
    }
    tls.flush().await.expect("flush");

    let mut back = Vec::new();
    common::within(
        Duration::from_secs(20),
        "the echo to the older dialer",
        async {
            while back.len() < sent.len() {
                let read = read_mux_record(&mut tls, |frame| match frame {
                    Frame::Data { stream: 1, data } => back.extend_from_slice(data),
                    Frame::OpenOk { stream: 1 }
                    | Frame::Ping { .. }
                    | Frame::Window { .. }
                    | Frame::Settings { .. } => {}
                    other => panic!("unexpected frame to the older dialer: {other:?}"),
                })
                .await;
                if let Err(e) = read {
                    panic!(
                        "reading the older dialer's link: {e}; a's log:\n{}",
                        mesh.log("a")
                    );
                }
            }
        },
    )
    .await;
    assert!(back == sent, "the echo differs ({} bytes back)", back.len());
    mesh.wait_for_log_line("a", &["link up", "peer=c"], LOG)
        .await;
}
