//! The shell around [`paxos::Replica`]: one per shard, driving the replicas
//! of that shard's replicated partitions with its WAL, its QUIC endpoint
//! and its clock (docs/replication.md, "The node's driver").
//!
//! - **Durability.** A `Ready`'s `persist` goes to the shard's WAL as
//!   PROMISE/ACCEPT records (group commit shares one flush among every
//!   group on the core). Only when they are durable does the driver call
//!   `persisted` and release `send_after_persist`.
//! - **Messages** for the same peer shard are gathered in one outbox and
//!   leave as one framed batch per flush of the outbox, whatever the number
//!   of groups: heartbeats of many groups to one peer share a packet.
//!   Sends are bounded per peer; beyond the bound messages are dropped,
//!   which Paxos tolerates (the leader retransmits).
//! - **Apply.** Chosen values are applied to the engine in slot order by
//!   one task per shard; the leader answers a proposal's client with the
//!   result of applying it. A COMMIT marker per batch of chosen slots lets
//!   recovery apply them without the leader.
//! - **Reads.** A consistent read is served by the leader while its lease
//!   holds, once it has applied the lease's commit point; other reads are
//!   served by any replica from what it has applied.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_common::quic::{Connection, Endpoint, TransportError};
use cairn_common::wire::{
    self, ErrorCode, GroupMember, GroupSpec, MemberRole, NodeOp, NodeRequest, Response,
    ReturnValues,
};
use event_listener::Event;
use rkyv::rancor;

use crate::admission::PeerSpare;
use crate::device::DmaFs;
use crate::engine::membership_of;
use crate::engine::{Engine, EngineError, HashRange, PartitionId};
use crate::paxos::{self, Member, Membership, Message, Replica, ReplicaId, Slot, Value};
use crate::server::Admitter;
use crate::shard::{Op, shard_addr};

/// Timing and bounds of replication.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub heartbeat_interval: Duration,
    /// Must be shorter than `election_timeout`.
    pub lease_duration: Duration,
    pub election_timeout: Duration,
    pub clock_drift_max: f64,
    /// How often every group's timers are looked at.
    pub tick_interval: Duration,
    /// Chosen values a group keeps in memory for lagging peers.
    pub retained_slots: u64,
    /// Proposals one group may have waiting for their slot to be chosen.
    pub proposals_max: usize,
    /// How long a client waits for its proposal to be chosen and applied.
    pub proposal_timeout: Duration,
    /// Batches in flight to one peer shard; beyond it messages are dropped.
    pub sends_in_flight_max: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(50),
            lease_duration: Duration::from_millis(300),
            election_timeout: Duration::from_millis(400),
            clock_drift_max: 0.05,
            tick_interval: Duration::from_millis(10),
            retained_slots: 20_000,
            proposals_max: 4096,
            proposal_timeout: Duration::from_millis(1500),
            sends_in_flight_max: 64,
        }
    }
}

/// One message between replicas of a group, as batched on the wire.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PeerMessage {
    pub partition: u64,
    pub from: u32,
    pub message: Message,
}

/// What one shard sends another in one request.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PeerBatch {
    pub messages: Vec<PeerMessage>,
    /// Whether the sending shard has write capacity to spare: a leader
    /// lets a partition burst only while its followers' shards do.
    pub spare: bool,
}

/// One chunk of a leader's snapshot of a partition, for a replica that
/// lags below the leader's log. Chunks go one at a time, in key order.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub partition: u64,
    pub from: u32,
    /// Names one transfer: a chunk of another is refused.
    pub stream: u64,
    /// The snapshot holds every slot below.
    pub through: u64,
    /// The hashes the partition served at `through` (a split may have
    /// narrowed it).
    pub range: (u64, u64),
    /// The group's members at `through` (`GroupSpec::to_bytes`).
    pub spec: Vec<u8>,
    /// `None` in the first chunk, else the previous chunk's last key.
    pub after: Option<Vec<u8>>,
    /// Encoded key and item bytes, in key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    pub last: bool,
    /// First chunk only: the sender's partitions of the same table outside
    /// `range`, each with its range and group (`GroupSpec::to_bytes`).
    /// A receiver that skips a split by taking the snapshot creates the
    /// children it is a member of, which the split would have made.
    pub children: Vec<(u64, (u64, u64), Vec<u8>)>,
}

/// Where a log replica's log starts (`NodeOp::LogStart`): it holds no
/// state machine, so instead of a snapshot its leader tells it that every
/// slot below `through` is chosen and passed over; the log from there
/// follows.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogStart {
    pub partition: u64,
    pub from: u32,
    pub through: u64,
    /// The group's members at `through`: replica id and whether each is
    /// a log replica.
    pub members: Vec<(u32, bool)>,
}

/// How often a leader looks again whether a learner has caught up.
const LEARNER_POLL: Duration = Duration::from_millis(10);
/// How long a `ReplaceMember` waits for its learner before it answers
/// `Throttling` (well within the control plane's wait for one replica).
const LEARNER_WAIT: Duration = Duration::from_millis(300);

/// A joining replica's `GroupSpec::since` until it learns the slot: it
/// holds no membership before that (`add_group`).
const SINCE_UNKNOWN: Slot = Slot::MAX;
/// How long a peer node may take to answer a control request.
const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// About this many bytes of entries go in one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;
/// How long a peer may take to store one chunk.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a chunk is offered to a peer that answers "throttled".
const SNAPSHOT_CHUNK_ATTEMPTS: u32 = 50;

/// A snapshot being received.
#[derive(Debug)]
struct Install {
    /// The sending replica and its name for the transfer.
    from: u32,
    stream: u64,
    through: Slot,
    range: HashRange,
    spec: GroupSpec,
    /// The last key stored; the next chunk must start after it.
    after: Option<Vec<u8>>,
    /// From the first chunk ([`SnapshotChunk::children`]).
    children: Vec<(PartitionId, HashRange, GroupSpec)>,
    /// A chunk is being stored (no other may interleave with it), or the
    /// last one was and the swap is queued: a new transfer must not
    /// replace the complete staging tree before it is swapped in.
    busy: bool,
}

/// Most bytes of messages gathered into one batch.
const BATCH_BYTES_MAX: usize = 1 << 20;
/// How long a peer may take to answer a batch before its link is dropped.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Pending {
    /// The command's id; for a membership change, the context proposed.
    proposed: Proposed,
    reply: async_channel::Sender<Response>,
}

/// What a leader proposed in a slot, to tell it from another leader's
/// value chosen there.
#[derive(Debug, PartialEq, Eq)]
enum Proposed {
    Command(u64),
    Membership(Vec<u8>),
}

impl Proposed {
    fn is(&self, value: &Value) -> bool {
        match (self, value) {
            (Proposed::Command(id), Value::Command(command)) => command_id(command) == Some(*id),
            (Proposed::Membership(spec), Value::Reconfigure(m)) => m.context == *spec,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Group {
    replica: Replica,
    /// The shard address of each member, by replica id.
    members: Vec<SocketAddr>,
    /// Proposals of this leader, by slot, waiting to be applied.
    pending: HashMap<Slot, Pending>,
    /// The commit marker last logged: every slot below is chosen, and
    /// once the WAL is durable past it, this replica restarts with its
    /// state machine through there (from its checkpoint and its own log).
    marker_logged: Slot,
    /// After a snapshot install, what may be reported durable until a
    /// checkpoint holds the installed tree (a crash before forgets it).
    durable_cap: Option<Slot>,
    /// Snapshots installed: a checkpoint lifts the cap of the last one.
    installs: u64,
}

#[derive(Debug, Default)]
struct Link {
    connection: Option<Connection>,
    connecting: bool,
    in_flight: usize,
}

/// The replication driver of one shard.
#[derive(Debug)]
pub struct Replication {
    shard: usize,
    engine: Rc<Engine<DmaFs>>,
    config: ReplicationConfig,
    endpoint: Endpoint,
    server_name: String,
    groups: RefCell<BTreeMap<PartitionId, Group>>,
    outbox: RefCell<BTreeMap<SocketAddr, Vec<PeerMessage>>>,
    outbox_ready: Event,
    to_apply: RefCell<VecDeque<(PartitionId, Slot, Value)>>,
    apply_ready: Event,
    applied: Event,
    links: RefCell<HashMap<SocketAddr, Link>>,
    next_id: Cell<u64>,
    /// Groups being created on this shard, between the engine's durable
    /// record and `add_group`: a second creation request waits for the
    /// first instead of answering "exists" for a group not serving yet.
    creating: RefCell<std::collections::HashSet<PartitionId>>,
    created: Event,
    /// The shard's admission control: what it says of its spare capacity.
    admitter: Rc<Admitter>,
    /// What the peers' shards said of theirs, per partition and member.
    peer_spare: RefCell<PeerSpare>,
    /// Snapshots this shard is sending, by partition and peer: the slot
    /// each holds through (none is started twice, and the log is kept
    /// from there on so the peer can go on from it).
    snapshots_out: RefCell<HashMap<(PartitionId, ReplicaId), Slot>>,
    /// Snapshots this shard is receiving, by partition.
    installs: RefCell<HashMap<PartitionId, Install>>,
    /// Complete snapshots for the apply task to swap in, between slots.
    installs_ready: RefCell<VecDeque<(PartitionId, Slot, HashRange, GroupSpec)>>,
    epoch: Instant,
}

/// A proposal's command: `id u64 ‖ NodeRequest` (the request as the router
/// sent it; the id tells the proposer its own command from another's).
fn encode_command(id: u64, request: &[u8]) -> Vec<u8> {
    let mut command = Vec::with_capacity(8 + request.len());
    command.extend_from_slice(&id.to_le_bytes());
    command.extend_from_slice(request);
    command
}

/// The proposer's id of a command, without decoding the request.
fn command_id(command: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(command.get(..8)?.try_into().ok()?))
}

fn engine_error(error: &EngineError) -> Response {
    Response::error(error.code(), error.to_string())
}

fn unavailable(message: impl Into<String>) -> Response {
    Response::error(ErrorCode::Unavailable, message)
}

/// Decodes (and validates) a node-internal message from a peer shard.
fn decode_peer<T>(bytes: &[u8], what: &str) -> Result<T, String>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| format!("malformed {what}: {e}"))
}

/// Each member's shard address for `partition`.
fn member_addrs(spec: &GroupSpec, partition: PartitionId) -> Result<Vec<SocketAddr>, String> {
    spec.members
        .iter()
        .map(|m| {
            let base: SocketAddr = m.addr.parse().map_err(|e| format!("{}: {e}", m.addr))?;
            Ok(shard_addr(base, (partition % u64::from(m.cores)) as usize))
        })
        .collect()
}

impl Replication {
    /// Starts the driver's tasks on this executor and brings up a replica
    /// for every replicated partition the engine recovered.
    pub async fn start(
        shard: usize,
        engine: Rc<Engine<DmaFs>>,
        endpoint: Endpoint,
        server_name: String,
        config: ReplicationConfig,
        admitter: Rc<Admitter>,
    ) -> Result<Rc<Replication>, EngineError> {
        let replication = Rc::new(Replication {
            shard,
            engine,
            config,
            endpoint,
            server_name,
            groups: RefCell::default(),
            outbox: RefCell::default(),
            outbox_ready: Event::new(),
            to_apply: RefCell::default(),
            apply_ready: Event::new(),
            applied: Event::new(),
            links: RefCell::default(),
            next_id: Cell::new(0),
            creating: RefCell::default(),
            created: Event::new(),
            admitter,
            peer_spare: RefCell::default(),
            snapshots_out: RefCell::default(),
            installs: RefCell::default(),
            installs_ready: RefCell::default(),
            epoch: Instant::now(),
        });
        for partition in replication.engine.partition_ids() {
            if replication.engine.is_replicated(partition) {
                replication.add_group(partition).await?;
            }
        }
        glommio::spawn_local(replication.clone().tick_loop()).detach();
        glommio::spawn_local(replication.clone().apply_loop()).detach();
        glommio::spawn_local(replication.clone().send_loop()).detach();
        Ok(replication)
    }

    /// The answer for a group this shard does not run: retryable while it
    /// is being created, else not found.
    fn missing_group(&self, partition: PartitionId) -> Response {
        if self.creating.borrow().contains(&partition) {
            return unavailable("the partition is still being created; retry");
        }
        engine_error(&EngineError::UnknownPartition(partition))
    }

    /// Stops `partition`'s replica, for good (its table was deleted):
    /// writes waiting on it are told the partition is gone, and messages
    /// for it are dropped from now on.
    pub fn drop_group(&self, partition: PartitionId) {
        if let Some(group) = self.groups.borrow_mut().remove(&partition) {
            for pending in group.pending.into_values() {
                let _ = pending
                    .reply
                    .try_send(engine_error(&EngineError::UnknownPartition(partition)));
            }
        }
        self.installs.borrow_mut().remove(&partition);
    }

    /// Marks `partition` as being created; `false` if it already is.
    pub fn begin_creating(&self, partition: PartitionId) -> bool {
        self.creating.borrow_mut().insert(partition)
    }

    pub fn end_creating(&self, partition: PartitionId) {
        self.creating.borrow_mut().remove(&partition);
        self.created.notify(usize::MAX);
    }

    /// Waits, at most `timeout`, until `partition` is no longer being
    /// created; returns whether it finished.
    pub async fn await_created(&self, partition: PartitionId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let listener = self.created.listen();
            if !self.creating.borrow().contains(&partition) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            futures_lite::future::or(
                async {
                    listener.await;
                },
                glommio::timer::sleep(left),
            )
            .await;
        }
    }

    /// Brings up the replica of a replicated partition: first applies the
    /// slots its commit markers say are chosen, then starts the Paxos
    /// replica from the durable state.
    pub async fn add_group(self: &Rc<Self>, partition: PartitionId) -> Result<(), EngineError> {
        let log = self
            .engine
            .group(partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        for slot in log.applied_through..log.committed_through {
            let Some((_, value)) = log.durable.accepted.get(&slot) else {
                break; // a gap: the leader will resend from here
            };
            self.apply_one(partition, slot, value).await?;
        }
        let log = self
            .engine
            .group(partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        let members =
            member_addrs(&log.spec, partition).map_err(|reason| EngineError::CorruptRecord {
                lsn: 0,
                reason: format!("partition {partition}: {reason}"),
            })?;
        // Election jitter must differ between the members and across
        // restarts: the partition, the replica id and this process's id.
        let seed = partition.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(log.spec.replica) << 56
            ^ u64::from(std::process::id()) << 24;
        // The members at the applied point; a replica that joined the
        // group learns them from a snapshot or the log.
        let membership = (log.applied_through >= log.spec.since)
            .then(|| membership_of(&log.spec))
            .transpose()
            .map_err(|e| EngineError::CorruptRecord {
                lsn: 0,
                reason: format!("partition {partition}: {e}"),
            })?;
        let config = paxos::Config {
            id: log.spec.replica as ReplicaId,
            heartbeat_interval: self.config.heartbeat_interval,
            lease_duration: self.config.lease_duration,
            clock_drift_max: self.config.clock_drift_max,
            election_timeout: self.config.election_timeout,
            seed,
        };
        let replica = Replica::new(
            config,
            membership,
            log.durable,
            log.applied_through,
            Instant::now(),
        );
        tracing::info!(
            shard = self.shard,
            partition,
            replica = log.spec.replica,
            applied_through = log.applied_through,
            "replica started"
        );
        self.groups.borrow_mut().insert(
            partition,
            Group {
                replica,
                members,
                pending: HashMap::new(),
                marker_logged: log.applied_through,
                durable_cap: None,
                installs: 0,
            },
        );
        Ok(())
    }

    /// Proposes the write `request` (its encoded bytes, already validated)
    /// and answers once it is chosen and applied here.
    pub async fn propose(self: &Rc<Self>, partition: PartitionId, request: &[u8]) -> Response {
        if let Err(error) = self.engine.admit_write() {
            return engine_error(&error);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (reply, answer) = async_channel::bounded(1);
        {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&partition) else {
                return self.missing_group(partition);
            };
            if group.pending.len() >= self.config.proposals_max {
                return Response::error(ErrorCode::Throttling, "too many writes in flight; retry");
            }
            match group.replica.propose(encode_command(id, request)) {
                Ok(slot) => {
                    let proposed = Proposed::Command(id);
                    group.pending.insert(slot, Pending { proposed, reply });
                }
                Err(paxos::NotLeader { .. }) => {
                    return Response::NotLeader {
                        leader: router_hint(&group.replica),
                    };
                }
            }
        }
        self.drive(partition);
        self.await_applied(answer).await
    }

    /// The answer to a proposal, once applied here, or `Unavailable` after
    /// the proposal timeout.
    async fn await_applied(&self, answer: async_channel::Receiver<Response>) -> Response {
        let timeout = self.config.proposal_timeout;
        let timer = async {
            glommio::timer::sleep(timeout).await;
            None
        };
        match futures_lite::future::or(async { answer.recv().await.ok() }, timer).await {
            Some(response) => response,
            None => unavailable(format!(
                "write not confirmed within {timeout:?} (leader change?); it may or may not have been applied"
            )),
        }
    }

    /// Replaces `partition`'s member on node `old` by `new` (see
    /// `NodeOp::ReplaceMember`): creates the new replica, catches it up as
    /// a learner, proposes the change once it is close to the commit
    /// point, and answers once the change is applied here. A learner
    /// still far behind after [`LEARNER_WAIT`] gets `Throttling`: the
    /// caller asks again, and the catching up goes on meanwhile.
    pub async fn replace_member(
        self: &Rc<Self>,
        partition: PartitionId,
        old: &str,
        new: &GroupMember,
    ) -> Response {
        let invalid = |message: String| Response::error(ErrorCode::Validation, message);
        if let Err(not_leader) = self.check_leads(partition) {
            return not_leader;
        }
        let Some(current) = self.engine.spec(partition) else {
            return self.missing_group(partition);
        };
        let spec = match successor(&current, old, new) {
            Ok(Some(spec)) => spec,
            Ok(None) => return Response::Done, // replaced before
            Err(reason) => return invalid(format!("partition {partition}: {reason}")),
        };
        if new.role == MemberRole::Removed {
            return invalid(format!(
                "partition {partition}: a new member must be a full or a log replica"
            ));
        }
        if let Err(error) = spec.validate() {
            return invalid(format!("partition {partition}: {error}"));
        }
        let (membership, addrs) = match (membership_of(&spec), member_addrs(&spec, partition)) {
            (Ok(membership), Ok(addrs)) => (membership, addrs),
            (Err(error), _) => return invalid(format!("partition {partition}: {error}")),
            (_, Err(error)) => return invalid(format!("partition {partition}: {error}")),
        };
        // The successor must follow the group as chosen: not while a change
        // is in flight, or chosen but not yet applied here.
        let applied = membership_of(&current).ok();
        let settled = self.groups.borrow().get(&partition).is_some_and(|group| {
            !group.replica.is_reconfiguring()
                && group.replica.membership().map(Membership::members)
                    == applied.as_ref().map(Membership::members)
        });
        if !settled {
            return Response::error(
                ErrorCode::Throttling,
                "another membership change is in progress; retry",
            );
        }
        let joiner = *addrs.last().expect("the successor appends a member");
        if let Err(response) = self.create_member(partition, &spec, joiner).await {
            return response;
        }
        // The new replica catches up as a learner first (a snapshot, then
        // the log), and joins once it is close to the commit point.
        let learner = (spec.members.len() - 1) as ReplicaId;
        let replaced = current
            .current()
            .find(|(_, m)| m.addr == old)
            .map(|(id, _)| id as ReplicaId);
        {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&partition) else {
                return self.missing_group(partition);
            };
            if group
                .replica
                .add_learner(learner, new.role == MemberRole::Log, replaced)
                .is_err()
            {
                return Response::NotLeader {
                    leader: router_hint(&group.replica),
                };
            }
            // A superset of the old addresses, each id in its place.
            group.members = addrs;
        }
        self.drive(partition);
        // Each replica keeps its own id and sets `since` when it applies.
        let context = GroupSpec {
            replica: 0,
            since: 0,
            ..spec.clone()
        }
        .to_bytes();
        let (reply, answer) = async_channel::bounded(1);
        let deadline = Instant::now() + LEARNER_WAIT;
        loop {
            {
                let mut groups = self.groups.borrow_mut();
                let Some(group) = groups.get_mut(&partition) else {
                    return self.missing_group(partition);
                };
                match group
                    .replica
                    .propose_membership(membership.clone().with_context(context.clone()))
                {
                    Ok(slot) => {
                        let proposed = Proposed::Membership(context);
                        group.pending.insert(slot, Pending { proposed, reply });
                        break;
                    }
                    Err(paxos::ReconfigureError::NotLeader(_)) => {
                        return Response::NotLeader {
                            leader: router_hint(&group.replica),
                        };
                    }
                    Err(paxos::ReconfigureError::InProgress) => {
                        return Response::error(
                            ErrorCode::Throttling,
                            "another membership change is in progress; retry",
                        );
                    }
                    Err(error @ paxos::ReconfigureError::RemovesLeader) => {
                        return invalid(format!("partition {partition}: {error}"));
                    }
                    Err(paxos::ReconfigureError::NotCaughtUp(_)) if Instant::now() >= deadline => {
                        return Response::error(
                            ErrorCode::Throttling,
                            format!(
                                "partition {partition}: the new replica on {} is still catching up; retry",
                                new.addr
                            ),
                        );
                    }
                    Err(paxos::ReconfigureError::NotCaughtUp(_)) => {}
                }
            }
            // Its heartbeat replies say how far it has come.
            glommio::timer::sleep(LEARNER_POLL).await;
        }
        tracing::info!(
            shard = self.shard,
            partition,
            old,
            new = new.addr,
            "member replacement proposed"
        );
        self.drive(partition);
        self.await_applied(answer).await
    }

    /// Creates the replica of `partition` that `spec`'s last member names
    /// on its shard `addr`, knowing no membership yet (`since` unknown);
    /// one that exists already is fine (an earlier attempt made it).
    async fn create_member(
        &self,
        partition: PartitionId,
        spec: &GroupSpec,
        addr: SocketAddr,
    ) -> Result<(), Response> {
        let unavailable_now = |why: String| unavailable(format!("creating the new replica: {why}"));
        let id = spec.members.len() - 1;
        let schema = self
            .engine
            .schema(partition)
            .map_err(|e| engine_error(&e))?;
        let request = wire::encode_node_request(&NodeRequest {
            limit: None,
            partition,
            op: NodeOp::CreatePartition {
                schema: schema.encode(),
                group: Some(GroupSpec {
                    replica: id as u32,
                    since: SINCE_UNKNOWN,
                    ..spec.clone()
                }),
            },
        });
        let answer = self.ask(addr, &request, NODE_REQUEST_TIMEOUT).await;
        match answer.map_err(unavailable_now)? {
            Response::Done
            | Response::Error {
                code: ErrorCode::ResourceInUse,
                ..
            } => Ok(()),
            other => Err(other),
        }
    }

    /// Whether `partition`'s group has a log replica, or one is joining.
    pub fn serves_log_replicas(&self, partition: PartitionId) -> bool {
        self.groups
            .borrow()
            .get(&partition)
            .is_some_and(|g| g.replica.serves_log_replicas())
    }

    /// `Ok` if this replica leads `partition` (or runs no group of it),
    /// else the `NotLeader` answer with its guess.
    pub fn check_leads(&self, partition: PartitionId) -> Result<(), Response> {
        match self.groups.borrow().get(&partition) {
            Some(group) if !group.replica.is_leader() => Err(Response::NotLeader {
                leader: router_hint(&group.replica),
            }),
            _ => Ok(()),
        }
    }

    /// Checks that a read of `partition` may be served here: `Ok` to read
    /// the local state, or the answer to give instead.
    pub async fn admit_read(
        &self,
        partition: PartitionId,
        consistent: bool,
    ) -> Result<(), Response> {
        if !consistent {
            // A replica out of its group (replaced) learns no more writes,
            // one that joined serves nothing until it has caught up with
            // its group, and a log replica holds no items: the router
            // should ask another.
            let groups = self.groups.borrow();
            return match groups.get(&partition) {
                Some(group)
                    if group
                        .replica
                        .membership()
                        .is_none_or(|m| !m.is_full_member(group.replica.id())) =>
                {
                    Err(Response::NotLeader {
                        leader: router_hint(&group.replica),
                    })
                }
                _ => Ok(()),
            };
        }
        let slot = {
            let groups = self.groups.borrow();
            let group = groups
                .get(&partition)
                .ok_or_else(|| self.missing_group(partition))?;
            match group.replica.lease_read(Instant::now()) {
                Some(slot) => slot,
                None if group.replica.is_leader() => {
                    return Err(unavailable("new leader: lease not established yet; retry"));
                }
                None => {
                    return Err(Response::NotLeader {
                        leader: router_hint(&group.replica),
                    });
                }
            }
        };
        // Wait (bounded) until the state machine has caught up with the
        // commit point the lease vouches for.
        let deadline = Instant::now() + self.config.proposal_timeout;
        loop {
            let listener = self.applied.listen();
            if self.engine.applied_through(partition).unwrap_or(0) >= slot {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(unavailable("leader is still applying; retry"));
            }
            let timer = glommio::timer::sleep(self.config.tick_interval);
            futures_lite::future::or(listener, timer).await;
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the other replicas' shards of `partition` have write
    /// capacity to spare, as they last said.
    pub fn peers_spare(&self, partition: PartitionId) -> bool {
        self.peer_spare
            .borrow()
            .peers_spare(partition, self.now_ns())
    }

    /// Handles a batch of messages from a peer shard.
    pub fn receive(self: &Rc<Self>, batch: &[u8]) -> Result<(), String> {
        let batch = decode_peer::<PeerBatch>(batch, "replication batch")?;
        let now = Instant::now();
        let now_ns = self.now_ns();
        let mut touched = BTreeSet::new();
        {
            let mut groups = self.groups.borrow_mut();
            let mut peer_spare = self.peer_spare.borrow_mut();
            for PeerMessage {
                partition,
                from,
                message,
            } in batch.messages
            {
                // A group this shard does not (yet) host: drop; Paxos
                // retransmits what matters.
                if let Some(group) = groups.get_mut(&partition)
                    && (from as usize) < group.members.len()
                {
                    group.replica.handle(from as ReplicaId, message, now);
                    if touched.insert(partition) {
                        peer_spare.record(partition, from, batch.spare, now_ns);
                    }
                }
            }
        }
        for partition in touched {
            self.drive(partition);
        }
        Ok(())
    }

    /// Drains one group's outputs: persists, sends, queues chosen values.
    fn drive(self: &Rc<Self>, partition: PartitionId) {
        let (mut ready, me) = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&partition) else {
                return;
            };
            (group.replica.poll_ready(), group.replica.id())
        };
        if ready.is_empty() {
            return;
        }
        for peer in ready.snapshots {
            self.start_snapshot(partition, peer);
        }
        for (peer, through) in ready.log_starts {
            self.start_log(partition, peer, through);
        }
        self.enqueue(partition, me, ready.send);
        let mut marker_lsn = None;
        if let Some((last, _)) = ready.committed.last() {
            let through = last + 1;
            match self.engine.log_commit(partition, through) {
                Ok(lsn) => {
                    marker_lsn = lsn;
                    if let Some(group) = self.groups.borrow_mut().get_mut(&partition) {
                        group.marker_logged = group.marker_logged.max(through);
                    }
                }
                Err(error) => tracing::warn!(partition, %error, "commit marker not logged"),
            }
            let mut to_apply = self.to_apply.borrow_mut();
            to_apply.extend(ready.committed.into_iter().map(|(s, v)| (partition, s, v)));
            self.apply_ready.notify(1);
        }
        // The last marker logged is durable with whatever follows it.
        let marker = self
            .groups
            .borrow()
            .get(&partition)
            .map_or(0, |g| g.marker_logged);
        let lsn = if ready.persist.is_empty() {
            self.enqueue(partition, me, std::mem::take(&mut ready.send_after_persist));
            // Nothing to persist, but a new marker: once it is durable the
            // leader hears how far this replica would restart with (a
            // membership change waits for that).
            match marker_lsn {
                Some(lsn) => lsn,
                None => return,
            }
        } else {
            match self.engine.log_paxos(partition, &ready.persist) {
                Ok(lsn) => lsn,
                Err(error) => {
                    // Nothing is acknowledged; the leader retransmits.
                    tracing::warn!(partition, %error, "Paxos state not logged; messages withheld");
                    return;
                }
            }
        };
        let this = self.clone();
        glommio::spawn_local(async move {
            if let Err(error) = this.engine.wal().wait_durable(lsn).await {
                tracing::error!(partition, %error, "Paxos state not durable; messages withheld");
                return;
            }
            if let Some(group) = this.groups.borrow_mut().get_mut(&partition) {
                group.replica.persisted(&ready.persist);
                // Told to the leader, which keeps the log (and has log
                // replicas keep it) from the least of these, and lets a
                // membership change take effect once enough new members
                // are this far.
                let durable = group.durable_cap.map_or(marker, |cap| cap.min(marker));
                group.replica.checkpointed(durable);
            }
            this.enqueue(partition, me, ready.send_after_persist);
            this.drive(partition);
        })
        .detach();
    }

    fn enqueue(&self, partition: PartitionId, me: ReplicaId, messages: Vec<(ReplicaId, Message)>) {
        if messages.is_empty() {
            return;
        }
        let groups = self.groups.borrow();
        let Some(group) = groups.get(&partition) else {
            return;
        };
        let mut outbox = self.outbox.borrow_mut();
        for (to, message) in messages {
            let Some(addr) = group.members.get(to) else {
                continue;
            };
            outbox.entry(*addr).or_default().push(PeerMessage {
                partition,
                from: me as u32,
                message,
            });
        }
        self.outbox_ready.notify(1);
    }

    /// Timers of every group.
    async fn tick_loop(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(self.config.tick_interval).await;
            let now = Instant::now();
            let partitions: Vec<PartitionId> = {
                let mut groups = self.groups.borrow_mut();
                for (partition, group) in groups.iter_mut() {
                    group.replica.tick(now);
                    let floor = group.replica.serves_log_replicas();
                    self.engine
                        .set_log_floor(*partition, floor.then(|| group.replica.log_floor()));
                }
                groups.keys().copied().collect()
            };
            for partition in partitions {
                self.drive(partition);
            }
        }
    }

    /// Applies chosen values in slot order and answers their proposers.
    async fn apply_loop(self: Rc<Self>) {
        loop {
            let listener = self.apply_ready.listen();
            // A partition dropped meanwhile (its table was deleted) has
            // nothing left to install or apply to.
            let dropped = |partition: PartitionId| !self.groups.borrow().contains_key(&partition);
            let install = self.installs_ready.borrow_mut().pop_front();
            if let Some((partition, through, range, spec)) = install {
                if let Err(error) = self.install(partition, through, range, spec).await
                    && !dropped(partition)
                {
                    tracing::error!(shard = self.shard, partition, %error, "snapshot not installed");
                    return; // the engine stopped
                }
                continue;
            }
            let next = self.to_apply.borrow_mut().pop_front();
            let Some((partition, slot, value)) = next else {
                listener.await;
                continue;
            };
            if dropped(partition) {
                continue;
            }
            let applied = self.engine.applied_through(partition).unwrap_or(0);
            if slot < applied {
                continue; // recovery applied it already
            }
            let outcome = self.apply_one(partition, slot, &value).await;
            let response = match &outcome {
                Ok(response) => response.clone(),
                Err(error) => {
                    tracing::error!(shard = self.shard, partition, slot, %error, "apply failed");
                    engine_error(error)
                }
            };
            {
                let mut groups = self.groups.borrow_mut();
                if let Some(group) = groups.get_mut(&partition) {
                    if let Value::Command(command) = &value
                        && !group.replica.is_leader()
                    {
                        // The leader admitted it; this shard did the work.
                        self.admitter.charge_follower_write(command.len());
                    }
                    if let Some(pending) = group.pending.remove(&slot) {
                        let answer = if pending.proposed.is(&value) {
                            response
                        } else {
                            unavailable("a new leader filled this write's slot; it was not applied")
                        };
                        let _ = pending.reply.try_send(answer);
                    }
                    let retained = self.config.retained_slots;
                    if slot.is_multiple_of(1024) && slot > retained {
                        // Not past a snapshot being sent: its peer goes on
                        // from there by log shipping.
                        let below = self
                            .snapshots_out
                            .borrow()
                            .iter()
                            .filter(|((p, _), _)| *p == partition)
                            .map(|(_, through)| *through)
                            .fold(slot - retained, Slot::min);
                        group.replica.compact(below);
                    }
                }
            }
            self.applied.notify(usize::MAX);
            if outcome.is_err() && !dropped(partition) {
                return; // the engine stopped
            }
        }
    }

    /// Swaps a received snapshot in (between two applies, so none is in
    /// flight), if its replica still follows and it is ahead of what the
    /// replica has applied.
    async fn install(
        self: &Rc<Self>,
        partition: PartitionId,
        through: Slot,
        range: HashRange,
        spec: GroupSpec,
    ) -> Result<(), EngineError> {
        let following = self
            .groups
            .borrow()
            .get(&partition)
            .is_some_and(|g| g.replica.is_follower());
        let before = self.engine.range(partition);
        let applied_before = self.engine.applied_through(partition).unwrap_or(0);
        let me = self.groups.borrow().get(&partition).map(|g| g.replica.id());
        let (installed, retired) = if following {
            self.engine
                .stage_install(partition, through, range, spec.clone())?
        } else {
            (false, self.engine.stage_discard(partition))
        };
        if installed && let (Some(before), Some(me)) = (before, me) {
            let children = self
                .installs
                .borrow_mut()
                .get_mut(&partition)
                .map(|i| std::mem::take(&mut i.children))
                .unwrap_or_default();
            self.adopt_children(partition, me, before, range, &spec, children);
        }
        if installed && let Some(group) = self.groups.borrow_mut().get_mut(&partition) {
            // The members at `through` (checked when the chunk came).
            if let (Ok(membership), Ok(addrs)) =
                (membership_of(&spec), member_addrs(&spec, partition))
            {
                group.replica.installed(through, membership);
                group.members = addrs;
            }
            // Its state is durable once a checkpoint holds the new tree:
            // until then it tells its leader no more than it had.
            group.durable_cap = Some(
                group
                    .durable_cap
                    .map_or(applied_before, |cap| cap.min(applied_before)),
            );
            group.installs += 1;
            let seq = group.installs;
            let this = self.clone();
            glommio::spawn_local(async move {
                if this.own_checkpoint().await.is_err() {
                    return; // the engine stopped
                }
                if let Some(group) = this.groups.borrow_mut().get_mut(&partition)
                    && group.installs == seq
                {
                    group.durable_cap = None;
                }
            })
            .detach();
            tracing::info!(shard = self.shard, partition, through, "snapshot installed");
        }
        self.installs.borrow_mut().remove(&partition);
        self.applied.notify(usize::MAX);
        // Walking the old tree's pages may take a while: not on the
        // apply path.
        let engine = self.engine.clone();
        glommio::spawn_local(async move {
            if let Err(error) = engine.retire(retired).await {
                tracing::warn!(partition, %error, "pages of a replaced tree not given back");
            }
        })
        .detach();
        Ok(())
    }

    /// After a snapshot narrowed `partition` (whose replica `me` is here,
    /// and whose group is `spec`, the sender's) from `before` to `after`: the
    /// splits in the slots it skipped were never applied here, so the
    /// children they made (those of the sender's, in `children`, inside
    /// the hashes given up) are created now, for each group that lists
    /// this node as a member, knowing no membership yet: their leaders
    /// catch them up as any new member (a snapshot). Slots below the
    /// snapshot are never applied here, so a split cannot create them
    /// again.
    fn adopt_children(
        self: &Rc<Self>,
        partition: PartitionId,
        me: ReplicaId,
        before: HashRange,
        after: HashRange,
        spec: &GroupSpec,
        children: Vec<(PartitionId, HashRange, GroupSpec)>,
    ) {
        let Some(me) = spec.members.get(me).map(|m| m.addr.clone()) else {
            return;
        };
        let Ok(schema) = self.engine.schema(partition) else {
            return;
        };
        for (child, range, child_spec) in children {
            let given_up = before.0 <= range.0
                && range.1 <= before.1
                && (range.1 < after.0 || after.1 < range.0);
            let member = child_spec
                .members
                .iter()
                .position(|m| m.addr == me && m.role != MemberRole::Removed);
            let (true, Some(id)) = (given_up, member) else {
                continue;
            };
            if self.engine.range(child).is_some() || !self.begin_creating(child) {
                continue;
            }
            let spec = GroupSpec {
                replica: id as u32,
                since: SINCE_UNKNOWN,
                ..child_spec
            };
            let this = self.clone();
            let schema = schema.clone();
            glommio::spawn_local(async move {
                let created = match this.engine.create_replicated(child, schema, spec).await {
                    Ok(()) => this.add_group(child).await,
                    Err(error) => Err(error),
                };
                this.end_creating(child);
                match created {
                    Ok(()) => tracing::info!(
                        shard = this.shard,
                        partition,
                        child,
                        "a split the snapshot skipped: its child created here"
                    ),
                    Err(error) => tracing::warn!(
                        shard = this.shard,
                        partition,
                        child,
                        %error,
                        "a split the snapshot skipped: its child not created"
                    ),
                }
            })
            .detach();
        }
    }

    /// Starts sending `peer` a snapshot of `partition`, unless one is on
    /// its way.
    fn start_snapshot(self: &Rc<Self>, partition: PartitionId, peer: ReplicaId) {
        let view = {
            let mut out = self.snapshots_out.borrow_mut();
            if out.contains_key(&(partition, peer)) {
                return;
            }
            let view = match self.engine.snapshot_view(partition) {
                Ok(view) => view,
                Err(error) => {
                    tracing::warn!(partition, peer, %error, "no snapshot for a lagging peer");
                    return;
                }
            };
            out.insert((partition, peer), view.through);
            view
        };
        let this = self.clone();
        glommio::spawn_local(async move {
            let started = Instant::now();
            let result = this.stream_snapshot(peer, &view).await;
            this.snapshots_out.borrow_mut().remove(&(partition, peer));
            match result {
                Ok(entries) => tracing::info!(
                    shard = this.shard,
                    partition,
                    peer,
                    through = view.through,
                    entries,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot sent"
                ),
                Err(reason) => {
                    tracing::warn!(shard = this.shard, partition, peer, %reason, "snapshot not sent");
                }
            }
        })
        .detach();
    }

    /// Tells `peer`, a log replica of `partition` that lags below this
    /// leader's log or is joining, to start its log at `through` (unless
    /// a snapshot or a log start is on its way to it); the log from there
    /// follows on its heartbeat replies.
    fn start_log(self: &Rc<Self>, partition: PartitionId, peer: ReplicaId, through: Slot) {
        let (addr, start) = {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(&partition) else {
                return;
            };
            let (Some(addr), Some(membership)) = (
                group.members.get(peer).copied(),
                group.replica.membership_at(through),
            ) else {
                return;
            };
            let members = membership
                .members()
                .iter()
                .map(|m| (m.id as u32, m.log_only))
                .collect();
            let start = LogStart {
                partition,
                from: group.replica.id() as u32,
                through,
                members,
            };
            (addr, start)
        };
        {
            let mut out = self.snapshots_out.borrow_mut();
            if out.contains_key(&(partition, peer)) {
                return;
            }
            out.insert((partition, peer), through);
        }
        let request = wire::encode_node_request(&NodeRequest {
            limit: None,
            partition,
            op: NodeOp::LogStart {
                start: rkyv::to_bytes::<rancor::Error>(&start)
                    .expect("serializing to memory cannot fail")
                    .to_vec(),
            },
        });
        let this = self.clone();
        glommio::spawn_local(async move {
            let answer = this.ask(addr, &request, NODE_REQUEST_TIMEOUT).await;
            this.snapshots_out.borrow_mut().remove(&(partition, peer));
            match answer {
                Ok(Response::Done) => {
                    tracing::info!(
                        shard = this.shard,
                        partition,
                        peer,
                        through,
                        "log replica started"
                    );
                }
                Ok(other) => tracing::warn!(partition, peer, ?other, "log start refused"),
                Err(reason) => tracing::warn!(partition, peer, %reason, "log start not sent"),
            }
        })
        .detach();
    }

    /// Starts this log replica's log where its leader says (`NodeOp::LogStart`).
    pub fn receive_log_start(self: &Rc<Self>, start: &[u8]) -> Response {
        let start = match decode_peer::<LogStart>(start, "log start") {
            Ok(start) => start,
            Err(message) => return Response::error(ErrorCode::Malformed, message),
        };
        let partition = start.partition;
        let refuse = |message: String| Response::error(ErrorCode::Validation, message);
        let members = start
            .members
            .iter()
            .map(|&(id, log_only)| Member {
                id: id as ReplicaId,
                log_only,
            })
            .collect();
        let Ok(membership) = Membership::new(members) else {
            return refuse(format!(
                "partition {partition}: a log start with a malformed group"
            ));
        };
        match self.groups.borrow().get(&partition) {
            None => return self.missing_group(partition),
            Some(group) if !group.replica.is_follower() => {
                return refuse(format!(
                    "partition {partition}: this replica leads or stands for election"
                ));
            }
            Some(_) => {}
        }
        if !self.engine.is_log_replica(partition) {
            return refuse(format!(
                "partition {partition}: the replica here is not a log replica; it needs a snapshot"
            ));
        }
        // No await from here: the apply task applies a log replica's
        // slots without one either, so none is half-applied meanwhile.
        match self.engine.start_log(partition, start.through) {
            Ok(true) => {}
            Ok(false) => {
                let applied = self.engine.applied_through(partition).unwrap_or(0);
                return refuse(format!(
                    "partition {partition}: log start {} not needed, passed through {applied}",
                    start.through
                ));
            }
            Err(error) => return engine_error(&error),
        }
        if let Some(group) = self.groups.borrow_mut().get_mut(&partition) {
            group.replica.started_log(start.through, membership);
        }
        tracing::info!(
            shard = self.shard,
            partition,
            through = start.through,
            "log replica's log started"
        );
        self.applied.notify(usize::MAX);
        self.drive(partition);
        Response::Done
    }

    /// Sends `view` to `peer` chunk by chunk; the number of entries sent.
    async fn stream_snapshot(
        &self,
        peer: ReplicaId,
        view: &crate::engine::SnapshotView,
    ) -> Result<usize, String> {
        let partition = view.partition;
        let (addr, me) = {
            let groups = self.groups.borrow();
            let group = groups.get(&partition).ok_or("the group is gone")?;
            let addr = *group.members.get(peer).ok_or("no such peer")?;
            (addr, group.replica.id())
        };
        let stream = self.next_id.get();
        self.next_id.set(stream + 1);
        let mut after: Option<Vec<u8>> = None;
        let mut sent = 0;
        loop {
            let (entries, more) = self
                .engine
                .snapshot_read(view, after.as_deref(), SNAPSHOT_CHUNK_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            let next = entries.last().map(|(key, _)| key.clone());
            sent += entries.len();
            let children = match after {
                None => self
                    .engine
                    .split_off(partition, view.range)
                    .into_iter()
                    .map(|(id, range, spec)| (id, range, spec.to_bytes()))
                    .collect(),
                Some(_) => Vec::new(),
            };
            let chunk = SnapshotChunk {
                children,
                partition,
                from: me as u32,
                stream,
                through: view.through,
                range: view.range,
                spec: view.spec.to_bytes(),
                after: after.take(),
                entries,
                last: !more,
            };
            let bytes = rkyv::to_bytes::<rancor::Error>(&chunk)
                .expect("serializing to memory cannot fail")
                .to_vec();
            self.send_chunk(addr, partition, bytes).await?;
            if !more {
                return Ok(sent);
            }
            after = next;
        }
    }

    /// Offers one chunk until the peer stores it (it may ask to wait while
    /// it has too many unflushed pages).
    async fn send_chunk(
        &self,
        addr: SocketAddr,
        partition: PartitionId,
        chunk: Vec<u8>,
    ) -> Result<(), String> {
        let request = wire::encode_node_request(&NodeRequest {
            limit: None,
            partition,
            op: NodeOp::Snapshot { chunk },
        });
        let mut backoff = Duration::from_millis(10);
        for _ in 0..SNAPSHOT_CHUNK_ATTEMPTS {
            match self.ask(addr, &request, SNAPSHOT_CHUNK_TIMEOUT).await? {
                Response::Done => return Ok(()),
                Response::Error { code, .. } if code.is_retryable() => {
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Response::Error { message, .. } => {
                    return Err(format!("the peer refused: {message}"));
                }
                other => return Err(format!("unexpected answer {other:?}")),
            }
        }
        Err("the peer stayed too busy to take the snapshot".into())
    }

    /// Stores one chunk of a snapshot sent by this partition's leader.
    pub async fn receive_snapshot(self: &Rc<Self>, chunk: &[u8]) -> Response {
        let chunk = match decode_peer::<SnapshotChunk>(chunk, "snapshot chunk") {
            Ok(chunk) => chunk,
            Err(message) => return Response::error(ErrorCode::Malformed, message),
        };
        let partition = chunk.partition;
        let refuse = |message: String| Response::error(ErrorCode::Validation, message);
        {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(&partition) else {
                return self.missing_group(partition);
            };
            if !group.replica.is_follower() {
                return refuse(format!(
                    "partition {partition}: this replica leads or stands for election; it takes no snapshot"
                ));
            }
        }
        if self.engine.is_log_replica(partition) {
            return refuse(format!(
                "partition {partition}: a log replica holds no items; it takes no snapshot"
            ));
        }
        let applied = self.engine.applied_through(partition).unwrap_or(0);
        let installing = self
            .installs
            .borrow()
            .get(&partition)
            .is_some_and(|i| i.busy);
        if chunk.through <= applied && !installing {
            // An unfinished staging tree is of no use any more.
            self.installs.borrow_mut().remove(&partition);
            let retired = self.engine.stage_discard(partition);
            if let Err(error) = self.engine.retire(retired).await {
                return engine_error(&error);
            }
            return refuse(format!(
                "partition {partition}: snapshot through {} not needed, applied through {applied}",
                chunk.through
            ));
        }
        let first = chunk.after.is_none();
        let next_after = chunk.entries.last().map(|(key, _)| key.clone());
        {
            let mut installs = self.installs.borrow_mut();
            match installs.get_mut(&partition) {
                Some(install) if install.busy => {
                    return Response::error(
                        ErrorCode::Throttling,
                        "another snapshot chunk is being stored or installed; retry",
                    );
                }
                Some(install)
                    if !first
                        && (install.from, install.stream, &install.after)
                            == (chunk.from, chunk.stream, &chunk.after) =>
                {
                    install.busy = true;
                }
                _ if first => {
                    let spec = match GroupSpec::from_bytes(&chunk.spec) {
                        Ok(spec)
                            if membership_of(&spec).is_ok()
                                && member_addrs(&spec, partition).is_ok() =>
                        {
                            spec
                        }
                        _ => {
                            return refuse(format!(
                                "partition {partition}: a snapshot with a malformed group"
                            ));
                        }
                    };
                    let mut children = Vec::with_capacity(chunk.children.len());
                    for (child, range, spec) in &chunk.children {
                        match GroupSpec::from_bytes(spec) {
                            Ok(spec) if spec.validate().is_ok() => {
                                children.push((*child, *range, spec));
                            }
                            _ => {
                                return refuse(format!(
                                    "partition {partition}: a snapshot naming child {child} with a malformed group"
                                ));
                            }
                        }
                    }
                    installs.insert(
                        partition,
                        Install {
                            from: chunk.from,
                            stream: chunk.stream,
                            through: chunk.through,
                            range: chunk.range,
                            spec,
                            after: None,
                            children,
                            busy: true,
                        },
                    );
                }
                _ => {
                    return refuse(format!(
                        "partition {partition}: snapshot chunk out of order"
                    ));
                }
            }
        }
        let stored = async {
            if first {
                self.engine.stage_begin(partition).await?;
            }
            self.engine.stage_chunk(partition, chunk.entries).await
        }
        .await;
        let mut installs = self.installs.borrow_mut();
        let Some(install) = installs.get_mut(&partition) else {
            return unavailable("snapshot abandoned");
        };
        install.busy = false;
        match stored {
            Ok(()) => {}
            Err(EngineError::Throttled) => {
                return Response::error(ErrorCode::Throttling, "too many unflushed pages; retry");
            }
            Err(error) => {
                installs.remove(&partition);
                return engine_error(&error);
            }
        }
        if chunk.last {
            // Busy until the apply task has swapped it in.
            install.busy = true;
            self.installs_ready.borrow_mut().push_back((
                partition,
                install.through,
                install.range,
                install.spec.clone(),
            ));
            self.apply_ready.notify(1);
        } else {
            install.after = next_after;
        }
        Response::Done
    }

    /// Applies one chosen value; the answer for its proposer.
    async fn apply_one(
        self: &Rc<Self>,
        partition: PartitionId,
        slot: Slot,
        value: &Value,
    ) -> Result<Response, EngineError> {
        let command = match value {
            Value::Noop => None,
            Value::Command(bytes) => {
                // The leader decoded these bytes before proposing them, so
                // only another build (a different wire version) fails
                // here. Skipping the slot would lose an acknowledged write
                // and applying it wrongly would diverge: stop instead.
                let decoded = match bytes.get(8..) {
                    Some(request) => wire::decode_node_request(request),
                    None => Err(wire::DecodeError::Malformed(
                        "command shorter than its id".into(),
                    )),
                };
                match decoded.and_then(crate::server::to_op) {
                    Ok(op) => Some(op),
                    Err(error) => {
                        return Err(self.engine.stop(format!(
                            "partition {partition} slot {slot}: chosen command cannot be decoded by this build: {error}"
                        )));
                    }
                }
            }
            Value::Reconfigure(membership) => {
                return self.apply_membership(partition, slot, &membership.context);
            }
        };
        if self.engine.is_log_replica(partition) {
            // It holds no items: commands and splits are passed over (a
            // split's child is made on the full members; the leader
            // proposes none while the group has a log replica).
            self.engine.apply_committed(partition, slot, None).await?;
            return Ok(Response::Done);
        }
        if let Some(Op::Split { at, child }) = command {
            return self.apply_split(partition, slot, at, child).await;
        }
        // Reads and admin ops are never proposed.
        let write = command.as_ref().and_then(Op::write);
        let returns = write.map(|(_, returns)| returns);
        match self.engine.apply_committed(partition, slot, write).await {
            Ok(image) if returns.is_some_and(|r| r != ReturnValues::None) => {
                Ok(Response::Item(image.map(|item| item.to_bytes())))
            }
            Ok(_) => Ok(Response::Done),
            Err(error) if error.is_answer() => Ok(engine_error(&error)),
            Err(error) => Err(error),
        }
    }

    /// Applies a chosen split; the new partition joins its group once a
    /// checkpoint holds it (before that a crash forgets it, and recovery
    /// applies the split again), and answers "being created" until then.
    async fn apply_split(
        self: &Rc<Self>,
        partition: PartitionId,
        slot: Slot,
        at: u64,
        child: PartitionId,
    ) -> Result<Response, EngineError> {
        let began = self.begin_creating(child);
        match self.engine.apply_split(partition, slot, at, child).await {
            Ok(true) => {
                tracing::info!(
                    shard = self.shard,
                    partition,
                    slot,
                    at,
                    child,
                    "partition split"
                );
                let replication = self.clone();
                glommio::spawn_local(async move {
                    if let Err(error) = replication.bring_up_child(child).await {
                        tracing::error!(child, %error, "split partition not brought up");
                    }
                    replication.end_creating(child);
                })
                .detach();
                Ok(crate::server::stats(&self.engine, partition))
            }
            outcome => {
                if began {
                    self.end_creating(child);
                }
                match outcome {
                    Ok(_) => Ok(crate::server::stats(&self.engine, partition)),
                    Err(error) if error.is_answer() => Ok(engine_error(&error)),
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Applies a chosen membership change: the group's spec (`spec`, its
    /// stored form) becomes the engine's, and messages go to its members.
    /// Bytes that do not decode stop the engine, as a command this build
    /// cannot decode does: the core chose the value by the membership
    /// they name.
    fn apply_membership(
        self: &Rc<Self>,
        partition: PartitionId,
        slot: Slot,
        spec: &[u8],
    ) -> Result<Response, EngineError> {
        let decoded = GroupSpec::from_bytes(spec).map_err(|e| e.to_string());
        let addrs = decoded
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|spec| member_addrs(spec, partition));
        let (spec, addrs) = match (decoded, addrs) {
            (Ok(spec), Ok(addrs)) => (spec, addrs),
            (Err(error), _) | (_, Err(error)) => {
                return Err(self.engine.stop(format!(
                    "partition {partition} slot {slot}: a membership change this build cannot apply: {error}"
                )));
            }
        };
        self.engine.apply_membership(partition, slot, spec)?;
        if let Some(group) = self.groups.borrow_mut().get_mut(&partition) {
            group.members = addrs;
        }
        tracing::info!(shard = self.shard, partition, slot, "membership changed");
        Ok(Response::Done)
    }

    async fn bring_up_child(self: &Rc<Self>, child: PartitionId) -> Result<(), EngineError> {
        // A checkpoint that began before the split may not hold the child.
        self.own_checkpoint().await?;
        self.add_group(child).await
    }

    /// Sends what the outbox holds, one batch per peer shard at a time.
    async fn send_loop(self: Rc<Self>) {
        loop {
            let listener = self.outbox_ready.listen();
            let outbox = std::mem::take(&mut *self.outbox.borrow_mut());
            if outbox.is_empty() {
                listener.await;
                continue;
            }
            for (addr, messages) in outbox {
                let mut batch = Vec::new();
                let mut bytes = 0;
                for message in messages {
                    bytes += 64
                        + match &message.message {
                            Message::Accept {
                                value: Value::Command(c),
                                ..
                            } => c.len(),
                            _ => 0,
                        };
                    batch.push(message);
                    if bytes >= BATCH_BYTES_MAX {
                        self.send_batch(addr, std::mem::take(&mut batch));
                        bytes = 0;
                    }
                }
                if !batch.is_empty() {
                    self.send_batch(addr, batch);
                }
            }
            // Let other tasks add to the next batch.
            glommio::executor().yield_task_queue_now().await;
        }
    }

    fn send_batch(self: &Rc<Self>, addr: SocketAddr, messages: Vec<PeerMessage>) {
        {
            let mut links = self.links.borrow_mut();
            let link = links.entry(addr).or_default();
            if link.in_flight >= self.config.sends_in_flight_max || link.connecting {
                return; // dropped: the peer is slow or unreachable
            }
            link.in_flight += 1;
            if link.connection.is_none() {
                link.connecting = true;
            }
        }
        let this = self.clone();
        glommio::spawn_local(async move {
            let result = this.send_now(addr, messages).await;
            let mut links = this.links.borrow_mut();
            let link = links.entry(addr).or_default();
            link.in_flight -= 1;
            link.connecting = false;
            if let Err(error) = result {
                tracing::debug!(%addr, %error, "replication batch not delivered");
                link.connection = None;
            }
        })
        .detach();
    }

    /// Sends one node request to the shard at `addr` and decodes its
    /// answer; why not, if it could not.
    async fn ask(
        &self,
        addr: SocketAddr,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Response, String> {
        let connection = self.connection(addr).await.map_err(|e| e.to_string())?;
        let answer = connection
            .request(request, timeout)
            .await
            .map_err(|e| e.to_string())?;
        wire::decode_response(&answer).map_err(|e| e.to_string())
    }

    /// Waits for a checkpoint that begins after this call (one already
    /// under way may not hold what was just done).
    async fn own_checkpoint(&self) -> Result<(), EngineError> {
        while self.engine.checkpoint().await?.is_none() {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The link's connection to a peer shard, made if there is none.
    async fn connection(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let existing = self
            .links
            .borrow()
            .get(&addr)
            .and_then(|l| l.connection.clone());
        if let Some(connection) = existing {
            return Ok(connection);
        }
        let connect = self.endpoint.connect(addr, &self.server_name);
        let timer = async {
            glommio::timer::sleep(PEER_TIMEOUT).await;
            Err(TransportError::TimedOut(PEER_TIMEOUT))
        };
        let connection = futures_lite::future::or(connect, timer).await?;
        let mut links = self.links.borrow_mut();
        let link = links.entry(addr).or_default();
        link.connection = Some(connection.clone());
        link.connecting = false;
        Ok(connection)
    }

    async fn send_now(
        &self,
        addr: SocketAddr,
        messages: Vec<PeerMessage>,
    ) -> Result<(), TransportError> {
        let connection = self.connection(addr).await?;
        let spare = self.admitter.write_spare();
        let batch = rkyv::to_bytes::<rancor::Error>(&PeerBatch { messages, spare })
            .expect("serializing to memory cannot fail")
            .to_vec();
        let request = NodeRequest {
            limit: None,
            partition: 0,
            op: NodeOp::Replication { batch },
        };
        connection
            .request(&wire::encode_node_request(&request), PEER_TIMEOUT)
            .await?;
        Ok(())
    }
}

/// The leader hint a router understands: the leader's place among the
/// group's current members in id order, which is the order the partition
/// map lists their nodes in (a replaced node's entry goes, the new one is
/// appended: docs/metadata.md). The same as the replica id until a
/// member is replaced.
fn router_hint(replica: &Replica) -> Option<u32> {
    let leader = replica.leader_hint()?;
    let position = replica.membership()?.ids().position(|id| id == leader)?;
    u32::try_from(position).ok()
}

/// The group `current` becomes when the member on node `old` is replaced
/// by `new`: `None` if that happened already.
fn successor(
    current: &GroupSpec,
    old: &str,
    new: &GroupMember,
) -> Result<Option<GroupSpec>, String> {
    let member_on = |addr: &str| {
        current
            .current()
            .find(|(_, m)| m.addr == addr)
            .map(|(id, _)| id as usize)
    };
    match (member_on(old), member_on(&new.addr)) {
        (None, Some(_)) => Ok(None),
        (Some(_), Some(_)) => Err(format!("{} is a member already", new.addr)),
        (None, None) => Err(format!("no member of the group is on {old}")),
        (Some(replaced), None) => {
            let mut next = current.clone();
            next.members[replaced].role = MemberRole::Removed;
            next.members.push(new.clone());
            Ok(Some(next))
        }
    }
}
