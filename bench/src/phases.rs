//! The measurements themselves, one run at a time: iperf3 throughput (with tunnel CPU
//! time around the single-stream run), redis-benchmark latency and rate, a sequential
//! new-connection loop, and the memory held per idle forwarded connection.
//! Every loop is bounded in count and in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::adapters::Tunnel;
use crate::metrics::{quantile, Metric};
use crate::procs;

/// How long and how much each phase runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Seconds per measurement (iperf duration, conn loop, redis-benchmark target time).
    pub seconds: u64,
    /// Connections held open by the memory phase.
    pub held_conns: usize,
}

/// Upper bound of the sequential connection loop.
const MAX_CONNS: usize = 200_000;
/// Timeout for one connect or one read in the harness's own clients.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Sum over `pids` of `f(pid)`.
fn sum_over(pids: &[u32], f: fn(u32) -> Result<u64>) -> Result<u64> {
    pids.iter().map(|&p| f(p)).sum()
}

/// One iperf3 client run: Gbit/s received and bytes received.
fn iperf_once(entrance: SocketAddr, streams: u32, s: &Settings, dir: &Path) -> Result<(f64, f64)> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &entrance.ip().to_string()])
        .args(["-p", &entrance.port().to_string()])
        .args(["-t", &s.seconds.to_string()])
        .args(["-P", &streams.to_string()])
        .arg("-J");
    let timeout = Duration::from_secs(s.seconds * 2 + 20);
    let done = procs::run_with_timeout(cmd, dir, &format!("iperf-P{streams}"), timeout)?;
    let json: serde_json::Value = serde_json::from_str(&done.stdout)
        .with_context(|| format!("iperf3 printed no JSON: {}", done.stderr.trim()))?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let sum = &json["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3 JSON")?;
    let bytes = sum["bytes"]
        .as_f64()
        .context("no end.sum_received.bytes in iperf3 JSON")?;
    if !done.status.success() {
        bail!("iperf3 exited with {}", done.status);
    }
    Ok((bps / 1e9, bytes))
}

/// iperf3 with retries: the persistent server refuses a client while it still finishes
/// the previous test ("the server is busy"), and a first run may race the tunnel's start.
fn iperf_retry(entrance: SocketAddr, streams: u32, s: &Settings, dir: &Path) -> Result<(f64, f64)> {
    let mut last = None;
    for _ in 0..5 {
        match iperf_once(entrance, streams, s, dir) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last.expect("at least one attempt"))
}

/// `iperf3 -P 1`, with the tunnel processes' CPU time read around it when `with_cpu`.
pub fn iperf_single(
    tunnel: &mut Tunnel,
    s: &Settings,
    with_cpu: bool,
) -> Result<Vec<(Metric, f64)>> {
    let dir = procs::temp_dir("iperf-client")?;
    let pids = tunnel.pids();
    let before = sum_over(&pids, procs::cpu_ticks)?;
    let (gbps, bytes) = iperf_retry(tunnel.entrance(), 1, s, dir.path())?;
    let after = sum_over(&pids, procs::cpu_ticks)?;
    tunnel.check_running()?;
    let mut out = vec![(Metric::IperfP1, gbps)];
    if with_cpu && !pids.is_empty() {
        let cpu_s = (after.saturating_sub(before)) as f64 / procs::CLOCK_TICKS_PER_SEC;
        if cpu_s <= 0.0 {
            bail!("the tunnel used no measurable CPU time for {bytes} bytes");
        }
        out.push((Metric::CpuBytes, bytes / cpu_s / 1e6));
    }
    Ok(out)
}

/// `iperf3 -P 4`.
pub fn iperf_four(tunnel: &mut Tunnel, s: &Settings) -> Result<Vec<(Metric, f64)>> {
    let dir = procs::temp_dir("iperf-client")?;
    let (gbps, _) = iperf_retry(tunnel.entrance(), 4, s, dir.path())?;
    tunnel.check_running()?;
    Ok(vec![(Metric::IperfP4, gbps)])
}

/// One redis-benchmark GET run, from its `--csv` output.
struct RedisRun {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn redis_benchmark(
    entrance: SocketAddr,
    clients: u32,
    requests: u64,
    s: &Settings,
) -> Result<RedisRun> {
    let dir = procs::temp_dir("redis-benchmark")?;
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", &entrance.ip().to_string()])
        .args(["-p", &entrance.port().to_string()])
        .args(["-t", "get", "-n", &requests.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["--csv", "--precision", "3"]);
    let timeout = Duration::from_secs(s.seconds * 4 + 30);
    let done = procs::run_with_timeout(cmd, dir.path(), "redis-benchmark", timeout)?;
    if !done.status.success() {
        bail!(
            "redis-benchmark exited with {}: {}",
            done.status,
            done.stderr.trim()
        );
    }
    parse_redis_csv(&done.stdout).with_context(|| {
        format!(
            "cannot read redis-benchmark --csv output: {:?}",
            done.stdout
        )
    })
}

/// Reads `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...` and the
/// `"GET",...` line under it.
fn parse_redis_csv(text: &str) -> Result<RedisRun> {
    let split = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = split(lines.next().context("empty output")?);
    let row = lines
        .map(split)
        .find(|r| r.first().is_some_and(|t| t.starts_with("GET")))
        .context("no GET line")?;
    let field = |name: &str| -> Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no column {name}"))?;
        row.get(i)
            .context("short row")?
            .parse()
            .with_context(|| format!("column {name} is not a number"))
    };
    Ok(RedisRun {
        rps: field("rps")?,
        p50_ms: field("p50_latency_ms")?,
        p99_ms: field("p99_latency_ms")?,
    })
}

/// How many requests fill about `seconds` at the rate of a short calibration run.
fn requests_for(entrance: SocketAddr, clients: u32, s: &Settings) -> Result<u64> {
    let probe = if clients == 1 { 2_000 } else { 10_000 };
    let run = redis_benchmark(entrance, clients, probe, s)?;
    Ok(((run.rps * s.seconds as f64) as u64).clamp(1_000, 2_000_000))
}

/// Request counts for `-c 1` and `-c 50`, found once per adapter.
#[derive(Clone, Copy, Debug)]
pub struct RedisPlan {
    c1: u64,
    c50: u64,
}

impl RedisPlan {
    pub fn calibrate(tunnel: &Tunnel, s: &Settings) -> Result<Self> {
        Ok(Self {
            c1: requests_for(tunnel.entrance(), 1, s)?,
            c50: requests_for(tunnel.entrance(), 50, s)?,
        })
    }
}

/// redis-benchmark GET: `-c 1` for latency percentiles, `-c 50` for the request rate;
/// then the harness's own one-client GET loop for percentiles finer than
/// redis-benchmark's histogram buckets (16 µs apart around 30 µs on this machine kind,
/// which makes every tunnel tie).
pub fn redis(tunnel: &mut Tunnel, plan: &RedisPlan, s: &Settings) -> Result<Vec<(Metric, f64)>> {
    let one = redis_benchmark(tunnel.entrance(), 1, plan.c1, s)?;
    let fifty = redis_benchmark(tunnel.entrance(), 50, plan.c50, s)?;
    let mut rtt_us = redis_rtt(tunnel.entrance(), Duration::from_secs(s.seconds))?;
    tunnel.check_running()?;
    rtt_us.sort_by(f64::total_cmp);
    Ok(vec![
        (Metric::RedisP50, one.p50_ms),
        (Metric::RedisP99, one.p99_ms),
        (
            Metric::RedisRttP50,
            quantile(&rtt_us, 0.5).context("no GET timed")?,
        ),
        (
            Metric::RedisRttP99,
            quantile(&rtt_us, 0.99).context("no GET timed")?,
        ),
        (Metric::RedisRps, fifty.rps),
    ])
}

/// Upper bound of the timed GET loop.
const MAX_GETS: usize = 500_000;
/// The key the timed GET loop reads, and its 3-byte value (redis-benchmark's default size).
const RTT_KEY: &str = "meshbench:rtt";
const RTT_SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$13\r\nmeshbench:rtt\r\n$3\r\nxyz\r\n";
const RTT_GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$13\r\nmeshbench:rtt\r\n";
const RTT_REPLY: &[u8] = b"$3\r\nxyz\r\n";

/// One connection, sequential `GET`s for `budget` (at most `MAX_GETS`), each timed from
/// the write to the last byte of its reply; every reply is checked byte for byte.
/// Round-trip times in µs, unsorted.
fn redis_rtt(entrance: SocketAddr, budget: Duration) -> Result<Vec<f64>> {
    debug_assert_eq!(RTT_KEY.len(), 13);
    let mut stream = TcpStream::connect_timeout(&entrance, IO_TIMEOUT)
        .with_context(|| format!("connect to {entrance}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(RTT_SET)?;
    let mut ok = [0u8; 5];
    stream.read_exact(&mut ok).context("no reply to SET")?;
    if &ok != b"+OK\r\n" {
        bail!(
            "SET {RTT_KEY}: unexpected reply {:?}",
            String::from_utf8_lossy(&ok)
        );
    }
    let mut reply = [0u8; RTT_REPLY.len()];
    let mut rtt_us = Vec::with_capacity(MAX_GETS.min(200_000));
    let start = Instant::now();
    while rtt_us.len() < MAX_GETS && start.elapsed() < budget {
        let t0 = Instant::now();
        stream.write_all(RTT_GET)?;
        stream.read_exact(&mut reply).context("short GET reply")?;
        let took = t0.elapsed();
        if reply != RTT_REPLY {
            bail!(
                "GET {RTT_KEY}: unexpected reply {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        rtt_us.push(took.as_secs_f64() * 1e6);
    }
    Ok(rtt_us)
}

/// Sequential connect → `PING` → `+PONG` → close for `seconds` (at most `MAX_CONNS`):
/// the rate, and the time from connect start to the first reply byte.
pub fn conn(tunnel: &mut Tunnel, s: &Settings) -> Result<Vec<(Metric, f64)>> {
    let entrance = tunnel.entrance();
    let budget = Duration::from_secs(s.seconds);
    let start = Instant::now();
    let mut ttfb_ms = Vec::new();
    while ttfb_ms.len() < MAX_CONNS && start.elapsed() < budget {
        let t0 = Instant::now();
        let mut stream = match TcpStream::connect_timeout(&entrance, IO_TIMEOUT) {
            Ok(stream) => stream,
            // Out of ephemeral ports (TIME_WAIT): keep what was measured.
            Err(e) if procs::is_addr_exhausted(&e) && ttfb_ms.len() >= 100 => break,
            Err(e) => return Err(e).context(format!("connect to {entrance}")),
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream
            .read_exact(&mut reply[..1])
            .context("no reply to PING")?;
        let first = t0.elapsed();
        stream.read_exact(&mut reply[1..]).context("short reply")?;
        if &reply != b"+PONG\r\n" {
            bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
        }
        drop(stream);
        ttfb_ms.push(first.as_secs_f64() * 1e3);
    }
    let elapsed = start.elapsed().as_secs_f64();
    tunnel.check_running()?;
    let rate = ttfb_ms.len() as f64 / elapsed;
    ttfb_ms.sort_by(f64::total_cmp);
    Ok(vec![
        (Metric::ConnRate, rate),
        (
            Metric::ConnTtfbP50,
            quantile(&ttfb_ms, 0.5).context("no connection")?,
        ),
        (
            Metric::ConnTtfbP99,
            quantile(&ttfb_ms, 0.99).context("no connection")?,
        ),
    ])
}

/// Opens `held_conns` connections through the tunnel (each carries one PING/PONG, so the
/// tunnel really set it up end to end), and reads both tunnel processes' RSS before,
/// while they are held, and after they are closed.
pub fn mem(tunnel: &mut Tunnel, s: &Settings) -> Result<Vec<(Metric, f64)>> {
    let pids = tunnel.pids();
    if pids.is_empty() {
        bail!("no tunnel processes to measure");
    }
    let entrance = tunnel.entrance();
    std::thread::sleep(Duration::from_millis(300));
    let before = sum_over(&pids, procs::rss_kib)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::with_capacity(s.held_conns);
    for i in 0..s.held_conns {
        if Instant::now() >= deadline {
            bail!(
                "opening {} connections took over 60 s (got {i})",
                s.held_conns
            );
        }
        let mut stream = TcpStream::connect_timeout(&entrance, IO_TIMEOUT)
            .with_context(|| format!("connection {i} to {entrance}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream
            .read_exact(&mut reply)
            .with_context(|| format!("no PONG on held connection {i}"))?;
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = sum_over(&pids, procs::rss_kib)?;
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    let after = sum_over(&pids, procs::rss_kib)?;
    tunnel.check_running()?;
    let per_conn = (during as f64 - before as f64) / s.held_conns as f64;
    Ok(vec![
        (Metric::MemPerConn, per_conn),
        (Metric::MemIdle, before as f64),
        (Metric::MemAfter, after as f64),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_7_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                    \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"GET\",\"41152.26\",\"0.030\",\"0.008\",\"0.023\",\"0.047\",\"0.071\",\"0.407\"\n";
        let r = parse_redis_csv(text).unwrap();
        assert_eq!(r.rps, 41152.26);
        assert_eq!(r.p50_ms, 0.023);
        assert_eq!(r.p99_ms, 0.071);
        assert!(parse_redis_csv("").is_err());
        assert!(parse_redis_csv("\"test\",\"rps\"\n").is_err());
    }
}
