//! What a misbehaving but authenticated peer can make an exit do, through a real `meshd`
//! (a, exporting services) and a hand-made tls dialer (c, a peer of the manifest with a
//! certificate of the mesh CA):
//! - OPEN+RST pairs, thousands of them, never have more target connects in flight than
//!   `[limits] max_streams`, and the refusals they earn log at most a burst of lines;
//! - a peer that floods OPENs and never reads the refusals is cut once the refusals it
//!   has not read reach the control-queue bound, and a's memory stays flat.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd::proto::frame::{Frame, OpenError, ResetCode};
use meshd::tls::certgen::{self, Validity};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use common::mesh::TestMesh;
use common::rogue::{read_mux_record, send_tls_preamble, tls_link_up, write_frames, write_records};
use common::servers::EchoServer;
use common::{metrics_text, sample};

const LINK_UP: Duration = Duration::from_secs(10);
/// `[limits] max_streams` of these meshes: small, so the bound is easy to see.
const MAX_STREAMS: usize = 8;
/// OPEN+RST pairs the rogue sends, in batches of [`PAIRS_PER_BATCH`].
const PAIRS: u64 = 10_000;
const PAIRS_PER_BATCH: u64 = 500;
/// How long the in-flight connects are watched after the last batch.
const WATCH: Duration = Duration::from_secs(2);
/// How often `/proc/net/tcp` is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Lines "open refused" a's log may hold for one flood of a few seconds: the driver logs
/// a burst of 10 per 10 s per link, and the exit logs each target connect that fails
/// (none here: every connect is abandoned or in flight).
const REFUSAL_LINES_MAX: usize = 20;
/// OPENs the never-reading rogue may send before a must have cut it.
const UNREAD_OPENS_MAX: u64 = 4_000_000;
/// OPENs per write of the never-reading rogue.
const OPENS_PER_WRITE: u64 = 2_000;
/// OPENs per mux record of the never-reading rogue: under `max_streams`, so that no record
/// alone overflows a's stream table.
const OPENS_PER_RECORD: usize = MAX_STREAMS / 2;
/// The never-reading rogue's receive buffer (`SO_RCVBUF`; the kernel doubles it).
const ROGUE_RCVBUF: u32 = 4096;
/// What a's resident memory may grow by while it answers a peer that does not read.
const RSS_GROWTH_MAX_KIB: u64 = 20 * 1024;

fn limits() -> String {
    format!("[limits]\nmax_streams = {MAX_STREAMS}\n")
}

/// A target that never accepts, with the smallest accept queue: a's connects to it stay
/// in flight (SYN sent, or established in the full queue) until a gives them up, the way
/// connects pile up at a server that is slow to take them (PostgreSQL forks per connection).
fn stalled_target() -> (std::net::TcpListener, SocketAddr) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(1).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Client sockets to `port` on 127.0.0.1 that are connecting (SYN_SENT) or connected
/// (ESTABLISHED, here: waiting in the stalled target's full accept queue). Only a connects
/// to the target, so these are a's target connects in flight. Counted by local address:
/// the kernel writes the table in pieces, and a piece can repeat lines of the last one
/// when sockets close in between.
fn connects_in_flight(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let state = fields.get(3).copied();
            let connecting = remote_port == Some(port) && matches!(state, Some("01" | "02"));
            connecting.then(|| fields.get(1).map(|l| l.to_string()))
        })
        .flatten()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Starts a and brings up c's authenticated link to it, with a certificate of the mesh's
/// CA; `rcvbuf` sets c's socket receive buffer (`SO_RCVBUF`) before it connects.
async fn link_up_as_c(mesh: &mut TestMesh, rcvbuf: Option<u32>) -> TlsStream<TcpStream> {
    mesh.start("a");
    mesh.wait_for_log_line("a", &["meshd ready"], LINK_UP).await;
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let mut tcp = socket.connect(mesh.mesh_addr("a")).await.expect("connect");
    let ca = mesh.ca();
    let cert = certgen::issue(&ca.cert_pem, &ca.key_pem, "c", Validity::days_from_now(2))
        .expect("issue c");
    send_tls_preamble(&mut tcp, "c").await;
    tls_link_up(tcp, "a", &ca.cert_pem, &cert).await
}

fn refusal_lines(mesh: &TestMesh) -> usize {
    mesh.log("a")
        .lines()
        .filter(|l| l.contains("open refused"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_reset_floods_never_connect_more_targets_than_max_streams() {
    let (_target, target_addr) = stalled_target();
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .mesh_toml(&limits())
        .peer("c")
        .service("a", "slow", target_addr, &["c"])
        .build();
    let tls = link_up_as_c(&mut mesh, None).await;
    let (mut rd, mut wr) = tokio::io::split(tls);

    // Everything a answers is read and counted, so the refusals never back up.
    let refused_busy = Arc::new(AtomicU64::new(0));
    let counted = refused_busy.clone();
    let reader = tokio::spawn(async move {
        loop {
            let read = read_mux_record(&mut rd, |frame| {
                if let Frame::OpenErr {
                    code: OpenError::TooManyStreams,
                    ..
                } = frame
                {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
            if read.is_err() {
                return;
            }
        }
    });

    write_frames(&mut wr, &[Frame::Settings { window: 256 * 1024 }])
        .await
        .expect("settings");
    let mut peak = 0;
    let mut next_id = 1;
    let started = Instant::now();
    while next_id <= PAIRS {
        // Each batch resets the streams the batch before opened, so their target connects
        // have had a batch's time to start; then opens its own.
        let mut frames = Vec::new();
        for id in next_id.saturating_sub(PAIRS_PER_BATCH).max(1)..next_id {
            frames.push(Frame::Rst {
                stream: id,
                code: ResetCode::Cancelled,
            });
        }
        for id in next_id..next_id + PAIRS_PER_BATCH {
            frames.push(Frame::Open {
                stream: id,
                service: "slow",
            });
        }
        next_id += PAIRS_PER_BATCH;
        write_records(&mut wr, &frames, OPENS_PER_RECORD)
            .await
            .unwrap_or_else(|e| panic!("a cut the rogue link: {e}; a's log:\n{}", mesh.log("a")));
        peak = peak.max(connects_in_flight(target_addr.port()));
    }
    let flooded = started.elapsed();
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        peak = peak.max(connects_in_flight(target_addr.port()));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let lines = refusal_lines(&mesh);
    for l in mesh
        .log("a")
        .lines()
        .filter(|l| l.contains("open refused"))
        .take(3)
    {
        println!("  a: {l}");
    }
    println!(
        "{PAIRS} OPEN+RST pairs in {flooded:?}: peak target connects in flight {peak} \
         (max_streams {MAX_STREAMS}), TooManyStreams refusals {}, 'open refused' log lines {lines}",
        refused_busy.load(Ordering::Relaxed)
    );
    assert!(
        peak <= MAX_STREAMS,
        "{peak} target connects in flight at once, over max_streams = {MAX_STREAMS}"
    );
    assert!(
        lines <= REFUSAL_LINES_MAX,
        "{lines} 'open refused' lines for one flood; a's log:\n{}",
        mesh.log("a")
    );

    // The link survived the flood and every stream it made is gone.
    let admin = mesh.admin_addr("a");
    common::wait_until(
        Duration::from_secs(10),
        "meshd_streams_active back to 0 on a",
        || sample(&metrics_text(admin), "meshd_streams_active") == 0.0,
    );
    assert!(!reader.is_finished(), "a closed the rogue link");
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_refusals_is_cut() {
    let echo = EchoServer::start().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .mesh_toml(&limits())
        .peer("c")
        .service("a", "echo", echo.addr(), &["c"])
        .build();
    let mut tls = link_up_as_c(&mut mesh, Some(ROGUE_RCVBUF)).await;
    let rss_before = mesh.rss_kib("a");

    // OPENs of a service a does not have, each answered with an OPEN_ERR that c never reads.
    let mut next_id = 1;
    let started = Instant::now();
    let cut = loop {
        if next_id > UNREAD_OPENS_MAX {
            panic!(
                "a still reads after {UNREAD_OPENS_MAX} OPENs whose refusals were never read; \
                 a's log:\n{}",
                mesh.log("a")
            );
        }
        let frames: Vec<Frame> = (next_id..next_id + OPENS_PER_WRITE)
            .map(|id| Frame::Open {
                stream: id,
                service: "nope",
            })
            .collect();
        next_id += OPENS_PER_WRITE;
        // Fewer OPENs per record than max_streams: a refuses each one as it dispatches the
        // record, and its refusals queue only because c does not read them.
        let write = tokio::time::timeout(
            Duration::from_secs(20),
            write_records(&mut tls, &frames, OPENS_PER_RECORD),
        );
        match write.await {
            Err(_) => panic!(
                "a neither reads nor cuts the link after {next_id} OPENs; a's log:\n{}",
                mesh.log("a")
            ),
            Ok(Err(e)) => break e,
            Ok(Ok(())) => {}
        }
        if mesh.log("a").contains("the peer does not read") {
            break std::io::Error::other("cut, seen in the log");
        }
    };
    let growth = mesh.rss_kib("a").saturating_sub(rss_before);
    println!(
        "a cut the peer that never reads after {} OPENs in {:?} ({cut}); RSS growth {growth} KiB; \
         'open refused' log lines {}",
        next_id - 1,
        started.elapsed(),
        refusal_lines(&mesh)
    );
    mesh.wait_for_log_line("a", &["peer=c", "the peer does not read"], LINK_UP)
        .await;
    assert!(
        growth < RSS_GROWTH_MAX_KIB,
        "a grew by {growth} KiB answering a peer that does not read"
    );
    assert!(refusal_lines(&mesh) <= REFUSAL_LINES_MAX);
}

/// The stream window of the stalled-stream test, fixed (no growth).
const WINDOW: usize = 256 * 1024;
/// One-byte DATA records sent to the stalled stream: under the window in bytes, so the
/// peer stays within its credit, but each one a record of its own.
const TINY_RECORDS: u64 = 100_000;
/// What a's resident memory may grow by beyond the bound under test (2 × window), for
/// the allocator's own bookkeeping and the link's buffers: far under what the records
/// would pin as slices of read buffers (each read buffer is 256 KiB).
const RSS_SLACK_KIB: u64 = 512;

/// A target that accepts and never reads, with a tiny receive buffer: whatever a stream
/// brings it stays in meshd.
async fn stalled_reader() -> (tokio::task::JoinHandle<()>, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(16).expect("listen");
    let addr = listener.local_addr().expect("local_addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (task, addr)
}

/// Sends PING `nonce` and waits for its PONG: every record sent before it was handled.
async fn all_handled<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    pongs: &mut tokio::sync::mpsc::UnboundedReceiver<Result<u64, String>>,
    nonce: u64,
) {
    write_frames(wr, &[Frame::Ping { nonce }])
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(Duration::from_secs(20), pongs.recv()).await {
            Ok(Some(Ok(n))) if n == nonce => return,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("{e}"),
            Ok(None) | Err(_) => panic!("no PONG {nonce} from a"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_records_to_a_stalled_target_hold_at_most_twice_the_window() {
    let (_target, target_addr) = stalled_reader().await;
    let mut mesh = TestMesh::builder()
        .auth("tls")
        .tls()
        .mesh_toml(&format!(
            "[limits]\nstream_window = {WINDOW}\nmax_stream_window = {WINDOW}\n"
        ))
        .peer("c")
        .service("a", "stalled", target_addr, &["c"])
        .build();
    let tls = link_up_as_c(&mut mesh, None).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (pongs_tx, mut pongs) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let read = read_mux_record(&mut rd, |frame| match frame {
                Frame::Pong { nonce } => {
                    let _ = pongs_tx.send(Ok(nonce));
                }
                Frame::OpenErr { code, .. } => {
                    let _ = pongs_tx.send(Err(format!("open refused: {code:?}")));
                }
                Frame::Rst { code, .. } => {
                    let _ = pongs_tx.send(Err(format!("stream reset: {code:?}")));
                }
                _ => {}
            })
            .await;
            if let Err(e) = read {
                let _ = pongs_tx.send(Err(format!("link read: {e}")));
                return;
            }
        }
    });
    write_frames(
        &mut wr,
        &[
            Frame::Settings {
                window: WINDOW as u32,
            },
            Frame::Open {
                stream: 1,
                service: "stalled",
            },
            Frame::Data {
                stream: 1,
                data: b"x",
            },
        ],
    )
    .await
    .expect("open");
    all_handled(&mut wr, &mut pongs, 1).await;
    let rss_before = mesh.rss_kib("a");

    // One DATA frame of one byte per record, each its own TLS record too.
    let frames: Vec<Frame> = (0..TINY_RECORDS)
        .map(|_| Frame::Data {
            stream: 1,
            data: b"y",
        })
        .collect();
    write_records(&mut wr, &frames, 1)
        .await
        .expect("tiny records");
    all_handled(&mut wr, &mut pongs, 2).await;
    let growth = mesh.rss_kib("a").saturating_sub(rss_before);
    let bound = 2 * WINDOW as u64 / 1024;
    println!(
        "{TINY_RECORDS} one-byte DATA records held for a stalled target: a's RSS grew {growth} KiB \
         (bound 2 × window = {bound} KiB, + {RSS_SLACK_KIB} KiB slack)"
    );
    assert!(
        growth <= bound + RSS_SLACK_KIB,
        "a's RSS grew {growth} KiB holding {TINY_RECORDS} bytes for a stalled stream"
    );
    assert!(!reader.is_finished(), "a closed the link");
    reader.abort();
}
