//! Durable WAL appends against the disk's own floor, measured in one run:
//!
//! - `baseline_pwrite_fdatasync_4k`: overwrite a pre-written 4 KiB block
//!   with `pwrite` and `fdatasync` — the least a durable write can cost;
//! - `wal_1_writer_{dsync,fdatasync}`: one writer appending 100-byte records
//!   (O_DSYNC segments, or write + fdatasync);
//! - `wal_64_writers_dsync`: 64 concurrent writers on one core; time per
//!   record, so 64-writer throughput / 1-writer throughput is the ratio of
//!   the two medians.
//!
//! Data lives under the cargo target dir (a real disk; O_DIRECT needs one).

#![allow(clippy::unwrap_used)] // Benchmark set-up: a panic is the failure report.

use std::cell::RefCell;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_bench::report::{Ratio, print_ratios};
use cairn_node::device::DmaFs;
use cairn_node::wal::{Wal, WalConfig};
use criterion::Criterion;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

const GROUP: &str = "wal_durable_append";
const RECORD_BYTES: usize = 100;

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor")
}

fn bench_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn baseline(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let path = bench_dir("baseline").join("floor.dat");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let blocks = 1024u64;
    file.write_all_at(&vec![0u8; blocks as usize * 4096], 0)
        .unwrap();
    file.sync_all().unwrap();
    let block = vec![0xA5u8; 4096];
    let mut next = 0u64;
    c.bench_function("baseline_pwrite_fdatasync_4k", |b| {
        b.iter(|| {
            file.write_all_at(&block, (next % blocks) * 4096).unwrap();
            file.sync_data().unwrap();
            next += 1;
        });
    });
}

/// Appends `iterations` records from `writers` concurrent tasks; returns
/// the elapsed time of the appends alone.
async fn append_concurrently(wal: &Rc<Wal<DmaFs>>, writers: u64, iterations: u64) -> Duration {
    wal.retire_through(wal.durable_lsn());
    wal.maintain().await.expect("spares ready before timing");
    let per_writer = iterations.div_ceil(writers);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let wal = wal.clone();
            glommio::spawn_local(async move {
                for _ in 0..per_writer {
                    wal.append(0, vec![0x5A; RECORD_BYTES])
                        .await
                        .expect("durable append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    // Report time per record actually written.
    start
        .elapsed()
        .mul_f64(iterations as f64 / (per_writer * writers) as f64)
}

fn wal_bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    dsync: bool,
    writers: u64,
) {
    let ex = executor();
    let dir = bench_dir(name);
    let config = WalConfig {
        dsync,
        spare_segments: 2,
        ..WalConfig::default()
    };
    let wal: Rc<RefCell<Option<Rc<Wal<DmaFs>>>>> = Rc::default();
    let slot = wal.clone();
    ex.run(async move {
        let fs = Rc::new(DmaFs::open(&dir).await.unwrap());
        let (opened, _) = Wal::open(fs, config, 0, |_| {}).await.unwrap();
        opened.maintain().await.unwrap();
        *slot.borrow_mut() = Some(Rc::new(opened));
    });
    let wal = wal.borrow().clone().expect("wal opened");
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let wal = wal.clone();
            ex.run(async move { append_concurrently(&wal, writers, iterations).await })
        });
    });
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut group = criterion.benchmark_group(GROUP);
    baseline(&mut group);
    wal_bench(&mut group, "wal_1_writer_dsync", true, 1);
    wal_bench(&mut group, "wal_1_writer_fdatasync", false, 1);
    wal_bench(&mut group, "wal_64_writers_dsync", true, 64);
    group.finish();
    criterion.final_summary();
    print_ratios(
        env!("CARGO_TARGET_TMPDIR"),
        &[
            Ratio {
                label: "single-writer durable append / pwrite+fdatasync floor",
                group: GROUP,
                numerator: "wal_1_writer_dsync",
                denominator: "baseline_pwrite_fdatasync_4k",
                target: ("<=", 1.3),
            },
            Ratio {
                label: "64-writer throughput / 1-writer throughput",
                group: GROUP,
                numerator: "wal_1_writer_dsync",
                denominator: "wal_64_writers_dsync",
                target: (">=", 20.0),
            },
        ],
    );
}
