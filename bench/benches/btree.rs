//! B-tree reads against `std::collections::BTreeMap`, measured in one run:
//!
//! - `point_get/{btreemap,cairn_cached}`: a random key among 100 000 items
//!   (24-byte keys, 100-byte values), every page clean and cached, read in
//!   place from its rkyv archive;
//! - `point_get/cairn_cold`: the same through the engine with a cache too
//!   small to hold the tree, so most gets read a page with O_DIRECT;
//! - `range_scan_100/{btreemap,cairn_cached}`: 100 consecutive items copied out;
//! - `page_access/{validated,unchecked}`: rkyv access to a full 16 KiB leaf,
//!   and `crc32c_16k`, the check a page gets when it enters the cache.

#![allow(clippy::unwrap_used)] // Benchmark set-up: a panic is the failure report.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::ops::Bound;
use std::rc::Rc;
use std::time::Duration;

use cairn_bench::report::{Ratio, print_ratios};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType};
use cairn_node::btree::{ScanRange, Tree};
use cairn_node::device::DmaFs;
use cairn_node::engine::{Engine, EngineConfig};
use cairn_node::page::{ArchivedNodePage, NodePage, PageAddr, PageBytes, PageCache, archive_node};
use criterion::{BenchmarkId, Criterion};
use glommio::{LocalExecutorBuilder, Placement};
use rand::{Rng, SeedableRng, rngs::StdRng};

const ITEMS: usize = 100_000;
const PAGE_SIZE: usize = 16 * 1024;

fn key(i: usize) -> Vec<u8> {
    format!("user{:020}", i.wrapping_mul(0x9E37_79B9) % 1_000_000_007).into_bytes()
}

/// A tree of `ITEMS` items flushed into a cache: every page clean.
fn cached_tree() -> (Tree, PageCache, BTreeMap<Vec<u8>, Vec<u8>>) {
    let cache = PageCache::new(usize::MAX);
    let mut tree = Tree::new(PAGE_SIZE);
    let mut model = BTreeMap::new();
    let mut freed = Vec::new();
    for i in 0..ITEMS {
        tree.put(&cache, key(i), vec![i as u8; 100], &mut freed)
            .unwrap();
        model.insert(key(i), vec![i as u8; 100]);
    }
    let mut next = 1;
    tree.flush_dirty(&mut |page| {
        let addr = PageAddr::new(next, 1);
        next += 1;
        cache.insert(
            addr,
            Rc::new(PageBytes::trusted(archive_node(&page))),
            false,
        );
        addr
    });
    (tree, cache, model)
}

fn point_gets(c: &mut Criterion) {
    let (tree, cache, model) = cached_tree();
    let mut rng = StdRng::seed_from_u64(1);
    let probes: Vec<Vec<u8>> = (0..4096).map(|_| key(rng.random_range(0..ITEMS))).collect();
    let mut group = c.benchmark_group("point_get");
    let mut i = 0;
    group.bench_function("btreemap", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(model.get(&probes[i]).map(Vec::len))
        });
    });
    group.bench_function("cairn_cached", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(tree.get_with(&cache, &probes[i], <[u8]>::len).unwrap())
        });
    });
    cold_gets(&mut group);
    group.finish();

    let mut group = c.benchmark_group("range_scan_100");
    group.bench_function("btreemap", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            let out: Vec<(Vec<u8>, Vec<u8>)> = model
                .range::<Vec<u8>, _>((Bound::Included(&probes[i]), Bound::Unbounded))
                .take(100)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            black_box(out)
        });
    });
    group.bench_function("cairn_cached", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            let range = ScanRange {
                start: Bound::Included(&probes[i]),
                end: Bound::Unbounded,
                reverse: false,
            };
            let mut out = Vec::with_capacity(100);
            tree.scan(&cache, &range, 100, &mut out).unwrap();
            black_box(out)
        });
    });
    group.finish();
}

/// Gets through the engine whose cache holds a small part of the tree.
fn cold_gets(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench")
        .join("cold");
    let _ = std::fs::remove_dir_all(&dir);
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .unwrap();
    let config = EngineConfig {
        cache_bytes: 1 << 20,
        ..EngineConfig::default()
    };
    let schema = KeySchema::new(KeyAttribute::new("id", KeyType::B), None);
    let item = |i: usize| {
        Item::new()
            .with("id", AttributeValue::B(key(i)))
            .with("v", AttributeValue::B(vec![1; 100]))
    };
    let engine = ex.run({
        let (dir, config) = (dir.clone(), config.clone());
        async move {
            let fs = Rc::new(DmaFs::open(&dir).await.unwrap());
            let (engine, _) = Engine::open(fs, config).await.unwrap();
            engine.create_partition(1, schema).await.unwrap();
            for i in 0..ITEMS {
                engine.put_item(1, &item(i), None).await.unwrap();
            }
            engine.checkpoint().await.unwrap();
            // The premise of this benchmark: gets find their item and
            // mostly miss the cache.
            let loads_before = engine.store().loads();
            let mut found = 0;
            for i in (0..ITEMS).step_by(ITEMS / 1000) {
                let key = Item::new().with("id", AttributeValue::B(key(i)));
                found += usize::from(engine.get_item(1, &key).await.unwrap().is_some());
            }
            eprintln!(
                "cold setup: {found}/1000 found, {} page reads, {} pages resident",
                engine.store().loads() - loads_before,
                engine.store().cache().len()
            );
            Rc::new(engine)
        }
    });
    let mut rng = StdRng::seed_from_u64(2);
    group.bench_function(BenchmarkId::new("cairn_cold", "1MiB_cache"), |b| {
        b.iter_custom(|iterations| {
            let engine = engine.clone();
            let keys: Vec<Item> = (0..iterations)
                .map(|_| Item::new().with("id", AttributeValue::B(key(rng.random_range(0..ITEMS)))))
                .collect();
            ex.run(async move {
                let start = std::time::Instant::now();
                for key in &keys {
                    black_box(engine.get_item(1, key).await.unwrap());
                }
                start.elapsed()
            })
        });
    });
}

fn page_access(c: &mut Criterion) {
    // A leaf filled to one 16 KiB page.
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut bytes = 0;
    let mut i = 0;
    while bytes < PAGE_SIZE - 512 {
        keys.push(key(i));
        values.push(vec![i as u8; 100]);
        bytes += 24 + 100 + 24;
        i += 1;
    }
    keys.sort();
    let archived = archive_node(&NodePage::Leaf { keys, values });
    let mut group = c.benchmark_group("page_access");
    group.bench_function("validated", |b| {
        b.iter(|| {
            black_box(
                rkyv::access::<ArchivedNodePage, rkyv::rancor::Error>(black_box(&archived)).is_ok(),
            )
        });
    });
    group.bench_function("unchecked", |b| {
        // SAFETY: `archived` was produced by rkyv's serializer just above.
        b.iter(|| {
            black_box(unsafe { rkyv::access_unchecked::<ArchivedNodePage>(black_box(&archived)) })
        });
    });
    let page = vec![0x3Cu8; PAGE_SIZE];
    group.bench_function("crc32c_16k", |b| {
        b.iter(|| black_box(crc32c::crc32c(black_box(&page))));
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    point_gets(&mut criterion);
    page_access(&mut criterion);
    criterion.final_summary();
    print_ratios(
        env!("CARGO_TARGET_TMPDIR"),
        &[
            Ratio {
                label: "cached point get / BTreeMap get",
                group: "point_get",
                numerator: "cairn_cached",
                denominator: "btreemap",
                target: ("<=", 2.0),
            },
            Ratio {
                label: "100-item range scan / BTreeMap range",
                group: "range_scan_100",
                numerator: "cairn_cached",
                denominator: "btreemap",
                target: ("<=", 2.0),
            },
        ],
    );
}
