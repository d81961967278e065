//! `TestMesh`: a temporary directory holding a manifest (`peers/`), one host config,
//! key file and state directory per peer, and the real `meshd` processes running them.
//!
//! Layout: `TMP/peers/{mesh.toml,NAME.toml}` (the shared manifest), `TMP/NAME/host.key`,
//! `TMP/NAME/meshd.toml`, `TMP/NAME/state/`, `TMP/NAME.log` (the daemon's stderr and
//! stdout, appended across restarts), `TMP/mesh.secret` when enabled, and
//! `TMP/NAME/peers/` for a host given its own copy of the manifest.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The filter the daemons log with.
const RUST_LOG: &str = "info,meshd=debug";

/// How long `stop` waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `drain_grace_ms` of every test host unless set with [`TestMeshBuilder::drain_grace`]:
/// short, so that a test stopping a daemon whose clients still hold connections finishes
/// within [`STOP_TIMEOUT`].
const TEST_DRAIN_GRACE_MS: u64 = 3000;

/// A service a peer exports.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Where the exporting peer connects.
    pub target: SocketAddr,
    /// Peers allowed to open it.
    pub allow: Vec<String>,
}

/// An entrance on a peer.
#[derive(Clone, Debug)]
pub struct ForwardSpec {
    /// The local listen address.
    pub listen: SocketAddr,
    /// `peer/service`.
    pub to: String,
    /// `public = true` (the exposure guard's opt-out).
    pub public: bool,
}

/// One peer's manifest file.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// Its single endpoint (also the host config's `listen`).
    pub endpoint: SocketAddr,
    /// Base64 X25519 public key.
    pub public_key: String,
    /// Exported services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Entrances, in file order.
    pub forwards: Vec<ForwardSpec>,
}

/// A whole manifest directory, as data; written out by `write`.
#[derive(Clone, Debug)]
pub struct MeshSpec {
    /// `mesh_id`.
    pub mesh_id: String,
    /// `auth`.
    pub auth: String,
    /// Raw TOML appended to mesh.toml.
    pub extra: Vec<String>,
    /// Peers by name.
    pub peers: BTreeMap<String, PeerSpec>,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn quote_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(", "))
}

impl MeshSpec {
    /// The peer `name`; panics if absent.
    pub fn peer_mut(&mut self, name: &str) -> &mut PeerSpec {
        self.peers
            .get_mut(name)
            .unwrap_or_else(|| panic!("no peer {name} in this manifest"))
    }

    /// Removes peer `name` and every reference to it (allow entries, forwards to it), so
    /// that the rest still validates.
    pub fn remove_peer(&mut self, name: &str) {
        self.peers.remove(name);
        let prefix = format!("{name}/");
        for peer in self.peers.values_mut() {
            for service in peer.services.values_mut() {
                service.allow.retain(|p| p != name);
            }
            peer.forwards.retain(|f| !f.to.starts_with(&prefix));
        }
    }

    /// The text of `mesh.toml`.
    pub fn mesh_toml(&self) -> String {
        let mut s = format!(
            "mesh_id = {}\nauth = {}\n",
            quote(&self.mesh_id),
            quote(&self.auth)
        );
        for extra in self.extra.iter().filter(|e| !e.trim().is_empty()) {
            s.push('\n');
            s.push_str(extra.trim_end());
            s.push('\n');
        }
        s
    }

    /// The text of `NAME.toml`.
    pub fn peer_toml(&self, name: &str) -> String {
        let peer = &self.peers[name];
        let mut s = format!(
            "endpoints = [{}]\npublic_key = {}\n",
            quote(&peer.endpoint.to_string()),
            quote(&peer.public_key)
        );
        for (service_name, service) in &peer.services {
            s.push_str(&format!(
                "\n[services.{service_name}]\ntarget = {}\nallow = {}\n",
                quote(&service.target.to_string()),
                quote_list(&service.allow)
            ));
        }
        for forward in &peer.forwards {
            s.push_str(&format!(
                "\n[[forwards]]\nlisten = {}\nto = {}\n",
                quote(&forward.listen.to_string()),
                quote(&forward.to)
            ));
            if forward.public {
                s.push_str("public = true\n");
            }
        }
        s
    }

    /// Writes `mesh.toml` and one file per peer into `dir` (created if needed).
    pub fn write(&self, dir: &Path) {
        fs::create_dir_all(dir).expect("create manifest dir");
        fs::write(dir.join("mesh.toml"), self.mesh_toml()).expect("write mesh.toml");
        for name in self.peers.keys() {
            fs::write(dir.join(format!("{name}.toml")), self.peer_toml(name))
                .expect("write peer file");
        }
    }
}

type Override = Box<dyn FnOnce(&mut MeshSpec)>;

/// Declares a mesh; `build` writes it out without starting anything.
pub struct TestMeshBuilder {
    mesh_id: String,
    auth: String,
    extra: Vec<String>,
    mesh_secret: bool,
    tls: bool,
    peers: Vec<String>,
    services: Vec<(String, String, SocketAddr, Vec<String>)>,
    forwards: Vec<(String, ForwardSpec)>,
    overrides: Vec<(String, Override)>,
    drain_grace: BTreeMap<String, u64>,
    endpoint_ips: BTreeMap<String, IpAddr>,
    netns: BTreeMap<String, String>,
}

impl TestMeshBuilder {
    /// `drain_grace_ms` in `host`'s meshd.toml (default 3000 in tests).
    pub fn drain_grace(mut self, host: &str, ms: u64) -> Self {
        self.drain_grace.insert(host.to_owned(), ms);
        self
    }

    /// `mesh_id` (default `t`).
    pub fn mesh_id(mut self, id: &str) -> Self {
        self.mesh_id = id.to_owned();
        self
    }

    /// `auth`: `noise` (default) or `psk`.
    pub fn auth(mut self, mode: &str) -> Self {
        self.auth = mode.to_owned();
        self
    }

    /// Raw TOML appended to mesh.toml, e.g. `"[limits]\nhandshake_timeout_ms = 1000"`.
    pub fn mesh_toml(mut self, raw: &str) -> Self {
        self.extra.push(raw.to_owned());
        self
    }

    /// Writes `TMP/mesh.secret` (32 random bytes, 0600) and names it in every host config.
    pub fn mesh_secret(mut self) -> Self {
        self.mesh_secret = true;
        self
    }

    /// Makes a test CA (`TMP/ca/ca.crt`, `ca.key`) and a certificate per peer
    /// (`TMP/NAME/tls.crt`, `tls.key`), named in every host config as `cert`, `cert_key`
    /// and `ca`. Combine with `.auth("tls")` or a `[[pairs]]` table.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Declares a peer (services and forwards declare theirs too).
    pub fn peer(mut self, name: &str) -> Self {
        if !self.peers.iter().any(|p| p == name) {
            self.peers.push(name.to_owned());
        }
        self
    }

    /// `peer` exports `service` at `target` to the peers in `allow`.
    pub fn service(
        mut self,
        peer: &str,
        service: &str,
        target: SocketAddr,
        allow: &[&str],
    ) -> Self {
        self = self.peer(peer);
        let allow = allow.iter().map(|s| s.to_string()).collect();
        self.services
            .push((peer.to_owned(), service.to_owned(), target, allow));
        self
    }

    /// An entrance on `peer` to `to` (`peer/service`), on 127.0.0.1 and a free port.
    pub fn forward(self, peer: &str, to: &str) -> Self {
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), super::free_port());
        self.forward_at(peer, listen, to, false)
    }

    /// An entrance on `peer` at `listen` to `to`, with the given `public` flag.
    pub fn forward_at(mut self, peer: &str, listen: SocketAddr, to: &str, public: bool) -> Self {
        self = self.peer(peer);
        self.forwards.push((
            peer.to_owned(),
            ForwardSpec {
                listen,
                to: to.to_owned(),
                public,
            },
        ));
        self
    }

    /// `peer`'s endpoint (and mesh listen address) on `ip` instead of 127.0.0.1.
    pub fn endpoint_ip(mut self, peer: &str, ip: IpAddr) -> Self {
        self = self.peer(peer);
        self.endpoint_ips.insert(peer.to_owned(), ip);
        self
    }

    /// Runs `peer`'s daemon inside network namespace `ns` (`ip netns exec NS meshd …`);
    /// its admin and forward addresses are then that namespace's.
    pub fn netns(mut self, peer: &str, ns: &str) -> Self {
        self = self.peer(peer);
        self.netns.insert(peer.to_owned(), ns.to_owned());
        self
    }

    /// Gives `host` its own copy of the manifest (`TMP/HOST/peers`), edited by `edit`,
    /// for a daemon that must see a different manifest than its peers do.
    pub fn manifest_override(
        mut self,
        host: &str,
        edit: impl FnOnce(&mut MeshSpec) + 'static,
    ) -> Self {
        self.overrides.push((host.to_owned(), Box::new(edit)));
        self
    }

    /// Creates keys and writes every file.
    pub fn build(self) -> TestMesh {
        assert!(!self.peers.is_empty(), "a mesh needs at least one peer");
        let dir = tempfile::Builder::new()
            .prefix("meshd-mesh-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let mut spec = MeshSpec {
            mesh_id: self.mesh_id,
            auth: self.auth,
            extra: self.extra,
            peers: BTreeMap::new(),
        };
        let mut hosts = BTreeMap::new();
        for name in &self.peers {
            let host_dir = root.join(name);
            fs::create_dir_all(host_dir.join("state")).expect("create host dir");
            let key = host_dir.join("host.key");
            let public = meshd::keys::create_private_key_file(&key).expect("create key file");
            let ip = self
                .endpoint_ips
                .get(name)
                .copied()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let endpoint = SocketAddr::new(ip, super::free_port());
            let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), super::free_port());
            spec.peers.insert(
                name.clone(),
                PeerSpec {
                    endpoint,
                    public_key: public.to_base64(),
                    services: BTreeMap::new(),
                    forwards: Vec::new(),
                },
            );
            hosts.insert(
                name.clone(),
                Host {
                    admin,
                    manifest_dir: root.join("peers"),
                    manifest: MeshSpec {
                        mesh_id: String::new(),
                        auth: String::new(),
                        extra: Vec::new(),
                        peers: BTreeMap::new(),
                    },
                    log_offset: 0,
                    child: None,
                    drain_grace_ms: self
                        .drain_grace
                        .get(name)
                        .copied()
                        .unwrap_or(TEST_DRAIN_GRACE_MS),
                    netns: self.netns.get(name).cloned(),
                },
            );
        }
        for (peer, service, target, allow) in self.services {
            spec.peer_mut(&peer)
                .services
                .insert(service, ServiceSpec { target, allow });
        }
        for (peer, forward) in self.forwards {
            spec.peer_mut(&peer).forwards.push(forward);
        }
        spec.write(&root.join("peers"));
        for host in hosts.values_mut() {
            host.manifest = spec.clone();
        }
        for (name, edit) in self.overrides {
            let host = hosts
                .get_mut(&name)
                .unwrap_or_else(|| panic!("manifest_override for unknown peer {name}"));
            edit(&mut host.manifest);
            host.manifest_dir = root.join(&name).join("peers");
            host.manifest.write(&host.manifest_dir);
        }
        let secret = self.mesh_secret.then(|| {
            let path = root.join("mesh.secret");
            meshd::keys::create_mesh_secret_file(&path).expect("create mesh secret");
            path
        });
        let ca = self.tls.then(|| {
            let ca = meshd::tls::certgen::new_ca(
                "meshd test CA",
                meshd::tls::certgen::Validity::days_from_now(2),
            )
            .expect("test CA");
            fs::create_dir_all(root.join("ca")).expect("mkdir ca");
            meshd::tls::certgen::write_public(&root.join("ca/ca.crt"), &ca.cert_pem, true)
                .expect("write ca.crt");
            ca
        });
        let mesh = TestMesh {
            dir,
            root,
            spec,
            hosts,
            secret,
            ca,
        };
        if mesh.ca.is_some() {
            for name in mesh.hosts.keys() {
                mesh.issue_cert(name, meshd::tls::certgen::Validity::days_from_now(2));
            }
        }
        for name in mesh.hosts.keys() {
            mesh.write_host_config(name);
        }
        mesh
    }
}

struct Host {
    admin: SocketAddr,
    manifest_dir: PathBuf,
    /// The manifest this host's daemon reads.
    manifest: MeshSpec,
    /// Where the current run's output starts in the log file.
    log_offset: u64,
    child: Option<Child>,
    drain_grace_ms: u64,
    /// The network namespace the daemon runs in, if not the test's own.
    netns: Option<String>,
}

/// A mesh of real `meshd` processes in a temporary directory; kills its daemons on drop
/// and prints their logs when the test failed.
pub struct TestMesh {
    /// Owns the directory: dropping it deletes everything.
    dir: TempDir,
    root: PathBuf,
    spec: MeshSpec,
    hosts: BTreeMap<String, Host>,
    secret: Option<PathBuf>,
    /// The test CA, when built with `.tls()`.
    ca: Option<meshd::tls::certgen::Issued>,
}

impl TestMesh {
    /// `TMP/ca/ca.crt`, the test CA every host trusts.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca/ca.crt")
    }

    /// The test CA's certificate and key (PEM); panics without `.tls()`.
    pub fn ca(&self) -> &meshd::tls::certgen::Issued {
        self.ca
            .as_ref()
            .expect("this mesh was built without .tls()")
    }

    /// `TMP/NAME/tls.crt` and `TMP/NAME/tls.key`.
    pub fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        self.host(name);
        let dir = self.root.join(name);
        (dir.join("tls.crt"), dir.join("tls.key"))
    }

    /// Issues a new certificate for `name` under the test CA and writes it over the host's
    /// files (the daemon picks it up on SIGHUP). Returns its fingerprint.
    pub fn issue_cert(&self, name: &str, validity: meshd::tls::certgen::Validity) -> String {
        let ca = self.ca();
        let issued = meshd::tls::certgen::issue(&ca.cert_pem, &ca.key_pem, name, validity)
            .expect("issue test certificate");
        self.write_cert(name, &issued)
    }

    /// Writes `issued` as `name`'s certificate and key; returns its fingerprint.
    pub fn write_cert(&self, name: &str, issued: &meshd::tls::certgen::Issued) -> String {
        let (crt, key) = self.cert_paths(name);
        meshd::tls::certgen::write_private(&key, &issued.key_pem, true).expect("write key");
        meshd::tls::certgen::write_public(&crt, &issued.cert_pem, true).expect("write cert");
        meshd::tls::fingerprint(&issued.der)
    }

    /// A builder with `mesh_id = "t"` and `auth = "noise"`.
    pub fn builder() -> TestMeshBuilder {
        TestMeshBuilder {
            mesh_id: "t".into(),
            auth: "noise".into(),
            extra: Vec::new(),
            mesh_secret: false,
            tls: false,
            peers: Vec::new(),
            services: Vec::new(),
            forwards: Vec::new(),
            overrides: Vec::new(),
            drain_grace: BTreeMap::new(),
            endpoint_ips: BTreeMap::new(),
            netns: BTreeMap::new(),
        }
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no peer {name} in this mesh"))
    }

    fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .get_mut(name)
            .unwrap_or_else(|| panic!("no peer {name} in this mesh"))
    }

    fn write_host_config(&self, name: &str) {
        let host = self.host(name);
        let host_dir = self.root.join(name);
        let path_str = |p: &Path| quote(p.to_str().expect("utf-8 temp path"));
        let mut s = format!(
            "name = {}\nmanifest = {}\nkey = {}\nlisten = {}\nadmin = {}\nstate_dir = {}\n\
             drain_grace_ms = {}\n",
            quote(name),
            path_str(&host.manifest_dir),
            path_str(&host_dir.join("host.key")),
            quote(&self.mesh_addr(name).to_string()),
            quote(&host.admin.to_string()),
            path_str(&host_dir.join("state")),
            host.drain_grace_ms,
        );
        if let Some(secret) = &self.secret {
            s.push_str(&format!("mesh_secret = {}\n", path_str(secret)));
        }
        if self.ca.is_some() {
            let (crt, key) = self.cert_paths(name);
            s.push_str(&format!(
                "cert = {}\ncert_key = {}\nca = {}\n",
                path_str(&crt),
                path_str(&key),
                path_str(&self.ca_path())
            ));
        }
        fs::write(self.host_config_path(name), s).expect("write host config");
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The shared manifest as written to `manifest_dir()`.
    pub fn spec(&self) -> &MeshSpec {
        &self.spec
    }

    /// The shared manifest directory, `TMP/peers`.
    pub fn manifest_dir(&self) -> PathBuf {
        self.root.join("peers")
    }

    /// The manifest directory host `name` reads (its own copy if overridden).
    pub fn manifest_dir_of(&self, name: &str) -> PathBuf {
        self.host(name).manifest_dir.clone()
    }

    /// `TMP/NAME/meshd.toml`.
    pub fn host_config_path(&self, name: &str) -> PathBuf {
        self.host(name);
        self.root.join(name).join("meshd.toml")
    }

    /// `TMP/NAME/host.key`.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.host(name);
        self.root.join(name).join("host.key")
    }

    /// `TMP/mesh.secret`, when the mesh has one.
    pub fn mesh_secret_path(&self) -> Option<&Path> {
        self.secret.as_deref()
    }

    /// `TMP/NAME.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.host(name);
        self.root.join(format!("{name}.log"))
    }

    /// The mesh endpoint of `name` (what its daemon listens on).
    pub fn mesh_addr(&self, name: &str) -> SocketAddr {
        self.spec.peers[name].endpoint
    }

    /// The admin address of `name`.
    pub fn admin_addr(&self, name: &str) -> SocketAddr {
        self.host(name).admin
    }

    /// The listen address of `peer`'s forward to `to`, as `peer`'s daemon sees it.
    pub fn forward_addr(&self, peer: &str, to: &str) -> SocketAddr {
        self.host(peer).manifest.peers[peer]
            .forwards
            .iter()
            .find(|f| f.to == to)
            .unwrap_or_else(|| panic!("{peer} has no forward to {to}"))
            .listen
    }

    /// Replaces `name`'s key file by a fresh key, leaving every manifest unchanged.
    pub fn replace_key(&self, name: &str) -> meshd::keys::PublicKey {
        let path = self.key_path(name);
        fs::remove_file(&path).expect("remove key file");
        meshd::keys::create_private_key_file(&path).expect("create key file")
    }

    /// `meshd --config TMP/NAME/meshd.toml`, its environment set, output to the log.
    pub fn command(&self, name: &str) -> Command {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("open daemon log");
        let meshd = env!("CARGO_BIN_EXE_meshd");
        // `ip netns exec` execs meshd in place, so the child's PID is the daemon's.
        let mut cmd = match &self.host(name).netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, meshd]);
                c
            }
            None => Command::new(meshd),
        };
        cmd.arg("--config")
            .arg(self.host_config_path(name))
            .env("RUST_LOG", RUST_LOG)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        cmd
    }

    fn mark_log(&mut self, name: &str) {
        let offset = fs::metadata(self.log_path(name))
            .map(|m| m.len())
            .unwrap_or(0);
        self.host_mut(name).log_offset = offset;
    }

    /// Starts `name`'s daemon; panics if it is already running.
    pub fn start(&mut self, name: &str) {
        assert!(!self.is_running(name), "{name} is already running");
        self.mark_log(name);
        let child = self.command(name).spawn().expect("spawn meshd");
        self.host_mut(name).child = Some(child);
    }

    /// Starts `name`'s daemon with extra environment variables (e.g. a fake systemd's
    /// `NOTIFY_SOCKET`); panics if it is already running.
    pub fn start_with_env(&mut self, name: &str, env: &[(&str, &str)]) {
        assert!(!self.is_running(name), "{name} is already running");
        self.mark_log(name);
        let mut cmd = self.command(name);
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn meshd");
        self.host_mut(name).child = Some(child);
    }

    /// The PID of `name`'s running daemon.
    pub fn pid(&mut self, name: &str) -> Option<u32> {
        if !self.is_running(name) {
            return None;
        }
        self.host_mut(name).child.as_ref().map(|c| c.id())
    }

    /// Resident memory of `name`'s daemon in KiB (VmRSS from /proc).
    pub fn rss_kib(&mut self, name: &str) -> u64 {
        let pid = self
            .pid(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// Starts every daemon, in name order.
    pub fn start_all(&mut self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            self.start(&name);
        }
    }

    /// Whether `name`'s daemon is running (reaps it if it exited).
    pub fn is_running(&mut self, name: &str) -> bool {
        match &mut self.host_mut(name).child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs `name`'s daemon and reaps it; panics if it was not started.
    pub fn kill(&mut self, name: &str) {
        let mut child = self
            .host_mut(name)
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} was not started"));
        let _ = child.kill();
        child.wait().expect("wait for meshd");
    }

    /// SIGTERMs `name`'s daemon and waits for it to exit (SIGKILL and panic after 10 s).
    pub async fn stop(&mut self, name: &str) -> ExitStatus {
        self.signal(name, "TERM");
        self.wait_exit(name, STOP_TIMEOUT).await
    }

    /// Sends `signal` (`TERM`, `HUP`, …) to `name`'s running daemon.
    pub fn signal(&mut self, name: &str, signal: &str) {
        let pid = self
            .pid(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// Waits for `name`'s daemon to exit and reaps it (SIGKILL and panic after `timeout`).
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let mut child = self
            .host_mut(name)
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} was not started"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} did not exit within {timeout:?}; log:\n{}",
                    self.log(name)
                );
            }
            tokio::time::sleep(super::POLL).await;
        }
    }

    /// Stops `name` gracefully if running, then starts it again.
    pub async fn restart(&mut self, name: &str) {
        if self.is_running(name) {
            self.stop(name).await;
        }
        self.start(name);
    }

    /// Runs `name`'s daemon to completion (for configs it must refuse); returns its exit
    /// status and what it printed. Kills it and panics if it runs past `timeout`.
    pub async fn run_to_exit(&mut self, name: &str, timeout: Duration) -> (ExitStatus, String) {
        assert!(!self.is_running(name), "{name} is already running");
        self.mark_log(name);
        let mut child = self.command(name).spawn().expect("spawn meshd");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, self.current_log(name));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} was expected to exit but still ran after {timeout:?}; log:\n{}",
                    self.current_log(name)
                );
            }
            tokio::time::sleep(super::POLL).await;
        }
    }

    /// Everything `name`'s daemons printed, across restarts, ANSI colours removed.
    pub fn log(&self, name: &str) -> String {
        strip_ansi(&fs::read(self.log_path(name)).unwrap_or_default())
    }

    /// What the current (latest) run of `name` printed.
    pub fn current_log(&self, name: &str) -> String {
        let all = fs::read(self.log_path(name)).unwrap_or_default();
        let start = (self.host(name).log_offset as usize).min(all.len());
        strip_ansi(&all[start..])
    }

    /// The first line of `name`'s current run that contains every one of `needles`.
    pub fn find_log_line(&self, name: &str, needles: &[&str]) -> Option<String> {
        self.current_log(name)
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_owned)
    }

    /// Waits until one line of `name`'s current run contains every one of `needles`, and
    /// returns it; panics with the log after `timeout`.
    /// Fails at once if that daemon exits meanwhile.
    pub async fn wait_for_log_line(
        &mut self,
        name: &str,
        needles: &[&str],
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.find_log_line(name, needles) {
                return line;
            }
            if let Some(child) = &mut self.host_mut(name).child {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited ({status}) while waiting for a line with {needles:?}; log:\n{}",
                        self.current_log(name)
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for a line with {needles:?} in {name}'s log:\n{}",
                    self.current_log(name)
                );
            }
            tokio::time::sleep(super::POLL).await;
        }
    }

    /// Waits until `name`'s current run logged `needle`.
    pub async fn wait_for_log(&mut self, name: &str, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_line(name, &[needle], timeout).await
    }

    /// Waits until `name` logs `link up` with `peer=PEER` on one line.
    pub async fn wait_link_up(&mut self, name: &str, peer: &str, timeout: Duration) {
        let peer_field = format!("peer={peer}");
        self.wait_for_log_line(name, &["link up", &peer_field], timeout)
            .await;
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        for host in self.hosts.values_mut() {
            if let Some(mut child) = host.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for name in self.hosts.keys() {
                eprintln!("----- {name}.log -----\n{}", self.log(name));
            }
        }
    }
}

/// Removes ANSI escape sequences (colours), so log matching does not depend on them.
fn strip_ansi(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
