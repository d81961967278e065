//! One multiplexer, dialer or acceptor, fed arbitrary decrypted records (raw bytes, or
//! frames built from the input) between arbitrary local actions and timer ticks, as its
//! driver would. Invariants checked after every step, until the peer is caught breaking
//! the protocol (the link would end there):
//!
//! - no panic, no arithmetic overflow (fuzz builds check it);
//! - send credit never above 2^31, receive windows never above the configured maximum;
//! - per stream, bytes delivered and not yet consumed never exceed the largest window:
//!   the peer cannot make the mux hold more than flow control allows;
//! - streams never above `max_streams`; the control queue never above its bound plus
//!   what local actions queued since the last flush;
//! - every record it writes fits `max_record` and decodes completely, and once it says
//!   nothing is left to send, nothing is.

#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshd::proto::frame::{self, Frame, OpenError, ResetCode, StreamId};
use meshd::proto::mux::{Event, Mux, MuxConfig, Role, INITIAL_CREDIT, MIN_RECORD};
use meshd_fuzz::Reader;

/// Input: six bytes of config (role, window, growth, budget, streams, record size), then
/// operations, each an op byte and its arguments (see [`read_op`]).
#[derive(Debug)]
enum Op<'a> {
    /// A record of arbitrary bytes: `u16 len ‖ bytes` (the plaintext of a real record).
    Raw(&'a [u8]),
    /// A record of well-formed frames: a count, then each frame.
    Frames(Vec<F>),
    Accept(u8),
    Refuse(u8, u8),
    Consume(u8, u32),
    Send(u8, u16),
    Finish(u8),
    Reset(u8, u8),
    Open(u8),
    GoAway(u8),
    Tick(u16),
    Transmit,
}

/// A frame to put in a record; stream ids are mostly small, so they hit live streams.
#[derive(Debug)]
enum F {
    Open(u8, u8),
    OpenOk(u8),
    OpenErr(u8, u8),
    Data(u8, u16),
    Window(u8, u32),
    Fin(u8),
    Rst(u8, u8),
    Ping(u64),
    Pong(u64),
    GoAway(u8),
    Settings(u32),
}

fn read_frame(r: &mut Reader<'_>) -> F {
    match r.u8() % 11 {
        0 => F::Open(r.u8(), r.u8()),
        1 => F::OpenOk(r.u8()),
        2 => F::OpenErr(r.u8(), r.u8()),
        3 => F::Data(r.u8(), r.u16()),
        4 => F::Window(r.u8(), r.u32()),
        5 => F::Fin(r.u8()),
        6 => F::Rst(r.u8(), r.u8()),
        7 => F::Ping(r.u64()),
        8 => F::Pong(r.u64()),
        9 => F::GoAway(r.u8()),
        _ => F::Settings(r.u32()),
    }
}

fn read_op<'a>(r: &mut Reader<'a>) -> Op<'a> {
    match r.u8() % 12 {
        0 => Op::Raw(r.chunk()),
        1 => {
            let n = r.u8();
            Op::Frames((0..n).map(|_| read_frame(r)).collect())
        }
        2 => Op::Accept(r.u8()),
        3 => Op::Refuse(r.u8(), r.u8()),
        4 => Op::Consume(r.u8(), r.u32()),
        5 => Op::Send(r.u8(), r.u16()),
        6 => Op::Finish(r.u8()),
        7 => Op::Reset(r.u8(), r.u8()),
        8 => Op::Open(r.u8()),
        9 => Op::GoAway(r.u8()),
        10 => Op::Tick(r.u16()),
        _ => Op::Transmit,
    }
}

const SERVICES: [&str; 6] = ["svc", "redis", "a", "under_score-1", "Bad", "-lead"];

fn sid(b: u8) -> StreamId {
    match b {
        0..=239 => u64::from(b),
        240..=247 => u64::MAX - u64::from(b - 240),
        _ => 1 << (b - 200),
    }
}

static PAYLOAD: [u8; 65535] = [0xA5; 65535];

fn encode(frames: &[F], out: &mut Vec<u8>) {
    let payload = &PAYLOAD;
    for f in frames {
        if out.len() > 200_000 {
            break;
        }
        let f = match *f {
            F::Open(s, n) => Frame::Open {
                stream: sid(s),
                service: SERVICES[usize::from(n) % SERVICES.len()],
            },
            F::OpenOk(s) => Frame::OpenOk { stream: sid(s) },
            F::OpenErr(s, c) => Frame::OpenErr {
                stream: sid(s),
                code: OpenError::from_code(c),
            },
            F::Data(s, n) => Frame::Data {
                stream: sid(s),
                data: &payload[..usize::from(n).max(1)],
            },
            F::Window(s, c) => Frame::Window {
                stream: sid(s),
                credit: c.max(1),
            },
            F::Fin(s) => Frame::Fin { stream: sid(s) },
            F::Rst(s, c) => Frame::Rst {
                stream: sid(s),
                code: ResetCode::from_code(c),
            },
            F::Ping(nonce) => Frame::Ping { nonce },
            F::Pong(nonce) => Frame::Pong { nonce },
            F::GoAway(reason) => Frame::GoAway { reason },
            F::Settings(window) => Frame::Settings { window },
        };
        f.encode(out);
    }
}

struct Harness {
    mux: Mux<()>,
    cfg: MuxConfig,
    now: Instant,
    /// Streams the harness knows of, in the order it learnt them.
    known: Vec<StreamId>,
    /// Per stream: bytes delivered by DATA events and not yet reported consumed.
    unconsumed: HashMap<StreamId, u64>,
    /// Control frames local actions may have queued since the last full flush.
    local: usize,
}

impl Harness {
    fn pick(&self, i: u8) -> Option<StreamId> {
        (!self.known.is_empty()).then(|| self.known[usize::from(i) % self.known.len()])
    }

    fn events(&mut self) {
        while let Some(e) = self.mux.poll_event() {
            match e {
                Event::Opened { stream, .. } | Event::OpenOk { stream } => {
                    if !self.known.contains(&stream) {
                        self.known.push(stream);
                    }
                }
                Event::Data { stream, data } => {
                    assert!(!data.is_empty());
                    *self.unconsumed.entry(stream).or_default() += data.len() as u64;
                }
                Event::OpenErr { stream, .. }
                | Event::Reset { stream, .. }
                | Event::Closed { stream } => self.forget(stream),
                Event::Fin { .. } | Event::Credit { .. } | Event::Rtt(_) | Event::GoAway { .. } => {
                }
            }
        }
    }

    fn forget(&mut self, stream: StreamId) {
        self.known.retain(|&s| s != stream);
        self.unconsumed.remove(&stream);
    }

    fn transmit(&mut self) {
        loop {
            if let Some(rec) = self.mux.poll_transmit_owned() {
                check_record(&rec.buf[rec.frames.clone()], self.cfg.max_record);
                continue;
            }
            let mut out = Vec::new();
            if !self.mux.poll_transmit(&mut out) {
                break;
            }
            check_record(&out, self.cfg.max_record);
        }
        assert!(
            !self.mux.has_pending_transmit(),
            "nothing sent, something pending"
        );
        assert_eq!(self.mux.control_queued(), 0);
        self.local = 0;
        // Writing a FIN may close a stream.
        self.events();
    }

    fn check(&self) {
        let max_window = u64::from(self.cfg.max_window.max(self.cfg.window).max(INITIAL_CREDIT));
        assert!(self.mux.stream_count() <= self.cfg.max_streams);
        let bound = 2 * self.cfg.max_streams + 64 + self.local + 1;
        assert!(
            self.mux.control_queued() <= bound,
            "{} control frames queued",
            self.mux.control_queued()
        );
        for &s in &self.known {
            assert!(
                self.mux.send_credit(s) <= 1 << 31,
                "credit {}",
                self.mux.send_credit(s)
            );
            assert!(self.mux.recv_window(s) <= max_window);
            let held = self.unconsumed.get(&s).copied().unwrap_or(0);
            assert!(held <= max_window, "stream {s} holds {held} bytes");
        }
    }
}

fn check_record(rec: &[u8], max_record: usize) {
    assert!(
        !rec.is_empty() && rec.len() <= max_record,
        "record of {}",
        rec.len()
    );
    let mut pos = 0;
    while pos < rec.len() {
        match frame::decode(&rec[pos..]) {
            Ok((_, n)) => pos += n,
            Err(e) => panic!("the mux wrote an invalid frame: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let acceptor = r.u8() & 1 == 1;
    let window = INITIAL_CREDIT << (r.u8() % 8);
    let cfg = MuxConfig {
        window,
        max_window: window.saturating_mul(1 << (r.u8() % 5)),
        window_budget: u64::from(r.u8()) * 16 * 1024,
        max_streams: 1 + usize::from(r.u8() % 32),
        max_record: [MIN_RECORD, 1000, 16_382, 65_519][usize::from(r.u8() % 4)],
        ping_interval: Duration::from_secs(1),
        dead_after: 3,
    };
    let role = if acceptor {
        Role::Acceptor
    } else {
        Role::Dialer
    };
    let start = Instant::now();
    let mut h = Harness {
        mux: Mux::new(role, cfg.clone(), start),
        cfg,
        now: start,
        known: Vec::new(),
        unconsumed: HashMap::new(),
        local: 0,
    };
    let mut steps = 0;
    while !r.is_empty() && steps < 256 {
        steps += 1;
        let op = read_op(&mut r);
        let record = |h: &mut Harness, bytes: Vec<u8>| {
            let r = h.mux.handle_record(Bytes::from(bytes), h.now);
            h.events();
            r.is_ok()
        };
        let alive = match op {
            Op::Raw(bytes) => record(&mut h, bytes.to_vec()),
            Op::Frames(frames) => {
                let mut bytes = Vec::new();
                encode(&frames, &mut bytes);
                record(&mut h, bytes)
            }
            Op::Accept(i) => {
                if let Some(s) = h.pick(i) {
                    h.mux.accept(s);
                    h.local += 1;
                }
                true
            }
            Op::Refuse(i, code) => {
                if let Some(s) = h.pick(i) {
                    let _ = h.mux.refuse(s, OpenError::from_code(code));
                    h.local += 1;
                }
                true
            }
            Op::Consume(i, n) => {
                if let Some(s) = h.pick(i) {
                    let held = h.unconsumed.entry(s).or_default();
                    let n = u64::from(n).min(*held);
                    *held -= n;
                    h.mux.consumed_at(s, n as usize, h.now);
                    h.local += 1;
                }
                true
            }
            Op::Send(i, n) => {
                if let Some(s) = h.pick(i) {
                    let n = u64::from(n).min(h.mux.send_credit(s)) as usize;
                    // Errors are the caller's misuse (not open, finished): nothing queued.
                    let _ = h.mux.send(s, Bytes::from(vec![0x5A; n]));
                }
                true
            }
            Op::Finish(i) => {
                if let Some(s) = h.pick(i) {
                    h.mux.finish(s);
                }
                true
            }
            Op::Reset(i, code) => {
                if let Some(s) = h.pick(i) {
                    let _ = h.mux.reset(s, ResetCode::from_code(code));
                    h.local += 1;
                    h.forget(s);
                }
                true
            }
            Op::Open(n) => {
                if let Ok(s) = h.mux.open(SERVICES[usize::from(n) % SERVICES.len()]) {
                    h.known.push(s);
                    h.local += 1;
                }
                true
            }
            Op::GoAway(reason) => {
                h.mux.go_away(reason);
                h.local += 1;
                true
            }
            Op::Tick(ms) => {
                h.now += Duration::from_millis(u64::from(ms));
                let r = h.mux.handle_timeout(h.now);
                if let Some(t) = h.mux.poll_timeout() {
                    assert!(r.is_err() || t > h.now, "a timer due now was not fired");
                }
                r.is_ok()
            }
            Op::Transmit => {
                h.transmit();
                true
            }
        };
        // Streams refused locally are gone from the mux (its receive window reads 0).
        let gone: Vec<StreamId> = h
            .known
            .iter()
            .copied()
            .filter(|&s| h.mux.recv_window(s) == 0)
            .collect();
        for s in gone {
            h.forget(s);
        }
        h.check();
        if !alive {
            // The link ends here; what it still sends must be well-formed.
            h.transmit();
            return;
        }
    }
    h.transmit();
    h.check();
});
