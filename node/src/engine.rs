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

use crate::btree::{PageSource, ScanRange, Tree, TreeError};
use crate::device::FileSystem;
use crate::page::{
    CatalogEntry, CatalogPage, PageAddr, PageBytes, PageKind, archive_catalog, archive_node, frame,
    units_for,
};
use crate::store::{PageStore, StoreError, Superblock};
use crate::wal::{Lsn, Record, RecoveryReport, Wal, WalConfig, WalError};

/// A partition's identity on a node.
pub type PartitionId = u64;

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
            checkpoint_dirty_bytes: 8 << 20,
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
}

impl EngineError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Throttled | EngineError::Wal(WalError::Throttled { .. })
        )
    }
}

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
}

/// Logical WAL records.
mod record {
    pub const CREATE_PARTITION: u8 = 1;
    pub const PUT: u8 = 2;
    pub const DELETE: u8 = 3;
}

/// Most dirty nodes a checkpoint serializes before it yields: bounds the
/// time a checkpoint holds the core (about a millisecond).
const CHECKPOINT_SLICE_NODES: usize = 64;
/// A checkpoint writes contiguous pages as one IO of at most this size…
const CHECKPOINT_RUN_BYTES_MAX: usize = 1 << 20;
/// …with this many IOs in flight.
const CHECKPOINT_WRITES_IN_FLIGHT: usize = 8;

/// Sorts framed pages by address and joins neighbours into runs of at most
/// `run_bytes_max`: (byte offset, bytes) per run.
fn coalesce(
    writes: &mut [(PageAddr, Vec<u8>)],
    page_size: usize,
    run_bytes_max: usize,
) -> Vec<(u64, Vec<u8>)> {
    writes.sort_by_key(|(addr, _)| *addr);
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next_unit = None;
    for (addr, page) in writes.iter() {
        let offset = addr.first_unit() * page_size as u64;
        match runs.last_mut() {
            Some((_, run))
                if next_unit == Some(addr.first_unit())
                    && run.len() + page.len() <= run_bytes_max =>
            {
                run.extend_from_slice(page);
            }
            _ => runs.push((offset, page.clone())),
        }
        next_unit = Some(addr.first_unit() + addr.units());
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
}

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
            let schema = KeySchema::decode(&entry.schema).map_err(|e| {
                StoreError::Corrupt(crate::page::PageError::Corrupt {
                    addr: superblock.catalog.0,
                    reason: e.to_string(),
                })
            })?;
            store.reachable(PageAddr(entry.root), &mut used).await?;
            let tree = Tree::with_root(PageAddr(entry.root), config.page_size);
            partitions.insert(entry.partition, Partition { schema, tree });
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
                    .insert(record.partition, Partition { schema, tree });
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

    fn check_running(&self) -> Result<(), EngineError> {
        match &*self.stopped.borrow() {
            Some(reason) => Err(EngineError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// Creates an empty partition with the given key schema, durably.
    pub async fn create_partition(
        &self,
        partition: PartitionId,
        schema: KeySchema,
    ) -> Result<(), EngineError> {
        self.check_running()?;
        if self.partitions.borrow().contains_key(&partition) {
            return Err(EngineError::PartitionExists(partition));
        }
        let mut payload = vec![record::CREATE_PARTITION];
        payload.extend_from_slice(&schema.encode());
        let lsn = self.wal.submit(partition, payload)?;
        let tree = Tree::new(self.config.page_size);
        self.partitions
            .borrow_mut()
            .insert(partition, Partition { schema, tree });
        self.applied_lsn.set(lsn);
        self.wal.wait_durable(lsn).await?;
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
        let key = self.schema(partition)?.key_of_item(item)?;
        self.mutate(partition, key, condition, |_| Ok(Some(item.clone())))
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
        let schema = self.schema(partition)?;
        let encoded_key = schema.key_of_key(key)?;
        for action in changes {
            let name = action.attribute();
            let is_key = *name == schema.partition.name
                || schema.sort.as_ref().is_some_and(|s| *name == s.name);
            if is_key {
                return Err(ItemError::KeyAttributeUpdate {
                    name: name.to_owned(),
                }
                .into());
            }
        }
        let updated = self
            .mutate(partition, encoded_key, condition, |current| {
                let mut item = current.unwrap_or_else(|| key.clone());
                cairn_common::update::apply(&mut item, changes)?;
                item.validate()?;
                Ok(Some(item))
            })
            .await?;
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
        let key = self.schema(partition)?.key_of_key(key)?;
        self.mutate(partition, key, condition, |_| Ok(None))
            .await
            .map(|_| ())
    }

    /// Reads the current item under `key`, checks `condition` on it, and
    /// writes what `change` makes of it (`None` deletes) — with no await
    /// between the read and the log submit, so it is atomic on this core.
    /// Returns the new item.
    async fn mutate(
        &self,
        partition: PartitionId,
        key: Vec<u8>,
        condition: Option<&Condition>,
        change: impl FnOnce(Option<Item>) -> Result<Option<Item>, EngineError>,
    ) -> Result<Option<Item>, EngineError> {
        self.check_running()?;
        if self.dirty_nodes.get() * self.config.page_size > self.config.dirty_bytes_max {
            return Err(EngineError::Throttled);
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
        let new = change(current)?;
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
        Ok(new)
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
        if self.dirty_nodes.get() * self.config.page_size > self.config.dirty_bytes_max {
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

    /// Applies a put (`Some`) or delete (`None`) whose path is resident.
    fn apply(&self, partition: PartitionId, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut partitions = self.partitions.borrow_mut();
        let Some(p) = partitions.get_mut(&partition) else {
            // Only replay of a record for a partition the log never created
            // gets here; fault_in already reported it.
            return;
        };
        let cache = self.store.cache();
        let mut freed = self.freed.borrow_mut();
        let before = p.tree.dirty_stats().dirty_nodes;
        let result = match value {
            Some(value) => p.tree.put(cache, key, value, &mut freed),
            None => p.tree.delete(cache, &key, &mut freed).map(|_| ()),
        };
        result.expect("the path was faulted in with no await since");
        let after = p.tree.dirty_stats().dirty_nodes;
        self.dirty_nodes
            .set(self.dirty_nodes.get() + after - before);
    }

    /// Loads pages until the path to `key` in `partition` is resident.
    async fn fault_in(&self, partition: PartitionId, key: &[u8]) -> Result<(), EngineError> {
        for _ in 0..FAULT_ATTEMPTS_MAX {
            let probe = {
                let partitions = self.partitions.borrow();
                let p = partitions
                    .get(&partition)
                    .ok_or(EngineError::UnknownPartition(partition))?;
                p.tree.probe(self.store.cache(), key)
            };
            match probe {
                Ok(()) => return Ok(()),
                Err(TreeError::Miss(addr)) => {
                    self.store.load(addr).await?;
                }
                Err(TreeError::Corrupt(e)) => return Err(StoreError::Corrupt(e).into()),
            }
        }
        Err(EngineError::CacheThrashing)
    }

    /// Runs a read-only tree operation, loading missing pages and retrying.
    async fn read<R>(
        &self,
        partition: PartitionId,
        op: impl Fn(&Tree, &dyn Fn(PageAddr) -> Option<Rc<PageBytes>>) -> Result<R, TreeError>,
    ) -> Result<R, EngineError> {
        for _ in 0..FAULT_ATTEMPTS_MAX {
            let result = {
                let partitions = self.partitions.borrow();
                let p = partitions
                    .get(&partition)
                    .ok_or(EngineError::UnknownPartition(partition))?;
                op(&p.tree, &|addr| self.store.cache().get(addr))
            };
            match result {
                Ok(value) => return Ok(value),
                Err(TreeError::Miss(addr)) => {
                    self.store.load(addr).await?;
                }
                Err(TreeError::Corrupt(e)) => return Err(StoreError::Corrupt(e).into()),
            }
        }
        Err(EngineError::CacheThrashing)
    }

    /// Reads the item with this key (given as its key attributes).
    pub async fn get_item(
        &self,
        partition: PartitionId,
        key: &Item,
    ) -> Result<Option<Item>, EngineError> {
        self.check_running()?;
        let key = self.schema(partition)?.key_of_key(key)?;
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
    /// `limit`, continuing after `resume_after` (a previous page's last key).
    pub async fn scan(
        &self,
        partition: PartitionId,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: usize,
        resume_after: Option<&[u8]>,
    ) -> Result<ScanPage, EngineError> {
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
                let cut = tree.scan(&FnSource(src), &range, limit, &mut out)?;
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
        let items = entries
            .iter()
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
            for partition in self.partitions.borrow_mut().values_mut() {
                clean &= partition.tree.flush_some(&mut budget, &mut |node| {
                    let archived = archive_node(&node);
                    let addr = self.store.allocate(units_for(archived.len(), page_size));
                    writes.push((
                        addr,
                        frame(&archived, PageKind::Node, addr, generation, page_size),
                    ));
                    cache.insert(addr, Rc::new(PageBytes::trusted(archived)), true);
                    addr
                });
                dirty_nodes += partition.tree.dirty_stats().dirty_nodes;
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
        for addr in &to_free {
            self.store.free(*addr);
        }
        self.wal.retire_through(checkpoint_lsn);
        tracing::info!(
            generation,
            checkpoint_lsn,
            pages_written = written.len() + 1,
            pages_freed = to_free.len(),
            slice_us_max,
            total_us = started.elapsed().as_micros() as u64,
            "checkpoint committed"
        );
        Ok(CheckpointReport {
            generation,
            checkpoint_lsn,
            pages_written: written.len() + 1,
            pages_freed: to_free.len(),
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
