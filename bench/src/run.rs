//! `cairn bench`: load a YCSB table, run a workload for a fixed time with N
//! clients, and report throughput and latency percentiles per operation.
//!
//! Clients are glommio tasks spread over one executor per core; each
//! executor has its own QUIC connection to the router. Without `--router`
//! the bench starts an embedded cluster (a node and a router in this
//! process) and drives it through QUIC like a remote one.
//!
//! Closed loop (the default): each client issues its next operation when the
//! previous one completes; latency runs from issue to completion. Open loop
//! (`--target-ops-per-s`): each client follows a schedule of intended start
//! times at its share of the rate, and latency runs from the *intended*
//! start, so a stall is charged to every operation it delayed (coordinated
//! omission corrected).

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_common::client::{Client, ClientError, RetryPolicy};
use cairn_common::quic::{Endpoint, Identity};
use cairn_common::update::UpdateAction;
use cairn_common::wire::{ErrorCode, ReturnValues, ScanToken};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType};
use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::EmbeddedCluster;
use crate::dynamo::{CallError, DynamoConn};
use crate::histogram::Recorder;
use crate::ycsb::{
    FIELD_COUNT, KeyChooser, Operation, Workload, WorkloadName, field_name, field_value, key_name,
};
use cairn_router::dynamodb::json::{ItemJson, item_to_json};
use serde_json::json;

/// The YCSB table's name.
pub const TABLE: &str = "usertable";

/// Flags of `cairn bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// YCSB core workload.
    #[arg(long, value_enum, default_value = "a")]
    pub workload: WorkloadName,
    /// Records loaded before the run.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Length of the run phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Open loop at this total rate; omit for closed loop.
    #[arg(long)]
    pub target_ops_per_s: Option<f64>,
    /// A router to drive; without it the bench starts an embedded cluster.
    #[arg(long)]
    pub router: Option<SocketAddr>,
    /// The router's PEM certificate (with --router).
    #[arg(long, default_value = "cairn-data/cert.pem")]
    pub certificate: PathBuf,
    /// Write one `<operation>.hgrm` percentile file per operation here.
    #[arg(long)]
    pub hgrm_dir: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Cores of the embedded node, and client executors.
    #[arg(long, default_value_t = default_cores())]
    pub cores: usize,
    /// Data directory of the embedded cluster (default: a temporary one).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Drive the cluster through the native protocol (QUIC) or the
    /// DynamoDB-compatible HTTP endpoint (embedded cluster only, for now).
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    /// Copies of each partition in the embedded cluster: 3 (a Multi-Paxos
    /// group on three nodes in three zones) or 1.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub replication: u32,
    /// Before the load, measure this machine's floor for a replicated
    /// write (4 KiB pwrite + fdatasync, and a QUIC round trip) and compare
    /// the update p50 with it.
    #[arg(long)]
    pub baseline: bool,
    /// Workload isolation: run the workload open loop (at
    /// --target-ops-per-s, default 1000) alone and beside a noisy
    /// neighbour table, in turn, and compare (docs/admission.md).
    #[arg(long)]
    pub noisy_neighbor: bool,
    /// The router's Prometheus endpoint (with --router), for where
    /// --noisy-neighbor's throttles fell.
    #[arg(long)]
    pub router_metrics: Option<SocketAddr>,
    /// Closed-loop clients of the noisy neighbour.
    #[arg(long, default_value_t = 64)]
    pub noisy_clients: usize,
    /// Read and write units of the noisy neighbour's provisioned table.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=40_000))]
    pub noisy_units: u32,
}

/// Which front door the clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Native,
    Dynamodb,
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
            "{{\"workload\":\"{}\",\"clients\":{},\"target_ops_per_s\":{},\"duration_s\":{:.3},\"throughput_ops_per_s\":{:.1},\"errors\":{},\"throttles\":{},\"operations\":{}}}",
            format!("{:?}", self.workload).to_lowercase(),
            self.clients,
            self.target_ops_per_s
                .map_or("null".to_owned(), |r| format!("{r}")),
            self.duration_s,
            self.throughput_ops_per_s(),
            self.recorder.errors(),
            self.recorder.throttles(),
            self.recorder.json_operations()
        )
    }
}

/// Everything a client task needs, shared across executors.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The table the clients use.
    pub(crate) table: String,
    pub(crate) router: SocketAddr,
    pub(crate) identity: Identity,
    pub(crate) workload: Workload,
    pub(crate) records: u64,
    /// Keys loaded or inserted so far (the insert counter).
    pub(crate) inserted: AtomicU64,
    pub(crate) seed: u64,
    /// The DynamoDB endpoint and access key, with `--protocol dynamodb`.
    pub(crate) dynamodb: Option<(SocketAddr, (String, String))>,
}

pub(crate) fn schema() -> KeySchema {
    KeySchema::new(KeyAttribute::new("key", KeyType::S), None)
}

fn key_item(key: &str) -> Item {
    Item::new().with("key", AttributeValue::S(key.to_owned()))
}

/// Runs `cairn bench` and prints its report.
pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    if args.clients == 0 || args.records == 0 || args.duration_s <= 0.0 || args.cores == 0 {
        bail!("--clients, --records, --duration-s and --cores must be positive");
    }
    if args.target_ops_per_s.is_some_and(|rate| rate <= 0.0) {
        bail!("--target-ops-per-s must be positive");
    }
    let temporary = tempfile::tempdir().context("creating a temporary data directory")?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_owned());
    if args.protocol == Protocol::Dynamodb && args.router.is_some() {
        bail!("--protocol dynamodb drives the embedded cluster only, for now; omit --router");
    }
    let (cluster, router, identity, target) = match args.router {
        Some(router) => (
            None,
            router,
            Identity::trusting_pem_file(&args.certificate)
                .map_err(|e| anyhow::anyhow!("reading the router certificate: {e}"))?,
            format!("router {router}"),
        ),
        None => {
            let cluster = EmbeddedCluster::start(
                &dir,
                args.cores,
                args.protocol == Protocol::Dynamodb,
                args.replication,
            )?;
            let (router, identity) = (cluster.router.addr(), cluster.identity.clone());
            let target = match args.replication {
                1 => format!(
                    "embedded cluster: router {router}, 1 node with {} cores, 1 replica, durable writes, over QUIC",
                    args.cores
                ),
                r => format!(
                    "embedded cluster: router {router}, {r} nodes in {r} zones with {} cores each, {r} replicas (Multi-Paxos), writes durable on a majority, over QUIC",
                    args.cores
                ),
            };
            (Some(cluster), router, identity, target)
        }
    };
    let mode = match args.target_ops_per_s {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_owned(),
    };
    println!(
        "cairn bench: workload {:?}, {} clients, {mode}, {} s, {} records",
        args.workload, args.clients, args.duration_s, args.records
    );
    println!("target: {target}");
    let baseline = if args.baseline {
        let baseline = crate::baseline::measure(&dir.join("baseline"))?;
        println!(
            "baseline: durable 4 KiB write p50 {:.0} us, QUIC round trip p50 {:.0} us; floor of a replicated write (write + 3 round trips) {:.0} us",
            baseline.durable_write_us_p50,
            baseline.round_trip_us_p50,
            baseline.replicated_write_floor_us()
        );
        Some(baseline)
    } else {
        None
    };

    prepare_table(router, &identity, args.cores as u32 * 2)?;
    let plan = Arc::new(Plan {
        table: TABLE.to_owned(),
        router,
        identity,
        workload: Workload::new(args.workload),
        records: args.records,
        inserted: AtomicU64::new(0),
        seed: args.seed,
        dynamodb: match args.protocol {
            Protocol::Native => None,
            Protocol::Dynamodb => cluster.as_ref().and_then(|c| c.dynamodb.clone()),
        },
    });
    let threads = args.cores.min(args.clients);

    let load_started = Instant::now();
    let loaded = on_executors(&plan, threads, args.clients, load_client)?;
    let load_s = load_started.elapsed().as_secs_f64();
    println!(
        "load: {} records in {load_s:.1} s ({:.0} inserts/s, {} retried)",
        args.records,
        args.records as f64 / load_s,
        loaded.errors()
    );
    plan.inserted.store(args.records, Ordering::Relaxed);
    if args.noisy_neighbor {
        let metrics = args
            .router_metrics
            .or(cluster.as_ref().and_then(|c| c.metrics));
        let recorder = crate::noisy::run(args, &plan, threads, metrics)?;
        drop(cluster);
        return Ok(Report {
            workload: args.workload,
            clients: args.clients,
            target_ops_per_s: args.target_ops_per_s,
            duration_s: args.duration_s * 2.0,
            load_s,
            recorder,
        });
    }

    let cpu_before = process_cpu_us();
    let roles_before = cpu_by_role();
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration_s);
    let interval = args
        .target_ops_per_s
        .map(|rate| Duration::from_secs_f64(args.clients as f64 / rate));
    let clients = args.clients;
    let recorder = on_executors(
        &plan,
        threads,
        args.clients,
        move |plan, client, index, recorder| {
            run_client(
                plan,
                client,
                index,
                recorder,
                started,
                duration,
                interval.map(|i| (i, clients)),
            )
        },
    )?;
    let report = Report {
        workload: args.workload,
        clients: args.clients,
        target_ops_per_s: args.target_ops_per_s,
        duration_s: args.duration_s,
        load_s,
        recorder,
    };
    println!(
        "run: {} operations in {:.1} s: {:.0} ops/s, {} errors, {} throttled attempts (retried)\n",
        report.recorder.operations(),
        report.duration_s,
        report.throughput_ops_per_s(),
        report.recorder.errors(),
        report.recorder.throttles()
    );
    let operations = report.recorder.operations().max(1);
    let process_us = process_cpu_us() - cpu_before;
    println!(
        "cpu: {:.1} us per operation ({:?} protocol; the whole process: clients, router and node)",
        process_us as f64 / operations as f64,
        args.protocol
    );
    // The clients' executors have exited by now, so their share is what
    // the threads still running do not account for.
    let roles_after = cpu_by_role();
    let mut spent: Vec<(&str, u64)> = roles_after
        .iter()
        .map(|(role, after)| {
            (
                *role,
                after.saturating_sub(roles_before.get(role).copied().unwrap_or(0)),
            )
        })
        .collect();
    let accounted: u64 = spent.iter().map(|(_, us)| us).sum();
    spent.push(("clients", process_us.saturating_sub(accounted)));
    let per_role: Vec<String> = spent
        .iter()
        .map(|(role, us)| format!("{role} {:.1}", *us as f64 / operations as f64))
        .collect();
    println!(
        "cpu by thread role, us per operation: {}\n",
        per_role.join(", ")
    );
    print!("{}", report.recorder.table());
    if let Some(baseline) = baseline
        && let Some(updates) = report.recorder.histogram(Operation::Update)
    {
        let p50 = updates.value_at_quantile(0.5) as f64;
        println!(
            "\nupdate p50 {p50:.0} us against the floor {:.0} us: {:.2}x",
            baseline.replicated_write_floor_us(),
            p50 / baseline.replicated_write_floor_us()
        );
    }
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
    drop(cluster);
    Ok(report)
}

/// Runs `body` once on a fresh executor with a connected client.
pub(crate) fn with_client<T: Send + 'static>(
    router: SocketAddr,
    identity: &Identity,
    body: impl AsyncFnOnce(Client) -> Result<T, ClientError> + Send + 'static,
) -> anyhow::Result<T> {
    let identity = identity.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let client = connect(router, &identity).await?;
            Ok(body(client).await?)
        })
        .map_err(|e| anyhow::anyhow!("starting a client executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("client executor failed: {e:?}"))?
}

async fn connect(router: SocketAddr, identity: &Identity) -> anyhow::Result<Client> {
    let config = identity.client_config().map_err(anyhow::Error::msg)?;
    let local: SocketAddr = if router.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let endpoint = Endpoint::bind(local, None, Some(config))?;
    Client::connect(&endpoint, router, "localhost")
        .await
        .with_context(|| format!("connecting to {router}"))
}

/// Creates the YCSB table (or finds it).
fn prepare_table(router: SocketAddr, identity: &Identity, partitions: u32) -> anyhow::Result<()> {
    with_client(router, identity, async move |client| {
        match client.create_table(TABLE, &schema(), partitions).await {
            Ok(()) => {}
            Err(error) if error.code() == Some(ErrorCode::ResourceInUse) => {}
            Err(error) => return Err(error),
        }
        client.describe_table(TABLE).await.map(|_| ())
    })
    .context("creating the YCSB table")
}

/// A client session of one task: the native client (one connection per
/// executor, requests multiplexed as QUIC streams) or its own HTTP
/// connection to the DynamoDB endpoint (HTTP/1.1 has no multiplexing).
pub(crate) enum Conn {
    Native(Rc<Client>),
    Dynamo(Box<DynamoConn>),
}

/// A failed operation: whether to retry, and why.
#[derive(Debug)]
struct OpError {
    retryable: bool,
    /// Refused for capacity (ProvisionedThroughputExceeded).
    throttled: bool,
    message: String,
}

impl From<ClientError> for OpError {
    fn from(error: ClientError) -> Self {
        OpError {
            retryable: error.is_retryable(),
            throttled: error.code() == Some(ErrorCode::Throttling),
            message: error.to_string(),
        }
    }
}

impl From<CallError> for OpError {
    fn from(error: CallError) -> Self {
        OpError {
            retryable: error.retryable,
            throttled: error.throttled,
            message: error.message,
        }
    }
}

/// How the bench retries a retryable failure: 8 attempts in all, each
/// retry after a uniform wait of up to 4 ms × 2^n, at most 250 ms.
const RETRIES: RetryPolicy = RetryPolicy {
    attempts: 8,
    base: Duration::from_millis(4),
    cap: Duration::from_millis(250),
};

impl Conn {
    async fn put(&mut self, table: &str, item: &Item) -> Result<(), OpError> {
        match self {
            Conn::Native(client) => Ok(client.put_item(table, item, None).await?),
            Conn::Dynamo(conn) => {
                #[derive(serde::Serialize)]
                struct Put<'a> {
                    #[serde(rename = "TableName")]
                    table: &'a str,
                    #[serde(rename = "Item")]
                    item: ItemJson<'a>,
                }
                let body = Put {
                    table,
                    item: ItemJson(item),
                };
                conn.call("PutItem", &body).await?;
                Ok(())
            }
        }
    }

    async fn get(&mut self, table: &str, key: &Item) -> Result<(), OpError> {
        match self {
            Conn::Native(client) => client
                .get_item(table, key)
                .await
                .map(|_| ())
                .map_err(Into::into),
            Conn::Dynamo(conn) => {
                #[derive(serde::Serialize)]
                struct Get<'a> {
                    #[serde(rename = "TableName")]
                    table: &'a str,
                    #[serde(rename = "Key")]
                    key: ItemJson<'a>,
                    #[serde(rename = "ConsistentRead")]
                    consistent: bool,
                }
                let body = Get {
                    table,
                    key: ItemJson(key),
                    consistent: true,
                };
                conn.call("GetItem", &body).await?;
                Ok(())
            }
        }
    }

    /// YCSB's update: one field rewritten.
    async fn update(
        &mut self,
        table: &str,
        key: &Item,
        field: String,
        value: String,
    ) -> Result<(), OpError> {
        match self {
            Conn::Native(client) => {
                let changes = vec![UpdateAction::Set(field.into(), AttributeValue::S(value))];
                // As the DynamoDB form below: no item in the answer.
                client
                    .update_returning(table, key, &changes, None, ReturnValues::None)
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            }
            Conn::Dynamo(conn) => {
                let body = json!({
                    "TableName": table,
                    "Key": item_to_json(key),
                    "UpdateExpression": "SET #f = :v",
                    "ExpressionAttributeNames": {"#f": field},
                    "ExpressionAttributeValues": {":v": {"S": value}},
                });
                conn.call("UpdateItem", &body).await?;
                Ok(())
            }
        }
    }

    /// `length` items from `key` on.
    async fn scan(&mut self, table: &str, key: &Item, length: u32) -> Result<(), OpError> {
        match self {
            Conn::Native(client) => {
                let stored = schema().key_of_key(key).expect("bench keys are valid");
                let hash = cairn_common::key::key_hash(&stored).expect("an encoded key");
                client
                    .scan(table, length, Some(ScanToken::after_key(hash, stored)))
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            }
            Conn::Dynamo(conn) => {
                let body = json!({"TableName": table, "Limit": length, "ExclusiveStartKey": item_to_json(key)});
                conn.call("Scan", &body).await?;
                Ok(())
            }
        }
    }
}

/// Runs `clients` tasks over `threads` executors; merges the recorders.
pub(crate) fn on_executors<F, Fut>(
    plan: &Arc<Plan>,
    threads: usize,
    clients: usize,
    task: F,
) -> anyhow::Result<Recorder>
where
    F: Fn(Arc<Plan>, Conn, usize, Rc<RefCell<Recorder>>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let (plan, task) = (plan.clone(), task.clone());
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("cairn-bench-{thread}"))
                .spawn(move || async move {
                    let native = match plan.dynamodb {
                        None => Some(Rc::new(connect(plan.router, &plan.identity).await?)),
                        Some(_) => None,
                    };
                    let recorder = Rc::new(RefCell::new(Recorder::default()));
                    let mut tasks = Vec::new();
                    for index in (thread..clients).step_by(threads) {
                        let conn = match (&native, &plan.dynamodb) {
                            (Some(client), _) => Conn::Native(client.clone()),
                            (None, Some((addr, key))) => Conn::Dynamo(Box::new(
                                DynamoConn::connect(*addr, key.clone()).await?,
                            )),
                            (None, None) => unreachable!("one protocol is chosen"),
                        };
                        tasks.push(glommio::spawn_local(task(
                            plan.clone(),
                            conn,
                            index,
                            recorder.clone(),
                        )));
                    }
                    for task in tasks {
                        task.await;
                    }
                    let recorder = recorder.borrow().clone();
                    anyhow::Ok(recorder)
                })
                .map_err(|e| anyhow::anyhow!("starting a client executor: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut merged = Recorder::default();
    for handle in handles {
        let recorder = handle
            .join()
            .map_err(|e| anyhow::anyhow!("client executor failed: {e:?}"))??;
        merged.merge(&recorder);
    }
    Ok(merged)
}

/// CPU time (user plus system, microseconds) of this process's threads,
/// summed by role as their names tell it: router cores, node shards,
/// MemDS, and the rest (blocking pools, the main thread). Read from
/// /proc, at the kernel's clock-tick resolution (usually 10 ms), so it is
/// meant for runs of seconds. Threads that exited are not counted.
fn cpu_by_role() -> std::collections::BTreeMap<&'static str, u64> {
    let mut roles = std::collections::BTreeMap::new();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return roles;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        // The fields after the parenthesized name: utime and stime are
        // the 12th and 13th of them.
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let time = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let micros = (time(11) + time(12)) * 1_000_000 / ticks;
        let comm = comm.trim();
        let role = if comm.starts_with("cairn-router") {
            "router"
        } else if comm.starts_with("cairn-shard") {
            "node"
        } else if comm.starts_with("cairn-memds") {
            "memds"
        } else {
            "other"
        };
        *roles.entry(role).or_insert(0) += micros;
    }
    roles
}

/// User plus system CPU time of this process, in microseconds.
fn process_cpu_us() -> u64 {
    // SAFETY: getrusage writes only into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// Inserts records until all are loaded; retries what is retryable, with
/// backoff and jitter, and counts the retries as errors of the load.
pub(crate) async fn load_client(
    plan: Arc<Plan>,
    mut conn: Conn,
    index: usize,
    recorder: Rc<RefCell<Recorder>>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ ((index as u64) << 32));
    loop {
        let n = plan.inserted.fetch_add(1, Ordering::Relaxed);
        if n >= plan.records {
            return;
        }
        let item = record(&key_name(n), &mut rng);
        for attempt in 0u32.. {
            match conn.put(&plan.table, &item).await {
                Ok(()) => break,
                Err(error) if error.retryable => {
                    recorder.borrow_mut().record_error(Operation::Insert);
                    // Every record must land: backoff with jitter, capped,
                    // however many attempts it takes.
                    let wait = RETRIES.backoff(attempt, rng.random());
                    glommio::timer::sleep(wait).await;
                }
                Err(error) => panic!("loading record {n} failed: {}", error.message),
            }
        }
    }
}

fn record(key: &str, rng: &mut StdRng) -> Item {
    let mut item = key_item(key);
    for field in 0..FIELD_COUNT {
        item.insert(field_name(field), AttributeValue::S(field_value(rng)));
    }
    item
}

pub(crate) async fn run_client(
    plan: Arc<Plan>,
    mut conn: Conn,
    index: usize,
    recorder: Rc<RefCell<Recorder>>,
    started: Instant,
    duration: Duration,
    open_loop: Option<(Duration, usize)>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(index as u64 + 1) ^ 0x5EED);
    let mut chooser = KeyChooser::new(plan.workload.distribution, plan.records);
    let end = started + duration;
    for sequence in 0u32.. {
        let intended = match open_loop {
            Some((interval, clients)) => {
                // Stagger clients across one interval so arrivals are even.
                let at =
                    started + interval.mul_f64(index as f64 / clients as f64) + interval * sequence;
                if at >= end {
                    return;
                }
                let now = Instant::now();
                if at > now {
                    glommio::timer::sleep(at - now).await;
                }
                at
            }
            None => Instant::now(),
        };
        if intended >= end {
            return;
        }
        let operation = plan.workload.choose_operation(&mut rng);
        // Retried with backoff while retryable; the latency runs from the
        // first attempt's intended start, as a caller sees it.
        let request = prepare(&plan, operation, &mut chooser, &mut rng);
        let mut attempt = 0;
        let result = loop {
            match execute(&mut conn, &plan.table, &request).await {
                Err(error) if error.retryable && attempt + 1 < RETRIES.attempts => {
                    if error.throttled {
                        recorder.borrow_mut().record_throttle(operation);
                    }
                    glommio::timer::sleep(RETRIES.backoff(attempt, rng.random())).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        let mut recorder = recorder.borrow_mut();
        match result {
            Ok(()) => recorder.record(operation, intended.elapsed().as_micros() as u64),
            Err(error) => {
                if error.throttled {
                    recorder.record_throttle(operation);
                }
                recorder.record_error(operation);
            }
        }
    }
}

/// One operation, chosen once: a retry sends the same request again (the
/// same key, value and record number), as a caller retrying would.
#[derive(Debug)]
enum Request {
    Read(Item),
    Update(Item, String, String),
    Insert(Item),
    Scan(Item, u32),
    ReadModifyWrite(Item, String, String),
}

fn prepare(
    plan: &Plan,
    operation: Operation,
    chooser: &mut KeyChooser,
    rng: &mut StdRng,
) -> Request {
    let existing = plan.inserted.load(Ordering::Relaxed);
    let mut key = || key_item(&key_name(chooser.next(rng, existing)));
    match operation {
        Operation::Read => Request::Read(key()),
        Operation::Update => {
            let key = key();
            let field = field_name(rng.random_range(0..FIELD_COUNT));
            Request::Update(key, field, field_value(rng))
        }
        Operation::Insert => {
            let n = plan.inserted.fetch_add(1, Ordering::Relaxed);
            Request::Insert(record(&key_name(n), rng))
        }
        Operation::Scan => {
            let key = key();
            Request::Scan(key, plan.workload.scan_length(rng) as u32)
        }
        Operation::ReadModifyWrite => {
            let key = key();
            let field = field_name(rng.random_range(0..FIELD_COUNT));
            Request::ReadModifyWrite(key, field, field_value(rng))
        }
    }
}

async fn execute(conn: &mut Conn, table: &str, request: &Request) -> Result<(), OpError> {
    match request {
        Request::Read(key) => conn.get(table, key).await,
        Request::Update(key, field, value) => {
            conn.update(table, key, field.clone(), value.clone()).await
        }
        Request::Insert(item) => conn.put(table, item).await,
        Request::Scan(key, length) => conn.scan(table, key, *length).await,
        Request::ReadModifyWrite(key, field, value) => {
            conn.get(table, key).await?;
            conn.update(table, key, field.clone(), value.clone()).await
        }
    }
}
