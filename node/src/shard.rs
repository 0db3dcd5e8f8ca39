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
use std::time::Duration;

use cairn_common::{AttributeValue, Item, KeySchema};
use event_listener::Event;
use glommio::{LocalExecutorBuilder, Placement};

use crate::device::DmaFs;
use crate::engine::{
    CheckpointReport, Engine, EngineConfig, EngineError, OpenReport, PartitionId, ScanPage,
};
use crate::preflight::{IO_MEMORY_BYTES, PreflightError, preflight};

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

type Reply<T> = async_channel::Sender<Result<T, NodeError>>;

/// An operation for one shard.
#[derive(Debug)]
pub enum Command {
    CreatePartition {
        partition: PartitionId,
        schema: KeySchema,
        reply: Reply<()>,
    },
    Put {
        partition: PartitionId,
        item: Item,
        reply: Reply<()>,
    },
    Delete {
        partition: PartitionId,
        key: Item,
        reply: Reply<()>,
    },
    Update {
        partition: PartitionId,
        key: Item,
        changes: Vec<(String, Option<AttributeValue>)>,
        reply: Reply<Item>,
    },
    Get {
        partition: PartitionId,
        key: Item,
        reply: Reply<Option<Item>>,
    },
    Scan {
        partition: PartitionId,
        scan: ScanRequest,
        reply: Reply<ScanPage>,
    },
    Checkpoint {
        reply: Reply<Option<CheckpointReport>>,
    },
}

/// A range read: encoded key bounds, direction, limit and resume key.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
    pub reverse: bool,
    pub limit: usize,
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
            resume_after: None,
        }
    }
}

impl Command {
    fn reject(self, error: NodeError) {
        // The reply channel has room for exactly this one answer.
        match self {
            Command::CreatePartition { reply, .. }
            | Command::Put { reply, .. }
            | Command::Delete { reply, .. } => {
                let _ = reply.try_send(Err(error));
            }
            Command::Get { reply, .. } => {
                let _ = reply.try_send(Err(error));
            }
            Command::Update { reply, .. } => {
                let _ = reply.try_send(Err(error));
            }
            Command::Scan { reply, .. } => {
                let _ = reply.try_send(Err(error));
            }
            Command::Checkpoint { reply } => {
                let _ = reply.try_send(Err(error));
            }
        }
    }

    async fn execute(self, engine: &Engine<DmaFs>) {
        // The reply channel has room for the answer, so try_send succeeds
        // unless the caller gave up and dropped its receiver.
        match self {
            Command::CreatePartition {
                partition,
                schema,
                reply,
            } => {
                let _ = reply.try_send(
                    engine
                        .create_partition(partition, schema)
                        .await
                        .map_err(Into::into),
                );
            }
            Command::Put {
                partition,
                item,
                reply,
            } => {
                let _ = reply.try_send(engine.put_item(partition, &item).await.map_err(Into::into));
            }
            Command::Delete {
                partition,
                key,
                reply,
            } => {
                let _ = reply.try_send(
                    engine
                        .delete_item(partition, &key)
                        .await
                        .map_err(Into::into),
                );
            }
            Command::Get {
                partition,
                key,
                reply,
            } => {
                let _ = reply.try_send(engine.get_item(partition, &key).await.map_err(Into::into));
            }
            Command::Update {
                partition,
                key,
                changes,
                reply,
            } => {
                let result = engine.update_item(partition, &key, &changes).await;
                let _ = reply.try_send(result.map_err(Into::into));
            }
            Command::Scan {
                partition,
                scan,
                reply,
            } => {
                let range = (
                    scan.start.as_ref().map(Vec::as_slice),
                    scan.end.as_ref().map(Vec::as_slice),
                );
                let result = engine
                    .scan(
                        partition,
                        range,
                        scan.reverse,
                        scan.limit,
                        scan.resume_after.as_deref(),
                    )
                    .await;
                let _ = reply.try_send(result.map_err(Into::into));
            }
            Command::Checkpoint { reply } => {
                let _ = reply.try_send(engine.checkpoint().await.map_err(Into::into));
            }
        }
    }
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
    open_reports: Vec<OpenReport>,
}

impl StorageNode {
    /// Runs the preflight, starts every shard and waits until each has
    /// recovered its engine.
    pub fn start(config: NodeConfig) -> Result<StorageNode, NodeError> {
        preflight(&config.data_dir, config.cores)?;
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let mut shards = Vec::with_capacity(config.cores);
        let mut ready = Vec::with_capacity(config.cores);
        for index in 0..config.cores {
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
                    run_shard(index, shard_config, receiver, ready_sender).await;
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
        let mut open_reports = Vec::new();
        for (index, receiver) in ready.into_iter().enumerate() {
            let report = futures_lite::future::block_on(receiver.recv())
                .map_err(|_| NodeError::Startup {
                    shard: index,
                    message: "shard exited during start-up".into(),
                })?
                .map_err(|message| NodeError::Startup {
                    shard: index,
                    message,
                })?;
            open_reports.push(report);
        }
        Ok(StorageNode {
            shards,
            open_reports,
        })
    }

    /// What each shard's recovery found.
    pub fn open_reports(&self) -> &[OpenReport] {
        &self.open_reports
    }

    pub fn cores(&self) -> usize {
        self.shards.len()
    }

    /// The shard that owns `partition`.
    pub fn shard_of(&self, partition: PartitionId) -> usize {
        (partition % self.shards.len() as u64) as usize
    }

    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, receiver) = async_channel::bounded(1);
        self.shards[shard]
            .sender
            .try_send(make(reply))
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
        self.call(self.shard_of(partition), |reply| Command::CreatePartition {
            partition,
            schema,
            reply,
        })
        .await
    }

    pub async fn put_item(&self, partition: PartitionId, item: Item) -> Result<(), NodeError> {
        self.call(self.shard_of(partition), |reply| Command::Put {
            partition,
            item,
            reply,
        })
        .await
    }

    pub async fn delete_item(&self, partition: PartitionId, key: Item) -> Result<(), NodeError> {
        self.call(self.shard_of(partition), |reply| Command::Delete {
            partition,
            key,
            reply,
        })
        .await
    }

    pub async fn get_item(
        &self,
        partition: PartitionId,
        key: Item,
    ) -> Result<Option<Item>, NodeError> {
        self.call(self.shard_of(partition), |reply| Command::Get {
            partition,
            key,
            reply,
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) attributes; returns the new item.
    pub async fn update_item(
        &self,
        partition: PartitionId,
        key: Item,
        changes: Vec<(String, Option<AttributeValue>)>,
    ) -> Result<Item, NodeError> {
        let shard = self.shard_of(partition);
        self.call(shard, |reply| Command::Update {
            partition,
            key,
            changes,
            reply,
        })
        .await
    }

    pub async fn scan(
        &self,
        partition: PartitionId,
        scan: ScanRequest,
    ) -> Result<ScanPage, NodeError> {
        self.call(self.shard_of(partition), |reply| Command::Scan {
            partition,
            scan,
            reply,
        })
        .await
    }

    /// Checkpoints every shard.
    pub async fn checkpoint(&self) -> Result<(), NodeError> {
        for shard in 0..self.shards.len() {
            self.call(shard, |reply| Command::Checkpoint { reply })
                .await?;
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

async fn run_shard(
    index: usize,
    config: NodeConfig,
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
    let engine = match opened {
        Ok((engine, report)) => {
            tracing::info!(shard = index, ?report, "shard recovered");
            let _ = ready.send(Ok(report)).await;
            Rc::new(engine)
        }
        Err(message) => {
            let _ = ready.send(Err(message)).await;
            return;
        }
    };
    let stopping = Rc::new(Cell::new(false));
    let upkeep = glommio::spawn_local(upkeep(
        index,
        engine.clone(),
        stopping.clone(),
        config.upkeep_interval,
    ));
    let in_flight = Rc::new(Cell::new(0usize));
    let drained = Rc::new(Event::new());
    while let Ok(command) = commands.recv().await {
        if in_flight.get() >= config.in_flight_max {
            command.reject(NodeError::Overloaded { shard: index });
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let (engine, in_flight, drained) = (engine.clone(), in_flight.clone(), drained.clone());
        glommio::spawn_local(async move {
            command.execute(&engine).await;
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
