//! Adapters: each builds `entrance → tunnel (client end + server end) → target` on
//! 127.0.0.1 with free ports in its own temporary directory, and tears it down by killing
//! only the processes it started (on `stop` and on drop).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use tempfile::TempDir;

use crate::procs::{self, Proc};

mod meshd;
mod rathole;
mod spiped;
mod stunnel;

/// The `meshd` binary the meshd adapters start (the one next to meshbench).
pub use self::meshd::binary as meshd_binary;

/// How long an adapter may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The tunnels the harness knows, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdapterKind {
    Direct,
    Stunnel,
    Spiped,
    Rathole,
    MeshdNoise,
    MeshdPsk,
    MeshdTls,
}

impl AdapterKind {
    pub const ALL: [AdapterKind; 7] = [
        AdapterKind::Direct,
        AdapterKind::Stunnel,
        AdapterKind::Spiped,
        AdapterKind::Rathole,
        AdapterKind::MeshdNoise,
        AdapterKind::MeshdPsk,
        AdapterKind::MeshdTls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Direct => "direct",
            AdapterKind::Stunnel => "stunnel",
            AdapterKind::Spiped => "spiped",
            AdapterKind::Rathole => "rathole",
            AdapterKind::MeshdNoise => "meshd-noise",
            AdapterKind::MeshdPsk => "meshd-psk",
            AdapterKind::MeshdTls => "meshd-tls",
        }
    }

    /// Whether a tunnel process sits between entrance and target.
    pub fn has_tunnel(self) -> bool {
        self != AdapterKind::Direct
    }

    /// `Some("missing: install X")` when a tool this adapter runs is not installed.
    pub fn missing(self) -> Option<String> {
        match self {
            AdapterKind::Direct => None,
            AdapterKind::Stunnel => (!procs::on_path("stunnel"))
                .then(|| "missing: install stunnel4 (apt-get install stunnel4)".to_owned()),
            AdapterKind::Spiped => (!procs::on_path("spiped"))
                .then(|| "missing: install spiped (apt-get install spiped)".to_owned()),
            AdapterKind::Rathole => rathole::binary()
                .is_none()
                .then(|| "missing: install rathole (cargo install rathole)".to_owned()),
            AdapterKind::MeshdNoise | AdapterKind::MeshdPsk | AdapterKind::MeshdTls => {
                match meshd::binary() {
                    Ok(p) if p.is_file() => None,
                    Ok(p) => Some(format!(
                        "missing: build meshd ({} does not exist; cargo build --release -p meshd -p meshbench)",
                        p.display()
                    )),
                    Err(e) => Some(format!("missing: meshd binary ({e:#})")),
                }
            }
        }
    }

    /// The first line of the tool's version output.
    pub fn version(self) -> Option<String> {
        let (program, args): (PathBuf, &[&str]) = match self {
            AdapterKind::Direct => return None,
            AdapterKind::Stunnel => ("stunnel".into(), &["-version"]),
            AdapterKind::Spiped => ("spiped".into(), &["-v"]),
            AdapterKind::Rathole => (rathole::binary()?, &["--version"]),
            AdapterKind::MeshdNoise | AdapterKind::MeshdPsk | AdapterKind::MeshdTls => {
                (meshd::binary().ok()?, &["--version"])
            }
        };
        tool_version(program, args, self.name())
    }

    /// Starts the tunnel in front of `target` and waits until its entrance is usable.
    pub fn start(self, target: SocketAddr) -> Result<Tunnel> {
        if let Some(missing) = self.missing() {
            bail!("{missing}");
        }
        match self {
            AdapterKind::Direct => Ok(Tunnel {
                entrance: target,
                procs: Vec::new(),
                _dir: None,
            }),
            AdapterKind::Stunnel => stunnel::start(target),
            AdapterKind::Spiped => spiped::start(target),
            AdapterKind::Rathole => rathole::start(target),
            AdapterKind::MeshdNoise => meshd::start(target, meshd::Auth::Noise),
            AdapterKind::MeshdPsk => meshd::start(target, meshd::Auth::Psk),
            AdapterKind::MeshdTls => meshd::start(target, meshd::Auth::Tls),
        }
    }
}

impl fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AdapterKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        AdapterKind::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AdapterKind::ALL.iter().map(|a| a.name()).collect();
                format!("unknown adapter {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Runs `program args` and returns the first non-empty line of its output (stdout, else
/// stderr: stunnel prints its version on stderr).
pub fn tool_version(program: impl Into<PathBuf>, args: &[&str], label: &str) -> Option<String> {
    let program = program.into();
    let dir = procs::temp_dir(&format!("version-{label}")).ok()?;
    let mut cmd = std::process::Command::new(&program);
    cmd.args(args);
    let done = procs::run_with_timeout(cmd, dir.path(), "version", Duration::from_secs(10)).ok()?;
    let lines: Vec<&str> = done
        .stdout
        .lines()
        .chain(done.stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Initializing"))
        .collect();
    let first = lines.first()?;
    if first.contains(|c: char| c.is_ascii_digit()) {
        return Some((*first).to_owned());
    }
    // rathole prints its name alone, then `Build Version: 0.5.0` further down.
    let version = lines
        .iter()
        .find(|l| l.contains("Version"))
        .and_then(|l| l.split_whitespace().last());
    Some(match version {
        Some(v) => format!("{first} {v}"),
        None => (*first).to_owned(),
    })
}

/// A running tunnel: where clients connect, and the processes that carry it.
pub struct Tunnel {
    entrance: SocketAddr,
    /// Client end first, then server end; empty for `direct`.
    procs: Vec<Proc>,
    /// Declared after `procs` so that the processes die before their files go.
    _dir: Option<TempDir>,
}

impl Tunnel {
    pub fn entrance(&self) -> SocketAddr {
        self.entrance
    }

    /// PIDs of the tunnel processes (both ends).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// Fails if a tunnel process died (with the end of its log).
    pub fn check_running(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_running()?;
        }
        Ok(())
    }

    /// Kills the tunnel processes.
    pub fn stop(mut self) {
        for p in &mut self.procs {
            p.stop();
        }
    }
}

/// Waits until `entrance` accepts connections while both `procs` keep running, then
/// wraps them into a `Tunnel`.
fn ready(entrance: SocketAddr, mut procs: Vec<Proc>, dir: TempDir) -> Result<Tunnel> {
    {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        procs::wait_listening(entrance, &mut refs, START_TIMEOUT)?;
    }
    Ok(Tunnel {
        entrance,
        procs,
        _dir: Some(dir),
    })
}
