//! `cairn bench`: load a YCSB table, run a workload for a fixed time with N
//! client threads, and report throughput and latency percentiles per
//! operation.
//!
//! Closed loop (the default): each client issues its next operation when the
//! previous one completes; latency runs from issue to completion. Open loop
//! (`--target-ops-per-s`): each client has a schedule of intended start
//! times at its share of the rate, and latency runs from the *intended*
//! start, so a stall is charged to every operation it delayed (coordinated
//! omission corrected).
//!
//! Until the network router exists (issue 3), the target is an embedded
//! storage node in this process: one partition per core, items routed by a
//! hash of the key, every write durable before it is acknowledged.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType};
use cairn_node::{NodeConfig, NodeError, ScanRequest, StorageNode};
use futures_lite::future::block_on;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::histogram::Recorder;
use crate::ycsb::{
    FIELD_COUNT, KeyChooser, Operation, Workload, WorkloadName, field_name, field_value, key_name,
};

/// Flags of `cairn bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// YCSB core workload.
    #[arg(long, value_enum, default_value = "a")]
    pub workload: WorkloadName,
    /// Records loaded before the run.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Concurrent clients (threads).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Length of the run phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Open loop at this total rate; omit for closed loop.
    #[arg(long)]
    pub target_ops_per_s: Option<f64>,
    /// A router to drive instead of an embedded node (needs the router, issue 3).
    #[arg(long)]
    pub router: Option<String>,
    /// Write one `<operation>.hgrm` percentile file per operation here.
    #[arg(long)]
    pub hgrm_dir: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Cores (shards) of the embedded node.
    #[arg(long, default_value_t = default_cores())]
    pub cores: usize,
    /// Data directory of the embedded node (default: a temporary one).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn default_cores() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub workload: WorkloadName,
    pub clients: usize,
    pub target_ops_per_s: Option<f64>,
    pub duration_s: f64,
    pub load_s: f64,
    pub recorder: Recorder,
}

impl Report {
    pub fn throughput_ops_per_s(&self) -> f64 {
        self.recorder.operations() as f64 / self.duration_s
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"workload\":\"{}\",\"clients\":{},\"target_ops_per_s\":{},\"duration_s\":{:.3},\"throughput_ops_per_s\":{:.1},\"errors\":{},\"operations\":{}}}",
            format!("{:?}", self.workload).to_lowercase(),
            self.clients,
            self.target_ops_per_s
                .map_or("null".to_owned(), |r| format!("{r}")),
            self.duration_s,
            self.throughput_ops_per_s(),
            self.recorder.errors(),
            self.recorder.json_operations()
        )
    }
}

/// The YCSB table on an embedded node: key attribute `key`, one partition
/// per core.
struct Target {
    node: StorageNode,
    schema: KeySchema,
    partitions: u64,
}

impl Target {
    fn partition_of(&self, key: &str) -> u64 {
        // FNV-1a over the key bytes: independent of the key's own hash.
        let hash = key.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        hash % self.partitions
    }

    fn key(key: &str) -> Item {
        Item::new().with("key", AttributeValue::S(key.to_owned()))
    }

    fn insert(&self, key: &str, rng: &mut StdRng) -> Result<(), NodeError> {
        let mut item = Self::key(key);
        for field in 0..FIELD_COUNT {
            item.insert(field_name(field), AttributeValue::S(field_value(rng)));
        }
        block_on(self.node.put_item(self.partition_of(key), item))
    }

    fn read(&self, key: &str) -> Result<(), NodeError> {
        block_on(self.node.get_item(self.partition_of(key), Self::key(key))).map(|_| ())
    }

    fn update(&self, key: &str, rng: &mut StdRng) -> Result<(), NodeError> {
        let field = rng.random_range(0..FIELD_COUNT);
        let changes = vec![(field_name(field), Some(AttributeValue::S(field_value(rng))))];
        block_on(
            self.node
                .update_item(self.partition_of(key), Self::key(key), changes),
        )
        .map(|_| ())
    }

    fn scan(&self, key: &str, length: u64) -> Result<(), NodeError> {
        let start = self
            .schema
            .key_of_key(&Self::key(key))
            .map_err(cairn_node::EngineError::from)?;
        let request = ScanRequest {
            start: std::ops::Bound::Included(start),
            end: std::ops::Bound::Unbounded,
            reverse: false,
            limit: length as usize,
            resume_after: None,
        };
        block_on(self.node.scan(self.partition_of(key), request)).map(|_| ())
    }
}

/// Runs `cairn bench` and prints its report.
pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    if let Some(router) = &args.router {
        bail!(
            "--router {router}: driving a remote router needs the network front door, which is not built \
             yet; omit --router to run against an embedded node"
        );
    }
    if args.clients == 0 || args.records == 0 || args.duration_s <= 0.0 {
        bail!("--clients, --records and --duration-s must be positive");
    }
    if args.target_ops_per_s.is_some_and(|rate| rate <= 0.0) {
        bail!("--target-ops-per-s must be positive");
    }
    let temporary = tempfile::tempdir().context("creating a temporary data directory")?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temporary.path().join("node"));
    let node = StorageNode::start(NodeConfig::new(&data_dir, args.cores))
        .with_context(|| format!("starting the embedded node in {}", data_dir.display()))?;
    let schema = KeySchema::new(KeyAttribute::new("key", KeyType::S), None);
    let partitions = args.cores as u64;
    for partition in 0..partitions {
        match block_on(node.create_partition(partition, schema.clone())) {
            Ok(()) | Err(NodeError::Engine(cairn_node::EngineError::PartitionExists(_))) => {}
            Err(error) => return Err(error).context("creating the YCSB table's partitions"),
        }
    }
    let target = Arc::new(Target {
        node,
        schema,
        partitions,
    });
    let mode = match args.target_ops_per_s {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_owned(),
    };
    println!(
        "cairn bench: workload {:?}, {} clients, {mode}, {} s, {} records",
        args.workload, args.clients, args.duration_s, args.records
    );
    println!(
        "target: embedded storage node, {} cores, 1 replica, durable writes (in-process; no network yet)",
        args.cores
    );

    let load_started = Instant::now();
    let load_errors = load(&target, args)?;
    let load_s = load_started.elapsed().as_secs_f64();
    println!(
        "load: {} records in {load_s:.1} s ({:.0} inserts/s, {load_errors} retried)",
        args.records,
        args.records as f64 / load_s
    );

    let recorder = run_phase(&target, args);
    let report = Report {
        workload: args.workload,
        clients: args.clients,
        target_ops_per_s: args.target_ops_per_s,
        duration_s: args.duration_s,
        load_s,
        recorder,
    };
    println!(
        "run: {} operations in {:.1} s: {:.0} ops/s, {} errors\n",
        report.recorder.operations(),
        report.duration_s,
        report.throughput_ops_per_s(),
        report.recorder.errors()
    );
    print!("{}", report.recorder.table());
    if let Some(dir) = &args.hgrm_dir {
        report
            .recorder
            .write_hgrm(dir)
            .with_context(|| format!("writing .hgrm files to {}", dir.display()))?;
        println!("percentile distributions written to {}", dir.display());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match Arc::try_unwrap(target) {
        Ok(target) => target.node.shutdown(),
        Err(_) => unreachable!("client threads have finished"),
    }
    Ok(report)
}

/// Inserts records 0..records from all clients; retries throttled inserts.
fn load(target: &Arc<Target>, args: &BenchArgs) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..args.clients)
        .map(|client| {
            let (target, next, retried) = (target.clone(), next.clone(), retried.clone());
            let (records, seed) = (args.records, args.seed);
            std::thread::spawn(move || -> Result<(), NodeError> {
                let mut rng = StdRng::seed_from_u64(seed ^ (client as u64) << 32);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= records {
                        return Ok(());
                    }
                    loop {
                        match target.insert(&key_name(n), &mut rng) {
                            Ok(()) => break,
                            Err(error) if error.is_retryable() => {
                                retried.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(error) => return Err(error),
                        };
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .expect("load thread panicked")
            .context("loading records")?;
    }
    Ok(retried.load(Ordering::Relaxed))
}

fn run_phase(target: &Arc<Target>, args: &BenchArgs) -> Recorder {
    let workload = Workload::new(args.workload);
    let inserted = Arc::new(AtomicU64::new(args.records));
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration_s);
    let interval = args
        .target_ops_per_s
        .map(|rate| Duration::from_secs_f64(args.clients as f64 / rate));
    let threads: Vec<_> = (0..args.clients)
        .map(|client| {
            let (target, inserted, workload) = (target.clone(), inserted.clone(), workload.clone());
            let (records, seed, clients) = (args.records, args.seed, args.clients);
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client as u64 + 1) ^ 0x5EED);
                let mut chooser = KeyChooser::new(workload.distribution, records);
                let mut recorder = Recorder::default();
                // Stagger clients across one interval so arrivals are even.
                let offset = interval.map(|i| i.mul_f64(client as f64 / clients as f64));
                for sequence in 0u32.. {
                    let intended = match (interval, offset) {
                        (Some(interval), Some(offset)) => {
                            let at = started + offset + interval * sequence;
                            if at >= started + duration {
                                break;
                            }
                            wait_until(at);
                            at
                        }
                        _ => Instant::now(),
                    };
                    if intended >= started + duration {
                        break;
                    }
                    let operation = workload.choose_operation(&mut rng);
                    let result = execute(
                        &target,
                        &workload,
                        operation,
                        &mut chooser,
                        &inserted,
                        &mut rng,
                    );
                    match result {
                        Ok(()) => recorder.record(operation, intended.elapsed().as_micros() as u64),
                        Err(_) => recorder.record_error(operation),
                    }
                }
                recorder
            })
        })
        .collect();
    let mut merged = Recorder::default();
    for thread in threads {
        merged.merge(&thread.join().expect("client thread panicked"));
    }
    merged
}

/// Waits for an open-loop schedule: pacing is the one place the generator
/// must follow the clock.
#[allow(clippy::disallowed_methods)]
fn wait_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn execute(
    target: &Target,
    workload: &Workload,
    operation: Operation,
    chooser: &mut KeyChooser,
    inserted: &AtomicU64,
    rng: &mut StdRng,
) -> Result<(), NodeError> {
    let existing = inserted.load(Ordering::Relaxed);
    match operation {
        Operation::Read => target.read(&key_name(chooser.next(rng, existing))),
        Operation::Update => target.update(&key_name(chooser.next(rng, existing)), rng),
        Operation::Scan => target.scan(
            &key_name(chooser.next(rng, existing)),
            workload.scan_length(rng),
        ),
        Operation::Insert => {
            let n = inserted.fetch_add(1, Ordering::Relaxed);
            target.insert(&key_name(n), rng)
        }
        Operation::ReadModifyWrite => {
            let key = key_name(chooser.next(rng, existing));
            target.read(&key)?;
            target.update(&key, rng)
        }
    }
}
