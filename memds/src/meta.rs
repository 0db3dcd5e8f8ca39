//! The authoritative metadata, as items of a system table (sans-IO).
//!
//! The source of truth is one replicated partition — id [`META_PARTITION`]
//! of table [`META_TABLE`] — on the storage nodes, so it is a Multi-Paxos
//! group like any other and gets the same WAL, checkpoints and failover.
//! Its key schema is `k` (S) and `s` (S); the records are:
//!
//! | `k` | `s` | attributes |
//! |---|---|---|
//! | `counter` | `version` | `n`: the map version, bumped after every change |
//! | `counter` | `table_id` | `n`: the last table id handed out |
//! | `node` | node id, 5 digits | `addr`, `cores`, `zone` |
//! | `table` | table name | `id`, `schema`, `replicas`, `status`, `version`, `parts`, and `rcu`, `wcu` for a provisioned table, `split` while a split is under way |
//!
//! `parts` is the table's partition list and `split` a split written down
//! before the nodes make it (layouts in `docs/metadata.md`).
//! The group lives on the first nodes of the configured list, one per zone
//! ([`meta_placement`]), so every router and MemDS finds it from its config
//! alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use cairn_common::wire::{Capacity, MemberRole};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType, Number};

use crate::map::{MapError, Partition, PartitionMap, REPLICAS_MAX, Replicas};

/// The system table; user tables get ids from 1.
pub const META_TABLE: u32 = 0;
/// Its one partition.
pub const META_PARTITION: u64 = 0;
/// Most partitions a table may have.
pub const PARTITIONS_MAX: u32 = 4096;
/// A partition's id is `table << PARTITION_BITS | index`.
pub const PARTITION_BITS: u32 = cairn_common::wire::PARTITION_INDEX_BITS;
const PARTS_VERSION: u8 = 1;
const SPLIT_VERSION: u8 = 1;
const LOGS_VERSION: u8 = 1;

/// Ends an attribute's encoding (`version ‖ body`) with the crc32c of all
/// before it.
fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a sealed attribute's crc32c and version byte; returns what lies
/// between them. `what` names it in errors.
fn unseal<'a>(bytes: &'a [u8], version: u8, what: &str) -> Result<&'a [u8], String> {
    if bytes.len() < 5 {
        return Err(format!("{what} too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(format!("{what} checksum mismatch"));
    }
    if body[0] != version {
        return Err(format!("{what} version {}", body[0]));
    }
    Ok(&body[1..])
}

pub fn meta_schema() -> KeySchema {
    KeySchema::new(
        KeyAttribute::new("k", KeyType::S),
        Some(KeyAttribute::new("s", KeyType::S)),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("metadata record {record}: {reason}")]
    Malformed { record: String, reason: String },
    #[error(transparent)]
    Map(#[from] MapError),
}

fn malformed(record: &str, reason: impl Into<String>) -> MetaError {
    MetaError::Malformed {
        record: record.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStatus {
    Creating,
    Active,
    Deleting,
}

impl TableStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TableStatus::Creating => "CREATING",
            TableStatus::Active => "ACTIVE",
            TableStatus::Deleting => "DELETING",
        }
    }

    pub fn parse(text: &str) -> Option<TableStatus> {
        match text {
            "CREATING" => Some(TableStatus::Creating),
            "ACTIVE" => Some(TableStatus::Active),
            "DELETING" => Some(TableStatus::Deleting),
            _ => None,
        }
    }
}

/// A storage node, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u16,
    /// Shard 0's address; shard `i` listens on port + i.
    pub addr: SocketAddr,
    pub cores: u32,
    pub zone: String,
}

impl NodeRecord {
    /// The address of the shard that holds partition `partition`.
    pub fn shard_of(&self, partition: u64) -> SocketAddr {
        let shard = (partition % u64::from(self.cores.max(1))) as u16;
        SocketAddr::new(self.addr.ip(), self.addr.port() + shard)
    }

    pub fn to_item(&self) -> Item {
        key_item("node", &format!("{:05}", self.id))
            .with("addr", AttributeValue::S(self.addr.to_string()))
            .with("cores", number(u64::from(self.cores)))
            .with("zone", AttributeValue::S(self.zone.clone()))
    }

    pub fn from_item(item: &Item) -> Result<NodeRecord, MetaError> {
        let name = string(item, "node", "s")?;
        let id = name
            .parse()
            .map_err(|_| malformed("node", format!("id {name:?}")))?;
        let addr = string(item, "node", "addr")?;
        Ok(NodeRecord {
            id,
            addr: addr
                .parse()
                .map_err(|_| malformed("node", format!("address {addr:?}")))?,
            cores: unsigned(item, "node", "cores")? as u32,
            zone: string(item, "node", "zone")?.to_owned(),
        })
    }
}

/// A table and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRecord {
    pub name: String,
    pub id: u32,
    pub schema: KeySchema,
    pub replicas: u32,
    pub status: TableStatus,
    /// The map version of the table's last change.
    pub version: u64,
    /// Sorted by start; the first starts at 0.
    pub partitions: Vec<Partition>,
    pub capacity: Capacity,
    /// A split written into the record before the nodes were asked to
    /// make it: until it is finished (recorded) or refused, nobody plans
    /// another split of the table.
    pub splitting: Option<PendingSplit>,
    /// The log replicas among the partitions' replicas, as (partition
    /// id, node id): they hold no items, and healing replaces each with a
    /// full replica on another node.
    pub log_replicas: BTreeSet<(u64, u16)>,
}

/// `logs`: version u8 (1) ‖ count u32 ‖ per log replica (partition u64 ‖
/// node u16) ‖ crc32c u32 of all before it; little endian.
pub fn encode_logs(logs: &BTreeSet<(u64, u16)>) -> Vec<u8> {
    let mut out = vec![LOGS_VERSION];
    out.extend_from_slice(&(logs.len() as u32).to_le_bytes());
    for (partition, node) in logs {
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&node.to_le_bytes());
    }
    seal(out)
}

pub fn decode_logs(bytes: &[u8]) -> Result<BTreeSet<(u64, u16)>, String> {
    let body = unseal(bytes, LOGS_VERSION, "log replica list")?;
    if body.len() < 4 {
        return Err("log replica list too short".into());
    }
    let count = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
    let entries = &body[4..];
    if entries.len() != count * 10 {
        return Err(format!(
            "log replica list of {count} entries in {} bytes",
            entries.len()
        ));
    }
    Ok(entries
        .chunks_exact(10)
        .map(|e| {
            let partition = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            (partition, u16::from_le_bytes([e[8], e[9]]))
        })
        .collect())
}

/// A split under way: partition `parent` gives the hashes from `at` to
/// partition `child`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSplit {
    pub parent: u64,
    pub child: u64,
    pub at: u64,
}

impl PendingSplit {
    /// `split`: version u8 (1) ‖ parent u64 ‖ child u64 ‖ at u64 ‖ crc32c
    /// u32 of all before it; little endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SPLIT_VERSION];
        for field in [self.parent, self.child, self.at] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        seal(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<PendingSplit, String> {
        if bytes.len() != 29 {
            return Err(format!("pending split of {} bytes, not 29", bytes.len()));
        }
        let body = unseal(bytes, SPLIT_VERSION, "pending split")?;
        let field = |i: usize| u64::from_le_bytes(body[8 * i..8 * i + 8].try_into().expect("8"));
        Ok(PendingSplit {
            parent: field(0),
            child: field(1),
            at: field(2),
        })
    }
}

impl TableRecord {
    pub fn to_item(&self) -> Item {
        let item = match self.capacity {
            Capacity::OnDemand => key_item("table", &self.name),
            Capacity::Provisioned {
                read_units,
                write_units,
            } => key_item("table", &self.name)
                .with("rcu", number(u64::from(read_units)))
                .with("wcu", number(u64::from(write_units))),
        };
        let item = item
            .with("id", number(u64::from(self.id)))
            .with("schema", AttributeValue::B(self.schema.encode()))
            .with("replicas", number(u64::from(self.replicas)))
            .with("status", AttributeValue::S(self.status.as_str().into()))
            .with("version", number(self.version))
            .with("parts", AttributeValue::B(encode_parts(&self.partitions)));
        let item = match self.splitting {
            Some(split) => item.with("split", AttributeValue::B(split.encode())),
            None => item,
        };
        match self.log_replicas.is_empty() {
            true => item,
            false => item.with("logs", AttributeValue::B(encode_logs(&self.log_replicas))),
        }
    }

    pub fn from_item(item: &Item) -> Result<TableRecord, MetaError> {
        let name = string(item, "table", "s")?.to_owned();
        let schema = match item.get("schema") {
            Some(AttributeValue::B(bytes)) => {
                KeySchema::decode(bytes).map_err(|e| malformed(&name, format!("schema: {e}")))?
            }
            _ => return Err(malformed(&name, "no schema")),
        };
        let status = string(item, &name, "status")?;
        let parts = match item.get("parts") {
            Some(AttributeValue::B(bytes)) => {
                decode_parts(bytes).map_err(|e| malformed(&name, e))?
            }
            _ => return Err(malformed(&name, "no partitions")),
        };
        let splitting = match item.get("split") {
            None => None,
            Some(AttributeValue::B(bytes)) => {
                Some(PendingSplit::decode(bytes).map_err(|e| malformed(&name, e))?)
            }
            Some(_) => return Err(malformed(&name, "split is not binary")),
        };
        let log_replicas = match item.get("logs") {
            None => BTreeSet::new(),
            Some(AttributeValue::B(bytes)) => {
                decode_logs(bytes).map_err(|e| malformed(&name, e))?
            }
            Some(_) => return Err(malformed(&name, "logs is not binary")),
        };
        let capacity = match (item.get("rcu"), item.get("wcu")) {
            (None, None) => Capacity::OnDemand,
            _ => Capacity::Provisioned {
                read_units: u32::try_from(unsigned(item, &name, "rcu")?)
                    .map_err(|_| malformed(&name, "rcu out of range"))?,
                write_units: u32::try_from(unsigned(item, &name, "wcu")?)
                    .map_err(|_| malformed(&name, "wcu out of range"))?,
            },
        };
        Ok(TableRecord {
            capacity,
            id: unsigned(item, &name, "id")? as u32,
            schema,
            replicas: unsigned(item, &name, "replicas")? as u32,
            status: TableStatus::parse(status)
                .ok_or_else(|| malformed(&name, format!("status {status:?}")))?,
            version: unsigned(item, &name, "version")?,
            partitions: parts,
            splitting,
            log_replicas,
            name,
        })
    }
}

/// The key of a metadata record.
pub fn key_item(k: &str, s: &str) -> Item {
    Item::new()
        .with("k", AttributeValue::S(k.into()))
        .with("s", AttributeValue::S(s.into()))
}

pub fn number(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string().parse::<Number>().expect("digits parse"))
}

/// A counter record's value.
pub fn counter_value(item: &Item) -> Result<u64, MetaError> {
    unsigned(item, "counter", "n")
}

fn string<'a>(item: &'a Item, record: &str, name: &str) -> Result<&'a str, MetaError> {
    match item.get(name) {
        Some(AttributeValue::S(text)) => Ok(text),
        _ => Err(malformed(record, format!("no string {name:?}"))),
    }
}

fn unsigned(item: &Item, record: &str, name: &str) -> Result<u64, MetaError> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .to_string()
            .parse()
            .map_err(|_| malformed(record, format!("{name} = {n} is not a count"))),
        _ => Err(malformed(record, format!("no number {name:?}"))),
    }
}

/// `parts`: version u8 ‖ count u32 ‖ per partition (id u64 ‖ start u64 ‖
/// version u64 ‖ replica count u8 ‖ leader u8 (0xFF: none) ‖ node ids
/// u16…) ‖ crc32c u32 of all before it; little endian.
pub fn encode_parts(partitions: &[Partition]) -> Vec<u8> {
    let mut out = vec![PARTS_VERSION];
    out.extend_from_slice(&(partitions.len() as u32).to_le_bytes());
    for p in partitions {
        out.extend_from_slice(&p.id.to_le_bytes());
        out.extend_from_slice(&p.start.to_le_bytes());
        out.extend_from_slice(&p.version.to_le_bytes());
        out.push(p.replicas.len() as u8);
        out.push(p.leader.unwrap_or(0xFF));
        for node in p.replicas.as_slice() {
            out.extend_from_slice(&node.to_le_bytes());
        }
    }
    seal(out)
}

pub fn decode_parts(bytes: &[u8]) -> Result<Vec<Partition>, String> {
    let body = unseal(bytes, PARTS_VERSION, "partition list")?;
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = body.get(at..at + n).ok_or("partition list truncated")?;
        at += n;
        Ok(slice)
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut partitions = Vec::with_capacity(count.min(PARTITIONS_MAX) as usize);
    for _ in 0..count {
        let (id, start, version) = (u64_of(take(8)?), u64_of(take(8)?), u64_of(take(8)?));
        let header = take(2)?;
        let (len, leader) = (usize::from(header[0]), header[1]);
        if len == 0 || len > REPLICAS_MAX {
            return Err(format!("partition {id} has {len} replicas"));
        }
        let nodes: Vec<u16> = take(2 * len)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        partitions.push(Partition {
            id,
            start,
            version,
            replicas: Replicas::new(&nodes).map_err(|e| e.to_string())?,
            leader: (leader != 0xFF).then_some(leader),
        });
    }
    if at != body.len() {
        return Err("trailing bytes after the partition list".into());
    }
    Ok(partitions)
}

/// The first hashes of `count` equal ranges, on multiples of 2^32 (so the
/// compressed map stores each delta in a few bytes).
pub fn even_starts(count: u32) -> Vec<u64> {
    (0..u64::from(count))
        .map(|i| ((i << 32) / u64::from(count)) << 32)
        .collect()
}

/// The nodes for a partition's replicas: walking the nodes from `start`
/// round the ring, first one node per zone not yet used, then (with fewer
/// zones than replicas) any other node.
pub fn place(nodes: &[NodeRecord], start: usize, replicas: usize) -> Vec<u16> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let ring = (0..nodes.len()).map(|k| &nodes[(start + k) % nodes.len()]);
    let wanted = replicas.min(nodes.len());
    let mut chosen: Vec<&NodeRecord> = Vec::with_capacity(wanted);
    for node in ring.clone() {
        if chosen.len() < wanted && chosen.iter().all(|c| c.zone != node.zone) {
            chosen.push(node);
        }
    }
    for node in ring {
        if chosen.len() < wanted && !chosen.iter().any(|c| c.id == node.id) {
            chosen.push(node);
        }
    }
    chosen.iter().map(|n| n.id).collect()
}

/// The metadata group's replicas: three across zones when there are three
/// nodes, else one.
pub fn meta_placement(nodes: &[NodeRecord]) -> Vec<u16> {
    let replicas = if nodes.len() >= 3 { 3 } else { 1 };
    place(nodes, 0, replicas)
}

/// The partitions of a new table: even ranges, placed round the ring from
/// the table's id so tables spread over the nodes.
pub fn new_partitions(
    table: u32,
    count: u32,
    replicas: u32,
    version: u64,
    nodes: &[NodeRecord],
) -> Result<Vec<Partition>, MetaError> {
    even_starts(count)
        .into_iter()
        .enumerate()
        .map(|(index, start)| {
            let placed = place(nodes, table as usize + index, replicas as usize);
            Ok(Partition {
                id: u64::from(table) << PARTITION_BITS | index as u64,
                start,
                version,
                replicas: Replicas::new(&placed)?,
                leader: None,
            })
        })
        .collect()
}

/// A split the control plane is about to make: partition `index` of the
/// table (id `parent`) gives the hashes from `at` to `last` to a new
/// partition `child`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPlan {
    pub index: usize,
    pub parent: u64,
    pub at: u64,
    pub last: u64,
    pub child: u64,
}

/// Plans the split of `partition` (or, if `None`, of the table's widest
/// partition) at hash `at` (by default the middle of its range; a split
/// for consumption passes the median of the traffic). The child's id is
/// deterministic in the record and the nodes, so a split retried after a
/// crash names the same child, and the nodes answer it as done, with the
/// point it was made at.
///
/// The child's id is the parent's plus a multiple of the least common
/// multiple of its nodes' core counts: it lives on the same shard of
/// every replica (a partition is on shard `id mod cores`), where the
/// parent's items are.
pub fn plan_split(
    table: &TableRecord,
    partition: Option<u64>,
    at: Option<u64>,
    nodes: &BTreeMap<u16, NodeRecord>,
) -> Result<SplitPlan, String> {
    let parts = &table.partitions;
    let last_of = |i: usize| parts.get(i + 1).map_or(u64::MAX, |next| next.start - 1);
    let index = match partition {
        Some(id) => parts
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(|| format!("table {:?} has no partition {id}", table.name))?,
        None => (0..parts.len())
            .max_by_key(|&i| (last_of(i) - parts[i].start, std::cmp::Reverse(i)))
            .ok_or_else(|| format!("table {:?} has no partitions", table.name))?,
    };
    if parts.len() >= PARTITIONS_MAX as usize {
        return Err(format!(
            "table {:?} has {PARTITIONS_MAX} partitions, the most a table may have",
            table.name
        ));
    }
    let parent = parts[index];
    let last = last_of(index);
    if last - parent.start < 1 {
        return Err(format!("partition {} covers one hash", parent.id));
    }
    if parent.replicas.len() < 2 {
        return Err(format!(
            "partition {} has a single copy; only replicated partitions split",
            parent.id
        ));
    }
    let at = at.unwrap_or(parent.start + (last - parent.start) / 2 + 1);
    if !(parent.start < at && at <= last) {
        return Err(format!(
            "hash {at:#x} is not inside partition {}'s range after its first hash",
            parent.id
        ));
    }
    let mut step = 1u64;
    for node in parent.replicas.as_slice() {
        let cores = u64::from(
            nodes
                .get(node)
                .ok_or_else(|| format!("partition {}: node {node} is not registered", parent.id))?
                .cores
                .max(1),
        );
        step = lcm(step, cores);
    }
    let mask = (1u64 << PARTITION_BITS) - 1;
    let base = parent.id & !mask;
    let child = (1u64..)
        .map(|k| (parent.id & mask) + k * step)
        .take_while(|&index| index <= mask)
        .map(|index| base | index)
        .find(|id| {
            parts.iter().all(|p| p.id != *id) && table.splitting.is_none_or(|s| s.child != *id)
        })
        .ok_or_else(|| format!("no partition id is left for a split of {}", parent.id))?;
    Ok(SplitPlan {
        index,
        parent: parent.id,
        at,
        last,
        child,
    })
}

/// The plan of the split `table`'s record holds as under way, if any.
pub fn pending_plan(table: &TableRecord) -> Result<Option<SplitPlan>, String> {
    let Some(pending) = table.splitting else {
        return Ok(None);
    };
    let parts = &table.partitions;
    let index = parts
        .iter()
        .position(|p| p.id == pending.parent)
        .ok_or_else(|| {
            format!(
                "table {:?}: the split under way names partition {}, which it does not have",
                table.name, pending.parent
            )
        })?;
    Ok(Some(SplitPlan {
        index,
        parent: pending.parent,
        at: pending.at,
        last: parts.get(index + 1).map_or(u64::MAX, |next| next.start - 1),
        child: pending.child,
    }))
}

/// The table record after `plan`, at map version `version`: the parent's
/// entry and the child's both carry it, so a router's cache tells them
/// from the parent's older, wider entry. The split is no longer under
/// way.
pub fn split_record(table: &TableRecord, plan: &SplitPlan, version: u64) -> TableRecord {
    let mut record = table.clone();
    record.splitting = None;
    let parent = &mut record.partitions[plan.index];
    parent.version = version;
    let child = Partition {
        id: plan.child,
        start: plan.at,
        version,
        replicas: parent.replicas,
        leader: None,
    };
    record.partitions.insert(plan.index + 1, child);
    record.version = version;
    record
}

/// The table record after partition `index`'s replica on node `from`
/// was replaced by one on node `to`, at map version `version`: `from`'s
/// entry goes and `to` is appended, so the list keeps the order of the
/// group's current members by replica id, which leader hints index.
pub fn move_record(
    table: &TableRecord,
    index: usize,
    (from, to): (u16, u16),
    role: MemberRole,
    version: u64,
) -> Result<TableRecord, String> {
    let mut record = table.clone();
    let id = record.partitions[index].id;
    record.log_replicas.remove(&(id, from));
    if role == MemberRole::Log {
        record.log_replicas.insert((id, to));
    }
    let partition = &mut record.partitions[index];
    let mut nodes: Vec<u16> = partition
        .replicas
        .as_slice()
        .iter()
        .copied()
        .filter(|n| *n != from)
        .collect();
    nodes.push(to);
    partition.replicas = Replicas::new(&nodes).map_err(|e| e.to_string())?;
    partition.version = version;
    partition.leader = None;
    record.version = version;
    Ok(record)
}

fn lcm(a: u64, b: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// Everything the metadata partition holds, read at one map version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub tables: BTreeMap<String, TableRecord>,
    pub nodes: BTreeMap<u16, NodeRecord>,
}

impl Snapshot {
    /// Adds one record read from the metadata partition.
    pub fn absorb(&mut self, item: &Item) -> Result<(), MetaError> {
        match string(item, "record", "k")? {
            "counter" if string(item, "counter", "s")? == "version" => {
                self.version = counter_value(item)?;
            }
            "counter" => {}
            "node" => {
                let node = NodeRecord::from_item(item)?;
                self.nodes.insert(node.id, node);
            }
            "table" => {
                let table = TableRecord::from_item(item)?;
                self.tables.insert(table.name.clone(), table);
            }
            other => return Err(malformed(other, "unknown record kind")),
        }
        Ok(())
    }

    /// The compressed map of every active table.
    pub fn map(&self) -> Result<PartitionMap, MetaError> {
        let mut map = PartitionMap::new();
        for table in self.tables.values() {
            if table.status == TableStatus::Active {
                map.set_table(table.id, &table.partitions)?;
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u16, zone: &str) -> NodeRecord {
        NodeRecord {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id)),
            cores: 2,
            zone: zone.into(),
        }
    }

    #[test]
    fn records_round_trip_through_items() {
        let nodes = [node(0, "a"), node(1, "b"), node(2, "c")];
        let table = TableRecord {
            name: "users".into(),
            id: 7,
            schema: KeySchema::new(KeyAttribute::new("u", KeyType::S), None),
            replicas: 3,
            status: TableStatus::Active,
            version: 42,
            partitions: new_partitions(7, 5, 3, 42, &nodes).unwrap(),
            capacity: Capacity::Provisioned {
                read_units: 300,
                write_units: 100,
            },
            splitting: None,
            log_replicas: BTreeSet::new(),
        };
        let on_demand = TableRecord {
            capacity: Capacity::OnDemand,
            ..table.clone()
        };
        assert_eq!(
            TableRecord::from_item(&on_demand.to_item()).unwrap(),
            on_demand
        );
        let logs = TableRecord {
            log_replicas: BTreeSet::from([
                (table.partitions[0].id, 3),
                (table.partitions[4].id, 7),
            ]),
            ..table.clone()
        };
        assert_eq!(TableRecord::from_item(&logs.to_item()).unwrap(), logs);
        let mut bytes = encode_logs(&logs.log_replicas);
        bytes[6] ^= 1;
        assert!(decode_logs(&bytes).is_err(), "a flipped bit is caught");
        let splitting = TableRecord {
            splitting: Some(PendingSplit {
                parent: table.partitions[1].id,
                child: table.partitions[1].id + 5,
                at: table.partitions[1].start + 77,
            }),
            ..table.clone()
        };
        assert_eq!(
            TableRecord::from_item(&splitting.to_item()).unwrap(),
            splitting
        );
        let mut torn = splitting.to_item();
        let Some(AttributeValue::B(bytes)) = torn.get("split") else {
            panic!("the split is written")
        };
        let mut bytes = bytes.clone();
        bytes[9] ^= 1;
        torn = torn.with("split", AttributeValue::B(bytes));
        assert!(
            TableRecord::from_item(&torn).is_err(),
            "a corrupt split is refused"
        );
        let mut snapshot = Snapshot::default();
        for n in &nodes {
            snapshot.absorb(&n.to_item()).unwrap();
        }
        snapshot.absorb(&table.to_item()).unwrap();
        snapshot
            .absorb(&key_item("counter", "version").with("n", number(43)))
            .unwrap();
        assert_eq!(snapshot.version, 43);
        assert_eq!(snapshot.tables["users"], table);
        assert_eq!(snapshot.nodes[&1], nodes[1]);
        let map = snapshot.map().unwrap();
        assert_eq!(map.lookup(7, u64::MAX).unwrap().partition.id, 7 << 20 | 4);
        // A damaged partition list is refused, not half-read.
        let mut parts = encode_parts(&table.partitions);
        parts[10] ^= 1;
        assert!(decode_parts(&parts).unwrap_err().contains("checksum"));
        let bad = table.to_item().with("parts", AttributeValue::B(parts));
        assert!(matches!(
            TableRecord::from_item(&bad),
            Err(MetaError::Malformed { .. })
        ));
    }

    #[test]
    fn splits_halve_the_widest_range_and_keep_children_on_the_parents_shards() {
        let nodes: BTreeMap<u16, NodeRecord> = [(0, 2), (1, 3), (2, 2)]
            .into_iter()
            .map(|(id, cores)| {
                let mut n = node(id, &format!("z{id}"));
                n.cores = cores;
                (id, n)
            })
            .collect();
        let all: Vec<NodeRecord> = nodes.values().cloned().collect();
        let mut table = TableRecord {
            name: "t".into(),
            id: 7,
            schema: meta_schema(),
            replicas: 3,
            status: TableStatus::Active,
            version: 1,
            partitions: new_partitions(7, 1, 3, 1, &all).unwrap(),
            capacity: Capacity::OnDemand,
            splitting: None,
            log_replicas: BTreeSet::new(),
        };
        let mut version = 1;
        for _ in 0..20 {
            let plan = plan_split(&table, None, None, &nodes).unwrap();
            version += 1;
            let next = split_record(&table, &plan, version);
            // Same record, same plan: a retry asks for the same split.
            assert_eq!(plan_split(&table, None, None, &nodes).unwrap(), plan);
            for node in nodes.values() {
                let cores = u64::from(node.cores);
                assert_eq!(plan.child % cores, plan.parent % cores);
            }
            assert_eq!(plan.child >> PARTITION_BITS, 7);
            assert_eq!(next.partitions.len(), table.partitions.len() + 1);
            let starts: Vec<u64> = next.partitions.iter().map(|p| p.start).collect();
            assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
            assert_eq!(starts[0], 0);
            let mut ids: Vec<u64> = next.partitions.iter().map(|p| p.id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), next.partitions.len(), "ids are unique");
            // The child takes the upper half of the parent's range.
            assert!(plan.at > table.partitions[plan.index].start && plan.at <= plan.last);
            assert_eq!(next.partitions[plan.index + 1].start, plan.at);
            assert_eq!(next.partitions[plan.index + 1].version, version);
            assert!(PartitionMap::new().set_table(7, &next.partitions).is_ok());
            table = next;
        }
        // 21 partitions from one: the widest is split each time, so no
        // range is more than twice as wide as another.
        let widths: Vec<u64> = (0..table.partitions.len())
            .map(|i| {
                let last = table
                    .partitions
                    .get(i + 1)
                    .map_or(u64::MAX, |n| n.start - 1);
                last - table.partitions[i].start
            })
            .collect();
        let (min, max) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
        assert!(*max / 2 <= *min + 1, "{widths:?}");
        let single = TableRecord {
            replicas: 1,
            partitions: new_partitions(8, 1, 1, 1, &all).unwrap(),
            ..table.clone()
        };
        assert!(plan_split(&single, None, None, &nodes).is_err());
        assert!(plan_split(&table, Some(12345), None, &nodes).is_err());
        // A given point must fall inside the range, after its first hash.
        let first = table.partitions[0];
        assert!(plan_split(&table, Some(first.id), Some(first.start), &nodes).is_err());
        let at = first.start + 12345;
        let plan = plan_split(&table, Some(first.id), Some(at), &nodes).unwrap();
        assert_eq!(plan.at, at);
        // A split under way is the record's: its plan comes back whole,
        // no other plan names its child (two parents on one shard would
        // otherwise both pick it), and recording it ends it.
        assert_eq!(pending_plan(&table), Ok(None));
        let under_way = TableRecord {
            splitting: Some(PendingSplit {
                parent: plan.parent,
                child: plan.child,
                at: plan.at,
            }),
            ..table.clone()
        };
        assert_eq!(pending_plan(&under_way), Ok(Some(plan)));
        let same_shard = table
            .partitions
            .iter()
            .find(|p| {
                p.id != plan.parent
                    && plan_split(&table, Some(p.id), None, &nodes).unwrap().child == plan.child
            })
            .expect("another partition whose first choice is the same child");
        let other = plan_split(&under_way, Some(same_shard.id), None, &nodes).unwrap();
        assert_ne!(other.child, plan.child);
        assert_eq!(split_record(&under_way, &plan, 99).splitting, None);
        let lost = TableRecord {
            splitting: Some(PendingSplit {
                parent: 12345,
                ..under_way.splitting.unwrap()
            }),
            ..table.clone()
        };
        assert!(pending_plan(&lost).is_err());
    }

    #[test]
    fn new_tables_spread_over_zones_and_cover_the_hash_space() {
        let nodes = [node(0, "a"), node(1, "a"), node(2, "b"), node(3, "c")];
        let partitions = new_partitions(3, 7, 3, 1, &nodes).unwrap();
        assert_eq!(partitions[0].start, 0);
        assert!(partitions.windows(2).all(|w| w[0].start < w[1].start));
        for p in &partitions {
            let mut zones: Vec<&str> = p
                .replicas
                .as_slice()
                .iter()
                .map(|id| nodes[*id as usize].zone.as_str())
                .collect();
            zones.sort_unstable();
            assert_eq!(zones, ["a", "b", "c"]);
        }
        assert_eq!(meta_placement(&nodes[..2]), [0]);
        assert_eq!(meta_placement(&nodes).len(), 3);
        // Hashes fall in the range of the index they always had.
        let starts = even_starts(16);
        for hash in [0u64, 1 << 60, u64::MAX, 0x8000_0000_0000_0000] {
            let by_range = starts.partition_point(|s| *s <= hash) - 1;
            assert_eq!(by_range, ((u128::from(hash) * 16) >> 64) as usize);
        }
    }
}
