//! A replication group of three `cairn node` processes behind a `cairn
//! router` process on loopback. Clients write and read a few keys
//! concurrently while the group's leader is killed with SIGKILL, restarted,
//! and then the next leader is killed too (so the restarted replica must
//! have caught up to form a majority). Every client operation is recorded
//! with its invocation and return times, and each key's history must be
//! linearizable (tests/src/linearizable.rs): no acknowledged write lost, no
//! stale or flickering read.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_common::client::Client;
use cairn_common::quic::{Endpoint, Identity};
use cairn_common::wire::{self, NodeOp, NodeRequest, Response};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType, Number};
use cairn_tests::Process;
use cairn_tests::linearizable::{self, Action, Operation};

const KEYS: u64 = 4;
const CLIENTS: u64 = 8;
/// Bound on each phase's wait for client progress.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

fn start(args: &[&str], ready: &str) -> Process {
    Process::start(env!("CARGO_BIN_EXE_cairn"), args, ready)
}

fn key(k: u64) -> Item {
    Item::new().with("id", AttributeValue::S(format!("key-{k}")))
}

fn value_of(item: &Item) -> Option<u64> {
    match item.get("v") {
        Some(AttributeValue::N(n)) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// Counts acknowledged writes so the test thread can wait for progress.
#[derive(Default)]
struct Progress {
    acknowledged: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn add(&self) {
        *self.acknowledged.lock().unwrap() += 1;
        self.changed.notify_all();
    }

    fn now(&self) -> u64 {
        *self.acknowledged.lock().unwrap()
    }

    /// Waits until `more` further writes are acknowledged (bounded).
    fn wait_for(&self, more: u64, what: &str) {
        let target = self.now() + more;
        let guard = self.acknowledged.lock().unwrap();
        let (guard, timeout) = self
            .changed
            .wait_timeout_while(guard, PROGRESS_TIMEOUT, |n| *n < target)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{what}: only {} of {target} writes acknowledged within {PROGRESS_TIMEOUT:?}",
            *guard
        );
    }
}

/// One node process of the group and where its shard 0 listens.
struct Node {
    config: PathBuf,
    shard0: SocketAddr,
    process: Option<Process>,
}

impl Node {
    fn start(&mut self) {
        self.process = Some(start(
            &["node", "--config", self.config.to_str().unwrap()],
            "node running",
        ));
    }

    fn kill(&mut self) {
        self.process.take().expect("running").kill();
    }
}

/// The `count` nodes (zones a, b, c, …) of the cluster `cairn up` wrote
/// in `dir` with its router on `base`; not started.
fn group_nodes(dir: &Path, base: u16, count: u16) -> Vec<Node> {
    (0..count)
        .map(|n| (n, (b'a' + n as u8) as char))
        .map(|(n, zone)| Node {
            config: dir.join(format!("node-zone-{zone}.toml")),
            shard0: format!("127.0.0.1:{}", base + 100 + 2 * n).parse().unwrap(),
            process: None,
        })
        .collect()
}

/// A three-node replication group (zones a, b, c), two MemDS, two GAC and
/// a router, as separate processes from the files `cairn up` writes;
/// killed when dropped. `node_extra` is appended to each node's config.
struct GroupCluster {
    nodes: Vec<Node>,
    cert: PathBuf,
    router: SocketAddr,
    /// The router's port; node n serves metrics on base + 80 + n.
    base: u16,
    _router: Process,
    _gac: Vec<Process>,
    _memds: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl GroupCluster {
    fn start(node_extra: &str) -> GroupCluster {
        Self::start_with(node_extra, "")
    }

    /// As [`GroupCluster::start`]; `memds_extra` (top-level `key = value`
    /// lines) replaces those keys in each MemDS config.
    fn start_with(node_extra: &str, memds_extra: &str) -> GroupCluster {
        Self::start_nodes(3, node_extra, memds_extra)
    }

    /// As [`GroupCluster::start_with`], with `count` nodes in as many
    /// zones (partitions use three of them).
    fn start_nodes(count: u16, node_extra: &str, memds_extra: &str) -> GroupCluster {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let base = cairn_tests::free_udp_ports(200);
        let cluster_dir = dir.path().join("cluster");
        cairn_tests::write_cluster_files_with(
            env!("CARGO_BIN_EXE_cairn"),
            &cluster_dir,
            base,
            3,
            count,
        );
        let mut nodes = group_nodes(&cluster_dir, base, count);
        for node in &mut nodes {
            let mut config = std::fs::read_to_string(&node.config).unwrap();
            config.push_str(node_extra);
            std::fs::write(&node.config, config).unwrap();
            node.start();
        }
        for m in 1..=2 {
            let path = cluster_dir.join(format!("memds-{m}.toml"));
            let keys: Vec<&str> = memds_extra
                .lines()
                .filter_map(|line| line.split('=').next())
                .map(str::trim)
                .collect();
            let config: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|line| !keys.iter().any(|k| line.starts_with(&format!("{k} "))))
                .map(|line| format!("{line}\n"))
                .collect();
            std::fs::write(&path, format!("{memds_extra}{config}")).unwrap();
        }
        let memds = cairn_tests::start_memds(env!("CARGO_BIN_EXE_cairn"), &cluster_dir);
        let gac = cairn_tests::start_gac(env!("CARGO_BIN_EXE_cairn"), &cluster_dir);
        let router_config = cluster_dir.join("router.toml");
        let router = start(
            &["router", "--config", router_config.to_str().unwrap()],
            "router listening",
        );
        GroupCluster {
            nodes,
            cert: cluster_dir.join("cert.pem"),
            router: format!("127.0.0.1:{base}").parse().unwrap(),
            base,
            _router: router,
            _gac: gac,
            _memds: memds,
            _dir: dir,
        }
    }
}

impl GroupCluster {
    /// What `cairn status` prints, read from the first MemDS.
    fn status(&self) -> String {
        let memds = format!("127.0.0.1:{}", self.base + 90);
        cairn_tests::stdout_of_success(
            std::process::Command::new(env!("CARGO_BIN_EXE_cairn")).args([
                "status",
                "--memds",
                &memds,
                "--certificate",
                self.cert.to_str().unwrap(),
            ]),
        )
    }

    /// Creates a table of one partition keyed by the string `id`.
    fn create_table(&self, name: &'static str) {
        let identity = Identity::trusting_pem_file(&self.cert).unwrap();
        cairn_tests::with_client(self.router, &identity, async move |client| {
            let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
            client.create_table(name, &schema, 1).await.unwrap();
        });
    }
}

/// Asks each node's shard directly which one leads `partition` (a
/// consistent read only the leader answers), until one does.
fn leader_of(nodes: &[Node], partition: u64, cert: &Path) -> usize {
    let identity = Identity::trusting_pem_file(cert).unwrap();
    let shards: Vec<Option<SocketAddr>> = nodes
        .iter()
        .map(|n| n.process.as_ref().map(|_| n.shard0))
        .collect();
    cairn_tests::with_endpoint(&identity, async move |endpoint| {
        let probe = get_key_0(partition, true);
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        while Instant::now() < deadline {
            for (index, shard) in shards.iter().enumerate() {
                let Some(shard) = shard else { continue };
                let Ok(connection) = endpoint.connect(*shard, "localhost").await else {
                    continue;
                };
                let answer = connection.request(&probe, Duration::from_secs(1)).await;
                connection.close();
                // Only the leader reads consistently: the item, or
                // (after a split) word that the key moved.
                let led = answer.is_ok_and(|bytes| {
                    matches!(
                        wire::decode_response(&bytes),
                        Ok(Response::Item(_)
                            | Response::Error {
                                code: wire::ErrorCode::WrongPartition,
                                ..
                            })
                    )
                });
                if led {
                    return index;
                }
            }
        }
        panic!("no leader within {PROGRESS_TIMEOUT:?}");
    })
}

/// A node request for the item with key 0 of `partition`.
fn get_key_0(partition: u64, consistent: bool) -> Vec<u8> {
    wire::encode_node_request(&NodeRequest {
        limit: None,
        partition,
        op: NodeOp::Get {
            key: key(0).to_bytes(),
            consistent,
        },
    })
}

/// Runs the clients until `stop`; returns every key's history.
fn run_clients(
    epoch: Instant,
    router: SocketAddr,
    cert: PathBuf,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<Operation>>> {
    std::thread::spawn(move || {
        let identity = Identity::trusting_pem_file(&cert).unwrap();
        cairn_tests::with_client(router, &identity, async move |client| {
            let client = Rc::new(client);
            let history = Rc::new(std::cell::RefCell::new(vec![Vec::new(); KEYS as usize]));
            let mut tasks = Vec::new();
            for c in 0..CLIENTS {
                let (client, history, progress, stop) = (
                    client.clone(),
                    history.clone(),
                    progress.clone(),
                    stop.clone(),
                );
                tasks.push(glommio::spawn_local(async move {
                    client_loop(c, &client, epoch, &history, &progress, &stop).await;
                }));
            }
            for task in tasks {
                task.await;
            }
            history.take()
        })
    })
}

async fn client_loop(
    c: u64,
    client: &Client,
    epoch: Instant,
    history: &std::cell::RefCell<Vec<Vec<Operation>>>,
    progress: &Progress,
    stop: &AtomicBool,
) {
    let ns = || epoch.elapsed().as_nanos() as u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let k = (c + seq) % KEYS;
        let call_ns = ns();
        if seq.is_multiple_of(2) {
            let value = c * 1_000_000 + seq;
            let item = key(k).with("v", AttributeValue::N(Number::from_i64(value as i64)));
            let result = client.put_item("kv-table", &item, None).await;
            let return_ns = result.is_ok().then(ns);
            if result.is_ok() {
                progress.add();
            }
            history.borrow_mut()[k as usize].push(Operation {
                call_ns,
                return_ns,
                action: Action::Write(value),
            });
        } else if let Ok(found) = client.get_item("kv-table", &key(k)).await {
            history.borrow_mut()[k as usize].push(Operation {
                call_ns,
                return_ns: Some(ns()),
                action: Action::Read(found.as_ref().and_then(value_of)),
            });
        }
    }
}

#[test]
fn killing_leaders_loses_no_acknowledged_write_and_reads_stay_linearizable() {
    let mut cluster = GroupCluster::start("");
    let (cert, router) = (cluster.cert.clone(), cluster.router);
    cluster.create_table("kv-table");
    // The first table gets id 1: its one partition is 1 << 20, on shard 0.
    let partition = 1 << 20;

    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let since = |at: Instant| at.duration_since(epoch).as_nanos() as u64;
    let clients = run_clients(epoch, router, cert.clone(), progress.clone(), stop.clone());
    progress.wait_for(100, "before any failure");

    let first = leader_of(&cluster.nodes, partition, &cert);
    cluster.nodes[first].kill();
    let mut kills = vec![since(Instant::now())];
    progress.wait_for(100, "after the first leader was killed");

    cluster.nodes[first].start();
    progress.wait_for(100, "after the killed node restarted");
    // Now kill whoever leads: the restarted node must form the majority.
    let second = leader_of(&cluster.nodes, partition, &cert);
    cluster.nodes[second].kill();
    kills.push(since(Instant::now()));
    progress.wait_for(100, "after the second leader was killed");
    cluster.nodes[second].start();
    progress.wait_for(50, "with all three nodes back");
    stop.store(true, Ordering::Relaxed);
    let histories = clients.join().unwrap();

    // Client-side unavailability: the longest stretch with no write
    // acknowledged (it spans a leader's death and the next election).
    let mut acknowledged: Vec<u64> = histories
        .iter()
        .flatten()
        .filter(|op| matches!(op.action, Action::Write(_)))
        .filter_map(|op| op.return_ns)
        .collect();
    acknowledged.sort_unstable();
    let gap_ns = acknowledged
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    eprintln!(
        "longest stretch without an acknowledged write: {:.0} ms",
        gap_ns as f64 / 1e6
    );
    for (n, kill) in kills.iter().enumerate() {
        let before = acknowledged.iter().rev().find(|t| *t <= kill).copied();
        let after = acknowledged.iter().find(|t| *t > kill).copied();
        if let (Some(before), Some(after)) = (before, after) {
            eprintln!(
                "leader kill {}: no write acknowledged for {:.0} ms ({:.0} ms after the kill)",
                n + 1,
                (after - before) as f64 / 1e6,
                (after - kill) as f64 / 1e6
            );
        }
    }
    for (k, history) in histories.iter().enumerate() {
        let writes = history
            .iter()
            .filter(|op| matches!(op.action, Action::Write(_)) && op.return_ns.is_some())
            .count();
        let reads = history
            .iter()
            .filter(|op| matches!(op.action, Action::Read(_)))
            .count();
        eprintln!("key {k}: {writes} acknowledged writes, {reads} reads");
        assert!(writes > 0 && reads > 0, "key {k} saw no traffic");
        if let Err(error) = linearizable::check(history) {
            panic!("key {k}: history is not linearizable: {error:?}");
        }
    }
}

/// Reads `expected` keys from one replica's shard directly, eventually
/// consistent (what that replica has applied), until every answer matches
/// (bounded).
fn wait_for_replica_state(
    shard: SocketAddr,
    partition: u64,
    cert: &Path,
    expected: Vec<(u64, Option<Item>)>,
) {
    let identity = Identity::trusting_pem_file(cert).unwrap();
    let client = identity.client_config().unwrap();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let endpoint =
                Endpoint::bind("127.0.0.1:0".parse().unwrap(), None, Some(client)).unwrap();
            let deadline = Instant::now() + PROGRESS_TIMEOUT;
            let mut mismatch = String::new();
            while Instant::now() < deadline {
                let Ok(connection) = endpoint.connect(shard, "localhost").await else {
                    continue;
                };
                mismatch.clear();
                for (k, want) in &expected {
                    let probe = wire::encode_node_request(&NodeRequest {
                        limit: None,
                        partition,
                        op: NodeOp::Get {
                            key: key(*k).to_bytes(),
                            consistent: false,
                        },
                    });
                    let answer = connection.request(&probe, Duration::from_secs(1)).await;
                    let got = answer.ok().and_then(|b| wire::decode_response(&b).ok());
                    let matches = match &got {
                        Some(Response::Item(bytes)) => {
                            bytes.as_deref().map(|b| wire::decode_item(b).unwrap()) == *want
                        }
                        _ => false,
                    };
                    if !matches {
                        mismatch =
                            format!("key {k}: wanted {want:?}, the replica answered {got:?}");
                        break;
                    }
                }
                connection.close();
                if mismatch.is_empty() {
                    return;
                }
            }
            panic!("the replica did not catch up within {PROGRESS_TIMEOUT:?}: {mismatch}");
        })
        .unwrap()
        .join()
        .unwrap();
}

fn versioned(k: u64, v: u64) -> Item {
    key(k).with("v", AttributeValue::N(Number::from_i64(v as i64)))
}

/// Creates `kv-table` (one partition, `partition`) holding keys 0..100 at
/// version 1, then SIGKILLs a follower of it; returns the leader and the
/// killed follower.
fn hundred_items_and_a_follower_down(cluster: &mut GroupCluster, partition: u64) -> (usize, usize) {
    cluster.create_table("kv-table");
    let identity = Identity::trusting_pem_file(&cluster.cert).unwrap();
    cairn_tests::with_client(cluster.router, &identity, async |client| {
        for k in 0..100 {
            client
                .put_item("kv-table", &versioned(k, 1), None)
                .await
                .unwrap();
        }
    });
    let leader = leader_of(&cluster.nodes, partition, &cluster.cert);
    let lagging = (leader + 1) % 3;
    cluster.nodes[lagging].kill();
    (leader, lagging)
}

/// A follower is killed, and while it is down its group writes more slots
/// than the leader keeps (`retained_slots = 300`), deleting and
/// overwriting items the follower holds. Restarted, it is behind every
/// log, so only a snapshot can catch it up: afterwards it holds exactly
/// the leader's items (none of the deleted ones), and with the leader
/// killed it forms the new majority with the third replica, which still
/// serves every acknowledged write.
#[test]
fn a_replica_behind_every_log_is_caught_up_by_a_snapshot() {
    let mut cluster = GroupCluster::start("retained_slots = 300\n");
    let (cert, router) = (cluster.cert.clone(), cluster.router);
    let identity = Identity::trusting_pem_file(&cert).unwrap();
    let partition = 1 << 20; // the first table's one partition, on shard 0
    let (leader, lagging) = hundred_items_and_a_follower_down(&mut cluster, partition);
    // Puts and deletes of whole items may be retried: a write whose answer
    // was lost with the killed node's connection is `Unavailable`.
    cairn_tests::with_client(router, &identity, async |client| {
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        for k in 0..1300 {
            loop {
                let done = match k {
                    0..50 => client
                        .delete_item("kv-table", &key(k), None)
                        .await
                        .map(|_| ()),
                    50..100 => client
                        .put_item("kv-table", &versioned(k, 2), None)
                        .await
                        .map(|_| ()),
                    _ => client
                        .put_item("kv-table", &versioned(k, 1), None)
                        .await
                        .map(|_| ()),
                };
                match done {
                    Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                    done => break done.unwrap(),
                }
            }
        }
    });
    let expected = |k: u64| match k {
        0..50 => None,
        50..100 => Some(versioned(k, 2)),
        _ => Some(versioned(k, 1)),
    };
    cluster.nodes[lagging].start();
    let all: Vec<(u64, Option<Item>)> = (0..1300).map(|k| (k, expected(k))).collect();
    wait_for_replica_state(cluster.nodes[lagging].shard0, partition, &cert, all.clone());

    // Every node counts what it did, whatever router asked: the leader the
    // writes it admitted, the third replica those it applied as follower.
    let third = 3 - leader - lagging;
    let node_metrics = |n: usize| {
        cairn_tests::scrape(
            format!("127.0.0.1:{}", cluster.base + 80 + n as u16)
                .parse()
                .unwrap(),
        )
    };
    let series = |source: &str| {
        format!(
            r#"cairn_node_consumed_capacity_units_total{{shard="0",kind="write",source="{source}"}}"#
        )
    };
    let admitted = node_metrics(leader)[&series("client")];
    let applied = node_metrics(third)[&series("follower")];
    assert!(
        admitted >= 1400.0,
        "the leader admitted {admitted} write units"
    );
    assert!(
        applied >= 1400.0,
        "the third replica applied {applied} write units"
    );

    // The caught-up replica and the third one are a majority without the
    // leader: every acknowledged write is still read back.
    cluster.nodes[leader].kill();
    cairn_tests::with_client(router, &identity, async move |client| {
        for (k, want) in all {
            let mut got = client.get_item("kv-table", &key(k)).await;
            let deadline = Instant::now() + PROGRESS_TIMEOUT;
            while matches!(&got, Err(e) if e.is_retryable()) && Instant::now() < deadline {
                got = client.get_item("kv-table", &key(k)).await;
            }
            assert_eq!(got.unwrap(), want, "key {k}");
        }
        client
            .put_item("kv-table", &versioned(7, 3), None)
            .await
            .unwrap();
    });
}

/// A follower is down while its partition splits and then writes more
/// slots than the leader keeps (`retained_slots = 300`). Restarted, it
/// catches up by a snapshot of the parent, so it never applies the split
/// that made the child: the snapshot names the child, and the follower
/// creates its replica of it, which the child's leader then catches up.
/// Afterwards it holds each half's items in the right partition. Then
/// the table is deleted, and every replica of it goes from every node.
#[test]
fn a_split_skipped_by_a_snapshot_still_gets_its_child_replica() {
    let mut cluster = GroupCluster::start_with("retained_slots = 300\n", "reap_ms = 300\n");
    let (cert, router) = (cluster.cert.clone(), cluster.router);
    let identity = Identity::trusting_pem_file(&cert).unwrap();
    // The first table's one partition; its split's child is the next id
    // on the same shard (nodes have two cores) and takes the upper half
    // of the hashes.
    let (parent, child) = (1u64 << 20, (1u64 << 20) + 2);
    fn upper(k: u64) -> bool {
        let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
        let stored = schema.key_of_key(&key(k)).unwrap();
        cairn_common::key::key_hash(&stored).unwrap() >= 1 << 63
    }
    let (leader, lagging) = hundred_items_and_a_follower_down(&mut cluster, parent);
    // Over 1024 slots in the parent after the split (its leader drops
    // values every 1024 slots), to the lower half only: the child's items
    // are those the split copied, which its log does not hold.
    const ROUNDS: u64 = 24;
    cairn_tests::with_client(router, &identity, async |client| {
        client.split_partition("kv-table", None).await.unwrap();
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        for v in 2..2 + ROUNDS {
            for k in (0..100).filter(|k| !upper(*k)) {
                loop {
                    match client.put_item("kv-table", &versioned(k, v), None).await {
                        Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                        done => break done.unwrap(),
                    }
                }
            }
        }
    });
    cluster.nodes[lagging].start();
    let half = |in_upper: bool| -> Vec<(u64, Option<Item>)> {
        let last = if in_upper { 1 } else { 1 + ROUNDS };
        (0..100)
            .filter(|k| upper(*k) == in_upper)
            .map(|k| (k, Some(versioned(k, last))))
            .collect()
    };
    let (lower_half, upper_half) = (half(false), half(true));
    assert!(!lower_half.is_empty() && !upper_half.is_empty());
    let shard = cluster.nodes[lagging].shard0;
    wait_for_replica_state(shard, parent, &cert, lower_half);
    wait_for_replica_state(shard, child, &cert, upper_half);

    // Deleting the table deletes its replicas from every node, for good:
    // a restarted node does not bring them back from its log. A node down
    // at the deletion keeps its replicas until MemDS reaps them.
    let down = (leader + 2) % 3;
    cluster.nodes[down].kill();
    cairn_tests::with_client(router, &identity, async |client| {
        client.delete_table("kv-table").await.unwrap();
    });
    let held = |nodes: &[Node]| {
        let mut held = holders(nodes, parent, &cert);
        held.extend(holders(nodes, child, &cert));
        held
    };
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while !held(&cluster.nodes).is_empty() {
        assert!(
            Instant::now() < deadline,
            "replicas of a deleted table remain: {:?}",
            held(&cluster.nodes)
        );
    }
    cluster.nodes[leader].kill();
    cluster.nodes[leader].start();
    assert_eq!(
        held(&cluster.nodes),
        Vec::<usize>::new(),
        "a restart brought a dropped replica back"
    );
    cluster.nodes[down].start();
    while !held(&cluster.nodes).is_empty() {
        assert!(
            Instant::now() < deadline,
            "replicas of a deleted table were not reaped: {:?}",
            held(&cluster.nodes)
        );
    }
}

/// Which of the running `nodes` hold a replica of `partition`: each is
/// asked for an eventually consistent read, and those that do not know
/// the partition say so.
fn holders(nodes: &[Node], partition: u64, cert: &Path) -> Vec<usize> {
    let identity = Identity::trusting_pem_file(cert).unwrap();
    let shards: Vec<Option<SocketAddr>> = nodes
        .iter()
        .map(|n| n.process.as_ref().map(|_| n.shard0))
        .collect();
    cairn_tests::with_endpoint(&identity, async move |endpoint| {
        let probe = get_key_0(partition, false);
        let mut held = Vec::new();
        for (index, shard) in shards.iter().enumerate() {
            let Some(shard) = shard else { continue }; // not running
            let connection = endpoint.connect(*shard, "localhost").await.unwrap();
            let answer = connection.request(&probe, Duration::from_secs(5)).await;
            connection.close();
            let unknown = matches!(
                answer.map(|bytes| wire::decode_response(&bytes)),
                Ok(Ok(Response::Error {
                    code: wire::ErrorCode::ResourceNotFound,
                    ..
                }))
            );
            if !unknown {
                held.push(index);
            }
        }
        held
    })
}

/// A follower's node is lost for good (SIGKILL, never restarted) while
/// writers run. The operator moves its replica to a spare node with `cairn
/// table move-replica` (MemDS's healing off): the group replaces the
/// member through its own log, the new replica is caught up by a snapshot
/// and the log, and the map lists the new node. Right after, the live
/// third replica moves to another spare. Then the leader is killed: the
/// two new replicas are a majority of the group, and every acknowledged
/// write reads back, each item once in a scan.
#[test]
fn a_lost_replica_is_replaced_on_another_node() {
    replace_a_lost_replica(Healing::ByHand);
}

/// As above, but nobody acts: MemDS notices the silent node (default
/// bound, 1.5 s) and moves its replica to the fourth node itself. Then a
/// second original replica's node is killed: the leader and the new
/// replica are a majority of the new group, so writes go on; finally the
/// leader is killed, and the new replica with the restarted third serves
/// every acknowledged write.
#[test]
fn memds_moves_the_replicas_of_a_silent_node() {
    replace_a_lost_replica(Healing::ByMemds);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Healing {
    ByHand,
    ByMemds,
}

/// The first table's one partition, on shard 0.
const FIRST_PARTITION: u64 = 1 << 20;

/// A cluster of `count` nodes whose table `table` (one partition,
/// [`FIRST_PARTITION`]) four writers have written 200 items to and go on
/// writing, the roles of the three nodes holding it, and when a follower's
/// node (`lost`) was SIGKILLed.
struct UnderLoad {
    cluster: GroupCluster,
    identity: Identity,
    writers: Writers,
    /// The nodes that do not hold the partition.
    spares: Vec<usize>,
    leader: usize,
    /// A follower (the one the tests lose first), and the other one.
    lost: usize,
    third: usize,
    killed_at: Instant,
}

fn a_follower_lost_under_load(count: u16, memds_extra: &str, table: &'static str) -> UnderLoad {
    let mut cluster = GroupCluster::start_nodes(count, "", memds_extra);
    let identity = Identity::trusting_pem_file(&cluster.cert).unwrap();
    cluster.create_table(table);
    let writers = Writers::start(cluster.router, &cluster.cert, table, 4);
    writers.wait_for(200, "before the loss");
    let held = holders(&cluster.nodes, FIRST_PARTITION, &cluster.cert);
    assert_eq!(held.len(), 3, "three nodes hold the partition: {held:?}");
    let spares = (0..count as usize).filter(|n| !held.contains(n)).collect();
    let leader = leader_of(&cluster.nodes, FIRST_PARTITION, &cluster.cert);
    let lost = *held.iter().find(|n| **n != leader).unwrap();
    let third = *held.iter().find(|n| **n != leader && **n != lost).unwrap();
    cluster.nodes[lost].kill();
    UnderLoad {
        cluster,
        identity,
        writers,
        spares,
        leader,
        lost,
        third,
        killed_at: Instant::now(),
    }
}

fn replace_a_lost_replica(healing: Healing) {
    let memds_extra = match healing {
        Healing::ByHand => "heal_after_ms = 0\n",
        Healing::ByMemds => "",
    };
    // By hand, a fifth node takes a second, live replica afterwards.
    let count = match healing {
        Healing::ByHand => 5,
        Healing::ByMemds => 4,
    };
    let UnderLoad {
        mut cluster,
        identity,
        writers,
        spares,
        leader,
        lost,
        third,
        killed_at,
    } = a_follower_lost_under_load(count, memds_extra, "moved");
    let (cert, router, partition) = (cluster.cert.clone(), cluster.router, FIRST_PARTITION);
    let spare = spares[0];
    writers.wait_for(200, "with a replica lost");

    let move_replica = |from: usize, to: usize| {
        move_replica_by_hand(&cluster, "moved", partition, (from, to), false);
    };
    if healing == Healing::ByHand {
        move_replica(lost, spare);
    }
    wait_for_member(cluster.nodes[spare].shard0, partition, &cert);
    println!(
        "{healing:?}: three copies again {:?} after the node was killed",
        killed_at.elapsed()
    );
    let moved = || {
        let status = cluster.status();
        let moved = status.contains(&format!("node {spare} ("))
            && !status.contains(&format!("node {lost} ("));
        (moved, status)
    };
    // The map follows the group's change (MemDS writes it right after).
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    let mut shown = moved();
    while !shown.0 && Instant::now() < deadline {
        shown = moved();
    }
    assert!(shown.0, "the map does not show the move:\n{}", shown.1);
    writers.wait_for(200, "with the new replica");

    match healing {
        Healing::ByHand => {
            // A second change right after the first: the live replica on
            // `third` moves to the fifth node. The group is then the
            // leader and two new replicas, which alone must serve every
            // acknowledged write once the leader is gone.
            move_replica(third, spares[1]);
            wait_for_member(cluster.nodes[spares[1]].shard0, partition, &cert);
            writers.wait_for(200, "after the second move");
            let logs = writers.stop("two replicas moved under load");
            cluster.nodes[leader].kill();
            check_writes(router, &identity, "moved", logs);
        }
        Healing::ByMemds => {
            // Only the new membership has a majority now: the leader and
            // the new replica.
            cluster.nodes[third].kill();
            writers.wait_for(200, "with a second original replica lost");
            let logs = writers.stop("a lost replica replaced under load");
            // The new replica holds every acknowledged write: with the
            // leader gone, it and `third` (which missed the last phase)
            // serve them all.
            cluster.nodes[third].start();
            cluster.nodes[leader].kill();
            check_writes(router, &identity, "moved", logs);
        }
    }
}

/// Runs `cairn table move-replica` for `table`'s `partition`, from node
/// `from` to node `to` (a log replica if `log`), and checks what it says.
fn move_replica_by_hand(
    cluster: &GroupCluster,
    table: &str,
    partition: u64,
    (from, to): (usize, usize),
    log: bool,
) {
    let (from, to) = (from.to_string(), to.to_string());
    let mut args = vec![
        "table".to_string(),
        "move-replica".into(),
        table.into(),
        "--partition".into(),
        format!("{partition:#x}"),
        "--from".into(),
        from,
        "--to".into(),
        to,
        "--router".into(),
        cluster.router.to_string(),
        "--certificate".into(),
        cluster.cert.to_str().unwrap().into(),
    ];
    if log {
        args.push("--log".into());
    }
    let output = cairn_tests::stdout_of_success(
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn")).args(&args),
    );
    let said = if log {
        "now stands in for"
    } else {
        "now lives on node"
    };
    assert!(output.contains(said), "{output}");
}

/// A follower's node is lost, and the operator replaces its replica by a
/// log replica (`cairn table move-replica --log`): it joins without a
/// snapshot, holds no items and serves no reads, but votes, so when the
/// third replica goes down too the leader and it still acknowledge
/// writes. Then the leader is killed and the third replica comes back
/// without those writes: it learns them from the log replica's log as
/// it takes over, and every acknowledged write reads back. Last, with
/// the first leader back, a full replica replaces the log replica (a
/// snapshot from the leader), and with the third replica killed again it
/// and the first leader still serve every write.
#[test]
fn a_log_replica_keeps_acknowledged_writes_until_a_full_replica_replaces_it() {
    let UnderLoad {
        mut cluster,
        identity,
        writers,
        spares,
        leader,
        lost,
        third,
        killed_at,
    } = a_follower_lost_under_load(5, "heal_after_ms = 0\n", "logged");
    let (cert, router, partition) = (cluster.cert.clone(), cluster.router, FIRST_PARTITION);
    writers.wait_for(100, "with a replica lost");

    move_replica_by_hand(&cluster, "logged", partition, (lost, spares[0]), true);
    println!(
        "a log replica in the group {:?} after the node was killed",
        killed_at.elapsed()
    );
    // It has the partition, but no items to read.
    assert!(holders(&cluster.nodes, partition, &cert).contains(&spares[0]));
    let probe = get_key_0(partition, false);
    let shard = cluster.nodes[spares[0]].shard0;
    let answer = cairn_tests::with_endpoint(&identity, async move |endpoint| {
        let connection = endpoint.connect(shard, "localhost").await.unwrap();
        let answer = connection.request(&probe, Duration::from_secs(5)).await;
        answer.map(|bytes| wire::decode_response(&bytes).unwrap())
    });
    assert!(
        matches!(answer, Ok(Response::NotLeader { .. })),
        "a log replica answered a read: {answer:?}"
    );
    // Through the router, eventually consistent reads find the items.
    cairn_tests::with_client(router, &identity, async |client| {
        for _ in 0..30 {
            let got = client
                .get_item_with("logged", &key_named("hot-0".into()), false)
                .await
                .unwrap();
            assert!(got.is_some(), "an eventually consistent read found nothing");
        }
    });

    // It counts in write quorums.
    cluster.nodes[third].kill();
    writers.wait_for(200, "with the leader and the log replica alone");
    let logs = writers.stop("writes through a log replica");
    // Only the log replica holds the last writes beside the leader.
    cluster.nodes[leader].kill();
    cluster.nodes[third].start();
    check_writes(router, &identity, "logged", logs.clone());

    // The first leader comes back (the metadata group, on the same three
    // nodes, needs a majority too), and a full replica takes the log
    // replica's place, from a snapshot.
    cluster.nodes[leader].start();
    move_replica_by_hand(&cluster, "logged", partition, (spares[0], spares[1]), false);
    wait_for_member(cluster.nodes[spares[1]].shard0, partition, &cert);
    // With the new leader gone, the first leader and the full replica
    // are the group's majority (the lost node, back, keeps the metadata
    // group's).
    cluster.nodes[lost].start();
    cluster.nodes[third].kill();
    check_writes(router, &identity, "logged", logs);
}

/// A node whose replica was moved away while it was down comes back
/// with that replica's stale copy, and is then chosen to take a replica
/// of the same partition again: the new member replaces the stale copy
/// (the group says the old replica was removed), catches up, and with
/// the leader killed it and the first replacement serve every write.
#[test]
fn a_node_back_after_its_replica_moved_away_can_take_one_again() {
    let UnderLoad {
        mut cluster,
        identity,
        writers,
        spares,
        leader,
        lost,
        third,
        ..
    } = a_follower_lost_under_load(4, "heal_after_ms = 0\n", "returned");
    let (router, partition) = (cluster.router, FIRST_PARTITION);
    writers.wait_for(100, "with a replica lost");
    move_replica_by_hand(&cluster, "returned", partition, (lost, spares[0]), false);
    cluster.nodes[lost].start();
    writers.wait_for(100, "with the lost node back");
    // The only node without a replica of the partition is the one back.
    move_replica_by_hand(&cluster, "returned", partition, (third, lost), false);
    writers.wait_for(100, "with the returned node a member again");
    let logs = writers.stop("a replica moved back onto a returned node");
    cluster.nodes[leader].kill();
    check_writes(router, &identity, "returned", logs);
}

/// With a node to spare beyond the one it moves a replica to, MemDS heals
/// in two steps: a follower's node is killed under four writers; MemDS
/// puts a log replica in its place (three copies of every new write at
/// once), then rebuilds a full replica on the fifth node from a snapshot
/// and retires the log replica. With the leader killed after, the third
/// replica and the rebuilt one serve every acknowledged write.
#[test]
fn memds_heals_through_a_log_replica_then_rebuilds_a_full_one() {
    let UnderLoad {
        mut cluster,
        identity,
        writers,
        spares,
        leader,
        lost,
        killed_at,
        ..
    } = a_follower_lost_under_load(5, "", "healed");
    let (cert, router, partition) = (cluster.cert.clone(), cluster.router, FIRST_PARTITION);
    // The partition's line in `cairn status`: (replaced, a log replica).
    let line = || {
        let status = cluster.status();
        let line = status
            .lines()
            .find(|l| l.contains(&format!("partition {partition:#x}:")))
            .map(str::to_owned)
            .unwrap_or_default();
        let replaced = !line.contains(&format!("node {lost} ("));
        (replaced, line.contains("log replica"), line)
    };
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    let mut seen = line();
    while !(seen.0 && seen.1) && Instant::now() < deadline {
        seen = line();
    }
    assert!(
        seen.0 && seen.1,
        "no log replica in the lost one's place: {}",
        seen.2
    );
    println!(
        "a log replica in the group {:?} after the node was killed",
        killed_at.elapsed()
    );
    writers.wait_for(200, "with the log replica");
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while (seen.1 || !seen.0) && Instant::now() < deadline {
        seen = line();
    }
    assert!(
        seen.0 && !seen.1,
        "the log replica was not rebuilt: {}",
        seen.2
    );
    println!(
        "a full replica rebuilt {:?} after the node was killed",
        killed_at.elapsed()
    );
    let now_held = holders(&cluster.nodes, partition, &cert);
    let rebuilt = *spares
        .iter()
        .find(|n| seen.2.contains(&format!("node {n} (")))
        .expect("a new node in the map");
    assert!(now_held.contains(&rebuilt), "{now_held:?}");
    wait_for_member(cluster.nodes[rebuilt].shard0, partition, &cert);
    writers.wait_for(200, "with the rebuilt replica");
    let logs = writers.stop("healed through a log replica under load");
    cluster.nodes[leader].kill();
    check_writes(router, &identity, "healed", logs);
}

/// Waits (bounded) until the replica of `partition` on `shard` serves
/// eventually consistent reads: it knows its group, so it has caught up
/// at least through the change that made it a member.
fn wait_for_member(shard: SocketAddr, partition: u64, cert: &Path) {
    let identity = Identity::trusting_pem_file(cert).unwrap();
    cairn_tests::with_endpoint(&identity, async move |endpoint| {
        let probe = get_key_0(partition, false);
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            let Ok(connection) = endpoint.connect(shard, "localhost").await else {
                continue;
            };
            let answer = connection.request(&probe, Duration::from_secs(1)).await;
            connection.close();
            let answer = answer.ok().and_then(|b| wire::decode_response(&b).ok());
            if matches!(answer, Some(Response::Item(_))) {
                return;
            }
            last = answer;
        }
        panic!("the new replica did not serve within {PROGRESS_TIMEOUT:?}: {last:?}");
    });
}

/// What one writer of the split test did: the inserts it got an answer
/// for, those whose answer was an error (applied or not), and its own
/// overwritten key's last acknowledged and last attempted values.
#[derive(Default, Debug)]
struct WriterLog {
    acknowledged: Vec<u64>,
    uncertain: Vec<u64>,
    hot_acknowledged: u64,
    hot_attempted: u64,
}

fn named(name: String, v: u64) -> Item {
    Item::new()
        .with("id", AttributeValue::S(name))
        .with("v", AttributeValue::N(Number::from_i64(v as i64)))
}

/// Writers that insert `w{w}-{seq}` items and overwrite their own
/// `hot-{w}` item through the router, until stopped.
struct Writers {
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<WriterLog>>,
}

impl Writers {
    fn start(router: SocketAddr, cert: &Path, table: &'static str, count: u64) -> Writers {
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping, cert) = (progress.clone(), stop.clone(), cert.to_owned());
        let handle = std::thread::spawn(move || {
            let identity = Identity::trusting_pem_file(&cert).unwrap();
            cairn_tests::with_client(router, &identity, async move |client| {
                let client = Rc::new(client);
                let tasks: Vec<_> = (0..count)
                    .map(|w| {
                        let (client, progress, stop) =
                            (client.clone(), shared.clone(), stopping.clone());
                        glommio::spawn_local(async move {
                            let mut log = WriterLog::default();
                            let mut seq = 0;
                            while !stop.load(Ordering::Relaxed) {
                                seq += 1;
                                let insert = named(format!("w{w}-{seq}"), seq);
                                match client.put_item(table, &insert, None).await {
                                    Ok(()) => {
                                        log.acknowledged.push(seq);
                                        progress.add();
                                    }
                                    Err(_) => log.uncertain.push(seq),
                                }
                                log.hot_attempted = seq;
                                let hot = named(format!("hot-{w}"), seq);
                                if client.put_item(table, &hot, None).await.is_ok() {
                                    log.hot_acknowledged = seq;
                                }
                            }
                            log
                        })
                    })
                    .collect();
                let mut logs = Vec::new();
                for task in tasks {
                    logs.push(task.await);
                }
                logs
            })
        });
        Writers {
            progress,
            stop,
            handle,
        }
    }

    /// Waits (bounded) for `more` acknowledged inserts.
    fn wait_for(&self, more: u64, what: &str) {
        self.progress.wait_for(more, what);
    }

    fn stop(self, what: &str) -> Arc<Vec<WriterLog>> {
        self.stop.store(true, Ordering::Relaxed);
        let logs = self.handle.join().unwrap();
        let acknowledged: usize = logs.iter().map(|l| l.acknowledged.len()).sum();
        let uncertain: usize = logs.iter().map(|l| l.uncertain.len()).sum();
        eprintln!("{what}: {acknowledged} inserts acknowledged, {uncertain} failed");
        Arc::new(logs)
    }
}

/// Checks `table` against what the writers did: every acknowledged insert
/// reads back with its value, each hot item holds a value between its last
/// acknowledged and its last attempted one, and a paged scan returns each
/// item once and nothing that was never written. Reads that are
/// retryable are retried (bounded).
fn check_writes(
    router: SocketAddr,
    identity: &Identity,
    table: &'static str,
    logs: Arc<Vec<WriterLog>>,
) {
    cairn_tests::with_client(router, identity, async move |client| {
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        let get = async |name: String| loop {
            match client.get_item(table, &key_named(name.clone())).await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                got => break got.unwrap(),
            }
        };
        for (w, log) in logs.iter().enumerate() {
            for &seq in &log.acknowledged {
                let got = get(format!("w{w}-{seq}")).await;
                assert_eq!(got.as_ref().and_then(value_of), Some(seq), "w{w}-{seq}");
            }
            let hot = get(format!("hot-{w}"))
                .await
                .as_ref()
                .and_then(value_of)
                .unwrap();
            assert!(
                (log.hot_acknowledged..=log.hot_attempted).contains(&hot),
                "hot-{w} = {hot}, acknowledged {}, attempted {}",
                log.hot_acknowledged,
                log.hot_attempted
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut start = None;
        loop {
            let page = match client.scan(table, 97, start.clone()).await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                page => page.unwrap(),
            };
            for item in page.items {
                let Some(AttributeValue::S(name)) = item.get("id") else {
                    panic!("an item without its key: {item:?}");
                };
                assert!(seen.insert(name.clone()), "{name} returned twice");
            }
            match page.last {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        for (w, log) in logs.iter().enumerate() {
            assert!(seen.contains(&format!("hot-{w}")));
            for seq in &log.acknowledged {
                assert!(
                    seen.contains(&format!("w{w}-{seq}")),
                    "scan lost w{w}-{seq}"
                );
            }
        }
        let written: usize = logs
            .iter()
            .map(|l| l.acknowledged.len() + l.uncertain.len() + 1)
            .sum();
        assert!(
            seen.len() <= written,
            "{} items, {written} written",
            seen.len()
        );
    });
}

/// Items a scan begun before the splits of `splits_under_load_…` must
/// return exactly once when it is finished after them.
const STRADDLED: u64 = 200;

#[test]
fn splits_under_load_lose_and_duplicate_nothing() {
    let mut cluster = GroupCluster::start("");
    let (cert, router) = (cluster.cert.clone(), cluster.router);
    let identity = Identity::trusting_pem_file(&cert).unwrap();
    cluster.create_table("split-table");
    // A scan's first page, taken before the splits, ends inside the one
    // partition; the rest is read after both splits.
    let (first_page, token) = cairn_tests::with_client(router, &identity, async |client| {
        for i in 0..STRADDLED {
            let item = named(format!("straddled-{i}"), i);
            client.put_item("split-table", &item, None).await.unwrap();
        }
        let page = client.scan("split-table", 50, None).await.unwrap();
        (page.items, page.last.expect("more pages"))
    });
    let writers = Writers::start(router, &cert, "split-table", 6);
    writers.wait_for(300, "before the splits");
    for split in 0..2 {
        cairn_tests::with_client(router, &identity, async |client| {
            client.split_partition("split-table", None).await.unwrap();
        });
        writers.wait_for(300, &format!("after split {split}"));
        if split == 0 {
            // SIGKILL the parent's leader right after the split: the
            // parent fails over, the child's group forms without it, and
            // the restarted node brings both back from its own log.
            let leader = leader_of(&cluster.nodes, 1 << 20, &cert);
            cluster.nodes[leader].kill();
            writers.wait_for(300, "with the parent's leader killed");
            cluster.nodes[leader].start();
            writers.wait_for(300, "after its restart");
        }
    }
    let logs = writers.stop("splits under load");
    cairn_tests::with_client(router, &identity, async move |client| {
        let table = client.describe_table("split-table").await.unwrap();
        assert_eq!(table.partitions, 3, "two splits of one partition");
        // The scan begun before the splits, finished now: the halves of
        // the partition its first page ended in are read on together, so
        // no item comes twice and none of those there before is missed.
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        let mut seen: Vec<Item> = first_page;
        let mut start = Some(token);
        while let Some(from) = start {
            let page = match client.scan("split-table", 97, Some(from.clone())).await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    start = Some(from);
                    continue;
                }
                page => page.unwrap(),
            };
            seen.extend(page.items);
            start = page.last;
        }
        let mut ids: Vec<String> = seen
            .iter()
            .map(|item| match item.get("id") {
                Some(AttributeValue::S(id)) => id.clone(),
                other => panic!("an item without an id: {other:?}"),
            })
            .collect();
        ids.sort_unstable();
        let scanned = ids.len();
        ids.dedup();
        assert_eq!(
            ids.len(),
            scanned,
            "a scan across two splits returned items twice"
        );
        for i in 0..STRADDLED {
            let id = format!("straddled-{i}");
            assert!(
                ids.binary_search(&id).is_ok(),
                "a scan across two splits missed {id}"
            );
            // Gone again: the writers' check counts only their items.
            loop {
                match client
                    .delete_item("split-table", &key_named(id.clone()), None)
                    .await
                {
                    Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                    done => break done.unwrap(),
                };
            }
        }
    });
    check_writes(router, &identity, "split-table", logs);
}

fn key_named(name: String) -> Item {
    Item::new().with("id", AttributeValue::S(name))
}

#[test]
fn partitions_over_the_size_bound_are_split_until_none_is() {
    const ITEMS: u64 = 600;
    const BOUND: u64 = 30_000;
    let cluster = GroupCluster::start_with(
        "",
        &format!("split_bytes = {BOUND}\nsplit_check_ms = 200\n"),
    );
    let identity = Identity::trusting_pem_file(&cluster.cert).unwrap();
    cairn_tests::with_client(cluster.router, &identity, async |client| {
        let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
        client.create_table("sized", &schema, 1).await.unwrap();
        let mut stored = 0;
        for i in 0..ITEMS {
            let item = named(format!("item-{i}"), i).with("body", AttributeValue::B(vec![7; 100]));
            stored += item.to_bytes().len() as u64;
            // The moving half of a partition being split is unavailable
            // (retryably) until its new group has a leader.
            let deadline = Instant::now() + PROGRESS_TIMEOUT;
            loop {
                match client.put_item("sized", &item, None).await {
                    Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                    done => break done.unwrap(),
                }
            }
        }
        // MemDS checks sizes every 200 ms and splits one partition of a
        // table per round, until each holds at most BOUND bytes: that
        // takes at least stored / BOUND partitions. Each look is a round
        // trip to the router, bounded by the deadline.
        let wanted = stored.div_ceil(BOUND) as u32;
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        let partitions = loop {
            let partitions = client.describe_table("sized").await.unwrap().partitions;
            if partitions >= wanted {
                break partitions;
            }
            assert!(
                Instant::now() < deadline,
                "{partitions} partitions after {PROGRESS_TIMEOUT:?}; {stored} bytes need {wanted}"
            );
        };
        assert!(
            partitions <= 4 * wanted,
            "{partitions} partitions for {stored} bytes"
        );
        eprintln!("size splits: {stored} bytes in {partitions} partitions (bound {BOUND})");
        for i in 0..ITEMS {
            let got = client
                .get_item("sized", &key_named(format!("item-{i}")))
                .await
                .unwrap();
            assert_eq!(got.as_ref().and_then(value_of), Some(i), "item-{i}");
        }
        let mut count = 0;
        let mut start = None;
        loop {
            let page = client.scan("sized", 1000, start).await.unwrap();
            count += page.items.len() as u64;
            match page.last {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        assert_eq!(count, ITEMS);
    });
    // Each partition's leader reports what it holds: within the bound,
    // and all of it together.
    let sizes: Vec<u64> = partition_status(&cluster, "sized")
        .into_iter()
        .map(|(_, bytes)| bytes.expect("every partition's leader answers"))
        .collect();
    assert!(sizes.iter().all(|b| *b <= BOUND), "{sizes:?}");
    assert!(sizes.iter().sum::<u64>() > ITEMS * 100, "{sizes:?}");
}

/// The first hash of each partition of `table`, from `cairn status`.
fn partition_starts(cluster: &GroupCluster, table: &str) -> Vec<u64> {
    partition_status(cluster, table)
        .into_iter()
        .map(|(start, _)| start)
        .collect()
}

/// The first hash and the size its leader reports (if one answered) of
/// each partition of `table`, from `cairn status`.
fn partition_status(cluster: &GroupCluster, table: &str) -> Vec<(u64, Option<u64>)> {
    let status = cluster.status();
    let mut in_table = false;
    let mut starts = Vec::new();
    for line in status.lines() {
        if line.starts_with("  ") && !line.starts_with("    ") {
            in_table = line.trim_start().starts_with(&format!("{table} "));
        } else if in_table && let Some((_, rest)) = line.split_once("hashes 0x") {
            let bytes = line
                .split(", ")
                .find_map(|part| part.strip_suffix(" bytes"))
                .map(|n| n.parse().unwrap());
            starts.push((u64::from_str_radix(&rest[..16], 16).unwrap(), bytes));
        }
    }
    starts
}

#[test]
fn a_hot_partition_is_split_at_the_median_of_its_traffic() {
    const HOT_KEYS: usize = 64;
    let cluster = GroupCluster::start_with(
        "",
        "split_bytes = 0\nsplit_ops_per_s = 50\nsplit_check_ms = 300\n",
    );
    // Keys whose hashes all fall in the lowest sixteenth of the space: a
    // split at the middle of the range would leave all of them on one side.
    let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
    let hash_of = |name: &str| {
        let encoded = schema.key_of_key(&key_named(name.to_owned())).unwrap();
        cairn_common::key::key_hash(&encoded).unwrap()
    };
    let hot: Vec<String> = (0..)
        .map(|i| format!("hot-{i}"))
        .filter(|name| hash_of(name) < 1 << 60)
        .take(HOT_KEYS)
        .collect();
    let identity = Identity::trusting_pem_file(&cluster.cert).unwrap();
    let (router, stop) = (cluster.router, Arc::new(AtomicBool::new(false)));
    let load = {
        let (stop, hot, schema) = (stop.clone(), hot.clone(), schema.clone());
        let cert = cluster.cert.clone();
        std::thread::spawn(move || {
            let identity = Identity::trusting_pem_file(&cert).unwrap();
            cairn_tests::with_client(router, &identity, async move |client| {
                client.create_table("hot", &schema, 1).await.unwrap();
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    for name in &hot {
                        // Retryable errors while the split completes.
                        let _ = client
                            .put_item("hot", &named(name.clone(), round), None)
                            .await;
                    }
                }
                round
            })
        })
    };
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    let starts = loop {
        let starts = partition_starts(&cluster, "hot");
        if starts.len() >= 2 {
            break starts;
        }
        assert!(
            Instant::now() < deadline,
            "no split within {PROGRESS_TIMEOUT:?}"
        );
        // Between two looks at the partition map, which a process prints.
        std::thread::yield_now();
    };
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    let at = starts[1];
    let below = hot.iter().filter(|name| hash_of(name) < at).count();
    eprintln!(
        "hot partition split at {at:#x}: {below} of {HOT_KEYS} hot keys below, after {rounds} rounds"
    );
    assert!(at < 1 << 60, "split at {at:#x}, not among the hot keys");
    assert!(
        (HOT_KEYS / 4..=3 * HOT_KEYS / 4).contains(&below),
        "{below} of {HOT_KEYS} hot keys below the split point {at:#x}"
    );
    // Both halves serve every hot key's last write.
    cairn_tests::with_client(router, &identity, async move |client| {
        for name in &hot {
            let got = client
                .get_item("hot", &key_named(name.clone()))
                .await
                .unwrap();
            assert!(got.as_ref().and_then(value_of).is_some(), "{name}");
        }
    });
}

/// The nodes `cairn status` lists as holding a replica of any partition
/// of `tables`.
fn nodes_holding(cluster: &GroupCluster, tables: &[&str]) -> BTreeSet<usize> {
    let status = cluster.status();
    let mut in_table = false;
    let mut held = BTreeSet::new();
    for line in status.lines() {
        if line.starts_with("  ") && !line.starts_with("    ") {
            let name = line.trim_start();
            in_table = tables.iter().any(|t| name.starts_with(&format!("{t} ")));
        } else if in_table && let Some((_, on)) = line.split_once(", on ") {
            for replica in on.split("node ").skip(1) {
                let id = replica.split(' ').next().unwrap();
                held.insert(id.parse().unwrap());
            }
        }
    }
    held
}

/// Two single-partition tables, placed round the ring from their ids, on
/// five nodes in five zones: two nodes hold both partitions, one holds
/// none. Under write load on both, each of the two carries twice the load
/// of the others; MemDS (balancing every 300 ms, hot above 1.2 times the
/// mean, at any load: a debug build beside other tests writes slowly)
/// moves a replica of one partition off one of them to the idle
/// node, through the group's own log while the writers run. Every
/// acknowledged write reads back, and scans return each item once.
#[test]
fn memds_moves_a_replica_off_a_hot_node() {
    let cluster = GroupCluster::start_nodes(
        5,
        "",
        "split_ops_per_s = 0\nbalance_check_ms = 300\nbalance_ratio = 1.2\nbalance_ops_min = 1\n",
    );
    let (cert, router) = (cluster.cert.clone(), cluster.router);
    let identity = Identity::trusting_pem_file(&cert).unwrap();
    let tables = ["balance-a", "balance-b"];
    for table in tables {
        cluster.create_table(table);
    }
    let before = nodes_holding(&cluster, &tables);
    assert_eq!(
        before.len(),
        4,
        "two tables of three replicas each: {before:?}"
    );
    let a = Writers::start(router, &cert, tables[0], 2);
    let b = Writers::start(router, &cert, tables[1], 2);
    let started = Instant::now();
    let deadline = started + PROGRESS_TIMEOUT;
    let moved = loop {
        let now_held = nodes_holding(&cluster, &tables);
        if now_held.len() == 5 {
            break now_held;
        }
        assert!(
            Instant::now() < deadline,
            "no replica moved to the idle node within {PROGRESS_TIMEOUT:?}: {now_held:?}\n{}",
            cluster.status()
        );
    };
    println!(
        "a replica moved off a hot node {:?} after the load began: nodes {before:?} -> {moved:?}",
        started.elapsed()
    );
    a.wait_for(100, "after the move");
    b.wait_for(100, "after the move");
    check_writes(router, &identity, tables[0], a.stop("balanced, table a"));
    check_writes(router, &identity, tables[1], b.stop("balanced, table b"));
}
