//! The TLS 1.3 record protocol (RFC 8446 §5) of an established `tls` link, sans I/O: the
//! handshake runs in rustls, whose traffic keys are then extracted, and every later record
//! is sealed and opened here with ring's AEADs, in place, as the Noise record layer does
//! ([`super::handshake::Session`]). Through rustls's buffered connection every record
//! was copied on its way (frames into a plaintext buffer, into rustls's record buffer, into
//! the socket buffer; received bytes into rustls, and the plaintext out again); here the
//! multiplexer writes frames straight into the socket buffer, which is sealed where it
//! lies, and a received record is opened inside the read buffer and handed on without a
//! copy.
//!
//! The bytes on the wire are rustls's own (a test checks both directions against a live
//! rustls connection for each cipher suite): header `0x17 0x03 0x03 ‖ u16 length`,
//! `length` counting the ciphertext with its 16-byte tag; the sealed plaintext is
//! `content ‖ content type` (no padding sent; received padding is stripped); the header is
//! the associated data; the nonce is the IV XOR the 64-bit record sequence number.
//!
//! On top of the records, [`TlsRecords`] carries the link's byte stream of mux records
//! (`u16 length ‖ frames`), the same stream as any TLS peer writing mux records through a
//! TLS library would produce, so older meshd versions (rustls's buffered API) interoperate.
//!
//! Record size: RFC 8446 caps a record's content at 2^14 bytes, so a 64 KiB mux record
//! would take four TLS records. Two meshd ends agree in the handshake (ALPN
//! [`LARGE_RECORDS_ALPN`], which the handshake authenticates) on records as large as the
//! header's 16-bit length allows, 2^16 - 1 ciphertext bytes, in the same format: then one
//! mux record of the Noise modes' size is one TLS record, sealed in place like theirs. A
//! peer that does not offer it (an older meshd, any other TLS stack) gets standard records
//! ([`RecordLimit`]). AES-GCM's limits are per byte, not per record, so larger records
//! change nothing about how much one key may protect.
//!
//! Not supported after the handshake, by design: KeyUpdate and NewSessionTicket (this side
//! never sends them and, with only the extracted keys, cannot follow a key update; tickets
//! are off in our configs). Either one from the peer ends the link with an error.
//! The link never updates its keys either, as the Noise mode never rekeys, although RFC
//! 8446 §5.5 advises a key update before 2^24.5 full-size AES-GCM records (about 360 GiB in
//! one direction); rustls-based peers (older meshd versions) send one after 2^24 records,
//! which ends the link.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{AlertDescription, ConnectionTrafficSecrets, ExtractedSecrets, HandshakeType};
use zeroize::Zeroize;

use super::handshake::MAX_RECORD_PLAINTEXT;

/// Bytes of a record header: outer type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// AEAD tag bytes per record (all three suites).
pub const TAG_LEN: usize = 16;
/// Most content bytes one record carries (2^14).
pub const MAX_CONTENT: usize = 1 << 14;
/// Largest `length` a record header may carry (2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_CONTENT + 256;
/// Most frame bytes of one mux record on a tls link with standard records: with its 2-byte
/// length it fills one TLS record's content exactly, so a mux record is always exactly one
/// TLS record.
///
/// Why not split the Noise mode's 64 KiB mux records over standard records: that would
/// take four TLS records each, and sealing those in place means moving three quarters of
/// it to open gaps for the inner headers and tags (and closing them again on receive, or
/// assembling a copy). With one mux record per TLS record nothing moves on either side;
/// the cost is a mux record (and a DATA event) per 16 KiB instead of per 64 KiB. Two meshd
/// ends avoid that cost with large records ([`RecordLimit::Large`]).
pub const MAX_MUX_RECORD: usize = MAX_CONTENT - 2;
/// The ALPN protocol by which a meshd end offers, and accepts, large records.
pub const LARGE_RECORDS_ALPN: &[u8] = b"meshd-large-records/1";
/// Largest `length` of a large record: all the header's 16 bits.
pub const LARGE_MAX_CIPHERTEXT: usize = u16::MAX as usize;
/// Most content bytes of a large record: its ciphertext less the tag and the content type.
pub const LARGE_MAX_CONTENT: usize = LARGE_MAX_CIPHERTEXT - TAG_LEN - 1;

/// How large the records of one link may be, as its handshake agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordLimit {
    /// RFC 8446's: content up to 2^14 bytes, ciphertext up to 2^14 + 256.
    Standard,
    /// Both ends negotiated [`LARGE_RECORDS_ALPN`]: content up to [`LARGE_MAX_CONTENT`].
    Large,
}

impl RecordLimit {
    /// The limit a finished handshake agreed on, from the ALPN protocol it negotiated.
    pub fn negotiated(alpn: Option<&[u8]>) -> Self {
        if alpn == Some(LARGE_RECORDS_ALPN) {
            RecordLimit::Large
        } else {
            RecordLimit::Standard
        }
    }

    /// Most content bytes one record carries.
    pub fn max_content(self) -> usize {
        match self {
            RecordLimit::Standard => MAX_CONTENT,
            RecordLimit::Large => LARGE_MAX_CONTENT,
        }
    }

    /// Largest `length` a record header may carry.
    pub fn max_ciphertext(self) -> usize {
        match self {
            RecordLimit::Standard => MAX_CIPHERTEXT,
            RecordLimit::Large => LARGE_MAX_CIPHERTEXT,
        }
    }

    /// Most frame bytes of one mux record, which always fills one TLS record at most.
    pub fn max_mux_record(self) -> usize {
        self.max_content() - 2
    }

    /// A label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordLimit::Standard => "standard",
            RecordLimit::Large => "large",
        }
    }
}

/// Content type of application data; also the outer type of every protected record.
pub const APPLICATION_DATA: u8 = 0x17;
/// Content type of an alert.
pub const ALERT: u8 = 0x15;
/// Content type of a handshake message.
pub const HANDSHAKE: u8 = 0x16;
/// The legacy record version every TLS 1.3 record carries.
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];
/// An alert's level byte: warning, fatal.
const WARNING: u8 = 1;
const FATAL: u8 = 2;
/// The close_notify alert description.
const CLOSE_NOTIFY: u8 = 0;

/// Record-layer failures; each one ends the link.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TlsRecordError {
    /// The handshake negotiated an AEAD this layer does not run.
    #[error(
        "the negotiated cipher suite is none of TLS_AES_128_GCM_SHA256, \
         TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256"
    )]
    UnsupportedSuite,
    /// A traffic key or IV of the wrong length for its AEAD.
    #[error("traffic key or IV of the wrong length")]
    BadKey,
    /// A record whose outer type is not application data (every protected record's is).
    #[error("record of outer content type {0:#04x}, not application data (0x17)")]
    OuterType(u8),
    /// A record whose legacy version is not 0x0303.
    #[error("record of version {0:#06x}, not 0x0303")]
    Version(u16),
    /// A record length above the link's limit (2^14 + 256 for standard records).
    #[error("record of {0} bytes exceeds the {1}-byte limit of this link's records")]
    Oversized(usize, usize),
    /// A record length too short to hold a tag and a content type.
    #[error("record of {0} bytes is too short to hold a tag and a content type")]
    TooShort(usize),
    /// A record failed to authenticate (tampered, replayed, reordered or dropped).
    #[error("record failed to decrypt (tampered, replayed, reordered or dropped)")]
    Decrypt,
    /// A decrypted record longer than the link's content limit plus its content type.
    #[error("record plaintext of {0} bytes exceeds the {1}-byte limit of this link's records")]
    PlaintextOversized(usize, usize),
    /// A decrypted record of zeros only: no content type.
    #[error("record has no content type (padding only)")]
    NoContentType,
    /// The peer closed its side with a close_notify alert.
    #[error("peer sent close_notify")]
    CloseNotify,
    /// The peer sent an alert other than close_notify.
    #[error("peer sent alert {0:?}")]
    Alert(AlertDescription),
    /// An alert record whose content is not 2 bytes.
    #[error("malformed alert of {0} bytes")]
    MalformedAlert(usize),
    /// The peer sent a handshake message after the handshake (its first byte, the type,
    /// if any).
    #[error(
        "peer sent a post-handshake message ({}), which meshd's tls links do not support \
         (no traffic secret to follow a key update, no session tickets)",
        handshake_name(*.0)
    )]
    PostHandshake(Option<u8>),
    /// A record of a content type other than application data, alert or handshake.
    #[error("record of content type {0:#04x}")]
    ContentType(u8),
    /// The 2^64 record sequence numbers of one direction are used up.
    #[error("record sequence number exhausted")]
    SequenceExhausted,
    /// The AEAD refused to seal.
    #[error("record encryption failed")]
    Encrypt,
    /// More content than one record carries (a caller bug).
    #[error("{0} content bytes do not fit one record (at most {1})")]
    ContentTooLarge(usize, usize),
    /// A mux record length prefix that is zero or too large.
    #[error("mux record length {0} out of bounds")]
    MuxRecordLength(usize),
    /// A buffer to seal in place without room for the header or tag (a caller bug).
    #[error("no room around the record to seal it in place")]
    NoRoom,
}

fn handshake_name(typ: Option<u8>) -> String {
    match typ {
        Some(t) => format!("{:?}", HandshakeType::from(t)),
        None => "empty".to_owned(),
    }
}

impl TlsRecordError {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TlsRecordError::Decrypt | TlsRecordError::SequenceExhausted => "decrypt",
            TlsRecordError::Alert(_) | TlsRecordError::CloseNotify => "tls_alert",
            TlsRecordError::Oversized(..)
            | TlsRecordError::PlaintextOversized(..)
            | TlsRecordError::MuxRecordLength(_) => "oversized",
            _ => "tls",
        }
    }
}

/// One direction's AEAD key, IV and record sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    /// Sequence number of the next record; `None` once all 2^64 are used.
    seq: Option<u64>,
}

impl Drop for Direction {
    fn drop(&mut self) {
        // ring keeps its expanded key to itself; the IV is ours to wipe.
        self.iv.zeroize();
    }
}

impl Direction {
    fn new(
        alg: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        seq: u64,
    ) -> Result<Self, TlsRecordError> {
        let key = UnboundKey::new(alg, key).map_err(|_| TlsRecordError::BadKey)?;
        let iv = iv.try_into().map_err(|_| TlsRecordError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq: Some(seq),
        })
    }

    fn from_secrets(
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> Result<Self, TlsRecordError> {
        // rustls wipes its key buffer when `secrets` drops at the end of this function.
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(TlsRecordError::UnsupportedSuite),
        };
        Self::new(alg, key.as_ref(), iv.as_ref(), seq)
    }

    /// The nonce of the next record (the IV XOR the sequence number, RFC 8446 §5.3); moves
    /// past it. A sequence number that would wrap ends the link.
    fn next_nonce(&mut self) -> Result<Nonce, TlsRecordError> {
        let seq = self.seq.ok_or(TlsRecordError::SequenceExhausted)?;
        self.seq = seq.checked_add(1);
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// Both directions' record protection of one link.
pub struct RecordLayer {
    send: Direction,
    recv: Direction,
    limit: RecordLimit,
}

impl fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordLayer(MASKED)")
    }
}

impl RecordLayer {
    /// Takes over the traffic keys and sequence numbers of a finished rustls handshake,
    /// whose negotiation set `limit` for both directions. Records rustls sent or received
    /// before count: the sequences go on from there.
    pub fn from_secrets(
        secrets: ExtractedSecrets,
        limit: RecordLimit,
    ) -> Result<Self, TlsRecordError> {
        Ok(Self {
            send: Direction::from_secrets(secrets.tx)?,
            recv: Direction::from_secrets(secrets.rx)?,
            limit,
        })
    }

    /// The size limit of this link's records.
    pub fn limit(&self) -> RecordLimit {
        self.limit
    }

    /// Starts a record at the end of `buf`: appends a header placeholder and returns the
    /// record's start, for [`RecordLayer::seal`] once the content has been appended.
    pub fn begin(buf: &mut Vec<u8>) -> usize {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        start
    }

    /// Seals the record begun at `start` in place (its content is `buf[start + 5..]`, at
    /// most the limit's content bytes): appends the content type, encrypts, appends the tag and fills in
    /// the header. On error the record is removed from `buf`.
    pub fn seal(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        content_type: u8,
    ) -> Result<(), TlsRecordError> {
        let content = start + HEADER_LEN..buf.len();
        // Room for the content type and the tag, then sealed where it lies.
        buf.resize(content.end + 1 + TAG_LEN, 0);
        match self.seal_slice(buf, content, content_type) {
            Ok(_) => Ok(()),
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Seals `buf[content]` (at most the limit's content bytes) as one record where it lies: the header
    /// goes into the 5 bytes before it, the content type and the tag into the 17 after it;
    /// returns the record's range. Both must lie inside `buf`.
    pub fn seal_slice(
        &mut self,
        buf: &mut [u8],
        content: std::ops::Range<usize>,
        content_type: u8,
    ) -> Result<std::ops::Range<usize>, TlsRecordError> {
        let len = content.len();
        let max = self.limit.max_content();
        if len > max {
            return Err(TlsRecordError::ContentTooLarge(len, max));
        }
        if content.start < HEADER_LEN || buf.len().saturating_sub(content.end) < 1 + TAG_LEN {
            return Err(TlsRecordError::NoRoom);
        }
        let nonce = self.send.next_nonce()?;
        let [hi, lo] = ((len + 1 + TAG_LEN) as u16).to_be_bytes();
        let header = [
            APPLICATION_DATA,
            LEGACY_VERSION[0],
            LEGACY_VERSION[1],
            hi,
            lo,
        ];
        let start = content.start - HEADER_LEN;
        buf[start..content.start].copy_from_slice(&header);
        buf[content.end] = content_type;
        let sealed = content.start..content.end + 1;
        let tag = self
            .send
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut buf[sealed.clone()])
            .map_err(|_| TlsRecordError::Encrypt)?;
        buf[sealed.end..sealed.end + TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(start..sealed.end + TAG_LEN)
    }

    /// Appends `data` to `out` as records of `content_type`, as large as the limit allows;
    /// empty `data` is one empty record.
    pub fn seal_all(
        &mut self,
        content_type: u8,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsRecordError> {
        let mut rest = data;
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(self.limit.max_content()));
            let start = Self::begin(out);
            out.extend_from_slice(chunk);
            self.seal(out, start, content_type)?;
            rest = tail;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Checks the header at the start of `input` and returns the whole record's length,
    /// header included; `None` until 5 bytes are there. A length over the link's limit is
    /// refused before its record has arrived.
    pub fn record_len(&self, input: &[u8]) -> Result<Option<usize>, TlsRecordError> {
        let Some(h) = input.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if h[0] != APPLICATION_DATA {
            return Err(TlsRecordError::OuterType(h[0]));
        }
        if h[1..3] != LEGACY_VERSION {
            return Err(TlsRecordError::Version(u16::from_be_bytes([h[1], h[2]])));
        }
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        let max = self.limit.max_ciphertext();
        if len > max {
            return Err(TlsRecordError::Oversized(len, max));
        }
        if len <= TAG_LEN {
            return Err(TlsRecordError::TooShort(len));
        }
        Ok(Some(HEADER_LEN + len))
    }

    /// Opens one whole record (header and ciphertext, exactly [`RecordLayer::record_len`]
    /// bytes) in place and returns the length of its application data, which then lies at
    /// `record[5..5 + n]`. Every other content type is an error: close_notify is
    /// [`TlsRecordError::CloseNotify`], other alerts are named, handshake messages are
    /// refused.
    pub fn open(&mut self, record: &mut [u8]) -> Result<usize, TlsRecordError> {
        match self.record_len(record)? {
            Some(len) if len == record.len() => {}
            _ => return Err(TlsRecordError::TooShort(record.len())),
        }
        let nonce = self.recv.next_nonce()?;
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let plain = self
            .recv
            .key
            .open_in_place(nonce, Aad::from(&*header), body)
            .map_err(|_| TlsRecordError::Decrypt)?;
        let max = self.limit.max_content() + 1;
        if plain.len() > max {
            return Err(TlsRecordError::PlaintextOversized(plain.len(), max));
        }
        // TLSInnerPlaintext: content ‖ type ‖ zero padding.
        let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(TlsRecordError::NoContentType);
        };
        let content = &plain[..type_at];
        match plain[type_at] {
            APPLICATION_DATA => Ok(type_at),
            ALERT => Err(match *content {
                [WARNING | FATAL, CLOSE_NOTIFY] => TlsRecordError::CloseNotify,
                [_, description] => TlsRecordError::Alert(AlertDescription::from(description)),
                _ => TlsRecordError::MalformedAlert(content.len()),
            }),
            HANDSHAKE => Err(TlsRecordError::PostHandshake(content.first().copied())),
            other => Err(TlsRecordError::ContentType(other)),
        }
    }
}

/// The length of the mux record at the start of `buf`, once its 2-byte prefix is there.
fn mux_len(buf: &[u8]) -> Result<Option<usize>, TlsRecordError> {
    let Some(&[hi, lo]) = buf.get(..2) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([hi, lo]) as usize;
    if len == 0 || len > MAX_RECORD_PLAINTEXT {
        return Err(TlsRecordError::MuxRecordLength(len));
    }
    Ok(Some(len))
}

/// A tls link's record layer as its driver uses it: mux records (`u16 length ‖ frames`)
/// carried as TLS application data, one mux record per TLS record when sending (at most
/// [`RecordLimit::max_mux_record`] frame bytes).
///
/// Receiving accepts any split of the byte stream into TLS records: a mux record within one
/// TLS record (always, from this code) is handed on as a slice of the read buffer; one that
/// spans TLS records (from older meshd versions, whose rustls split 64 KiB mux records into
/// four) is assembled, a copy.
pub struct TlsRecords {
    layer: RecordLayer,
    /// Opened application data not yet handed on: a slice of the read buffer.
    plain: Bytes,
    /// The beginning of a mux record that continues in a later TLS record.
    partial: BytesMut,
}

impl fmt::Debug for TlsRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsRecords")
            .field("layer", &self.layer)
            .field("buffered", &(self.plain.len() + self.partial.len()))
            .finish()
    }
}

impl TlsRecords {
    /// The record layer of a link whose first application data bytes, if any (`received`),
    /// were already decrypted by the handshake's TLS library.
    pub fn new(layer: RecordLayer, received: Bytes) -> Self {
        Self {
            layer,
            plain: received,
            partial: BytesMut::new(),
        }
    }

    /// Starts a mux record at the end of `buf` (a TLS header and the mux length
    /// placeholders) and returns its start; at most [`Self::max_mux_record`] frame bytes
    /// follow.
    pub fn begin_record(buf: &mut Vec<u8>) -> usize {
        let start = RecordLayer::begin(buf);
        buf.extend_from_slice(&[0, 0]);
        start
    }

    /// Most frame bytes of one mux record on this link.
    pub fn max_mux_record(&self) -> usize {
        self.layer.limit.max_mux_record()
    }

    /// The size limit of this link's records.
    pub fn limit(&self) -> RecordLimit {
        self.layer.limit
    }

    /// See [`RecordLayer::record_len`].
    pub fn record_len(&self, input: &[u8]) -> Result<Option<usize>, TlsRecordError> {
        self.layer.record_len(input)
    }

    /// Seals the mux record begun at `start` as one TLS record, in place.
    pub fn seal_record(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), TlsRecordError> {
        let at = start + HEADER_LEN;
        let frames = buf.len() - at - 2;
        if frames == 0 || frames > self.max_mux_record() {
            buf.truncate(start);
            return Err(TlsRecordError::MuxRecordLength(frames));
        }
        buf[at..at + 2].copy_from_slice(&(frames as u16).to_be_bytes());
        self.layer.seal(buf, start, APPLICATION_DATA)
    }

    /// Seals the frames `buf[frames]` as one mux record in one TLS record where they lie:
    /// the mux length and TLS header go into the 7 bytes before them, the content type and
    /// tag into the 17 after them; returns the record's range.
    pub fn seal_slice(
        &mut self,
        buf: &mut [u8],
        frames: std::ops::Range<usize>,
    ) -> Result<std::ops::Range<usize>, TlsRecordError> {
        let len = frames.len();
        if len == 0 || len > self.max_mux_record() {
            return Err(TlsRecordError::MuxRecordLength(len));
        }
        if frames.start < HEADER_LEN + 2 {
            return Err(TlsRecordError::NoRoom);
        }
        buf[frames.start - 2..frames.start].copy_from_slice(&(len as u16).to_be_bytes());
        self.layer
            .seal_slice(buf, frames.start - 2..frames.end, APPLICATION_DATA)
    }

    /// Appends a close_notify alert.
    pub fn close(&mut self, buf: &mut Vec<u8>) -> Result<(), TlsRecordError> {
        self.layer.seal_all(ALERT, &[WARNING, CLOSE_NOTIFY], buf)
    }

    /// Whether opened application data waits to be taken.
    pub fn has_plaintext(&self) -> bool {
        !self.plain.is_empty() || !self.partial.is_empty()
    }

    /// Opens records from the front of `input` until some application data is buffered or
    /// no whole record is left; returns whether data is buffered.
    pub fn open_until_data(&mut self, input: &mut BytesMut) -> Result<bool, TlsRecordError> {
        while !self.has_plaintext() {
            if !self.open_next(input)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next whole mux record (its frames), opening TLS records from the front of
    /// `input` as needed; `None` when `input` holds no further whole TLS record.
    pub fn next_record(&mut self, input: &mut BytesMut) -> Result<Option<Bytes>, TlsRecordError> {
        loop {
            if self.partial.is_empty() {
                if let Some(len) = mux_len(&self.plain)? {
                    if self.plain.len() >= 2 + len {
                        let record = self.plain.slice(2..2 + len);
                        self.plain.advance(2 + len);
                        if self.plain.is_empty() {
                            // Let go of the read buffer, so it can reuse its space.
                            self.plain = Bytes::new();
                        }
                        return Ok(Some(record));
                    }
                }
                if !self.plain.is_empty() {
                    let whole = mux_len(&self.plain)?.map_or(2, |len| 2 + len);
                    self.partial.reserve(whole);
                    self.partial.extend_from_slice(&self.plain);
                    self.plain = Bytes::new();
                }
            } else if !self.plain.is_empty() {
                let whole = mux_len(&self.partial)?.map_or(2, |len| 2 + len);
                let take = (whole - self.partial.len()).min(self.plain.len());
                self.partial.extend_from_slice(&self.plain[..take]);
                self.plain.advance(take);
                if let Some(len) = mux_len(&self.partial)? {
                    if self.partial.len() == 2 + len {
                        let mut record = self.partial.split();
                        record.advance(2);
                        return Ok(Some(record.freeze()));
                    }
                }
                // The length just became known, or this TLS record is used up.
                continue;
            }
            if !self.open_next(input)? {
                return Ok(None);
            }
        }
    }

    /// Opens the TLS record at the front of `input`, if whole, into `plain` (which must be
    /// empty).
    fn open_next(&mut self, input: &mut BytesMut) -> Result<bool, TlsRecordError> {
        debug_assert!(self.plain.is_empty());
        let Some(len) = self.layer.record_len(input)? else {
            return Ok(false);
        };
        if input.len() < len {
            return Ok(false);
        }
        let mut record = input.split_to(len);
        let n = self.layer.open(&mut record)?;
        record.advance(HEADER_LEN);
        record.truncate(n);
        self.plain = record.freeze();
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
