//! An embedded cluster for `cairn bench` without `--router`: storage nodes
//! (three, one per zone, for replication 3), a MemDS, a GAC and a router
//! in this process, on free loopback ports, with a fresh self-signed certificate. The load
//! still goes through QUIC and the router, and replicas still talk QUIC to
//! each other, as they would across machines.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;

use anyhow::Context;
use cairn_common::quic::Identity;
use cairn_memds::gac::{Gac, GacConfig};
use cairn_memds::server::{Memds, MemdsConfig};
use cairn_node::{NodeConfig, NodeNetwork, StorageNode};
use cairn_router::catalog::NodeAddress;
use cairn_router::dynamodb::Access;
use cairn_router::{DynamoDbEndpoint, Router, RouterConfig};

/// A running embedded cluster; dropping it stops it.
#[derive(Debug)]
pub struct EmbeddedCluster {
    // Field order is drop order: the router goes before MemDS and the nodes.
    pub router: Router,
    pub gac: Gac,
    pub memds: Memds,
    pub nodes: Vec<StorageNode>,
    pub identity: Identity,
    /// The router's Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// The DynamoDB endpoint and its access key, if started with one.
    pub dynamodb: Option<(SocketAddr, (String, String))>,
}

/// `count` consecutive free UDP ports on loopback. The search starts at a
/// place that depends on the process id, so two benches started at once
/// (as tests do) do not both find the same range free and race for it.
fn free_ports(count: u16) -> anyhow::Result<u16> {
    let stride = count as usize + 7;
    let offset = (std::process::id() as usize * stride) % 25_000;
    for k in (0..30_000).step_by(stride) {
        let base = (30_000 + (offset + k) % 30_000) as u16;
        if base.checked_add(count).is_none() {
            continue;
        }
        if (0..count).all(|o| UdpSocket::bind(("127.0.0.1", base + o)).is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!("no {count} consecutive free UDP ports on loopback")
}

impl EmbeddedCluster {
    /// Starts `replicas` nodes (1, or 3 in zones a, b and c) of `cores`
    /// shards each, and a router that gives every table `replicas` copies.
    pub fn start(
        dir: &Path,
        cores: usize,
        with_dynamodb: bool,
        replicas: u32,
    ) -> anyhow::Result<EmbeddedCluster> {
        let identity = Identity::self_signed(&["localhost"]).map_err(anyhow::Error::msg)?;
        let node_count = replicas.max(1) as u16;
        let base = free_ports(node_count * cores as u16 + 3)?;
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for n in 0..node_count {
            let node_addr: SocketAddr =
                format!("127.0.0.1:{}", base + 1 + n * cores as u16).parse()?;
            let zone = format!("zone-{}", (b'a' + n as u8) as char);
            let data = if node_count == 1 {
                dir.join("node")
            } else {
                dir.join(format!("node-{zone}"))
            };
            let mut config = NodeConfig::new(data, cores);
            config.network = Some(NodeNetwork {
                listen: node_addr,
                identity: identity.clone(),
                peer_server_name: "localhost".into(),
            });
            let node = StorageNode::start(config)
                .with_context(|| format!("starting the embedded node in {zone}"))?;
            nodes.push(node);
            addresses.push(NodeAddress {
                addr: node_addr,
                cores,
                zone,
            });
        }
        let dynamodb = if with_dynamodb {
            // A free TCP port, and an access key for this run only.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            Some((
                SocketAddr::from(([127, 0, 0, 1], port)),
                (
                    "AKCAIRNBENCH".to_owned(),
                    format!("{:x}", std::process::id()),
                ),
            ))
        } else {
            None
        };
        let memds_addr: SocketAddr =
            format!("127.0.0.1:{}", base + 1 + node_count * cores as u16).parse()?;
        let records = addresses
            .iter()
            .enumerate()
            .map(|(id, node)| node.record(id))
            .collect();
        let mut memds_config =
            MemdsConfig::new(memds_addr, identity.clone(), records, "localhost".into());
        // A run measures a fixed layout: no split for consumption midway.
        memds_config.split.ops_per_s = None;
        let memds = Memds::start(memds_config)
            .map_err(anyhow::Error::msg)
            .context("starting the embedded MemDS")?;
        let gac_addr: SocketAddr =
            format!("127.0.0.1:{}", base + 2 + node_count * cores as u16).parse()?;
        let gac = Gac::start(GacConfig::new(gac_addr, identity.clone()))
            .map_err(anyhow::Error::msg)
            .context("starting the embedded GAC")?;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let router = Router::start(RouterConfig {
            listen: format!("127.0.0.1:{base}").parse()?,
            nodes: addresses,
            memds: vec![memds.addr()],
            gac: vec![gac.addr()],
            replicas,
            identity: identity.clone(),
            node_server_name: "localhost".into(),
            dynamodb: dynamodb
                .clone()
                .map(|(listen, (id, secret))| DynamoDbEndpoint {
                    listen,
                    access: Access {
                        keys: [(id, secret)].into_iter().collect(),
                        require_signature: true,
                    },
                }),
            cores: 1,
            metrics: Some(metrics),
        })
        .context("starting the embedded router")?;
        Ok(EmbeddedCluster {
            router,
            gac,
            metrics: Some(metrics),
            memds,
            nodes,
            identity,
            dynamodb,
        })
    }
}
