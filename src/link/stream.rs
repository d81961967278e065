//! One stream's local side. A [`Stream`] is what an entrance or an exit holds; the link's
//! driver keeps the matching [`Slot`] in the multiplexer's stream table, next to the
//! stream's protocol state. Both point at one [`Shared`] record: the bytes received and not
//! yet written to the local socket, the send credit lent to the local reader, and how the
//! stream ended. A stream ends in exactly one place, [`Slot::end`] — peer reset, refusal,
//! clean close or a lost link (a dropped slot) — which wakes both directions at once.
//!
//! Received data is held within the stream's window: the peer may not send beyond its
//! credit, small frames are copied into shared buffers (one allocation for many frames),
//! and large frames stay where the link read them only while the read buffers they pin add
//! up to no more than the window (or are a single one); beyond that they are copied too.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::Cmd;
use crate::proto::chunk::Chunk;
use crate::proto::frame::{OpenError, ResetCode, StreamId};

/// Frames shorter than this are copied into the stream's tail buffer.
const COPY_BELOW: usize = 2048;
/// Size of each tail buffer that small frames are gathered in.
const TAIL_CHUNK: usize = 32 * 1024;

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides sent FIN and everything was delivered.
    Closed,
    /// The peer reset the stream.
    Reset(ResetCode),
    /// The peer refused to open it.
    Refused(OpenError),
    /// The link died with the stream open.
    LinkLost,
    /// This side reset it.
    LocalReset,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Reset(code) => write!(f, "reset by peer: {code:?}"),
            End::Refused(code) => write!(f, "open refused: {code:?}"),
            End::LinkLost => f.write_str("link lost"),
            End::LocalReset => f.write_str("reset locally"),
        }
    }
}

/// What [`Stream::poll_recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes were appended to the caller's batch.
    Data(usize),
    /// The peer half-closed: nothing more will come. The stream is not over until
    /// [`Stream::poll_end`] says so.
    Fin,
    /// The stream ended before the peer's FIN.
    Ended(End),
}

/// A received chunk and the read-buffer generation it pins, if it was not copied.
struct Inbound {
    data: Bytes,
    pin: Option<u64>,
}

/// A run of consecutive inbound chunks that pin one read buffer.
struct Pin {
    generation: u64,
    alloc: usize,
    chunks: usize,
}

#[derive(Default)]
struct State {
    inbound: VecDeque<Inbound>,
    /// Small frames gathered after `inbound` (in order after it).
    tail: BytesMut,
    /// Received bytes held (in `inbound` and `tail`).
    held: usize,
    /// Read buffers pinned by `inbound`, oldest first; `pinned` is the sum of their sizes.
    pins: VecDeque<Pin>,
    pinned: usize,
    /// The peer's FIN arrived (after every byte in `inbound`).
    fin: bool,
    /// `Recv::Fin` was returned.
    fin_seen: bool,
    end: Option<End>,
    /// Send credit lent to the local reader.
    credit: u64,
    /// The local side gave the stream up without a word (see [`Stream`]'s `Drop`).
    abandoned: bool,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

impl State {
    fn wake_all(&mut self) -> [Option<Waker>; 2] {
        [self.rx_waker.take(), self.tx_waker.take()]
    }

    fn flush_tail(&mut self) {
        if !self.tail.is_empty() {
            let data = std::mem::take(&mut self.tail).freeze();
            self.inbound.push_back(Inbound { data, pin: None });
        }
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        let chunk = match self.inbound.pop_front() {
            Some(c) => c,
            None if !self.tail.is_empty() => Inbound {
                data: std::mem::take(&mut self.tail).freeze(),
                pin: None,
            },
            None => return None,
        };
        if let Some(generation) = chunk.pin {
            if let Some(front) = self.pins.front_mut() {
                debug_assert_eq!(front.generation, generation);
                front.chunks -= 1;
                if front.chunks == 0 {
                    self.pinned -= front.alloc;
                    self.pins.pop_front();
                }
            }
        }
        self.held -= chunk.data.len();
        Some(chunk.data)
    }

    fn clear_inbound(&mut self) {
        self.inbound.clear();
        self.tail = BytesMut::new();
        self.pins.clear();
        self.pinned = 0;
        self.held = 0;
    }
}

/// The state a stream's two sides share.
pub(crate) struct Shared {
    id: StreamId,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn wake(wakers: [Option<Waker>; 2]) {
    for w in wakers.into_iter().flatten() {
        w.wake();
    }
}

/// Where a DATA payload lies: in which read buffer (its generation and size).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadBuf {
    pub generation: u64,
    pub alloc: usize,
}

/// The driver's side of a stream, kept in the mux's table. Dropping it (the link ended,
/// the stream was forgotten) ends the stream as [`End::LinkLost`] unless it ended before.
pub(crate) struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    /// Hands received bytes to the local side. `window` is the stream's receive window:
    /// `data` stays in the read buffer only while the buffers pinned so far stay within it.
    /// Returns false if the local side gave the stream up (the driver resets it).
    pub(crate) fn deliver(&self, data: Bytes, from: ReadBuf, window: usize) -> bool {
        let waker = {
            let mut st = self.shared.lock();
            if st.abandoned {
                return false;
            }
            if st.end.is_some() {
                return true;
            }
            st.held += data.len();
            let pinned_here = st
                .pins
                .back()
                .is_some_and(|p| p.generation == from.generation);
            if data.len() < COPY_BELOW {
                if st.tail.capacity() - st.tail.len() < data.len() {
                    st.flush_tail();
                    st.tail = BytesMut::with_capacity(TAIL_CHUNK);
                }
                st.tail.extend_from_slice(&data);
            } else if st.pins.is_empty() || pinned_here || st.pinned + from.alloc <= window {
                st.flush_tail();
                match st.pins.back_mut() {
                    Some(p) if p.generation == from.generation => p.chunks += 1,
                    _ => {
                        st.pins.push_back(Pin {
                            generation: from.generation,
                            alloc: from.alloc,
                            chunks: 1,
                        });
                        st.pinned += from.alloc;
                    }
                }
                st.inbound.push_back(Inbound {
                    data,
                    pin: Some(from.generation),
                });
            } else {
                st.flush_tail();
                st.inbound.push_back(Inbound {
                    data: Bytes::copy_from_slice(&data),
                    pin: None,
                });
            }
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The peer half-closed the stream.
    pub(crate) fn fin(&self) {
        let waker = {
            let mut st = self.shared.lock();
            st.fin = true;
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The peer granted `n` more bytes of send credit.
    pub(crate) fn credit(&self, n: u64) {
        let waker = {
            let mut st = self.shared.lock();
            st.credit += n;
            st.tx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream (the first end wins); both directions of the local side wake.
    pub(crate) fn end(&self, end: End) {
        let wakers = {
            let mut st = self.shared.lock();
            if st.end.is_some() {
                return;
            }
            st.end = Some(end);
            if end == End::Closed {
                // Closed implies the peer's FIN, which may not have been delivered: it
                // comes in the record that closed the stream.
                st.fin = true;
            } else {
                st.clear_inbound();
            }
            st.wake_all()
        };
        wake(wakers);
    }

    /// Received bytes held for the local socket and the read buffers they pin: what the
    /// stream costs in memory beyond its fixed size.
    #[cfg(test)]
    pub(crate) fn retained(&self) -> usize {
        let st = self.shared.lock();
        let copied: usize = st
            .inbound
            .iter()
            .filter(|c| c.pin.is_none())
            .map(|c| c.data.len())
            .sum();
        copied + st.tail.capacity() + st.pinned
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.end(End::LinkLost);
    }
}

/// Counts a link's live [`Stream`]s (held by entrances and exits, including those still
/// connecting a target), so an exit's work stays within `max_streams` even for streams
/// the peer has already reset.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveStreams(Arc<AtomicUsize>);

impl LiveStreams {
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One stream's local side: sends within the credit the peer granted, receives what the
/// peer sent, half-closes, resets. Dropped without reaching its end, it resets the stream.
pub struct Stream {
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    live: LiveStreams,
    read_segment: usize,
    report_every: usize,
    /// Written to the local socket, not yet reported (see [`Stream::consumed`]).
    unreported: AtomicUsize,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream").field("id", &self.id()).finish()
    }
}

/// Makes the two sides of a new stream; `credit` is its initial send credit.
pub(crate) fn pair(
    id: StreamId,
    credit: u64,
    cmds: mpsc::Sender<Cmd>,
    live: &LiveStreams,
    read_segment: usize,
    report_every: usize,
) -> (Slot, Stream) {
    let shared = Arc::new(Shared {
        id,
        state: Mutex::new(State {
            credit,
            ..State::default()
        }),
    });
    live.0.fetch_add(1, Ordering::AcqRel);
    let stream = Stream {
        shared: shared.clone(),
        cmds,
        live: live.clone(),
        read_segment,
        report_every,
        unreported: AtomicUsize::new(0),
    };
    (Slot { shared }, stream)
}

impl Stream {
    /// The stream id on its link.
    pub fn id(&self) -> StreamId {
        self.shared.id
    }

    /// The size of the pieces the local socket is read in: on Noise links (and tls links
    /// with large records) the DATA one record carries, so each piece becomes a record
    /// where it lies.
    pub fn read_segment(&self) -> usize {
        self.read_segment
    }

    /// Send credit available now (at least 1), or how the stream ended. Registers for a
    /// wake-up when there is none.
    pub fn poll_credit(&self, cx: &mut Context<'_>) -> Poll<Result<usize, End>> {
        let mut st = self.shared.lock();
        if let Some(end) = st.end {
            return Poll::Ready(Err(end));
        }
        if st.credit > 0 {
            return Poll::Ready(Ok(usize::try_from(st.credit).unwrap_or(usize::MAX)));
        }
        st.tx_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Sends `data`, which must fit the credit [`Stream::poll_credit`] reported; the credit
    /// is taken here.
    pub async fn send(&self, data: Chunk) -> Result<(), End> {
        {
            let mut st = self.shared.lock();
            if let Some(end) = st.end {
                return Err(end);
            }
            st.credit = st.credit.saturating_sub(data.len() as u64);
        }
        self.cmd(Cmd::Data {
            stream: self.id(),
            data,
        })
        .await
    }

    /// Half-closes the stream: the peer reads end of stream after every byte sent.
    pub async fn finish(&self) -> Result<(), End> {
        self.cmd(Cmd::Fin { stream: self.id() }).await
    }

    /// Aborts the stream; the peer's side is reset.
    pub async fn reset(&self, code: ResetCode) {
        let first = {
            let mut st = self.shared.lock();
            let first = st.end.is_none();
            if first {
                st.end = Some(End::LocalReset);
                st.clear_inbound();
            }
            first
        };
        if first {
            let _ = self
                .cmds
                .send(Cmd::Reset {
                    stream: self.id(),
                    code,
                })
                .await;
        }
    }

    /// The exit connected the target: OPEN_OK.
    pub async fn accept(&self) -> Result<(), End> {
        self.cmd(Cmd::Accept { stream: self.id() }).await
    }

    /// The exit could not serve the stream: OPEN_ERR.
    pub async fn refuse(self, code: OpenError) {
        {
            let mut st = self.shared.lock();
            if st.end.is_some() {
                return;
            }
            st.end = Some(End::Refused(code));
        }
        let _ = self
            .cmds
            .send(Cmd::Refuse {
                stream: self.id(),
                code,
            })
            .await;
    }

    /// Moves up to `max` received chunks into `batch`, or reports the peer's FIN or the
    /// stream's end. Registers for a wake-up when there is nothing.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Bytes>,
        max: usize,
    ) -> Poll<Recv> {
        let mut st = self.shared.lock();
        if let Some(end) = st.end {
            if end != End::Closed {
                return Poll::Ready(Recv::Ended(end));
            }
        }
        let mut n = 0;
        while batch.len() < max {
            match st.pop_front() {
                Some(data) => {
                    n += data.len();
                    batch.push(data);
                }
                None => break,
            }
        }
        if n > 0 {
            return Poll::Ready(Recv::Data(n));
        }
        if st.fin && !st.fin_seen {
            st.fin_seen = true;
            return Poll::Ready(Recv::Fin);
        }
        if let Some(end) = st.end {
            return Poll::Ready(Recv::Ended(end));
        }
        st.rx_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// How the stream ends: [`End::Closed`] once both FINs crossed, or an abort. The
    /// receiving direction waits here after the peer's FIN, so a reset that follows a FIN
    /// still reaches the local socket.
    pub fn poll_end(&self, cx: &mut Context<'_>) -> Poll<End> {
        self.poll_end_on(cx, |st| &mut st.rx_waker)
    }

    /// [`Stream::poll_end`] for the sending direction once it has finished: it waits on
    /// the credit wake-up, which a finished sender no longer uses, so both directions can
    /// wait for the end at once.
    pub fn poll_end_of_sending(&self, cx: &mut Context<'_>) -> Poll<End> {
        self.poll_end_on(cx, |st| &mut st.tx_waker)
    }

    fn poll_end_on(
        &self,
        cx: &mut Context<'_>,
        waker: impl FnOnce(&mut State) -> &mut Option<Waker>,
    ) -> Poll<End> {
        let mut st = self.shared.lock();
        if let Some(end) = st.end {
            return Poll::Ready(end);
        }
        *waker(&mut st) = Some(cx.waker().clone());
        Poll::Pending
    }

    /// `n` received bytes were written to the local socket: the peer gets that much credit
    /// back, reported once a quarter of the initial window has gathered (the mux grants a
    /// WINDOW once half the window was consumed since the last grant, so this never holds
    /// a grant back, and small requests cost the driver no extra turn each).
    pub async fn consumed(&self, n: usize) {
        let unreported = self.unreported.fetch_add(n, Ordering::Relaxed) + n;
        if unreported >= self.report_every {
            let n = self.unreported.swap(0, Ordering::Relaxed);
            let _ = self
                .cmds
                .send(Cmd::Consumed {
                    stream: self.id(),
                    n,
                })
                .await;
        }
    }

    /// Marks the stream ended without a word to the driver, which ends it itself.
    pub(crate) fn disarm(&self, end: End) {
        let mut st = self.shared.lock();
        if st.end.is_none() {
            st.end = Some(end);
            st.clear_inbound();
        }
    }

    async fn cmd(&self, cmd: Cmd) -> Result<(), End> {
        if self.cmds.send(cmd).await.is_err() {
            let end = {
                let mut st = self.shared.lock();
                *st.end.get_or_insert(End::LinkLost)
            };
            return Err(end);
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.live.0.fetch_sub(1, Ordering::AcqRel);
        let mut st = self.shared.lock();
        if st.end.is_none() {
            st.end = Some(End::LocalReset);
            st.clear_inbound();
            // The driver resets the stream when it reads this command, or, if its queue is
            // full, at the next frame for the stream.
            let sent = self
                .cmds
                .try_send(Cmd::Reset {
                    stream: self.shared.id,
                    code: ResetCode::Cancelled,
                })
                .is_ok();
            st.abandoned = !sent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(credit: u64) -> (Slot, Stream, mpsc::Receiver<Cmd>) {
        let (tx, rx) = mpsc::channel(16);
        let live = LiveStreams::default();
        let (slot, stream) = pair(1, credit, tx, &live, 16 * 1024, 1024);
        (slot, stream, rx)
    }

    fn poll_recv(stream: &Stream, batch: &mut Vec<Bytes>) -> Poll<Recv> {
        let waker = Waker::noop();
        stream.poll_recv(&mut Context::from_waker(waker), batch, 64)
    }

    const GEN0: ReadBuf = ReadBuf {
        generation: 0,
        alloc: 256 * 1024,
    };

    /// Small frames are gathered into shared buffers: a hundred thousand 1-byte frames held
    /// for a stalled reader cost about their own size, not an allocation each.
    #[test]
    fn small_frames_are_gathered_and_held_within_the_window() {
        let (slot, stream, _rx) = make(0);
        let window = 256 * 1024;
        let record = Bytes::from(vec![7u8; 64 * 1024]);
        for i in 0..100_000 {
            assert!(slot.deliver(record.slice(i % 1000..i % 1000 + 1), GEN0, window));
        }
        assert!(slot.retained() <= 2 * window, "{}", slot.retained());
        assert_eq!(slot.shared.lock().pinned, 0, "no read buffer pinned");
        let mut batch = Vec::new();
        let mut got = 0;
        while let Poll::Ready(Recv::Data(n)) = poll_recv(&stream, &mut batch) {
            got += n;
        }
        assert_eq!(got, 100_000);
        assert!(batch.iter().all(|b| b.iter().all(|&x| x == 7)));
    }

    /// Large frames stay in the read buffer while the buffers they pin fit the window;
    /// beyond it they are copied, and the order of bytes is kept across all three kinds.
    #[test]
    fn large_frames_pin_read_buffers_only_within_the_window() {
        let (slot, stream, _rx) = make(0);
        let window = 512 * 1024;
        let mut sent = Vec::new();
        for generation in 0..8u64 {
            let big: Bytes = (0..40_000u32)
                .map(|i| (i as u8) ^ generation as u8)
                .collect();
            let small = Bytes::from(vec![generation as u8; 100]);
            let from = ReadBuf {
                generation,
                alloc: 256 * 1024,
            };
            assert!(slot.deliver(big.clone(), from, window));
            assert!(slot.deliver(big.clone(), from, window));
            assert!(slot.deliver(small.clone(), from, window));
            sent.extend_from_slice(&big);
            sent.extend_from_slice(&big);
            sent.extend_from_slice(&small);
        }
        let st = slot.shared.lock();
        assert_eq!(st.pinned, 2 * 256 * 1024, "two read buffers fit the window");
        drop(st);
        assert!(slot.retained() <= 2 * window, "{}", slot.retained());
        let mut batch = Vec::new();
        while let Poll::Ready(Recv::Data(_)) = poll_recv(&stream, &mut batch) {}
        let got: Vec<u8> = batch.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(got == sent, "bytes reordered or lost");
        assert_eq!(slot.shared.lock().pinned, 0);
    }

    /// A reset after the peer's FIN still ends the stream for both directions: the sending
    /// side waiting for credit and the receiving side waiting for the end wake with it.
    #[test]
    fn a_reset_after_fin_reaches_both_directions() {
        let (slot, stream, _rx) = make(0);
        slot.fin();
        let mut batch = Vec::new();
        assert_eq!(poll_recv(&stream, &mut batch), Poll::Ready(Recv::Fin));
        let cx = &mut Context::from_waker(Waker::noop());
        assert_eq!(stream.poll_end(cx), Poll::Pending);
        assert_eq!(stream.poll_credit(cx), Poll::Pending);
        slot.end(End::Reset(ResetCode::TargetError));
        assert_eq!(
            stream.poll_end(cx),
            Poll::Ready(End::Reset(ResetCode::TargetError))
        );
        assert_eq!(
            stream.poll_credit(cx),
            Poll::Ready(Err(End::Reset(ResetCode::TargetError)))
        );
    }

    /// A slot dropped by a dying link ends its stream as lost; a stream dropped by its
    /// owner asks the driver to reset it and leaves the live count.
    #[test]
    fn dropping_either_side_ends_the_stream() {
        let (slot, stream, mut rx) = make(5);
        drop(slot);
        let cx = &mut Context::from_waker(Waker::noop());
        assert_eq!(stream.poll_credit(cx), Poll::Ready(Err(End::LinkLost)));

        let (tx, _rx2) = mpsc::channel(16);
        let live = LiveStreams::default();
        let (_slot, stream2) = pair(2, 5, tx, &live, 1024, 1024);
        assert_eq!(live.count(), 1);
        drop(stream2);
        assert_eq!(live.count(), 0);
        drop(stream);
        assert!(rx.try_recv().is_err(), "an ended stream sends no reset");
    }
}
