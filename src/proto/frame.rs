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
    /// The sender's link settings, sent once as its first frame: the receive window each
    /// new stream starts with on its side, which is the peer's initial send credit.
    Settings { window: u32 },
    /// A step of an in-band re-key of a noise/psk link ([`super::rekey`]): `step` says
    /// which ([`RekeyStep`]), `epoch` numbers the keys being made (1 for the first re-key),
    /// `key` is an X25519 public key in OFFER and ANSWER and zeros otherwise.
    Rekey {
        step: RekeyStep,
        epoch: u32,
        key: [u8; 32],
    },
}

/// The steps of a re-key ([`Frame::Rekey`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RekeyStep {
    /// Acceptor to dialer: my limit is reached, please start a re-key.
    Request,
    /// Dialer to acceptor: my ephemeral key for the new keys.
    Offer,
    /// Acceptor to dialer: my ephemeral key; this record is the last of mine under the old
    /// key.
    Answer,
    /// Dialer to acceptor: this record is the last of mine under the old key.
    Commit,
}

impl RekeyStep {
    fn code(self) -> u8 {
        match self {
            RekeyStep::Request => 0,
            RekeyStep::Offer => 1,
            RekeyStep::Answer => 2,
            RekeyStep::Commit => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RekeyStep::Request,
            1 => RekeyStep::Offer,
            2 => RekeyStep::Answer,
            3 => RekeyStep::Commit,
            _ => return None,
        })
    }
}

/// Payload bytes of a REKEY frame: step, epoch, key.
pub const REKEY_PAYLOAD_LEN: usize = 1 + 4 + 32;

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

const T_OPEN: u8 = 1;
const T_OPEN_OK: u8 = 2;
const T_OPEN_ERR: u8 = 3;
const T_DATA: u8 = 4;
const T_WINDOW: u8 = 5;
const T_FIN: u8 = 6;
const T_RST: u8 = 7;
const T_PING: u8 = 8;
const T_PONG: u8 = 9;
const T_GOAWAY: u8 = 10;
const T_SETTINGS: u8 = 11;
const T_REKEY: u8 = 12;

/// Longest service name an OPEN may carry.
pub const MAX_SERVICE_LEN: usize = 63;

impl OpenError {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            OpenError::UnknownService => 1,
            OpenError::NotAllowed => 2,
            OpenError::TargetUnreachable => 3,
            OpenError::TooManyStreams => 4,
            OpenError::ShuttingDown => 5,
            OpenError::Other(n) => n,
        }
    }

    /// The variant for a wire code; unknown codes are kept as `Other`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => OpenError::UnknownService,
            2 => OpenError::NotAllowed,
            3 => OpenError::TargetUnreachable,
            4 => OpenError::TooManyStreams,
            5 => OpenError::ShuttingDown,
            n => OpenError::Other(n),
        }
    }
}

impl ResetCode {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            ResetCode::Cancelled => 1,
            ResetCode::TargetError => 2,
            ResetCode::Protocol => 3,
            ResetCode::Other(n) => n,
        }
    }

    /// The variant for a wire code; unknown codes are kept as `Other`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => ResetCode::Cancelled,
            2 => ResetCode::TargetError,
            3 => ResetCode::Protocol,
            n => ResetCode::Other(n),
        }
    }
}

/// Whether `name` is a valid service name for an OPEN: 1..=63 bytes of `[a-z0-9_-]`.
pub fn valid_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Frame<'_> {
    fn type_code(&self) -> u8 {
        match self {
            Frame::Open { .. } => T_OPEN,
            Frame::OpenOk { .. } => T_OPEN_OK,
            Frame::OpenErr { .. } => T_OPEN_ERR,
            Frame::Data { .. } => T_DATA,
            Frame::Window { .. } => T_WINDOW,
            Frame::Fin { .. } => T_FIN,
            Frame::Rst { .. } => T_RST,
            Frame::Ping { .. } => T_PING,
            Frame::Pong { .. } => T_PONG,
            Frame::GoAway { .. } => T_GOAWAY,
            Frame::Settings { .. } => T_SETTINGS,
            Frame::Rekey { .. } => T_REKEY,
        }
    }

    fn stream(&self) -> StreamId {
        match *self {
            Frame::Open { stream, .. }
            | Frame::OpenOk { stream }
            | Frame::OpenErr { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Window { stream, .. }
            | Frame::Fin { stream }
            | Frame::Rst { stream, .. } => stream,
            Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::GoAway { .. }
            | Frame::Settings { .. }
            | Frame::Rekey { .. } => 0,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Open { service, .. } => service.len(),
            Frame::Data { data, .. } => data.len(),
            Frame::OpenOk { .. } | Frame::Fin { .. } => 0,
            Frame::OpenErr { .. } | Frame::Rst { .. } | Frame::GoAway { .. } => 1,
            Frame::Window { .. } | Frame::Settings { .. } => 4,
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::Rekey { .. } => REKEY_PAYLOAD_LEN,
        }
    }

    /// Bytes `encode` appends.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Appends the frame to `out`. The frame must be valid (payload at most `u16::MAX` bytes);
    /// the encoder does not re-check what the decoder rejects.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.payload_len();
        debug_assert!(len <= usize::from(u16::MAX));
        out.reserve(HEADER_LEN + len);
        write_header(out, self.type_code(), self.stream(), len as u16);
        match *self {
            Frame::Open { service, .. } => out.extend_from_slice(service.as_bytes()),
            Frame::Data { data, .. } => out.extend_from_slice(data),
            Frame::OpenOk { .. } | Frame::Fin { .. } => {}
            Frame::OpenErr { code, .. } => out.push(code.code()),
            Frame::Rst { code, .. } => out.push(code.code()),
            Frame::GoAway { reason } => out.push(reason),
            Frame::Window { credit, .. } => out.extend_from_slice(&credit.to_be_bytes()),
            Frame::Settings { window } => out.extend_from_slice(&window.to_be_bytes()),
            Frame::Ping { nonce } | Frame::Pong { nonce } => {
                out.extend_from_slice(&nonce.to_be_bytes())
            }
            Frame::Rekey { step, epoch, key } => {
                out.push(step.code());
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&key);
            }
        }
    }
}

fn write_header(out: &mut Vec<u8>, ty: u8, stream: StreamId, len: u16) {
    out.push(ty);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends the header of a DATA frame carrying `len` bytes; the caller appends the payload.
/// Lets the multiplexer copy queued `Bytes` straight into the record without a `Frame`.
pub fn encode_data_header(out: &mut Vec<u8>, stream: StreamId, len: u16) {
    out.extend_from_slice(&data_header(stream, len));
}

/// The header of a DATA frame carrying `len` bytes, for writing in front of a payload that
/// already lies in place (see [`super::chunk`]).
pub fn data_header(stream: StreamId, len: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = T_DATA;
    h[1..9].copy_from_slice(&stream.to_be_bytes());
    h[9..].copy_from_slice(&len.to_be_bytes());
    h
}

fn malformed(kind: &'static str, why: &'static str) -> FrameError {
    FrameError::Malformed { kind, why }
}

/// Decodes the frame at the start of `buf`, returning it and the bytes it took.
/// `Incomplete` when `buf` holds less than the whole frame (inside a record that is fatal:
/// frames never span records).
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let ty = buf[0];
    let stream = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
    let len = usize::from(u16::from_be_bytes([buf[9], buf[10]]));
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete);
    }
    let p = &buf[HEADER_LEN..total];

    // Stream frames need a stream id; link frames (PING/PONG/GOAWAY) must carry 0.
    let kind = match ty {
        T_OPEN => "OPEN",
        T_OPEN_OK => "OPEN_OK",
        T_OPEN_ERR => "OPEN_ERR",
        T_DATA => "DATA",
        T_WINDOW => "WINDOW",
        T_FIN => "FIN",
        T_RST => "RST",
        T_PING => "PING",
        T_PONG => "PONG",
        T_GOAWAY => "GOAWAY",
        T_SETTINGS => "SETTINGS",
        T_REKEY => "REKEY",
        other => return Err(FrameError::UnknownType(other)),
    };
    let link_frame = matches!(ty, T_PING | T_PONG | T_GOAWAY | T_SETTINGS | T_REKEY);
    if link_frame && stream != 0 {
        return Err(malformed(kind, "link frame on a non-zero stream"));
    }
    if !link_frame && stream == 0 {
        return Err(malformed(kind, "stream id 0"));
    }
    let want_len = |n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err(malformed(kind, "wrong payload length"))
        }
    };

    let frame = match ty {
        T_OPEN => {
            if p.is_empty() || p.len() > MAX_SERVICE_LEN {
                return Err(malformed(kind, "service name length not in 1..=63"));
            }
            let service = std::str::from_utf8(p)
                .ok()
                .filter(|s| valid_service_name(s))
                .ok_or_else(|| malformed(kind, "service name not [a-z0-9_-]"))?;
            Frame::Open { stream, service }
        }
        T_OPEN_OK => {
            want_len(0)?;
            Frame::OpenOk { stream }
        }
        T_OPEN_ERR => {
            want_len(1)?;
            Frame::OpenErr {
                stream,
                code: OpenError::from_code(p[0]),
            }
        }
        T_DATA => {
            if p.is_empty() {
                return Err(malformed(kind, "empty payload"));
            }
            Frame::Data { stream, data: p }
        }
        T_WINDOW => {
            want_len(4)?;
            let credit = u32::from_be_bytes(p.try_into().expect("4 bytes"));
            if credit == 0 {
                return Err(malformed(kind, "zero credit"));
            }
            Frame::Window { stream, credit }
        }
        T_FIN => {
            want_len(0)?;
            Frame::Fin { stream }
        }
        T_RST => {
            want_len(1)?;
            Frame::Rst {
                stream,
                code: ResetCode::from_code(p[0]),
            }
        }
        T_PING | T_PONG => {
            want_len(8)?;
            let nonce = u64::from_be_bytes(p.try_into().expect("8 bytes"));
            if ty == T_PING {
                Frame::Ping { nonce }
            } else {
                Frame::Pong { nonce }
            }
        }
        T_SETTINGS => {
            want_len(4)?;
            let window = u32::from_be_bytes(p.try_into().expect("4 bytes"));
            Frame::Settings { window }
        }
        T_REKEY => {
            want_len(REKEY_PAYLOAD_LEN)?;
            let step = RekeyStep::from_code(p[0]).ok_or_else(|| malformed(kind, "unknown step"))?;
            let epoch = u32::from_be_bytes(p[1..5].try_into().expect("4 bytes"));
            let key: [u8; 32] = p[5..].try_into().expect("32 bytes");
            Frame::Rekey { step, epoch, key }
        }
        _ => {
            want_len(1)?;
            Frame::GoAway { reason: p[0] }
        }
    };
    Ok((frame, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame<'static>> {
        vec![
            Frame::Open {
                stream: 1,
                service: "redis_main-01",
            },
            Frame::Open {
                stream: u64::MAX,
                service: "abcdefghijklmnopqrstuvwxyz0123456789_-abcdefghijklmnopqrstuvwxy",
            },
            Frame::OpenOk { stream: 7 },
            Frame::OpenErr {
                stream: 2,
                code: OpenError::UnknownService,
            },
            Frame::OpenErr {
                stream: 2,
                code: OpenError::NotAllowed,
            },
            Frame::OpenErr {
                stream: 2,
                code: OpenError::TargetUnreachable,
            },
            Frame::OpenErr {
                stream: 2,
                code: OpenError::TooManyStreams,
            },
            Frame::OpenErr {
                stream: 2,
                code: OpenError::ShuttingDown,
            },
            Frame::OpenErr {
                stream: 2,
                code: OpenError::Other(200),
            },
            Frame::Data {
                stream: 3,
                data: b"hello",
            },
            Frame::Data {
                stream: 3,
                data: &[0xAB; 65535],
            },
            Frame::Window {
                stream: 4,
                credit: 1,
            },
            Frame::Window {
                stream: 4,
                credit: u32::MAX,
            },
            Frame::Fin { stream: 5 },
            Frame::Rst {
                stream: 6,
                code: ResetCode::Cancelled,
            },
            Frame::Rst {
                stream: 6,
                code: ResetCode::TargetError,
            },
            Frame::Rst {
                stream: 6,
                code: ResetCode::Protocol,
            },
            Frame::Rst {
                stream: 6,
                code: ResetCode::Other(0),
            },
            Frame::Ping { nonce: 0 },
            Frame::Pong {
                nonce: 0x0102_0304_0506_0708,
            },
            Frame::GoAway { reason: 9 },
            Frame::Settings { window: 256 * 1024 },
            Frame::Rekey {
                step: RekeyStep::Request,
                epoch: 1,
                key: [0; 32],
            },
            Frame::Rekey {
                step: RekeyStep::Offer,
                epoch: 2,
                key: [7; 32],
            },
            Frame::Rekey {
                step: RekeyStep::Answer,
                epoch: u32::MAX,
                key: [0xEE; 32],
            },
            Frame::Rekey {
                step: RekeyStep::Commit,
                epoch: 3,
                key: [0; 32],
            },
        ]
    }

    #[test]
    fn round_trip_every_type() {
        let frames = all_frames();
        assert!(!frames.is_empty());
        for f in &frames {
            let mut out = vec![0xEE]; // encode appends
            f.encode(&mut out);
            assert_eq!(out.len(), 1 + f.encoded_len());
            let (g, used) = decode(&out[1..]).unwrap();
            assert_eq!(&g, f);
            assert_eq!(used, f.encoded_len());
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let frames = all_frames();
        let mut out = Vec::new();
        for f in &frames {
            f.encode(&mut out);
        }
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < out.len() {
            let (f, n) = decode(&out[pos..]).unwrap();
            got.push(f);
            pos += n;
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn data_header_matches_frame_encoding() {
        let mut a = Vec::new();
        encode_data_header(&mut a, 42, 3);
        a.extend_from_slice(b"xyz");
        let mut b = Vec::new();
        Frame::Data {
            stream: 42,
            data: b"xyz",
        }
        .encode(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for f in all_frames().iter().filter(|f| f.encoded_len() < 1000) {
            let mut out = Vec::new();
            f.encode(&mut out);
            for cut in 0..out.len() {
                assert_eq!(
                    decode(&out[..cut]),
                    Err(FrameError::Incomplete),
                    "{f:?} {cut}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_not_consumed() {
        let mut out = Vec::new();
        Frame::Fin { stream: 1 }.encode(&mut out);
        out.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode(&out).unwrap().1, HEADER_LEN);
    }

    fn raw(ty: u8, stream: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, ty, stream, payload.len() as u16);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn unknown_types() {
        for ty in [0u8, 13, 0x7f, 0xff] {
            assert_eq!(
                decode(&raw(ty, 1, b"")),
                Err(FrameError::UnknownType(ty)),
                "{ty}"
            );
        }
    }

    #[test]
    fn malformed_frames() {
        let long = [b'a'; 64];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw(T_OPEN, 1, b""), "empty service"),
            (raw(T_OPEN, 1, &long), "64-byte service"),
            (raw(T_OPEN, 1, b"Redis"), "upper case"),
            (raw(T_OPEN, 1, b"a b"), "space"),
            (raw(T_OPEN, 1, b"a.b"), "dot"),
            (raw(T_OPEN, 1, &[0xC3, 0xA9]), "non-ascii utf-8"),
            (raw(T_OPEN, 1, &[0xFF]), "invalid utf-8"),
            (raw(T_OPEN, 0, b"svc"), "OPEN on stream 0"),
            (raw(T_OPEN_OK, 1, b"x"), "OPEN_OK payload"),
            (raw(T_OPEN_OK, 0, b""), "OPEN_OK stream 0"),
            (raw(T_OPEN_ERR, 1, b""), "OPEN_ERR no code"),
            (raw(T_OPEN_ERR, 1, b"ab"), "OPEN_ERR two bytes"),
            (raw(T_OPEN_ERR, 0, b"a"), "OPEN_ERR stream 0"),
            (raw(T_DATA, 1, b""), "empty DATA"),
            (raw(T_DATA, 0, b"x"), "DATA stream 0"),
            (raw(T_WINDOW, 1, &[0, 0, 0, 0]), "zero credit"),
            (raw(T_WINDOW, 1, &[0, 0, 1]), "short WINDOW"),
            (raw(T_WINDOW, 1, &[0, 0, 0, 0, 1]), "long WINDOW"),
            (raw(T_WINDOW, 0, &[0, 0, 0, 1]), "WINDOW stream 0"),
            (raw(T_FIN, 1, b"x"), "FIN payload"),
            (raw(T_FIN, 0, b""), "FIN stream 0"),
            (raw(T_RST, 1, b""), "RST no code"),
            (raw(T_RST, 1, b"ab"), "RST two bytes"),
            (raw(T_RST, 0, b"a"), "RST stream 0"),
            (raw(T_PING, 1, &[0; 8]), "PING on a stream"),
            (raw(T_PING, 0, &[0; 7]), "short PING"),
            (raw(T_PING, 0, &[0; 9]), "long PING"),
            (raw(T_PONG, 5, &[0; 8]), "PONG on a stream"),
            (raw(T_PONG, 0, &[0; 4]), "short PONG"),
            (raw(T_GOAWAY, 1, b"a"), "GOAWAY on a stream"),
            (raw(T_GOAWAY, 0, b""), "GOAWAY no reason"),
            (raw(T_GOAWAY, 0, b"ab"), "GOAWAY two bytes"),
            (raw(T_SETTINGS, 3, &[0, 4, 0, 0]), "SETTINGS on a stream"),
            (raw(T_SETTINGS, 0, &[0, 4, 0]), "short SETTINGS"),
            (raw(T_REKEY, 1, &[1; 37]), "REKEY on a stream"),
            (raw(T_REKEY, 0, &[1; 36]), "short REKEY"),
            (raw(T_REKEY, 0, &[1; 38]), "long REKEY"),
            (raw(T_REKEY, 0, &[4; 37]), "REKEY of an unknown step"),
        ];
        for (buf, what) in &cases {
            match decode(buf) {
                Err(FrameError::Malformed { .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn declared_length_beyond_buffer_is_incomplete() {
        let mut buf = raw(T_DATA, 1, b"abc");
        buf[10] = 4; // claims 4 payload bytes, has 3
        assert_eq!(decode(&buf), Err(FrameError::Incomplete));
    }

    #[test]
    fn code_mappings() {
        for c in 0..=255u8 {
            assert_eq!(OpenError::from_code(c).code(), c);
            assert_eq!(ResetCode::from_code(c).code(), c);
        }
        assert_eq!(OpenError::from_code(4), OpenError::TooManyStreams);
        assert_eq!(OpenError::from_code(6), OpenError::Other(6));
        assert_eq!(ResetCode::from_code(3), ResetCode::Protocol);
        assert_eq!(ResetCode::from_code(4), ResetCode::Other(4));
    }
}
