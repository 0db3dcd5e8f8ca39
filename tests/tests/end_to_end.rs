//! Client → router → node over QUIC on loopback, in one process: every
//! operation, conditions, paging, and typed errors for bad input while the
//! system keeps serving.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::net::SocketAddr;
use std::ops::Bound;
use std::time::Duration;

use cairn_common::client::{Client, ClientError};
use cairn_common::condition::{CompareOp, Condition};
use cairn_common::quic::{Endpoint, Identity};
use cairn_common::update::UpdateAction;
use cairn_common::wire::ErrorCode;
use cairn_common::{AttributeValue, Item, KeySchema, Number};
use cairn_memds::server::{Memds, MemdsConfig};
use cairn_node::{NodeConfig, NodeNetwork, StorageNode};
use cairn_router::catalog::NodeAddress;
use cairn_router::{Router, RouterConfig};
use cairn_tests::free_udp_ports;

struct Cluster {
    // Field order is drop order: router, MemDS, then nodes.
    _router: Router,
    _memds: Memds,
    _nodes: Vec<StorageNode>,
    router: SocketAddr,
    identity: Identity,
    _dir: tempfile::TempDir,
}

fn cluster() -> Cluster {
    cluster_of(1)
}

/// A router, a MemDS and `replicas` nodes of two shards each (one zone
/// each); every table gets `replicas` copies.
fn cluster_of(replicas: u32) -> Cluster {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let identity = Identity::self_signed(&["localhost"]).unwrap();
    let base = free_udp_ports(2 + 2 * replicas as u16);
    let mut nodes = Vec::new();
    let mut addresses = Vec::new();
    for n in 0..replicas as u16 {
        let node_addr: SocketAddr = format!("127.0.0.1:{}", base + 1 + 2 * n).parse().unwrap();
        let mut config = NodeConfig::new(dir.path().join(format!("node-{n}")), 2);
        config.network = Some(NodeNetwork {
            listen: node_addr,
            identity: identity.clone(),
            peer_server_name: "localhost".into(),
        });
        nodes.push(StorageNode::start(config).unwrap());
        addresses.push(NodeAddress {
            addr: node_addr,
            cores: 2,
            zone: format!("zone-{n}"),
        });
    }
    let memds_addr: SocketAddr = format!("127.0.0.1:{}", base + 1 + 2 * replicas as u16)
        .parse()
        .unwrap();
    let records = addresses
        .iter()
        .enumerate()
        .map(|(id, node)| node.record(id))
        .collect();
    let memds = Memds::start(MemdsConfig::new(
        memds_addr,
        identity.clone(),
        records,
        "localhost".into(),
    ))
    .unwrap();
    let router = Router::start(RouterConfig {
        listen: format!("127.0.0.1:{base}").parse().unwrap(),
        nodes: addresses,
        memds: vec![memds.addr()],
        gac: Vec::new(),
        identity: identity.clone(),
        node_server_name: "localhost".into(),
        dynamodb: None,
        metrics: None,
        cores: 2,
        replicas,
    })
    .unwrap();
    Cluster {
        router: router.addr(),
        _nodes: nodes,
        _memds: memds,
        _router: router,
        identity,
        _dir: dir,
    }
}

fn with_client(cluster: &Cluster, body: impl AsyncFnOnce(Client) + Send + 'static) {
    cairn_tests::with_client(cluster.router, &cluster.identity, body);
}

fn schema() -> KeySchema {
    cairn_tests::user_schema()
}

fn key(user: &str, ts: i64) -> Item {
    cairn_tests::user_key(user, ts)
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    result.unwrap_err().code().expect("a service error")
}

#[test]
fn every_operation_over_the_network() {
    every_operation(&cluster());
}

/// The same operations, each write chosen by a three-replica Multi-Paxos
/// group and applied by every replica, each consistent read served by the
/// leader under its lease.
#[test]
fn every_operation_through_replication_groups() {
    every_operation(&cluster_of(3));
}

fn every_operation(cluster: &Cluster) {
    with_client(cluster, async |client| {
        client.create_table("events", &schema(), 4).await.unwrap();
        assert_eq!(
            code(client.create_table("events", &schema(), 4).await),
            ErrorCode::ResourceInUse
        );
        assert_eq!(
            client.list_tables().await.unwrap(),
            vec!["events".to_owned()]
        );
        assert_eq!(client.describe_table("events").await.unwrap().partitions, 4);

        for user in ["ann", "bob", "cy"] {
            for ts in 0..30 {
                let item = key(user, ts).with("n", AttributeValue::N(Number::from_i64(ts * 10)));
                client.put_item("events", &item, None).await.unwrap();
            }
        }
        let got = client
            .get_item("events", &key("bob", 7))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.get("n"), Some(&AttributeValue::N(Number::from_i64(70))));
        assert_eq!(
            client.get_item("events", &key("bob", 99)).await.unwrap(),
            None
        );
        // Eventually consistent reads may be served by any replica (the
        // router starts each at the next one): a run of them, spread over
        // the group, all see the write once every replica applied it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut agreeing = 0;
        while agreeing < 9 {
            let read = client
                .get_item_with("events", &key("bob", 7), false)
                .await
                .unwrap();
            if read.as_ref() == Some(&got) {
                agreeing += 1;
            } else {
                agreeing = 0;
                assert!(
                    std::time::Instant::now() < deadline,
                    "a replica never served the write: {read:?}"
                );
            }
        }

        // Update with a condition, then a failing condition.
        let at = |v: i64| Condition::Compare {
            attribute: "n".into(),
            op: CompareOp::Eq,
            value: AttributeValue::N(Number::from_i64(v)),
        };
        let set = vec![UpdateAction::Set(
            "n".into(),
            AttributeValue::N(Number::from_i64(1)),
        )];
        let updated = client
            .update_item("events", &key("bob", 7), &set, Some(&at(70)))
            .await
            .unwrap();
        assert_eq!(
            updated.get("n"),
            Some(&AttributeValue::N(Number::from_i64(1)))
        );
        assert_eq!(
            code(
                client
                    .update_item("events", &key("bob", 7), &set, Some(&at(70)))
                    .await
            ),
            ErrorCode::ConditionalCheckFailed
        );
        client
            .delete_item("events", &key("bob", 7), Some(&at(1)))
            .await
            .unwrap();
        // ADD: an atomic counter, and a type mismatch refused.
        let add = |v: i64| {
            vec![UpdateAction::Add(
                "hits".into(),
                AttributeValue::N(Number::from_i64(v)),
            )]
        };
        client
            .update_item("events", &key("ann", 1), &add(5), None)
            .await
            .unwrap();
        let counted = client
            .update_item("events", &key("ann", 1), &add(-2), None)
            .await
            .unwrap();
        assert_eq!(
            counted.get("hits"),
            Some(&AttributeValue::N(Number::from_i64(3)))
        );
        let wrong = vec![UpdateAction::Add(
            "user".into(),
            AttributeValue::N(Number::from_i64(1)),
        )];
        assert_eq!(
            code(
                client
                    .update_item("events", &key("ann", 1), &wrong, None)
                    .await
            ),
            ErrorCode::Validation
        );
        let not_a_number = vec![UpdateAction::Add(
            "hits".into(),
            AttributeValue::S("x".into()),
        )];
        assert_eq!(
            code(
                client
                    .update_item("events", &key("ann", 1), &not_a_number, None)
                    .await
            ),
            ErrorCode::Validation
        );
        assert_eq!(
            client.get_item("events", &key("bob", 7)).await.unwrap(),
            None
        );

        // Query bob's items 10 < ts <= 20 backwards, 4 per page.
        let bob = AttributeValue::S("bob".into());
        let (low, high) = (
            AttributeValue::N(Number::from_i64(10)),
            AttributeValue::N(Number::from_i64(20)),
        );
        let mut seen = Vec::new();
        let mut resume: Option<Vec<u8>> = None;
        loop {
            let page = client
                .query(
                    "events",
                    &bob,
                    Bound::Excluded(&low),
                    Bound::Included(&high),
                    true,
                    4,
                    resume.as_deref(),
                )
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|i| i.get("ts").cloned().unwrap()));
            match page.last_key {
                Some(last) => resume = Some(last),
                None => break,
            }
        }
        let want: Vec<AttributeValue> = (11..=20)
            .rev()
            .map(|t| AttributeValue::N(Number::from_i64(t)))
            .collect();
        assert_eq!(seen, want);

        // Scan the whole table in pages of 7.
        let mut count = 0;
        let mut start = None;
        loop {
            let page = client.scan("events", 7, start).await.unwrap();
            count += page.items.len();
            match page.last {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        assert_eq!(count, 89);

        client.delete_table("events").await.unwrap();
        assert_eq!(
            code(client.get_item("events", &key("ann", 1)).await),
            ErrorCode::ResourceNotFound
        );
    });
}

#[test]
fn bad_input_gets_typed_errors_and_the_cluster_keeps_serving() {
    bad_input(&cluster());
}

#[test]
fn bad_input_to_replication_groups_gets_typed_errors() {
    bad_input(&cluster_of(3));
}

fn bad_input(cluster: &Cluster) {
    with_client(cluster, async |client| {
        client.create_table("things", &schema(), 2).await.unwrap();
        // Unknown table.
        assert_eq!(
            code(client.get_item("nope", &key("a", 1)).await),
            ErrorCode::ResourceNotFound
        );
        // Oversize item.
        let big = key("a", 1).with("blob", AttributeValue::B(vec![0; 401 * 1024]));
        assert_eq!(
            code(client.put_item("things", &big, None).await),
            ErrorCode::Validation
        );
        // Wrong key type, missing key, empty key.
        let wrong = Item::new()
            .with("user", AttributeValue::N(Number::from_i64(1)))
            .with("ts", AttributeValue::N(Number::from_i64(1)));
        assert_eq!(
            code(client.put_item("things", &wrong, None).await),
            ErrorCode::Validation
        );
        let missing = Item::new().with("user", AttributeValue::S("a".into()));
        assert_eq!(
            code(client.get_item("things", &missing).await),
            ErrorCode::Validation
        );
        assert_eq!(
            code(client.put_item("things", &key("", 1), None).await),
            ErrorCode::Validation
        );
        // Bad table names and partition counts.
        assert_eq!(
            code(client.create_table("x", &schema(), 2).await),
            ErrorCode::Validation
        );
        assert_eq!(
            code(client.create_table("fine_name", &schema(), 0).await),
            ErrorCode::Validation
        );
        // A frame that fails its checksum, and bytes that are not a message.
        let mut damaged = cairn_common::quic::frame(b"garbage").unwrap();
        damaged[9] ^= 1;
        let answer = client
            .connection()
            .request_raw(damaged, Duration::from_secs(5))
            .await
            .unwrap();
        let response = cairn_common::wire::decode_response(&answer).unwrap();
        assert!(
            matches!(
                response,
                cairn_common::wire::Response::Error {
                    code: ErrorCode::Malformed,
                    ..
                }
            ),
            "{response:?}"
        );
        let answer = client
            .connection()
            .request(b"not a message", Duration::from_secs(5))
            .await
            .unwrap();
        let response = cairn_common::wire::decode_response(&answer).unwrap();
        assert!(
            matches!(
                response,
                cairn_common::wire::Response::Error {
                    code: ErrorCode::Malformed,
                    ..
                }
            ),
            "{response:?}"
        );
        // Still serving.
        client.put_item("things", &key("a", 1), None).await.unwrap();
        assert!(
            client
                .get_item("things", &key("a", 1))
                .await
                .unwrap()
                .is_some()
        );
    });
}

/// Router cores each keep a copy of the catalog: a table created or
/// deleted through one connection must be seen through every other (eight
/// connections spread over the router's two cores by the kernel).
#[test]
fn table_changes_reach_every_router_core() {
    let cluster = cluster();
    let (router, identity) = (cluster.router, cluster.identity.clone());
    with_client(&cluster, async move |admin| {
        let config = identity.client_config().unwrap();
        let mut clients = Vec::new();
        for _ in 0..8 {
            let endpoint =
                Endpoint::bind("127.0.0.1:0".parse().unwrap(), None, Some(config.clone())).unwrap();
            clients.push(
                Client::connect(&endpoint, router, "localhost")
                    .await
                    .unwrap(),
            );
        }
        for client in &clients {
            assert_eq!(
                code(client.get_item("shared", &key("a", 1)).await),
                ErrorCode::ResourceNotFound
            );
        }
        admin.create_table("shared", &schema(), 2).await.unwrap();
        for client in &clients {
            assert_eq!(client.get_item("shared", &key("a", 1)).await.unwrap(), None);
        }
        admin.delete_table("shared").await.unwrap();
        for client in &clients {
            assert_eq!(
                code(client.get_item("shared", &key("a", 1)).await),
                ErrorCode::ResourceNotFound
            );
        }
    });
}

/// A page holds at most about 1 MiB, as a DynamoDB page holds 1 MB: 30
/// items of 100 KB come back in several pages, from a Query and from a
/// Scan, and paging still returns every item once. (Before the bound, a
/// page of large items could outgrow the 2 MiB frame and fail.)
#[test]
fn pages_stop_at_a_mebibyte() {
    let cluster = cluster();
    with_client(&cluster, async |client| {
        client.create_table("large", &schema(), 2).await.unwrap();
        let blob = |ts: i64| AttributeValue::B(vec![ts as u8; 100 * 1024]);
        for ts in 0..30 {
            let item = key("big", ts).with("blob", blob(ts));
            client.put_item("large", &item, None).await.unwrap();
        }
        let exact = AttributeValue::S("big".into());
        let (mut pages, mut seen, mut resume) = (0, Vec::new(), None::<Vec<u8>>);
        loop {
            let page = client
                .query(
                    "large",
                    &exact,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    false,
                    1000,
                    resume.as_deref(),
                )
                .await
                .unwrap();
            pages += 1;
            let bytes: usize = page.items.iter().map(Item::size_bytes).sum();
            assert!(bytes <= (1 << 20) + 101 * 1024, "a page of {bytes} bytes");
            seen.extend(page.items.iter().map(|i| i.get("ts").cloned().unwrap()));
            match page.last_key {
                Some(last) => resume = Some(last),
                None => break,
            }
        }
        assert!(pages >= 3, "{pages} pages");
        let want: Vec<AttributeValue> = (0..30)
            .map(|t| AttributeValue::N(Number::from_i64(t)))
            .collect();
        assert_eq!(seen, want);
        let (mut pages, mut count, mut start) = (0, 0, None);
        loop {
            let page = client.scan("large", 1000, start).await.unwrap();
            pages += 1;
            count += page.items.len();
            match page.last {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        assert!(pages >= 3, "{pages} scan pages");
        assert_eq!(count, 30);
    });
}

/// A provisioned table's partitions admit their share of its capacity and
/// throttle the rest with a retryable error; an on-demand table beside it
/// on the same node is not held back.
#[test]
fn provisioned_capacity_throttles_its_own_table_only() {
    use cairn_common::wire::Capacity;
    let cluster = cluster();
    with_client(&cluster, async |client| {
        let capacity = Capacity::Provisioned {
            read_units: 20,
            write_units: 10,
        };
        client
            .create_table_with("limited", &schema(), 1, capacity)
            .await
            .unwrap();
        client.create_table("free", &schema(), 1).await.unwrap();
        let described = client.describe_table("limited").await.unwrap();
        assert_eq!(described.capacity, capacity);
        let started = std::time::Instant::now();
        let (mut admitted, mut throttled) = (0u64, 0u64);
        for ts in 0..100 {
            match client.put_item("limited", &key("w", ts), None).await {
                Ok(()) => admitted += 1,
                Err(error) => {
                    assert_eq!(error.code(), Some(ErrorCode::Throttling), "{error}");
                    assert!(error.is_retryable());
                    throttled += 1;
                }
            }
        }
        // A full second to start, plus what refilled while it ran (the
        // partition has saved nothing yet: it is new).
        let allowed = 10 + (10.0 * started.elapsed().as_secs_f64()).ceil() as u64;
        assert!(
            (10..=allowed).contains(&admitted),
            "{admitted} admitted, {allowed} allowed"
        );
        assert_eq!(admitted + throttled, 100);
        // The other table's writes all pass, at the same time.
        for ts in 0..100 {
            client.put_item("free", &key("w", ts), None).await.unwrap();
        }
        // Reads draw on their own units: a second's worth, plus what the
        // partition saved since its first request (burst capacity).
        let mut read = 0u64;
        for ts in 0..100 {
            if client.get_item("limited", &key("w", ts)).await.is_ok() {
                read += 1;
            }
        }
        let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as u64;
        assert!(
            (20..=allowed).contains(&read),
            "{read} reads, {allowed} allowed"
        );
    });
}

/// A client with a retry policy rides out throttling: every write of a
/// burst beyond a table's capacity lands, later.
#[test]
fn a_retrying_client_lands_every_throttled_write() {
    use cairn_common::client::RetryPolicy;
    use cairn_common::wire::Capacity;
    let cluster = cluster();
    with_client(&cluster, async |client| {
        let capacity = Capacity::Provisioned {
            read_units: 50,
            write_units: 20,
        };
        client
            .create_table_with("paced", &schema(), 1, capacity)
            .await
            .unwrap();
        let client = client.with_retries(RetryPolicy {
            attempts: 30,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(200),
        });
        for ts in 0..60 {
            client.put_item("paced", &key("r", ts), None).await.unwrap();
        }
        for ts in 0..60 {
            assert!(
                client
                    .get_item("paced", &key("r", ts))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    });
}
