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

fn start(args: &[&str], ready: &str) -> Process {
    Process::start(env!("CARGO_BIN_EXE_cairn"), args, ready)
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
