//! Links: dialing and accepting authenticated connections between peers, the per-link
//! driver that runs the multiplexer over a socket, and the supervisor that keeps each
//! needed link up (redial with jittered backoff).
//!
//! Byte layouts live in `proto`; this module only moves bytes between sockets, the
//! record layer and the multiplexer.

use std::fmt;

use tokio::sync::{mpsc, oneshot};

use crate::config::{PeerName, ServiceName};
use crate::proto::chunk::Chunk;
use crate::proto::frame::{self, OpenError, ResetCode, StreamId};
use crate::proto::handshake::{HandshakeError, RecordError, MAX_RECORD_PLAINTEXT};
use crate::proto::mux::MuxError;
use crate::proto::tls_record::TlsRecordError;

mod accept;
mod backoff;
mod dial;
mod driver;
mod pending;
mod ratelimit;
mod rekey;
pub mod replay;
mod stream;
mod throttle;
mod transport;

pub use accept::{serve_mesh, AcceptContext, AcceptPolicy, KnownPeer};
pub use backoff::{Backoff, BackoffConfig};
pub use dial::{supervise, DialContext, LinkSlot};
pub use driver::{Direction, Exits};
pub use replay::ReplayStore;
pub use stream::{End, Recv, Stream};

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("closed by peer")]
    Closed,
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// A record failed to decrypt or was malformed.
    #[error("record layer: {0}")]
    Record(#[from] RecordError),
    /// The peer broke the stream protocol, or stopped answering pings.
    #[error("protocol: {0}")]
    Protocol(#[from] MuxError),
    /// rustls failed after the handshake, handing over its keys.
    #[error("tls: {0}")]
    Tls(rustls::Error),
    /// The TLS record layer of an established link failed (bad record, an alert or a
    /// post-handshake message from the peer). A close_notify is [`LinkError::Closed`].
    #[error("tls record layer: {0}")]
    TlsRecord(TlsRecordError),
    /// A key change failed: the peer's part came out of turn or not in time.
    #[error("re-key: {0}")]
    Rekey(crate::proto::rekey::RekeyError),
    /// A record length prefix was out of bounds.
    #[error("record length {0} out of bounds")]
    RecordLength(usize),
    /// The link was closed on purpose (shutdown, superseded, reload).
    #[error("closed locally")]
    Cancelled,
    /// The link was drained on purpose: its last stream finished.
    #[error("drained: no longer needed")]
    Drained,
    /// The peer sent GOAWAY (it is draining: shutting down or no longer needs the link),
    /// then closed the link once its streams were done.
    #[error("the peer went away (GOAWAY, then closed)")]
    PeerWentAway,
    /// No endpoint of the peer could be reached.
    #[error("no endpoint reachable: {0}")]
    Unreachable(String),
}

impl LinkError {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            LinkError::Io(_) => "io",
            LinkError::Closed => "closed",
            LinkError::Handshake(e) => e.reason(),
            LinkError::Record(_) => "decrypt",
            LinkError::Protocol(MuxError::Dead { .. }) => "ping_timeout",
            LinkError::Protocol(_) => "protocol",
            LinkError::Tls(e) => crate::tls::reason(e),
            LinkError::TlsRecord(e) => e.reason(),
            LinkError::Rekey(crate::proto::rekey::RekeyError::Timeout { .. }) => "rekey_timeout",
            LinkError::Rekey(_) => "rekey",
            LinkError::RecordLength(_) => "oversized",
            LinkError::Cancelled => "cancelled",
            LinkError::Drained => "drained",
            LinkError::PeerWentAway => "peer_went_away",
            LinkError::Unreachable(_) => "unreachable",
        }
    }
}

impl From<TlsRecordError> for LinkError {
    fn from(err: TlsRecordError) -> Self {
        match err {
            TlsRecordError::CloseNotify => LinkError::Closed,
            TlsRecordError::MuxRecordLength(len) => LinkError::RecordLength(len),
            other => LinkError::TlsRecord(other),
        }
    }
}

/// Largest read from a local socket: four Noise records' worth of DATA.
pub(crate) const BULK_READ: usize = 4 * (MAX_RECORD_PLAINTEXT - frame::HEADER_LEN);

/// Commands from stream tasks to their link's driver.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Open a stream (dialer side).
    Open {
        service: ServiceName,
        reply: oneshot::Sender<Result<Stream, OpenFailure>>,
    },
    /// The exit connected its target.
    Accept { stream: StreamId },
    /// The exit could not connect its target.
    Refuse { stream: StreamId, code: OpenError },
    /// Bytes from the local socket (always within the stream's credit).
    Data { stream: StreamId, data: Chunk },
    /// The local socket reached end of stream.
    Fin { stream: StreamId },
    /// The local socket failed; abort the stream.
    Reset { stream: StreamId, code: ResetCode },
    /// The local socket accepted `n` bytes: return that much credit to the peer.
    Consumed { stream: StreamId, n: usize },
    /// The link's drain or cancellation token fired; sent by the link's own token watcher,
    /// not by streams.
    Stop(Stop),
}

/// What a fired link token asks of the driver; a cancellation outranks a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stop {
    /// GOAWAY, then close once the open streams are done.
    Drain,
    /// Close now (after a short flush).
    Cancel,
}

/// Why a stream could not be opened on a link.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// The link is gone.
    #[error("link is down")]
    LinkDown,
    /// The link is going away (GOAWAY sent or received): the next link takes new streams.
    #[error("link is going away")]
    GoingAway,
    /// The link refuses new streams (limit reached).
    #[error("link refuses new streams: {0}")]
    Refused(String),
}

/// A droppable handle on a running link, used to open streams on it.
#[derive(Clone)]
pub struct LinkHandle {
    peer: PeerName,
    cmds: mpsc::Sender<Cmd>,
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkHandle")
            .field("peer", &self.peer)
            .finish()
    }
}

impl LinkHandle {
    /// The peer at the other end.
    pub fn peer(&self) -> &PeerName {
        &self.peer
    }

    /// True once the link's driver has stopped.
    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed()
    }

    /// True when both handles are of one link.
    pub fn same_link(&self, other: &LinkHandle) -> bool {
        self.cmds.same_channel(&other.cmds)
    }

    /// Opens a stream to `service` on the peer. Returns at once: the OPEN frame is queued
    /// and data sent right away travels with it (zero extra round trips).
    pub async fn open(&self, service: &ServiceName) -> Result<Stream, OpenFailure> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Open {
                service: service.clone(),
                reply,
            })
            .await
            .map_err(|_| OpenFailure::LinkDown)?;
        rx.await.map_err(|_| OpenFailure::LinkDown)?
    }
}
