//! The control plane's operations on the authoritative metadata: bootstrap
//! the metadata group, create and delete tables, read everything back.
//! They run wherever a router or MemDS needs them, as ordinary conditional
//! writes to the metadata partition, so two of them racing is settled by
//! the partition's leader, not by a lock.
//!
//! Creating a table: take an id (compare-and-set on `counter/table_id`)
//! and a map version, claim the name with a `CREATING` record written only
//! if none exists, create every replica of every partition, write the
//! record `ACTIVE`, then bump the map version so MemDS reloads. A creator
//! that dies half-way leaves a `CREATING` record (the name stays taken)
//! and possibly some partitions; deleting the table clears the name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use cairn_common::group::{NODE_TIMEOUT, NodeLinks, SendError};
use cairn_common::wire::{
    self, Capacity, ErrorCode, GroupMember, GroupSpec, MemberRole, NodeOp, NodeRequest, Response,
    ReturnValues, WireBound, WireChange, WireCondition,
};
use cairn_common::{Item, KeySchema};

use crate::meta::{
    self, META_PARTITION, NodeRecord, PARTITIONS_MAX, Snapshot, TableRecord, TableStatus,
};

/// Attempts at a compare-and-set before giving up with a throttle.
const CAS_ATTEMPTS: usize = 16;
/// Tries to drop one replica of a deleted table.
const DROP_ATTEMPTS: usize = 3;
/// How long a move asks the group again while its new replica catches up
/// (within a client's request timeout).
const MOVE_CATCH_UP: Duration = Duration::from_millis(1500);
/// How long bootstrap keeps trying while the metadata group elects.
const BOOTSTRAP_ATTEMPTS: usize = 30;
const BOOTSTRAP_BACKOFF: Duration = Duration::from_millis(200);

fn internal(message: impl Into<String>) -> Response {
    Response::error(ErrorCode::Internal, message)
}

fn validation(message: impl Into<String>) -> Response {
    Response::error(ErrorCode::Validation, message)
}

/// Reads and writes the metadata partition.
#[derive(Debug)]
pub struct MetaClient {
    links: Rc<NodeLinks>,
    /// The configured nodes, registered at bootstrap.
    nodes: Vec<NodeRecord>,
    /// The metadata group's members, in replica order.
    members: Vec<NodeRecord>,
    replicas: Vec<SocketAddr>,
    bootstrapped: std::cell::Cell<bool>,
}

impl MetaClient {
    /// `nodes` is the configured node list; its order gives node ids and
    /// places the metadata group, so every process must list the same.
    pub fn new(links: Rc<NodeLinks>, nodes: Vec<NodeRecord>) -> MetaClient {
        let members: Vec<NodeRecord> = meta::meta_placement(&nodes)
            .into_iter()
            .map(|id| nodes[usize::from(id)].clone())
            .collect();
        let replicas = members.iter().map(|n| n.shard_of(META_PARTITION)).collect();
        MetaClient {
            links,
            nodes,
            members,
            replicas,
            bootstrapped: std::cell::Cell::new(false),
        }
    }

    pub fn links(&self) -> &Rc<NodeLinks> {
        &self.links
    }

    async fn call(&self, op: NodeOp) -> Response {
        let is_write = op.is_write();
        let request = wire::encode_node_request(&NodeRequest {
            limit: None,
            partition: META_PARTITION,
            op,
        });
        self.links
            .forward(META_PARTITION, &self.replicas, &request, is_write, false)
            .await
    }

    /// Creates the metadata group's replicas and registers the configured
    /// nodes; both are no-ops when done before (by anyone). Retries while
    /// the group elects its first leader. Once it succeeded, it returns at
    /// once.
    pub async fn bootstrap(&self) -> Result<(), Response> {
        if self.bootstrapped.get() {
            return Ok(());
        }
        let mut last = internal("bootstrap did not run");
        for _ in 0..BOOTSTRAP_ATTEMPTS {
            match self.bootstrap_once().await {
                Ok(()) => {
                    self.bootstrapped.set(true);
                    return Ok(());
                }
                Err(Response::Error { code, message }) if code.is_retryable() => {
                    last = Response::error(code, message);
                }
                Err(other) => return Err(other),
            }
            glommio::timer::sleep(BOOTSTRAP_BACKOFF).await;
        }
        Err(last)
    }

    async fn bootstrap_once(&self) -> Result<(), Response> {
        let members: Vec<&NodeRecord> = self.members.iter().collect();
        create_group(&self.links, META_PARTITION, &meta::meta_schema(), &members).await?;
        for node in &self.nodes {
            let op = NodeOp::Put {
                item: node.to_item().to_bytes(),
                condition: Some(WireCondition::NotExists("k".into())),
                returns: ReturnValues::None,
            };
            match self.call(op).await {
                Response::Done
                | Response::Error {
                    code: ErrorCode::ConditionalCheckFailed,
                    ..
                } => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// Every record, read by consistent pages from the leader.
    pub async fn load(&self) -> Result<Snapshot, Response> {
        let mut snapshot = Snapshot::default();
        let mut resume = None;
        loop {
            let op = NodeOp::Scan {
                start: WireBound::Unbounded,
                end: WireBound::Unbounded,
                reverse: false,
                limit: 1000,
                bytes_max: u32::MAX,
                resume_after: resume.take(),
                consistent: true,
                hash_range: None,
            };
            match self.call(op).await {
                Response::Page { items, last_key } => {
                    for bytes in items {
                        let item = Item::decode(&bytes).map_err(|e| internal(e.to_string()))?;
                        snapshot
                            .absorb(&item)
                            .map_err(|e| internal(e.to_string()))?;
                    }
                    match last_key {
                        Some(key) => resume = Some(key),
                        None => return Ok(snapshot),
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// The current map version (0 before the first change).
    pub async fn version(&self) -> Result<u64, Response> {
        match self.counter("version").await? {
            Some(value) => Ok(value),
            None => Ok(0),
        }
    }

    async fn counter(&self, name: &str) -> Result<Option<u64>, Response> {
        self.record("counter", name, meta::counter_value).await
    }

    /// The record (`k`, `s`), read consistently and parsed.
    async fn record<T>(
        &self,
        k: &str,
        s: &str,
        parse: impl FnOnce(&Item) -> Result<T, meta::MetaError>,
    ) -> Result<Option<T>, Response> {
        let op = NodeOp::Get {
            key: meta::key_item(k, s).to_bytes(),
            consistent: true,
        };
        match self.call(op).await {
            Response::Item(None) => Ok(None),
            Response::Item(Some(bytes)) => {
                let item = Item::decode(&bytes).map_err(|e| internal(e.to_string()))?;
                parse(&item).map(Some).map_err(|e| internal(e.to_string()))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Adds one to a counter by compare-and-set; returns the new value.
    async fn increment(&self, name: &str) -> Result<u64, Response> {
        for _ in 0..CAS_ATTEMPTS {
            let (op, next) = match self.counter(name).await? {
                None => (
                    NodeOp::Put {
                        item: meta::key_item("counter", name)
                            .with("n", meta::number(1))
                            .to_bytes(),
                        condition: Some(WireCondition::NotExists("k".into())),
                        returns: ReturnValues::None,
                    },
                    1,
                ),
                Some(value) => (
                    NodeOp::Update {
                        key: meta::key_item("counter", name).to_bytes(),
                        changes: vec![WireChange::Set {
                            name: "n".into(),
                            value: meta::number(value + 1).to_bytes(),
                        }],
                        condition: Some(WireCondition::Compare {
                            attribute: "n".into(),
                            op: 0,
                            value: meta::number(value).to_bytes(),
                        }),
                        returns: ReturnValues::None,
                    },
                    value + 1,
                ),
            };
            match self.call(op).await {
                Response::Done | Response::Item(_) => return Ok(next),
                Response::Error {
                    code: ErrorCode::ConditionalCheckFailed,
                    ..
                } => continue,
                other => return Err(unexpected(other)),
            }
        }
        Err(Response::error(
            ErrorCode::Throttling,
            format!("counter {name} is contended; retry"),
        ))
    }

    /// Creates a table of `partitions` even ranges with `replicas` copies
    /// each, and returns its record (ACTIVE).
    pub async fn create_table(
        &self,
        name: &str,
        schema: KeySchema,
        partitions: u32,
        replicas: u32,
        capacity: Capacity,
    ) -> Result<TableRecord, Response> {
        if let Capacity::Provisioned {
            read_units,
            write_units,
        } = capacity
            && (read_units == 0 || write_units == 0)
        {
            return Err(validation(
                "provisioned read and write capacity must each be at least 1 unit",
            ));
        }
        let valid_name = (3..=255).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid_name {
            return Err(validation(format!(
                "table name {name:?} must be 3-255 characters of [A-Za-z0-9_.-]"
            )));
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(validation(format!(
                "partitions must be 1..={PARTITIONS_MAX}"
            )));
        }
        self.bootstrap().await?;
        let existing = self.table(name).await?;
        if existing.is_some() {
            return Err(in_use(name));
        }
        let snapshot = self.load().await?;
        let nodes: Vec<NodeRecord> = snapshot.nodes.values().cloned().collect();
        if (replicas as usize) > nodes.len() {
            return Err(validation(format!(
                "{replicas} replicas need as many nodes; {} registered",
                nodes.len()
            )));
        }
        let id = u32::try_from(self.increment("table_id").await?)
            .map_err(|_| internal("table ids are exhausted"))?;
        let version = self.increment("version").await?;
        let mut record = TableRecord {
            name: name.to_owned(),
            id,
            schema,
            replicas,
            status: TableStatus::Creating,
            version,
            partitions: meta::new_partitions(id, partitions, replicas, version, &nodes)
                .map_err(|e| internal(e.to_string()))?,
            capacity,
            splitting: None,
            log_replicas: Default::default(),
        };
        let claim = NodeOp::Put {
            item: record.to_item().to_bytes(),
            condition: Some(WireCondition::NotExists("k".into())),
            returns: ReturnValues::None,
        };
        match self.call(claim).await {
            Response::Done => {}
            Response::Error {
                code: ErrorCode::ConditionalCheckFailed,
                ..
            } => return Err(in_use(name)),
            other => return Err(unexpected(other)),
        }
        for partition in &record.partitions {
            let members: Vec<&NodeRecord> = partition
                .replicas
                .as_slice()
                .iter()
                .map(|id| &snapshot.nodes[id])
                .collect();
            create_group(&self.links, partition.id, &record.schema, &members).await?;
        }
        record.status = TableStatus::Active;
        let activate = NodeOp::Put {
            item: record.to_item().to_bytes(),
            condition: Some(WireCondition::Exists("k".into())),
            returns: ReturnValues::None,
        };
        match self.call(activate).await {
            Response::Done => {}
            other => return Err(unexpected(other)),
        }
        self.increment("version").await?;
        Ok(record)
    }

    /// Splits a partition of table `name` (or its widest one) at the
    /// middle of its range (or at `at`), in three steps, each safe to
    /// repeat: the split is written into the table record as under way;
    /// it is made through the partition's own log (its replicas copy the
    /// upper half into the new partition); the record gets the narrowed
    /// parent and the child. Returns the plan carried out and the record's
    /// new version.
    ///
    /// A split under way is finished before any other is planned: by
    /// whoever comes next, with the same child, and the nodes answer a
    /// split they made as done, with the point they made it at. So a
    /// split cut short after the nodes made it is never left out of the
    /// record, and no two splits name one child. Until the record changes,
    /// the parent answers `WrongPartition` for the moved keys and routers
    /// retry.
    ///
    /// With `expected` (the table version a decision to split was made
    /// at), a record that changed since is not split again: the answer is
    /// `ConditionalCheckFailed`, and the decision is made afresh.
    pub async fn split_partition(
        &self,
        name: &str,
        partition: Option<u64>,
        at: Option<u64>,
        expected: Option<u64>,
    ) -> Result<(meta::SplitPlan, u64), Response> {
        self.bootstrap().await?;
        let changed = || {
            Response::error(
                ErrorCode::ConditionalCheckFailed,
                format!("table {name:?} changed since the split was decided"),
            )
        };
        // The split this call wrote down, once it has.
        let mut ours: Option<meta::SplitPlan> = None;
        for _ in 0..CAS_ATTEMPTS {
            let snapshot = self.load().await?;
            let table = active_table(&snapshot, name)?;
            let pending = meta::pending_plan(table).map_err(internal)?;
            if let Some(plan) = ours.filter(|p| pending.is_none_or(|q| q.child != p.child)) {
                // Somebody else finished our split: recorded, or refused.
                return match table.partitions.iter().any(|p| p.id == plan.child) {
                    true => Ok((plan, table.version)),
                    false => Err(validation(format!(
                        "the split of partition {} was refused by its replicas",
                        plan.parent
                    ))),
                };
            }
            let (plan, marked) = match pending {
                Some(plan) => {
                    let asked = expected.is_none()
                        && partition.is_none_or(|p| p == plan.parent)
                        && at.is_none_or(|a| a == plan.at);
                    if asked {
                        ours = Some(plan);
                    }
                    (plan, table.clone())
                }
                None => {
                    if expected.is_some_and(|v| v != table.version) {
                        return Err(changed());
                    }
                    let plan = meta::plan_split(table, partition, at, &snapshot.nodes)
                        .map_err(validation)?;
                    if table.log_replicas.iter().any(|(p, _)| *p == plan.parent) {
                        // Its log replica could not take the child's copy.
                        return Err(Response::error(
                            ErrorCode::Throttling,
                            format!(
                                "partition {} has a log replica; it splits once a full replica has replaced it",
                                plan.parent
                            ),
                        ));
                    }
                    let marked = TableRecord {
                        version: self.increment("version").await?,
                        splitting: Some(meta::PendingSplit {
                            parent: plan.parent,
                            child: plan.child,
                            at: plan.at,
                        }),
                        ..table.clone()
                    };
                    match self.replace_record(table.version, &marked).await? {
                        true => ours = Some(plan),
                        false if expected.is_some() => return Err(changed()),
                        false => continue, // the record changed: plan again
                    }
                    (plan, marked)
                }
            };
            let made = self.make_split(&snapshot, &marked, plan).await?;
            let version = self.increment("version").await?;
            let record = match made {
                Ok(plan) => meta::split_record(&marked, &plan, version),
                Err(_) => TableRecord {
                    version,
                    splitting: None,
                    ..marked.clone()
                },
            };
            let finished = self.replace_record(marked.version, &record).await?;
            match (ours.is_some_and(|p| p.child == plan.child), made) {
                // Somebody else may have finished it: the next round tells.
                _ if !finished => continue,
                (true, Ok(plan)) => return Ok((plan, version)),
                (true, Err(refusal)) => return Err(refusal),
                // We finished somebody else's split.
                (false, _) if expected.is_some() => return Err(changed()),
                (false, _) => continue,
            }
        }
        Err(Response::error(
            ErrorCode::Throttling,
            format!("table {name:?} is changing concurrently; retry"),
        ))
    }

    /// Asks the parent's replicas to make the split `plan`, which `table`
    /// holds as under way. `Ok(Ok(plan))`: made, at the point in the
    /// returned plan (another one, if an earlier attempt made it there);
    /// `Ok(Err(answer))`: refused for good (the parent applied a refusal,
    /// or never proposed it), so it may be dropped from the record; `Err`:
    /// not known, the split stays under way.
    async fn make_split(
        &self,
        snapshot: &Snapshot,
        table: &TableRecord,
        mut plan: meta::SplitPlan,
    ) -> Result<Result<meta::SplitPlan, Response>, Response> {
        let replicas = replica_shards(snapshot, &table.partitions[plan.index])?;
        let request = wire::encode_node_request(&NodeRequest {
            partition: plan.parent,
            op: NodeOp::Split {
                at: plan.at,
                child: plan.child,
            },
            limit: None,
        });
        match self
            .links
            .forward(plan.parent, &replicas, &request, true, false)
            .await
        {
            // The parent's range after the split: where it was made.
            Response::PartitionStats { range, .. } if range.1 < plan.last => {
                plan.at = range.1 + 1;
                Ok(Ok(plan))
            }
            Response::PartitionStats { .. } => Err(internal(format!(
                "partition {} answered a split without narrowing",
                plan.parent
            ))),
            refusal @ Response::Error {
                code: ErrorCode::Validation,
                ..
            } => {
                tracing::warn!(table = %table.name, ?plan, ?refusal, "split refused by the replicas");
                Ok(Err(refusal))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Writes `record` over the table's record if that is still at
    /// version `version`, then bumps the map version so MemDS reloads.
    /// `Ok(false)`: the record changed meanwhile, nothing was written.
    async fn replace_record(&self, version: u64, record: &TableRecord) -> Result<bool, Response> {
        let update = NodeOp::Put {
            item: record.to_item().to_bytes(),
            condition: Some(WireCondition::Compare {
                attribute: "version".into(),
                op: 0,
                value: meta::number(version).to_bytes(),
            }),
            returns: ReturnValues::None,
        };
        match self.call(update).await {
            Response::Done => {
                self.increment("version").await?;
                Ok(true)
            }
            Response::Error {
                code: ErrorCode::ConditionalCheckFailed,
                ..
            } => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the replica of `table`'s partition `partition` on node
    /// `from` by a new one on node `to` (a full or a log replica, `role`):
    /// the group changes its members through its log (a new full replica
    /// is caught up by a snapshot, a log replica by the log), then
    /// the table record follows, at a new map version (returned).
    /// Asking again after a crash half-way finishes the move: the group
    /// answers that it is done, and the record is written.
    ///
    /// `to` may not share a zone with the other replicas while a node not
    /// in `down` stands in a zone none of them uses.
    pub async fn move_replica(
        &self,
        name: &str,
        partition: u64,
        from: u16,
        to: u16,
        role: MemberRole,
        down: &std::collections::BTreeSet<u16>,
    ) -> Result<u64, Response> {
        self.bootstrap().await?;
        for _ in 0..CAS_ATTEMPTS {
            let snapshot = self.load().await?;
            let table = active_table(&snapshot, name)?;
            let index = table
                .partitions
                .iter()
                .position(|p| p.id == partition)
                .ok_or_else(|| {
                    validation(format!("table {name:?} has no partition {partition}"))
                })?;
            if table.splitting.is_some_and(|s| s.parent == partition) {
                // The child is made on the members the parent's log has at
                // the split: the record could not tell which.
                return Err(Response::error(
                    ErrorCode::Throttling,
                    format!("partition {partition} is being split; retry when it is"),
                ));
            }
            let nodes = table.partitions[index].replicas.as_slice();
            let node = |id: u16| {
                snapshot
                    .nodes
                    .get(&id)
                    .ok_or_else(|| validation(format!("no node {id} is registered")))
            };
            let (old, new) = (node(from)?, node(to)?);
            if nodes.len() < 2 {
                return Err(validation(format!(
                    "partition {partition} has a single copy: there is no group to change"
                )));
            }
            if !nodes.contains(&from) {
                return Err(validation(format!(
                    "node {from} holds no replica of partition {partition}"
                )));
            }
            if nodes.contains(&to) {
                return Err(validation(format!(
                    "node {to} holds a replica of partition {partition} already"
                )));
            }
            if let Some(reason) = crate::heal::zone_clash(&snapshot, nodes, from, new, down) {
                return Err(validation(format!("partition {partition}: {reason}")));
            }
            let replicas = replica_shards(&snapshot, &table.partitions[index])?;
            let request = wire::encode_node_request(&NodeRequest {
                partition,
                op: NodeOp::ReplaceMember {
                    old: old.addr.to_string(),
                    new: GroupMember {
                        addr: new.addr.to_string(),
                        cores: new.cores,
                        zone: new.zone.clone(),
                        role,
                    },
                },
                limit: None,
            });
            // The new replica catches up before it joins: the leader
            // answers `Throttling` while it is far behind (for up to its
            // proposal timeout each time), and the change takes effect
            // once the new members hold the log below it, which may
            // outlast one request (`Unavailable`: the answer was lost).
            // Asking again is safe: the leader answers `Done` for a
            // replacement made. Asked again for a while, then the caller
            // is told to retry.
            let catching_up = std::time::Instant::now() + MOVE_CATCH_UP;
            loop {
                match self
                    .links
                    .forward(partition, &replicas, &request, true, false)
                    .await
                {
                    Response::Done => break,
                    Response::Error {
                        code: ErrorCode::Throttling | ErrorCode::Unavailable,
                        ..
                    } if std::time::Instant::now() < catching_up => {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                    Response::Error {
                        code: ErrorCode::Unavailable,
                        message,
                    } => {
                        return Err(Response::error(
                            ErrorCode::Throttling,
                            format!(
                                "partition {partition}: the move is under way ({message}); retry"
                            ),
                        ));
                    }
                    other => return Err(unexpected(other)),
                }
            }
            let version = self.increment("version").await?;
            let record =
                meta::move_record(table, index, (from, to), role, version).map_err(internal)?;
            if self.replace_record(table.version, &record).await? {
                return Ok(version);
            } // else the record changed: look again
        }
        Err(Response::error(
            ErrorCode::Throttling,
            format!("table {name:?} is changing concurrently; retry"),
        ))
    }

    /// One round of healing: probes every configured node (a node answers
    /// anything, even "no such partition", while it runs), and moves the
    /// replicas of nodes silent for the liveness bound to live nodes
    /// (`heal::plan_moves`: log replicas where a node is left to rebuild a
    /// full one on), then replaces log replicas by full ones
    /// (`heal::plan_rebuilds`). Returns the moves made. Two MemDS
    /// processes may run it at once: a move made by one is refused to the
    /// other.
    pub async fn heal(
        &self,
        liveness: &mut crate::heal::Liveness,
        probe_timeout: Duration,
    ) -> Result<usize, Response> {
        let probe = wire::encode_node_request(&NodeRequest {
            partition: u64::MAX,
            op: NodeOp::Stats,
            limit: None,
        });
        for node in &self.nodes {
            let alive = self
                .links
                .send(node.addr, &probe, probe_timeout, probe_timeout)
                .await
                .is_ok();
            liveness.record(node.id, alive, std::time::Instant::now());
        }
        let now = std::time::Instant::now();
        let down = liveness.down(now);
        let moves_due = liveness.plan_due(&down, now);
        if !moves_due && !liveness.rebuild_due(now) {
            return Ok(0);
        }
        self.bootstrap().await?;
        let snapshot = self.load().await?;
        let mut moved = 0;
        let mut made_log = false;
        let planned = match moves_due {
            true => crate::heal::plan_moves(&snapshot, &down),
            false => Vec::new(),
        };
        for planned in planned {
            if self.heal_move(&planned, &down).await {
                tracing::info!(?planned, "healed: a replica on a silent node moved");
                made_log |= planned.role == MemberRole::Log;
                moved += 1;
            } else {
                liveness.replan();
            }
        }
        // Log replicas (new ones from the next round's reading) are
        // replaced by full ones in the background, one per partition.
        let rebuilds = crate::heal::plan_rebuilds(&snapshot, &down);
        let logs_left = made_log || snapshot.tables.values().any(|t| !t.log_replicas.is_empty());
        let mut rebuilt = false;
        for planned in rebuilds {
            if self.heal_move(&planned, &down).await {
                tracing::info!(?planned, "healed: a log replica rebuilt as a full replica");
                rebuilt = true;
                moved += 1;
            }
        }
        liveness.rebuilds_left(logs_left, rebuilt || made_log, std::time::Instant::now());
        Ok(moved)
    }

    /// Makes one planned move (`move_replica`).
    async fn make_move(
        &self,
        planned: &crate::heal::Move,
        down: &std::collections::BTreeSet<u16>,
    ) -> Result<u64, Response> {
        let crate::heal::Move {
            table,
            partition,
            from,
            to,
            role,
        } = planned;
        self.move_replica(table, *partition, *from, *to, *role, down)
            .await
    }

    /// Makes one move healing planned; whether it was made.
    async fn heal_move(
        &self,
        planned: &crate::heal::Move,
        down: &std::collections::BTreeSet<u16>,
    ) -> bool {
        match self.make_move(planned, down).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(?planned, ?error, "healing: move not made this round");
                false
            }
        }
    }

    /// One round of balancing (docs/metadata.md, "Balancing"): asks the
    /// leader of every partition of every active table for its load, and
    /// moves one replica off the hot node if [`crate::balance::plan`]
    /// finds a move that relieves it — only once the same move has been
    /// planned two rounds in a row (`planned` holds the last round's), so
    /// a burst does not move data. Returns the move made.
    pub async fn balance(
        &self,
        bounds: crate::balance::Bounds,
        down: &std::collections::BTreeSet<u16>,
        planned: &mut Option<crate::heal::Move>,
    ) -> Result<Option<crate::heal::Move>, Response> {
        self.bootstrap().await?;
        let snapshot = self.load().await?;
        let (mut ops, mut leaders) = (BTreeMap::new(), BTreeMap::new());
        for table in snapshot.tables.values() {
            if table.status != TableStatus::Active {
                continue;
            }
            for partition in &table.partitions {
                if let Some(stats) = self.leader_stats(&snapshot, partition).await {
                    ops.insert(partition.id, stats.1);
                }
                // The leader that answered (its replica cannot move).
                let leader = self.links.leader_of(partition.id);
                if let Some(&node) = leader.and_then(|i| partition.replicas.as_slice().get(i)) {
                    leaders.insert(partition.id, node);
                }
            }
        }
        let plan = crate::balance::plan(&snapshot, &ops, &leaders, down, bounds);
        let last = std::mem::replace(planned, plan.clone());
        match plan {
            Some(chosen) if last.as_ref() == Some(&chosen) => {
                *planned = None;
                self.make_move(&chosen, down).await?;
                Ok(Some(chosen))
            }
            _ => Ok(None),
        }
    }

    /// What `partition`'s leader (it alone sees the strongly consistent
    /// reads) reports: bytes held, operations per second and the median
    /// key hash of its traffic. `None` if it cannot be asked now.
    async fn leader_stats(
        &self,
        snapshot: &Snapshot,
        partition: &crate::map::Partition,
    ) -> Option<(u64, u64, Option<u64>)> {
        let replicas = replica_shards(snapshot, partition).ok()?;
        let request = wire::encode_node_request(&NodeRequest {
            partition: partition.id,
            op: NodeOp::Stats,
            limit: None,
        });
        match self
            .links
            .forward(partition.id, &replicas, &request, false, false)
            .await
        {
            Response::PartitionStats {
                bytes,
                ops_per_s,
                median,
                ..
            } => Some((bytes, ops_per_s, median)),
            _ => None,
        }
    }

    /// One round of the split checks: asks the leader of every partition
    /// of every active replicated table for its size and load, and splits
    /// the first partition of each table that needs it (one per table and
    /// round: the record changes with it).
    ///
    /// - Above `bounds.bytes`: at the middle of its range.
    /// - Above `bounds.ops_per_s` in this round and the last (`hot` holds
    ///   the partitions that were, and is updated): at the median key hash
    ///   of its traffic, so each half takes about half of it.
    ///
    /// Returns the splits made. Any number of processes may run it: a
    /// split decided on a record that changed meanwhile is dropped.
    pub async fn check_splits(
        &self,
        bounds: SplitBounds,
        hot: &mut std::collections::HashSet<u64>,
    ) -> Result<usize, Response> {
        self.bootstrap().await?;
        let snapshot = self.load().await?;
        let mut splits = 0;
        let mut still_hot = std::collections::HashSet::new();
        for table in snapshot.tables.values() {
            if table.status != TableStatus::Active || table.replicas < 2 {
                continue;
            }
            if let Some(pending) = table.splitting {
                // Cut short (a crash, a timeout): finished first, and the
                // table is looked at afresh next round.
                match self
                    .split_partition(&table.name, Some(pending.parent), Some(pending.at), None)
                    .await
                {
                    Ok(_) => splits += 1,
                    Err(error) => {
                        tracing::warn!(table = %table.name, ?pending, ?error, "split under way not finished");
                    }
                }
                continue;
            }
            for (index, partition) in table.partitions.iter().enumerate() {
                let Some((bytes, ops_per_s, median)) =
                    self.leader_stats(&snapshot, partition).await
                else {
                    continue; // unreachable now: next round
                };
                let last = table
                    .partitions
                    .get(index + 1)
                    .map_or(u64::MAX, |next| next.start - 1);
                let at = if bounds.bytes.is_some_and(|b| bytes > b) {
                    tracing::info!(table = %table.name, partition = partition.id, bytes, "splitting an oversized partition");
                    None
                } else if bounds.ops_per_s.is_some_and(|b| ops_per_s > b) {
                    still_hot.insert(partition.id);
                    match median {
                        Some(m)
                            if hot.contains(&partition.id) && partition.start < m && m <= last =>
                        {
                            tracing::info!(table = %table.name, partition = partition.id, ops_per_s, median = m, "splitting a hot partition at its traffic's median");
                            Some(m)
                        }
                        _ => continue,
                    }
                } else {
                    continue;
                };
                match self
                    .split_partition(&table.name, Some(partition.id), at, Some(table.version))
                    .await
                {
                    Ok(_) => splits += 1,
                    // Another process made it (or another change) first.
                    Err(Response::Error {
                        code: ErrorCode::ConditionalCheckFailed,
                        ..
                    }) => {}
                    Err(error) => {
                        tracing::warn!(table = %table.name, partition = partition.id, ?error, "split not made");
                    }
                }
                break;
            }
        }
        *hot = still_hot;
        Ok(splits)
    }

    /// One table's record, read consistently.
    pub async fn table(&self, name: &str) -> Result<Option<TableRecord>, Response> {
        self.record("table", name, TableRecord::from_item).await
    }

    /// Removes a table from the map, then drops its partitions' replicas
    /// from the nodes in the background (`drop_partitions`);
    /// its id is never handed out again.
    pub async fn delete_table(&self, name: &str) -> Result<(), Response> {
        let snapshot = self.load().await?;
        let op = NodeOp::Delete {
            key: meta::key_item("table", name).to_bytes(),
            condition: Some(WireCondition::Exists("k".into())),
            returns: ReturnValues::None,
        };
        match self.call(op).await {
            Response::Done => {}
            Response::Error {
                code: ErrorCode::ConditionalCheckFailed,
                ..
            } => {
                return Err(Response::error(
                    ErrorCode::ResourceNotFound,
                    format!("table {name:?} does not exist"),
                ));
            }
            other => return Err(unexpected(other)),
        }
        self.increment("version").await?;
        if let Some(table) = snapshot.tables.get(name) {
            self.drop_partitions(&snapshot, table);
        }
        Ok(())
    }

    /// One round of reaping: asks every shard of every configured node
    /// which partitions it holds, then (with the metadata read after, so
    /// a table created meanwhile, whose record comes before its
    /// partitions, is seen) drops those of tables that no longer exist —
    /// what a `DeleteTable` could not drop while a node was down. Only
    /// tables whose ids this metadata handed out count. Returns the
    /// partitions dropped.
    pub async fn reap(&self) -> Result<usize, Response> {
        self.bootstrap().await?;
        let list = wire::encode_node_request(&NodeRequest {
            partition: META_PARTITION,
            op: NodeOp::ListPartitions,
            limit: None,
        });
        let mut held = Vec::new();
        for node in &self.nodes {
            for shard in 0..u64::from(node.cores.max(1)) {
                let addr = node.shard_of(shard);
                if let Ok(Response::Partitions(ids)) = self
                    .links
                    .send(addr, &list, NODE_TIMEOUT, NODE_TIMEOUT)
                    .await
                {
                    held.extend(ids.into_iter().map(|id| (addr, id)));
                }
            }
        }
        let snapshot = self.load().await?;
        // Only ids handed out by this metadata: metadata that lost its
        // records (restored from nothing) must not make every partition
        // look deleted.
        let issued = self.counter("table_id").await?.unwrap_or(0);
        let live: std::collections::BTreeSet<u32> = snapshot
            .tables
            .values()
            .map(|t| t.id)
            .chain([meta::META_TABLE])
            .collect();
        let mut dropped = 0;
        for (addr, id) in held {
            let table = u32::try_from(id >> meta::PARTITION_BITS).unwrap_or(u32::MAX);
            if live.contains(&table) || u64::from(table) > issued {
                continue;
            }
            match drop_replica(&self.links, addr, id, 1).await {
                Ok(()) => {
                    tracing::info!(partition = id, %addr, "reaped a deleted table's replica");
                    dropped += 1;
                }
                Err(answer) => {
                    tracing::warn!(partition = id, %addr, ?answer, "a deleted table's replica not reaped");
                }
            }
        }
        Ok(dropped)
    }

    /// Deletes the replicas of a deleted table's partitions from the
    /// nodes, in the background (the table is gone from the map already):
    /// every registered node is asked to drop every partition of the
    /// record, and the child of a split under way, so replicas left on
    /// nodes a move took them from go too. A node that does not answer
    /// keeps what it holds (logged) until MemDS reaps it
    /// ([`MetaClient::reap`]).
    fn drop_partitions(&self, snapshot: &Snapshot, table: &TableRecord) {
        let mut ids: Vec<u64> = table.partitions.iter().map(|p| p.id).collect();
        ids.extend(table.splitting.map(|s| s.child));
        let nodes: Vec<NodeRecord> = snapshot.nodes.values().cloned().collect();
        let links = self.links.clone();
        let name = table.name.clone();
        glommio::spawn_local(async move {
            let mut failed = 0usize;
            for id in &ids {
                for node in &nodes {
                    // A link to a node that restarted since fails once
                    // (the old connection is dead) and is made anew.
                    let addr = node.shard_of(*id);
                    if let Err(answer) = drop_replica(&links, addr, *id, DROP_ATTEMPTS).await {
                        failed += 1;
                        tracing::warn!(table = %name, partition = id, node = node.id, ?answer, "a deleted table's replica not dropped");
                    }
                }
            }
            tracing::info!(table = %name, partitions = ids.len(), failed, "a deleted table's replicas dropped");
        })
        .detach();
    }
}

/// When the control plane splits a partition by itself (`None`: never
/// for that reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitBounds {
    /// Bytes of keys and items.
    pub bytes: Option<u64>,
    /// Operations per second, in two checks in a row.
    pub ops_per_s: Option<u64>,
}

/// Asks the shard at `addr` to drop its replica of `partition`, up to
/// `attempts` times; the last answer if it never said `Done`.
async fn drop_replica(
    links: &NodeLinks,
    addr: SocketAddr,
    partition: u64,
    attempts: usize,
) -> Result<(), Result<Response, SendError>> {
    let request = wire::encode_node_request(&NodeRequest {
        partition,
        op: NodeOp::DropPartition,
        limit: None,
    });
    let mut answer = Err(SendError::NotSent("not sent".into()));
    for _ in 0..attempts {
        answer = links.send(addr, &request, NODE_TIMEOUT, NODE_TIMEOUT).await;
        if matches!(answer, Ok(Response::Done)) {
            return Ok(());
        }
    }
    Err(answer)
}

/// An error passes through; any other answer is a protocol bug, reported.
fn unexpected(response: Response) -> Response {
    match response {
        Response::Error { .. } => response,
        other => internal(format!("metadata partition answered {other:?}")),
    }
}

fn in_use(name: &str) -> Response {
    Response::error(
        ErrorCode::ResourceInUse,
        format!("table {name:?} already exists"),
    )
}

/// Creates every replica of a partition on `members` (its nodes, in
/// replica order): a single copy, or a group whose replicas each learn
/// the whole membership and which one they are.
async fn create_group(
    links: &NodeLinks,
    partition: u64,
    schema: &KeySchema,
    members: &[&NodeRecord],
) -> Result<(), Response> {
    let group_members: Vec<GroupMember> = members
        .iter()
        .map(|n| GroupMember {
            addr: n.addr.to_string(),
            cores: n.cores,
            zone: n.zone.clone(),
            role: MemberRole::Full,
        })
        .collect();
    for (replica, node) in members.iter().enumerate() {
        let group = (members.len() > 1).then(|| GroupSpec {
            replica: replica as u32,
            members: group_members.clone(),
            since: 0,
        });
        create_replica(links, node.shard_of(partition), partition, schema, group).await?;
    }
    Ok(())
}

/// Creates one replica; one that exists already is fine.
async fn create_replica(
    links: &NodeLinks,
    addr: SocketAddr,
    partition: u64,
    schema: &KeySchema,
    group: Option<GroupSpec>,
) -> Result<(), Response> {
    let op = NodeOp::CreatePartition {
        schema: schema.encode(),
        group,
    };
    let request = wire::encode_node_request(&NodeRequest {
        partition,
        op,
        limit: None,
    });
    match links.send(addr, &request, NODE_TIMEOUT, NODE_TIMEOUT).await {
        Ok(
            Response::Done
            | Response::Error {
                code: ErrorCode::ResourceInUse,
                ..
            },
        ) => Ok(()),
        Ok(other) => Err(unexpected(other)),
        Err(SendError::NotSent(message) | SendError::Lost(message)) => {
            Err(Response::error(ErrorCode::Unavailable, message))
        }
    }
}

/// The table `name`, if it exists and is active.
fn active_table<'a>(snapshot: &'a Snapshot, name: &str) -> Result<&'a TableRecord, Response> {
    let table = snapshot.tables.get(name).ok_or_else(|| {
        Response::error(
            ErrorCode::ResourceNotFound,
            format!("table {name:?} does not exist"),
        )
    })?;
    if table.status != TableStatus::Active {
        return Err(validation(format!(
            "table {name:?} is {}",
            table.status.as_str()
        )));
    }
    Ok(table)
}

/// The shards holding `partition`'s replicas, in the record's order.
fn replica_shards(
    snapshot: &Snapshot,
    partition: &crate::map::Partition,
) -> Result<Vec<SocketAddr>, Response> {
    partition
        .replicas
        .as_slice()
        .iter()
        .map(|id| snapshot.nodes.get(id).map(|n| n.shard_of(partition.id)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| internal("a replica's node is not registered"))
}
