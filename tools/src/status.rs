//! `cairn status`: what MemDS serves — the map version, the registered
//! nodes, and every table with its partitions' hash ranges and replicas —
//! and, from each partition's leader, its size and load.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_common::group::NodeLinks;
use cairn_common::quic::{Connection, Endpoint, Identity};
use cairn_common::wire::{self, MemdsRequest, MemdsResponse, NodeOp, NodeRequest, Response};
use glommio::{LocalExecutorBuilder, Placement};

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// A MemDS address (`cairn up` runs them on the router's port + 90 and + 91).
    #[arg(long, default_value = "127.0.0.1:7090")]
    pub memds: SocketAddr,
    /// The cluster's PEM certificate (`cairn up` writes cairn-data/cert.pem).
    #[arg(long, default_value = "cairn-data/cert.pem")]
    pub certificate: PathBuf,
}

async fn ask(connection: &Connection, request: &MemdsRequest) -> anyhow::Result<MemdsResponse> {
    let answer = connection
        .request(&wire::encode_memds_request(request), Duration::from_secs(5))
        .await?;
    Ok(wire::decode_memds_response(&answer)?)
}

/// The report `cairn status` prints.
pub fn report(args: &StatusArgs) -> anyhow::Result<String> {
    let identity = Identity::trusting_pem_file(&args.certificate).map_err(anyhow::Error::msg)?;
    let addr = args.memds;
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let config = identity.client_config().map_err(anyhow::Error::msg)?;
            let endpoint = Endpoint::bind("0.0.0.0:0".parse()?, None, Some(config))?;
            let connection = endpoint
                .connect(addr, "localhost")
                .await
                .with_context(|| format!("connecting to MemDS at {addr}"))?;
            let MemdsResponse::Catalog {
                version,
                tables,
                nodes,
            } = ask(&connection, &MemdsRequest::Catalog { since: 0 }).await?
            else {
                bail!("MemDS at {addr} did not send its catalog");
            };
            let links = NodeLinks::new(endpoint.clone(), "localhost".into());
            let mut out = format!("map version {version} (from MemDS {addr})\n");
            let zone_of = |id: u16| {
                nodes
                    .iter()
                    .find(|n| n.id == id)
                    .map_or("?", |n| n.zone.as_str())
            };
            writeln!(out, "nodes: {}", nodes.len())?;
            for node in &nodes {
                writeln!(
                    out,
                    "  node {} at {} ({} cores, {})",
                    node.id, node.addr, node.cores, node.zone
                )?;
            }
            writeln!(out, "tables: {}", tables.len())?;
            for table in &tables {
                writeln!(
                    out,
                    "  {} (id {}): {}, {} partitions, {} replicas each, {}",
                    table.name,
                    table.id,
                    table.status,
                    table.partitions,
                    table.replicas,
                    crate::table::capacity_text(table.capacity)
                )?;
                let MemdsResponse::Located { partitions, .. } =
                    ask(&connection, &MemdsRequest::Partitions { table: table.id }).await?
                else {
                    bail!(
                        "MemDS at {addr} did not list table {}'s partitions",
                        table.name
                    );
                };
                for p in partitions {
                    // Its leader's size and load (one round trip each).
                    let addrs: Vec<SocketAddr> = p
                        .replicas
                        .iter()
                        .filter_map(|id| nodes.iter().find(|n| n.id == *id))
                        .filter_map(|n| {
                            let base: SocketAddr = n.addr.parse().ok()?;
                            let shard = p.id % u64::from(n.cores.max(1));
                            Some(SocketAddr::new(base.ip(), base.port() + shard as u16))
                        })
                        .collect();
                    let request = wire::encode_node_request(&NodeRequest {
                        partition: p.id,
                        op: NodeOp::Stats,
                        limit: None,
                    });
                    let load = match links.forward(p.id, &addrs, &request, false, false).await {
                        Response::PartitionStats {
                            bytes, ops_per_s, ..
                        } => format!("{bytes} bytes, {ops_per_s} ops/s"),
                        _ => "size unknown (no leader answered)".into(),
                    };
                    let leader = links.leader_of(p.id);
                    let replicas: Vec<String> = p
                        .replicas
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            let lead = if leader == Some(i) && p.replicas.len() > 1 {
                                ", leader"
                            } else {
                                ""
                            };
                            let log = match table.log_replicas.contains(&(p.id, *id)) {
                                true => ", log replica",
                                false => "",
                            };
                            format!("node {id} ({}{lead}{log})", zone_of(*id))
                        })
                        .collect();
                    writeln!(
                        out,
                        "    partition {:#x}: hashes {:#018x}..={:#018x}, version {}, {load}, on {}",
                        p.id,
                        p.start,
                        p.last,
                        p.version,
                        replicas.join(", ")
                    )?;
                }
            }
            Ok(out)
        })
        .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("client executor failed: {e:?}"))?
}
