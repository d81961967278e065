//! Handshakes (pending).
