//! Pseudo-random payloads that are cheap to generate and hash on the fly, so that a
//! gigabyte can cross a tunnel without being held in memory.

use std::fmt::Write as _;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Size of the chunks that `send_random` writes.
pub const CHUNK: usize = 64 * 1024;

/// xorshift64: fast and deterministic, not for anything but test payloads.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`; distinct seeds give distinct streams.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut x = self.0;
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        self.0 = x;
    }

    /// The next `len` bytes as a vector.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Length and SHA-256 of a byte stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest {
    /// Bytes seen.
    pub bytes: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
}

/// The first `len` bytes of the stream of `seed`, made [`CHUNK`] bytes at a time (the
/// bytes depend on the chunking) and hashed as they are made.
pub struct RandomStream {
    rng: XorShift,
    ctx: ring::digest::Context,
    buf: Vec<u8>,
    left: u64,
}

impl RandomStream {
    /// The stream of `seed`, `len` bytes long.
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: XorShift::new(seed),
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            buf: vec![0u8; CHUNK],
            left: len,
        }
    }

    /// The next piece (at most [`CHUNK`] bytes); empty once all `len` were made.
    pub fn next_piece(&mut self) -> &[u8] {
        let n = self.left.min(CHUNK as u64) as usize;
        self.rng.fill(&mut self.buf[..n]);
        self.ctx.update(&self.buf[..n]);
        self.left -= n as u64;
        &self.buf[..n]
    }

    /// SHA-256 (hex) of every byte made so far.
    pub fn sha256(self) -> String {
        hex(self.ctx.finish().as_ref())
    }
}

/// Writes `len` bytes of the stream of `seed` to `w`, hashing as it goes, then shuts
/// down the write side. Returns what was sent.
pub async fn send_random<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> std::io::Result<Digest> {
    let mut stream = RandomStream::new(seed, len);
    loop {
        let piece = stream.next_piece();
        if piece.is_empty() {
            break;
        }
        w.write_all(piece).await?;
    }
    w.shutdown().await?;
    Ok(Digest {
        bytes: len,
        sha256: stream.sha256(),
    })
}
