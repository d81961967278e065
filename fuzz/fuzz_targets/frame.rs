//! The frame decoder on arbitrary bytes, as a record's plaintext: every frame it accepts
//! encodes back to exactly the bytes it was decoded from, and it never reads past them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::proto::frame::{self, FrameError, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        match frame::decode(rest) {
            Ok((f, used)) => {
                assert!((HEADER_LEN..=rest.len()).contains(&used));
                assert_eq!(f.encoded_len(), used);
                let mut out = Vec::new();
                f.encode(&mut out);
                assert_eq!(out, &rest[..used], "{f:?} does not encode to its bytes");
                pos += used;
            }
            Err(FrameError::Incomplete) => {
                let whole = rest.len() >= HEADER_LEN
                    && rest.len()
                        >= HEADER_LEN + usize::from(u16::from_be_bytes([rest[9], rest[10]]));
                assert!(!whole, "a whole frame reported incomplete");
                break;
            }
            Err(_) => break,
        }
    }
});
