//! What a router core knows of tables and nodes: a copy of MemDS's
//! catalog, refreshed in the background, and the hash that places a key.
//! The authoritative metadata and the partition map live in MemDS and the
//! metadata partition (`cairn_memds`, docs/metadata.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use cairn_common::KeySchema;
use cairn_common::admission::{PARTITION_READ_UNITS_MAX, PARTITION_WRITE_UNITS_MAX};
use cairn_common::wire::{Capacity, PartitionLimit, WireNode, WireTable};
use cairn_memds::meta::{NodeRecord, TableStatus};

pub use cairn_memds::meta::PARTITIONS_MAX;

/// A storage node as configured: the router's bootstrap list, which also
/// locates the metadata group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// Shard 0's address; shard `i` listens on port + i.
    pub addr: SocketAddr,
    pub cores: usize,
    /// The node's availability zone: a group's replicas never share one
    /// while enough zones exist.
    pub zone: String,
}

impl NodeAddress {
    /// The node's record when it is `id`-th in the configured list.
    pub fn record(&self, id: usize) -> NodeRecord {
        NodeRecord {
            id: id as u16,
            addr: self.addr,
            cores: self.cores as u32,
            zone: self.zone.clone(),
        }
    }
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub id: u32,
    pub schema: KeySchema,
    pub partitions: u32,
    /// Copies of each partition: 1, or a replication group of 3.
    pub replicas: u32,
    pub status: TableStatus,
    pub version: u64,
    pub capacity: Capacity,
    /// Partitions with a log replica, which holds no items: their
    /// eventually consistent reads go to the leader, not to any replica.
    pub with_log_replica: Vec<u64>,
}

impl Table {
    /// What each partition may serve when GAC does not gate the table: a
    /// provisioned table's capacity split evenly over its partitions
    /// (rounded up, at least one unit each), which holds the table's limit
    /// with no coordination between routers.
    /// An on-demand table has no limit yet: its capacity is to follow its
    /// traffic (issue 6), and until partitions split for heat a fixed cap
    /// would throttle a table that DynamoDB would have split.
    pub fn partition_limit(&self) -> Option<PartitionLimit> {
        match self.capacity {
            Capacity::OnDemand => None,
            Capacity::Provisioned {
                read_units,
                write_units,
            } => {
                let share = |units: u32| units.div_ceil(self.partitions.max(1)).max(1);
                Some(PartitionLimit {
                    read_units: share(read_units),
                    write_units: share(write_units),
                })
            }
        }
    }

    /// What each partition may serve while GAC holds the table's limit
    /// across routers: the whole table's capacity, up to a partition's
    /// maximum, so a hot partition may use what its cold siblings leave
    /// (DynamoDB's adaptive capacity). On demand: no partition limit.
    pub fn adaptive_limit(&self) -> Option<PartitionLimit> {
        match self.capacity {
            Capacity::OnDemand => None,
            Capacity::Provisioned {
                read_units,
                write_units,
            } => Some(PartitionLimit {
                read_units: read_units.min(PARTITION_READ_UNITS_MAX as u32),
                write_units: write_units.min(PARTITION_WRITE_UNITS_MAX as u32),
            }),
        }
    }

    fn from_wire(table: &WireTable) -> Option<(String, Table)> {
        Some((
            table.name.clone(),
            Table {
                id: table.id,
                schema: KeySchema::decode(&table.schema).ok()?,
                partitions: table.partitions,
                replicas: table.replicas,
                status: TableStatus::parse(&table.status)?,
                version: table.version,
                capacity: table.capacity,
                with_log_replica: table.log_replicas.iter().map(|(p, _)| *p).collect(),
            },
        ))
    }
}

pub use cairn_common::key::partition_hash;

/// A core's copy of MemDS's catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    pub version: u64,
    /// Shared, so a request takes its table without copying the schema.
    pub tables: HashMap<String, Rc<Table>>,
    pub nodes: HashMap<u16, NodeRecord>,
}

impl Catalog {
    /// Replaces everything with a catalog MemDS sent. Malformed entries
    /// (which MemDS never sends) are skipped.
    pub fn replace(&mut self, version: u64, tables: &[WireTable], nodes: &[WireNode]) {
        self.version = version;
        self.tables = tables
            .iter()
            .filter_map(Table::from_wire)
            .map(|(name, table)| (name, Rc::new(table)))
            .collect();
        self.nodes = nodes
            .iter()
            .filter_map(|n| {
                Some((
                    n.id,
                    NodeRecord {
                        id: n.id,
                        addr: n.addr.parse().ok()?,
                        cores: n.cores,
                        zone: n.zone.clone(),
                    },
                ))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_memds::meta::even_starts;

    #[test]
    fn partitions_split_the_hash_space_evenly() {
        let starts = even_starts(16);
        let mut counts = [0u32; 16];
        for i in 0..16_000u32 {
            let hash = partition_hash(format!("key{i}").as_bytes());
            counts[starts.partition_point(|s| *s <= hash) - 1] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }
}
