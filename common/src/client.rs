//! The Rust client: typed DynamoDB-style calls to a router over QUIC.
//!
//! A [`Client`] is one connection and must be used on the glommio executor
//! that created its [`Endpoint`]. Errors say whether a retry can help
//! ([`ClientError::is_retryable`]).

use std::net::SocketAddr;
use std::ops::Bound;
use std::time::Duration;

use crate::condition::Condition;
use crate::item::{AttributeValue, Item};
use crate::key::KeySchema;
use crate::quic::{Connection, Endpoint, TransportError};
use crate::update::UpdateAction;
use crate::wire::{
    self, Capacity, ClientRequest, DecodeError, ErrorCode, QueryRequest, Response, ReturnValues,
    ScanToken, TableDescription, WireBound, WireChange, WireCondition,
};

/// How long a call may take before it fails with a retryable timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{code:?}: {message}")]
    Service { code: ErrorCode, message: String },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("unexpected response to {request}")]
    UnexpectedResponse { request: &'static str },
}

impl ClientError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(error) => error.is_retryable(),
            ClientError::Service { code, .. } => code.is_retryable(),
            _ => false,
        }
    }

    /// The service's error code, if the service answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Service { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A page of Query results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    pub items: Vec<Item>,
    /// Pass back as `exclusive_start_key` for the next page.
    pub last_key: Option<Vec<u8>>,
}

/// A page of Scan results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<Item>,
    /// Pass back as `exclusive_start` for the next page.
    pub last: Option<ScanToken>,
}

/// How a client retries a throttled call: up to `attempts` in all, the
/// `n`-th retry after a uniformly random wait of up to `base × 2^n`, at
/// most `cap` (exponential backoff with full jitter). Only `Throttling`
/// is retried: it guarantees the request was not applied, so a retried
/// write cannot apply twice. (An `Unavailable` write may have been
/// applied; the caller decides.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// As the AWS SDKs retry DynamoDB's throttling.
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `retry` (0-based), for a uniform `fraction`
    /// in [0, 1).
    pub fn backoff(&self, retry: u32, fraction: f64) -> Duration {
        self.base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.cap)
            .mul_f64(fraction.clamp(0.0, 1.0))
    }
}

/// A connection to a router.
#[derive(Debug, Clone)]
pub struct Client {
    connection: Connection,
    timeout: Duration,
    retries: Option<RetryPolicy>,
}

fn value_bound(bound: Bound<&AttributeValue>) -> WireBound {
    match bound {
        Bound::Unbounded => WireBound::Unbounded,
        Bound::Included(value) => WireBound::Included(value.to_bytes()),
        Bound::Excluded(value) => WireBound::Excluded(value.to_bytes()),
    }
}

impl Client {
    /// Connects through `endpoint` (which needs a client configuration).
    pub async fn connect(
        endpoint: &Endpoint,
        router: SocketAddr,
        server_name: &str,
    ) -> Result<Client, ClientError> {
        let connection = endpoint.connect(router, server_name).await?;
        Ok(Client {
            connection,
            timeout: REQUEST_TIMEOUT,
            retries: None,
        })
    }

    /// The same connection, retrying throttled calls by `policy`. Without
    /// it, a throttled call fails at once with `Throttling`.
    pub fn with_retries(mut self, policy: RetryPolicy) -> Client {
        self.retries = Some(policy);
        self
    }

    async fn call(&self, request: &ClientRequest) -> Result<Response, ClientError> {
        let Some(policy) = self.retries else {
            return self.call_once(request).await;
        };
        let mut retry = 0;
        loop {
            match self.call_once(request).await {
                Err(error)
                    if error.code() == Some(ErrorCode::Throttling)
                        && retry + 1 < policy.attempts =>
                {
                    let wait = policy.backoff(retry, rand::random::<f64>());
                    glommio::timer::sleep(wait).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, request: &ClientRequest) -> Result<Response, ClientError> {
        let bytes = self
            .connection
            .request(&wire::encode_client_request(request), self.timeout)
            .await?;
        match wire::decode_response(&bytes)? {
            Response::Error { code, message } => Err(ClientError::Service { code, message }),
            response => Ok(response),
        }
    }

    /// Creates an on-demand table.
    pub async fn create_table(
        &self,
        table: &str,
        schema: &KeySchema,
        partitions: u32,
    ) -> Result<(), ClientError> {
        self.create_table_with(table, schema, partitions, Capacity::OnDemand)
            .await
    }

    pub async fn create_table_with(
        &self,
        table: &str,
        schema: &KeySchema,
        partitions: u32,
        capacity: Capacity,
    ) -> Result<(), ClientError> {
        let request = ClientRequest::CreateTable {
            table: table.into(),
            schema: schema.encode(),
            partitions,
            capacity,
        };
        match self.call(&request).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse {
                request: "CreateTable",
            }),
        }
    }

    pub async fn describe_table(&self, table: &str) -> Result<TableDescription, ClientError> {
        match self
            .call(&ClientRequest::DescribeTable {
                table: table.into(),
            })
            .await?
        {
            Response::Table(description) => Ok(description),
            _ => Err(ClientError::UnexpectedResponse {
                request: "DescribeTable",
            }),
        }
    }

    pub async fn list_tables(&self) -> Result<Vec<String>, ClientError> {
        match self.call(&ClientRequest::ListTables).await? {
            Response::Tables(tables) => Ok(tables),
            _ => Err(ClientError::UnexpectedResponse {
                request: "ListTables",
            }),
        }
    }

    pub async fn delete_table(&self, table: &str) -> Result<(), ClientError> {
        match self
            .call(&ClientRequest::DeleteTable {
                table: table.into(),
            })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse {
                request: "DeleteTable",
            }),
        }
    }

    /// Splits a partition of `table` (`None`: its widest) in two.
    pub async fn split_partition(
        &self,
        table: &str,
        partition: Option<u64>,
    ) -> Result<(), ClientError> {
        match self
            .call(&ClientRequest::SplitPartition {
                table: table.into(),
                partition,
            })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse {
                request: "SplitPartition",
            }),
        }
    }

    /// Replaces the replica of `table`'s partition `partition` on node
    /// `from` by a new one on node `to` (a log replica if `log`).
    pub async fn move_replica(
        &self,
        table: &str,
        partition: u64,
        from: u16,
        to: u16,
        log: bool,
    ) -> Result<(), ClientError> {
        match self
            .call(&ClientRequest::MoveReplica {
                table: table.into(),
                partition,
                from,
                to,
                log,
            })
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse {
                request: "MoveReplica",
            }),
        }
    }

    pub async fn put_item(
        &self,
        table: &str,
        item: &Item,
        condition: Option<&Condition>,
    ) -> Result<(), ClientError> {
        let request = ClientRequest::PutItem {
            table: table.into(),
            item: item.to_bytes(),
            condition: condition.map(WireCondition::from_condition),
            returns: ReturnValues::None,
        };
        match self.call(&request).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse { request: "PutItem" }),
        }
    }

    /// A strongly consistent read: it sees every acknowledged write.
    pub async fn get_item(&self, table: &str, key: &Item) -> Result<Option<Item>, ClientError> {
        self.get_item_with(table, key, true).await
    }

    /// A read that, unless `consistent`, any replica may serve: it may
    /// miss the latest writes.
    pub async fn get_item_with(
        &self,
        table: &str,
        key: &Item,
        consistent: bool,
    ) -> Result<Option<Item>, ClientError> {
        let request = ClientRequest::GetItem {
            table: table.into(),
            key: key.to_bytes(),
            consistent,
        };
        match self.call(&request).await? {
            Response::Item(item) => Ok(item.as_deref().map(wire::decode_item).transpose()?),
            _ => Err(ClientError::UnexpectedResponse { request: "GetItem" }),
        }
    }

    /// Updates an item (creating it if absent); returns the item as the
    /// update left it.
    pub async fn update_item(
        &self,
        table: &str,
        key: &Item,
        changes: &[UpdateAction],
        condition: Option<&Condition>,
    ) -> Result<Item, ClientError> {
        match self
            .update_returning(table, key, changes, condition, ReturnValues::AllNew)
            .await?
        {
            Some(item) => Ok(item),
            None => Err(ClientError::UnexpectedResponse {
                request: "UpdateItem",
            }),
        }
    }

    /// Updates an item and returns the image `returns` asks for: `None`
    /// for `ReturnValues::None`, or when there was no such item.
    pub async fn update_returning(
        &self,
        table: &str,
        key: &Item,
        changes: &[UpdateAction],
        condition: Option<&Condition>,
        returns: ReturnValues,
    ) -> Result<Option<Item>, ClientError> {
        let request = ClientRequest::UpdateItem {
            table: table.into(),
            key: key.to_bytes(),
            changes: changes.iter().map(WireChange::from_action).collect(),
            condition: condition.map(WireCondition::from_condition),
            returns,
        };
        match self.call(&request).await? {
            Response::Done => Ok(None),
            Response::Item(item) => Ok(item.as_deref().map(wire::decode_item).transpose()?),
            _ => Err(ClientError::UnexpectedResponse {
                request: "UpdateItem",
            }),
        }
    }

    pub async fn delete_item(
        &self,
        table: &str,
        key: &Item,
        condition: Option<&Condition>,
    ) -> Result<(), ClientError> {
        let request = ClientRequest::DeleteItem {
            table: table.into(),
            key: key.to_bytes(),
            condition: condition.map(WireCondition::from_condition),
            returns: ReturnValues::None,
        };
        match self.call(&request).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse {
                request: "DeleteItem",
            }),
        }
    }

    /// Items with partition key `partition` and sort keys within the
    /// bounds, in sort-key order (or reversed), at most `limit`.
    #[allow(clippy::too_many_arguments)] // DynamoDB's Query has this many knobs.
    pub async fn query(
        &self,
        table: &str,
        partition: &AttributeValue,
        start: Bound<&AttributeValue>,
        end: Bound<&AttributeValue>,
        reverse: bool,
        limit: u32,
        exclusive_start_key: Option<&[u8]>,
    ) -> Result<QueryPage, ClientError> {
        let request = ClientRequest::Query(QueryRequest {
            table: table.into(),
            partition_value: partition.to_bytes(),
            start: value_bound(start),
            end: value_bound(end),
            reverse,
            limit,
            exclusive_start_key: exclusive_start_key.map(<[u8]>::to_vec),
            consistent: true,
            sort_prefix: None,
        });
        match self.call(&request).await? {
            Response::Page { items, last_key } => Ok(QueryPage {
                items: items
                    .iter()
                    .map(|i| wire::decode_item(i))
                    .collect::<Result<_, _>>()?,
                last_key,
            }),
            _ => Err(ClientError::UnexpectedResponse { request: "Query" }),
        }
    }

    /// A page of the whole table, continuing after `exclusive_start`.
    pub async fn scan(
        &self,
        table: &str,
        limit: u32,
        exclusive_start: Option<ScanToken>,
    ) -> Result<ScanPage, ClientError> {
        let request = ClientRequest::Scan {
            table: table.into(),
            limit,
            exclusive_start,
            segment: None,
            consistent: true,
        };
        match self.call(&request).await? {
            Response::TablePage { items, last } => Ok(ScanPage {
                items: items
                    .iter()
                    .map(|i| wire::decode_item(i))
                    .collect::<Result<_, _>>()?,
                last,
            }),
            _ => Err(ClientError::UnexpectedResponse { request: "Scan" }),
        }
    }

    /// The raw connection, for tests that send malformed messages.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_below_it() {
        let policy = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        };
        let ceilings: Vec<u128> = (0..6).map(|n| policy.backoff(n, 1.0).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 100, 100]);
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(40));
        assert_eq!(policy.backoff(u32::MAX, 1.0), Duration::from_millis(100));
    }
}
