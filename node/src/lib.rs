//! The Cairn storage node: per-core shards, each owning a write-ahead log,
//! a page file of copy-on-write B-tree pages, and the partitions on it.
//!
//! Layers, bottom up: [`device`] (narrow IO traits; glommio direct IO and an
//! in-memory crash simulator), [`wal`] (group-committed log), [`page`] and
//! [`btree`] (archived pages, the IO-free tree core), [`store`] (page file,
//! superblocks, allocator), [`engine`] (one core's partitions, recovery,
//! checkpoints), [`shard`] (thread-per-core executors and their handle),
//! [`server`] (each shard's QUIC face), [`preflight`] (start-up checks).
//! docs/storage-format.md has the bytes.
//!
//! Replication: [`paxos`] is the sans-IO Multi-Paxos replica, and
//! [`replication`] the per-shard driver that runs it over the WAL, the
//! network and the clock (docs/replication.md).

pub mod admission;
pub mod btree;
pub mod device;
pub mod engine;
pub mod load;
pub mod metrics;
pub mod page;
pub mod paxos;
pub mod preflight;
pub mod replication;
pub mod server;
pub mod shard;
pub mod store;
pub mod wal;

pub use engine::{Engine, EngineConfig, EngineError, PartitionId, ScanPage};
pub use replication::ReplicationConfig;
pub use shard::{NodeConfig, NodeError, NodeNetwork, ScanRequest, StorageNode, shard_addr};
