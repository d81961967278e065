//! One meshd instance: binds the mesh listener and every entrance of this host, keeps a
//! link up to each peer it forwards to, serves its exits, and shuts down in order.
//! Configuration arrives loaded and validated; nothing here parses files.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, Metrics};
use crate::config::{Config, PeerName};
use crate::forward::{serve_forward, ExitTable};
use crate::keys::{derive_pair_key, MeshSecret, PairKey};
use crate::link::{self, AcceptContext, DialContext, KnownPeer, ReplayStore};

/// How long in-flight streams may take to finish after a shutdown request.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

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
}

/// The psk slot of a pair: the mesh-secret pair key when a secret is configured, else a
/// value derived from public data only, which adds no secrecy (`psk` mode requires a
/// secret; validation enforces it).
pub fn pair_psk(mesh_id: &str, secret: Option<&MeshSecret>, a: &PeerName, b: &PeerName) -> PairKey {
    let public_only = MeshSecret::from_bytes([0u8; 32]);
    let secret = secret.unwrap_or(&public_only);
    derive_pair_key(secret, mesh_id, a.as_str(), b.as_str())
}

/// Addresses a running daemon actually bound (useful when the config asked for port 0).
#[derive(Debug, Clone)]
pub struct Bound {
    /// The mesh listener.
    pub mesh: SocketAddr,
    /// Each forward's listen address, by `peer/service`.
    pub forwards: BTreeMap<String, SocketAddr>,
    /// The admin HTTP server (`/metrics`, `/healthz`, `/status`).
    pub admin: Option<SocketAddr>,
}

/// Binds every listener (mesh first, then entrances) and starts serving. Returns once
/// everything is bound; the daemon runs until `cancel` fires, then drains.
pub async fn start(
    cfg: Config,
    cancel: CancellationToken,
) -> Result<(Bound, tokio::task::JoinHandle<()>), DaemonError> {
    let me = cfg.me().clone();
    let mesh = &cfg.manifest.mesh;
    let limits = mesh.limits.clone();
    let replay = Arc::new(ReplayStore::open(&cfg.host.state_dir)?);
    let tracker = TaskTracker::new();

    let mesh_listener =
        TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: "mesh listener".into(),
                addr: cfg.listen,
                source,
            })?;
    let mut entrances = Vec::new();
    for (i, fwd) in me.forwards.iter().enumerate() {
        let l = TcpListener::bind(fwd.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: format!("forwards[{i}] to {}/{}", fwd.peer, fwd.service),
                addr: fwd.listen,
                source,
            })?;
        entrances.push((Arc::new(fwd.clone()), l));
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
    let bound = Bound {
        mesh: mesh_listener.local_addr().unwrap_or(cfg.listen),
        forwards: entrances
            .iter()
            .map(|(f, l)| {
                (
                    format!("{}/{}", f.peer, f.service),
                    l.local_addr().unwrap_or(f.listen),
                )
            })
            .collect(),
        admin: admin_listener.local_addr().ok(),
    };

    let secret = cfg.mesh_secret.as_ref();
    let peers: HashMap<PeerName, KnownPeer> = cfg
        .manifest
        .peers
        .values()
        .filter(|p| p.name != me.name)
        .map(|p| {
            let known = KnownPeer {
                key: p.public_key,
                psk: pair_psk(&mesh.mesh_id, secret, &me.name, &p.name),
            };
            (p.name.clone(), known)
        })
        .collect();
    let exits = Arc::new(ExitTable::new(
        me.services.clone(),
        tracker.clone(),
        metrics.clone(),
    ));
    let accept = Arc::new(AcceptContext::new(
        me.name.clone(),
        mesh.auth,
        mesh.mesh_id.clone(),
        cfg.private_key.clone(),
        peers,
        limits.clone(),
        replay,
        exits,
        tracker.clone(),
    ));
    tracker.spawn(link::serve_mesh(
        mesh_listener,
        accept,
        metrics.clone(),
        cancel.clone(),
    ));

    // One supervised link per peer this host forwards to.
    let mut slots: BTreeMap<PeerName, watch::Receiver<Option<link::LinkHandle>>> = BTreeMap::new();
    for fwd in &me.forwards {
        if slots.contains_key(&fwd.peer) {
            continue;
        }
        let Some(peer) = cfg.manifest.peers.get(&fwd.peer) else {
            continue;
        };
        let (tx, rx) = watch::channel(None);
        let ctx = Arc::new(DialContext::new(
            me.name.clone(),
            peer.name.clone(),
            peer.endpoints.clone(),
            mesh.auth,
            mesh.mesh_id.clone(),
            cfg.private_key.clone(),
            peer.public_key,
            pair_psk(&mesh.mesh_id, secret, &me.name, &peer.name),
            limits.clone(),
        ));
        metrics.require_link(&peer.name);
        tracker.spawn(link::supervise(ctx, tx, metrics.clone(), cancel.clone()));
        slots.insert(fwd.peer.clone(), rx);
    }
    for (fwd, listener) in entrances {
        let Some(rx) = slots.get(&fwd.peer) else {
            continue;
        };
        tracker.spawn(serve_forward(
            listener,
            fwd,
            rx.clone(),
            limits.link_wait,
            metrics.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
    }
    let admin_state = Arc::new(AdminState {
        host: me.name.to_string(),
        config_hash: cfg.hash.clone(),
        metrics,
        started: std::time::Instant::now(),
    });
    tracker.spawn(admin::serve_admin(
        admin_listener,
        admin_state,
        tracker.clone(),
        cancel.clone(),
    ));
    tracing::info!(
        name = %me.name,
        mesh = %bound.mesh,
        admin = ?bound.admin,
        config_hash = %cfg.hash,
        forwards = bound.forwards.len(),
        services = me.services.len(),
        auth = mesh.auth.as_str(),
        "meshd ready"
    );
    let done = tokio::spawn(async move {
        cancel.cancelled().await;
        tracker.close();
        if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("streams still open after {DRAIN_GRACE:?}; exiting anyway");
        }
    });
    Ok((bound, done))
}
