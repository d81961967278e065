//! The record layer of an established link: `u16 length ‖ AEAD ciphertext`, one Noise
//! transport message per record. Any AEAD or nonce error is fatal: there is no resync.

use std::fmt;

use super::HandshakeError;

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
    /// Encryption failed (nonce exhausted).
    #[error("record encryption failed")]
    Encrypt,
}

/// Both directions' cipher states of one link.
pub struct Session {
    transport: snow::TransportState,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Session(MASKED)")
    }
}

impl Session {
    pub(super) fn from_handshake(state: snow::HandshakeState) -> Result<Self, HandshakeError> {
        let transport = state
            .into_transport_mode()
            .map_err(|e| HandshakeError::Local(e.to_string()))?;
        Ok(Self { transport })
    }

    /// Encrypts `plain` as one record and appends `u16 len ‖ ciphertext` to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if plain.len() > MAX_RECORD_PLAINTEXT {
            return Err(RecordError::Size(plain.len()));
        }
        let ct_len = plain.len() + TAG_LEN;
        let start = out.len();
        out.resize(start + 2 + ct_len, 0);
        out[start..start + 2].copy_from_slice(&(ct_len as u16).to_be_bytes());
        match self.transport.write_message(plain, &mut out[start + 2..]) {
            Ok(n) if n == ct_len => Ok(()),
            _ => {
                out.truncate(start);
                Err(RecordError::Encrypt)
            }
        }
    }

    /// Decrypts one record's ciphertext (without its length prefix) into `out`, which must
    /// hold at least `ciphertext.len() - TAG_LEN` bytes; returns the plaintext length.
    pub fn open(&mut self, ciphertext: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if ciphertext.len() < TAG_LEN {
            return Err(RecordError::Size(ciphertext.len()));
        }
        self.transport
            .read_message(ciphertext, out)
            .map_err(|_| RecordError::Decrypt)
    }
}
