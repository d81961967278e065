//! Adaptive busy polling: after a burst of small messages, the runtime thread polls its
//! sockets for a short while before it sleeps, so the reply that is about to arrive finds
//! it awake.
//!
//! Why: on a virtual machine a sleeping vCPU halts, and waking it costs a trip through the
//! hypervisor. With `haltpoll.guest_halt_poll_ns=0` (this project's test machines) one
//! Redis GET over loopback took 88 µs direct and 170 µs through two meshd hops, almost all
//! of it wake-ups. Polling for the next event instead of sleeping is what the guest
//! kernel's haltpoll governor and HAProxy's `busy-polling` do; this module does it for
//! meshd alone, and only when it pays:
//!
//! - the poll window adapts like haltpoll's: it grows (up to `busy_poll_us`) when an event
//!   arrived shortly after the window ran out, and shrinks when events are further apart
//!   than the maximum (a WAN round trip, an idle link), down to no polling at all;
//! - while data streams in bulk no polling happens: the next chunk is never far off, and
//!   polling there only costs CPU;
//! - each poll round yields the CPU to any other runnable thread first (`sched_yield`), so
//!   the processes meshd serves are never kept waiting behind it, and a yield that did run
//!   another thread halves the window: on a busy machine polling only takes CPU from them;
//! - but never while this thread has work of its own queued: a stream that has just read
//!   a request ([`touch`]) wakes the link driver that sends it, and tokio runs the poller
//!   first if it was queued first. Giving the CPU away there put a round trip through the
//!   other processes on that CPU between reading a request and forwarding it.
//!
//! [`Policy`] is the decision, a plain state machine over `Instant`s, tested without a
//! runtime. [`note`] is called by each link driver when it moves bytes; [`run`] is the one
//! task that polls. Polling needs the driver and the poller on the same thread, which the
//! default single-thread runtime gives; with `--threads` above 1 it stays off.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The smallest window a growing window starts from.
const START: Duration = Duration::from_micros(10);
/// A `sched_yield` that took longer than this ran another thread: the CPU is contended.
const CONTENDED: Duration = Duration::from_micros(20);
/// Recent traffic decays by half per this much time.
const DECAY_HALF_LIFE: Duration = Duration::from_micros(100);
/// Recent bytes (decayed) above which traffic counts as bulk: about 500 MB/s sustained,
/// or one burst of a full record.
const BULK_BYTES: u64 = 64 * 1024;

/// The polling decision for one runtime thread.
#[derive(Debug, Clone)]
pub struct Policy {
    max: Duration,
    window: Duration,
    last: Option<Instant>,
    recent_bytes: u64,
}

impl Policy {
    /// A policy that polls for at most `max` after activity; `Duration::ZERO` never polls.
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
            last: None,
            recent_bytes: 0,
        }
    }

    /// Changes the maximum window (a reload); the current window is clamped to it.
    pub fn set_max(&mut self, max: Duration) {
        self.max = max;
        self.window = self.window.min(max);
    }

    /// The current poll window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records activity at `now` that moved `bytes`, and adapts the window to the gap since
    /// the previous activity: a gap the window did not cover but the maximum would have
    /// doubles it; a gap beyond the maximum halves it.
    pub fn on_activity(&mut self, now: Instant, bytes: usize) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            let halvings = gap.as_nanos() / DECAY_HALF_LIFE.as_nanos();
            self.recent_bytes = self.recent_bytes.checked_shr(halvings as u32).unwrap_or(0);
            if gap > self.max {
                self.shrink();
            } else if gap > self.window {
                self.window = (self.window * 2).max(START).min(self.max);
            }
        }
        self.recent_bytes = self.recent_bytes.saturating_add(bytes as u64);
        self.last = Some(now);
    }

    /// Polling had to give the CPU to another thread: the machine is busy, and polling
    /// there takes time from the processes meshd serves. Halves the window.
    pub fn on_contention(&mut self) {
        self.shrink();
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < START {
            self.window = Duration::ZERO;
        }
    }

    /// Whether to poll (rather than sleep) at `now`.
    pub fn should_poll(&self, now: Instant) -> bool {
        let Some(last) = self.last else {
            return false;
        };
        !self.window.is_zero()
            && self.recent_bytes < BULK_BYTES
            && now.saturating_duration_since(last) < self.window
    }
}

/// The configured maximum in nanoseconds; 0 = off. Shared so a reload can change it.
static MAX_NANOS: AtomicU64 = AtomicU64::new(0);
/// True while the poller sleeps, waiting for [`note`] to wake it.
static PARKED: AtomicBool = AtomicBool::new(false);
/// Counts [`note`] and [`touch`] calls: the poller gives the CPU away only after a round
/// in which it did not move.
static TURNS: AtomicU64 = AtomicU64::new(0);
/// Time spent polling since start, in nanoseconds (`meshd_busy_poll_seconds_total`).
static POLLED_NANOS: AtomicU64 = AtomicU64::new(0);
static WAKE: Notify = Notify::const_new();

thread_local! {
    static POLICY: RefCell<Policy> = RefCell::new(Policy::new(Duration::ZERO));
}

/// Sets the maximum poll window (`busy_poll_us`); zero turns polling off.
pub fn configure(max: Duration) {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    MAX_NANOS.store(nanos, Ordering::Relaxed);
    WAKE.notify_one();
}

/// Records that this thread moved `bytes` (a link read or a stream's command). Cheap when
/// polling is off: one relaxed load.
pub fn note(bytes: usize) {
    let max = MAX_NANOS.load(Ordering::Relaxed);
    if max == 0 {
        return;
    }
    TURNS.fetch_add(1, Ordering::Relaxed);
    POLICY.with(|p| {
        let mut p = p.borrow_mut();
        p.set_max(Duration::from_nanos(max));
        p.on_activity(Instant::now(), bytes);
    });
    if PARKED.swap(false, Ordering::Relaxed) {
        WAKE.notify_one();
    }
}

/// Records that this thread has work under way that another of its tasks will finish (a
/// stream read whose bytes the link driver is yet to send): the poller lets it run before
/// it yields the CPU. Cheap when polling is off: one relaxed load.
pub fn touch() {
    if MAX_NANOS.load(Ordering::Relaxed) != 0 {
        TURNS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Seconds this process has spent polling since it started.
pub fn polled_seconds() -> f64 {
    POLLED_NANOS.load(Ordering::Relaxed) as f64 / 1e9
}

/// The poller: spawn once on the single-thread runtime that runs the links. It sleeps
/// while there is nothing worth polling for, and never ends.
pub async fn run() {
    let mut polling_since: Option<Instant> = None;
    let mut seen = TURNS.load(Ordering::Relaxed);
    loop {
        let now = Instant::now();
        let poll =
            MAX_NANOS.load(Ordering::Relaxed) != 0 && POLICY.with(|p| p.borrow().should_poll(now));
        if let Some(since) = polling_since.take() {
            let nanos = u64::try_from(now.saturating_duration_since(since).as_nanos());
            POLLED_NANOS.fetch_add(nanos.unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        if poll {
            polling_since = Some(now);
            // After a quiet round, let any other runnable thread on this CPU go first; then
            // let tokio check its sockets without blocking (a yielded task makes it poll
            // with a zero timeout). After a busy one, only the latter: this thread's own
            // tasks may still be queued behind this one.
            let turns = TURNS.load(Ordering::Relaxed);
            if turns == seen {
                let before = Instant::now();
                std::thread::yield_now();
                if before.elapsed() > CONTENDED {
                    POLICY.with(|p| p.borrow_mut().on_contention());
                }
            }
            seen = turns;
            tokio::task::yield_now().await;
            continue;
        }
        PARKED.store(true, Ordering::Relaxed);
        WAKE.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Feeds activity at the given gaps (µs) and returns the policy.
    fn feed(max_us: u64, gaps_us: &[u64], bytes: usize) -> (Policy, Instant) {
        let mut p = Policy::new(US * max_us as u32);
        let mut now = Instant::now();
        p.on_activity(now, bytes);
        for &g in gaps_us {
            now += US * g as u32;
            p.on_activity(now, bytes);
        }
        (p, now)
    }

    #[test]
    fn off_never_polls() {
        let (p, now) = feed(0, &[5, 5, 5, 5], 100);
        assert!(!p.should_poll(now));
        assert!(!p.should_poll(now + US));
    }

    #[test]
    fn no_activity_no_polling() {
        let p = Policy::new(US * 100);
        assert!(!p.should_poll(Instant::now()));
    }

    #[test]
    fn short_gaps_grow_the_window_up_to_the_maximum() {
        let (p, now) = feed(100, &[60; 10], 100);
        assert_eq!(
            p.window(),
            US * 80,
            "10 → 20 → 40 → 80, then 60 µs gaps are covered"
        );
        assert!(p.should_poll(now + US * 79));
        assert!(!p.should_poll(now + US * 80));
        let (p, _) = feed(100, &[99; 10], 100);
        assert_eq!(p.window(), US * 100, "capped at the maximum");
    }

    #[test]
    fn gaps_beyond_the_maximum_shrink_it_to_nothing() {
        let (mut p, mut now) = feed(100, &[60; 10], 100);
        assert_eq!(p.window(), US * 80);
        for _ in 0..4 {
            now += Duration::from_millis(10);
            p.on_activity(now, 100);
        }
        assert_eq!(p.window(), Duration::ZERO, "80 → 40 → 20 → 0");
        assert!(!p.should_poll(now + US));
    }

    #[test]
    fn bulk_traffic_is_not_polled_for() {
        // 64 KiB chunks every 20 µs: about 3 GB/s.
        let (p, now) = feed(100, &[20; 50], 64 * 1024);
        assert!(!p.window().is_zero());
        assert!(!p.should_poll(now + US));
        // The same gaps with small messages are polled for.
        let (p, now) = feed(100, &[20; 50], 200);
        assert!(p.should_poll(now + US));
    }

    #[test]
    fn bulk_decays_back_to_polling() {
        let (mut p, mut now) = feed(100, &[20; 50], 64 * 1024);
        // A quiet millisecond, then small messages again.
        now += Duration::from_millis(1);
        p.on_activity(now, 100);
        for _ in 0..10 {
            now += US * 30;
            p.on_activity(now, 100);
        }
        assert!(p.should_poll(now + US));
    }

    #[test]
    fn contention_halves_the_window() {
        let (mut p, now) = feed(100, &[60; 10], 100);
        assert_eq!(p.window(), US * 80);
        p.on_contention();
        assert_eq!(p.window(), US * 40);
        assert!(!p.should_poll(now + US * 41));
        p.on_contention();
        p.on_contention();
        p.on_contention();
        assert_eq!(p.window(), Duration::ZERO, "40 → 20 → 10 → 0");
        assert!(!p.should_poll(now + US));
    }

    #[test]
    fn a_lower_maximum_clamps_the_window() {
        let (mut p, now) = feed(100, &[99; 10], 100);
        p.set_max(US * 30);
        assert_eq!(p.window(), US * 30);
        assert!(!p.should_poll(now + US * 31));
    }
}
