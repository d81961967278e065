//! meshd: two daemons on loopback. Peer `a` exports service `svc` (the benchmark target)
//! to `b`; `b` has the forward (our entrance) to `a/svc` and dials the link.
//! `psk` mode adds the mesh secret file both hosts need; `tls` a CA and one certificate
//! per host, made by the library's certgen (as `meshctl cert` does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{ready, Tunnel};
use crate::procs::{self, Proc};

/// Warnings only, except the dialer's `link up` line that readiness waits for.
const RUST_LOG: &str = "warn,meshd::link::dial=info";

#[derive(Clone, Copy, Debug)]
pub enum Auth {
    Noise,
    Psk,
    Tls,
}

/// The `meshd` binary built next to this one.
pub fn binary() -> Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("current_exe")?
        .with_file_name("meshd"))
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn path_str(p: &Path) -> Result<String> {
    Ok(quote(p.to_str().context("non-UTF-8 temp path")?))
}

pub fn start(target: SocketAddr, auth: Auth) -> Result<Tunnel> {
    let bin = binary()?;
    let dir = procs::temp_dir(match auth {
        Auth::Noise => "meshd-noise",
        Auth::Psk => "meshd-psk",
        Auth::Tls => "meshd-tls",
    })?;
    let entrance = procs::local(procs::free_port()?);
    let mesh = |_: &str| -> Result<SocketAddr> { Ok(procs::local(procs::free_port()?)) };
    let (mesh_a, mesh_b) = (mesh("a")?, mesh("b")?);
    let manifest = dir.path().join("peers");
    std::fs::create_dir_all(&manifest)?;
    let ca = match auth {
        Auth::Tls => {
            let validity = meshd::tls::certgen::Validity::days_from_now(1);
            let ca = meshd::tls::certgen::new_ca("meshbench CA", validity)?;
            meshd::tls::certgen::write_public(&dir.path().join("ca.crt"), &ca.cert_pem, true)?;
            Some(ca)
        }
        _ => None,
    };
    let secret = match auth {
        Auth::Noise | Auth::Tls => None,
        Auth::Psk => {
            let p = dir.path().join("mesh.secret");
            meshd::keys::create_mesh_secret_file(&p)?;
            Some(p)
        }
    };
    std::fs::write(
        manifest.join("mesh.toml"),
        format!(
            "mesh_id = \"bench\"\nauth = {}\n",
            quote(match auth {
                Auth::Noise => "noise",
                Auth::Psk => "psk",
                Auth::Tls => "tls",
            })
        ),
    )?;
    let mut configs = Vec::new();
    for (name, addr) in [("a", mesh_a), ("b", mesh_b)] {
        let host = dir.path().join(name);
        std::fs::create_dir_all(host.join("state"))?;
        let key = host.join("host.key");
        let public = meshd::keys::create_private_key_file(&key)?;
        let mut peer = format!(
            "endpoints = [{}]\npublic_key = {}\n",
            quote(&addr.to_string()),
            quote(&public.to_base64())
        );
        if name == "a" {
            peer.push_str(&format!(
                "\n[services.svc]\ntarget = {}\nallow = [\"b\"]\n",
                quote(&target.to_string())
            ));
        } else {
            peer.push_str(&format!(
                "\n[[forwards]]\nlisten = {}\nto = \"a/svc\"\n",
                quote(&entrance.to_string())
            ));
        }
        std::fs::write(manifest.join(format!("{name}.toml")), peer)?;
        let mut host_conf = format!(
            "name = {}\nmanifest = {}\nkey = {}\nlisten = {}\nadmin = {}\nstate_dir = {}\n",
            quote(name),
            path_str(&manifest)?,
            path_str(&key)?,
            quote(&addr.to_string()),
            quote(&procs::local(procs::free_port()?).to_string()),
            path_str(&host.join("state"))?,
        );
        if let Ok(us) = std::env::var("MESHBENCH_BUSY_POLL_US") {
            host_conf.push_str(&format!("busy_poll_us = {us}\n"));
        }
        if let Some(secret) = &secret {
            host_conf.push_str(&format!("mesh_secret = {}\n", path_str(secret)?));
        }
        if let Some(ca) = &ca {
            let validity = meshd::tls::certgen::Validity::days_from_now(1);
            let issued = meshd::tls::certgen::issue(&ca.cert_pem, &ca.key_pem, name, validity)?;
            let (crt, key) = (host.join("tls.crt"), host.join("tls.key"));
            meshd::tls::certgen::write_public(&crt, &issued.cert_pem, true)?;
            meshd::tls::certgen::write_private(&key, &issued.key_pem, true)?;
            host_conf.push_str(&format!(
                "cert = {}\ncert_key = {}\nca = {}\n",
                path_str(&crt)?,
                path_str(&key)?,
                path_str(&dir.path().join("ca.crt"))?
            ));
        }
        let conf = host.join("meshd.toml");
        std::fs::write(&conf, host_conf)?;
        configs.push(conf);
    }
    let spawn = |name: &str, conf: &PathBuf| {
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(conf)
            .env("RUST_LOG", RUST_LOG)
            .env("NO_COLOR", "1");
        Proc::spawn(
            &format!("meshd {name}"),
            cmd,
            dir.path().join(format!("{name}.log")),
        )
    };
    let mut a = spawn("a", &configs[0])?;
    procs::wait_listening(mesh_a, &mut [&mut a], super::START_TIMEOUT)?;
    let mut b = spawn("b", &configs[1])?;
    let deadline = Instant::now() + super::START_TIMEOUT;
    while !b.log_contains("link up") {
        a.check_running()?;
        b.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "meshd b logged no `link up` within {:?}; its log ends with:\n{}",
                super::START_TIMEOUT,
                b.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Client end (b, the entrance) first, then the server end (a, the exit).
    ready(entrance, vec![b, a], dir)
}
