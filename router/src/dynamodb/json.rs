//! DynamoDB's JSON form of attribute values (`{"S": "..."}`, `{"N": "1"}`,
//! `{"B": "<base64>"}`, …) to and from Cairn's item model.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use cairn_common::{AttributeValue, Item, Number};
use serde_json::{Map, Value as Json};

/// Why a JSON value is not a DynamoDB attribute value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

fn err(message: impl Into<String>) -> JsonError {
    JsonError(message.into())
}

fn number(text: &str) -> Result<Number, JsonError> {
    text.parse()
        .map_err(|e| err(format!("invalid number {text:?}: {e}")))
}

fn binary(text: &str) -> Result<Vec<u8>, JsonError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| err(format!("invalid base64: {e}")))
}

fn strings(value: &Json, what: &str) -> Result<Vec<String>, JsonError> {
    let list = value
        .as_array()
        .ok_or_else(|| err(format!("{what} must be a list")))?;
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| err(format!("{what} elements must be strings")))
        })
        .collect()
}

/// Parses one attribute value.
pub fn value_from_json(json: &Json) -> Result<AttributeValue, JsonError> {
    let object = json
        .as_object()
        .ok_or_else(|| err("an attribute value must be an object"))?;
    let mut entries = object.iter();
    let (Some((tag, value)), None) = (entries.next(), entries.next()) else {
        return Err(err("an attribute value must have exactly one type key"));
    };
    let text = |what: &str| {
        value
            .as_str()
            .ok_or_else(|| err(format!("{what} must be a string")))
    };
    Ok(match tag.as_str() {
        "S" => AttributeValue::S(text("S")?.to_owned()),
        "N" => AttributeValue::N(number(text("N")?)?),
        "B" => AttributeValue::B(binary(text("B")?)?),
        "BOOL" => AttributeValue::Bool(
            value
                .as_bool()
                .ok_or_else(|| err("BOOL must be true or false"))?,
        ),
        "NULL" => match value.as_bool() {
            Some(true) => AttributeValue::Null,
            _ => return Err(err("NULL must be true")),
        },
        "L" => AttributeValue::L(
            value
                .as_array()
                .ok_or_else(|| err("L must be a list"))?
                .iter()
                .map(value_from_json)
                .collect::<Result<_, _>>()?,
        ),
        "M" => {
            let map = value
                .as_object()
                .ok_or_else(|| err("M must be an object"))?;
            AttributeValue::M(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), value_from_json(v)?)))
                    .collect::<Result<_, _>>()?,
            )
        }
        "SS" => AttributeValue::Ss(strings(value, "SS")?.into_iter().collect()),
        "NS" => AttributeValue::Ns(
            strings(value, "NS")?
                .iter()
                .map(|n| number(n))
                .collect::<Result<BTreeSet<_>, _>>()?,
        ),
        "BS" => AttributeValue::Bs(
            strings(value, "BS")?
                .iter()
                .map(|b| binary(b))
                .collect::<Result<BTreeSet<_>, _>>()?,
        ),
        other => return Err(err(format!("unknown attribute type {other:?}"))),
    })
}

/// The DynamoDB JSON of one attribute value.
pub fn value_to_json(value: &AttributeValue) -> Json {
    let b64 = |b: &[u8]| Json::String(base64::engine::general_purpose::STANDARD.encode(b));
    let (tag, body) = match value {
        AttributeValue::S(s) => ("S", Json::String(s.clone())),
        AttributeValue::N(n) => ("N", Json::String(n.to_string())),
        AttributeValue::B(b) => ("B", b64(b)),
        AttributeValue::Bool(b) => ("BOOL", Json::Bool(*b)),
        AttributeValue::Null => ("NULL", Json::Bool(true)),
        AttributeValue::L(list) => ("L", Json::Array(list.iter().map(value_to_json).collect())),
        AttributeValue::M(map) => (
            "M",
            Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), value_to_json(v)))
                    .collect(),
            ),
        ),
        AttributeValue::Ss(set) => (
            "SS",
            Json::Array(set.iter().map(|s| Json::String(s.clone())).collect()),
        ),
        AttributeValue::Ns(set) => (
            "NS",
            Json::Array(set.iter().map(|n| Json::String(n.to_string())).collect()),
        ),
        AttributeValue::Bs(set) => ("BS", Json::Array(set.iter().map(|b| b64(b)).collect())),
    };
    let mut object = Map::new();
    object.insert(tag.to_owned(), body);
    Json::Object(object)
}

/// Parses an item (`{"name": {"S": "..."}, …}`).
pub fn item_from_json(json: &Json) -> Result<Item, JsonError> {
    let object = json
        .as_object()
        .ok_or_else(|| err("an item must be an object"))?;
    object
        .iter()
        .map(|(name, value)| Ok((name.clone(), value_from_json(value)?)))
        .collect()
}

pub fn item_to_json(item: &Item) -> Json {
    Json::Object(
        item.iter()
            .map(|(name, value)| (name.clone(), value_to_json(value)))
            .collect::<Map<_, _>>(),
    )
}

/// For a `BTreeMap`-shaped map of attribute values.
pub fn map_to_json(map: &BTreeMap<String, AttributeValue>) -> Json {
    Json::Object(
        map.iter()
            .map(|(name, value)| (name.clone(), value_to_json(value)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_round_trips() {
        let item = json!({
            "s": {"S": "text"}, "n": {"N": "-12.50"}, "b": {"B": "AAEC"}, "t": {"BOOL": true},
            "z": {"NULL": true}, "l": {"L": [{"N": "1"}, {"S": "x"}]}, "m": {"M": {"k": {"BOOL": false}}},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": ["AQ=="]}
        });
        let parsed = item_from_json(&item).unwrap();
        assert_eq!(
            parsed.get("n"),
            Some(&AttributeValue::N("-12.5".parse().unwrap()))
        );
        assert_eq!(parsed.get("b"), Some(&AttributeValue::B(vec![0, 1, 2])));
        let back = item_to_json(&parsed);
        assert_eq!(item_from_json(&back).unwrap(), parsed);
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            json!("x"),
            json!({}),
            json!({"S": 1}),
            json!({"N": "abc"}),
            json!({"B": "!!"}),
            json!({"NULL": false}),
            json!({"S": "a", "N": "1"}),
            json!({"XX": "a"}),
        ] {
            assert!(value_from_json(&bad).is_err(), "{bad}");
        }
    }
}
