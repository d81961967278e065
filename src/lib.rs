//! meshd forwards TCP streams between servers over authenticated, encrypted, multiplexed
//! links. One stream's path through the modules:
//!
//! - `config` loads the host config and the manifest and validates them before anything
//!   is bound;
//! - `forward` (entrance) accepts a local connection on a `[[forwards]]` address;
//! - `link` (dial) keeps the link to the forward's peer up; `proto::handshake`
//!   authenticated it with a key from `keys`;
//! - `proto::mux` opens a stream on that link, and the link driver sends its OPEN and first
//!   bytes in one record;
//! - on the other peer, `link` (accept) runs the same driver, and `forward` (exit) checks
//!   the service's allow list and connects the target;
//! - `forward` (splice) copies bytes both ways within each stream's credit until both
//!   sides have half-closed, or resets the local socket when the stream is aborted;
//! - `admin` counts the link, stream and bytes along the way and serves them as
//!   `/metrics`, `/healthz` and `/status`;
//! - `tls` loads the certificates of `auth = "tls"` links (rustls, ring provider), and
//!   `proto::tls_record` runs their TLS records once rustls has finished the handshake;
//! - `busy_poll` keeps the runtime thread awake for a moment after small messages, so a
//!   reply finds it polling instead of asleep;
//! - `daemon` wires these together and drains them on shutdown; `ports` picks loopback
//!   ports for daemons started together (the demo, the tests, the benchmark).
// One function may opt out, with a comment proving its `unsafe` block sound:
// `forward::socket::read_segments` (a vectored read into a buffer's spare capacity).
#![deny(unsafe_code)]

pub mod admin;
pub mod busy_poll;
pub mod config;
pub mod daemon;
pub mod forward;
pub mod keys;
pub mod link;
pub mod ports;
pub mod proto;
pub mod tls;
