//! A node's own counts of the capacity its shards consumed and the
//! requests they throttled, whatever router sent them (docs/admission.md,
//! "Metrics"). Each shard bumps its [`ShardCounters`] (atomics: shard 0
//! reads them all when Prometheus scrapes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    Write = 1,
}

/// One shard's counters since it started.
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Milli-units consumed by requests this shard admitted, by [`Op`].
    admitted: [AtomicU64; 2],
    /// Milli-units of chosen writes this shard applied as a follower.
    follower_writes: AtomicU64,
    /// Requests refused: by [`Op`], then over the partition's limit (0)
    /// or the shard's capacity (1).
    throttled: [[AtomicU64; 2]; 2],
}

impl ShardCounters {
    pub fn consumed(&self, op: Op, milli_units: u64) {
        self.admitted[op as usize].fetch_add(milli_units, Ordering::Relaxed);
    }

    pub fn follower_write(&self, milli_units: u64) {
        self.follower_writes
            .fetch_add(milli_units, Ordering::Relaxed);
    }

    /// `shard`: the shard's own capacity refused it (else the partition's).
    pub fn throttled(&self, op: Op, shard: bool) {
        self.throttled[op as usize][usize::from(shard)].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumedLabels {
    shard: u32,
    kind: &'static str,
    /// `client`: requests this shard admitted; `follower`: chosen writes
    /// it applied for another replica's leader.
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottledLabels {
    shard: u32,
    kind: &'static str,
    /// `partition`: over the partition's limit; `shard`: over the shard's
    /// capacity.
    by: &'static str,
}

/// The text exposition of every shard's counters.
pub fn encode(shards: &[Arc<ShardCounters>]) -> String {
    let consumed = Family::<ConsumedLabels, Counter<f64>>::default();
    let throttled = Family::<ThrottledLabels, Counter>::default();
    let units = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64 / 1000.0;
    for (shard, counters) in shards.iter().enumerate() {
        let shard = shard as u32;
        for (op, kind) in [(Op::Read, "read"), (Op::Write, "write")] {
            let labels = ConsumedLabels {
                shard,
                kind,
                source: "client",
            };
            consumed
                .get_or_create(&labels)
                .inc_by(units(&counters.admitted[op as usize]));
            for (by, index) in [("partition", 0), ("shard", 1)] {
                let count = counters.throttled[op as usize][index].load(Ordering::Relaxed);
                throttled
                    .get_or_create(&ThrottledLabels { shard, kind, by })
                    .inc_by(count);
            }
        }
        let labels = ConsumedLabels {
            shard,
            kind: "write",
            source: "follower",
        };
        consumed
            .get_or_create(&labels)
            .inc_by(units(&counters.follower_writes));
    }
    let mut registry = Registry::with_prefix("cairn_node");
    registry.register(
        "consumed_capacity_units",
        "Capacity units consumed on this node, by shard, kind and source (client: admitted here; follower: chosen writes applied for another leader)",
        consumed,
    );
    registry.register(
        "throttled_requests",
        "Requests this node refused, by shard, kind and by what (partition: its limit; shard: the shard's capacity)",
        throttled,
    );
    cairn_common::scrape::exposition(&registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_encoded_by_kind_source_and_reason() {
        let shards = vec![
            Arc::new(ShardCounters::default()),
            Arc::new(ShardCounters::default()),
        ];
        shards[0].consumed(Op::Write, 2500);
        shards[0].follower_write(1000);
        shards[1].consumed(Op::Read, 500);
        shards[1].throttled(Op::Write, true);
        shards[1].throttled(Op::Write, true);
        shards[1].throttled(Op::Read, false);
        let text = encode(&shards);
        for line in [
            r#"cairn_node_consumed_capacity_units_total{shard="0",kind="write",source="client"} 2.5"#,
            r#"cairn_node_consumed_capacity_units_total{shard="0",kind="write",source="follower"} 1.0"#,
            r#"cairn_node_consumed_capacity_units_total{shard="1",kind="read",source="client"} 0.5"#,
            r#"cairn_node_throttled_requests_total{shard="1",kind="write",by="shard"} 2"#,
            r#"cairn_node_throttled_requests_total{shard="1",kind="read",by="partition"} 1"#,
            r#"cairn_node_throttled_requests_total{shard="0",kind="write",by="shard"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
