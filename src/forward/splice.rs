//! Copies bytes both ways between a local TCP socket and a stream, within the stream's
//! credit. A half-close travels as FIN in either direction; any abort (peer reset, refused
//! open, link lost, local error) resets the local socket, so a client never mistakes a cut
//! stream for a complete one.
//!
//! Both directions move data in as few system calls as the data allows: one read takes up
//! to four Noise records' worth from the local socket (a bulk sender's, as one `readv` with
//! one segment per record), and the chunks the link delivered while the socket was busy go
//! out in one `writev`. Every large read lands between the room a record needs around it,
//! so on Noise links (and tls links with large records) each segment becomes its record
//! where it lies ([`crate::proto::chunk`]): a bulk transfer's bytes are copied only by the
//! kernel.

use std::cell::RefCell;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::admin::ByteCounters;
use crate::link::{Cmd, StreamEvent, StreamHandle, BULK_READ};
use crate::proto::chunk::{Chunk, HEAD_ROOM, TAIL_ROOM};
use crate::proto::frame::ResetCode;

/// Reads shorter than this are copied out of the shared read buffer (a request, a reply);
/// longer ones are split off it, with the room around them, and handed on as they lie.
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
        read_segment,
        report_every,
    } = handle;
    let (mut rd, mut wr) = socket.into_split();
    let mut sent = 0u64;
    let mut received = 0u64;

    // The two directions, pinned where they are made (the join holds references, not
    // second copies), in a block that ends their borrows of the socket and counters.
    let result = {
        let up = std::pin::pin!(async {
            // Chunks of the last read; a bulk read yields one per record.
            let mut chunks: Vec<Chunk> = Vec::new();
            // Whether the last read filled all the room it had: then the next one is vectored.
            let mut bulk = false;
            loop {
                // Read only what the peer has room for, so nothing waits here unsent.
                let first = credit
                    .acquire()
                    .await
                    .map_err(|_| Abort::Remote("link lost".into()))?;
                first.forget();
                let room = (credit.available_permits() + 1).min(BULK_READ);
                let (n, filled) = std::future::poll_fn(|cx| {
                    poll_read_chunks(&mut rd, cx, room, read_segment, bulk, &mut chunks)
                })
                .await
                .map_err(|e| Abort::Local(format!("local read: {e}")))?;
                bulk = filled;
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
                // The link driver sends these bytes next: the busy poller must not give the
                // CPU away before it has.
                crate::busy_poll::touch();
                for data in chunks.drain(..) {
                    cmds.send(Cmd::Data { stream: id, data })
                        .await
                        .map_err(|_| Abort::Remote("link lost".into()))?;
                }
            }
        });

        let down = std::pin::pin!(async {
            // Chunks taken from the channel and not yet written; reused for every batch.
            let mut batch: Vec<Bytes> = Vec::new();
            let mut next: Option<StreamEvent> = None;
            // Written to the local socket, not yet reported as consumed (StreamHandle::consumed).
            let mut unreported = 0usize;
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
                        unreported += n;
                        if unreported >= report_every {
                            let n = std::mem::take(&mut unreported);
                            let _ = cmds.send(Cmd::Consumed { stream: id, n }).await;
                        }
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
        });

        try_join_woken(up, down).await
    };
    match result {
        Ok(()) => SpliceEnd::Clean { sent, received },
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

/// `tokio::try_join!` for a stream's two directions, except that each is polled only after
/// its own waker fired: a small message one way then costs no poll of the other way (its
/// socket readiness, its credit, its channel) on each wake-up of the stream's task. It
/// takes the halves pinned by the caller: taken by value, they were held twice in the
/// stream task (the arguments and their pinned copies), 1 KiB more per stream and end.
async fn try_join_woken<E>(
    mut a: Pin<&mut impl Future<Output = Result<(), E>>>,
    mut b: Pin<&mut impl Future<Output = Result<(), E>>>,
) -> Result<(), E> {
    let flags = [Arc::new(HalfWaker::new()), Arc::new(HalfWaker::new())];
    let wakers = [Waker::from(flags[0].clone()), Waker::from(flags[1].clone())];
    let mut done = [false, false];
    std::future::poll_fn(move |cx| {
        for (i, half) in [
            a.as_mut() as Pin<&mut dyn Future<Output = Result<(), E>>>,
            b.as_mut(),
        ]
        .into_iter()
        .enumerate()
        {
            flags[i].set_parent(cx.waker());
            if done[i] || !flags[i].take() {
                continue;
            }
            match half.poll(&mut Context::from_waker(&wakers[i])) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => done[i] = true,
                Poll::Pending => {}
            }
        }
        if done == [true, true] {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The waker of one half of [`try_join_woken`]: marks that half for polling, then wakes
/// the task.
struct HalfWaker {
    woken: AtomicBool,
    parent: Mutex<Option<Waker>>,
}

impl HalfWaker {
    fn new() -> Self {
        Self {
            // Polled once before anything woke it.
            woken: AtomicBool::new(true),
            parent: Mutex::new(None),
        }
    }

    /// Whether the half was woken since the last call.
    fn take(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }

    fn set_parent(&self, waker: &Waker) {
        let mut parent = self.parent.lock().unwrap_or_else(PoisonError::into_inner);
        if !parent.as_ref().is_some_and(|p| p.will_wake(waker)) {
            *parent = Some(waker.clone());
        }
    }
}

impl Wake for HalfWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked before the task is woken, so the poll it leads to sees the mark.
        self.woken.store(true, Ordering::Release);
        let parent = self.parent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = parent.as_ref() {
            waker.wake_by_ref();
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

/// Reads at most `room` bytes from `rd` into `out`; returns how many (0: end of stream) and
/// whether the read filled all the space it offered.
///
/// A read lands in the shared buffer between the room a record needs around it. After a
/// read that filled its room (`bulk`), the next one is one `readv` into several such
/// segments of `read_segment` bytes each, so a bulk transfer still moves `BULK_READ` bytes
/// per system call and each segment becomes one record where it lies. Otherwise it is one
/// plain read of at most one segment through `AsyncRead::poll_read` (not `try_read`): on a
/// short read tokio then knows the socket is drained (edge-triggered epoll) and the next
/// read waits for readiness instead of costing a `recvfrom` that returns EAGAIN — one
/// system call less per request on each daemon. Reads shorter than [`COPY_BELOW`] are
/// copied out (a request, a reply) so the shared buffer is reused at once.
fn poll_read_chunks(
    rd: &mut OwnedReadHalf,
    cx: &mut Context<'_>,
    room: usize,
    read_segment: usize,
    bulk: bool,
    out: &mut Vec<Chunk>,
) -> Poll<std::io::Result<(usize, bool)>> {
    let segment = read_segment.max(COPY_BELOW);
    let room = room.min(segment * MAX_SEGMENTS);
    if bulk && room > segment {
        let n = ready!(poll_read_segments(rd, cx, room, segment, out))?;
        return Poll::Ready(Ok((n, n == room)));
    }
    let room = room.min(segment);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        // The buffer is empty between reads; the room for headers comes first.
        let need = HEAD_ROOM + room + TAIL_ROOM;
        if scratch.capacity() < need {
            scratch.reserve(need.max(SCRATCH_MIN));
        }
        scratch.put_bytes(0, HEAD_ROOM);
        let read =
            tokio_util::io::poll_read_buf(Pin::new(rd), cx, &mut (&mut *scratch).limit(room));
        let n = match read {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => {
                scratch.clear();
                return Poll::Ready(Err(e));
            }
            Poll::Pending => {
                scratch.clear();
                return Poll::Pending;
            }
        };
        if n == 0 {
            scratch.clear();
        } else if n < COPY_BELOW {
            out.push(Chunk::Shared(Bytes::copy_from_slice(&scratch[HEAD_ROOM..])));
            scratch.clear();
        } else {
            scratch.put_bytes(0, TAIL_ROOM);
            out.push(Chunk::framed(scratch.split()));
        }
        Poll::Ready(Ok((n, n == room)))
    })
}

/// The vectored read of [`poll_read_chunks`]: up to `room` bytes in segments of `segment`
/// bytes, each with its own rooms, each pushed to `out` as a chunk.
fn poll_read_segments(
    rd: &mut OwnedReadHalf,
    cx: &mut Context<'_>,
    room: usize,
    segment: usize,
    out: &mut Vec<Chunk>,
) -> Poll<std::io::Result<usize>> {
    let stream: &TcpStream = rd.as_ref();
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let stride = HEAD_ROOM + segment + TAIL_ROOM;
        let need = room.div_ceil(segment) * stride;
        if scratch.capacity() < need {
            scratch.reserve(need.max(SCRATCH_MIN));
        }
        let n = loop {
            if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            match stream.try_io(Interest::READABLE, || {
                read_segments(stream, &mut scratch, room, segment)
            }) {
                Ok(n) => break n,
                // Readiness is cleared: poll again, which registers for the next wake-up.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        // `scratch` now holds the segments read, each `room ‖ data ‖ room`.
        let mut left = n;
        while left > 0 {
            let len = left.min(segment);
            let piece = scratch.split_to(HEAD_ROOM + len + TAIL_ROOM);
            out.push(Chunk::framed(piece));
            left -= len;
        }
        scratch.clear();
        Poll::Ready(Ok(n))
    })
}

/// One `readv` into the spare capacity of `buf` (which must be empty and hold at least
/// `room.div_ceil(segment)` strides of `HEAD_ROOM + segment + TAIL_ROOM`): segment `i`
/// receives at most `segment` bytes at stride `i` after its head room. On success the
/// buffer's length covers exactly the segments that got data, each followed directly by
/// its tail room (the last one may be short), and the bytes read are returned.
#[allow(unsafe_code)]
fn read_segments(
    stream: &TcpStream,
    buf: &mut BytesMut,
    room: usize,
    segment: usize,
) -> std::io::Result<usize> {
    use socket2::MaybeUninitSlice;
    let stride = HEAD_ROOM + segment + TAIL_ROOM;
    let count = room.div_ceil(segment).min(MAX_SEGMENTS);
    if !buf.is_empty() || buf.capacity() < count * stride {
        return Err(std::io::Error::other("read buffer not prepared"));
    }
    let n = {
        let spare = buf.spare_capacity_mut();
        let mut slices: [MaybeUninitSlice<'_>; MAX_SEGMENTS] =
            std::array::from_fn(|_| MaybeUninitSlice::new(&mut []));
        let mut rest = &mut spare[..count * stride];
        for (i, slot) in slices.iter_mut().take(count).enumerate() {
            let (this, tail) = rest.split_at_mut(stride);
            rest = tail;
            let len = segment.min(room - i * segment);
            *slot = MaybeUninitSlice::new(&mut this[HEAD_ROOM..HEAD_ROOM + len]);
        }
        socket2::SockRef::from(stream)
            .recv_vectored(&mut slices[..count])?
            .0
    };
    // Fill in the rooms around the bytes read, so every byte up to the new length is
    // written before it becomes part of the buffer.
    let spare = buf.spare_capacity_mut();
    let mut end = 0;
    let mut left = n;
    while left > 0 {
        let len = left.min(segment);
        for b in &mut spare[end..end + HEAD_ROOM] {
            b.write(0);
        }
        let tail = end + HEAD_ROOM + len;
        for b in &mut spare[tail..tail + TAIL_ROOM] {
            b.write(0);
        }
        end = tail + TAIL_ROOM;
        left -= len;
    }
    // SAFETY: `buf` was empty, so its first `end` spare bytes are the ones made part of it
    // here, and `end <= count * stride <= capacity`. Each of them is initialized: for every
    // segment that got data, its head and tail rooms were written just above, and the
    // `len` bytes between them were written by the kernel — `recv_vectored` returned `n`,
    // which fills the segments in order (each whole before the next), exactly as the loop
    // above walks them. No byte past `end` is exposed.
    unsafe { buf.set_len(end) };
    Ok(n)
}

/// Segments (records) one vectored read fills at most.
const MAX_SEGMENTS: usize = 16;
/// Smallest reservation of the shared read buffer: several bulk reads fit one allocation.
const SCRATCH_MIN: usize = 512 * 1024;

/// Drops a socket with SO_LINGER 0, so the other end sees a TCP reset, not a clean end.
pub(crate) fn reset_socket(socket: TcpStream) {
    let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    drop(socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    /// A half that counts its polls and ends after `n` messages, or at the first error sent.
    async fn half(
        polls: &Cell<u32>,
        rx: &mut mpsc::UnboundedReceiver<Result<(), &'static str>>,
        n: usize,
    ) -> Result<(), &'static str> {
        for _ in 0..n {
            let msg = std::future::poll_fn(|cx| {
                polls.set(polls.get() + 1);
                rx.poll_recv(cx)
            })
            .await;
            msg.expect("sender alive")?;
        }
        Ok(())
    }

    /// Each half is polled only when its own waker fired; both must end for the join to
    /// end, and an error from either ends it at once.
    #[tokio::test]
    async fn the_woken_join_polls_only_the_woken_half() {
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        let (a_polls, b_polls) = (Cell::new(0), Cell::new(0));
        let a = std::pin::pin!(half(&a_polls, &mut a_rx, 3));
        let b = std::pin::pin!(half(&b_polls, &mut b_rx, 1));
        let join = try_join_woken(a, b);
        let mut join = std::pin::pin!(join);
        // Polls the join once, without waiting.
        macro_rules! poll {
            () => {
                std::future::poll_fn(|cx| Poll::Ready(join.as_mut().poll(cx))).await
            };
        }
        assert!(poll!().is_pending());
        assert_eq!(
            (a_polls.get(), b_polls.get()),
            (1, 1),
            "both polled once at first"
        );
        for i in 0..3 {
            a_tx.send(Ok(())).expect("send");
            assert!(poll!().is_pending(), "b has not ended");
            assert_eq!(b_polls.get(), 1, "message {i} to a polled b");
        }
        b_tx.send(Ok(())).expect("send");
        assert_eq!(poll!(), Poll::Ready(Ok(())));
        // a's channel: pending at first, then each message read and the next one pending,
        // but for the last.
        assert_eq!(a_polls.get(), 6);

        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (_b_tx, mut b_rx) = mpsc::unbounded_channel();
        let (a_polls, b_polls) = (Cell::new(0), Cell::new(0));
        let a = std::pin::pin!(half(&a_polls, &mut a_rx, 5));
        let b = std::pin::pin!(half(&b_polls, &mut b_rx, 5));
        let join = try_join_woken(a, b);
        a_tx.send(Err("cut")).expect("send");
        assert_eq!(
            join.await,
            Err("cut"),
            "an error ends the join though b is pending"
        );
    }

    /// A bulk read fills several segments with one `readv`; each comes out as a chunk with
    /// its own rooms, and together they are exactly the bytes sent, in order; a plain read
    /// follows a short one, and end of stream reads as 0.
    #[tokio::test]
    async fn vectored_reads_split_into_roomy_segments_without_loss() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let payload = sent.clone();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(&payload).await.expect("write");
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let (mut rd, _wr) = socket.into_split();

        let segment = 50_000;
        let mut got = Vec::new();
        let mut chunks = Vec::new();
        let mut bulk = false;
        let mut vectored = 0;
        loop {
            let room = 180_000;
            let (n, filled) = std::future::poll_fn(|cx| {
                poll_read_chunks(&mut rd, cx, room, segment, bulk, &mut chunks)
            })
            .await
            .expect("read");
            if n == 0 {
                assert!(chunks.is_empty());
                break;
            }
            if bulk && chunks.len() > 1 {
                vectored += 1;
            }
            let mut total = 0;
            for c in chunks.drain(..) {
                total += c.len();
                assert!(c.len() <= segment);
                if c.len() >= COPY_BELOW {
                    assert!(
                        matches!(c, Chunk::Roomy(_)),
                        "a large read lies in its room"
                    );
                }
                got.extend_from_slice(c.as_slice());
            }
            assert_eq!(total, n);
            bulk = filled;
        }
        writer.await.expect("writer");
        assert!(vectored > 0, "no vectored read happened");
        assert!(got == sent, "{} bytes read, {} sent", got.len(), sent.len());
    }
}
