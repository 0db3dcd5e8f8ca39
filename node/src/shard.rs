//! Thread-per-core shards and the handle other threads use to reach them.
//!
//! A [`StorageNode`] starts one glommio executor per core, each pinned to
//! its CPU with core_affinity and owning an [`Engine`] over its own
//! directory (`core-N/`). A partition lives on exactly one shard
//! (`partition % cores`); every operation travels to it as a [`Command`]
//! over a bounded channel and its answer comes back on a reply channel. No
//! lock is shared between shards.
//!
//! Bounds: each shard's queue holds `queue_depth` commands and runs at most
//! `in_flight_max` at once; beyond either the caller gets
//! [`NodeError::Overloaded`], which is retryable. A paced upkeep task per
//! shard checkpoints when the engine asks for it and keeps WAL spares ready.

use std::cell::Cell;
use std::ops::Bound;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use cairn_common::condition::Condition;
use cairn_common::quic::{Endpoint, Identity};
use cairn_common::update::UpdateAction;
use cairn_common::wire::ReturnValues;
use cairn_common::{Item, KeySchema};
use event_listener::Event;
use glommio::{LocalExecutorBuilder, Placement};

use crate::admission::ShardCapacity;
use crate::device::DmaFs;
use crate::engine::{Engine, EngineConfig, EngineError, OpenReport, PartitionId, ScanPage, Write};
use crate::metrics::ShardCounters;
use crate::preflight::{IO_MEMORY_BYTES, PreflightError, preflight};
use crate::replication::{Replication, ReplicationConfig};
use crate::server::Admitter;

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub cores: usize,
    pub engine: EngineConfig,
    /// Commands a shard's queue holds before callers are throttled.
    pub queue_depth: usize,
    /// Commands a shard runs concurrently before callers are throttled.
    pub in_flight_max: usize,
    /// How often a shard's upkeep task looks at checkpoint and WAL needs.
    pub upkeep_interval: Duration,
    /// Serve requests over QUIC (shard `i` on port `listen.port() + i`).
    /// Replicated partitions need it: their replicas talk over it.
    pub network: Option<NodeNetwork>,
    pub replication: ReplicationConfig,
    /// What each shard may serve, in units per second, whatever its
    /// partitions' limits (docs/admission.md); none: unbounded.
    pub shard_capacity: Option<ShardCapacity>,
    /// Serve Prometheus scrapes of the shards' consumed capacity and
    /// throttles here (TCP, `GET /metrics`; needs `network`).
    pub metrics: Option<SocketAddr>,
}

/// Where and as whom a node serves the network.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    pub listen: SocketAddr,
    pub identity: Identity,
    /// The name peer nodes' certificates are issued for.
    pub peer_server_name: String,
}

/// The address shard `index` of a node listening on `base` serves.
pub fn shard_addr(base: SocketAddr, index: usize) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port() + index as u16)
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>, cores: usize) -> Self {
        Self {
            data_dir: data_dir.into(),
            cores,
            engine: EngineConfig::default(),
            queue_depth: 4096,
            in_flight_max: 1024,
            upkeep_interval: Duration::from_millis(20),
            network: None,
            replication: ReplicationConfig::default(),
            shard_capacity: None,
            metrics: None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("shard {shard} is overloaded; retry later")]
    Overloaded { shard: usize },
    #[error("shard {shard} has stopped")]
    ShardStopped { shard: usize },
    #[error("preflight failed: {0}")]
    Preflight(String),
    #[error("shard {shard} failed to start: {message}")]
    Startup { shard: usize, message: String },
}

impl NodeError {
    pub fn is_retryable(&self) -> bool {
        match self {
            NodeError::Overloaded { .. } => true,
            NodeError::Engine(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<PreflightError> for NodeError {
    fn from(error: PreflightError) -> Self {
        NodeError::Preflight(error.to_string())
    }
}

type Reply = async_channel::Sender<Result<Outcome, NodeError>>;

/// An operation on one partition (or, for `Checkpoint`, on its shard).
#[derive(Debug, Clone)]
pub enum Op {
    CreatePartition {
        schema: KeySchema,
    },
    Put {
        item: Item,
        condition: Option<Condition>,
        returns: ReturnValues,
    },
    Delete {
        key: Item,
        condition: Option<Condition>,
        returns: ReturnValues,
    },
    Update {
        key: Item,
        changes: Vec<UpdateAction>,
        condition: Option<Condition>,
        returns: ReturnValues,
    },
    Get {
        key: Item,
    },
    Scan(ScanRequest),
    /// Only through a replicated partition's log (docs/metadata.md).
    Split {
        at: u64,
        child: PartitionId,
    },
    Checkpoint,
}

impl Op {
    /// A write's effect and the image it answers with; `None` for reads
    /// and admin operations.
    pub fn write(&self) -> Option<(Write<'_>, ReturnValues)> {
        Some(match self {
            Op::Put {
                item,
                condition,
                returns,
            } => (
                Write::Put {
                    item,
                    condition: condition.as_ref(),
                },
                *returns,
            ),
            Op::Delete {
                key,
                condition,
                returns,
            } => (
                Write::Delete {
                    key,
                    condition: condition.as_ref(),
                },
                *returns,
            ),
            Op::Update {
                key,
                changes,
                condition,
                returns,
            } => (
                Write::Update {
                    key,
                    changes,
                    condition: condition.as_ref(),
                },
                *returns,
            ),
            _ => return None,
        })
    }
}

/// What an operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Item(Option<Item>),
    Page(ScanPage),
}

/// An operation for one shard, with the channel for its answer.
#[derive(Debug)]
pub struct Command {
    pub partition: PartitionId,
    pub op: Op,
    pub reply: Reply,
}

/// A range read: encoded key bounds, direction, limit and resume key.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
    pub reverse: bool,
    pub limit: usize,
    /// The page ends once it holds this many bytes (capped at
    /// `engine::PAGE_BYTES_MAX`).
    pub bytes_max: usize,
    pub resume_after: Option<Vec<u8>>,
}

impl ScanRequest {
    /// Every item of the partition, in pages of `limit`.
    pub fn all(limit: usize) -> Self {
        ScanRequest {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit,
            bytes_max: usize::MAX,
            resume_after: None,
        }
    }
}

/// What a write answers: nothing, or the image it was asked for.
fn written(returns: ReturnValues, image: Option<Item>) -> Outcome {
    if returns == ReturnValues::None {
        Outcome::Done
    } else {
        Outcome::Item(image)
    }
}

/// Runs `op` on `partition` of `engine`.
pub async fn execute(
    engine: &Engine<DmaFs>,
    partition: PartitionId,
    op: Op,
) -> Result<Outcome, NodeError> {
    Ok(match op {
        Op::CreatePartition { schema } => {
            engine.create_partition(partition, schema).await?;
            Outcome::Done
        }
        Op::Put { .. } | Op::Delete { .. } | Op::Update { .. } => {
            let (write, returns) = op.write().expect("a write");
            written(returns, engine.perform(partition, write, returns).await?)
        }
        Op::Get { key } => Outcome::Item(engine.get_item(partition, &key).await?),
        Op::Scan(scan) => {
            let range = (
                scan.start.as_ref().map(Vec::as_slice),
                scan.end.as_ref().map(Vec::as_slice),
            );
            Outcome::Page(
                engine
                    .scan_bounded(
                        partition,
                        range,
                        scan.reverse,
                        scan.limit,
                        scan.bytes_max,
                        scan.resume_after.as_deref(),
                    )
                    .await?,
            )
        }
        Op::Checkpoint => {
            engine.checkpoint().await?;
            Outcome::Done
        }
        Op::Split { .. } => {
            return Err(EngineError::InvalidSplit {
                partition,
                reason: "only a replicated partition splits (through its log)".into(),
            }
            .into());
        }
    })
}

#[derive(Debug)]
struct Shard {
    sender: async_channel::Sender<Command>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

/// A running storage node: one pinned shard per core.
#[derive(Debug)]
pub struct StorageNode {
    shards: Vec<Shard>,
}

impl StorageNode {
    /// Runs the preflight, starts every shard and waits until each has
    /// recovered its engine.
    pub fn start(config: NodeConfig) -> Result<StorageNode, NodeError> {
        preflight(&config.data_dir, config.cores)?;
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let mut shards = Vec::with_capacity(config.cores);
        let mut ready = Vec::with_capacity(config.cores);
        let counters: Arc<Vec<Arc<ShardCounters>>> =
            Arc::new((0..config.cores).map(|_| Arc::default()).collect());
        for index in 0..config.cores {
            let counters = counters.clone();
            let (sender, receiver) = async_channel::bounded(config.queue_depth);
            let (ready_sender, ready_receiver) = async_channel::bounded(1);
            let core = core_ids.get(index).copied();
            let shard_config = config.clone();
            let thread = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("cairn-shard-{index}"))
                .io_memory(IO_MEMORY_BYTES)
                .spawn(move || async move {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core)
                    {
                        tracing::warn!(shard = index, "could not pin shard to its core");
                    }
                    run_shard(index, shard_config, counters, receiver, ready_sender).await;
                })
                .map_err(|e| NodeError::Startup {
                    shard: index,
                    message: e.to_string(),
                })?;
            shards.push(Shard {
                sender,
                thread: Some(thread),
            });
            ready.push(ready_receiver);
        }

        for (index, receiver) in ready.into_iter().enumerate() {
            // Each shard logs what its recovery found; here we wait for it.
            futures_lite::future::block_on(receiver.recv())
                .map_err(|_| NodeError::Startup {
                    shard: index,
                    message: "shard exited during start-up".into(),
                })?
                .map_err(|message| NodeError::Startup {
                    shard: index,
                    message,
                })?;
        }
        Ok(StorageNode { shards })
    }

    pub fn cores(&self) -> usize {
        self.shards.len()
    }

    /// The shard that owns `partition`.
    pub fn shard_of(&self, partition: PartitionId) -> usize {
        (partition % self.shards.len() as u64) as usize
    }

    /// Sends `op` to the shard owning `partition` and waits for the answer.
    pub async fn call(&self, partition: PartitionId, op: Op) -> Result<Outcome, NodeError> {
        self.call_shard(self.shard_of(partition), partition, op)
            .await
    }

    async fn call_shard(
        &self,
        shard: usize,
        partition: PartitionId,
        op: Op,
    ) -> Result<Outcome, NodeError> {
        let (reply, receiver) = async_channel::bounded(1);
        self.shards[shard]
            .sender
            .try_send(Command {
                partition,
                op,
                reply,
            })
            .map_err(|e| match e {
                async_channel::TrySendError::Full(_) => NodeError::Overloaded { shard },
                async_channel::TrySendError::Closed(_) => NodeError::ShardStopped { shard },
            })?;
        receiver
            .recv()
            .await
            .map_err(|_| NodeError::ShardStopped { shard })?
    }

    pub async fn create_partition(
        &self,
        partition: PartitionId,
        schema: KeySchema,
    ) -> Result<(), NodeError> {
        self.call(partition, Op::CreatePartition { schema })
            .await
            .map(|_| ())
    }

    pub async fn put_item(&self, partition: PartitionId, item: Item) -> Result<(), NodeError> {
        self.call(
            partition,
            Op::Put {
                item,
                condition: None,
                returns: ReturnValues::None,
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_item(&self, partition: PartitionId, key: Item) -> Result<(), NodeError> {
        self.call(
            partition,
            Op::Delete {
                key,
                condition: None,
                returns: ReturnValues::None,
            },
        )
        .await
        .map(|_| ())
    }

    /// Sets (`Some`) or removes (`None`) attributes; returns the new item.
    pub async fn update_item(
        &self,
        partition: PartitionId,
        key: Item,
        changes: Vec<UpdateAction>,
    ) -> Result<Item, NodeError> {
        match self
            .call(
                partition,
                Op::Update {
                    key,
                    changes,
                    condition: None,
                    returns: ReturnValues::AllNew,
                },
            )
            .await?
        {
            Outcome::Item(Some(item)) => Ok(item),
            other => unreachable!("update answered {other:?}"),
        }
    }

    pub async fn get_item(
        &self,
        partition: PartitionId,
        key: Item,
    ) -> Result<Option<Item>, NodeError> {
        match self.call(partition, Op::Get { key }).await? {
            Outcome::Item(item) => Ok(item),
            other => unreachable!("get answered {other:?}"),
        }
    }

    pub async fn scan(
        &self,
        partition: PartitionId,
        scan: ScanRequest,
    ) -> Result<ScanPage, NodeError> {
        match self.call(partition, Op::Scan(scan)).await? {
            Outcome::Page(page) => Ok(page),
            other => unreachable!("scan answered {other:?}"),
        }
    }

    /// Checkpoints every shard.
    pub async fn checkpoint(&self) -> Result<(), NodeError> {
        for shard in 0..self.shards.len() {
            self.call_shard(shard, 0, Op::Checkpoint).await?;
        }
        Ok(())
    }

    /// Stops accepting commands, lets in-flight ones finish, checkpoints
    /// and joins every shard thread.
    pub fn shutdown(mut self) {
        for shard in &self.shards {
            shard.sender.close();
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take()
                && thread.join().is_err()
            {
                tracing::error!("a shard thread panicked");
            }
        }
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.sender.close();
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Answers Prometheus's scrapes with every shard's counters.
async fn serve_metrics(
    listener: glommio::net::TcpListener,
    counters: Arc<Vec<Arc<ShardCounters>>>,
) {
    while let Ok(stream) = listener.accept().await {
        let counters = counters.clone();
        glommio::spawn_local(cairn_common::scrape::serve_scrape(stream, move || {
            crate::metrics::encode(&counters)
        }))
        .detach();
    }
}

async fn run_shard(
    index: usize,
    config: NodeConfig,
    counters: Arc<Vec<Arc<ShardCounters>>>,
    commands: async_channel::Receiver<Command>,
    ready: async_channel::Sender<Result<OpenReport, String>>,
) {
    let dir = config.data_dir.join(format!("core-{index}"));
    let opened = match DmaFs::open(&dir).await {
        Ok(fs) => Engine::open(Rc::new(fs), config.engine.clone())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    };
    let (engine, report) = match opened {
        Ok((engine, report)) => (Rc::new(engine), report),
        Err(message) => {
            let _ = ready.send(Err(message)).await;
            return;
        }
    };
    let in_flight = Rc::new(Cell::new(0usize));
    if let Some(network) = &config.network {
        let addr = shard_addr(network.listen, index);
        let tls = network
            .identity
            .server_config()
            .and_then(|server| Ok((server, network.identity.client_config()?)))
            .map_err(|e| format!("TLS identity: {e}"));
        let endpoint = tls.and_then(|(server, client)| {
            Endpoint::bind(addr, Some(server), Some(client))
                .map_err(|e| format!("listening on {addr}: {e}"))
        });
        let admitter = Rc::new(Admitter::new(
            config.shard_capacity,
            counters[index].clone(),
        ));
        // Shard 0 answers scrapes, for every shard.
        if let Some(addr) = config.metrics.filter(|_| index == 0) {
            match cairn_common::tcp::listen(addr) {
                Ok(listener) => {
                    glommio::spawn_local(serve_metrics(listener, counters.clone())).detach();
                }
                Err(error) => {
                    let _ = ready
                        .send(Err(format!("metrics endpoint on {addr}: {error}")))
                        .await;
                    return;
                }
            }
        }
        let started = match endpoint {
            Ok(endpoint) => Replication::start(
                index,
                engine.clone(),
                endpoint.clone(),
                network.peer_server_name.clone(),
                config.replication.clone(),
                admitter.clone(),
            )
            .await
            .map(|replication| (endpoint, replication))
            .map_err(|e| format!("starting replication: {e}")),
            Err(message) => Err(message),
        };
        match started {
            Ok((endpoint, replication)) => {
                let serving = crate::server::serve(
                    engine.clone(),
                    Some(replication),
                    endpoint,
                    in_flight.clone(),
                    config.in_flight_max,
                    admitter,
                );
                glommio::spawn_local(serving).detach();
            }
            Err(message) => {
                let _ = ready.send(Err(message)).await;
                return;
            }
        }
    }
    tracing::info!(shard = index, ?report, "shard recovered");
    let _ = ready.send(Ok(report)).await;
    let stopping = Rc::new(Cell::new(false));
    let upkeep = glommio::spawn_local(upkeep(
        index,
        engine.clone(),
        stopping.clone(),
        config.upkeep_interval,
    ));
    let drained = Rc::new(Event::new());
    while let Ok(command) = commands.recv().await {
        if in_flight.get() >= config.in_flight_max {
            // The reply channel has room for exactly one answer.
            let _ = command
                .reply
                .try_send(Err(NodeError::Overloaded { shard: index }));
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let (engine, in_flight, drained) = (engine.clone(), in_flight.clone(), drained.clone());
        glommio::spawn_local(async move {
            let result = execute(&engine, command.partition, command.op).await;
            // A closed reply channel means the caller gave up: nothing to do.
            let _ = command.reply.try_send(result);
            in_flight.set(in_flight.get() - 1);
            drained.notify(usize::MAX);
        })
        .detach();
    }
    loop {
        let listener = drained.listen();
        if in_flight.get() == 0 {
            break;
        }
        listener.await;
    }
    stopping.set(true);
    upkeep.await;
    if let Err(error) = engine.checkpoint().await {
        tracing::error!(shard = index, %error, "final checkpoint failed; the WAL will be replayed at start");
    }
}

/// Paced background work: checkpoints when due, WAL spares and recycling.
async fn upkeep(
    index: usize,
    engine: Rc<Engine<DmaFs>>,
    stopping: Rc<Cell<bool>>,
    interval: Duration,
) {
    while !stopping.get() {
        glommio::timer::sleep(interval).await;
        if engine.needs_checkpoint()
            && let Err(error) = engine.checkpoint().await
        {
            tracing::error!(shard = index, %error, "checkpoint failed");
            return;
        }
        if let Err(error) = engine.maintain().await {
            tracing::error!(shard = index, %error, "WAL upkeep failed");
            return;
        }
    }
}
