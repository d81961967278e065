//! Exits: this host's exported services. An OPEN is accepted only for a service that
//! exists and lists the dialing peer; the target is connected before OPEN_OK is sent.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::splice::{splice, SpliceEnd};
use crate::admin::Metrics;
use crate::config::{HostPort, PeerName, Service, ServiceName};
use crate::link::{Direction, Exits, Stream};
use crate::proto::frame::OpenError;

/// How long an exit waits for its target to accept.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The services of this host, as the link drivers see them.
/// Replaced as a whole on reload; streams already open keep running.
#[derive(Debug)]
pub struct ExitTable {
    services: RwLock<Arc<BTreeMap<ServiceName, Service>>>,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
}

impl ExitTable {
    /// Builds the table from this host's manifest entry.
    pub fn new(
        services: BTreeMap<ServiceName, Service>,
        tracker: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            services: RwLock::new(Arc::new(services)),
            tracker,
            metrics,
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
