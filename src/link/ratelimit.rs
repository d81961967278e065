//! Per-source rate limit on new connections to the mesh listener, before any handshake
//! work: a token bucket per source address (IPv4 address, or IPv6 /64, since one host
//! commonly holds a whole /64). Peers redial with backoff, so a legitimate source stays
//! far below the limit; a flood from one source is refused at accept and counted.
//!
//! Sans-IO: the caller passes the time. Memory is bounded: buckets that have refilled
//! are swept, and at [`MAX_SOURCES`] tracked sources a new one first sweeps, then evicts
//! the stalest sixteenth of the table (least recently seen). Refusing new sources instead
//! would let anyone with enough addresses (an IPv6 /48 holds 65 536 /64s) fill the
//! table and lock every newcomer out without a log line; evicting the stalest costs at
//! most a fresh burst for sources idle the longest, while active flooders stay tracked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most sources tracked at once.
pub const MAX_SOURCES: usize = 65_536;
/// How often full buckets are swept away.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How many of the stalest sources one eviction removes (amortising its full scan).
const EVICT_BATCH: usize = MAX_SOURCES / 16;
/// One refusal log line per source at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The outcome for one new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the handshake.
    Allow,
    /// Refuse; `log` is true for the first refusal of this source in a while.
    Limit {
        /// Whether to write a log line for this refusal.
        log: bool,
    },
}

struct Bucket {
    tokens: f64,
    last: Instant,
    logged: Option<Instant>,
}

/// Token buckets by source.
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
}

/// The key of a source: the address, or its /64 for IPv6.
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl SourceLimiter {
    /// `per_second` new connections per source on average, bursts of twice that.
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            burst: (rate * 2.0).max(1.0),
            buckets: HashMap::new(),
            last_sweep: now,
        }
    }

    /// Decides on a new connection from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        let key = source_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_SOURCES {
            self.sweep(now);
            if self.buckets.len() >= MAX_SOURCES {
                self.evict_stalest();
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
            logged: None,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Allow;
        }
        let log = b
            .logged
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if log {
            b.logged = Some(now);
        }
        Verdict::Limit { log }
    }

    /// Drops the buckets that have refilled (they hold no state worth keeping).
    fn sweep(&mut self, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < refill);
        self.last_sweep = now;
    }

    /// Forgets the [`EVICT_BATCH`] sources seen least recently.
    fn evict_stalest(&mut self) {
        let mut by_age: Vec<(Instant, IpAddr)> =
            self.buckets.iter().map(|(k, b)| (b.last, *k)).collect();
        let batch = EVICT_BATCH.min(by_age.len());
        if batch == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(batch - 1, |(last, _)| *last);
        for (_, key) in &by_age[..batch] {
            self.buckets.remove(key);
        }
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Whether `ip`'s source is tracked now.
    #[cfg(test)]
    fn is_tracked(&self, ip: IpAddr) -> bool {
        self.buckets.contains_key(&source_key(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(5, t0);
        let a = ip("192.0.2.1");
        for i in 0..10 {
            assert_eq!(l.check(a, t0), Verdict::Allow, "burst connection {i}");
        }
        assert_eq!(l.check(a, t0), Verdict::Limit { log: true });
        assert_eq!(l.check(a, t0), Verdict::Limit { log: false });
        // 5 per second: one token every 200 ms.
        assert_eq!(
            l.check(a, t0 + Duration::from_millis(199)),
            Verdict::Limit { log: false }
        );
        assert_eq!(l.check(a, t0 + Duration::from_millis(401)), Verdict::Allow);
        // Another source is not affected.
        assert_eq!(l.check(ip("192.0.2.2"), t0), Verdict::Allow);
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, t0);
        assert_eq!(l.check(ip("2001:db8:1:2::1"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("2001:db8:1:2:ffff::9"), t0), Verdict::Allow);
        assert!(matches!(
            l.check(ip("2001:db8:1:2::77"), t0),
            Verdict::Limit { .. }
        ));
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Verdict::Allow);
        // An IPv4-mapped address counts as its IPv4 source.
        assert_eq!(l.check(ip("192.0.2.9"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("::ffff:192.0.2.9"), t0), Verdict::Allow);
        assert!(matches!(
            l.check(ip("192.0.2.9"), t0),
            Verdict::Limit { .. }
        ));
    }

    #[test]
    fn refilled_buckets_are_swept_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(100, t0);
        for i in 0..1000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(l.check(a, t0), Verdict::Allow);
        }
        assert_eq!(l.tracked(), 1000);
        l.check(ip("192.0.2.1"), t0 + SWEEP_EVERY);
        assert_eq!(l.tracked(), 1, "full buckets swept");
    }

    #[test]
    fn a_full_table_evicts_the_stalest_sources_instead_of_refusing_newcomers() {
        let t0 = Instant::now();
        // 1 per second: a bucket takes 2 s to refill, so nothing is swept below.
        let mut l = SourceLimiter::new(1, t0);
        let source = |i: usize| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
        // Source i is last seen at t0 + i µs: source 0 is the stalest.
        for i in 0..MAX_SOURCES {
            let at = t0 + Duration::from_micros(i as u64);
            assert_eq!(l.check(source(i), at), Verdict::Allow);
        }
        assert_eq!(l.tracked(), MAX_SOURCES);
        // The newest source floods: over its burst it is refused.
        let flooder = source(MAX_SOURCES - 1);
        let later = t0 + Duration::from_millis(100);
        assert_eq!(l.check(flooder, later), Verdict::Allow);
        assert!(matches!(l.check(flooder, later), Verdict::Limit { .. }));

        // A new source gets in, and room is made by dropping the stalest ones.
        assert_eq!(l.check(ip("203.0.113.1"), later), Verdict::Allow);
        assert_eq!(l.tracked(), MAX_SOURCES - EVICT_BATCH + 1);
        assert!(!l.is_tracked(source(0)), "the stalest source was evicted");
        assert!(!l.is_tracked(source(EVICT_BATCH - 1)));
        assert!(l.is_tracked(source(EVICT_BATCH)), "only the stalest batch");
        // The flooder was seen recently: it is still tracked, and still refused.
        assert!(matches!(l.check(flooder, later), Verdict::Limit { .. }));
        // Newcomers keep getting in without another eviction until the room is used.
        for i in 0..EVICT_BATCH - 1 {
            let a = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, (i >> 8) as u8, i as u8));
            assert_eq!(l.check(a, later), Verdict::Allow, "newcomer {i}");
        }
        assert_eq!(l.tracked(), MAX_SOURCES);
    }

    #[test]
    fn zero_turns_it_off() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(0, t0);
        for _ in 0..1000 {
            assert_eq!(l.check(ip("192.0.2.1"), t0), Verdict::Allow);
        }
        assert_eq!(l.tracked(), 0);
    }
}
