//! The `cairn` binary as a user runs it.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::process::Command;

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

/// Runs `cairn bench ARGS` with its data and JSON report in `dir`;
/// returns stdout and the report once the run succeeded.
fn bench(dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let json = dir.join("result.json");
    let stdout = cairn_tests::stdout_of_success(
        cairn()
            .arg("bench")
            .args(args)
            .arg("--data-dir")
            .arg(dir.join("node"))
            .arg("--json")
            .arg(&json),
    );
    (stdout, std::fs::read_to_string(&json).unwrap())
}

/// The README's main job, shrunk: load, run workload A, report.
#[test]
fn bench_runs_a_workload_and_writes_its_reports() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let hgrm = dir.path().join("hgrm");
    let args = [
        "--records",
        "2000",
        "--clients",
        "4",
        "--duration-s",
        "1",
        "--hgrm-dir",
        hgrm.to_str().unwrap(),
    ];
    let (stdout, report) = bench(dir.path(), &args);
    assert!(stdout.contains("p99.9_us"), "{stdout}");
    assert!(
        report.starts_with("{\"workload\":\"a\",\"clients\":4,\"target_ops_per_s\":null"),
        "{report}"
    );
    assert!(report.contains("\"errors\":0"), "{report}");
    for operation in ["read", "update"] {
        assert!(
            report.contains(&format!("\"{operation}\":{{\"count\":")),
            "{report}"
        );
        let file = std::fs::read_to_string(hgrm.join(format!("{operation}.hgrm"))).unwrap();
        assert!(file.contains("Total count"), "{file}");
    }
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let output = cairn().args(["bench", "--workload", "z"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("possible values: a, b, c, d, e, f"));
    let output = cairn()
        .args([
            "bench",
            "--router",
            "127.0.0.1:4000",
            "--certificate",
            "/nonexistent/cert.pem",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("router certificate"));
    let output = cairn()
        .args(["table", "create", "t1", "--partition-key", "id:X"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be S, N or B"));
    let output = cairn()
        .args(["preflight", "--data-dir", "/proc/none", "--cores", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/proc/none"));
}

/// The same workload through the DynamoDB-compatible endpoint.
#[test]
fn bench_drives_the_dynamodb_endpoint_too() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let args = [
        "--protocol",
        "dynamodb",
        "--records",
        "1000",
        "--clients",
        "4",
        "--duration-s",
        "1",
    ];
    let (stdout, report) = bench(dir.path(), &args);
    assert!(stdout.contains("Dynamodb protocol"), "{stdout}");
    assert!(
        report.contains("\"errors\":0") && report.contains("\"update\":{\"count\":"),
        "{report}"
    );
}
