//! The compressed partition map: every table's hash ranges and replication
//! groups, small enough that one process holds a million partitions.
//!
//! A table's partitions are sorted by the first hash of their range and
//! encoded as one byte string in groups of [`RESTART_EVERY`]. A restart
//! point (the group's first start, first id and byte offset) is kept
//! uncompressed for binary search; inside a group every field is a delta
//! or a small number, written as a LEB128 varint. Range starts are stored
//! as deltas shifted right by the table's common trailing zeros, so
//! boundaries on round hash values (the control plane makes them so) cost
//! two or three bytes. The layout is in `docs/metadata.md`.
//!
//! A lookup is a binary search over tables, one over the table's restart
//! points, and the decoding of at most one group.

use crate::varint;

/// Most replicas (full and log) one partition may have.
pub const REPLICAS_MAX: usize = 7;
/// Entries per restart group: larger groups compress a little better and
/// decode a little longer per lookup.
pub const RESTART_EVERY: usize = 16;
/// The leader field's value for "no leader known".
const NO_LEADER: u8 = 7;

/// The nodes that hold a partition, by node id, in replica order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Replicas {
    len: u8,
    nodes: [u16; REPLICAS_MAX],
}

impl Replicas {
    pub fn new(nodes: &[u16]) -> Result<Replicas, MapError> {
        if nodes.is_empty() || nodes.len() > REPLICAS_MAX {
            return Err(MapError::Replicas(nodes.len()));
        }
        let mut fixed = [0u16; REPLICAS_MAX];
        fixed[..nodes.len()].copy_from_slice(nodes);
        Ok(Replicas {
            len: nodes.len() as u8,
            nodes: fixed,
        })
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.nodes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// One partition of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub id: u64,
    /// The first hash of its range, which runs up to the next partition's
    /// start (or to the end of the hash space).
    pub start: u64,
    /// The map version that last changed this entry (split, move, leader).
    pub version: u64,
    pub replicas: Replicas,
    /// The replica (an index into `replicas`) last known to lead.
    pub leader: Option<u8>,
}

/// A partition found by a lookup, with the last hash of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub partition: Partition,
    /// Inclusive: the range is `partition.start..=last`.
    pub last: u64,
}

impl Located {
    pub fn contains(&self, hash: u64) -> bool {
        (self.partition.start..=self.last).contains(&hash)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("a table needs at least one partition")]
    NoPartitions,
    #[error("the first partition must start at hash 0, not {0:#x}")]
    FirstStart(u64),
    #[error("partition starts must increase: entry {0} does not")]
    Unsorted(usize),
    #[error("a partition has 1..={REPLICAS_MAX} replicas, not {0}")]
    Replicas(usize),
    #[error("partition {id}: leader {leader} is not one of its {replicas} replicas")]
    Leader {
        id: u64,
        leader: u8,
        replicas: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Restart {
    start: u64,
    id: u64,
    offset: u32,
}

/// One table's partitions, encoded.
#[derive(Debug, Clone)]
struct TableBlock {
    table: u32,
    count: u32,
    /// Every start delta is a multiple of `1 << shift`.
    shift: u8,
    /// Versions are stored above the table's oldest.
    base_version: u64,
    restarts: Box<[Restart]>,
    bytes: Box<[u8]>,
}

impl TableBlock {
    fn encode(table: u32, partitions: &[Partition]) -> Result<TableBlock, MapError> {
        let first = partitions.first().ok_or(MapError::NoPartitions)?;
        if first.start != 0 {
            return Err(MapError::FirstStart(first.start));
        }
        let mut deltas = 0u64;
        for (at, pair) in partitions.windows(2).enumerate() {
            if pair[1].start <= pair[0].start {
                return Err(MapError::Unsorted(at + 1));
            }
            deltas |= pair[1].start - pair[0].start;
        }
        for p in partitions {
            if let Some(leader) = p.leader
                && usize::from(leader) >= p.replicas.len()
            {
                return Err(MapError::Leader {
                    id: p.id,
                    leader,
                    replicas: p.replicas.len(),
                });
            }
        }
        let shift = if deltas == 0 {
            0
        } else {
            deltas.trailing_zeros() as u8
        };
        let base_version = partitions.iter().map(|p| p.version).min().unwrap_or(0);
        let mut bytes = Vec::with_capacity(partitions.len() * 8);
        let mut restarts = Vec::with_capacity(partitions.len().div_ceil(RESTART_EVERY));
        for (at, p) in partitions.iter().enumerate() {
            if at % RESTART_EVERY == 0 {
                restarts.push(Restart {
                    start: p.start,
                    id: p.id,
                    offset: bytes.len() as u32,
                });
            } else {
                let previous = &partitions[at - 1];
                varint::put(&mut bytes, (p.start - previous.start) >> shift);
                varint::put(
                    &mut bytes,
                    varint::zigzag(p.id.wrapping_sub(previous.id) as i64),
                );
            }
            varint::put(&mut bytes, p.version - base_version);
            let leader = p.leader.unwrap_or(NO_LEADER);
            bytes.push(p.replicas.len | leader << 3);
            for node in p.replicas.as_slice() {
                varint::put(&mut bytes, u64::from(*node));
            }
        }
        Ok(TableBlock {
            table,
            count: partitions.len() as u32,
            shift,
            base_version,
            restarts: restarts.into_boxed_slice(),
            bytes: bytes.into_boxed_slice(),
        })
    }

    /// The partitions of restart group `group`, in order.
    fn group(&self, group: usize) -> GroupCursor<'_> {
        let restart = self.restarts[group];
        let remaining = self.count as usize - group * RESTART_EVERY;
        GroupCursor {
            block: self,
            at: restart.offset as usize,
            left: remaining.min(RESTART_EVERY),
            previous: None,
            restart,
        }
    }

    fn lookup(&self, hash: u64) -> Located {
        // The first start is 0, so some restart is at or below `hash`.
        let group = self.restarts.partition_point(|r| r.start <= hash) - 1;
        let mut cursor = self.group(group);
        let mut found = cursor.next().expect("a group has at least one entry");
        for next in cursor {
            if next.start > hash {
                return Located {
                    partition: found,
                    last: next.start - 1,
                };
            }
            found = next;
        }
        let last = self
            .restarts
            .get(group + 1)
            .map_or(u64::MAX, |r| r.start - 1);
        Located {
            partition: found,
            last,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.len() + size_of_val(&*self.restarts)
    }
}

/// Decodes one restart group. The bytes were written by
/// [`TableBlock::encode`] in this process, so a decoding failure is a bug.
struct GroupCursor<'a> {
    block: &'a TableBlock,
    at: usize,
    left: usize,
    previous: Option<(u64, u64)>,
    restart: Restart,
}

impl GroupCursor<'_> {
    fn varint(&mut self) -> u64 {
        varint::get(&self.block.bytes, &mut self.at).expect("map bytes are well formed")
    }
}

impl Iterator for GroupCursor<'_> {
    type Item = Partition;

    fn next(&mut self) -> Option<Partition> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (start, id) = match self.previous {
            None => (self.restart.start, self.restart.id),
            Some((start, id)) => {
                let delta = self.varint() << self.block.shift;
                let id_delta = varint::unzigzag(self.varint());
                (start + delta, id.wrapping_add(id_delta as u64))
            }
        };
        self.previous = Some((start, id));
        let version = self.block.base_version + self.varint();
        let packed = self.block.bytes[self.at];
        self.at += 1;
        let len = packed & 0b111;
        let mut nodes = [0u16; REPLICAS_MAX];
        for node in &mut nodes[..usize::from(len)] {
            *node = self.varint() as u16;
        }
        let leader = packed >> 3;
        Some(Partition {
            id,
            start,
            version,
            replicas: Replicas { len, nodes },
            leader: (leader != NO_LEADER).then_some(leader),
        })
    }
}

/// Every table's partitions.
#[derive(Debug, Clone, Default)]
pub struct PartitionMap {
    /// Sorted by table id.
    tables: Vec<TableBlock>,
}

impl PartitionMap {
    pub fn new() -> PartitionMap {
        PartitionMap::default()
    }

    /// Replaces (or adds) a table's partitions, which must cover the whole
    /// hash space in order: the first starts at 0, starts increase.
    pub fn set_table(&mut self, table: u32, partitions: &[Partition]) -> Result<(), MapError> {
        let block = TableBlock::encode(table, partitions)?;
        match self.tables.binary_search_by_key(&table, |b| b.table) {
            Ok(at) => self.tables[at] = block,
            Err(at) => self.tables.insert(at, block),
        }
        Ok(())
    }

    pub fn remove_table(&mut self, table: u32) -> bool {
        match self.tables.binary_search_by_key(&table, |b| b.table) {
            Ok(at) => {
                self.tables.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The partition of `table` whose range holds `hash`.
    pub fn lookup(&self, table: u32, hash: u64) -> Option<Located> {
        let at = self.tables.binary_search_by_key(&table, |b| b.table).ok()?;
        Some(self.tables[at].lookup(hash))
    }

    /// A table's partitions in hash order.
    pub fn partitions(&self, table: u32) -> Option<Vec<Partition>> {
        let at = self.tables.binary_search_by_key(&table, |b| b.table).ok()?;
        let block = &self.tables[at];
        Some(
            (0..block.restarts.len())
                .flat_map(|g| block.group(g))
                .collect(),
        )
    }

    pub fn tables(&self) -> impl Iterator<Item = u32> + '_ {
        self.tables.iter().map(|b| b.table)
    }

    /// Partitions across all tables.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|b| b.count as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Memory the map holds, headers included.
    pub fn memory_bytes(&self) -> usize {
        size_of_val(&*self.tables)
            + self
                .tables
                .iter()
                .map(TableBlock::heap_bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::BTreeMap;

    /// `count` partitions of a table: random boundaries (round ones when
    /// `round`), random ids, versions, replicas and leaders.
    fn random_table(rng: &mut StdRng, count: usize, round: bool) -> Vec<Partition> {
        let mut starts: Vec<u64> = (1..count)
            .map(|_| {
                let hash: u64 = rng.random();
                if round { hash & !0xFFFF_FFFF } else { hash }
            })
            .collect();
        starts.push(0);
        starts.sort_unstable();
        starts.dedup();
        starts
            .into_iter()
            .map(|start| {
                let len = rng.random_range(1..=REPLICAS_MAX);
                let nodes: Vec<u16> = (0..len).map(|_| rng.random_range(0..2000)).collect();
                Partition {
                    id: rng.random_range(0..1 << 40),
                    start,
                    version: rng.random_range(0..1_000_000),
                    replicas: Replicas::new(&nodes).unwrap(),
                    leader: rng.random_bool(0.8).then(|| rng.random_range(0..len as u8)),
                }
            })
            .collect()
    }

    /// Floor lookups against a plain BTreeMap, over random maps, with
    /// hashes at, around and between boundaries.
    #[test]
    fn lookups_match_a_btreemap_reference() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut map = PartitionMap::new();
            let mut reference: BTreeMap<(u32, u64), Partition> = BTreeMap::new();
            for _ in 0..rng.random_range(1..6) {
                let table = rng.random_range(0..20);
                let count = rng.random_range(1..200);
                let round = rng.random_bool(0.5);
                let partitions = random_table(&mut rng, count, round);
                map.set_table(table, &partitions).unwrap();
                reference.retain(|(t, _), _| *t != table);
                reference.extend(partitions.iter().map(|p| ((table, p.start), *p)));
            }
            if rng.random_bool(0.3) {
                let table = rng.random_range(0..20);
                assert_eq!(
                    map.remove_table(table),
                    reference.keys().any(|(t, _)| *t == table)
                );
                reference.retain(|(t, _), _| *t != table);
            }
            assert_eq!(map.len(), reference.len(), "seed {seed}");
            let starts: Vec<(u32, u64)> = reference.keys().copied().collect();
            for _ in 0..2000 {
                let table = rng.random_range(0..21);
                let hash = match rng.random_range(0..4) {
                    0 if !starts.is_empty() => starts[rng.random_range(0..starts.len())].1,
                    1 if !starts.is_empty() => {
                        starts[rng.random_range(0..starts.len())].1.wrapping_sub(1)
                    }
                    2 => u64::MAX,
                    _ => rng.random(),
                };
                let expected =
                    reference
                        .range(..=(table, hash))
                        .next_back()
                        .and_then(|((t, _), p)| {
                            let last = reference
                                .range((table, hash)..)
                                .find(|((t2, s), _)| *t2 == table && *s > hash)
                                .map_or(u64::MAX, |((_, s), _)| s - 1);
                            (*t == table).then_some(Located {
                                partition: *p,
                                last,
                            })
                        });
                assert_eq!(
                    map.lookup(table, hash),
                    expected,
                    "seed {seed} {table} {hash:#x}"
                );
            }
            for table in map.tables().collect::<Vec<_>>() {
                let listed = map.partitions(table).unwrap();
                let want: Vec<Partition> = reference
                    .range((table, 0)..=(table, u64::MAX))
                    .map(|(_, p)| *p)
                    .collect();
                assert_eq!(listed, want, "seed {seed} table {table}");
            }
        }
    }

    #[test]
    fn malformed_tables_are_refused() {
        let replicas = Replicas::new(&[1, 2, 3]).unwrap();
        let p = |start, leader| Partition {
            id: 1,
            start,
            version: 1,
            replicas,
            leader,
        };
        let mut map = PartitionMap::new();
        assert_eq!(map.set_table(1, &[]), Err(MapError::NoPartitions));
        assert_eq!(
            map.set_table(1, &[p(5, None)]),
            Err(MapError::FirstStart(5))
        );
        assert_eq!(
            map.set_table(1, &[p(0, None), p(9, None), p(9, None)]),
            Err(MapError::Unsorted(2))
        );
        assert!(matches!(
            map.set_table(1, &[p(0, Some(3))]),
            Err(MapError::Leader { leader: 3, .. })
        ));
        assert_eq!(Replicas::new(&[]), Err(MapError::Replicas(0)));
        assert_eq!(Replicas::new(&[0; 8]), Err(MapError::Replicas(8)));
        assert!(map.is_empty());
    }

    /// The size the issue asks about: a million partitions of three
    /// replicas, split on round boundaries as the control plane makes them.
    #[test]
    fn a_million_partitions_fit_in_a_few_bytes_each() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut map = PartitionMap::new();
        let tables = 1000u32;
        let per_table = 1000u64;
        let mut reference_bytes = 0usize;
        for table in 0..tables {
            let partitions: Vec<Partition> = (0..per_table)
                .map(|i| {
                    let nodes: Vec<u16> = (0..3).map(|_| rng.random_range(0..300)).collect();
                    Partition {
                        id: u64::from(table) << 20 | i,
                        start: ((i << 32) / per_table) << 32,
                        version: 1_000_000 + rng.random_range(0..5000),
                        replicas: Replicas::new(&nodes).unwrap(),
                        leader: Some(rng.random_range(0..3)),
                    }
                })
                .collect();
            // What a BTreeMap<(table, start), Partition> would spend on
            // the entries alone, before its node overhead.
            reference_bytes +=
                partitions.len() * (size_of::<(u32, u64)>() + size_of::<Partition>());
            map.set_table(table, &partitions).unwrap();
        }
        assert_eq!(map.len(), 1_000_000);
        let per_entry = map.memory_bytes() as f64 / map.len() as f64;
        let reference = reference_bytes as f64 / map.len() as f64;
        println!(
            "compressed map: {per_entry:.2} bytes per partition (entries alone: {reference:.0})"
        );
        assert!(per_entry < 16.0, "{per_entry} bytes per partition");
    }
}
