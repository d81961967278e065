//! Copies bytes both ways between a local TCP socket and a stream, within the stream's
//! credit. A half-close travels as FIN in either direction; any abort (peer reset, refused
//! open, link lost, local error) resets the local socket, so a client never mistakes a cut
//! stream for a complete one. After the peer's FIN the receiving direction keeps waiting
//! for the stream's end, so a reset that follows a FIN still cuts the local socket.
//!
//! How the socket is read and written is [`super::socket`]'s; this is the policy.

use std::future::poll_fn;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::join::try_join_woken;
use super::socket::{poll_read_chunks, reset_socket, socket_error, write_all_chunks, WRITE_BATCH};
use crate::admin::ByteCounters;
use crate::link::{End, Recv, Stream, BULK_READ};
use crate::proto::chunk::Chunk;
use crate::proto::frame::ResetCode;

/// How a spliced stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions finished cleanly.
    Clean {
        /// Bytes from the local socket to the peer.
        sent: u64,
        /// Bytes from the peer to the local socket.
        received: u64,
    },
    /// The stream was aborted; the local socket was reset.
    Aborted {
        /// Why.
        why: String,
    },
}

enum Abort {
    /// The stream ended on the link's side; nothing to tell the peer.
    Remote(End),
    /// A local failure; the peer must hear a reset.
    Local(String),
}

/// Runs the stream until both directions end or it is aborted. `counters` see every chunk
/// as it moves, so the byte metrics follow a long transfer while it runs.
pub async fn splice(
    socket: TcpStream,
    stream: Stream,
    counters: Option<&ByteCounters>,
) -> SpliceEnd {
    let (mut rd, mut wr) = socket.into_split();
    let read_segment = stream.read_segment();
    let mut sent = 0u64;
    let mut received = 0u64;

    // The two directions, pinned where they are made (the join holds references, not
    // second copies), in a block that ends their borrows of the socket and counters.
    let result = {
        let stream = &stream;
        let up = std::pin::pin!(async {
            // Chunks of the last read; a bulk read yields one per record.
            let mut chunks: Vec<Chunk> = Vec::new();
            // Whether the last read filled all the room it had: then the next one is vectored.
            let mut bulk = false;
            loop {
                // Read only what the peer has room for, so nothing waits here unsent.
                let credit = poll_fn(|cx| stream.poll_credit(cx))
                    .await
                    .map_err(Abort::Remote)?;
                let room = credit.min(BULK_READ);
                let (n, filled) = poll_fn(|cx| {
                    poll_read_chunks(&mut rd, cx, room, read_segment, bulk, &mut chunks)
                })
                .await
                .map_err(|e| Abort::Local(format!("local read: {e}")))?;
                bulk = filled;
                if n == 0 {
                    stream.finish().await.map_err(Abort::Remote)?;
                    // Half-closed: nothing more is read, but a reset from the local side
                    // must still cut the stream, even if no write is left to fail.
                    return tokio::select! {
                        end = poll_fn(|cx| stream.poll_end_of_sending(cx)) => match end {
                            End::Closed => Ok(()),
                            end => Err(Abort::Remote(end)),
                        },
                        e = socket_error(rd.as_ref()) => {
                            Err(Abort::Local(format!("local socket: {e}")))
                        }
                    };
                }
                sent += n as u64;
                if let Some(c) = counters {
                    c.sent(n as u64);
                }
                // The link driver sends these bytes next: the busy poller must not give the
                // CPU away before it has.
                crate::busy_poll::touch();
                for data in chunks.drain(..) {
                    stream.send(data).await.map_err(Abort::Remote)?;
                }
            }
        });

        let down = std::pin::pin!(async {
            // Chunks taken from the stream and not yet written; reused for every batch.
            let mut batch: Vec<Bytes> = Vec::new();
            loop {
                match poll_fn(|cx| stream.poll_recv(cx, &mut batch, WRITE_BATCH)).await {
                    Recv::Data(n) => {
                        if let Err(e) = write_all_chunks(&mut wr, &mut batch).await {
                            return Err(Abort::Local(format!("local write: {e}")));
                        }
                        received += n as u64;
                        if let Some(c) = counters {
                            c.received(n as u64);
                        }
                        stream.consumed(n).await;
                    }
                    Recv::Fin => {
                        let _ = wr.shutdown().await;
                        return match poll_fn(|cx| stream.poll_end(cx)).await {
                            End::Closed => Ok(()),
                            end => Err(Abort::Remote(end)),
                        };
                    }
                    Recv::Ended(end) => return Err(Abort::Remote(end)),
                }
            }
        });

        try_join_woken(up, down).await
    };
    match result {
        Ok(()) => SpliceEnd::Clean { sent, received },
        Err(abort) => {
            let why = match abort {
                Abort::Remote(end) => end.to_string(),
                Abort::Local(why) => {
                    stream.reset(ResetCode::Cancelled).await;
                    why
                }
            };
            if let Ok(socket) = rd.reunite(wr) {
                reset_socket(socket);
            }
            SpliceEnd::Aborted { why }
        }
    }
}
