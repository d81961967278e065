//! Copies bytes both ways between a local TCP socket and a stream, within the stream's
//! credit. A half-close travels as FIN in either direction; any abort (peer reset, refused
//! open, link lost, local error) resets the local socket, so a client never mistakes a cut
//! stream for a complete one.
//!
//! Both directions move data in as few system calls as the data allows: one read takes up
//! to four records' worth from the local socket (handed on without a copy when it is
//! large), and the chunks the link delivered while the socket was busy go out in one
//! `writev`.

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::admin::ByteCounters;
use crate::link::{Cmd, StreamEvent, StreamHandle};
use crate::proto::frame::{ResetCode, HEADER_LEN};
use crate::proto::handshake::MAX_RECORD_PLAINTEXT;

/// Largest read from a local socket: four records' worth of DATA. A bulk sender fills it,
/// so one `recvfrom` feeds four records instead of one.
const READ_MAX: usize = 4 * (MAX_RECORD_PLAINTEXT - HEADER_LEN);
/// Reads shorter than this are copied out of the shared read buffer (a request, a reply);
/// longer ones are split off it and handed on as they lie.
const COPY_BELOW: usize = 4096;
/// Chunks written to the local socket with one `writev`.
const WRITE_BATCH: usize = 16;

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
            let room = (credit.available_permits() + 1).min(READ_MAX);
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
        // Chunks taken from the channel and not yet written; reused for every batch.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut next: Option<StreamEvent> = None;
        loop {
            let event = match next.take() {
                Some(event) => Some(event),
                None => events.recv().await,
            };
            match event {
                Some(StreamEvent::Data(data)) => {
                    // Whatever else the link delivered meanwhile goes out in the same write.
                    let mut n = data.len();
                    batch.push(data);
                    while batch.len() < WRITE_BATCH {
                        match events.try_recv() {
                            Ok(StreamEvent::Data(more)) => {
                                n += more.len();
                                batch.push(more);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = write_all_chunks(&mut wr, &mut batch).await {
                        return Err(Abort::Local(format!("local write: {e}")));
                    }
                    received += n as u64;
                    if let Some(c) = counters {
                        c.received(n as u64);
                    }
                    let _ = cmds.send(Cmd::Consumed { stream: id, n }).await;
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

/// Writes every chunk of `batch` to `wr`, with as few `writev` calls as the socket takes,
/// and leaves `batch` empty.
async fn write_all_chunks(wr: &mut OwnedWriteHalf, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let written = {
            let slices: [IoSlice<'_>; WRITE_BATCH] =
                std::array::from_fn(|i| IoSlice::new(batch.get(first + i).map_or(&[], |b| b)));
            let count = (batch.len() - first).min(WRITE_BATCH);
            wr.write_vectored(&slices[..count]).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let chunk = &mut batch[first];
            let n = chunk.len().min(left);
            chunk.advance(n);
            left -= n;
            if chunk.is_empty() {
                first += 1;
            }
        }
    }
    batch.clear();
    Ok(())
}

thread_local! {
    /// One read buffer per runtime thread instead of one per connection: an idle
    /// forwarded connection then holds no buffer at all. Large reads are split off it
    /// (the stream's data keeps that part alive until the link has sealed it); the
    /// buffer's allocation is reused once every such part is gone.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Reads at most `room` bytes from `rd`. `Ok` of an empty buffer is end of stream. Goes
/// through `AsyncRead::poll_read` (not `try_read`): on a short read tokio then knows the
/// socket is drained (edge-triggered epoll) and the next read waits for readiness instead
/// of costing a `recvfrom` that returns EAGAIN — one system call less per request on each
/// daemon.
fn poll_read_chunk(
    rd: &mut OwnedReadHalf,
    cx: &mut Context<'_>,
    room: usize,
) -> Poll<std::io::Result<Bytes>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.capacity() - scratch.len() < room {
            scratch.reserve(READ_MAX);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(rd),
            cx,
            &mut (&mut *scratch).limit(room)
        ))?;
        let data = if n < COPY_BELOW {
            let data = Bytes::copy_from_slice(&scratch[..n]);
            scratch.clear();
            data
        } else {
            scratch.split().freeze()
        };
        Poll::Ready(Ok(data))
    })
}

/// Drops a socket with SO_LINGER 0, so the other end sees a TCP reset, not a clean end.
pub(crate) fn reset_socket(socket: TcpStream) {
    let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    drop(socket);
}
