//! Moving a replica off a hot node (sans-IO).
//!
//! Every replica of a partition takes its partition's writes, so a node's
//! load is the sum of the operations per second of the partitions it
//! holds replicas of, as their leaders report them. When the busiest live
//! node carries more than `ratio` times the mean and at least `ops_min`,
//! [`plan`] picks the one move that relieves it most: a replica of one of
//! its partitions, to a live node that does not hold that partition (in a
//! zone its other replicas do not use, where there is one), such that the
//! busier of the two nodes afterwards carries as little as it can and
//! less than the hot node does now. A partition that makes a node hot on
//! its own cannot be helped by a move (its load goes with the replica):
//! splitting it is the tool (docs/metadata.md, "Splits"), so no move is
//! planned for it.

use std::collections::{BTreeMap, BTreeSet};

use cairn_common::wire::MemberRole;

use crate::heal::{Move, zone_clash};
use crate::meta::{Snapshot, TableStatus};

/// When a node counts as hot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Its load must pass this many times the mean over live nodes…
    pub ratio: f64,
    /// …and this many operations per second.
    pub ops_min: u64,
}

/// The default: half again the mean, and at least 1 000 operations per
/// second (below that a node is not busy, whatever its share).
pub const BOUNDS_DEFAULT: Bounds = Bounds {
    ratio: 1.5,
    ops_min: 1000,
};

/// Each live node's load: the operations per second (`ops`, by partition
/// id; a partition missing from it counts nothing) of the partitions of
/// active tables it holds replicas of.
pub fn node_loads(
    snapshot: &Snapshot,
    ops: &BTreeMap<u64, u64>,
    down: &BTreeSet<u16>,
) -> BTreeMap<u16, u64> {
    let mut load: BTreeMap<u16, u64> = snapshot
        .nodes
        .keys()
        .filter(|id| !down.contains(id))
        .map(|id| (*id, 0))
        .collect();
    for table in snapshot.tables.values() {
        if table.status != TableStatus::Active {
            continue;
        }
        for partition in &table.partitions {
            let partition_ops = ops.get(&partition.id).copied().unwrap_or(0);
            for node in partition.replicas.as_slice() {
                if let Some(node_load) = load.get_mut(node) {
                    *node_load += partition_ops;
                }
            }
        }
    }
    load
}

/// The move that relieves a hot node, if one is hot and a move helps.
/// The busiest node goes first, then the next, while they are hot: a
/// partition's leader (`leaders`: its node, where known) cannot replace
/// itself, so only follower replicas move, and a node may have none to
/// give. Only replicated partitions with every replica live, no log
/// replica and no split under way move (healing and splits come first).
/// Ties go to the less loaded target, then the lower node and partition
/// ids, so two MemDS with the same view plan the same move.
pub fn plan(
    snapshot: &Snapshot,
    ops: &BTreeMap<u64, u64>,
    leaders: &BTreeMap<u64, u16>,
    down: &BTreeSet<u16>,
    bounds: Bounds,
) -> Option<Move> {
    let load = node_loads(snapshot, ops, down);
    let total: u64 = load.values().sum();
    let mean = total as f64 / load.len().max(1) as f64;
    let mut hot: Vec<(u16, u64)> = load
        .iter()
        .map(|(id, load)| (*id, *load))
        .filter(|(_, load)| *load >= bounds.ops_min && *load as f64 > bounds.ratio * mean)
        .collect();
    hot.sort_by_key(|(id, load)| (std::cmp::Reverse(*load), *id));
    hot.into_iter()
        .find_map(|(node, node_load)| relieve(snapshot, ops, leaders, down, &load, node, node_load))
}

/// The best move of a follower replica off node `hot`, if any lowers it.
fn relieve(
    snapshot: &Snapshot,
    ops: &BTreeMap<u64, u64>,
    leaders: &BTreeMap<u64, u16>,
    down: &BTreeSet<u16>,
    load: &BTreeMap<u16, u64>,
    hot: u16,
    hot_load: u64,
) -> Option<Move> {
    // (load of the busier node after the move, target's load now, target,
    // partition): the least wins.
    let mut best: Option<((u64, u64, u16, u64), Move)> = None;
    let movable = snapshot
        .tables
        .values()
        .filter(|t| t.status == TableStatus::Active && t.replicas >= 2 && t.splitting.is_none());
    for table in movable {
        for partition in &table.partitions {
            let replicas = partition.replicas.as_slice();
            let partition_ops = ops.get(&partition.id).copied().unwrap_or(0);
            let follower_here = replicas.contains(&hot) && leaders.get(&partition.id) != Some(&hot);
            let healthy = replicas.iter().all(|n| !down.contains(n))
                && !table.log_replicas.iter().any(|(p, _)| *p == partition.id);
            if !follower_here || !healthy || partition_ops == 0 {
                continue;
            }
            for (&target, &target_load) in load {
                if replicas.contains(&target) {
                    continue;
                }
                let Some(record) = snapshot.nodes.get(&target) else {
                    continue;
                };
                if zone_clash(snapshot, replicas, hot, record, down).is_some() {
                    continue;
                }
                let after = (hot_load - partition_ops).max(target_load + partition_ops);
                if after >= hot_load {
                    continue; // the heat would only move
                }
                let key = (after, target_load, target, partition.id);
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    let planned = Move {
                        table: table.name.clone(),
                        partition: partition.id,
                        from: hot,
                        to: target,
                        role: MemberRole::Full,
                    };
                    best = Some((key, planned));
                }
            }
        }
    }
    best.map(|(_, planned)| planned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heal::tests::{node, snapshot, table};

    /// Operations per second by partition index (`table` numbers
    /// partitions from `1 << 20`).
    fn ops(pairs: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        pairs.iter().map(|(i, o)| (pid(*i), *o)).collect()
    }

    fn pid(index: u64) -> u64 {
        (1 << 20) | index
    }

    fn no_leaders() -> BTreeMap<u64, u16> {
        BTreeMap::new()
    }

    /// Four nodes in four zones; partitions 0..3 of table t on the given
    /// nodes (ids 0, 1, 2, …).
    fn cluster(replicas: &[&[u16]]) -> Snapshot {
        let nodes = vec![node(0, "a"), node(1, "b"), node(2, "c"), node(3, "d")];
        snapshot(nodes, vec![table("t", replicas)])
    }

    #[test]
    fn an_even_load_moves_nothing() {
        let s = cluster(&[&[0, 1, 2], &[1, 2, 3], &[2, 3, 0], &[3, 0, 1]]);
        let even = ops(&[(0, 2000), (1, 2000), (2, 2000), (3, 2000)]);
        assert_eq!(
            plan(&s, &even, &no_leaders(), &BTreeSet::new(), BOUNDS_DEFAULT),
            None
        );
    }

    #[test]
    fn the_hot_node_gives_the_replica_that_evens_the_load_best_to_the_coldest_node() {
        // Nodes 0, 1 and 2 hold partitions 0, 1 and 2 (6 000 ops/s each);
        // node 3 holds only partition 3, which is idle.
        let s = cluster(&[&[0, 1, 2], &[0, 1, 2], &[0, 1, 2], &[1, 2, 3]]);
        let load = ops(&[(0, 3000), (1, 2000), (2, 1000), (3, 0)]);
        let planned = plan(
            &s,
            &load,
            &no_leaders(),
            &BTreeSet::new(),
            Bounds {
                ratio: 1.2,
                ops_min: 1000,
            },
        )
        .expect("node 0 is hot");
        // Moving partition 0 (3 000) to node 3 leaves 3 000 on each; of
        // the three hot nodes, the lowest id gives.
        assert_eq!(
            (planned.from, planned.to, planned.partition),
            (0, 3, pid(0)),
            "{planned:?}"
        );
        assert_eq!(planned.role, MemberRole::Full);
    }

    #[test]
    fn a_partition_hot_on_its_own_is_not_moved() {
        // All of node 0's load is one partition: a move would only carry
        // the heat to another node.
        let s = cluster(&[&[0, 1, 2], &[1, 2, 3]]);
        let load = ops(&[(0, 9000), (1, 0)]);
        let bounds = Bounds {
            ratio: 1.1,
            ops_min: 10,
        };
        assert_eq!(
            plan(&s, &load, &no_leaders(), &BTreeSet::new(), bounds),
            None
        );
    }

    #[test]
    fn a_quiet_cluster_is_left_alone() {
        let s = cluster(&[&[0, 1, 2], &[0, 1, 2], &[1, 2, 3]]);
        let load = ops(&[(0, 300), (1, 300)]);
        assert_eq!(
            plan(&s, &load, &no_leaders(), &BTreeSet::new(), BOUNDS_DEFAULT),
            None
        );
    }

    #[test]
    fn zones_and_down_nodes_are_respected() {
        // Node 3 is in zone b, like node 1: a replica moving off node 0
        // to it would share a zone while node 4's zone d is unused.
        let nodes = vec![
            node(0, "a"),
            node(1, "b"),
            node(2, "c"),
            node(3, "b"),
            node(4, "d"),
        ];
        let s = snapshot(
            nodes,
            vec![table("t", &[&[0, 1, 2], &[0, 1, 2], &[0, 1, 2]])],
        );
        let load = ops(&[(0, 3000), (1, 2000), (2, 1000)]);
        let bounds = Bounds {
            ratio: 1.2,
            ops_min: 1000,
        };
        let planned = plan(&s, &load, &no_leaders(), &BTreeSet::new(), bounds).expect("a move");
        assert_eq!(planned.to, 4, "{planned:?}");
        // With node 4 down, node 3 is the only way: the zone is shared
        // because it must be.
        let down = BTreeSet::from([4]);
        let planned = plan(&s, &load, &no_leaders(), &down, bounds).expect("a move");
        assert_eq!(planned.to, 3, "{planned:?}");
        // A partition with a replica down is healing's, not balancing's.
        let down = BTreeSet::from([1]);
        assert_eq!(plan(&s, &load, &no_leaders(), &down, bounds), None);
    }

    #[test]
    fn a_leader_stays_and_the_next_hot_node_gives_a_follower() {
        // Nodes 1 and 2 hold both busy partitions, node 4 none; node 1
        // leads both, so it has no follower replica to give: node 2 gives
        // one.
        let nodes = (0..5).map(|i| node(i, &format!("zone-{i}"))).collect();
        let s = snapshot(nodes, vec![table("t", &[&[0, 1, 2], &[1, 2, 3]])]);
        let load = ops(&[(0, 1000), (1, 1000)]);
        let bounds = Bounds {
            ratio: 1.2,
            ops_min: 1,
        };
        let leaders = BTreeMap::from([(pid(0), 1), (pid(1), 1)]);
        let planned = plan(&s, &load, &leaders, &BTreeSet::new(), bounds).expect("a move");
        assert_eq!(planned.from, 2, "{planned:?}");
        // Without leaders known, the busiest lowest id gives.
        let planned = plan(&s, &load, &no_leaders(), &BTreeSet::new(), bounds).expect("a move");
        assert_eq!(planned.from, 1, "{planned:?}");
    }
}
