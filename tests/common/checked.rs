//! SHA-checked streams for fault tests, and how each one ended.
//!
//! The client opens a connection and sends a header: direction, seed and length. Upload:
//! the client sends `len` bytes of the seed's pseudo-random stream and half-closes; the
//! target answers a clean end of stream with a verdict (bytes received and their SHA-256)
//! and compares the count with the header itself. Download: the target sends the bytes
//! and half-closes; the client checks count and SHA-256. Whichever side sees an error
//! aborts with a TCP reset, so a clean end of stream always means "the other side
//! finished": a clean end with too few bytes is a silent truncation, never a fault the
//! network is allowed to cause.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::data::{hex, RandomStream};

/// Direction byte, seed and length, big-endian.
const HEADER_LEN: usize = 17;
/// Bytes received (u64, big-endian) and their SHA-256.
const VERDICT_LEN: usize = 40;

/// Which way a checked stream's bulk data flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to target.
    Up,
    /// Target to client.
    Down,
}

/// How one checked stream ended, seen from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte arrived and the digests agree.
    Complete,
    /// A read, write or connect failed (a reset, usually): an allowed end under faults.
    Error {
        /// Where: `connect`, `write` or `read`.
        stage: &'static str,
        /// What the socket said.
        kind: io::ErrorKind,
    },
    /// A clean end of stream with fewer bytes than were sent.
    Truncated {
        /// Bytes that arrived.
        got: u64,
        /// Bytes sent.
        want: u64,
    },
    /// As many bytes or more, but not the bytes sent.
    Corrupted {
        /// Bytes that arrived.
        got: u64,
    },
    /// Upload: a clean end of stream before the target's verdict, which the target only
    /// skips when it saw an error and reset; the reset was delivered as a clean end.
    NoVerdict {
        /// Verdict bytes that arrived.
        got: usize,
    },
    /// Neither finished nor failed within the deadline.
    Hung,
}

impl Outcome {
    /// A clean end that lost data.
    pub fn is_silent_truncation(&self) -> bool {
        matches!(self, Outcome::Truncated { .. } | Outcome::NoVerdict { .. })
    }
}

/// What the target saw, over all connections.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Uploads that ended cleanly with exactly the announced length.
    pub uploads_complete: AtomicU64,
    /// Uploads that ended cleanly with fewer bytes than announced: truncation the target saw.
    pub uploads_short: AtomicU64,
    /// Uploads that ended cleanly with more bytes than announced.
    pub uploads_long: AtomicU64,
    /// Downloads fully written.
    pub downloads_complete: AtomicU64,
    /// Connections that ended in a read or write error.
    pub errors: AtomicU64,
    /// Bytes received plus bytes sent, over all connections.
    pub bytes: AtomicU64,
}

impl TargetStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Binds 127.0.0.1:0 (in the caller's namespace) and serves checked streams forever on the
/// caller's runtime. Returns the address and the shared counters.
pub async fn start_target() -> (SocketAddr, Arc<TargetStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    let stats = Arc::new(TargetStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_one(stream, s.clone()));
        }
    });
    (addr, stats)
}

/// Closes `stream` with a TCP reset rather than a FIN.
fn abort(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve_one(mut stream: TcpStream, stats: Arc<TargetStats>) {
    let _ = stream.set_nodelay(true);
    let mut header = [0u8; HEADER_LEN];
    if stream.read_exact(&mut header).await.is_err() {
        TargetStats::bump(&stats.errors);
        return abort(stream);
    }
    let seed = u64::from_be_bytes(header[1..9].try_into().expect("8 bytes"));
    let len = u64::from_be_bytes(header[9..17].try_into().expect("8 bytes"));
    if header[0] == 1 {
        let mut source = RandomStream::new(seed, len);
        loop {
            let piece = source.next_piece();
            if piece.is_empty() {
                break;
            }
            if stream.write_all(piece).await.is_err() {
                TargetStats::bump(&stats.errors);
                return abort(stream);
            }
            stats.bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        if stream.shutdown().await.is_err() {
            TargetStats::bump(&stats.errors);
            return abort(stream);
        }
        TargetStats::bump(&stats.downloads_complete);
        // Wait for the client's end, so that closing cannot turn into a reset of bytes
        // still unread on our side.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut sink)).await;
        return;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                ctx.update(&buf[..n]);
                got += n as u64;
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                TargetStats::bump(&stats.errors);
                return abort(stream);
            }
        }
    }
    TargetStats::bump(match got.cmp(&len) {
        std::cmp::Ordering::Less => &stats.uploads_short,
        std::cmp::Ordering::Equal => &stats.uploads_complete,
        std::cmp::Ordering::Greater => &stats.uploads_long,
    });
    let mut verdict = [0u8; VERDICT_LEN];
    verdict[..8].copy_from_slice(&got.to_be_bytes());
    verdict[8..].copy_from_slice(ctx.finish().as_ref());
    if stream.write_all(&verdict).await.is_err() || stream.shutdown().await.is_err() {
        TargetStats::bump(&stats.errors);
        abort(stream);
    }
}

/// One checked stream to `addr` (a forward), in the caller's namespace: `len` bytes of
/// seed `seed` in direction `dir`, given `timeout` in all. `progress` counts the bulk
/// bytes moved so far.
pub async fn run(
    addr: SocketAddr,
    dir: Dir,
    seed: u64,
    len: u64,
    timeout: Duration,
    progress: Arc<AtomicU64>,
) -> Outcome {
    tokio::time::timeout(timeout, run_inner(addr, dir, seed, len, progress))
        .await
        .unwrap_or(Outcome::Hung)
}

fn error(stage: &'static str) -> impl Fn(io::Error) -> Outcome {
    move |e| Outcome::Error {
        stage,
        kind: e.kind(),
    }
}

async fn run_inner(
    addr: SocketAddr,
    dir: Dir,
    seed: u64,
    len: u64,
    progress: Arc<AtomicU64>,
) -> Outcome {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return error("connect")(e),
    };
    let _ = s.set_nodelay(true);
    let mut header = [0u8; HEADER_LEN];
    header[0] = u8::from(dir == Dir::Down);
    header[1..9].copy_from_slice(&seed.to_be_bytes());
    header[9..].copy_from_slice(&len.to_be_bytes());
    let result = async {
        s.write_all(&header).await.map_err(error("write"))?;
        match dir {
            Dir::Up => upload(&mut s, seed, len, &progress).await,
            Dir::Down => download(&mut s, seed, len, &progress).await,
        }
    }
    .await;
    match result {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

async fn upload(
    s: &mut TcpStream,
    seed: u64,
    len: u64,
    progress: &AtomicU64,
) -> Result<Outcome, Outcome> {
    let mut source = RandomStream::new(seed, len);
    loop {
        let piece = source.next_piece();
        if piece.is_empty() {
            break;
        }
        s.write_all(piece).await.map_err(error("write"))?;
        progress.fetch_add(piece.len() as u64, Ordering::Relaxed);
    }
    s.shutdown().await.map_err(error("write"))?;
    let sent = source.sha256();
    let mut verdict = [0u8; VERDICT_LEN];
    let mut filled = 0;
    while filled < VERDICT_LEN {
        match s.read(&mut verdict[filled..]).await {
            Ok(0) => return Ok(Outcome::NoVerdict { got: filled }),
            Ok(n) => filled += n,
            Err(e) => return Err(error("read")(e)),
        }
    }
    let got = u64::from_be_bytes(verdict[..8].try_into().expect("8 bytes"));
    Ok(if got < len {
        Outcome::Truncated { got, want: len }
    } else if got > len || hex(&verdict[8..]) != sent {
        Outcome::Corrupted { got }
    } else {
        Outcome::Complete
    })
}

async fn download(
    s: &mut TcpStream,
    seed: u64,
    len: u64,
    progress: &AtomicU64,
) -> Result<Outcome, Outcome> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(error("read")(e)),
        };
        ctx.update(&buf[..n]);
        got += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
        if got > len {
            return Ok(Outcome::Corrupted { got });
        }
    }
    Ok(if got < len {
        Outcome::Truncated { got, want: len }
    } else if hex(ctx.finish().as_ref()) != expected_sha256(seed, len) {
        Outcome::Corrupted { got }
    } else {
        Outcome::Complete
    })
}

/// SHA-256 of the `len` bytes the target sends for `seed`, generated the way it does
/// (chunk by chunk, which the generator's output depends on).
fn expected_sha256(seed: u64, len: u64) -> String {
    let mut source = RandomStream::new(seed, len);
    while !source.next_piece().is_empty() {}
    source.sha256()
}

/// Opens a stream to `addr` that announces an upload and then sends nothing: an idle
/// stream. Returns the connected socket for the caller to watch.
pub async fn open_idle(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut header = [0u8; HEADER_LEN];
    header[9..].copy_from_slice(&(1u64 << 20).to_be_bytes());
    s.write_all(&header).await?;
    Ok(s)
}
