//! `meshd demo`: the example mesh of `peers/` on loopback in one process. Each peer gets a
//! fresh key (the manifest's public keys have no private keys anywhere), free loopback
//! ports, and stand-in services (an HTTP responder for `http`, byte-exact echo servers for
//! the rest); then real streams cross the links and the replies are printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use meshd::config::{AuthMode, Config, HostConfig, HostPort, Manifest};
use meshd::keys::{self, MeshSecret};
use meshd::tls::certgen::{self, Validity};
use meshd::tls::{TlsFiles, TlsMaterial};

pub async fn run(manifest: Option<PathBuf>, keep: bool, auth: Option<String>) -> ExitCode {
    match demo(manifest, keep, auth).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn default_manifest() -> PathBuf {
    let local = PathBuf::from("peers");
    if local.join("mesh.toml").is_file() {
        local
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peers"))
    }
}

/// Loopback ports for the demo daemons. Each stays bound until `release`, so no two
/// daemons (nor an admin server) are handed the same port; they come from below the
/// ephemeral range (`meshd::ports`), so no outgoing connection takes one between `release`
/// and the daemon's bind.
#[derive(Default)]
struct Ports(Vec<std::net::TcpListener>);

impl Ports {
    fn take(&mut self) -> Result<u16> {
        let l = meshd::ports::bind_below_ephemeral([127, 0, 0, 1].into())
            .context("picking a loopback port")?;
        let port = l.local_addr()?.port();
        self.0.push(l);
        Ok(port)
    }

    fn release(self) {}
}

/// Starts a stand-in server for a service and returns its address.
async fn stand_in(service: &str, owner: &str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let http = service.contains("http") || service.contains("web");
    let banner = format!("{owner}/{service}");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let banner = banner.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                if http {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let first = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let body =
                        format!("hello from {banner}, reached through meshd; you asked: {first}\n");
                    let reply = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                } else {
                    loop {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if sock.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = sock.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// Rewrites the example manifest for one machine: fresh keys, loopback ports, stand-ins.
async fn localize(mut manifest: Manifest, dir: &Path, ports: &mut Ports) -> Result<Vec<Config>> {
    let mut keys_by_peer = Vec::new();
    for peer in manifest.peers.values_mut() {
        let (private, public) = keys::generate_keypair()?;
        peer.public_key = public;
        let port = ports.take()?;
        peer.endpoints = vec![HostPort::Addr(SocketAddr::from(([127, 0, 0, 1], port)))];
        for (name, service) in peer.services.iter_mut() {
            let addr = stand_in(name.as_str(), peer.name.as_str()).await?;
            service.target = HostPort::Addr(addr);
        }
        for fwd in peer.forwards.iter_mut() {
            fwd.listen = SocketAddr::from(([127, 0, 0, 1], ports.take()?));
        }
        keys_by_peer.push((peer.name.clone(), private, port));
    }
    let mut secret = [0u8; 32];
    keys::fill_random(&mut secret)?;
    let uses_tls = manifest.mesh.auth == AuthMode::Tls
        || manifest
            .mesh
            .pair_auth
            .values()
            .any(|m| *m == AuthMode::Tls);
    // A demo CA, made the way `meshctl cert new-ca` makes one, and pinned.
    let ca = if uses_tls {
        let ca = certgen::new_ca("meshd demo CA", Validity::days_from_now(1))?;
        let ca_path = dir.join("ca.crt");
        certgen::write_public(&ca_path, &ca.cert_pem, true)?;
        manifest.mesh.ca_fingerprints = vec![meshd::tls::fingerprint(&ca.der)];
        Some((ca, ca_path))
    } else {
        None
    };
    let mut configs = Vec::new();
    for (name, private_key, port) in keys_by_peer {
        let state_dir = dir.join(name.as_str());
        let (tls_files, tls) = match &ca {
            Some((ca, ca_path)) => {
                let issued = certgen::issue(
                    &ca.cert_pem,
                    &ca.key_pem,
                    name.as_str(),
                    Validity::days_from_now(1),
                )?;
                let files = TlsFiles {
                    cert: dir.join(format!("{name}.crt")),
                    cert_key: dir.join(format!("{name}.key")),
                    ca: ca_path.clone(),
                };
                certgen::write_public(&files.cert, &issued.cert_pem, true)?;
                certgen::write_private(&files.cert_key, &issued.key_pem, true)?;
                let material = TlsMaterial::load(&files, &name, &manifest.mesh.ca_fingerprints)
                    .map_err(|e| anyhow!("{}: {}", e.field, e.message))?;
                (Some(files), Some(std::sync::Arc::new(material)))
            }
            None => (None, None),
        };
        configs.push(Config {
            host: HostConfig {
                path: dir.join(format!("{name}.toml")),
                name,
                manifest: manifest.dir.clone(),
                key: dir.join("unused.key"),
                listen: None,
                admin: SocketAddr::from(([127, 0, 0, 1], ports.take()?)),
                mesh_secret: None,
                state_dir,
                tls: tls_files,
                // The demo's daemons share one process and one story; none polls.
                busy_poll: std::time::Duration::ZERO,
                // Its streams are done when it stops.
                drain_grace: std::time::Duration::from_secs(2),
            },
            manifest: manifest.clone(),
            private_key,
            mesh_secret: Some(MeshSecret::from_bytes(secret)),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            hash: "demo".to_owned(),
            tls,
        });
    }
    Ok(configs)
}

async fn demo(manifest_dir: Option<PathBuf>, keep: bool, auth: Option<String>) -> Result<()> {
    let dir = manifest_dir.unwrap_or_else(default_manifest);
    let mut manifest = meshd::config::load_manifest(&dir)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("loading the example manifest {}", dir.display()))?;
    if let Some(auth) = auth {
        manifest.mesh.auth = match auth.as_str() {
            "psk" => AuthMode::Psk,
            "tls" => AuthMode::Tls,
            _ => AuthMode::Noise,
        };
        manifest.mesh.pair_auth.clear();
    }
    println!(
        "meshd demo: mesh {:?} from {} ({} peers, auth {}), run on loopback with fresh keys{}\n",
        manifest.mesh.mesh_id,
        dir.display(),
        manifest.peers.len(),
        manifest.mesh.auth.as_str(),
        if manifest.mesh.auth == AuthMode::Tls {
            " and a fresh demo CA"
        } else {
            ""
        }
    );
    let state = std::env::temp_dir().join(format!("meshd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let mut ports = Ports::default();
    let configs = localize(manifest, &state, &mut ports).await?;
    ports.release();
    let cancel = CancellationToken::new();
    let mut routes = Vec::new();
    let mut done = Vec::new();
    for cfg in configs {
        let me = cfg.me().clone();
        for (name, svc) in &me.services {
            println!(
                "  {}/{name:<10} exported to {:?}, stand-in at {}",
                me.name,
                svc.allow.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                svc.target
            );
        }
        let daemon = meshd::daemon::Daemon::start(cfg, cancel.clone())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(admin) = daemon.bound().admin {
            println!(
                "  {:<16} admin at http://{admin}/status (and /metrics, /healthz)",
                me.name.as_str()
            );
        }
        for (to, addr) in daemon.bound().forwards {
            routes.push((me.name.to_string(), to, addr));
        }
        done.push(daemon);
    }
    println!();
    let mut failures = 0;
    for (from, to, addr) in &routes {
        match exchange(to, *addr).await {
            Ok((sent, got)) => {
                println!(
                    "{from} -> {to} via {addr}\n  sent:     {}\n  received: {}\n",
                    sent.trim_end(),
                    got.trim_end().replace('\n', "\n            ")
                );
            }
            Err(e) => {
                failures += 1;
                println!("{from} -> {to} via {addr}: FAILED: {e:#}\n");
            }
        }
    }
    if keep {
        println!("demo mesh running; forwards listed above; Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    for daemon in done {
        daemon.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&state);
    if failures > 0 {
        return Err(anyhow!("{failures} of {} streams failed", routes.len()));
    }
    println!("all {} streams crossed the mesh intact", routes.len());
    Ok(())
}

/// Sends one request through a forward (retrying while the link comes up) and returns the
/// request and the reply.
async fn exchange(to: &str, addr: SocketAddr) -> Result<(String, String)> {
    let request = if to.contains("http") || to.contains("web") {
        format!("GET / HTTP/1.0\r\nHost: {to}\r\n\r\n")
    } else {
        format!("hello {to}, this line is echoed back byte for byte\n")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_exchange(addr, &request).await {
            Ok(reply) if !reply.is_empty() => {
                if !(to.contains("http") || to.contains("web")) && reply != request {
                    return Err(anyhow!("echo mismatch: got {reply:?}"));
                }
                return Ok((request.clone(), reply));
            }
            Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) => return Err(anyhow!("empty reply")),
            Err(e) => return Err(e),
        }
    }
}

async fn try_exchange(addr: SocketAddr, request: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    s.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .context("reply timed out")??;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}
