//! An embedded cluster for `cairn bench` without `--router`: a storage node
//! and a router in this process, on free loopback ports, with a fresh
//! self-signed certificate. The load still goes through QUIC and the
//! router, as it would against a remote cluster.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;

use anyhow::Context;
use cairn_common::quic::Identity;
use cairn_node::{NodeConfig, NodeNetwork, StorageNode};
use cairn_router::catalog::NodeAddress;
use cairn_router::dynamodb::Access;
use cairn_router::{DynamoDbEndpoint, Router, RouterConfig};

/// A running embedded cluster; dropping it stops it.
#[derive(Debug)]
pub struct EmbeddedCluster {
    // Field order is drop order: the router goes before the node.
    pub router: Router,
    pub node: StorageNode,
    pub identity: Identity,
    /// The DynamoDB endpoint and its access key, if started with one.
    pub dynamodb: Option<(SocketAddr, (String, String))>,
}

/// `count` consecutive free UDP ports on loopback.
fn free_ports(count: u16) -> anyhow::Result<u16> {
    for base in (30_000..60_000u16).step_by(count as usize + 7) {
        if (0..count).all(|offset| UdpSocket::bind(("127.0.0.1", base + offset)).is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!("no {count} consecutive free UDP ports on loopback")
}

impl EmbeddedCluster {
    pub fn start(dir: &Path, cores: usize, with_dynamodb: bool) -> anyhow::Result<EmbeddedCluster> {
        let identity = Identity::self_signed(&["localhost"]).map_err(anyhow::Error::msg)?;
        let base = free_ports(cores as u16 + 1)?;
        let node_addr: SocketAddr = format!("127.0.0.1:{}", base + 1).parse()?;
        let mut config = NodeConfig::new(dir.join("node"), cores);
        config.network = Some(NodeNetwork {
            listen: node_addr,
            identity: identity.clone(),
        });
        let node = StorageNode::start(config).context("starting the embedded node")?;
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
        let router = Router::start(RouterConfig {
            data_dir: dir.join("router"),
            listen: format!("127.0.0.1:{base}").parse()?,
            nodes: vec![NodeAddress {
                addr: node_addr,
                cores,
            }],
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
        })
        .context("starting the embedded router")?;
        Ok(EmbeddedCluster {
            router,
            node,
            identity,
            dynamodb,
        })
    }
}
