//! Running nodes, MemDS, GAC and routers: `cairn node`, `cairn memds`,
//! `cairn gac`, `cairn router`, `cairn up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_common::quic::Identity;
use cairn_memds::gac::{Gac, GacConfig};
use cairn_memds::server::{Memds, MemdsConfig};
use cairn_node::admission::ShardCapacity;
use cairn_node::{NodeConfig, NodeNetwork, StorageNode, shard_addr};
use cairn_router::catalog::NodeAddress;
use cairn_router::dynamodb::Access;
use cairn_router::{DynamoDbEndpoint, Router, RouterConfig};

use crate::config::{
    self, AccessKey, DynamoDbFile, GacFile, MemdsFile, NodeEntry, NodeFile, RouterFile,
};

/// MemDS processes `cairn up` runs.
const MEMDS_COUNT: u16 = 2;
/// GAC processes `cairn up` runs.
const GAC_COUNT: u16 = 2;

fn node_addresses(entries: &[NodeEntry]) -> Vec<NodeAddress> {
    entries
        .iter()
        .map(|n| NodeAddress {
            addr: n.addr,
            cores: n.cores,
            zone: n.zone.clone(),
        })
        .collect()
}

/// Starts a MemDS process from its config file.
pub fn start_memds(path: &Path) -> anyhow::Result<Memds> {
    let file: MemdsFile = config::load(path)?;
    anyhow::ensure!(
        file.balance_ratio.is_finite() && file.balance_ratio >= 1.0,
        "{}: balance_ratio must be a number of at least 1 (a multiple of the mean load), not {}",
        path.display(),
        file.balance_ratio
    );
    let identity = config::identity(path, &file.certificate, &file.private_key)?;
    let nodes = node_addresses(&file.nodes)
        .iter()
        .enumerate()
        .map(|(id, node)| node.record(id))
        .collect();
    let mut memds_config = MemdsConfig::new(file.listen, identity, nodes, file.node_server_name);
    memds_config.poll = std::time::Duration::from_millis(file.poll_ms.max(1));
    memds_config.split = cairn_memds::control::SplitBounds {
        bytes: (file.split_bytes > 0).then_some(file.split_bytes),
        ops_per_s: (file.split_ops_per_s > 0).then_some(file.split_ops_per_s),
    };
    memds_config.split_check = std::time::Duration::from_millis(file.split_check_ms.max(1));
    memds_config.heal_check = std::time::Duration::from_millis(file.heal_check_ms.max(1));
    memds_config.reap_every = std::time::Duration::from_millis(file.reap_ms.max(1));
    memds_config.heal_after =
        (file.heal_after_ms > 0).then(|| std::time::Duration::from_millis(file.heal_after_ms));
    memds_config.balance_check = (file.balance_check_ms > 0)
        .then(|| std::time::Duration::from_millis(file.balance_check_ms));
    memds_config.balance = cairn_memds::balance::Bounds {
        ratio: file.balance_ratio,
        ops_min: file.balance_ops_min,
    };
    Memds::start(memds_config)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("starting the MemDS of {}", path.display()))
}

/// Starts a GAC process from its config file.
pub fn start_gac(path: &Path) -> anyhow::Result<Gac> {
    let file: GacFile = config::load(path)?;
    let identity = config::identity(path, &file.certificate, &file.private_key)?;
    let mut gac_config = GacConfig::new(file.listen, identity);
    gac_config.period = std::time::Duration::from_millis(file.period_ms);
    Gac::start(gac_config)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("starting the GAC of {}", path.display()))
}

/// Starts a storage node from its config file.
pub fn start_node(path: &Path) -> anyhow::Result<StorageNode> {
    let file: NodeFile = config::load(path)?;
    let identity = config::identity(path, &file.certificate, &file.private_key)?;
    let mut node_config = NodeConfig::new(config::resolve(path, &file.data_dir), file.cores);
    node_config.network = Some(NodeNetwork {
        listen: file.listen,
        identity,
        peer_server_name: file.peer_server_name,
    });
    node_config.shard_capacity = match (file.shard_read_units, file.shard_write_units) {
        (None, None) => None,
        (Some(read_units), Some(write_units)) if read_units > 0 && write_units > 0 => {
            Some(ShardCapacity {
                read_units,
                write_units,
            })
        }
        _ => anyhow::bail!(
            "{}: shard_read_units and shard_write_units go together, each at least 1",
            path.display()
        ),
    };
    node_config.metrics = file.metrics;
    if let Some(retained) = file.retained_slots {
        anyhow::ensure!(
            retained >= 1,
            "{}: retained_slots must be at least 1",
            path.display()
        );
        node_config.replication.retained_slots = retained;
    }
    StorageNode::start(node_config)
        .with_context(|| format!("starting the node of {}", path.display()))
}

/// Starts a router from its config file.
pub fn start_router(path: &Path) -> anyhow::Result<Router> {
    let file: RouterFile = config::load(path)?;
    let identity = config::identity(path, &file.certificate, &file.private_key)?;
    let router_config = RouterConfig {
        listen: file.listen,
        nodes: node_addresses(&file.nodes),
        memds: file.memds.clone(),
        gac: file.gac.clone(),
        replicas: file.replication,
        identity,
        node_server_name: file.node_server_name,
        cores: file.cores,
        metrics: file.metrics,
        dynamodb: file.dynamodb.map(|d| DynamoDbEndpoint {
            listen: d.listen,
            access: Access {
                keys: d
                    .access_keys
                    .into_iter()
                    .map(|k| (k.id, k.secret))
                    .collect(),
                require_signature: d.require_signature,
            },
        }),
    };
    Router::start(router_config)
        .with_context(|| format!("starting the router of {}", path.display()))
}

/// The cluster's access key: generated once, kept in `access-key.toml`.
fn access_key(dir: &Path) -> anyhow::Result<AccessKey> {
    let path = dir.join("access-key.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return toml::from_str(&text).with_context(|| format!("parsing {}", path.display()));
    }
    // Independent draws: nothing of the secret shows in the id.
    let key = AccessKey {
        id: format!("AKCAIRN{}", random_letters(13)?),
        secret: random_letters(40)?,
    };
    std::fs::write(&path, toml::to_string(&key)?)?;
    Ok(key)
}

/// `count` letters from the kernel's CSPRNG (32 symbols: 5 bits each).
fn random_letters(count: usize) -> anyhow::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut random = vec![0u8; count];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random
        .iter()
        .map(|b| ALPHABET[(*b % 32) as usize] as char)
        .collect())
}

/// What `cairn up` started.
#[derive(Debug)]
pub struct LocalCluster {
    pub nodes: Vec<StorageNode>,
    pub memds: Vec<Memds>,
    pub gac: Vec<Gac>,
    pub router: Router,
    pub dir: PathBuf,
    pub router_addr: SocketAddr,
    pub dynamodb: Option<(SocketAddr, AccessKey)>,
    pub metrics: Option<SocketAddr>,
    /// Each node's metrics endpoint.
    pub node_metrics: Vec<SocketAddr>,
    /// Copies of each partition.
    pub replication: u32,
}

/// Most nodes `cairn up` runs (a zone, and a metrics port from the
/// router's + 80, each).
pub const NODES_MAX: u16 = 10;

/// Creates (or reuses) a local cluster directory with a self-signed
/// certificate and config files, and starts its nodes (`nodes`, but at
/// least `replication`, each in a zone of its own), two MemDS processes, two
/// GAC processes and a router here.
pub fn up(
    dir: &Path,
    cores: usize,
    port: u16,
    replication: u32,
    nodes: u16,
) -> anyhow::Result<LocalCluster> {
    let files = write_files(dir, cores, port, replication, nodes)?;
    let nodes = files
        .nodes
        .iter()
        .map(|path| start_node(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let memds = files
        .memds
        .iter()
        .map(|path| start_memds(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gac = files
        .gac
        .iter()
        .map(|path| start_gac(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let router_process = start_router(&files.router)?;
    Ok(LocalCluster {
        metrics: files.metrics,
        node_metrics: files.node_metrics,
        router_addr: router_process.addr(),
        nodes,
        memds,
        gac,
        router: router_process,
        dir: files.dir,
        dynamodb: files.dynamodb,
        replication,
    })
}

/// The config files [`write_files`] wrote, and what they say.
#[derive(Debug)]
pub struct ClusterFiles {
    pub dir: PathBuf,
    pub nodes: Vec<PathBuf>,
    pub memds: Vec<PathBuf>,
    pub gac: Vec<PathBuf>,
    pub router: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub node_metrics: Vec<SocketAddr>,
    pub dynamodb: Option<(SocketAddr, AccessKey)>,
}

/// Creates (or reuses) a local cluster directory with a self-signed
/// certificate, and writes the config files of its processes (what
/// [`up`] then starts; `cairn up --write-only` stops here).
pub fn write_files(
    dir: &Path,
    cores: usize,
    port: u16,
    replication: u32,
    nodes: u16,
) -> anyhow::Result<ClusterFiles> {
    anyhow::ensure!(nodes <= NODES_MAX, "--nodes must be at most {NODES_MAX}");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let (certificate, private_key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !certificate.exists() || !private_key.exists() {
        let (_, cert_pem, key_pem) =
            Identity::self_signed_pem(&["localhost"]).map_err(anyhow::Error::msg)?;
        std::fs::write(&certificate, cert_pem)?;
        std::fs::write(&private_key, key_pem)?;
    }
    let node_count = (replication.max(1) as u16).max(nodes);
    let mut node_files = Vec::new();
    let mut entries = Vec::new();
    for n in 0..node_count {
        let listen: SocketAddr = format!("127.0.0.1:{}", port + 100 + n * cores as u16).parse()?;
        let zone = format!("zone-{}", (b'a' + n as u8) as char);
        let name = if node_count == 1 {
            "node".to_owned()
        } else {
            format!("node-{zone}")
        };
        node_files.push((
            dir.join(format!("{name}.toml")),
            NodeFile {
                data_dir: name.into(),
                cores,
                listen,
                certificate: "cert.pem".into(),
                private_key: "key.pem".into(),
                peer_server_name: "localhost".into(),
                shard_read_units: None,
                shard_write_units: None,
                retained_slots: None,
                metrics: Some(format!("127.0.0.1:{}", port + 80 + n).parse()?),
            },
        ));
        entries.push(NodeEntry {
            addr: listen,
            cores,
            zone,
        });
    }
    let memds_files: Vec<(PathBuf, MemdsFile)> = (0..MEMDS_COUNT)
        .map(|m| {
            let listen: SocketAddr = format!("127.0.0.1:{}", port + 90 + m).parse()?;
            Ok((
                dir.join(format!("memds-{}.toml", m + 1)),
                MemdsFile {
                    listen,
                    certificate: "cert.pem".into(),
                    private_key: "key.pem".into(),
                    node_server_name: "localhost".into(),
                    poll_ms: 50,
                    split_bytes: cairn_memds::server::SPLIT_BYTES_DEFAULT,
                    split_ops_per_s: cairn_memds::server::SPLIT_OPS_DEFAULT,
                    split_check_ms: 10_000,
                    heal_after_ms: cairn_memds::server::HEAL_AFTER_DEFAULT.as_millis() as u64,
                    heal_check_ms: cairn_memds::server::HEAL_CHECK_DEFAULT.as_millis() as u64,
                    reap_ms: cairn_memds::server::REAP_EVERY_DEFAULT.as_millis() as u64,
                    balance_check_ms: cairn_memds::server::BALANCE_CHECK_DEFAULT.as_millis() as u64,
                    balance_ratio: cairn_memds::balance::BOUNDS_DEFAULT.ratio,
                    balance_ops_min: cairn_memds::balance::BOUNDS_DEFAULT.ops_min,
                    nodes: entries.clone(),
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let gac_files: Vec<(PathBuf, GacFile)> = (0..GAC_COUNT)
        .map(|g| {
            let listen: SocketAddr = format!("127.0.0.1:{}", port + 95 + g).parse()?;
            Ok((
                dir.join(format!("gac-{}.toml", g + 1)),
                GacFile {
                    listen,
                    certificate: "cert.pem".into(),
                    private_key: "key.pem".into(),
                    period_ms: 1000,
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let router = RouterFile {
        memds: memds_files.iter().map(|(_, f)| f.listen).collect(),
        gac: gac_files.iter().map(|(_, f)| f.listen).collect(),
        metrics: Some(format!("127.0.0.1:{}", port + 2).parse()?),
        listen: format!("127.0.0.1:{port}").parse()?,
        certificate: "cert.pem".into(),
        private_key: "key.pem".into(),
        node_server_name: "localhost".into(),
        cores: 1,
        dynamodb: Some(DynamoDbFile {
            listen: format!("127.0.0.1:{}", port + 1).parse()?,
            require_signature: true,
            access_keys: vec![access_key(&dir)?],
        }),
        nodes: entries,
        replication,
    };
    let router_path = dir.join("router.toml");
    for (path, file) in &node_files {
        std::fs::write(path, toml::to_string(file)?)?;
    }
    for (path, file) in &memds_files {
        std::fs::write(path, toml::to_string(file)?)?;
    }
    for (path, file) in &gac_files {
        std::fs::write(path, toml::to_string(file)?)?;
    }
    std::fs::write(&router_path, toml::to_string(&router)?)?;
    Ok(ClusterFiles {
        nodes: node_files.iter().map(|(path, _)| path.clone()).collect(),
        memds: memds_files.iter().map(|(path, _)| path.clone()).collect(),
        gac: gac_files.iter().map(|(path, _)| path.clone()).collect(),
        router: router_path,
        metrics: router.metrics,
        node_metrics: node_files.iter().filter_map(|(_, f)| f.metrics).collect(),
        dynamodb: router
            .dynamodb
            .as_ref()
            .and_then(|d| d.access_keys.first().map(|k| (d.listen, k.clone()))),
        dir,
    })
}

impl LocalCluster {
    pub fn describe(&self) -> String {
        let mut out = format!(
            "Cairn is up.\n  router:  {} (QUIC; server name localhost; certificate {})\n",
            self.router_addr,
            self.dir.join("cert.pem").display(),
        );
        let mut first = self.router_addr.port() + 100;
        for (n, node) in self.nodes.iter().enumerate() {
            let cores = node.cores();
            let last = shard_addr(SocketAddr::new(self.router_addr.ip(), first), cores - 1);
            out += &format!(
                "  node {n}: 127.0.0.1:{first}..{} ({cores} shards, zone-{})\n",
                last.port(),
                (b'a' + n as u8) as char
            );
            first += cores as u16;
        }
        let replicas = if self.replication > 1 {
            format!("{} (Multi-Paxos across zones)", self.replication)
        } else {
            "1".to_owned()
        };
        for (m, memds) in self.memds.iter().enumerate() {
            out += &format!("  MemDS {}: {}\n", m + 1, memds.addr());
        }
        for (g, gac) in self.gac.iter().enumerate() {
            out += &format!("  GAC {}:   {}\n", g + 1, gac.addr());
        }
        if let Some(addr) = self.metrics {
            out += &format!("  metrics: http://{addr}/metrics (Prometheus; the router's)\n");
        }
        let nodes_metrics = self
            .node_metrics
            .iter()
            .map(|addr| format!("http://{addr}/metrics"))
            .collect::<Vec<_>>()
            .join(", ");
        out += &format!("  node metrics: {nodes_metrics}\n");
        out += &format!(
            "  replicas per partition: {replicas}\n  data:    {}\n  configs: {}/*.toml\n",
            self.dir.display(),
            self.dir.display(),
        );
        out + &match &self.dynamodb {
            Some((addr, key)) => format!(
                "  DynamoDB endpoint: http://{addr}\n    aws_access_key_id = {}\n    aws_secret_access_key = {}\n",
                key.id, key.secret
            ),
            None => String::new(),
        }
    }
}
