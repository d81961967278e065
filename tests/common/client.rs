//! Client-side probes: an exact echo round trip, and "the other side closed this
//! connection" with a deadline.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to `addr`, writes `payload`, reads the same number of bytes back and checks
/// them; all within `timeout`.
pub async fn echo_exact(addr: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<()> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(payload).await?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).await?;
        if back != payload {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
        }
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// connect itself failed (nothing listening).
    Refused,
    /// Clean EOF.
    Eof,
    /// Reset or another read/write error.
    Error(io::ErrorKind),
}

/// Reads from `stream` until it is closed by the other side, discarding nothing
/// silently: panics if any byte arrives or the deadline passes.
pub async fn expect_closed(stream: &mut TcpStream, timeout: Duration, what: &str) -> Closed {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
        Err(_) => panic!("{what}: still open after {timeout:?}"),
        Ok(Ok(0)) => Closed::Eof,
        Ok(Ok(n)) => panic!("{what}: received {n} unexpected bytes"),
        Ok(Err(e)) => Closed::Error(e.kind()),
    }
}

/// Connects to `addr`, writes `probe` and expects the connection to be closed or reset
/// (or refused) within `timeout`, with no byte received.
pub async fn expect_rejected(
    addr: SocketAddr,
    probe: &[u8],
    timeout: Duration,
    what: &str,
) -> Closed {
    let mut s = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => panic!("{what}: connect timed out after {timeout:?}"),
        Ok(Err(_)) => return Closed::Refused,
        Ok(Ok(s)) => s,
    };
    if let Err(e) = s.write_all(probe).await {
        return Closed::Error(e.kind());
    }
    expect_closed(&mut s, timeout, what).await
}
