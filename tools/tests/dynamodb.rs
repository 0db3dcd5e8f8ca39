//! The DynamoDB endpoint driven by boto3, the way existing clients use it:
//! `cairn up` in a real process, then tests/dynamodb/smoke.py. .ci/run
//! installs boto3.

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
    let output = Command::new("python3")
        .args([script, &endpoint, &value("id"), &value("secret")])
        .output()
        .expect("python3 runs (boto3 is installed by .ci/run)");
    assert!(
        output.status.success(),
        "smoke.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
