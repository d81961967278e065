//! The record layer of an established link: `u16 length ‖ AEAD ciphertext`, one Noise
//! transport message per record. Any AEAD or nonce error is fatal: there is no resync.
//!
//! The cipher states are Noise's (AES-256-GCM, 96-bit nonce = 32 zero bits ‖ 64-bit
//! big-endian counter, empty associated data, keys from the handshake's Split()), run
//! through ring directly rather than through snow's `TransportState`, because snow's
//! transport copies every message into a separate output buffer before sealing or opening
//! it in place. Here the multiplexer writes frames straight into the socket buffer, which
//! is sealed where it lies, and a received record is opened inside the read buffer and
//! handed on without a copy. A test checks that the bytes on the wire are exactly what
//! snow's own transport produces and accepts.

use std::fmt;

use ring::aead::{Aad, Nonce, AES_256_GCM};
use zeroize::{Zeroize, Zeroizing};

use super::HandshakeError;
use crate::proto::aead_key::AeadKey;
use crate::proto::rekey::{self, NewKey};

/// AEAD tag bytes per record.
pub const TAG_LEN: usize = 16;
/// Largest ciphertext of one record (the Noise message limit).
pub const MAX_RECORD_CIPHERTEXT: usize = 65535;
/// Largest plaintext of one record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_CIPHERTEXT - TAG_LEN;

/// Record-layer failures; each one ends the link.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A record failed to authenticate (tampering, wrong key, replayed or reordered record).
    #[error("record failed to decrypt")]
    Decrypt,
    /// A record shorter than its tag, or a plaintext larger than the limit.
    #[error("record of {0} bytes is out of bounds")]
    Size(usize),
    /// Encryption failed, or the nonce space is used up (2^64 - 1 records).
    #[error("record encryption failed")]
    Encrypt,
    /// A buffer to seal in place without room for the length or tag (a caller bug).
    #[error("no room around the record to seal it in place")]
    NoRoom,
}

/// One direction's Noise cipher state; its key schedule is wiped when it is replaced or
/// dropped.
struct CipherState {
    key: AeadKey,
    nonce: u64,
}

impl CipherState {
    fn new(raw: &[u8; 32]) -> Result<Self, HandshakeError> {
        let key = AeadKey::new(&AES_256_GCM, raw)
            .map_err(|_| HandshakeError::Local("bad transport key".into()))?;
        Ok(Self { key, nonce: 0 })
    }

    /// The next nonce; Noise reserves 2^64 - 1, so the link must end before it.
    fn next_nonce(&mut self) -> Option<Nonce> {
        if self.nonce == u64::MAX {
            return None;
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.nonce.to_be_bytes());
        self.nonce += 1;
        Some(Nonce::assume_unique_for_key(n))
    }
}

/// Both directions' cipher states of one link.
pub struct Session {
    send: CipherState,
    recv: CipherState,
    /// The first chain value of the link's re-keys ([`rekey`]), until the driver takes it.
    rekey_chain: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Session(MASKED)")
    }
}

impl Session {
    pub(super) fn from_handshake(mut state: snow::HandshakeState) -> Result<Self, HandshakeError> {
        if !state.is_handshake_finished() {
            return Err(HandshakeError::Local("handshake not finished".into()));
        }
        // Split(): the initiator sends with the first key, the responder with the second.
        let (mut k1, mut k2) = state.dangerously_get_raw_split();
        let chain = rekey::initial_chain(state.get_handshake_hash(), &k1, &k2);
        let (send, recv) = if state.is_initiator() {
            (&k1, &k2)
        } else {
            (&k2, &k1)
        };
        let (send, recv) = (CipherState::new(send), CipherState::new(recv));
        k1.zeroize();
        k2.zeroize();
        Ok(Self {
            send: send?,
            recv: recv?,
            rekey_chain: chain,
        })
    }

    /// Takes the first chain value of this link's re-keys; the session keeps zeros (the
    /// driver takes it once, when the link starts).
    pub fn take_rekey_chain(&mut self) -> Zeroizing<[u8; 32]> {
        std::mem::take(&mut self.rekey_chain)
    }

    /// Seals every later record with `key`, from nonce 0; the old key is wiped.
    pub fn switch_send(&mut self, key: &NewKey) -> Result<(), HandshakeError> {
        self.send = CipherState::new(key.bytes())?;
        Ok(())
    }

    /// Opens every later record with `key`, from nonce 0; the old key is wiped.
    pub fn switch_recv(&mut self, key: &NewKey) -> Result<(), HandshakeError> {
        self.recv = CipherState::new(key.bytes())?;
        Ok(())
    }

    /// Starts a record at the end of `buf`: appends the 2-byte length placeholder and
    /// returns the record's start, for [`Session::seal_record`] once the plaintext has
    /// been appended after it.
    pub fn begin_record(buf: &mut Vec<u8>) -> usize {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0]);
        start
    }

    /// Seals the record begun at `start` (its plaintext is `buf[start + 2..]`) in place:
    /// fills in the length and appends the tag.
    pub fn seal_record(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), RecordError> {
        let plain = start + 2..buf.len();
        // Room for the tag, then sealed where it lies.
        buf.resize(plain.end + TAG_LEN, 0);
        match self.seal_slice(buf, plain) {
            Ok(_) => Ok(()),
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Seals the plaintext `buf[plain]` as one record where it lies: writes the length
    /// into the 2 bytes before it and the tag into the 16 after it, and returns the
    /// record's range. Both must lie inside `buf` (see [`crate::proto::chunk`]).
    pub fn seal_slice(
        &mut self,
        buf: &mut [u8],
        plain: std::ops::Range<usize>,
    ) -> Result<std::ops::Range<usize>, RecordError> {
        let plain_len = plain.len();
        if plain_len > MAX_RECORD_PLAINTEXT {
            return Err(RecordError::Size(plain_len));
        }
        if plain.start < 2 || buf.len().saturating_sub(plain.end) < TAG_LEN {
            return Err(RecordError::NoRoom);
        }
        let nonce = self.send.next_nonce().ok_or(RecordError::Encrypt)?;
        let tag = self
            .send
            .key
            .get()
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut buf[plain.clone()])
            .map_err(|_| RecordError::Encrypt)?;
        buf[plain.end..plain.end + TAG_LEN].copy_from_slice(tag.as_ref());
        let ct_len = (plain_len + TAG_LEN) as u16;
        buf[plain.start - 2..plain.start].copy_from_slice(&ct_len.to_be_bytes());
        Ok(plain.start - 2..plain.end + TAG_LEN)
    }

    /// Encrypts `plain` as one record and appends `u16 len ‖ ciphertext` to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let start = Self::begin_record(out);
        out.extend_from_slice(plain);
        self.seal_record(out, start)
    }

    /// Opens one record's ciphertext (without its length prefix) in place; returns the
    /// plaintext length (the plaintext is `ciphertext[..n]`).
    pub fn open_in_place(&mut self, ciphertext: &mut [u8]) -> Result<usize, RecordError> {
        if ciphertext.len() < TAG_LEN {
            return Err(RecordError::Size(ciphertext.len()));
        }
        let nonce = self.recv.next_nonce().ok_or(RecordError::Decrypt)?;
        self.recv
            .key
            .get()
            .open_in_place(nonce, Aad::empty(), ciphertext)
            .map(|plain| plain.len())
            .map_err(|_| RecordError::Decrypt)
    }
}
