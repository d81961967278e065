//! Exits: this host's exported services. An OPEN is accepted only for a service that
//! exists and lists the dialing peer; the target is connected before OPEN_OK is sent.
//! The built-in `_status` service (no manifest can declare it) answers any mesh peer with
//! this host's `/status` document and closes: it never connects anywhere.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::splice::{splice, SpliceEnd};
use crate::admin::Metrics;
use crate::config::{HostPort, PeerName, Service, ServiceName};
use crate::link::{Direction, Exits, Stream};
use crate::proto::chunk::Chunk;
use crate::proto::frame::{OpenError, ResetCode};

/// How long an exit waits for its target to accept.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `_status` answer may take to reach the peer and close.
const STATUS_DEADLINE: Duration = Duration::from_secs(5);
/// The largest piece of a `_status` answer handed to the link at once.
const STATUS_PIECE: usize = 16 * 1024;

/// The services of this host, as the link drivers see them.
/// Replaced as a whole on reload; streams already open keep running.
#[derive(Debug)]
pub struct ExitTable {
    services: RwLock<Arc<BTreeMap<ServiceName, Service>>>,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// This host's name and start, for its `_status` answers.
    host: PeerName,
    started: Instant,
}

impl ExitTable {
    /// Builds the table from this host's manifest entry.
    pub fn new(
        host: PeerName,
        services: BTreeMap<ServiceName, Service>,
        tracker: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            services: RwLock::new(Arc::new(services)),
            tracker,
            metrics,
            host,
            started: Instant::now(),
        }
    }

    /// Installs new services and allow lists; they apply to streams opened from now on.
    pub fn set_services(&self, services: BTreeMap<ServiceName, Service>) {
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(services);
    }

    fn services(&self) -> Arc<BTreeMap<ServiceName, Service>> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Exits for ExitTable {
    fn open(
        &self,
        peer: &PeerName,
        service: &str,
        stream: Stream,
    ) -> Result<(), (OpenError, Stream)> {
        if service == ServiceName::STATUS {
            let report = self.metrics.status(
                self.host.as_str(),
                &self.metrics.config_hash(),
                self.started,
            );
            let peer = peer.clone();
            self.tracker.spawn(async move {
                let answer = match serde_json::to_vec(&report) {
                    Ok(body) => {
                        tokio::time::timeout(STATUS_DEADLINE, answer_status(&stream, body)).await
                    }
                    Err(e) => Ok(Err(e.to_string())),
                };
                let why = match answer {
                    Ok(Ok(())) => return,
                    Ok(Err(why)) => why,
                    Err(_) => format!("not done within {STATUS_DEADLINE:?}"),
                };
                tracing::debug!(%peer, "status answer cut: {why}");
                stream.reset(ResetCode::Cancelled).await;
            });
            return Ok(());
        }
        let Ok(name) = ServiceName::new(service) else {
            return Err((OpenError::UnknownService, stream));
        };
        let services = self.services();
        let Some(svc) = services.get(&name) else {
            return Err((OpenError::UnknownService, stream));
        };
        if !svc.allow.contains(peer) {
            self.metrics.stream_refused(peer, &name);
            return Err((OpenError::NotAllowed, stream));
        }
        let target = svc.target.clone();
        let peer = peer.clone();
        let metrics = self.metrics.clone();
        self.tracker.spawn(async move {
            let connect = async {
                match &target {
                    HostPort::Addr(a) => TcpStream::connect(a).await,
                    HostPort::Dns { host, port } => TcpStream::connect((host.as_str(), *port)).await,
                }
            };
            let id = stream.id();
            // A stream the peer resets (or whose link dies) while its target is still
            // connecting gives the connect up at once: its place under `max_streams` is
            // free again, and the target never sees a connection nobody will use.
            let connected = tokio::select! {
                r = tokio::time::timeout(TARGET_CONNECT_TIMEOUT, connect) => r,
                end = std::future::poll_fn(|cx| stream.poll_end(cx)) => {
                    tracing::debug!(%peer, service = %name, stream = id, "target connect abandoned: {end}");
                    return;
                }
            };
            let socket = match connected {
                Ok(Ok(s)) => s,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(%peer, service = %name, %target, reason = "target_unreachable", "open refused: target {target}: {why}");
                    metrics.stream_refused(&peer, &name);
                    stream.refuse(OpenError::TargetUnreachable).await;
                    return;
                }
            };
            let _ = socket.set_nodelay(true);
            if stream.accept().await.is_err() {
                return;
            }
            let observer = metrics.stream_opened(&peer, &name, Direction::Acceptor);
            let end = splice(socket, stream, Some(observer.bytes())).await;
            observer.finish(matches!(end, SpliceEnd::Clean { .. }));
            match end {
                SpliceEnd::Clean { sent, received } => {
                    tracing::debug!(%peer, service = %name, stream = id, sent, received, "stream closed")
                }
                SpliceEnd::Aborted { why } => {
                    tracing::info!(%peer, service = %name, stream = id, "stream aborted: {why}")
                }
            }
        });
        Ok(())
    }
}

/// Sends `body` on an accepted `_status` stream within its credit, finishes it, and waits
/// for the asker's FIN, so the stream closes cleanly instead of being reset on drop.
async fn answer_status(stream: &Stream, body: Vec<u8>) -> Result<(), String> {
    stream.accept().await.map_err(|e| e.to_string())?;
    let mut rest = Bytes::from(body);
    while !rest.is_empty() {
        let credit = poll_fn(|cx| stream.poll_credit(cx))
            .await
            .map_err(|e| e.to_string())?;
        let piece = rest.split_to(credit.min(STATUS_PIECE).min(rest.len()));
        stream
            .send(Chunk::Shared(piece))
            .await
            .map_err(|e| e.to_string())?;
    }
    stream.finish().await.map_err(|e| e.to_string())?;
    match poll_fn(|cx| stream.poll_end(cx)).await {
        crate::link::End::Closed => Ok(()),
        end => Err(end.to_string()),
    }
}
