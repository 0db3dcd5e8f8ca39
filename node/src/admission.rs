//! A shard's admission control: each partition's read and write buckets
//! (steady and burst), behind the shard's own, sized by the limit the
//! router sends with every request (the partition's share of its table's
//! capacity, docs/admission.md). IO-free: callers pass the time, so a test
//! drives it exactly.
//!
//! A read is admitted for its least cost (one unit, half for an
//! eventually consistent read) and charged the rest once its item's size
//! is known; a put is admitted for its item's size; an update or delete
//! for one unit. The shard's own capacity is configured per node
//! ([`ShardCapacity`]; unbounded by default). A partition bursts beyond
//! its steady rate only while its shard has spare capacity and, for a
//! write, so do the shards of its other replicas ([`PeerSpare`]: they say
//! so in every replication batch).

use std::collections::HashMap;
use std::sync::Arc;

use cairn_common::admission::{
    NodeBuckets, PartitionBuckets, Throttled, UNIT, read_cost, write_cost,
};
use cairn_common::wire::PartitionLimit;

use crate::engine::PartitionId;
use crate::metrics::{Op, ShardCounters};

/// A shard's capacity when none is configured: far beyond what a core
/// can serve, in milli-units per second.
const SHARD_UNLIMITED: u64 = 1 << 40;

/// What one shard may serve, in units per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCapacity {
    pub read_units: u32,
    pub write_units: u32,
}

/// A peer's report older than this is forgotten (peers report with every
/// replication batch, heartbeats included, many times a second).
pub const PEER_REPORT_TTL_NS: u64 = 2_000_000_000;

/// What the other replicas' shards last said about their spare write
/// capacity, per partition and member.
#[derive(Debug, Default)]
pub struct PeerSpare {
    reports: HashMap<PartitionId, Vec<(u32, bool, u64)>>,
}

impl PeerSpare {
    /// Member `from` of `partition`'s group reported `spare` at `now_ns`.
    pub fn record(&mut self, partition: PartitionId, from: u32, spare: bool, now_ns: u64) {
        if self.reports.len() >= PARTITIONS_TRACKED_MAX && !self.reports.contains_key(&partition) {
            // Reports come again within a heartbeat: forgetting is cheap.
            self.reports.clear();
        }
        let members = self.reports.entry(partition).or_default();
        match members.iter_mut().find(|(member, _, _)| *member == from) {
            Some(report) => *report = (from, spare, now_ns),
            None => members.push((from, spare, now_ns)),
        }
    }

    /// Whether no other replica of `partition` recently said it was short
    /// of capacity (no report counts as spare: a group that has not
    /// spoken yet, or a partition with one copy).
    pub fn peers_spare(&self, partition: PartitionId, now_ns: u64) -> bool {
        self.reports.get(&partition).is_none_or(|members| {
            members
                .iter()
                .all(|(_, spare, at)| *spare || now_ns.saturating_sub(*at) > PEER_REPORT_TTL_NS)
        })
    }
}

/// Partitions whose buckets a shard keeps; beyond it, the least recently
/// limited are forgotten (and start afresh, with a full second).
pub const PARTITIONS_TRACKED_MAX: usize = 65_536;

#[derive(Debug)]
struct Buckets {
    limit: PartitionLimit,
    read: PartitionBuckets,
    write: PartitionBuckets,
    last_ns: u64,
}

#[derive(Debug)]
pub struct Admission {
    partitions: HashMap<PartitionId, Buckets>,
    shard_read: NodeBuckets,
    shard_write: NodeBuckets,
    /// Requests refused, reads and writes.
    pub throttled: (u64, u64),
    /// What the shard's metrics show: bumped where costs are known.
    counters: Arc<ShardCounters>,
}

fn rate(units: u32) -> u64 {
    u64::from(units) * UNIT
}

impl Admission {
    /// A shard with no capacity of its own configured: only partitions
    /// throttle.
    pub fn new(now_ns: u64) -> Admission {
        Admission::with_capacity(None, now_ns)
    }

    pub fn with_capacity(capacity: Option<ShardCapacity>, now_ns: u64) -> Admission {
        let (read, write) = capacity.map_or((SHARD_UNLIMITED, SHARD_UNLIMITED), |c| {
            (rate(c.read_units), rate(c.write_units))
        });
        Admission {
            partitions: HashMap::new(),
            shard_read: NodeBuckets::new(read, now_ns),
            shard_write: NodeBuckets::new(write, now_ns),
            throttled: (0, 0),
            counters: Arc::default(),
        }
    }

    /// Counts consumed capacity and throttles into `counters` (the
    /// node's metrics) from now on.
    pub fn counting_into(mut self, counters: Arc<ShardCounters>) -> Admission {
        self.counters = counters;
        self
    }

    /// Counts one admission's outcome, of `cost` when admitted.
    fn count(
        &mut self,
        op: Op,
        cost: u64,
        admitted: Result<(), Throttled>,
    ) -> Result<(), Throttled> {
        match admitted {
            Ok(()) => self.counters.consumed(op, cost),
            Err(throttled) => {
                self.counters.throttled(op, throttled == Throttled::Node);
                match op {
                    Op::Read => self.throttled.0 += 1,
                    Op::Write => self.throttled.1 += 1,
                }
            }
        }
        admitted
    }

    /// Admits a request no partition limit applies to against the
    /// shard's own capacity alone.
    pub fn admit_unlimited(
        &mut self,
        write: bool,
        cost: u64,
        now_ns: u64,
    ) -> Result<(), Throttled> {
        let (shard, op) = if write {
            (&mut self.shard_write, Op::Write)
        } else {
            (&mut self.shard_read, Op::Read)
        };
        let admitted = if shard.take(cost, now_ns) {
            Ok(())
        } else {
            Err(Throttled::Node)
        };
        self.count(op, cost, admitted)
    }

    /// Charges the shard for a write it applied as a follower: the
    /// leader admitted it, but the work is this shard's too, so what it
    /// tells its peers of its spare capacity must count it.
    pub fn charge_follower_write(&mut self, bytes: usize, now_ns: u64) {
        let cost = write_cost(bytes);
        self.shard_write.charge(cost, now_ns);
        self.counters.follower_write(cost);
    }

    /// Whether this shard has write capacity to spare (what it tells its
    /// peers).
    pub fn write_spare(&mut self, now_ns: u64) -> bool {
        self.shard_write.has_spare(UNIT, now_ns)
    }

    /// The partition's buckets, at `limit` from now on.
    fn buckets(
        partitions: &mut HashMap<PartitionId, Buckets>,
        partition: PartitionId,
        limit: PartitionLimit,
        now_ns: u64,
    ) -> &mut Buckets {
        if partitions.len() >= PARTITIONS_TRACKED_MAX
            && !partitions.contains_key(&partition)
            && let Some(oldest) = partitions
                .iter()
                .min_by_key(|(_, b)| b.last_ns)
                .map(|(id, _)| *id)
        {
            partitions.remove(&oldest);
        }
        let buckets = partitions.entry(partition).or_insert_with(|| Buckets {
            limit,
            read: PartitionBuckets::new(rate(limit.read_units), now_ns),
            write: PartitionBuckets::new(rate(limit.write_units), now_ns),
            last_ns: now_ns,
        });
        if buckets.limit != limit {
            buckets.read.set_rate(rate(limit.read_units), now_ns);
            buckets.write.set_rate(rate(limit.write_units), now_ns);
            buckets.limit = limit;
        }
        buckets.last_ns = now_ns;
        buckets
    }

    /// Admits a read for its least cost.
    pub fn admit_read(
        &mut self,
        partition: PartitionId,
        limit: PartitionLimit,
        consistent: bool,
        now_ns: u64,
    ) -> Result<(), Throttled> {
        let cost = read_cost(0, consistent);
        let buckets = Self::buckets(&mut self.partitions, partition, limit, now_ns);
        let admitted = self.shard_read.admit(&mut buckets.read, cost, true, now_ns);
        self.count(Op::Read, cost, admitted)
    }

    /// Charges a read what its `bytes` cost beyond the unit it was
    /// admitted with.
    pub fn charge_read(
        &mut self,
        partition: PartitionId,
        bytes: usize,
        consistent: bool,
        now_ns: u64,
    ) {
        let extra = read_cost(bytes, consistent).saturating_sub(read_cost(0, consistent));
        if extra > 0
            && let Some(buckets) = self.partitions.get_mut(&partition)
        {
            buckets.read.charge(extra, now_ns);
        }
        self.counters.consumed(Op::Read, extra);
    }

    /// Admits a write of `bytes` (0 when its size is not known before it
    /// runs: one unit); beyond the partition's steady rate only if
    /// `peers_spare` (the other replicas' shards have room too).
    pub fn admit_write(
        &mut self,
        partition: PartitionId,
        limit: PartitionLimit,
        bytes: usize,
        peers_spare: bool,
        now_ns: u64,
    ) -> Result<(), Throttled> {
        let cost = write_cost(bytes);
        let buckets = Self::buckets(&mut self.partitions, partition, limit, now_ns);
        let admitted = self
            .shard_write
            .admit(&mut buckets.write, cost, peers_spare, now_ns);
        self.count(Op::Write, cost, admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limit(read_units: u32, write_units: u32) -> PartitionLimit {
        PartitionLimit {
            read_units,
            write_units,
        }
    }

    #[test]
    fn a_partition_serves_its_limit_and_is_throttled_beyond_it() {
        let mut admission = Admission::new(0);
        let l = limit(10, 5);
        // A full second to start with: 5 writes of 1 KB, then refused.
        let admitted = (0..20)
            .filter(|_| admission.admit_write(7, l, 1000, true, 0).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(admission.throttled.1, 15);
        // Another partition on the shard is not affected.
        assert!(admission.admit_write(8, l, 1000, true, 0).is_ok());
        // A second later, another 5.
        let admitted = (0..20)
            .filter(|_| admission.admit_write(7, l, 1000, true, SECOND).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // A 3 KB item costs 3 units.
        let admitted = (0..5)
            .filter(|_| admission.admit_write(7, l, 3000, true, 2 * SECOND).is_ok())
            .count();
        assert_eq!(admitted, 1);
    }

    #[test]
    fn reads_are_charged_their_size_after_the_fact() {
        let mut admission = Admission::new(0);
        let l = limit(10, 5);
        // Ten 1-unit reads fit; charging each 12 KB (3 units) afterwards
        // empties the second after four.
        let mut admitted = 0;
        for _ in 0..10 {
            if admission.admit_read(1, l, true, 0).is_ok() {
                admitted += 1;
                admission.charge_read(1, 12 * 1024, true, 0);
            }
        }
        assert_eq!(admitted, 4);
        // Eventually consistent reads cost half: twenty 4 KB reads a
        // second.
        let admitted = (0..40)
            .filter(|_| admission.admit_read(2, l, false, 0).is_ok())
            .count();
        assert_eq!(admitted, 20);
    }

    /// Writes a shard applies as a follower count against its capacity:
    /// applying a second's worth leaves it nothing to spare, and it says
    /// so until its bucket refills.
    #[test]
    fn follower_writes_use_up_the_spare_a_shard_reports() {
        let capacity = ShardCapacity {
            read_units: 100,
            write_units: 100,
        };
        let mut shard = Admission::with_capacity(Some(capacity), 0);
        assert!(shard.write_spare(0));
        for _ in 0..70 {
            shard.charge_follower_write(1000, 0);
        }
        assert!(shard.write_spare(0), "30 % of a second left");
        for _ in 0..20 {
            shard.charge_follower_write(1000, 0);
        }
        assert!(!shard.write_spare(0), "under the 20 % headroom");
        // More than it holds takes it to empty, not below.
        shard.charge_follower_write(1 << 20, 0);
        assert!(
            shard.write_spare(SECOND / 2),
            "half a second refills 50 units"
        );
        // The shard's own capacity is a cap: emptied by follower work, it
        // refuses its own partitions' writes until it refills.
        let mut busy = Admission::with_capacity(Some(capacity), 0);
        busy.charge_follower_write(1 << 20, 0);
        assert_eq!(
            busy.admit_write(1, limit(10, 10), 10, true, 0),
            Err(Throttled::Node)
        );
        assert!(
            busy.admit_write(1, limit(10, 10), 10, true, SECOND / 10)
                .is_ok()
        );
    }

    /// A shard at its own capacity keeps its partitions to their steady
    /// rate, and so does a write whose peers said they were short; a
    /// peer's word lapses.
    #[test]
    fn bursts_need_room_on_the_shard_and_its_peers() {
        let capacity = ShardCapacity {
            read_units: 100,
            write_units: 100,
        };
        let l = limit(10, 10);
        // Idle for 10 s: 100 units saved beyond the steady 10.
        let now = 10 * SECOND;
        let mut idle = Admission::with_capacity(Some(capacity), 0);
        let mut peers = PeerSpare::default();
        assert!(idle.admit_write(1, l, 10, true, 0).is_ok());
        let burst = (0..200)
            .filter(|_| {
                idle.admit_write(1, l, 10, peers.peers_spare(1, now), now)
                    .is_ok()
            })
            .count();
        // Steady 10, then burst while the shard keeps 20 % free: 70 more.
        assert_eq!(burst, 80);
        assert!(!idle.write_spare(now), "the shard is near its capacity");
        // A fresh shard, but a peer said it was short: steady only.
        let mut fresh = Admission::with_capacity(Some(capacity), 0);
        assert!(fresh.admit_write(1, l, 10, true, 0).is_ok());
        peers.record(1, 2, false, now);
        let steady = (0..200)
            .filter(|_| {
                fresh
                    .admit_write(1, l, 10, peers.peers_spare(1, now), now)
                    .is_ok()
            })
            .count();
        assert_eq!(steady, 10);
        assert!(peers.peers_spare(2, now), "another partition's peers");
        assert!(
            peers.peers_spare(1, now + PEER_REPORT_TTL_NS + 1),
            "an old report lapses"
        );
        peers.record(1, 2, true, now);
        assert!(peers.peers_spare(1, now));
    }

    #[test]
    fn a_new_limit_applies_from_the_next_request() {
        let mut admission = Admission::new(0);
        assert!(admission.admit_write(1, limit(1, 1), 10, true, 0).is_ok());
        assert!(admission.admit_write(1, limit(1, 1), 10, true, 0).is_err());
        // Raised: the rate changes, the tokens held stay; a second later
        // the new rate has refilled.
        let raised = limit(1, 100);
        assert!(admission.admit_write(1, raised, 10, true, 0).is_err());
        let admitted = (0..200)
            .filter(|_| admission.admit_write(1, raised, 10, true, SECOND).is_ok())
            .count();
        assert_eq!(admitted, 100);
    }
}
