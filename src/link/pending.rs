//! The global cap on handshakes in progress on the mesh listener. At the cap, a new
//! connection evicts the oldest pending handshake instead of being refused: a peer's
//! handshake finishes within a round trip or two, while a flood's connections stall until
//! their deadline, so refusing newcomers would let a flood from enough sources hold every
//! slot and lock the peers out; evicting the oldest only costs a peer its handshake if
//! the cap's worth of connections arrives within that handshake's round trips.
//!
//! Eviction alone lets a few sources churn through the whole table, so each source (an
//! IPv4 address or an IPv6 /64, as for the rate limit) also holds at most
//! `max_pending_per_source` slots: past that its new connections are refused, and never
//! evict anyone. Two idle sources then hold 16 slots of 128, not all of them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::ratelimit::source_key;

use tokio_util::sync::CancellationToken;

/// Handshakes in progress, oldest first.
#[derive(Debug)]
pub(super) struct PendingHandshakes {
    cap: usize,
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    live: BTreeMap<u64, (IpAddr, CancellationToken)>,
    /// Slots held per source key; a source holding none has no entry.
    per_source: HashMap<IpAddr, usize>,
}

impl Slots {
    fn release(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// A new connection's source already holds its share of pending handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SourceFull;

impl PendingHandshakes {
    /// At most `cap` handshakes at once (at least one).
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            slots: Mutex::default(),
        })
    }

    /// A slot for a new handshake from `ip`, unless its source already holds
    /// `per_source` of them (at least one). At the global cap the oldest handshake's slot
    /// is revoked first (its [`PendingSlot::evicted`] fires); a refused source revokes
    /// nothing.
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        per_source: usize,
    ) -> Result<PendingSlot, SourceFull> {
        let source = source_key(ip);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let held = slots.per_source.get(&source).copied().unwrap_or(0);
        if held >= per_source.max(1) {
            return Err(SourceFull);
        }
        if slots.live.len() >= self.cap {
            if let Some((_, (oldest_source, oldest))) = slots.live.pop_first() {
                oldest.cancel();
                slots.release(oldest_source);
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let token = CancellationToken::new();
        slots.live.insert(id, (source, token.clone()));
        *slots.per_source.entry(source).or_insert(0) += 1;
        Ok(PendingSlot {
            set: self.clone(),
            id,
            evicted: token,
        })
    }

    /// Handshakes holding a slot now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .len()
    }
}

/// One handshake's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub(super) struct PendingSlot {
    set: Arc<PendingHandshakes>,
    id: u64,
    evicted: CancellationToken,
}

impl PendingSlot {
    /// Fires when a newer connection took this slot: the handshake must stop.
    pub(super) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut slots = self.set.slots.lock().unwrap_or_else(|p| p.into_inner());
        // An evicted slot was released when it was evicted.
        if let Some((source, _)) = slots.live.remove(&self.id) {
            slots.release(source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Admits from a distinct source each time, so only the global cap applies.
    fn admit(pending: &Arc<PendingHandshakes>) -> PendingSlot {
        let n = pending.slots.lock().expect("lock").next_id as u32;
        let source = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        pending.admit(source, 1).expect("a fresh source has room")
    }

    #[test]
    fn at_the_cap_the_oldest_handshake_makes_room() {
        let pending = PendingHandshakes::new(2);
        let first = admit(&pending);
        let second = admit(&pending);
        assert!(!first.evicted().is_cancelled() && !second.evicted().is_cancelled());
        let third = admit(&pending);
        assert!(first.evicted().is_cancelled(), "the oldest made room");
        assert!(!second.evicted().is_cancelled());
        assert!(!third.evicted().is_cancelled());
        assert_eq!(pending.len(), 2);
        drop(first);
        assert_eq!(pending.len(), 2, "an evicted slot was already free");
        let fourth = admit(&pending);
        assert!(second.evicted().is_cancelled(), "then the next oldest");
        assert!(!third.evicted().is_cancelled() && !fourth.evicted().is_cancelled());
    }

    #[test]
    fn a_finished_handshake_frees_its_slot() {
        let pending = PendingHandshakes::new(1);
        drop(admit(&pending));
        assert_eq!(pending.len(), 0);
        let second = admit(&pending);
        assert!(!second.evicted().is_cancelled(), "room was free");
    }

    #[test]
    fn a_source_over_its_share_is_refused_without_evicting_anyone() {
        let pending = PendingHandshakes::new(4);
        let a = ip("192.0.2.1");
        let first = pending.admit(a, 2).expect("first from a");
        let second = pending.admit(a, 2).expect("second from a");
        assert_eq!(pending.admit(a, 2).err(), Some(SourceFull));
        assert!(!first.evicted().is_cancelled() && !second.evicted().is_cancelled());
        assert_eq!(pending.len(), 2, "a refusal takes no slot");
        // Another source still gets in; a finished handshake gives a its place back.
        let other = pending.admit(ip("192.0.2.2"), 2).expect("another source");
        drop(first);
        let third = pending.admit(a, 2).expect("a has room again");
        assert!(!other.evicted().is_cancelled() && !third.evicted().is_cancelled());
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let pending = PendingHandshakes::new(8);
        let _one = pending
            .admit(ip("2001:db8:1:2::1"), 1)
            .expect("first of the /64");
        assert_eq!(
            pending.admit(ip("2001:db8:1:2:ffff::9"), 1).err(),
            Some(SourceFull),
            "the same /64"
        );
        let _other = pending
            .admit(ip("2001:db8:1:3::1"), 1)
            .expect("another /64");
    }

    #[test]
    fn an_evicted_handshake_gives_its_source_its_place_back() {
        let pending = PendingHandshakes::new(2);
        let a = ip("192.0.2.1");
        let first = pending.admit(a, 1).expect("a");
        let _b = pending.admit(ip("192.0.2.2"), 1).expect("b");
        let _c = pending.admit(ip("192.0.2.3"), 1).expect("c evicts a's");
        assert!(first.evicted().is_cancelled());
        // a's handshake task has not dropped its slot yet, but the slot is no longer a's.
        let again = pending
            .admit(a, 1)
            .expect("a's evicted slot no longer counts");
        drop(first);
        assert!(!again.evicted().is_cancelled());
        assert_eq!(
            pending.slots.lock().expect("lock").per_source.get(&a),
            Some(&1),
            "dropping the evicted slot did not release a's live one"
        );
    }
}
