//! Redial backoff: exponential, jittered, bounded, and reset after a healthy period.

use std::time::Duration;

/// Backoff settings, validated by [`BackoffConfig::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    min: Duration,
    max: Duration,
    healthy: Duration,
}

impl BackoffConfig {
    /// `min` ≤ `max`, both non-zero; a link that stayed up for `healthy` resets the delay.
    pub fn new(min: Duration, max: Duration, healthy: Duration) -> Result<Self, String> {
        if min.is_zero() || max < min {
            return Err(format!(
                "backoff needs 0 < min <= max, got min {min:?} max {max:?}"
            ));
        }
        Ok(Self { min, max, healthy })
    }

    /// How long a link must stay up before the delay starts over.
    pub fn healthy(&self) -> Duration {
        self.healthy
    }
}

impl Default for BackoffConfig {
    /// A peer that is back (restarted, rebooted, reachable again) must be relinked within
    /// 2 s however long it was gone, so the delay stops growing at 1 s: a redial per
    /// second to a dead peer costs one SYN, a longer ceiling costs an outage that long.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            healthy: Duration::from_secs(30),
        }
    }
}

/// Delay state of one redialing loop. Each delay is drawn uniformly from
/// `[ceiling/2, ceiling]` ("equal jitter"), so peers that lost a link at the same moment
/// do not redial in lockstep; the ceiling doubles up to `max`.
#[derive(Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    ceiling: Duration,
}

impl Backoff {
    /// Starts at the minimum delay.
    pub fn new(cfg: BackoffConfig) -> Self {
        Self {
            cfg,
            ceiling: cfg.min,
        }
    }

    /// The next delay, given a random value in `[0, 1)`.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.cfg.max);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay, jittered from the system random generator.
    pub fn next_delay(&mut self) -> Duration {
        let mut b = [0u8; 8];
        let unit = match crate::keys::fill_random(&mut b) {
            Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 0.5,
        };
        self.next_with(unit)
    }

    /// Called when a link ends: a link that lived long enough resets the delay.
    pub fn link_ended(&mut self, lived: Duration) {
        if lived >= self.cfg.healthy {
            self.reset();
        }
    }

    /// Back to the minimum delay (the peer closed in order and is expected back soon).
    pub fn reset(&mut self) {
        self.ceiling = self.cfg.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
        .expect("valid")
    }

    #[test]
    fn grows_to_the_bound_with_jitter_inside_it() {
        let mut b = Backoff::new(cfg());
        let upper: Vec<_> = (0..8).map(|_| b.next_with(1.0)).collect();
        assert_eq!(upper[0], Duration::from_millis(100));
        assert_eq!(upper[1], Duration::from_millis(200));
        assert_eq!(upper[7], Duration::from_secs(2));
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_with(0.0), Duration::from_millis(50));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    #[test]
    fn resets_only_after_a_healthy_period() {
        let mut b = Backoff::new(cfg());
        for _ in 0..5 {
            b.next_with(1.0);
        }
        b.link_ended(Duration::from_secs(1));
        assert_eq!(b.next_with(1.0), Duration::from_secs(2));
        b.link_ended(Duration::from_secs(31));
        assert_eq!(b.next_with(1.0), Duration::from_millis(100));
    }

    #[test]
    fn the_default_redials_at_least_every_second() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        assert!(
            b.next_with(0.0) >= Duration::from_millis(500),
            "still jittered"
        );
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(
            BackoffConfig::new(Duration::ZERO, Duration::from_secs(1), Duration::ZERO).is_err()
        );
        assert!(BackoffConfig::new(
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::ZERO
        )
        .is_err());
    }
}
