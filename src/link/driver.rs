//! The per-link driver: the one task that owns a link's socket, record layer and
//! multiplexer. Its single `select!` reads the socket, writes queued records, takes
//! commands from stream tasks, fires the mux timers and watches for cancellation.
//!
//! It never waits on a stream's local socket: inbound data goes to the stream's shared
//! state ([`super::stream`]), which the stream's receive window bounds. Each stream's
//! slot lives in the mux's table, so a stream ends in one place: the mux event that ends
//! it hands the slot back, and the slot tells the local side.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rekey::{KeySchedule, TlsUpdates};
use super::stream::{self, End, LiveStreams, ReadBuf, Slot, Stream};
use super::transport::Transport;
use super::{Cmd, LinkError, OpenFailure, Stop};
use crate::admin::RttObserver;
use crate::config::{Limits, PeerName};
use crate::proto::frame::{OpenError, ResetCode, StreamId, HEADER_LEN};
use crate::proto::handshake::{MAX_RECORD_PLAINTEXT, TAG_LEN};
use crate::proto::mux::{Event, Mux, MuxConfig, Role, StreamError};
use crate::proto::rekey::{RekeyError, Rekeyer};

/// Encrypted bytes queued for the socket before the driver stops pulling from the mux.
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// Control frames queued in the mux that make the driver move them to the outbox between
/// two records of one read.
const CONTROL_FLUSH: usize = 32;
/// Commands taken per wake-up, so frames of many streams share records.
const CMD_BATCH: usize = 128;
/// Socket read buffer reservation.
const READ_CHUNK: usize = 256 * 1024;
/// Capacity of a link's command channel.
pub(crate) const CMD_CAPACITY: usize = 1024;

/// Which side of the link this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This side dialed.
    Dialer,
    /// This side accepted.
    Acceptor,
}

impl Direction {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Dialer => "dialer",
            Direction::Acceptor => "acceptor",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exporting side's service table: decides each OPEN and takes over accepted streams.
pub trait Exits: Send + Sync + 'static {
    /// Called for every OPEN from `peer`. On `Ok` the implementation owns `stream` and must
    /// eventually accept or refuse it; on `Err` it hands the stream back and the driver
    /// refuses it with the code.
    fn open(
        &self,
        peer: &PeerName,
        service: &str,
        stream: Stream,
    ) -> Result<(), (OpenError, Stream)>;
}

/// The mux settings of a link from the mesh limits; `max_record` is its record layer's
/// largest mux record.
pub(crate) fn mux_config(limits: &Limits, max_record: usize) -> MuxConfig {
    MuxConfig {
        window: limits.stream_window,
        max_window: limits.max_stream_window,
        window_budget: u64::from(limits.max_link_window_growth),
        max_streams: limits.max_streams,
        max_record,
        ping_interval: limits.ping_interval,
        dead_after: 3,
    }
}

/// Lines about refused OPENs one link logs per [`REFUSAL_LOG_PERIOD`]; the rest are
/// counted and summed up in the next period's first line.
const REFUSAL_LOG_BURST: u32 = 10;
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Rate limit of the refusal log lines: a peer that floods OPENs for an unknown service
/// must not flood the log too.
struct RefusalLog {
    since: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log this refusal, and how many went unlogged before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.since) >= REFUSAL_LOG_PERIOD {
            self.since = now;
            self.logged = 0;
        }
        if self.logged < REFUSAL_LOG_BURST {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// The read buffer's allocation: DATA handed on without a copy keeps it alive.
const READ_ALLOC: usize = READ_CHUNK;

/// Human words for a refusal code, used in log lines.
pub(crate) fn open_error_text(code: OpenError) -> String {
    match code {
        OpenError::UnknownService => "unknown service".to_owned(),
        OpenError::NotAllowed => "not allowed: peer is not on the service's allow list".to_owned(),
        OpenError::TargetUnreachable => "target unreachable".to_owned(),
        OpenError::TooManyStreams => "too many streams on the link".to_owned(),
        OpenError::ShuttingDown => "peer is shutting down".to_owned(),
        OpenError::Other(n) => format!("refused with code {n}"),
    }
}

/// One running link.
pub(crate) struct Driver {
    peer: PeerName,
    mux: Mux<Slot>,
    transport: Transport,
    cmds_tx: mpsc::Sender<Cmd>,
    exits: Option<Arc<dyn Exits>>,
    window: u32,
    max_streams: usize,
    /// Size of a stream's read segments (see [`Stream::read_segment`]).
    read_segment: usize,
    /// Streams whose local side is alive, even if the mux has forgotten them.
    live: LiveStreams,
    refusals: RefusalLog,
    rbuf: BytesMut,
    /// Which allocation `rbuf` is in (counts up with every new one), and its size.
    read_buf: ReadBuf,
    out: Outbox,
    rtt: RttObserver,
    /// A token fired (see [`watch_tokens`]); acted on after the command batch.
    stop: Option<Stop>,
    /// The peer sent GOAWAY: an end of the connection that follows is its orderly close.
    peer_went_away: bool,
    /// Called once when the peer's GOAWAY arrives (the dialer takes the link out of use).
    on_go_away: Option<Box<dyn FnOnce() + Send>>,
    /// When the link changes its keys.
    keys: KeySchedule,
    /// Key changes already reported to the metrics.
    rekeys_reported: u64,
}

/// Sends [`Cmd::Stop`] to the link's driver when `drain` or `cancel` fires; ends when the
/// driver closes its command channel, or after cancelling.
async fn watch_tokens(cancel: CancellationToken, drain: CancellationToken, tx: mpsc::Sender<Cmd>) {
    let mut drained = false;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = cancel.cancelled() => {
                let _ = tx.send(Cmd::Stop(Stop::Cancel)).await;
                return;
            }
            _ = drain.cancelled(), if !drained => {
                drained = true;
                if tx.send(Cmd::Stop(Stop::Drain)).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Driver {
    pub(crate) fn new(
        peer: PeerName,
        direction: Direction,
        transport: Transport,
        limits: &Limits,
        cmds_tx: mpsc::Sender<Cmd>,
        exits: Option<Arc<dyn Exits>>,
        rtt: RttObserver,
    ) -> Self {
        let mut transport = transport;
        let now = Instant::now();
        let keys = match &mut transport {
            Transport::Noise(session) => KeySchedule::Noise(Box::new(Rekeyer::new(
                direction == Direction::Dialer,
                limits.rekey,
                session.take_rekey_chain(),
                now,
            ))),
            Transport::Tls(_) => KeySchedule::Tls(TlsUpdates::new(limits.rekey, now)),
        };
        let role = match direction {
            Direction::Dialer => Role::Dialer,
            Direction::Acceptor => Role::Acceptor,
        };
        // On tls links one mux record per TLS record (see tls_record::MAX_MUX_RECORD).
        let max_record = transport.max_mux_record();
        let read_segment = if transport.seals_reads_in_place() {
            max_record - HEADER_LEN
        } else {
            super::BULK_READ
        };
        Self {
            peer,
            mux: Mux::new(role, mux_config(limits, max_record), Instant::now()),
            transport,
            cmds_tx,
            exits,
            window: limits.stream_window,
            max_streams: limits.max_streams,
            read_segment,
            live: LiveStreams::default(),
            refusals: RefusalLog::new(Instant::now()),
            rbuf: BytesMut::with_capacity(READ_ALLOC),
            read_buf: ReadBuf {
                generation: 0,
                alloc: READ_ALLOC,
            },
            out: Outbox::default(),
            rtt,
            stop: None,
            peer_went_away: false,
            on_go_away: None,
            keys,
            rekeys_reported: 0,
        }
    }

    /// Calls `f` once, when the peer's GOAWAY arrives: from then on the link takes no new
    /// streams, and its open ones run to their end.
    pub(crate) fn on_go_away(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_go_away = Some(Box::new(f));
        self
    }

    /// Runs the link until it fails or is cancelled; returns why it ended. Every stream
    /// still open then sees its channel close (its local socket is reset).
    /// `drain` asks for a graceful end: GOAWAY, no new streams, and the link closes once
    /// its open streams have finished.
    pub(crate) async fn run(
        mut self,
        mut socket: TcpStream,
        mut cmds: mpsc::Receiver<Cmd>,
        cancel: CancellationToken,
        drain: CancellationToken,
    ) -> LinkError {
        // The tokens reach the driver as commands: polling two tokens in the select on
        // every turn (one per message when traffic is light) took two locks each. The
        // watcher ends when the command channel closes below.
        tokio::spawn(watch_tokens(cancel, drain, self.cmds_tx.clone()));
        let mut err = self.serve(&mut socket, &mut cmds).await;
        self.tls_goodbye(&mut socket, &err).await;
        // After its GOAWAY the peer's close is orderly, even as a reset: a peer that closes
        // with our last PING or WINDOW unread in its socket makes its kernel send RST.
        if self.peer_went_away && matches!(err, LinkError::Closed | LinkError::Io(_)) {
            err = LinkError::PeerWentAway;
        }
        for (_, slot) in self.mux.drain_slots() {
            slot.end(End::LinkLost);
        }
        cmds.close();
        err
    }

    /// On a tls link, tells the peer how the link ends (RFC 8446 §6): close_notify when it
    /// ends in order (drained, or the peer closed), the matching fatal alert when this side
    /// refused what the peer sent. Records still queued go first (the alert's sequence
    /// number comes after theirs); all within a second. A cancelled link sent its
    /// close_notify already.
    async fn tls_goodbye(&mut self, socket: &mut TcpStream, err: &LinkError) {
        let Transport::Tls(tls) = &mut self.transport else {
            return;
        };
        let alert = match err {
            LinkError::Drained | LinkError::Closed | LinkError::PeerWentAway => {
                Some(AlertDescription::CloseNotify)
            }
            LinkError::TlsRecord(e) => e.alert(),
            LinkError::RecordLength(_) => Some(AlertDescription::DecodeError),
            LinkError::Protocol(_) | LinkError::Rekey(_) => {
                Some(AlertDescription::UnexpectedMessage)
            }
            _ => None,
        };
        let Some(alert) = alert else {
            return;
        };
        if tls
            .layer_mut()
            .send_alert(&mut self.out.wbuf, alert)
            .is_err()
        {
            return;
        }
        let (_, mut wr) = socket.split();
        let flush = self.out.write_all(&mut wr);
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }

    async fn serve(&mut self, socket: &mut TcpStream, cmds: &mut mpsc::Receiver<Cmd>) -> LinkError {
        let (mut rd, mut wr) = socket.split();
        let mut draining = false;
        // A TLS handshake may have read the first records along with its last message.
        if let Err(e) = self.on_readable() {
            return e;
        }
        // Outlives the turns of the loop, so a turn re-arms no timer unless the deadline
        // moved, and registers this task with it only once per deadline: a registered timer
        // wakes the task when it fires, and the turn that follows sees it elapsed.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut registered = false;
        loop {
            if let Err(e) = self.fill_write_buffer() {
                return e;
            }
            // Writing our FIN can complete a stream: its Closed event comes from poll_transmit.
            self.dispatch_events();
            if draining && self.mux.stream_count() == 0 && self.out.pending() == 0 {
                return LinkError::Drained;
            }
            let deadline = match (self.mux.poll_timeout(), self.keys.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if deadline != armed {
                if let Some(t) = deadline {
                    timer.as_mut().reset(tokio::time::Instant::from_std(t));
                }
                armed = deadline;
                registered = false;
            }
            let pending_write = self.out.pending() > 0;
            self.make_read_room();
            tokio::select! {
                r = rd.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return LinkError::Closed,
                    Ok(n) => {
                        crate::busy_poll::note(n);
                        if let Err(e) = self.on_readable() {
                            return e;
                        }
                    }
                    Err(e) => return LinkError::Io(e),
                },
                r = self.out.write(&mut wr), if pending_write => match r {
                    Ok(0) => return LinkError::Closed,
                    Ok(n) => self.out.advance(n),
                    Err(e) => return LinkError::Io(e),
                },
                cmd = cmds.recv() => {
                    // The driver holds a sender itself, so the channel never ends here.
                    if let Some(cmd) = cmd {
                        let mut bytes = self.on_cmd(cmd);
                        for _ in 0..CMD_BATCH {
                            match cmds.try_recv() {
                                Ok(cmd) => bytes += self.on_cmd(cmd),
                                Err(_) => break,
                            }
                        }
                        crate::busy_poll::note(bytes);
                    }
                    match self.stop.take() {
                        Some(Stop::Cancel) => {
                            self.mux.go_away(0);
                            let _ = self.fill_write_buffer();
                            if let Transport::Tls(tls) = &mut self.transport {
                                let _ = tls.close(&mut self.out.wbuf);
                            }
                            let flush = self.out.write_all(&mut wr);
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), flush)
                                .await;
                            return LinkError::Cancelled;
                        }
                        Some(Stop::Drain) if !draining => {
                            draining = true;
                            self.mux.go_away(0);
                        }
                        Some(Stop::Drain) | None => {}
                    }
                }
                _ = std::future::poll_fn(|cx| {
                    if timer.is_elapsed() {
                        Poll::Ready(())
                    } else if registered {
                        Poll::Pending
                    } else {
                        registered = true;
                        timer.as_mut().poll(cx)
                    }
                }), if armed.is_some() => {
                    // Fired: re-armed for the next deadline on the next turn.
                    armed = None;
                    let now = Instant::now();
                    if let Err(e) = self.mux.handle_timeout(now) {
                        return LinkError::Protocol(e);
                    }
                    if let Err(e) = self.keys.handle_timeout(now) {
                        return LinkError::Rekey(e);
                    }
                }
            }
            self.dispatch_events();
        }
    }

    /// Makes room for the next read. The allocation is reused once no DATA handed on from
    /// it is alive; otherwise the unread rest moves to a new one, of a new generation.
    fn make_read_room(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() >= MAX_RECORD_PLAINTEXT {
            return;
        }
        if self.rbuf.try_reclaim(READ_ALLOC) {
            return;
        }
        let mut fresh = BytesMut::with_capacity(READ_ALLOC + self.rbuf.len());
        fresh.extend_from_slice(&self.rbuf);
        self.read_buf = ReadBuf {
            generation: self.read_buf.generation + 1,
            alloc: fresh.capacity(),
        };
        self.rbuf = fresh;
    }

    /// Encrypts records from the mux until enough bytes wait for the socket. A key change
    /// that is due goes first, in a record of its own.
    fn fill_write_buffer(&mut self) -> Result<(), LinkError> {
        self.out.compact();
        self.send_key_change()?;
        let mut sealed = 0;
        while self.out.pending() < WRITE_HIGH_WATER {
            // A stream's read that fits a record whole becomes that record, sealed inside
            // the stream's own buffer.
            if let Some(record) = self.mux.poll_transmit_owned() {
                let record = self.transport.seal_owned(record)?;
                sealed += record.len();
                self.out.push_record(record);
                continue;
            }
            // Other frames are written straight into the socket buffer and sealed where
            // they lie (on tls links, one TLS record per mux record).
            let wbuf = &mut self.out.wbuf;
            let start = self.transport.begin_record(wbuf);
            if !self.mux.poll_transmit(wbuf) {
                wbuf.truncate(start);
                break;
            }
            self.transport.seal_record(wbuf, start)?;
            sealed += wbuf.len() - start;
        }
        self.keys.on_sent(sealed);
        Ok(())
    }

    /// Seals the record of a key change that is due, if any, and switches the sending key
    /// after it: every record sealed later uses the new key.
    fn send_key_change(&mut self) -> Result<(), LinkError> {
        let now = Instant::now();
        match (&mut self.keys, &mut self.transport) {
            (KeySchedule::Noise(rekeyer), Transport::Noise(session)) => {
                let Some(out) = rekeyer.poll_transmit(now).map_err(LinkError::Rekey)? else {
                    return Ok(());
                };
                let wbuf = &mut self.out.wbuf;
                let start = crate::proto::handshake::Session::begin_record(wbuf);
                out.message.frame().encode(wbuf);
                session.seal_record(wbuf, start)?;
                if let Some(key) = &out.then_send_with {
                    session.switch_send(key)?;
                }
                tracing::debug!(peer = %self.peer, step = ?out.message.step, epoch = out.message.epoch, "re-key");
            }
            (KeySchedule::Tls(updates), Transport::Tls(tls)) => {
                let Some(request) = updates.poll(tls.layer(), now) else {
                    return Ok(());
                };
                tls.layer_mut()
                    .send_key_update(&mut self.out.wbuf, request)?;
                updates.sent_update(tls.layer(), request, now);
                tracing::debug!(peer = %self.peer, request, "tls key update sent");
            }
            _ => {}
        }
        self.report_rekeys();
        Ok(())
    }

    /// Applies what the record just opened said about keys: a REKEY frame switches the
    /// receiving key from the next record on. (KeyUpdates the TLS layer followed are noted
    /// once per read, when [`Self::on_readable`] runs out of records.)
    fn after_record_keys(&mut self, record_len: usize, now: Instant) -> Result<(), LinkError> {
        self.keys.on_received(record_len);
        while let Some(msg) = self.mux.take_rekey() {
            let (KeySchedule::Noise(rekeyer), Transport::Noise(session)) =
                (&mut self.keys, &mut self.transport)
            else {
                return Err(LinkError::Rekey(RekeyError::Unexpected {
                    step: msg.step,
                    epoch: msg.epoch,
                    why: "tls links change keys with KeyUpdate",
                }));
            };
            if let Some(key) = rekeyer.handle(msg, now).map_err(LinkError::Rekey)? {
                session.switch_recv(&key)?;
            }
        }
        self.report_rekeys();
        Ok(())
    }

    fn report_rekeys(&mut self) {
        let completed = self.keys.completed();
        while self.rekeys_reported < completed {
            self.rekeys_reported += 1;
            self.rtt.rekeyed();
            tracing::debug!(peer = %self.peer, rekeys = completed, "keys changed");
        }
    }

    /// Decrypts every whole record in the read buffer and feeds it to the mux.
    fn on_readable(&mut self) -> Result<(), LinkError> {
        let now = Instant::now();
        while let Transport::Tls(tls) = &mut self.transport {
            // Opened inside the read buffer; a mux record within one TLS record (every one
            // this code sends) goes to the mux without a copy.
            let Some(record) = tls.next_record(&mut self.rbuf)? else {
                // The KeyUpdates of this read (the last record may be one: it carries no
                // mux record).
                if let KeySchedule::Tls(updates) = &mut self.keys {
                    updates.after_record(tls.layer());
                }
                self.report_rekeys();
                return Ok(());
            };
            let len = record.len();
            self.mux.handle_record(record, now)?;
            self.after_record_keys(len, now)?;
            self.after_record()?;
        }
        while self.rbuf.len() >= 2 {
            let Transport::Noise(session) = &mut self.transport else {
                break;
            };
            let len = u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]) as usize;
            if len < TAG_LEN {
                return Err(LinkError::RecordLength(len));
            }
            if self.rbuf.len() < 2 + len {
                break;
            }
            // Opened inside the read buffer; the plaintext goes to the mux (and on to the
            // streams) without a copy.
            let mut record = self.rbuf.split_to(2 + len);
            record.advance(2);
            let n = session.open_in_place(&mut record)?;
            record.truncate(n);
            let record = record.freeze();
            self.mux.handle_record(record, now)?;
            self.after_record_keys(n, now)?;
            self.after_record()?;
        }
        Ok(())
    }

    /// Hands a record's events on; answers that pile up (refusals of a burst of OPENs) move
    /// to the outbox before the next record, so that only answers the socket cannot take,
    /// because the peer does not read, count towards the mux's control backlog limit.
    fn after_record(&mut self) -> Result<(), LinkError> {
        self.dispatch_events();
        if self.mux.control_queued() >= CONTROL_FLUSH {
            self.fill_write_buffer()?;
        }
        Ok(())
    }

    /// The local side of stream `id`, its slot attached in the mux.
    fn new_stream(&mut self, id: StreamId) -> Stream {
        let (slot, stream) = stream::pair(
            id,
            self.mux.send_credit(id),
            self.cmds_tx.clone(),
            &self.live,
            self.read_segment,
            (self.window as usize / 4).max(1),
        );
        if let Err(slot) = self.mux.attach(id, slot) {
            slot.end(End::LinkLost);
        }
        stream
    }

    /// Resets a stream this side gives up.
    fn reset_stream(&mut self, id: StreamId) {
        if let Some(slot) = self.mux.reset(id, ResetCode::Cancelled) {
            slot.end(End::LocalReset);
        }
    }

    fn dispatch_events(&mut self) {
        while let Some((event, ended)) = self.mux.poll_event_slot() {
            match event {
                Event::Opened { stream, service } => self.on_opened(stream, &service),
                Event::OpenOk { .. } => {}
                Event::OpenErr { code, .. } => {
                    if let Some(slot) = ended {
                        slot.end(End::Refused(code));
                    }
                }
                Event::Data { stream, data } => {
                    let window = self.mux.recv_window(stream) as usize;
                    let kept = self
                        .mux
                        .slot(stream)
                        .is_none_or(|slot| slot.deliver(data, self.read_buf, window));
                    if !kept {
                        // The local side is gone without saying so: abort the stream.
                        self.reset_stream(stream);
                    }
                }
                Event::Fin { stream } => {
                    if let Some(slot) = self.mux.slot(stream) {
                        slot.fin();
                    }
                }
                Event::Reset { code, .. } => {
                    if let Some(slot) = ended {
                        slot.end(End::Reset(code));
                    }
                }
                Event::Credit { stream, bytes } => {
                    if let Some(slot) = self.mux.slot(stream) {
                        slot.credit(u64::from(bytes));
                    }
                }
                Event::Rtt(rtt) => {
                    self.rtt.observe(rtt);
                    tracing::trace!(peer = %self.peer, rtt_us = rtt.as_micros() as u64, "pong");
                }
                Event::GoAway { reason } => {
                    tracing::info!(
                        peer = %self.peer,
                        reason,
                        open_streams = self.mux.stream_count(),
                        "peer is going away: open streams finish, new ones wait for the next link"
                    );
                    self.peer_went_away = true;
                    if let Some(f) = self.on_go_away.take() {
                        f();
                    }
                }
                Event::Closed { .. } => {
                    if let Some(slot) = ended {
                        slot.end(End::Closed);
                    }
                }
            }
        }
    }

    fn on_opened(&mut self, stream: StreamId, service: &str) {
        let refusal = match self.exits.clone() {
            None => Err(OpenError::UnknownService),
            // Streams the peer reset may still be connecting their targets: they count.
            Some(_) if self.live.count() >= self.max_streams => Err(OpenError::TooManyStreams),
            Some(exits) => {
                let handle = self.new_stream(stream);
                exits
                    .open(&self.peer, service, handle)
                    .map_err(|(code, handle)| {
                        handle.disarm(End::Refused(code));
                        code
                    })
            }
        };
        if let Err(code) = refusal {
            if let Some(suppressed) = self.refusals.admit(Instant::now()) {
                tracing::warn!(
                    peer = %self.peer,
                    service,
                    reason = open_error_reason(code),
                    suppressed,
                    "open refused: {}",
                    open_error_text(code)
                );
            }
            drop(self.mux.refuse(stream, code));
        }
    }

    /// Handles one command from a stream task; returns the stream bytes it carried.
    fn on_cmd(&mut self, cmd: Cmd) -> usize {
        let bytes = match &cmd {
            Cmd::Data { data, .. } => data.len(),
            _ => 0,
        };
        match cmd {
            Cmd::Open { service, reply } => match self.mux.open(service.as_str()) {
                Ok(id) => {
                    let stream = self.new_stream(id);
                    if let Err(Ok(stream)) = reply.send(Ok(stream)) {
                        stream.disarm(End::LocalReset);
                        self.reset_stream(id);
                    }
                }
                Err(StreamError::GoingAway) => {
                    let _ = reply.send(Err(OpenFailure::GoingAway));
                }
                Err(e) => {
                    let _ = reply.send(Err(OpenFailure::Refused(e.to_string())));
                }
            },
            Cmd::Accept { stream } => self.mux.accept(stream),
            Cmd::Refuse { stream, code } => drop(self.mux.refuse(stream, code)),
            Cmd::Data { stream, data } => match self.mux.send(stream, data) {
                // A stream that ended meanwhile: its local side hears of it from its slot.
                Ok(()) | Err(StreamError::NotOpen(_)) => {}
                Err(e) => {
                    tracing::debug!(peer = %self.peer, stream, error = %e, "send failed");
                    self.reset_stream(stream);
                }
            },
            Cmd::Fin { stream } => self.mux.finish(stream),
            Cmd::Reset { stream, code } => drop(self.mux.reset(stream, code)),
            Cmd::Consumed { stream, n } => self.mux.consumed_at(stream, n, Instant::now()),
            // Cancellation wins over a drain that came in the same batch.
            Cmd::Stop(stop) => self.stop = self.stop.max(Some(stop)),
        }
        bytes
    }
}

/// Sealed records waiting for the socket, in order: `records` first (records sealed inside
/// stream buffers, and write-buffer bytes that were queued before one), then
/// `wbuf[wpos..]`, where the mux's other records are built.
#[derive(Default)]
struct Outbox {
    records: VecDeque<Bytes>,
    record_bytes: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

/// Buffers per `writev`.
const WRITE_IOV: usize = 64;

impl Outbox {
    /// Bytes waiting for the socket.
    fn pending(&self) -> usize {
        self.record_bytes + self.wbuf.len() - self.wpos
    }

    /// Drops the written front of the write buffer once it is half of it.
    fn compact(&mut self) {
        if self.wpos > 0 && self.wpos >= self.wbuf.len() / 2 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
    }

    /// Queues a sealed record after everything already waiting.
    fn push_record(&mut self, record: Bytes) {
        if self.wpos < self.wbuf.len() {
            // Usually a few control frames: copied, so the write buffer can go on growing.
            let before = Bytes::copy_from_slice(&self.wbuf[self.wpos..]);
            self.wbuf.clear();
            self.wpos = 0;
            self.record_bytes += before.len();
            self.records.push_back(before);
        }
        self.record_bytes += record.len();
        self.records.push_back(record);
    }

    /// One write of as much as waits; returns the bytes written.
    async fn write(&self, wr: &mut WriteHalf<'_>) -> std::io::Result<usize> {
        if self.records.is_empty() {
            return wr.write(&self.wbuf[self.wpos..]).await;
        }
        let mut slices = [IoSlice::new(&[]); WRITE_IOV];
        let mut n = 0;
        for r in self.records.iter().take(WRITE_IOV) {
            slices[n] = IoSlice::new(r);
            n += 1;
        }
        if n < WRITE_IOV && self.wpos < self.wbuf.len() {
            slices[n] = IoSlice::new(&self.wbuf[self.wpos..]);
            n += 1;
        }
        wr.write_vectored(&slices[..n]).await
    }

    /// Marks `n` bytes as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.records.front_mut() else {
                self.wpos += n;
                break;
            };
            let take = front.len().min(n);
            front.advance(take);
            self.record_bytes -= take;
            n -= take;
            if front.is_empty() {
                self.records.pop_front();
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
    }

    /// Writes everything that waits.
    async fn write_all(&mut self, wr: &mut WriteHalf<'_>) -> std::io::Result<()> {
        while self.pending() > 0 {
            match self.write(wr).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => self.advance(n),
            }
        }
        Ok(())
    }
}

/// A stable label for a refusal code.
pub(crate) fn open_error_reason(code: OpenError) -> &'static str {
    match code {
        OpenError::UnknownService => "unknown_service",
        OpenError::NotAllowed => "acl",
        OpenError::TargetUnreachable => "target_unreachable",
        OpenError::TooManyStreams => "too_many_streams",
        OpenError::ShuttingDown => "shutting_down",
        OpenError::Other(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records sealed in stream buffers and records built in the write buffer leave in the
    /// order they were queued, whole, across partial writes and more than one `writev`'s
    /// worth of buffers.
    #[tokio::test]
    async fn outbox_keeps_the_order_of_records_across_partial_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(4096);
        let (_, mut wr) = socket.split();

        let mut out = Outbox::default();
        let mut expected = Vec::new();
        for i in 0..(3 * WRITE_IOV) {
            let piece: Vec<u8> = (0..(i * 97) % 5000 + 1).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&piece);
            if i % 3 == 0 {
                out.wbuf.extend_from_slice(&piece);
            } else {
                out.push_record(Bytes::from(piece));
            }
            assert_eq!(out.pending(), expected.len());
        }
        // A partial write first, ending inside a record, then the rest.
        let n = out.write(&mut wr).await.expect("write");
        assert!(n > 0);
        out.advance(n);
        assert_eq!(out.pending(), expected.len() - n);
        out.write_all(&mut wr).await.expect("write all");
        assert_eq!(out.pending(), 0);
        assert!(out.records.is_empty() && out.wbuf.is_empty() && out.wpos == 0);
        drop(socket);
        let got = reader.await.expect("reader");
        assert!(
            got == expected,
            "{} bytes read, {} sent",
            got.len(),
            expected.len()
        );
    }
}
