//! The servers the tunnels lead to: a persistent `iperf3 -s` and a `redis-server` without
//! persistence, each on a free loopback port, killed on drop.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use tempfile::TempDir;

use crate::procs::{self, Proc};

/// A target server process and its address.
pub struct Target {
    pub addr: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Target {
    /// `iperf3 -s` (persistent: it survives the stray connection of a readiness probe).
    pub fn iperf3() -> Result<Self> {
        if !procs::on_path("iperf3") {
            bail!("missing: install iperf3 (apt-get install iperf3)");
        }
        let dir = procs::temp_dir("iperf3-server")?;
        let addr = procs::local(procs::free_port()?);
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", "127.0.0.1", "-p", &addr.port().to_string()]);
        let mut proc = Proc::spawn("iperf3 -s", cmd, dir.path().join("iperf3.log"))?;
        procs::wait_listening(addr, &mut [&mut proc], Duration::from_secs(10))?;
        Ok(Self {
            addr,
            proc,
            _dir: dir,
        })
    }

    /// `redis-server --port P --save '' --appendonly no`.
    pub fn redis() -> Result<Self> {
        if !procs::on_path("redis-server") {
            bail!("missing: install redis-server (apt-get install redis-server)");
        }
        let dir = procs::temp_dir("redis-server")?;
        let addr = procs::local(procs::free_port()?);
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--maxclients", "10000"])
            .arg("--dir")
            .arg(dir.path());
        let mut proc = Proc::spawn("redis-server", cmd, dir.path().join("redis.log"))?;
        procs::wait_listening(addr, &mut [&mut proc], Duration::from_secs(10))?;
        procs::wait_redis_pong(addr, Duration::from_secs(10))?;
        Ok(Self {
            addr,
            proc,
            _dir: dir,
        })
    }

    /// Fails if the server died.
    pub fn check_running(&mut self) -> Result<()> {
        self.proc.check_running()
    }
}
