//! The node's network face: each shard answers [`NodeRequest`]s for its own
//! partitions on its own QUIC port (the node's base port + shard index), so
//! a router reaches the owning core directly and no request crosses cores.

use std::cell::Cell;
use std::rc::Rc;

use cairn_common::quic::{Connection, Endpoint};
use cairn_common::wire::{self, DecodeError, ErrorCode, NodeOp, NodeRequest, Response, WireBound};
use cairn_common::{Item, KeySchema};

use crate::device::DmaFs;
use crate::engine::{Engine, EngineError};
use crate::shard::{NodeError, Op, Outcome, ScanRequest, execute};
use crate::wal::WalError;

impl NodeError {
    /// The wire error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::Engine(error) => error.code(),
            NodeError::Overloaded { .. } => ErrorCode::Throttling,
            NodeError::ShardStopped { .. } | NodeError::Startup { .. } => ErrorCode::Unavailable,
            NodeError::Preflight(_) => ErrorCode::Internal,
        }
    }
}

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::InvalidItem(_) => ErrorCode::Validation,
            EngineError::UnknownPartition(_) => ErrorCode::ResourceNotFound,
            EngineError::PartitionExists(_) => ErrorCode::ResourceInUse,
            EngineError::ConditionFailed => ErrorCode::ConditionalCheckFailed,
            EngineError::Throttled | EngineError::Wal(WalError::Throttled { .. }) => {
                ErrorCode::Throttling
            }
            EngineError::Stopped(_) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// Accepts connections on `endpoint` and serves them on this shard.
pub async fn serve(
    engine: Rc<Engine<DmaFs>>,
    endpoint: Endpoint,
    in_flight: Rc<Cell<usize>>,
    in_flight_max: usize,
) {
    while let Ok(connection) = endpoint.accept().await {
        let (engine, in_flight) = (engine.clone(), in_flight.clone());
        glommio::spawn_local(serve_connection(
            engine,
            connection,
            in_flight,
            in_flight_max,
        ))
        .detach();
    }
}

async fn serve_connection(
    engine: Rc<Engine<DmaFs>>,
    connection: Connection,
    in_flight: Rc<Cell<usize>>,
    in_flight_max: usize,
) {
    while let Ok(request) = connection.next_request().await {
        if in_flight.get() >= in_flight_max {
            let busy = Response::error(ErrorCode::Throttling, "node shard overloaded; retry");
            let _ = connection.respond(request.stream, &wire::encode_response(&busy));
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let (engine, connection, in_flight) =
            (engine.clone(), connection.clone(), in_flight.clone());
        glommio::spawn_local(async move {
            let response = match request.body {
                Ok(body) => answer(&engine, &body).await,
                Err(error) => Response::error(ErrorCode::Malformed, error.to_string()),
            };
            in_flight.set(in_flight.get() - 1);
            // A failed respond means the peer went away; nothing to tell.
            let _ = connection.respond(request.stream, &wire::encode_response(&response));
        })
        .detach();
    }
}

async fn answer(engine: &Engine<DmaFs>, body: &[u8]) -> Response {
    let request = match wire::decode_node_request(body) {
        Ok(request) => request,
        Err(error) => return Response::error(ErrorCode::Malformed, error.to_string()),
    };
    let partition = request.partition;
    let op = match to_op(request) {
        Ok(op) => op,
        Err(error) => return Response::error(ErrorCode::Malformed, error.to_string()),
    };
    match execute(engine, partition, op).await {
        Ok(Outcome::Done) => Response::Done,
        Ok(Outcome::Item(item)) => Response::Item(item.map(|i| i.to_bytes())),
        Ok(Outcome::Page(page)) => Response::Page {
            items: page.items.iter().map(Item::to_bytes).collect(),
            last_key: page.last_key,
        },
        Err(error) => Response::error(error.code(), error.to_string()),
    }
}

fn bound(bound: WireBound) -> std::ops::Bound<Vec<u8>> {
    match bound {
        WireBound::Unbounded => std::ops::Bound::Unbounded,
        WireBound::Included(key) => std::ops::Bound::Included(key),
        WireBound::Excluded(key) => std::ops::Bound::Excluded(key),
    }
}

/// Decodes a request's items, keys and conditions into an engine operation.
fn to_op(request: NodeRequest) -> Result<Op, DecodeError> {
    let condition = |c: Option<wire::WireCondition>| c.map(|c| c.to_condition()).transpose();
    Ok(match request.op {
        NodeOp::CreatePartition { schema } => Op::CreatePartition {
            schema: KeySchema::decode(&schema)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?,
        },
        NodeOp::Put { item, condition: c } => Op::Put {
            item: Item::decode(&item)?,
            condition: condition(c)?,
        },
        NodeOp::Get { key } => Op::Get {
            key: Item::decode(&key)?,
        },
        NodeOp::Update {
            key,
            changes,
            condition: c,
        } => Op::Update {
            key: Item::decode(&key)?,
            changes: changes
                .iter()
                .map(wire::WireChange::to_action)
                .collect::<Result<_, _>>()?,
            condition: condition(c)?,
        },
        NodeOp::Delete { key, condition: c } => Op::Delete {
            key: Item::decode(&key)?,
            condition: condition(c)?,
        },
        NodeOp::Scan {
            start,
            end,
            reverse,
            limit,
            resume_after,
        } => Op::Scan(ScanRequest {
            start: bound(start),
            end: bound(end),
            reverse,
            limit: (limit as usize).clamp(1, SCAN_LIMIT_MAX),
            resume_after,
        }),
    })
}

/// Most items one scan page returns, whatever the request asks.
pub const SCAN_LIMIT_MAX: usize = 1000;
