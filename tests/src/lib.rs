//! Shared pieces of Cairn's multi-process tests: the configuration the
//! crash writer and its verifier agree on, and the deterministic items it
//! writes, so a verifier can tell a whole item from a torn one; child
//! processes and cluster files; and a linearizability checker
//! ([`linearizable`]).

pub mod linearizable;

use std::path::Path;

use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType, Number};
use cairn_node::wal::WalConfig;
use cairn_node::{EngineConfig, NodeConfig};

/// A small node: short segments and low checkpoint thresholds, so a short
/// run crosses segment rollovers and checkpoints.
pub fn crash_test_config(dir: &Path, cores: usize) -> NodeConfig {
    let mut config = NodeConfig::new(dir, cores);
    config.engine = EngineConfig {
        wal: WalConfig {
            segment_size_bytes: 2 << 20,
            spare_segments: 1,
            ..WalConfig::default()
        },
        page_size: 16 * 1024,
        cache_bytes: 8 << 20,
        checkpoint_dirty_bytes: 1 << 20,
        checkpoint_wal_bytes: 4 << 20,
        dirty_bytes_max: 64 << 20,
    };
    config
}

pub fn schema() -> KeySchema {
    KeySchema::new(
        KeyAttribute::new("round", KeyType::S),
        Some(KeyAttribute::new("seq", KeyType::N)),
    )
}

pub fn key(round: u32, seq: u64) -> Item {
    Item::new()
        .with("round", AttributeValue::S(format!("r{round}")))
        .with("seq", AttributeValue::N(Number::from_i64(seq as i64)))
}

/// The payload writer `writer` stores at `seq` of `round`: its length and
/// bytes depend on all three, so any mix-up or tear shows.
pub fn payload(round: u32, writer: u64, seq: u64) -> Vec<u8> {
    let mut state = (u64::from(round) << 48) ^ (writer << 32) ^ seq ^ 0x9E37_79B9_7F4A_7C15;
    let len = 64 + (state % 1900) as usize;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn item(round: u32, writer: u64, seq: u64) -> Item {
    key(round, seq).with("payload", AttributeValue::B(payload(round, writer, seq)))
}

/// A base port with `count` (at most 200) consecutive free UDP ports on
/// loopback, reserved for this process: distinct from every other range
/// handed out here and in any other process that uses this function
/// (tests run in parallel threads and processes, and glommio binds with
/// port reuse, so a shared range would silently split one cluster's
/// traffic with another's). The ports are released before returning;
/// tests bind them at once.
///
/// A range is reserved by an exclusive lock on a file named after it in
/// the temporary directory, held until the process exits. The ranges lie
/// below Linux's ephemeral ports (32768 and up by default), which any
/// client socket of any test may be given.
pub fn free_udp_ports(count: u16) -> u16 {
    const FIRST: u32 = 20_000;
    const SLOT: u32 = 200;
    const SLOTS: u32 = (32_768 - FIRST) / SLOT;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    assert!(u32::from(count) <= SLOT, "at most {SLOT} ports a range");
    let start = std::process::id() % SLOTS;
    for n in 0..SLOTS {
        let base = (FIRST + (start + n) % SLOTS * SLOT) as u16;
        let lock = std::env::temp_dir().join(format!("cairn-test-ports-{base}.lock"));
        let Ok(file) = std::fs::File::create(&lock) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // another process (or this one) holds it
        }
        let free = (0..count)
            .all(|offset| std::net::UdpSocket::bind(("127.0.0.1", base + offset)).is_ok());
        let mut held = HELD.lock().expect("the reservations");
        held.push(file);
        if free {
            return base;
        }
        // Busy with something else: keep it reserved, so no one tries it
        // again, and look further.
    }
    panic!("no free range of {count} test ports below 32768");
}

/// Runs `body` on a fresh glommio executor with a client connected to the
/// router at `router`, trusting `identity`'s certificate.
pub fn with_client<T: Send + 'static>(
    router: std::net::SocketAddr,
    identity: &cairn_common::quic::Identity,
    body: impl AsyncFnOnce(cairn_common::client::Client) -> T + Send + 'static,
) -> T {
    with_endpoint(identity, async move |endpoint| {
        let client = cairn_common::client::Client::connect(&endpoint, router, "localhost")
            .await
            .expect("connected to the router");
        body(client).await
    })
}

/// Runs `body` on a fresh glommio executor with a client QUIC endpoint
/// on loopback that trusts `identity`'s certificate.
pub fn with_endpoint<T: Send + 'static>(
    identity: &cairn_common::quic::Identity,
    body: impl AsyncFnOnce(cairn_common::quic::Endpoint) -> T + Send + 'static,
) -> T {
    let config = identity
        .client_config()
        .expect("a client TLS configuration");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let local = "127.0.0.1:0".parse().expect("an address");
            let endpoint = cairn_common::quic::Endpoint::bind(local, None, Some(config))
                .expect("a client endpoint");
            body(endpoint).await
        })
        .expect("a client executor")
        .join()
        .expect("the client executor finished")
}

/// The schema of the tests' `user`/`ts` tables: a string partition key
/// and a number sort key.
pub fn user_schema() -> KeySchema {
    KeySchema::new(
        KeyAttribute::new("user", KeyType::S),
        Some(KeyAttribute::new("ts", KeyType::N)),
    )
}

/// A key of a [`user_schema`] table.
pub fn user_key(user: &str, ts: i64) -> Item {
    Item::new()
        .with("user", AttributeValue::S(user.into()))
        .with("ts", AttributeValue::N(Number::from_i64(ts)))
}

/// Bound on waiting for a process to report it is ready.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `cairn up --write-only` (the binary at `cairn`) in `dir`, to write
/// the certificate and the config files of a cluster with `replication`
/// copies whose router listens on `port`.
pub fn write_cluster_files(cairn: &str, dir: &Path, port: u16, replication: u32) {
    write_cluster_files_with(cairn, dir, port, replication, replication as u16);
}

/// As [`write_cluster_files`], with `nodes` storage nodes (one zone each).
pub fn write_cluster_files_with(cairn: &str, dir: &Path, port: u16, replication: u32, nodes: u16) {
    let (dir, port, replication, nodes) = (
        dir.to_str().expect("a UTF-8 path"),
        port.to_string(),
        replication.to_string(),
        nodes.to_string(),
    );
    let args = [
        "up",
        "--dir",
        dir,
        "--port",
        &port,
        "--cores",
        "2",
        "--replication",
        &replication,
        "--nodes",
        &nodes,
        "--write-only",
    ];
    // Writing the files binds nothing: the test's own cluster is the
    // first process on its ports.
    let status = std::process::Command::new(cairn)
        .args(args)
        .status()
        .expect("cairn up runs");
    assert!(status.success(), "cairn up --write-only failed: {status}");
}

/// Waits (at most 10 s) until the `count` ports from `base` can be bound
/// again, UDP and TCP. A killed process's io_uring rings are torn down
/// after it is reaped, and their sockets keep the ports until then: a
/// process started at once on the same port would find it in use.
pub fn await_ports_released(base: u16, count: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let free = |port: u16| {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    while !(0..count).all(|offset| free(base + offset)) {
        assert!(
            std::time::Instant::now() < deadline,
            "ports {base}..{} still in use 10 s after their process was killed",
            base + count
        );
        std::thread::yield_now();
    }
}

/// Starts the MemDS processes whose configs `cairn up` wrote in `dir`
/// (`memds-1.toml`, `memds-2.toml`).
pub fn start_memds(cairn: &str, dir: &Path) -> Vec<Process> {
    (1..=2)
        .map(|m| {
            let config = dir.join(format!("memds-{m}.toml"));
            let config = config.to_str().expect("a UTF-8 path");
            Process::start(cairn, &["memds", "--config", config], "MemDS listening")
        })
        .collect()
}

/// Starts the GAC processes whose configs `cairn up` wrote in `dir`
/// (`gac-1.toml`, `gac-2.toml`).
pub fn start_gac(cairn: &str, dir: &Path) -> Vec<Process> {
    (1..=2).map(|g| start_one_gac(cairn, dir, g)).collect()
}

/// Starts GAC process `g` (1 or 2) of the cluster in `dir`.
pub fn start_one_gac(cairn: &str, dir: &Path, g: u32) -> Process {
    let config = dir.join(format!("gac-{g}.toml"));
    let config = config.to_str().expect("a UTF-8 path");
    Process::start(cairn, &["gac", "--config", config], "GAC listening")
}

/// How many grant requests the GAC process at `addr` has answered.
pub fn gac_requests(addr: std::net::SocketAddr, identity: &cairn_common::quic::Identity) -> u64 {
    use cairn_common::wire::{self, GacRequest, GacResponse};
    with_endpoint(identity, async move |endpoint| {
        let connection = endpoint
            .connect(addr, "localhost")
            .await
            .expect("connected to GAC");
        let request = wire::encode_gac_request(&GacRequest::Stats);
        let answer = connection
            .request(&request, std::time::Duration::from_secs(5))
            .await
            .expect("GAC answered");
        match wire::decode_gac_response(&answer).expect("a GAC response") {
            GacResponse::Stats { requests, .. } => requests,
            other => panic!("GAC answered Stats with {other:?}"),
        }
    })
}

/// A Prometheus scrape of `addr`: every sample line's value by its name
/// and labels.
pub fn scrape(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics endpoint accepts");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: cairn\r\n\r\n")
        .expect("the scrape is sent");
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .expect("the scrape is answered");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .filter(|l| l.starts_with("cairn_"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Runs `command` to its end and returns its stdout; fails the test,
/// showing stdout and stderr, if it did not succeed.
pub fn stdout_of_success(command: &mut std::process::Command) -> String {
    let output = command.output().expect("the command runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A child process that has reported it is ready; killed (SIGKILL) when
/// dropped.
#[derive(Debug)]
pub struct Process(std::process::Child);

impl Process {
    /// Starts `binary ARGS` and waits, at most [`READY_TIMEOUT`], for a
    /// stdout line containing `ready`.
    pub fn start(binary: &str, args: &[&str], ready: &str) -> Process {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the process starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (found, lines) = std::sync::mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains(&ready) {
                    let _ = found.send(());
                }
            }
        });
        lines
            .recv_timeout(READY_TIMEOUT)
            .expect("the process reported ready");
        Process(child)
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.0.kill().expect("kill");
        self.0.wait().expect("wait");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
