//! kill -9 a real process that writes in a loop; after restart every
//! acknowledged write is there, whole, and nothing past each writer's one
//! in-flight write exists.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cairn_common::AttributeValue;
use cairn_node::{ScanRequest, StorageNode};
use cairn_tests::{crash_test_config, payload};
use futures_lite::future::block_on;

const WRITERS: u64 = 8;
const ROUNDS: u32 = 3;
/// Acknowledgements to see before pulling the plug.
const ACKS_BEFORE_KILL: usize = 1500;
/// Bound on one round: a hung writer fails the test instead of hanging it.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the writer for `round` and kills it with SIGKILL mid-stream.
/// Returns the highest acknowledged sequence number per writer.
fn write_and_kill(dir: &std::path::Path, round: u32) -> HashMap<u64, u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .args([
            dir.to_str().unwrap(),
            &round.to_string(),
            &WRITERS.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("crash-writer starts");
    // Watchdog: kill the child if the round takes too long.
    let (done, watchdog) = mpsc::channel::<()>();
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        if watchdog.recv_timeout(ROUND_TIMEOUT).is_err() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut count = 0;
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        if words.next() != Some("ack") {
            continue;
        }
        let writer: u64 = words.next().unwrap().parse().unwrap();
        let seq: u64 = words.next().unwrap().parse().unwrap();
        let highest = acked.entry(writer).or_insert(seq);
        *highest = (*highest).max(seq);
        count += 1;
        if count == ACKS_BEFORE_KILL {
            child.kill().unwrap(); // SIGKILL: no shutdown path runs
        }
        // Keep reading after the kill: acknowledgements the writer printed
        // before it died are still in the pipe, and they count.
    }
    let status = child.wait().unwrap();
    let _ = done.send(());
    guard.join().unwrap();
    assert!(count >= ACKS_BEFORE_KILL, "writer stopped early: {status}");
    acked
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = base.path().join("node");
    let mut history: Vec<HashMap<u64, u64>> = Vec::new();
    for round in 0..ROUNDS {
        history.push(write_and_kill(&dir, round));
        let node = StorageNode::start(crash_test_config(&dir, 2)).expect("node recovers");
        for (past_round, acked) in history.iter().enumerate() {
            for writer in 0..WRITERS {
                let highest = acked.get(&writer).copied();
                let found = read_round(&node, writer, past_round as u32);
                // Writes of one writer are sequential: 0..=highest were
                // acknowledged, highest + 1 may have been in flight.
                let allowed = highest.map_or(1, |h| h + 2);
                assert!(
                    found.len() as u64 >= allowed - 1 && found.len() as u64 <= allowed,
                    "round {past_round} writer {writer}: {} items, highest ack {highest:?}",
                    found.len()
                );
                for (index, (seq, bytes)) in found.iter().enumerate() {
                    assert_eq!(*seq, index as u64, "a gap before seq {seq}");
                    assert_eq!(
                        *bytes,
                        payload(past_round as u32, writer, *seq),
                        "torn item {seq}"
                    );
                }
            }
        }
        node.shutdown();
    }
}

/// (seq, payload) of every item `writer` stored in `round`, in order.
fn read_round(node: &StorageNode, writer: u64, round: u32) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut scan = ScanRequest::all(500);
    loop {
        let page = block_on(node.scan(writer, scan.clone())).unwrap();
        for item in &page.items {
            let Some(AttributeValue::S(r)) = item.get("round") else {
                panic!("round")
            };
            if *r != format!("r{round}") {
                continue;
            }
            let Some(AttributeValue::N(seq)) = item.get("seq") else {
                panic!("seq")
            };
            let Some(AttributeValue::B(bytes)) = item.get("payload") else {
                panic!("payload")
            };
            out.push((seq.to_string().parse().unwrap(), bytes.clone()));
        }
        match page.last_key {
            Some(last) => scan.resume_after = Some(last),
            None => return out,
        }
    }
}
