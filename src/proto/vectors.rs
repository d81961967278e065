//! Golden vectors of the wire (docs/PROTOCOL.md): the bytes in `tests/vectors/*.hex` are
//! what this code must produce, and reading them must give back what produced them. A
//! change that alters any of them changes the wire. If that is meant, bump the wire
//! version and regenerate the files with
//! `MESHD_WRITE_VECTORS=1 cargo test --lib proto::vectors`.
//!
//! The Noise handshakes pin their ephemeral keys (a test-only hook); `scripts/test` also
//! replays them with an independent Noise implementation (`tests/vectors/check.py`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

use super::frame::{self, Frame, OpenError, RekeyStep, ResetCode};
use super::handshake::{self, PairParams, Preamble, MAX_HANDSHAKE_MSG, PREAMBLE_LEN, TAG_LEN};
use super::mux::{self, Event, Mux, MuxConfig, Role};
use super::rekey;
use super::tls_record::{RecordLayer, TlsRecords};
use crate::config::{AuthMode, PeerName};
use crate::keys::{MeshSecret, PrivateKey};

/// One vector file being built: its text (written in regeneration mode) and its values.
struct Vectors {
    file: &'static str,
    text: String,
    values: BTreeMap<String, Vec<u8>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// `key = hex` lines; `#` starts a comment line.
fn parse(text: &str) -> BTreeMap<String, Vec<u8>> {
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = hex");
        let old = values.insert(key.trim().to_owned(), unhex(value.trim()));
        assert!(old.is_none(), "{key} given twice");
    }
    values
}

impl Vectors {
    fn new(file: &'static str, about: &str) -> Self {
        let mut text = String::new();
        for line in about.lines() {
            let _ = writeln!(text, "# {line}");
        }
        let _ = writeln!(text, "# Generated and checked by src/proto/vectors.rs.");
        Self {
            file,
            text,
            values: BTreeMap::new(),
        }
    }

    fn comment(&mut self, line: &str) {
        let _ = writeln!(self.text, "\n# {line}");
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        let _ = writeln!(self.text, "{key} = {}", hex(value));
        let old = self.values.insert(key.to_owned(), value.to_vec());
        assert!(old.is_none(), "{key} put twice");
    }

    /// Compares with the committed file (or rewrites it, with `MESHD_WRITE_VECTORS=1`).
    fn check(self) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(self.file);
        if std::env::var_os("MESHD_WRITE_VECTORS").is_some() {
            std::fs::write(&path, &self.text).expect("write vectors");
            return;
        }
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let committed = parse(&text);
        assert!(!committed.is_empty(), "{} holds no vector", path.display());
        for (key, want) in &committed {
            let got = self
                .values
                .get(key)
                .unwrap_or_else(|| panic!("{}: {key} is no longer produced", self.file));
            assert_eq!(
                hex(got),
                hex(want),
                "{}: {key} changed: the wire changed",
                self.file
            );
        }
        for key in self.values.keys() {
            assert!(
                committed.contains_key(key),
                "{}: {key} is missing from the file",
                self.file
            );
        }
    }
}

/// 32 bytes counting up from `first`: fixed key material of the vectors.
fn counting<const N: usize>(first: u8) -> [u8; N] {
    std::array::from_fn(|i| first.wrapping_add(i as u8))
}

fn encoded(f: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out);
    out
}

/// The first record a mux with the default config sends: its SETTINGS.
fn first_record(role: Role) -> Vec<u8> {
    let mut m = Mux::<()>::new(role, MuxConfig::default(), Instant::now());
    let mut out = Vec::new();
    assert!(m.poll_transmit(&mut out));
    assert!(!m.has_pending_transmit());
    out
}

/// A dialer's record after SETTINGS: OPEN "redis", zero-RTT DATA "PING\r\n", FIN.
fn zero_rtt_record() -> Vec<u8> {
    let mut m = Mux::<()>::new(Role::Dialer, MuxConfig::default(), Instant::now());
    let mut settings = Vec::new();
    assert!(m.poll_transmit(&mut settings));
    let s = m.open("redis").expect("open");
    m.send(s, Bytes::from_static(b"PING\r\n")).expect("send");
    m.finish(s);
    let mut out = Vec::new();
    assert!(m.poll_transmit(&mut out));
    out
}

#[test]
fn frames() {
    let mut v = Vectors::new(
        "frames.hex",
        "One encoding of each frame type (docs/PROTOCOL.md section 6):\n\
         type u8 | stream id u64 | payload length u16 | payload.",
    );
    let frames = [
        (
            "open",
            Frame::Open {
                stream: 1,
                service: "redis",
            },
        ),
        ("open_ok", Frame::OpenOk { stream: 1 }),
        (
            "open_err",
            Frame::OpenErr {
                stream: 2,
                code: OpenError::NotAllowed,
            },
        ),
        (
            "data",
            Frame::Data {
                stream: 1,
                data: b"PING\r\n",
            },
        ),
        (
            "window",
            Frame::Window {
                stream: 1,
                credit: 131_072,
            },
        ),
        ("fin", Frame::Fin { stream: 1 }),
        (
            "rst",
            Frame::Rst {
                stream: 3,
                code: ResetCode::Cancelled,
            },
        ),
        ("ping", Frame::Ping { nonce: 1 }),
        ("pong", Frame::Pong { nonce: 1 }),
        ("goaway", Frame::GoAway { reason: 0 }),
        ("settings", Frame::Settings { window: 262_144 }),
        (
            "rekey",
            Frame::Rekey {
                step: RekeyStep::Offer,
                epoch: 1,
                key: counting(0x40),
            },
        ),
    ];
    assert_eq!(frames.len(), 12, "one per frame type");
    for (name, f) in &frames {
        let bytes = encoded(f);
        assert_eq!(
            frame::decode(&bytes),
            Ok((f.clone(), bytes.len())),
            "{name}"
        );
        v.put(name, &bytes);
    }

    v.comment("Mux records (plaintext of one record): a side's first, with the default config.");
    let first = first_record(Role::Dialer);
    assert_eq!(first, first_record(Role::Acceptor));
    assert_eq!(first, encoded(&Frame::Settings { window: 262_144 }));
    v.put("first_record", &first);
    v.comment("A dialer's record after SETTINGS: OPEN redis, zero-RTT DATA, FIN, together.");
    let zero_rtt = zero_rtt_record();
    let mut a = Mux::<()>::new(Role::Acceptor, MuxConfig::default(), Instant::now());
    a.handle_record(Bytes::from(zero_rtt.clone()), Instant::now())
        .expect("acceptor reads it");
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            Event::Opened {
                stream: 1,
                service: "redis".into()
            },
            Event::Data {
                stream: 1,
                data: Bytes::from_static(b"PING\r\n")
            },
            Event::Fin { stream: 1 },
        ]
    );
    v.put("zero_rtt_record", &zero_rtt);
    v.comment("The frames of the greeting a tls acceptor sends first: PING, nonce 2^64 - 1.");
    let mut greeting = Vec::new();
    mux::encode_greeting(&mut greeting);
    v.put("tls_greeting_frames", &greeting);
    v.check();
}

/// The re-key derivation (docs/PROTOCOL.md, re-keying) on fixed inputs.
#[test]
fn rekey_derivation() {
    let mut v = Vectors::new(
        "rekey.hex",
        "The re-key derivation of noise/psk links (src/proto/rekey.rs) on fixed inputs:\n\
         chain0 from the handshake hash h and Split() keys k1, k2; epoch 1 from chain0,\n\
         the X25519 result and both public keys.",
    );
    let (h, k1, k2) = (
        counting::<32>(0x11),
        counting::<32>(0x22),
        counting::<32>(0x33),
    );
    let (shared, e_d, e_a) = (
        counting::<32>(0x44),
        counting::<32>(0x55),
        counting::<32>(0x66),
    );
    for (key, value) in [("h", &h), ("k1", &k1), ("k2", &k2), ("shared", &shared)] {
        v.put(key, value);
    }
    v.put("dialer_public", &e_d);
    v.put("acceptor_public", &e_a);
    let chain0 = rekey::initial_chain(&h, &k1, &k2);
    v.put("chain0", &chain0[..]);
    let (d2a, a2d, chain1) = rekey::derive(&chain0, &shared, 1, &e_d, &e_a);
    v.put("key_d2a", d2a.bytes());
    v.put("key_a2d", a2d.bytes());
    v.put("chain1", &chain1[..]);
    v.check();
}

const MESH_ID: &str = "example";
const TIMESTAMP: u64 = 1_764_000_000_000_000_000;

/// A whole handshake of `mode` with pinned keys, then one record each way (two from the
/// dialer), as vectors; checks that each side reads what the other wrote.
fn handshake_vectors(mode: AuthMode, file: &'static str) {
    let name = match mode {
        AuthMode::Noise => "Noise_IKpsk2_25519_AESGCM_SHA256",
        _ => "Noise_NNpsk0_25519_AESGCM_SHA256",
    };
    let mut v = Vectors::new(
        file,
        &format!(
            "A {} handshake ({name}) with pinned ephemeral keys, and its first\n\
             transport records (docs/PROTOCOL.md sections 2, 3 and 5.1).\n\
             Names and the mesh id are ASCII; the timestamp is a u64.",
            mode.as_str()
        ),
    );
    let dialer = PeerName::new("ovh1").expect("name");
    let acceptor = PeerName::new("off2").expect("name");
    let d_static = PrivateKey::from_bytes(counting(0x10));
    let a_static = PrivateKey::from_bytes(counting(0x30));
    let (d_pub, a_pub) = (d_static.public_key(), a_static.public_key());
    let d_ephemeral: [u8; 32] = counting(0x50);
    let a_ephemeral: [u8; 32] = counting(0x70);
    // As the daemon derives it: noise without a mesh secret, psk with one.
    let secret: Option<[u8; 32]> = (mode == AuthMode::Psk).then(|| counting(0x90));
    let psk = crate::daemon::pair_psk(
        MESH_ID,
        secret.map(MeshSecret::from_bytes).as_ref(),
        &dialer,
        &acceptor,
    );

    v.comment("Inputs.");
    v.put("mesh_id", MESH_ID.as_bytes());
    v.put("dialer", dialer.as_str().as_bytes());
    v.put("acceptor", acceptor.as_str().as_bytes());
    v.put("timestamp", &TIMESTAMP.to_be_bytes());
    if mode == AuthMode::Noise {
        v.put("dialer_static_private", d_static.as_bytes());
        v.put("dialer_static_public", d_pub.as_bytes());
        v.put("acceptor_static_private", a_static.as_bytes());
        v.put("acceptor_static_public", a_pub.as_bytes());
    }
    if let Some(secret) = &secret {
        v.put("mesh_secret", secret);
    }
    v.put("psk", psk.as_bytes());
    v.put("dialer_ephemeral_private", &d_ephemeral);
    v.put("acceptor_ephemeral_private", &a_ephemeral);

    let dial = PairParams {
        mode,
        mesh_id: MESH_ID,
        dialer: &dialer,
        acceptor: &acceptor,
        local_key: &d_static,
        remote_key: &a_pub,
        psk: &psk,
    };
    let accept = PairParams {
        local_key: &a_static,
        remote_key: &d_pub,
        ..dial
    };
    let (init, first) = handshake::initiate_pinned_for_testing_only(&dial, TIMESTAMP, &d_ephemeral)
        .expect("initiate");
    let preamble = Preamble {
        mode,
        name: dialer.clone(),
    }
    .encode();
    assert_eq!(first[..PREAMBLE_LEN], preamble);
    let len = usize::from(u16::from_be_bytes([
        first[PREAMBLE_LEN],
        first[PREAMBLE_LEN + 1],
    ]));
    let msg1 = &first[PREAMBLE_LEN + 2..];
    assert_eq!(msg1.len(), len);
    assert_eq!(len, if mode == AuthMode::Noise { 104 } else { 56 });
    let responder =
        handshake::respond_pinned_for_testing_only(&accept, msg1, &a_ephemeral).expect("respond");
    assert_eq!(responder.timestamp(), TIMESTAMP);
    let (answer, mut a_session) = responder.finish().expect("msg2");
    let msg2 = &answer[2..];
    assert_eq!(usize::from(u16::from_be_bytes([answer[0], answer[1]])), 48);
    assert!(msg2.len() == 48 && msg2.len() <= MAX_HANDSHAKE_MSG);
    let mut d_session = init.finish(msg2).expect("finish");

    v.comment("Handshake.");
    v.put("prologue", &dial.prologue());
    assert_eq!(dial.prologue(), accept.prologue());
    v.put("preamble", &preamble);
    v.put("msg1", msg1);
    v.put("msg2", msg2);
    v.comment("What each side writes: preamble | u16 len | msg1, and u16 len | msg2.");
    v.put("dialer_writes", &first);
    v.put("acceptor_writes", &answer);

    v.comment("Transport records: u16 len | AES-256-GCM(frames) | tag; nonce 0, 1, ...");
    let records = [
        ("dialer_record_0", true, first_record(Role::Dialer)),
        ("dialer_record_1", true, zero_rtt_record()),
        ("acceptor_record_0", false, first_record(Role::Acceptor)),
    ];
    for (key, from_dialer, plain) in records {
        let (tx, rx) = if from_dialer {
            (&mut d_session, &mut a_session)
        } else {
            (&mut a_session, &mut d_session)
        };
        let mut wire = Vec::new();
        tx.seal(&plain, &mut wire).expect("seal");
        assert_eq!(wire.len(), 2 + plain.len() + TAG_LEN);
        let mut opened = wire[2..].to_vec();
        let n = rx.open_in_place(&mut opened).expect("open");
        assert_eq!(opened[..n], plain[..], "{key}");
        v.put(&format!("{key}_plaintext"), &plain);
        v.put(key, &wire);
    }
    v.check();
}

#[test]
fn noise_handshake() {
    handshake_vectors(AuthMode::Noise, "noise.hex");
}

#[test]
fn psk_handshake() {
    handshake_vectors(AuthMode::Psk, "psk.hex");
}

fn aes256(key: [u8; 32], iv: [u8; 12]) -> ConnectionTrafficSecrets {
    ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(key),
        iv: Iv::from(iv),
    }
}

/// The greeting of a tls link as a TLS 1.3 record, with fixed application traffic keys
/// (a real link takes them from the handshake).
#[test]
fn tls_greeting_record() {
    let mut v = Vectors::new(
        "tls_record.hex",
        "The greeting record a tls acceptor sends first (docs/PROTOCOL.md sections 4 and\n\
         5.2), sealed with fixed TLS_AES_256_GCM_SHA384 traffic keys at sequence number 0.\n\
         TLS record = 17 0303 | u16 len | AEAD(u16 mux len | frames | 17) | tag.",
    );
    let (a_key, a_iv): ([u8; 32], [u8; 12]) = (counting(0xa0), counting(0xc0));
    let (d_key, d_iv): ([u8; 32], [u8; 12]) = (counting(0xd0), counting(0xf0));
    let layer = |tx: ConnectionTrafficSecrets, rx: ConnectionTrafficSecrets| {
        let secrets = ExtractedSecrets {
            tx: (0, tx),
            rx: (0, rx),
        };
        RecordLayer::from_secrets(secrets).expect("layer")
    };
    let mut acceptor = TlsRecords::new(
        layer(aes256(a_key, a_iv), aes256(d_key, d_iv)),
        Bytes::new(),
    );
    let mut dialer = TlsRecords::new(
        layer(aes256(d_key, d_iv), aes256(a_key, a_iv)),
        Bytes::new(),
    );
    let mut wire = Vec::new();
    let start = TlsRecords::begin_record(&mut wire);
    mux::encode_greeting(&mut wire);
    acceptor.seal_record(&mut wire, start).expect("seal");
    // The sealed content: the mux record, its length first.
    let mut content = Vec::new();
    let mut input = BytesMut::from(&wire[..]);
    let record = dialer
        .next_record(&mut input)
        .expect("open")
        .expect("whole record");
    let mut frames = Vec::new();
    mux::encode_greeting(&mut frames);
    assert_eq!(record[..], frames[..]);
    assert!(input.is_empty());
    content.extend_from_slice(&(frames.len() as u16).to_be_bytes());
    content.extend_from_slice(&frames);
    v.put("acceptor_tx_key", &a_key);
    v.put("acceptor_tx_iv", &a_iv);
    v.put("greeting_content", &content);
    v.put("greeting_record", &wire);
    v.check();
}
