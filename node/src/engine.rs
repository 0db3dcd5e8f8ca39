//! One core's storage engine: its partitions, their trees, the WAL and the
//! page store, on one thread with no locks.
//!
//! Write path: validate the item against the partition's key schema, fault
//! in the tree path, then — with no await in between, so nothing can
//! interleave — submit the WAL record and apply it to the tree. The caller is
//! answered only once the record is durable. Applying at submit keeps the
//! tree in LSN order; a read that finds a key whose last write is not yet
//! durable waits for that write's flush before answering, so no reader ever
//! sees a value a crash could take back.
//!
//! Checkpoint: serialize every dirty node to fresh extents (synchronously),
//! write and sync them, wait until the WAL is durable through the
//! checkpoint's LSN, commit the superblock, then free the extents the
//! checkpoint replaced and let the WAL recycle its segments.
//!
//! Recovery: open the page file at its last superblock, rebuild the free
//! extents by walking the trees, and replay the WAL after the checkpoint.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::rc::Rc;

use cairn_common::condition::Condition;
use cairn_common::update::UpdateAction;
use cairn_common::{CodecError, Item, ItemError, KeySchema};
use futures_util::StreamExt;

use cairn_common::wire::{GroupSpec, MemberRole, ReturnValues};

use crate::btree::{PageSource, ScanRange, Tree, TreeError};
use crate::device::FileSystem;
use crate::load::{Load, LoadTracker};
use crate::page::{
    CatalogAccepted, CatalogEntry, CatalogGroup, CatalogPage, PageAddr, PageBytes, PageKind,
    archive_catalog, archive_node, frame, units_for,
};
use crate::paxos::{
    Ballot, DurableState, Member, Membership, MembershipError, Persist, Slot, Value,
};
use crate::store::{PageStore, StoreError, Superblock};
use crate::wal::{Lsn, Record, RecoveryReport, Wal, WalConfig, WalError};

/// A partition's identity on a node.
pub type PartitionId = u64;

/// The partition-key hashes a partition serves, first and last inclusive.
pub type HashRange = (u64, u64);

/// What a partition serves until a split narrows it.
pub const WHOLE_RANGE: HashRange = (0, u64::MAX);

/// Engine tuning.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub wal: WalConfig,
    /// Size of a B-tree page unit.
    pub page_size: usize,
    /// Bound on the clean-page cache.
    pub cache_bytes: usize,
    /// A checkpoint is due once dirty nodes would take this many bytes…
    pub checkpoint_dirty_bytes: usize,
    /// …or the WAL since the last checkpoint has grown this large.
    pub checkpoint_wal_bytes: u64,
    /// Writes are throttled while dirty nodes exceed this.
    pub dirty_bytes_max: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            wal: WalConfig::default(),
            page_size: 16 * 1024,
            cache_bytes: 256 << 20,
            checkpoint_dirty_bytes: 64 << 20,
            checkpoint_wal_bytes: 256 << 20,
            dirty_bytes_max: 512 << 20,
        }
    }
}

/// Errors of engine operations. [`EngineError::is_retryable`] tells a
/// router whether to try again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("invalid item: {0}")]
    InvalidItem(#[from] ItemError),
    #[error("partition {0} does not exist on this core")]
    UnknownPartition(PartitionId),
    #[error("partition {0} already exists")]
    PartitionExists(PartitionId),
    #[error("too many unflushed changes; retry after the next checkpoint")]
    Throttled,
    #[error("the conditional request failed")]
    ConditionFailed,
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored item is corrupt: {0}")]
    CorruptItem(#[from] CodecError),
    #[error("write-ahead log record {lsn} is malformed: {reason}")]
    CorruptRecord { lsn: Lsn, reason: String },
    #[error("page cache too small: an operation kept missing pages")]
    CacheThrashing,
    #[error("engine stopped after an earlier failure: {0}")]
    Stopped(String),
    #[error("partition {0} is replicated: it changes only through its group")]
    Replicated(PartitionId),
    #[error("snapshot of partition {partition} refused: {reason}")]
    InvalidSnapshot {
        partition: PartitionId,
        reason: String,
    },
    #[error(
        "partition {partition} serves hashes {first:#x}..={last:#x}: the key (hash {hash:#x}) or range asked for is not its own"
    )]
    WrongPartition {
        partition: PartitionId,
        hash: u64,
        first: u64,
        last: u64,
    },
    #[error("split of partition {partition} refused: {reason}")]
    InvalidSplit {
        partition: PartitionId,
        reason: String,
    },
}

impl EngineError {
    /// Whether this is an answer about the request (a failed condition, an
    /// invalid item), as opposed to a failure of the engine.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            EngineError::ConditionFailed
                | EngineError::InvalidItem(_)
                | EngineError::WrongPartition { .. }
                | EngineError::InvalidSplit { .. }
        )
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Throttled | EngineError::Wal(WalError::Throttled { .. })
        )
    }
}

/// A scan page holds at most about this many bytes of keys and values,
/// as a DynamoDB page holds at most 1 MB: the item that crosses it is the
/// page's last, so a page stays under 1 MiB plus one item (400 KB), well
/// within a 2 MiB frame.
pub const PAGE_BYTES_MAX: usize = 1 << 20;

/// A page of Query or Scan results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<Item>,
    /// Encoded key of the last item returned when the limit cut the scan
    /// short: pass it back as `resume_after` to continue.
    pub last_key: Option<Vec<u8>>,
}

/// What a checkpoint did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    pub generation: u64,
    pub checkpoint_lsn: Lsn,
    pub pages_written: usize,
    pub pages_freed: usize,
}

/// What opening the engine found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub checkpoint_lsn: Lsn,
    pub partitions: usize,
    pub wal: RecoveryReport,
}

#[derive(Debug)]
struct Partition {
    schema: KeySchema,
    tree: Tree,
    /// Set for a replica of a replication group.
    group: Option<GroupLog>,
    /// Keys whose hash is outside are refused with
    /// [`EngineError::WrongPartition`]; items left outside by a split are
    /// invisible.
    range: HashRange,
}

impl Partition {
    fn new(schema: KeySchema, tree: Tree, group: Option<GroupLog>) -> Partition {
        Partition {
            schema,
            tree,
            group,
            range: WHOLE_RANGE,
        }
    }
}

/// Whether the item stored under `key` hashes into `range`.
fn in_range(range: HashRange, key: &[u8]) -> bool {
    range == WHOLE_RANGE
        || cairn_common::key::key_hash(key).is_some_and(|h| (range.0..=range.1).contains(&h))
}

/// A replica's durable Paxos state, mirrored here so that checkpoints can
/// carry it past the WAL records they retire. Its tree changes only by
/// applying chosen commands in slot order; those applies write no log
/// record of their own (the accepted values are the log).
#[derive(Debug, Clone)]
pub struct GroupLog {
    pub spec: GroupSpec,
    /// Promise and accepted values (of slots from
    /// `applied_through - RETAINED_APPLIED_SLOTS` on).
    pub durable: DurableState,
    /// Slots below are known chosen (from commit markers).
    pub committed_through: Slot,
    /// Slots below are reflected in the tree (for a log replica, which
    /// has none: were passed over).
    pub applied_through: Slot,
    /// While the group has log replicas, accepted values from this slot
    /// on are kept whatever the retained window (not stored: the
    /// replication layer sets it again after a restart).
    pub log_floor: Slot,
}

/// Logical WAL records.
mod record {
    pub const CREATE_PARTITION: u8 = 1;
    pub const PUT: u8 = 2;
    pub const DELETE: u8 = 3;
    /// `schema_len u32 ‖ schema ‖ GroupSpec`.
    pub const CREATE_REPLICATED: u8 = 4;
    /// `round u64 ‖ leader u64`.
    pub const PROMISE: u8 = 5;
    /// `slot u64 ‖ round u64 ‖ leader u64 ‖ tag u8 (0 no-op, 1 command,
    /// 2 membership) ‖ command, or the group's encoded spec`.
    pub const ACCEPT: u8 = 6;
    /// `through u64`: every slot below is chosen.
    pub const COMMIT: u8 = 7;
    /// No body: the partition is gone (its table was deleted).
    pub const DROP_PARTITION: u8 = 8;
}

/// A value's stored form (in ACCEPT records and the catalog): a tag (0
/// no-op, 1 command, 2 membership change) and a body (the command, the
/// group's encoded spec, or nothing).
fn value_parts(value: &Value) -> (u8, &[u8]) {
    match value {
        Value::Noop => (0, &[]),
        Value::Command(command) => (1, command),
        Value::Reconfigure(membership) => (2, &membership.context),
    }
}

/// The value a stored tag and body make; `None` if they make none.
fn value_from_parts(tag: u8, body: Vec<u8>) -> Option<Value> {
    match tag {
        0 => Some(Value::Noop),
        1 => Some(Value::Command(body)),
        2 => membership_value(&body),
        _ => None,
    }
}

/// The members a group's spec names: those not removed, log replicas
/// as such.
pub fn membership_of(spec: &GroupSpec) -> Result<Membership, MembershipError> {
    Membership::new(
        spec.current()
            .map(|(id, member)| Member {
                id: id as usize,
                log_only: member.role == MemberRole::Log,
            })
            .collect(),
    )
}

/// A membership change as the node logs it: the group's encoded spec,
/// from which the members follow (`None` if it does not decode).
pub fn membership_value(spec: &[u8]) -> Option<Value> {
    let decoded = GroupSpec::from_bytes(spec).ok()?;
    let membership = membership_of(&decoded).ok()?;
    Some(Value::Reconfigure(membership.with_context(spec.to_vec())))
}

/// The body of a PROMISE or ACCEPT record.
fn encode_persist(persist: &Persist) -> Vec<u8> {
    match persist {
        Persist::Promise(ballot) => {
            let mut out = Vec::with_capacity(17);
            out.push(record::PROMISE);
            out.extend_from_slice(&ballot.round.to_le_bytes());
            out.extend_from_slice(&(ballot.leader as u64).to_le_bytes());
            out
        }
        Persist::Accept {
            slot,
            ballot,
            value,
        } => {
            let (tag, body) = value_parts(value);
            let mut out = Vec::with_capacity(26 + body.len());
            out.push(record::ACCEPT);
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&ballot.round.to_le_bytes());
            out.extend_from_slice(&(ballot.leader as u64).to_le_bytes());
            out.push(tag);
            out.extend_from_slice(body);
            out
        }
    }
}

fn decode_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn decode_ballot(bytes: &[u8], at: usize) -> Option<Ballot> {
    Some(Ballot {
        round: decode_u64(bytes, at)?,
        leader: usize::try_from(decode_u64(bytes, at + 8)?).ok()?,
    })
}

/// Parses a PROMISE or ACCEPT body (after the kind byte).
fn decode_persist(kind: u8, body: &[u8]) -> Option<Persist> {
    match kind {
        record::PROMISE => Some(Persist::Promise(decode_ballot(body, 0)?)),
        record::ACCEPT => {
            let slot = decode_u64(body, 0)?;
            let ballot = decode_ballot(body, 8)?;
            let value = value_from_parts(*body.get(24)?, body[25..].to_vec())?;
            Some(Persist::Accept {
                slot,
                ballot,
                value,
            })
        }
        _ => None,
    }
}

/// How a write reaches the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteMode {
    /// A single-copy partition: log a PUT/DELETE record, answer once durable.
    Logged,
    /// A chosen command of a replicated partition: apply, log nothing, and
    /// never refuse for load (every replica must apply it alike).
    Applied,
}

/// Most dirty nodes a checkpoint serializes before it yields: bounds the
/// time a checkpoint holds the core (about a millisecond).
const CHECKPOINT_SLICE_NODES: usize = 64;
/// A checkpoint writes contiguous pages as one IO of at most this size…
const CHECKPOINT_RUN_BYTES_MAX: usize = 1 << 20;
/// …with this many IOs in flight.
const CHECKPOINT_WRITES_IN_FLIGHT: usize = 8;

/// Sorts framed pages by address and joins neighbours into runs of at most
/// `run_bytes_max`: (byte offset, bytes) per run. Each run's buffer is
/// sized once, from a first pass over the pages, and a run of one page
/// takes that page's buffer as it is. Growing runs page by page copied
/// them again at every reallocation and faulted in fresh memory each
/// time: the kernel clearing those pages was the busiest symbol of the
/// shards in a profile of replicated writes (workload W), and is gone.
fn coalesce(
    writes: &mut [(PageAddr, Vec<u8>)],
    page_size: usize,
    run_bytes_max: usize,
) -> Vec<(u64, Vec<u8>)> {
    writes.sort_by_key(|(addr, _)| *addr);
    // (index of the run's first page, the run's bytes)
    let mut starts: Vec<(usize, usize)> = Vec::new();
    let mut next_unit = None;
    for (index, (addr, page)) in writes.iter().enumerate() {
        match starts.last_mut() {
            Some((_, bytes))
                if next_unit == Some(addr.first_unit()) && *bytes + page.len() <= run_bytes_max =>
            {
                *bytes += page.len();
            }
            _ => starts.push((index, page.len())),
        }
        next_unit = Some(addr.first_unit() + addr.units());
    }
    let mut runs = Vec::with_capacity(starts.len());
    for (k, &(first, bytes)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(writes.len(), |(next, _)| *next);
        let offset = writes[first].0.first_unit() * page_size as u64;
        let run = match &mut writes[first..end] {
            [(_, page)] => std::mem::take(page),
            pages => {
                let mut run = Vec::with_capacity(bytes);
                for (_, page) in pages.iter() {
                    run.extend_from_slice(page);
                }
                run
            }
        };
        runs.push((offset, run));
    }
    runs
}

/// Largest WAL payload a valid write produces: an item, its key, framing.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = cairn_common::item::ITEM_SIZE_BYTES_MAX * 2 + 8192;

/// Most page loads one operation may need before it gives up.
const FAULT_ATTEMPTS_MAX: usize = 64;

/// One core's storage engine.
#[derive(Debug)]
pub struct Engine<Fs: FileSystem> {
    config: EngineConfig,
    wal: Wal<Fs>,
    store: PageStore<Fs>,
    partitions: RefCell<BTreeMap<PartitionId, Partition>>,
    /// Clean extents replaced since the last checkpoint began.
    freed: RefCell<Vec<PageAddr>>,
    applied_lsn: Cell<Lsn>,
    dirty_nodes: Cell<usize>,
    /// Keys whose latest write is applied but maybe not yet durable.
    unsynced: RefCell<HashMap<(PartitionId, Vec<u8>), Lsn>>,
    checkpointing: Cell<bool>,
    stopped: RefCell<Option<String>>,
    /// Snapshots being read ([`Engine::snapshot_view`]): while any is, no
    /// extent is given back for reuse, so the pages of their frozen trees
    /// stay as they were…
    snapshot_pins: Rc<Cell<usize>>,
    /// …and the extents checkpoints would have released wait here.
    pinned_free: RefCell<Vec<PageAddr>>,
    /// Trees being received from a leader's snapshot, by partition: never
    /// in the catalog (a crash forgets them), swapped in whole once
    /// complete ([`Engine::stage_install`]).
    staging: RefCell<BTreeMap<PartitionId, Tree>>,
    /// Operations and key hashes per partition, for splits for
    /// consumption.
    load: RefCell<LoadTracker>,
    epoch: std::time::Instant,
}

/// A frozen copy of a replicated partition's tree at an applied point, to
/// ship to a peer that lags ([`Engine::snapshot_read`]). Its pages stay
/// unreused while it lives.
#[derive(Debug)]
pub struct SnapshotView {
    pub partition: PartitionId,
    /// The tree reflects every slot below.
    pub through: Slot,
    /// The hashes the partition served at `through`.
    pub range: HashRange,
    /// The group's members at `through`.
    pub spec: GroupSpec,
    tree: Tree,
    _pin: SnapshotPin,
}

#[derive(Debug)]
struct SnapshotPin(Rc<Cell<usize>>);

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A tree taken out of use by [`Engine::stage_install`] or
/// [`Engine::stage_discard`], for [`Engine::retire`] to give back.
#[derive(Debug)]
#[must_use]
pub struct Retired(Option<Tree>);

impl<Fs: FileSystem> Engine<Fs> {
    /// Opens the engine over `fs`, recovering from the last checkpoint and
    /// the WAL after it.
    pub async fn open(fs: Rc<Fs>, config: EngineConfig) -> Result<(Self, OpenReport), EngineError> {
        assert!(
            config.wal.payload_bytes_max() >= RECORD_PAYLOAD_BYTES_MAX,
            "WAL segments must hold the largest item"
        );
        let (store, catalog) =
            PageStore::open(fs.as_ref(), config.page_size, config.cache_bytes).await?;
        let superblock = store.superblock();
        let mut partitions = BTreeMap::new();
        let mut used = Vec::new();
        if superblock.catalog != PageAddr::NONE {
            used.push(superblock.catalog);
        }
        for entry in catalog.entries {
            let corrupt = |reason: String| {
                StoreError::Corrupt(crate::page::PageError::Corrupt {
                    addr: superblock.catalog.0,
                    reason,
                })
            };
            let schema = KeySchema::decode(&entry.schema).map_err(|e| corrupt(e.to_string()))?;
            let group = entry
                .group
                .map(|g| group_from_catalog(g).map_err(corrupt))
                .transpose()?;
            store.reachable(PageAddr(entry.root), &mut used).await?;
            let mut tree = Tree::with_root(PageAddr(entry.root), config.page_size);
            tree.set_stored_bytes(entry.bytes);
            let mut partition = Partition::new(schema, tree, group);
            partition.range = (entry.range_first, entry.range_last);
            partitions.insert(entry.partition, partition);
        }
        store.set_used(used);
        let mut records = Vec::new();
        let (wal, wal_report) = Wal::open(fs, config.wal.clone(), superblock.checkpoint_lsn, |r| {
            records.push(r);
        })
        .await?;
        let engine = Engine {
            config,
            wal,
            store,
            partitions: RefCell::new(partitions),
            freed: RefCell::default(),
            applied_lsn: Cell::new(superblock.checkpoint_lsn),
            dirty_nodes: Cell::new(0),
            unsynced: RefCell::default(),
            checkpointing: Cell::new(false),
            stopped: RefCell::default(),
            snapshot_pins: Rc::default(),
            pinned_free: RefCell::default(),
            staging: RefCell::default(),
            load: RefCell::default(),
            epoch: std::time::Instant::now(),
        };
        for record in records {
            engine.replay(record).await?;
        }
        engine.applied_lsn.set(engine.wal.next_lsn() - 1);
        let report = OpenReport {
            checkpoint_lsn: superblock.checkpoint_lsn,
            partitions: engine.partitions.borrow().len(),
            wal: wal_report,
        };
        Ok((engine, report))
    }

    async fn replay(&self, record: Record) -> Result<(), EngineError> {
        let corrupt = |reason: &str| EngineError::CorruptRecord {
            lsn: record.lsn,
            reason: reason.to_owned(),
        };
        let (&kind, body) = record
            .payload
            .split_first()
            .ok_or_else(|| corrupt("empty payload"))?;
        match kind {
            record::CREATE_PARTITION => {
                let schema = KeySchema::decode(body).map_err(|e| corrupt(&e.to_string()))?;
                let tree = Tree::new(self.config.page_size);
                self.partitions
                    .borrow_mut()
                    .insert(record.partition, Partition::new(schema, tree, None));
            }
            record::CREATE_REPLICATED => {
                let (schema, spec) =
                    split_put(body).ok_or_else(|| corrupt("malformed replicated partition"))?;
                let schema = KeySchema::decode(schema).map_err(|e| corrupt(&e.to_string()))?;
                let spec = GroupSpec::from_bytes(spec).map_err(|e| corrupt(&e.to_string()))?;
                let tree = Tree::new(self.config.page_size);
                self.partitions.borrow_mut().insert(
                    record.partition,
                    Partition::new(schema, tree, Some(GroupLog::new(spec))),
                );
            }
            record::PROMISE | record::ACCEPT => {
                let persist =
                    decode_persist(kind, body).ok_or_else(|| corrupt("malformed Paxos record"))?;
                self.with_group(record.partition, |group| group.record(&persist))
                    .map_err(|_| corrupt("Paxos record for a partition with no group"))?;
            }
            record::COMMIT => {
                let through = decode_u64(body, 0).ok_or_else(|| corrupt("malformed commit"))?;
                self.with_group(record.partition, |group| {
                    group.committed_through = group.committed_through.max(through);
                })
                .map_err(|_| corrupt("commit marker for a partition with no group"))?;
            }
            record::DROP_PARTITION => {
                let dropped = self.partitions.borrow_mut().remove(&record.partition);
                if let Some(dropped) = dropped {
                    // Its pages in the checkpoint are given back by the
                    // next one, which no longer lists the partition.
                    self.release_tree(dropped.tree).await?;
                }
            }
            record::PUT => {
                let (key, value) = split_put(body).ok_or_else(|| corrupt("malformed put"))?;
                self.fault_in(record.partition, key).await?;
                self.apply(record.partition, key.to_vec(), Some(value.to_vec()));
            }
            record::DELETE => {
                self.fault_in(record.partition, body).await?;
                self.apply(record.partition, body.to_vec(), None);
            }
            _ => return Err(corrupt("unknown record kind")),
        }
        Ok(())
    }

    /// Stops the engine: every later operation fails with `reason`. For a
    /// state it cannot go on from safely, such as a chosen command this
    /// build cannot decode.
    pub fn stop(&self, reason: String) -> EngineError {
        tracing::error!(%reason, "engine stopped");
        *self.stopped.borrow_mut() = Some(reason.clone());
        EngineError::Stopped(reason)
    }

    fn check_running(&self) -> Result<(), EngineError> {
        match &*self.stopped.borrow() {
            Some(reason) => Err(EngineError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// Deletes `partition` and everything in it, durably (its table was
    /// deleted); `false` if there was none. Its pages go back to the
    /// allocator with the next checkpoint.
    pub async fn drop_partition(&self, partition: PartitionId) -> Result<bool, EngineError> {
        self.check_running()?;
        if !self.partitions.borrow().contains_key(&partition) {
            return Ok(false);
        }
        let lsn = self.wal.submit(partition, vec![record::DROP_PARTITION])?;
        let dropped = self.partitions.borrow_mut().remove(&partition);
        let staged = self.staging.borrow_mut().remove(&partition);
        self.applied_lsn.set(lsn);
        self.wal.wait_durable(lsn).await?;
        for tree in dropped.map(|p| p.tree).into_iter().chain(staged) {
            self.release_tree(tree).await?;
        }
        Ok(true)
    }

    /// Creates an empty partition with the given key schema, durably.
    pub async fn create_partition(
        &self,
        partition: PartitionId,
        schema: KeySchema,
    ) -> Result<(), EngineError> {
        self.create(partition, schema, None).await
    }

    /// Creates an empty replica of a replication group, durably.
    pub async fn create_replicated(
        &self,
        partition: PartitionId,
        schema: KeySchema,
        spec: GroupSpec,
    ) -> Result<(), EngineError> {
        self.create(partition, schema, Some(spec)).await
    }

    async fn create(
        &self,
        partition: PartitionId,
        schema: KeySchema,
        spec: Option<GroupSpec>,
    ) -> Result<(), EngineError> {
        self.check_running()?;
        if self.partitions.borrow().contains_key(&partition) {
            return Err(EngineError::PartitionExists(partition));
        }
        let schema_bytes = schema.encode();
        let payload = match &spec {
            None => [&[record::CREATE_PARTITION][..], &schema_bytes].concat(),
            Some(spec) => [
                &[record::CREATE_REPLICATED][..],
                &(schema_bytes.len() as u32).to_le_bytes(),
                &schema_bytes,
                &spec.to_bytes(),
            ]
            .concat(),
        };
        let lsn = self.wal.submit(partition, payload)?;
        let tree = Tree::new(self.config.page_size);
        self.partitions.borrow_mut().insert(
            partition,
            Partition::new(schema, tree, spec.map(GroupLog::new)),
        );
        self.applied_lsn.set(lsn);
        self.wal.wait_durable(lsn).await?;
        Ok(())
    }

    fn with_group<R>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(&mut GroupLog) -> R,
    ) -> Result<R, EngineError> {
        let mut partitions = self.partitions.borrow_mut();
        let group = partitions
            .get_mut(&partition)
            .and_then(|p| p.group.as_mut())
            .ok_or(EngineError::UnknownPartition(partition))?;
        Ok(f(group))
    }

    /// Whether this shard's replica of `partition` is a log replica (its
    /// group's spec says so): it keeps the log and holds no items.
    pub fn is_log_replica(&self, partition: PartitionId) -> bool {
        self.partitions
            .borrow()
            .get(&partition)
            .and_then(|p| p.group.as_ref())
            .and_then(|g| g.spec.members.get(g.spec.replica as usize))
            .is_some_and(|m| m.role == MemberRole::Log)
    }

    /// Keeps `partition`'s accepted values from `floor` on (`None`: only
    /// the retained window), for the group's log replicas.
    pub fn set_log_floor(&self, partition: PartitionId, floor: Option<Slot>) {
        let _ = self.with_group(partition, |group| {
            group.log_floor = floor.unwrap_or(Slot::MAX);
        });
    }

    /// Starts a log replica's log at `through`: every slot below counts as
    /// chosen and passed over, and values held below it and below the log
    /// floor are dropped (as a snapshot install does, with no items).
    /// Returns whether it moved the replica forward. Not logged: a log
    /// replica that restarts before a checkpoint holds this is started
    /// again by its leader.
    pub fn start_log(&self, partition: PartitionId, through: Slot) -> Result<bool, EngineError> {
        self.check_running()?;
        self.with_group(partition, |group| {
            if through <= group.applied_through {
                return false;
            }
            group.applied_through = through;
            group.committed_through = group.committed_through.max(through);
            // What it holds from the floor up may be the only copy a
            // lagging full member has left (the replica keeps it too).
            let keep_from = through.min(group.log_floor);
            group.durable.accepted = group.durable.accepted.split_off(&keep_from);
            true
        })
    }

    /// A replicated partition's group as this replica has applied it
    /// (`None` for a single-copy one): unlike [`Engine::group`], without
    /// copying its log.
    pub fn spec(&self, partition: PartitionId) -> Option<GroupSpec> {
        Some(
            self.partitions
                .borrow()
                .get(&partition)?
                .group
                .as_ref()?
                .spec
                .clone(),
        )
    }

    /// The durable Paxos state of a replicated partition (`None` for a
    /// single-copy one).
    pub fn group(&self, partition: PartitionId) -> Option<GroupLog> {
        self.partitions.borrow().get(&partition)?.group.clone()
    }

    /// The replicated partitions of `partition`'s table on this shard
    /// whose ranges do not overlap `range`, with their ranges and groups:
    /// what splits of `partition` may have made, when `range` is its
    /// current one.
    pub fn split_off(
        &self,
        partition: PartitionId,
        range: HashRange,
    ) -> Vec<(PartitionId, HashRange, GroupSpec)> {
        let table = partition >> cairn_common::wire::PARTITION_INDEX_BITS;
        self.partitions
            .borrow()
            .iter()
            .filter(|(id, p)| {
                **id != partition
                    && **id >> cairn_common::wire::PARTITION_INDEX_BITS == table
                    && (p.range.1 < range.0 || range.1 < p.range.0)
            })
            .filter_map(|(id, p)| Some((*id, p.range, p.group.as_ref()?.spec.clone())))
            .collect()
    }

    /// Whether `partition` is a replica of a replication group.
    pub fn is_replicated(&self, partition: PartitionId) -> bool {
        self.partitions
            .borrow()
            .get(&partition)
            .is_some_and(|p| p.group.is_some())
    }

    /// Submits a replica's promises and accepted values to the log and
    /// returns the LSN to wait on before telling the replica they are
    /// durable.
    pub fn log_paxos(
        &self,
        partition: PartitionId,
        persist: &[Persist],
    ) -> Result<Lsn, EngineError> {
        self.check_running()?;
        let mut last = None;
        for entry in persist {
            let lsn = self.wal.submit(partition, encode_persist(entry))?;
            self.with_group(partition, |group| group.record(entry))?;
            self.applied_lsn.set(lsn);
            last = Some(lsn);
        }
        Ok(last.unwrap_or_else(|| self.wal.next_lsn() - 1))
    }

    /// Records that every slot below `through` is chosen, so that recovery
    /// can apply them without asking the leader. Returns the record's LSN
    /// if one was logged (not for an older marker): once it is durable,
    /// this replica restarts with every slot below `through`.
    pub fn log_commit(
        &self,
        partition: PartitionId,
        through: Slot,
    ) -> Result<Option<Lsn>, EngineError> {
        self.check_running()?;
        let newer = self.with_group(partition, |g| through > g.committed_through)?;
        if !newer {
            return Ok(None);
        }
        let mut payload = vec![record::COMMIT];
        payload.extend_from_slice(&through.to_le_bytes());
        let lsn = self.wal.submit(partition, payload)?;
        self.with_group(partition, |g| g.committed_through = through)?;
        self.applied_lsn.set(lsn);
        Ok(Some(lsn))
    }

    /// Slots below are reflected in the partition's tree.
    pub fn applied_through(&self, partition: PartitionId) -> Option<Slot> {
        self.partitions
            .borrow()
            .get(&partition)?
            .group
            .as_ref()
            .map(|g| g.applied_through)
    }

    /// Applies chosen slot `slot` of a replicated partition: `write` is the
    /// command's effect (`None` for a no-op) and the image it answers with.
    /// Returns that image; a condition that fails or an invalid update is an answer,
    /// and the slot counts as applied either way. A failure to apply at all
    /// (IO, corruption) stops the engine: a replica that skipped a slot
    /// would diverge from its peers.
    pub async fn apply_committed(
        &self,
        partition: PartitionId,
        slot: Slot,
        write: Option<(Write<'_>, ReturnValues)>,
    ) -> Result<Option<Item>, EngineError> {
        self.check_running()?;
        let expected = self
            .applied_through(partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        assert_eq!(slot, expected, "chosen slots are applied in order, once");
        let result = match write {
            None => Ok(None),
            Some((write, returns)) => {
                self.write(partition, write, WriteMode::Applied, returns)
                    .await
            }
        };
        if let Err(error) = &result
            && !error.is_answer()
        {
            tracing::error!(partition, slot, %error, "could not apply a chosen command; stopping");
            *self.stopped.borrow_mut() = Some(format!("applying slot {slot}: {error}"));
            return result;
        }
        self.with_group(partition, |group| group.mark_applied(slot))?;
        result
    }

    /// Applies chosen slot `slot` of replicated `partition` when it holds
    /// a membership change: the group becomes `spec` (this replica keeps
    /// its id), in force from `slot + 1`. No await: a checkpoint sees the
    /// new members together with the applied point past `slot`, or
    /// neither, and recovery applies the slot again.
    pub fn apply_membership(
        &self,
        partition: PartitionId,
        slot: Slot,
        spec: GroupSpec,
    ) -> Result<(), EngineError> {
        self.check_running()?;
        self.with_group(partition, |group| {
            assert_eq!(
                slot, group.applied_through,
                "chosen slots are applied in order, once"
            );
            group.spec = GroupSpec {
                replica: group.spec.replica,
                since: slot + 1,
                ..spec
            };
            group.mark_applied(slot);
        })
    }

    /// Applies chosen slot `slot` of replicated `partition` when it holds
    /// a split at hash `at`: the items hashing from `at` to the end of the
    /// partition's range are copied into a new replicated partition
    /// `child` (same schema, same members, this replica's index), which
    /// then serves that part of the range while the parent keeps the rest.
    /// Returns whether `child` was created (`false`: `child` was split off
    /// this partition before, at whatever point). Refusals ([`EngineError::InvalidSplit`]) are
    /// answers: the slot counts as applied, on every replica alike.
    ///
    /// The copy goes into a staging tree and the swap has no await, so a
    /// checkpoint sees the parent whole, or the parent narrowed (its
    /// applied point past `slot`) together with the child. Until one
    /// does, the child must not take part in its group: a crash would
    /// forget it, and recovery re-applies the split. The parent keeps the
    /// moved items in its pages, invisible.
    pub async fn apply_split(
        &self,
        partition: PartitionId,
        slot: Slot,
        at: u64,
        child: PartitionId,
    ) -> Result<bool, EngineError> {
        self.check_running()?;
        let (schema, spec, (first, last)) = {
            let partitions = self.partitions.borrow();
            let p = partitions
                .get(&partition)
                .ok_or(EngineError::UnknownPartition(partition))?;
            let group = p.group.as_ref().ok_or(EngineError::Replicated(partition))?;
            assert_eq!(
                slot, group.applied_through,
                "chosen slots are applied in order, once"
            );
            (p.schema.clone(), group.spec.clone(), p.range)
        };
        let child_range = self.range(child);
        let exists = child_range.is_some();
        if child_range.is_some_and(|(start, _)| last.checked_add(1) == Some(start)) {
            // Split off before (a retried request, maybe at another
            // point): the parent's range tells where.
            self.with_group(partition, |g| g.mark_applied(slot))?;
            return Ok(false);
        }
        let misplaced = spec
            .members
            .iter()
            .find(|m| m.cores == 0 || child % u64::from(m.cores) != partition % u64::from(m.cores));
        let refusal = if !(first < at && at <= last) {
            Some(format!("hash {at:#x} is not inside {first:#x}..={last:#x}"))
        } else if exists {
            Some(format!("partition {child} exists"))
        } else {
            misplaced.map(|m| {
                format!(
                    "partition {child} would live on another shard of {} than its parent",
                    m.addr
                )
            })
        };
        if let Some(reason) = refusal {
            self.with_group(partition, |g| g.mark_applied(slot))?;
            return Err(EngineError::InvalidSplit { partition, reason });
        }
        let old = self
            .staging
            .borrow_mut()
            .insert(child, Tree::new(self.config.page_size));
        self.retire(Retired(old)).await?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let range = ScanRange {
                start: after.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                end: Bound::Unbounded,
                reverse: false,
            };
            let (entries, more) = self
                .read(partition, |tree, src| {
                    let mut out = Vec::new();
                    let more =
                        tree.scan_bounded(&FnSource(src), &range, 512, usize::MAX, &mut out)?;
                    Ok((out, more))
                })
                .await?;
            after = entries.last().map(|(k, _)| k.clone());
            for (key, value) in entries {
                if !in_range((at, last), &key) {
                    continue;
                }
                self.resident(|| {
                    let staging = self.staging.borrow();
                    Ok(staging
                        .get(&child)
                        .map_or(Ok(()), |tree| tree.probe(self.store.cache(), &key)))
                })
                .await?;
                let mut staging = self.staging.borrow_mut();
                let tree = staging.get_mut(&child).ok_or_else(|| {
                    self.stop(format!(
                        "split of {partition}: the staging tree of {child} vanished"
                    ))
                })?;
                self.change_resident(tree, key, Some(value));
            }
            if !more || after.is_none() {
                break;
            }
        }
        // The swap: no await from here on.
        let tree = self.staging.borrow_mut().remove(&child).ok_or_else(|| {
            self.stop(format!(
                "split of {partition}: the staging tree of {child} vanished"
            ))
        })?;
        let mut partitions = self.partitions.borrow_mut();
        let p = partitions
            .get_mut(&partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        p.range = (first, at - 1);
        let kept = p.tree.stored_bytes().saturating_sub(tree.stored_bytes());
        p.tree.set_stored_bytes(kept);
        if let Some(group) = p.group.as_mut() {
            group.mark_applied(slot);
        }
        // The child's log starts at slot 1, under the parent's members:
        // slot 0 stands for the copy, which no log holds, so a replica
        // that joins the child later (a move, or a member that skipped
        // the split) gets a snapshot, never the log from an empty start.
        let spec = GroupSpec { since: 0, ..spec };
        let mut log = GroupLog::new(spec);
        (log.committed_through, log.applied_through) = (1, 1);
        let mut born = Partition::new(schema, tree, Some(log));
        born.range = (at, last);
        partitions.insert(child, born);
        Ok(true)
    }

    /// Bytes of keys and values `partition` holds (items a split moved
    /// out no longer count).
    pub fn stored_bytes(&self, partition: PartitionId) -> Option<u64> {
        Some(
            self.partitions
                .borrow()
                .get(&partition)?
                .tree
                .stored_bytes(),
        )
    }

    /// The hashes `partition` serves.
    pub fn range(&self, partition: PartitionId) -> Option<HashRange> {
        Some(self.partitions.borrow().get(&partition)?.range)
    }

    /// `partition`'s operations in the last whole second and the median
    /// key hash they touched.
    pub fn load(&self, partition: PartitionId) -> Load {
        let now = self.now_ns();
        self.load.borrow_mut().load(partition, now)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Checks that the item under `key` is `partition`'s, and counts the
    /// operation in the partition's load (one hash for both).
    fn admit_key(&self, partition: PartitionId, key: &[u8]) -> Result<(), EngineError> {
        let hash = cairn_common::key::key_hash(key);
        self.check_hash(partition, hash)?;
        if let Some(hash) = hash {
            let now = self.now_ns();
            self.load.borrow_mut().observe(partition, hash, now);
        }
        Ok(())
    }

    /// `Ok` if the item under `key` belongs to `partition`.
    pub fn check_holds(&self, partition: PartitionId, key: &[u8]) -> Result<(), EngineError> {
        self.check_hash(partition, cairn_common::key::key_hash(key))
    }

    fn check_hash(&self, partition: PartitionId, hash: Option<u64>) -> Result<(), EngineError> {
        let partitions = self.partitions.borrow();
        let p = partitions
            .get(&partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        let (first, last) = p.range;
        if p.range == WHOLE_RANGE || hash.is_some_and(|h| (first..=last).contains(&h)) {
            return Ok(());
        }
        Err(EngineError::WrongPartition {
            partition,
            hash: hash.unwrap_or(0),
            first,
            last,
        })
    }

    /// Freezes the tree of replicated `partition` at its applied point, to
    /// be read by [`Engine::snapshot_read`] while writes go on. Clean pages
    /// are shared with the live tree (and kept from reuse while the view
    /// lives); dirty nodes are copied.
    pub fn snapshot_view(&self, partition: PartitionId) -> Result<SnapshotView, EngineError> {
        self.check_running()?;
        let partitions = self.partitions.borrow();
        let p = partitions
            .get(&partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        let group = p
            .group
            .as_ref()
            .ok_or(EngineError::UnknownPartition(partition))?;
        self.snapshot_pins.set(self.snapshot_pins.get() + 1);
        Ok(SnapshotView {
            partition,
            through: group.applied_through,
            range: p.range,
            spec: group.spec.clone(),
            tree: p.tree.clone(),
            _pin: SnapshotPin(self.snapshot_pins.clone()),
        })
    }

    /// The view's entries (encoded key, item bytes) after `after`, in key
    /// order, about `bytes_max` of them; and whether more follow.
    pub async fn snapshot_read(
        &self,
        view: &SnapshotView,
        after: Option<&[u8]>,
        bytes_max: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), EngineError> {
        self.check_running()?;
        let range = ScanRange {
            start: after.map_or(Bound::Unbounded, Bound::Excluded),
            end: Bound::Unbounded,
            reverse: false,
        };
        self.resident(|| {
            let mut out = Vec::new();
            let src = FnSource(&|addr| self.store.cache().get(addr));
            Ok(view
                .tree
                .scan_bounded(&src, &range, usize::MAX, bytes_max, &mut out)
                .map(|more| (out, more)))
        })
        .await
        .map(|(mut entries, more)| {
            // Items a split moved out stay in the pages, invisible.
            entries.retain(|(key, _)| in_range(view.range, key));
            (entries, more)
        })
    }

    /// Starts receiving a snapshot of replicated `partition` into an empty
    /// staging tree, dropping any earlier unfinished one.
    pub async fn stage_begin(&self, partition: PartitionId) -> Result<(), EngineError> {
        self.check_running()?;
        if !self.is_replicated(partition) {
            return Err(EngineError::UnknownPartition(partition));
        }
        let fresh = Tree::new(self.config.page_size);
        let old = self.staging.borrow_mut().insert(partition, fresh);
        self.retire(Retired(old)).await
    }

    /// Adds a snapshot chunk's entries to the staging tree. Every value
    /// must decode to an item whose key is the entry's key under the
    /// partition's schema; nothing is logged (a crash forgets the staging
    /// tree, and the leader sends the snapshot again).
    pub async fn stage_chunk(
        &self,
        partition: PartitionId,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), EngineError> {
        self.check_running()?;
        if self.over_dirty_bound() {
            return Err(EngineError::Throttled);
        }
        let schema = self.schema(partition)?;
        let refuse = |reason: &str| EngineError::InvalidSnapshot {
            partition,
            reason: reason.into(),
        };
        for (key, value) in entries {
            let item = Item::decode(&value)?;
            if schema.key_of_item(&item)? != key {
                return Err(refuse("an entry's key does not match its item"));
            }
            self.resident(|| {
                let staging = self.staging.borrow();
                let tree = staging
                    .get(&partition)
                    .ok_or_else(|| refuse("no snapshot is being received"))?;
                Ok(tree.probe(self.store.cache(), &key))
            })
            .await?;
            let mut staging = self.staging.borrow_mut();
            let tree = staging
                .get_mut(&partition)
                .ok_or_else(|| refuse("no snapshot is being received"))?;
            self.change_resident(tree, key, Some(value));
        }
        Ok(())
    }

    /// Swaps the complete staging tree of `partition` in as its state at
    /// `through`, if that is ahead of what it has applied, with no await;
    /// returns whether it did, and the tree to [`Engine::retire`] (the
    /// replaced one, or the refused one). The next checkpoint makes the
    /// swap durable: a crash before it leaves the old tree and applied
    /// point, consistent.
    ///
    /// Accepted values below `through` go too: the snapshot skipped those
    /// slots, so what this replica accepted for them may be stale (from a
    /// ballot that lost), and after a restart values below the applied
    /// point are taken for chosen ones.
    pub fn stage_install(
        &self,
        partition: PartitionId,
        through: Slot,
        range: HashRange,
        spec: GroupSpec,
    ) -> Result<(bool, Retired), EngineError> {
        self.check_running()?;
        let Some(staged) = self.staging.borrow_mut().remove(&partition) else {
            return Ok((false, Retired(None)));
        };
        let mut partitions = self.partitions.borrow_mut();
        let p = partitions
            .get_mut(&partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        Ok(match p.group.as_mut() {
            Some(group) if through > group.applied_through => {
                group.applied_through = through;
                group.committed_through = group.committed_through.max(through);
                group.durable.accepted = group.durable.accepted.split_off(&through);
                group.spec = GroupSpec {
                    replica: group.spec.replica,
                    ..spec
                };
                p.range = range;
                (true, Retired(Some(std::mem::replace(&mut p.tree, staged))))
            }
            _ => (false, Retired(Some(staged))),
        })
    }

    /// Gives back the tree an install replaced (or refused).
    pub async fn retire(&self, retired: Retired) -> Result<(), EngineError> {
        match retired.0 {
            Some(tree) => self.release_tree(tree).await,
            None => Ok(()),
        }
    }

    /// Takes `partition`'s unfinished staging tree, if any, out of use.
    pub fn stage_discard(&self, partition: PartitionId) -> Retired {
        Retired(self.staging.borrow_mut().remove(&partition))
    }

    /// Gives back a tree that no partition holds any more: its dirty nodes
    /// at once, its pages on disk with the next checkpoint.
    async fn release_tree(&self, tree: Tree) -> Result<(), EngineError> {
        let dirty = tree.dirty_stats().dirty_nodes;
        self.dirty_nodes
            .set(self.dirty_nodes.get().saturating_sub(dirty));
        let mut frontier = Vec::new();
        tree.clean_frontier(&mut frontier);
        drop(tree);
        let mut pages = Vec::new();
        for addr in frontier {
            self.store.reachable(addr, &mut pages).await?;
        }
        self.freed.borrow_mut().append(&mut pages);
        Ok(())
    }

    /// The partition's key schema.
    pub fn schema(&self, partition: PartitionId) -> Result<KeySchema, EngineError> {
        let partitions = self.partitions.borrow();
        let p = partitions
            .get(&partition)
            .ok_or(EngineError::UnknownPartition(partition))?;
        Ok(p.schema.clone())
    }

    pub fn partition_ids(&self) -> Vec<PartitionId> {
        self.partitions.borrow().keys().copied().collect()
    }

    /// Stores `item`, replacing any item with the same key, if `condition`
    /// (when given) holds on the current item; returns once durable.
    pub async fn put_item(
        &self,
        partition: PartitionId,
        item: &Item,
        condition: Option<&Condition>,
    ) -> Result<(), EngineError> {
        let write = Write::Put { item, condition };
        self.perform(partition, write, ReturnValues::None)
            .await
            .map(|_| ())
    }

    /// Sets (`Some`) or removes (`None`) attributes of the item with this key,
    /// creating it if absent, as DynamoDB's UpdateItem does; returns the new
    /// item. Key attributes cannot be changed.
    pub async fn update_item(
        &self,
        partition: PartitionId,
        key: &Item,
        changes: &[UpdateAction],
        condition: Option<&Condition>,
    ) -> Result<Item, EngineError> {
        let write = Write::Update {
            key,
            changes,
            condition,
        };
        let updated = self.perform(partition, write, ReturnValues::AllNew).await?;
        Ok(updated.expect("an update always leaves an item"))
    }

    /// Removes the item with this key (given as its key attributes), if any
    /// and if `condition` holds.
    pub async fn delete_item(
        &self,
        partition: PartitionId,
        key: &Item,
        condition: Option<&Condition>,
    ) -> Result<(), EngineError> {
        let write = Write::Delete { key, condition };
        self.perform(partition, write, ReturnValues::None)
            .await
            .map(|_| ())
    }

    /// Performs a write on a single-copy partition; returns once durable,
    /// with the image of the item `returns` asks for (`None` when it asks
    /// for none, or the item did not exist).
    pub async fn perform(
        &self,
        partition: PartitionId,
        write: Write<'_>,
        returns: ReturnValues,
    ) -> Result<Option<Item>, EngineError> {
        self.write(partition, write, WriteMode::Logged, returns)
            .await
    }

    /// Checks `write` against the partition's key schema and performs it;
    /// returns the image `returns` asks for.
    async fn write(
        &self,
        partition: PartitionId,
        write: Write<'_>,
        mode: WriteMode,
        returns: ReturnValues,
    ) -> Result<Option<Item>, EngineError> {
        let schema = self.schema(partition)?;
        let keep_old = returns.wants_old();
        let (old, new) = match write {
            Write::Put { item, condition } => {
                let key = schema.key_of_item(item)?;
                self.mutate(partition, key, condition, mode, keep_old, |_| {
                    Ok(Some(item.clone()))
                })
                .await?
            }
            Write::Delete { key, condition } => {
                let key = schema.key_of_key(key)?;
                self.mutate(partition, key, condition, mode, keep_old, |_| Ok(None))
                    .await?
            }
            Write::Update {
                key,
                changes,
                condition,
            } => {
                let encoded_key = schema.key_of_key(key)?;
                for action in changes {
                    let name = &action.path().name;
                    let is_key = *name == schema.partition.name
                        || schema.sort.as_ref().is_some_and(|s| *name == s.name);
                    if is_key {
                        return Err(ItemError::KeyAttributeUpdate {
                            name: name.to_owned(),
                        }
                        .into());
                    }
                }
                self.mutate(
                    partition,
                    encoded_key,
                    condition,
                    mode,
                    keep_old,
                    |current| {
                        let mut item = current.unwrap_or_else(|| key.clone());
                        cairn_common::update::apply(&mut item, changes)?;
                        item.validate()?;
                        Ok(Some(item))
                    },
                )
                .await?
            }
        };
        Ok(if keep_old {
            old
        } else if returns.wants_new() {
            new
        } else {
            None
        })
    }

    /// Reads the current item under `key`, checks `condition` on it, and
    /// writes what `change` makes of it (`None` deletes) — with no await
    /// between the read and the log submit, so it is atomic on this core.
    /// Returns the old item (when `keep_old`; else `None`) and the new one.
    async fn mutate(
        &self,
        partition: PartitionId,
        key: Vec<u8>,
        condition: Option<&Condition>,
        mode: WriteMode,
        keep_old: bool,
        change: impl FnOnce(Option<Item>) -> Result<Option<Item>, EngineError>,
    ) -> Result<(Option<Item>, Option<Item>), EngineError> {
        self.check_running()?;
        self.admit_key(partition, &key)?;
        if mode == WriteMode::Logged {
            if self.over_dirty_bound() {
                return Err(EngineError::Throttled);
            }
            if self.is_replicated(partition) {
                // Its tree changes only through chosen commands.
                return Err(EngineError::Replicated(partition));
            }
        }
        self.fault_in(partition, &key).await?;
        let current = {
            let partitions = self.partitions.borrow();
            let p = partitions
                .get(&partition)
                .ok_or(EngineError::UnknownPartition(partition))?;
            p.tree
                .get_with(self.store.cache(), &key, Item::decode)
                .expect("path is resident")
                .transpose()?
        };
        if let Some(condition) = condition
            && !condition.holds(current.as_ref())
        {
            return Err(EngineError::ConditionFailed);
        }
        let old = if keep_old { current.clone() } else { None };
        let new = change(current)?;
        if mode == WriteMode::Applied {
            // The accepted value in the log is this write's record.
            let value = new.as_ref().map(Item::to_bytes);
            self.apply(partition, key, value);
            return Ok((old, new));
        }
        let (payload, value) = match &new {
            Some(item) => {
                let value = item.to_bytes();
                let mut payload = Vec::with_capacity(1 + 4 + key.len() + value.len());
                payload.push(record::PUT);
                payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
                payload.extend_from_slice(&key);
                payload.extend_from_slice(&value);
                (payload, Some(value))
            }
            None => {
                let mut payload = Vec::with_capacity(1 + key.len());
                payload.push(record::DELETE);
                payload.extend_from_slice(&key);
                (payload, None)
            }
        };
        self.write_resident(partition, key, value, payload).await?;
        Ok((old, new))
    }

    /// Logs and applies a write whose tree path is resident. From here to
    /// the apply there is no await: the path stays resident and no other
    /// write can slip between log order and tree order.
    async fn write_resident(
        &self,
        partition: PartitionId,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        payload: Vec<u8>,
    ) -> Result<(), EngineError> {
        if self.over_dirty_bound() {
            return Err(EngineError::Throttled);
        }
        if !self.partitions.borrow().contains_key(&partition) {
            return Err(EngineError::UnknownPartition(partition));
        }
        let lsn = self.wal.submit(partition, payload)?;
        self.apply(partition, key.clone(), value);
        self.applied_lsn.set(lsn);
        let unsynced_key = (partition, key);
        self.unsynced.borrow_mut().insert(unsynced_key.clone(), lsn);
        let durable = self.wal.wait_durable(lsn).await;
        let mut unsynced = self.unsynced.borrow_mut();
        if unsynced.get(&unsynced_key) == Some(&lsn) {
            unsynced.remove(&unsynced_key);
        }
        Ok(durable?)
    }

    /// Refuses a replicated write (retryably) before it is proposed while
    /// unflushed pages or pending log bytes are over their bounds: once
    /// chosen, a command must be applied, whatever the load.
    pub fn admit_write(&self) -> Result<(), EngineError> {
        if self.over_dirty_bound() {
            return Err(EngineError::Throttled);
        }
        if self.wal.pending_bytes() > self.config.wal.pending_bytes_max / 2 {
            return Err(EngineError::Throttled);
        }
        Ok(())
    }

    /// Applies a put (`Some`) or delete (`None`) whose path is resident.
    fn apply(&self, partition: PartitionId, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut partitions = self.partitions.borrow_mut();
        let Some(p) = partitions.get_mut(&partition) else {
            // Only replay of a record for a partition the log never created
            // gets here; fault_in already reported it.
            return;
        };
        self.change_resident(&mut p.tree, key, value);
    }

    /// Puts (`Some`) or deletes (`None`) in `tree`, whose path to `key` is
    /// resident, keeping the count of dirty nodes.
    fn change_resident(&self, tree: &mut Tree, key: Vec<u8>, value: Option<Vec<u8>>) {
        let cache = self.store.cache();
        let mut freed = self.freed.borrow_mut();
        let before = tree.dirty_stats().dirty_nodes;
        let result = match value {
            Some(value) => tree.put(cache, key, value, &mut freed),
            None => tree.delete(cache, &key, &mut freed).map(|_| ()),
        };
        result.expect("the path was faulted in with no await since");
        let after = tree.dirty_stats().dirty_nodes;
        self.dirty_nodes
            .set(self.dirty_nodes.get() + after - before);
    }

    /// Whether unflushed nodes are over the bound that throttles writes.
    fn over_dirty_bound(&self) -> bool {
        self.dirty_nodes.get() * self.config.page_size > self.config.dirty_bytes_max
    }

    /// Runs `attempt` (a tree operation that stops with
    /// [`TreeError::Miss`] before changing anything) until no page it
    /// needs is missing, loading each miss.
    async fn resident<R>(
        &self,
        mut attempt: impl FnMut() -> Result<Result<R, TreeError>, EngineError>,
    ) -> Result<R, EngineError> {
        for _ in 0..FAULT_ATTEMPTS_MAX {
            match attempt()? {
                Ok(value) => return Ok(value),
                Err(TreeError::Miss(addr)) => {
                    self.store.load(addr).await?;
                }
                Err(TreeError::Corrupt(e)) => return Err(StoreError::Corrupt(e).into()),
            }
        }
        Err(EngineError::CacheThrashing)
    }

    /// Loads pages until the path to `key` in `partition` is resident.
    async fn fault_in(&self, partition: PartitionId, key: &[u8]) -> Result<(), EngineError> {
        self.resident(|| {
            let partitions = self.partitions.borrow();
            let p = partitions
                .get(&partition)
                .ok_or(EngineError::UnknownPartition(partition))?;
            Ok(p.tree.probe(self.store.cache(), key))
        })
        .await
    }

    /// Runs a read-only tree operation, loading missing pages and retrying.
    async fn read<R>(
        &self,
        partition: PartitionId,
        op: impl Fn(&Tree, &dyn Fn(PageAddr) -> Option<Rc<PageBytes>>) -> Result<R, TreeError>,
    ) -> Result<R, EngineError> {
        self.resident(|| {
            let partitions = self.partitions.borrow();
            let p = partitions
                .get(&partition)
                .ok_or(EngineError::UnknownPartition(partition))?;
            Ok(op(&p.tree, &|addr| self.store.cache().get(addr)))
        })
        .await
    }

    /// Reads the item with this key (given as its key attributes).
    pub async fn get_item(
        &self,
        partition: PartitionId,
        key: &Item,
    ) -> Result<Option<Item>, EngineError> {
        self.check_running()?;
        let key = self.schema(partition)?.key_of_key(key)?;
        self.admit_key(partition, &key)?;
        let item = self
            .read(partition, |tree, src| {
                tree.get_with(&FnSource(src), &key, Item::decode)
            })
            .await?
            .transpose()?;
        let pending = self.unsynced.borrow().get(&(partition, key)).copied();
        if let Some(lsn) = pending {
            self.wal.wait_durable(lsn).await?;
        }
        Ok(item)
    }

    /// Items with keys in `range`, in key order or reversed, at most
    /// `limit` and about [`PAGE_BYTES_MAX`], continuing after
    /// `resume_after` (a previous page's last key).
    pub async fn scan(
        &self,
        partition: PartitionId,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: usize,
        resume_after: Option<&[u8]>,
    ) -> Result<ScanPage, EngineError> {
        self.scan_bounded(
            partition,
            range,
            reverse,
            limit,
            PAGE_BYTES_MAX,
            resume_after,
        )
        .await
    }

    /// As [`Engine::scan`], with a page ending once its keys and values
    /// reach `bytes_max` (at most [`PAGE_BYTES_MAX`]; the item that
    /// crosses it is included).
    pub async fn scan_bounded(
        &self,
        partition: PartitionId,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: usize,
        bytes_max: usize,
        resume_after: Option<&[u8]>,
    ) -> Result<ScanPage, EngineError> {
        let bytes_max = bytes_max.clamp(1, PAGE_BYTES_MAX);
        self.check_running()?;
        let (mut start, mut end) = range;
        if let Some(resume) = resume_after {
            if reverse {
                end = Bound::Excluded(resume);
            } else {
                start = Bound::Excluded(resume);
            }
        }
        let range = ScanRange {
            start,
            end,
            reverse,
        };
        let (entries, cut) = self
            .read(partition, |tree, src| {
                let mut out = Vec::new();
                let cut = tree.scan_bounded(&FnSource(src), &range, limit, bytes_max, &mut out)?;
                Ok((out, cut))
            })
            .await?;
        // Wait for any not-yet-durable write among the results.
        let pending = {
            let unsynced = self.unsynced.borrow();
            entries
                .iter()
                .filter_map(|(k, _)| unsynced.get(&(partition, k.clone())))
                .max()
                .copied()
        };
        if let Some(lsn) = pending {
            self.wal.wait_durable(lsn).await?;
        }
        let last_key = if cut {
            entries.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let range = self.range(partition).unwrap_or(WHOLE_RANGE);
        let items = entries
            .iter()
            .filter(|(k, _)| in_range(range, k))
            .map(|(_, v)| Item::decode(v))
            .collect::<Result<_, _>>()?;
        Ok(ScanPage { items, last_key })
    }

    /// Whether dirty memory or WAL growth calls for a checkpoint.
    pub fn needs_checkpoint(&self) -> bool {
        self.dirty_nodes.get() * self.config.page_size >= self.config.checkpoint_dirty_bytes
            || self.wal.live_bytes() >= self.config.checkpoint_wal_bytes
    }

    /// Writes every dirty page and commits a new superblock. Concurrent
    /// calls return `None` while one is running.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointReport>, EngineError> {
        self.check_running()?;
        if self.checkpointing.replace(true) {
            return Ok(None);
        }
        let result = self.checkpoint_inner().await;
        self.checkpointing.set(false);
        if let Err(error) = &result {
            tracing::error!(%error, "checkpoint failed; stopping the engine");
            *self.stopped.borrow_mut() = Some(error.to_string());
        }
        result.map(Some)
    }

    async fn checkpoint_inner(&self) -> Result<CheckpointReport, EngineError> {
        let started = std::time::Instant::now();
        let old = self.store.superblock();
        let generation = old.generation + 1;
        let page_size = self.config.page_size;
        let cache = self.store.cache();
        // Extents replaced before this checkpoint began; freed once it commits.
        let mut to_free = std::mem::take(&mut *self.freed.borrow_mut());
        if old.catalog != PageAddr::NONE {
            to_free.push(old.catalog);
        }
        let mut written: Vec<PageAddr> = Vec::new();
        let mut slice_us_max = 0;
        // Slices: serialize a bounded number of dirty nodes (synchronously),
        // then write them (which yields, and paces the checkpoint to the
        // disk). Writers run between slices; what they dirty again is
        // written by a later slice. When a slice finds every tree clean, the
        // state is exactly the state at the applied LSN: that is the
        // checkpoint.
        let (checkpoint_lsn, catalog) = loop {
            let slice_started = std::time::Instant::now();
            let mut writes: Vec<(PageAddr, Vec<u8>)> = Vec::new();
            let mut budget = CHECKPOINT_SLICE_NODES;
            let mut clean = true;
            let mut dirty_nodes = 0;
            {
                let mut partitions = self.partitions.borrow_mut();
                let mut staging = self.staging.borrow_mut();
                let trees = partitions
                    .values_mut()
                    .map(|p| &mut p.tree)
                    .chain(staging.values_mut());
                for tree in trees {
                    clean &= tree.flush_some(&mut budget, &mut |node| {
                        let archived = archive_node(&node);
                        let addr = self.store.allocate(units_for(archived.len(), page_size));
                        writes.push((
                            addr,
                            frame(&archived, PageKind::Node, addr, generation, page_size),
                        ));
                        cache.insert(addr, Rc::new(PageBytes::trusted(archived)), true);
                        addr
                    });
                    dirty_nodes += tree.dirty_stats().dirty_nodes;
                }
            }
            self.dirty_nodes.set(dirty_nodes);
            let snapshot = clean.then(|| (self.applied_lsn.get(), self.catalog_page()));
            slice_us_max = slice_us_max.max(slice_started.elapsed().as_micros() as u64);
            written.extend(writes.iter().map(|(addr, _)| *addr));
            self.write_pages(&mut writes).await?;
            if let Some(snapshot) = snapshot {
                break snapshot;
            }
        };
        let archived = archive_catalog(&catalog);
        let catalog_addr = self.store.allocate(units_for(archived.len(), page_size));
        let catalog_page = frame(
            &archived,
            PageKind::Catalog,
            catalog_addr,
            generation,
            page_size,
        );
        self.store.write(catalog_addr, &catalog_page).await?;
        self.store.sync().await?;
        // The pages reflect every record up to the checkpoint LSN, so the
        // log must hold them durably before the superblock says so.
        self.wal.wait_durable(checkpoint_lsn).await?;
        let superblock = Superblock {
            generation,
            checkpoint_lsn,
            catalog: catalog_addr,
            page_size: page_size as u32,
        };
        self.store.commit_superblock(superblock).await?;

        // Release what the new checkpoint no longer references.
        for addr in &written {
            cache.unpin(*addr);
        }
        cache.trim();
        let pages_freed = to_free.len();
        if self.snapshot_pins.get() > 0 {
            // A snapshot's frozen tree may still read these.
            self.pinned_free.borrow_mut().append(&mut to_free);
        } else {
            to_free.append(&mut self.pinned_free.borrow_mut());
        }
        for addr in &to_free {
            self.store.free(*addr);
        }
        self.wal.retire_through(checkpoint_lsn);
        tracing::info!(
            generation,
            checkpoint_lsn,
            pages_written = written.len() + 1,
            pages_freed,
            slice_us_max,
            total_us = started.elapsed().as_micros() as u64,
            "checkpoint committed"
        );
        Ok(CheckpointReport {
            generation,
            checkpoint_lsn,
            pages_written: written.len() + 1,
            pages_freed,
        })
    }

    /// The catalog of the current (clean) trees.
    fn catalog_page(&self) -> CatalogPage {
        let partitions = self.partitions.borrow();
        let entries = partitions
            .iter()
            .map(|(id, p)| CatalogEntry {
                partition: *id,
                schema: p.schema.encode(),
                root: p.tree.root_addr().0,
                group: p.group.as_ref().map(GroupLog::to_catalog),
                range_first: p.range.0,
                range_last: p.range.1,
                bytes: p.tree.stored_bytes(),
            })
            .collect();
        CatalogPage { entries }
    }

    /// Writes framed pages as coalesced runs, several in flight.
    async fn write_pages(&self, writes: &mut [(PageAddr, Vec<u8>)]) -> Result<(), EngineError> {
        let runs = coalesce(writes, self.config.page_size, CHECKPOINT_RUN_BYTES_MAX);
        let mut in_flight = futures_util::stream::iter(runs.iter())
            .map(|(offset, bytes)| self.store.write_bytes(*offset, bytes))
            .buffer_unordered(CHECKPOINT_WRITES_IN_FLIGHT);
        while let Some(result) = in_flight.next().await {
            result?;
        }
        Ok(())
    }

    /// Background upkeep of the log (segment recycling, spares).
    pub async fn maintain(&self) -> Result<(), EngineError> {
        self.wal.maintain().await?;
        Ok(())
    }

    pub fn wal(&self) -> &Wal<Fs> {
        &self.wal
    }

    pub fn store(&self) -> &PageStore<Fs> {
        &self.store
    }
}

/// Values of applied slots a replica keeps (in memory and in checkpoints)
/// below its applied point, for lagging peers after it restarts.
pub const RETAINED_APPLIED_SLOTS: u64 = 1024;

/// A write to a partition: a single-copy one's request, or the effect of a
/// replicated one's chosen command.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    Put {
        item: &'a Item,
        condition: Option<&'a Condition>,
    },
    Delete {
        key: &'a Item,
        condition: Option<&'a Condition>,
    },
    Update {
        key: &'a Item,
        changes: &'a [UpdateAction],
        condition: Option<&'a Condition>,
    },
}

impl GroupLog {
    fn new(spec: GroupSpec) -> GroupLog {
        GroupLog {
            spec,
            durable: DurableState::default(),
            committed_through: 0,
            applied_through: 0,
            log_floor: Slot::MAX,
        }
    }

    /// The first slot whose value is kept: values of applied slots are
    /// kept only for a window below the applied point. The tree holds
    /// their effect; the window lets this replica, once restarted and
    /// leading, still ship them to a peer that lags a little.
    /// Records slot `slot` as applied and drops accepted values below the
    /// retained window.
    fn mark_applied(&mut self, slot: Slot) {
        self.applied_through = slot + 1;
        let keep_from = self.keep_from();
        if self
            .durable
            .accepted
            .first_key_value()
            .is_some_and(|(s, _)| *s < keep_from)
        {
            self.durable.accepted = self.durable.accepted.split_off(&keep_from);
        }
    }

    fn keep_from(&self) -> Slot {
        self.applied_through
            .saturating_sub(RETAINED_APPLIED_SLOTS)
            .min(self.log_floor)
    }

    /// Mirrors a promise or accepted value.
    fn record(&mut self, persist: &Persist) {
        if let Persist::Accept { slot, .. } = persist
            && *slot < self.keep_from()
        {
            return;
        }
        self.durable.apply(persist);
    }

    fn to_catalog(&self) -> CatalogGroup {
        CatalogGroup {
            spec: self.spec.to_bytes(),
            promised_round: self.durable.promised.round,
            promised_leader: self.durable.promised.leader as u64,
            committed_through: self.committed_through,
            applied_through: self.applied_through,
            accepted: self
                .durable
                .accepted
                .iter()
                .map(|(slot, (ballot, value))| {
                    let (tag, body) = value_parts(value);
                    CatalogAccepted {
                        slot: *slot,
                        round: ballot.round,
                        leader: ballot.leader as u64,
                        tag,
                        body: body.to_vec(),
                    }
                })
                .collect(),
        }
    }
}

fn group_from_catalog(group: CatalogGroup) -> Result<GroupLog, String> {
    let spec = GroupSpec::from_bytes(&group.spec).map_err(|e| e.to_string())?;
    let ballot = |round, leader: u64| -> Result<Ballot, String> {
        let leader = usize::try_from(leader).map_err(|e| e.to_string())?;
        Ok(Ballot { round, leader })
    };
    let mut durable = DurableState {
        promised: ballot(group.promised_round, group.promised_leader)?,
        accepted: BTreeMap::new(),
    };
    for entry in group.accepted {
        let value = value_from_parts(entry.tag, entry.body)
            .ok_or_else(|| format!("slot {}: an accepted value of unknown form", entry.slot))?;
        durable
            .accepted
            .insert(entry.slot, (ballot(entry.round, entry.leader)?, value));
    }
    Ok(GroupLog {
        spec,
        durable,
        committed_through: group.committed_through,
        applied_through: group.applied_through,
        log_floor: Slot::MAX,
    })
}

/// A put record's body: `key_len u32 ‖ key ‖ value`.
fn split_put(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let key = body.get(4..4 + len)?;
    Some((key, &body[4 + len..]))
}

/// Adapts a closure to [`PageSource`].
struct FnSource<'a>(&'a dyn Fn(PageAddr) -> Option<Rc<PageBytes>>);

impl PageSource for FnSource<'_> {
    fn page(&self, addr: PageAddr) -> Option<Rc<PageBytes>> {
        (self.0)(addr)
    }
}
