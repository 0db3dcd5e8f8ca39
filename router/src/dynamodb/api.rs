//! DynamoDB operations over JSON, mapped onto the router's native requests:
//! the same routing and storage path, a different front door.

use cairn_common::update::UpdateAction;
use cairn_common::wire::{
    Capacity, ClientRequest, ErrorCode, QueryRequest, Response, ReturnValues, ScanToken,
    TableDescription, WireBound, WireChange, WireCondition,
};
use cairn_common::{AttributeValue, Item, KeyAttribute, KeySchema, KeyType, Path};
use serde_json::{Value as Json, json};

use super::expr::{Placeholders, SortCondition};
use super::json::{Body, EncodedItemJson, ItemJson, item_from_json, item_to_json};
use crate::State;

/// Partitions a table created through this endpoint gets.
const PARTITIONS_DEFAULT: u32 = 4;

/// An error as DynamoDB shapes it: HTTP status, `__type`, `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// An internal error, shaped like every other through `from_code`.
    pub fn internal(message: impl ToString) -> ApiError {
        ApiError::from_code(ErrorCode::Internal, message.to_string())
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(
            400,
            "com.amazonaws.dynamodb.v20120810#ValidationException",
            message,
        )
    }

    pub fn body(&self) -> Json {
        json!({ "__type": self.kind, "message": self.message })
    }

    fn from_code(code: ErrorCode, message: String) -> ApiError {
        let (status, kind) = match code {
            ErrorCode::Validation => (400, "com.amazonaws.dynamodb.v20120810#ValidationException"),
            ErrorCode::ResourceNotFound => (
                400,
                "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException",
            ),
            ErrorCode::ResourceInUse => (
                400,
                "com.amazonaws.dynamodb.v20120810#ResourceInUseException",
            ),
            ErrorCode::ConditionalCheckFailed => (
                400,
                "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
            ),
            ErrorCode::Throttling => (
                400,
                "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            ),
            ErrorCode::Malformed => (400, "com.amazon.coral.service#SerializationException"),
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::WrongPartition => {
                (500, "com.amazonaws.dynamodb.v20120810#InternalServerError")
            }
        };
        ApiError::new(status, kind, message)
    }
}

/// The router answered with a variant the request cannot produce.
fn unexpected() -> ApiError {
    ApiError::internal("unexpected response from the router")
}

fn field<'a>(body: &'a Json, name: &str) -> Result<&'a Json, ApiError> {
    body.get(name).ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: {name} must not be null"
        ))
    })
}

fn string<'a>(body: &'a Json, name: &str) -> Result<&'a str, ApiError> {
    field(body, name)?
        .as_str()
        .ok_or_else(|| ApiError::validation(format!("{name} must be a string")))
}

/// Parameters this endpoint does not read yet: a request that uses one is
/// refused rather than half-honoured (a Query on an index would otherwise
/// read the table).
const UNSUPPORTED_PARAMETERS: [&str; 1] = ["IndexName"];

fn refuse_unsupported(body: &Json) -> Result<(), ApiError> {
    super::legacy::refuse_mixed(body)?;
    for name in UNSUPPORTED_PARAMETERS {
        if body.get(name).is_some() {
            return Err(ApiError::validation(format!(
                "{name} is not supported by Cairn's DynamoDB endpoint yet"
            )));
        }
    }
    Ok(())
}

async fn call(state: &State, request: ClientRequest) -> Result<Response, ApiError> {
    match state.handle(request).await {
        Response::Error { code, message } => Err(ApiError::from_code(code, message)),
        response => Ok(response),
    }
}

fn describe_json(description: &TableDescription, status: &str) -> Result<Json, ApiError> {
    let schema =
        KeySchema::decode(&description.schema).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut key_schema = vec![json!({"AttributeName": schema.partition.name, "KeyType": "HASH"})];
    let mut definitions = vec![
        json!({"AttributeName": schema.partition.name, "AttributeType": schema.partition.key_type.name()}),
    ];
    if let Some(sort) = &schema.sort {
        key_schema.push(json!({"AttributeName": sort.name, "KeyType": "RANGE"}));
        definitions
            .push(json!({"AttributeName": sort.name, "AttributeType": sort.key_type.name()}));
    }
    // An on-demand table reports zero provisioned units, as DynamoDB does.
    let (billing, read_units, write_units) = match description.capacity {
        Capacity::OnDemand => ("PAY_PER_REQUEST", 0, 0),
        Capacity::Provisioned {
            read_units,
            write_units,
        } => ("PROVISIONED", read_units, write_units),
    };
    Ok(json!({
        "TableName": description.name,
        "TableStatus": status,
        "KeySchema": key_schema,
        "AttributeDefinitions": definitions,
        "TableArn": format!("arn:aws:dynamodb:cairn:000000000000:table/{}", description.name),
        "BillingModeSummary": {"BillingMode": billing},
        "ProvisionedThroughput": {
            "ReadCapacityUnits": read_units,
            "WriteCapacityUnits": write_units,
            "NumberOfDecreasesToday": 0,
        },
        "ItemCount": 0,
        "TableSizeBytes": 0,
        "CreationDateTime": 0,
    }))
}

/// Most units a table may provision for reads, and for writes (DynamoDB's
/// default account quota per table).
const TABLE_UNITS_MAX: u64 = 40_000;

/// `BillingMode` and `ProvisionedThroughput`, with DynamoDB's rules:
/// PROVISIONED (the default) needs both unit counts, PAY_PER_REQUEST
/// takes neither.
fn capacity_from_json(body: &Json) -> Result<Capacity, ApiError> {
    let invalid =
        |m: &str| ApiError::validation(format!("One or more parameter values were invalid: {m}"));
    let throughput = body.get("ProvisionedThroughput");
    match body.get("BillingMode").map(|m| m.as_str()) {
        Some(Some("PAY_PER_REQUEST")) => match throughput {
            None => Ok(Capacity::OnDemand),
            Some(_) => Err(invalid(
                "Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST",
            )),
        },
        None | Some(Some("PROVISIONED")) => {
            let units = |name: &str| -> Result<u32, ApiError> {
                let value = throughput.and_then(|t| t.get(name)).ok_or_else(|| {
                    invalid("ReadCapacityUnits and WriteCapacityUnits must both be specified when BillingMode is PROVISIONED")
                })?;
                value
                    .as_u64()
                    .filter(|u| (1..=TABLE_UNITS_MAX).contains(u))
                    .map(|u| u as u32)
                    .ok_or_else(|| {
                        ApiError::validation(format!(
                            "{name} must be a whole number from 1 to {TABLE_UNITS_MAX}"
                        ))
                    })
            };
            Ok(Capacity::Provisioned {
                read_units: units("ReadCapacityUnits")?,
                write_units: units("WriteCapacityUnits")?,
            })
        }
        Some(other) => Err(ApiError::validation(format!(
            "BillingMode must be PROVISIONED or PAY_PER_REQUEST, not {other:?}"
        ))),
    }
}

fn schema_from_json(body: &Json) -> Result<KeySchema, ApiError> {
    let definitions = field(body, "AttributeDefinitions")?
        .as_array()
        .ok_or_else(|| ApiError::validation("AttributeDefinitions must be a list"))?;
    let type_of = |name: &str| -> Result<KeyType, ApiError> {
        let definition = definitions
            .iter()
            .find(|d| d.get("AttributeName").and_then(Json::as_str) == Some(name))
            .ok_or_else(|| {
                ApiError::validation(format!("No AttributeDefinition for key attribute {name}"))
            })?;
        match definition.get("AttributeType").and_then(Json::as_str) {
            Some("S") => Ok(KeyType::S),
            Some("N") => Ok(KeyType::N),
            Some("B") => Ok(KeyType::B),
            other => Err(ApiError::validation(format!(
                "AttributeType {other:?} of {name} must be S, N or B"
            ))),
        }
    };
    let elements = field(body, "KeySchema")?
        .as_array()
        .ok_or_else(|| ApiError::validation("KeySchema must be a list"))?;
    let mut hash = None;
    let mut range = None;
    for element in elements {
        let name = element
            .get("AttributeName")
            .and_then(Json::as_str)
            .ok_or_else(|| ApiError::validation("KeySchema element without AttributeName"))?;
        match element.get("KeyType").and_then(Json::as_str) {
            Some("HASH") if hash.is_none() => hash = Some(KeyAttribute::new(name, type_of(name)?)),
            Some("RANGE") if range.is_none() => {
                range = Some(KeyAttribute::new(name, type_of(name)?));
            }
            _ => {
                return Err(ApiError::validation(
                    "KeySchema needs one HASH and at most one RANGE element",
                ));
            }
        }
    }
    let hash = hash.ok_or_else(|| ApiError::validation("KeySchema needs a HASH element"))?;
    Ok(KeySchema::new(hash, range))
}

fn expression_error(error: super::expr::ExprError) -> ApiError {
    ApiError::validation(format!("Invalid expression: {error}"))
}

/// The request's ConditionExpression (or legacy `Expected`), if any, in
/// wire form.
fn wire_condition(
    body: &Json,
    placeholders: &Placeholders,
) -> Result<Option<WireCondition>, ApiError> {
    let condition = match body.get("ConditionExpression").and_then(Json::as_str) {
        Some(text) => Some(super::expr::condition(text, placeholders).map_err(expression_error)?),
        None => super::legacy::expected(body)?,
    };
    Ok(condition.as_ref().map(WireCondition::from_condition))
}

/// What PutItem and DeleteItem read first: the table, ReturnValues (NONE
/// only, for now) and the ConditionExpression.
/// A PutItem's or DeleteItem's table, condition and `ReturnValues`.
fn conditional_write(
    body: &Json,
) -> Result<(String, Option<WireCondition>, ReturnValues), ApiError> {
    refuse_unsupported(body)?;
    let table = string(body, "TableName")?.to_owned();
    let returns = return_values(body, false)?;
    let placeholders = Placeholders::from_request(body).map_err(expression_error)?;
    Ok((table, wire_condition(body, &placeholders)?, returns))
}

/// `ReturnValues`: NONE or ALL_OLD, and for an update (`updating`) also
/// UPDATED_OLD, ALL_NEW and UPDATED_NEW.
fn return_values(body: &Json, updating: bool) -> Result<ReturnValues, ApiError> {
    let returns = match body.get("ReturnValues") {
        None => return Ok(ReturnValues::None),
        Some(value) => match value.as_str() {
            Some("NONE") => ReturnValues::None,
            Some("ALL_OLD") => ReturnValues::AllOld,
            Some("UPDATED_OLD") if updating => ReturnValues::UpdatedOld,
            Some("ALL_NEW") if updating => ReturnValues::AllNew,
            Some("UPDATED_NEW") if updating => ReturnValues::UpdatedNew,
            _ => {
                return Err(ApiError::validation(format!(
                    "Return values set to invalid value: {value}"
                )));
            }
        },
    };
    Ok(returns)
}

/// A write's answer: `Attributes` when it returned an item image, cut
/// down to `paths` when given (the UPDATED_* forms).
fn written(response: Response, paths: Option<&[Path]>) -> Result<Reply, ApiError> {
    match response {
        Response::Done | Response::Item(None) => Ok(json!({}).into()),
        Response::Item(Some(bytes)) => {
            let item = Item::decode(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
            let kept = match paths {
                Some(paths) => cairn_common::path::project(&item, paths),
                None => item,
            };
            if kept.is_empty() {
                return Ok(json!({}).into());
            }
            Ok(json!({ "Attributes": item_to_json(&kept) }).into())
        }
        _ => Err(unexpected()),
    }
}

/// `ConsistentRead`: false unless given.
fn consistent_read(body: &Json) -> Result<bool, ApiError> {
    match body.get("ConsistentRead") {
        None => Ok(false),
        Some(value) => value
            .as_bool()
            .ok_or_else(|| ApiError::validation("ConsistentRead must be a boolean")),
    }
}

/// A parallel Scan's `Segment` and `TotalSegments`: both or neither.
fn segment(body: &Json) -> Result<Option<(u32, u32)>, ApiError> {
    const TOTAL_SEGMENTS_MAX: u64 = 1_000_000;
    match (body.get("Segment"), body.get("TotalSegments")) {
        (None, None) => Ok(None),
        (Some(segment), Some(total)) => {
            let total = total
                .as_u64()
                .filter(|t| (1..=TOTAL_SEGMENTS_MAX).contains(t))
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "TotalSegments must be between 1 and {TOTAL_SEGMENTS_MAX}"
                    ))
                })?;
            let segment = segment.as_u64().filter(|s| *s < total).ok_or_else(|| {
                ApiError::validation(format!(
                    "Segment must be at least 0 and less than TotalSegments ({total})"
                ))
            })?;
            Ok(Some((segment as u32, total as u32)))
        }
        _ => Err(ApiError::validation(
            "Segment and TotalSegments must be given together",
        )),
    }
}

fn limit(body: &Json) -> Result<u32, ApiError> {
    match body.get("Limit") {
        None => Ok(1000),
        Some(v) => v
            .as_u64()
            .filter(|l| *l >= 1)
            .map(|l| l.min(1000) as u32)
            .ok_or_else(|| ApiError::validation("Limit must be a positive integer")),
    }
}

/// The key attributes of `item` under `schema`: a LastEvaluatedKey.
fn key_attributes(item: &Item, schema: &KeySchema) -> Item {
    let mut key = Item::new();
    for attribute in std::iter::once(&schema.partition).chain(schema.sort.as_ref()) {
        if let Some(value) = item.get(&attribute.name) {
            key.insert(attribute.name.clone(), value.clone());
        }
    }
    key
}

/// What a read returns of each item: a FilterExpression (applied after
/// the read, as in DynamoDB: Limit counts items examined), a
/// ProjectionExpression, and `Select`; or their legacy forms (QueryFilter,
/// ScanFilter, AttributesToGet).
#[derive(Debug, Default)]
struct Shaping {
    filter: Option<cairn_common::condition::Condition>,
    projection: Option<Vec<Path>>,
    /// `Select: COUNT`: counts only, no items.
    count_only: bool,
}

impl Shaping {
    fn from_request(body: &Json, placeholders: &Placeholders) -> Result<Shaping, ApiError> {
        let filter = match body.get("FilterExpression").and_then(Json::as_str) {
            Some(text) => {
                Some(super::expr::condition(text, placeholders).map_err(expression_error)?)
            }
            None => match super::legacy::filter(body, "QueryFilter")? {
                Some(filter) => Some(filter),
                None => super::legacy::filter(body, "ScanFilter")?,
            },
        };
        let projection = match body.get("ProjectionExpression").and_then(Json::as_str) {
            Some(text) => {
                Some(super::expr::projection(text, placeholders).map_err(expression_error)?)
            }
            None => super::legacy::attributes_to_get(body)?,
        };
        let count_only = match body.get("Select").and_then(Json::as_str) {
            None | Some("ALL_ATTRIBUTES") => false,
            Some("COUNT") => true,
            Some("SPECIFIC_ATTRIBUTES") if projection.is_some() => false,
            Some("SPECIFIC_ATTRIBUTES") => {
                return Err(ApiError::validation(
                    "Select SPECIFIC_ATTRIBUTES needs ProjectionExpression or AttributesToGet",
                ));
            }
            Some(other) => {
                return Err(ApiError::validation(format!(
                    "Select {other} is not supported (Cairn has no secondary indexes yet)"
                )));
            }
        };
        Ok(Shaping {
            filter,
            projection,
            count_only,
        })
    }

    /// The item as the projection shapes it.
    fn projected<'a>(&self, item: &'a Item) -> std::borrow::Cow<'a, Item> {
        match &self.projection {
            None => std::borrow::Cow::Borrowed(item),
            Some(paths) => std::borrow::Cow::Owned(cairn_common::path::project(item, paths)),
        }
    }

    fn project(&self, item: &Item) -> Json {
        item_to_json(&self.projected(item))
    }
}

/// Whether a read goes on after a page, and from where.
enum More<'a> {
    No,
    /// After the last item read (a Query).
    AfterLast,
    /// From a Scan's token, which `LastEvaluatedKey` carries in
    /// [`SCAN_TOKEN`] beside the last item's key: without it, a scan
    /// across a split could skip items.
    Scan(&'a ScanToken),
}

/// A page as DynamoDB shapes it; `LastEvaluatedKey` if the read goes on.
fn page_json(
    items: &[Vec<u8>],
    more: More<'_>,
    schema: &KeySchema,
    shaping: &Shaping,
) -> Result<Reply, ApiError> {
    let decoded: Vec<Item> = items
        .iter()
        .map(|bytes| Item::decode(bytes))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let matching: Vec<std::borrow::Cow<'_, Item>> = decoded
        .iter()
        .filter(|item| shaping.filter.as_ref().is_none_or(|f| f.holds(Some(item))))
        .map(|item| shaping.projected(item))
        .collect();
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Page<'a> {
        count: usize,
        scanned_count: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        items: Option<Vec<ItemJson<'a>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_evaluated_key: Option<Json>,
    }
    let page = Page {
        count: matching.len(),
        scanned_count: decoded.len(),
        items: (!shaping.count_only).then(|| matching.iter().map(|i| ItemJson(i)).collect()),
        last_evaluated_key: match more {
            More::No => None,
            More::AfterLast => decoded
                .last()
                .map(|last| item_to_json(&key_attributes(last, schema))),
            More::Scan(token) => {
                let key = decoded
                    .last()
                    .map_or_else(Item::new, |last| key_attributes(last, schema));
                Some(item_to_json(&key.with(
                    SCAN_TOKEN,
                    AttributeValue::B(encode_scan_token(token)),
                )))
            }
        },
    };
    Ok(serialized(&page))
}

/// The attribute of a Scan's `LastEvaluatedKey` that carries where the
/// scan goes on (docs/dynamodb-api.md): version u8 (1) ‖ first hash u64 ‖
/// last hash u64 ‖ stored key ‖ crc32c u32 of everything before it;
/// little endian.
const SCAN_TOKEN: &str = "cairn:scan";
const SCAN_TOKEN_VERSION: u8 = 1;

fn encode_scan_token(token: &ScanToken) -> Vec<u8> {
    let mut out = vec![SCAN_TOKEN_VERSION];
    out.extend_from_slice(&token.first.to_le_bytes());
    out.extend_from_slice(&token.last.to_le_bytes());
    out.extend_from_slice(&token.key);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_scan_token(bytes: &[u8]) -> Result<ScanToken, ApiError> {
    let invalid = || ApiError::validation("The provided starting key is invalid");
    let body = bytes
        .get(..bytes.len().checked_sub(4).ok_or_else(invalid)?)
        .ok_or_else(invalid)?;
    let crc = u32::from_le_bytes(bytes[body.len()..].try_into().map_err(|_| invalid())?);
    if body.len() < 17 || body[0] != SCAN_TOKEN_VERSION || crc32c::crc32c(body) != crc {
        return Err(invalid());
    }
    let word = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    Ok(ScanToken {
        first: word(1),
        last: word(9),
        key: body[17..].to_vec(),
    })
}

async fn table_of(
    state: &State,
    name: &str,
) -> Result<std::rc::Rc<crate::catalog::Table>, ApiError> {
    state.table(name).await.map_err(|response| match response {
        Response::Error { code, message } => ApiError::from_code(code, message),
        _ => unexpected(),
    })
}

/// The request's `Key`: parsed already, or from the JSON.
fn key_item(body: &Json, parsed: Option<Item>) -> Result<Item, ApiError> {
    match parsed {
        Some(key) => Ok(key),
        None => item_from_json(field(body, "Key")?)
            .map_err(|e| ApiError::validation(format!("Key: {e}"))),
    }
}

/// An operation's answer: JSON to serialize, or a body written already.
#[derive(Debug)]
pub enum Reply {
    Json(Json),
    Bytes(Vec<u8>),
}

impl From<Json> for Reply {
    fn from(json: Json) -> Reply {
        Reply::Json(json)
    }
}

impl Reply {
    /// The body's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Reply::Json(json) => serde_json::to_vec(&json).expect("JSON values serialize"),
            Reply::Bytes(bytes) => bytes,
        }
    }
}

/// Serializes a reply written straight from items.
fn serialized(value: &impl serde::Serialize) -> Reply {
    Reply::Bytes(serde_json::to_vec(value).expect("items serialize"))
}

/// Runs one operation; returns its answer.
pub(crate) async fn dispatch(
    state: &State,
    operation: &str,
    body: Body,
) -> Result<Reply, ApiError> {
    let Body {
        json: body,
        item: parsed_item,
        key: parsed_key,
    } = body;
    let body = &body;
    match operation {
        "CreateTable" => {
            let table = string(body, "TableName")?.to_owned();
            let schema = schema_from_json(body)?;
            let create = ClientRequest::CreateTable {
                table: table.clone(),
                schema: schema.encode(),
                partitions: PARTITIONS_DEFAULT,
                capacity: capacity_from_json(body)?,
            };
            call(state, create).await?;
            let Response::Table(description) =
                call(state, ClientRequest::DescribeTable { table }).await?
            else {
                return Err(unexpected());
            };
            Ok(json!({ "TableDescription": describe_json(&description, "ACTIVE")? }).into())
        }
        "DescribeTable" => {
            let table = string(body, "TableName")?.to_owned();
            let Response::Table(description) =
                call(state, ClientRequest::DescribeTable { table }).await?
            else {
                return Err(unexpected());
            };
            Ok(json!({ "Table": describe_json(&description, "ACTIVE")? }).into())
        }
        "ListTables" => {
            let Response::Tables(names) = call(state, ClientRequest::ListTables).await? else {
                return Err(unexpected());
            };
            Ok(json!({ "TableNames": names }).into())
        }
        "DeleteTable" => {
            let table = string(body, "TableName")?.to_owned();
            let Response::Table(description) = call(
                state,
                ClientRequest::DescribeTable {
                    table: table.clone(),
                },
            )
            .await?
            else {
                return Err(unexpected());
            };
            call(state, ClientRequest::DeleteTable { table }).await?;
            Ok(json!({ "TableDescription": describe_json(&description, "DELETING")? }).into())
        }
        "PutItem" => {
            let (table, condition, returns) = conditional_write(body)?;
            let item = match parsed_item {
                Some(item) => item,
                None => item_from_json(field(body, "Item")?)
                    .map_err(|e| ApiError::validation(format!("Item: {e}")))?,
            };
            let request = ClientRequest::PutItem {
                table,
                item: item.to_bytes(),
                condition,
                returns,
            };
            written(call(state, request).await?, None)
        }
        "GetItem" => {
            refuse_unsupported(body)?;
            let table = string(body, "TableName")?.to_owned();
            let key = key_item(body, parsed_key)?;
            let consistent = consistent_read(body)?;
            let placeholders = Placeholders::from_request(body).map_err(expression_error)?;
            let shaping = Shaping::from_request(body, &placeholders)?;
            let Response::Item(item) = call(
                state,
                ClientRequest::GetItem {
                    table,
                    key: key.to_bytes(),
                    consistent,
                },
            )
            .await?
            else {
                return Err(unexpected());
            };
            match item {
                Some(bytes) if shaping.projection.is_none() => {
                    // The common read: the node's bytes straight to JSON.
                    #[derive(serde::Serialize)]
                    struct Found<'a> {
                        #[serde(rename = "Item")]
                        item: EncodedItemJson<'a>,
                    }
                    serde_json::to_vec(&Found {
                        item: EncodedItemJson(&bytes),
                    })
                    .map(Reply::Bytes)
                    .map_err(ApiError::internal)
                }
                Some(bytes) => {
                    let item =
                        Item::decode(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
                    #[derive(serde::Serialize)]
                    struct Found<'a> {
                        #[serde(rename = "Item")]
                        item: ItemJson<'a>,
                    }
                    let item = shaping.projected(&item);
                    Ok(serialized(&Found {
                        item: ItemJson(&item),
                    }))
                }
                None => Ok(json!({}).into()),
            }
        }
        "DeleteItem" => {
            let (table, condition, returns) = conditional_write(body)?;
            let key = key_item(body, parsed_key)?;
            let request = ClientRequest::DeleteItem {
                table,
                key: key.to_bytes(),
                condition,
                returns,
            };
            written(call(state, request).await?, None)
        }
        "UpdateItem" => {
            refuse_unsupported(body)?;
            let table = string(body, "TableName")?.to_owned();
            let key = key_item(body, parsed_key)?;
            let returns = return_values(body, true)?;
            let placeholders = Placeholders::from_request(body).map_err(expression_error)?;
            let actions = match super::legacy::attribute_updates(body)? {
                Some(actions) => actions,
                None => super::expr::update(string(body, "UpdateExpression")?, &placeholders)
                    .map_err(expression_error)?,
            };
            let condition = wire_condition(body, &placeholders)?;
            let changes = actions.iter().map(WireChange::from_action).collect();
            let request = ClientRequest::UpdateItem {
                table,
                key: key.to_bytes(),
                changes,
                condition,
                returns,
            };
            let response = call(state, request).await?;
            match returns {
                // Only the attributes the update touched.
                ReturnValues::UpdatedOld | ReturnValues::UpdatedNew => {
                    // What a removal took is gone from the new image; its
                    // path there may name what moved up in a list.
                    let paths: Vec<Path> = actions
                        .iter()
                        .filter(|a| {
                            returns == ReturnValues::UpdatedOld
                                || !matches!(a, UpdateAction::Remove(_))
                        })
                        .map(|a| a.path().clone())
                        .collect();
                    written(response, Some(&paths))
                }
                _ => written(response, None),
            }
        }
        "Query" => {
            refuse_unsupported(body)?;
            let name = string(body, "TableName")?.to_owned();
            let table = table_of(state, &name).await?;
            let placeholders = Placeholders::from_request(body).map_err(expression_error)?;
            let key = match super::legacy::key_conditions(body, &table.schema.partition.name)? {
                Some(key) => key,
                None => super::expr::key_condition(
                    string(body, "KeyConditionExpression")?,
                    &placeholders,
                )
                .map_err(expression_error)?,
            };
            if key.partition.0 != table.schema.partition.name {
                return Err(ApiError::validation(format!(
                    "Query condition missed key schema element: {}",
                    table.schema.partition.name
                )));
            }
            let value_bound = |b: std::ops::Bound<AttributeValue>| match b {
                std::ops::Bound::Unbounded => WireBound::Unbounded,
                std::ops::Bound::Included(v) => WireBound::Included(v.to_bytes()),
                std::ops::Bound::Excluded(v) => WireBound::Excluded(v.to_bytes()),
            };
            let (start, end, sort_prefix) = match key.sort {
                Some((sort_name, sort)) => {
                    if table.schema.sort.as_ref().map(|s| &s.name) != Some(&sort_name) {
                        return Err(ApiError::validation(format!(
                            "{sort_name} is not the table's sort key"
                        )));
                    }
                    match sort {
                        SortCondition::Range(start, end) => {
                            (value_bound(start), value_bound(end), None)
                        }
                        SortCondition::BeginsWith(prefix) => (
                            WireBound::Unbounded,
                            WireBound::Unbounded,
                            Some(prefix.to_bytes()),
                        ),
                    }
                }
                None => (WireBound::Unbounded, WireBound::Unbounded, None),
            };
            let exclusive_start_key = match body.get("ExclusiveStartKey") {
                Some(json) => {
                    let item = item_from_json(json)
                        .map_err(|e| ApiError::validation(format!("ExclusiveStartKey: {e}")))?;
                    Some(
                        table
                            .schema
                            .key_of_key(&item)
                            .map_err(|e| ApiError::validation(format!("ExclusiveStartKey: {e}")))?,
                    )
                }
                None => None,
            };
            let reverse = !body
                .get("ScanIndexForward")
                .and_then(Json::as_bool)
                .unwrap_or(true);
            let request = ClientRequest::Query(QueryRequest {
                table: name,
                partition_value: key.partition.1.to_bytes(),
                start,
                end,
                reverse,
                limit: limit(body)?,
                exclusive_start_key,
                consistent: consistent_read(body)?,
                sort_prefix,
            });
            let Response::Page { items, last_key } = call(state, request).await? else {
                return Err(unexpected());
            };
            let more = match last_key {
                Some(_) => More::AfterLast,
                None => More::No,
            };
            page_json(
                &items,
                more,
                &table.schema,
                &Shaping::from_request(body, &placeholders)?,
            )
        }
        "Scan" => {
            refuse_unsupported(body)?;
            let name = string(body, "TableName")?.to_owned();
            let table = table_of(state, &name).await?;
            let exclusive_start = match body.get("ExclusiveStartKey") {
                Some(json) => {
                    let mut item = item_from_json(json)
                        .map_err(|e| ApiError::validation(format!("ExclusiveStartKey: {e}")))?;
                    match item.remove(SCAN_TOKEN) {
                        Some(AttributeValue::B(token)) => Some(decode_scan_token(&token)?),
                        Some(_) => {
                            return Err(ApiError::validation(format!(
                                "ExclusiveStartKey: {SCAN_TOKEN} must be binary, as Scan returned it"
                            )));
                        }
                        // A key alone (not as Scan returned it): on after it
                        // in the partition that now holds it.
                        None => {
                            let stored = table.schema.key_of_key(&item).map_err(|e| {
                                ApiError::validation(format!("ExclusiveStartKey: {e}"))
                            })?;
                            let hash = cairn_common::key::key_hash(&stored).ok_or_else(|| {
                                ApiError::internal("an encoded key without its prefix")
                            })?;
                            Some(ScanToken::after_key(hash, stored))
                        }
                    }
                }
                None => None,
            };
            let placeholders = Placeholders::from_request(body).map_err(expression_error)?;
            let shaping = Shaping::from_request(body, &placeholders)?;
            let request = ClientRequest::Scan {
                table: name,
                limit: limit(body)?,
                exclusive_start,
                segment: segment(body)?,
                consistent: consistent_read(body)?,
            };
            let Response::TablePage { items, last } = call(state, request).await? else {
                return Err(unexpected());
            };
            let more = last.as_ref().map_or(More::No, More::Scan);
            page_json(&items, more, &table.schema, &shaping)
        }
        "BatchWriteItem" => batch_write(state, body).await.map(Reply::from),
        "BatchGetItem" => batch_get(state, body).await.map(Reply::from),
        "TransactWriteItems" | "TransactGetItems" => Err(ApiError::validation(format!(
            "{operation} is not supported by Cairn's DynamoDB endpoint yet (see docs/dynamodb-api.md)"
        ))),
        other => Err(ApiError::new(
            400,
            "com.amazon.coral.service#UnknownOperationException",
            format!("Unknown operation {other:?}"),
        )),
    }
}

/// Most writes in one BatchWriteItem, and keys in one BatchGetItem.
const BATCH_WRITES_MAX: usize = 25;
const BATCH_GETS_MAX: usize = 100;

fn is_retryable(error: &ApiError) -> bool {
    error.status == 500
        || error
            .kind
            .ends_with("ProvisionedThroughputExceededException")
}

/// Puts and deletes in several tables. Not atomic, as in DynamoDB: writes
/// that failed for a retryable reason come back in UnprocessedItems.
async fn batch_write(state: &State, body: &Json) -> Result<Json, ApiError> {
    let tables = field(body, "RequestItems")?
        .as_object()
        .ok_or_else(|| ApiError::validation("RequestItems must be a map"))?;
    let mut writes = Vec::new();
    for (table, requests) in tables {
        let requests = requests
            .as_array()
            .ok_or_else(|| ApiError::validation("each table's writes must be a list"))?;
        for request in requests {
            let write = if let Some(put) = request.get("PutRequest") {
                let item = item_from_json(field(put, "Item")?)
                    .map_err(|e| ApiError::validation(format!("Item: {e}")))?;
                ClientRequest::PutItem {
                    table: table.clone(),
                    item: item.to_bytes(),
                    condition: None,
                    returns: ReturnValues::None,
                }
            } else if let Some(delete) = request.get("DeleteRequest") {
                let key = item_from_json(field(delete, "Key")?)
                    .map_err(|e| ApiError::validation(format!("Key: {e}")))?;
                ClientRequest::DeleteItem {
                    table: table.clone(),
                    key: key.to_bytes(),
                    condition: None,
                    returns: ReturnValues::None,
                }
            } else {
                return Err(ApiError::validation(
                    "each write must be a PutRequest or a DeleteRequest",
                ));
            };
            writes.push((table.clone(), request.clone(), write));
        }
    }
    if writes.is_empty() || writes.len() > BATCH_WRITES_MAX {
        return Err(ApiError::validation(format!(
            "BatchWriteItem takes 1 to {BATCH_WRITES_MAX} writes"
        )));
    }
    let mut unprocessed: serde_json::Map<String, Json> = serde_json::Map::new();
    for (table, original, write) in writes {
        match call(state, write).await {
            Ok(_) => {}
            Err(error) if is_retryable(&error) => {
                let list = unprocessed
                    .entry(table)
                    .or_insert_with(|| Json::Array(Vec::new()));
                list.as_array_mut().expect("a list").push(original);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(json!({ "UnprocessedItems": unprocessed }))
}

/// Gets by key from several tables; keys that failed for a retryable
/// reason come back in UnprocessedKeys.
async fn batch_get(state: &State, body: &Json) -> Result<Json, ApiError> {
    let tables = field(body, "RequestItems")?
        .as_object()
        .ok_or_else(|| ApiError::validation("RequestItems must be a map"))?;
    let total: usize = tables
        .values()
        .filter_map(|t| t.get("Keys").and_then(Json::as_array))
        .map(Vec::len)
        .sum();
    if total == 0 || total > BATCH_GETS_MAX {
        return Err(ApiError::validation(format!(
            "BatchGetItem takes 1 to {BATCH_GETS_MAX} keys"
        )));
    }
    let mut responses = serde_json::Map::new();
    let mut unprocessed = serde_json::Map::new();
    for (table, request) in tables {
        refuse_unsupported(request)?;
        let keys = field(request, "Keys")?
            .as_array()
            .ok_or_else(|| ApiError::validation("Keys must be a list"))?;
        let consistent = consistent_read(request)?;
        let placeholders = Placeholders::from_request(request).map_err(expression_error)?;
        let shaping = Shaping::from_request(request, &placeholders)?;
        let mut found = Vec::new();
        let mut retry = Vec::new();
        for key_json in keys {
            let key =
                item_from_json(key_json).map_err(|e| ApiError::validation(format!("Key: {e}")))?;
            let get = ClientRequest::GetItem {
                table: table.clone(),
                key: key.to_bytes(),
                consistent,
            };
            match call(state, get).await {
                Ok(Response::Item(Some(bytes))) => {
                    let item =
                        Item::decode(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
                    found.push(shaping.project(&item));
                }
                Ok(_) => {}
                Err(error) if is_retryable(&error) => retry.push(key_json.clone()),
                Err(error) => return Err(error),
            }
        }
        responses.insert(table.clone(), Json::Array(found));
        if !retry.is_empty() {
            unprocessed.insert(table.clone(), json!({ "Keys": retry }));
        }
    }
    Ok(json!({ "Responses": responses, "UnprocessedKeys": unprocessed }))
}
