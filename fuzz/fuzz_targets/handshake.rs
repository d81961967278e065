//! The pre-authentication parsers: the preamble, msg1 as the acceptor reads it, msg2 as
//! the dialer reads it, and then the dialer's first transport records. The first input
//! byte chooses, the rest is the message:
//!
//! - 0: a preamble (cut or zero-padded to 72 bytes);
//! - 1, 2: msg1 of a `noise`, `psk` handshake, to the acceptor of the golden vectors;
//! - 3, 4: `u16 len ‖ msg2 ‖ records` of a `noise`, `psk` handshake, to the vectors'
//!   dialer (whose ephemeral key is pinned, so the vectors' msg2 completes it), the
//!   records then opened and handed to a multiplexer as the driver does.

#![no_main]

use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshd::config::AuthMode;
use meshd::proto::handshake::{
    initiate_pinned_for_testing_only, respond_pinned_for_testing_only, PairParams, Preamble,
    MAX_HANDSHAKE_MSG, PREAMBLE_LEN, TAG_LEN,
};
use meshd::proto::mux::{Mux, MuxConfig, Role};
use meshd_fuzz::vector::{self, MESH_ID, TIMESTAMP};

fn preamble(rest: &[u8]) {
    let mut buf = [0u8; PREAMBLE_LEN];
    let n = rest.len().min(PREAMBLE_LEN);
    buf[..n].copy_from_slice(&rest[..n]);
    if let Ok(p) = Preamble::decode(&buf) {
        assert_eq!(
            p.encode(),
            buf,
            "a preamble that decodes encodes back to itself"
        );
    }
}

fn respond(mode: AuthMode, msg1: &[u8]) {
    if msg1.len() > MAX_HANDSHAKE_MSG {
        return; // refused by its length prefix before it is read
    }
    let pair = vector::pair(mode);
    let dialer_key = pair.dialer_static.public_key();
    let params = PairParams {
        mode,
        mesh_id: MESH_ID,
        dialer: &pair.dialer,
        acceptor: &pair.acceptor,
        local_key: &pair.acceptor_static,
        remote_key: &dialer_key,
        psk: &pair.psk,
    };
    let Ok(responder) = respond_pinned_for_testing_only(&params, msg1, &pair.acceptor_ephemeral)
    else {
        return;
    };
    let want = if mode == AuthMode::Noise { 104 } else { 56 };
    assert_eq!(msg1.len(), want, "an authentic msg1 of another size");
    let _ = responder.timestamp();
    let (msg2, _session) = responder.finish().expect("msg2 after an authentic msg1");
    assert_eq!(msg2.len(), 2 + 48);
}

fn finish(mode: AuthMode, rest: &[u8]) {
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if len > MAX_HANDSHAKE_MSG || rest.len() < len {
        return;
    }
    let (msg2, mut stream) = rest.split_at(len);
    let pair = vector::pair(mode);
    let acceptor_key = pair.acceptor_static.public_key();
    let params = PairParams {
        mode,
        mesh_id: MESH_ID,
        dialer: &pair.dialer,
        acceptor: &pair.acceptor,
        local_key: &pair.dialer_static,
        remote_key: &acceptor_key,
        psk: &pair.psk,
    };
    let (initiator, _) =
        initiate_pinned_for_testing_only(&params, TIMESTAMP, &pair.dialer_ephemeral)
            .expect("initiate");
    let Ok(mut session) = initiator.finish(msg2) else {
        return;
    };
    assert_eq!(msg2.len(), 48, "an authentic msg2 of another size");
    let now = Instant::now();
    let mut mux = Mux::<()>::new(Role::Dialer, MuxConfig::default(), now);
    // The driver's record loop: u16 len ‖ ciphertext, opened in place, to the mux.
    while let Some((len, rest)) = stream.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        if len < TAG_LEN || rest.len() < len {
            return;
        }
        let mut record = rest[..len].to_vec();
        stream = &rest[len..];
        let Ok(n) = session.open_in_place(&mut record) else {
            return;
        };
        record.truncate(n);
        if mux.handle_record(Bytes::from(record), now).is_err() {
            return;
        }
        while mux.poll_event().is_some() {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => preamble(rest),
        1 => respond(AuthMode::Noise, rest),
        2 => respond(AuthMode::Psk, rest),
        3 => finish(AuthMode::Noise, rest),
        _ => finish(AuthMode::Psk, rest),
    }
});
