//! Running nodes and routers: `cairn node`, `cairn router`, `cairn up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_common::quic::Identity;
use cairn_node::{NodeConfig, NodeNetwork, StorageNode, shard_addr};
use cairn_router::catalog::NodeAddress;
use cairn_router::{Router, RouterConfig};

use crate::config::{self, NodeEntry, NodeFile, RouterFile};

/// Starts a storage node from its config file.
pub fn start_node(path: &Path) -> anyhow::Result<StorageNode> {
    let file: NodeFile = config::load(path)?;
    let identity = config::identity(path, &file.certificate, &file.private_key)?;
    let mut node_config = NodeConfig::new(config::resolve(path, &file.data_dir), file.cores);
    node_config.network = Some(NodeNetwork {
        listen: file.listen,
        identity,
    });
    StorageNode::start(node_config)
        .with_context(|| format!("starting the node of {}", path.display()))
}

/// Starts a router from its config file.
pub fn start_router(path: &Path) -> anyhow::Result<Router> {
    let file: RouterFile = config::load(path)?;
    let identity = config::identity(path, &file.certificate, &file.private_key)?;
    let router_config = RouterConfig {
        data_dir: config::resolve(path, &file.data_dir),
        listen: file.listen,
        nodes: file
            .nodes
            .iter()
            .map(|n| NodeAddress {
                addr: n.addr,
                cores: n.cores,
            })
            .collect(),
        identity,
        node_server_name: file.node_server_name,
        cores: file.cores,
    };
    Router::start(router_config)
        .with_context(|| format!("starting the router of {}", path.display()))
}

/// What `cairn up` started.
#[derive(Debug)]
pub struct LocalCluster {
    pub node: StorageNode,
    pub router: Router,
    pub dir: PathBuf,
    pub router_addr: SocketAddr,
}

/// Creates (or reuses) a local cluster directory with a self-signed
/// certificate and config files, and starts its node and router here.
pub fn up(dir: &Path, cores: usize, port: u16) -> anyhow::Result<LocalCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let (certificate, private_key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !certificate.exists() || !private_key.exists() {
        let (_, cert_pem, key_pem) =
            Identity::self_signed_pem(&["localhost"]).map_err(anyhow::Error::msg)?;
        std::fs::write(&certificate, cert_pem)?;
        std::fs::write(&private_key, key_pem)?;
    }
    let node_listen: SocketAddr = format!("127.0.0.1:{}", port + 100).parse()?;
    let node = NodeFile {
        data_dir: "node".into(),
        cores,
        listen: node_listen,
        certificate: "cert.pem".into(),
        private_key: "key.pem".into(),
    };
    let router = RouterFile {
        data_dir: "router".into(),
        listen: format!("127.0.0.1:{port}").parse()?,
        certificate: "cert.pem".into(),
        private_key: "key.pem".into(),
        node_server_name: "localhost".into(),
        cores: 1,
        nodes: vec![NodeEntry {
            addr: node_listen,
            cores,
        }],
    };
    let (node_path, router_path) = (dir.join("node.toml"), dir.join("router.toml"));
    std::fs::write(&node_path, toml::to_string(&node)?)?;
    std::fs::write(&router_path, toml::to_string(&router)?)?;
    let node = start_node(&node_path)?;
    let router = start_router(&router_path)?;
    Ok(LocalCluster {
        router_addr: router.addr(),
        node,
        router,
        dir,
    })
}

impl LocalCluster {
    pub fn describe(&self) -> String {
        let cores = self.node.cores();
        let first = self.router_addr.port() + 100;
        let shards = shard_addr(SocketAddr::new(self.router_addr.ip(), first), cores - 1);
        format!(
            "Cairn is up.\n  router:  {} (QUIC; server name localhost; certificate {})\n  node:    127.0.0.1:{first}..{} ({cores} shards)\n  data:    {}\n  configs: {}, {}\n",
            self.router_addr,
            self.dir.join("cert.pem").display(),
            shards.port(),
            self.dir.display(),
            self.dir.join("node.toml").display(),
            self.dir.join("router.toml").display(),
        )
    }
}
