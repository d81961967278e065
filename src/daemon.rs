//! One meshd instance: binds the mesh listener and every entrance of this host, keeps a
//! link up to each peer it forwards to, serves its exits, applies reloads as a difference,
//! and shuts down in order. Configuration arrives loaded and validated; nothing here
//! parses files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, Metrics};
use crate::config::{Config, Forward, PeerName};
use crate::forward::{serve_forward, ExitTable};
use crate::keys::{derive_pair_key, MeshSecret, PairKey};
use crate::link::{
    self, AcceptContext, AcceptPolicy, DialContext, KnownPeer, LinkHandle, ReplayStore,
};
use crate::tls::TlsStore;

/// After the drain grace: how long the resets of the streams left get to reach their
/// sockets and peers before the process exits.
const FINAL_FLUSH: Duration = Duration::from_secs(3);

/// Runtime failures of a daemon (configuration errors are caught before this runs).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// What the listener is for.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The durable handshake state could not be opened.
    #[error(transparent)]
    State(#[from] link::replay::ReplayError),
    /// The state directory is not safe to keep the handshake marks in.
    #[error("state_dir: {0}")]
    StateDir(crate::keys::KeyError),
    /// A reload asked for a change that needs a restart.
    #[error("{0} cannot change on reload; restart meshd to apply it")]
    NeedsRestart(&'static str),
}

/// The psk slot of a pair: the mesh-secret pair key when a secret is configured, else a
/// value derived from public data only, which adds no secrecy (`psk` mode requires a
/// secret; validation enforces it).
pub fn pair_psk(mesh_id: &str, secret: Option<&MeshSecret>, a: &PeerName, b: &PeerName) -> PairKey {
    let public_only = MeshSecret::from_bytes([0u8; 32]);
    let secret = secret.unwrap_or(&public_only);
    derive_pair_key(secret, mesh_id, a.as_str(), b.as_str())
}

/// Addresses a running daemon actually bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The mesh listener.
    pub mesh: SocketAddr,
    /// Each forward's listen address, by `peer/service`.
    pub forwards: BTreeMap<String, SocketAddr>,
    /// The admin HTTP server.
    pub admin: Option<SocketAddr>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Entrances bound.
    pub forwards_added: usize,
    /// Entrances closed (their open streams run on).
    pub forwards_removed: usize,
    /// Entrances whose target changed on the same address.
    pub forwards_changed: usize,
    /// Peers now dialed.
    pub links_added: usize,
    /// Dialed links closed (peer removed, or no forward needs it any more).
    pub links_removed: usize,
    /// Dialed links re-established (endpoint, key or pair key changed).
    pub links_rekeyed: usize,
    /// Inbound links closed because their peer was removed or re-keyed.
    pub inbound_closed: usize,
    /// The TLS certificate or CA changed (for new links).
    pub tls_reloaded: bool,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwards +{} -{} ~{}, dialed links +{} -{} re-keyed {}, inbound links closed {}{}",
            self.forwards_added,
            self.forwards_removed,
            self.forwards_changed,
            self.links_added,
            self.links_removed,
            self.links_rekeyed,
            self.inbound_closed,
            if self.tls_reloaded {
                ", tls certificate reloaded"
            } else {
                ""
            }
        )
    }
}

struct Entrance {
    forward: Forward,
    listener: Arc<TcpListener>,
    cancel: CancellationToken,
    /// Its accept loop, which holds the listener's other reference.
    task: tokio::task::JoinHandle<()>,
}

struct Dialer {
    ctx: Arc<DialContext>,
    slot: watch::Sender<Option<LinkHandle>>,
    cancel: CancellationToken,
    drain: CancellationToken,
}

/// A running meshd.
pub struct Daemon {
    cfg: Config,
    cancel: CancellationToken,
    /// Every task that carries or accepts traffic: links, entrances, streams.
    tracker: TaskTracker,
    /// The admin server's tasks, which outlive the drain (health checks and scrapes see it).
    admin_tracker: TaskTracker,
    /// The mesh listener's accept loop, which owns the listener.
    mesh_task: Option<tokio::task::JoinHandle<()>>,
    mesh_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    reload_requests: Option<tokio::sync::mpsc::Receiver<admin::ReloadRequest>>,
    accept: Arc<AcceptContext>,
    exits: Arc<ExitTable>,
    entrances: BTreeMap<SocketAddr, Entrance>,
    dialers: BTreeMap<PeerName, Dialer>,
    tls: Arc<TlsStore>,
    /// The dialed links as `/mesh` sees them; republished whenever `dialers` changes.
    links: admin::LinkDirectory,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("name", &self.cfg.host.name)
            .field("mesh", &self.mesh_addr)
            .finish_non_exhaustive()
    }
}

fn accept_policy(cfg: &Config) -> AcceptPolicy {
    let mesh = &cfg.manifest.mesh;
    let me = &cfg.host.name;
    let secret = cfg.mesh_secret.as_ref();
    let peers = cfg
        .manifest
        .peers
        .values()
        .filter(|p| &p.name != me)
        .map(|p| {
            let known = KnownPeer {
                mode: mesh.auth_between(me, &p.name),
                key: p.public_key,
                psk: pair_psk(&mesh.mesh_id, secret, me, &p.name),
            };
            (p.name.clone(), known)
        })
        .collect::<HashMap<_, _>>();
    AcceptPolicy {
        mesh_id: mesh.mesh_id.clone(),
        local_key: cfg.private_key.clone(),
        peers,
        limits: mesh.limits.clone(),
    }
}

/// One dial context per peer this host forwards to.
fn dial_contexts(cfg: &Config, tls: &Arc<TlsStore>) -> BTreeMap<PeerName, DialContext> {
    let mesh = &cfg.manifest.mesh;
    let me = cfg.me();
    let mut out = BTreeMap::new();
    for fwd in &me.forwards {
        let Some(peer) = cfg.manifest.peers.get(&fwd.peer) else {
            continue;
        };
        out.entry(fwd.peer.clone()).or_insert_with(|| {
            DialContext::new(
                me.name.clone(),
                peer.name.clone(),
                peer.endpoints.clone(),
                mesh.auth_between(&me.name, &peer.name),
                mesh.mesh_id.clone(),
                cfg.private_key.clone(),
                peer.public_key,
                pair_psk(
                    &mesh.mesh_id,
                    cfg.mesh_secret.as_ref(),
                    &me.name,
                    &peer.name,
                ),
                mesh.limits.clone(),
            )
            .with_tls(tls.clone())
        });
    }
    out
}

async fn bind_forward(i: usize, fwd: &Forward) -> Result<Arc<TcpListener>, DaemonError> {
    TcpListener::bind(fwd.listen)
        .await
        .map(Arc::new)
        .map_err(|source| DaemonError::Bind {
            what: format!("forwards[{i}] to {}/{}", fwd.peer, fwd.service),
            addr: fwd.listen,
            source,
        })
}

impl Daemon {
    /// Binds every listener (mesh first, then entrances) and starts serving. Returns once
    /// everything is bound; the daemon runs until [`Daemon::shutdown`] or `cancel`.
    pub async fn start(cfg: Config, cancel: CancellationToken) -> Result<Self, DaemonError> {
        let replay = Arc::new(ReplayStore::open(&cfg.host.state_dir)?);
        crate::keys::check_state_dir(&cfg.host.state_dir).map_err(DaemonError::StateDir)?;
        let tracker = TaskTracker::new();
        let mesh_listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| DaemonError::Bind {
                    what: "mesh listener".into(),
                    addr: cfg.listen,
                    source,
                })?;
        let mut listeners = Vec::new();
        for (i, fwd) in cfg.me().forwards.iter().enumerate() {
            listeners.push((fwd.clone(), bind_forward(i, fwd).await?));
        }
        let admin_listener =
            TcpListener::bind(cfg.host.admin)
                .await
                .map_err(|source| DaemonError::Bind {
                    what: "admin server".into(),
                    addr: cfg.host.admin,
                    source,
                })?;
        admin::warn_if_exposed(cfg.host.admin);
        let metrics = Arc::new(Metrics::new(&cfg.hash, env!("CARGO_PKG_VERSION")));
        let mesh_addr = mesh_listener.local_addr().unwrap_or(cfg.listen);
        let admin_addr = admin_listener.local_addr().ok();
        let exits = Arc::new(ExitTable::new(
            cfg.host.name.clone(),
            cfg.me().services.clone(),
            tracker.clone(),
            metrics.clone(),
        ));
        let tls = Arc::new(TlsStore::new(cfg.tls.clone()));
        if let Some(m) = &cfg.tls {
            metrics.set_tls_cert(m.not_after);
        }
        let accept = Arc::new(AcceptContext::new(
            cfg.host.name.clone(),
            accept_policy(&cfg),
            replay,
            exits.clone(),
            tracker.clone(),
            tls.clone(),
        ));
        let mesh_task = tracker.spawn(link::serve_mesh(
            mesh_listener,
            accept.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let links = admin::LinkDirectory::default();
        let admin_state = Arc::new(AdminState {
            reload: Some(reload_tx),
            host: cfg.host.name.to_string(),
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
            links: links.clone(),
        });
        let admin_tracker = TaskTracker::new();
        admin_tracker.spawn(admin::serve_admin(
            admin_listener,
            admin_state,
            admin_tracker.clone(),
            cancel.clone(),
        ));
        let mut daemon = Daemon {
            cfg,
            cancel,
            tracker,
            admin_tracker,
            mesh_task: Some(mesh_task),
            mesh_addr,
            admin_addr,
            metrics,
            reload_requests: Some(reload_rx),
            accept,
            exits,
            entrances: BTreeMap::new(),
            dialers: BTreeMap::new(),
            tls,
            links,
        };
        for (peer, ctx) in dial_contexts(&daemon.cfg, &daemon.tls) {
            daemon.spawn_dialer(peer, ctx);
        }
        daemon.publish_links();
        for (fwd, listener) in listeners {
            daemon.spawn_entrance(fwd, listener);
        }
        let me = daemon.cfg.me();
        tracing::info!(
            name = %me.name,
            mesh = %daemon.mesh_addr,
            admin = ?daemon.admin_addr,
            config_hash = %daemon.cfg.hash,
            forwards = me.forwards.len(),
            services = me.services.len(),
            auth = daemon.cfg.manifest.mesh.auth.as_str(),
            tls_cert = daemon.cfg.tls.as_ref().map_or("", |m| m.cert_fingerprint.as_str()),
            "meshd ready"
        );
        Ok(daemon)
    }

    /// The addresses bound now.
    pub fn bound(&self) -> Bound {
        Bound {
            mesh: self.mesh_addr,
            forwards: self
                .entrances
                .values()
                .map(|e| {
                    let addr = e.listener.local_addr().unwrap_or(e.forward.listen);
                    (format!("{}/{}", e.forward.peer, e.forward.service), addr)
                })
                .collect(),
            admin: self.admin_addr,
        }
    }

    /// Reload requests from `POST /reload` (`meshctl reload`), for the owner of the
    /// daemon to serve with [`Daemon::reload`]; `None` once taken.
    pub fn take_reload_requests(
        &mut self,
    ) -> Option<tokio::sync::mpsc::Receiver<admin::ReloadRequest>> {
        self.reload_requests.take()
    }

    /// The running configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Hands the admin server the current dialed links, for `/mesh`.
    fn publish_links(&self) {
        let links = self
            .dialers
            .iter()
            .map(|(peer, d)| (peer.clone(), d.slot.subscribe()))
            .collect();
        *self.links.write().unwrap_or_else(|p| p.into_inner()) = links;
    }

    fn spawn_dialer(&mut self, peer: PeerName, ctx: DialContext) {
        // Keep the slot (entrances watch it) when a dialer is replaced.
        let slot = match self.dialers.remove(&peer) {
            Some(old) => {
                old.cancel.cancel();
                old.slot
            }
            None => watch::channel(None).0,
        };
        let ctx = Arc::new(ctx);
        let cancel = self.cancel.child_token();
        let drain = CancellationToken::new();
        self.metrics.require_link(&peer);
        self.tracker.spawn(link::supervise(
            ctx.clone(),
            slot.clone(),
            self.metrics.clone(),
            cancel.clone(),
            drain.clone(),
        ));
        self.dialers.insert(
            peer,
            Dialer {
                ctx,
                slot,
                cancel,
                drain,
            },
        );
    }

    fn spawn_entrance(&mut self, forward: Forward, listener: Arc<TcpListener>) {
        let Some(dialer) = self.dialers.get(&forward.peer) else {
            return;
        };
        let cancel = self.cancel.child_token();
        let task = self.tracker.spawn(serve_forward(
            listener.clone(),
            Arc::new(forward.clone()),
            dialer.slot.subscribe(),
            self.cfg.manifest.mesh.limits.link_wait,
            self.metrics.clone(),
            self.tracker.clone(),
            cancel.clone(),
        ));
        self.entrances.insert(
            forward.listen,
            Entrance {
                forward,
                listener,
                cancel,
                task,
            },
        );
    }

    /// Applies a new, already validated configuration as a difference: new entrances bound,
    /// removed ones closed (their streams run on), new peers dialed, removed or re-keyed
    /// peers' links closed (and redialed if still needed), services and allow lists
    /// replaced for new streams. Nothing changes if a new entrance cannot be bound.
    pub async fn reload(&mut self, next: Config) -> Result<ReloadSummary, DaemonError> {
        let result = self.apply(next).await;
        self.metrics.config_reloaded(result.is_ok());
        result
    }

    /// Counts a reload that failed before it reached the daemon (invalid files).
    pub fn reload_rejected(&self) {
        self.metrics.config_reloaded(false);
    }

    async fn apply(&mut self, next: Config) -> Result<ReloadSummary, DaemonError> {
        if next.host.name != self.cfg.host.name {
            return Err(DaemonError::NeedsRestart("the host name"));
        }
        if next.listen != self.cfg.listen {
            return Err(DaemonError::NeedsRestart("the mesh listen address"));
        }
        if next.host.state_dir != self.cfg.host.state_dir {
            return Err(DaemonError::NeedsRestart("state_dir"));
        }
        let mut summary = ReloadSummary::default();

        // 1. Bind every new entrance address first; on failure nothing has changed.
        let mut fresh = BTreeMap::new();
        for (i, fwd) in next.me().forwards.iter().enumerate() {
            if !self.entrances.contains_key(&fwd.listen) {
                fresh.insert(fwd.listen, bind_forward(i, fwd).await?);
            }
        }

        // 2. TLS material, before any dialer below starts: a link dialled during this
        //    reload must never use the old certificate. New handshakes use it; established
        //    links keep theirs.
        let tls_changed = match (&self.cfg.tls, &next.tls) {
            (Some(a), Some(b)) => !a.same_as(b),
            (None, None) => false,
            _ => true,
        };
        if tls_changed {
            if let Some(m) = &next.tls {
                self.metrics.set_tls_cert(m.not_after);
                tracing::info!(
                    cert = %m.cert_fingerprint,
                    ca = ?m.ca_fingerprints,
                    "tls material reloaded: new links use this certificate"
                );
            }
            summary.tls_reloaded = true;
        }
        self.tls.set(next.tls.clone());

        // 3. Links: close what is gone or changed, dial what is new.
        let mut wanted = dial_contexts(&next, &self.tls);
        let current: Vec<PeerName> = self.dialers.keys().cloned().collect();
        for peer in current {
            match wanted.remove(&peer) {
                None => {
                    if let Some(old) = self.dialers.remove(&peer) {
                        if next.manifest.peers.contains_key(&peer) {
                            // Still a peer, just no longer needed: let its streams finish.
                            old.drain.cancel();
                        } else {
                            // Removed from the manifest: its key is revoked, cut now.
                            old.cancel.cancel();
                        }
                        summary.links_removed += 1;
                    }
                }
                Some(ctx) => {
                    let same = self
                        .dialers
                        .get(&peer)
                        .is_some_and(|d| d.ctx.same_link(&ctx));
                    if !same {
                        self.spawn_dialer(peer, ctx);
                        summary.links_rekeyed += 1;
                    }
                }
            }
        }
        for (peer, ctx) in wanted {
            self.spawn_dialer(peer, ctx);
            summary.links_added += 1;
        }
        self.publish_links();

        // 4. Entrances: same address and same forward stays; changed is re-pointed on its
        //    listener; gone is closed.
        let next_forwards: BTreeMap<SocketAddr, Forward> = next
            .me()
            .forwards
            .iter()
            .map(|f| (f.listen, f.clone()))
            .collect();
        let addrs: Vec<SocketAddr> = self.entrances.keys().copied().collect();
        for addr in addrs {
            match next_forwards.get(&addr) {
                None => {
                    if let Some(e) = self.entrances.remove(&addr) {
                        e.cancel.cancel();
                        summary.forwards_removed += 1;
                    }
                }
                Some(fwd) => {
                    // A re-keyed dialer keeps its slot, so an unchanged entrance is fine.
                    let unchanged = self.entrances.get(&addr).is_some_and(|e| &e.forward == fwd);
                    if !unchanged {
                        if let Some(e) = self.entrances.remove(&addr) {
                            e.cancel.cancel();
                            self.spawn_entrance(fwd.clone(), e.listener);
                            summary.forwards_changed += 1;
                        }
                    }
                }
            }
        }
        for (addr, listener) in fresh {
            if let Some(fwd) = next_forwards.get(&addr) {
                self.spawn_entrance(fwd.clone(), listener);
                summary.forwards_added += 1;
            }
        }

        // 5. Accepting side: services, allow lists, who may dial us.
        self.exits.set_services(next.me().services.clone());
        summary.inbound_closed = self.accept.set_policy(accept_policy(&next)).len();
        self.metrics.set_config_hash(&next.hash);
        self.cfg = next;
        tracing::info!(%summary, "config reloaded");
        Ok(summary)
    }

    /// Drains, then stops: see [`Daemon::shutdown_or`], with no way to cut the drain
    /// short.
    pub async fn shutdown(self) {
        self.shutdown_or(std::future::pending()).await
    }

    /// Drains for up to `drain_grace_ms`, then stops.
    ///
    /// 1. No new work: entrances and the mesh listener close (new local connections and new
    ///    links are refused by the kernel), every link sends GOAWAY and refuses new
    ///    streams; `/healthz` answers 503 and `meshd_draining` is 1.
    /// 2. Open streams run on until they end, the grace is over, or `cut_now` completes
    ///    (a second SIGTERM).
    /// 3. Whatever is still open is reset (its clients see ECONNRESET, never a clean end),
    ///    the links close, and the resets get [`FINAL_FLUSH`] to go out.
    pub async fn shutdown_or(mut self, cut_now: impl std::future::Future<Output = ()>) {
        let grace = self.cfg.host.drain_grace;
        let started = std::time::Instant::now();
        self.metrics.set_draining();
        let mut listeners = Vec::new();
        for (_, entrance) in std::mem::take(&mut self.entrances) {
            entrance.cancel.cancel();
            listeners.push(entrance.task);
        }
        self.accept.drain();
        listeners.extend(self.mesh_task.take());
        for dialer in self.dialers.values() {
            dialer.drain.cancel();
        }
        // Once the accept loops have returned, their listeners are closed: a connection
        // from now on is refused by the kernel.
        for task in listeners {
            let _ = tokio::time::timeout(FINAL_FLUSH, task).await;
        }
        let open = self.metrics.open_streams();
        tracing::info!(
            open_streams = open,
            grace_ms = grace.as_millis() as u64,
            "draining: no new connections or streams; open streams may finish"
        );
        // Links and serving loops leave the tracker as they drain; so do streams as they end.
        self.tracker.close();
        tokio::select! {
            _ = self.tracker.wait() => {
                tracing::info!(
                    drained_ms = started.elapsed().as_millis() as u64,
                    "drained: every stream finished"
                );
            }
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(
                    open_streams = self.metrics.open_streams(),
                    "drain grace of {grace:?} is over: resetting the streams still open"
                );
            }
            _ = cut_now => {
                tracing::warn!(
                    open_streams = self.metrics.open_streams(),
                    "asked again to stop: resetting the streams still open"
                );
            }
        }
        self.cancel.cancel();
        self.admin_tracker.close();
        let stopped = async {
            self.tracker.wait().await;
            self.admin_tracker.wait().await;
        };
        if tokio::time::timeout(FINAL_FLUSH, stopped).await.is_err() {
            tracing::warn!("tasks still running {FINAL_FLUSH:?} after the resets; exiting anyway");
        }
    }
}
