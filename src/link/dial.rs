//! The dialing side: one supervisor per peer this host has forwards to. It keeps the link
//! up (dial each endpoint in order, handshake under a deadline, run the driver, redial
//! with jittered backoff) and publishes the current link for the entrances.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::driver::{Direction, Driver, CMD_CAPACITY};
use super::transport::{self, Transport};
use super::{Backoff, BackoffConfig, LinkError, LinkHandle};
use crate::admin::Metrics;
use crate::config::{AuthMode, HostPort, Limits, PeerName};
use crate::keys::{PairKey, PrivateKey, PublicKey};
use crate::proto::handshake::{self, HandshakeError, PairParams, MAX_HANDSHAKE_MSG};
use crate::tls::TlsStore;

/// Where the current link to one peer is published (`None` while it is down).
pub type LinkSlot = watch::Sender<Option<LinkHandle>>;

/// Everything needed to dial one peer.
#[derive(Debug)]
pub struct DialContext {
    /// This host.
    pub me: PeerName,
    /// The peer to dial.
    pub peer: PeerName,
    /// Its endpoints, tried in order.
    pub endpoints: Vec<HostPort>,
    /// Auth mode of the pair.
    pub mode: AuthMode,
    /// Mesh id (prologue).
    pub mesh_id: String,
    /// This host's static key.
    pub local_key: PrivateKey,
    /// The peer's manifest key.
    pub remote_key: PublicKey,
    /// The pair's psk slot.
    pub psk: PairKey,
    /// Link limits.
    pub limits: Limits,
    /// Redial backoff.
    pub backoff: BackoffConfig,
    /// This host's TLS material (`tls` mode), read at each dial so a reload reaches the
    /// next link without closing this one.
    pub tls: Option<Arc<TlsStore>>,
    /// Last msg1 timestamp sent, so timestamps grow even if the clock steps back.
    last_timestamp: AtomicU64,
}

impl DialContext {
    /// Builds a dial context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: PeerName,
        peer: PeerName,
        endpoints: Vec<HostPort>,
        mode: AuthMode,
        mesh_id: String,
        local_key: PrivateKey,
        remote_key: PublicKey,
        psk: PairKey,
        limits: Limits,
    ) -> Self {
        Self {
            me,
            peer,
            endpoints,
            mode,
            mesh_id,
            local_key,
            remote_key,
            psk,
            limits,
            backoff: BackoffConfig::default(),
            tls: None,
            last_timestamp: AtomicU64::new(0),
        }
    }

    /// Gives the context the daemon's TLS store (needed in `tls` mode).
    pub fn with_tls(mut self, store: Arc<TlsStore>) -> Self {
        self.tls = Some(store);
        self
    }

    /// Whether a link made under `self` is still the link `other` describes (same
    /// endpoints, keys, pair key, mode, mesh and limits). Compared on reload.
    pub fn same_link(&self, other: &DialContext) -> bool {
        #[allow(deprecated)] // ring 0.17: deprecated because it will move, not unsound.
        let eq = |a: &[u8], b: &[u8]| ring::constant_time::verify_slices_are_equal(a, b).is_ok();
        self.peer == other.peer
            && self.me == other.me
            && self.endpoints == other.endpoints
            && self.mode == other.mode
            && self.mesh_id == other.mesh_id
            && self.remote_key == other.remote_key
            && self.limits == other.limits
            && eq(self.local_key.as_bytes(), other.local_key.as_bytes())
            && eq(self.psk.as_bytes(), other.psk.as_bytes())
    }

    fn next_timestamp(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut prev = self.last_timestamp.load(Ordering::SeqCst);
        loop {
            let next = now.max(prev + 1);
            match self.last_timestamp.compare_exchange(
                prev,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

/// Keeps the link to `ctx.peer` up until `cancel` fires (close now) or `drain` fires
/// (no new streams; close once the open ones finish; no redial).
pub async fn supervise(
    ctx: Arc<DialContext>,
    slot: LinkSlot,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    drain: CancellationToken,
) {
    let mut backoff = Backoff::new(ctx.backoff);
    let mut failures_logged = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = drain.cancelled() => return,
            r = dial_once(&ctx) => r,
        };
        match attempt {
            Ok(Dialed {
                socket,
                transport,
                endpoint,
                peer_cert,
                setup,
            }) => {
                failures_logged = 0;
                let (tx, rx) = mpsc::channel(CMD_CAPACITY);
                let handle = LinkHandle {
                    peer: ctx.peer.clone(),
                    cmds: tx.clone(),
                };
                let observer = metrics.link_up(&ctx.peer, Direction::Dialer);
                observer.set_auth(ctx.mode.as_str());
                // The acceptor's GOAWAY (it is draining) takes this link out of the slot at
                // once: new connections wait for the next link instead of being refused.
                let on_go_away = {
                    let (slot, mine) = (slot.clone(), handle.clone());
                    move || take_out_of_use(&slot, &mine)
                };
                let driver = Driver::new(
                    ctx.peer.clone(),
                    Direction::Dialer,
                    transport,
                    &ctx.limits,
                    tx,
                    None,
                    observer.rtt(),
                )
                .on_go_away(on_go_away);
                let started = Instant::now();
                tracing::info!(
                    peer = %ctx.peer,
                    direction = "dialer",
                    %endpoint,
                    auth = %ctx.mode.as_str(),
                    peer_cert = %peer_cert.as_ref().map_or("", |c| c.0.as_str()),
                    cipher = %peer_cert.as_ref().map_or("", |c| c.1.as_str()),
                    setup_us = setup.as_micros() as u64,
                    "link up"
                );
                let link_cancel = cancel.child_token();
                slot.send_replace(Some(handle.clone()));
                let err = driver.run(socket, rx, link_cancel, drain.clone()).await;
                take_out_of_use(&slot, &handle);
                observer.down(&err);
                if drain.is_cancelled() {
                    tracing::info!(peer = %ctx.peer, direction = "dialer", reason = err.reason(), "link closed: {err}");
                    return;
                }
                if matches!(err, LinkError::Cancelled) && cancel.is_cancelled() {
                    tracing::info!(peer = %ctx.peer, direction = "dialer", "link closed");
                    return;
                }
                if matches!(err, LinkError::PeerWentAway) {
                    // An orderly close: the peer restarts or reloads; redial from the
                    // shortest delay.
                    tracing::info!(peer = %ctx.peer, direction = "dialer", reason = err.reason(), "link closed: {err}; redialing");
                    backoff.reset();
                } else {
                    tracing::warn!(
                        peer = %ctx.peer,
                        direction = "dialer",
                        reason = err.reason(),
                        "link down: {err}"
                    );
                    backoff.link_ended(started.elapsed());
                }
            }
            Err(err) => {
                metrics.dial_failed(&ctx.peer, &err);
                // Log the first failures, then every 10th, so a long outage does not flood.
                if failures_logged < 3 || failures_logged % 10 == 0 {
                    tracing::warn!(
                        peer = %ctx.peer,
                        reason = err.reason(),
                        "link dial failed: {err}"
                    );
                }
                failures_logged += 1;
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = drain.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Empties `slot` if it still holds `link`: a reload may have replaced this supervisor,
/// and the slot may already hold its successor's link.
fn take_out_of_use(slot: &LinkSlot, link: &LinkHandle) {
    slot.send_if_modified(|now| {
        let ours = now.as_ref().is_some_and(|h| h.same_link(link));
        if ours {
            *now = None;
        }
        ours
    });
}

/// An authenticated connection, ready for the driver.
struct Dialed {
    socket: TcpStream,
    transport: Transport,
    endpoint: String,
    /// The acceptor's certificate fingerprint and the cipher suite (`tls` mode).
    peer_cert: Option<(String, String)>,
    /// From the start of the TCP connect to the end of the handshake (for tls, to the
    /// acceptor's confirmation that it accepted our certificate).
    setup: std::time::Duration,
}

/// Tries each endpoint in order; returns the first authenticated connection.
async fn dial_once(ctx: &DialContext) -> Result<Dialed, LinkError> {
    let mut errors = Vec::new();
    for endpoint in &ctx.endpoints {
        let started = Instant::now();
        let connect = async {
            match endpoint {
                HostPort::Addr(a) => TcpStream::connect(a).await,
                HostPort::Dns { host, port } => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        let socket = match tokio::time::timeout(ctx.limits.handshake_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                errors.push(format!("{endpoint}: {e}"));
                continue;
            }
            Err(_) => {
                errors.push(format!("{endpoint}: connect timed out"));
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let hs = tokio::time::timeout(ctx.limits.handshake_timeout, handshake(ctx, socket));
        return match hs.await {
            Ok(Ok((socket, transport, peer_cert))) => Ok(Dialed {
                socket,
                transport,
                endpoint: endpoint.to_string(),
                peer_cert,
                setup: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LinkError::Handshake(HandshakeError::Timeout)),
        };
    }
    Err(LinkError::Unreachable(errors.join("; ")))
}

/// The socket, its record layer and, for tls, the peer certificate and cipher suite.
type Handshaken = (TcpStream, Transport, Option<(String, String)>);

async fn handshake(ctx: &DialContext, mut socket: TcpStream) -> Result<Handshaken, LinkError> {
    if ctx.mode == AuthMode::Tls {
        let material = ctx.tls.as_ref().and_then(|s| s.current()).ok_or_else(|| {
            HandshakeError::Local("tls link without tls material (cert, cert_key, ca)".into())
        })?;
        let link = transport::dial(&material, socket, &ctx.me, &ctx.peer).await?;
        let info = (link.peer_cert, link.cipher);
        return Ok((link.socket, link.transport, Some(info)));
    }
    let params = PairParams {
        mode: ctx.mode,
        mesh_id: &ctx.mesh_id,
        dialer: &ctx.me,
        acceptor: &ctx.peer,
        local_key: &ctx.local_key,
        remote_key: &ctx.remote_key,
        psk: &ctx.psk,
    };
    let (initiator, first) = handshake::initiate(&params, ctx.next_timestamp())?;
    socket.write_all(&first).await?;
    let mut len = [0u8; 2];
    read_exact(&mut socket, &mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::Oversized(len).into());
    }
    let mut msg2 = vec![0u8; len];
    read_exact(&mut socket, &mut msg2).await?;
    let session = initiator.finish(&msg2)?;
    Ok((socket, Transport::Noise(session), None))
}

/// `read_exact` that reports a closed connection as a truncated handshake.
pub(super) async fn read_exact(socket: &mut TcpStream, buf: &mut [u8]) -> Result<(), LinkError> {
    match socket.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(HandshakeError::Truncated.into())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase() {
        let (k, p) = crate::keys::generate_keypair().expect("rng");
        let name = PeerName::new("a").expect("name");
        let ctx = DialContext::new(
            name.clone(),
            name,
            vec![],
            AuthMode::Noise,
            "m".into(),
            k,
            p,
            PairKey::from_bytes([0; 32]),
            Limits::default(),
        );
        let mut last = 0;
        for _ in 0..10_000 {
            let t = ctx.next_timestamp();
            assert!(t > last);
            last = t;
        }
    }
}
