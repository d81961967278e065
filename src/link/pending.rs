//! The global cap on handshakes in progress on the mesh listener. At the cap, a new
//! connection evicts the oldest pending handshake instead of being refused: a peer's
//! handshake finishes within a round trip or two, while a flood's connections stall until
//! their deadline, so refusing newcomers would let a flood from enough sources hold every
//! slot and lock the peers out; evicting the oldest only costs a peer its handshake if
//! the cap's worth of connections arrives within that handshake's round trips.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
    live: BTreeMap<u64, CancellationToken>,
}

impl PendingHandshakes {
    /// At most `cap` handshakes at once (at least one).
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            slots: Mutex::default(),
        })
    }

    /// A slot for a new handshake; at the cap the oldest handshake's slot is revoked
    /// first (its [`PendingSlot::evicted`] fires).
    pub(super) fn admit(self: &Arc<Self>) -> PendingSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.live.len() >= self.cap {
            if let Some((_, oldest)) = slots.live.pop_first() {
                oldest.cancel();
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let token = CancellationToken::new();
        slots.live.insert(id, token.clone());
        PendingSlot {
            set: self.clone(),
            id,
            evicted: token,
        }
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
        slots.live.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_handshake_makes_room() {
        let pending = PendingHandshakes::new(2);
        let first = pending.admit();
        let second = pending.admit();
        assert!(!first.evicted().is_cancelled() && !second.evicted().is_cancelled());
        let third = pending.admit();
        assert!(first.evicted().is_cancelled(), "the oldest made room");
        assert!(!second.evicted().is_cancelled());
        assert!(!third.evicted().is_cancelled());
        assert_eq!(pending.len(), 2);
        drop(first);
        assert_eq!(pending.len(), 2, "an evicted slot was already free");
        let fourth = pending.admit();
        assert!(second.evicted().is_cancelled(), "then the next oldest");
        assert!(!third.evicted().is_cancelled() && !fourth.evicted().is_cancelled());
    }

    #[test]
    fn a_finished_handshake_frees_its_slot() {
        let pending = PendingHandshakes::new(1);
        drop(pending.admit());
        assert_eq!(pending.len(), 0);
        let second = pending.admit();
        assert!(!second.evicted().is_cancelled(), "room was free");
    }
}
