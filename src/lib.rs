//! meshd: forwards TCP streams between servers over authenticated, encrypted, multiplexed
//! links.
#![forbid(unsafe_code)]

pub mod config;
pub mod keys;
pub mod proto;
