//! The stream multiplexer of one link, sans I/O: stream ids, per-stream credit windows,
//! half-close and reset states, and the ping/RTT/dead-peer timers.
//!
//! The driver feeds decrypted records to [`Mux::handle_record`], drains [`Mux::poll_event`],
//! fills records with [`Mux::poll_transmit`] (which may also emit `Closed` events, so poll
//! events after it), and sleeps until [`Mux::poll_timeout`]. Nothing here reads a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::chunk::{Chunk, OwnedRecord, HEAD_ROOM};
use super::frame::{
    self, encode_data_header, Frame, FrameError, OpenError, ResetCode, StreamId, HEADER_LEN,
    MAX_SERVICE_LEN,
};
use super::rekey::RekeyMessage;

/// Smallest `max_record` the mux works with: the largest control frame (an OPEN with a
/// 63-byte service name) must fit an empty record, or it would never be sent.
pub const MIN_RECORD: usize = HEADER_LEN + MAX_SERVICE_LEN;

/// Nonce of the PING a TLS acceptor sends unprompted as soon as its handshake succeeds
/// ([`encode_greeting`]). In TLS 1.3 the client finishes first, so without it a dialer could
/// not tell an accepted certificate from one the acceptor is about to refuse. A mux's own
/// PING nonces count up from 0 and never reach it, so the PONG that answers the greeting
/// never passes for a round-trip sample.
pub const GREETING_NONCE: u64 = u64::MAX;

/// Appends the frames of the greeting record: one PING with [`GREETING_NONCE`]. The dialer's
/// mux answers it like any PING.
pub fn encode_greeting(out: &mut Vec<u8>) {
    Frame::Ping {
        nonce: GREETING_NONCE,
    }
    .encode(out);
}

/// Credit may never exceed this; more is a peer bug (and would overflow a `u32` WINDOW).
const MAX_CREDIT: u64 = 1 << 31;
/// Send credit of a stream opened or accepted before the peer's SETTINGS arrived, and the
/// smallest window a SETTINGS may announce (the smallest `stream_window` a config allows).
/// Each side announces its own window, so two hosts whose configs disagree (a rollout)
/// each send within what the other enforces.
pub const INITIAL_CREDIT: u32 = 16 * 1024;
/// Before the first RTT sample, half a window consumed within this long counts as fast.
const GROW_WITHIN_UNMEASURED: Duration = Duration::from_millis(20);
/// The "two round trips" of window growth never counts as less than this, so timer and
/// scheduling noise on a fast local link does not decide it.
const GROW_WITHIN_MIN: Duration = Duration::from_millis(1);

/// Multiplexer limits and timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// Initial credit of each stream in each direction, and the receive window we restore.
    pub window: u32,
    /// Largest receive window a stream may grow to (see [`Mux::consumed_at`]); at or below
    /// `window`, windows never grow.
    pub max_window: u32,
    /// Growth beyond `window` of all streams of the link together, in bytes: the link's
    /// in-flight budget, shared by the streams that need it.
    pub window_budget: u64,
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
            max_window: 256 * 1024,
            window_budget: 0,
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

/// What the peer did wrong: every one is fatal for the link.
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
    /// A stream frame for an id that was never opened on this link (ids of streams that
    /// ended are still known, and their late frames are ignored).
    #[error("frame for stream {0}, which was never opened")]
    UnknownStream(StreamId),
    /// A second SETTINGS frame.
    #[error("SETTINGS received twice")]
    DuplicateSettings,
    /// A SETTINGS window below [`INITIAL_CREDIT`] or above 2^31.
    #[error("SETTINGS window {0} out of range")]
    SettingsOutOfRange(u32),
    /// More than one REKEY frame in one record: each step of a re-key is a record of its
    /// own, since the key switches at the record's end.
    #[error("more than one REKEY frame in one record")]
    RekeyFramesInOneRecord,
    /// The peer keeps asking for answers (OPENs to refuse) without reading them.
    #[error("{queued} control frames queued: the peer does not read")]
    ControlBacklog {
        /// Control frames waiting when the limit was hit.
        queued: usize,
    },
}

/// A local caller's misuse of a stream or of the link: nothing changed, the link goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// `open` on the acceptor: only the dialer opens streams.
    #[error("only the dialer opens streams")]
    NotDialer,
    /// A service name an OPEN cannot carry.
    #[error("service name not 1..=63 bytes of [a-z0-9_-]")]
    InvalidService,
    /// `max_streams` streams are open.
    #[error("too many streams")]
    TooManyStreams,
    /// GOAWAY was sent or received, no new streams.
    #[error("link is going away")]
    GoingAway,
    /// The stream is not open (unknown, gone, or not yet accepted).
    #[error("stream {0} is not open")]
    NotOpen(StreamId),
    /// More data than the stream's send credit; nothing was queued.
    #[error("stream {stream}: {wanted} bytes exceed the send credit of {credit}")]
    OverCredit {
        /// The stream.
        stream: StreamId,
        /// Bytes offered.
        wanted: usize,
        /// Credit left.
        credit: u64,
    },
    /// `send` after `finish`.
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
struct Stream<T> {
    /// What the driver keeps with the stream (its local side's handle); `None` until
    /// attached. Handed back with the event that ends the stream.
    slot: Option<T>,
    phase: Phase,
    /// Bytes we may still send.
    send_credit: u64,
    /// Accepted by `send`, credit already taken, not yet written.
    send_queue: VecDeque<Chunk>,
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
    /// The receive window restored after consumption; starts at `cfg.window` and grows
    /// (up to `cfg.max_window`) while the window, not the consumer, limits the stream.
    recv_window: u64,
    /// When credit was last granted (or the first data arrived).
    last_grant: Option<Instant>,
    fin_received: bool,
}

impl<T> Stream<T> {
    fn new(phase: Phase, send_credit: u32, window: u32) -> Self {
        Stream {
            slot: None,
            phase,
            send_credit: u64::from(send_credit),
            send_queue: VecDeque::new(),
            queued: 0,
            fin_queued: false,
            fin_sent: false,
            in_ready: false,
            recv_granted: u64::from(window),
            recv_received: 0,
            recv_consumed: 0,
            recv_window: u64::from(window),
            last_grant: None,
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
    Settings { window: u32 },
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
            Control::Settings { window } => Frame::Settings { window },
        }
    }
}

/// The multiplexer of one link. `T` is what the driver keeps per stream (see
/// [`Mux::attach`]): one table holds every stream's protocol state and its local handle.
#[derive(Debug)]
pub struct Mux<T = ()> {
    role: Role,
    cfg: MuxConfig,
    streams: super::StreamMap<Stream<T>>,
    /// Dialer: the next id `open` hands out.
    next_id: StreamId,
    /// Acceptor: the highest id an OPEN carried.
    highest_seen: StreamId,
    events: VecDeque<Event>,
    /// Slots of streams that ended while their ending event waits in `events`: events
    /// queued before it (its last DATA, its FIN) still find the slot.
    ending: super::StreamMap<T>,
    control: VecDeque<Control>,
    /// The window the peer's SETTINGS announced: the send credit of new streams.
    peer_window: Option<u32>,
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
    /// Smoothed round-trip time from PONGs (7/8 old + 1/8 new), once measured.
    srtt: Option<Duration>,
    /// Sum over streams of `recv_window - cfg.window`, bounded by `cfg.window_budget`.
    grown: u64,
    go_away_sent: bool,
    go_away_received: bool,
    /// REKEY frames of the latest record, for the driver ([`Mux::take_rekey`]): the key
    /// switch they announce happens at the record's end, which only the driver sees.
    rekey_in: VecDeque<RekeyMessage>,
    /// How many of `rekey_in` came before the record being handled.
    rekeys_before_record: usize,
}

impl<T> Mux<T> {
    /// A multiplexer for a fresh link; its first frame is the SETTINGS announcing
    /// `cfg.window` (raised to [`INITIAL_CREDIT`] if below). Panics if
    /// `cfg.max_record < MIN_RECORD`.
    pub fn new(role: Role, mut cfg: MuxConfig, now: Instant) -> Self {
        assert!(
            cfg.max_record >= MIN_RECORD,
            "max_record {} below {MIN_RECORD}",
            cfg.max_record
        );
        cfg.window = cfg.window.clamp(INITIAL_CREDIT, MAX_CREDIT as u32);
        let next_ping = now.checked_add(cfg.ping_interval).unwrap_or(now);
        let mut control = VecDeque::new();
        control.push_back(Control::Settings { window: cfg.window });
        Mux {
            role,
            cfg,
            streams: super::StreamMap::default(),
            next_id: 1,
            highest_seen: 0,
            events: VecDeque::new(),
            ending: super::StreamMap::default(),
            control,
            peer_window: None,
            ready: VecDeque::new(),
            pong_due: None,
            ping_due: None,
            ping_in_flight: None,
            ping_counter: 0,
            next_ping,
            last_pong: now,
            srtt: None,
            grown: 0,
            go_away_sent: false,
            go_away_received: false,
            rekey_in: VecDeque::new(),
            rekeys_before_record: 0,
        }
    }

    /// Opens a stream to `service` (dialer only) and queues its OPEN. Data may be sent on it
    /// at once (zero-RTT).
    pub fn open(&mut self, service: &str) -> Result<StreamId, StreamError> {
        if self.role != Role::Dialer {
            return Err(StreamError::NotDialer);
        }
        if self.go_away_sent || self.go_away_received {
            return Err(StreamError::GoingAway);
        }
        if self.streams.len() >= self.cfg.max_streams {
            return Err(StreamError::TooManyStreams);
        }
        if !frame::valid_service_name(service) {
            return Err(StreamError::InvalidService);
        }
        let stream = self.next_id;
        self.next_id += 1;
        let stream_state = Stream::new(Phase::Opening, self.initial_send_credit(), self.cfg.window);
        self.streams.insert(stream, stream_state);
        self.control.push_back(Control::Open {
            stream,
            service: service.to_owned(),
        });
        Ok(stream)
    }

    /// Send credit of a new stream: what the peer announced, or [`INITIAL_CREDIT`] before.
    fn initial_send_credit(&self) -> u32 {
        self.peer_window.unwrap_or(INITIAL_CREDIT)
    }

    /// Keeps `slot` with `stream` until the stream ends; the event that ends it hands the
    /// slot back ([`Mux::poll_event_slot`]). Returns the slot if the stream is not known.
    pub fn attach(&mut self, stream: StreamId, slot: T) -> Result<(), T> {
        match self.streams.get_mut(&stream) {
            Some(s) => {
                s.slot = Some(slot);
                Ok(())
            }
            None => Err(slot),
        }
    }

    /// The slot kept with `stream`, until the event that ends it is polled.
    pub fn slot(&self, stream: StreamId) -> Option<&T> {
        match self.streams.get(&stream) {
            Some(s) => s.slot.as_ref(),
            None => self.ending.get(&stream),
        }
    }

    /// Takes every stream's slot, for a link that ends with streams still open.
    pub fn drain_slots(&mut self) -> impl Iterator<Item = (StreamId, T)> + '_ {
        self.ready.clear();
        self.grown = 0;
        self.events.clear();
        self.streams
            .drain()
            .filter_map(|(id, s)| s.slot.map(|slot| (id, slot)))
            .chain(self.ending.drain())
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
    /// in-flight DATA and FIN are ignored. Ignored unless the stream awaits an answer (an
    /// accepted stream is ended with `reset`). Returns the stream's slot.
    pub fn refuse(&mut self, stream: StreamId, code: OpenError) -> Option<T> {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.phase == Phase::AwaitingAccept)
        {
            self.control.push_back(Control::OpenErr { stream, code });
            return self.remove_stream(stream).and_then(|s| s.slot);
        }
        None
    }

    /// The receive window of `stream` (0 if it is not open): what the peer may have in
    /// flight on it, and what its local side may hold.
    pub fn recv_window(&self, stream: StreamId) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.recv_window)
    }

    /// Bytes we may still send on `stream` (0 if it is not open).
    pub fn send_credit(&self, stream: StreamId) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.send_credit)
    }

    /// Queues `data` on `stream`. Nothing is queued on error.
    pub fn send(&mut self, stream: StreamId, data: impl Into<Chunk>) -> Result<(), StreamError> {
        let data = data.into();
        let s = match self.streams.get_mut(&stream) {
            Some(s) if s.phase != Phase::AwaitingAccept => s,
            _ => return Err(StreamError::NotOpen(stream)),
        };
        if s.fin_queued {
            return Err(StreamError::SendAfterFin(stream));
        }
        if data.is_empty() {
            return Ok(());
        }
        if data.len() as u64 > s.send_credit {
            return Err(StreamError::OverCredit {
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

    /// Aborts `stream`: drops its queued data, queues RST, forgets it. Returns its slot.
    pub fn reset(&mut self, stream: StreamId, code: ResetCode) -> Option<T> {
        let s = self.remove_stream(stream)?;
        self.control.push_back(Control::Rst { stream, code });
        s.slot
    }

    /// The local side delivered `n` more received bytes of `stream`; grants the peer new
    /// credit once at least half a window is owed (fewer, larger WINDOW frames). The window
    /// never grows this way; see [`Mux::consumed_at`].
    pub fn consumed(&mut self, stream: StreamId, n: usize) {
        self.grant(stream, n, None);
    }

    /// As [`Mux::consumed`], at `now`, with receive-window auto-tuning: when half a window
    /// was consumed within two round trips of the previous grant, the window (not the local
    /// reader) is what limits the stream, so it doubles, up to `cfg.max_window`. A stream
    /// across a 10 ms link thus grows past its bandwidth-delay product instead of being
    /// capped at `window` / RTT, and a fast stream needs fewer WINDOW frames. Memory per
    /// stream stays bounded by `max_window`.
    pub fn consumed_at(&mut self, stream: StreamId, n: usize, now: Instant) {
        self.grant(stream, n, Some(now));
    }

    fn grant(&mut self, stream: StreamId, n: usize, now: Option<Instant>) {
        let base = u64::from(self.cfg.window);
        let max_window = u64::from(self.cfg.max_window).max(base);
        let budget = self.cfg.window_budget;
        let grow_within = self
            .srtt
            .map_or(GROW_WITHIN_UNMEASURED, |rtt| (rtt * 2).max(GROW_WITHIN_MIN));
        let grown = &mut self.grown;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.recv_consumed = (s.recv_consumed + n as u64).min(s.recv_received);
        if s.fin_received {
            return; // the peer sends no more, credit would be wasted
        }
        // Restore the peer's credit to a full window beyond what was consumed. Never more
        // than `recv_window`, since consumed <= received <= granted.
        let owed = s.recv_consumed + s.recv_window - s.recv_granted;
        if owed == 0 || owed < s.recv_window / 2 {
            return;
        }
        if let Some(now) = now {
            let fast = s
                .last_grant
                .is_some_and(|t| now.saturating_duration_since(t) < grow_within);
            if fast && s.recv_window < max_window {
                // The window limits the stream: double it, within the link's budget.
                let target = (s.recv_window * 2).min(max_window);
                let extra = (target - s.recv_window).min(budget.saturating_sub(*grown));
                s.recv_window += extra;
                *grown += extra;
            } else if !fast && s.recv_window > base {
                // The reader limits it now: give half the growth back to the link.
                let target = (s.recv_window / 2).max(base);
                *grown -= s.recv_window - target;
                s.recv_window = target;
            }
            s.last_grant = Some(now);
        }
        // A shrunk window may owe nothing yet; credit already granted is never taken back.
        let owed = (s.recv_consumed + s.recv_window).saturating_sub(s.recv_granted);
        if owed == 0 {
            return;
        }
        s.recv_granted += owed;
        self.control.push_back(Control::Window {
            stream,
            credit: owed as u32,
        });
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
        let rekeys_before = self.rekey_in.len();
        self.rekeys_before_record = rekeys_before;
        let mut pos = 0;
        while pos < record.len() {
            let (f, n) = frame::decode(&record[pos..])?;
            pos += n;
            if let Err(e) = self.handle_frame(f, &record, now) {
                // The link dies: the driver must not act on half a record.
                self.events.truncate(events_before);
                self.rekey_in.truncate(rekeys_before);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes the REKEY frames of the records handled since the last call, in order. The
    /// driver calls it after each record, before it opens the next one: a key switch that
    /// one announces applies from the next record on.
    pub fn take_rekey(&mut self) -> Option<RekeyMessage> {
        self.rekey_in.pop_front()
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
                if self.control.len() >= self.control_limit() {
                    return Err(MuxError::ControlBacklog {
                        queued: self.control.len(),
                    });
                }
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
                    let credit = self.initial_send_credit();
                    self.streams.insert(
                        stream,
                        Stream::new(Phase::AwaitingAccept, credit, self.cfg.window),
                    );
                    self.push_event(Event::Opened {
                        stream,
                        service: service.to_owned(),
                    });
                }
            }
            Frame::OpenOk { stream } => {
                self.check_known(stream)?;
                if let Some(s) = self.streams.get_mut(&stream) {
                    if s.phase == Phase::Opening {
                        s.phase = Phase::Open;
                        self.push_event(Event::OpenOk { stream });
                    }
                }
            }
            Frame::OpenErr { stream, code } => {
                self.check_known(stream)?;
                if self
                    .streams
                    .get(&stream)
                    .is_some_and(|s| s.phase == Phase::Opening)
                {
                    self.end_stream(stream);
                    self.events.push_back(Event::OpenErr { stream, code });
                }
            }
            Frame::Data { stream, data } => {
                self.check_known(stream)?;
                // Other unknown ids are streams we forgot (reset, refused): the frame raced
                // with that, and is dropped.
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
                if s.last_grant.is_none() {
                    s.last_grant = Some(now);
                }
                self.push_event(Event::Data {
                    stream,
                    data: record.slice_ref(data),
                });
            }
            Frame::Window { stream, credit } => {
                self.check_known(stream)?;
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                let total = s.send_credit + u64::from(credit);
                if total > MAX_CREDIT {
                    return Err(MuxError::WindowOverflow { stream });
                }
                s.send_credit = total;
                self.push_event(Event::Credit {
                    stream,
                    bytes: credit,
                });
            }
            Frame::Fin { stream } => {
                self.check_known(stream)?;
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                if s.fin_received {
                    return Ok(());
                }
                s.fin_received = true;
                let closed = s.fin_sent;
                self.push_event(Event::Fin { stream });
                if closed {
                    self.end_stream(stream);
                    self.events.push_back(Event::Closed { stream });
                }
            }
            Frame::Rst { stream, code } => {
                self.check_known(stream)?;
                if self.end_stream(stream) {
                    self.events.push_back(Event::Reset { stream, code });
                }
            }
            Frame::Settings { window } => {
                if self.peer_window.is_some() {
                    return Err(MuxError::DuplicateSettings);
                }
                if window < INITIAL_CREDIT || u64::from(window) > MAX_CREDIT {
                    return Err(MuxError::SettingsOutOfRange(window));
                }
                self.peer_window = Some(window);
                // Streams opened before it started with INITIAL_CREDIT; the peer granted
                // them its whole window from the start.
                let extra = window - INITIAL_CREDIT;
                if extra > 0 {
                    let mut credited = Vec::new();
                    for (&id, s) in self.streams.iter_mut() {
                        s.send_credit = (s.send_credit + u64::from(extra)).min(MAX_CREDIT);
                        credited.push(id);
                    }
                    credited.sort_unstable();
                    for stream in credited {
                        self.push_event(Event::Credit {
                            stream,
                            bytes: extra,
                        });
                    }
                }
            }
            Frame::Ping { nonce } => self.pong_due = Some(nonce),
            Frame::Pong { nonce } => {
                self.last_pong = now;
                if let Some((sent_nonce, sent_at)) = self.ping_in_flight {
                    if sent_nonce == nonce {
                        self.ping_in_flight = None;
                        let rtt = now.saturating_duration_since(sent_at);
                        self.srtt = Some(match self.srtt {
                            Some(old) => (old * 7 + rtt) / 8,
                            None => rtt,
                        });
                        self.push_event(Event::Rtt(rtt));
                    }
                }
            }
            Frame::GoAway { reason } => {
                self.go_away_received = true;
                self.push_event(Event::GoAway { reason });
            }
            Frame::Rekey { step, epoch, key } => {
                if self.rekey_in.len() > self.rekeys_before_record {
                    return Err(MuxError::RekeyFramesInOneRecord);
                }
                self.rekey_in.push_back(RekeyMessage { step, epoch, key })
            }
        }
        Ok(())
    }

    /// Forgets a stream and its queued data; returns it if it was known.
    fn remove_stream(&mut self, stream: StreamId) -> Option<Stream<T>> {
        let s = self.streams.remove(&stream)?;
        self.grown -= s.recv_window - u64::from(self.cfg.window);
        if s.in_ready {
            self.ready.retain(|&id| id != stream);
        }
        Some(s)
    }

    fn push_event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Forgets a stream the peer ended; its slot waits in `ending` for the ending event.
    fn end_stream(&mut self, stream: StreamId) -> bool {
        match self.remove_stream(stream) {
            Some(s) => {
                if let Some(slot) = s.slot {
                    self.ending.insert(stream, slot);
                }
                true
            }
            None => false,
        }
    }

    /// Errors for a stream frame whose id this link never opened: ids of ended streams
    /// are at or below the highest one opened, and their late frames are dropped.
    fn check_known(&self, stream: StreamId) -> Result<(), MuxError> {
        let opened = match self.role {
            Role::Dialer => stream < self.next_id,
            Role::Acceptor => stream <= self.highest_seen,
        };
        if opened {
            Ok(())
        } else {
            Err(MuxError::UnknownStream(stream))
        }
    }

    /// Control frames the peer may leave unread (answers to its OPENs) before it counts
    /// as not reading: a refusal per stream it may have open, twice over, and some slack.
    /// Control frames (answers, credit, pings) waiting for [`Mux::poll_transmit`].
    pub fn control_queued(&self) -> usize {
        self.control.len()
    }

    fn control_limit(&self) -> usize {
        2 * self.cfg.max_streams + 64
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.poll_event_slot().map(|(e, _)| e)
    }

    /// The next event, with the slot of the stream it ends: `OpenErr`, `Reset` and
    /// `Closed` hand back what [`Mux::attach`] kept (streams ended by the caller's own
    /// `reset` or `refuse` return it from there).
    pub fn poll_event_slot(&mut self) -> Option<(Event, Option<T>)> {
        let event = self.events.pop_front()?;
        let slot = match &event {
            Event::OpenErr { stream, .. }
            | Event::Reset { stream, .. }
            | Event::Closed { stream } => self.ending.remove(stream),
            _ => None,
        };
        Some((event, slot))
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

    /// The next record, if it is one DATA frame carrying exactly the roomy chunk at the
    /// front of the next stream's queue: the frame header is written into the chunk's room
    /// and the chunk comes back as the record, to be sealed where it lies. `None` (and
    /// nothing changes) when anything else is due first — PING, PONG, control frames — or
    /// the next stream's data is not such a chunk; [`Mux::poll_transmit`] then copies it.
    pub fn poll_transmit_owned(&mut self) -> Option<OwnedRecord> {
        if self.pong_due.is_some() || self.ping_due.is_some() || !self.control.is_empty() {
            return None;
        }
        let id = *self.ready.front()?;
        let s = self.streams.get_mut(&id)?;
        let fits =
            |len: usize| len + HEADER_LEN <= self.cfg.max_record && len <= usize::from(u16::MAX);
        match s.send_queue.front() {
            Some(Chunk::Roomy(r)) if !r.is_empty() && fits(r.len()) => {}
            _ => return None,
        }
        let Some(Chunk::Roomy(chunk)) = s.send_queue.pop_front() else {
            return None;
        };
        self.ready.pop_front();
        let len = chunk.len();
        s.queued -= len;
        let (mut buf, data) = chunk.into_parts();
        let frames = data.start - HEADER_LEN..data.end;
        buf[frames.start..data.start].copy_from_slice(&frame::data_header(id, len as u16));
        // A queued FIN goes out with the next copied record.
        if s.wants_transmit() {
            self.ready.push_back(id);
        } else {
            s.in_ready = false;
        }
        debug_assert_eq!(data.start, HEAD_ROOM);
        Some(OwnedRecord { buf, frames })
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
                    out.extend_from_slice(&front.as_slice()[..n]);
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
                    self.end_stream(id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::chunk::roomy;
    use std::collections::HashMap;

    const SEC: Duration = Duration::from_secs(1);

    fn cfg() -> MuxConfig {
        MuxConfig {
            window: 64 * 1024,
            max_window: 0,
            window_budget: 0,
            max_streams: 16,
            max_record: 65535 - 16,
            ping_interval: 10 * SEC,
            dead_after: 3,
        }
    }

    struct Pair {
        d: Mux,
        a: Mux,
        now: Instant,
    }

    impl Pair {
        fn new(cfg: MuxConfig) -> Self {
            Self::with(cfg.clone(), cfg)
        }

        fn with(dialer: MuxConfig, acceptor: MuxConfig) -> Self {
            let now = Instant::now();
            let mut p = Pair {
                d: Mux::<()>::new(Role::Dialer, dialer, now),
                a: Mux::<()>::new(Role::Acceptor, acceptor, now),
                now,
            };
            // The SETTINGS of both sides, before any stream.
            p.pump();
            assert_eq!(events(&mut p.d), vec![]);
            assert_eq!(events(&mut p.a), vec![]);
            p
        }

        /// Moves records both ways until neither side has anything to send.
        fn pump(&mut self) -> usize {
            let mut records = 0;
            loop {
                let n = transfer(&mut self.d, &mut self.a, self.now)
                    + transfer(&mut self.a, &mut self.d, self.now);
                if n == 0 {
                    return records;
                }
                records += n;
            }
        }
    }

    /// Moves every record `from` has queued into `to`, checking the record size bound.
    fn transfer(from: &mut Mux, to: &mut Mux, now: Instant) -> usize {
        let mut n = 0;
        loop {
            let mut out = Vec::new();
            if !from.poll_transmit(&mut out) {
                assert!(out.is_empty());
                return n;
            }
            assert!(!out.is_empty());
            assert!(out.len() <= from.cfg.max_record, "record of {}", out.len());
            to.handle_record(Bytes::from(out), now).unwrap();
            n += 1;
        }
    }

    /// A multiplexer whose SETTINGS frame was already taken out, as if sent.
    fn settled(role: Role, cfg: MuxConfig, now: Instant) -> Mux {
        let mut m = Mux::new(role, cfg, now);
        let mut out = Vec::new();
        assert!(m.poll_transmit(&mut out));
        let window = m.cfg.window;
        assert_eq!(
            frame::decode(&out),
            Ok((Frame::Settings { window }, out.len()))
        );
        m
    }

    fn events(m: &mut Mux) -> Vec<Event> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    fn data(stream: StreamId, bytes: &'static [u8]) -> Event {
        Event::Data {
            stream,
            data: Bytes::from_static(bytes),
        }
    }

    fn record(frames: &[Frame<'_>]) -> Bytes {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out);
        }
        Bytes::from(out)
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8 ^ seed)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn open_zero_rtt_data_then_accept() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("echo").unwrap();
        assert_eq!(s, 1);
        p.d.send(s, Bytes::from_static(b"hello")).unwrap();
        assert!(p.d.has_pending_transmit());
        p.pump();
        assert_eq!(
            events(&mut p.a),
            vec![
                Event::Opened {
                    stream: 1,
                    service: "echo".into()
                },
                data(1, b"hello")
            ]
        );
        // Not accepted yet: the acceptor may not send.
        assert_eq!(
            p.a.send(1, Bytes::from_static(b"x")),
            Err(StreamError::NotOpen(1))
        );
        p.a.accept(1);
        p.a.send(1, Bytes::from_static(b"world")).unwrap();
        p.pump();
        assert_eq!(
            events(&mut p.d),
            vec![Event::OpenOk { stream: 1 }, data(1, b"world")]
        );
        assert_eq!(p.d.open("echo").unwrap(), 2);
        assert_eq!(p.d.stream_count(), 2);
    }

    #[test]
    fn open_rejects_bad_names_and_acceptor() {
        let mut p = Pair::new(cfg());
        assert_eq!(p.d.open("Bad Name"), Err(StreamError::InvalidService));
        assert_eq!(p.d.open(""), Err(StreamError::InvalidService));
        assert_eq!(p.a.open("svc"), Err(StreamError::NotDialer));
        assert!(p.d.is_idle());
    }

    #[test]
    fn refuse_reaches_dialer_and_late_data_is_ignored() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("db").unwrap();
        p.d.send(s, Bytes::from_static(b"early")).unwrap();
        p.pump();
        assert_eq!(events(&mut p.a).len(), 2);
        p.a.refuse(s, OpenError::NotAllowed);
        // In flight while the refusal travels: the acceptor drops it silently.
        p.d.send(s, Bytes::from_static(b"late")).unwrap();
        p.d.finish(s);
        p.pump();
        assert_eq!(
            events(&mut p.d),
            vec![Event::OpenErr {
                stream: s,
                code: OpenError::NotAllowed
            }]
        );
        assert!(events(&mut p.a).is_empty());
        assert!(p.d.is_idle() && p.a.is_idle());
        assert_eq!(
            p.d.send(s, Bytes::from_static(b"x")),
            Err(StreamError::NotOpen(s))
        );
    }

    /// Moves `payload` over `stream` from one side to the other, consuming all it receives.
    fn transfer_all(p: &mut Pair, dialer_sends: bool, stream: StreamId, payload: &Bytes) {
        let mut sent = 0;
        let mut got = Vec::with_capacity(payload.len());
        let mut rounds = 0;
        while got.len() < payload.len() {
            rounds += 1;
            assert!(rounds < 100_000, "no progress");
            let tx = if dialer_sends { &mut p.d } else { &mut p.a };
            let n = (tx.send_credit(stream) as usize)
                .min(payload.len() - sent)
                .min(20_000);
            if n > 0 {
                tx.send(stream, payload.slice(sent..sent + n)).unwrap();
                sent += n;
            }
            p.pump();
            let rx = if dialer_sends { &mut p.a } else { &mut p.d };
            for e in events(rx) {
                if let Event::Data { stream: s, data } = e {
                    assert_eq!(s, stream);
                    got.extend_from_slice(&data);
                    rx.consumed(s, data.len());
                }
            }
            // Returns the WINDOW frames; the sender's Credit events are not needed here.
            p.pump();
            let tx = if dialer_sends { &mut p.d } else { &mut p.a };
            events(tx);
        }
        assert_eq!(got.len(), payload.len());
        assert!(got == payload[..], "bytes differ");
    }

    #[test]
    fn ten_mib_through_one_stream() {
        let mut p = Pair::new(MuxConfig {
            window: 256 * 1024,
            max_window: 0,
            window_budget: 0,
            ..cfg()
        });
        let s = p.d.open("bulk").unwrap();
        p.pump();
        p.a.accept(s);
        p.pump();
        events(&mut p.a);
        events(&mut p.d);
        let payload = pattern(10 << 20, 7);
        transfer_all(&mut p, true, s, &payload);
        let back = pattern(3 << 20, 9);
        transfer_all(&mut p, false, s, &back);
    }

    /// Sends `len` bytes dialer → acceptor on `stream`, the receiver consuming each chunk
    /// at `p.now` (advanced by `step` per round); returns the largest credit the sender
    /// ever held.
    fn stream_at(p: &mut Pair, stream: StreamId, len: usize, step: Duration) -> u64 {
        let payload = pattern(len, 3);
        let (mut sent, mut got, mut max_credit) = (0, 0, 0u64);
        let mut rounds = 0;
        while got < len {
            rounds += 1;
            assert!(rounds < 100_000, "no progress");
            max_credit = max_credit.max(p.d.send_credit(stream));
            let n = (p.d.send_credit(stream) as usize).min(len - sent);
            if n > 0 {
                p.d.send(stream, payload.slice(sent..sent + n)).unwrap();
                sent += n;
            }
            p.pump();
            // The reader takes `step` to deliver what arrived.
            let now = p.now + step;
            for e in events(&mut p.a) {
                if let Event::Data { data, .. } = e {
                    got += data.len();
                    p.a.consumed_at(stream, data.len(), now);
                }
            }
            p.pump();
            events(&mut p.d);
            p.now += step;
        }
        max_credit
    }

    #[test]
    fn receive_window_grows_when_it_limits_the_stream_up_to_max_window() {
        let mut p = Pair::new(MuxConfig {
            window: 16 * 1024,
            max_window: 256 * 1024,
            window_budget: 1 << 20,
            ..cfg()
        });
        let s = p.d.open("bulk").unwrap();
        p.pump();
        p.a.accept(s);
        p.pump();
        events(&mut p.a);
        events(&mut p.d);
        // Consumed as fast as it arrives (no time passes, no RTT measured yet): the window
        // doubles at each grant until max_window, and never beyond.
        let max_credit = stream_at(&mut p, s, 8 << 20, Duration::ZERO);
        assert_eq!(p.a.streams[&s].recv_window, 256 * 1024);
        assert!(
            max_credit > 128 * 1024 && max_credit <= 256 * 1024,
            "sender credit peaked at {max_credit}"
        );
    }

    #[test]
    fn window_growth_is_bounded_per_link_and_given_back_by_slow_streams() {
        let mut p = Pair::new(MuxConfig {
            window: 16 * 1024,
            max_window: 256 * 1024,
            window_budget: 64 * 1024,
            ..cfg()
        });
        let a = p.d.open("first").unwrap();
        let b = p.d.open("second").unwrap();
        p.pump();
        p.a.accept(a);
        p.a.accept(b);
        p.pump();
        events(&mut p.a);
        events(&mut p.d);
        stream_at(&mut p, a, 4 << 20, Duration::ZERO);
        stream_at(&mut p, b, 4 << 20, Duration::ZERO);
        let (wa, wb) = (p.a.streams[&a].recv_window, p.a.streams[&b].recv_window);
        assert_eq!(p.a.grown, 64 * 1024);
        assert_eq!(wa + wb, 2 * 16 * 1024 + 64 * 1024, "windows {wa} + {wb}");
        assert_eq!(
            wa,
            16 * 1024 + 64 * 1024,
            "the first stream took the budget"
        );
        // The first stream's reader slows down: it gives its growth back...
        stream_at(&mut p, a, 2 << 20, Duration::from_millis(25));
        assert_eq!(p.a.streams[&a].recv_window, 16 * 1024);
        // ...and the second stream can grow into it.
        stream_at(&mut p, b, 4 << 20, Duration::ZERO);
        assert_eq!(p.a.streams[&b].recv_window, 16 * 1024 + 64 * 1024);
        // Closing a grown stream returns its growth.
        p.a.reset(b, ResetCode::Cancelled);
        assert_eq!(p.a.grown, 0);
    }

    #[test]
    fn receive_window_stays_when_the_reader_is_the_limit() {
        let mut p = Pair::new(MuxConfig {
            window: 16 * 1024,
            max_window: 256 * 1024,
            window_budget: 1 << 20,
            ..cfg()
        });
        let s = p.d.open("slow-reader").unwrap();
        p.pump();
        p.a.accept(s);
        p.pump();
        events(&mut p.a);
        events(&mut p.d);
        // Each half window takes longer than the 20 ms "fast" bound: no growth.
        let max_credit = stream_at(&mut p, s, 1 << 20, Duration::from_millis(25));
        assert_eq!(max_credit, 16 * 1024);
        assert_eq!(p.a.streams[&s].recv_window, 16 * 1024);
        // The plain `consumed` (no clock) never grows a window either.
        let mut q = Pair::new(MuxConfig {
            window: 16 * 1024,
            max_window: 256 * 1024,
            window_budget: 1 << 20,
            ..cfg()
        });
        let s = q.d.open("untimed").unwrap();
        q.pump();
        q.a.accept(s);
        q.pump();
        events(&mut q.a);
        events(&mut q.d);
        let payload = pattern(1 << 20, 5);
        transfer_all(&mut q, true, s, &payload);
        assert_eq!(q.a.streams[&s].recv_window, 16 * 1024);
    }

    #[test]
    fn credit_blocks_sender_but_not_other_streams() {
        let mut p = Pair::new(MuxConfig {
            window: INITIAL_CREDIT,
            max_window: 0,
            window_budget: 0,
            ..cfg()
        });
        let slow = p.d.open("slow").unwrap();
        let fast = p.d.open("fast").unwrap();
        p.pump();
        p.a.accept(slow);
        p.a.accept(fast);
        p.pump();
        events(&mut p.a);
        events(&mut p.d);

        p.d.send(slow, pattern(16384, 1)).unwrap();
        assert_eq!(p.d.send_credit(slow), 0);
        assert_eq!(
            p.d.send(slow, Bytes::from_static(b"x")),
            Err(StreamError::OverCredit {
                stream: slow,
                wanted: 1,
                credit: 0
            })
        );
        p.pump();
        let slow_events = events(&mut p.a);
        let slow_bytes: usize = slow_events
            .iter()
            .map(|e| match e {
                Event::Data { data, .. } => data.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(slow_bytes, 16384);
        // The receiver never consumes `slow`; `fast` still moves many windows' worth.
        transfer_all(&mut p, true, fast, &pattern(1 << 20, 2));
        assert_eq!(p.d.send_credit(slow), 0);

        // Half a window consumed: credit comes back and the driver is told.
        p.a.consumed(slow, 4000);
        p.pump();
        assert!(
            events(&mut p.d).is_empty(),
            "below half a window: no WINDOW"
        );
        p.a.consumed(slow, 4192);
        p.pump();
        assert_eq!(
            events(&mut p.d),
            vec![Event::Credit {
                stream: slow,
                bytes: 8192
            }]
        );
        assert_eq!(p.d.send_credit(slow), 8192);
    }

    #[test]
    fn peer_sending_beyond_credit_is_fatal() {
        let w = INITIAL_CREDIT as usize;
        let c = MuxConfig {
            window: INITIAL_CREDIT,
            max_window: 0,
            window_budget: 0,
            ..cfg()
        };
        let now = Instant::now();
        let mut a = Mux::<()>::new(Role::Acceptor, c.clone(), now);
        let big = vec![1u8; w + 1];
        let r = record(&[
            Frame::Open {
                stream: 1,
                service: "svc",
            },
            Frame::Data {
                stream: 1,
                data: &big,
            },
        ]);
        assert_eq!(
            a.handle_record(r, now),
            Err(MuxError::CreditExceeded {
                stream: 1,
                window: w as u64
            })
        );
        // No event of a dying record escapes.
        assert_eq!(a.poll_event(), None);

        let mut a = Mux::<()>::new(Role::Acceptor, c, now);
        let part = vec![1u8; w * 6 / 10];
        let open = record(&[Frame::Open {
            stream: 1,
            service: "svc",
        }]);
        a.handle_record(open, now).unwrap();
        let d = record(&[Frame::Data {
            stream: 1,
            data: &part,
        }]);
        a.handle_record(d.clone(), now).unwrap();
        assert_eq!(
            a.handle_record(d, now),
            Err(MuxError::CreditExceeded {
                stream: 1,
                window: (w - w * 6 / 10) as u64
            })
        );
    }

    #[test]
    fn window_overflow_is_fatal() {
        let now = Instant::now();
        let mut d = Mux::<()>::new(Role::Dialer, cfg(), now);
        let s = d.open("svc").unwrap();
        let r = record(&[Frame::Window {
            stream: s,
            credit: u32::MAX,
        }]);
        assert_eq!(
            d.handle_record(r, now),
            Err(MuxError::WindowOverflow { stream: s })
        );
    }

    #[test]
    fn half_close_dialer_first_then_acceptor() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("svc").unwrap();
        p.d.send(s, Bytes::from_static(b"req")).unwrap();
        p.d.finish(s);
        assert_eq!(
            p.d.send(s, Bytes::from_static(b"x")),
            Err(StreamError::SendAfterFin(s))
        );
        p.pump();
        assert_eq!(
            events(&mut p.a),
            vec![
                Event::Opened {
                    stream: s,
                    service: "svc".into()
                },
                data(s, b"req"),
                Event::Fin { stream: s }
            ]
        );
        p.a.accept(s);
        p.a.send(s, Bytes::from_static(b"resp")).unwrap();
        p.a.finish(s);
        p.pump();
        assert_eq!(events(&mut p.a), vec![Event::Closed { stream: s }]);
        assert_eq!(
            events(&mut p.d),
            vec![
                Event::OpenOk { stream: s },
                data(s, b"resp"),
                Event::Fin { stream: s },
                Event::Closed { stream: s }
            ]
        );
        assert!(p.d.is_idle() && p.a.is_idle());
    }

    #[test]
    fn half_close_acceptor_first_then_dialer() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("svc").unwrap();
        p.pump();
        p.a.accept(s);
        p.a.send(s, Bytes::from_static(b"banner")).unwrap();
        p.a.finish(s);
        p.pump();
        events(&mut p.a);
        assert_eq!(
            events(&mut p.d),
            vec![
                Event::OpenOk { stream: s },
                data(s, b"banner"),
                Event::Fin { stream: s }
            ]
        );
        // Still writable after the peer's FIN.
        p.d.send(s, Bytes::from_static(b"more")).unwrap();
        p.d.finish(s);
        p.pump();
        assert_eq!(events(&mut p.d), vec![Event::Closed { stream: s }]);
        assert_eq!(
            events(&mut p.a),
            vec![
                data(s, b"more"),
                Event::Fin { stream: s },
                Event::Closed { stream: s }
            ]
        );
        assert!(p.d.is_idle() && p.a.is_idle());
    }

    #[test]
    fn data_after_fin_is_fatal() {
        let now = Instant::now();
        let mut a = Mux::<()>::new(Role::Acceptor, cfg(), now);
        let r = record(&[
            Frame::Open {
                stream: 1,
                service: "svc",
            },
            Frame::Fin { stream: 1 },
            Frame::Data {
                stream: 1,
                data: b"x",
            },
        ]);
        assert_eq!(
            a.handle_record(r, now),
            Err(MuxError::DataAfterFin { stream: 1 })
        );
    }

    #[test]
    fn reset_drops_queued_data_both_ways() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("svc").unwrap();
        p.pump();
        p.a.accept(s);
        p.pump();
        events(&mut p.a);
        events(&mut p.d);
        p.d.send(s, pattern(5000, 3)).unwrap();
        p.d.reset(s, ResetCode::Cancelled);
        assert_eq!(p.d.stream_count(), 0);
        p.pump();
        assert_eq!(
            events(&mut p.a),
            vec![Event::Reset {
                stream: s,
                code: ResetCode::Cancelled
            }]
        );
        assert!(p.d.is_idle() && p.a.is_idle());

        let s = p.d.open("svc").unwrap();
        p.pump();
        p.a.accept(s);
        p.a.reset(s, ResetCode::TargetError);
        p.pump();
        assert_eq!(
            events(&mut p.d),
            vec![
                Event::OpenOk { stream: s },
                Event::Reset {
                    stream: s,
                    code: ResetCode::TargetError
                }
            ]
        );
        assert_eq!(
            p.d.send(s, Bytes::from_static(b"x")),
            Err(StreamError::NotOpen(s))
        );
        assert!(p.d.is_idle() && p.a.is_idle());
    }

    #[test]
    fn max_streams_auto_refuse() {
        let mut p = Pair::with(
            cfg(),
            MuxConfig {
                max_streams: 2,
                ..cfg()
            },
        );
        for _ in 0..3 {
            let s = p.d.open("svc").unwrap();
            p.d.send(s, Bytes::from_static(b"hi")).unwrap();
        }
        p.pump();
        let opened = events(&mut p.a)
            .into_iter()
            .filter(|e| matches!(e, Event::Opened { .. }))
            .count();
        assert_eq!(opened, 2);
        assert_eq!(p.a.stream_count(), 2);
        assert_eq!(
            events(&mut p.d),
            vec![Event::OpenErr {
                stream: 3,
                code: OpenError::TooManyStreams
            }]
        );
        assert_eq!(p.d.stream_count(), 2);

        let mut d = Mux::<()>::new(
            Role::Dialer,
            MuxConfig {
                max_streams: 1,
                ..cfg()
            },
            p.now,
        );
        d.open("svc").unwrap();
        assert_eq!(d.open("svc"), Err(StreamError::TooManyStreams));
    }

    #[test]
    fn stream_id_reuse_and_misplaced_open() {
        let now = Instant::now();
        let open = |stream| Frame::Open {
            stream,
            service: "svc",
        };
        let mut a = Mux::<()>::new(Role::Acceptor, cfg(), now);
        assert_eq!(
            a.handle_record(record(&[open(1), open(1)]), now),
            Err(MuxError::DuplicateStream(1))
        );
        let mut a = Mux::<()>::new(Role::Acceptor, cfg(), now);
        assert_eq!(
            a.handle_record(record(&[open(5), open(3)]), now),
            Err(MuxError::StreamIdNotIncreasing(3))
        );
        // A refused id is forgotten but still may not be reused.
        let mut a = Mux::<()>::new(Role::Acceptor, cfg(), now);
        a.handle_record(record(&[open(1)]), now).unwrap();
        a.refuse(1, OpenError::UnknownService);
        assert_eq!(
            a.handle_record(record(&[open(1)]), now),
            Err(MuxError::StreamIdNotIncreasing(1))
        );
        let mut d = Mux::<()>::new(Role::Dialer, cfg(), now);
        assert_eq!(
            d.handle_record(record(&[open(1)]), now),
            Err(MuxError::UnexpectedOpen)
        );
    }

    #[test]
    fn frames_for_ended_streams_are_ignored_and_for_never_opened_ones_fatal() {
        let now = Instant::now();
        let mut a = Mux::<()>::new(Role::Acceptor, cfg(), now);
        a.handle_record(
            record(&[Frame::Open {
                stream: 9,
                service: "svc",
            }]),
            now,
        )
        .unwrap();
        let _ = a.refuse(9, OpenError::UnknownService);
        events(&mut a);
        // Stream 9 existed and was forgotten: its frames raced with that.
        let r = record(&[
            Frame::Data {
                stream: 9,
                data: b"x",
            },
            Frame::Fin { stream: 9 },
            Frame::Window {
                stream: 9,
                credit: 5,
            },
            Frame::Rst {
                stream: 9,
                code: ResetCode::Cancelled,
            },
            Frame::OpenOk { stream: 9 },
        ]);
        a.handle_record(r, now).unwrap();
        assert_eq!(a.poll_event(), None);
        assert_eq!(a.stream_count(), 0);
        // Ids above every OPEN were never opened: DATA for them costs no credit, so a
        // peer could send it forever.
        let never = [
            Frame::Data {
                stream: 10,
                data: b"x",
            },
            Frame::Fin { stream: 10 },
            Frame::Window {
                stream: 11,
                credit: 5,
            },
            Frame::Rst {
                stream: 12,
                code: ResetCode::Cancelled,
            },
        ];
        for f in never {
            let mut a2 = Mux::<()>::new(Role::Acceptor, cfg(), now);
            let id = match f {
                Frame::Data { stream, .. }
                | Frame::Fin { stream }
                | Frame::Window { stream, .. }
                | Frame::Rst { stream, .. } => stream,
                _ => unreachable!(),
            };
            assert_eq!(
                a2.handle_record(record(&[f]), now),
                Err(MuxError::UnknownStream(id))
            );
        }
        // The dialer: ids it has not handed out yet.
        let mut d = Mux::<()>::new(Role::Dialer, cfg(), now);
        d.open("svc").unwrap();
        assert_eq!(
            d.handle_record(record(&[Frame::OpenOk { stream: 2 }]), now),
            Err(MuxError::UnknownStream(2))
        );
    }

    /// Each side announces its window; a stream opened before the announcement arrived
    /// starts with INITIAL_CREDIT and gets the rest as credit when it does, so peers whose
    /// configs disagree each send within what the other enforces.
    #[test]
    fn windows_are_announced_so_differing_configs_interoperate() {
        let now = Instant::now();
        let big = MuxConfig {
            window: 1 << 20,
            ..cfg()
        };
        let small = MuxConfig {
            window: 64 * 1024,
            ..cfg()
        };
        for (dc, ac) in [(big.clone(), small.clone()), (small, big)] {
            let mut d = Mux::<()>::new(Role::Dialer, dc.clone(), now);
            let a = Mux::<()>::new(Role::Acceptor, ac.clone(), now);
            // Opened before any SETTINGS crossed.
            let s = d.open("svc").unwrap();
            assert_eq!(d.send_credit(s), u64::from(INITIAL_CREDIT));
            let mut p = Pair { d, a, now };
            p.pump();
            assert!(events(&mut p.d).contains(&Event::Credit {
                stream: s,
                bytes: ac.window - INITIAL_CREDIT
            }));
            assert_eq!(p.d.send_credit(s), u64::from(ac.window));
            p.a.accept(s);
            p.pump();
            events(&mut p.a);
            events(&mut p.d);
            assert_eq!(p.a.send_credit(s), u64::from(dc.window));
            // Each sends its whole credit at once: neither trips CreditExceeded.
            transfer_all(&mut p, true, s, &pattern(3 << 20, 5));
            transfer_all(&mut p, false, s, &pattern(3 << 20, 6));
            let later = p.d.open("svc").unwrap();
            assert_eq!(p.d.send_credit(later), u64::from(ac.window));
        }
        let mut a = Mux::<()>::new(Role::Acceptor, cfg(), now);
        let settings = |window| record(&[Frame::Settings { window }]);
        assert_eq!(
            a.handle_record(settings(INITIAL_CREDIT - 1), now),
            Err(MuxError::SettingsOutOfRange(INITIAL_CREDIT - 1))
        );
        a.handle_record(settings(INITIAL_CREDIT), now).unwrap();
        assert_eq!(
            a.handle_record(settings(INITIAL_CREDIT), now),
            Err(MuxError::DuplicateSettings)
        );
    }

    /// REKEY frames reach the driver in order, one per record; two in one record end the
    /// link (the key switches at a record's end), and nothing of that record is kept.
    #[test]
    fn rekey_frames_are_handed_on_one_per_record() {
        use crate::proto::frame::RekeyStep;
        let now = Instant::now();
        let mut d = Mux::<()>::new(Role::Dialer, cfg(), now);
        let rekey = |epoch| Frame::Rekey {
            step: RekeyStep::Request,
            epoch,
            key: [0; 32],
        };
        d.handle_record(record(&[rekey(1)]), now).unwrap();
        d.handle_record(record(&[Frame::Ping { nonce: 3 }, rekey(2)]), now)
            .unwrap();
        assert_eq!(d.take_rekey().map(|m| m.epoch), Some(1));
        assert_eq!(d.take_rekey().map(|m| m.epoch), Some(2));
        assert_eq!(d.take_rekey(), None);
        assert_eq!(
            d.handle_record(record(&[rekey(3), rekey(4)]), now),
            Err(MuxError::RekeyFramesInOneRecord)
        );
        assert_eq!(d.take_rekey(), None, "nothing of the refused record");
    }

    /// A peer that sends OPENs to be refused and never reads the refusals is cut off
    /// once the answers waiting for it pass a bound.
    #[test]
    fn unread_refusals_are_bounded() {
        let now = Instant::now();
        let c = MuxConfig {
            max_streams: 4,
            ..cfg()
        };
        let mut a = Mux::<()>::new(Role::Acceptor, c, now);
        let mut result = Ok(());
        let mut opened = 0u64;
        for id in 1..=10_000u64 {
            let r = record(&[Frame::Open {
                stream: id,
                service: "svc",
            }]);
            result = a.handle_record(r, now);
            if result.is_err() {
                break;
            }
            opened = id;
            while let Some(e) = a.poll_event() {
                if let Event::Opened { stream, .. } = e {
                    let _ = a.refuse(stream, OpenError::UnknownService);
                }
            }
        }
        assert!(
            matches!(result, Err(MuxError::ControlBacklog { .. })),
            "{result:?} after {opened} OPENs"
        );
        assert!(opened <= 2 * 4 + 64, "{opened} refusals queued");
    }

    #[test]
    fn ping_pong_measures_rtt() {
        let c = MuxConfig {
            ping_interval: SEC,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut d = settled(Role::Dialer, c.clone(), t0);
        let mut a = settled(Role::Acceptor, c, t0);
        assert_eq!(d.poll_timeout(), Some(t0 + SEC));
        d.handle_timeout(t0 + SEC / 2).unwrap();
        assert!(!d.has_pending_transmit());
        d.handle_timeout(t0 + SEC).unwrap();
        assert!(d.has_pending_transmit());
        assert_eq!(d.poll_timeout(), Some(t0 + 2 * SEC));
        transfer(&mut d, &mut a, t0 + SEC);
        assert!(a.has_pending_transmit(), "PONG queued at once");
        let rtt = Duration::from_millis(40);
        transfer(&mut a, &mut d, t0 + SEC + rtt);
        assert_eq!(events(&mut d), vec![Event::Rtt(rtt)]);
        assert!(events(&mut a).is_empty());
        // The PONG moved the dead deadline: no death at t0 + 3s.
        d.handle_timeout(t0 + 3 * SEC).unwrap();
    }

    #[test]
    fn dead_after_intervals_without_pong() {
        let c = MuxConfig {
            ping_interval: SEC,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut d = Mux::<()>::new(Role::Dialer, c.clone(), t0);
        d.handle_timeout(t0 + SEC).unwrap();
        d.handle_timeout(t0 + 2 * SEC).unwrap();
        assert_eq!(d.poll_timeout(), Some(t0 + 3 * SEC));
        assert_eq!(
            d.handle_timeout(t0 + 3 * SEC),
            Err(MuxError::Dead { missed: 3 })
        );

        // Any PONG restarts the count, even one for an older PING.
        let mut d = Mux::<()>::new(Role::Dialer, c, t0);
        d.handle_timeout(t0 + SEC).unwrap();
        let pong = record(&[Frame::Pong { nonce: 12345 }]);
        d.handle_record(pong, t0 + 2 * SEC).unwrap();
        assert!(events(&mut d).is_empty(), "no RTT for a foreign nonce");
        d.handle_timeout(t0 + 3 * SEC).unwrap();
        d.handle_timeout(t0 + 4 * SEC).unwrap();
        assert_eq!(
            d.handle_timeout(t0 + 5 * SEC),
            Err(MuxError::Dead { missed: 3 })
        );
    }

    #[test]
    fn the_tls_greeting_is_answered_and_its_pong_is_harmless() {
        let c = MuxConfig {
            ping_interval: SEC,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut d = Mux::<()>::new(Role::Dialer, c.clone(), t0);
        let mut a = Mux::<()>::new(Role::Acceptor, c, t0);
        let mut greeting = Vec::new();
        encode_greeting(&mut greeting);
        d.handle_record(Bytes::from(greeting), t0).unwrap();
        assert!(events(&mut d).is_empty());
        let mut out = Vec::new();
        assert!(d.poll_transmit(&mut out));
        assert_eq!(
            frame::decode(&out).unwrap().0,
            Frame::Pong {
                nonce: GREETING_NONCE
            }
        );
        // The acceptor has a PING of its own in flight when the answer lands: no RTT
        // sample, no event, no error, and its own PING is still answered.
        a.handle_timeout(t0 + SEC).unwrap();
        let mut ping = Vec::new();
        assert!(a.poll_transmit(&mut ping));
        a.handle_record(Bytes::from(out), t0 + SEC).unwrap();
        assert!(
            events(&mut a).is_empty(),
            "the greeting's PONG is not an RTT"
        );
        assert!(a.is_idle());
        d.handle_record(Bytes::from(ping), t0 + SEC).unwrap();
        transfer(&mut d, &mut a, t0 + SEC + SEC / 10);
        assert_eq!(events(&mut a), vec![Event::Rtt(SEC / 10)]);
    }

    #[test]
    fn ping_nonces_count_up() {
        let c = MuxConfig {
            ping_interval: SEC,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut d = Mux::<()>::new(Role::Dialer, c, t0);
        for i in 0..2u64 {
            d.handle_timeout(t0 + (i as u32 + 1) * SEC).unwrap();
            let mut out = Vec::new();
            assert!(d.poll_transmit(&mut out));
            assert_eq!(frame::decode(&out).unwrap().0, Frame::Ping { nonce: i });
        }
    }

    #[test]
    fn go_away_both_sides() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("svc").unwrap();
        p.pump();
        p.a.accept(s);
        p.a.go_away(7);
        p.pump();
        assert_eq!(
            events(&mut p.d),
            vec![Event::OpenOk { stream: s }, Event::GoAway { reason: 7 }]
        );
        assert_eq!(p.d.open("svc"), Err(StreamError::GoingAway));
        // Existing streams continue.
        p.d.send(s, Bytes::from_static(b"still")).unwrap();
        p.pump();
        assert_eq!(
            events(&mut p.a),
            vec![
                Event::Opened {
                    stream: s,
                    service: "svc".into()
                },
                data(s, b"still")
            ]
        );

        let mut q = Pair::new(cfg());
        q.d.go_away(1);
        assert_eq!(q.d.open("svc"), Err(StreamError::GoingAway));
        q.pump();
        assert_eq!(events(&mut q.a), vec![Event::GoAway { reason: 1 }]);
    }

    #[test]
    fn hundred_small_streams_share_one_record() {
        let c = MuxConfig {
            max_streams: 200,
            ..cfg()
        };
        let now = Instant::now();
        let mut d = settled(Role::Dialer, c.clone(), now);
        let mut a = Mux::<()>::new(Role::Acceptor, c, now);
        for i in 0..100u8 {
            let s = d.open("svc").unwrap();
            d.send(s, Bytes::from(vec![i; 10])).unwrap();
        }
        let mut out = Vec::new();
        assert!(d.poll_transmit(&mut out));
        assert_eq!(out.len(), 100 * (HEADER_LEN + 3) + 100 * (HEADER_LEN + 10));
        assert!(!d.has_pending_transmit());
        let mut more = Vec::new();
        assert!(!d.poll_transmit(&mut more));
        a.handle_record(Bytes::from(out), now).unwrap();
        let ev = events(&mut a);
        assert_eq!(ev.len(), 200);
        for s in 1..=100u64 {
            assert!(ev.contains(&Event::Data {
                stream: s,
                data: Bytes::from(vec![(s - 1) as u8; 10])
            }));
        }
    }

    #[test]
    fn busy_streams_take_turns() {
        let now = Instant::now();
        let mut d = Mux::<()>::new(
            Role::Dialer,
            MuxConfig {
                max_record: 1000,
                ..cfg()
            },
            now,
        );
        let s1 = d.open("one").unwrap();
        let s2 = d.open("two").unwrap();
        let mut opens = Vec::new();
        assert!(d.poll_transmit(&mut opens));
        d.send(s1, pattern(5000, 1)).unwrap();
        d.send(s2, pattern(5000, 2)).unwrap();
        let mut order = Vec::new();
        let mut out = Vec::new();
        while d.poll_transmit(&mut out) {
            let (f, _) = frame::decode(&out).unwrap(); // who leads the record
            let Frame::Data { stream, .. } = f else {
                panic!("{f:?}");
            };
            order.push(stream);
            out.clear();
        }
        assert_eq!(order.len(), 11); // 10000 bytes in records of 989 payload bytes
        assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    }

    #[test]
    fn poll_transmit_appends() {
        let now = Instant::now();
        let mut d = settled(Role::Dialer, cfg(), now);
        d.open("svc").unwrap();
        let mut out = vec![0xAA, 0xBB];
        assert!(d.poll_transmit(&mut out));
        assert_eq!(&out[..2], &[0xAA, 0xBB]);
        assert_eq!(
            frame::decode(&out[2..]).unwrap().0,
            Frame::Open {
                stream: 1,
                service: "svc"
            }
        );
    }

    #[test]
    fn records_never_exceed_max_record() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let sizes = [MIN_RECORD, 100, 1000, 4096, 65535 - 16];
        assert!(!sizes.is_empty());
        for &max_record in &sizes {
            let c = MuxConfig {
                window: 8192,
                max_window: 0,
                window_budget: 0,
                max_record,
                ..cfg()
            };
            let mut p = Pair::new(c);
            let streams: Vec<StreamId> = (0..5).map(|_| p.d.open("svc").unwrap()).collect();
            let mut expected: HashMap<StreamId, Vec<u8>> = HashMap::new();
            let mut got: HashMap<StreamId, Vec<u8>> = HashMap::new();
            for round in 0..300 {
                let s = streams[rng.below(streams.len() as u64) as usize];
                let credit = p.d.send_credit(s) as usize;
                let n = (rng.below(3000) as usize).min(credit);
                let chunk = pattern(n, round as u8);
                p.d.send(s, chunk.clone()).unwrap();
                expected.entry(s).or_default().extend_from_slice(&chunk);
                // `Pair::pump` asserts the size of every record.
                p.pump();
                for e in events(&mut p.a) {
                    match e {
                        Event::Opened { stream, .. } => p.a.accept(stream),
                        Event::Data { stream, data } => {
                            got.entry(stream).or_default().extend_from_slice(&data);
                            p.a.consumed(stream, data.len());
                        }
                        other => panic!("{other:?}"),
                    }
                }
                p.pump();
                events(&mut p.d);
            }
            for s in &streams {
                assert_eq!(got.get(s), expected.get(s), "stream {s} at {max_record}");
            }
        }
    }

    #[test]
    fn garbage_records_never_panic() {
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        let now = Instant::now();
        let mut errors = 0;
        for i in 0..10_000 {
            let role = if i % 2 == 0 {
                Role::Dialer
            } else {
                Role::Acceptor
            };
            let mut m = Mux::<()>::new(role, cfg(), now);
            if role == Role::Dialer {
                m.open("svc").unwrap();
            }
            let mut buf = Vec::new();
            if i % 3 == 0 {
                // Plausible headers, so the checks past the type byte are reached too.
                for _ in 0..rng.below(5) {
                    buf.push(rng.below(12) as u8);
                    buf.extend_from_slice(&rng.below(3).to_be_bytes());
                    let len = rng.below(12) as u16;
                    buf.extend_from_slice(&len.to_be_bytes());
                    for _ in 0..len {
                        buf.push(if rng.below(2) == 0 {
                            b'a'
                        } else {
                            rng.next() as u8
                        });
                    }
                }
                if rng.below(4) == 0 {
                    buf.truncate(rng.below(buf.len() as u64 + 1) as usize);
                }
            } else {
                for _ in 0..rng.below(200) {
                    buf.push(rng.next() as u8);
                }
            }
            if m.handle_record(Bytes::from(buf), now).is_err() {
                errors += 1;
            }
            while m.poll_event().is_some() {}
            let mut out = Vec::new();
            while m.poll_transmit(&mut out) {
                assert!(out.len() <= m.cfg.max_record);
                out.clear();
            }
        }
        assert!(errors > 5_000, "garbage was accepted: only {errors} errors");
    }

    /// Like `transfer`, but takes records built in place first, as the driver does; returns
    /// (records built in place, records copied).
    fn transfer_owned(from: &mut Mux, to: &mut Mux, now: Instant) -> (usize, usize) {
        use crate::proto::chunk::{RECORD_HEAD, RECORD_TAIL};
        let (mut owned, mut copied) = (0, 0);
        loop {
            if let Some(rec) = from.poll_transmit_owned() {
                assert!(
                    rec.frames.start >= RECORD_HEAD,
                    "no room for the record header"
                );
                assert!(
                    rec.buf.len() - rec.frames.end >= RECORD_TAIL,
                    "no room for the tag"
                );
                assert!(rec.frames.len() <= from.cfg.max_record);
                to.handle_record(Bytes::copy_from_slice(&rec.buf[rec.frames]), now)
                    .unwrap();
                owned += 1;
                continue;
            }
            let mut out = Vec::new();
            if !from.poll_transmit(&mut out) {
                return (owned, copied);
            }
            assert!(out.len() <= from.cfg.max_record);
            to.handle_record(Bytes::from(out), now).unwrap();
            copied += 1;
        }
    }

    #[test]
    fn a_roomy_chunk_that_fits_a_record_becomes_the_record() {
        let mut p = Pair::new(cfg());
        let s = p.d.open("svc").unwrap();
        // The OPEN is due first: nothing is built in place before it.
        p.d.send(s, roomy(b"first")).unwrap();
        assert!(p.d.poll_transmit_owned().is_none());
        assert_eq!(transfer_owned(&mut p.d, &mut p.a, p.now), (0, 1));
        assert!(matches!(
            events(&mut p.a)[..],
            [Event::Opened { .. }, Event::Data { .. }]
        ));
        p.a.accept(s);
        p.pump();
        events(&mut p.d);

        let payload = pattern(20_000, 3);
        p.d.send(s, roomy(&payload)).unwrap();
        let rec = p.d.poll_transmit_owned().expect("built in place");
        assert_eq!(
            rec.frames,
            HEAD_ROOM - HEADER_LEN..HEAD_ROOM + payload.len()
        );
        let (f, used) = frame::decode(&rec.buf[rec.frames.clone()]).unwrap();
        assert_eq!(used, rec.frames.len());
        assert_eq!(
            f,
            Frame::Data {
                stream: s,
                data: &payload
            }
        );
        assert!(p.d.poll_transmit_owned().is_none());
        let mut out = Vec::new();
        assert!(!p.d.poll_transmit(&mut out), "the chunk was taken whole");

        // A queued FIN follows in the next (copied) record.
        p.d.send(s, roomy(b"last")).unwrap();
        p.d.finish(s);
        assert_eq!(transfer_owned(&mut p.d, &mut p.a, p.now), (1, 1));
        assert_eq!(
            events(&mut p.a),
            vec![data(s, b"last"), Event::Fin { stream: s }]
        );
    }

    #[test]
    fn a_roomy_chunk_larger_than_a_record_is_copied() {
        let c = MuxConfig {
            max_record: 1000,
            ..cfg()
        };
        let mut p = Pair::new(c);
        let s = p.d.open("svc").unwrap();
        p.pump();
        p.a.accept(s);
        p.pump();
        events(&mut p.a);
        let payload = pattern(1000 - HEADER_LEN + 1, 9);
        p.d.send(s, roomy(&payload)).unwrap();
        assert!(p.d.poll_transmit_owned().is_none());
        assert_eq!(transfer_owned(&mut p.d, &mut p.a, p.now), (0, 2));
        let got: Vec<u8> = events(&mut p.a)
            .into_iter()
            .flat_map(|e| match e {
                Event::Data { data, .. } => data.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, &payload[..]);
    }

    /// Roomy and shared chunks of random sizes on several streams, with control frames in
    /// between: every stream's bytes arrive exactly, in order, whichever way each record
    /// was built.
    #[test]
    fn roomy_and_copied_chunks_mix_without_loss_or_reordering() {
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let c = MuxConfig {
            window: 16 * 1024,
            max_record: 4096,
            ..cfg()
        };
        let mut p = Pair::new(c);
        let streams: Vec<StreamId> = (0..4).map(|_| p.d.open("svc").unwrap()).collect();
        let mut expected: HashMap<StreamId, Vec<u8>> = HashMap::new();
        let mut got: HashMap<StreamId, Vec<u8>> = HashMap::new();
        let (mut owned, mut copied) = (0, 0);
        for round in 0..400 {
            let s = streams[rng.below(streams.len() as u64) as usize];
            let credit = p.d.send_credit(s) as usize;
            let n = (rng.below(6000) as usize).min(credit);
            let chunk = pattern(n, round as u8);
            if rng.below(3) == 0 {
                p.d.send(s, chunk.clone()).unwrap();
            } else {
                p.d.send(s, roomy(&chunk)).unwrap();
            }
            expected.entry(s).or_default().extend_from_slice(&chunk);
            if rng.below(2) == 0 {
                continue;
            }
            let (o, c) = transfer_owned(&mut p.d, &mut p.a, p.now);
            owned += o;
            copied += c;
            for e in events(&mut p.a) {
                match e {
                    Event::Opened { stream, .. } => p.a.accept(stream),
                    Event::Data { stream, data } => {
                        got.entry(stream).or_default().extend_from_slice(&data);
                        p.a.consumed(stream, data.len());
                    }
                    other => panic!("{other:?}"),
                }
            }
            p.pump();
            events(&mut p.d);
        }
        let (o, _) = transfer_owned(&mut p.d, &mut p.a, p.now);
        owned += o;
        for e in events(&mut p.a) {
            if let Event::Data { stream, data } = e {
                got.entry(stream).or_default().extend_from_slice(&data);
            }
        }
        assert!(owned > 50 && copied > 50, "owned {owned}, copied {copied}");
        assert_eq!(got, expected);
    }
}
