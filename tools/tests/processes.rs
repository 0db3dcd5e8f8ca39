//! A cluster of real processes on loopback: `cairn up` writes the
//! configuration, then `cairn node`, `cairn memds` and `cairn router` run
//! as separate processes. The node is killed with SIGKILL and restarted; every
//! acknowledged write is still readable, and while it is down requests get
//! a retryable error instead of hanging.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::net::SocketAddr;
use std::path::Path;

use cairn_common::client::Client;
use cairn_common::quic::Identity;
use cairn_common::update::UpdateAction;
use cairn_common::wire::ErrorCode;
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType};
use cairn_tests::Process;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn start(args: &[&str], ready: &str) -> Process {
    Process::start(CAIRN, args, ready)
}

/// A one-node cluster of separate processes — node, two MemDS, two GAC,
/// router — from the files `cairn up` writes; killed when dropped.
struct ProcessCluster {
    _router: Process,
    gac: Vec<Process>,
    _memds: Vec<Process>,
    _node: Process,
    /// Where the config files and the certificate are.
    dir: std::path::PathBuf,
    /// The router's port; the others follow `cairn up`'s layout.
    base: u16,
    _temporary: tempfile::TempDir,
}

impl ProcessCluster {
    fn start() -> ProcessCluster {
        let temporary = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let base = cairn_tests::free_udp_ports(200);
        let dir = temporary.path().join("cluster");
        cairn_tests::write_cluster_files(CAIRN, &dir, base, 1);
        let config = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let node = start(&["node", "--config", &config("node.toml")], "node running");
        let memds = cairn_tests::start_memds(CAIRN, &dir);
        let gac = cairn_tests::start_gac(CAIRN, &dir);
        let router = start(
            &["router", "--config", &config("router.toml")],
            "router listening",
        );
        ProcessCluster {
            _router: router,
            gac,
            _memds: memds,
            _node: node,
            dir,
            base,
            _temporary: temporary,
        }
    }
}

fn client_run<T: Send + 'static>(
    router: SocketAddr,
    cert: &Path,
    body: impl AsyncFnOnce(Client) -> T + Send + 'static,
) -> T {
    let identity = Identity::trusting_pem_file(cert).unwrap();
    cairn_tests::with_client(router, &identity, body)
}

fn item(i: u32) -> Item {
    Item::new()
        .with("id", AttributeValue::S(format!("item-{i}")))
        .with(
            "payload",
            AttributeValue::B(vec![(i % 251) as u8; 100 + (i as usize % 900)]),
        )
}

#[test]
fn a_killed_node_restarts_with_every_acknowledged_write() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = cairn_tests::free_udp_ports(200);
    let cluster_dir = dir.path().join("cluster");
    cairn_tests::write_cluster_files(env!("CARGO_BIN_EXE_cairn"), &cluster_dir, base, 1);
    let node_config = cluster_dir.join("node.toml");
    let router_config = cluster_dir.join("router.toml");
    let cert = cluster_dir.join("cert.pem");
    let node = start(
        &["node", "--config", node_config.to_str().unwrap()],
        "node running",
    );
    let _memds = cairn_tests::start_memds(env!("CARGO_BIN_EXE_cairn"), &cluster_dir);
    let _gac = cairn_tests::start_gac(env!("CARGO_BIN_EXE_cairn"), &cluster_dir);
    let _router = start(
        &["router", "--config", router_config.to_str().unwrap()],
        "router listening",
    );
    let router: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();

    let written = client_run(router, &cert, async |client| {
        let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
        client.create_table("kv-table", &schema, 4).await.unwrap();
        for i in 0..500 {
            client.put_item("kv-table", &item(i), None).await.unwrap();
        }
        // The other operations, across the process boundary too.
        let key = |i: u32| Item::new().with("id", AttributeValue::S(format!("item-{i}")));
        let note = vec![UpdateAction::Set(
            "note".into(),
            AttributeValue::S("updated".into()),
        )];
        let updated = client
            .update_item("kv-table", &key(3), &note, None)
            .await
            .unwrap();
        assert_eq!(
            updated.get("note"),
            Some(&AttributeValue::S("updated".into()))
        );
        client.put_item("kv-table", &item(3), None).await.unwrap(); // back to the original
        client
            .put_item("kv-table", &item(9999), None)
            .await
            .unwrap();
        client
            .delete_item("kv-table", &key(9999), None)
            .await
            .unwrap();
        assert_eq!(client.get_item("kv-table", &key(9999)).await.unwrap(), None);
        let exact = AttributeValue::S("item-7".into());
        let page = client
            .query(
                "kv-table",
                &exact,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false,
                10,
                None,
            )
            .await
            .unwrap();
        assert_eq!(page.items, vec![item(7)]);
        let (mut scanned, mut start) = (0, None);
        loop {
            let page = client.scan("kv-table", 128, start).await.unwrap();
            scanned += page.items.len();
            match page.last {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        assert_eq!(scanned, 500);
        500
    });
    node.kill();
    // While the node is down, a request fails fast and says to retry.
    let key = Item::new().with("id", AttributeValue::S("item-1".into()));
    let down = client_run(router, &cert, async move |client| {
        client.get_item("kv-table", &key).await
    });
    let error = down.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(error.code(), Some(ErrorCode::Unavailable));

    let _node = start(
        &["node", "--config", node_config.to_str().unwrap()],
        "node running",
    );
    client_run(router, &cert, async move |client| {
        for i in 0..written {
            let key = Item::new().with("id", AttributeValue::S(format!("item-{i}")));
            // The router reconnects to the restarted node on first use.
            let mut found = client.get_item("kv-table", &key).await;
            for _ in 0..50 {
                match &found {
                    Err(e) if e.is_retryable() => found = client.get_item("kv-table", &key).await,
                    _ => break,
                }
            }
            assert_eq!(found.unwrap(), Some(item(i)), "item {i}");
        }
    });
}

/// Both GAC processes are killed with SIGKILL while two clients write,
/// stay down for longer than a grant lasts (two periods), and start
/// again. No write is refused meanwhile, every acknowledged write is
/// there afterwards, and the router asks the new processes.
#[test]
fn killed_gac_processes_restart_and_no_traffic_is_dropped() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use cairn_common::wire::Capacity;

    let mut cluster = ProcessCluster::start();
    let (base, cairn, cluster_dir) = (cluster.base, CAIRN, cluster.dir.clone());
    let cert = cluster_dir.join("cert.pem");
    let identity = Identity::trusting_pem_file(&cert).unwrap();
    // `cairn up` puts the GAC processes at port + 95 and + 96.
    let gac_addrs: Vec<SocketAddr> = (95..97)
        .map(|o| format!("127.0.0.1:{}", base + o).parse().unwrap())
        .collect();
    let grant_requests = || -> u64 {
        gac_addrs
            .iter()
            .map(|addr| cairn_tests::gac_requests(*addr, &identity))
            .sum()
    };
    let router: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
    let created = schema.clone();
    client_run(router, &cert, async move |client| {
        let capacity = Capacity::Provisioned {
            read_units: 10_000,
            write_units: 10_000,
        };
        client
            .create_table_with("paced", &created, 8, capacity)
            .await
            .unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (progress, written) = std::sync::mpsc::channel::<()>();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (stop, progress, cert) = (stop.clone(), progress.clone(), cert.clone());
            std::thread::spawn(move || {
                client_run(router, &cert, async move |client| {
                    let mut count = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let item =
                            Item::new().with("id", AttributeValue::S(format!("w{w}-{count}")));
                        client.put_item("paced", &item, None).await.unwrap();
                        count += 1;
                        let _ = progress.send(());
                    }
                    count
                })
            })
        })
        .collect();
    drop(progress);
    // Each wait is for the next acknowledged write: writes keep landing.
    let next_write = || {
        written
            .recv_timeout(Duration::from_secs(10))
            .expect("writes stalled, or one was refused");
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while grant_requests() < 3 {
        next_write();
        assert!(Instant::now() < deadline, "the router never asked GAC");
    }
    for process in std::mem::take(&mut cluster.gac) {
        process.kill();
    }
    // Down for three periods of one second: grants lapse before GAC is back.
    let outage = Instant::now() + Duration::from_secs(3);
    let mut during = 0;
    while Instant::now() < outage {
        next_write();
        during += 1;
    }
    let _gac = cairn_tests::start_gac(cairn, &cluster_dir);
    while grant_requests() < 2 {
        next_write();
        assert!(
            Instant::now() < deadline,
            "the router never came back to GAC"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let total: u32 = writers
        .into_iter()
        .map(|w| w.join().expect("a write was refused"))
        .sum();
    assert!(during > 0, "no write while GAC was down");
    let stored = client_run(router, &cert, async |client| {
        let (mut count, mut start) = (0u32, None);
        loop {
            let page = client.scan("paced", 1000, start).await.unwrap();
            count += page.items.len() as u32;
            match page.last {
                Some(last) => start = Some(last),
                None => return count,
            }
        }
    });
    assert_eq!(stored, total, "acknowledged writes missing");
}

/// Workload isolation across processes: `cairn bench --noisy-neighbor`
/// drives a cluster of `cairn node`, `cairn memds`, `cairn gac` and
/// `cairn router` processes. The neighbour's small table is throttled
/// (the router's metrics say where), while the YCSB table beside it is
/// never throttled and loses no request. How far its latency moves is
/// the benchmark's to measure, not this test's.
#[test]
fn a_noisy_neighbour_is_throttled_and_its_neighbour_is_not() {
    let cluster = ProcessCluster::start();
    let (base, cairn) = (cluster.base, CAIRN);
    let config = |name: &str| cluster.dir.join(name).to_str().unwrap().to_owned();
    let (router, metrics) = (
        format!("127.0.0.1:{base}"),
        format!("127.0.0.1:{}", base + 2),
    );
    let stdout = cairn_tests::stdout_of_success(
        std::process::Command::new(cairn)
            .args([
                "bench",
                "--router",
                &router,
                "--certificate",
                &config("cert.pem"),
            ])
            .args([
                "--router-metrics",
                &metrics,
                "--noisy-neighbor",
                "--noisy-units",
                "100",
            ])
            .args(["--records", "500", "--clients", "4", "--duration-s", "1"])
            .args(["--target-ops-per-s", "100", "--noisy-clients", "16"]),
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in\n{stdout}"))
            .to_owned()
    };
    let victim = line("victim under noise / quiet:");
    assert!(
        victim.contains("errors 0 / 0; throttled attempts 0 / 0"),
        "{stdout}"
    );
    let throttles = line("router metrics over the phases:");
    assert!(throttles.ends_with("usertable throttled 0"), "{stdout}");
    let noisy: u64 = throttles
        .split("noisytable throttled ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no throttle count in {throttles:?}"));
    assert!(noisy > 0, "the neighbour was never throttled:\n{stdout}");
}
