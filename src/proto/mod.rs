//! The link protocol, sans I/O: frames, the stream multiplexer, and handshakes. Nothing here
//! touches a socket or reads a clock; callers pass `now` in.

pub mod frame;
pub mod handshake;
pub mod mux;
