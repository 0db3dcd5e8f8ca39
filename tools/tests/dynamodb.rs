//! The DynamoDB endpoint driven by boto3, the way existing clients use it:
//! `cairn up` in a real process, then tests/dynamodb/smoke.py and an AWS
//! CLI round trip. .ci/run installs boto3 and awscli.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::process::Command;

use cairn_tests::Process;

#[test]
fn boto3_drives_the_dynamodb_endpoint() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = cairn_tests::free_udp_ports(200);
    let cluster_dir = dir.path().join("cluster");
    let args = [
        "up",
        "--dir",
        cluster_dir.to_str().unwrap(),
        "--port",
        &base.to_string(),
    ];
    let _cluster = Process::start(env!("CARGO_BIN_EXE_cairn"), &args, "Cairn is up.");
    let keys = std::fs::read_to_string(cluster_dir.join("access-key.toml")).unwrap();
    let value = |name: &str| {
        let line = keys.lines().find(|l| l.starts_with(name)).unwrap();
        line.split('"').nth(1).unwrap().to_owned()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/dynamodb/smoke.py");
    let endpoint = format!("http://127.0.0.1:{}", base + 1);
    // smoke.py splits a table through the native door as an operator would.
    let router = format!("127.0.0.1:{base}");
    let cert = cluster_dir.join("cert.pem");
    let split = [
        env!("CARGO_BIN_EXE_cairn"),
        "table",
        "split",
        "--router",
        &router,
        "--certificate",
        cert.to_str().unwrap(),
    ];
    let output = Command::new("python3")
        .args([script, &endpoint, &value("id"), &value("secret")])
        .args(split)
        .output()
        .expect("python3 runs (boto3 is installed by .ci/run)");
    assert!(
        output.status.success(),
        "smoke.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The AWS CLI: create-table, put-item, query.
    let aws = |args: &[&str]| {
        let output = Command::new("python3")
            .args(["-m", "awscli", "dynamodb"])
            .args(args)
            .args(["--endpoint-url", &endpoint, "--output", "json"])
            .env("AWS_ACCESS_KEY_ID", value("id"))
            .env("AWS_SECRET_ACCESS_KEY", value("secret"))
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .expect("the AWS CLI runs (installed by .ci/run)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "aws {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    aws(&[
        "create-table",
        "--table-name",
        "cli-table",
        "--attribute-definitions",
        "AttributeName=id,AttributeType=S",
        "--key-schema",
        "AttributeName=id,KeyType=HASH",
        "--billing-mode",
        "PAY_PER_REQUEST",
    ]);
    aws(&[
        "put-item",
        "--table-name",
        "cli-table",
        "--item",
        r#"{"id":{"S":"k1"},"v":{"N":"7"}}"#,
    ]);
    let queried = aws(&[
        "query",
        "--table-name",
        "cli-table",
        "--key-condition-expression",
        "id = :k",
        "--expression-attribute-values",
        r#"{":k":{"S":"k1"}}"#,
    ]);
    assert!(
        queried.contains(r#""N": "7""#) && queried.contains(r#""Count": 1"#),
        "{queried}"
    );
}
