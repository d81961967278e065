use super::*;
use crate::keys::{derive_pair_key, generate_keypair, MeshSecret};

struct Side {
    name: PeerName,
    private: PrivateKey,
    public: PublicKey,
}

fn side(name: &str) -> Side {
    let (private, public) = generate_keypair().expect("rng");
    Side {
        name: PeerName::new(name).expect("name"),
        private,
        public,
    }
}

fn psk(secret: u8, a: &Side, b: &Side) -> PairKey {
    derive_pair_key(
        &MeshSecret::from_bytes([secret; 32]),
        "m",
        a.name.as_str(),
        b.name.as_str(),
    )
}

fn params<'a>(
    mode: AuthMode,
    mesh_id: &'a str,
    dialer: &'a Side,
    acceptor: &'a Side,
    me: &'a Side,
    remote_key: &'a PublicKey,
    psk: &'a PairKey,
) -> PairParams<'a> {
    PairParams {
        mode,
        mesh_id,
        dialer: &dialer.name,
        acceptor: &acceptor.name,
        local_key: &me.private,
        remote_key,
        psk,
    }
}

/// Runs a whole handshake; the acceptor side may use different inputs to model attacks.
fn run(
    mode: AuthMode,
    dial: PairParams<'_>,
    accept: PairParams<'_>,
) -> Result<(Session, Session), HandshakeError> {
    let (init, first) = initiate(&dial, 42)?;
    let pre: [u8; PREAMBLE_LEN] = first[..PREAMBLE_LEN].try_into().expect("len");
    let preamble = Preamble::decode(&pre)?;
    assert_eq!(preamble.mode, mode);
    assert_eq!(&preamble.name, dial.dialer);
    let len = u16::from_be_bytes([first[PREAMBLE_LEN], first[PREAMBLE_LEN + 1]]) as usize;
    let msg1 = &first[PREAMBLE_LEN + 2..];
    assert_eq!(msg1.len(), len);
    let responder = respond(&accept, msg1)?;
    assert_eq!(responder.timestamp(), 42);
    let (second, acc_session) = responder.finish()?;
    let dial_session = init.finish(&second[2..])?;
    Ok((dial_session, acc_session))
}

fn check_records(mut a: Session, mut b: Session) {
    let mut wire = Vec::new();
    a.seal(b"hello over the link", &mut wire).expect("seal");
    let n = b.open_in_place(&mut wire[2..]).expect("open");
    assert_eq!(&wire[2..2 + n], b"hello over the link");
    // Tampering with a record is detected.
    let mut wire = Vec::new();
    b.seal(b"reply", &mut wire).expect("seal");
    wire[5] ^= 1;
    assert_eq!(a.open_in_place(&mut wire[2..]), Err(RecordError::Decrypt));
}

#[test]
fn noise_handshake_completes_and_records_flow() {
    let (d, a) = (side("dialer"), side("acceptor"));
    let k = psk(0, &d, &a);
    let (s1, s2) = run(
        AuthMode::Noise,
        params(AuthMode::Noise, "m", &d, &a, &d, &a.public, &k),
        params(AuthMode::Noise, "m", &d, &a, &a, &d.public, &k),
    )
    .expect("handshake");
    check_records(s1, s2);
}

#[test]
fn psk_handshake_completes_and_records_flow() {
    let (d, a) = (side("dialer"), side("acceptor"));
    let k = psk(9, &d, &a);
    let (s1, s2) = run(
        AuthMode::Psk,
        params(AuthMode::Psk, "m", &d, &a, &d, &a.public, &k),
        params(AuthMode::Psk, "m", &d, &a, &a, &d.public, &k),
    )
    .expect("handshake");
    check_records(s1, s2);
}

#[test]
fn noise_rejects_a_key_other_than_the_manifest_key() {
    let (d, a, mallory) = (side("dialer"), side("acceptor"), side("dialer"));
    let k = psk(0, &d, &a);
    // Mallory claims to be "dialer" but holds another key.
    let err = run(
        AuthMode::Noise,
        params(AuthMode::Noise, "m", &mallory, &a, &mallory, &a.public, &k),
        params(AuthMode::Noise, "m", &d, &a, &a, &d.public, &k),
    )
    .expect_err("must fail");
    assert_eq!(err, HandshakeError::WrongKey("dialer".into()));
}

#[test]
fn noise_rejects_wrong_mesh_secret_pair_key() {
    let (d, a) = (side("dialer"), side("acceptor"));
    let (k1, k2) = (psk(1, &d, &a), psk(2, &d, &a));
    // psk2 is mixed in at msg2, so the dialer is the one who notices.
    let err = run(
        AuthMode::Noise,
        params(AuthMode::Noise, "m", &d, &a, &d, &a.public, &k1),
        params(AuthMode::Noise, "m", &d, &a, &a, &d.public, &k2),
    )
    .expect_err("must fail");
    assert_eq!(err, HandshakeError::Decrypt);
}

#[test]
fn psk_rejects_wrong_pair_key_at_msg1() {
    let (d, a) = (side("dialer"), side("acceptor"));
    let (k1, k2) = (psk(1, &d, &a), psk(2, &d, &a));
    let err = run(
        AuthMode::Psk,
        params(AuthMode::Psk, "m", &d, &a, &d, &a.public, &k1),
        params(AuthMode::Psk, "m", &d, &a, &a, &d.public, &k2),
    )
    .expect_err("must fail");
    assert_eq!(err, HandshakeError::Decrypt);
}

#[test]
fn other_mesh_id_never_completes() {
    let (d, a) = (side("dialer"), side("acceptor"));
    let k = psk(0, &d, &a);
    let err = run(
        AuthMode::Noise,
        params(AuthMode::Noise, "m", &d, &a, &d, &a.public, &k),
        params(AuthMode::Noise, "other", &d, &a, &a, &d.public, &k),
    )
    .expect_err("must fail");
    assert_eq!(err, HandshakeError::Decrypt);
}

#[test]
fn tampered_msg1_is_rejected() {
    let (d, a) = (side("dialer"), side("acceptor"));
    let k = psk(0, &d, &a);
    let dial = params(AuthMode::Noise, "m", &d, &a, &d, &a.public, &k);
    let accept = params(AuthMode::Noise, "m", &d, &a, &a, &d.public, &k);
    let (_, first) = initiate(&dial, 1).expect("initiate");
    let msg1 = &first[PREAMBLE_LEN + 2..];
    for i in 0..msg1.len() {
        let mut bad = msg1.to_vec();
        bad[i] ^= 0x40;
        assert!(respond(&accept, &bad).is_err(), "flip at byte {i} accepted");
    }
    assert!(respond(&accept, &msg1[..msg1.len() - 1]).is_err());
    assert!(respond(&accept, &[]).is_err());
}

#[test]
fn preamble_rejects_garbage() {
    let good = Preamble {
        mode: AuthMode::Noise,
        name: PeerName::new("off2").expect("name"),
    };
    let bytes = good.encode();
    assert_eq!(Preamble::decode(&bytes), Ok(good));
    let mut bad = bytes;
    bad[0] = b'G';
    assert_eq!(Preamble::decode(&bad), Err(HandshakeError::BadMagic));
    let mut bad = bytes;
    bad[4] = 9;
    assert_eq!(Preamble::decode(&bad), Err(HandshakeError::BadVersion(9)));
    let mut bad = bytes;
    bad[6] = 0;
    assert_eq!(Preamble::decode(&bad), Err(HandshakeError::BadName));
    let mut bad = bytes;
    bad[8] = b'A';
    assert_eq!(Preamble::decode(&bad), Err(HandshakeError::BadName));
    let mut bad = bytes;
    bad[40] = 1;
    assert_eq!(Preamble::decode(&bad), Err(HandshakeError::BadName));
    let mut bad = bytes;
    bad[5] = 77;
    assert!(matches!(
        Preamble::decode(&bad),
        Err(HandshakeError::ModeMismatch { got: 77, .. })
    ));
}

/// A finished noise handshake whose dialer runs our record layer and whose acceptor runs
/// snow's own `TransportState`.
fn ours_and_snows() -> (Session, snow::TransportState) {
    let (d, a) = (side("dialer"), side("acceptor"));
    let k = psk(0, &d, &a);
    let dial = params(AuthMode::Noise, "m", &d, &a, &d, &a.public, &k);
    let accept = params(AuthMode::Noise, "m", &d, &a, &a, &d.public, &k);
    let (init, first) = initiate(&dial, 7).expect("initiate");
    let responder = respond(&accept, &first[PREAMBLE_LEN + 2..]).expect("respond");
    let mut snow_side = responder.state;
    let mut msg2 = [0u8; MAX_HANDSHAKE_MSG];
    let n = snow_side.write_message(&[], &mut msg2).expect("msg2");
    let ours = init.finish(&msg2[..n]).expect("finish");
    let theirs = snow_side.into_transport_mode().expect("transport");
    (ours, theirs)
}

/// Our in-place record layer must be Noise's transport, byte for byte: records it seals
/// are opened by snow's own `TransportState` and the other way round, in order, across
/// many nonces; a reordered record is refused.
#[test]
fn records_interoperate_with_snows_transport() {
    let (mut ours, mut theirs) = ours_and_snows();

    let mut out = vec![0u8; 70_000];
    for i in 0..300usize {
        let plain: Vec<u8> = (0..(i * 211) % 65_000).map(|j| (i + j) as u8).collect();
        let mut wire = Vec::new();
        ours.seal(&plain, &mut wire).expect("seal");
        assert_eq!(wire.len(), 2 + plain.len() + TAG_LEN);
        let m = theirs
            .read_message(&wire[2..], &mut out)
            .expect("snow opens ours");
        assert_eq!(&out[..m], &plain[..]);

        let m = theirs.write_message(&plain, &mut out).expect("snow seals");
        let mut ct = out[..m].to_vec();
        let p = ours.open_in_place(&mut ct).expect("we open snow's");
        assert_eq!(&ct[..p], &plain[..]);
    }
    // A record skipped (or replayed) never opens: the nonce is implicit.
    let _skipped = theirs.write_message(b"one", &mut out).expect("seal");
    let m = theirs.write_message(b"two", &mut out).expect("seal");
    let mut second = out[..m].to_vec();
    assert_eq!(ours.open_in_place(&mut second), Err(RecordError::Decrypt));
}

/// A record sealed where it lies in a buffer with room around it is Noise's transport
/// message too: snow opens it, interleaved with records sealed in the write buffer (one
/// nonce sequence for both), and a buffer without room is refused without using a nonce.
#[test]
fn records_sealed_in_place_interoperate_with_snows_transport() {
    let (mut ours, mut theirs) = ours_and_snows();

    let mut out = vec![0u8; 70_000];
    for i in 0..50usize {
        let plain: Vec<u8> = (0..(i * 1_301) % MAX_RECORD_PLAINTEXT)
            .map(|j| (i ^ j) as u8)
            .collect();
        let wire = if i % 2 == 0 {
            let mut buf = vec![0xAB; 5];
            buf.extend_from_slice(&plain);
            buf.extend_from_slice(&[0xAB; TAG_LEN + 3]);
            let end = buf.len() - TAG_LEN - 3;
            assert_eq!(
                ours.seal_slice(&mut buf[..4], 5..end),
                Err(RecordError::NoRoom)
            );
            let range = ours.seal_slice(&mut buf, 5..end).expect("seal in place");
            assert_eq!(range, 3..end + TAG_LEN);
            buf[range].to_vec()
        } else {
            let mut wire = Vec::new();
            ours.seal(&plain, &mut wire).expect("seal");
            wire
        };
        let len = u16::from_be_bytes([wire[0], wire[1]]) as usize;
        assert_eq!(len, wire.len() - 2);
        let m = theirs
            .read_message(&wire[2..], &mut out)
            .expect("snow opens ours");
        assert_eq!(&out[..m], &plain[..], "record {i}");
    }
    let mut big = vec![0u8; MAX_RECORD_PLAINTEXT + 40];
    assert_eq!(
        ours.seal_slice(&mut big, 2..3 + MAX_RECORD_PLAINTEXT),
        Err(RecordError::Size(MAX_RECORD_PLAINTEXT + 1))
    );
}
