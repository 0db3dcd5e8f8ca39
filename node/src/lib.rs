//! The Cairn storage node.

pub mod btree;
pub mod device;
pub mod page;
pub mod wal;
