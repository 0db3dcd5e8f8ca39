//! A MemDS process: follows the authoritative metadata partition, holds
//! the whole partition map in its compressed form, and answers routers'
//! lookups over QUIC. Any number can run; each holds everything, so more
//! processes serve more lookups.
//!
//! Following: every `poll`, one consistent read of the map version from
//! the metadata group's leader; when it moved (or `reload_every` passed,
//! which catches a creator that died before bumping it), a paged read of
//! every record and a rebuild of the map. Lookups are answered from the
//! last complete map, never from a half-read one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_common::group::NodeLinks;
use cairn_common::quic::{Connection, Endpoint, Identity};
use cairn_common::wire::{
    self, ErrorCode, MemdsRequest, MemdsResponse, WireLocated, WireNode, WireTable,
};

use crate::control::{MetaClient, SplitBounds};
use crate::executor::{Ready, ServiceThread, Stopped};
use crate::map::{Located, PartitionMap};
use crate::meta::{NodeRecord, Snapshot};

/// Most keys one lookup request may carry.
pub const LOOKUP_KEYS_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct MemdsConfig {
    pub listen: SocketAddr,
    /// Presented to routers, and trusted on node connections.
    pub identity: Identity,
    /// The cluster's configured nodes (the same list, in the same order,
    /// as the routers'): they locate the metadata group.
    pub nodes: Vec<NodeRecord>,
    pub node_server_name: String,
    /// How often the map version is read.
    pub poll: Duration,
    /// A full reload at least this often, whatever the version says.
    pub reload_every: Duration,
    /// When to split a replicated partition (docs/metadata.md,
    /// "Splits"): by size, and by load.
    pub split: SplitBounds,
    /// How often partition sizes and loads are checked.
    pub split_check: Duration,
    /// How often every node is probed, for healing.
    pub heal_check: Duration,
    /// A node silent this long is down: its replicas move to live nodes
    /// (docs/metadata.md, "Healing"). `None`: never.
    pub heal_after: Option<Duration>,
    /// How often the nodes are searched for replicas of deleted tables
    /// (docs/metadata.md, "Changes").
    pub reap_every: Duration,
    /// How often node loads are compared, to move a replica off a hot
    /// node (docs/metadata.md, "Balancing"); `None`: never. Balancing
    /// runs with healing (it needs to know which nodes are down).
    pub balance_check: Option<Duration>,
    /// When a node counts as hot.
    pub balance: crate::balance::Bounds,
}

/// How often MemDS reaps replicas of deleted tables.
pub const REAP_EVERY_DEFAULT: Duration = Duration::from_secs(30);

/// How often node loads are compared for balancing.
pub const BALANCE_CHECK_DEFAULT: Duration = Duration::from_secs(10);

/// How long a node may stay silent before its replicas move.
pub const HEAL_AFTER_DEFAULT: Duration = Duration::from_millis(1500);
/// How often nodes are probed.
pub const HEAL_CHECK_DEFAULT: Duration = Duration::from_millis(250);

/// DynamoDB's partition size bound.
pub const SPLIT_BYTES_DEFAULT: u64 = 10 << 30;
/// Operations per second a partition may serve, in two checks in a row,
/// before it is split for consumption (DynamoDB's per-partition read
/// limit).
pub const SPLIT_OPS_DEFAULT: u64 = 3000;

impl MemdsConfig {
    pub fn new(
        listen: SocketAddr,
        identity: Identity,
        nodes: Vec<NodeRecord>,
        node_server_name: String,
    ) -> MemdsConfig {
        MemdsConfig {
            listen,
            identity,
            nodes,
            node_server_name,
            poll: Duration::from_millis(50),
            reload_every: Duration::from_secs(5),
            split: SplitBounds {
                bytes: Some(SPLIT_BYTES_DEFAULT),
                ops_per_s: Some(SPLIT_OPS_DEFAULT),
            },
            split_check: Duration::from_secs(10),
            heal_check: HEAL_CHECK_DEFAULT,
            heal_after: Some(HEAL_AFTER_DEFAULT),
            reap_every: REAP_EVERY_DEFAULT,
            balance_check: Some(BALANCE_CHECK_DEFAULT),
            balance: crate::balance::BOUNDS_DEFAULT,
        }
    }
}

/// A running MemDS process (one executor).
#[derive(Debug)]
pub struct Memds(ServiceThread);

impl Memds {
    pub fn start(config: MemdsConfig) -> Result<Memds, String> {
        if config.nodes.is_empty() {
            return Err("MemDS needs the cluster's node list".into());
        }
        ServiceThread::spawn("cairn-memds", move |ready, stopped| {
            run(config, ready, stopped)
        })
        .map(Memds)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Blocks until the process stops (it runs until the process ends).
    pub fn wait(self) {
        self.0.wait();
    }
}

/// What lookups are answered from: replaced whole after each reload.
#[derive(Debug, Default)]
struct Served {
    version: u64,
    map: PartitionMap,
    tables: Vec<WireTable>,
    nodes: Vec<WireNode>,
}

impl Served {
    fn from_snapshot(snapshot: &Snapshot) -> Result<Served, String> {
        Ok(Served {
            version: snapshot.version,
            map: snapshot.map().map_err(|e| e.to_string())?,
            tables: snapshot
                .tables
                .values()
                .map(|t| WireTable {
                    name: t.name.clone(),
                    id: t.id,
                    schema: t.schema.encode(),
                    replicas: t.replicas,
                    status: t.status.as_str().into(),
                    version: t.version,
                    partitions: t.partitions.len() as u32,
                    capacity: t.capacity,
                    log_replicas: t.log_replicas.iter().copied().collect(),
                })
                .collect(),
            nodes: snapshot
                .nodes
                .values()
                .map(|n| WireNode {
                    id: n.id,
                    addr: n.addr.to_string(),
                    cores: n.cores,
                    zone: n.zone.clone(),
                })
                .collect(),
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: Cell<u64>,
    lookups: Cell<u64>,
    reloads: Cell<u64>,
}

async fn run(config: MemdsConfig, ready: Ready, stopped: Stopped) {
    let bound = (|| {
        let server = config.identity.server_config()?;
        let client = config.identity.client_config()?;
        let listening = Endpoint::bind(config.listen, Some(server), None)
            .map_err(|e| format!("listening on {}: {e}", config.listen))?;
        let outbound = SocketAddr::new(config.listen.ip(), 0);
        let to_nodes = Endpoint::bind(outbound, None, Some(client))
            .map_err(|e| format!("binding {outbound}: {e}"))?;
        Ok::<_, String>((listening, to_nodes))
    })();
    let (listening, to_nodes) = match bound {
        Ok(bound) => bound,
        Err(message) => {
            let _ = ready.send(Err(message)).await;
            return;
        }
    };
    let _ = ready
        .send(listening.local_addr().map_err(|e| e.to_string()))
        .await;
    let links = Rc::new(NodeLinks::new(to_nodes, config.node_server_name.clone()));
    let meta = Rc::new(MetaClient::new(links, config.nodes.clone()));
    let served = Rc::new(RefCell::new(Served::default()));
    let counters = Rc::new(Counters::default());
    if config.split.bytes.is_some() || config.split.ops_per_s.is_some() {
        glommio::spawn_local(split_when_needed(
            meta.clone(),
            config.split,
            config.split_check,
        ))
        .detach();
    }
    glommio::spawn_local(reap_now_and_then(meta.clone(), config.reap_every)).detach();
    if let Some(after) = config.heal_after {
        let down = Rc::new(RefCell::new(BTreeSet::new()));
        glommio::spawn_local(heal_when_needed(
            meta.clone(),
            config.heal_check,
            after,
            down.clone(),
        ))
        .detach();
        if let Some(every) = config.balance_check {
            glommio::spawn_local(balance_when_needed(
                meta.clone(),
                every,
                config.balance,
                down,
            ))
            .detach();
        }
    }
    glommio::spawn_local(follow(
        meta,
        served.clone(),
        counters.clone(),
        config.poll,
        config.reload_every,
    ))
    .detach();
    let accepting = async {
        while let Ok(connection) = listening.accept().await {
            glommio::spawn_local(serve(connection, served.clone(), counters.clone())).detach();
        }
    };
    futures_lite::future::or(accepting, async {
        let _ = stopped.recv().await;
    })
    .await;
}

/// Keeps `served` up to date with the metadata partition.
async fn follow(
    meta: Rc<MetaClient>,
    served: Rc<RefCell<Served>>,
    counters: Rc<Counters>,
    poll: Duration,
    reload_every: Duration,
) {
    // The metadata group may not exist yet on a new cluster.
    while let Err(error) = meta.bootstrap().await {
        tracing::warn!(?error, "MemDS: the metadata group is not reachable yet");
        glommio::timer::sleep(poll).await;
    }
    let mut loaded_at: Option<Instant> = None;
    loop {
        let due = loaded_at.is_none_or(|at| at.elapsed() >= reload_every);
        let moved = match meta.version().await {
            Ok(version) => version != served.borrow().version,
            Err(error) => {
                tracing::warn!(?error, "MemDS: reading the map version");
                false
            }
        };
        if due || moved {
            match meta.load().await {
                Ok(snapshot) => match Served::from_snapshot(&snapshot) {
                    Ok(next) => {
                        *served.borrow_mut() = next;
                        counters.reloads.set(counters.reloads.get() + 1);
                        loaded_at = Some(Instant::now());
                    }
                    Err(error) => tracing::error!(%error, "MemDS: the metadata is invalid"),
                },
                Err(error) => tracing::warn!(?error, "MemDS: loading the metadata"),
            }
        }
        glommio::timer::sleep(poll).await;
    }
}

/// Splits oversized and hot partitions, one round every `every`.
async fn split_when_needed(meta: Rc<MetaClient>, bounds: SplitBounds, every: Duration) {
    let mut hot = std::collections::HashSet::new();
    loop {
        glommio::timer::sleep(every).await;
        if let Err(error) = meta.check_splits(bounds, &mut hot).await {
            tracing::debug!(?error, "MemDS: split check not done this round");
        }
    }
}

/// Drops replicas of deleted tables left on the nodes, one round every
/// `every`.
async fn reap_now_and_then(meta: Rc<MetaClient>, every: Duration) {
    loop {
        glommio::timer::sleep(every).await;
        if let Err(error) = meta.reap().await {
            tracing::debug!(?error, "MemDS: reaping not done this round");
        }
    }
}

/// Probes the nodes every `every`, and moves the replicas of those
/// silent for `after` (one round at a time).
/// Heals every `every`; after each round, publishes which nodes are down
/// in `down` (for balancing).
async fn heal_when_needed(
    meta: Rc<MetaClient>,
    every: Duration,
    after: Duration,
    down: Rc<RefCell<BTreeSet<u16>>>,
) {
    let mut liveness = crate::heal::Liveness::new(after);
    // A probe waits at most this long: a silent node costs each round no
    // more than that.
    let probe_timeout = every.min(Duration::from_millis(300));
    loop {
        glommio::timer::sleep(every).await;
        if let Err(error) = meta.heal(&mut liveness, probe_timeout).await {
            tracing::debug!(?error, "MemDS: healing not done this round");
        }
        *down.borrow_mut() = liveness.down(Instant::now());
    }
}

/// Balances every `every`, with the nodes healing last found down. A
/// task of its own: a round asks every partition's leader for its load,
/// which must not hold up healing's probes.
async fn balance_when_needed(
    meta: Rc<MetaClient>,
    every: Duration,
    bounds: crate::balance::Bounds,
    down: Rc<RefCell<BTreeSet<u16>>>,
) {
    let mut planned = None;
    loop {
        glommio::timer::sleep(every).await;
        let down = down.borrow().clone();
        match meta.balance(bounds, &down, &mut planned).await {
            Ok(Some(moved)) => tracing::info!(?moved, "balanced: a replica moved off a hot node"),
            Ok(None) => {}
            Err(error) => tracing::warn!(?error, "MemDS: balancing move not made this round"),
        }
    }
}

async fn serve(connection: Connection, served: Rc<RefCell<Served>>, counters: Rc<Counters>) {
    while let Ok(request) = connection.next_request().await {
        counters.requests.set(counters.requests.get() + 1);
        let response = match request.body {
            Ok(body) => match wire::decode_memds_request(&body) {
                Ok(request) => answer(request, &served.borrow(), &counters),
                Err(error) => malformed(error.to_string()),
            },
            Err(error) => malformed(error.to_string()),
        };
        let _ = connection.respond(request.stream, &wire::encode_memds_response(&response));
    }
}

fn malformed(message: String) -> MemdsResponse {
    MemdsResponse::Error {
        code: ErrorCode::Malformed,
        message,
    }
}

fn wire_located(table: u32, located: &Located) -> WireLocated {
    WireLocated {
        table,
        id: located.partition.id,
        start: located.partition.start,
        last: located.last,
        version: located.partition.version,
        replicas: located.partition.replicas.as_slice().to_vec(),
        leader: located.partition.leader,
    }
}

fn answer(request: MemdsRequest, served: &Served, counters: &Counters) -> MemdsResponse {
    match request {
        MemdsRequest::Lookup { keys } => {
            if keys.len() > LOOKUP_KEYS_MAX {
                return MemdsResponse::Error {
                    code: ErrorCode::Validation,
                    message: format!("at most {LOOKUP_KEYS_MAX} keys per lookup"),
                };
            }
            counters
                .lookups
                .set(counters.lookups.get() + keys.len() as u64);
            // Every key is looked up (that is the constant work); a
            // partition is sent once however many keys it holds.
            let mut partitions: Vec<WireLocated> = Vec::new();
            let mut index: HashMap<(u32, u64), u32> = HashMap::new();
            let of_key = keys
                .iter()
                .map(|(table, hash)| match served.map.lookup(*table, *hash) {
                    None => u32::MAX,
                    Some(l) => *index.entry((*table, l.partition.id)).or_insert_with(|| {
                        partitions.push(wire_located(*table, &l));
                        partitions.len() as u32 - 1
                    }),
                })
                .collect();
            MemdsResponse::Located { partitions, of_key }
        }
        MemdsRequest::Partitions { table } => {
            let listed = served.map.partitions(table).unwrap_or_default();
            let lasts = listed
                .iter()
                .skip(1)
                .map(|p| p.start - 1)
                .chain(std::iter::once(u64::MAX));
            let partitions: Vec<WireLocated> = listed
                .iter()
                .zip(lasts)
                .map(|(p, last)| {
                    wire_located(
                        table,
                        &Located {
                            partition: *p,
                            last,
                        },
                    )
                })
                .collect();
            let of_key = (0..partitions.len() as u32).collect();
            MemdsResponse::Located { partitions, of_key }
        }
        MemdsRequest::Catalog { since } if since == served.version && since != 0 => {
            MemdsResponse::Unchanged {
                version: served.version,
            }
        }
        MemdsRequest::Catalog { .. } => MemdsResponse::Catalog {
            version: served.version,
            tables: served.tables.clone(),
            nodes: served.nodes.clone(),
        },
        MemdsRequest::Stats => MemdsResponse::Stats {
            requests: counters.requests.get(),
            lookups: counters.lookups.get(),
            reloads: counters.reloads.get(),
            version: served.version,
        },
    }
}
