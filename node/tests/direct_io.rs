//! The engine over real direct IO (glommio, io_uring, O_DIRECT) on the
//! build machine's disk.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::rc::Rc;

use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType};
use cairn_node::device::DmaFs;
use cairn_node::engine::{Engine, EngineConfig};
use glommio::{LocalExecutorBuilder, Placement};

fn run<T: Send + 'static>(body: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move { body().await })
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// Regression: glommio probes IOPOLL support by reading the first file
/// opened on a device. Our first file was a fresh, empty WAL segment, so the
/// probe "succeeded" without touching the disk, glommio sent every later read
/// to its IOPOLL ring, and on this virtio disk each one failed with
/// EOPNOTSUPP — a node could write but never recover. DmaFs::open now probes
/// with a file that holds data.
#[test]
fn data_written_with_direct_io_reads_back_after_reopen() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = base.path().to_owned();
    let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
    let item = |i: usize| {
        Item::new()
            .with("id", AttributeValue::S(format!("item{i:05}")))
            .with("body", AttributeValue::B(vec![i as u8; 300]))
    };
    let key = |i: usize| Item::new().with("id", AttributeValue::S(format!("item{i:05}")));
    let (first_dir, first_schema) = (dir.clone(), schema.clone());
    run(async move || {
        let fs = Rc::new(DmaFs::open(&first_dir).await.unwrap());
        let (engine, _) = Engine::open(fs, EngineConfig::default()).await.unwrap();
        engine.create_partition(1, first_schema).await.unwrap();
        for i in 0..2000 {
            engine.put_item(1, &item(i), None).await.unwrap();
        }
        engine.checkpoint().await.unwrap();
        for i in 2000..2100 {
            engine.put_item(1, &item(i), None).await.unwrap(); // only in the WAL
        }
    });
    run(async move || {
        let fs = Rc::new(DmaFs::open(&dir).await.unwrap());
        let (engine, report) = Engine::open(fs, EngineConfig::default()).await.unwrap();
        assert_eq!(report.wal.records_replayed, 100);
        for i in (0..2100).step_by(7) {
            assert_eq!(
                engine.get_item(1, &key(i)).await.unwrap(),
                Some(item(i)),
                "item {i}"
            );
        }
    });
}
