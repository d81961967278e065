//! The accepting side: the mesh listener. Every connection must finish its handshake
//! within the deadline, under a global cap on pending handshakes; garbage is refused at
//! the first bytes. An authenticated link runs its driver with this host's exits; a new
//! link from a peer supersedes (closes) the older one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dial::read_exact;
use super::driver::{Direction, Driver, Exits, CMD_CAPACITY};
use super::{LinkError, ReplayStore};
use crate::admin::Metrics;
use crate::config::{AuthMode, Limits, PeerName};
use crate::keys::{PairKey, PrivateKey, PublicKey};
use crate::proto::handshake::{
    self, HandshakeError, PairParams, Preamble, Session, MAX_HANDSHAKE_MSG, PREAMBLE_LEN,
};

/// A peer allowed to dial this host: its manifest key and the pair's psk slot.
#[derive(Debug)]
pub struct KnownPeer {
    /// Manifest public key.
    pub key: PublicKey,
    /// psk slot value for the pair (this host, peer).
    pub psk: PairKey,
}

/// Everything the mesh listener needs.
pub struct AcceptContext {
    /// This host.
    pub me: PeerName,
    /// The mesh's auth mode.
    pub mode: AuthMode,
    /// Mesh id (prologue).
    pub mesh_id: String,
    /// This host's static key.
    pub local_key: PrivateKey,
    /// Every other peer of the manifest.
    pub peers: HashMap<PeerName, KnownPeer>,
    /// Link limits.
    pub limits: Limits,
    /// Handshake high-water marks.
    pub replay: Arc<ReplayStore>,
    /// This host's services.
    pub exits: Arc<dyn Exits>,
    /// Tracks link tasks for shutdown.
    pub tracker: TaskTracker,
    inbound: Mutex<HashMap<PeerName, (u64, CancellationToken)>>,
    next_link_id: std::sync::atomic::AtomicU64,
}

impl AcceptContext {
    /// Builds the listener context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: PeerName,
        mode: AuthMode,
        mesh_id: String,
        local_key: PrivateKey,
        peers: HashMap<PeerName, KnownPeer>,
        limits: Limits,
        replay: Arc<ReplayStore>,
        exits: Arc<dyn Exits>,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            me,
            mode,
            mesh_id,
            local_key,
            peers,
            limits,
            replay,
            exits,
            tracker,
            inbound: Mutex::new(HashMap::new()),
            next_link_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

/// Serves the mesh listener until `cancel` fires.
pub async fn serve_mesh(
    listener: TcpListener,
    ctx: Arc<AcceptContext>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(ctx.limits.max_pending_handshakes));
    loop {
        let (socket, remote) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    tracing::warn!(error = %e, "mesh accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics.handshake_rejected(&LinkError::Handshake(HandshakeError::Overloaded));
            tracing::warn!(%remote, reason = "overloaded", "handshake rejected: {}", HandshakeError::Overloaded);
            continue;
        };
        let ctx2 = ctx.clone();
        let cancel2 = cancel.clone();
        let metrics = metrics.clone();
        ctx.tracker.spawn(async move {
            let accepted = tokio::select! {
                _ = cancel2.cancelled() => return,
                r = tokio::time::timeout(ctx2.limits.handshake_timeout, accept_handshake(&ctx2, socket)) => r,
            };
            drop(permit);
            match accepted {
                Ok(Ok((peer, socket, session))) => run_inbound(ctx2, peer, socket, session, remote, metrics, cancel2).await,
                Ok(Err(e)) => log_rejection(remote, &e, &metrics),
                Err(_) => log_rejection(remote, &LinkError::Handshake(HandshakeError::Timeout), &metrics),
            }
        });
    }
}

fn log_rejection(remote: SocketAddr, err: &LinkError, metrics: &Metrics) {
    metrics.handshake_rejected(err);
    let peer = match err {
        LinkError::Handshake(
            HandshakeError::UnknownPeer(p)
            | HandshakeError::WrongKey(p)
            | HandshakeError::Replay(p),
        ) => p.as_str(),
        _ => "",
    };
    tracing::warn!(%remote, peer, reason = err.reason(), "handshake rejected: {err}");
}

async fn accept_handshake(
    ctx: &AcceptContext,
    mut socket: TcpStream,
) -> Result<(PeerName, TcpStream, Session), LinkError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_exact(&mut socket, &mut pre).await?;
    let preamble = Preamble::decode(&pre)?;
    if preamble.mode != ctx.mode {
        return Err(HandshakeError::ModeMismatch {
            got: preamble.mode.code(),
            want: ctx.mode.as_str(),
        }
        .into());
    }
    let peer = preamble.name;
    let known = match ctx.peers.get(&peer) {
        Some(k) if peer != ctx.me => k,
        _ => return Err(HandshakeError::UnknownPeer(peer.to_string()).into()),
    };
    let mut len = [0u8; 2];
    read_exact(&mut socket, &mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::Oversized(len).into());
    }
    let mut msg1 = vec![0u8; len];
    read_exact(&mut socket, &mut msg1).await?;
    let params = PairParams {
        mode: ctx.mode,
        mesh_id: &ctx.mesh_id,
        dialer: &peer,
        acceptor: &ctx.me,
        local_key: &ctx.local_key,
        remote_key: &known.key,
        psk: &known.psk,
    };
    let responder = handshake::respond(&params, &msg1)?;
    match ctx.replay.check_and_update(&peer, responder.timestamp()) {
        Ok(true) => {}
        Ok(false) => return Err(HandshakeError::Replay(peer.to_string()).into()),
        Err(e) => {
            return Err(LinkError::Io(std::io::Error::other(e.to_string())));
        }
    }
    let (msg2, session) = responder.finish()?;
    socket.write_all(&msg2).await?;
    let _ = socket.set_nodelay(true);
    Ok((peer, socket, session))
}

async fn run_inbound(
    ctx: Arc<AcceptContext>,
    peer: PeerName,
    socket: TcpStream,
    session: Session,
    remote: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let link_cancel = cancel.child_token();
    let id = ctx
        .next_link_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        let mut inbound = ctx.inbound.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = inbound.insert(peer.clone(), (id, link_cancel.clone())) {
            // The dialer redialed: its old link is dead or dying.
            old.cancel();
        }
    }
    let (tx, rx) = mpsc::channel(CMD_CAPACITY);
    let observer = metrics.link_up(&peer, Direction::Acceptor);
    let driver = Driver::new(
        peer.clone(),
        Direction::Acceptor,
        session,
        &ctx.limits,
        tx,
        Some(ctx.exits.clone()),
        observer.rtt(),
    );
    let started = Instant::now();
    tracing::info!(peer = %peer, direction = "acceptor", %remote, "link up");
    let err = driver.run(socket, rx, link_cancel).await;
    observer.down(&err);
    {
        let mut inbound = ctx.inbound.lock().unwrap_or_else(|p| p.into_inner());
        if inbound.get(&peer).is_some_and(|(cur, _)| *cur == id) {
            inbound.remove(&peer);
        }
    }
    tracing::info!(
        peer = %peer,
        direction = "acceptor",
        reason = err.reason(),
        lived_ms = started.elapsed().as_millis() as u64,
        "link down: {err}"
    );
}
