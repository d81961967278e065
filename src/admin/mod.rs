//! The admin HTTP server and the daemon's metrics: `GET /metrics` (OpenMetrics text from
//! one prometheus-client registry), `GET /healthz` (200 `ok`, or 503 listing the required
//! links that are down), `GET /status` (JSON, read by `meshctl status`), `GET /mesh`
//! (every reachable host's link table as one matrix, see `mesh`) and `GET /` (a
//! self-contained page that shows that matrix and refreshes itself).
//!
//! The server is a hand-written HTTP/1.1 subset (see `http`): a few fixed routes, one
//! request per connection, need no router, no keep-alive and no request bodies, and the
//! whole of it fits in one screen and is tested without a socket.
//!
//! `POST /reload` answers only requests that name this server in `Host` and `Origin`
//! (a web page must not reload the daemon); the GETs answer any `Host`, since scrapers
//! name the daemon however they reach it. Connections still waiting for their request
//! head give up their slot to a new connection when all are taken, so clients that
//! connect and stay silent cannot keep a scrape out.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod http;
mod mesh;
mod metrics;
mod page;
mod status;

pub use http::{foreign_origin, parse_head, Head, Response, HEAD_DEADLINE, IO_DEADLINE, MAX_HEAD};
pub use mesh::{Asymmetry, Cell, HostView, LinkDirectory, MeshReport, PEER_TIMEOUT};
pub use metrics::{
    ByteCounters, LinkObserver, Metrics, RttObserver, StreamObserver, StreamResult,
    PENDING_PER_SOURCE,
};
pub use status::{LinkReport, StatusReport};

/// Admin connections served at once (a scraper and an operator need a handful). When all
/// are taken, a new connection evicts the oldest one still waiting for its head, and is
/// closed at once when none is.
const MAX_CONNECTIONS: usize = 32;

/// How long the accept loop waits for an evicted connection to give back its slot.
const EVICT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The OpenMetrics content type Prometheus negotiates for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A reload asked for over HTTP: the daemon answers with its summary or the error.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

/// How long `POST /reload` waits for the daemon to answer.
const RELOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// What the admin routes read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Where `POST /reload` sends its request (the daemon's main loop owns the receiver).
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// This host's peer name.
    pub host: String,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// When the daemon started.
    pub started: Instant,
    /// The links this host dials, which `/mesh` asks for their peers' tables.
    pub links: LinkDirectory,
}

impl AdminState {
    /// Answers one request: GETs of the read-only routes, `POST /reload`. `local_ips`
    /// and `port` are what names this server in `Host`/`Origin` (see [`foreign_origin`]).
    pub async fn route(&self, req: &http::Request, local_ips: &[IpAddr], port: u16) -> Response {
        if req.method != "GET" {
            if let Some(why) =
                foreign_origin(req.host.as_deref(), req.origin.as_deref(), local_ips, port)
            {
                return Response::text(403, why);
            }
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/mesh") => self.mesh().await,
            ("GET", path) => self.get(path),
            ("POST", "/reload") => self.reload().await,
            (_, "/reload") => Response::text(405, "use POST /reload\n"),
            _ => Response::text(405, "only GET, and POST /reload\n"),
        }
    }

    /// Re-reads and applies the configuration, as SIGHUP does, and reports the outcome:
    /// 200 with the summary, 422 with every error when nothing was changed.
    async fn reload(&self) -> Response {
        let Some(tx) = &self.reload else {
            return Response::text(503, "reload is not available in this process\n");
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if tx.send(reply).await.is_err() {
            return Response::text(503, "meshd is shutting down\n");
        }
        match tokio::time::timeout(RELOAD_DEADLINE, answer).await {
            Ok(Ok(Ok(summary))) => Response::text(200, format!("reloaded: {summary}\n")),
            Ok(Ok(Err(why))) => Response::text(422, format!("reload failed: {why}\n")),
            _ => Response::text(500, "reload did not answer\n"),
        }
    }

    /// `GET /mesh`: this host's table and each dialed peer's, as one matrix.
    async fn mesh(&self) -> Response {
        let own = self
            .metrics
            .status(&self.host, &self.metrics.config_hash(), self.started);
        let report = mesh::gather(own, &self.links).await;
        json(&report)
    }

    /// Answers one GET.
    fn get(&self, path: &str) -> Response {
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: OPENMETRICS,
                body: self.metrics.encode(),
            },
            "/healthz" => match self.metrics.unhealthy() {
                None => Response::text(200, "ok\n"),
                Some(why) => Response::text(503, format!("{why}\n")),
            },
            "/status" => json(&self.metrics.status(
                &self.host,
                &self.metrics.config_hash(),
                self.started,
            )),
            "/" => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: page::MESH_PAGE.to_owned(),
            },
            _ => Response::text(
                404,
                "not found; try /, /metrics, /healthz, /status or /mesh\n",
            ),
        }
    }
}

/// A JSON document as a 200 response.
fn json<T: serde::Serialize>(doc: &T) -> Response {
    match serde_json::to_string_pretty(doc) {
        Ok(mut body) => {
            body.push('\n');
            Response {
                status: 200,
                content_type: "application/json",
                body,
            }
        }
        Err(e) => Response::text(500, format!("{e}\n")),
    }
}

/// True for addresses only this host can reach.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Logs a warning when the admin server listens beyond this host: `/status` names every
/// peer and link, which is not for the internet (the default is loopback).
pub fn warn_if_exposed(addr: SocketAddr) {
    if !is_loopback(&addr) {
        tracing::warn!(
            %addr,
            "admin server listens on a non-loopback address: /metrics and /status are \
             unauthenticated; restrict access with a firewall or set admin = \"127.0.0.1:9464\""
        );
    }
}

/// Connections still reading their request head, oldest first: the ones a new connection
/// may evict. At most [`MAX_CONNECTIONS`] long, as each holds a slot.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    queue: VecDeque<(u64, CancellationToken)>,
}

impl Waiting {
    fn lock(this: &Mutex<Self>) -> std::sync::MutexGuard<'_, Self> {
        // The lock guards no invariant a panic could break halfway.
        this.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves the admin listener until `cancel` fires.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let listen = listener.local_addr().ok();
    let port = listen.map_or(0, |a| a.port());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    loop {
        let socket = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let oldest = Waiting::lock(&waiting).queue.pop_front();
                let Some((_, evict)) = oldest else {
                    // Every slot is past its head (slow reloads): this one waits its turn
                    // by reconnecting.
                    continue;
                };
                evict.cancel();
                match tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => continue,
                }
            }
        };
        let evict = cancel.child_token();
        let id = {
            let mut w = Waiting::lock(&waiting);
            let id = w.next_id;
            w.next_id += 1;
            w.queue.push_back((id, evict.clone()));
            id
        };
        let mut local_ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        local_ips.extend(listen.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()));
        local_ips.extend(socket.local_addr().ok().map(|a| a.ip()));
        let state = state.clone();
        let cancel = cancel.clone();
        let waiting = waiting.clone();
        tracker.spawn(async move {
            let mut socket = socket;
            let head = tokio::select! {
                _ = evict.cancelled() => None,
                r = tokio::time::timeout(HEAD_DEADLINE, http::read_request(&mut socket)) => {
                    r.ok().flatten()
                }
            };
            Waiting::lock(&waiting)
                .queue
                .retain(|(other, _)| *other != id);
            if let Some(head) = head {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = async {
                        let response = match head {
                            Ok(req) => state.route(&req, &local_ips, port).await,
                            Err(early) => early,
                        };
                        http::respond(socket, response).await;
                    } => {}
                }
            }
            drop(permit);
        });
    }
}
