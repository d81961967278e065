//! Per-source rate limit on new connections to the mesh listener, before any handshake
//! work: a token bucket per source address (IPv4 address, or IPv6 /64, since one host
//! commonly holds a whole /64). Peers redial with backoff, so a legitimate source stays
//! far below the limit; a flood from one source is refused at accept and counted.
//!
//! Sans-IO: the caller passes the time. Memory is bounded: buckets that have refilled
//! are swept, and past [`MAX_SOURCES`] tracked sources new ones are refused until a sweep
//! frees room (the global cap on pending handshakes still applies to everyone).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most sources tracked at once.
pub const MAX_SOURCES: usize = 65_536;
/// How often full buckets are swept away.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
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
            return Verdict::Limit { log: false };
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

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
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

        let mut l = SourceLimiter::new(1, t0);
        for i in 0..MAX_SOURCES as u32 {
            l.check(IpAddr::V4(std::net::Ipv4Addr::from(i)), t0);
        }
        assert_eq!(
            l.check(ip("203.0.113.1"), t0),
            Verdict::Limit { log: false }
        );
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
