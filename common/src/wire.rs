//! Wire messages between clients, routers and nodes (docs/wire-format.md).
//!
//! Messages are rkyv archives carried in crc32c frames ([`crate::quic`]).
//! Items, keys and attribute values inside them use the item codec
//! ([`crate::item`]), so the storage and wire forms of an item are the same
//! bytes. Decoding validates the archive (bytecheck) before use: a
//! malformed message is a typed error, never undefined behaviour.

use rkyv::rancor;

use crate::condition::{CompareOp, Condition, Operand};
use crate::item::{AttributeValue, CodecError, Item};
use crate::path::Path;
use crate::update::UpdateAction;

/// Wire format version, checked in every request.
pub const WIRE_VERSION: u16 = 11;

/// A partition's id is `table << PARTITION_INDEX_BITS | index`: the
/// partitions of one table share the bits above (docs/metadata.md).
pub const PARTITION_INDEX_BITS: u32 = 20;

/// A bound of a range: on attribute values (Query) or encoded keys (node scans).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireBound {
    Unbounded,
    Included(Vec<u8>),
    Excluded(Vec<u8>),
}

/// A condition: attribute name, operator, operand (an encoded value).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireCondition {
    Exists(String),
    NotExists(String),
    /// op: 0 =, 1 <>, 2 <, 3 <=, 4 >, 5 >=.
    Compare {
        attribute: String,
        op: u8,
        value: Vec<u8>,
    },
    BeginsWith {
        attribute: String,
        prefix: Vec<u8>,
    },
    /// Any other condition (AND, OR, NOT, BETWEEN, IN, functions), in its
    /// own encoding (`Condition::to_bytes`).
    Encoded(Vec<u8>),
}

/// One UpdateItem action; values are encoded attribute values.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireChange {
    Set {
        name: String,
        value: Vec<u8>,
    },
    Remove {
        name: String,
    },
    Add {
        name: String,
        value: Vec<u8>,
    },
    /// `SET name = expression`, the expression in its own encoding
    /// (`SetValue::to_bytes`).
    SetTo {
        name: String,
        value: Vec<u8>,
    },
    /// Remove the elements of the set `value` from the set `name`.
    Delete {
        name: String,
        value: Vec<u8>,
    },
    /// Any action on a nested path, in its own encoding
    /// (`UpdateAction::to_bytes`).
    Encoded(Vec<u8>),
}

/// Which image of the item a write answers with (DynamoDB's
/// `ReturnValues`). The node returns the whole old or new item; the
/// `Updated*` forms are cut down to the updated attributes by whoever
/// knows the update (the router).
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
pub enum ReturnValues {
    #[default]
    None,
    AllOld,
    UpdatedOld,
    AllNew,
    UpdatedNew,
}

impl ReturnValues {
    /// Whether the write answers with the item as it was before it.
    pub fn wants_old(self) -> bool {
        matches!(self, ReturnValues::AllOld | ReturnValues::UpdatedOld)
    }

    /// Whether the write answers with the item as it is after it.
    pub fn wants_new(self) -> bool {
        matches!(self, ReturnValues::AllNew | ReturnValues::UpdatedNew)
    }
}

/// A table's capacity: provisioned read and write units per second (as
/// DynamoDB defines them, docs/admission.md), or on demand.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
pub enum Capacity {
    #[default]
    OnDemand,
    Provisioned {
        read_units: u32,
        write_units: u32,
    },
}

/// What one partition may serve per second, as its router tells its
/// replicas with every request: its share of the table's capacity.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLimit {
    pub read_units: u32,
    pub write_units: u32,
}

/// A table's shape, as DescribeTable returns it.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TableDescription {
    pub name: String,
    /// `KeySchema::encode` bytes.
    pub schema: Vec<u8>,
    pub partitions: u32,
    /// "CREATING", "ACTIVE" or "DELETING".
    pub status: String,
    pub capacity: Capacity,
}

/// Items with one partition key (an encoded value), sort keys within the
/// bounds (encoded values), after `exclusive_start_key` (an encoded stored
/// key from a previous page).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    pub table: String,
    pub partition_value: Vec<u8>,
    pub start: WireBound,
    pub end: WireBound,
    pub reverse: bool,
    pub limit: u32,
    pub exclusive_start_key: Option<Vec<u8>>,
    /// Strongly consistent (from the leader) or eventually consistent.
    pub consistent: bool,
    /// Only sort keys that begin with this (an encoded S or B value);
    /// `start` and `end` are then unbounded.
    pub sort_prefix: Option<Vec<u8>>,
}

/// What a client asks a router.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    CreateTable {
        table: String,
        schema: Vec<u8>,
        partitions: u32,
        capacity: Capacity,
    },
    DescribeTable {
        table: String,
    },
    ListTables,
    DeleteTable {
        table: String,
    },
    /// Splits partition `partition` of the table (by default its widest)
    /// at the middle of its hash range; `Done` once MemDS serves the new
    /// map.
    SplitPartition {
        table: String,
        partition: Option<u64>,
    },
    /// Replaces the replica of partition `partition` on node `from` by a
    /// new one on node `to` (node ids as `cairn status` lists them): the
    /// group changes its members through its log and the new replica is
    /// caught up by a snapshot; `Done` once MemDS serves the new map. With
    /// `log`, the new replica is a log replica: it keeps the log and
    /// votes, holds no items, and joins without a snapshot.
    MoveReplica {
        table: String,
        partition: u64,
        from: u16,
        to: u16,
        log: bool,
    },
    PutItem {
        table: String,
        item: Vec<u8>,
        condition: Option<WireCondition>,
        returns: ReturnValues,
    },
    GetItem {
        table: String,
        key: Vec<u8>,
        consistent: bool,
    },
    UpdateItem {
        table: String,
        key: Vec<u8>,
        changes: Vec<WireChange>,
        condition: Option<WireCondition>,
        returns: ReturnValues,
    },
    DeleteItem {
        table: String,
        key: Vec<u8>,
        condition: Option<WireCondition>,
        returns: ReturnValues,
    },
    Query(QueryRequest),
    /// A page of the whole table; resume with the previous page's token.
    Scan {
        table: String,
        limit: u32,
        exclusive_start: Option<ScanToken>,
        /// A parallel scan's (segment, total segments): segment `s` of `n`
        /// holds the items whose partition-key hash is in the `s`-th of
        /// `n` equal slices of the hash space.
        segment: Option<(u32, u32)>,
        consistent: bool,
    },
}

/// Where a table Scan goes on: after stored key `key` in every partition
/// that overlaps the hashes `first..=last`, then from `last + 1`. The
/// range is that of the partition the previous page ended in: if it has
/// split since, its halves are read together in key order, as the one
/// partition was. An empty key: from `first`, afresh.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScanToken {
    pub first: u64,
    pub last: u64,
    pub key: Vec<u8>,
}

impl ScanToken {
    /// From the partition holding hash `hash`, afresh.
    pub fn from_hash(hash: u64) -> ScanToken {
        ScanToken {
            first: hash,
            last: hash,
            key: Vec::new(),
        }
    }

    /// After stored key `key`, in the partition that now holds hash `hash`
    /// (then on in hash order): where a scan that starts at a key goes on.
    pub fn after_key(hash: u64, key: Vec<u8>) -> ScanToken {
        ScanToken {
            first: hash,
            last: hash,
            key,
        }
    }
}

/// One replica of a replication group: the node's shard-0 address and
/// its core count (the partition lives on shard `partition % cores`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub addr: String,
    pub cores: u32,
    pub zone: String,
    pub role: MemberRole,
}

/// What a member is to its group.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MemberRole {
    /// Holds the partition's items, votes, may lead.
    Full,
    /// A log replica: keeps the recent log and votes, holds no items.
    Log,
    /// Replaced: no longer in the group (its id is not reused).
    Removed,
}

/// A partition's replication group, as its creator hands it to each
/// replica: every member it ever had (a member's replica id is its index
/// here), which of them the receiver is, and the slot from which this
/// membership holds (0 for the group's first; a membership change at
/// slot `s` makes one from `s + 1`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub replica: u32,
    pub members: Vec<GroupMember>,
    pub since: u64,
}

/// The first stored form of a group, before membership changes: every
/// member full, from slot 0.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
struct GroupSpecV1 {
    replica: u32,
    members: Vec<GroupMemberV1>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
struct GroupMemberV1 {
    addr: String,
    cores: u32,
    zone: String,
}

/// Starts the stored form of a [`GroupSpec`] since membership changes.
/// A first-form archive starts with an address string (a digit or `[`).
const GROUP_SPEC_V2_MAGIC: [u8; 2] = [0xFF, 2];

/// What a router (or a tool) asks a node, for one partition.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum NodeOp {
    /// `group` makes the partition a replica of a Multi-Paxos group;
    /// without it the partition has a single copy.
    CreatePartition {
        schema: Vec<u8>,
        group: Option<GroupSpec>,
    },
    /// Deletes this node's replica of the partition and all it holds
    /// (its table was deleted); `Done` also if there is none.
    DropPartition,
    /// The partitions this shard holds (the request's partition is
    /// ignored): `Partitions`.
    ListPartitions,
    /// Writes answer `Item` with the image `returns` asks for (`Item(None)`
    /// when there was none), or `Done` for `ReturnValues::None`.
    Put {
        item: Vec<u8>,
        condition: Option<WireCondition>,
        returns: ReturnValues,
    },
    /// `consistent` reads go to the leader and see every acknowledged
    /// write; others may be served by any replica, possibly stale.
    Get { key: Vec<u8>, consistent: bool },
    Update {
        key: Vec<u8>,
        changes: Vec<WireChange>,
        condition: Option<WireCondition>,
        returns: ReturnValues,
    },
    Delete {
        key: Vec<u8>,
        condition: Option<WireCondition>,
        returns: ReturnValues,
    },
    /// Range over encoded stored keys: at most `limit` items, and the
    /// page ends once it holds `bytes_max` bytes (at most 1 MiB).
    Scan {
        start: WireBound,
        end: WireBound,
        reverse: bool,
        limit: u32,
        bytes_max: u32,
        resume_after: Option<Vec<u8>>,
        consistent: bool,
        /// The hash range the sender believes the partition covers
        /// (inclusive); a partition that serves less of it (it was split)
        /// answers `WrongPartition` rather than a page that would miss
        /// items. `None`: no check (tools).
        hash_range: Option<(u64, u64)>,
    },
    /// Splits a replicated partition in two, through its log: hashes from
    /// `at` on move to the new partition `child` (same replicas, same
    /// shards; its id must equal the parent's modulo every member's core
    /// count). Sent to the leader; answered, once applied there, with the
    /// parent's `PartitionStats` — also when `child` was split off before,
    /// whatever its point: the range says where.
    Split { at: u64, child: u64 },
    /// Replaces the member of a replicated partition's group whose node
    /// listens on `old` (its shard-0 address) by a new member `new`,
    /// through the group's log. Sent to the leader, which creates the new
    /// replica on `new`'s node (caught up by a snapshot), proposes the
    /// change, and answers `Done` once it is applied there; also when
    /// `new` already replaced `old`. One change at a time: `Throttling`
    /// while another is in flight. The leader cannot replace itself.
    ReplaceMember { old: String, new: GroupMember },
    /// What the partition's leader holds and serves: `PartitionStats`
    /// (others answer `NotLeader`; the control plane's split checks).
    Stats,
    /// Replication messages between the replicas of groups on two shards
    /// (a node-internal format, docs/replication.md).
    Replication { batch: Vec<u8> },
    /// One chunk of a leader's snapshot for a replica that lags below the
    /// leader's log (a node-internal format, docs/replication.md).
    Snapshot { chunk: Vec<u8> },
    /// Where a log replica's log starts: for a log replica joining (or
    /// lagging below the leader's log), an empty state through a slot,
    /// from which the log follows (a node-internal format,
    /// docs/replication.md).
    LogStart { start: Vec<u8> },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeRequest {
    pub partition: u64,
    pub op: NodeOp,
    /// The partition's admission limit; `None` for requests no table's
    /// capacity covers (metadata, tools).
    pub limit: Option<PartitionLimit>,
}

/// Why a request failed, as the client sees it.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash,
)]
pub enum ErrorCode {
    /// Bad input: item too large, wrong key type, empty key…
    Validation,
    /// Unknown table or partition.
    ResourceNotFound,
    /// The table already exists.
    ResourceInUse,
    ConditionalCheckFailed,
    /// Over capacity or overloaded: retry with backoff.
    Throttling,
    /// A node or connection is down: retry.
    Unavailable,
    /// The message could not be decoded.
    Malformed,
    Internal,
    /// The key's hash (or the scan's range) is not the partition's any
    /// more: it was split. Routers look the key up again; clients never
    /// see it.
    WrongPartition,
}

impl ErrorCode {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Throttling | ErrorCode::Unavailable)
    }
}

/// The answer to any request.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Done,
    Item(Option<Vec<u8>>),
    Page {
        items: Vec<Vec<u8>>,
        last_key: Option<Vec<u8>>,
    },
    TablePage {
        items: Vec<Vec<u8>>,
        last: Option<ScanToken>,
    },
    Table(TableDescription),
    Tables(Vec<String>),
    /// A shard's partitions (`ListPartitions`).
    Partitions(Vec<u64>),
    /// A replica that is not its group's leader: `leader` is the member
    /// index it believes leads, if any. Routers follow it; clients never
    /// see it.
    NotLeader {
        leader: Option<u32>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// `Stats` (and a `Split`, for the parent after it): bytes of keys
    /// and items stored, the hash range served (inclusive; as far as the
    /// node knows, docs/wire-format.md), operations in the last whole
    /// second and the median key hash they touched.
    PartitionStats {
        bytes: u64,
        range: (u64, u64),
        ops_per_s: u64,
        median: Option<u64>,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    Version(u16),
    #[error("malformed item or value: {0}")]
    Codec(#[from] CodecError),
}

macro_rules! message_codec {
    ($encode:ident, $decode:ident, $type:ty) => {
        /// The wire version (u16, little endian), then the message's rkyv
        /// archive: serialized from the borrowed message, with no copy of
        /// it first.
        pub fn $encode(body: &$type) -> Vec<u8> {
            let archive =
                rkyv::to_bytes::<rancor::Error>(body).expect("serializing to memory cannot fail");
            let mut bytes = Vec::with_capacity(2 + archive.len());
            bytes.extend_from_slice(&WIRE_VERSION.to_le_bytes());
            bytes.extend_from_slice(&archive);
            bytes
        }

        pub fn $decode(bytes: &[u8]) -> Result<$type, DecodeError> {
            let (version, archive) = bytes
                .split_first_chunk::<2>()
                .ok_or_else(|| DecodeError::Malformed("shorter than its version".into()))?;
            let version = u16::from_le_bytes(*version);
            if version != WIRE_VERSION {
                return Err(DecodeError::Version(version));
            }
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
            aligned.extend_from_slice(archive);
            rkyv::from_bytes::<$type, rancor::Error>(&aligned)
                .map_err(|e| DecodeError::Malformed(e.to_string()))
        }
    };
}

/// What a router asks MemDS.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemdsRequest {
    /// The partitions now holding these (table, hash) pairs: the router
    /// cache's refreshes, batched.
    Lookup { keys: Vec<(u32, u64)> },
    /// Tables and nodes, unless the map is still at `since`.
    Catalog { since: u64 },
    /// Every partition of a table, in hash order (for operators' tools).
    Partitions { table: u32 },
    /// The MemDS process's counters.
    Stats,
}

/// One partition as MemDS reports it: its hash range `start..=last`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireLocated {
    pub table: u32,
    pub id: u64,
    pub start: u64,
    pub last: u64,
    pub version: u64,
    /// Node ids, in replica order.
    pub replicas: Vec<u16>,
    pub leader: Option<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireTable {
    pub name: String,
    pub id: u32,
    /// `KeySchema::encode` bytes.
    pub schema: Vec<u8>,
    pub replicas: u32,
    pub status: String,
    pub version: u64,
    pub partitions: u32,
    pub capacity: Capacity,
    /// Its log replicas, as (partition id, node id).
    pub log_replicas: Vec<(u64, u16)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireNode {
    pub id: u16,
    pub addr: String,
    pub cores: u32,
    pub zone: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemdsResponse {
    /// The partitions holding the keys asked, each once, and for each key
    /// in order the index of its partition in `partitions` (`u32::MAX`:
    /// an unknown table).
    Located {
        partitions: Vec<WireLocated>,
        of_key: Vec<u32>,
    },
    Catalog {
        version: u64,
        tables: Vec<WireTable>,
        nodes: Vec<WireNode>,
    },
    Unchanged {
        version: u64,
    },
    Stats {
        /// Requests served, of any kind.
        requests: u64,
        /// Keys looked up.
        lookups: u64,
        /// Loads of the metadata partition.
        reloads: u64,
        version: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// One limit a router asks GAC to grant from: a table's reads or writes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GacAsk {
    pub table: u32,
    /// The table's metadata version the router's `units` come from: GAC
    /// keeps the newest it has seen.
    pub version: u64,
    pub write: bool,
    /// Provisioned units per second; 0 for an on-demand table.
    pub units: u32,
    /// Milli-units wanted for the next period.
    pub wanted: u64,
    /// Milli-units spent since the router last asked.
    pub spent: u64,
}

/// What a router asks a GAC process.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum GacRequest {
    /// Grants for the next period. `router` names the asker (one router
    /// core), for fair shares.
    Grant { router: u64, asks: Vec<GacAsk> },
    /// The process's counters.
    Stats,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum GacResponse {
    /// Milli-units granted, one per ask in order, each valid for one
    /// period; routers ask again every `period_ms`.
    Granted {
        period_ms: u32,
        grants: Vec<u64>,
    },
    Stats {
        /// Grant requests answered.
        requests: u64,
        /// Limits (a table's reads or writes) GAC knows.
        limits: u64,
        /// Milli-units granted in all.
        granted: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

message_codec!(encode_client_request, decode_client_request, ClientRequest);
message_codec!(encode_memds_request, decode_memds_request, MemdsRequest);
message_codec!(encode_memds_response, decode_memds_response, MemdsResponse);
message_codec!(encode_gac_request, decode_gac_request, GacRequest);
message_codec!(encode_gac_response, decode_gac_response, GacResponse);
message_codec!(encode_node_request, decode_node_request, NodeRequest);
message_codec!(encode_response, decode_response, Response);

impl GroupSpec {
    /// The stored form (in a node's WAL, catalog and log): two magic bytes
    /// and an rkyv archive, not tied to the wire version.
    pub fn to_bytes(&self) -> Vec<u8> {
        let archive =
            rkyv::to_bytes::<rancor::Error>(self).expect("serializing to memory cannot fail");
        let mut bytes = Vec::with_capacity(2 + archive.len());
        bytes.extend_from_slice(&GROUP_SPEC_V2_MAGIC);
        bytes.extend_from_slice(&archive);
        bytes
    }

    /// Reads either stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupSpec, DecodeError> {
        let malformed = |e: rancor::Error| DecodeError::Malformed(e.to_string());
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        let spec = match bytes.strip_prefix(&GROUP_SPEC_V2_MAGIC) {
            Some(archive) => {
                aligned.extend_from_slice(archive);
                rkyv::from_bytes::<GroupSpec, rancor::Error>(&aligned).map_err(malformed)?
            }
            None => {
                aligned.extend_from_slice(bytes);
                let v1 =
                    rkyv::from_bytes::<GroupSpecV1, rancor::Error>(&aligned).map_err(malformed)?;
                GroupSpec {
                    replica: v1.replica,
                    members: v1
                        .members
                        .into_iter()
                        .map(|m| GroupMember {
                            addr: m.addr,
                            cores: m.cores,
                            zone: m.zone,
                            role: MemberRole::Full,
                        })
                        .collect(),
                    since: 0,
                }
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The members still in the group, with their replica ids.
    pub fn current(&self) -> impl Iterator<Item = (u32, &GroupMember)> {
        (0..)
            .zip(&self.members)
            .filter(|(_, m)| m.role != MemberRole::Removed)
    }

    /// `replica` indexes `members`, every member has cores and an
    /// address that parses, and full members are a majority of those
    /// still in the group.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let (mut full, mut current) = (0, 0);
        for (_, member) in self.current() {
            current += 1;
            full += usize::from(member.role == MemberRole::Full);
        }
        let valid = (self.replica as usize) < self.members.len()
            && full * 2 > current
            && self
                .members
                .iter()
                .all(|m| m.cores > 0 && m.addr.parse::<std::net::SocketAddr>().is_ok());
        if !valid {
            return Err(DecodeError::Malformed(format!(
                "invalid replication group {self:?}"
            )));
        }
        Ok(())
    }
}

impl NodeOp {
    /// Whether the operation changes an item: for a replicated partition,
    /// a command its leader proposes.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            NodeOp::Put { .. }
                | NodeOp::Update { .. }
                | NodeOp::Delete { .. }
                | NodeOp::Split { .. }
        )
    }
}

impl WireCondition {
    pub fn from_condition(condition: &Condition) -> WireCondition {
        match condition {
            Condition::Exists(path) if path.is_top() => WireCondition::Exists(path.name.clone()),
            Condition::NotExists(path) if path.is_top() => {
                WireCondition::NotExists(path.name.clone())
            }
            Condition::Compare {
                attribute,
                op,
                value,
            } if attribute.is_top() => WireCondition::Compare {
                attribute: attribute.name.clone(),
                op: op.to_byte(),
                value: value.to_bytes(),
            },
            Condition::BeginsWith {
                attribute,
                prefix: Operand::Value(prefix),
            } if attribute.is_top() => WireCondition::BeginsWith {
                attribute: attribute.name.clone(),
                prefix: prefix.to_bytes(),
            },
            other => WireCondition::Encoded(other.to_bytes()),
        }
    }

    pub fn to_condition(&self) -> Result<Condition, DecodeError> {
        Ok(match self {
            WireCondition::Exists(name) => Condition::Exists(Path::top(name.clone())),
            WireCondition::NotExists(name) => Condition::NotExists(Path::top(name.clone())),
            WireCondition::Compare {
                attribute,
                op,
                value,
            } => Condition::Compare {
                attribute: Path::top(attribute.clone()),
                op: CompareOp::from_byte(*op).ok_or_else(|| {
                    DecodeError::Malformed(format!("unknown comparison operator {op}"))
                })?,
                value: AttributeValue::from_bytes(value)?,
            },
            WireCondition::BeginsWith { attribute, prefix } => Condition::BeginsWith {
                attribute: Path::top(attribute.clone()),
                prefix: Operand::Value(AttributeValue::from_bytes(prefix)?),
            },
            WireCondition::Encoded(bytes) => {
                Condition::from_bytes(bytes).map_err(DecodeError::Malformed)?
            }
        })
    }
}

impl WireChange {
    /// Actions on top-level attributes in their own variants; any other
    /// in its own encoding.
    pub fn from_action(action: &UpdateAction) -> WireChange {
        if !action.path().is_top() {
            return WireChange::Encoded(action.to_bytes());
        }
        let name = action.path().name.clone();
        match action {
            UpdateAction::Set(_, value) => WireChange::Set {
                name,
                value: value.to_bytes(),
            },
            UpdateAction::Remove(_) => WireChange::Remove { name },
            UpdateAction::Add(_, value) => WireChange::Add {
                name,
                value: value.to_bytes(),
            },
            UpdateAction::SetTo(_, value) => WireChange::SetTo {
                name,
                value: value.to_bytes(),
            },
            UpdateAction::Delete(_, value) => WireChange::Delete {
                name,
                value: value.to_bytes(),
            },
        }
    }

    pub fn to_action(&self) -> Result<UpdateAction, DecodeError> {
        let top = |name: &String| Path::top(name.clone());
        Ok(match self {
            WireChange::Set { name, value } => {
                UpdateAction::Set(top(name), AttributeValue::from_bytes(value)?)
            }
            WireChange::Remove { name } => UpdateAction::Remove(top(name)),
            WireChange::Add { name, value } => {
                UpdateAction::Add(top(name), AttributeValue::from_bytes(value)?)
            }
            WireChange::SetTo { name, value } => UpdateAction::SetTo(
                top(name),
                crate::update::SetValue::from_bytes(value).map_err(DecodeError::Malformed)?,
            ),
            WireChange::Delete { name, value } => {
                UpdateAction::Delete(top(name), AttributeValue::from_bytes(value)?)
            }
            WireChange::Encoded(bytes) => {
                UpdateAction::from_bytes(bytes).map_err(DecodeError::Malformed)?
            }
        })
    }
}

/// Decodes an optional encoded item.
pub fn decode_item(bytes: &[u8]) -> Result<Item, DecodeError> {
    Ok(Item::decode(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Number;

    #[test]
    fn messages_round_trip() {
        let condition = Condition::Compare {
            attribute: "v".into(),
            op: CompareOp::Ge,
            value: AttributeValue::N(Number::from_i64(3)),
        };
        let request = ClientRequest::PutItem {
            table: "t".into(),
            item: Item::new()
                .with("k", AttributeValue::S("a".into()))
                .to_bytes(),
            condition: Some(WireCondition::from_condition(&condition)),
            returns: ReturnValues::AllOld,
        };
        let bytes = encode_client_request(&request);
        let back = decode_client_request(&bytes).unwrap();
        assert_eq!(back, request);
        let ClientRequest::PutItem {
            condition: Some(wire),
            ..
        } = back
        else {
            panic!()
        };
        assert_eq!(wire.to_condition().unwrap(), condition);
        let response = Response::Page {
            items: vec![vec![1, 2]],
            last_key: Some(vec![3]),
        };
        assert_eq!(
            decode_response(&encode_response(&response)).unwrap(),
            response
        );
    }

    /// A group stored before membership changes reads as every member
    /// full from slot 0; the current form round-trips; and a group whose
    /// full members are not a majority is refused.
    #[test]
    fn both_stored_forms_of_a_group_read() {
        let v1 = GroupSpecV1 {
            replica: 2,
            members: (0..3)
                .map(|n| GroupMemberV1 {
                    addr: format!("127.0.0.1:{}", 7100 + n),
                    cores: 2,
                    zone: format!("zone-{n}"),
                })
                .collect(),
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&v1).unwrap();
        assert_ne!(bytes[0], GROUP_SPEC_V2_MAGIC[0]);
        let spec = GroupSpec::from_bytes(&bytes).unwrap();
        assert_eq!((spec.replica, spec.since), (2, 0));
        assert!(spec.members.iter().all(|m| m.role == MemberRole::Full));
        assert_eq!(spec.members[1].addr, "127.0.0.1:7101");

        let mut next = spec.clone();
        next.members[0].role = MemberRole::Removed;
        next.members.push(GroupMember {
            addr: "127.0.0.1:7103".into(),
            cores: 4,
            zone: "zone-3".into(),
            role: MemberRole::Log,
        });
        next.since = 17;
        assert_eq!(GroupSpec::from_bytes(&next.to_bytes()).unwrap(), next);
        assert_eq!(
            next.current().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );

        next.members[1].role = MemberRole::Log;
        assert!(GroupSpec::from_bytes(&next.to_bytes()).is_err());
        assert!(GroupSpec::from_bytes(&[0xFF, 2, 0, 0]).is_err());
    }

    #[test]
    fn garbage_is_a_typed_error_never_a_crash() {
        let good = encode_node_request(&NodeRequest {
            limit: None,
            partition: 9,
            op: NodeOp::Get {
                key: vec![1, 2, 3],
                consistent: true,
            },
        });
        for cut in 0..good.len() {
            let _ = decode_node_request(&good[..cut]); // must not panic
        }
        let mut flipped = good.clone();
        for at in 0..flipped.len() {
            flipped[at] ^= 0xA5;
            let _ = decode_node_request(&flipped);
            flipped[at] ^= 0xA5;
        }
        assert!(decode_node_request(&[0xFF; 3]).is_err());
        let mut other_version = good.clone();
        other_version[..2].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
        assert_eq!(
            decode_node_request(&other_version),
            Err(DecodeError::Version(WIRE_VERSION + 1))
        );
        assert!(decode_response(b"definitely not rkyv").is_err());
    }
}
