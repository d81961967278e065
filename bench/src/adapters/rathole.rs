//! rathole with the Noise transport. rathole's entrance is on its *server* side: the
//! server binds the visitor port (our entrance) once the client's control channel is up,
//! and the client connects to the local service (our target). So the server process is
//! the client end of our tunnel and the rathole client is the server end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{ready, Tunnel};
use crate::procs::{self, Proc};

/// `rathole` on PATH, else `~/.cargo/bin/rathole` (where `cargo install` puts it).
pub fn binary() -> Option<PathBuf> {
    procs::find_on_path("rathole").or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = PathBuf::from(home).join(".cargo/bin/rathole");
        p.is_file().then_some(p)
    })
}

/// Runs `rathole --genkey` and returns (private, public) in base64.
fn genkey(bin: &PathBuf, dir: &Path) -> Result<(String, String)> {
    let mut cmd = Command::new(bin);
    cmd.arg("--genkey");
    let done = procs::run_with_timeout(cmd, dir, "genkey", Duration::from_secs(10))?;
    if !done.status.success() {
        bail!("rathole --genkey failed: {}", done.stderr);
    }
    // Output: "Private Key:\n<b64>\n\nPublic Key:\n<b64>\n".
    let mut private = None;
    let mut public = None;
    let mut lines = done.stdout.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("Private Key") {
            private = lines.next().map(str::to_owned);
        } else if line.starts_with("Public Key") {
            public = lines.next().map(str::to_owned);
        }
    }
    match (private, public) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => Ok((a, b)),
        _ => bail!("cannot parse rathole --genkey output: {:?}", done.stdout),
    }
}

pub fn start(target: SocketAddr) -> Result<Tunnel> {
    let bin = binary().context("rathole not installed")?;
    let dir = procs::temp_dir("rathole")?;
    let entrance = procs::local(procs::free_port()?);
    let control = procs::local(procs::free_port()?);
    let (private, public) = genkey(&bin, dir.path())?;
    let token = super::stunnel::random_hex()?;
    let server_conf = procs::write_file(
        dir.path(),
        "server.toml",
        &format!(
            "[server]\nbind_addr = \"{control}\"\n\n[server.transport]\ntype = \"noise\"\n\n\
             [server.transport.noise]\nlocal_private_key = \"{private}\"\n\n\
             [server.services.bench]\ntoken = \"{token}\"\nbind_addr = \"{entrance}\"\n"
        ),
    )?;
    let client_conf = procs::write_file(
        dir.path(),
        "client.toml",
        &format!(
            "[client]\nremote_addr = \"{control}\"\n\n[client.transport]\ntype = \"noise\"\n\n\
             [client.transport.noise]\nremote_public_key = \"{public}\"\n\n\
             [client.services.bench]\ntoken = \"{token}\"\nlocal_addr = \"{target}\"\n"
        ),
    )?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--server")
        .arg(&server_conf)
        .env("RUST_LOG", "warn");
    let mut server_proc = Proc::spawn("rathole server", cmd, dir.path().join("server.log"))?;
    procs::wait_listening(control, &mut [&mut server_proc], super::START_TIMEOUT)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--client")
        .arg(&client_conf)
        .env("RUST_LOG", "warn");
    let client_proc = Proc::spawn("rathole client", cmd, dir.path().join("client.log"))?;
    // The visitor port opens only once the control channel is up.
    ready(entrance, vec![server_proc, client_proc], dir)
}
