//! Key schemas and the binary key encoding whose byte order is the key order.
//!
//! A stored key is `partition_length: u16 BE ‖ partition ‖ sort`, where each
//! component is the attribute's order-preserving encoding: UTF-8 bytes for S,
//! raw bytes for B, [`Number::encode_key`] for N. All items of one partition
//! key are therefore contiguous, ordered by sort key, and a sort-key range is
//! a byte range. The sort component is last, so it needs no terminator.

use crate::item::{AttributeValue, Item, ItemError};
use crate::number::Number;

/// Longest partition key value, in bytes.
pub const PARTITION_KEY_BYTES_MAX: usize = 2048;
/// Longest sort key value, in bytes.
pub const SORT_KEY_BYTES_MAX: usize = 1024;

/// The scalar types a key attribute may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    S,
    N,
    B,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::S => "S",
            KeyType::N => "N",
            KeyType::B => "B",
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            KeyType::S => 0,
            KeyType::N => 1,
            KeyType::B => 2,
        }
    }

    pub fn from_byte(byte: u8) -> Option<KeyType> {
        match byte {
            0 => Some(KeyType::S),
            1 => Some(KeyType::N),
            2 => Some(KeyType::B),
            _ => None,
        }
    }
}

/// One key attribute: its name and type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyAttribute {
    pub name: String,
    pub key_type: KeyType,
}

impl KeyAttribute {
    pub fn new(name: impl Into<String>, key_type: KeyType) -> Self {
        Self {
            name: name.into(),
            key_type,
        }
    }
}

/// A table's primary key: a partition key and an optional sort key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeySchema {
    pub partition: KeyAttribute,
    pub sort: Option<KeyAttribute>,
}

impl KeySchema {
    pub fn new(partition: KeyAttribute, sort: Option<KeyAttribute>) -> Self {
        Self { partition, sort }
    }

    /// Validates `item` (limits and key attributes) and returns its encoded key.
    pub fn key_of_item(&self, item: &Item) -> Result<Vec<u8>, ItemError> {
        item.validate()?;
        self.encode_from(item)
    }

    /// Encodes a key given as an item holding exactly the key attributes, as
    /// GetItem and DeleteItem receive it.
    pub fn key_of_key(&self, key: &Item) -> Result<Vec<u8>, ItemError> {
        for (name, _) in key.iter() {
            let known = *name == self.partition.name
                || self.sort.as_ref().is_some_and(|sort| *name == sort.name);
            if !known {
                return Err(ItemError::UnexpectedKeyAttribute { name: name.clone() });
            }
        }
        self.encode_from(key)
    }

    fn encode_from(&self, item: &Item) -> Result<Vec<u8>, ItemError> {
        let partition = component(item, &self.partition, PARTITION_KEY_BYTES_MAX)?;
        let mut key = Vec::with_capacity(2 + partition.len() + 16);
        key.extend_from_slice(&(partition.len() as u16).to_be_bytes());
        key.extend_from_slice(&partition);
        if let Some(sort) = &self.sort {
            key.extend_from_slice(&component(item, sort, SORT_KEY_BYTES_MAX)?);
        }
        Ok(key)
    }

    /// The encoded-key prefix shared by every item with this partition key:
    /// the start of a Query's byte range.
    pub fn partition_prefix(&self, value: &AttributeValue) -> Result<Vec<u8>, ItemError> {
        let item = Item::new().with(self.partition.name.clone(), value.clone());
        let partition = component(&item, &self.partition, PARTITION_KEY_BYTES_MAX)?;
        let mut prefix = (partition.len() as u16).to_be_bytes().to_vec();
        prefix.extend_from_slice(&partition);
        Ok(prefix)
    }
}

/// Encodes one key attribute of `item`, checking presence, type and size.
fn component(
    item: &Item,
    attribute: &KeyAttribute,
    size_bytes_max: usize,
) -> Result<Vec<u8>, ItemError> {
    let name = &attribute.name;
    let value = item
        .get(name)
        .ok_or_else(|| ItemError::MissingKeyAttribute { name: name.clone() })?;
    let mismatch = || ItemError::KeyTypeMismatch {
        name: name.clone(),
        expected: attribute.key_type.name(),
        found: value.type_name(),
    };
    let raw: &[u8] = match (attribute.key_type, value) {
        (KeyType::S, AttributeValue::S(s)) => s.as_bytes(),
        (KeyType::B, AttributeValue::B(b)) => b,
        (KeyType::N, AttributeValue::N(n)) => return Ok(encode_number(n)),
        _ => return Err(mismatch()),
    };
    if raw.is_empty() {
        return Err(ItemError::EmptyKey { name: name.clone() });
    }
    if raw.len() > size_bytes_max {
        return Err(ItemError::KeyTooLong {
            name: name.clone(),
            size_bytes: raw.len(),
            size_bytes_max,
        });
    }
    Ok(raw.to_vec())
}

fn encode_number(n: &Number) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    n.encode_key(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> KeySchema {
        KeySchema::new(
            KeyAttribute::new("pk", KeyType::S),
            Some(KeyAttribute::new("sk", KeyType::N)),
        )
    }

    fn item(pk: &str, sk: &str) -> Item {
        Item::new()
            .with("pk", AttributeValue::S(pk.into()))
            .with("sk", AttributeValue::N(sk.parse().unwrap()))
    }

    #[test]
    fn sort_key_order_is_byte_order_within_a_partition() {
        let s = schema();
        let sorts = ["-100", "-1.5", "-1", "0", "0.001", "1", "2", "10", "1e20"];
        let keys: Vec<Vec<u8>> = sorts
            .iter()
            .map(|sk| s.key_of_item(&item("a", sk)).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let prefix = s.partition_prefix(&AttributeValue::S("a".into())).unwrap();
        assert!(keys.iter().all(|k| k.starts_with(&prefix)));
        // A different partition key never interleaves: "ab" is not under "a".
        let other = s.key_of_item(&item("ab", "0")).unwrap();
        assert!(!other.starts_with(&prefix));
    }

    #[test]
    fn key_violations_are_typed() {
        let s = schema();
        let missing = Item::new().with("pk", AttributeValue::S("a".into()));
        assert_eq!(
            s.key_of_item(&missing),
            Err(ItemError::MissingKeyAttribute { name: "sk".into() })
        );
        let wrong = Item::new()
            .with("pk", AttributeValue::N("1".parse().unwrap()))
            .with("sk", AttributeValue::N("1".parse().unwrap()));
        assert_eq!(
            s.key_of_item(&wrong),
            Err(ItemError::KeyTypeMismatch {
                name: "pk".into(),
                expected: "S",
                found: "N"
            })
        );
        assert_eq!(
            s.key_of_item(&item("", "1")),
            Err(ItemError::EmptyKey { name: "pk".into() })
        );
        let long = "x".repeat(PARTITION_KEY_BYTES_MAX + 1);
        assert!(matches!(
            s.key_of_item(&item(&long, "1")),
            Err(ItemError::KeyTooLong { .. })
        ));
        assert!(
            s.key_of_item(&item(&"x".repeat(PARTITION_KEY_BYTES_MAX), "1"))
                .is_ok()
        );
        let extra = item("a", "1").with("other", AttributeValue::Null);
        assert!(matches!(
            s.key_of_key(&extra),
            Err(ItemError::UnexpectedKeyAttribute { .. })
        ));
    }
}
