//! The request router: accepts client connections over QUIC, finds each
//! key's partition through the partition map, forwards the request to the
//! node shard that owns it, and passes typed errors back.
//!
//! The router runs one glommio executor per core. Each core finds
//! partitions through its own constant-work cache of MemDS's partition map
//! ([`cairn_memds::RouteCache`]): every lookup, hit or miss, sends MemDS
//! one refresh, batched per core, so MemDS's load follows client traffic
//! and not the hit rate. Tables and nodes come from MemDS's catalog,
//! refreshed in the background; tables are created and deleted through the
//! authoritative metadata partition ([`cairn_memds::control`]).
//!
//! Requests reach node shards through [`NodeLinks`]: a replicated
//! partition through its leader, following `NotLeader` hints within a
//! deadline; a write whose fate is unknown is not retried here, the client
//! is told `Unavailable`.

pub mod catalog;
pub mod dynamodb;
pub mod gac;
pub mod metrics;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::ops::Bound;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_common::admission::{read_cost, write_cost};
use cairn_common::group::NodeLinks;
use cairn_common::quic::{Connection, Endpoint, Identity};
use cairn_common::wire::{
    self, Capacity, ClientRequest, ErrorCode, MemberRole, MemdsRequest, MemdsResponse, NodeOp,
    NodeRequest, PartitionLimit, QueryRequest, Response, ScanToken, TableDescription, WireBound,
    WireTable,
};
use cairn_common::{AttributeValue, Item, ItemError, KeySchema};
use cairn_memds::control::MetaClient;
use cairn_memds::meta::TableStatus;
use cairn_memds::{Located, Partition, Replicas, RouteCache};
use glommio::{LocalExecutorBuilder, Placement};

use crate::catalog::{Catalog, NodeAddress, Table, partition_hash};
use crate::gac::{GacClient, Gate};
use crate::metrics::{CoreMetrics, ThrottledBy};

/// Most items one Query or Scan page returns.
const PAGE_LIMIT_MAX: u32 = 1000;
/// A Query or Scan page ends once it holds about this many bytes (1 MiB,
/// as DynamoDB's 1 MB; the node applies the same bound).
const PAGE_BYTES_MAX: usize = 1 << 20;
/// Ranges one router core caches.
const CACHE_RANGES: usize = 1 << 20;
/// Refreshes queued for MemDS per core; beyond it they are dropped (and
/// counted), hits and misses alike.
const REFRESHES_MAX: usize = 8192;
/// Keys in one MemDS lookup request.
const LOOKUP_BATCH: usize = 1024;
/// While no request waits on a miss, refreshes are sent at most this
/// often, so each MemDS request carries many keys: the keys sent are the
/// same (constant work), the requests fewer.
const REFRESH_EVERY: Duration = Duration::from_millis(10);
/// How long MemDS gets to answer one request.
const MEMDS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a request waits for a range it has no cached entry for.
const LOCATE_DEADLINE: Duration = Duration::from_secs(1);
/// How long a request follows `WrongPartition` answers (a split the
/// partition map has not caught up with) before it fails, retryably.
const SPLIT_FOLLOW_DEADLINE: Duration = Duration::from_secs(5);
/// The pause between two of those attempts.
const WRONG_PARTITION_BACKOFF: Duration = Duration::from_millis(10);
/// A waiting request asks again this often (MemDS may not have loaded a
/// new table yet).
const LOCATE_RETRY: Duration = Duration::from_millis(50);
/// The catalog (tables, nodes) is refreshed this often.
const CATALOG_EVERY: Duration = Duration::from_millis(500);
/// An unknown table name forces a catalog refresh at most this often.
const CATALOG_FORCE_MIN: Duration = Duration::from_millis(100);
/// How long CreateTable and DeleteTable wait for every MemDS to show the
/// change.
const TABLE_CHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// How to run a router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub listen: SocketAddr,
    /// The cluster's nodes, in the order every router and MemDS lists
    /// them: registered at bootstrap, and the first ones hold the
    /// metadata group.
    pub nodes: Vec<NodeAddress>,
    /// MemDS processes to look partitions up in.
    pub memds: Vec<SocketAddr>,
    /// GAC processes that hold tables' limits across routers; none: each
    /// partition's even share of its table's capacity, enforced by nodes.
    pub gac: Vec<SocketAddr>,
    /// Presented to clients, and trusted on node connections.
    pub identity: Identity,
    /// The name nodes' certificates are issued for.
    pub node_server_name: String,
    /// Executors (one per core), each serving its share of connections.
    pub cores: usize,
    /// The DynamoDB-compatible HTTP endpoint, if wanted.
    pub dynamodb: Option<DynamoDbEndpoint>,
    /// Where Prometheus scrapes consumed capacity and throttles per table
    /// and partition (TCP, `GET /metrics`), if wanted.
    pub metrics: Option<SocketAddr>,
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
        if config.memds.is_empty() {
            return Err(RouterError::Config(
                "at least one MemDS address is needed".into(),
            ));
        }
        let (stop, stopped) = async_channel::bounded::<()>(config.cores);
        let generation = Arc::new(AtomicU64::new(0));
        let metrics: Arc<Vec<Arc<CoreMetrics>>> = Arc::new(
            (0..config.cores)
                .map(|_| Arc::new(CoreMetrics::default()))
                .collect(),
        );
        let mut threads = Vec::new();
        let mut addr = config.listen;
        for core in 0..config.cores {
            let (ready_sender, ready) = async_channel::bounded(1);
            let (mut config, stopped, generation, metrics) = (
                config.clone(),
                stopped.clone(),
                generation.clone(),
                metrics.clone(),
            );
            config.listen = addr;
            let thread = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("cairn-router-{core}"))
                .spawn(move || async move {
                    run_core(config, core, generation, metrics, ready_sender, stopped).await;
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

/// One router core: its own socket on the shared port, its own cache of
/// the partition map and its own node connections.
async fn run_core(
    config: RouterConfig,
    core: usize,
    generation: Arc<AtomicU64>,
    metrics: Arc<Vec<Arc<CoreMetrics>>>,
    ready: async_channel::Sender<Result<SocketAddr, String>>,
    stopped: async_channel::Receiver<()>,
) {
    let (endpoint, to_nodes) = match bind(&config, core) {
        Ok(endpoints) => endpoints,
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
    // Core 0 serves the scrapes, for every core.
    let scrapes = match config.metrics.filter(|_| core == 0) {
        Some(addr) => match cairn_common::tcp::listen(addr) {
            Ok(listener) => Some(listener),
            Err(error) => {
                let _ = ready
                    .send(Err(format!("metrics endpoint on {addr}: {error}")))
                    .await;
                return;
            }
        },
        None => None,
    };
    let _ = ready
        .send(endpoint.local_addr().map_err(|e| e.to_string()))
        .await;
    let links = Rc::new(NodeLinks::new(to_nodes, config.node_server_name.clone()));
    let records = config
        .nodes
        .iter()
        .enumerate()
        .map(|(id, node)| node.record(id))
        .collect();
    let state = Rc::new(State {
        meta: MetaClient::new(links.clone(), records),
        links,
        memds: config.memds.clone(),
        memds_next: Cell::new(core),
        catalog: RefCell::default(),
        loaded_generation: Cell::new(generation.load(Ordering::Acquire)),
        generation,
        catalog_forced: Cell::new(None),
        catalog_refreshing: Cell::new(false),
        catalog_refreshed: event_listener::Event::new(),
        cache: RefCell::new(RouteCache::new(CACHE_RANGES, REFRESHES_MAX)),
        queued: event_listener::Event::new(),
        answered: event_listener::Event::new(),
        misses_waiting: Cell::new(0),
        missed: event_listener::Event::new(),
        replicas: config.replicas,
        gac: Rc::new(GacClient::new(config.gac.clone(), rand::random())),
        metrics: metrics[core].clone(),
    });
    if let Some(listener) = scrapes {
        glommio::spawn_local(serve_metrics(state.clone(), listener, metrics)).detach();
    }
    if state.gac.is_enabled() {
        glommio::spawn_local(state.gac.clone().run(state.links.clone())).detach();
    }
    if core == 0 {
        let state = state.clone();
        glommio::spawn_local(async move {
            if let Err(error) = state.meta.bootstrap().await {
                tracing::warn!(?error, "router: bootstrapping the metadata group");
            }
        })
        .detach();
    }
    glommio::spawn_local(refresh_partitions(state.clone())).detach();
    glommio::spawn_local(refresh_catalog(state.clone())).detach();
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
    cairn_common::tcp::listen(listen).map_err(|e| format!("DynamoDB endpoint on {listen}: {e}"))
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
    links: Rc<NodeLinks>,
    meta: MetaClient,
    memds: Vec<SocketAddr>,
    /// Lookups go to the MemDS processes in turn.
    memds_next: Cell<usize>,
    catalog: RefCell<Catalog>,
    /// Bumped by whichever core of this router changed a table; the others
    /// then reload their catalog before serving, so a change is seen by
    /// every core once it is acknowledged.
    generation: Arc<AtomicU64>,
    loaded_generation: Cell<u64>,
    /// When an unknown table name last forced a catalog refresh.
    catalog_forced: Cell<Option<Instant>>,
    /// A forced refresh is asking MemDS; requests for unknown tables wait
    /// for its answer (`catalog_refreshed`) instead of answering "no such
    /// table" from a catalog that may not be loaded yet.
    catalog_refreshing: Cell<bool>,
    catalog_refreshed: event_listener::Event,
    cache: RefCell<RouteCache>,
    /// A refresh was queued.
    queued: event_listener::Event,
    /// MemDS answered a lookup batch.
    answered: event_listener::Event,
    /// Requests waiting on a miss: their refreshes go at once.
    misses_waiting: Cell<usize>,
    /// A request missed the cache.
    missed: event_listener::Event,
    replicas: u32,
    gac: Rc<GacClient>,
    /// This core's counts of consumed capacity and throttles.
    metrics: Arc<CoreMetrics>,
}

/// Answers Prometheus's scrapes with every core's counts, tables named
/// from this core's catalog.
async fn serve_metrics(
    state: Rc<State>,
    listener: glommio::net::TcpListener,
    cores: Arc<Vec<Arc<CoreMetrics>>>,
) {
    while let Ok(stream) = listener.accept().await {
        let (state, cores) = (state.clone(), cores.clone());
        glommio::spawn_local(cairn_common::scrape::serve_scrape(stream, move || {
            let names: std::collections::HashMap<u32, String> = state
                .catalog
                .borrow()
                .tables
                .iter()
                .map(|(name, table)| (table.id, name.clone()))
                .collect();
            metrics::encode(&metrics::totals(&cores), |id| names.get(&id).cloned())
        }))
        .detach();
    }
}

/// Sends the cache's queued refreshes to MemDS, one batch in flight per
/// core, and feeds the answers back. Refreshes of hits wait up to
/// [`REFRESH_EVERY`] to share a request; a miss sends at once.
async fn refresh_partitions(state: Rc<State>) {
    let mut last_sent = Instant::now();
    loop {
        let listener = state.queued.listen();
        let full = state.cache.borrow().refreshes_queued() >= LOOKUP_BATCH;
        let early = REFRESH_EVERY.saturating_sub(last_sent.elapsed());
        if state.misses_waiting.get() == 0 && !full && !early.is_zero() {
            let missed = state.missed.listen();
            futures_lite::future::or(missed, glommio::timer::sleep(early)).await;
            continue;
        }
        let keys: Vec<(u32, u64)> = state
            .cache
            .borrow_mut()
            .take_refreshes(LOOKUP_BATCH)
            .into_iter()
            .map(|r| (r.table, r.hash))
            .collect();
        if keys.is_empty() {
            listener.await;
            continue;
        }
        last_sent = Instant::now();
        match state.ask_memds(&MemdsRequest::Lookup { keys }).await {
            Ok(MemdsResponse::Located { partitions, .. }) => {
                let mut cache = state.cache.borrow_mut();
                for answer in partitions {
                    let Ok(replicas) = Replicas::new(&answer.replicas) else {
                        continue;
                    };
                    let located = Located {
                        partition: Partition {
                            id: answer.id,
                            start: answer.start,
                            version: answer.version,
                            replicas,
                            leader: answer.leader,
                        },
                        last: answer.last,
                    };
                    cache.learn(answer.table, located);
                }
            }
            Ok(other) => tracing::warn!(?other, "router: unexpected MemDS answer"),
            Err(message) => tracing::debug!(%message, "router: MemDS lookup failed"),
        }
        state.answered.notify(usize::MAX);
    }
}

/// Keeps the core's catalog of tables and nodes close to MemDS's.
async fn refresh_catalog(state: Rc<State>) {
    loop {
        if let Err(message) = state.refresh_catalog().await {
            tracing::debug!(%message, "router: catalog refresh failed");
        }
        glommio::timer::sleep(CATALOG_EVERY).await;
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

/// Counts a request waiting on a cache miss for as long as it waits
/// (dropped with the request if it is cancelled).
struct MissWaiting<'a>(&'a Cell<usize>);

impl<'a> MissWaiting<'a> {
    fn new(state: &'a State) -> MissWaiting<'a> {
        state.misses_waiting.set(state.misses_waiting.get() + 1);
        MissWaiting(&state.misses_waiting)
    }
}

impl Drop for MissWaiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn validation(error: impl std::fmt::Display) -> Response {
    Response::error(ErrorCode::Validation, error.to_string())
}

fn not_found(name: &str) -> Response {
    Response::error(
        ErrorCode::ResourceNotFound,
        format!("table {name:?} does not exist"),
    )
}

/// The partition-key prefix of an encoded stored key.
fn partition_prefix(key: &[u8]) -> &[u8] {
    let len = u16::from_be_bytes([key[0], key[1]]) as usize;
    &key[..2 + len]
}

impl State {
    async fn handle(&self, request: ClientRequest) -> Response {
        let current = self.generation.load(Ordering::Acquire);
        if current != self.loaded_generation.get() {
            self.loaded_generation.set(current);
            let _ = self.refresh_catalog().await;
        }
        match request {
            ClientRequest::CreateTable {
                table,
                schema,
                partitions,
                capacity,
            } => {
                self.create_table(table, &schema, partitions, capacity)
                    .await
            }
            ClientRequest::DescribeTable { table } => match self.any_table(&table).await {
                Ok(t) => Response::Table(TableDescription {
                    name: table,
                    schema: t.schema.encode(),
                    partitions: t.partitions,
                    status: t.status.as_str().into(),
                    capacity: t.capacity,
                }),
                Err(response) => response,
            },
            ClientRequest::ListTables => {
                let mut names: Vec<String> = self.catalog.borrow().tables.keys().cloned().collect();
                names.sort_unstable();
                Response::Tables(names)
            }
            ClientRequest::DeleteTable { table } => self.delete_table(&table).await,
            ClientRequest::SplitPartition { table, partition } => {
                self.split_partition(&table, partition).await
            }
            ClientRequest::MoveReplica {
                table,
                partition,
                from,
                to,
                log,
            } => {
                let role = if log {
                    MemberRole::Log
                } else {
                    MemberRole::Full
                };
                self.move_replica(&table, partition, from, to, role).await
            }
            ClientRequest::PutItem {
                table,
                item,
                condition,
                returns,
            } => {
                let routed = self.table(&table).await.and_then(|t| {
                    let decoded = Item::decode(&item).map_err(validation)?;
                    let key = t.schema.key_of_item(&decoded).map_err(validation)?;
                    Ok((t, key))
                });
                match routed {
                    Ok((t, key)) => {
                        let op = NodeOp::Put {
                            item,
                            condition,
                            returns,
                        };
                        self.forward_key(&t, &key, op).await
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
                returns,
            } => {
                self.keyed(&table, &key, |key| NodeOp::Delete {
                    key,
                    condition,
                    returns,
                })
                .await
            }
            ClientRequest::UpdateItem {
                table,
                key,
                changes,
                condition,
                returns,
            } => {
                self.keyed(&table, &key, |key| NodeOp::Update {
                    key,
                    changes,
                    condition,
                    returns,
                })
                .await
            }
            ClientRequest::Query(query) => self.query(query).await,
            ClientRequest::Scan {
                table,
                limit,
                exclusive_start,
                segment,
                consistent,
            } => {
                self.scan(&table, limit, exclusive_start, segment, consistent)
                    .await
            }
        }
    }

    /// One request to a MemDS process (the next in turn; the others if it
    /// fails).
    async fn ask_memds(&self, request: &MemdsRequest) -> Result<MemdsResponse, String> {
        let mut last = String::from("no MemDS configured");
        for _ in 0..self.memds.len() {
            let at = self.memds_next.get() % self.memds.len();
            self.memds_next.set(at + 1);
            match self.ask_memds_at(self.memds[at], request).await {
                Ok(answer) => return Ok(answer),
                Err(message) => last = message,
            }
        }
        Err(last)
    }

    async fn ask_memds_at(
        &self,
        addr: SocketAddr,
        request: &MemdsRequest,
    ) -> Result<MemdsResponse, String> {
        let connection = self.links.link(addr, MEMDS_TIMEOUT).await?;
        match connection
            .request(&wire::encode_memds_request(request), MEMDS_TIMEOUT)
            .await
        {
            Ok(answer) => wire::decode_memds_response(&answer)
                .map_err(|e| format!("MemDS {addr} answered badly: {e}")),
            Err(error) => {
                self.links.drop_link(addr);
                Err(format!("MemDS {addr}: {error}"))
            }
        }
    }

    /// Waits, within [`TABLE_CHANGE_DEADLINE`], until every MemDS's
    /// catalog passes `check`; then tells this router's other cores to
    /// reload theirs. Returns whether all did.
    async fn await_catalog(&self, check: impl Fn(&[WireTable]) -> bool) -> bool {
        let deadline = Instant::now() + TABLE_CHANGE_DEADLINE;
        let mut all = true;
        for addr in &self.memds {
            loop {
                let seen = matches!(
                    self.ask_memds_at(*addr, &MemdsRequest::Catalog { since: 0 }).await,
                    Ok(MemdsResponse::Catalog { ref tables, .. }) if check(tables)
                );
                if seen {
                    break;
                }
                if Instant::now() >= deadline {
                    all = false;
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = self.refresh_catalog().await;
        let next = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.loaded_generation.set(next);
        all
    }

    async fn refresh_catalog(&self) -> Result<(), String> {
        let since = self.catalog.borrow().version;
        match self.ask_memds(&MemdsRequest::Catalog { since }).await? {
            MemdsResponse::Catalog {
                version,
                tables,
                nodes,
            } => {
                let mut catalog = self.catalog.borrow_mut();
                let before: Vec<u32> = catalog.tables.values().map(|t| t.id).collect();
                catalog.replace(version, &tables, &nodes);
                let gone: Vec<u32> = before
                    .into_iter()
                    .filter(|id| !catalog.tables.values().any(|t| t.id == *id))
                    .collect();
                drop(catalog);
                let mut cache = self.cache.borrow_mut();
                for id in gone {
                    cache.forget_table(id);
                }
                Ok(())
            }
            MemdsResponse::Unchanged { .. } => Ok(()),
            other => Err(format!("unexpected MemDS answer {other:?}")),
        }
    }

    /// A table in any state; an unknown name first refreshes the catalog
    /// (at most every [`CATALOG_FORCE_MIN`]), in case it is new.
    async fn any_table(&self, name: &str) -> Result<Rc<Table>, Response> {
        if let Some(table) = self.catalog.borrow().tables.get(name) {
            return Ok(table.clone());
        }
        let recent = self
            .catalog_forced
            .get()
            .is_some_and(|at| at.elapsed() < CATALOG_FORCE_MIN);
        if self.catalog_refreshing.get() {
            // Regression: concurrent first requests to a cold router got
            // "no such table" while the first of them was loading the
            // catalog (a CI failure of the constant-work test).
            let listener = self.catalog_refreshed.listen();
            if self.catalog_refreshing.get() {
                listener.await;
            }
        } else if !recent {
            self.catalog_forced.set(Some(Instant::now()));
            let _refreshing = Refreshing::begin(self);
            let _ = self.refresh_catalog().await;
        }
        self.catalog
            .borrow()
            .tables
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// A table that serves reads and writes.
    async fn table(&self, name: &str) -> Result<Rc<Table>, Response> {
        let table = self.any_table(name).await?;
        match table.status {
            TableStatus::Active => Ok(table),
            other => Err(Response::error(
                ErrorCode::ResourceNotFound,
                format!("table {name:?} is {}", other.as_str()),
            )),
        }
    }

    /// Forwards an operation whose request carries a key item.
    async fn keyed(&self, table: &str, key: &[u8], op: impl FnOnce(Vec<u8>) -> NodeOp) -> Response {
        let routed = self.table(table).await.and_then(|t| {
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
        let hash = partition_hash(partition_prefix(encoded_key));
        self.forward_located(table, hash, |_| op.clone()).await
    }

    /// Forwards the operation `op` makes for the range holding `hash`,
    /// following splits: a `WrongPartition` answer drops the cached range
    /// and the key is located again (waiting for MemDS to learn the
    /// split), until `LOCATE_DEADLINE`.
    async fn forward_located(
        &self,
        table: &Table,
        hash: u64,
        op: impl Fn(&Located) -> NodeOp,
    ) -> Response {
        let deadline = Instant::now() + SPLIT_FOLLOW_DEADLINE;
        loop {
            let located = match self.locate(table.id, hash).await {
                Ok(located) => located,
                Err(response) => return response,
            };
            let response = self
                .forward_admitted(table, &located.partition, op(&located))
                .await;
            let Response::Error {
                code: ErrorCode::WrongPartition,
                message,
            } = &response
            else {
                return response;
            };
            self.cache.borrow_mut().forget(table.id, hash);
            if Instant::now() >= deadline {
                return Response::error(
                    ErrorCode::Unavailable,
                    format!("the partition map has not caught up with a split: {message}"),
                );
            }
            glommio::timer::sleep(WRONG_PARTITION_BACKOFF).await;
        }
    }

    /// Admits `op` against its table's limit across routers (GAC), then
    /// forwards it with the partition limit that goes with the decision,
    /// and charges a read what it turned out to cost.
    async fn forward_admitted(&self, table: &Table, partition: &Partition, op: NodeOp) -> Response {
        let write = op.is_write();
        let (cost, consistent) = match &op {
            NodeOp::Put { item, .. } => (write_cost(item.len()), true),
            NodeOp::Get { consistent, .. } | NodeOp::Scan { consistent, .. } => {
                (read_cost(0, *consistent), *consistent)
            }
            _ => (write_cost(0), true),
        };
        let limit = match self.gac.admit(table, write, cost).await {
            Gate::Admitted => table.adaptive_limit(),
            Gate::Ungated => table.partition_limit(),
            Gate::Throttled => {
                self.metrics
                    .throttled(table.id, partition.id, write, ThrottledBy::Table);
                return Response::error(
                    ErrorCode::Throttling,
                    format!(
                        "table {}: its {} capacity is used up across routers",
                        table.id,
                        if write { "write" } else { "read" }
                    ),
                );
            }
        };
        let spread = !table.with_log_replica.contains(&partition.id);
        let response = self.forward(partition, limit, op, spread).await;
        let consumed = match &response {
            Response::Error {
                code: ErrorCode::Throttling,
                ..
            } => {
                self.metrics
                    .throttled(table.id, partition.id, write, ThrottledBy::Partition);
                return response;
            }
            Response::Error { .. } | Response::NotLeader { .. } => return response,
            Response::Item(Some(item)) if !write => read_cost(item.len(), consistent),
            Response::Page { items, .. } => read_cost(items.iter().map(Vec::len).sum(), consistent),
            _ => cost,
        };
        self.metrics.served(table.id, partition.id, write, consumed);
        if consumed > cost {
            self.gac.charge(table.id, write, consumed - cost);
        }
        response
    }

    /// The range holding `hash`: from the cache (which queues a refresh
    /// either way), or by waiting for MemDS's answer.
    async fn locate(&self, table: u32, hash: u64) -> Result<Located, Response> {
        let cached = self.cache.borrow_mut().lookup(table, hash);
        self.queued.notify(1);
        if let Some(located) = cached {
            return Ok(located);
        }
        let _waiting = MissWaiting::new(self);
        self.missed.notify(1);
        self.await_located(table, hash).await
    }

    async fn await_located(&self, table: u32, hash: u64) -> Result<Located, Response> {
        let deadline = Instant::now() + LOCATE_DEADLINE;
        let mut asked = Instant::now();
        loop {
            let listener = self.answered.listen();
            if let Some(located) = self.cache.borrow().peek(table, hash) {
                return Ok(located);
            }
            if Instant::now() >= deadline {
                return Err(Response::error(
                    ErrorCode::Unavailable,
                    format!("MemDS did not locate hash {hash:#x} of table {table}"),
                ));
            }
            if asked.elapsed() >= LOCATE_RETRY {
                self.cache.borrow_mut().request(table, hash);
                self.queued.notify(1);
                asked = Instant::now();
            }
            futures_lite::future::or(listener, glommio::timer::sleep(LOCATE_RETRY)).await;
        }
    }

    /// Sends `op` to `partition`'s group; an eventually consistent read
    /// to any replica if `spread` (else to the leader, as every other
    /// request).
    async fn forward(
        &self,
        partition: &Partition,
        limit: Option<PartitionLimit>,
        op: NodeOp,
        spread: bool,
    ) -> Response {
        let addrs: Option<Vec<SocketAddr>> = {
            let catalog = self.catalog.borrow();
            partition
                .replicas
                .as_slice()
                .iter()
                .map(|node| catalog.nodes.get(node).map(|n| n.shard_of(partition.id)))
                .collect()
        };
        let Some(addrs) = addrs else {
            let _ = self.refresh_catalog().await;
            return Response::error(
                ErrorCode::Unavailable,
                format!(
                    "partition {}: a replica's node is not known yet",
                    partition.id
                ),
            );
        };
        let is_write = op.is_write();
        let any_replica = spread
            && matches!(
                op,
                NodeOp::Get {
                    consistent: false,
                    ..
                } | NodeOp::Scan {
                    consistent: false,
                    ..
                }
            );
        let request = wire::encode_node_request(&NodeRequest {
            partition: partition.id,
            op,
            limit,
        });
        self.links
            .forward(partition.id, &addrs, &request, is_write, any_replica)
            .await
    }

    async fn create_table(
        &self,
        name: String,
        schema: &[u8],
        partitions: u32,
        capacity: Capacity,
    ) -> Response {
        let schema = match KeySchema::decode(schema) {
            Ok(schema) => schema,
            Err(error) => return validation(error),
        };
        let record = match self
            .meta
            .create_table(&name, schema, partitions, self.replicas, capacity)
            .await
        {
            Ok(record) => record,
            Err(response) => return response,
        };
        // Answer once every MemDS serves the table, so any router's next
        // request finds it.
        let id = record.id;
        if !self
            .await_catalog(|tables| tables.iter().any(|t| t.id == id && t.status == "ACTIVE"))
            .await
        {
            tracing::warn!(table = %name, "a MemDS did not serve the new table in time");
        }
        Response::Done
    }

    async fn split_partition(&self, name: &str, partition: Option<u64>) -> Response {
        let (plan, version) = match self.meta.split_partition(name, partition, None, None).await {
            Ok(done) => done,
            Err(response) => return response,
        };
        tracing::info!(table = %name, parent = plan.parent, child = plan.child, at = plan.at, "partition split");
        self.await_table_version(name, version).await
    }

    async fn move_replica(
        &self,
        name: &str,
        partition: u64,
        from: u16,
        to: u16,
        role: MemberRole,
    ) -> Response {
        let version = match self
            .meta
            .move_replica(name, partition, from, to, role, &Default::default())
            .await
        {
            Ok(version) => version,
            Err(response) => return response,
        };
        tracing::info!(table = %name, partition, from, to, "replica moved");
        self.await_table_version(name, version).await
    }

    /// `Done` once every MemDS serves table `name` at `version` or later
    /// (or, logged, once waiting for that timed out).
    async fn await_table_version(&self, name: &str, version: u64) -> Response {
        if !self
            .await_catalog(|tables| {
                tables
                    .iter()
                    .any(|t| t.name == name && t.version >= version)
            })
            .await
        {
            tracing::warn!(table = %name, version, "a MemDS did not serve the change in time");
        }
        Response::Done
    }

    async fn delete_table(&self, name: &str) -> Response {
        if let Err(response) = self.meta.delete_table(name).await {
            return response;
        }
        if !self
            .await_catalog(|tables| tables.iter().all(|t| t.name != name))
            .await
        {
            tracing::warn!(table = %name, "a MemDS still served the deleted table");
        }
        Response::Done
    }

    /// One page of a partition key's items, in sort-key order.
    async fn query(&self, request: QueryRequest) -> Response {
        let table = match self.table(&request.table).await {
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
        let bounds = (|| -> Result<_, Response> {
            let partition = value(&request.partition_value)?;
            let bounds = match &request.sort_prefix {
                Some(prefix) => {
                    if request.start != WireBound::Unbounded || request.end != WireBound::Unbounded
                    {
                        return Err(validation(
                            "a sort-key prefix takes no other sort-key bounds",
                        ));
                    }
                    table
                        .schema
                        .sort_prefix_range(&partition, &value(prefix)?)
                        .map_err(|e: ItemError| validation(e))?
                }
                None => {
                    let (start, end) = (bound(&request.start)?, bound(&request.end)?);
                    table
                        .schema
                        .query_range(&partition, start.as_ref(), end.as_ref())
                        .map_err(|e: ItemError| validation(e))?
                }
            };
            let prefix = table
                .schema
                .partition_prefix(&partition)
                .map_err(validation)?;
            Ok((bounds, prefix))
        })();
        let ((start, end), prefix) = match bounds {
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
            reverse: request.reverse,
            limit: request.limit.clamp(1, PAGE_LIMIT_MAX),
            bytes_max: PAGE_BYTES_MAX as u32,
            resume_after: request.exclusive_start_key,
            consistent: request.consistent,
            hash_range: None,
        };
        // The node checks the range too: a partition split since the
        // cache learned it would answer an empty page.
        let within = |located: &Located| {
            let mut op = op.clone();
            if let NodeOp::Scan { hash_range, .. } = &mut op {
                *hash_range = Some((located.partition.start, located.last));
            }
            op
        };
        self.forward_located(&table, partition_hash(&prefix), within)
            .await
    }

    /// A page of the whole table (or of one segment of it), partition by
    /// partition in hash order, each in key order. A page that ends inside
    /// a partition gives that partition's hash range and the last key; if
    /// the partition splits before the next page, its halves are read on
    /// together (`resume_range`), so no item is returned twice
    /// or skipped.
    async fn scan(
        &self,
        table: &str,
        limit: u32,
        exclusive_start: Option<ScanToken>,
        segment: Option<(u32, u32)>,
        consistent: bool,
    ) -> Response {
        let table = match self.table(table).await {
            Ok(table) => table,
            Err(response) => return response,
        };
        let (low, high) = match segment {
            None => (0, u64::MAX),
            Some((segment, total)) if total >= 1 && segment < total => {
                let edge = |s: u32| ((u128::from(s) << 64) / u128::from(total)) as u64;
                let high = if segment + 1 == total {
                    u64::MAX
                } else {
                    edge(segment + 1) - 1
                };
                (edge(segment), high)
            }
            Some((segment, total)) => {
                return validation(format!(
                    "segment {segment} of {total}: the segment must be below the total, which must be at least 1"
                ));
            }
        };
        let in_segment = |bytes: &Vec<u8>| {
            segment.is_none()
                || Item::decode(bytes)
                    .ok()
                    .and_then(|item| table.schema.key_of_item(&item).ok())
                    .is_some_and(|key| {
                        (low..=high).contains(&partition_hash(partition_prefix(&key)))
                    })
        };
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let mut items = Vec::new();
        // What the pages read so far hold; a page of the table stops at
        // PAGE_BYTES_MAX, as one of a partition does.
        let mut bytes = 0usize;
        let mut hash = low;
        if let Some(token) = exclusive_start {
            hash = token.first.max(low);
            if !token.key.is_empty() {
                if token.last < hash {
                    return validation("the scan's start token ends before it begins");
                }
                let (page, next, covered) = match self
                    .resume_range(&table, &token, hash, limit, consistent)
                    .await
                {
                    Ok(resumed) => resumed,
                    Err(response) => return response,
                };
                bytes = page.iter().map(Vec::len).sum();
                items.extend(page.into_iter().filter(in_segment));
                if let Some(key) = next {
                    return Response::TablePage {
                        items,
                        last: Some(ScanToken { key, ..token }),
                    };
                }
                // A token made from a bare key names one hash; the
                // partition holding it reaches further.
                let end = covered.max(token.last);
                if end >= high {
                    return Response::TablePage { items, last: None };
                }
                hash = end + 1;
                if items.len() as u32 >= limit || bytes >= PAGE_BYTES_MAX {
                    return Response::TablePage {
                        items,
                        last: Some(ScanToken::from_hash(hash)),
                    };
                }
            }
        }
        loop {
            let left = limit - items.len() as u32;
            let (located, page, last_key) = match self
                .scan_partition(&table, hash, left, PAGE_BYTES_MAX - bytes, None, consistent)
                .await
            {
                Ok(scanned) => scanned,
                Err(response) => return response,
            };
            bytes += page.iter().map(Vec::len).sum::<usize>();
            items.extend(page.into_iter().filter(in_segment));
            if let Some(key) = last_key {
                return Response::TablePage {
                    items,
                    last: Some(ScanToken {
                        first: located.partition.start,
                        last: located.last,
                        key,
                    }),
                };
            }
            if located.last >= high {
                return Response::TablePage { items, last: None };
            }
            hash = located.last + 1;
            if items.len() as u32 >= limit || bytes >= PAGE_BYTES_MAX {
                return Response::TablePage {
                    items,
                    last: Some(ScanToken::from_hash(hash)),
                };
            }
        }
    }

    /// A page of the partition that holds `hash` (after `resume_after`,
    /// within `limit` items and `bytes_max` bytes): the partition as it
    /// was found, its items, and its last key if the page was cut short.
    async fn scan_partition(
        &self,
        table: &Table,
        hash: u64,
        limit: u32,
        bytes_max: usize,
        resume_after: Option<&[u8]>,
        consistent: bool,
    ) -> Result<(Located, Vec<Vec<u8>>, Option<Vec<u8>>), Response> {
        let scanned = Cell::new(None);
        let op = |located: &Located| {
            scanned.set(Some(*located));
            NodeOp::Scan {
                start: WireBound::Unbounded,
                end: WireBound::Unbounded,
                reverse: false,
                limit,
                bytes_max: bytes_max as u32,
                resume_after: resume_after.map(<[u8]>::to_vec),
                consistent,
                hash_range: Some((located.partition.start, located.last)),
            }
        };
        let response = self.forward_located(table, hash, op).await;
        match (scanned.get(), response) {
            (Some(located), Response::Page { items, last_key }) => Ok((located, items, last_key)),
            (_, response) => Err(response),
        }
    }

    /// Reads on after `token.key` in the hashes from `from` to
    /// `token.last`: the partition a page ended in, which may have split
    /// since. The partitions now there are read together, in key order,
    /// as the one partition was: each is asked for a page after the key,
    /// and only items no partition cut short could precede are kept.
    /// Returns up to `limit` items (at least one, if any is left) within
    /// the page bytes, the key to go on after if any are left, and the
    /// last hash of the last partition read.
    async fn resume_range(
        &self,
        table: &Table,
        token: &ScanToken,
        from: u64,
        limit: u32,
        consistent: bool,
    ) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>, u64), Response> {
        let mut candidates: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // The least last key of a partition that has more after it: a key
        // above it may have one of its items before it.
        let mut complete_through: Option<Vec<u8>> = None;
        let mut hash = from;
        let covered;
        loop {
            let (located, items, last_key) = self
                .scan_partition(
                    table,
                    hash,
                    limit,
                    PAGE_BYTES_MAX,
                    Some(&token.key),
                    consistent,
                )
                .await?;
            for item in items {
                let key = Item::decode(&item)
                    .ok()
                    .and_then(|decoded| table.schema.key_of_item(&decoded).ok())
                    .ok_or_else(|| {
                        Response::error(
                            ErrorCode::Internal,
                            format!(
                                "partition {} returned an item without a valid key",
                                located.partition.id
                            ),
                        )
                    })?;
                candidates.push((key, item));
            }
            if let Some(last) = last_key {
                complete_through = Some(complete_through.map_or(last.clone(), |c| c.min(last)));
            }
            if located.last >= token.last {
                covered = located.last;
                break;
            }
            hash = located.last + 1;
        }
        candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(bound) = &complete_through {
            candidates.retain(|(key, _)| key <= bound);
        }
        let mut bytes = 0usize;
        let mut taken = 0;
        for (_, item) in &candidates {
            let full = taken as u32 >= limit || (taken > 0 && bytes + item.len() > PAGE_BYTES_MAX);
            if full {
                break;
            }
            bytes += item.len();
            taken += 1;
        }
        // On after the last item taken; if every item up to the bound was
        // taken, after the bound (a parent's page may hold only the items
        // it moved to its child, which it keeps but does not show, so the
        // bound can lie beyond every item).
        let next = if taken < candidates.len() {
            Some(candidates[taken - 1].0.clone())
        } else {
            complete_through
        };
        candidates.truncate(taken);
        Ok((
            candidates.into_iter().map(|(_, item)| item).collect(),
            next,
            covered,
        ))
    }
}

/// Marks a forced catalog refresh in flight; when it ends, however it
/// ends, the requests waiting for it go on.
struct Refreshing<'a>(&'a State);

impl<'a> Refreshing<'a> {
    fn begin(state: &'a State) -> Refreshing<'a> {
        state.catalog_refreshing.set(true);
        Refreshing(state)
    }
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.catalog_refreshing.set(false);
        self.0.catalog_refreshed.notify(usize::MAX);
    }
}
