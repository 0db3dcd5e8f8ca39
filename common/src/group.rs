//! Reaching node shards, and through them replication groups: one
//! connection per shard address (opened on first use, dropped when it
//! fails), a leader guess per replicated partition, and short-lived
//! suspicion of replicas that failed to answer. Routers and MemDS both
//! talk to partitions through this (docs/wire-format.md, "Routing").
//!
//! Runs on one glommio executor: it is `!Send`, one per core.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::quic::{Connection, Endpoint, TransportError};
use crate::wire::{self, ErrorCode, Response};

/// How long a request to a single-copy partition waits for its node.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const _: () = assert!(NODE_TIMEOUT.as_millis() * 2 <= crate::client::REQUEST_TIMEOUT.as_millis());
/// How long the replicas of a group are tried before `Unavailable`: about
/// two elections.
pub const GROUP_DEADLINE: Duration = Duration::from_millis(1800);
const _: () = assert!(GROUP_DEADLINE.as_millis() * 2 <= crate::client::REQUEST_TIMEOUT.as_millis());
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

/// Why a request to a node shard got no answer.
#[derive(Debug)]
pub enum SendError {
    /// It never left: retrying anywhere is safe.
    NotSent(String),
    /// It may have been acted on.
    Lost(String),
}

/// Connections to node shards from one executor.
#[derive(Debug)]
pub struct NodeLinks {
    endpoint: Endpoint,
    server_name: String,
    links: RefCell<HashMap<SocketAddr, Connection>>,
    /// Replicated partitions: the replica (index in replica order)
    /// believed to lead.
    leaders: RefCell<HashMap<u64, usize>>,
    /// Node shards that recently failed to answer, and when.
    suspects: RefCell<HashMap<SocketAddr, Instant>>,
    /// Where the next read that any replica may serve starts.
    spread: std::cell::Cell<usize>,
}

impl NodeLinks {
    /// Connections leave from `endpoint` and expect certificates issued
    /// for `server_name`.
    pub fn new(endpoint: Endpoint, server_name: String) -> NodeLinks {
        NodeLinks {
            endpoint,
            server_name,
            links: RefCell::default(),
            leaders: RefCell::default(),
            suspects: RefCell::default(),
            spread: std::cell::Cell::new(0),
        }
    }

    /// Sends an encoded `NodeRequest` for `partition` to its replicas
    /// (shard addresses, in replica order) and returns the answer. A
    /// single copy is asked once; a group is asked at its leader guess,
    /// following `NotLeader` hints and trying the other replicas within
    /// [`GROUP_DEADLINE`]. A write whose answer was lost is not retried:
    /// the caller gets `Unavailable`, saying it may have been applied.
    /// A read that `any_replica` may serve (eventually consistent) starts
    /// at each replica in turn instead of the leader, so such reads spread
    /// over the group.
    pub async fn forward(
        &self,
        partition: u64,
        replicas: &[SocketAddr],
        request: &[u8],
        is_write: bool,
        any_replica: bool,
    ) -> Response {
        match replicas {
            [] => Response::error(
                ErrorCode::Internal,
                format!("partition {partition} has no replicas"),
            ),
            [addr] => match self.send(*addr, request, NODE_TIMEOUT, NODE_TIMEOUT).await {
                Ok(response) => response,
                Err(SendError::NotSent(message) | SendError::Lost(message)) => {
                    Response::error(ErrorCode::Unavailable, message)
                }
            },
            addrs => {
                let spread = any_replica && !is_write;
                let first = if spread {
                    self.next_spread(addrs.len())
                } else {
                    self.leaders.borrow().get(&partition).copied().unwrap_or(0) % addrs.len()
                };
                self.forward_group(partition, addrs, request, is_write, first, spread)
                    .await
            }
        }
    }

    /// The replica the next spread read starts at: each in turn (the
    /// leader map is left alone: a follower's answer is no leader hint).
    fn next_spread(&self, replicas: usize) -> usize {
        let at = self.spread.get();
        self.spread.set(at.wrapping_add(1));
        at % replicas
    }

    async fn forward_group(
        &self,
        id: u64,
        addrs: &[SocketAddr],
        request: &[u8],
        is_write: bool,
        first: usize,
        spread: bool,
    ) -> Response {
        let deadline = Instant::now() + GROUP_DEADLINE;
        let mut target = first;
        // A spread read's answer says nothing of who leads.
        let learn = |target: usize| {
            if !spread {
                self.leaders.borrow_mut().insert(id, target);
            }
        };
        if self.is_suspect(addrs[target]) {
            target = self.next_replica(addrs, target);
        }
        let mut last_error = String::from("no replica answered");
        // Which replicas said they do not have the partition.
        let mut not_found = vec![false; addrs.len()];
        while Instant::now() < deadline {
            let addr = addrs[target];
            let next = self.next_replica(addrs, target);
            match self
                .send(addr, request, CONNECT_TIMEOUT, REPLICA_TIMEOUT)
                .await
            {
                Ok(Response::NotLeader {
                    leader: Some(leader),
                }) if (leader as usize) < addrs.len()
                    && leader as usize != target
                    && !self.is_suspect(addrs[leader as usize]) =>
                {
                    target = leader as usize;
                    learn(target);
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
                // A replica that has not applied the split that creates
                // the partition yet (it lags its group): nothing was done,
                // so another replica may answer. Unknown to all of them,
                // it is unknown.
                Ok(Response::Error {
                    code: ErrorCode::ResourceNotFound,
                    message,
                }) => {
                    not_found[target] = true;
                    if not_found.iter().all(|&said| said) {
                        return Response::error(ErrorCode::ResourceNotFound, message);
                    }
                    last_error = message;
                    target = next;
                }
                Ok(response) => {
                    learn(target);
                    return response;
                }
                Err(SendError::NotSent(message)) => {
                    last_error = message;
                    target = next;
                    // Later requests start at the next replica too.
                    learn(target);
                }
                Err(SendError::Lost(message)) if is_write => {
                    learn(next);
                    return Response::error(
                        ErrorCode::Unavailable,
                        format!("{message}; the write may or may not have been applied"),
                    );
                }
                Err(SendError::Lost(message)) => {
                    last_error = message;
                    target = next;
                    learn(target);
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
    pub async fn send(
        &self,
        addr: SocketAddr,
        request: &[u8],
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let connection = match self.link(addr, connect_timeout).await {
            Ok(connection) => connection,
            Err(message) => {
                self.suspects.borrow_mut().insert(addr, Instant::now());
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
                self.suspects.borrow_mut().insert(addr, Instant::now());
                let message = format!("node {addr}: {error}");
                Err(match error {
                    TransportError::Overloaded => SendError::NotSent(message),
                    _ => SendError::Lost(message),
                })
            }
        }
    }

    /// The connection to `addr`, opened within `timeout` if there is none.
    pub async fn link(&self, addr: SocketAddr, timeout: Duration) -> Result<Connection, String> {
        if let Some(connection) = self.links.borrow().get(&addr) {
            return Ok(connection.clone());
        }
        let connected = self.endpoint.connect(addr, &self.server_name);
        let timed = async {
            glommio::timer::sleep(timeout).await;
            Err(TransportError::TimedOut(timeout))
        };
        match futures_lite::future::or(connected, timed).await {
            Ok(connection) => {
                self.links.borrow_mut().insert(addr, connection.clone());
                Ok(connection)
            }
            Err(error) => Err(format!("node {addr}: {error}")),
        }
    }

    /// The replica (an index into its replicas) last seen leading
    /// `partition`, if any.
    pub fn leader_of(&self, partition: u64) -> Option<usize> {
        self.leaders.borrow().get(&partition).copied()
    }

    /// Drops a cached connection (after a failure seen elsewhere).
    pub fn drop_link(&self, addr: SocketAddr) {
        self.links.borrow_mut().remove(&addr);
    }
}
