//! `meshbench`: measures meshd against stunnel, spiped, rathole and a direct connection on
//! this machine, in one run, and writes a markdown table, `results.json` and a ratio chart.
//! See bench/README.md.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

mod adapters;
mod goals;
mod metrics;
mod phases;
mod procs;
mod report;
mod targets;

use adapters::{AdapterKind, Tunnel};
use metrics::{Metric, Phase};
use phases::{RedisPlan, Settings};
use report::{Cell, Meta, Results};
use targets::Target;

#[derive(Parser, Debug)]
#[command(
    name = "meshbench",
    version,
    about = "Benchmark meshd against stunnel, spiped, rathole and a direct connection on loopback"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the benchmark and write results-YYYYMMDD-HHMMSS.md, results.json and the chart.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Adapters (columns), comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,stunnel,spiped,rathole,meshd-noise,meshd-psk,meshd-tls"
    )]
    adapters: Vec<AdapterKind>,

    /// Phases, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iperf,redis,conn,mem,cpu"
    )]
    phases: Vec<Phase>,

    /// Runs per metric (median and min–max are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: u64,

    /// Seconds per measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,

    /// Output directory [default: bench/results; with --smoke bench/results/tmp, which git
    /// ignores, so a smoke run never replaces the latest full run's ratios.png and
    /// results.json that the README shows].
    #[arg(long)]
    out: Option<PathBuf>,

    /// A quick check that everything works: 1 run, 1 s per phase, 50 held connections.
    /// The numbers are not a benchmark.
    #[arg(long)]
    smoke: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dedup<T: Ord + Copy>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for &i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Takes the machine-wide run lock for as long as the returned listener lives: a Unix
/// socket bound to an abstract name, which the kernel frees when the process ends, however
/// it ends. Two runs at once measure each other (same cores), so a second one refuses to
/// start. `MESHBENCH_LOCK` names another lock (tests use their own).
fn take_run_lock() -> Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = std::env::var("MESHBENCH_LOCK").unwrap_or_else(|_| "meshbench-run-lock".into());
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| anyhow::anyhow!("run lock {name:?}: {e}"))?;
    match UnixListener::bind_addr(&addr) {
        Ok(lock) => Ok(lock),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "another meshbench run holds the run lock (abstract socket @{name}): two runs at \
             once measure each other; wait for it to finish or stop it"
        ),
        Err(e) => bail!("run lock @{name}: {e}"),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let _lock = take_run_lock()?;
    let mut adapters = dedup(&args.adapters);
    adapters.sort();
    let mut phases = dedup(&args.phases);
    phases.sort();
    let (runs, settings) = if args.smoke {
        (
            1,
            Settings {
                seconds: 1,
                held_conns: 50,
            },
        )
    } else {
        (
            args.runs as usize,
            Settings {
                seconds: args.seconds,
                held_conns: 1000,
            },
        )
    };
    let metrics: Vec<Metric> = phases
        .iter()
        .flat_map(|p| p.metrics().iter().copied())
        .collect();
    let meta = collect_meta(&adapters, runs, &settings, args.smoke);
    eprintln!(
        "meshbench: {} × {} runs × {} s; adapters {}; phases {}",
        adapters.len(),
        runs,
        settings.seconds,
        join(&adapters),
        join(&phases)
    );
    let mut results = Results {
        meta,
        adapters: adapters.clone(),
        metrics: metrics.clone(),
        cells: BTreeMap::new(),
    };
    let mut present = Vec::new();
    for &adapter in &adapters {
        match adapter.missing() {
            Some(missing) => {
                eprintln!("[{adapter}] skipped: {missing}");
                for &m in &metrics {
                    results
                        .cells
                        .insert((adapter, m), Cell::Skipped(missing.clone()));
                }
            }
            None => present.push(adapter),
        }
    }
    // Round by round, every adapter in turn: this machine's speed drifts over minutes
    // (shared cores), and a drift then spreads over every column instead of favouring the
    // adapters measured in a quiet stretch. Within a round each group of phases runs for
    // every adapter before the next group starts, so the figures that a target compares
    // (meshd's one stream against stunnel's) are taken a minute or two apart rather than
    // most of a round; and every other round takes the adapters in reverse, so a drift
    // within rounds favours the early adapters in one round and the late ones in the next.
    for round in 0..runs {
        let order = round_order(&present, round);
        for group in [Group::Iperf, Group::Redis] {
            for &adapter in &order {
                let mut bench = AdapterBench {
                    adapter,
                    round,
                    runs,
                    settings,
                    cells: &mut results.cells,
                };
                bench.run(&phases, group);
            }
        }
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.smoke {
            "bench/results/tmp"
        } else {
            "bench/results"
        })
    });
    let md = results.write(&out)?;
    println!("{}", results.markdown(None));
    eprintln!("meshbench: wrote {}", md.display());
    Ok(())
}

/// The adapters in the order round `round` (from 0) measures them: as given in even
/// rounds, reversed in odd ones.
fn round_order(present: &[AdapterKind], round: usize) -> Vec<AdapterKind> {
    let mut order = present.to_vec();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// The phases that share one tunnel (and one target server) per adapter and round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// iperf3 through the tunnel: `iperf` and `cpu`.
    Iperf,
    /// redis-server behind the tunnel: `redis`, `conn` and `mem`.
    Redis,
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one group of the selected phases for one adapter in one round, recording values or
/// failures.
struct AdapterBench<'a> {
    adapter: AdapterKind,
    /// This round (from 0) of `runs`.
    round: usize,
    runs: usize,
    settings: Settings,
    cells: &'a mut BTreeMap<(AdapterKind, Metric), Cell>,
}

impl AdapterBench<'_> {
    fn run(&mut self, phases: &[Phase], group: Group) {
        // A phase that failed in an earlier round stays failed: its other rounds would be a
        // half-measured median.
        let phases: Vec<Phase> = phases
            .iter()
            .copied()
            .filter(|p| !self.failed(*p))
            .collect();
        let has = |p: Phase| phases.contains(&p);
        if !self.adapter.has_tunnel() {
            for p in &phases {
                for &m in p.metrics().iter().filter(|m| m.tunnel_only()) {
                    self.cells.insert((self.adapter, m), Cell::NotApplicable);
                }
            }
        }
        match group {
            Group::Iperf => {
                let want_cpu = has(Phase::Cpu) && self.adapter.has_tunnel();
                let iperf_phases: Vec<Phase> =
                    [(Phase::Iperf, has(Phase::Iperf)), (Phase::Cpu, want_cpu)]
                        .into_iter()
                        .filter_map(|(p, wanted)| wanted.then_some(p))
                        .collect();
                if !iperf_phases.is_empty() {
                    if let Err(e) = self.iperf_group(has(Phase::Iperf), want_cpu) {
                        self.fail(&iperf_phases, &e);
                    }
                }
            }
            Group::Redis => {
                let redis_phases: Vec<Phase> = [Phase::Redis, Phase::Conn, Phase::Mem]
                    .into_iter()
                    .filter(|&p| has(p) && (p != Phase::Mem || self.adapter.has_tunnel()))
                    .collect();
                if !redis_phases.is_empty() {
                    if let Err(e) = self.redis_group(&redis_phases) {
                        self.fail(&redis_phases, &e);
                    }
                }
            }
        }
    }

    /// Whether a metric of `phase` failed in an earlier round.
    fn failed(&self, phase: Phase) -> bool {
        phase
            .metrics()
            .iter()
            .any(|&m| matches!(self.cells.get(&(self.adapter, m)), Some(Cell::Failed(_))))
    }

    /// Marks every metric of `phases` that has no value for this round yet as failed;
    /// earlier rounds' values of such a metric are dropped with it.
    fn fail(&mut self, phases: &[Phase], e: &anyhow::Error) {
        let reason = format!("{e:#}");
        eprintln!("[{}] {} failed: {reason}", self.adapter, join(phases));
        for p in phases {
            for &m in p.metrics() {
                let cell = self
                    .cells
                    .entry((self.adapter, m))
                    .or_insert_with(|| Cell::Failed(reason.clone()));
                if matches!(cell, Cell::Values(v) if v.len() <= self.round) {
                    *cell = Cell::Failed(reason.clone());
                }
            }
        }
    }

    fn record(&mut self, values: Vec<(Metric, f64)>) {
        for (m, v) in values {
            eprintln!("[{}] {}: {}", self.adapter, m.label(), report::num(v));
            match self
                .cells
                .entry((self.adapter, m))
                .or_insert_with(|| Cell::Values(Vec::new()))
            {
                Cell::Values(vs) => vs.push(v),
                other => *other = Cell::Values(vec![v]),
            }
        }
    }

    /// Runs `f` once for this round, recording its result; a failure marks `phase` failed
    /// (keeping earlier rounds out of the median: a half-measured phase is not reported).
    fn repeat(
        &mut self,
        phase: Phase,
        tunnel: &mut Tunnel,
        mut f: impl FnMut(&mut Tunnel) -> Result<Vec<(Metric, f64)>>,
    ) {
        eprintln!(
            "[{}] {phase} run {}/{}",
            self.adapter,
            self.round + 1,
            self.runs
        );
        match f(tunnel) {
            Ok(values) => self.record(values),
            Err(e) => {
                for &m in phase.metrics() {
                    self.cells.remove(&(self.adapter, m));
                }
                self.fail(&[phase], &e);
            }
        }
    }

    fn iperf_group(&mut self, iperf: bool, cpu: bool) -> Result<()> {
        let target = Target::iperf3()?;
        let mut tunnel = self.adapter.start(target.addr)?;
        eprintln!("[{}] up: entrance {}", self.adapter, tunnel.entrance());
        let s = self.settings;
        let phase = if iperf { Phase::Iperf } else { Phase::Cpu };
        // The single-stream run yields both the iperf -P 1 figure and the CPU figure.
        self.repeat(phase, &mut tunnel, |t| {
            let mut v = phases::iperf_single(t, &s, cpu)?;
            if !iperf {
                v.retain(|(m, _)| *m != Metric::IperfP1);
            }
            Ok(v)
        });
        if iperf {
            self.repeat(Phase::Iperf, &mut tunnel, |t| phases::iperf_four(t, &s));
        }
        tunnel.stop();
        drop(target);
        Ok(())
    }

    fn redis_group(&mut self, group: &[Phase]) -> Result<()> {
        let mut target = Target::redis()?;
        let mut tunnel = self.adapter.start(target.addr)?;
        procs::wait_redis_pong(tunnel.entrance(), adapters::START_TIMEOUT)?;
        eprintln!("[{}] up: entrance {}", self.adapter, tunnel.entrance());
        let s = self.settings;
        for &phase in group {
            match phase {
                Phase::Redis => match RedisPlan::calibrate(&tunnel, &s) {
                    Ok(plan) => self.repeat(phase, &mut tunnel, |t| phases::redis(t, &plan, &s)),
                    Err(e) => self.fail(&[phase], &e),
                },
                Phase::Conn => self.repeat(phase, &mut tunnel, |t| phases::conn(t, &s)),
                // A fresh tunnel per run: allocators keep what earlier phases and runs
                // freed, which would hide the cost of the next connections.
                Phase::Mem => {
                    let (adapter, addr) = (self.adapter, target.addr);
                    self.repeat(phase, &mut tunnel, |_| {
                        let mut fresh = adapter.start(addr)?;
                        procs::wait_redis_pong(fresh.entrance(), adapters::START_TIMEOUT)?;
                        let r = phases::mem(&mut fresh, &s);
                        fresh.stop();
                        r
                    })
                }
                Phase::Iperf | Phase::Cpu => bail!("{phase} is not a redis phase"),
            }
            target.check_running()?;
        }
        tunnel.stop();
        Ok(())
    }
}

/// Which meshd code a run measures, for its results file: the commit of the checkout
/// meshbench was built from (and whether tracked files differ from it), and when the
/// `meshd` binary next to meshbench was built. The two together show a stale binary: one
/// built before the commit it claims, or before local changes.
fn source_of() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => format!("git {head}"),
            Some(_) => format!("git {head} with uncommitted changes"),
            None => format!("git {head}"),
        },
        None => "not a git checkout".to_owned(),
    };
    let built = adapters::meshd_binary()
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
        .map(|t| format!("binary built {} UTC", report::utc_stamp(t).0))
        .unwrap_or_else(|| "no meshd binary next to meshbench".to_owned());
    format!("{commit}, {built}")
}

fn collect_meta(adapters: &[AdapterKind], runs: usize, s: &Settings, smoke: bool) -> Meta {
    let (date, stamp) = report::utc_stamp(SystemTime::now());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mut versions = BTreeMap::new();
    for &a in adapters {
        let key = match a {
            AdapterKind::Direct => continue,
            AdapterKind::MeshdNoise | AdapterKind::MeshdPsk | AdapterKind::MeshdTls => "meshd",
            other => other.name(),
        };
        if !versions.contains_key(key) {
            let v = a.version().unwrap_or_else(|| "not installed".into());
            versions.insert(key.to_owned(), v);
        }
    }
    for (tool, args) in [("iperf3", "--version"), ("redis-benchmark", "--version")] {
        let v =
            adapters::tool_version(tool, &[args], tool).unwrap_or_else(|| "not installed".into());
        versions.insert(tool.to_owned(), v);
    }
    Meta {
        date,
        stamp,
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        load,
        versions,
        source: source_of(),
        runs,
        seconds: s.seconds,
        held_conns: s.held_conns,
        smoke,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_rounds_take_the_adapters_in_reverse() {
        let present = [
            AdapterKind::Direct,
            AdapterKind::Stunnel,
            AdapterKind::MeshdNoise,
        ];
        assert_eq!(round_order(&present, 0), present.to_vec());
        assert_eq!(
            round_order(&present, 1),
            vec![
                AdapterKind::MeshdNoise,
                AdapterKind::Stunnel,
                AdapterKind::Direct
            ]
        );
        assert_eq!(round_order(&present, 2), present.to_vec());
    }
}
