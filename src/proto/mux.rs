//! The stream multiplexer of one link, sans I/O: stream ids, per-stream credit windows,
//! half-close and reset states, and the ping/RTT/dead-peer timers.
//!
//! The driver feeds decrypted records to [`Mux::handle_record`], drains [`Mux::poll_event`],
//! fills records with [`Mux::poll_transmit`] (which may also emit `Closed` events, so poll
//! events after it), and sleeps until [`Mux::poll_timeout`]. Nothing here reads a clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::frame::{
    self, encode_data_header, Frame, FrameError, OpenError, ResetCode, StreamId, HEADER_LEN,
    MAX_SERVICE_LEN,
};

/// Smallest `max_record` the mux works with: the largest control frame (an OPEN with a
/// 63-byte service name) must fit an empty record, or it would never be sent.
pub const MIN_RECORD: usize = HEADER_LEN + MAX_SERVICE_LEN;

/// Credit may never exceed this; more is a peer bug (and would overflow a `u32` WINDOW).
const MAX_CREDIT: u64 = 1 << 31;

/// Multiplexer limits and timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// Initial credit of each stream in each direction, and the receive window we restore.
    pub window: u32,
    /// Streams a link carries at once; further OPENs are refused with `TooManyStreams`.
    pub max_streams: usize,
    /// Maximum plaintext bytes per record (65535 - 16 = 65519 in production).
    pub max_record: usize,
    /// A PING goes out this often. Zero disables keepalive and dead-peer detection.
    pub ping_interval: Duration,
    /// Ping intervals without any PONG before the peer is declared dead.
    pub dead_after: u32,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            window: 256 * 1024,
            max_streams: 1024,
            max_record: 65535 - 16,
            ping_interval: Duration::from_secs(15),
            dead_after: 3,
        }
    }
}

/// Which end of the link we are. Only the dialer opens streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens streams.
    Dialer,
    /// Accepts or refuses streams.
    Acceptor,
}

/// What the multiplexer tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer (dialer) asks for a service; call [`Mux::accept`] or [`Mux::refuse`].
    Opened {
        /// The new stream.
        stream: StreamId,
        /// The requested service.
        service: String,
    },
    /// Our OPEN was accepted.
    OpenOk {
        /// The stream.
        stream: StreamId,
    },
    /// Our OPEN was refused; the stream is gone.
    OpenErr {
        /// The stream.
        stream: StreamId,
        /// Why.
        code: OpenError,
    },
    /// Stream bytes: a zero-copy slice of the record given to `handle_record`. Report them
    /// with [`Mux::consumed`] once delivered, or the peer runs out of credit.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The peer half-closed the stream.
    Fin {
        /// The stream.
        stream: StreamId,
    },
    /// The peer reset the stream; it is gone.
    Reset {
        /// The stream.
        stream: StreamId,
        /// Why.
        code: ResetCode,
    },
    /// The peer granted send credit; a writer blocked on it may go on.
    Credit {
        /// The stream.
        stream: StreamId,
        /// Credit added.
        bytes: u32,
    },
    /// A PONG answered our latest PING after this long.
    Rtt(Duration),
    /// The peer accepts no new streams.
    GoAway {
        /// The peer's reason code.
        reason: u8,
    },
    /// Both directions finished (FIN sent and received); the stream is forgotten.
    Closed {
        /// The stream.
        stream: StreamId,
    },
}

/// Multiplexer errors: fatal for the link, except the caller errors noted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// A frame did not decode (also returned by `open` for an invalid service name).
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// A record ended inside a frame; frames never span records.
    #[error("record ends inside a frame")]
    TruncatedFrame,
    /// An OPEN reached the dialer (also returned by `open` called on an acceptor).
    #[error("OPEN received by the dialer")]
    UnexpectedOpen,
    /// An OPEN for a stream that is still open.
    #[error("OPEN for stream {0}, which is already open")]
    DuplicateStream(StreamId),
    /// An OPEN whose stream id is not above every id seen before.
    #[error("OPEN for stream {0}, not above the highest stream id seen")]
    StreamIdNotIncreasing(StreamId),
    /// The peer sent more DATA than its credit.
    #[error("stream {stream}: peer sent beyond its credit of {window} bytes")]
    CreditExceeded {
        /// The stream.
        stream: StreamId,
        /// Credit the peer had left before the offending frame.
        window: u64,
    },
    /// A WINDOW would raise the credit above 2^31.
    #[error("stream {stream}: WINDOW raises credit above 2^31")]
    WindowOverflow {
        /// The stream.
        stream: StreamId,
    },
    /// DATA after the peer's FIN.
    #[error("stream {stream}: DATA after FIN")]
    DataAfterFin {
        /// The stream.
        stream: StreamId,
    },
    /// No PONG for `missed` ping intervals.
    #[error("peer dead: no PONG for {missed} ping intervals")]
    Dead {
        /// Intervals without a PONG.
        missed: u32,
    },
    /// Caller error, not fatal: `max_streams` streams are open.
    #[error("too many streams")]
    TooManyStreams,
    /// Caller error, not fatal: GOAWAY was sent or received, no new streams.
    #[error("link is going away")]
    GoingAway,
    /// Caller error, not fatal: the stream is not open (unknown, gone, or not yet accepted).
    #[error("stream {0} is not open")]
    NotOpen(StreamId),
    /// Caller error, not fatal: more data than the stream's send credit; nothing was queued.
    #[error("stream {stream}: {wanted} bytes exceed the send credit of {credit}")]
    OverCredit {
        /// The stream.
        stream: StreamId,
        /// Bytes offered.
        wanted: usize,
        /// Credit left.
        credit: u64,
    },
    /// Caller error, not fatal: `send` after `finish`.
    #[error("stream {0}: send after finish")]
    SendAfterFin(StreamId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Dialer: OPEN queued or sent, no answer yet (zero-RTT data may flow).
    Opening,
    /// Acceptor: OPEN received, waiting for `accept` or `refuse`.
    AwaitingAccept,
    /// Accepted.
    Open,
}

#[derive(Debug)]
struct Stream {
    phase: Phase,
    /// Bytes we may still send.
    send_credit: u64,
    /// Accepted by `send`, credit already taken, not yet written.
    send_queue: VecDeque<Bytes>,
    /// Bytes in `send_queue`.
    queued: usize,
    /// `finish` was called.
    fin_queued: bool,
    /// Our FIN was written by `poll_transmit`.
    fin_sent: bool,
    /// The stream's id is in `Mux::ready`.
    in_ready: bool,
    /// Total credit granted to the peer (initial window plus every WINDOW queued).
    recv_granted: u64,
    /// Total bytes the peer sent.
    recv_received: u64,
    /// Total bytes the local side reported consumed.
    recv_consumed: u64,
    fin_received: bool,
}

impl Stream {
    fn new(phase: Phase, window: u32) -> Self {
        Stream {
            phase,
            send_credit: u64::from(window),
            send_queue: VecDeque::new(),
            queued: 0,
            fin_queued: false,
            fin_sent: false,
            in_ready: false,
            recv_granted: u64::from(window),
            recv_received: 0,
            recv_consumed: 0,
            fin_received: false,
        }
    }

    fn wants_transmit(&self) -> bool {
        !self.send_queue.is_empty() || (self.fin_queued && !self.fin_sent)
    }
}

/// Control frames, sent before any DATA in FIFO order. OPEN is here too so that it always
/// precedes the stream's zero-RTT DATA.
#[derive(Debug)]
enum Control {
    Open { stream: StreamId, service: String },
    OpenOk { stream: StreamId },
    OpenErr { stream: StreamId, code: OpenError },
    Window { stream: StreamId, credit: u32 },
    Rst { stream: StreamId, code: ResetCode },
    GoAway { reason: u8 },
}

impl Control {
    fn frame(&self) -> Frame<'_> {
        match *self {
            Control::Open {
                stream,
                ref service,
            } => Frame::Open { stream, service },
            Control::OpenOk { stream } => Frame::OpenOk { stream },
            Control::OpenErr { stream, code } => Frame::OpenErr { stream, code },
            Control::Window { stream, credit } => Frame::Window { stream, credit },
            Control::Rst { stream, code } => Frame::Rst { stream, code },
            Control::GoAway { reason } => Frame::GoAway { reason },
        }
    }
}

/// The multiplexer of one link.
#[derive(Debug)]
pub struct Mux {
    role: Role,
    cfg: MuxConfig,
    streams: HashMap<StreamId, Stream>,
    /// Dialer: the next id `open` hands out.
    next_id: StreamId,
    /// Acceptor: the highest id an OPEN carried.
    highest_seen: StreamId,
    events: VecDeque<Event>,
    control: VecDeque<Control>,
    /// Streams with queued DATA or FIN, served round-robin.
    ready: VecDeque<StreamId>,
    /// Nonce of a PONG to send; only the latest PING is answered, so a PING flood cannot
    /// grow a queue.
    pong_due: Option<u64>,
    /// Nonce of a PING to send.
    ping_due: Option<u64>,
    /// Our latest PING and when it was queued, until its PONG arrives.
    ping_in_flight: Option<(u64, Instant)>,
    ping_counter: u64,
    next_ping: Instant,
    last_pong: Instant,
    go_away_sent: bool,
    go_away_received: bool,
}

impl Mux {
    /// A multiplexer for a fresh link. Panics if `cfg.max_record < MIN_RECORD`.
    pub fn new(role: Role, cfg: MuxConfig, now: Instant) -> Self {
        assert!(
            cfg.max_record >= MIN_RECORD,
            "max_record {} below {MIN_RECORD}",
            cfg.max_record
        );
        let next_ping = now.checked_add(cfg.ping_interval).unwrap_or(now);
        Mux {
            role,
            cfg,
            streams: HashMap::new(),
            next_id: 1,
            highest_seen: 0,
            events: VecDeque::new(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            pong_due: None,
            ping_due: None,
            ping_in_flight: None,
            ping_counter: 0,
            next_ping,
            last_pong: now,
            go_away_sent: false,
            go_away_received: false,
        }
    }

    /// Opens a stream to `service` (dialer only) and queues its OPEN. Data may be sent on it
    /// at once (zero-RTT).
    pub fn open(&mut self, service: &str) -> Result<StreamId, MuxError> {
        if self.role != Role::Dialer {
            return Err(MuxError::UnexpectedOpen);
        }
        if self.go_away_sent || self.go_away_received {
            return Err(MuxError::GoingAway);
        }
        if self.streams.len() >= self.cfg.max_streams {
            return Err(MuxError::TooManyStreams);
        }
        if !frame::valid_service_name(service) {
            return Err(MuxError::Frame(FrameError::Malformed {
                kind: "OPEN",
                why: "service name not 1..=63 bytes of [a-z0-9_-]",
            }));
        }
        let stream = self.next_id;
        self.next_id += 1;
        self.streams
            .insert(stream, Stream::new(Phase::Opening, self.cfg.window));
        self.control.push_back(Control::Open {
            stream,
            service: service.to_owned(),
        });
        Ok(stream)
    }

    /// Accepts a stream announced by `Event::Opened`; queues OPEN_OK. Ignored if the stream
    /// is gone (the peer may have reset it meanwhile).
    pub fn accept(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.phase == Phase::AwaitingAccept {
                s.phase = Phase::Open;
                self.control.push_back(Control::OpenOk { stream });
            }
        }
    }

    /// Refuses a stream announced by `Event::Opened`; queues OPEN_ERR and forgets it, so its
    /// in-flight DATA and FIN are ignored.
    pub fn refuse(&mut self, stream: StreamId, code: OpenError) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.phase == Phase::AwaitingAccept)
        {
            self.remove_stream(stream);
            self.control.push_back(Control::OpenErr { stream, code });
        }
    }

    /// Bytes we may still send on `stream` (0 if it is not open).
    pub fn send_credit(&self, stream: StreamId) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.send_credit)
    }

    /// Queues `data` on `stream`. Nothing is queued on error.
    pub fn send(&mut self, stream: StreamId, data: Bytes) -> Result<(), MuxError> {
        let s = match self.streams.get_mut(&stream) {
            Some(s) if s.phase != Phase::AwaitingAccept => s,
            _ => return Err(MuxError::NotOpen(stream)),
        };
        if s.fin_queued {
            return Err(MuxError::SendAfterFin(stream));
        }
        if data.is_empty() {
            return Ok(());
        }
        if data.len() as u64 > s.send_credit {
            return Err(MuxError::OverCredit {
                stream,
                wanted: data.len(),
                credit: s.send_credit,
            });
        }
        s.send_credit -= data.len() as u64;
        s.queued += data.len();
        s.send_queue.push_back(data);
        if !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(stream);
        }
        Ok(())
    }

    /// Half-closes `stream`: queues FIN after any queued data. Ignored if the stream is not
    /// open or already finished.
    pub fn finish(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.phase == Phase::AwaitingAccept || s.fin_queued {
            return;
        }
        s.fin_queued = true;
        if !s.in_ready {
            s.in_ready = true;
            self.ready.push_back(stream);
        }
    }

    /// Aborts `stream`: drops its queued data, queues RST, forgets it.
    pub fn reset(&mut self, stream: StreamId, code: ResetCode) {
        if self.remove_stream(stream) {
            self.control.push_back(Control::Rst { stream, code });
        }
    }

    /// The local side delivered `n` more received bytes of `stream`; grants the peer new
    /// credit once at least half a window is owed (fewer, larger WINDOW frames).
    pub fn consumed(&mut self, stream: StreamId, n: usize) {
        let window = u64::from(self.cfg.window);
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.recv_consumed = (s.recv_consumed + n as u64).min(s.recv_received);
        if s.fin_received {
            return; // the peer sends no more, credit would be wasted
        }
        // Restore the peer's credit to a full window beyond what was consumed. Never more
        // than `window`, since consumed <= received <= granted.
        let owed = s.recv_consumed + window - s.recv_granted;
        if owed > 0 && owed >= window / 2 {
            s.recv_granted += owed;
            self.control.push_back(Control::Window {
                stream,
                credit: owed as u32,
            });
        }
    }

    /// Queues GOAWAY; `open` fails from now on and incoming OPENs are refused.
    pub fn go_away(&mut self, reason: u8) {
        if !self.go_away_sent {
            self.go_away_sent = true;
            self.control.push_back(Control::GoAway { reason });
        }
    }

    /// Handles one decrypted record. Every frame is decoded before any is acted on; any
    /// error is fatal for the link.
    pub fn handle_record(&mut self, record: Bytes, now: Instant) -> Result<(), MuxError> {
        let mut pos = 0;
        while pos < record.len() {
            match frame::decode(&record[pos..]) {
                Ok((_, n)) => pos += n,
                Err(FrameError::Incomplete) => return Err(MuxError::TruncatedFrame),
                Err(e) => return Err(MuxError::Frame(e)),
            }
        }
        let events_before = self.events.len();
        let mut pos = 0;
        while pos < record.len() {
            let (f, n) = frame::decode(&record[pos..])?;
            pos += n;
            if let Err(e) = self.handle_frame(f, &record, now) {
                // The link dies: the driver must not act on half a record.
                self.events.truncate(events_before);
                return Err(e);
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, f: Frame<'_>, record: &Bytes, now: Instant) -> Result<(), MuxError> {
        match f {
            Frame::Open { stream, service } => {
                if self.role == Role::Dialer {
                    return Err(MuxError::UnexpectedOpen);
                }
                if self.streams.contains_key(&stream) {
                    return Err(MuxError::DuplicateStream(stream));
                }
                if stream <= self.highest_seen {
                    return Err(MuxError::StreamIdNotIncreasing(stream));
                }
                self.highest_seen = stream;
                let refusal = if self.go_away_sent {
                    Some(OpenError::ShuttingDown)
                } else if self.streams.len() >= self.cfg.max_streams {
                    Some(OpenError::TooManyStreams)
                } else {
                    None
                };
                if let Some(code) = refusal {
                    // Its zero-RTT DATA and FIN are ignored as frames of a forgotten stream.
                    self.control.push_back(Control::OpenErr { stream, code });
                } else {
                    self.streams
                        .insert(stream, Stream::new(Phase::AwaitingAccept, self.cfg.window));
                    self.events.push_back(Event::Opened {
                        stream,
                        service: service.to_owned(),
                    });
                }
            }
            Frame::OpenOk { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    if s.phase == Phase::Opening {
                        s.phase = Phase::Open;
                        self.events.push_back(Event::OpenOk { stream });
                    }
                }
            }
            Frame::OpenErr { stream, code } => {
                if self
                    .streams
                    .get(&stream)
                    .is_some_and(|s| s.phase == Phase::Opening)
                {
                    self.remove_stream(stream);
                    self.events.push_back(Event::OpenErr { stream, code });
                }
            }
            Frame::Data { stream, data } => {
                // Unknown ids are streams we forgot (reset, refused): the frame raced with that.
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                if s.fin_received {
                    return Err(MuxError::DataAfterFin { stream });
                }
                let left = s.recv_granted - s.recv_received;
                if data.len() as u64 > left {
                    return Err(MuxError::CreditExceeded {
                        stream,
                        window: left,
                    });
                }
                s.recv_received += data.len() as u64;
                self.events.push_back(Event::Data {
                    stream,
                    data: record.slice_ref(data),
                });
            }
            Frame::Window { stream, credit } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                let total = s.send_credit + u64::from(credit);
                if total > MAX_CREDIT {
                    return Err(MuxError::WindowOverflow { stream });
                }
                s.send_credit = total;
                self.events.push_back(Event::Credit {
                    stream,
                    bytes: credit,
                });
            }
            Frame::Fin { stream } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                if s.fin_received {
                    return Ok(());
                }
                s.fin_received = true;
                let closed = s.fin_sent;
                self.events.push_back(Event::Fin { stream });
                if closed {
                    self.remove_stream(stream);
                    self.events.push_back(Event::Closed { stream });
                }
            }
            Frame::Rst { stream, code } => {
                if self.remove_stream(stream) {
                    self.events.push_back(Event::Reset { stream, code });
                }
            }
            Frame::Ping { nonce } => self.pong_due = Some(nonce),
            Frame::Pong { nonce } => {
                self.last_pong = now;
                if let Some((sent_nonce, sent_at)) = self.ping_in_flight {
                    if sent_nonce == nonce {
                        self.ping_in_flight = None;
                        self.events
                            .push_back(Event::Rtt(now.saturating_duration_since(sent_at)));
                    }
                }
            }
            Frame::GoAway { reason } => {
                self.go_away_received = true;
                self.events.push_back(Event::GoAway { reason });
            }
        }
        Ok(())
    }

    /// Forgets a stream and its queued data; false if it was not known.
    fn remove_stream(&mut self, stream: StreamId) -> bool {
        match self.streams.remove(&stream) {
            Some(s) => {
                if s.in_ready {
                    self.ready.retain(|&id| id != stream);
                }
                true
            }
            None => false,
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the frames of one record, at most `cfg.max_record` bytes, to `out`: control
    /// frames first, then DATA round-robin across streams. False if nothing was queued.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let limit = start + self.cfg.max_record;

        if let Some(nonce) = self.pong_due.take() {
            Frame::Pong { nonce }.encode(out);
        }
        if let Some(nonce) = self.ping_due.take() {
            Frame::Ping { nonce }.encode(out);
        }
        while let Some(c) = self.control.front() {
            let f = c.frame();
            if out.len() + f.encoded_len() > limit {
                break;
            }
            f.encode(out);
            self.control.pop_front();
        }
        // DATA waits until every control frame is out: an OPEN or OPEN_OK must precede its
        // stream's DATA on the wire.
        if self.control.is_empty() {
            self.transmit_data(out, limit);
        }
        debug_assert!(out.len() - start <= self.cfg.max_record);
        out.len() > start
    }

    fn transmit_data(&mut self, out: &mut Vec<u8>, limit: usize) {
        while limit - out.len() >= HEADER_LEN {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let s = self
                .streams
                .get_mut(&id)
                .expect("ready lists only live streams");
            let room = limit - out.len() - HEADER_LEN;
            if s.queued > 0 {
                let take = s.queued.min(room).min(usize::from(u16::MAX));
                if take == 0 {
                    self.ready.push_front(id);
                    break;
                }
                encode_data_header(out, id, take as u16);
                s.queued -= take;
                let mut left = take;
                while left > 0 {
                    let front = s.send_queue.front_mut().expect("queued covers take");
                    let n = front.len().min(left);
                    out.extend_from_slice(&front[..n]);
                    front.advance(n);
                    if front.is_empty() {
                        s.send_queue.pop_front();
                    }
                    left -= n;
                }
            }
            if s.send_queue.is_empty() && s.fin_queued && !s.fin_sent {
                if limit - out.len() < HEADER_LEN {
                    self.ready.push_front(id);
                    break;
                }
                Frame::Fin { stream: id }.encode(out);
                s.fin_sent = true;
            }
            if s.wants_transmit() {
                self.ready.push_back(id);
            } else {
                s.in_ready = false;
                if s.fin_sent && s.fin_received {
                    self.streams.remove(&id);
                    self.events.push_back(Event::Closed { stream: id });
                }
            }
        }
    }

    /// Whether `poll_transmit` has anything to write.
    pub fn has_pending_transmit(&self) -> bool {
        self.pong_due.is_some()
            || self.ping_due.is_some()
            || !self.control.is_empty()
            || !self.ready.is_empty()
    }

    /// When `handle_timeout` should next be called: the next PING or the dead-peer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.cfg.ping_interval.is_zero() {
            return None;
        }
        Some(match self.dead_deadline() {
            Some(dead) => dead.min(self.next_ping),
            None => self.next_ping,
        })
    }

    fn dead_deadline(&self) -> Option<Instant> {
        let span = self
            .cfg
            .ping_interval
            .checked_mul(self.cfg.dead_after.max(1))?;
        self.last_pong.checked_add(span)
    }

    /// Fires due timers: queues a PING when one is due (nonce = a counter); `Dead` once
    /// `dead_after` intervals passed without any PONG.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MuxError> {
        let interval = self.cfg.ping_interval;
        if interval.is_zero() {
            return Ok(());
        }
        if self.dead_deadline().is_some_and(|d| now >= d) {
            return Err(MuxError::Dead {
                missed: self.cfg.dead_after.max(1),
            });
        }
        if now >= self.next_ping {
            let nonce = self.ping_counter;
            self.ping_counter += 1;
            self.ping_due = Some(nonce);
            self.ping_in_flight = Some((nonce, now));
            // Keep the cadence, but after a long stall start afresh rather than catch up.
            self.next_ping = match self.next_ping.checked_add(interval) {
                Some(t) if t > now => t,
                _ => now.checked_add(interval).unwrap_or(now),
            };
        }
        Ok(())
    }

    /// Streams known to the multiplexer (opening, awaiting accept, open, half-closed).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// No streams and nothing queued to send.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty() && !self.has_pending_transmit()
    }
}
