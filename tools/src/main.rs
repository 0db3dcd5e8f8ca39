//! `cairn`: the operator's binary.

mod cluster;
mod config;
mod status;
mod table;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Per-thread free lists without glibc's consolidation passes: the request
/// path allocates and frees many small buffers per request on every core.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v3; the `-sys` crate
/// names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of giving it back to the kernel a
/// second later. A node frees and allocates page-sized buffers at every
/// checkpoint; with purging, each reuse faulted in (and the kernel zeroed)
/// fresh transparent huge pages: about a tenth of a node's CPU under a
/// write load. The node's memory is bounded by its own caches and dirty
/// limits, so holding on to the peak costs nothing it would not use again.
fn keep_freed_memory() {
    // SAFETY: sets an allocator option; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a DynamoDB-style database for bare-metal Linux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load a YCSB table and run a workload; prints throughput and latency
    /// percentiles per operation. Without --router it starts a local
    /// cluster in this process.
    Bench(cairn_bench::BenchArgs),
    /// Start a local cluster (three nodes in three zones, two MemDS and a
    /// router, or one node with --replication 1) in this process and print
    /// its endpoint; runs until interrupted.
    Up {
        /// Directory for data, certificate and generated config files.
        #[arg(long, default_value = "cairn-data")]
        dir: PathBuf,
        /// Node cores (shards).
        #[arg(long, default_value_t = 2)]
        cores: usize,
        /// Router port; the nodes listen on port + 100 and up.
        #[arg(long, default_value_t = 7000)]
        port: u16,
        /// Copies of each partition: 3 (three nodes in three zones, a
        /// Multi-Paxos group per partition) or 1 (one node).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
        replication: u32,
        /// Storage nodes, each in a zone of its own (0: as many as the
        /// replication, the least there may be): the ones a partition does
        /// not use can take its replicas over (`cairn table move-replica`).
        #[arg(long, default_value_t = 0)]
        nodes: u16,
        /// Write the certificate and the config files, start nothing
        /// (then run `cairn node/memds/gac/router --config` on them).
        #[arg(long)]
        write_only: bool,
    },
    /// Run a storage node from a config file (docs/configuration.md).
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a MemDS process from a config file (docs/configuration.md).
    Memds {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a global admission control (GAC) process from a config file
    /// (docs/configuration.md).
    Gac {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a router from a config file (docs/configuration.md).
    Router {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create, describe, list or delete tables.
    #[command(subcommand)]
    Table(table::TableCommand),
    /// Show what MemDS serves: nodes, tables, partitions and their replicas.
    Status(status::StatusArgs),
    /// Check this machine and a data directory for what a node needs.
    Preflight {
        /// Where the node would keep its data.
        #[arg(long)]
        data_dir: PathBuf,
        /// Cores (shards) the node would use.
        #[arg(long, default_value_t = 1)]
        cores: usize,
    },
}

/// Blocks this thread for good: servers run until the process is stopped.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Bench(args) => {
            cairn_bench::run(&args)?;
        }
        Command::Up {
            dir,
            cores,
            port,
            replication,
            nodes,
            write_only,
        } => {
            if write_only {
                let files = cluster::write_files(&dir, cores, port, replication, nodes)?;
                println!("Cluster files written in {}", files.dir.display());
                return Ok(());
            }
            let cluster = cluster::up(&dir, cores, port, replication, nodes)?;
            print!("{}", cluster.describe());
            println!(
                "Stop it with Ctrl-C; data stays in {}.",
                cluster.dir.display()
            );
            cluster.router.wait();
        }
        Command::Node { config } => {
            let node = cluster::start_node(&config)?;
            println!(
                "node running: {} shards, config {}",
                node.cores(),
                config.display()
            );
            park_forever();
        }
        Command::Memds { config } => {
            let memds = cluster::start_memds(&config)?;
            println!("MemDS listening on {}", memds.addr());
            memds.wait();
        }
        Command::Gac { config } => {
            let gac = cluster::start_gac(&config)?;
            println!("GAC listening on {}", gac.addr());
            gac.wait();
        }
        Command::Router { config } => {
            let router = cluster::start_router(&config)?;
            println!("router listening on {}", router.addr());
            router.wait();
        }
        Command::Table(command) => table::run(command)?,
        Command::Status(args) => print!("{}", status::report(&args)?),
        Command::Preflight { data_dir, cores } => {
            let report = cairn_node::preflight::preflight(&data_dir, cores)
                .with_context(|| format!("preflight of {}", data_dir.display()))?;
            println!(
                "preflight ok: {} cores available, io_uring works, O_DIRECT works in {}, memlock limit {}",
                report.cores_available,
                data_dir.display(),
                report
                    .memlock_limit_bytes
                    .map_or("unlimited".to_owned(), |b| format!("{b} bytes"))
            );
        }
    }
    Ok(())
}
