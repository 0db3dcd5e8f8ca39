//! Healing: which nodes are down, and where their replicas go (sans-IO).
//!
//! MemDS probes every registered node now and then and feeds the answers
//! to [`Liveness`]; a node that has not answered for `heal_after` is down.
//! [`plan_moves`] then picks, for every partition of a replicated table
//! with a replica on a down node, a live node to take that replica over —
//! one the partition does not use, in a zone its live replicas do not use
//! if there is one, holding the fewest replicas, lowest id first — so two
//! MemDS processes that agree on who is down plan the same moves. Where a
//! second such node is left for a full replica later, the replacement is
//! a log replica, which joins at once; [`plan_rebuilds`] then replaces
//! each log replica by a full one on another node. The moves themselves
//! go through `MetaClient::move_replica` (docs/metadata.md, "Healing").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cairn_common::wire::MemberRole;

use crate::meta::{NodeRecord, Snapshot, TableRecord, TableStatus};

/// When each node last answered, and when moves were last planned.
#[derive(Debug)]
pub struct Liveness {
    heal_after: Duration,
    /// The last answer of each node probed; a node never heard from
    /// counts from when it was first probed.
    heard: BTreeMap<u16, Instant>,
    /// The nodes down when moves were last planned, and when.
    planned: Option<(BTreeSet<u16>, Instant)>,
    /// When to look for log replicas to rebuild as full ones next
    /// (`None`: the metadata listed none when last read).
    rebuild_at: Option<Instant>,
}

/// While the same nodes stay down, moves are planned again only this
/// often: a cluster with no node to move to (three nodes, one down) would
/// otherwise read the whole metadata every round for as long as it lasts.
pub const REPLAN_EVERY: Duration = Duration::from_secs(5);

impl Liveness {
    pub fn new(heal_after: Duration) -> Liveness {
        Liveness {
            heal_after,
            heard: BTreeMap::new(),
            planned: None,
            // Log replicas may be left from before this process started.
            rebuild_at: Some(Instant::now()),
        }
    }

    /// Whether to look for log replicas to rebuild at `now`.
    pub fn rebuild_due(&self, now: Instant) -> bool {
        self.rebuild_at.is_some_and(|at| now >= at)
    }

    /// After a look at the metadata at `now`: `left` log replicas remain,
    /// and a rebuild was `made` (look again next round) or not (after
    /// [`REPLAN_EVERY`], as a plan of moves).
    pub fn rebuilds_left(&mut self, left: bool, made: bool, now: Instant) {
        self.rebuild_at = match (left, made) {
            (false, _) => None,
            (true, true) => Some(now),
            (true, false) => Some(now + REPLAN_EVERY),
        };
    }

    /// Plans again next round: a planned move was not made.
    pub fn replan(&mut self) {
        self.planned = None;
    }

    /// Whether to plan moves for `down` at `now`: when some node is down,
    /// and the down set changed or the last plan is `REPLAN_EVERY` old.
    /// Records the plan.
    pub fn plan_due(&mut self, down: &BTreeSet<u16>, now: Instant) -> bool {
        let due = !down.is_empty()
            && self.planned.as_ref().is_none_or(|(last, at)| {
                last != down || now.saturating_duration_since(*at) >= REPLAN_EVERY
            });
        if due {
            self.planned = Some((down.clone(), now));
        }
        due
    }

    /// A probe of `node` at `now` was answered (`alive`) or not.
    pub fn record(&mut self, node: u16, alive: bool, now: Instant) {
        let heard = self.heard.entry(node).or_insert(now);
        if alive {
            *heard = now;
        }
    }

    /// The nodes silent for at least `heal_after` at `now`.
    pub fn down(&self, now: Instant) -> BTreeSet<u16> {
        self.heard
            .iter()
            .filter(|(_, heard)| now.saturating_duration_since(**heard) >= self.heal_after)
            .map(|(node, _)| *node)
            .collect()
    }
}

/// One replica to move: partition `partition` of `table`, from node
/// `from` to node `to`, as a new replica of kind `role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub table: String,
    pub partition: u64,
    pub from: u16,
    pub to: u16,
    pub role: MemberRole,
}

/// The live nodes that may take a replica of a partition on `replicas`
/// leaving `from`, best first: not holding it, in a zone the staying
/// replicas do not use before one they do, then the least loaded, lowest
/// id first.
fn candidates<'a>(
    snapshot: &'a Snapshot,
    replicas: &[u16],
    from: u16,
    down: &BTreeSet<u16>,
    load: &BTreeMap<u16, usize>,
) -> Vec<&'a NodeRecord> {
    let zones: BTreeSet<&str> = replicas
        .iter()
        .filter(|n| **n != from && !down.contains(n))
        .filter_map(|n| snapshot.nodes.get(n))
        .map(|n| n.zone.as_str())
        .collect();
    let mut nodes: Vec<&NodeRecord> = snapshot
        .nodes
        .values()
        .filter(|n| !down.contains(&n.id) && !replicas.contains(&n.id))
        .collect();
    nodes.sort_by_key(|n| (zones.contains(n.zone.as_str()), load[&n.id], n.id));
    nodes
}

/// Replicas per node.
fn loads(snapshot: &Snapshot) -> BTreeMap<u16, usize> {
    let mut load: BTreeMap<u16, usize> = snapshot.nodes.keys().map(|id| (*id, 0)).collect();
    for table in snapshot.tables.values() {
        for partition in &table.partitions {
            for node in partition.replicas.as_slice() {
                *load.entry(*node).or_default() += 1;
            }
        }
    }
    load
}

fn heals(table: &TableRecord) -> bool {
    table.status == TableStatus::Active && table.replicas >= 2
}

/// The moves that give every replicated partition with a replica on a
/// `down` node a live replacement, at most one per partition (a group
/// changes one member at a time). A partition with no live node to take
/// its replica, or with a majority of its replicas down (its group cannot
/// choose the change), gets none. The replacement is a log replica when a
/// second node is left to rebuild a full replica on later
/// ([`plan_rebuilds`]) and the lost replica was not itself a log replica;
/// else a full replica.
pub fn plan_moves(snapshot: &Snapshot, down: &BTreeSet<u16>) -> Vec<Move> {
    // Replicas per node, kept up to date as moves are planned.
    let mut load = loads(snapshot);
    let mut moves = Vec::new();
    for table in snapshot.tables.values().filter(|t| heals(t)) {
        for partition in &table.partitions {
            let replicas = partition.replicas.as_slice();
            let lost: Vec<u16> = replicas
                .iter()
                .copied()
                .filter(|n| down.contains(n))
                .collect();
            let Some(&from) = lost.first() else {
                continue;
            };
            if lost.len() * 2 >= replicas.len() {
                continue; // no majority left to choose the change
            }
            let nodes = candidates(snapshot, replicas, from, down, &load);
            let Some(target) = nodes.first() else {
                continue;
            };
            let was_log = table.log_replicas.contains(&(partition.id, from));
            let role = match nodes.len() >= 2 && !was_log {
                true => MemberRole::Log,
                false => MemberRole::Full,
            };
            *load.entry(target.id).or_default() += 1;
            moves.push(Move {
                table: table.name.clone(),
                partition: partition.id,
                from,
                to: target.id,
                role,
            });
        }
    }
    moves
}

/// The moves that replace each log replica on a live node by a full
/// replica on another live node (chosen as [`plan_moves`] chooses), for
/// partitions none of whose replicas is down (a lost one is replaced
/// first).
pub fn plan_rebuilds(snapshot: &Snapshot, down: &BTreeSet<u16>) -> Vec<Move> {
    let mut load = loads(snapshot);
    let mut moves = Vec::new();
    for table in snapshot.tables.values().filter(|t| heals(t)) {
        for partition in &table.partitions {
            let replicas = partition.replicas.as_slice();
            let log = replicas
                .iter()
                .copied()
                .find(|n| table.log_replicas.contains(&(partition.id, *n)));
            let Some(from) = log else {
                continue;
            };
            if replicas.iter().any(|n| down.contains(n)) {
                continue;
            }
            let Some(target) = candidates(snapshot, replicas, from, down, &load)
                .first()
                .copied()
            else {
                continue;
            };
            *load.entry(target.id).or_default() += 1;
            moves.push(Move {
                table: table.name.clone(),
                partition: partition.id,
                from,
                to: target.id,
                role: MemberRole::Full,
            });
        }
    }
    moves
}

/// Why `to` may not take the replica of a partition on `nodes` that leaves
/// `from`: its zone is one the other replicas use while a node that is not
/// `down` stands in an unused zone (replicas never share a zone when they
/// need not).
pub fn zone_clash(
    snapshot: &Snapshot,
    nodes: &[u16],
    from: u16,
    to: &NodeRecord,
    down: &BTreeSet<u16>,
) -> Option<String> {
    let staying = nodes.iter().filter(|n| **n != from);
    let used: Vec<(u16, &str)> = staying
        .filter_map(|n| snapshot.nodes.get(n).map(|r| (*n, r.zone.as_str())))
        .collect();
    let (sharer, zone) = used.iter().find(|(_, zone)| *zone == to.zone)?;
    let unused = snapshot
        .nodes
        .values()
        .filter(|n| n.id != from && n.zone != to.zone && !down.contains(&n.id))
        .find(|n| used.iter().all(|(_, zone)| *zone != n.zone))?;
    Some(format!(
        "node {} is in {zone}, like the replica on node {sharer}; node {} is in {}, which no replica uses",
        to.id, unused.id, unused.zone
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::map::{Partition, Replicas};
    use crate::meta::TableRecord;
    use cairn_common::wire::Capacity;
    use cairn_common::{KeyAttribute, KeySchema, KeyType};

    pub(crate) fn node(id: u16, zone: &str) -> NodeRecord {
        NodeRecord {
            id,
            addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
            cores: 2,
            zone: zone.into(),
        }
    }

    pub(crate) fn table(name: &str, replicas: &[&[u16]]) -> TableRecord {
        TableRecord {
            name: name.into(),
            id: 1,
            schema: KeySchema::new(KeyAttribute::new("id", KeyType::S), None),
            replicas: replicas[0].len() as u32,
            status: TableStatus::Active,
            version: 1,
            partitions: replicas
                .iter()
                .enumerate()
                .map(|(i, nodes)| Partition {
                    id: (1 << 20) | i as u64,
                    start: (i as u64) << 40,
                    version: 1,
                    replicas: Replicas::new(nodes).unwrap(),
                    leader: None,
                })
                .collect(),
            capacity: Capacity::OnDemand,
            splitting: None,
            log_replicas: Default::default(),
        }
    }

    pub(crate) fn snapshot(nodes: Vec<NodeRecord>, tables: Vec<TableRecord>) -> Snapshot {
        Snapshot {
            version: 1,
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            nodes: nodes.into_iter().map(|n| (n.id, n)).collect(),
        }
    }

    #[test]
    fn a_move_may_not_share_a_zone_while_an_unused_one_exists() {
        let nodes = vec![
            node(0, "a"),
            node(1, "b"),
            node(2, "c"),
            node(3, "a"),
            node(4, "d"),
        ];
        let cluster = snapshot(nodes.clone(), Vec::new());
        // Replacing node 2: node 3 shares zone a with node 0, node 4 is in
        // an unused zone.
        let up = BTreeSet::new();
        let clash = zone_clash(&cluster, &[0, 1, 2], 2, &nodes[3], &up).expect("a clash");
        assert!(clash.contains("node 4 is in d"), "{clash}");
        assert_eq!(zone_clash(&cluster, &[0, 1, 2], 2, &nodes[4], &up), None);
        // Node 4 down: sharing zone a is the best left.
        let down = BTreeSet::from([2, 4]);
        assert_eq!(zone_clash(&cluster, &[0, 1, 2], 2, &nodes[3], &down), None);
        // The replaced node's own zone is free again.
        let same_zone = node(5, "c");
        let with_c = snapshot(
            vec![node(0, "a"), node(1, "b"), node(2, "c"), same_zone.clone()],
            Vec::new(),
        );
        assert_eq!(zone_clash(&with_c, &[0, 1, 2], 2, &same_zone, &up), None);
        // No unused zone anywhere: sharing is the only way.
        let tight = snapshot(nodes[..4].to_vec(), Vec::new());
        assert_eq!(zone_clash(&tight, &[0, 1, 2], 2, &nodes[3], &up), None);
    }

    #[test]
    fn a_node_is_down_once_silent_for_the_bound() {
        let start = Instant::now();
        let mut liveness = Liveness::new(Duration::from_secs(1));
        liveness.record(0, true, start);
        liveness.record(1, false, start); // never heard: counts from now
        let later = start + Duration::from_millis(900);
        liveness.record(0, true, later);
        assert!(liveness.down(later).is_empty());
        let after = start + Duration::from_millis(1500);
        liveness.record(1, false, after);
        assert_eq!(liveness.down(after), BTreeSet::from([1]));
        liveness.record(1, true, after);
        assert!(liveness.down(after).is_empty());
    }

    #[test]
    fn moves_are_planned_again_when_the_down_nodes_change_or_after_a_while() {
        let start = Instant::now();
        let mut liveness = Liveness::new(Duration::from_secs(1));
        let (one, two) = (BTreeSet::from([1]), BTreeSet::from([1, 2]));
        assert!(!liveness.plan_due(&BTreeSet::new(), start));
        assert!(liveness.plan_due(&one, start));
        assert!(!liveness.plan_due(&one, start + Duration::from_secs(1)));
        assert!(liveness.plan_due(&two, start + Duration::from_secs(2)));
        assert!(!liveness.plan_due(&two, start + Duration::from_secs(3)));
        assert!(liveness.plan_due(&two, start + Duration::from_secs(2) + REPLAN_EVERY));
    }

    #[test]
    fn lost_replicas_go_to_unused_zones_then_to_the_least_loaded_nodes() {
        let nodes = vec![
            node(0, "a"),
            node(1, "b"),
            node(2, "c"), // lost
            node(3, "a"), // idle, but in a zone the survivors use
            node(4, "d"),
            node(5, "e"),
        ];
        // Nodes 4 and 5 hold a replica of another table each.
        let users = table("users", &[&[0, 1, 2], &[1, 2, 0]]);
        let other = table("other", &[&[4, 5, 1]]);
        let plan = plan_moves(
            &snapshot(nodes.clone(), vec![users, other]),
            &BTreeSet::from([2]),
        );
        // A zone the survivors do not use before an idle node in one they
        // do; then the least loaded, counting the moves already planned.
        assert_eq!(
            plan.iter()
                .map(|m| (m.partition, m.from, m.to))
                .collect::<Vec<_>>(),
            vec![((1 << 20), 2, 4), ((1 << 20) | 1, 2, 5)]
        );
        // Other nodes are left for full replicas later: log replicas now.
        assert!(plan.iter().all(|m| m.role == MemberRole::Log));
        // Two of three replicas down: the group cannot choose a change.
        let users = table("users", &[&[0, 1, 2]]);
        assert!(
            plan_moves(
                &snapshot(nodes.clone(), vec![users]),
                &BTreeSet::from([1, 2])
            )
            .is_empty()
        );
        // No node left to take it, or a single copy: nothing.
        let tight = table("users", &[&[0, 1, 2]]);
        let three = nodes[..3].to_vec();
        assert!(plan_moves(&snapshot(three, vec![tight]), &BTreeSet::from([2])).is_empty());
        let single = table("single", &[&[2]]);
        assert!(plan_moves(&snapshot(nodes, vec![single]), &BTreeSet::from([2])).is_empty());
    }

    #[test]
    fn a_log_replica_stands_in_until_a_full_one_is_rebuilt_on_another_node() {
        let nodes = vec![
            node(0, "a"),
            node(1, "b"),
            node(2, "c"),
            node(3, "d"),
            node(4, "e"),
        ];
        let lost = BTreeSet::from([2]);
        let plan = plan_moves(
            &snapshot(nodes.clone(), vec![table("t", &[&[0, 1, 2]])]),
            &lost,
        );
        let id = 1 << 20;
        let first = Move {
            table: "t".into(),
            partition: id,
            from: 2,
            to: 3,
            role: MemberRole::Log,
        };
        assert_eq!(plan, vec![first]);
        // Made: node 3 holds a log replica, which goes to node 4 as a
        // full one; nothing more to rebuild once it has.
        let mut moved = table("t", &[&[0, 1, 3]]);
        moved.log_replicas.insert((id, 3));
        let cluster = snapshot(nodes.clone(), vec![moved.clone()]);
        assert!(plan_moves(&cluster, &lost).is_empty());
        let rebuild = Move {
            from: 3,
            to: 4,
            role: MemberRole::Full,
            ..plan[0].clone()
        };
        assert_eq!(plan_rebuilds(&cluster, &lost), vec![rebuild]);
        let done = snapshot(nodes.clone(), vec![table("t", &[&[0, 1, 4]])]);
        assert!(plan_rebuilds(&done, &lost).is_empty());
        // Not while another replica of the partition is down: that one
        // is replaced first.
        let both = BTreeSet::from([2, 1]);
        assert!(plan_rebuilds(&cluster, &both).is_empty());
        // A lost log replica is replaced by a full one.
        let log_lost = BTreeSet::from([3]);
        let plan = plan_moves(&cluster, &log_lost);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].from, plan[0].role), (3, MemberRole::Full));
        // One node to spare: a full replica at once.
        let four = snapshot(nodes[..4].to_vec(), vec![table("t", &[&[0, 1, 2]])]);
        let plan = plan_moves(&four, &lost);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].to, plan[0].role), (3, MemberRole::Full));
    }

    #[test]
    fn log_replicas_are_looked_for_at_start_and_while_some_are_left() {
        let start = Instant::now();
        let mut liveness = Liveness::new(Duration::from_secs(1));
        assert!(liveness.rebuild_due(start + Duration::from_millis(1)));
        liveness.rebuilds_left(true, false, start);
        assert!(!liveness.rebuild_due(start + Duration::from_secs(1)));
        assert!(liveness.rebuild_due(start + REPLAN_EVERY));
        liveness.rebuilds_left(true, true, start);
        assert!(liveness.rebuild_due(start));
        liveness.rebuilds_left(false, true, start);
        assert!(!liveness.rebuild_due(start + REPLAN_EVERY * 10));
    }
}
