//! The accepting side: the mesh listener. Every connection must finish its handshake
//! within the deadline, under a global cap on pending handshakes (at the cap the oldest
//! one makes room) and a per-source one (over it the newcomer is refused); garbage is
//! refused at the first bytes. Refusals are counted, and logged at most a few lines per
//! reason per 10 s (see `throttle`). An authenticated link runs its driver with this
//! host's exits; a new link from a peer supersedes (closes) the older one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dial::read_exact;
use super::driver::{Direction, Driver, Exits, CMD_CAPACITY};
use super::pending::PendingHandshakes;
use super::ratelimit::{SourceLimiter, Verdict};
use super::replay::{Mark, MAX_AHEAD};
use super::throttle::{LogLine, RejectLog};
use super::transport::{self, Transport};
use super::{LinkError, ReplayStore};
use crate::admin::{Metrics, PENDING_PER_SOURCE};
use crate::config::{AuthMode, Limits, PeerName};
use crate::keys::{PairKey, PrivateKey, PublicKey};
use crate::proto::handshake::{
    self, HandshakeError, PairParams, Preamble, MAX_HANDSHAKE_MSG, PREAMBLE_LEN,
};
use crate::tls::TlsStore;

/// A peer allowed to dial this host: its manifest key and the pair's psk slot.
#[derive(Debug)]
pub struct KnownPeer {
    /// The pair's auth mode (mesh default or a `[[pairs]]` override).
    pub mode: AuthMode,
    /// Manifest public key.
    pub key: PublicKey,
    /// psk slot value for the pair (this host, peer).
    pub psk: PairKey,
}

impl KnownPeer {
    /// Whether a link authenticated under `self` is still valid under `other`.
    fn same(&self, other: &KnownPeer) -> bool {
        self.mode == other.mode
            && self.key == other.key
            && ring_eq(self.psk.as_bytes(), other.psk.as_bytes())
    }
}

/// Compares secrets in constant time (ring 0.17 marks the function deprecated because
/// it will move, not because it is unsound).
#[allow(deprecated)]
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    ring::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Who may dial this host and how: replaced as a whole on reload.
#[derive(Debug)]
pub struct AcceptPolicy {
    /// Mesh id (prologue).
    pub mesh_id: String,
    /// This host's static key.
    pub local_key: PrivateKey,
    /// Every other peer of the manifest.
    pub peers: HashMap<PeerName, KnownPeer>,
    /// Link limits.
    pub limits: Limits,
}

impl AcceptPolicy {
    /// Whether an inbound link from `peer` authenticated under `self` still holds under
    /// `next`.
    fn still_valid(&self, next: &AcceptPolicy, peer: &PeerName) -> bool {
        self.mesh_id == next.mesh_id
            && ring_eq(self.local_key.as_bytes(), next.local_key.as_bytes())
            && match (self.peers.get(peer), next.peers.get(peer)) {
                (Some(a), Some(b)) => a.same(b),
                _ => false,
            }
    }
}

/// Everything the mesh listener needs.
pub struct AcceptContext {
    /// This host.
    pub me: PeerName,
    policy: RwLock<Arc<AcceptPolicy>>,
    /// Handshake high-water marks.
    pub replay: Arc<ReplayStore>,
    /// This host's services.
    pub exits: Arc<dyn Exits>,
    /// Tracks link tasks for shutdown.
    pub tracker: TaskTracker,
    /// This host's TLS material, read at each handshake.
    pub tls: Arc<TlsStore>,
    inbound: Mutex<HashMap<PeerName, (u64, CancellationToken)>>,
    next_link_id: std::sync::atomic::AtomicU64,
    /// Fired by [`AcceptContext::drain`]: the listener closes and every inbound link, now
    /// or later, sends GOAWAY and closes once its streams are done.
    drain: CancellationToken,
}

impl AcceptContext {
    /// Builds the listener context.
    pub fn new(
        me: PeerName,
        policy: AcceptPolicy,
        replay: Arc<ReplayStore>,
        exits: Arc<dyn Exits>,
        tracker: TaskTracker,
        tls: Arc<TlsStore>,
    ) -> Self {
        Self {
            me,
            policy: RwLock::new(Arc::new(policy)),
            replay,
            exits,
            tracker,
            tls,
            inbound: Mutex::new(HashMap::new()),
            next_link_id: std::sync::atomic::AtomicU64::new(1),
            drain: CancellationToken::new(),
        }
    }

    /// Stops accepting links (the mesh listener closes, so a dialing peer is refused by
    /// the kernel) and drains every inbound link: GOAWAY, no new streams, closed once its
    /// open streams have finished.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    fn policy(&self) -> Arc<AcceptPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new policy for new handshakes and closes every inbound link that it no
    /// longer allows (peer removed, key or pair key changed). Returns the peers whose
    /// links were closed.
    pub fn set_policy(&self, next: AcceptPolicy) -> Vec<PeerName> {
        let next = Arc::new(next);
        let old = std::mem::replace(
            &mut *self.policy.write().unwrap_or_else(|p| p.into_inner()),
            next.clone(),
        );
        let inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = Vec::new();
        for (peer, (_, token)) in inbound.iter() {
            if !old.still_valid(&next, peer) {
                token.cancel();
                closed.push(peer.clone());
            }
        }
        closed
    }
}

/// Serves the mesh listener until `cancel` fires or the context drains; the listener
/// closes when this returns.
pub async fn serve_mesh(
    listener: TcpListener,
    ctx: Arc<AcceptContext>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let pending = PendingHandshakes::new(ctx.policy().limits.max_pending_handshakes);
    let logs = Arc::new(RejectLog::default());
    let mut rate = ctx.policy().limits.handshake_rate_per_source;
    let mut limiter = SourceLimiter::new(rate, std::time::Instant::now());
    loop {
        let (socket, remote) = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ctx.drain.cancelled() => return,
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
        let limits = ctx.policy().limits.clone();
        // Before any handshake work: one source may not flood the listener.
        if limits.handshake_rate_per_source != rate {
            rate = limits.handshake_rate_per_source;
            limiter = SourceLimiter::new(rate, std::time::Instant::now());
        }
        let now = Instant::now();
        if let Verdict::Limit { log } = limiter.check(remote.ip(), now) {
            let err = LinkError::Handshake(HandshakeError::RateLimited);
            metrics.handshake_rejected(&err);
            // One line per source per 10 s, and a few per 10 s in all.
            if log {
                if let LogLine::Write { suppressed } = logs.check(err.reason(), now) {
                    tracing::warn!(
                        %remote,
                        reason = err.reason(),
                        limit_per_s = rate,
                        suppressed,
                        "handshake rejected: {} (further refusals of this source are counted, not logged, for 10 s)",
                        HandshakeError::RateLimited
                    );
                }
            }
            drop(socket);
            continue;
        }
        // At the global cap this evicts the oldest pending handshake (see `pending`);
        // over its own share a source is refused instead.
        let Ok(slot) = pending.admit(remote.ip(), limits.max_pending_per_source) else {
            metrics.handshake_refused(PENDING_PER_SOURCE);
            if let LogLine::Write { suppressed } = logs.check(PENDING_PER_SOURCE, now) {
                tracing::warn!(
                    %remote,
                    reason = PENDING_PER_SOURCE,
                    limit = limits.max_pending_per_source,
                    suppressed,
                    "handshake rejected: this source already has its share of pending handshakes"
                );
            }
            drop(socket);
            continue;
        };
        let ctx2 = ctx.clone();
        let cancel2 = cancel.clone();
        let metrics = metrics.clone();
        let logs = logs.clone();
        ctx.tracker.spawn(async move {
            let accepted = tokio::select! {
                _ = cancel2.cancelled() => return,
                _ = slot.evicted().cancelled() => {
                    log_rejection(remote, &LinkError::Handshake(HandshakeError::Overloaded), &metrics, &logs);
                    return;
                }
                r = tokio::time::timeout(limits.handshake_timeout, accept_handshake(&ctx2, socket)) => r,
            };
            drop(slot);
            match accepted {
                Ok(Ok(link)) => run_inbound(ctx2, link, remote, metrics, cancel2).await,
                Ok(Err(e)) => log_rejection(remote, &e, &metrics, &logs),
                Err(_) => log_rejection(remote, &LinkError::Handshake(HandshakeError::Timeout), &metrics, &logs),
            }
        });
    }
}

/// Counts a failed handshake and logs it within the reason's budget.
fn log_rejection(remote: SocketAddr, err: &LinkError, metrics: &Metrics, logs: &RejectLog) {
    metrics.handshake_rejected(err);
    let LogLine::Write { suppressed } = logs.check(err.reason(), Instant::now()) else {
        return;
    };
    let peer = match err {
        LinkError::Handshake(
            HandshakeError::UnknownPeer(p)
            | HandshakeError::WrongKey(p)
            | HandshakeError::Replay(p)
            | HandshakeError::Tls { peer: p, .. },
        ) => p.as_str(),
        _ => "",
    };
    tracing::warn!(%remote, peer, reason = err.reason(), suppressed, "handshake rejected: {err}");
}

async fn accept_handshake(
    ctx: &AcceptContext,
    mut socket: TcpStream,
) -> Result<Authenticated, LinkError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_exact(&mut socket, &mut pre).await?;
    let preamble = Preamble::decode(&pre)?;
    // One policy for the whole handshake, even if a reload lands meanwhile.
    let policy = ctx.policy();
    let peer = preamble.name;
    let known = match policy.peers.get(&peer) {
        Some(k) if peer != ctx.me => k,
        _ => return Err(HandshakeError::UnknownPeer(peer.to_string()).into()),
    };
    if preamble.mode != known.mode {
        return Err(HandshakeError::ModeMismatch {
            got: preamble.mode.code(),
            want: known.mode.as_str(),
        }
        .into());
    }
    if known.mode == AuthMode::Tls {
        let material = ctx.tls.current().ok_or_else(|| {
            HandshakeError::Local("tls link without tls material (cert, cert_key, ca)".into())
        })?;
        let _ = socket.set_nodelay(true);
        let link = transport::accept(&material, socket, &peer).await?;
        return Ok(Authenticated {
            peer,
            socket: link.socket,
            transport: link.transport,
            peer_cert: Some((link.peer_cert, link.cipher)),
            policy,
        });
    }
    let mut len = [0u8; 2];
    read_exact(&mut socket, &mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::Oversized(len).into());
    }
    let mut msg1 = vec![0u8; len];
    read_exact(&mut socket, &mut msg1).await?;
    let params = PairParams {
        mode: known.mode,
        mesh_id: &policy.mesh_id,
        dialer: &peer,
        acceptor: &ctx.me,
        local_key: &policy.local_key,
        remote_key: &known.key,
        psk: &known.psk,
    };
    let responder = handshake::respond(&params, &msg1)?;
    let timestamp = responder.timestamp();
    // A clock before 1970 makes every timestamp "ahead": refused, and logged below.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    match ctx.replay.check_and_update(&peer, timestamp, now).await {
        Ok(Mark::Fresh) => {}
        Ok(Mark::Replayed) => return Err(HandshakeError::Replay(peer.to_string()).into()),
        Ok(Mark::TooFarAhead) => {
            // msg1 authenticated the peer, so this is its clock (or a key holder's
            // replay bait), not a stranger's: worth a line of its own.
            tracing::warn!(
                peer = %peer,
                ahead_s = timestamp.saturating_sub(now) / 1_000_000_000,
                max_ahead_s = MAX_AHEAD.as_secs(),
                "msg1 timestamp is too far ahead of this host's clock; check both clocks"
            );
            return Err(HandshakeError::Replay(peer.to_string()).into());
        }
        Err(e) => {
            return Err(LinkError::Io(std::io::Error::other(e.to_string())));
        }
    }
    let (msg2, session) = responder.finish()?;
    socket.write_all(&msg2).await?;
    let _ = socket.set_nodelay(true);
    Ok(Authenticated {
        peer,
        socket,
        transport: Transport::Noise(session),
        peer_cert: None,
        policy,
    })
}

/// A connection whose handshake succeeded, with the policy it succeeded under.
struct Authenticated {
    peer: PeerName,
    socket: TcpStream,
    transport: Transport,
    /// The dialer's certificate fingerprint and the cipher suite (`tls` mode).
    peer_cert: Option<(String, String)>,
    policy: Arc<AcceptPolicy>,
}

async fn run_inbound(
    ctx: Arc<AcceptContext>,
    link: Authenticated,
    remote: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let Authenticated {
        peer,
        socket,
        transport,
        peer_cert,
        policy,
    } = link;
    let auth = policy.peers.get(&peer).map_or("", |k| k.mode.as_str());
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
    // A reload may have landed during the handshake: `set_policy` swaps the policy before
    // it scans `inbound`, so either it saw this link above or we see its policy here.
    let now = ctx.policy();
    if !Arc::ptr_eq(&now, &policy) && !policy.still_valid(&now, &peer) {
        link_cancel.cancel();
    }
    let (tx, rx) = mpsc::channel(CMD_CAPACITY);
    let observer = metrics.link_up(&peer, Direction::Acceptor);
    if let Some(k) = policy.peers.get(&peer) {
        observer.set_auth(k.mode.as_str());
    }
    let driver = Driver::new(
        peer.clone(),
        Direction::Acceptor,
        transport,
        &policy.limits,
        tx,
        Some(ctx.exits.clone()),
        observer.rtt(),
    );
    let started = Instant::now();
    tracing::info!(
        peer = %peer,
        direction = "acceptor",
        %remote,
        auth = %auth,
        peer_cert = %peer_cert.as_ref().map_or("", |c| c.0.as_str()),
        cipher = %peer_cert.as_ref().map_or("", |c| c.1.as_str()),
        "link up"
    );
    let err = driver.run(socket, rx, link_cancel, ctx.drain.clone()).await;
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
