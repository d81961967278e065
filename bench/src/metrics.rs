//! What is measured: the phases, the metrics each phase yields (label, unit, which
//! direction is better), and the median/min/max summary of repeated runs.

use std::fmt;
use std::str::FromStr;

/// A group of measurements sharing one target and one tunnel setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Iperf,
    Redis,
    Conn,
    Mem,
    Cpu,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Iperf,
        Phase::Redis,
        Phase::Conn,
        Phase::Mem,
        Phase::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Iperf => "iperf",
            Phase::Redis => "redis",
            Phase::Conn => "conn",
            Phase::Mem => "mem",
            Phase::Cpu => "cpu",
        }
    }

    /// The metrics this phase reports, in table order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Phase::Iperf => &[Metric::IperfP1, Metric::IperfP4],
            Phase::Redis => &[
                Metric::RedisP50,
                Metric::RedisP99,
                Metric::RedisRttP50,
                Metric::RedisRttP99,
                Metric::RedisRps,
            ],
            Phase::Conn => &[Metric::ConnRate, Metric::ConnTtfbP50, Metric::ConnTtfbP99],
            Phase::Mem => &[Metric::MemPerConn, Metric::MemIdle, Metric::MemAfter],
            Phase::Cpu => &[Metric::CpuBytes],
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown phase {s:?}; known: iperf, redis, conn, mem, cpu"))
    }
}

/// Which way a metric improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn words(self) -> &'static str {
        match self {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        }
    }
}

/// One reported number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    IperfP1,
    IperfP4,
    RedisP50,
    RedisP99,
    RedisRttP50,
    RedisRttP99,
    RedisRps,
    ConnRate,
    ConnTtfbP50,
    ConnTtfbP99,
    MemPerConn,
    MemIdle,
    MemAfter,
    CpuBytes,
}

impl Metric {
    #[cfg(test)]
    pub const ALL: [Metric; 14] = [
        Metric::IperfP1,
        Metric::IperfP4,
        Metric::RedisP50,
        Metric::RedisP99,
        Metric::RedisRttP50,
        Metric::RedisRttP99,
        Metric::RedisRps,
        Metric::ConnRate,
        Metric::ConnTtfbP50,
        Metric::ConnTtfbP99,
        Metric::MemPerConn,
        Metric::MemIdle,
        Metric::MemAfter,
        Metric::CpuBytes,
    ];

    /// Stable key for results.json.
    pub fn key(self) -> &'static str {
        match self {
            Metric::IperfP1 => "iperf_p1_gbit_s",
            Metric::IperfP4 => "iperf_p4_gbit_s",
            Metric::RedisP50 => "redis_c1_get_p50_ms",
            Metric::RedisP99 => "redis_c1_get_p99_ms",
            Metric::RedisRttP50 => "redis_c1_rtt_p50_us",
            Metric::RedisRttP99 => "redis_c1_rtt_p99_us",
            Metric::RedisRps => "redis_c50_get_rps",
            Metric::ConnRate => "conn_per_s",
            Metric::ConnTtfbP50 => "conn_ttfb_p50_ms",
            Metric::ConnTtfbP99 => "conn_ttfb_p99_ms",
            Metric::MemPerConn => "mem_kib_per_conn",
            Metric::MemIdle => "mem_idle_rss_kib",
            Metric::MemAfter => "mem_after_close_rss_kib",
            Metric::CpuBytes => "cpu_mb_per_cpu_s",
        }
    }

    /// Row label in the table; starts with the phase name.
    pub fn label(self) -> &'static str {
        match self {
            Metric::IperfP1 => "iperf -P 1 (Gbit/s)",
            Metric::IperfP4 => "iperf -P 4 (Gbit/s)",
            Metric::RedisP50 => "redis GET -c 1 p50 (ms)",
            Metric::RedisP99 => "redis GET -c 1 p99 (ms)",
            Metric::RedisRttP50 => "redis GET 1 client p50, fine timer (µs)",
            Metric::RedisRttP99 => "redis GET 1 client p99, fine timer (µs)",
            Metric::RedisRps => "redis GET -c 50 (req/s)",
            Metric::ConnRate => "conn new connections (conn/s)",
            Metric::ConnTtfbP50 => "conn time to first byte p50 (ms)",
            Metric::ConnTtfbP99 => "conn time to first byte p99 (ms)",
            Metric::MemPerConn => "mem per held connection (KiB, both ends)",
            Metric::MemIdle => "mem idle RSS (KiB, both ends)",
            Metric::MemAfter => "mem RSS after closing (KiB, both ends)",
            Metric::CpuBytes => "cpu bytes per tunnel CPU-second (MB)",
        }
    }

    pub fn better(self) -> Better {
        match self {
            Metric::IperfP1
            | Metric::IperfP4
            | Metric::RedisRps
            | Metric::ConnRate
            | Metric::CpuBytes => Better::Higher,
            _ => Better::Lower,
        }
    }

    /// Only meaningful with tunnel processes (`direct` shows "—").
    pub fn tunnel_only(self) -> bool {
        matches!(
            self,
            Metric::MemPerConn | Metric::MemIdle | Metric::MemAfter | Metric::CpuBytes
        )
    }

    /// Worth a bar in the ratio chart (absolute RSS figures are not).
    pub fn charted(self) -> bool {
        !matches!(self, Metric::MemIdle | Metric::MemAfter)
    }
}

/// Median and spread of repeated runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_runs() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn every_metric_belongs_to_one_phase() {
        for m in Metric::ALL {
            let owners = Phase::ALL
                .iter()
                .filter(|p| p.metrics().contains(&m))
                .count();
            assert_eq!(owners, 1, "{m:?}");
        }
    }
}
