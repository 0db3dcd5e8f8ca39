//! Writes items in a loop from several threads and prints `ack WRITER SEQ`
//! for each write only after the node acknowledged it as durable. The crash
//! test kills this process with SIGKILL at a random moment.
//!
//! Usage: crash-writer DIR ROUND WRITERS

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use cairn_node::{EngineError, NodeError, StorageNode};
use cairn_tests::{crash_test_config, item, schema};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, round, writers] = args.as_slice() else {
        anyhow::bail!("usage: crash-writer DIR ROUND WRITERS");
    };
    let round: u32 = round.parse().context("ROUND")?;
    let writers: u64 = writers.parse().context("WRITERS")?;
    let node = Arc::new(StorageNode::start(crash_test_config(dir.as_ref(), 2))?);
    for writer in 0..writers {
        match futures_lite::future::block_on(node.create_partition(writer, schema())) {
            Ok(()) | Err(NodeError::Engine(EngineError::PartitionExists(_))) => {}
            Err(error) => return Err(error.into()),
        }
    }
    println!("ready");
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let node = node.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for seq in 0.. {
                    let put = node.put_item(writer, item(round, writer, seq));
                    match futures_lite::future::block_on(put) {
                        Ok(()) => {
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "ack {writer} {seq}")?;
                            out.flush()?;
                        }
                        Err(error) if error.is_retryable() => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread panicked")?;
    }
    Ok(())
}
