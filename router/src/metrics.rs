//! Consumed capacity and throttles per table and partition, counted by
//! each router core and exported in Prometheus's text format on the
//! router's `metrics` address (docs/admission.md, "Metrics").
//!
//! A core counts into its own map behind its own mutex: the lock is only
//! ever contended by a scrape. A scrape takes every core's counts, adds
//! them up and encodes them with `prometheus-client`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Partitions one core counts separately; beyond, a table's further
/// partitions are counted together under partition "other".
pub const PARTITIONS_COUNTED_MAX: usize = 65_536;
/// The partition id counts of uncounted partitions go under.
const OTHER: u64 = u64::MAX;

/// Why a request was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    /// GAC: the table's limit across routers.
    Table,
    /// The node: the partition's (or the node's) buckets.
    Partition,
}

/// One partition's counts on one core; index 0 reads, 1 writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartitionCounts {
    /// Capacity consumed by served requests, in milli-units.
    pub consumed: [u64; 2],
    /// Requests served.
    pub served: [u64; 2],
    /// Requests refused by GAC.
    pub throttled_table: [u64; 2],
    /// Requests refused by the node.
    pub throttled_partition: [u64; 2],
}

impl PartitionCounts {
    fn add(&mut self, other: &PartitionCounts) {
        for kind in 0..2 {
            self.consumed[kind] += other.consumed[kind];
            self.served[kind] += other.served[kind];
            self.throttled_table[kind] += other.throttled_table[kind];
            self.throttled_partition[kind] += other.throttled_partition[kind];
        }
    }
}

/// One core's counts, by (table id, partition id).
#[derive(Debug, Default)]
pub struct CoreMetrics {
    counts: Mutex<HashMap<(u32, u64), PartitionCounts>>,
}

impl CoreMetrics {
    fn with(&self, table: u32, partition: u64, change: impl FnOnce(&mut PartitionCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let key =
            if counts.len() < PARTITIONS_COUNTED_MAX || counts.contains_key(&(table, partition)) {
                (table, partition)
            } else {
                (table, OTHER)
            };
        change(counts.entry(key).or_default());
    }

    /// A request was served and consumed `cost` milli-units.
    pub fn served(&self, table: u32, partition: u64, write: bool, cost: u64) {
        let kind = usize::from(write);
        self.with(table, partition, |c| {
            c.served[kind] += 1;
            c.consumed[kind] += cost;
        });
    }

    pub fn throttled(&self, table: u32, partition: u64, write: bool, by: ThrottledBy) {
        let kind = usize::from(write);
        self.with(table, partition, |c| match by {
            ThrottledBy::Table => c.throttled_table[kind] += 1,
            ThrottledBy::Partition => c.throttled_partition[kind] += 1,
        });
    }

    fn snapshot(&self) -> Vec<((u32, u64), PartitionCounts)> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Every core's counts, summed.
pub fn totals(cores: &[Arc<CoreMetrics>]) -> HashMap<(u32, u64), PartitionCounts> {
    let mut totals: HashMap<(u32, u64), PartitionCounts> = HashMap::new();
    for core in cores {
        for (key, counts) in core.snapshot() {
            totals.entry(key).or_default().add(&counts);
        }
    }
    totals
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    table: String,
    partition: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottleLabels {
    table: String,
    partition: String,
    kind: &'static str,
    by: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
    kind: &'static str,
}

/// The text exposition of `totals`; `name` gives a table id's name.
pub fn encode(
    totals: &HashMap<(u32, u64), PartitionCounts>,
    name: impl Fn(u32) -> Option<String>,
) -> String {
    let consumed = Family::<PartitionLabels, Counter<f64>>::default();
    let served = Family::<PartitionLabels, Counter>::default();
    let throttled = Family::<ThrottleLabels, Counter>::default();
    let table_consumed = Family::<TableLabels, Counter<f64>>::default();
    let table_throttled = Family::<TableLabels, Counter>::default();
    for (&(table, partition), counts) in totals {
        let table = name(table).unwrap_or_else(|| format!("#{table}"));
        let partition = if partition == OTHER {
            "other".to_owned()
        } else {
            format!("{partition:#x}")
        };
        for (kind, label) in [(0, "read"), (1, "write")] {
            let labels = PartitionLabels {
                table: table.clone(),
                partition: partition.clone(),
                kind: label,
            };
            let units = counts.consumed[kind] as f64 / 1000.0;
            consumed.get_or_create(&labels).inc_by(units);
            served.get_or_create(&labels).inc_by(counts.served[kind]);
            for (by, count) in [
                ("table", counts.throttled_table[kind]),
                ("partition", counts.throttled_partition[kind]),
            ] {
                throttled
                    .get_or_create(&ThrottleLabels {
                        table: table.clone(),
                        partition: partition.clone(),
                        kind: label,
                        by,
                    })
                    .inc_by(count);
            }
            let table_labels = TableLabels {
                table: table.clone(),
                kind: label,
            };
            table_consumed.get_or_create(&table_labels).inc_by(units);
            table_throttled
                .get_or_create(&table_labels)
                .inc_by(counts.throttled_table[kind] + counts.throttled_partition[kind]);
        }
    }
    let mut registry = Registry::with_prefix("cairn");
    registry.register(
        "partition_consumed_capacity_units",
        "Capacity units consumed by served requests, by table, partition and kind",
        consumed,
    );
    registry.register(
        "partition_requests",
        "Requests served, by table, partition and kind",
        served,
    );
    registry.register(
        "partition_throttled_requests",
        "Requests throttled, by table, partition, kind and by whom (table: GAC; partition: the node)",
        throttled,
    );
    registry.register(
        "table_consumed_capacity_units",
        "Capacity units consumed by served requests, by table and kind",
        table_consumed,
    );
    registry.register(
        "table_throttled_requests",
        "Requests throttled, by table and kind",
        table_throttled,
    );
    cairn_common::scrape::exposition(&registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_add_up_and_encode_by_table_and_partition() {
        let cores = [
            Arc::new(CoreMetrics::default()),
            Arc::new(CoreMetrics::default()),
        ];
        cores[0].served(1, 0x10, true, 2000);
        cores[1].served(1, 0x10, true, 1000);
        cores[1].served(1, 0x20, false, 500);
        cores[0].throttled(1, 0x10, true, ThrottledBy::Table);
        cores[1].throttled(1, 0x10, true, ThrottledBy::Partition);
        cores[1].throttled(2, 0x30, false, ThrottledBy::Partition);
        let totals = totals(&cores);
        assert_eq!(totals[&(1, 0x10)].consumed, [0, 3000]);
        assert_eq!(totals[&(1, 0x10)].served, [0, 2]);
        let text = encode(&totals, |id| (id == 1).then(|| "users".to_owned()));
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(
            line(
                r#"cairn_partition_consumed_capacity_units_total{table="users",partition="0x10",kind="write"}"#
            ),
            "3.0"
        );
        assert_eq!(
            line(
                r#"cairn_partition_throttled_requests_total{table="users",partition="0x10",kind="write",by="table"}"#
            ),
            "1"
        );
        assert_eq!(
            line(r#"cairn_table_throttled_requests_total{table="users",kind="write"}"#),
            "2"
        );
        assert_eq!(
            line(r##"cairn_table_throttled_requests_total{table="#2",kind="read"}"##),
            "1",
            "an unknown table is named by its id"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn partitions_beyond_the_bound_are_counted_together() {
        let core = CoreMetrics::default();
        for partition in 0..PARTITIONS_COUNTED_MAX as u64 + 10 {
            core.served(1, partition, true, 1000);
        }
        let totals = totals(&[Arc::new(core)]);
        assert_eq!(totals.len(), PARTITIONS_COUNTED_MAX + 1);
        assert_eq!(totals[&(1, OTHER)].served, [0, 10]);
    }
}
