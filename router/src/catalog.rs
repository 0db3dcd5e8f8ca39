//! The router's table catalog and static partition map — the stand-in for
//! MemDS until it exists (see docs/wire-format.md, "Routing").
//!
//! A table of `P` partitions splits the 64-bit [`partition_hash`] of the
//! encoded partition key into `P` equal ranges. Partition `i` of table `t` has id
//! `t << 20 | i`. Its replicas (one, or a replication group of three) live
//! on the nodes from `(t + i) % nodes` on, one per zone where the zones
//! allow ([`placement`]), and on each node on shard `id % cores`. The catalog is one file, `catalog.db`: magic `CAIRNCAT`,
//! version u32, entry count u32, entries, then a crc32c of everything
//! before it; it is replaced atomically (write temp, fsync, rename, fsync
//! the directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_common::KeySchema;

const MAGIC: &[u8; 8] = b"CAIRNCAT";
/// Version 2 adds the table-id counter after the table count; version 3 a
/// replica count per table. Versions 1 and 2 are still read (one replica).
const VERSION: u32 = 3;
/// Most partitions a table may have.
pub const PARTITIONS_MAX: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog file {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("catalog file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub id: u32,
    pub schema: KeySchema,
    pub partitions: u32,
    /// Copies of each partition: 1, or a replication group of 3.
    pub replicas: u32,
}

impl Table {
    /// The partition index holding partition-key prefix `prefix`.
    pub fn partition_index(&self, prefix: &[u8]) -> u32 {
        ((u128::from(partition_hash(prefix)) * u128::from(self.partitions)) >> 64) as u32
    }

    pub fn partition_id(&self, index: u32) -> u64 {
        u64::from(self.id) << 20 | u64::from(index)
    }
}

/// The 64-bit hash that places a partition key: FNV-1a, then murmur3's
/// fmix64 finalizer. The index comes from the high bits, which FNV-1a alone
/// mixes poorly for short, similar keys (one of 16 partitions got a third
/// of its share in a test).
pub fn partition_hash(bytes: &[u8]) -> u64 {
    let mut hash = bytes.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^ (hash >> 33)
}

/// A storage node the router may place partitions on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// Shard 0's address; shard `i` listens on port + i.
    pub addr: SocketAddr,
    pub cores: usize,
    /// The node's availability zone: a group's replicas never share one
    /// while enough zones exist.
    pub zone: String,
}

/// The nodes that hold a partition's replicas, in replica order: walking
/// the nodes from `(table + index) % nodes`, first one node per zone not
/// yet used, then (if there are fewer zones than replicas) any other node.
pub fn placement<'a>(nodes: &'a [NodeAddress], table: &Table, index: u32) -> Vec<&'a NodeAddress> {
    let start = table.id as usize + index as usize;
    let ring = (0..nodes.len()).map(|k| &nodes[(start + k) % nodes.len()]);
    let wanted = (table.replicas as usize).min(nodes.len());
    let mut chosen: Vec<&NodeAddress> = Vec::with_capacity(wanted);
    for node in ring.clone() {
        if chosen.len() < wanted && chosen.iter().all(|c| c.zone != node.zone) {
            chosen.push(node);
        }
    }
    for node in ring {
        if chosen.len() < wanted && !chosen.iter().any(|c| std::ptr::eq(*c, node)) {
            chosen.push(node);
        }
    }
    chosen
}

/// The address of the shard that holds partition `id` on `node`.
pub fn shard_of(node: &NodeAddress, id: u64) -> SocketAddr {
    let shard = (id % node.cores as u64) as u16;
    SocketAddr::new(node.addr.ip(), node.addr.port() + shard)
}

/// All tables, persisted in `dir/catalog.db`.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    pub tables: BTreeMap<String, Table>,
    /// The next table id to hand out. It only grows: a deleted table's
    /// partitions stay on the nodes, so its id must never name another
    /// table.
    next_id: u32,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let path = dir.join("catalog.db");
        let io = |e: std::io::Error| CatalogError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (tables, next_id) = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|reason| CatalogError::Corrupt {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), 1),
            Err(e) => return Err(io(e)),
        };
        Ok(Catalog {
            path,
            tables,
            next_id,
        })
    }

    /// Takes the next table id, durably: call before creating partitions,
    /// so a creation that fails half-way never hands its id to another
    /// table.
    pub fn reserve_table_id(&mut self) -> Result<u32, CatalogError> {
        let id = self.next_id;
        self.next_id += 1;
        self.save()?;
        Ok(id)
    }

    /// Writes the catalog durably and atomically.
    pub fn save(&self) -> Result<(), CatalogError> {
        let io = |e: std::io::Error| CatalogError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&encode(&self.tables, self.next_id))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

fn encode(tables: &BTreeMap<String, Table>, next_id: u32) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tables.len() as u32).to_le_bytes());
    out.extend_from_slice(&next_id.to_le_bytes());
    for (name, table) in tables {
        let schema = table.schema.encode();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&table.id.to_le_bytes());
        out.extend_from_slice(&table.partitions.to_le_bytes());
        out.extend_from_slice(&table.replicas.to_le_bytes());
        out.extend_from_slice(&(schema.len() as u32).to_le_bytes());
        out.extend_from_slice(&schema);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<(BTreeMap<String, Table>, u32), String> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err("bad magic or too short".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    let mut at = 8;
    let u32_at = |at: &mut usize| -> Result<u32, String> {
        let value = body.get(*at..*at + 4).ok_or("truncated")?;
        *at += 4;
        Ok(u32::from_le_bytes(value.try_into().expect("4 bytes")))
    };
    let version = u32_at(&mut at)?;
    if !(1..=VERSION).contains(&version) {
        return Err(format!("unsupported version {version}"));
    }
    let count = u32_at(&mut at)?;
    let stored_next_id = if version >= 2 {
        Some(u32_at(&mut at)?)
    } else {
        None
    };
    let mut tables = BTreeMap::new();
    for _ in 0..count {
        let len = u32_at(&mut at)? as usize;
        let name = body.get(at..at + len).ok_or("truncated name")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "name is not UTF-8")?;
        at += len;
        let id = u32_at(&mut at)?;
        let partitions = u32_at(&mut at)?;
        let replicas = if version >= 3 { u32_at(&mut at)? } else { 1 };
        let len = u32_at(&mut at)? as usize;
        let schema = KeySchema::decode(body.get(at..at + len).ok_or("truncated schema")?)
            .map_err(|e| e.to_string())?;
        at += len;
        tables.insert(
            name,
            Table {
                id,
                schema,
                partitions,
                replicas,
            },
        );
    }
    if at != body.len() {
        return Err("trailing bytes".into());
    }
    let after_tables = tables.values().map(|t| t.id + 1).max().unwrap_or(1);
    let next_id = stored_next_id.unwrap_or(after_tables).max(after_tables);
    Ok((tables, next_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::{KeyAttribute, KeyType};

    fn table(id: u32, partitions: u32) -> Table {
        Table {
            id,
            schema: KeySchema::new(KeyAttribute::new("k", KeyType::S), None),
            partitions,
            replicas: 1,
        }
    }

    fn node(port: u16, zone: &str) -> NodeAddress {
        NodeAddress {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            cores: 2,
            zone: zone.into(),
        }
    }

    #[test]
    fn replicas_are_placed_in_distinct_zones() {
        let nodes = [
            node(1, "a"),
            node(2, "a"),
            node(3, "b"),
            node(4, "b"),
            node(5, "c"),
        ];
        let mut t = table(1, 64);
        t.replicas = 3;
        for index in 0..t.partitions {
            let replicas = placement(&nodes, &t, index);
            assert_eq!(replicas.len(), 3);
            let mut zones: Vec<&str> = replicas.iter().map(|n| n.zone.as_str()).collect();
            zones.sort_unstable();
            assert_eq!(zones, ["a", "b", "c"], "partition {index}");
        }
        // Fewer zones than replicas: distinct nodes still.
        let two_zones = [node(1, "a"), node(2, "a"), node(3, "b")];
        let replicas = placement(&two_zones, &t, 0);
        assert_eq!(replicas.len(), 3);
        let mut ports: Vec<u16> = replicas.iter().map(|n| n.addr.port()).collect();
        ports.sort_unstable();
        assert_eq!(ports, [1, 2, 3]);
    }

    #[test]
    fn catalog_persists_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(dir.path()).unwrap();
        catalog.tables.insert("users".into(), table(1, 8));
        catalog.tables.insert("orders".into(), table(2, 3));
        catalog.save().unwrap();
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!(reopened.tables, catalog.tables);
        let mut reopened = reopened;
        assert_eq!(reopened.reserve_table_id().unwrap(), 3);
        let path = dir.path().join("catalog.db");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            Catalog::open(dir.path()),
            Err(CatalogError::Corrupt { .. })
        ));
    }

    /// Regression: ids were the highest existing id + 1, so a table created
    /// after the newest one was deleted got its id back — and with it the
    /// old table's partitions, still on the nodes with the old key schema
    /// (found by the AWS CLI test: "item is missing key attribute user").
    #[test]
    fn table_ids_are_never_reused_after_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(dir.path()).unwrap();
        let first = catalog.reserve_table_id().unwrap();
        catalog.tables.insert("a".into(), table(first, 1));
        catalog.save().unwrap();
        catalog.tables.remove("a");
        catalog.save().unwrap();
        let mut reopened = Catalog::open(dir.path()).unwrap();
        assert!(reopened.reserve_table_id().unwrap() > first);
    }

    #[test]
    fn partitions_split_the_hash_space_evenly() {
        let t = table(1, 16);
        let mut counts = [0u32; 16];
        for i in 0..16_000u32 {
            counts[t.partition_index(format!("key{i}").as_bytes()) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }
}
