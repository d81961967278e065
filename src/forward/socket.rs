//! The local socket side of a stream: reads that land where a record can be sealed
//! around them, batched writes, and the reset that tells a client a stream was cut.
//!
//! One read takes up to four Noise records' worth from the local socket (a bulk sender's,
//! as one `readv` with one segment per record), and chunks the link delivered while the
//! socket was busy go out in one `writev`. Every large read lands between the room a
//! record needs around it, so on Noise links (and tls links with large records) each
//! segment becomes its record where it lies ([`crate::proto::chunk`]): a bulk transfer's
//! bytes are copied only by the kernel.

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::proto::chunk::{Chunk, HEAD_ROOM, TAIL_ROOM};

/// Reads shorter than this are copied out of the shared read buffer (a request, a reply);
/// longer ones are split off it, with the room around them, and handed on as they lie.
const COPY_BELOW: usize = 4096;
/// Chunks written to the local socket with one `writev`.
pub(crate) const WRITE_BATCH: usize = 16;

/// Writes every chunk of `batch` to `wr`, with as few `writev` calls as the socket takes,
/// and leaves `batch` empty.
pub(crate) async fn write_all_chunks(
    wr: &mut OwnedWriteHalf,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()> {
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
pub(crate) fn poll_read_chunks(
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

/// Waits for an error on `socket` (a reset from its peer) and returns it. Only error
/// readiness is watched, so a socket at end of stream does not wake this.
pub(crate) async fn socket_error(socket: &TcpStream) -> std::io::Error {
    match socket.ready(Interest::ERROR).await {
        Ok(_) => match socket.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => std::io::ErrorKind::ConnectionReset.into(),
        },
        Err(e) => e,
    }
}

/// Drops a socket with SO_LINGER 0, so the other end sees a TCP reset, not a clean end.
pub(crate) fn reset_socket(socket: TcpStream) {
    let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    drop(socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
