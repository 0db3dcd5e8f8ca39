//! Cairn's load generator (YCSB workloads, coming with the end-to-end
//! issue) and helpers for the criterion micro-benchmarks in `benches/`.

pub mod report;
