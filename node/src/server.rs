//! The node's network face: each shard answers [`NodeRequest`]s for its own
//! partitions on its own QUIC port (the node's base port + shard index), so
//! a router reaches the owning core directly and no request crosses cores.
//!
//! Writes to a replicated partition become proposals of its group
//! ([`Replication::propose`]); a replica that is not the leader answers
//! `NotLeader` with a hint. Consistent reads are checked against the
//! leader's lease. The same port carries replication batches from peers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use cairn_common::admission::{Throttled, read_cost, write_cost};
use cairn_common::quic::{Connection, Endpoint};
use cairn_common::wire::{self, DecodeError, ErrorCode, NodeOp, NodeRequest, Response, WireBound};
use cairn_common::{Item, KeySchema};

use crate::admission::{Admission, ShardCapacity};
use crate::device::DmaFs;
use crate::engine::{Engine, EngineError};
use crate::metrics::ShardCounters;
use crate::replication::Replication;
use crate::shard::{NodeError, Op, Outcome, ScanRequest, execute};
use crate::wal::WalError;

impl NodeError {
    /// The wire error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::Engine(error) => error.code(),
            NodeError::Overloaded { .. } => ErrorCode::Throttling,
            NodeError::ShardStopped { .. } | NodeError::Startup { .. } => ErrorCode::Unavailable,
            NodeError::Preflight(_) => ErrorCode::Internal,
        }
    }
}

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::InvalidItem(_) => ErrorCode::Validation,
            EngineError::UnknownPartition(_) => ErrorCode::ResourceNotFound,
            EngineError::PartitionExists(_) => ErrorCode::ResourceInUse,
            EngineError::ConditionFailed => ErrorCode::ConditionalCheckFailed,
            EngineError::Throttled | EngineError::Wal(WalError::Throttled { .. }) => {
                ErrorCode::Throttling
            }
            EngineError::Stopped(_) => ErrorCode::Unavailable,
            EngineError::Replicated(_)
            | EngineError::InvalidSnapshot { .. }
            | EngineError::InvalidSplit { .. } => ErrorCode::Validation,
            EngineError::WrongPartition { .. } => ErrorCode::WrongPartition,
            _ => ErrorCode::Internal,
        }
    }
}

/// A shard's admission state and the clock it runs on.
#[derive(Debug)]
pub struct Admitter {
    epoch: Instant,
    admission: RefCell<Admission>,
}

impl Admitter {
    /// `counters`: where the shard's metrics go.
    pub fn new(capacity: Option<ShardCapacity>, counters: Arc<ShardCounters>) -> Admitter {
        Admitter {
            epoch: Instant::now(),
            admission: RefCell::new(Admission::with_capacity(capacity, 0).counting_into(counters)),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admits `op` under the partition's `limit` (none: the shard's own
    /// capacity alone), or says why not. A limited write bursts only if
    /// `peers_spare()` (asked only then).
    fn admit(
        &self,
        partition: u64,
        limit: Option<wire::PartitionLimit>,
        op: &NodeOp,
        peers_spare: impl FnOnce() -> bool,
    ) -> Result<(), Response> {
        // (write, the item's size if known, consistent)
        let (write, bytes, consistent) = match op {
            NodeOp::Get { consistent, .. } | NodeOp::Scan { consistent, .. } => {
                (false, 0, *consistent)
            }
            NodeOp::Put { item, .. } => (true, item.len(), true),
            NodeOp::Update { .. } | NodeOp::Delete { .. } => (true, 0, true),
            _ => return Ok(()),
        };
        let now = self.now_ns();
        let mut admission = self.admission.borrow_mut();
        let admitted = match limit {
            Some(limit) if write => {
                admission.admit_write(partition, limit, bytes, peers_spare(), now)
            }
            Some(limit) => admission.admit_read(partition, limit, consistent, now),
            None if write => admission.admit_unlimited(true, write_cost(bytes), now),
            None => admission.admit_unlimited(false, read_cost(0, consistent), now),
        };
        let kind = if write { "write" } else { "read" };
        admitted.map_err(|throttled| {
            let what = match throttled {
                Throttled::Node => "this node's shard is at its capacity",
                _ => "the partition is over its capacity",
            };
            Response::error(
                ErrorCode::Throttling,
                format!(
                    "The level of configured provisioned throughput for the table was exceeded: partition {partition}: {what} ({kind}); retry"
                ),
            )
        })
    }

    /// See [`Admission::charge_follower_write`].
    pub fn charge_follower_write(&self, bytes: usize) {
        let now = self.now_ns();
        self.admission
            .borrow_mut()
            .charge_follower_write(bytes, now);
    }

    /// Whether the shard has write capacity to spare (what its
    /// replication batches tell its peers).
    pub fn write_spare(&self) -> bool {
        let now = self.now_ns();
        self.admission.borrow_mut().write_spare(now)
    }

    /// Charges a read what the items it returned cost beyond its first
    /// unit.
    fn charge_read(&self, partition: u64, bytes: usize, consistent: bool) {
        let now = self.now_ns();
        self.admission
            .borrow_mut()
            .charge_read(partition, bytes, consistent, now);
    }
}

/// Accepts connections on `endpoint` and serves them on this shard.
pub async fn serve(
    engine: Rc<Engine<DmaFs>>,
    replication: Option<Rc<Replication>>,
    endpoint: Endpoint,
    in_flight: Rc<Cell<usize>>,
    in_flight_max: usize,
    admitter: Rc<Admitter>,
) {
    while let Ok(connection) = endpoint.accept().await {
        let (engine, replication, in_flight, admitter) = (
            engine.clone(),
            replication.clone(),
            in_flight.clone(),
            admitter.clone(),
        );
        glommio::spawn_local(serve_connection(
            engine,
            replication,
            admitter,
            connection,
            (in_flight, in_flight_max),
        ))
        .detach();
    }
}

async fn serve_connection(
    engine: Rc<Engine<DmaFs>>,
    replication: Option<Rc<Replication>>,
    admitter: Rc<Admitter>,
    connection: Connection,
    (in_flight, in_flight_max): (Rc<Cell<usize>>, usize),
) {
    while let Ok(request) = connection.next_request().await {
        if in_flight.get() >= in_flight_max {
            let busy = Response::error(ErrorCode::Throttling, "node shard overloaded; retry");
            let _ = connection.respond(request.stream, &wire::encode_response(&busy));
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let (engine, replication, connection, in_flight, admitter) = (
            engine.clone(),
            replication.clone(),
            connection.clone(),
            in_flight.clone(),
            admitter.clone(),
        );
        glommio::spawn_local(async move {
            let response = match request.body {
                Ok(body) => answer(&engine, replication.as_ref(), &admitter, &body).await,
                Err(error) => Response::error(ErrorCode::Malformed, error.to_string()),
            };
            in_flight.set(in_flight.get() - 1);
            // A failed respond means the peer went away; nothing to tell.
            let _ = connection.respond(request.stream, &wire::encode_response(&response));
        })
        .detach();
    }
}

async fn answer(
    engine: &Engine<DmaFs>,
    replication: Option<&Rc<Replication>>,
    admitter: &Admitter,
    body: &[u8],
) -> Response {
    let request = match wire::decode_node_request(body) {
        Ok(request) => request,
        Err(error) => return Response::error(ErrorCode::Malformed, error.to_string()),
    };
    let partition = request.partition;
    let no_replication = || {
        Response::error(
            ErrorCode::Validation,
            "this node runs without a network face; replication is off",
        )
    };
    match &request.op {
        NodeOp::Replication { batch } => {
            let Some(replication) = replication else {
                return no_replication();
            };
            return match replication.receive(batch) {
                Ok(()) => Response::Done,
                Err(message) => Response::error(ErrorCode::Malformed, message),
            };
        }
        NodeOp::Snapshot { chunk } => {
            let Some(replication) = replication else {
                return no_replication();
            };
            return replication.receive_snapshot(chunk).await;
        }
        NodeOp::LogStart { start } => {
            let Some(replication) = replication else {
                return no_replication();
            };
            return replication.receive_log_start(start);
        }
        NodeOp::Stats => {
            // The leader's: it alone sees the strongly consistent reads.
            if let Some(replication) = replication
                && let Err(not_leader) = replication.check_leads(partition)
            {
                return not_leader;
            }
            return stats(engine, partition);
        }
        NodeOp::ReplaceMember { old, new } => {
            let Some(replication) = replication else {
                return no_replication();
            };
            return replication.replace_member(partition, old, new).await;
        }
        NodeOp::CreatePartition {
            schema,
            group: Some(spec),
        } => {
            let Some(replication) = replication else {
                return no_replication();
            };
            return create_replicated(engine, replication, partition, schema, spec).await;
        }
        NodeOp::ListPartitions => return Response::Partitions(engine.partition_ids()),
        NodeOp::DropPartition => {
            return match drop_replica(engine, replication, partition).await {
                Ok(dropped) => {
                    tracing::info!(partition, dropped, "partition dropped");
                    Response::Done
                }
                Err(error) => Response::error(error.code(), error.to_string()),
            };
        }
        _ => {}
    }
    // Before anything else is spent on it. (A follower that will answer
    // NotLeader spends its own tokens too; the leader's are the ones that
    // hold a write back.)
    let peers_spare = || replication.is_none_or(|r| r.peers_spare(partition));
    if let Err(throttled) = admitter.admit(partition, request.limit, &request.op, peers_spare) {
        return throttled;
    }

    if let NodeOp::Scan {
        hash_range: Some((first, last)),
        ..
    } = request.op
        && let Some(range) = engine.range(partition)
        && !(range.0 <= first && last <= range.1)
    {
        let error = EngineError::WrongPartition {
            partition,
            hash: first,
            first: range.0,
            last: range.1,
        };
        return Response::error(error.code(), error.to_string());
    }
    let is_write = request.op.is_write();
    let read_consistency = match &request.op {
        NodeOp::Get { consistent, .. } | NodeOp::Scan { consistent, .. } => Some(*consistent),
        _ => None,
    };
    let limited = request.limit.is_some();
    let op = match to_op(request) {
        Ok(op) => op,
        Err(error) => return Response::error(ErrorCode::Malformed, error.to_string()),
    };
    if let Some(replication) = replication
        && engine.is_replicated(partition)
    {
        if is_write {
            if let Err(error) = validate_write(engine, partition, &op) {
                return Response::error(error.code(), error.to_string());
            }
            if matches!(op, Op::Split { .. }) && replication.serves_log_replicas(partition) {
                // A log replica could not take the child's copy.
                return Response::error(
                    ErrorCode::Throttling,
                    format!(
                        "partition {partition} has a log replica; it splits once a full replica replaces it"
                    ),
                );
            }
            return replication.propose(partition, body).await;
        }
        if let Some(consistent) = read_consistency
            && let Err(response) = replication.admit_read(partition, consistent).await
        {
            return response;
        }
    }
    let response = match execute(engine, partition, op).await {
        Ok(Outcome::Done) => Response::Done,
        Ok(Outcome::Item(item)) => Response::Item(item.map(|i| i.to_bytes())),
        Ok(Outcome::Page(page)) => Response::Page {
            items: page.items.iter().map(Item::to_bytes).collect(),
            last_key: page.last_key,
        },
        Err(error) => Response::error(error.code(), error.to_string()),
    };
    if limited && let Some(consistent) = read_consistency {
        let bytes = match &response {
            Response::Item(Some(item)) => item.len(),
            Response::Page { items, .. } => items.iter().map(Vec::len).sum(),
            _ => 0,
        };
        admitter.charge_read(partition, bytes, consistent);
    }
    response
}

/// The `PartitionStats` answer for `partition`.
pub(crate) fn stats(engine: &Engine<DmaFs>, partition: u64) -> Response {
    match (engine.stored_bytes(partition), engine.range(partition)) {
        (Some(bytes), Some(range)) => {
            let load = engine.load(partition);
            Response::PartitionStats {
                bytes,
                range,
                ops_per_s: load.ops_per_s,
                median: load.median,
            }
        }
        _ => Response::error(
            ErrorCode::ResourceNotFound,
            EngineError::UnknownPartition(partition).to_string(),
        ),
    }
}

async fn create_replicated(
    engine: &Engine<DmaFs>,
    replication: &Rc<Replication>,
    partition: u64,
    schema: &[u8],
    spec: &wire::GroupSpec,
) -> Response {
    let schema = match KeySchema::decode(schema) {
        Ok(schema) => schema,
        Err(error) => return Response::error(ErrorCode::Malformed, error.to_string()),
    };
    // Checked on the way in, as it will be at recovery.
    if let Err(error) = spec.validate() {
        return Response::error(ErrorCode::Validation, error.to_string());
    }
    // A replica this node kept after its group replaced it (the node was
    // down meanwhile) is in the way of a new member here: the new group
    // says the old one was removed, so its state is nobody's any more.
    if let Some(old) = engine.spec(partition)
        && old.replica != spec.replica
        && let (Some(was), Some(now)) = (
            old.members.get(old.replica as usize),
            spec.members.get(old.replica as usize),
        )
        && now.role == wire::MemberRole::Removed
        && now.addr == was.addr
    {
        tracing::info!(
            partition,
            old = old.replica,
            new = spec.replica,
            "a replaced replica kept here makes way for a new member"
        );
        if let Err(error) = drop_replica(engine, Some(replication), partition).await {
            return Response::error(error.code(), error.to_string());
        }
    }
    // A concurrent creation of the same group (two creators racing) is
    // answered once the first one serves, so "exists" means "ready".
    if !replication.begin_creating(partition) {
        return if replication
            .await_created(partition, CREATION_WAIT_MAX)
            .await
        {
            Response::error(
                ErrorCode::ResourceInUse,
                format!("partition {partition} already exists"),
            )
        } else {
            Response::error(
                ErrorCode::Unavailable,
                format!("partition {partition} is still being created; retry"),
            )
        };
    }
    let created = match engine
        .create_replicated(partition, schema, spec.clone())
        .await
    {
        Ok(()) => replication.add_group(partition).await,
        Err(error) => Err(error),
    };
    replication.end_creating(partition);
    match created {
        Ok(()) => Response::Done,
        Err(error) => Response::error(error.code(), error.to_string()),
    }
}

/// Deletes this shard's replica of `partition`, its group first (nothing
/// is applied to it after that); whether there was one.
async fn drop_replica(
    engine: &Engine<DmaFs>,
    replication: Option<&Rc<Replication>>,
    partition: u64,
) -> Result<bool, EngineError> {
    if let Some(replication) = replication {
        replication.drop_group(partition);
    }
    engine.drop_partition(partition).await
}

/// How long a second creation of a group waits for the first.
const CREATION_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks what can be checked of a write before it is proposed, so the log
/// holds no command that is wrong whatever the state: the key against the
/// schema, the item's size and shape.
fn validate_write(engine: &Engine<DmaFs>, partition: u64, op: &Op) -> Result<(), EngineError> {
    let schema = engine.schema(partition)?;
    let key = match op {
        Op::Put { item, .. } => {
            item.validate()?;
            schema.key_of_item(item)?
        }
        Op::Delete { key, .. } | Op::Update { key, .. } => schema.key_of_key(key)?,
        _ => return Ok(()), // a split: its apply decides
    };
    // A key a split moved away (checked again when applied).
    engine.check_holds(partition, &key)
}

fn bound(bound: WireBound) -> std::ops::Bound<Vec<u8>> {
    match bound {
        WireBound::Unbounded => std::ops::Bound::Unbounded,
        WireBound::Included(key) => std::ops::Bound::Included(key),
        WireBound::Excluded(key) => std::ops::Bound::Excluded(key),
    }
}

/// Decodes a request's items, keys and conditions into an engine operation.
pub(crate) fn to_op(request: NodeRequest) -> Result<Op, DecodeError> {
    let condition = |c: Option<wire::WireCondition>| c.map(|c| c.to_condition()).transpose();
    Ok(match request.op {
        NodeOp::CreatePartition { schema, .. } => Op::CreatePartition {
            schema: KeySchema::decode(&schema)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?,
        },
        NodeOp::Put {
            item,
            condition: c,
            returns,
        } => Op::Put {
            item: Item::decode(&item)?,
            condition: condition(c)?,
            returns,
        },
        NodeOp::Get { key, .. } => Op::Get {
            key: Item::decode(&key)?,
        },
        NodeOp::Update {
            key,
            changes,
            condition: c,
            returns,
        } => Op::Update {
            returns,
            key: Item::decode(&key)?,
            changes: changes
                .iter()
                .map(wire::WireChange::to_action)
                .collect::<Result<_, _>>()?,
            condition: condition(c)?,
        },
        NodeOp::Delete {
            key,
            condition: c,
            returns,
        } => Op::Delete {
            key: Item::decode(&key)?,
            condition: condition(c)?,
            returns,
        },
        NodeOp::Scan {
            start,
            end,
            reverse,
            limit,
            bytes_max,
            resume_after,
            ..
        } => Op::Scan(ScanRequest {
            start: bound(start),
            end: bound(end),
            reverse,
            limit: (limit as usize).clamp(1, SCAN_LIMIT_MAX),
            bytes_max: bytes_max as usize,
            resume_after,
        }),
        NodeOp::Split { at, child } => Op::Split { at, child },
        NodeOp::Replication { .. }
        | NodeOp::Snapshot { .. }
        | NodeOp::LogStart { .. }
        | NodeOp::Stats
        | NodeOp::DropPartition
        | NodeOp::ListPartitions
        | NodeOp::ReplaceMember { .. } => {
            return Err(DecodeError::Malformed(
                "a replication, membership or stats message is not an operation".into(),
            ));
        }
    })
}

/// Most items one scan page returns, whatever the request asks.
pub const SCAN_LIMIT_MAX: usize = 1000;
