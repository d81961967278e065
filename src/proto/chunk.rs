//! Stream data on its way into a record.
//!
//! A bulk read from a local socket lands in a buffer with room before and after it
//! ([`Roomy`]). When such a chunk fits one record whole, the multiplexer writes its DATA
//! header into the room before it, the record layer writes its own header there too and
//! its tag (and TLS content type) into the room after, and the AEAD seals it where it
//! lies: the chunk itself becomes the record on the wire, with no copy into the link's
//! write buffer. Any other chunk ([`Chunk::Shared`]: a short read, the rest of a chunk
//! that was split) is copied into a record as before.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use super::frame::HEADER_LEN;

/// Room a record layer needs before a mux record's frames: the TLS header (5 bytes) and
/// the mux record length (2); the Noise length prefix (2) fits in it.
pub const RECORD_HEAD: usize = 7;
/// Room a record layer needs after a mux record's frames: the TLS inner content type (1)
/// and the AEAD tag (16).
pub const RECORD_TAIL: usize = 17;
/// Room before a [`Roomy`] chunk's data: a DATA frame header and a record header.
pub const HEAD_ROOM: usize = HEADER_LEN + RECORD_HEAD;
/// Room after a [`Roomy`] chunk's data.
pub const TAIL_ROOM: usize = RECORD_TAIL;

/// Stream data in a buffer it owns alone, with [`HEAD_ROOM`] bytes before it and
/// [`TAIL_ROOM`] bytes after it that belong to nobody else.
#[derive(Debug)]
pub struct Roomy {
    buf: BytesMut,
}

impl Roomy {
    /// Takes `buf` as `room ‖ data ‖ room`; `None` if it is too short to hold both rooms.
    pub fn new(buf: BytesMut) -> Option<Self> {
        (buf.len() >= HEAD_ROOM + TAIL_ROOM).then_some(Self { buf })
    }

    /// The stream bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[HEAD_ROOM..self.buf.len() - TAIL_ROOM]
    }

    /// Number of stream bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - HEAD_ROOM - TAIL_ROOM
    }

    /// Whether it carries no stream bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole buffer, for writing headers into the rooms, and where the data lies in it.
    pub(crate) fn into_parts(self) -> (BytesMut, Range<usize>) {
        let end = self.buf.len() - TAIL_ROOM;
        (self.buf, HEAD_ROOM..end)
    }
}

/// Bytes a stream asked to send, queued in the multiplexer.
#[derive(Debug)]
pub enum Chunk {
    /// Data that is copied into a record.
    Shared(Bytes),
    /// Data that can become a record where it lies.
    Roomy(Roomy),
}

impl Chunk {
    /// The data of `buf`, laid out as `room ‖ data ‖ room`: roomy as it lies (a buffer
    /// too short for both rooms holds no data, and becomes an empty chunk).
    pub fn framed(buf: BytesMut) -> Self {
        match Roomy::new(buf) {
            Some(r) => Chunk::Roomy(r),
            None => Chunk::Shared(Bytes::new()),
        }
    }

    /// The stream bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Roomy(r) => r.data(),
        }
    }

    /// Number of stream bytes.
    pub fn len(&self) -> usize {
        match self {
            Chunk::Shared(b) => b.len(),
            Chunk::Roomy(r) => r.len(),
        }
    }

    /// Whether it carries no stream bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes (at most `len()`). A roomy chunk becomes a shared view of
    /// its rest: the bytes before the rest now hold a record that is still to be written.
    pub fn advance(&mut self, n: usize) {
        match self {
            Chunk::Shared(b) => b.advance(n),
            Chunk::Roomy(r) => {
                let buf = std::mem::take(&mut r.buf);
                let end = buf.len() - TAIL_ROOM;
                *self = Chunk::Shared(buf.freeze().slice(HEAD_ROOM + n..end));
            }
        }
    }
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Self {
        Chunk::Shared(b)
    }
}

impl From<Roomy> for Chunk {
    fn from(r: Roomy) -> Self {
        Chunk::Roomy(r)
    }
}

/// A record the multiplexer built inside a [`Roomy`] chunk: `buf[frames]` holds one DATA
/// frame (header and payload), with at least [`RECORD_HEAD`] bytes of room before it and
/// [`RECORD_TAIL`] after it, for the record layer to seal it where it lies.
#[derive(Debug)]
pub struct OwnedRecord {
    pub buf: BytesMut,
    pub frames: Range<usize>,
}

/// `data` between filled rooms, as a test's chunk.
#[cfg(test)]
pub(crate) fn roomy(data: &[u8]) -> Roomy {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0xEE; HEAD_ROOM]);
    buf.extend_from_slice(data);
    buf.extend_from_slice(&[0xEE; TAIL_ROOM]);
    Roomy::new(buf).expect("long enough")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roomy_data_lies_between_the_rooms() {
        let r = roomy(b"hello");
        assert_eq!(r.data(), b"hello");
        assert_eq!(r.len(), 5);
        let (buf, range) = r.into_parts();
        assert_eq!(&buf[range], b"hello");
        assert!(Roomy::new(BytesMut::from(&[0u8; HEAD_ROOM + TAIL_ROOM - 1][..])).is_none());
        assert!(
            Roomy::new(BytesMut::from(&[0u8; HEAD_ROOM + TAIL_ROOM][..]))
                .expect("empty data")
                .is_empty()
        );
    }

    #[test]
    fn advancing_a_roomy_chunk_keeps_the_rest_exactly() {
        let mut c = Chunk::from(roomy(b"0123456789"));
        c.advance(3);
        assert!(matches!(c, Chunk::Shared(_)));
        assert_eq!(c.as_slice(), b"3456789");
        c.advance(7);
        assert!(c.is_empty());
        let mut s = Chunk::from(Bytes::from_static(b"abc"));
        s.advance(1);
        assert_eq!(s.as_slice(), b"bc");
    }
}
