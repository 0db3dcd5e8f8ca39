//! `cairn bench --noisy-neighbor`: workload isolation, measured.
//!
//! The YCSB table (the *victim*) runs open loop at a fixed rate, in four
//! phases of `--duration-s` each, beside a small provisioned neighbour
//! table (zipfian, workload A). In the *quiet* phases the neighbour runs
//! open loop within its capacity (90 % of it); in the *noisy* ones many
//! clients drive it closed loop, retrying their throttles, far beyond its
//! capacity. So the two differ by the neighbour's excess demand only —
//! what admission control is there to absorb — not by the work the
//! neighbour is entitled to. The quiet phases are the baseline, measured
//! in the same run and interleaved with the noisy ones so drift on a
//! noisy machine falls on both alike. The report compares the victim's
//! throughput and latency under noise with its quiet baseline, and shows
//! (from the router's metrics) where the neighbour was throttled.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_common::wire::{Capacity, ErrorCode};

use crate::histogram::Recorder;
use crate::run::{BenchArgs, Plan, load_client, on_executors, run_client, schema, with_client};
use crate::ycsb::{Operation, Workload, WorkloadName};

/// The neighbour's table.
pub const NOISY_TABLE: &str = "noisytable";
/// Records in the neighbour's table: few, so its zipfian load is hot.
const NOISY_RECORDS: u64 = 300;
/// The victim's rate when no `--target-ops-per-s` is given.
const DEFAULT_RATE: f64 = 1000.0;
/// The neighbour's clients in the quiet phases.
const QUIET_CLIENTS: usize = 8;

/// One phase's results.
#[derive(Debug)]
struct Phase {
    noisy: bool,
    victim: Recorder,
    neighbour: Recorder,
}

/// Runs the four phases against the loaded victim table in `victim`.
pub(crate) fn run(
    args: &BenchArgs,
    victim: &Arc<Plan>,
    threads: usize,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<Recorder> {
    let rate = args.target_ops_per_s.unwrap_or(DEFAULT_RATE);
    let units = args.noisy_units;
    let capacity = Capacity::Provisioned {
        read_units: units,
        write_units: units,
    };
    with_client(
        victim.router,
        &victim.identity,
        async move |client| match client
            .create_table_with(NOISY_TABLE, &schema(), 4, capacity)
            .await
        {
            Err(error) if error.code() != Some(ErrorCode::ResourceInUse) => Err(error),
            _ => Ok(()),
        },
    )
    .context("creating the noisy neighbour's table")?;
    let neighbour = Arc::new(Plan {
        table: NOISY_TABLE.to_owned(),
        router: victim.router,
        identity: victim.identity.clone(),
        workload: Workload::new(WorkloadName::A),
        records: NOISY_RECORDS,
        inserted: AtomicU64::new(0),
        seed: victim.seed ^ 0x0015_E000,
        dynamodb: victim.dynamodb.clone(),
    });
    let started = Instant::now();
    let loaded = on_executors(&neighbour, threads, threads, load_client)?;
    println!(
        "neighbour: table {NOISY_TABLE}, {units} read and {units} write units, {NOISY_RECORDS} records loaded in {:.1} s ({} throttled inserts retried); workload A (zipfian); quiet: {QUIET_CLIENTS} clients open loop at {:.0} ops/s (90 % of its capacity); noisy: {} clients closed loop, retrying throttles",
        started.elapsed().as_secs_f64(),
        loaded.errors(),
        0.9 * 2.0 * f64::from(units),
        args.noisy_clients
    );
    neighbour.inserted.store(NOISY_RECORDS, Ordering::Relaxed);
    println!(
        "victim: table {}, open loop at {rate} ops/s, {} clients; phases of {} s, quiet and noisy in turn\n",
        victim.table, args.clients, args.duration_s
    );
    // Throttles counted from here on: the phases', not the load's.
    let before = metrics
        .map(throttles_by_partition)
        .transpose()
        .ok()
        .flatten();
    let duration = Duration::from_secs_f64(args.duration_s);
    let interval = Duration::from_secs_f64(args.clients as f64 / rate);
    // Within capacity: 90 % of its reads and writes (one unit each).
    let entitled = 0.9 * 2.0 * f64::from(units);
    let quiet_interval = Duration::from_secs_f64(QUIET_CLIENTS as f64 / entitled);
    let mut phases = Vec::new();
    for noisy in [false, true, false, true] {
        let started = Instant::now();
        let loud = {
            let plan = neighbour.clone();
            let (clients, schedule) = if noisy {
                (args.noisy_clients, None)
            } else {
                (QUIET_CLIENTS, Some((quiet_interval, QUIET_CLIENTS)))
            };
            std::thread::spawn(move || {
                on_executors(
                    &plan,
                    threads,
                    clients,
                    move |plan, conn, index, recorder| {
                        run_client(plan, conn, index, recorder, started, duration, schedule)
                    },
                )
            })
        };
        let clients = args.clients;
        let victim_recorder = on_executors(
            victim,
            threads,
            clients,
            move |plan, conn, index, recorder| {
                run_client(
                    plan,
                    conn,
                    index,
                    recorder,
                    started,
                    duration,
                    Some((interval, clients)),
                )
            },
        )?;
        let neighbour_recorder = loud
            .join()
            .map_err(|_| anyhow::anyhow!("the noisy neighbour's thread panicked"))??;
        phases.push(Phase {
            noisy,
            victim: victim_recorder,
            neighbour: neighbour_recorder,
        });
    }
    print!("{}", table(&phases, args.duration_s));
    let (quiet, loud) = merged(&phases);
    println!("\n{}", comparison(&quiet, &loud, args.duration_s * 2.0));
    if let (Some(addr), Some(before)) = (metrics, before) {
        match throttles_by_partition(addr) {
            Ok(mut after) => {
                for (key, count) in after.iter_mut() {
                    *count -= before.get(key).copied().unwrap_or(0).min(*count);
                }
                print!("{}", throttles_report(&after, &victim.table));
            }
            Err(error) => println!("router metrics unavailable: {error:#}"),
        }
    }
    Ok(loud)
}

fn percentile(recorder: &Recorder, operation: Operation, quantile: f64) -> Option<u64> {
    recorder
        .histogram(operation)
        .map(|h| h.value_at_quantile(quantile))
}

fn micros(value: Option<u64>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

/// Each phase of `seconds`: the victim's rate and percentiles, the
/// neighbour's rate and throttles.
fn table(phases: &[Phase], seconds: f64) -> String {
    let mut out = format!(
        "{:<8} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>16}\n",
        "phase",
        "victim_ops/s",
        "read_p50",
        "read_p99",
        "update_p50",
        "update_p99",
        "noisy_ops/s",
        "noisy_throttled"
    );
    for (n, phase) in phases.iter().enumerate() {
        let name = format!(
            "{} {}",
            if phase.noisy { "noisy" } else { "quiet" },
            n / 2 + 1
        );
        out += &format!(
            "{:<8} {:>12.0} {:>10} {:>10} {:>12} {:>12} {:>12.0} {:>16}\n",
            name,
            phase.victim.operations() as f64 / seconds,
            micros(percentile(&phase.victim, Operation::Read, 0.5)),
            micros(percentile(&phase.victim, Operation::Read, 0.99)),
            micros(percentile(&phase.victim, Operation::Update, 0.5)),
            micros(percentile(&phase.victim, Operation::Update, 0.99)),
            phase.neighbour.operations() as f64 / seconds,
            phase.neighbour.throttles()
        );
    }
    out
}

/// The victim's recorders of the quiet phases, and of the noisy ones.
fn merged(phases: &[Phase]) -> (Recorder, Recorder) {
    let (mut quiet, mut loud) = (Recorder::default(), Recorder::default());
    for phase in phases {
        if phase.noisy {
            loud.merge(&phase.victim);
        } else {
            quiet.merge(&phase.victim);
        }
    }
    (quiet, loud)
}

/// Under noise against quiet, for the victim: ratios of throughput and
/// latency percentiles (1.00 = unchanged).
fn comparison(quiet: &Recorder, loud: &Recorder, seconds: f64) -> String {
    let ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.2}", a as f64 / b as f64),
        _ => "-".to_owned(),
    };
    let mut out = format!(
        "victim under noise / quiet: throughput {:.0} / {:.0} ops/s = {:.2}; errors {} / {}; throttled attempts {} / {}\n",
        loud.operations() as f64 / seconds,
        quiet.operations() as f64 / seconds,
        loud.operations() as f64 / quiet.operations().max(1) as f64,
        loud.errors(),
        quiet.errors(),
        loud.throttles(),
        quiet.throttles()
    );
    for operation in [Operation::Read, Operation::Update] {
        out += &format!(
            "  {:<6} p50 {} / {} us = {}, p99 {} / {} us = {}\n",
            operation.name(),
            micros(percentile(loud, operation, 0.5)),
            micros(percentile(quiet, operation, 0.5)),
            ratio(
                percentile(loud, operation, 0.5),
                percentile(quiet, operation, 0.5)
            ),
            micros(percentile(loud, operation, 0.99)),
            micros(percentile(quiet, operation, 0.99)),
            ratio(
                percentile(loud, operation, 0.99),
                percentile(quiet, operation, 0.99)
            ),
        );
    }
    out
}

/// Throttled requests per (table, partition), from the router's metrics.
fn throttles_by_partition(addr: SocketAddr) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: cairn\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let mut throttles = BTreeMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("cairn_partition_throttled_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let count: u64 = value.trim().parse().unwrap_or(0);
        *throttles
            .entry((label("table"), label("partition")))
            .or_insert(0) += count;
    }
    Ok(throttles)
}

fn throttles_report(throttles: &BTreeMap<(String, String), u64>, victim: &str) -> String {
    let of = |table: &str| -> Vec<(&str, u64)> {
        let mut rows: Vec<(&str, u64)> = throttles
            .iter()
            .filter(|((t, _), _)| t == table)
            .map(|((_, p), count)| (p.as_str(), *count))
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.1));
        rows
    };
    let noisy = of(NOISY_TABLE);
    let total: u64 = noisy.iter().map(|(_, c)| c).sum();
    let by_partition: Vec<String> = noisy
        .iter()
        .map(|(p, c)| format!("{p} {c} ({:.0} %)", 100.0 * *c as f64 / total.max(1) as f64))
        .collect();
    let victim_total: u64 = of(victim).iter().map(|(_, c)| c).sum();
    format!(
        "router metrics over the phases: {NOISY_TABLE} throttled {total} requests, by partition: {}; {victim} throttled {victim_total}\n",
        by_partition.join(", ")
    )
}
