//! DynamoDB operations over JSON, mapped onto the router's native requests:
//! the same routing and storage path, a different front door.

use cairn_common::wire::{ClientRequest, ErrorCode, Response, TableDescription};
use cairn_common::{Item, KeyAttribute, KeySchema, KeyType};
use serde_json::{Value as Json, json};

use super::json::{item_from_json, item_to_json};
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
            ErrorCode::Unavailable | ErrorCode::Internal => {
                (500, "com.amazonaws.dynamodb.v20120810#InternalServerError")
            }
        };
        ApiError::new(status, kind, message)
    }
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

/// Expression and legacy parameters this endpoint does not read yet: a
/// request that uses one is refused rather than half-honoured.
const UNSUPPORTED_PARAMETERS: [&str; 6] = [
    "ConditionExpression",
    "Expected",
    "ReturnValues",
    "ProjectionExpression",
    "AttributesToGet",
    "ConditionalOperator",
];

fn refuse_unsupported(body: &Json) -> Result<(), ApiError> {
    for name in UNSUPPORTED_PARAMETERS {
        let used = body
            .get(name)
            .is_some_and(|v| !(name == "ReturnValues" && v == "NONE"));
        if used {
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
    let schema = KeySchema::decode(&description.schema)
        .map_err(|e| ApiError::new(500, "InternalServerError", e.to_string()))?;
    let mut key_schema = vec![json!({"AttributeName": schema.partition.name, "KeyType": "HASH"})];
    let mut definitions = vec![
        json!({"AttributeName": schema.partition.name, "AttributeType": schema.partition.key_type.name()}),
    ];
    if let Some(sort) = &schema.sort {
        key_schema.push(json!({"AttributeName": sort.name, "KeyType": "RANGE"}));
        definitions
            .push(json!({"AttributeName": sort.name, "AttributeType": sort.key_type.name()}));
    }
    Ok(json!({
        "TableName": description.name,
        "TableStatus": status,
        "KeySchema": key_schema,
        "AttributeDefinitions": definitions,
        "TableArn": format!("arn:aws:dynamodb:cairn:000000000000:table/{}", description.name),
        "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
        "ItemCount": 0,
        "TableSizeBytes": 0,
        "CreationDateTime": 0,
    }))
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

fn key_item(body: &Json) -> Result<Item, ApiError> {
    item_from_json(field(body, "Key")?).map_err(|e| ApiError::validation(format!("Key: {e}")))
}

/// Runs one operation; returns the JSON answer.
pub(crate) async fn dispatch(
    state: &State,
    operation: &str,
    body: &Json,
) -> Result<Json, ApiError> {
    match operation {
        "CreateTable" => {
            let table = string(body, "TableName")?.to_owned();
            let schema = schema_from_json(body)?;
            let create = ClientRequest::CreateTable {
                table: table.clone(),
                schema: schema.encode(),
                partitions: PARTITIONS_DEFAULT,
            };
            call(state, create).await?;
            let Response::Table(description) =
                call(state, ClientRequest::DescribeTable { table }).await?
            else {
                return Err(ApiError::new(
                    500,
                    "InternalServerError",
                    "unexpected response",
                ));
            };
            Ok(json!({ "TableDescription": describe_json(&description, "ACTIVE")? }))
        }
        "DescribeTable" => {
            let table = string(body, "TableName")?.to_owned();
            let Response::Table(description) =
                call(state, ClientRequest::DescribeTable { table }).await?
            else {
                return Err(ApiError::new(
                    500,
                    "InternalServerError",
                    "unexpected response",
                ));
            };
            Ok(json!({ "Table": describe_json(&description, "ACTIVE")? }))
        }
        "ListTables" => {
            let Response::Tables(names) = call(state, ClientRequest::ListTables).await? else {
                return Err(ApiError::new(
                    500,
                    "InternalServerError",
                    "unexpected response",
                ));
            };
            Ok(json!({ "TableNames": names }))
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
                return Err(ApiError::new(
                    500,
                    "InternalServerError",
                    "unexpected response",
                ));
            };
            call(state, ClientRequest::DeleteTable { table }).await?;
            Ok(json!({ "TableDescription": describe_json(&description, "DELETING")? }))
        }
        "PutItem" => {
            refuse_unsupported(body)?;
            let table = string(body, "TableName")?.to_owned();
            let item = item_from_json(field(body, "Item")?)
                .map_err(|e| ApiError::validation(format!("Item: {e}")))?;
            call(
                state,
                ClientRequest::PutItem {
                    table,
                    item: item.to_bytes(),
                    condition: None,
                },
            )
            .await?;
            Ok(json!({}))
        }
        "GetItem" => {
            refuse_unsupported(body)?;
            let table = string(body, "TableName")?.to_owned();
            let key = key_item(body)?;
            let consistent = body
                .get("ConsistentRead")
                .and_then(Json::as_bool)
                .unwrap_or(false);
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
                return Err(ApiError::new(
                    500,
                    "InternalServerError",
                    "unexpected response",
                ));
            };
            match item {
                Some(bytes) => {
                    let item = Item::decode(&bytes)
                        .map_err(|e| ApiError::new(500, "InternalServerError", e.to_string()))?;
                    Ok(json!({ "Item": item_to_json(&item) }))
                }
                None => Ok(json!({})),
            }
        }
        "DeleteItem" => {
            refuse_unsupported(body)?;
            let table = string(body, "TableName")?.to_owned();
            let key = key_item(body)?;
            call(
                state,
                ClientRequest::DeleteItem {
                    table,
                    key: key.to_bytes(),
                    condition: None,
                },
            )
            .await?;
            Ok(json!({}))
        }
        "UpdateItem" | "Query" | "Scan" | "BatchGetItem" | "BatchWriteItem" => {
            Err(ApiError::validation(format!(
                "{operation} is not supported by Cairn's DynamoDB endpoint yet (see docs/dynamodb-api.md)"
            )))
        }
        other => Err(ApiError::new(
            400,
            "com.amazon.coral.service#UnknownOperationException",
            format!("Unknown operation {other:?}"),
        )),
    }
}
