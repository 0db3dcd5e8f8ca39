//! The Cairn storage node.

pub mod btree;
pub mod device;
pub mod engine;
pub mod page;
pub mod store;
pub mod wal;
