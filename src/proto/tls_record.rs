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
//! Record size: RFC 8446 caps a record's content at 2^14 bytes, and so does this layer,
//! in both directions: middleboxes and IDS drop larger records. One mux record is always
//! exactly one TLS record when sending ([`MAX_MUX_RECORD`]).
//!
//! Key updates (RFC 8446 §4.6.3, §7.2): rustls hands over the traffic secrets along with
//! the keys ([`RecordLayer::set_traffic_secrets`]), so this layer sends KeyUpdate (and
//! switches its sending key right after that record) and follows the peer's (switching its
//! receiving key right after the record that carried it, and answering `update_requested`
//! with a KeyUpdate of its own before its next record). When and how often a link updates
//! is the driver's policy. NewSessionTicket and any other post-handshake message end the
//! link (tickets are off in our configs). Alerts: close_notify is a clean close; any other
//! alert from the peer is named in the error; on a record it refuses, this side sends the
//! matching fatal alert ([`TlsRecordError::alert`]) before it closes.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use ring::aead::{self, Aad, Nonce, NONCE_LEN};
use ring::hkdf::{self, KeyType};
use rustls::{AlertDescription, ConnectionTrafficSecrets, ExtractedSecrets, HandshakeType};
use zeroize::Zeroizing;

use super::aead_key::AeadKey;
use super::handshake::MAX_RECORD_PLAINTEXT;

/// Bytes of a record header: outer type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// AEAD tag bytes per record (all three suites).
pub const TAG_LEN: usize = 16;
/// Most content bytes one record carries (2^14).
pub const MAX_CONTENT: usize = 1 << 14;
/// Largest `length` a record header may carry (2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_CONTENT + 256;
/// Most frame bytes of one mux record on a tls link: with its 2-byte length it fills one
/// TLS record's content exactly, so a mux record is always exactly one TLS record.
///
/// Why not split the Noise mode's 64 KiB mux records over TLS records: that would take
/// four TLS records each, and sealing those in place means moving three quarters of it to
/// open gaps for the inner headers and tags (and closing them again on receive, or
/// assembling a copy). With one mux record per TLS record nothing moves on either side;
/// the cost is a mux record (and a DATA event) per 16 KiB instead of per 64 KiB.
pub const MAX_MUX_RECORD: usize = MAX_CONTENT - 2;

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
/// The handshake message type of a KeyUpdate, and its two `request_update` values.
const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
/// KeyUpdates the peer may send in a row without application data between them (as
/// rustls allows): each costs an HKDF, and a flood of them is no use.
const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;

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
    /// A record length above 2^14 + 256.
    #[error("record of {0} bytes exceeds the {1}-byte limit of TLS records")]
    Oversized(usize, usize),
    /// A record length too short to hold a tag and a content type.
    #[error("record of {0} bytes is too short to hold a tag and a content type")]
    TooShort(usize),
    /// A record failed to authenticate (tampered, replayed, reordered or dropped).
    #[error("record failed to decrypt (tampered, replayed, reordered or dropped)")]
    Decrypt,
    /// A decrypted record longer than 2^14 bytes plus its content type.
    #[error("record plaintext of {0} bytes exceeds the {1}-byte limit of TLS records")]
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
         (only KeyUpdate is; no session tickets)",
        handshake_name(*.0)
    )]
    PostHandshake(Option<u8>),
    /// A KeyUpdate message that is malformed (its `request_update` byte, or its length).
    #[error("malformed KeyUpdate")]
    MalformedKeyUpdate,
    /// A KeyUpdate from the peer while this layer holds no traffic secret to follow it.
    #[error("peer sent a KeyUpdate, but this record layer holds no traffic secret to follow it")]
    NoTrafficSecret,
    /// More KeyUpdates in a row than [`MAX_KEY_UPDATES_IN_A_ROW`] without data between.
    #[error("peer sent more than {MAX_KEY_UPDATES_IN_A_ROW} KeyUpdates in a row")]
    TooManyKeyUpdates,
    /// The traffic secrets given do not produce the keys rustls handed over.
    #[error("the traffic secrets do not match the negotiated keys")]
    SecretMismatch,
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

    /// The fatal alert this side sends before it closes a link over this error (RFC 8446
    /// §6.2), if any: none for the peer's own alerts or for local failures.
    pub fn alert(&self) -> Option<AlertDescription> {
        Some(match self {
            TlsRecordError::Decrypt => AlertDescription::BadRecordMac,
            TlsRecordError::Oversized(..) | TlsRecordError::PlaintextOversized(..) => {
                AlertDescription::RecordOverflow
            }
            TlsRecordError::OuterType(_)
            | TlsRecordError::ContentType(_)
            | TlsRecordError::PostHandshake(_)
            | TlsRecordError::NoContentType
            | TlsRecordError::TooManyKeyUpdates
            | TlsRecordError::NoTrafficSecret => AlertDescription::UnexpectedMessage,
            TlsRecordError::Version(_)
            | TlsRecordError::TooShort(_)
            | TlsRecordError::MalformedAlert(_)
            | TlsRecordError::MalformedKeyUpdate
            | TlsRecordError::MuxRecordLength(_) => AlertDescription::DecodeError,
            TlsRecordError::SequenceExhausted
            | TlsRecordError::Encrypt
            | TlsRecordError::UnsupportedSuite
            | TlsRecordError::BadKey
            | TlsRecordError::SecretMismatch
            | TlsRecordError::ContentTooLarge(..)
            | TlsRecordError::NoRoom => AlertDescription::InternalError,
            TlsRecordError::CloseNotify | TlsRecordError::Alert(_) => return None,
        })
    }
}

/// A TLS 1.3 traffic secret of one direction (RFC 8446 §7.1), kept to make the next one
/// at a key update; wiped on drop.
struct TrafficSecret {
    hash: hkdf::Algorithm,
    secret: Zeroizing<Vec<u8>>,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", len) of RFC 8446 §7.1.
fn expand_label(
    hash: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    let full_len = 6 + label.len();
    let info: [&[u8]; 5] = [
        &(len as u16).to_be_bytes(),
        &[full_len as u8],
        b"tls13 ",
        label,
        &[0],
    ];
    let mut out = Zeroizing::new(vec![0u8; len]);
    // Labels and lengths here are fixed and far below HKDF's limit: this cannot fail.
    prk.expand(&info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-Expand-Label of a key, IV or secret");
    out
}

/// One direction's AEAD key, IV and record sequence number, and the traffic secret they
/// came from once known.
struct Direction {
    alg: &'static aead::Algorithm,
    key: AeadKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
    /// Sequence number of the next record; `None` once all 2^64 are used.
    seq: Option<u64>,
    secret: Option<TrafficSecret>,
}

impl Direction {
    fn new(
        alg: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        seq: u64,
    ) -> Result<Self, TlsRecordError> {
        let key = AeadKey::new(alg, key).map_err(|_| TlsRecordError::BadKey)?;
        let iv: [u8; NONCE_LEN] = iv.try_into().map_err(|_| TlsRecordError::BadKey)?;
        Ok(Self {
            alg,
            key,
            iv: Zeroizing::new(iv),
            seq: Some(seq),
            secret: None,
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

    /// The hash of this direction's cipher suite: SHA-384 for TLS_AES_256_GCM_SHA384,
    /// SHA-256 for the other two.
    fn hash(&self) -> hkdf::Algorithm {
        if std::ptr::eq(self.alg, &aead::AES_256_GCM) {
            hkdf::HKDF_SHA384
        } else {
            hkdf::HKDF_SHA256
        }
    }

    /// Keeps the traffic secret of the keys in use, after checking that it gives them: a
    /// wrong secret would only show at the first key update, as a link that dies.
    fn set_secret(&mut self, secret: &[u8]) -> Result<(), TlsRecordError> {
        let hash = self.hash();
        if secret.len() != hash.len() {
            return Err(TlsRecordError::SecretMismatch);
        }
        let iv = expand_label(hash, secret, b"iv", NONCE_LEN);
        #[allow(deprecated)] // ring's only constant-time comparison; see link::accept.
        let same = ring::constant_time::verify_slices_are_equal(&iv, &self.iv[..]).is_ok();
        if !same {
            return Err(TlsRecordError::SecretMismatch);
        }
        self.secret = Some(TrafficSecret {
            hash,
            secret: Zeroizing::new(secret.to_vec()),
        });
        Ok(())
    }

    /// Moves to the next traffic secret (RFC 8446 §7.2) and its key and IV, from sequence
    /// number 0; the old key, IV and secret are wiped.
    fn update(&mut self) -> Result<(), TlsRecordError> {
        let Some(old) = &self.secret else {
            return Err(TlsRecordError::NoTrafficSecret);
        };
        let hash = old.hash;
        let secret = expand_label(hash, &old.secret, b"traffic upd", hash.len());
        let key = expand_label(hash, &secret, b"key", self.alg.key_len());
        let iv = expand_label(hash, &secret, b"iv", NONCE_LEN);
        let mut next = Self::new(self.alg, &key, &iv, 0)?;
        next.secret = Some(TrafficSecret { hash, secret });
        *self = next;
        Ok(())
    }

    /// The nonce of the next record (the IV XOR the sequence number, RFC 8446 §5.3); moves
    /// past it. A sequence number that would wrap ends the link.
    fn next_nonce(&mut self) -> Result<Nonce, TlsRecordError> {
        let seq = self.seq.ok_or(TlsRecordError::SequenceExhausted)?;
        self.seq = seq.checked_add(1);
        let mut nonce = *self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let nonce = Nonce::assume_unique_for_key(nonce);
        Ok(nonce)
    }
}

/// Both directions' record protection of one link.
pub struct RecordLayer {
    send: Direction,
    recv: Direction,
    /// The peer asked for a KeyUpdate (`update_requested`): this side sends one before its
    /// next record ([`RecordLayer::owes_key_update`]).
    owe_update: bool,
    /// KeyUpdates received since the last application data.
    updates_in_a_row: u32,
    sent_updates: u64,
    received_updates: u64,
}

impl fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordLayer(MASKED)")
    }
}

impl RecordLayer {
    /// Takes over the traffic keys and sequence numbers of a finished rustls handshake.
    /// Records rustls sent or received before count: the sequences go on from there.
    /// Without [`RecordLayer::set_traffic_secrets`] it can neither send nor follow a
    /// KeyUpdate.
    pub fn from_secrets(secrets: ExtractedSecrets) -> Result<Self, TlsRecordError> {
        Ok(Self {
            send: Direction::from_secrets(secrets.tx)?,
            recv: Direction::from_secrets(secrets.rx)?,
            owe_update: false,
            updates_in_a_row: 0,
            sent_updates: 0,
            received_updates: 0,
        })
    }

    /// Gives the traffic secrets the keys in use came from (the handshake's
    /// `*_application_traffic_secret_0`, which rustls reports through its key log), so
    /// that this layer can update its keys. Each must produce the IV in use.
    pub fn set_traffic_secrets(&mut self, tx: &[u8], rx: &[u8]) -> Result<(), TlsRecordError> {
        self.send.set_secret(tx)?;
        self.recv.set_secret(rx)
    }

    /// Whether the peer asked for a KeyUpdate that this side has not sent yet.
    pub fn owes_key_update(&self) -> bool {
        self.owe_update
    }

    /// KeyUpdates sent, and received, on this link.
    pub fn key_updates(&self) -> (u64, u64) {
        (self.sent_updates, self.received_updates)
    }

    /// Appends a KeyUpdate record sealed with the current key, then switches to the next
    /// sending key: every record sealed after it uses the new one. `request` asks the peer
    /// to update its own sending key too.
    pub fn send_key_update(
        &mut self,
        out: &mut Vec<u8>,
        request: bool,
    ) -> Result<(), TlsRecordError> {
        let value = if request {
            UPDATE_REQUESTED
        } else {
            UPDATE_NOT_REQUESTED
        };
        if self.send.secret.is_none() {
            return Err(TlsRecordError::NoTrafficSecret);
        }
        self.seal_all(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, value], out)?;
        self.send.update()?;
        self.owe_update = false;
        self.sent_updates += 1;
        Ok(())
    }

    /// Appends a fatal alert (or, for close_notify, the warning-level closure alert).
    pub fn send_alert(
        &mut self,
        out: &mut Vec<u8>,
        alert: AlertDescription,
    ) -> Result<(), TlsRecordError> {
        let code = u8::from(alert);
        let level = if code == CLOSE_NOTIFY { WARNING } else { FATAL };
        self.seal_all(ALERT, &[level, code], out)
    }

    /// Starts a record at the end of `buf`: appends a header placeholder and returns the
    /// record's start, for [`RecordLayer::seal`] once the content has been appended.
    pub fn begin(buf: &mut Vec<u8>) -> usize {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        start
    }

    /// Seals the record begun at `start` in place (its content is `buf[start + 5..]`, at
    /// most 2^14 bytes): appends the content type, encrypts, appends the tag and fills in
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

    /// Seals `buf[content]` (at most 2^14 content bytes) as one record where it lies: the header
    /// goes into the 5 bytes before it, the content type and the tag into the 17 after it;
    /// returns the record's range. Both must lie inside `buf`.
    pub fn seal_slice(
        &mut self,
        buf: &mut [u8],
        content: std::ops::Range<usize>,
        content_type: u8,
    ) -> Result<std::ops::Range<usize>, TlsRecordError> {
        let len = content.len();
        if len > MAX_CONTENT {
            return Err(TlsRecordError::ContentTooLarge(len, MAX_CONTENT));
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
            .get()
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut buf[sealed.clone()])
            .map_err(|_| TlsRecordError::Encrypt)?;
        buf[sealed.end..sealed.end + TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(start..sealed.end + TAG_LEN)
    }

    /// Appends `data` to `out` as records of `content_type`, of up to 2^14 bytes;
    /// empty `data` is one empty record.
    pub fn seal_all(
        &mut self,
        content_type: u8,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsRecordError> {
        let mut rest = data;
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_CONTENT));
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
    /// header included; `None` until 5 bytes are there. A length over 2^14 + 256 is
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
        if len > MAX_CIPHERTEXT {
            return Err(TlsRecordError::Oversized(len, MAX_CIPHERTEXT));
        }
        if len <= TAG_LEN {
            return Err(TlsRecordError::TooShort(len));
        }
        Ok(Some(HEADER_LEN + len))
    }

    /// Opens one whole record (header and ciphertext, exactly [`RecordLayer::record_len`]
    /// bytes) in place and returns the length of its application data, which then lies at
    /// `record[5..5 + n]`. A KeyUpdate is followed (the records after it are opened with
    /// the next key; one that asks for it makes [`RecordLayer::owes_key_update`] true) and
    /// gives 0 bytes. Every other content type is an error: close_notify is
    /// [`TlsRecordError::CloseNotify`], other alerts are named, other handshake messages
    /// are refused.
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
            .get()
            .open_in_place(nonce, Aad::from(&*header), body)
            .map_err(|_| TlsRecordError::Decrypt)?;
        let max = MAX_CONTENT + 1;
        if plain.len() > max {
            return Err(TlsRecordError::PlaintextOversized(plain.len(), max));
        }
        // TLSInnerPlaintext: content ‖ type ‖ zero padding.
        let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(TlsRecordError::NoContentType);
        };
        let content = &plain[..type_at];
        match plain[type_at] {
            APPLICATION_DATA => {
                self.updates_in_a_row = 0;
                Ok(type_at)
            }
            ALERT => Err(match *content {
                [WARNING | FATAL, CLOSE_NOTIFY] => TlsRecordError::CloseNotify,
                [_, description] => TlsRecordError::Alert(AlertDescription::from(description)),
                _ => TlsRecordError::MalformedAlert(content.len()),
            }),
            HANDSHAKE => match *content {
                // One whole KeyUpdate, alone in its record: RFC 8446 §5.1 forbids a
                // handshake message across a key change.
                [KEY_UPDATE, 0, 0, 1, request] => {
                    if request > UPDATE_REQUESTED {
                        return Err(TlsRecordError::MalformedKeyUpdate);
                    }
                    self.updates_in_a_row += 1;
                    if self.updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
                        return Err(TlsRecordError::TooManyKeyUpdates);
                    }
                    self.recv.update()?;
                    self.received_updates += 1;
                    if request == UPDATE_REQUESTED {
                        self.owe_update = true;
                    }
                    Ok(0)
                }
                [KEY_UPDATE, ..] => Err(TlsRecordError::MalformedKeyUpdate),
                _ => Err(TlsRecordError::PostHandshake(content.first().copied())),
            },
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
/// [`MAX_MUX_RECORD`] frame bytes).
///
/// Receiving accepts any split of the byte stream into TLS records: a mux record within one
/// TLS record (always, from this code) is handed on as a slice of the read buffer; one that
/// spans TLS records (from another TLS stack, such as a client writing mux records through
/// rustls) is assembled, a copy.
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
    /// placeholders) and returns its start; at most [`MAX_MUX_RECORD`] frame bytes
    /// follow.
    pub fn begin_record(buf: &mut Vec<u8>) -> usize {
        let start = RecordLayer::begin(buf);
        buf.extend_from_slice(&[0, 0]);
        start
    }

    /// The record layer.
    pub fn layer(&self) -> &RecordLayer {
        &self.layer
    }

    /// The record layer, for key updates and alerts.
    pub fn layer_mut(&mut self) -> &mut RecordLayer {
        &mut self.layer
    }

    /// See [`RecordLayer::owes_key_update`].
    pub fn owes_key_update(&self) -> bool {
        self.layer.owes_key_update()
    }

    /// See [`RecordLayer::record_len`].
    pub fn record_len(&self, input: &[u8]) -> Result<Option<usize>, TlsRecordError> {
        self.layer.record_len(input)
    }

    /// Seals the mux record begun at `start` as one TLS record, in place.
    pub fn seal_record(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), TlsRecordError> {
        let at = start + HEADER_LEN;
        let frames = buf.len() - at - 2;
        if frames == 0 || frames > MAX_MUX_RECORD {
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
        if len == 0 || len > MAX_MUX_RECORD {
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
        self.layer.send_alert(buf, AlertDescription::CloseNotify)
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
