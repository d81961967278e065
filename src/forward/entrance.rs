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
use crate::config::Forward;
use crate::link::Direction;
use crate::link::LinkHandle;

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
            let ready = tokio::time::timeout(link_wait, async {
                match link
                    .wait_for(|h| h.as_ref().is_some_and(|h| !h.is_closed()))
                    .await
                {
                    Ok(h) => h.clone(),
                    Err(_) => None,
                }
            })
            .await;
            let handle = ready.unwrap_or(None);
            let Some(handle) = handle else {
                tracing::warn!(%client, to, "stream refused: link to {} is down", forward.peer);
                metrics.stream_refused(&forward.peer, &forward.service);
                reset_socket(socket);
                return;
            };
            let stream = match handle.open(&forward.service).await {
                Ok(s) => s,
                Err(e) => {
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
