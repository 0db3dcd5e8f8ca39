//! Configuration files of `cairn node`, `cairn memds` and `cairn router`
//! (TOML). The format is documented in docs/configuration.md; `cairn up`
//! writes a working example of each into its directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_common::quic::Identity;
use serde::{Deserialize, Serialize};

/// `cairn node --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Where the node keeps its data (one directory per core inside).
    pub data_dir: PathBuf,
    /// Cores (shards) to run.
    pub cores: usize,
    /// Shard 0 listens here; shard i on port + i.
    pub listen: SocketAddr,
    /// PEM certificate this node presents.
    pub certificate: PathBuf,
    /// PEM (PKCS#8) private key of the certificate.
    pub private_key: PathBuf,
    /// The name peer nodes' certificates are issued for (replication).
    #[serde(default = "localhost")]
    pub peer_server_name: String,
    /// What each shard may serve, in read and write units per second,
    /// whatever its partitions' limits; both or neither (unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_read_units: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_write_units: Option<u32>,
    /// Chosen values each replication group keeps in memory for peers
    /// that lag (default 20 000); a peer further behind gets a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_slots: Option<u64>,
    /// Serve the node's Prometheus metrics here (TCP, `GET /metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

/// One node as routers and MemDS see it. Every router and MemDS must list
/// the cluster's nodes in the same order: the order gives node ids, and
/// the first nodes (one per zone) hold the metadata group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub addr: SocketAddr,
    pub cores: usize,
    /// Availability zone; a partition's replicas go to distinct zones.
    #[serde(default = "default_zone")]
    pub zone: String,
}

fn default_zone() -> String {
    "zone-a".into()
}

fn one_replica() -> u32 {
    1
}

/// `cairn router --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    /// Clients connect here.
    pub listen: SocketAddr,
    /// PEM certificate presented to clients and trusted on node connections.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The name the nodes' certificate is issued for.
    #[serde(default = "localhost")]
    pub node_server_name: String,
    /// Router executors (one per core), sharing the listen port.
    #[serde(default = "one")]
    pub cores: usize,
    pub nodes: Vec<NodeEntry>,
    /// MemDS processes, for partition lookups and the table catalog.
    pub memds: Vec<SocketAddr>,
    /// GAC processes holding tables' limits across routers; none: nodes
    /// hold each partition to its even share alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gac: Vec<SocketAddr>,
    /// Copies of each partition of new tables: 1, or 3 (a Multi-Paxos group
    /// across zones).
    #[serde(default = "one_replica")]
    pub replication: u32,
    /// Prometheus scrapes consumed capacity and throttles here (TCP,
    /// `GET /metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// The DynamoDB-compatible HTTP endpoint (docs/dynamodb-api.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamodb: Option<DynamoDbFile>,
}

/// `cairn memds --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemdsFile {
    /// Routers connect here.
    pub listen: SocketAddr,
    /// PEM certificate presented to routers and trusted on node
    /// connections.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    #[serde(default = "localhost")]
    pub node_server_name: String,
    /// How often the map version is read, in milliseconds.
    #[serde(default = "fifty")]
    pub poll_ms: u64,
    /// Split a replicated partition above this many bytes of keys and
    /// items (default 10 GiB; 0: never).
    #[serde(default = "split_bytes")]
    pub split_bytes: u64,
    /// Split a replicated partition serving more than this many
    /// operations per second in two checks in a row, at the median of its
    /// traffic (default 3000; 0: never).
    #[serde(default = "split_ops")]
    pub split_ops_per_s: u64,
    /// How often partition sizes and loads are checked, in milliseconds.
    #[serde(default = "ten_thousand")]
    pub split_check_ms: u64,
    /// A node silent this many milliseconds is down, and its replicas
    /// move to live nodes (default 1500; 0: never).
    #[serde(default = "heal_after_ms")]
    pub heal_after_ms: u64,
    /// How often every node is probed, in milliseconds (default 250).
    #[serde(default = "heal_check_ms")]
    pub heal_check_ms: u64,
    /// How often the nodes are searched for replicas of deleted tables,
    /// in milliseconds (default 30 000).
    #[serde(default = "reap_ms")]
    pub reap_ms: u64,
    /// How often node loads are compared, to move a replica off a node
    /// serving more than half again the mean (and at least 1 000
    /// operations per second), in milliseconds (default 10 000; 0: never).
    /// Runs with healing only.
    #[serde(default = "ten_thousand")]
    pub balance_check_ms: u64,
    /// A node is hot above this many times the mean load (default 1.5)…
    #[serde(default = "balance_ratio")]
    pub balance_ratio: f64,
    /// …and this many operations per second (default 1000).
    #[serde(default = "balance_ops_min")]
    pub balance_ops_min: u64,
    pub nodes: Vec<NodeEntry>,
}

fn heal_after_ms() -> u64 {
    cairn_memds::server::HEAL_AFTER_DEFAULT.as_millis() as u64
}

fn reap_ms() -> u64 {
    cairn_memds::server::REAP_EVERY_DEFAULT.as_millis() as u64
}

fn heal_check_ms() -> u64 {
    cairn_memds::server::HEAL_CHECK_DEFAULT.as_millis() as u64
}

fn split_bytes() -> u64 {
    cairn_memds::server::SPLIT_BYTES_DEFAULT
}

fn split_ops() -> u64 {
    cairn_memds::server::SPLIT_OPS_DEFAULT
}

fn balance_ratio() -> f64 {
    cairn_memds::balance::BOUNDS_DEFAULT.ratio
}

fn balance_ops_min() -> u64 {
    cairn_memds::balance::BOUNDS_DEFAULT.ops_min
}

fn ten_thousand() -> u64 {
    10_000
}

fn fifty() -> u64 {
    50
}

/// `cairn gac --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GacFile {
    /// Routers connect here.
    pub listen: SocketAddr,
    /// PEM certificate presented to routers.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// How often routers ask for tokens, and how long a grant lasts, in
    /// milliseconds.
    #[serde(default = "thousand")]
    pub period_ms: u64,
}

fn thousand() -> u64 {
    1000
}

/// `[dynamodb]` in a router's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbFile {
    /// TCP address of the HTTP endpoint.
    pub listen: SocketAddr,
    /// Refuse requests not signed (SigV4) with one of `access_keys`.
    #[serde(default = "yes")]
    pub require_signature: bool,
    #[serde(default)]
    pub access_keys: Vec<AccessKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

fn localhost() -> String {
    "localhost".to_owned()
}

/// Reads and parses a TOML file, naming it in every error.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Relative paths in a config file are relative to the file.
pub fn resolve(config: &Path, path: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

pub fn identity(config: &Path, certificate: &Path, private_key: &Path) -> anyhow::Result<Identity> {
    Identity::from_pem_files(&resolve(config, certificate), &resolve(config, private_key))
        .map_err(anyhow::Error::msg)
}
