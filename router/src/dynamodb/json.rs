//! DynamoDB's JSON form of attribute values (`{"S": "..."}`, `{"N": "1"}`,
//! `{"B": "<base64>"}`, …) to and from Cairn's item model.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use cairn_common::{AttributeValue, AttributesRef, CodecError, Item, Number, ValueRef, ValuesRef};
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

/// An item written as DynamoDB JSON straight from the item model, with
/// no `serde_json::Value` tree in between (the hot path of every read).
#[derive(Debug)]
pub struct ItemJson<'a>(pub &'a Item);

struct ValueJson<'a>(&'a AttributeValue);

/// Base64 text, written without an intermediate String.
struct Base64<'a>(&'a [u8]);

/// A value written through its `Display`.
struct Text<'a, T: std::fmt::Display>(&'a T);

impl serde::Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&base64::display::Base64Display::new(
            self.0,
            &base64::engine::general_purpose::STANDARD,
        ))
    }
}

impl<T: std::fmt::Display> serde::Serialize for Text<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

impl serde::Serialize for ItemJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, ValueJson(value))))
    }
}

/// A list's, map's or set's elements, written as they are iterated.
struct Elements<I>(std::cell::Cell<Option<I>>);

impl<I> Elements<I> {
    fn new(elements: I) -> Elements<I> {
        Elements(std::cell::Cell::new(Some(elements)))
    }
}

impl<I: Iterator<Item = T>, T: serde::Serialize> serde::Serialize for Elements<I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let elements = self.0.take().expect("elements are written once");
        serializer.collect_seq(elements)
    }
}

impl serde::Serialize for ValueJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self.0 {
            AttributeValue::S(s) => map.serialize_entry("S", s)?,
            AttributeValue::N(n) => map.serialize_entry("N", &Text(n))?,
            AttributeValue::B(b) => map.serialize_entry("B", &Base64(b))?,
            AttributeValue::Bool(b) => map.serialize_entry("BOOL", b)?,
            AttributeValue::Null => map.serialize_entry("NULL", &true)?,
            AttributeValue::L(list) => {
                map.serialize_entry("L", &Elements::new(list.iter().map(ValueJson)))?;
            }
            AttributeValue::M(m) => map.serialize_entry("M", &MapJson(m))?,
            AttributeValue::Ss(set) => map.serialize_entry("SS", set)?,
            AttributeValue::Ns(set) => {
                map.serialize_entry("NS", &Elements::new(set.iter().map(Text)))?;
            }
            AttributeValue::Bs(set) => {
                map.serialize_entry("BS", &Elements::new(set.iter().map(|b| Base64(b))))?;
            }
        }
        map.end()
    }
}

/// An encoded item (the node's bytes) written as DynamoDB JSON where it
/// lies: names and strings are borrowed from the encoding and nothing is
/// decoded into the item model first. Bytes that do not decode fail the
/// serialization, so a corrupt item is reported, never half-written.
#[derive(Debug)]
pub struct EncodedItemJson<'a>(pub &'a [u8]);

/// A map's attributes, iterated from a copy of the view (a view is a
/// slice and two counters), failing on the first that does not decode.
struct AttributesJson<'a>(AttributesRef<'a>);

struct ValueRefJson<'a>(ValueRef<'a>);

/// A list's elements (typed values) or a set's (bare strings: numbers as
/// text, binaries in base64), failing on the first that does not decode.
struct ValuesJson<'a> {
    values: ValuesRef<'a>,
    set: bool,
}

fn codec<E: serde::ser::Error>(error: CodecError) -> E {
    E::custom(format_args!("a stored item does not decode: {error}"))
}

impl serde::Serialize for EncodedItemJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attributes = AttributesRef::new(self.0).map_err(codec)?;
        AttributesJson(attributes).serialize(serializer)
    }
}

impl serde::Serialize for AttributesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for entry in self.0.clone() {
            let (name, value) = entry.map_err(codec)?;
            map.serialize_entry(name, &ValueRefJson(value))?;
        }
        map.end()
    }
}

impl serde::Serialize for ValuesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.values.len()))?;
        for value in self.values.clone() {
            match (self.set, value.map_err(codec)?) {
                (false, value) => seq.serialize_element(&ValueRefJson(value))?,
                (true, ValueRef::S(s)) => seq.serialize_element(s)?,
                (true, ValueRef::N(n)) => seq.serialize_element(&Text(&n))?,
                (true, ValueRef::B(b)) => seq.serialize_element(&Base64(b))?,
                (true, other) => {
                    return Err(serde::ser::Error::custom(format_args!(
                        "a set holds {other:?}"
                    )));
                }
            }
        }
        seq.end()
    }
}

impl<'a> serde::Serialize for ValueRefJson<'a> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let list = |values: &ValuesRef<'a>, set| ValuesJson {
            values: values.clone(),
            set,
        };
        let mut map = serializer.serialize_map(Some(1))?;
        match &self.0 {
            ValueRef::S(s) => map.serialize_entry("S", s)?,
            ValueRef::N(n) => map.serialize_entry("N", &Text(n))?,
            ValueRef::B(b) => map.serialize_entry("B", &Base64(b))?,
            ValueRef::Bool(b) => map.serialize_entry("BOOL", b)?,
            ValueRef::Null => map.serialize_entry("NULL", &true)?,
            ValueRef::L(values) => map.serialize_entry("L", &list(values, false))?,
            ValueRef::M(m) => map.serialize_entry("M", &AttributesJson(m.clone()))?,
            ValueRef::Ss(values) => map.serialize_entry("SS", &list(values, true))?,
            ValueRef::Ns(values) => map.serialize_entry("NS", &list(values, true))?,
            ValueRef::Bs(values) => map.serialize_entry("BS", &list(values, true))?,
        }
        map.end()
    }
}

struct MapJson<'a>(&'a BTreeMap<String, AttributeValue>);

impl serde::Serialize for MapJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, ValueJson(value))))
    }
}

/// An item read straight from DynamoDB JSON into the item model. Any
/// problem is an error: the caller then parses the slow way, which names
/// the problem as DynamoDB does.
struct ItemIn(Item);

struct ValueIn(AttributeValue);

impl<'de> serde::Deserialize<'de> for ItemIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let attributes = BTreeMap::<String, ValueIn>::deserialize(deserializer)?;
        Ok(ItemIn(
            attributes
                .into_iter()
                .map(|(k, ValueIn(v))| (k, v))
                .collect(),
        ))
    }
}

impl<'de> serde::Deserialize<'de> for ValueIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = ValueIn;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an attribute value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ValueIn, A::Error> {
        use serde::de::Error;
        let tag: std::borrow::Cow<'de, str> = map
            .next_key()?
            .ok_or_else(|| A::Error::custom("an attribute value needs a type key"))?;
        let invalid = |e: JsonError| A::Error::custom(e.0);
        let value = match &*tag {
            "S" => AttributeValue::S(map.next_value()?),
            "N" => AttributeValue::N(
                number(&map.next_value::<std::borrow::Cow<'de, str>>()?).map_err(invalid)?,
            ),
            "B" => AttributeValue::B(
                binary(&map.next_value::<std::borrow::Cow<'de, str>>()?).map_err(invalid)?,
            ),
            "BOOL" => AttributeValue::Bool(map.next_value()?),
            "NULL" => match map.next_value()? {
                true => AttributeValue::Null,
                false => return Err(A::Error::custom("NULL must be true")),
            },
            "L" => AttributeValue::L(
                map.next_value::<Vec<ValueIn>>()?
                    .into_iter()
                    .map(|ValueIn(v)| v)
                    .collect(),
            ),
            "M" => AttributeValue::M(
                map.next_value::<BTreeMap<String, ValueIn>>()?
                    .into_iter()
                    .map(|(k, ValueIn(v))| (k, v))
                    .collect(),
            ),
            "SS" => AttributeValue::Ss(map.next_value::<Vec<String>>()?.into_iter().collect()),
            "NS" => AttributeValue::Ns(
                map.next_value::<Vec<std::borrow::Cow<'de, str>>>()?
                    .iter()
                    .map(|n| number(n))
                    .collect::<Result<_, _>>()
                    .map_err(invalid)?,
            ),
            "BS" => AttributeValue::Bs(
                map.next_value::<Vec<std::borrow::Cow<'de, str>>>()?
                    .iter()
                    .map(|b| binary(b))
                    .collect::<Result<_, _>>()
                    .map_err(invalid)?,
            ),
            other => {
                return Err(A::Error::custom(format!(
                    "unknown attribute type {other:?}"
                )));
            }
        };
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(
                "an attribute value must have exactly one type key",
            ));
        }
        Ok(ValueIn(value))
    }
}

/// A request body: its JSON, with the top-level `Item` and `Key` (when
/// they parse) already in the item model instead of in the JSON.
#[derive(Debug, Default)]
pub struct Body {
    pub json: Json,
    pub item: Option<Item>,
    pub key: Option<Item>,
}

impl Body {
    /// Parses `bytes`: `Item` and `Key` straight into items; if anything
    /// about them is wrong, the whole body as plain JSON, so the operation
    /// reports the problem in DynamoDB's terms.
    pub fn parse(bytes: &[u8]) -> Result<Body, serde_json::Error> {
        match serde_json::from_slice::<Body>(bytes) {
            Ok(body) => Ok(body),
            Err(_) => Ok(Body {
                json: serde_json::from_slice(bytes)?,
                item: None,
                key: None,
            }),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> serde::de::Visitor<'de> for BodyVisitor {
            type Value = Body;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                use serde::de::Error;
                let mut body = Body::default();
                let mut rest = Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let duplicate = match name.as_str() {
                        "Item" => body.item.replace(map.next_value::<ItemIn>()?.0).is_some(),
                        "Key" => body.key.replace(map.next_value::<ItemIn>()?.0).is_some(),
                        _ => rest.insert(name, map.next_value()?).is_some(),
                    };
                    if duplicate {
                        // Plain JSON keeps the last; leave it to that path.
                        return Err(A::Error::custom("duplicate key"));
                    }
                }
                body.json = Json::Object(rest);
                Ok(body)
            }
        }
        deserializer.deserialize_map(BodyVisitor)
    }
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

    #[test]
    fn the_direct_codec_agrees_with_the_json_tree() {
        let json = json!({
            "s": {"S": "te\"xt\u{e9}"}, "n": {"N": "-12.50"}, "b": {"B": "AAEC"}, "t": {"BOOL": true},
            "z": {"NULL": true}, "l": {"L": [{"N": "1"}, {"S": "x"}, {"L": []}]},
            "m": {"M": {"k": {"BOOL": false}, "deep": {"M": {"x": {"NS": ["3", "1e2"]}}}}},
            "ss": {"SS": ["b", "a"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": ["AQ==", "AA=="]}
        });
        let item = item_from_json(&json).unwrap();
        let direct: Json =
            serde_json::from_slice(&serde_json::to_vec(&ItemJson(&item)).unwrap()).unwrap();
        assert_eq!(direct, item_to_json(&item));
        let request = json!({"TableName": "t", "Item": json, "Key": {"k": {"S": "v"}}, "Limit": 3});
        let body = Body::parse(&serde_json::to_vec(&request).unwrap()).unwrap();
        assert_eq!(body.item, Some(item));
        assert_eq!(
            body.key,
            Some(item_from_json(&json!({"k": {"S": "v"}})).unwrap())
        );
        assert_eq!(body.json, json!({"TableName": "t", "Limit": 3}));
        // Anything wrong with Item or Key leaves them in the JSON, for the
        // operation to report in DynamoDB's terms.
        for bad in [
            json!({"Item": {"a": {"N": "abc"}}}),
            json!({"Item": {"a": {"S": "x", "N": "1"}}}),
            json!({"Key": {"a": {"XX": "x"}}}),
            json!({"Key": {"a": {"NULL": false}}}),
            json!({"Item": "not an item"}),
        ] {
            let body = Body::parse(&serde_json::to_vec(&bad).unwrap()).unwrap();
            assert_eq!((body.item, body.key, &body.json), (None, None, &bad));
        }
        assert!(Body::parse(b"{not json").is_err());
    }

    #[test]
    fn an_encoded_item_is_written_as_its_decoded_form_is() {
        let json = json!({
            "s": {"S": "te\"xt\u{e9}"}, "n": {"N": "-12.50"}, "b": {"B": "AAEC"}, "t": {"BOOL": true},
            "z": {"NULL": true}, "l": {"L": [{"N": "1"}, {"S": "x"}, {"L": []}, {"SS": ["q"]}]},
            "m": {"M": {"k": {"BOOL": false}, "deep": {"M": {"x": {"NS": ["3", "1e2"]}}}}},
            "ss": {"SS": ["b", "a"]}, "ns": {"NS": ["1", "2"]}, "bs": {"BS": ["AQ==", "AA=="]}
        });
        let item = item_from_json(&json).unwrap();
        let bytes = item.to_bytes();
        let direct = serde_json::to_vec(&EncodedItemJson(&bytes)).unwrap();
        assert_eq!(direct, serde_json::to_vec(&ItemJson(&item)).unwrap());
        // Whatever does not decode fails the serialization instead of
        // writing part of an item.
        for cut in 0..bytes.len() {
            assert!(serde_json::to_vec(&EncodedItemJson(&bytes[..cut])).is_err());
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x80;
            let written = serde_json::to_vec(&EncodedItemJson(&bad));
            match Item::decode(&bad) {
                // The same item; a set may come out in its stored order.
                Ok(decoded) => {
                    let written: Json = serde_json::from_slice(&written.unwrap()).unwrap();
                    assert_eq!(item_from_json(&written), Ok(decoded), "byte {at} flipped");
                }
                Err(_) => assert!(written.is_err(), "byte {at} flipped was written"),
            }
        }
    }
}
