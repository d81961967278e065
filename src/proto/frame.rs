//! Frames carried inside a record's plaintext: `type u8 ‖ stream u64 BE ‖ len u16 BE ‖ payload`.
//! Several frames may share one record; a frame never spans two records, so a record that
//! ends inside a frame is invalid.

/// A stream identifier. Allocated by the dialer from 1 upwards, never reused on a link.
pub type StreamId = u64;

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 11;

/// Why an OPEN was refused (OPEN_ERR code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The peer exports no service of that name.
    UnknownService,
    /// The dialer is not on the service's allow list.
    NotAllowed,
    /// The service's target refused or did not answer.
    TargetUnreachable,
    /// The link already carries `max_streams` streams.
    TooManyStreams,
    /// The peer is shutting down.
    ShuttingDown,
    /// A code this version does not know.
    Other(u8),
}

/// Why a stream was reset (RST code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCode {
    /// The local socket failed or was reset.
    Cancelled,
    /// The target connection failed mid-stream.
    TargetError,
    /// The peer broke flow control or the stream protocol.
    Protocol,
    /// A code this version does not know.
    Other(u8),
}

/// A decoded frame borrowing its payload from the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Open a stream to a named service.
    Open { stream: StreamId, service: &'a str },
    /// The service's target is connected.
    OpenOk { stream: StreamId },
    /// The open was refused.
    OpenErr { stream: StreamId, code: OpenError },
    /// Stream bytes.
    Data { stream: StreamId, data: &'a [u8] },
    /// More receive credit for the stream.
    Window { stream: StreamId, credit: u32 },
    /// The sender will send no more data on the stream (half-close).
    Fin { stream: StreamId },
    /// The stream is aborted.
    Rst { stream: StreamId, code: ResetCode },
    /// Keepalive and RTT probe.
    Ping { nonce: u64 },
    /// Answer to a ping.
    Pong { nonce: u64 },
    /// The sender will accept no new streams.
    GoAway { reason: u8 },
}

/// Decoding errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not enough bytes for a whole frame.
    #[error("incomplete frame")]
    Incomplete,
    /// Unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame whose payload does not fit its type.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// The frame type.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}
