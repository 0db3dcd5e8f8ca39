//! Partition-map lookups: the compressed map against a `BTreeMap` floor
//! lookup over the same entries, measured in the same run.

use std::collections::BTreeMap;
use std::hint::black_box;

use cairn_memds::{Partition, PartitionMap, Replicas};
use criterion::{Criterion, criterion_group, criterion_main};

fn lookups(c: &mut Criterion) {
    let tables = 100u32;
    let per_table = 10_000u64;
    let mut map = PartitionMap::new();
    let mut reference: BTreeMap<(u32, u64), Partition> = BTreeMap::new();
    for table in 0..tables {
        let partitions: Vec<Partition> = (0..per_table)
            .map(|i| Partition {
                id: u64::from(table) << 20 | i,
                start: ((i << 32) / per_table) << 32,
                version: 1000 + i % 7,
                replicas: Replicas::new(&[(i % 50) as u16, 51, 52]).expect("3 replicas"),
                leader: Some(0),
            })
            .collect();
        map.set_table(table, &partitions).expect("valid table");
        reference.extend(partitions.iter().map(|p| ((table, p.start), *p)));
    }
    let probes: Vec<(u32, u64)> = (0..4096u64)
        .map(|i| {
            let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((hash % u64::from(tables)) as u32, hash)
        })
        .collect();
    let mut group = c.benchmark_group("partition_map_lookup_1M");
    group.bench_function("compressed", |b| {
        let mut at = 0;
        b.iter(|| {
            let (table, hash) = probes[at % probes.len()];
            at += 1;
            black_box(map.lookup(table, hash))
        });
    });
    group.bench_function("btreemap_baseline", |b| {
        let mut at = 0;
        b.iter(|| {
            let (table, hash) = probes[at % probes.len()];
            at += 1;
            black_box(reference.range(..=(table, hash)).next_back())
        });
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
