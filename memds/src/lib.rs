//! The metadata system's sans-IO parts: the compressed partition map MemDS
//! holds ([`map`]) and the router's constant-work cache of it ([`cache`]).
//! See `docs/metadata.md`.

pub mod balance;
pub mod cache;
pub mod control;
mod executor;
pub mod gac;
pub mod heal;
pub mod map;
pub mod meta;
pub mod server;
mod varint;

pub use cache::{CacheStats, Refresh, RouteCache};
pub use map::{Located, MapError, Partition, PartitionMap, REPLICAS_MAX, Replicas};
