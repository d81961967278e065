//! The tls link's record layer as a receiver: a stream of TLS records sealed from the
//! input (application data, alerts, handshake messages, any content type) or raw bytes,
//! cut into reads at arbitrary points. The mux records it hands on must be exactly the
//! `u16 len ‖ frames` records of the application data sent, however the stream was cut
//! and however mux records were spread over TLS records; anything else must be an error,
//! never a panic.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use meshd::proto::tls_record::{RecordLayer, TlsRecords, APPLICATION_DATA, MAX_CONTENT};
use meshd_fuzz::{counting, Reader};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// Input: a byte (bit 0: large records), then pieces, each a kind byte and its arguments.
enum Piece<'a> {
    /// One TLS record of application data: `u16 len ‖ body`.
    Data(&'a [u8]),
    /// A TLS record of content type `ty`: `ty ‖ u16 len ‖ body`.
    Other(u8, &'a [u8]),
    /// Bytes that are not a sealed record: `u16 len ‖ bytes`.
    Raw(&'a [u8]),
    /// Where the next read of the receiver ends: `u16`, bytes after the previous one.
    Cut(u16),
}

fn read_piece<'a>(r: &mut Reader<'a>) -> Piece<'a> {
    match r.u8() % 4 {
        0 => Piece::Data(r.chunk()),
        1 => Piece::Other(r.u8(), r.chunk()),
        2 => Piece::Raw(r.chunk()),
        _ => Piece::Cut(r.u16()),
    }
}

fn secrets(key: [u8; 32], iv: [u8; 12]) -> ConnectionTrafficSecrets {
    ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(key),
        iv: Iv::from(iv),
    }
}

fn layer(tx: ([u8; 32], [u8; 12]), rx: ([u8; 32], [u8; 12])) -> RecordLayer {
    let s = ExtractedSecrets {
        tx: (0, secrets(tx.0, tx.1)),
        rx: (0, secrets(rx.0, rx.1)),
    };
    RecordLayer::from_secrets(s).expect("record layer")
}

/// The mux records in `content`, as far as its length prefixes are valid and whole.
fn mux_records(content: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = content;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 || len > 65_519 || tail.len() < len {
            break;
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let a = (counting(0xa0), counting(0xc0));
    let d = (counting(0xd0), counting(0xf0));
    let mut sender = layer(a, d);
    let mut receiver = TlsRecords::new(layer(d, a), Bytes::new());

    let mut wire = Vec::new();
    // Application data sent before the first record that is not (the receiver stops there).
    let mut content = Vec::new();
    let mut clean = true;
    let mut cuts = Vec::new();
    let mut pieces = 0;
    while !r.is_empty() && pieces < 64 {
        pieces += 1;
        match read_piece(&mut r) {
            Piece::Cut(c) => cuts.push(c),
            Piece::Data(body) => {
                let body = &body[..body.len().min(MAX_CONTENT)];
                let start = RecordLayer::begin(&mut wire);
                wire.extend_from_slice(body);
                sender
                    .seal(&mut wire, start, APPLICATION_DATA)
                    .expect("seal");
                if clean {
                    content.extend_from_slice(body);
                }
            }
            Piece::Other(ty, body) => {
                let body = &body[..body.len().min(MAX_CONTENT)];
                let start = RecordLayer::begin(&mut wire);
                wire.extend_from_slice(body);
                sender.seal(&mut wire, start, ty).expect("seal");
                // Content type 0 reads as padding: the body's last non-zero byte is then
                // the type, and what precedes it the content.
                let (ty, body) = match (ty, body.iter().rposition(|&b| b != 0)) {
                    (0, Some(k)) => (body[k], &body[..k]),
                    (ty, _) => (ty, body),
                };
                if ty != APPLICATION_DATA {
                    clean = false;
                } else if clean {
                    content.extend_from_slice(body);
                }
            }
            Piece::Raw(bytes) => {
                wire.extend_from_slice(bytes);
                // No byte string forges a sealed record: after one, nothing more is read.
                clean &= bytes.is_empty();
            }
        }
    }

    let expected = mux_records(&content);
    let mut got = Vec::new();
    let mut input_buf = BytesMut::new();
    let mut pos = 0;
    let mut cuts = cuts.iter();
    let mut failed = false;
    'reads: while pos < wire.len() {
        let step = cuts
            .next()
            .map_or(wire.len() - pos, |&c| usize::from(c).max(1));
        let end = (pos + step).min(wire.len());
        input_buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        loop {
            match receiver.next_record(&mut input_buf) {
                Ok(Some(record)) => {
                    assert!(!record.is_empty() && record.len() <= 65_519);
                    got.push(record.to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'reads;
                }
            }
        }
    }
    // What came out is a prefix of what went in, and all of it when nothing broke.
    assert!(
        got.len() <= expected.len(),
        "more mux records than were sent"
    );
    assert_eq!(got[..], expected[..got.len()], "mux records differ");
    let whole = content.len() == expected.iter().map(|r| r.len() + 2).sum::<usize>();
    if clean && whole {
        assert!(!failed, "a valid stream of records was refused");
        assert_eq!(got.len(), expected.len(), "mux records were lost");
    }
});
