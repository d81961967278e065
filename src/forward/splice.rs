//! Copies bytes both ways between a local TCP socket and a stream, within the stream's
//! credit. A half-close travels as FIN in either direction; any abort (peer reset, refused
//! open, link lost, local error) resets the local socket, so a client never mistakes a cut
//! stream for a complete one.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::admin::ByteCounters;
use crate::link::{Cmd, StreamEvent, StreamHandle};
use crate::proto::frame::{ResetCode, HEADER_LEN};
use crate::proto::handshake::MAX_RECORD_PLAINTEXT;

/// Largest read from a local socket: one DATA frame filling one record.
const CHUNK: usize = MAX_RECORD_PLAINTEXT - HEADER_LEN;

/// How a spliced stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions finished cleanly.
    Clean {
        /// Bytes from the local socket to the peer.
        sent: u64,
        /// Bytes from the peer to the local socket.
        received: u64,
    },
    /// The stream was aborted; the local socket was reset.
    Aborted {
        /// Why.
        why: String,
    },
}

enum Abort {
    /// The peer ended the stream; nothing to tell it.
    Remote(String),
    /// A local failure; the peer must hear a reset.
    Local(String),
}

/// Runs the stream until both directions end or it is aborted. `counters` see every chunk
/// as it moves, so the byte metrics follow a long transfer while it runs.
pub async fn splice(
    socket: TcpStream,
    handle: StreamHandle,
    counters: Option<&ByteCounters>,
) -> SpliceEnd {
    let StreamHandle {
        id,
        mut events,
        credit,
        cmds,
    } = handle;
    let (mut rd, mut wr) = socket.into_split();
    let mut sent = 0u64;
    let mut received = 0u64;

    let up = async {
        loop {
            // Read only what the peer has room for, so nothing waits here unsent.
            let first = credit
                .acquire()
                .await
                .map_err(|_| Abort::Remote("link lost".into()))?;
            first.forget();
            let room = (credit.available_permits() + 1).min(CHUNK);
            let data = std::future::poll_fn(|cx| poll_read_chunk(&mut rd, cx, room))
                .await
                .map_err(|e| Abort::Local(format!("local read: {e}")))?;
            let n = data.len();
            if n == 0 {
                credit.add_permits(1);
                cmds.send(Cmd::Fin { stream: id })
                    .await
                    .map_err(|_| Abort::Remote("link lost".into()))?;
                return Ok(());
            }
            if n > 1 {
                match credit.try_acquire_many((n - 1) as u32) {
                    Ok(p) => p.forget(),
                    Err(_) => return Err(Abort::Remote("link lost".into())),
                }
            }
            sent += n as u64;
            if let Some(c) = counters {
                c.sent(n as u64);
            }
            cmds.send(Cmd::Data { stream: id, data })
                .await
                .map_err(|_| Abort::Remote("link lost".into()))?;
        }
    };

    let down = async {
        loop {
            match events.recv().await {
                Some(StreamEvent::Data(data)) => {
                    if let Err(e) = wr.write_all(&data).await {
                        return Err(Abort::Local(format!("local write: {e}")));
                    }
                    received += data.len() as u64;
                    if let Some(c) = counters {
                        c.received(data.len() as u64);
                    }
                    let _ = cmds
                        .send(Cmd::Consumed {
                            stream: id,
                            n: data.len(),
                        })
                        .await;
                }
                Some(StreamEvent::OpenOk) => {}
                Some(StreamEvent::Fin) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Some(StreamEvent::OpenErr(code)) => {
                    return Err(Abort::Remote(format!("open refused: {code:?}")))
                }
                Some(StreamEvent::Reset(code)) => {
                    return Err(Abort::Remote(format!("reset by peer: {code:?}")))
                }
                None => return Err(Abort::Remote("link lost".into())),
            }
        }
    };

    let result = tokio::try_join!(up, down);
    match result {
        Ok(((), ())) => SpliceEnd::Clean { sent, received },
        Err(abort) => {
            let why = match abort {
                Abort::Remote(why) => why,
                Abort::Local(why) => {
                    let _ = cmds
                        .send(Cmd::Reset {
                            stream: id,
                            code: ResetCode::Cancelled,
                        })
                        .await;
                    why
                }
            };
            if let Ok(socket) = rd.reunite(wr) {
                reset_socket(socket);
            }
            SpliceEnd::Aborted { why }
        }
    }
}

thread_local! {
    /// One read buffer per runtime thread instead of one per connection: an idle
    /// forwarded connection then holds no buffer at all.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0u8; CHUNK]);
}

/// Reads at most `room` bytes from `rd` into a new buffer of exactly the size read. `Ok`
/// of an empty buffer is end of stream. Goes through `AsyncRead::poll_read`, not
/// `try_read`: on a short read tokio then knows the socket is drained (edge-triggered
/// epoll) and the next read waits for readiness instead of costing a `recvfrom` that
/// returns EAGAIN — one system call less per request on each daemon.
fn poll_read_chunk(
    rd: &mut OwnedReadHalf,
    cx: &mut Context<'_>,
    room: usize,
) -> Poll<std::io::Result<Bytes>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..room]);
        ready!(Pin::new(rd).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
    })
}

/// Drops a socket with SO_LINGER 0, so the other end sees a TCP reset, not a clean end.
pub(crate) fn reset_socket(socket: TcpStream) {
    let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    drop(socket);
}
