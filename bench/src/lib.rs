//! Cairn's load generator and benchmark helpers.
//!
//! - [`ycsb`]: the YCSB core workloads and key distributions (pure);
//! - [`histogram`]: per-operation HdrHistograms, tables, `.hgrm`, JSON;
//! - [`run`]: `cairn bench`, the driver;
//! - [`noisy`]: `cairn bench --noisy-neighbor`, workload isolation;
//! - [`baseline`]: the durable-write and round-trip floor, same run;
//! - [`report`]: same-run ratios for the criterion benches in `benches/`.

pub mod baseline;
pub mod cluster;
pub mod dynamo;
pub mod histogram;
pub mod noisy;
pub mod report;
pub mod run;
pub mod ycsb;

pub use run::{BenchArgs, Report, run};
