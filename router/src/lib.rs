//! The request router: accepts client connections over QUIC, finds each
//! key's partition through the partition map, forwards the request to the
//! node shard that owns it, and passes typed errors back.
//!
//! The router runs one glommio executor per core. The partition map is the
//! static [`catalog`] (MemDS will replace it). Connections to node shards
//! are opened on first use and dropped when they fail, so the next request
//! reconnects; a request to an unreachable node answers `Unavailable`,
//! which clients retry.
//!
//! A replicated partition is reached through its leader: the router keeps
//! a leader guess per partition, follows `NotLeader` hints, and tries the
//! other replicas (with a short backoff) while a group elects, within a
//! deadline. A write whose fate is unknown (the connection failed after it
//! was sent) is not retried here: the client is told `Unavailable`.

pub mod catalog;
pub mod dynamodb;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_common::quic::{Connection, Endpoint, Identity};
use cairn_common::wire::{
    self, ClientRequest, ErrorCode, NodeOp, NodeRequest, Response, TableDescription, WireBound,
};
use cairn_common::{AttributeValue, Item, ItemError, KeySchema};
use glommio::{LocalExecutorBuilder, Placement};

use crate::catalog::{Catalog, NodeAddress, PARTITIONS_MAX, Table, placement, shard_of};

/// How long the router waits for a node: well under the client's own
/// timeout, so a dead node gets the client a retryable `Unavailable` from
/// the router rather than a timeout of its own.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const _: () =
    assert!(NODE_TIMEOUT.as_millis() * 2 <= cairn_common::client::REQUEST_TIMEOUT.as_millis());
/// Most items one Query or Scan page returns.
const PAGE_LIMIT_MAX: u32 = 1000;
/// How long the router tries the replicas of a group before it answers
/// `Unavailable`: about two elections.
const GROUP_DEADLINE: Duration = Duration::from_millis(1800);
const _: () =
    assert!(GROUP_DEADLINE.as_millis() * 2 <= cairn_common::client::REQUEST_TIMEOUT.as_millis());
/// One attempt at one replica of a group: a healthy leader answers in
/// milliseconds, so waiting longer mostly waits on a dead node.
const REPLICA_TIMEOUT: Duration = Duration::from_millis(500);
/// Connecting to a replica: a dead node should cost little of the deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Pause before trying the next replica when none is known to lead.
const ELECTION_BACKOFF: Duration = Duration::from_millis(20);
/// How long a replica that failed to answer is passed over, and hints that
/// name it ignored (its peers keep naming a dead leader until they elect).
const SUSPECT_FOR: Duration = Duration::from_millis(800);

/// How to run a router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub nodes: Vec<NodeAddress>,
    /// Presented to clients, and trusted on node connections.
    pub identity: Identity,
    /// The name nodes' certificates are issued for.
    pub node_server_name: String,
    /// Executors (one per core), each serving its share of connections.
    pub cores: usize,
    /// The DynamoDB-compatible HTTP endpoint, if wanted.
    pub dynamodb: Option<DynamoDbEndpoint>,
    /// Copies of each partition of tables created from now on: 1, or 3 (a
    /// Multi-Paxos group across zones).
    pub replicas: u32,
}

/// Where the DynamoDB endpoint listens and who may use it.
#[derive(Debug, Clone)]
pub struct DynamoDbEndpoint {
    pub listen: SocketAddr,
    pub access: dynamodb::Access,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router configuration: {0}")]
    Config(String),
    #[error("router failed to start: {0}")]
    Startup(String),
}

/// A running router.
#[derive(Debug)]
pub struct Router {
    addr: SocketAddr,
    stop: async_channel::Sender<()>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Router {
    pub fn start(config: RouterConfig) -> Result<Router, RouterError> {
        if config.nodes.is_empty() {
            return Err(RouterError::Config("at least one node is needed".into()));
        }
        if config.cores == 0 {
            return Err(RouterError::Config("cores must be at least 1".into()));
        }
        if !(config.replicas == 1 || config.replicas == 3) {
            return Err(RouterError::Config(format!(
                "replication must be 1 or 3, not {}",
                config.replicas
            )));
        }
        if config.replicas as usize > config.nodes.len() {
            return Err(RouterError::Config(format!(
                "replication {} needs at least as many nodes; {} configured",
                config.replicas,
                config.nodes.len()
            )));
        }
        // Fail early, with the file's name, if the catalog is unreadable.
        Catalog::open(&config.data_dir).map_err(|e| RouterError::Startup(e.to_string()))?;
        let generation = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = async_channel::bounded::<()>(config.cores);
        let mut threads = Vec::new();
        let mut addr = config.listen;
        for core in 0..config.cores {
            let (ready_sender, ready) = async_channel::bounded(1);
            let (mut config, stopped, generation) =
                (config.clone(), stopped.clone(), generation.clone());
            config.listen = addr;
            let thread = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("cairn-router-{core}"))
                .spawn(move || async move {
                    run_core(config, core, generation, ready_sender, stopped).await;
                })
                .map_err(|e| RouterError::Startup(e.to_string()))?;
            threads.push(thread);
            // Core 0 may have bound an ephemeral port: the others share it.
            addr = futures_lite::future::block_on(ready.recv())
                .map_err(|_| RouterError::Startup(format!("router core {core} exited")))?
                .map_err(RouterError::Startup)?;
        }
        Ok(Router {
            addr,
            stop,
            threads,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the router stops (it runs until the process ends).
    pub fn wait(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for _ in 0..self.threads.len() {
            let _ = self.stop.try_send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One router core: its own socket on the shared port, its own copy of
/// the catalog and its own node connections.
async fn run_core(
    config: RouterConfig,
    core: usize,
    generation: Arc<AtomicU64>,
    ready: async_channel::Sender<Result<SocketAddr, String>>,
    stopped: async_channel::Receiver<()>,
) {
    let opened = Catalog::open(&config.data_dir).map_err(|e| e.to_string());
    let bound =
        opened.and_then(|catalog| bind(&config, core).map(|endpoints| (catalog, endpoints)));
    let (catalog, (endpoint, to_nodes)) = match bound {
        Ok(bound) => bound,
        Err(message) => {
            let _ = ready.send(Err(message)).await;
            return;
        }
    };
    let http = match config
        .dynamodb
        .as_ref()
        .map(|d| bind_http(d, core))
        .transpose()
    {
        Ok(http) => http,
        Err(message) => {
            let _ = ready.send(Err(message)).await;
            return;
        }
    };
    let _ = ready
        .send(endpoint.local_addr().map_err(|e| e.to_string()))
        .await;
    let state = Rc::new(State {
        loaded_generation: Cell::new(generation.load(Ordering::Acquire)),
        generation,
        data_dir: config.data_dir.clone(),
        catalog: RefCell::new(catalog),
        nodes: config.nodes.clone(),
        links: RefCell::default(),
        leaders: RefCell::default(),
        suspects: RefCell::default(),
        to_nodes,
        node_server_name: config.node_server_name.clone(),
        replicas: config.replicas,
    });
    if let (Some(listener), Some(dynamodb)) = (http, &config.dynamodb) {
        let access = Rc::new(dynamodb.access.clone());
        glommio::spawn_local(dynamodb::serve(state.clone(), listener, access)).detach();
    }
    let accepting = async {
        while let Ok(connection) = endpoint.accept().await {
            glommio::spawn_local(serve(state.clone(), connection)).detach();
        }
    };
    futures_lite::future::or(accepting, async {
        let _ = stopped.recv().await;
    })
    .await;
}

/// Binds the DynamoDB endpoint's TCP port on one core (all cores share it
/// with SO_REUSEPORT; core 0 first checks no other process holds it).
fn bind_http(
    endpoint: &DynamoDbEndpoint,
    core: usize,
) -> Result<glommio::net::TcpListener, String> {
    let listen = endpoint.listen;
    if core == 0 {
        std::net::TcpListener::bind(listen)
            .map_err(|e| format!("DynamoDB endpoint on {listen}: {e}"))?;
    }
    glommio::net::TcpListener::bind(listen)
        .map_err(|e| format!("DynamoDB endpoint on {listen}: {e}"))
}

/// Binds a core's two endpoints: the client-facing one on the router's
/// port (shared by all cores with SO_REUSEPORT when there are several), and
/// a private one on an ephemeral port for connections to nodes — replies
/// to a shared port could be delivered to another core's socket.
fn bind(config: &RouterConfig, core: usize) -> Result<(Endpoint, Endpoint), String> {
    let server = config.identity.server_config()?;
    let client = config.identity.client_config()?;
    let listening = if config.cores == 1 {
        Endpoint::bind(config.listen, Some(server), None)
    } else {
        // Core 0 must not share the port with another process, so it checks
        // that the port is free first.
        if core == 0 {
            std::net::UdpSocket::bind(config.listen)
                .map_err(|e| format!("listening on {}: {e}", config.listen))?;
        }
        Endpoint::bind_shared(config.listen, Some(server), None)
    }
    .map_err(|e| format!("listening on {}: {e}", config.listen))?;
    let outbound = SocketAddr::new(config.listen.ip(), 0);
    let to_nodes = Endpoint::bind(outbound, None, Some(client))
        .map_err(|e| format!("binding {outbound}: {e}"))?;
    Ok((listening, to_nodes))
}

#[derive(Debug)]
struct State {
    /// Bumped by whichever core changes the catalog; the others reload.
    generation: Arc<AtomicU64>,
    loaded_generation: Cell<u64>,
    data_dir: PathBuf,
    catalog: RefCell<Catalog>,
    nodes: Vec<NodeAddress>,
    links: RefCell<HashMap<SocketAddr, Connection>>,
    /// Replicated partitions: the replica (index in placement order)
    /// believed to lead.
    leaders: RefCell<HashMap<u64, usize>>,
    /// Node shards that recently failed to answer, and when.
    suspects: RefCell<HashMap<SocketAddr, std::time::Instant>>,
    /// Connections to nodes go out from here.
    to_nodes: Endpoint,
    node_server_name: String,
    replicas: u32,
}

/// Why a request to a node shard got no answer.
enum SendError {
    /// It never left: retrying anywhere is safe.
    NotSent(String),
    /// It may have been acted on.
    Lost(String),
}

/// An exclusive lock on the catalog across cores and processes, taken
/// without blocking (the executor must keep serving).
struct CatalogLock {
    /// Held for its lock, which closing the file releases.
    _file: std::fs::File,
}

impl CatalogLock {
    fn try_take(dir: &std::path::Path) -> Result<CatalogLock, Response> {
        let file = std::fs::File::create(dir.join("catalog.lock"))
            .map_err(|e| Response::error(ErrorCode::Internal, format!("catalog lock: {e}")))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !taken {
            return Err(Response::error(
                ErrorCode::Throttling,
                "another table operation is running; retry",
            ));
        }
        Ok(CatalogLock { _file: file })
    }
}

async fn serve(state: Rc<State>, connection: Connection) {
    while let Ok(request) = connection.next_request().await {
        let (state, connection) = (state.clone(), connection.clone());
        glommio::spawn_local(async move {
            let response = match request.body {
                Ok(body) => match wire::decode_client_request(&body) {
                    Ok(request) => state.handle(request).await,
                    Err(error) => Response::error(ErrorCode::Malformed, error.to_string()),
                },
                Err(error) => Response::error(ErrorCode::Malformed, error.to_string()),
            };
            let _ = connection.respond(request.stream, &wire::encode_response(&response));
        })
        .detach();
    }
}

fn validation(error: impl std::fmt::Display) -> Response {
    Response::error(ErrorCode::Validation, error.to_string())
}

/// The partition-key prefix of an encoded stored key.
fn partition_prefix(key: &[u8]) -> &[u8] {
    let len = u16::from_be_bytes([key[0], key[1]]) as usize;
    &key[..2 + len]
}

impl State {
    /// Reloads the catalog if another core changed it.
    fn refresh(&self) -> Result<(), Response> {
        let current = self.generation.load(Ordering::Acquire);
        if current != self.loaded_generation.get() {
            let catalog = Catalog::open(&self.data_dir)
                .map_err(|e| Response::error(ErrorCode::Internal, e.to_string()))?;
            *self.catalog.borrow_mut() = catalog;
            self.loaded_generation.set(current);
        }
        Ok(())
    }

    /// After a catalog change by this core: tell the others.
    fn publish(&self) {
        let next = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.loaded_generation.set(next);
    }

    async fn handle(&self, request: ClientRequest) -> Response {
        if let Err(response) = self.refresh() {
            return response;
        }
        match request {
            ClientRequest::CreateTable {
                table,
                schema,
                partitions,
            } => self.create_table(table, &schema, partitions).await,
            ClientRequest::DescribeTable { table } => match self.table(&table) {
                Ok(t) => Response::Table(TableDescription {
                    name: table,
                    schema: t.schema.encode(),
                    partitions: t.partitions,
                    status: "ACTIVE".into(),
                }),
                Err(response) => response,
            },
            ClientRequest::ListTables => {
                Response::Tables(self.catalog.borrow().tables.keys().cloned().collect())
            }
            ClientRequest::DeleteTable { table } => self.delete_table(&table),
            ClientRequest::PutItem {
                table,
                item,
                condition,
            } => {
                let routed = self.table(&table).and_then(|t| {
                    let decoded = Item::decode(&item).map_err(validation)?;
                    let key = t.schema.key_of_item(&decoded).map_err(validation)?;
                    Ok((t, key))
                });
                match routed {
                    Ok((t, key)) => {
                        self.forward_key(&t, &key, NodeOp::Put { item, condition })
                            .await
                    }
                    Err(response) => response,
                }
            }
            ClientRequest::GetItem {
                table,
                key,
                consistent,
            } => {
                self.keyed(&table, &key, |key| NodeOp::Get { key, consistent })
                    .await
            }
            ClientRequest::DeleteItem {
                table,
                key,
                condition,
            } => {
                self.keyed(&table, &key, |key| NodeOp::Delete { key, condition })
                    .await
            }
            ClientRequest::UpdateItem {
                table,
                key,
                changes,
                condition,
            } => {
                self.keyed(&table, &key, |key| NodeOp::Update {
                    key,
                    changes,
                    condition,
                })
                .await
            }
            ClientRequest::Query {
                table,
                partition_value,
                start,
                end,
                reverse,
                limit,
                exclusive_start_key,
            } => {
                self.query(
                    &table,
                    &partition_value,
                    start,
                    end,
                    reverse,
                    limit,
                    exclusive_start_key,
                )
                .await
            }
            ClientRequest::Scan {
                table,
                limit,
                exclusive_start,
            } => self.scan(&table, limit, exclusive_start).await,
        }
    }

    fn table(&self, name: &str) -> Result<Table, Response> {
        self.catalog
            .borrow()
            .tables
            .get(name)
            .cloned()
            .ok_or_else(|| {
                Response::error(
                    ErrorCode::ResourceNotFound,
                    format!("table {name:?} does not exist"),
                )
            })
    }

    /// Forwards an operation whose request carries a key item.
    async fn keyed(&self, table: &str, key: &[u8], op: impl FnOnce(Vec<u8>) -> NodeOp) -> Response {
        let routed = self.table(table).and_then(|t| {
            let decoded = Item::decode(key).map_err(validation)?;
            let encoded = t.schema.key_of_key(&decoded).map_err(validation)?;
            Ok((t, encoded))
        });
        match routed {
            Ok((t, encoded)) => self.forward_key(&t, &encoded, op(key.to_vec())).await,
            Err(response) => response,
        }
    }

    async fn forward_key(&self, table: &Table, encoded_key: &[u8], op: NodeOp) -> Response {
        let index = table.partition_index(partition_prefix(encoded_key));
        self.forward(table, index, op).await
    }

    async fn forward(&self, table: &Table, index: u32, op: NodeOp) -> Response {
        let replicas = placement(&self.nodes, table, index);
        let id = table.partition_id(index);
        let is_write = op.is_write();
        let request = wire::encode_node_request(&NodeRequest { partition: id, op });
        if replicas.len() == 1 {
            let addr = shard_of(replicas[0], id);
            return match self.send(addr, &request, NODE_TIMEOUT, NODE_TIMEOUT).await {
                Ok(response) => response,
                Err(SendError::NotSent(message) | SendError::Lost(message)) => {
                    Response::error(ErrorCode::Unavailable, message)
                }
            };
        }
        let deadline = std::time::Instant::now() + GROUP_DEADLINE;
        let addrs: Vec<SocketAddr> = replicas.iter().map(|n| shard_of(n, id)).collect();
        let mut target = self.leaders.borrow().get(&id).copied().unwrap_or(0) % replicas.len();
        if self.is_suspect(addrs[target]) {
            target = self.next_replica(&addrs, target);
        }
        let mut last_error = String::from("no replica answered");
        while std::time::Instant::now() < deadline {
            let addr = addrs[target];
            let next = self.next_replica(&addrs, target);
            match self
                .send(addr, &request, CONNECT_TIMEOUT, REPLICA_TIMEOUT)
                .await
            {
                Ok(Response::NotLeader {
                    leader: Some(leader),
                }) if (leader as usize) < replicas.len()
                    && leader as usize != target
                    && !self.is_suspect(addrs[leader as usize]) =>
                {
                    target = leader as usize;
                    self.leaders.borrow_mut().insert(id, target);
                    continue;
                }
                Ok(Response::NotLeader { .. }) => {
                    last_error = format!("partition {id}: no leader known at {addr}");
                    target = next;
                }
                Ok(Response::Error {
                    code: ErrorCode::Unavailable,
                    message,
                }) if !is_write => {
                    last_error = message;
                    target = next;
                }
                Ok(response) => {
                    self.leaders.borrow_mut().insert(id, target);
                    return response;
                }
                Err(SendError::NotSent(message)) => {
                    last_error = message;
                    target = next;
                    // Later requests start at the next replica too.
                    self.leaders.borrow_mut().insert(id, target);
                }
                Err(SendError::Lost(message)) if is_write => {
                    self.leaders.borrow_mut().insert(id, next);
                    return Response::error(
                        ErrorCode::Unavailable,
                        format!("{message}; the write may or may not have been applied"),
                    );
                }
                Err(SendError::Lost(message)) => {
                    last_error = message;
                    target = next;
                    self.leaders.borrow_mut().insert(id, target);
                }
            }
            glommio::timer::sleep(ELECTION_BACKOFF).await;
        }
        Response::error(
            ErrorCode::Unavailable,
            format!("partition {id} has no reachable leader: {last_error}"),
        )
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        self.suspects
            .borrow()
            .get(&addr)
            .is_some_and(|at| at.elapsed() < SUSPECT_FOR)
    }

    /// The replica after `from` that is not suspect (or simply the next).
    fn next_replica(&self, addrs: &[SocketAddr], from: usize) -> usize {
        (1..addrs.len())
            .map(|k| (from + k) % addrs.len())
            .find(|r| !self.is_suspect(addrs[*r]))
            .unwrap_or((from + 1) % addrs.len())
    }

    /// One request to one node shard.
    async fn send(
        &self,
        addr: SocketAddr,
        request: &[u8],
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let connection = match self.link(addr, connect_timeout).await {
            Ok(connection) => connection,
            Err(message) => {
                self.suspects
                    .borrow_mut()
                    .insert(addr, std::time::Instant::now());
                return Err(SendError::NotSent(message));
            }
        };
        match connection.request(request, timeout).await {
            Ok(bytes) => Ok(wire::decode_response(&bytes)
                .inspect(|_| {
                    self.suspects.borrow_mut().remove(&addr);
                })
                .unwrap_or_else(|e| {
                    Response::error(
                        ErrorCode::Internal,
                        format!("node {addr} answered badly: {e}"),
                    )
                })),
            Err(error) => {
                self.links.borrow_mut().remove(&addr);
                self.suspects
                    .borrow_mut()
                    .insert(addr, std::time::Instant::now());
                let message = format!("node {addr}: {error}");
                Err(match error {
                    cairn_common::quic::TransportError::Overloaded => SendError::NotSent(message),
                    _ => SendError::Lost(message),
                })
            }
        }
    }

    async fn link(&self, addr: SocketAddr, timeout: Duration) -> Result<Connection, String> {
        if let Some(connection) = self.links.borrow().get(&addr) {
            return Ok(connection.clone());
        }
        let connected = self.to_nodes.connect(addr, &self.node_server_name);
        let timed = async {
            glommio::timer::sleep(timeout).await;
            Err(cairn_common::quic::TransportError::TimedOut(timeout))
        };
        match futures_lite::future::or(connected, timed).await {
            Ok(connection) => {
                self.links.borrow_mut().insert(addr, connection.clone());
                Ok(connection)
            }
            Err(error) => Err(format!("node {addr}: {error}")),
        }
    }

    async fn create_table(&self, name: String, schema: &[u8], partitions: u32) -> Response {
        let valid_name = (3..=255).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid_name {
            return validation(format!(
                "table name {name:?} must be 3-255 characters of [A-Za-z0-9_.-]"
            ));
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return validation(format!("partitions must be 1..={PARTITIONS_MAX}"));
        }
        let schema = match KeySchema::decode(schema) {
            Ok(schema) => schema,
            Err(error) => return validation(error),
        };
        let lock = match CatalogLock::try_take(&self.data_dir) {
            Ok(lock) => lock,
            Err(response) => return response,
        };
        // Another process or core may have changed the catalog.
        match Catalog::open(&self.data_dir) {
            Ok(catalog) => *self.catalog.borrow_mut() = catalog,
            Err(error) => return Response::error(ErrorCode::Internal, error.to_string()),
        }
        let response = self.create_table_locked(name, schema, partitions).await;
        drop(lock);
        response
    }

    async fn create_table_locked(
        &self,
        name: String,
        schema: KeySchema,
        partitions: u32,
    ) -> Response {
        if self.catalog.borrow().tables.contains_key(&name) {
            return Response::error(
                ErrorCode::ResourceInUse,
                format!("table {name:?} already exists"),
            );
        }
        let id = match self.catalog.borrow_mut().reserve_table_id() {
            Ok(id) => id,
            Err(error) => return Response::error(ErrorCode::Internal, error.to_string()),
        };
        let table = Table {
            id,
            schema,
            partitions,
            replicas: self.replicas,
        };
        for index in 0..partitions {
            if let Err(response) = self.create_partition(&table, index).await {
                return response;
            }
        }
        let mut catalog = self.catalog.borrow_mut();
        catalog.tables.insert(name, table);
        let saved = catalog.save();
        drop(catalog);
        match saved {
            Ok(()) => {
                self.publish();
                Response::Done
            }
            Err(error) => Response::error(ErrorCode::Internal, error.to_string()),
        }
    }

    /// Creates every replica of one partition; a replicated one learns its
    /// group (every member, and which one it is).
    async fn create_partition(&self, table: &Table, index: u32) -> Result<(), Response> {
        let replicas = placement(&self.nodes, table, index);
        let id = table.partition_id(index);
        let members: Vec<wire::GroupMember> = replicas
            .iter()
            .map(|node| wire::GroupMember {
                addr: node.addr.to_string(),
                cores: node.cores as u32,
                zone: node.zone.clone(),
            })
            .collect();
        for (replica, node) in replicas.iter().enumerate() {
            let group = (table.replicas > 1).then(|| wire::GroupSpec {
                replica: replica as u32,
                members: members.clone(),
            });
            let op = NodeOp::CreatePartition {
                schema: table.schema.encode(),
                group,
            };
            let request = wire::encode_node_request(&NodeRequest { partition: id, op });
            let addr = shard_of(node, id);
            match self.send(addr, &request, NODE_TIMEOUT, NODE_TIMEOUT).await {
                Ok(Response::Done) => {}
                Ok(other) => return Err(other),
                Err(SendError::NotSent(message) | SendError::Lost(message)) => {
                    return Err(Response::error(ErrorCode::Unavailable, message));
                }
            }
        }
        Ok(())
    }

    fn delete_table(&self, name: &str) -> Response {
        let _lock = match CatalogLock::try_take(&self.data_dir) {
            Ok(lock) => lock,
            Err(response) => return response,
        };
        let mut catalog = match Catalog::open(&self.data_dir) {
            Ok(catalog) => catalog,
            Err(error) => return Response::error(ErrorCode::Internal, error.to_string()),
        };
        if catalog.tables.remove(name).is_none() {
            return Response::error(
                ErrorCode::ResourceNotFound,
                format!("table {name:?} does not exist"),
            );
        }
        let saved = catalog.save();
        *self.catalog.borrow_mut() = catalog;
        match saved {
            Ok(()) => {
                self.publish();
                Response::Done
            }
            Err(error) => Response::error(ErrorCode::Internal, error.to_string()),
        }
    }

    #[allow(clippy::too_many_arguments)] // One per Query parameter.
    async fn query(
        &self,
        table: &str,
        partition_value: &[u8],
        start: WireBound,
        end: WireBound,
        reverse: bool,
        limit: u32,
        exclusive_start_key: Option<Vec<u8>>,
    ) -> Response {
        let table = match self.table(table) {
            Ok(table) => table,
            Err(response) => return response,
        };
        let value = |bytes: &[u8]| AttributeValue::from_bytes(bytes).map_err(validation);
        let bound = |b: &WireBound| -> Result<Bound<AttributeValue>, Response> {
            Ok(match b {
                WireBound::Unbounded => Bound::Unbounded,
                WireBound::Included(v) => Bound::Included(value(v)?),
                WireBound::Excluded(v) => Bound::Excluded(value(v)?),
            })
        };
        let range = (|| -> Result<_, Response> {
            let partition = value(partition_value)?;
            let (start, end) = (bound(&start)?, bound(&end)?);
            let range = table
                .schema
                .query_range(&partition, start.as_ref(), end.as_ref())
                .map_err(|e: ItemError| validation(e))?;
            let prefix = table
                .schema
                .partition_prefix(&partition)
                .map_err(validation)?;
            Ok((range, prefix))
        })();
        let ((start, end), prefix) = match range {
            Ok(range) => range,
            Err(response) => return response,
        };
        let wire_bound = |b: Bound<Vec<u8>>| match b {
            Bound::Unbounded => WireBound::Unbounded,
            Bound::Included(k) => WireBound::Included(k),
            Bound::Excluded(k) => WireBound::Excluded(k),
        };
        let op = NodeOp::Scan {
            start: wire_bound(start),
            end: wire_bound(end),
            reverse,
            limit: limit.clamp(1, PAGE_LIMIT_MAX),
            resume_after: exclusive_start_key,
            consistent: true,
        };
        self.forward_key(&table, &prefix, op).await
    }

    async fn scan(
        &self,
        table: &str,
        limit: u32,
        exclusive_start: Option<(u32, Vec<u8>)>,
    ) -> Response {
        let table = match self.table(table) {
            Ok(table) => table,
            Err(response) => return response,
        };
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let (mut index, mut resume) = match exclusive_start {
            Some((index, key)) => (index, (!key.is_empty()).then_some(key)),
            None => (0, None),
        };
        let mut items = Vec::new();
        while index < table.partitions {
            let op = NodeOp::Scan {
                start: WireBound::Unbounded,
                end: WireBound::Unbounded,
                reverse: false,
                limit: limit - items.len() as u32,
                resume_after: resume.take(),
                consistent: true,
            };
            match self.forward(&table, index, op).await {
                Response::Page {
                    items: page,
                    last_key,
                } => {
                    items.extend(page);
                    if let Some(last_key) = last_key {
                        return Response::TablePage {
                            items,
                            last: Some((index, last_key)),
                        };
                    }
                }
                other => return other,
            }
            index += 1;
            if items.len() as u32 >= limit {
                let last = (index < table.partitions).then(|| (index, Vec::new()));
                return Response::TablePage { items, last };
            }
        }
        Response::TablePage { items, last: None }
    }
}
