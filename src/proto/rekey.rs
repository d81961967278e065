//! In-band re-keying of `noise` and `psk` links, sans I/O: a fresh X25519 exchange carried
//! in REKEY frames on the live link, after which both directions switch to new
//! AES-256-GCM keys at a record both ends agree on. Streams are untouched; no record is
//! lost or accepted twice, because a direction switches exactly after the record that
//! announces it, and the new keys start their nonces at zero.
//!
//! The exchange (the dialer always leads, so two exchanges never cross):
//!
//! 1. dialer → `OFFER(e, E_d)`: its new ephemeral public key, for epoch `e` (current + 1);
//! 2. acceptor → `ANSWER(e, E_a)`: its own; the record carrying it is the last the
//!    acceptor seals with its old key, every later one uses the new acceptor→dialer key;
//! 3. dialer → `COMMIT(e)`: the record carrying it is the last the dialer seals with its
//!    old key.
//!
//! A `REQUEST(e)` from the acceptor asks the dialer to start one: the acceptor enforces the
//! policy too (its own limits, with a little slack so that it rarely has to ask).
//!
//! New keys, with HKDF-SHA-256 (RFC 5869):
//!
//! ```text
//! PRK       = HKDF-Extract(salt = chain[e-1], IKM = X25519(e_d, E_a))
//! info(L)   = L ‖ e (u32 BE) ‖ E_d ‖ E_a
//! key d→a   = HKDF-Expand(PRK, info("meshd rekey d2a"), 32)
//! key a→d   = HKDF-Expand(PRK, info("meshd rekey a2d"), 32)
//! chain[e]  = HKDF-Expand(PRK, info("meshd rekey chain"), 32)
//! chain[0]  = HKDF-Expand(HKDF-Extract(salt = h, IKM = k1 ‖ k2), "meshd rekey chain 0", 32)
//! ```
//!
//! where `h` is the Noise handshake hash and `k1`, `k2` the handshake's Split() keys. The
//! chain ties every epoch to the authenticated handshake (the REKEY frames travel inside
//! authenticated records, so nobody else can inject a public key), and the fresh DH gives
//! each epoch keys that a thief of an earlier epoch's keys cannot compute. The private
//! keys live only until their exchange completes; old keys are dropped (and wiped, see
//! [`super::aead_key`]) at the switch. An all-zero shared secret is refused.
//!
//! Limits: a re-key starts every `interval`, and as soon as either direction has carried
//! `bytes` since the last one. A peer that does not finish an exchange within `timeout` of
//! its start is cut.

use std::fmt;
use std::time::{Duration, Instant};

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{self, KeyType, Salt, HKDF_SHA256};
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use super::frame::RekeyStep;

/// One REKEY frame's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyMessage {
    /// Which step of the exchange.
    pub step: RekeyStep,
    /// The epoch of the keys being made (1 for a link's first re-key).
    pub epoch: u32,
    /// An X25519 public key (OFFER, ANSWER), zeros otherwise.
    pub key: [u8; 32],
}

impl RekeyMessage {
    /// The REKEY frame that carries it.
    pub fn frame(&self) -> super::frame::Frame<'static> {
        super::frame::Frame::Rekey {
            step: self.step,
            epoch: self.epoch,
            key: self.key,
        }
    }
}

/// When a link re-keys, and how long an exchange may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Longest time between two re-keys.
    pub interval: Duration,
    /// Most bytes one direction carries under one key.
    pub bytes: u64,
    /// How long the peer may take to finish an exchange it is part of.
    pub timeout: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(120),
            bytes: 16 << 30,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A new AES-256-GCM key for one direction; wiped on drop.
pub struct NewKey(Zeroizing<[u8; 32]>);

impl NewKey {
    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewKey(MASKED)")
    }
}

/// A REKEY frame to send as the only frame of its own record; when `then_send_with` is set,
/// every record sealed after that one uses this key.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame's content.
    pub message: RekeyMessage,
    /// The key of this side's records after the one carrying `message`.
    pub then_send_with: Option<NewKey>,
}

/// Re-key failures; each one ends the link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RekeyError {
    /// A REKEY frame out of turn or for the wrong epoch.
    #[error("unexpected REKEY {step:?} for epoch {epoch}: {why}")]
    Unexpected {
        /// The step the peer sent.
        step: RekeyStep,
        /// Its epoch.
        epoch: u32,
        /// What this side expected instead.
        why: &'static str,
    },
    /// The peer did not finish an exchange in time.
    #[error("the peer did not finish a re-key within {} ms (waiting for its {waiting})", .timeout.as_millis())]
    Timeout {
        /// The policy's timeout.
        timeout: Duration,
        /// The frame this side waited for.
        waiting: &'static str,
    },
    /// The peer's public key gives an all-zero shared secret (a low-order point).
    #[error("the peer's re-key public key is refused (all-zero shared secret)")]
    BadPublicKey,
    /// The system's random number generator failed.
    #[error("no randomness for a re-key private key")]
    Random,
}

enum State {
    /// Keys in use; the next exchange is not due.
    Idle,
    /// Acceptor: sent REQUEST at `at`, waits for the OFFER.
    Requested { at: Instant },
    /// Dialer: sent OFFER at `at` and keeps its private key for the ANSWER.
    Offered {
        at: Instant,
        private: EphemeralPrivateKey,
        public: [u8; 32],
    },
    /// Acceptor: sent ANSWER at `at`; the dialer's new key waits for its COMMIT.
    Answered { at: Instant, recv: NewKey },
}

/// The re-key state of one noise/psk link.
pub struct Rekeyer {
    dialer: bool,
    policy: RekeyPolicy,
    chain: Zeroizing<[u8; 32]>,
    /// The epoch of the keys in use (0: the handshake's).
    epoch: u32,
    /// When the keys in use were made, and the bytes each direction carried since.
    since: Instant,
    sent: u64,
    received: u64,
    state: State,
    /// Dialer: the acceptor asked for an exchange.
    requested: bool,
    outbox: Option<Outgoing>,
    rng: SystemRandom,
    completed: u64,
}

impl fmt::Debug for Rekeyer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rekeyer")
            .field("dialer", &self.dialer)
            .field("epoch", &self.epoch)
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA-256's 255 * 32-byte limit: neither call can fail.
    prk.expand(info, Len(32))
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-Expand of 32 bytes");
    out
}

/// `chain[0]` of a link, from its handshake hash and Split() keys (see the module doc).
pub fn initial_chain(handshake_hash: &[u8], k1: &[u8; 32], k2: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(k1);
    ikm[32..].copy_from_slice(k2);
    let prk = Salt::new(HKDF_SHA256, handshake_hash).extract(&ikm[..]);
    expand(&prk, &[b"meshd rekey chain 0"])
}

/// The keys of epoch `epoch` (see the module doc): dialer→acceptor, acceptor→dialer, and
/// the next chain value.
pub fn derive(
    chain: &[u8; 32],
    shared: &[u8],
    epoch: u32,
    dialer_public: &[u8; 32],
    acceptor_public: &[u8; 32],
) -> (NewKey, NewKey, Zeroizing<[u8; 32]>) {
    let prk = Salt::new(HKDF_SHA256, chain).extract(shared);
    let epoch = epoch.to_be_bytes();
    let info =
        |label: &'static [u8]| -> [&[u8]; 4] { [label, &epoch, dialer_public, acceptor_public] };
    let d2a = expand(&prk, &info(b"meshd rekey d2a"));
    let a2d = expand(&prk, &info(b"meshd rekey a2d"));
    let next = expand(&prk, &info(b"meshd rekey chain"));
    (NewKey(d2a), NewKey(a2d), next)
}

/// X25519 of our private key with the peer's public key, then [`derive`]. ring refuses an
/// all-zero result.
fn agree(
    private: EphemeralPrivateKey,
    peer_public: &[u8; 32],
    chain: &[u8; 32],
    epoch: u32,
    dialer_public: &[u8; 32],
    acceptor_public: &[u8; 32],
) -> Result<(NewKey, NewKey, Zeroizing<[u8; 32]>), RekeyError> {
    agreement::agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&X25519, peer_public),
        |shared| derive(chain, shared, epoch, dialer_public, acceptor_public),
    )
    .map_err(|_| RekeyError::BadPublicKey)
}

impl Rekeyer {
    /// The re-key state of a link that came up at `now` with `chain` as its `chain[0]`.
    pub fn new(
        dialer: bool,
        policy: RekeyPolicy,
        chain: Zeroizing<[u8; 32]>,
        now: Instant,
    ) -> Self {
        Self {
            dialer,
            policy,
            chain,
            epoch: 0,
            since: now,
            sent: 0,
            received: 0,
            state: State::Idle,
            requested: false,
            outbox: None,
            rng: SystemRandom::new(),
            completed: 0,
        }
    }

    /// Exchanges completed on this link.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// The epoch of the keys in use.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// This side sealed `n` more bytes.
    pub fn on_sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// This side opened `n` more bytes.
    pub fn on_received(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// When the keys in use are due for replacement by time alone. The acceptor, which
    /// only asks, waits a quarter of the timeout longer than the dialer, which leads.
    fn due_at(&self) -> Instant {
        let slack = if self.dialer {
            Duration::ZERO
        } else {
            self.policy.timeout / 4
        };
        self.since + self.policy.interval + slack
    }

    fn byte_limit(&self) -> u64 {
        if self.dialer {
            self.policy.bytes
        } else {
            self.policy.bytes.saturating_add(self.policy.bytes / 8)
        }
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.due_at() || self.sent.max(self.received) >= self.byte_limit()
    }

    /// The next REKEY frame to send, if any (see [`Outgoing`]).
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<Outgoing>, RekeyError> {
        if let Some(out) = self.outbox.take() {
            return Ok(Some(out));
        }
        if !matches!(self.state, State::Idle) || !(self.requested || self.due(now)) {
            return Ok(None);
        }
        self.requested = false;
        let epoch = self.epoch.wrapping_add(1);
        if self.dialer {
            let private = EphemeralPrivateKey::generate(&X25519, &self.rng)
                .map_err(|_| RekeyError::Random)?;
            let public = public_key(&private)?;
            self.state = State::Offered {
                at: now,
                private,
                public,
            };
            Ok(Some(Outgoing {
                message: RekeyMessage {
                    step: RekeyStep::Offer,
                    epoch,
                    key: public,
                },
                then_send_with: None,
            }))
        } else {
            self.state = State::Requested { at: now };
            Ok(Some(Outgoing {
                message: RekeyMessage {
                    step: RekeyStep::Request,
                    epoch,
                    key: [0; 32],
                },
                then_send_with: None,
            }))
        }
    }

    /// Handles a REKEY frame from the peer. `Some(key)`: every record after the one that
    /// carried it is opened with `key`.
    pub fn handle(
        &mut self,
        msg: RekeyMessage,
        now: Instant,
    ) -> Result<Option<NewKey>, RekeyError> {
        let next = self.epoch.wrapping_add(1);
        let unexpected = |why| RekeyError::Unexpected {
            step: msg.step,
            epoch: msg.epoch,
            why,
        };
        match (self.dialer, msg.step) {
            (true, RekeyStep::Request) => {
                // A request that crossed our OFFER, or came after the exchange it asked
                // for, is answered already.
                if msg.epoch == next && matches!(self.state, State::Idle) {
                    self.requested = true;
                } else if msg.epoch != next && msg.epoch != self.epoch {
                    return Err(unexpected("a request for the next epoch"));
                }
                Ok(None)
            }
            (true, RekeyStep::Answer) => {
                if msg.epoch != next {
                    return Err(unexpected("the answer for the epoch offered"));
                }
                let State::Offered {
                    private, public, ..
                } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return Err(unexpected("no answer before an offer"));
                };
                let (d2a, a2d, chain) =
                    agree(private, &msg.key, &self.chain, next, &public, &msg.key)?;
                self.outbox = Some(Outgoing {
                    message: RekeyMessage {
                        step: RekeyStep::Commit,
                        epoch: next,
                        key: [0; 32],
                    },
                    then_send_with: Some(d2a),
                });
                self.finish(chain, now);
                Ok(Some(a2d))
            }
            (false, RekeyStep::Offer) => {
                if msg.epoch != next {
                    return Err(unexpected("an offer for the next epoch"));
                }
                if !matches!(self.state, State::Idle | State::Requested { .. }) {
                    return Err(unexpected("one exchange at a time"));
                }
                let private = EphemeralPrivateKey::generate(&X25519, &self.rng)
                    .map_err(|_| RekeyError::Random)?;
                let public = public_key(&private)?;
                let (d2a, a2d, chain) =
                    agree(private, &msg.key, &self.chain, next, &msg.key, &public)?;
                self.chain = chain;
                self.outbox = Some(Outgoing {
                    message: RekeyMessage {
                        step: RekeyStep::Answer,
                        epoch: next,
                        key: public,
                    },
                    then_send_with: Some(a2d),
                });
                self.state = State::Answered { at: now, recv: d2a };
                Ok(None)
            }
            (false, RekeyStep::Commit) => {
                if msg.epoch != next {
                    return Err(unexpected("the commit of the epoch answered"));
                }
                let State::Answered { recv, .. } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return Err(unexpected("no commit before an answer"));
                };
                let chain = self.chain.clone();
                self.finish(chain, now);
                Ok(Some(recv))
            }
            (true, _) => Err(unexpected("only REQUEST and ANSWER go to a dialer")),
            (false, _) => Err(unexpected("only OFFER and COMMIT go to an acceptor")),
        }
    }

    /// Both directions have their new keys (or will after the frame in the outbox).
    fn finish(&mut self, chain: Zeroizing<[u8; 32]>, now: Instant) {
        self.chain = chain;
        self.epoch = self.epoch.wrapping_add(1);
        self.since = now;
        self.sent = 0;
        self.received = 0;
        self.completed += 1;
    }

    /// The next instant [`Rekeyer::handle_timeout`] has work at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outbox.is_some() || self.requested {
            return None;
        }
        Some(match &self.state {
            State::Idle => self.due_at(),
            State::Requested { at } | State::Offered { at, .. } | State::Answered { at, .. } => {
                *at + self.policy.timeout
            }
        })
    }

    /// Fails the link if the peer has not done its part of an exchange in time. An
    /// exchange that is due starts on the next [`Rekeyer::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), RekeyError> {
        let (at, waiting) = match &self.state {
            State::Idle => return Ok(()),
            State::Requested { at } => (*at, "OFFER"),
            State::Offered { at, .. } => (*at, "ANSWER"),
            State::Answered { at, .. } => (*at, "COMMIT"),
        };
        if now >= at + self.policy.timeout {
            return Err(RekeyError::Timeout {
                timeout: self.policy.timeout,
                waiting,
            });
        }
        Ok(())
    }
}

fn public_key(private: &EphemeralPrivateKey) -> Result<[u8; 32], RekeyError> {
    let public = private
        .compute_public_key()
        .map_err(|_| RekeyError::Random)?;
    public.as_ref().try_into().map_err(|_| RekeyError::Random)
}

#[cfg(test)]
mod tests;
