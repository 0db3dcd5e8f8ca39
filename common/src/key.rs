//! Key schemas and the binary key encoding whose byte order is the key order.
//!
//! A stored key is `partition_length: u16 BE ‖ partition ‖ sort`, where each
//! component is the attribute's order-preserving encoding: UTF-8 bytes for S,
//! raw bytes for B, [`Number::encode_key`] for N. All items of one partition
//! key are therefore contiguous, ordered by sort key, and a sort-key range is
//! a byte range. The sort component is last, so it needs no terminator.

use std::ops::Bound;

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

/// The 64-bit hash that places a partition key (its encoded component,
/// length prefix included): FNV-1a, then murmur3's fmix64 finalizer.
/// Ranges split on the high bits, which FNV-1a alone mixes poorly for
/// short, similar keys (one of 16 partitions got a third of its share in
/// a test).
pub fn partition_hash(bytes: &[u8]) -> u64 {
    let mut hash = bytes.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^ (hash >> 33)
}

/// The partition hash of an encoded key (its partition-key prefix);
/// `None` for bytes no key encoding produces.
pub fn key_hash(encoded_key: &[u8]) -> Option<u64> {
    let len = usize::from(u16::from_be_bytes([
        *encoded_key.first()?,
        *encoded_key.get(1)?,
    ]));
    Some(partition_hash(encoded_key.get(..2 + len)?))
}

/// Encoded bounds of a Query: a sort-key range within one partition key.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A key schema's stored form is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key schema encoding: {0}")]
pub struct SchemaDecodeError(&'static str);

impl KeySchema {
    /// The sort key a sort-key condition names; an error on a table
    /// without one.
    fn sort_for_condition(&self) -> Result<&KeyAttribute, ItemError> {
        self.sort
            .as_ref()
            .ok_or_else(|| ItemError::UnexpectedKeyAttribute {
                name: "(sort key condition on a table without a sort key)".into(),
            })
    }

    /// The byte range of a Query on partition key `partition` with sort-key
    /// bounds `start` and `end` (either may be unbounded).
    pub fn query_range(
        &self,
        partition: &AttributeValue,
        start: Bound<&AttributeValue>,
        end: Bound<&AttributeValue>,
    ) -> Result<KeyRange, ItemError> {
        let prefix = self.partition_prefix(partition)?;
        let sort_key = |value: &AttributeValue| -> Result<Vec<u8>, ItemError> {
            let sort = self.sort_for_condition()?;
            let item = Item::new().with(sort.name.clone(), value.clone());
            let mut key = prefix.clone();
            key.extend_from_slice(&component(&item, sort, SORT_KEY_BYTES_MAX)?);
            Ok(key)
        };
        let start = match start {
            Bound::Included(v) => Bound::Included(sort_key(v)?),
            Bound::Excluded(v) => Bound::Excluded(sort_key(v)?),
            Bound::Unbounded => Bound::Included(prefix.clone()),
        };
        let end = match end {
            Bound::Included(v) => Bound::Included(sort_key(v)?),
            Bound::Excluded(v) => Bound::Excluded(sort_key(v)?),
            Bound::Unbounded => match prefix_successor(&prefix) {
                Some(successor) => Bound::Excluded(successor),
                None => Bound::Unbounded,
            },
        };
        Ok((start, end))
    }

    /// The byte range of a Query on partition key `partition` whose sort
    /// key begins with `prefix` (a string or binary of the sort key's type;
    /// sort keys of those types are stored as their raw bytes, so the
    /// items are those between the prefix and its successor).
    pub fn sort_prefix_range(
        &self,
        partition: &AttributeValue,
        prefix: &AttributeValue,
    ) -> Result<KeyRange, ItemError> {
        let mut key = self.partition_prefix(partition)?;
        let sort = self.sort_for_condition()?;
        let raw: &[u8] = match (sort.key_type, prefix) {
            (KeyType::S, AttributeValue::S(s)) => s.as_bytes(),
            (KeyType::B, AttributeValue::B(b)) => b,
            _ => {
                return Err(ItemError::KeyTypeMismatch {
                    name: sort.name.clone(),
                    expected: match sort.key_type {
                        KeyType::N => "S or B (begins_with does not apply to numbers)",
                        other => other.name(),
                    },
                    found: prefix.type_name(),
                });
            }
        };
        if raw.len() > SORT_KEY_BYTES_MAX {
            return Err(ItemError::KeyTooLong {
                name: sort.name.clone(),
                size_bytes: raw.len(),
                size_bytes_max: SORT_KEY_BYTES_MAX,
            });
        }
        key.extend_from_slice(raw);
        // The successor may carry into the partition prefix (a prefix of
        // all 0xFF bytes): that is where the partition's items end too.
        let end = match prefix_successor(&key) {
            Some(successor) => Bound::Excluded(successor),
            None => Bound::Unbounded,
        };
        Ok((Bound::Included(key), end))
    }

    /// Stored form: `type u8 ‖ name_len u16 ‖ name` for the partition key,
    /// then `0` or `1 ‖ type ‖ name_len ‖ name` for the sort key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let attribute = |out: &mut Vec<u8>, a: &KeyAttribute| {
            out.push(a.key_type.to_byte());
            out.extend_from_slice(&(a.name.len() as u16).to_le_bytes());
            out.extend_from_slice(a.name.as_bytes());
        };
        attribute(&mut out, &self.partition);
        match &self.sort {
            Some(sort) => {
                out.push(1);
                attribute(&mut out, sort);
            }
            None => out.push(0),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KeySchema, SchemaDecodeError> {
        fn attribute(bytes: &[u8], at: &mut usize) -> Result<KeyAttribute, SchemaDecodeError> {
            let truncated = SchemaDecodeError("truncated");
            let key_type = KeyType::from_byte(*bytes.get(*at).ok_or(truncated.clone())?)
                .ok_or(SchemaDecodeError("unknown key type"))?;
            let len_bytes = bytes.get(*at + 1..*at + 3).ok_or(truncated.clone())?;
            let len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
            let name = bytes.get(*at + 3..*at + 3 + len).ok_or(truncated)?;
            let name =
                std::str::from_utf8(name).map_err(|_| SchemaDecodeError("name is not UTF-8"))?;
            *at += 3 + len;
            Ok(KeyAttribute::new(name, key_type))
        }
        let mut at = 0;
        let partition = attribute(bytes, &mut at)?;
        let sort = match bytes.get(at) {
            Some(0) => {
                at += 1;
                None
            }
            Some(1) => {
                at += 1;
                Some(attribute(bytes, &mut at)?)
            }
            _ => return Err(SchemaDecodeError("bad sort key flag")),
        };
        if at != bytes.len() {
            return Err(SchemaDecodeError("trailing bytes"));
        }
        Ok(KeySchema { partition, sort })
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last < 0xFF {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
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
    fn a_sort_key_prefix_range_holds_exactly_the_keys_with_that_prefix() {
        let s = KeySchema::new(
            KeyAttribute::new("pk", KeyType::S),
            Some(KeyAttribute::new("sk", KeyType::B)),
        );
        let key = |pk: &str, sk: &[u8]| {
            let item = Item::new()
                .with("pk", AttributeValue::S(pk.into()))
                .with("sk", AttributeValue::B(sk.to_vec()));
            s.key_of_item(&item).unwrap()
        };
        let sorts: [&[u8]; 9] = [
            b"a",
            b"ab",
            b"ab\x00",
            b"ab\xff",
            b"abc",
            b"ac",
            b"b",
            b"\xff",
            b"\xff\xff\x01",
        ];
        let prefixes: [&[u8]; 5] = [b"a", b"ab", b"ab\xff", b"\xff", b"\xff\xff"];
        let pk = AttributeValue::S("p".into());
        for prefix in prefixes {
            let range = s
                .sort_prefix_range(&pk, &AttributeValue::B(prefix.to_vec()))
                .unwrap();
            for sk in sorts {
                let inside = std::ops::RangeBounds::contains(&range, &key("p", sk));
                assert_eq!(inside, sk.starts_with(prefix), "{prefix:?} {sk:?}");
            }
            // Neighbouring partitions are never inside.
            for other in ["o", "q", "p\u{0}"] {
                for sk in sorts {
                    let inside = std::ops::RangeBounds::contains(&range, &key(other, sk));
                    assert!(!inside, "{other} {sk:?} under {prefix:?}");
                }
            }
        }
        let numbers = schema();
        let wrong = numbers.sort_prefix_range(&pk, &AttributeValue::S("1".into()));
        assert!(matches!(wrong, Err(ItemError::KeyTypeMismatch { .. })));
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
    fn schema_encoding_round_trips_and_rejects_garbage() {
        let s = schema();
        assert_eq!(KeySchema::decode(&s.encode()).unwrap(), s);
        let hash_only = KeySchema::new(KeyAttribute::new("id", KeyType::B), None);
        assert_eq!(KeySchema::decode(&hash_only.encode()).unwrap(), hash_only);
        let bytes = s.encode();
        for cut in 0..bytes.len() {
            assert!(KeySchema::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn query_range_covers_exactly_one_partition_key() {
        let s = schema();
        let pk = AttributeValue::S("a".into());
        let (start, end) = s
            .query_range(&pk, Bound::Unbounded, Bound::Unbounded)
            .unwrap();
        let inside = s.key_of_item(&item("a", "-5")).unwrap();
        let outside = s.key_of_item(&item("b", "-5")).unwrap();
        let within = |k: &Vec<u8>| {
            let after = match &start {
                Bound::Included(b) => k >= b,
                _ => unreachable!(),
            };
            let before = match &end {
                Bound::Excluded(b) => k < b,
                _ => unreachable!(),
            };
            after && before
        };
        assert!(within(&inside));
        assert!(!within(&outside));
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
