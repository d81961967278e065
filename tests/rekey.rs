//! Links change their keys while they carry streams, in every auth mode, through real
//! `meshd` processes (b's forward → link → a's service, b dials):
//!
//! - a 1 GiB stream, SHA-256 checked, and an idle stream both survive the re-keys a small
//!   byte budget (64 MiB) and a short interval (1 s) force, on one link that never flaps,
//!   and `meshd_link_rekeys_total` counts them on both ends;
//! - a peer that stops answering (SIGSTOP) is cut once a re-key it is part of is overdue,
//!   with the reason `rekey_timeout`;
//! - a plain rustls client (its own record layer, no meshd code on the wire) speaking the
//!   preamble as peer b interoperates with a meshd tls acceptor across both sides' key
//!   updates, and is sent close_notify when the acceptor drains.

mod common;

use std::time::{Duration, Instant};

use meshd::proto::frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::data::send_random;
use common::mesh::{TestMesh, TestMeshBuilder};
use common::rogue;
use common::servers::{EchoServer, SinkServer};
use common::{metrics_text, sample, within};

const LINK_UP: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;
const BULK: u64 = 1024 * MIB;
const BUDGET: u64 = 64 * MIB;

fn builder(auth: &str) -> TestMeshBuilder {
    let builder = TestMesh::builder().auth(auth);
    match auth {
        "psk" => builder.mesh_secret(),
        "tls" => builder.tls(),
        _ => builder,
    }
}

/// `name`'s count of key changes on its link to `peer`.
fn rekeys(mesh: &TestMesh, name: &str, peer: &str) -> f64 {
    sample(
        &metrics_text(mesh.admin_addr(name)),
        &format!("meshd_link_rekeys_total{{peer=\"{peer}\"}}"),
    )
}

fn established(mesh: &TestMesh, name: &str, peer: &str) -> f64 {
    sample(
        &metrics_text(mesh.admin_addr(name)),
        &format!("meshd_link_established_total{{peer=\"{peer}\"}}"),
    )
}

/// A plain rustls client linked to a as peer b, with a certificate of the mesh CA for b:
/// the client is b as far as a can tell.
async fn rustls_peer_b(mesh: &TestMesh) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let ca = mesh.ca();
    let cert = meshd::tls::certgen::issue(
        &ca.cert_pem,
        &ca.key_pem,
        "b",
        meshd::tls::certgen::Validity::days_from_now(2),
    )
    .expect("issue b");
    let tcp = rogue::tls_preamble_sent(mesh.mesh_addr("a"), "b").await;
    rogue::tls_link_up(tcp, "a", &ca.cert_pem, &cert).await
}

/// Polls until `f` holds, for at most `timeout`.
async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One line through the idle stream, echoed back whole.
async fn echo_line(s: &mut TcpStream, line: &[u8]) {
    s.write_all(line).await.expect("write to the idle stream");
    let mut got = vec![0u8; line.len()];
    within(
        Duration::from_secs(5),
        "the idle stream's echo",
        s.read_exact(&mut got),
    )
    .await
    .expect("the idle stream still echoes");
    assert_eq!(got, line);
}

async fn streams_survive_rekeys(auth: &str) {
    let echo = EchoServer::start().await;
    let mut sink = SinkServer::start().await;
    let mut mesh = builder(auth)
        .mesh_toml(&format!(
            "[limits]\nrekey_bytes = {BUDGET}\nrekey_interval_ms = 1000\nrekey_timeout_ms = 5000\n"
        ))
        .service("a", "echo", echo.addr(), &["b"])
        .service("a", "sink", sink.addr(), &["b"])
        .forward("b", "a/echo")
        .forward("b", "a/sink")
        .build();
    mesh.start_all();
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh.wait_link_up("a", "b", LINK_UP).await;

    let mut idle = TcpStream::connect(mesh.forward_addr("b", "a/echo"))
        .await
        .expect("connect the idle stream");
    echo_line(&mut idle, b"before the re-keys\n").await;
    let before = rekeys(&mesh, "b", "a");

    let started = Instant::now();
    let mut bulk = TcpStream::connect(mesh.forward_addr("b", "a/sink"))
        .await
        .expect("connect the bulk stream");
    let sent = within(
        Duration::from_secs(120),
        "1 GiB through the forward",
        send_random(&mut bulk, 0x5EED, BULK),
    )
    .await
    .expect("upload");
    let got = sink.next_result(Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    assert!(got.clean_eof, "{auth}: the sink saw no clean end");
    assert_eq!(got.digest, sent, "{auth}: the 1 GiB stream arrived changed");

    // Bytes alone force one re-key per 64 MiB in the busier direction.
    let by_bytes = (BULK / BUDGET) as f64 / 2.0;
    eventually(Duration::from_secs(10), "re-keys counted on b", || {
        rekeys(&mesh, "b", "a") - before >= by_bytes
    })
    .await;
    // Time forces more while the idle stream waits: at least five past the bulk ones.
    let after_bulk = rekeys(&mesh, "b", "a");
    eventually(Duration::from_secs(15), "five re-keys by time", || {
        rekeys(&mesh, "b", "a") - after_bulk >= 5.0
    })
    .await;
    echo_line(&mut idle, b"after the re-keys\n").await;
    let (on_b, on_a) = (rekeys(&mesh, "b", "a"), rekeys(&mesh, "a", "b"));
    assert!(on_a >= on_b - 1.0, "{auth}: a counted {on_a}, b {on_b}");
    assert_eq!(
        established(&mesh, "b", "a"),
        1.0,
        "{auth}: the link flapped"
    );
    assert_eq!(
        established(&mesh, "a", "b"),
        1.0,
        "{auth}: the link flapped"
    );
    eprintln!(
        "{auth}: 1 GiB in {:.2} s, SHA-256 equal; re-keys on b {} ({} during the bulk stream), on a {}",
        elapsed.as_secs_f64(),
        on_b,
        after_bulk - before,
        on_a
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_streams_survive_rekeys() {
    streams_survive_rekeys("noise").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_streams_survive_rekeys() {
    streams_survive_rekeys("psk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_survive_rekeys() {
    streams_survive_rekeys("tls").await;
}

/// b re-keys every second and gives its peer 500 ms; a is stopped. Pings alone would take
/// 3 × 5 s to call a dead: the cut must come from the re-key, within interval + timeout
/// and a little scheduling.
async fn a_peer_that_never_finishes_a_rekey_is_cut(auth: &str) {
    let echo = EchoServer::start().await;
    let mut mesh = builder(auth)
        .mesh_toml(
            "[limits]\nrekey_interval_ms = 1000\nrekey_timeout_ms = 500\nping_interval_ms = 5000\n",
        )
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start_all();
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh.signal("a", "STOP");
    let stopped = Instant::now();
    let reason = "meshd_link_failures_total{peer=\"a\",reason=\"rekey_timeout\"}";
    eventually(Duration::from_secs(8), "b cuts the stopped peer", || {
        sample(&metrics_text(mesh.admin_addr("b")), reason) >= 1.0
    })
    .await;
    let cut_after = stopped.elapsed();
    mesh.signal("a", "CONT");
    assert!(
        cut_after < Duration::from_secs(4),
        "{auth}: cut only after {cut_after:?}"
    );
    eprintln!("{auth}: a stopped peer was cut after {cut_after:?} (interval 1 s + timeout 0.5 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_cuts_a_peer_that_never_finishes_a_rekey() {
    a_peer_that_never_finishes_a_rekey_is_cut("noise").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_cuts_a_peer_that_never_finishes_a_rekey() {
    a_peer_that_never_finishes_a_rekey_is_cut("psk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cuts_a_peer_that_never_finishes_a_rekey() {
    a_peer_that_never_finishes_a_rekey_is_cut("tls").await;
}

/// A rustls client with its own record layer, as peer b, through a meshd tls acceptor to an
/// echo service: it echoes lines for a few seconds while meshd asks for a KeyUpdate every
/// second and the client sends its own every 700 ms; then a drains and the client reads
/// close_notify (a clean end, not an EOF without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_rustls_peer_follows_and_makes_key_updates_and_gets_close_notify() {
    let echo = EchoServer::start().await;
    let mut mesh = builder("tls")
        .mesh_toml("[limits]\nrekey_interval_ms = 1000\nrekey_timeout_ms = 3000\n")
        .service("a", "echo", echo.addr(), &["b"])
        .peer("b")
        .drain_grace("a", 5000)
        .build();
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LINK_UP).await;
    let mut tls = rustls_peer_b(&mesh).await;
    rogue::write_frames(
        &mut tls,
        &[
            Frame::Settings { window: 262_144 },
            Frame::Open {
                stream: 1,
                service: "echo",
            },
        ],
    )
    .await
    .expect("open");

    let started = Instant::now();
    let mut last_update = Instant::now();
    let mut lines = 0u32;
    let mut client_updates = 0u32;
    while started.elapsed() < Duration::from_secs(5) {
        if last_update.elapsed() >= Duration::from_millis(700) {
            tls.get_mut()
                .1
                .refresh_traffic_keys()
                .expect("client key update");
            client_updates += 1;
            last_update = Instant::now();
        }
        let line = format!("line {lines}\n");
        rogue::write_frames(
            &mut tls,
            &[Frame::Data {
                stream: 1,
                data: line.as_bytes(),
            }],
        )
        .await
        .expect("write a line");
        let mut echoed = Vec::new();
        while echoed.len() < line.len() {
            let mut pongs = Vec::new();
            within(
                Duration::from_secs(5),
                "a record from the acceptor",
                rogue::read_mux_record(&mut tls, |f| match f {
                    Frame::Data { stream: 1, data } => echoed.extend_from_slice(data),
                    Frame::Ping { nonce } => pongs.push(nonce),
                    _ => {}
                }),
            )
            .await
            .expect("read a record (across key updates)");
            for nonce in pongs {
                rogue::write_frames(&mut tls, &[Frame::Pong { nonce }])
                    .await
                    .expect("pong");
            }
        }
        assert_eq!(echoed, line.as_bytes());
        lines += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counted = rekeys(&mesh, "a", "b");
    assert!(
        counted >= 5.0,
        "a counted {counted} key changes with the rustls peer"
    );
    assert!(client_updates >= 5);

    // a drains: its GOAWAY arrives, the stream ends (our FIN, then the echo's), and the
    // link's last record is close_notify, which rustls reports as a clean end.
    mesh.signal("a", "TERM");
    rogue::write_frames(&mut tls, &[Frame::Fin { stream: 1 }])
        .await
        .expect("fin");
    let ended = within(Duration::from_secs(10), "the drained link to end", async {
        loop {
            let mut pongs = Vec::new();
            match rogue::read_mux_record(&mut tls, |f| {
                if let Frame::Ping { nonce } = f {
                    pongs.push(nonce)
                }
            })
            .await
            {
                Ok(()) => {
                    for nonce in pongs {
                        let _ = rogue::write_frames(&mut tls, &[Frame::Pong { nonce }]).await;
                    }
                }
                Err(e) => return e,
            }
        }
    })
    .await;
    // A clean end (close_notify, then EOF) is read_exact's own "early eof"; an end
    // without close_notify is rustls's error, which names it.
    assert_eq!(ended.kind(), std::io::ErrorKind::UnexpectedEof, "{ended:?}");
    assert!(
        !ended.to_string().contains("close_notify"),
        "the link ended without close_notify: {ended:?}"
    );
    let state = tls.get_mut().1.process_new_packets().expect("rustls state");
    assert!(state.peer_has_closed(), "rustls saw no close_notify");
    eprintln!("rustls peer: {lines} lines echoed across {counted} key changes ({client_updates} by the client)");
}

/// A record that fails to decrypt ends the link with meshd's `bad_record_mac` alert, which
/// a plain rustls peer reads by name (RFC 8446 §6.2), instead of a bare close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_fails_to_decrypt_gets_a_bad_record_mac_alert() {
    let echo = EchoServer::start().await;
    let mut mesh = builder("tls")
        .service("a", "echo", echo.addr(), &["b"])
        .peer("b")
        .build();
    mesh.start("a");
    mesh.wait_for_log("a", "meshd ready", LINK_UP).await;
    let mut tls = rustls_peer_b(&mesh).await;
    // Beneath rustls: an application data record of 40 bytes that no key sealed.
    let mut forged = vec![0x17, 0x03, 0x03, 0, 40];
    forged.extend_from_slice(&[0x5A; 40]);
    tls.get_mut()
        .0
        .write_all(&forged)
        .await
        .expect("write the forged record");
    let err = within(Duration::from_secs(5), "the acceptor's alert", async {
        loop {
            if let Err(e) = rogue::read_mux_record(&mut tls, |_| {}).await {
                return e;
            }
        }
    })
    .await;
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        rustls_err,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
        )),
        "{err:?}"
    );
}

/// An idle link (no stream, pings every 5 s) re-keys every second and stays up, though
/// the peer's part comes within 500 ms and no data record follows it: a tls peer's
/// answering KeyUpdate is the last record it sends until its next ping.
async fn an_idle_link_rekeys_and_stays_up(auth: &str) {
    let echo = EchoServer::start().await;
    let mut mesh = builder(auth)
        .mesh_toml(
            "[limits]\nrekey_interval_ms = 1000\nrekey_timeout_ms = 500\nping_interval_ms = 5000\n",
        )
        .service("a", "echo", echo.addr(), &["b"])
        .forward("b", "a/echo")
        .build();
    mesh.start_all();
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh.wait_link_up("a", "b", LINK_UP).await;
    eventually(
        Duration::from_secs(12),
        "six re-keys on the idle link",
        || rekeys(&mesh, "b", "a") >= 6.0 && rekeys(&mesh, "a", "b") >= 6.0,
    )
    .await;
    for (name, peer) in [("a", "b"), ("b", "a")] {
        let text = metrics_text(mesh.admin_addr(name));
        assert_eq!(
            sample(
                &text,
                &format!("meshd_link_established_total{{peer=\"{peer}\"}}")
            ),
            1.0,
            "{auth}: {name}'s link to {peer} was cut and redialed:\n{}",
            mesh.log(name)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_noise_link_rekeys_and_stays_up() {
    an_idle_link_rekeys_and_stays_up("noise").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_link_rekeys_and_stays_up() {
    an_idle_link_rekeys_and_stays_up("tls").await;
}
