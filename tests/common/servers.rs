//! Small TCP servers with known behaviour, used as service targets. Each runs on the
//! caller's tokio runtime and stops accepting when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::data::{hex, Digest, XorShift};

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Accepts connections forever, handing each to `handle` on its own task.
fn serve<F, Fut>(listener: TcpListener, handle: F) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    })
}

/// Echoes every byte back; after the client's EOF it finishes echoing, then shuts down
/// its write side (half-close aware).
pub struct EchoServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> Self {
        let (listener, addr) = bind().await;
        let task = serve(listener, |stream| async move {
            let (mut rd, mut wr) = stream.into_split();
            if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        });
        Self { addr, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a `SinkServer` received on one connection.
#[derive(Clone, Debug)]
pub struct SinkResult {
    /// Length and SHA-256 of the bytes received.
    pub digest: Digest,
    /// Whether the connection ended with a clean EOF (not a reset or read error).
    pub clean_eof: bool,
}

/// Reads everything and reports, per connection, how many bytes arrived and their
/// SHA-256.
pub struct SinkServer {
    addr: SocketAddr,
    results: mpsc::UnboundedReceiver<SinkResult>,
    task: JoinHandle<()>,
}

impl SinkServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> Self {
        let (listener, addr) = bind().await;
        let (tx, results) = mpsc::unbounded_channel();
        let task = serve(listener, move |mut stream| {
            let tx = tx.clone();
            async move {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut buf = vec![0u8; 256 * 1024];
                let mut bytes = 0u64;
                let clean_eof = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break true,
                        Ok(n) => {
                            ctx.update(&buf[..n]);
                            bytes += n as u64;
                        }
                        Err(_) => break false,
                    }
                };
                let digest = Digest {
                    bytes,
                    sha256: hex(ctx.finish().as_ref()),
                };
                let _ = tx.send(SinkResult { digest, clean_eof });
            }
        });
        Self {
            addr,
            results,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The result of the next connection to end; panics after `timeout`.
    pub async fn next_result(&mut self, timeout: Duration) -> SinkResult {
        super::within(timeout, "a sink connection to end", self.results.recv())
            .await
            .expect("sink server stopped")
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts connections and bytes received (and discards the bytes): for asserting that
/// nothing reached a target.
pub struct CountingServer {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CountingServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> Self {
        let (listener, addr) = bind().await;
        let bytes = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (b, c) = (bytes.clone(), connections.clone());
        let task = serve(listener, move |mut stream| {
            c.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    b.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        });
        Self {
            addr,
            bytes,
            connections,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes received so far, over all connections.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until EOF, then writes a fixed reply and closes: proves that a half-closed
/// stream still carries data the other way.
pub struct ReplyServer {
    addr: SocketAddr,
    reply: Arc<Vec<u8>>,
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl ReplyServer {
    /// Binds 127.0.0.1 on a free port; every connection gets `reply_len` pseudo-random
    /// bytes after it half-closes.
    pub async fn start(reply_len: usize) -> Self {
        let (listener, addr) = bind().await;
        let reply = Arc::new(XorShift::new(0x5EED).bytes(reply_len));
        let received = Arc::new(AtomicU64::new(0));
        let (r, rx) = (reply.clone(), received.clone());
        let task = serve(listener, move |mut stream| {
            let (r, rx) = (r.clone(), rx.clone());
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            rx.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        Err(_) => return,
                    }
                }
                if stream.write_all(&r).await.is_ok() {
                    let _ = stream.shutdown().await;
                }
            }
        });
        Self {
            addr,
            reply,
            received,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The reply every connection gets.
    pub fn reply(&self) -> &[u8] {
        &self.reply
    }

    /// Request bytes received so far, over all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
