//! The router's cache of the partition map, built to do constant work.
//!
//! DynamoDB's lesson: a cache whose misses load the system differently
//! from its hits fails at the worst moment — when every router restarts
//! cold at once. So every lookup here, hit or miss, queues one refresh for
//! MemDS. A warm router and a cold one send MemDS the same requests for
//! the same client traffic; a hit just does not wait for the answer.
//!
//! The cache is a pure state machine (no clock, no IO): the router's core
//! drains [`RouteCache::take_refreshes`] into batched MemDS requests and
//! feeds the answers back through [`RouteCache::learn`]. Both the entries
//! and the refresh queue are bounded; a refresh that finds the queue full
//! is counted and dropped, the same way for hits and misses.

use std::collections::{BTreeMap, VecDeque};

use crate::map::Located;

/// Ask MemDS for the entry that now holds `hash` in `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    pub table: u32,
    pub hash: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub lookups: u64,
    pub hits: u64,
    /// Refreshes queued for MemDS.
    pub refreshes: u64,
    /// Refreshes dropped because the queue was full.
    pub refreshes_dropped: u64,
    /// Answers older than what the cache holds, ignored.
    pub stale_answers: u64,
    pub evictions: u64,
}

#[derive(Debug)]
pub struct RouteCache {
    /// Non-overlapping ranges, keyed by (table, first hash).
    entries: BTreeMap<(u32, u64), Located>,
    capacity: usize,
    refreshes: VecDeque<Refresh>,
    refreshes_max: usize,
    /// Eviction walks the key space from here, like a clock hand.
    hand: (u32, u64),
    stats: CacheStats,
}

impl RouteCache {
    /// A cache of at most `capacity` ranges and `refreshes_max` queued
    /// refreshes (both at least 1).
    pub fn new(capacity: usize, refreshes_max: usize) -> RouteCache {
        RouteCache {
            entries: BTreeMap::new(),
            capacity: capacity.max(1),
            refreshes: VecDeque::with_capacity(refreshes_max.max(1)),
            refreshes_max: refreshes_max.max(1),
            hand: (0, 0),
            stats: CacheStats::default(),
        }
    }

    /// The cached range holding `hash`, if any. Queues a refresh either way.
    pub fn lookup(&mut self, table: u32, hash: u64) -> Option<Located> {
        self.stats.lookups += 1;
        self.request(table, hash);
        let found = self.find(table, hash).map(|key| self.entries[&key]);
        if found.is_some() {
            self.stats.hits += 1;
        }
        found
    }

    /// The cached range holding `hash`, without counting a lookup or
    /// queuing a refresh (for a request already waiting on one).
    pub fn peek(&self, table: u32, hash: u64) -> Option<Located> {
        self.find(table, hash).map(|key| self.entries[&key])
    }

    /// Queues a refresh with no lookup: a waiting request asks again after
    /// an answer that did not cover it.
    pub fn request(&mut self, table: u32, hash: u64) {
        if self.refreshes.len() < self.refreshes_max {
            self.refreshes.push_back(Refresh { table, hash });
            self.stats.refreshes += 1;
        } else {
            self.stats.refreshes_dropped += 1;
        }
    }

    /// Up to `max` queued refreshes, oldest first.
    pub fn take_refreshes(&mut self, max: usize) -> Vec<Refresh> {
        let count = max.min(self.refreshes.len());
        self.refreshes.drain(..count).collect()
    }

    pub fn refreshes_queued(&self) -> usize {
        self.refreshes.len()
    }

    /// An answer from MemDS. It replaces the ranges it overlaps unless one
    /// of them is newer (answers can arrive out of order around a split).
    /// Returns whether it was taken.
    pub fn learn(&mut self, table: u32, answer: Located) -> bool {
        let (start, last) = (answer.partition.start, answer.last);
        // The common case, a warm cache confirmed: nothing to change.
        if let Some(cached) = self.entries.get(&(table, start))
            && cached.last == last
            && cached.partition.version >= answer.partition.version
        {
            if cached.partition.version > answer.partition.version {
                self.stats.stale_answers += 1;
                return false;
            }
            if cached.partition.replicas == answer.partition.replicas
                && cached.partition.id == answer.partition.id
            {
                return true;
            }
        }
        let mut overlapping: Vec<(u32, u64)> = self
            .entries
            .range((table, start)..=(table, last))
            .map(|(key, _)| *key)
            .collect();
        if let Some(key) = self.find(table, start)
            && key.1 < start
        {
            overlapping.push(key);
        }
        let mut answer = answer;
        for key in &overlapping {
            let cached = &self.entries[key];
            if cached.partition.version > answer.partition.version {
                self.stats.stale_answers += 1;
                return false;
            }
            // Same version, same range: keep a leader learned since.
            if cached.partition.version == answer.partition.version
                && cached.partition.start == start
                && cached.last == last
            {
                answer.partition.leader = cached.partition.leader;
            }
        }
        for key in overlapping {
            self.entries.remove(&key);
        }
        self.entries.insert((table, start), answer);
        while self.entries.len() > self.capacity {
            self.evict();
        }
        true
    }

    /// Drops the range holding `hash`: a node said it is stale.
    pub fn forget(&mut self, table: u32, hash: u64) {
        if let Some(key) = self.find(table, hash) {
            self.entries.remove(&key);
        }
    }

    /// Records which replica leads the range holding `hash`.
    pub fn set_leader(&mut self, table: u32, hash: u64, leader: u8) {
        if let Some(key) = self.find(table, hash) {
            let entry = self.entries.get_mut(&key).expect("found above");
            if usize::from(leader) < entry.partition.replicas.len() {
                entry.partition.leader = Some(leader);
            }
        }
    }

    /// Drops a whole table (it was deleted).
    pub fn forget_table(&mut self, table: u32) {
        let keys: Vec<(u32, u64)> = self
            .entries
            .range((table, 0)..=(table, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.entries.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn find(&self, table: u32, hash: u64) -> Option<(u32, u64)> {
        self.entries
            .range(..=(table, hash))
            .next_back()
            .filter(|((t, _), located)| *t == table && located.contains(hash))
            .map(|(key, _)| *key)
    }

    fn evict(&mut self) {
        let victim = self
            .entries
            .range(self.hand..)
            .next()
            .or_else(|| self.entries.iter().next())
            .map(|(key, _)| *key);
        if let Some(key) = victim {
            self.entries.remove(&key);
            self.hand = (key.0, key.1.saturating_add(1));
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Partition, PartitionMap, Replicas};

    fn partition(id: u64, start: u64, version: u64) -> Partition {
        Partition {
            id,
            start,
            version,
            replicas: Replicas::new(&[1, 2, 3]).unwrap(),
            leader: None,
        }
    }

    fn located(id: u64, start: u64, last: u64, version: u64) -> Located {
        Located {
            partition: partition(id, start, version),
            last,
        }
    }

    /// The property the design rests on: the same lookups queue the same
    /// refreshes whether the cache is cold or fully warm.
    #[test]
    fn hits_and_misses_queue_the_same_refreshes() {
        let mut map = PartitionMap::new();
        let partitions: Vec<Partition> = (0..64u64).map(|i| partition(i, i << 58, 1)).collect();
        map.set_table(9, &partitions).unwrap();
        let hashes: Vec<u64> = (0..5000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let run = |cache: &mut RouteCache| -> Vec<Refresh> {
            let mut sent = Vec::new();
            for hash in &hashes {
                cache.lookup(9, *hash);
                sent.extend(cache.take_refreshes(usize::MAX));
            }
            sent
        };
        let mut cold = RouteCache::new(1000, 64);
        let mut warm = RouteCache::new(1000, 64);
        for p in &partitions {
            warm.learn(9, map.lookup(9, p.start).unwrap());
        }
        let (cold_sent, warm_sent) = (run(&mut cold), run(&mut warm));
        assert_eq!(cold_sent, warm_sent);
        assert_eq!(cold_sent.len(), hashes.len());
        assert_eq!(cold.stats().hits, 0);
        assert_eq!(warm.stats().hits, hashes.len() as u64);
    }

    #[test]
    fn the_refresh_queue_is_bounded_and_drops_count() {
        let mut cache = RouteCache::new(10, 4);
        for hash in 0..10 {
            cache.lookup(1, hash);
        }
        assert_eq!(cache.refreshes_queued(), 4);
        assert_eq!(cache.stats().refreshes_dropped, 6);
        assert_eq!(cache.take_refreshes(3).len(), 3);
        assert_eq!(cache.take_refreshes(3).len(), 1);
    }

    /// A split's children replace their parent; the parent's answer,
    /// arriving late, does not bring it back.
    #[test]
    fn newer_ranges_win_whatever_order_answers_arrive_in() {
        let mut cache = RouteCache::new(10, 10);
        assert!(cache.learn(1, located(1, 0, u64::MAX, 5)));
        assert!(cache.learn(1, located(2, 0, 99, 6)));
        assert_eq!(cache.len(), 1, "the parent overlapped the child");
        assert!(!cache.learn(1, located(1, 0, u64::MAX, 5)), "stale parent");
        assert!(cache.learn(1, located(3, 100, u64::MAX, 6)));
        assert_eq!(cache.lookup(1, 50).unwrap().partition.id, 2);
        assert_eq!(cache.lookup(1, 100).unwrap().partition.id, 3);
        assert_eq!(cache.lookup(1, u64::MAX).unwrap().partition.id, 3);
        assert_eq!(cache.lookup(2, 100), None, "another table");
        assert_eq!(cache.stats().stale_answers, 1);
        // A merge replaces both children.
        assert!(cache.learn(1, located(4, 0, u64::MAX, 7)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn leaders_learned_locally_survive_a_same_version_answer() {
        let mut cache = RouteCache::new(10, 10);
        cache.learn(1, located(1, 0, u64::MAX, 5));
        cache.set_leader(1, 7, 2);
        cache.set_leader(1, 7, 9); // Not a replica: ignored.
        cache.learn(1, located(1, 0, u64::MAX, 5));
        assert_eq!(cache.lookup(1, 7).unwrap().partition.leader, Some(2));
        let mut newer = located(1, 0, u64::MAX, 6);
        newer.partition.leader = Some(0);
        cache.learn(1, newer);
        assert_eq!(cache.lookup(1, 7).unwrap().partition.leader, Some(0));
        cache.forget(1, 7);
        assert_eq!(cache.lookup(1, 7), None);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let mut cache = RouteCache::new(8, 1);
        for i in 0..100u64 {
            cache.learn(1, located(i, i * 10, i * 10 + 9, 1));
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.stats().evictions, 92);
        cache.forget_table(1);
        assert!(cache.is_empty());
    }
}
