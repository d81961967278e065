//! The link protocol, sans I/O: frames, the stream multiplexer, handshakes, and the TLS
//! record layer of established `tls` links. Nothing here touches a socket or reads a
//! clock; callers pass `now` in.

pub mod aead_key;
pub mod chunk;
pub mod frame;
pub mod handshake;
pub mod mux;
pub mod rekey;
pub mod tls_record;
#[cfg(test)]
mod vectors;

/// A table keyed by stream id, looked up for every frame: foldhash, seeded per process.
pub type StreamMap<V> = std::collections::HashMap<frame::StreamId, V, foldhash::fast::RandomState>;
