//! Link handshakes, sans I/O: the cleartext preamble, then a two-message Noise handshake
//! (`noise`: IKpsk2, `psk`: NNpsk0), yielding the authenticated peer and a [`Session`] for
//! the record layer.
//!
//! Wire: the dialer sends `preamble ‖ u16 len ‖ msg1`, the acceptor answers `u16 len ‖ msg2`.
//! msg1 carries only a timestamp (IK's first message can be replayed, so it must never
//! carry stream data); the acceptor rejects a timestamp not newer than the last one it
//! accepted from that peer. The caller owns that high-water mark (it is persisted).
//! The prologue binds protocol version, mode, mesh id and both names, so a handshake made
//! for another mesh, another pair or another mode never completes.

use std::fmt;

use crate::config::{AuthMode, PeerName};
use crate::keys::{PairKey, PrivateKey, PublicKey};

mod resolver;
mod session;

pub use session::{RecordError, Session, MAX_RECORD_CIPHERTEXT, MAX_RECORD_PLAINTEXT, TAG_LEN};

/// First bytes of every link connection.
pub const MAGIC: [u8; 4] = *b"MSHD";
/// Protocol version carried in the preamble and bound into the prologue.
pub const VERSION: u8 = 3;
/// Size of the fixed preamble: magic, version, mode, name length, reserved, name (64).
pub const PREAMBLE_LEN: usize = 72;
/// Largest handshake message accepted before authentication (the pre-auth byte cap).
/// IKpsk2 msg1 is 32 + 48 + 8 + 16 = 104 bytes; anything much larger is an attack.
pub const MAX_HANDSHAKE_MSG: usize = 512;
/// Bytes of the timestamp payload of msg1.
const TIMESTAMP_LEN: usize = 8;

const NOISE_IK: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";
const NOISE_NN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// Why a handshake failed. `reason()` gives a stable label for logs and metrics.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The connection does not start with the meshd magic.
    #[error("not a meshd connection (bad magic)")]
    BadMagic,
    /// Protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// Unknown auth mode code, or a mode this side is not configured for.
    #[error("auth mode {got} does not match this mesh's mode {want}")]
    ModeMismatch {
        /// The mode code the dialer sent.
        got: u8,
        /// The mode this side runs.
        want: &'static str,
    },
    /// The preamble's peer name is not a valid name.
    #[error("malformed peer name in preamble")]
    BadName,
    /// The claimed peer is not in the manifest (or has no link to us).
    #[error("unknown peer {0:?}")]
    UnknownPeer(String),
    /// The dialer's static key is not the one the manifest lists for its name.
    #[error("peer {0} presented a static key that is not its manifest key")]
    WrongKey(String),
    /// A handshake message failed to decrypt (wrong key, wrong psk, wrong mesh, tampering).
    #[error("handshake message did not authenticate (wrong key, psk or mesh)")]
    Decrypt,
    /// The msg1 timestamp is not newer than the last accepted one from this peer.
    #[error("replayed or stale handshake from {0}")]
    Replay(String),
    /// A handshake length prefix larger than the pre-auth cap.
    #[error("handshake message of {0} bytes exceeds the {MAX_HANDSHAKE_MSG}-byte cap")]
    Oversized(usize),
    /// The message has the wrong shape (bad payload size, trailing data).
    #[error("malformed handshake message")]
    Malformed,
    /// The handshake did not finish within its deadline.
    #[error("handshake timed out")]
    Timeout,
    /// The connection closed before the handshake finished.
    #[error("connection closed during handshake")]
    Truncated,
    /// Too many handshakes in progress (global cap): this one, the oldest, made room
    /// for a newer connection.
    #[error("too many pending handshakes")]
    Overloaded,
    /// Too many new connections from one source (per-source rate limit).
    #[error("too many new connections from this source")]
    RateLimited,
    /// The TLS handshake failed, or its certificate does not name the peer it claims.
    #[error("tls handshake with {peer:?} failed: {detail}")]
    Tls {
        /// The peer named in the preamble (acceptor) or dialed (dialer).
        peer: String,
        /// A stable label from [`crate::tls::reason`].
        reason: &'static str,
        /// What went wrong, for humans.
        detail: String,
    },
    /// A local error building the Noise state (a bug or a bad local key).
    #[error("local noise error: {0}")]
    Local(String),
}

impl HandshakeError {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::BadMagic => "bad_magic",
            HandshakeError::BadVersion(_) => "bad_version",
            HandshakeError::ModeMismatch { .. } => "mode_mismatch",
            HandshakeError::BadName => "bad_name",
            HandshakeError::UnknownPeer(_) => "unknown_peer",
            HandshakeError::WrongKey(_) => "wrong_key",
            HandshakeError::Decrypt => "decrypt",
            HandshakeError::Replay(_) => "replay",
            HandshakeError::Oversized(_) => "oversized",
            HandshakeError::Malformed => "malformed",
            HandshakeError::Timeout => "timeout",
            HandshakeError::Truncated => "truncated",
            HandshakeError::Overloaded => "overloaded",
            HandshakeError::RateLimited => "rate_limited",
            HandshakeError::Tls { reason, .. } => reason,
            HandshakeError::Local(_) => "local",
        }
    }
}

/// The cleartext preamble: who is dialing, with which protocol version and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    /// The auth mode the dialer uses.
    pub mode: AuthMode,
    /// The dialer's claimed name (proven by the handshake that follows).
    pub name: PeerName,
}

impl Preamble {
    /// Encodes the fixed-size preamble.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.mode.code();
        let name = self.name.as_str().as_bytes();
        // PeerName guarantees 1..=63 bytes.
        out[6] = name.len() as u8;
        out[8..8 + name.len()].copy_from_slice(name);
        out
    }

    /// Decodes a preamble, checking magic and version first so garbage is refused at once.
    pub fn decode(buf: &[u8; PREAMBLE_LEN]) -> Result<Self, HandshakeError> {
        if buf[..4] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(HandshakeError::BadVersion(buf[4]));
        }
        let mode = match buf[5] {
            1 => AuthMode::Noise,
            2 => AuthMode::Psk,
            3 => AuthMode::Tls,
            other => {
                return Err(HandshakeError::ModeMismatch {
                    got: other,
                    want: "a known mode",
                })
            }
        };
        let len = buf[6] as usize;
        if len == 0 || len > 63 || buf[7] != 0 || buf[8 + len..].iter().any(|&b| b != 0) {
            return Err(HandshakeError::BadName);
        }
        let name = std::str::from_utf8(&buf[8..8 + len]).map_err(|_| HandshakeError::BadName)?;
        let name = PeerName::new(name).map_err(|_| HandshakeError::BadName)?;
        Ok(Self { mode, name })
    }
}

/// Everything one side needs to run the handshake of one pair.
pub struct PairParams<'a> {
    /// `noise` or `psk` (tls is not a Noise handshake).
    pub mode: AuthMode,
    /// The mesh id, bound into the prologue.
    pub mesh_id: &'a str,
    /// The dialing peer.
    pub dialer: &'a PeerName,
    /// The accepting peer.
    pub acceptor: &'a PeerName,
    /// This side's static private key (used by `noise`).
    pub local_key: &'a PrivateKey,
    /// The other side's manifest public key (used by `noise`).
    pub remote_key: &'a PublicKey,
    /// The psk slot: the mesh-secret pair key, or in `noise` mode without a mesh secret a
    /// value derived from public data (adds no secrecy; see the README).
    pub psk: &'a PairKey,
}

impl fmt::Debug for PairParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairParams")
            .field("mode", &self.mode)
            .field("mesh_id", &self.mesh_id)
            .field("dialer", &self.dialer)
            .field("acceptor", &self.acceptor)
            .finish_non_exhaustive()
    }
}

/// A fixed ephemeral private key for a handshake: `None` on every real link. Only test and
/// fuzz builds set one (`pinned-ephemerals`), so that a handshake's bytes are reproducible
/// (the golden vectors in `tests/vectors/`).
type Ephemeral<'e> = Option<&'e [u8; 32]>;

/// A handshake builder on [`resolver::CheckedResolver`].
fn builder<'b>(params: snow::params::NoiseParams) -> snow::Builder<'b> {
    snow::Builder::with_resolver(params, Box::new(resolver::CheckedResolver::new()))
}

fn pin<'b>(builder: snow::Builder<'b>, ephemeral: Ephemeral<'b>) -> snow::Builder<'b> {
    match ephemeral {
        Some(e) => builder.fixed_ephemeral_key_for_testing_only(e),
        None => builder,
    }
}

impl PairParams<'_> {
    /// The Noise prologue of this pair (docs/PROTOCOL.md §3.1).
    pub(crate) fn prologue(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(b"meshd prologue");
        p.push(VERSION);
        p.push(self.mode.code());
        for part in [
            self.mesh_id.as_bytes(),
            self.dialer.as_str().as_bytes(),
            self.acceptor.as_str().as_bytes(),
        ] {
            p.extend_from_slice(&(part.len() as u16).to_be_bytes());
            p.extend_from_slice(part);
        }
        p
    }

    /// `ephemeral` is `None` on every real link; see [`Ephemeral`].
    fn builder_state(
        &self,
        initiator: bool,
        ephemeral: Ephemeral<'_>,
    ) -> Result<snow::HandshakeState, HandshakeError> {
        let local = |e: snow::Error| HandshakeError::Local(e.to_string());
        let prologue = self.prologue();
        let state = match self.mode {
            AuthMode::Noise => {
                let params = NOISE_IK.parse().map_err(local)?;
                let b = pin(builder(params), ephemeral)
                    .local_private_key(self.local_key.as_bytes())
                    .map_err(local)?
                    .psk(2, self.psk.as_bytes())
                    .map_err(local)?
                    .prologue(&prologue)
                    .map_err(local)?;
                if initiator {
                    b.remote_public_key(self.remote_key.as_bytes())
                        .map_err(local)?
                        .build_initiator()
                } else {
                    b.build_responder()
                }
            }
            AuthMode::Psk => {
                let params = NOISE_NN.parse().map_err(local)?;
                let b = pin(builder(params), ephemeral)
                    .psk(0, self.psk.as_bytes())
                    .map_err(local)?
                    .prologue(&prologue)
                    .map_err(local)?;
                if initiator {
                    b.build_initiator()
                } else {
                    b.build_responder()
                }
            }
            AuthMode::Tls => {
                return Err(HandshakeError::Local(
                    "tls is not a noise handshake".to_owned(),
                ))
            }
        };
        state.map_err(local)
    }
}

/// The dialer's side after sending msg1.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Initiator")
    }
}

/// Starts a handshake as the dialer: returns the state and the bytes to send
/// (`preamble ‖ u16 len ‖ msg1`). `timestamp` must grow with every handshake to this peer
/// (nanoseconds since the Unix epoch, made monotonic by the caller).
pub fn initiate(
    params: &PairParams<'_>,
    timestamp: u64,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    initiate_with(params, timestamp, None)
}

/// TEST AND FUZZ BUILDS ONLY: [`initiate`] with a fixed ephemeral private key, which makes
/// the handshake's bytes reproducible and its secrecy void.
#[cfg(any(test, feature = "pinned-ephemerals"))]
#[doc(hidden)]
pub fn initiate_pinned_for_testing_only(
    params: &PairParams<'_>,
    timestamp: u64,
    ephemeral: &[u8; 32],
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    initiate_with(params, timestamp, Some(ephemeral))
}

fn initiate_with(
    params: &PairParams<'_>,
    timestamp: u64,
    ephemeral: Ephemeral<'_>,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    let mut state = params.builder_state(true, ephemeral)?;
    let mut msg = [0u8; MAX_HANDSHAKE_MSG];
    let n = state
        .write_message(&timestamp.to_be_bytes(), &mut msg)
        .map_err(|e| HandshakeError::Local(e.to_string()))?;
    let preamble = Preamble {
        mode: params.mode,
        name: params.dialer.clone(),
    };
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 2 + n);
    out.extend_from_slice(&preamble.encode());
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    Ok((Initiator { state }, out))
}

impl Initiator {
    /// Reads msg2 (without its length prefix) and completes the handshake.
    pub fn finish(mut self, msg2: &[u8]) -> Result<Session, HandshakeError> {
        let mut payload = [0u8; MAX_HANDSHAKE_MSG];
        let n = self
            .state
            .read_message(msg2, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        if n != 0 {
            return Err(HandshakeError::Malformed);
        }
        Session::from_handshake(self.state)
    }
}

/// The acceptor's side after reading an authentic msg1, before the replay check.
pub struct Responder {
    state: snow::HandshakeState,
    timestamp: u64,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Reads msg1 (without its length prefix) as the acceptor. `params.dialer` is the name
/// from the preamble and `params.remote_key` its manifest key: in `noise` mode the static
/// key inside msg1 must equal it.
pub fn respond(params: &PairParams<'_>, msg1: &[u8]) -> Result<Responder, HandshakeError> {
    respond_with(params, msg1, None)
}

/// TEST AND FUZZ BUILDS ONLY: [`respond`] with a fixed ephemeral private key (used for
/// msg2), which makes the handshake's bytes reproducible and its secrecy void.
#[cfg(any(test, feature = "pinned-ephemerals"))]
#[doc(hidden)]
pub fn respond_pinned_for_testing_only(
    params: &PairParams<'_>,
    msg1: &[u8],
    ephemeral: &[u8; 32],
) -> Result<Responder, HandshakeError> {
    respond_with(params, msg1, Some(ephemeral))
}

fn respond_with(
    params: &PairParams<'_>,
    msg1: &[u8],
    ephemeral: Ephemeral<'_>,
) -> Result<Responder, HandshakeError> {
    let mut state = params.builder_state(false, ephemeral)?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    let n = state
        .read_message(msg1, &mut payload)
        .map_err(|_| HandshakeError::Decrypt)?;
    if n != TIMESTAMP_LEN {
        return Err(HandshakeError::Malformed);
    }
    if params.mode == AuthMode::Noise {
        let presented = state.get_remote_static().ok_or(HandshakeError::Malformed)?;
        // Public keys are not secret, but compare in constant time all the same. ring 0.17
        // marks this function deprecated (it will move), not unsound.
        #[allow(deprecated)]
        if ring::constant_time::verify_slices_are_equal(presented, params.remote_key.as_bytes())
            .is_err()
        {
            return Err(HandshakeError::WrongKey(params.dialer.to_string()));
        }
    }
    let mut ts = [0u8; TIMESTAMP_LEN];
    ts.copy_from_slice(&payload[..TIMESTAMP_LEN]);
    Ok(Responder {
        state,
        timestamp: u64::from_be_bytes(ts),
    })
}

impl Responder {
    /// The authenticated timestamp of msg1, for the replay check.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Writes msg2 (returned with its u16 length prefix) and completes the handshake.
    pub fn finish(mut self) -> Result<(Vec<u8>, Session), HandshakeError> {
        let mut msg = [0u8; MAX_HANDSHAKE_MSG];
        let n = self
            .state
            .write_message(&[], &mut msg)
            .map_err(|e| HandshakeError::Local(e.to_string()))?;
        let mut out = Vec::with_capacity(2 + n);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&msg[..n]);
        Ok((out, Session::from_handshake(self.state)?))
    }
}

#[cfg(test)]
mod tests;
