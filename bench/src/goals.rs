//! The targets meshd is held to (issue 6), checked against one run.
//!
//! Each target is a ratio against stunnel in the same run, met when the ratio of the
//! medians meets it. Beside that criterion the report gives the spread of the same ratio
//! taken round by round (round i of meshd against round i of stunnel, and of direct for an
//! overhead): rounds are minutes apart, so a ratio whose rounds straddle the line says
//! "too close to call on this machine" where the median alone reads as a verdict.

use crate::adapters::AdapterKind;
use crate::metrics::{Better, Metric};
use crate::report::{Cell, Results};

/// How a target's ratio is formed and what it must reach.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// meshd / stunnel ≥ the bound.
    AtLeast(f64),
    /// meshd / stunnel ≤ the bound.
    AtMost(f64),
    /// (meshd − direct) / (stunnel − direct) ≤ the bound: meshd's overhead over a direct
    /// connection against stunnel's.
    OverheadAtMost(f64),
}

#[derive(Clone, Copy, Debug)]
pub struct Goal {
    /// Stable key for results.json.
    pub key: &'static str,
    /// What the target says, for the report.
    pub text: &'static str,
    pub metric: Metric,
    pub rule: Rule,
}

pub const GOALS: [Goal; 7] = [
    Goal {
        key: "bulk_1_stream",
        text: "bulk, 1 stream: meshd / stunnel ≥ 2",
        metric: Metric::IperfP1,
        rule: Rule::AtLeast(2.0),
    },
    Goal {
        key: "redis_c1_p50_overhead",
        text: "redis -c 1 p50 overhead over direct ≤ ½ of stunnel's",
        metric: Metric::RedisP50,
        rule: Rule::OverheadAtMost(0.5),
    },
    Goal {
        key: "redis_c50_rps",
        text: "redis -c 50 req/s: meshd / stunnel ≥ 2",
        metric: Metric::RedisRps,
        rule: Rule::AtLeast(2.0),
    },
    Goal {
        key: "conn_per_s",
        text: "new connections per second: meshd / stunnel ≥ 3",
        metric: Metric::ConnRate,
        rule: Rule::AtLeast(3.0),
    },
    Goal {
        key: "ttfb_p50",
        text: "time to first byte p50: meshd / stunnel ≤ ⅓",
        metric: Metric::ConnTtfbP50,
        rule: Rule::AtMost(1.0 / 3.0),
    },
    Goal {
        key: "mem_per_conn",
        text: "memory per idle connection: meshd / stunnel ≤ ¼",
        metric: Metric::MemPerConn,
        rule: Rule::AtMost(0.25),
    },
    Goal {
        key: "bytes_per_cpu_s",
        text: "bytes per tunnel CPU-second: meshd / stunnel ≥ 2",
        metric: Metric::CpuBytes,
        rule: Rule::AtLeast(2.0),
    },
];

/// The meshd adapters the targets are checked for.
pub const MODES: [AdapterKind; 3] = [
    AdapterKind::MeshdNoise,
    AdapterKind::MeshdPsk,
    AdapterKind::MeshdTls,
];

/// The other tunnels meshd must be ahead of on every row.
pub const RIVALS: [AdapterKind; 3] = [
    AdapterKind::Stunnel,
    AdapterKind::Spiped,
    AdapterKind::Rathole,
];

/// One target checked for one meshd mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The ratio of the medians: the criterion.
    pub ratio: f64,
    /// Lowest and highest ratio of single rounds; `None` unless every adapter involved has
    /// one value per round.
    pub rounds: Option<(f64, f64)>,
    pub met: bool,
}

impl Rule {
    fn ratio(self, meshd: f64, stunnel: f64, direct: Option<f64>) -> Option<f64> {
        let (num, den) = match self {
            Rule::AtLeast(_) | Rule::AtMost(_) => (meshd, stunnel),
            Rule::OverheadAtMost(_) => {
                let d = direct?;
                (meshd - d, stunnel - d)
            }
        };
        (den != 0.0 && num.is_finite() && den.is_finite()).then(|| num / den)
    }

    /// A ratio on the bound meets it; so does one off it by rounding alone (0.099 − 0.039
    /// over 0.159 − 0.039 comes out a hair above ½ in binary floating point).
    fn met(self, ratio: f64) -> bool {
        const ROUNDING: f64 = 1e-9;
        match self {
            Rule::AtLeast(b) => ratio >= b * (1.0 - ROUNDING),
            Rule::AtMost(b) | Rule::OverheadAtMost(b) => ratio <= b * (1.0 + ROUNDING),
        }
    }

    fn needs_direct(self) -> bool {
        matches!(self, Rule::OverheadAtMost(_))
    }
}

fn values(r: &Results, a: AdapterKind, m: Metric) -> Option<&[f64]> {
    match r.cells.get(&(a, m)) {
        Some(Cell::Values(v)) if !v.is_empty() => Some(v),
        _ => None,
    }
}

fn median(v: &[f64]) -> Option<f64> {
    crate::metrics::Summary::of(v).map(|s| s.median)
}

impl Goal {
    /// `None` when the run lacks a value the ratio needs (an adapter skipped or failed).
    pub fn check(&self, r: &Results, mode: AdapterKind) -> Option<Verdict> {
        let meshd = values(r, mode, self.metric)?;
        let stunnel = values(r, AdapterKind::Stunnel, self.metric)?;
        let direct = if self.rule.needs_direct() {
            Some(values(r, AdapterKind::Direct, self.metric)?)
        } else {
            None
        };
        let ratio = self
            .rule
            .ratio(median(meshd)?, median(stunnel)?, direct.and_then(median))?;
        let n = meshd.len();
        let aligned = stunnel.len() == n && direct.is_none_or(|d| d.len() == n);
        let rounds = aligned
            .then(|| {
                let per: Vec<f64> = (0..n)
                    .filter_map(|i| self.rule.ratio(meshd[i], stunnel[i], direct.map(|d| d[i])))
                    .collect();
                let min = per.iter().copied().reduce(f64::min)?;
                let max = per.iter().copied().reduce(f64::max)?;
                (per.len() == n).then_some((min, max))
            })
            .flatten();
        Some(Verdict {
            ratio,
            rounds,
            met: self.rule.met(ratio),
        })
    }
}

/// Rows of the table where `mode`'s median is not strictly better than some other
/// tunnel's: (metric, rival, rival's median, meshd's median).
pub fn not_ahead(r: &Results, mode: AdapterKind) -> Vec<(Metric, AdapterKind, f64, f64)> {
    let mut out = Vec::new();
    for &metric in &r.metrics {
        let Some(mine) = values(r, mode, metric).and_then(median) else {
            continue;
        };
        for rival in RIVALS {
            let Some(theirs) = values(r, rival, metric).and_then(median) else {
                continue;
            };
            let ahead = match metric.better() {
                Better::Higher => mine > theirs,
                Better::Lower => mine < theirs,
            };
            if !ahead {
                out.push((metric, rival, theirs, mine));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Meta;
    use std::collections::BTreeMap;

    fn results(cells: &[(AdapterKind, Metric, &[f64])]) -> Results {
        Results {
            meta: Meta {
                date: String::new(),
                stamp: String::new(),
                nproc: 2,
                cpu_model: String::new(),
                load: String::new(),
                versions: BTreeMap::new(),
                source: String::new(),
                runs: 3,
                seconds: 1,
                held_conns: 1,
                smoke: false,
            },
            adapters: AdapterKind::ALL.to_vec(),
            metrics: Metric::ALL.to_vec(),
            cells: cells
                .iter()
                .map(|&(a, m, v)| ((a, m), Cell::Values(v.to_vec())))
                .collect(),
        }
    }

    const BULK: Goal = GOALS[0];
    const OVERHEAD: Goal = GOALS[1];

    #[test]
    fn a_ratio_of_medians_decides_and_rounds_give_the_spread() {
        let r = results(&[
            (AdapterKind::Stunnel, Metric::IperfP1, &[3.0, 3.2, 2.0]),
            (AdapterKind::MeshdNoise, Metric::IperfP1, &[6.3, 6.0, 6.6]),
        ]);
        let v = BULK.check(&r, AdapterKind::MeshdNoise).expect("verdict");
        // medians 6.3 / 3.0
        assert!((v.ratio - 2.1).abs() < 1e-9, "{v:?}");
        assert!(v.met);
        let (lo, hi) = v.rounds.expect("aligned rounds");
        assert!(
            (lo - 6.0 / 3.2).abs() < 1e-9 && (hi - 6.6 / 2.0).abs() < 1e-9,
            "{v:?}"
        );
        let below = results(&[
            (AdapterKind::Stunnel, Metric::IperfP1, &[3.0]),
            (AdapterKind::MeshdNoise, Metric::IperfP1, &[5.99]),
        ]);
        assert!(!BULK.check(&below, AdapterKind::MeshdNoise).expect("v").met);
    }

    #[test]
    fn an_overhead_is_taken_over_direct() {
        let r = results(&[
            (AdapterKind::Direct, Metric::RedisP50, &[0.039, 0.039]),
            (AdapterKind::Stunnel, Metric::RedisP50, &[0.159, 0.159]),
            (AdapterKind::MeshdTls, Metric::RedisP50, &[0.095, 0.103]),
        ]);
        let v = OVERHEAD.check(&r, AdapterKind::MeshdTls).expect("verdict");
        // median 0.099: (0.099 - 0.039) / (0.159 - 0.039) = 0.5, on the line: met.
        assert!((v.ratio - 0.5).abs() < 1e-9, "{v:?}");
        assert!(v.met);
        let (lo, hi) = v.rounds.expect("rounds");
        assert!((lo - 0.056 / 0.12).abs() < 1e-9 && (hi - 0.064 / 0.12).abs() < 1e-9);
        // Without direct there is no overhead to compare.
        let r = results(&[
            (AdapterKind::Stunnel, Metric::RedisP50, &[0.159]),
            (AdapterKind::MeshdTls, Metric::RedisP50, &[0.095]),
        ]);
        assert_eq!(OVERHEAD.check(&r, AdapterKind::MeshdTls), None);
    }

    #[test]
    fn rounds_of_unequal_count_give_no_spread() {
        let r = results(&[
            (AdapterKind::Stunnel, Metric::IperfP1, &[3.0, 3.0]),
            (AdapterKind::MeshdPsk, Metric::IperfP1, &[6.0]),
        ]);
        let v = BULK.check(&r, AdapterKind::MeshdPsk).expect("verdict");
        assert_eq!(v.rounds, None);
        assert!(v.met);
        let skipped = results(&[(AdapterKind::MeshdPsk, Metric::IperfP1, &[6.0])]);
        assert_eq!(BULK.check(&skipped, AdapterKind::MeshdPsk), None);
    }

    #[test]
    fn the_report_names_only_the_rivals_it_measured() {
        let mut r = results(&[
            (AdapterKind::Stunnel, Metric::IperfP1, &[3.0]),
            (AdapterKind::Rathole, Metric::IperfP1, &[2.2]),
            (AdapterKind::MeshdNoise, Metric::IperfP1, &[6.4]),
        ]);
        r.cells.insert(
            (AdapterKind::Spiped, Metric::IperfP1),
            Cell::Skipped("missing: spiped".into()),
        );
        let md = r.markdown(None);
        assert!(
            md.contains("Every meshd mode is ahead of stunnel, rathole on every row."),
            "{md}"
        );
        assert!(md.contains("| bulk, 1 stream: meshd / stunnel ≥ 2 | 2.13 [2.13–2.13] met |"));
    }

    #[test]
    fn a_tie_or_a_loss_to_any_rival_is_listed() {
        let r = results(&[
            (AdapterKind::Spiped, Metric::MemIdle, &[7108.0]),
            (AdapterKind::Stunnel, Metric::MemIdle, &[19020.0]),
            (AdapterKind::MeshdNoise, Metric::MemIdle, &[12320.0]),
            (AdapterKind::Rathole, Metric::RedisP99, &[0.223]),
            (AdapterKind::MeshdNoise, Metric::RedisP99, &[0.223]),
            (AdapterKind::Rathole, Metric::IperfP1, &[2.2]),
            (AdapterKind::MeshdNoise, Metric::IperfP1, &[6.4]),
            // direct is no rival: a tunnel is never ahead of it.
            (AdapterKind::Direct, Metric::IperfP1, &[21.0]),
        ]);
        let rows: Vec<(Metric, AdapterKind)> = not_ahead(&r, AdapterKind::MeshdNoise)
            .into_iter()
            .map(|(m, a, _, _)| (m, a))
            .collect();
        assert_eq!(
            rows,
            [
                (Metric::RedisP99, AdapterKind::Rathole),
                (Metric::MemIdle, AdapterKind::Spiped)
            ]
        );
    }
}
