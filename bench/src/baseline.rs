//! `cairn bench --baseline`: the floor a durable, replicated write cannot
//! beat on this machine, measured in the same run as the load so the two
//! can be compared on a noisy machine.
//!
//! - **Durable write**: a 4 KiB `pwrite` over already-written blocks
//!   followed by `fdatasync`, in the data directory (the disk's part of a
//!   commit).
//! - **Transport round trip**: a 100-byte request and response over QUIC on
//!   loopback between two glommio executors, through Cairn's own transport
//!   (the network's part of each hop).
//!
//! A replicated write takes three hops (client → router → leader →
//! followers and back), and the leader's and followers' flushes overlap, so
//! `durable write + 3 round trips` is the floor to hold its p50 against.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_common::quic::{Endpoint, Identity};

/// Samples of each measurement.
const SAMPLES: usize = 400;

/// What the baseline measured (medians, in microseconds).
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub durable_write_us_p50: f64,
    pub round_trip_us_p50: f64,
}

impl Baseline {
    /// The p50 a replicated write could reach at best.
    pub fn replicated_write_floor_us(&self) -> f64 {
        self.durable_write_us_p50 + 3.0 * self.round_trip_us_p50
    }
}

fn median_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// Measures both parts of the floor.
pub fn measure(dir: &Path) -> anyhow::Result<Baseline> {
    Ok(Baseline {
        durable_write_us_p50: durable_write(dir)?,
        round_trip_us_p50: round_trip()?,
    })
}

fn durable_write(dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("baseline-fsync.tmp");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0xA5u8; 4096];
    // Write the blocks once, so the samples overwrite allocated blocks.
    for i in 0..16u64 {
        file.write_all_at(&block, i * 4096)?;
    }
    file.sync_all()?;
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES as u64 {
        let started = Instant::now();
        file.write_all_at(&block, (i % 16) * 4096)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(median_us(samples))
}

fn round_trip() -> anyhow::Result<f64> {
    let identity = Identity::self_signed(&["localhost"]).map_err(anyhow::Error::msg)?;
    let server = identity.server_config().map_err(anyhow::Error::msg)?;
    let client = identity.client_config().map_err(anyhow::Error::msg)?;
    let (addr_sender, addr) = std::sync::mpsc::channel();
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let server_thread = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let endpoint = Endpoint::bind(
                "127.0.0.1:0".parse().expect("an address"),
                Some(server),
                None,
            )
            .expect("a server endpoint");
            addr_sender
                .send(endpoint.local_addr().expect("bound"))
                .expect("the client waits");
            let serving = async {
                while let Ok(connection) = endpoint.accept().await {
                    glommio::spawn_local(async move {
                        while let Ok(request) = connection.next_request().await {
                            let body = request.body.unwrap_or_default();
                            let _ = connection.respond(request.stream, &body);
                        }
                    })
                    .detach();
                }
            };
            futures_lite::future::or(serving, async {
                let _ = stopped.recv().await;
            })
            .await;
        })
        .map_err(|e| anyhow::anyhow!("starting the echo executor: {e}"))?;
    let server_addr = addr.recv().context("the echo server did not start")?;
    let samples = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let endpoint = Endpoint::bind(
                "127.0.0.1:0".parse().expect("an address"),
                None,
                Some(client),
            )
            .expect("a client endpoint");
            let connection = endpoint
                .connect(server_addr, "localhost")
                .await
                .expect("connected to the echo server");
            let body = [7u8; 100];
            let mut samples = Vec::with_capacity(SAMPLES);
            for _ in 0..SAMPLES + 50 {
                let started = Instant::now();
                connection
                    .request(&body, Duration::from_secs(5))
                    .await
                    .expect("an echo");
                samples.push(started.elapsed());
            }
            samples.split_off(50) // the first requests warm up the path
        })
        .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("the round-trip client failed: {e:?}"))?;
    let _ = stop.try_send(());
    let _ = server_thread.join();
    Ok(median_us(samples))
}
