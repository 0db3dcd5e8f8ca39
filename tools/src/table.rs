//! `cairn table create|describe|list|delete|split`: table admin through a router.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cairn_common::client::{Client, RetryPolicy};
use cairn_common::quic::{Endpoint, Identity};
use cairn_common::wire::Capacity;
use cairn_common::{KeyAttribute, KeySchema, KeyType};
use glommio::{LocalExecutorBuilder, Placement};

/// Where the router is and which certificate to trust.
#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Router address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub router: SocketAddr,
    /// The router's PEM certificate (`cairn up` writes cairn-data/cert.pem).
    #[arg(long, default_value = "cairn-data/cert.pem")]
    pub certificate: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum TableCommand {
    /// Create a table: `--partition-key NAME:TYPE [--sort-key NAME:TYPE]`, TYPE one of S, N, B.
    Create {
        name: String,
        #[arg(long)]
        partition_key: String,
        #[arg(long)]
        sort_key: Option<String>,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Provisioned read units per second (with --write-units); without
        /// both, the table is on demand.
        #[arg(long, requires = "write_units")]
        read_units: Option<u32>,
        /// Provisioned write units per second (with --read-units).
        #[arg(long, requires = "read_units")]
        write_units: Option<u32>,
        #[command(flatten)]
        router: RouterArgs,
    },
    Describe {
        name: String,
        #[command(flatten)]
        router: RouterArgs,
    },
    List {
        #[command(flatten)]
        router: RouterArgs,
    },
    Delete {
        name: String,
        #[command(flatten)]
        router: RouterArgs,
    },
    /// Split a partition of a replicated table in two at the middle of its
    /// hash range (`cairn status` lists partition ids).
    Split {
        name: String,
        /// The partition's id; without it, the table's widest partition.
        #[arg(long, value_parser = partition_id)]
        partition: Option<u64>,
        #[command(flatten)]
        router: RouterArgs,
    },
    /// Replace a partition's replica on one node by a new one on another
    /// (node and partition ids as `cairn status` lists them), as after a
    /// node was lost: the group changes its members through its log and
    /// the new replica is caught up by a snapshot (with --log, a log
    /// replica: it votes and keeps the log, holds no items and joins at
    /// once; move it again, without --log, to rebuild a full copy).
    MoveReplica {
        name: String,
        #[arg(long, value_parser = partition_id)]
        partition: u64,
        /// The node whose replica goes.
        #[arg(long)]
        from: u16,
        /// The node that takes a new replica.
        #[arg(long)]
        to: u16,
        /// Make the new replica a log replica.
        #[arg(long)]
        log: bool,
        #[command(flatten)]
        router: RouterArgs,
    },
}

/// A partition id, in decimal or as `cairn status` prints it (`0x…`).
fn partition_id(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a partition id: {e}"))
}

/// A table's capacity, for people.
pub(crate) fn capacity_text(capacity: Capacity) -> String {
    match capacity {
        Capacity::OnDemand => "on demand".into(),
        Capacity::Provisioned {
            read_units,
            write_units,
        } => format!("{read_units} read and {write_units} write units per second"),
    }
}

fn attribute(spec: &str) -> anyhow::Result<KeyAttribute> {
    let Some((name, key_type)) = spec.rsplit_once(':') else {
        bail!("key attribute {spec:?} must be NAME:TYPE with TYPE one of S, N, B");
    };
    let key_type = match key_type {
        "S" => KeyType::S,
        "N" => KeyType::N,
        "B" => KeyType::B,
        other => bail!("key type {other:?} must be S, N or B"),
    };
    if name.is_empty() {
        bail!("key attribute name must not be empty");
    }
    Ok(KeyAttribute::new(name, key_type))
}

/// Runs `body` with a client connected to the router, on a glommio executor.
pub fn with_client<T: Send + 'static>(
    router: &RouterArgs,
    body: impl AsyncFnOnce(Client) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let identity = Identity::trusting_pem_file(&router.certificate).map_err(anyhow::Error::msg)?;
    let addr = router.router;
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let client_config = identity.client_config().map_err(anyhow::Error::msg)?;
            let endpoint = Endpoint::bind("0.0.0.0:0".parse()?, None, Some(client_config))?;
            let client = Client::connect(&endpoint, addr, "localhost")
                .await
                .with_context(|| format!("connecting to the router at {addr}"))?;
            body(client).await
        })
        .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("client executor failed: {e:?}"))?
}

pub fn run(command: TableCommand) -> anyhow::Result<()> {
    match command {
        TableCommand::Create {
            name,
            partition_key,
            sort_key,
            partitions,
            read_units,
            write_units,
            router,
        } => {
            let schema = KeySchema::new(
                attribute(&partition_key)?,
                sort_key.as_deref().map(attribute).transpose()?,
            );
            let capacity = match (read_units, write_units) {
                (Some(read_units), Some(write_units)) => Capacity::Provisioned {
                    read_units,
                    write_units,
                },
                _ => Capacity::OnDemand,
            };
            with_client(&router, async move |client| {
                client
                    .create_table_with(&name, &schema, partitions, capacity)
                    .await?;
                println!(
                    "created table {name} with {partitions} partitions ({})",
                    capacity_text(capacity)
                );
                Ok(())
            })
        }
        TableCommand::Describe { name, router } => with_client(&router, async move |client| {
            let table = client.describe_table(&name).await?;
            let schema = KeySchema::decode(&table.schema)?;
            let sort = schema.sort.map_or("none".to_owned(), |s| {
                format!("{}:{}", s.name, s.key_type.name())
            });
            println!(
                "table {}: status {}, partition key {}:{}, sort key {sort}, {} partitions, {}",
                table.name,
                table.status,
                schema.partition.name,
                schema.partition.key_type.name(),
                table.partitions,
                capacity_text(table.capacity)
            );
            Ok(())
        }),
        TableCommand::List { router } => with_client(&router, async move |client| {
            for table in client.list_tables().await? {
                println!("{table}");
            }
            Ok(())
        }),
        TableCommand::Delete { name, router } => with_client(&router, async move |client| {
            client.delete_table(&name).await?;
            println!("deleted table {name}");
            Ok(())
        }),
        TableCommand::Split {
            name,
            partition,
            router,
        } => with_client(&router, async move |client| {
            client.split_partition(&name, partition).await?;
            let table = client.describe_table(&name).await?;
            println!(
                "split a partition of {name}: it has {} partitions",
                table.partitions
            );
            Ok(())
        }),
        TableCommand::MoveReplica {
            name,
            partition,
            from,
            to,
            log,
            router,
        } => with_client(&router, async move |client| {
            // Throttled while the new replica catches up: asked again.
            let patient = RetryPolicy {
                attempts: 60,
                ..RetryPolicy::default()
            };
            client
                .with_retries(patient)
                .move_replica(&name, partition, from, to, log)
                .await?;
            if log {
                println!(
                    "partition {partition} of {name}: a log replica on node {to} now stands in for its replica on node {from}"
                );
            } else {
                println!(
                    "partition {partition} of {name}: its replica on node {from} now lives on node {to}"
                );
            }
            Ok(())
        }),
    }
}
