//! Entrances (a local listener whose connections become streams to a peer's service) and
//! exits (a stream from a peer becomes a connection to an allow-listed target), joined to
//! their streams by `splice`, which keeps half-closes and turns aborts into TCP resets.

mod entrance;
mod exit;
mod join;
mod socket;
mod splice;

pub use entrance::serve_forward;
pub use exit::ExitTable;
pub use splice::{splice, SpliceEnd};
