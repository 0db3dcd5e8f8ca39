//! The request router: accepts client connections over QUIC, finds each
//! key's partition through the partition map, forwards the request to the
//! node shard that owns it, and passes typed errors back.
//!
//! For now the router runs one glommio executor. The partition map is the
//! static [`catalog`] (MemDS will replace it). Connections to node shards
//! are opened on first use and dropped when they fail, so the next request
//! reconnects; a request to an unreachable node answers `Unavailable`,
//! which clients retry.

pub mod catalog;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use cairn_common::quic::{Connection, Endpoint, Identity};
use cairn_common::wire::{
    self, ClientRequest, ErrorCode, NodeOp, NodeRequest, Response, TableDescription, WireBound,
};
use cairn_common::{AttributeValue, Item, ItemError, KeySchema};
use glommio::{LocalExecutorBuilder, Placement};

use crate::catalog::{Catalog, NodeAddress, PARTITIONS_MAX, Table, placement};

/// How long the router waits for a node: well under the client's own
/// timeout, so a dead node gets the client a retryable `Unavailable` from
/// the router rather than a timeout of its own.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const _: () =
    assert!(NODE_TIMEOUT.as_millis() * 2 <= cairn_common::client::REQUEST_TIMEOUT.as_millis());
/// Most items one Query or Scan page returns.
const PAGE_LIMIT_MAX: u32 = 1000;

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
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl Router {
    pub fn start(config: RouterConfig) -> Result<Router, RouterError> {
        if config.nodes.is_empty() {
            return Err(RouterError::Config("at least one node is needed".into()));
        }
        let catalog =
            Catalog::open(&config.data_dir).map_err(|e| RouterError::Startup(e.to_string()))?;
        let (ready_sender, ready) = async_channel::bounded(1);
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let thread = LocalExecutorBuilder::new(Placement::Unbound)
            .name("cairn-router")
            .spawn(move || async move {
                let bound = bind(&config);
                let endpoint = match bound {
                    Ok(endpoint) => endpoint,
                    Err(message) => {
                        let _ = ready_sender.send(Err(message)).await;
                        return;
                    }
                };
                let _ = ready_sender
                    .send(endpoint.local_addr().map_err(|e| e.to_string()))
                    .await;
                let state = Rc::new(State {
                    catalog: RefCell::new(catalog),
                    nodes: config.nodes.clone(),
                    links: RefCell::default(),
                    endpoint: endpoint.clone(),
                    node_server_name: config.node_server_name.clone(),
                    ddl_running: Cell::new(false),
                });
                let accepting = async {
                    while let Ok(connection) = endpoint.accept().await {
                        glommio::spawn_local(serve(state.clone(), connection)).detach();
                    }
                };
                futures_lite::future::or(accepting, async {
                    let _ = stopped.recv().await;
                })
                .await;
            })
            .map_err(|e| RouterError::Startup(e.to_string()))?;
        let addr = futures_lite::future::block_on(ready.recv())
            .map_err(|_| RouterError::Startup("router thread exited".into()))?
            .map_err(RouterError::Startup)?;
        Ok(Router {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the router stops (it runs until the process ends).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(config: &RouterConfig) -> Result<Endpoint, String> {
    let server = config.identity.server_config()?;
    let client = config.identity.client_config()?;
    Endpoint::bind(config.listen, Some(server), Some(client))
        .map_err(|e| format!("listening on {}: {e}", config.listen))
}

#[derive(Debug)]
struct State {
    catalog: RefCell<Catalog>,
    nodes: Vec<NodeAddress>,
    links: RefCell<HashMap<SocketAddr, Connection>>,
    endpoint: Endpoint,
    node_server_name: String,
    /// Table creation and deletion run one at a time.
    ddl_running: Cell<bool>,
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
    async fn handle(&self, request: ClientRequest) -> Response {
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
            ClientRequest::GetItem { table, key, .. } => {
                self.keyed(&table, &key, |key| NodeOp::Get { key }).await
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
        let addr = placement(&self.nodes, table, index);
        let request = NodeRequest {
            partition: table.partition_id(index),
            op,
        };
        let connection = match self.link(addr).await {
            Ok(connection) => connection,
            Err(response) => return response,
        };
        match connection
            .request(&wire::encode_node_request(&request), NODE_TIMEOUT)
            .await
        {
            Ok(bytes) => wire::decode_response(&bytes).unwrap_or_else(|e| {
                Response::error(
                    ErrorCode::Internal,
                    format!("node {addr} answered badly: {e}"),
                )
            }),
            Err(error) => {
                self.links.borrow_mut().remove(&addr);
                Response::error(ErrorCode::Unavailable, format!("node {addr}: {error}"))
            }
        }
    }

    async fn link(&self, addr: SocketAddr) -> Result<Connection, Response> {
        if let Some(connection) = self.links.borrow().get(&addr) {
            return Ok(connection.clone());
        }
        let connected = self.endpoint.connect(addr, &self.node_server_name);
        let timed = async {
            glommio::timer::sleep(NODE_TIMEOUT).await;
            Err(cairn_common::quic::TransportError::TimedOut(NODE_TIMEOUT))
        };
        match futures_lite::future::or(connected, timed).await {
            Ok(connection) => {
                self.links.borrow_mut().insert(addr, connection.clone());
                Ok(connection)
            }
            Err(error) => Err(Response::error(
                ErrorCode::Unavailable,
                format!("node {addr}: {error}"),
            )),
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
        if self.ddl_running.replace(true) {
            return Response::error(
                ErrorCode::Throttling,
                "another table operation is running; retry",
            );
        }
        let response = self.create_table_locked(name, schema, partitions).await;
        self.ddl_running.set(false);
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
        let table = Table {
            id: self.catalog.borrow().next_table_id(),
            schema,
            partitions,
        };
        for index in 0..partitions {
            let op = NodeOp::CreatePartition {
                schema: table.schema.encode(),
            };
            match self.forward(&table, index, op).await {
                Response::Done => {}
                // A retried creation finds its partitions already there.
                Response::Error {
                    code: ErrorCode::ResourceInUse,
                    ..
                } => {}
                other => return other,
            }
        }
        let mut catalog = self.catalog.borrow_mut();
        catalog.tables.insert(name, table);
        match catalog.save() {
            Ok(()) => Response::Done,
            Err(error) => Response::error(ErrorCode::Internal, error.to_string()),
        }
    }

    fn delete_table(&self, name: &str) -> Response {
        if self.ddl_running.get() {
            return Response::error(
                ErrorCode::Throttling,
                "another table operation is running; retry",
            );
        }
        let mut catalog = self.catalog.borrow_mut();
        if catalog.tables.remove(name).is_none() {
            return Response::error(
                ErrorCode::ResourceNotFound,
                format!("table {name:?} does not exist"),
            );
        }
        match catalog.save() {
            Ok(()) => Response::Done,
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
