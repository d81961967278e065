//! An entrance: the local listener of one `[[forwards]]` entry. Each accepted connection
//! becomes one stream on the link to the forward's peer; if that link is down, the
//! connection waits for it up to `link_wait`, then is reset.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::socket::reset_socket;
use super::splice::{splice, SpliceEnd};
use crate::admin::Metrics;
use crate::config::{Forward, ServiceName};
use crate::link::{Direction, LinkHandle, OpenFailure, Stream};

/// Accepts on `listener` until `cancel` fires; streams already open run to completion
/// (they are tracked by `tracker`).
pub async fn serve_forward(
    listener: Arc<TcpListener>,
    forward: Arc<Forward>,
    link: watch::Receiver<Option<LinkHandle>>,
    link_wait: Duration,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let (socket, client) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listen = %forward.listen, error = %e, "forward accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let mut link = link.clone();
        let forward = forward.clone();
        let metrics = metrics.clone();
        tracker.spawn(async move {
            let to = format!("{}/{}", forward.peer, forward.service);
            let stream = match open_within(&mut link, &forward.service, link_wait).await {
                Ok(s) => s,
                Err(e) => {
                    let e = match e {
                        OpenFailure::LinkDown => format!("link to {} is down", forward.peer),
                        other => other.to_string(),
                    };
                    tracing::warn!(%client, to, "stream refused: {e}");
                    metrics.stream_refused(&forward.peer, &forward.service);
                    reset_socket(socket);
                    return;
                }
            };
            let id = stream.id();
            let observer =
                metrics.stream_opened(&forward.peer, &forward.service, Direction::Dialer);
            let end = splice(socket, stream, Some(observer.bytes())).await;
            observer.finish(matches!(end, SpliceEnd::Clean { .. }));
            match end {
                SpliceEnd::Clean { sent, received } => {
                    tracing::debug!(%client, to, stream = id, sent, received, "stream closed")
                }
                SpliceEnd::Aborted { why } => {
                    tracing::info!(%client, to, stream = id, "stream aborted: {why}")
                }
            }
        });
    }
}

/// Opens a stream on the link in `link`, waiting up to `link_wait` for a link to be up. A
/// link that is going away (its peer drains) or that died between being published and the
/// open is skipped: the stream waits for the next one, within the same `link_wait`.
async fn open_within(
    link: &mut watch::Receiver<Option<LinkHandle>>,
    service: &ServiceName,
    link_wait: Duration,
) -> Result<Stream, OpenFailure> {
    let deadline = tokio::time::Instant::now() + link_wait;
    let mut skipped: Option<(LinkHandle, OpenFailure)> = None;
    loop {
        let usable = |h: &Option<LinkHandle>| {
            h.as_ref().is_some_and(|h| {
                !h.is_closed() && !skipped.as_ref().is_some_and(|(s, _)| s.same_link(h))
            })
        };
        let handle = match tokio::time::timeout_at(deadline, link.wait_for(usable)).await {
            Ok(Ok(h)) => h.clone(),
            Ok(Err(_)) | Err(_) => None,
        };
        let Some(handle) = handle else {
            return Err(skipped.map_or(OpenFailure::LinkDown, |(_, why)| why));
        };
        match handle.open(service).await {
            Err(why @ (OpenFailure::GoingAway | OpenFailure::LinkDown)) => {
                skipped = Some((handle, why));
            }
            other => return other,
        }
    }
}
