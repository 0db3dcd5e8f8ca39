//! The router's partition-map cache does constant work: MemDS sees the
//! same lookups for the same client traffic whether the router's cache is
//! warm or the router was just restarted cold. Real processes: a node, two
//! MemDS and a router; the router is SIGKILLed between the two runs. Also
//! `cairn status`, which reads what MemDS serves.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_common::quic::{Endpoint, Identity};
use cairn_common::wire::{self, MemdsRequest, MemdsResponse};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType};
use cairn_tests::Process;

fn start(args: &[&str], ready: &str) -> Process {
    Process::start(env!("CARGO_BIN_EXE_cairn"), args, ready)
}

/// Keys looked up so far, summed over the MemDS processes.
fn memds_lookups(memds: &[SocketAddr], identity: &Identity) -> u64 {
    let config = identity.client_config().unwrap();
    let memds = memds.to_vec();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let endpoint =
                Endpoint::bind("127.0.0.1:0".parse().unwrap(), None, Some(config)).unwrap();
            let mut total = 0;
            for addr in memds {
                let connection = endpoint.connect(addr, "localhost").await.unwrap();
                let answer = connection
                    .request(
                        &wire::encode_memds_request(&MemdsRequest::Stats),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                match wire::decode_memds_response(&answer).unwrap() {
                    MemdsResponse::Stats { lookups, .. } => total += lookups,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            total
        })
        .unwrap()
        .join()
        .unwrap()
}

const TASKS: u64 = 8;
const PER_TASK: u64 = 150;

/// The same reads each time, of keys spread over every partition, from
/// 8 concurrent tasks; returns how many were answered and the run's
/// length. Both runs offer the same requests, which is what the lookups
/// are compared per.
fn reads(router: SocketAddr, cert: &Path) -> (u64, Duration) {
    let identity = Identity::trusting_pem_file(cert).unwrap();
    cairn_tests::with_client(router, &identity, async |client| {
        let client = Rc::new(client);
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let client = client.clone();
                glommio::spawn_local(async move {
                    let mut answered = 0;
                    for i in 0..PER_TASK {
                        let key = Item::new()
                            .with("id", AttributeValue::S(format!("key-{}", task * 1000 + i)));
                        // A read may be refused while the router warms up;
                        // it is retried, as a client would.
                        for _ in 0..20 {
                            match client.get_item("constant", &key).await {
                                Ok(_) => {
                                    answered += 1;
                                    break;
                                }
                                Err(e) if e.is_retryable() => continue,
                                Err(e) => panic!("read failed: {e:?}"),
                            }
                        }
                    }
                    answered
                })
            })
            .collect();
        let mut answered = 0;
        for task in tasks {
            answered += task.await;
        }
        (answered, started.elapsed())
    })
}

#[test]
fn memds_sees_the_same_lookups_from_a_cold_router_as_from_a_warm_one() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = cairn_tests::free_udp_ports(200);
    let cluster_dir = dir.path().join("cluster");
    cairn_tests::write_cluster_files(env!("CARGO_BIN_EXE_cairn"), &cluster_dir, base, 1);
    let cert = cluster_dir.join("cert.pem");
    let identity = Identity::trusting_pem_file(&cert).unwrap();
    let node_config = cluster_dir.join("node.toml");
    let router_config = cluster_dir.join("router.toml");
    let _node = start(
        &["node", "--config", node_config.to_str().unwrap()],
        "node running",
    );
    let _memds = cairn_tests::start_memds(env!("CARGO_BIN_EXE_cairn"), &cluster_dir);
    let _gac = cairn_tests::start_gac(env!("CARGO_BIN_EXE_cairn"), &cluster_dir);
    let memds: Vec<SocketAddr> = (90..92)
        .map(|offset| format!("127.0.0.1:{}", base + offset).parse().unwrap())
        .collect();
    let start_router = || {
        start(
            &["router", "--config", router_config.to_str().unwrap()],
            "router listening",
        )
    };
    let router_process = start_router();
    let router: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    cairn_tests::with_client(router, &identity, async |client| {
        let schema = KeySchema::new(KeyAttribute::new("id", KeyType::S), None);
        client.create_table("constant", &schema, 16).await.unwrap();
    });

    // What an operator sees: the table, its 16 ranges, and where they live.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["status", "--memds", &memds[0].to_string(), "--certificate"])
        .arg(&cert)
        .output()
        .unwrap();
    let report = String::from_utf8(status.stdout).unwrap();
    assert!(status.status.success(), "{report}");
    assert!(
        report.contains("constant (id 1): ACTIVE, 16 partitions, 1 replicas each, on demand"),
        "{report}"
    );
    assert_eq!(report.matches("    partition 0x").count(), 16, "{report}");
    assert!(report.contains("hashes 0x0000000000000000..="), "{report}");
    assert!(report.contains("..=0xffffffffffffffff"), "{report}");

    // Warm the cache, then measure a warm run.
    reads(router, &cert);
    let before = memds_lookups(&memds, &identity);
    let (warm_requests, warm_time) = reads(router, &cert);
    let warm = memds_lookups(&memds, &identity) - before;

    // Every router restarts cold (here, the one).
    router_process.kill();
    // Its QUIC port and its two TCP ports (DynamoDB, metrics).
    cairn_tests::await_ports_released(base, 3);
    let _router = start_router();
    let before = memds_lookups(&memds, &identity);
    let (cold_requests, cold_time) = reads(router, &cert);
    let cold = memds_lookups(&memds, &identity) - before;

    let per_request = |lookups: u64, requests: u64| lookups as f64 / requests as f64;
    let (warm_ratio, cold_ratio) = (
        per_request(warm, warm_requests),
        per_request(cold, cold_requests),
    );
    println!(
        "MemDS lookups: warm {warm} in {warm_time:?} ({:.0}/s, {warm_ratio:.3} per request); \
         cold {cold} in {cold_time:?} ({:.0}/s, {cold_ratio:.3} per request)",
        warm as f64 / warm_time.as_secs_f64(),
        cold as f64 / cold_time.as_secs_f64(),
    );
    assert_eq!(warm_requests, TASKS * PER_TASK);
    assert_eq!(cold_requests, TASKS * PER_TASK);
    assert!(
        (cold_ratio - warm_ratio).abs() <= 0.10 * warm_ratio,
        "warm {warm_ratio} vs cold {cold_ratio} lookups per request"
    );
}
