//! spiped: `spiped -e` (the entrance, encrypts) and `spiped -d` (in front of the target,
//! decrypts), sharing a key file of 32 random bytes, in the foreground, without a limit on
//! simultaneous connections (the default of 100 would cap the memory phase).

use std::net::SocketAddr;
use std::process::Command;

use anyhow::Result;

use super::{ready, Tunnel};
use crate::procs::{self, Proc};

pub fn start(target: SocketAddr) -> Result<Tunnel> {
    let dir = procs::temp_dir("spiped")?;
    let entrance = procs::local(procs::free_port()?);
    let server = procs::local(procs::free_port()?);
    let key = dir.path().join("key");
    let mut bytes = [0u8; 32];
    meshd::keys::fill_random(&mut bytes)?;
    std::fs::write(&key, bytes)?;
    let spiped = |mode: &str, source: SocketAddr, to: SocketAddr, pidfile: &str| {
        let mut cmd = Command::new("spiped");
        cmd.arg(mode)
            .arg("-s")
            .arg(format!("[{}]:{}", source.ip(), source.port()))
            .arg("-t")
            .arg(format!("[{}]:{}", to.ip(), to.port()))
            .arg("-k")
            .arg(&key)
            .args(["-F", "-n", "0", "-p"])
            .arg(dir.path().join(pidfile));
        cmd
    };
    let mut server_proc = Proc::spawn(
        "spiped -d",
        spiped("-d", server, target, "d.pid"),
        dir.path().join("d.log"),
    )?;
    procs::wait_listening(server, &mut [&mut server_proc], super::START_TIMEOUT)?;
    let client_proc = Proc::spawn(
        "spiped -e",
        spiped("-e", entrance, server, "e.pid"),
        dir.path().join("e.log"),
    )?;
    ready(entrance, vec![client_proc, server_proc], dir)
}
