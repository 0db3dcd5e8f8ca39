//! The Cairn storage node.

pub mod device;
pub mod wal;
