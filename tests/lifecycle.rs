//! How streams end, and what they leave behind, through a two-peer mesh of real `meshd`
//! processes (b's forward → link → a's service, b dials): a target that half-closes and
//! then resets reaches the client as that FIN and then a reset, in every auth mode, with
//! each daemon's open file descriptors and `meshd_streams_active` back where they were;
//! and peers whose manifests disagree on `[limits] stream_window` (a rollout in
//! progress) still carry a 64 MiB stream both ways, intact, on one link that never flaps.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use common::data::{send_random, XorShift};
use common::mesh::{TestMesh, TestMeshBuilder};
use common::servers::EchoServer;
use common::{metrics_text, sample};

const LINK_UP: Duration = Duration::from_secs(10);
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// What the client uploads through the forward in each reset stream.
const UPLOAD: usize = MIB;
/// What the target reads before its FIN, and again after the client saw that FIN, before
/// it resets.
const TARGET_READ: usize = 16 * KIB;
/// The target's receive buffer (`SO_RCVBUF`, which the kernel doubles).
const TARGET_RCVBUF: usize = 64 * KIB;
/// Each step of the target (accept, read, the client's sight of the FIN) gets this long.
const TARGET_STEP: Duration = Duration::from_secs(3);
/// How soon after the target's reset the client must see it.
const RESET_WITHIN: Duration = Duration::from_secs(1);
/// How long the client keeps watching after the target's reset, so that a late reset is
/// reported with its delay rather than as none at all.
const WATCH_AFTER_RESET: Duration = Duration::from_secs(3);
/// The client gives up on a stream after this long in any case.
const CLIENT_GIVE_UP: Duration = Duration::from_secs(15);
/// How often the client reads `SO_ERROR` while nothing else happens on its socket.
const ERROR_POLL: Duration = Duration::from_millis(5);
/// How long file descriptors and `meshd_streams_active` get to return to their baseline.
const SETTLE: Duration = Duration::from_secs(5);
/// Reset streams run back to back after the first one.
const REPEATS: usize = 20;

/// The two daemons: a exports the service (the acceptor), b forwards to it (the dialer).
const DAEMONS: [&str; 2] = ["a", "b"];

/// A builder for `auth` with what that mode needs: a mesh secret for psk, a CA and a
/// certificate per peer for tls.
fn builder(auth: &str) -> TestMeshBuilder {
    let builder = TestMesh::builder().auth(auth);
    match auth {
        "psk" => builder.mesh_secret(),
        "tls" => builder.tls(),
        _ => builder,
    }
}

/// Entries of `/proc/PID/fd`: the daemon's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .count()
}

/// The PID of `name`'s daemon, which must be running.
fn pid_of(mesh: &mut TestMesh, name: &str) -> u32 {
    mesh.pid(name)
        .unwrap_or_else(|| panic!("{name} is not running:\n{}", mesh.log(name)))
}

/// The other peer's name, as `name`'s metrics label the link.
fn other(name: &str) -> &'static str {
    if name == "a" {
        "b"
    } else {
        "a"
    }
}

/// `meshd_streams_active` of service `svc` on `name`'s daemon.
fn streams_active(mesh: &TestMesh, name: &str) -> f64 {
    sample(
        &metrics_text(mesh.admin_addr(name)),
        &format!(
            "meshd_streams_active{{peer=\"{}\",service=\"svc\"}}",
            other(name)
        ),
    )
}

/// Polls `cond` every 20 ms for at most `timeout`; whether it came to hold.
fn settles(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(common::POLL);
    }
}

/// What the resources of both daemons failed to return to, within [`SETTLE`]: each
/// daemon's fd count back at (or below) `baseline`, and no active stream on either side.
fn leftovers(mesh: &mut TestMesh, baseline: &[(u32, usize); 2]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, &(pid, before)) in DAEMONS.iter().zip(baseline) {
        if !settles(SETTLE, || open_fds(pid) <= before) {
            problems.push(format!(
                "{name}'s open fds stayed above their baseline: {before} before, {} {SETTLE:?} after",
                open_fds(pid)
            ));
        }
    }
    for name in DAEMONS {
        if !settles(SETTLE, || streams_active(mesh, name) == 0.0) {
            problems.push(format!(
                "{name}'s meshd_streams_active for svc stayed at {} for {SETTLE:?}",
                streams_active(mesh, name)
            ));
        }
    }
    problems
}

/// How the client side of one reset stream went.
#[derive(Debug, Default)]
struct ClientRun {
    /// When a read returned 0: the target's FIN.
    fin_at: Option<Instant>,
    /// Bytes read before that; the target sends none.
    read_bytes: usize,
    /// Bytes of the upload the kernel accepted.
    written: usize,
    /// The first error: its kind, where it showed (`read`, `write` or `SO_ERROR`), when.
    error: Option<(io::ErrorKind, &'static str, Instant)>,
}

/// The target side of one reset stream: accepts one connection, reads [`TARGET_READ`]
/// bytes, half-closes (FIN), waits for the client to have seen that FIN, reads
/// [`TARGET_READ`] more, then closes with `SO_LINGER` 0 so the kernel sends a RST.
/// Returns when it reset and what went unexpectedly on the way (it resets anyway, so the
/// client's side can be judged too).
async fn fin_then_reset(
    listener: &TcpListener,
    client_saw_fin: oneshot::Receiver<()>,
    reset_at: oneshot::Sender<Instant>,
) -> (Option<Instant>, Vec<String>) {
    let mut notes = Vec::new();
    let mut s = match tokio::time::timeout(TARGET_STEP, listener.accept()).await {
        Ok(Ok((s, _))) => s,
        Ok(Err(e)) => return (None, vec![format!("target accept: {e}")]),
        Err(_) => {
            return (
                None,
                vec![format!(
                    "no connection reached the target in {TARGET_STEP:?}"
                )],
            )
        }
    };
    let mut buf = vec![0u8; TARGET_READ];
    match tokio::time::timeout(TARGET_STEP, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => notes.push(format!("target's first {TARGET_READ} bytes: {e}")),
        Err(_) => notes.push(format!(
            "the target's first {TARGET_READ} bytes did not arrive in {TARGET_STEP:?}"
        )),
    }
    if let Err(e) = s.shutdown().await {
        notes.push(format!("target half-close: {e}"));
    }
    match tokio::time::timeout(TARGET_STEP, client_saw_fin).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => notes.push("the client ended before it saw the target's FIN".into()),
        Err(_) => notes.push(format!(
            "the client did not see the target's FIN within {TARGET_STEP:?}"
        )),
    }
    match tokio::time::timeout(TARGET_STEP, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => notes.push(format!("target's bytes after its FIN: {e}")),
        Err(_) => notes.push(format!(
            "{TARGET_READ} more bytes did not reach the target in {TARGET_STEP:?} after its FIN"
        )),
    }
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0 on the target's socket");
    let at = Instant::now();
    drop(s);
    let _ = reset_at.send(at);
    (Some(at), notes)
}

/// The client side of one reset stream: uploads [`UPLOAD`] bytes through `forward` while
/// reading, tells the target when its FIN arrived, and watches `SO_ERROR` throughout, so
/// a reset is seen even once the whole upload sits in kernel buffers. Stops at the first
/// error, or [`WATCH_AFTER_RESET`] after the target's reset, or after [`CLIENT_GIVE_UP`].
async fn upload_until_reset(
    forward: SocketAddr,
    saw_fin: oneshot::Sender<()>,
    mut reset_at: oneshot::Receiver<Instant>,
) -> ClientRun {
    let mut run = ClientRun::default();
    let mut s = TcpStream::connect(forward)
        .await
        .expect("connect to the forward");
    let chunk = XorShift::new(0xF1A).bytes(16 * KIB);
    let mut buf = vec![0u8; 16 * KIB];
    let mut saw_fin = Some(saw_fin);
    let mut reset_known = false;
    let mut deadline = Instant::now() + CLIENT_GIVE_UP;
    let (mut rd, mut wr) = s.split();
    loop {
        match wr.as_ref().take_error() {
            Ok(None) => {}
            Ok(Some(e)) => {
                run.error = Some((e.kind(), "SO_ERROR", Instant::now()));
                break;
            }
            Err(e) => panic!("getsockopt(SO_ERROR) on the client's socket: {e}"),
        }
        let left = (UPLOAD - run.written).min(chunk.len());
        tokio::select! {
            r = rd.read(&mut buf), if run.fin_at.is_none() => match r {
                Ok(0) => {
                    run.fin_at = Some(Instant::now());
                    if let Some(tx) = saw_fin.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(n) => run.read_bytes += n,
                Err(e) => {
                    run.error = Some((e.kind(), "read", Instant::now()));
                    break;
                }
            },
            r = wr.write(&chunk[..left]), if left > 0 => match r {
                Ok(0) => {
                    run.error = Some((io::ErrorKind::WriteZero, "write", Instant::now()));
                    break;
                }
                Ok(n) => run.written += n,
                Err(e) => {
                    run.error = Some((e.kind(), "write", Instant::now()));
                    break;
                }
            },
            r = &mut reset_at, if !reset_known => {
                reset_known = true;
                if let Ok(at) = r {
                    deadline = deadline.min(at + WATCH_AFTER_RESET);
                }
            }
            _ = tokio::time::sleep(ERROR_POLL) => {}
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    run
}

/// Runs one reset stream through `forward` to the target on `listener`; returns what
/// went wrong, empty when the client saw the FIN and then a reset within
/// [`RESET_WITHIN`] of the target's.
async fn reset_stream(listener: &TcpListener, forward: SocketAddr) -> Vec<String> {
    let (fin_tx, fin_rx) = oneshot::channel();
    let (reset_tx, reset_rx) = oneshot::channel();
    let ((reset_at, mut problems), run) = tokio::join!(
        fin_then_reset(listener, fin_rx, reset_tx),
        upload_until_reset(forward, fin_tx, reset_rx)
    );
    let since_reset = |t: Instant| match reset_at {
        Some(r) if t >= r => format!("{:?} after the target's reset", t - r),
        Some(r) => format!("{:?} before the target's reset", r - t),
        None => "with no reset from the target".to_owned(),
    };
    if run.read_bytes > 0 {
        problems.push(format!(
            "the client read {} bytes that the target never sent",
            run.read_bytes
        ));
    }
    match run.fin_at {
        None => problems.push("the client's read side never saw the target's FIN".into()),
        Some(fin) => {
            if let Some((_, _, err)) = run.error {
                if err < fin {
                    problems.push("the client saw an error before the target's FIN".into());
                }
            }
        }
    }
    match run.error {
        None if run.written == UPLOAD => problems.push(format!(
            "the client uploaded all {UPLOAD} bytes and no reset reached it ({}): a clean \
             end instead of a reset",
            match reset_at {
                Some(_) => format!("watched {WATCH_AFTER_RESET:?} after the target's reset"),
                None => format!("watched {CLIENT_GIVE_UP:?}"),
            }
        )),
        None => problems.push(format!(
            "the client's upload stalled after {} of {UPLOAD} bytes and no reset reached it \
             ({})",
            run.written,
            match reset_at {
                Some(_) => format!("watched {WATCH_AFTER_RESET:?} after the target's reset"),
                None => format!("watched {CLIENT_GIVE_UP:?}"),
            }
        )),
        // A reset that arrives after the FIN (the socket in CLOSE_WAIT) is reported by
        // Linux as EPIPE, not ECONNRESET (tcp_reset); the client never shut its write side
        // down, so either kind means that a RST arrived.
        Some((kind, place, at)) => {
            if !matches!(
                kind,
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) {
                problems.push(format!(
                    "the client's {place} failed with {kind:?}, not a reset, {}",
                    since_reset(at)
                ));
            }
            match reset_at {
                Some(r) if at >= r && at - r <= RESET_WITHIN => {}
                _ => problems.push(format!(
                    "the reset ({kind:?} on {place}) reached the client {}, after {} of \
                     {UPLOAD} bytes uploaded; expected it within {RESET_WITHIN:?} after",
                    since_reset(at),
                    run.written
                )),
            }
        }
    }
    problems
}

/// The reset test in `auth` mode: see [`fin_then_reset_from_the_target_resets_the_client`].
async fn fin_then_reset_in(auth: &str) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the target");
    // Accepted sockets inherit this: the target holds little of the upload, so most of it
    // is still on its way through the mesh when the target resets.
    socket2::SockRef::from(&listener)
        .set_recv_buffer_size(TARGET_RCVBUF)
        .expect("SO_RCVBUF on the target's listener");
    let target = listener.local_addr().expect("target address");
    let mut mesh = builder(auth)
        .service("a", "svc", target, &["b"])
        .forward("b", "a/svc")
        .build();
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh.wait_link_up("a", "b", LINK_UP).await;
    let forward = mesh.forward_addr("b", "a/svc");
    let baseline = DAEMONS.map(|name| {
        let pid = pid_of(&mut mesh, name);
        (pid, open_fds(pid))
    });

    let started = Instant::now();
    let mut problems = reset_stream(&listener, forward).await;
    problems.extend(leftovers(&mut mesh, &baseline));
    assert!(
        problems.is_empty(),
        "{auth}: the first stream (target FIN, then RST) went wrong:\n- {}",
        problems.join("\n- ")
    );
    eprintln!(
        "{auth}: first reset stream and cleanup in {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    for i in 1..=REPEATS {
        let problems = reset_stream(&listener, forward).await;
        assert!(
            problems.is_empty(),
            "{auth}: reset stream {i} of {REPEATS} in a row went wrong:\n- {}",
            problems.join("\n- ")
        );
    }
    let problems = leftovers(&mut mesh, &baseline);
    assert!(
        problems.is_empty(),
        "{auth}: after {REPEATS} reset streams in a row:\n- {}",
        problems.join("\n- ")
    );
    eprintln!(
        "{auth}: {REPEATS} reset streams and cleanup in {:?}",
        started.elapsed()
    );
    for name in DAEMONS {
        assert!(mesh.is_running(name), "{name} died:\n{}", mesh.log(name));
    }
}

/// A target that half-closes (FIN) while the client is still uploading, and resets (RST)
/// a moment later, reaches the client over a noise link as exactly that: its read side
/// ends cleanly, then its upload fails with a reset within 1 s of the target's (never a
/// clean completion of the upload and a clean close). Afterwards each daemon's open fds
/// return to their count before the stream and `meshd_streams_active` to 0 on both
/// peers, and they still do after 20 such streams in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_then_reset_from_the_target_resets_the_client() {
    fin_then_reset_in("noise").await;
}

/// As [`fin_then_reset_from_the_target_resets_the_client`], over a psk link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_then_reset_from_the_target_resets_the_client_over_psk() {
    fin_then_reset_in("psk").await;
}

/// As [`fin_then_reset_from_the_target_resets_the_client`], over a tls link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_then_reset_from_the_target_resets_the_client_over_tls() {
    fin_then_reset_in("tls").await;
}

/// The bulk stream of the window tests.
const BULK: u64 = 64 * MIB as u64;
/// How long the 64 MiB echo may take (well under a second on loopback when it works).
const BULK_WITHIN: Duration = Duration::from_secs(30);
/// The 64 MiB echo is given up when neither direction moved for this long.
const BULK_STALL: Duration = Duration::from_secs(5);

/// Runs `fut` to completion unless it takes longer than [`BULK_WITHIN`] or none of
/// `counters` moves for [`BULK_STALL`]; then says which.
async fn progressing<T>(
    mut fut: std::pin::Pin<&mut impl std::future::Future<Output = T>>,
    counters: &[&AtomicU64],
) -> Result<T, String> {
    let total = |c: &[&AtomicU64]| c.iter().map(|c| c.load(Ordering::SeqCst)).sum::<u64>();
    let deadline = tokio::time::Instant::now() + BULK_WITHIN;
    let mut last = (total(counters), Instant::now());
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("did not finish within {BULK_WITHIN:?}"));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let now = total(counters);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() >= BULK_STALL {
                    return Err(format!("stalled: no byte moved for {BULK_STALL:?}"));
                }
            }
        }
    }
}

/// `[limits]` with the stream window fixed at `window` (no growth), so that a peer that
/// assumes its own window for the other side overruns or starves it at once.
fn fixed_window(window: usize) -> String {
    format!("[limits]\nstream_window = {window}\nmax_stream_window = {window}\n")
}

/// The lines of `name`'s log that tell of a link lost or a credit overrun.
fn flap_lines(mesh: &TestMesh, name: &str) -> Vec<String> {
    mesh.log(name)
        .lines()
        .filter(|l| {
            l.contains("link down")
                || l.contains("beyond its credit")
                || l.contains("CreditExceeded")
                || l.contains("protocol error")
        })
        .take(5)
        .map(str::to_owned)
        .collect()
}

/// Echoes [`BULK`] bytes through a mesh whose dialer (b) has `dialer_window` and whose
/// acceptor (a, with its own copy of the manifest) has `acceptor_window`, and asserts
/// that they come back complete and intact over one link that never went down.
async fn mismatched_windows(dialer_window: usize, acceptor_window: usize) {
    let case = format!("dialer window {dialer_window}, acceptor window {acceptor_window}");
    let echo = EchoServer::start().await;
    let acceptor_limits = fixed_window(acceptor_window);
    let mut mesh = TestMesh::builder()
        .mesh_toml(&fixed_window(dialer_window))
        .service("a", "svc", echo.addr(), &["b"])
        .forward("b", "a/svc")
        .manifest_override("a", move |spec| spec.extra = vec![acceptor_limits])
        .build();
    let a_mesh_toml = std::fs::read_to_string(mesh.manifest_dir_of("a").join("mesh.toml"))
        .expect("read a's mesh.toml");
    assert!(
        a_mesh_toml.contains(&format!("stream_window = {acceptor_window}")),
        "a's own manifest lacks its window:\n{a_mesh_toml}"
    );
    mesh.start("a");
    mesh.start("b");
    mesh.wait_link_up("b", "a", LINK_UP).await;
    mesh.wait_link_up("a", "b", LINK_UP).await;

    let s = TcpStream::connect(mesh.forward_addr("b", "a/svc"))
        .await
        .expect("connect to the forward");
    let (mut rd, mut wr) = s.into_split();
    let uploaded = Arc::new(AtomicU64::new(0));
    let echoed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let up = {
        let uploaded = uploaded.clone();
        tokio::spawn(async move {
            let mut counting = CountingWriter {
                inner: &mut wr,
                count: uploaded,
            };
            send_random(&mut counting, 0xB17, BULK).await
        })
    };
    let down = {
        let echoed = echoed.clone();
        tokio::spawn(async move {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 256 * KIB];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        ctx.update(&buf[..n]);
                        echoed.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(common::data::Digest {
                bytes: echoed.load(Ordering::SeqCst),
                sha256: common::data::hex(ctx.finish().as_ref()),
            })
        })
    };
    let abort_up = up.abort_handle();
    let abort_down = down.abort_handle();
    let both = std::pin::pin!(async {
        let sent = up.await.expect("uploader task");
        let got = down.await.expect("reader task");
        (sent, got)
    });
    let outcome = progressing(both, &[&uploaded, &echoed]).await;
    abort_up.abort();
    abort_down.abort();
    let elapsed = started.elapsed();

    let mut problems = Vec::new();
    match outcome {
        Err(why) => problems.push(format!(
            "the echo {why}: {} of {BULK} bytes uploaded, {} echoed back",
            uploaded.load(Ordering::SeqCst),
            echoed.load(Ordering::SeqCst)
        )),
        Ok((Err(e), _)) => problems.push(format!(
            "the upload failed after {} of {BULK} bytes ({} echoed back): {e}",
            uploaded.load(Ordering::SeqCst),
            echoed.load(Ordering::SeqCst)
        )),
        Ok((Ok(_), Err(e))) => problems.push(format!(
            "reading the echo failed after {} of {BULK} bytes: {e}",
            echoed.load(Ordering::SeqCst)
        )),
        Ok((Ok(sent), Ok(got))) => {
            if got != sent {
                problems.push(format!(
                    "the echo differs: sent {} bytes (sha256 {}), got {} (sha256 {})",
                    sent.bytes, sent.sha256, got.bytes, got.sha256
                ));
            }
        }
    }
    for name in DAEMONS {
        let m = metrics_text(mesh.admin_addr(name));
        let peer = other(name);
        let established = sample(
            &m,
            &format!("meshd_link_established_total{{peer=\"{peer}\"}}"),
        );
        if established != 1.0 {
            problems.push(format!(
                "{name}: meshd_link_established_total{{peer=\"{peer}\"}} is {established}, not 1"
            ));
        }
        let lines = flap_lines(&mesh, name);
        if !lines.is_empty() {
            problems.push(format!(
                "{name} logged a lost link or a credit overrun:\n    {}",
                lines.join("\n    ")
            ));
        }
        if !mesh.is_running(name) {
            problems.push(format!("{name} died"));
        }
    }
    assert!(
        problems.is_empty(),
        "{case}: 64 MiB echo in {elapsed:?}:\n- {}",
        problems.join("\n- ")
    );
    eprintln!(
        "{case}: 64 MiB echoed intact in {elapsed:?}, {:.0} MiB/s each way",
        BULK as f64 / MIB as f64 / elapsed.as_secs_f64()
    );
}

/// Counts the bytes written through it, so a stalled upload can say how far it got.
struct CountingWriter<'a, W> {
    inner: &'a mut W,
    count: Arc<AtomicU64>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountingWriter<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.count.fetch_add(*n as u64, Ordering::SeqCst);
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Peers whose manifests disagree on the stream window (as during a rollout: the dialer
/// has 1 MiB, the acceptor 64 KiB, neither grows its window) still carry a 64 MiB stream
/// through an echo service, dialer → acceptor and back, byte for byte (SHA-256), over one
/// link: `meshd_link_established_total` stays 1 on both and neither logs a lost link or
/// a credit overrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_different_stream_windows_carry_a_64_mib_stream() {
    mismatched_windows(MIB, 64 * KIB).await;
}

/// As [`peers_with_different_stream_windows_carry_a_64_mib_stream`], with the windows the
/// other way round: the dialer has 64 KiB, the acceptor 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_different_stream_windows_carry_a_64_mib_stream_the_other_way_round() {
    mismatched_windows(64 * KIB, MIB).await;
}
