//! stunnel4 with TLS 1.3 PSK: a `client = yes` process (the entrance) and a `client = no`
//! process (in front of the target), sharing one PSK identity.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::Result;

use super::{ready, Tunnel};
use crate::procs::{self, Proc};

pub fn start(target: SocketAddr) -> Result<Tunnel> {
    let dir = procs::temp_dir("stunnel")?;
    let entrance = procs::local(procs::free_port()?);
    let server = procs::local(procs::free_port()?);
    let psk = procs::write_file(dir.path(), "psk.txt", &format!("bench:{}\n", random_hex()?))?;
    std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let section = |client: bool, accept: SocketAddr, connect: SocketAddr| {
        format!(
            "foreground = yes\npid =\ndebug = warning\n\n[bench]\nclient = {}\naccept = {accept}\n\
             connect = {connect}\nPSKsecrets = {}\nciphersuites = TLS_AES_128_GCM_SHA256\n\
             sslVersionMin = TLSv1.3\nsslVersionMax = TLSv1.3\n",
            if client { "yes" } else { "no" },
            psk.display()
        )
    };
    let server_conf =
        procs::write_file(dir.path(), "server.conf", &section(false, server, target))?;
    let client_conf =
        procs::write_file(dir.path(), "client.conf", &section(true, entrance, server))?;
    let mut cmd = Command::new("stunnel");
    cmd.arg(&server_conf);
    let server_proc = Proc::spawn("stunnel server", cmd, dir.path().join("server.log"))?;
    let mut cmd = Command::new("stunnel");
    cmd.arg(&client_conf);
    let client_proc = Proc::spawn("stunnel client", cmd, dir.path().join("client.log"))?;
    let mut server_proc = server_proc;
    procs::wait_listening(server, &mut [&mut server_proc], super::START_TIMEOUT)?;
    ready(entrance, vec![client_proc, server_proc], dir)
}

/// 32 random bytes in hex (stunnel wants at least 16 bytes of key).
pub fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    meshd::keys::fill_random(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
