//! A shard's admission control: each partition's read and write buckets
//! (steady and burst), behind the shard's own, sized by the limit the
//! router sends with every request (the partition's share of its table's
//! capacity, docs/admission.md). IO-free: callers pass the time, so a test
//! drives it exactly.
//!
//! A read is admitted for its least cost (one unit, half for an
//! eventually consistent read) and charged the rest once its item's size
//! is known; a put is admitted for its item's size; an update or delete
//! for one unit. What the shard itself may serve is not configured yet:
//! its buckets are unbounded, so only partitions throttle.

use std::collections::HashMap;

use cairn_common::admission::{
    NodeBuckets, PartitionBuckets, Throttled, UNIT, read_cost, write_cost,
};
use cairn_common::wire::PartitionLimit;

use crate::engine::PartitionId;

/// A shard's capacity when none is configured: far beyond what a core
/// can serve, in milli-units per second.
const SHARD_UNLIMITED: u64 = 1 << 40;

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
}

fn rate(units: u32) -> u64 {
    u64::from(units) * UNIT
}

impl Admission {
    pub fn new(now_ns: u64) -> Admission {
        Admission {
            partitions: HashMap::new(),
            shard_read: NodeBuckets::new(SHARD_UNLIMITED, now_ns),
            shard_write: NodeBuckets::new(SHARD_UNLIMITED, now_ns),
            throttled: (0, 0),
        }
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
        if admitted.is_err() {
            self.throttled.0 += 1;
        }
        admitted
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
    }

    /// Admits a write of `bytes` (0 when its size is not known before it
    /// runs: one unit). The peers' spare capacity is not reported yet, so
    /// a write may burst on this shard's word alone.
    pub fn admit_write(
        &mut self,
        partition: PartitionId,
        limit: PartitionLimit,
        bytes: usize,
        now_ns: u64,
    ) -> Result<(), Throttled> {
        let cost = write_cost(bytes);
        let buckets = Self::buckets(&mut self.partitions, partition, limit, now_ns);
        let admitted = self
            .shard_write
            .admit(&mut buckets.write, cost, true, now_ns);
        if admitted.is_err() {
            self.throttled.1 += 1;
        }
        admitted
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
            .filter(|_| admission.admit_write(7, l, 1000, 0).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(admission.throttled.1, 15);
        // Another partition on the shard is not affected.
        assert!(admission.admit_write(8, l, 1000, 0).is_ok());
        // A second later, another 5.
        let admitted = (0..20)
            .filter(|_| admission.admit_write(7, l, 1000, SECOND).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // A 3 KB item costs 3 units.
        let admitted = (0..5)
            .filter(|_| admission.admit_write(7, l, 3000, 2 * SECOND).is_ok())
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

    #[test]
    fn a_new_limit_applies_from_the_next_request() {
        let mut admission = Admission::new(0);
        assert!(admission.admit_write(1, limit(1, 1), 10, 0).is_ok());
        assert!(admission.admit_write(1, limit(1, 1), 10, 0).is_err());
        // Raised: the rate changes, the tokens held stay; a second later
        // the new rate has refilled.
        let raised = limit(1, 100);
        assert!(admission.admit_write(1, raised, 10, 0).is_err());
        let admitted = (0..200)
            .filter(|_| admission.admit_write(1, raised, 10, SECOND).is_ok())
            .count();
        assert_eq!(admitted, 100);
    }
}
