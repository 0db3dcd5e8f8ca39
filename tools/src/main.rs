//! `cairn`: the operator's binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// percentiles per operation.
    Bench(cairn_bench::BenchArgs),
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

fn main() -> anyhow::Result<()> {
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
