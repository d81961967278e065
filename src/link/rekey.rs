//! When a link changes its keys, per record layer: the noise/psk in-band exchange
//! ([`crate::proto::rekey`]) and TLS 1.3 KeyUpdate, under one policy (time, bytes, and a
//! timeout for the peer's part). The driver asks before it seals records, counts the
//! bytes it seals and opens, and applies key switches between records.

use std::time::Instant;

use crate::proto::rekey::{RekeyError, RekeyPolicy, Rekeyer};
use crate::proto::tls_record::RecordLayer;

/// The key-change state of one link.
pub(crate) enum KeySchedule {
    /// noise / psk: fresh X25519 in REKEY frames. One per link, so the size difference
    /// to the other variant costs nothing worth a box.
    Noise(Box<Rekeyer>),
    /// tls: KeyUpdate.
    Tls(TlsUpdates),
}

impl KeySchedule {
    pub(crate) fn on_sent(&mut self, n: usize) {
        match self {
            KeySchedule::Noise(r) => r.on_sent(n),
            KeySchedule::Tls(t) => t.sent += n as u64,
        }
    }

    pub(crate) fn on_received(&mut self, n: usize) {
        match self {
            KeySchedule::Noise(r) => r.on_received(n),
            KeySchedule::Tls(t) => t.received += n as u64,
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            KeySchedule::Noise(r) => r.poll_timeout(),
            KeySchedule::Tls(t) => Some(t.poll_timeout()),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<(), RekeyError> {
        match self {
            KeySchedule::Noise(r) => r.handle_timeout(now),
            KeySchedule::Tls(t) => t.handle_timeout(now),
        }
    }

    /// Key changes completed on the link.
    pub(crate) fn completed(&self) -> u64 {
        match self {
            KeySchedule::Noise(r) => r.completed(),
            KeySchedule::Tls(t) => t.completed,
        }
    }
}

/// When a tls link sends KeyUpdate. Either end updates its sending key when its time or
/// byte budget is used up and asks the peer to do the same (`update_requested`); the
/// peer answers before its next record (RFC 8446 §4.6.3), which restarts its own clock,
/// so two ends with one policy take turns leading rather than both updating. Bytes
/// received under one peer key count too: a peer that does not update on its own is asked.
pub(crate) struct TlsUpdates {
    policy: RekeyPolicy,
    /// When this side's sending key was made, and the bytes sealed and opened since.
    since: Instant,
    sent: u64,
    received: u64,
    /// When this side asked the peer for a KeyUpdate that has not come yet.
    requested_at: Option<Instant>,
    /// KeyUpdates the layer had received when last looked at.
    seen_received: u64,
    completed: u64,
}

impl TlsUpdates {
    pub(crate) fn new(policy: RekeyPolicy, now: Instant) -> Self {
        Self {
            policy,
            since: now,
            sent: 0,
            received: 0,
            requested_at: None,
            seen_received: 0,
            completed: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.since + self.policy.interval
            || self.sent >= self.policy.bytes
            || self.received >= self.policy.bytes
    }

    /// Whether to send a KeyUpdate now, and whether it asks the peer for one: the peer's
    /// request is answered first (with `false`), a due update asks.
    pub(crate) fn poll(&self, layer: &RecordLayer, now: Instant) -> Option<bool> {
        if layer.owes_key_update() {
            Some(false)
        } else if self.requested_at.is_none() && self.due(now) {
            Some(true)
        } else {
            None
        }
    }

    /// A KeyUpdate went out (sealed in the write buffer).
    pub(crate) fn sent_update(&mut self, layer: &RecordLayer, request: bool, now: Instant) {
        self.since = now;
        self.sent = 0;
        if request {
            self.requested_at = Some(now);
        }
        self.count(layer);
    }

    /// Called when a read has been opened to its end: notes the peer's KeyUpdates.
    pub(crate) fn after_record(&mut self, layer: &RecordLayer) {
        let (_, received) = layer.key_updates();
        if received != self.seen_received {
            self.seen_received = received;
            self.received = 0;
            self.requested_at = None;
            self.count(layer);
        }
    }

    /// One key change per pair of updates, ours and the peer's.
    fn count(&mut self, layer: &RecordLayer) {
        let (sent, received) = layer.key_updates();
        self.completed = sent.min(received);
    }

    fn poll_timeout(&self) -> Instant {
        match self.requested_at {
            Some(at) => at + self.policy.timeout,
            None => self.since + self.policy.interval,
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), RekeyError> {
        match self.requested_at {
            Some(at) if now >= at + self.policy.timeout => Err(RekeyError::Timeout {
                timeout: self.policy.timeout,
                waiting: "KeyUpdate",
            }),
            _ => Ok(()),
        }
    }
}
