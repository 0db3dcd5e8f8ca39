//! Items and attribute values, their DynamoDB size rules, and the compact
//! binary codec that stores them in WAL records and B-tree leaves.
//!
//! The codec is hand-written rather than derived: it is small, it must reject
//! every malformed byte string with a typed error (it reads disk and network
//! input), and its layout is written down in docs/storage-format.md.

use std::collections::{BTreeMap, BTreeSet};

use crate::number::Number;

/// Largest item, counted with DynamoDB's size rules.
pub const ITEM_SIZE_BYTES_MAX: usize = 400 * 1024;
/// Deepest nesting of lists and maps DynamoDB accepts.
pub const NESTING_DEPTH_MAX: usize = 32;

/// One attribute value. Sets are ordered and must not be empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    S(String),
    N(Number),
    B(Vec<u8>),
    Bool(bool),
    Null,
    L(Vec<AttributeValue>),
    M(BTreeMap<String, AttributeValue>),
    Ss(BTreeSet<String>),
    Ns(BTreeSet<Number>),
    Bs(BTreeSet<Vec<u8>>),
}

impl AttributeValue {
    /// The value alone in the item codec's value encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_bytes() + 8);
        encode_value(self, &mut out);
        out
    }

    /// Decodes [`AttributeValue::to_bytes`], rejecting trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<AttributeValue, CodecError> {
        let mut reader = Reader { bytes, at: 0 };
        let value = reader.value(0)?;
        if reader.at != bytes.len() {
            return Err(CodecError::TrailingBytes {
                count: bytes.len() - reader.at,
            });
        }
        Ok(value)
    }

    /// The DynamoDB type descriptor ("S", "N", …), used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            AttributeValue::S(_) => "S",
            AttributeValue::N(_) => "N",
            AttributeValue::B(_) => "B",
            AttributeValue::Bool(_) => "BOOL",
            AttributeValue::Null => "NULL",
            AttributeValue::L(_) => "L",
            AttributeValue::M(_) => "M",
            AttributeValue::Ss(_) => "SS",
            AttributeValue::Ns(_) => "NS",
            AttributeValue::Bs(_) => "BS",
        }
    }

    /// Size in bytes as DynamoDB counts it for the 400 KB limit.
    pub fn size_bytes(&self) -> usize {
        match self {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.size_bytes(),
            AttributeValue::B(b) => b.len(),
            AttributeValue::Bool(_) | AttributeValue::Null => 1,
            AttributeValue::L(list) => 3 + list.iter().map(|v| 1 + v.size_bytes()).sum::<usize>(),
            AttributeValue::M(map) => {
                3 + map
                    .iter()
                    .map(|(k, v)| 1 + k.len() + v.size_bytes())
                    .sum::<usize>()
            }
            AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
            AttributeValue::Ns(set) => set.iter().map(Number::size_bytes).sum(),
            AttributeValue::Bs(set) => set.iter().map(Vec::len).sum(),
        }
    }
}

/// Why an item (or a key) is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("item is missing key attribute {name:?}")]
    MissingKeyAttribute { name: String },
    #[error("key attribute {name:?} must be of type {expected}, found {found}")]
    KeyTypeMismatch {
        name: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("key attribute {name:?} is empty")]
    EmptyKey { name: String },
    #[error("key attribute {name:?} is {size_bytes} bytes; at most {size_bytes_max} are allowed")]
    KeyTooLong {
        name: String,
        size_bytes: usize,
        size_bytes_max: usize,
    },
    #[error("key has attribute {name:?}, which is not part of the table's key schema")]
    UnexpectedKeyAttribute { name: String },
    #[error("item is {size_bytes} bytes; at most {size_bytes_max} are allowed")]
    ItemTooLarge {
        size_bytes: usize,
        size_bytes_max: usize,
    },
    #[error("attribute {name:?} is an empty set; sets must have at least one element")]
    EmptySet { name: String },
    #[error("attribute {name:?} nests deeper than {NESTING_DEPTH_MAX} levels")]
    NestingTooDeep { name: String },
    #[error("attribute names must not be empty")]
    EmptyAttributeName,
    #[error("key attribute {name:?} cannot be updated")]
    KeyAttributeUpdate { name: String },
    #[error("ADD to attribute {name:?}: {reason}")]
    InvalidAdd { name: String, reason: String },
    #[error("update of attribute {name:?}: {reason}")]
    InvalidUpdate { name: String, reason: String },
}

/// An item: attribute name to value. Names are unique and ordered, so two
/// equal items encode to equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    attributes: BTreeMap<String, AttributeValue>,
}

impl Item {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: impl Into<String>, value: AttributeValue) -> Self {
        self.attributes.insert(name.into(), value);
        self
    }

    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: AttributeValue,
    ) -> Option<AttributeValue> {
        self.attributes.insert(name.into(), value)
    }

    pub fn remove(&mut self, name: &str) -> Option<AttributeValue> {
        self.attributes.remove(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut AttributeValue> {
        self.attributes.get_mut(name)
    }

    pub fn get(&self, name: &str) -> Option<&AttributeValue> {
        self.attributes.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &AttributeValue)> {
        self.attributes.iter()
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }

    /// Size in bytes as DynamoDB counts it: names plus values.
    pub fn size_bytes(&self) -> usize {
        self.attributes
            .iter()
            .map(|(name, value)| name.len() + value.size_bytes())
            .sum()
    }

    /// Checks the limits that do not depend on the table: size, non-empty
    /// sets, nesting depth, non-empty names.
    pub fn validate(&self) -> Result<(), ItemError> {
        let size_bytes = self.size_bytes();
        if size_bytes > ITEM_SIZE_BYTES_MAX {
            return Err(ItemError::ItemTooLarge {
                size_bytes,
                size_bytes_max: ITEM_SIZE_BYTES_MAX,
            });
        }
        for (name, value) in &self.attributes {
            if name.is_empty() {
                return Err(ItemError::EmptyAttributeName);
            }
            validate_value(name, value, 1)?;
        }
        Ok(())
    }

    /// Appends the binary encoding (docs/storage-format.md, "Items").
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, self.attributes.len() as u64);
        for (name, value) in &self.attributes {
            write_bytes(out, name.as_bytes());
            encode_value(value, out);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_bytes() + 16);
        self.encode(&mut out);
        out
    }

    /// Decodes an item, rejecting trailing bytes and every malformed input.
    pub fn decode(bytes: &[u8]) -> Result<Item, CodecError> {
        let mut reader = Reader { bytes, at: 0 };
        let item = reader.item(0)?;
        if reader.at != bytes.len() {
            return Err(CodecError::TrailingBytes {
                count: bytes.len() - reader.at,
            });
        }
        Ok(item)
    }
}

impl FromIterator<(String, AttributeValue)> for Item {
    fn from_iter<T: IntoIterator<Item = (String, AttributeValue)>>(iter: T) -> Self {
        Item {
            attributes: iter.into_iter().collect(),
        }
    }
}

fn validate_value(name: &str, value: &AttributeValue, depth: usize) -> Result<(), ItemError> {
    if depth > NESTING_DEPTH_MAX {
        return Err(ItemError::NestingTooDeep {
            name: name.to_owned(),
        });
    }
    let empty_set = || ItemError::EmptySet {
        name: name.to_owned(),
    };
    match value {
        AttributeValue::Ss(set) if set.is_empty() => Err(empty_set()),
        AttributeValue::Ns(set) if set.is_empty() => Err(empty_set()),
        AttributeValue::Bs(set) if set.is_empty() => Err(empty_set()),
        AttributeValue::L(list) => list
            .iter()
            .try_for_each(|v| validate_value(name, v, depth + 1)),
        AttributeValue::M(map) => map
            .values()
            .try_for_each(|v| validate_value(name, v, depth + 1)),
        _ => Ok(()),
    }
}

/// Why bytes are not a valid encoded item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("encoded item ends early")]
    Truncated,
    #[error("encoded item has {count} trailing bytes")]
    TrailingBytes { count: usize },
    #[error("unknown value tag {tag}")]
    UnknownTag { tag: u8 },
    #[error("string is not UTF-8")]
    InvalidUtf8,
    #[error("malformed varint")]
    BadVarint,
    #[error("encoded number is invalid: {0}")]
    BadNumber(#[from] crate::number::NumberError),
    #[error("encoded value nests too deep")]
    TooDeep,
}

mod tag {
    pub const S: u8 = 0;
    pub const N: u8 = 1;
    pub const B: u8 = 2;
    pub const FALSE: u8 = 3;
    pub const TRUE: u8 = 4;
    pub const NULL: u8 = 5;
    pub const L: u8 = 6;
    pub const M: u8 = 7;
    pub const SS: u8 = 8;
    pub const NS: u8 = 9;
    pub const BS: u8 = 10;
}

fn encode_value(value: &AttributeValue, out: &mut Vec<u8>) {
    match value {
        AttributeValue::S(s) => {
            out.push(tag::S);
            write_bytes(out, s.as_bytes());
        }
        AttributeValue::N(n) => {
            out.push(tag::N);
            encode_number(n, out);
        }
        AttributeValue::B(b) => {
            out.push(tag::B);
            write_bytes(out, b);
        }
        AttributeValue::Bool(b) => out.push(if *b { tag::TRUE } else { tag::FALSE }),
        AttributeValue::Null => out.push(tag::NULL),
        AttributeValue::L(list) => {
            out.push(tag::L);
            write_varint(out, list.len() as u64);
            list.iter().for_each(|v| encode_value(v, out));
        }
        AttributeValue::M(map) => {
            out.push(tag::M);
            write_varint(out, map.len() as u64);
            for (k, v) in map {
                write_bytes(out, k.as_bytes());
                encode_value(v, out);
            }
        }
        AttributeValue::Ss(set) => {
            out.push(tag::SS);
            write_varint(out, set.len() as u64);
            set.iter().for_each(|s| write_bytes(out, s.as_bytes()));
        }
        AttributeValue::Ns(set) => {
            out.push(tag::NS);
            write_varint(out, set.len() as u64);
            set.iter().for_each(|n| encode_number(n, out));
        }
        AttributeValue::Bs(set) => {
            out.push(tag::BS);
            write_varint(out, set.len() as u64);
            set.iter().for_each(|b| write_bytes(out, b));
        }
    }
}

/// Sign byte, exponent as zig-zag varint, significand as varint.
fn encode_number(n: &Number, out: &mut Vec<u8>) {
    out.push(u8::from(n.is_negative()));
    let exponent = i64::from(n.exponent());
    write_varint(out, ((exponent << 1) ^ (exponent >> 63)) as u64);
    write_varint128(out, n.significand());
}

fn write_varint(out: &mut Vec<u8>, value: u64) {
    write_varint128(out, u128::from(value));
}

fn write_varint128(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[derive(Debug, Clone)]
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self.bytes.get(self.at).ok_or(CodecError::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn varint128(&mut self) -> Result<u128, CodecError> {
        let mut value: u128 = 0;
        for shift in (0..128).step_by(7) {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::BadVarint)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        u64::try_from(self.varint128()?).map_err(|_| CodecError::BadVarint)
    }

    /// A length that must fit in what is left, so a corrupt length cannot
    /// make us allocate gigabytes.
    fn length(&mut self) -> Result<usize, CodecError> {
        let length = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if length > left {
            return Err(CodecError::Truncated);
        }
        Ok(length as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let length = self.length()?;
        let slice = &self.bytes[self.at..self.at + length];
        self.at += length;
        Ok(slice)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        self.str().map(str::to_owned)
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| CodecError::InvalidUtf8)
    }

    fn number(&mut self) -> Result<Number, CodecError> {
        let negative = match self.byte()? {
            0 => false,
            1 => true,
            tag => return Err(CodecError::UnknownTag { tag }),
        };
        let zigzag = self.varint()?;
        let exponent = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        let significand = self.varint128()?;
        let exponent = i32::try_from(exponent).map_err(|_| CodecError::BadVarint)?;
        Ok(Number::from_parts(negative, significand, exponent)?)
    }

    fn item(&mut self, depth: usize) -> Result<Item, CodecError> {
        let count = self.length()?;
        let mut attributes = BTreeMap::new();
        for _ in 0..count {
            let name = self.string()?;
            attributes.insert(name, self.value(depth)?);
        }
        Ok(Item { attributes })
    }

    fn value(&mut self, depth: usize) -> Result<AttributeValue, CodecError> {
        if depth > NESTING_DEPTH_MAX {
            return Err(CodecError::TooDeep);
        }
        Ok(match self.byte()? {
            tag::S => AttributeValue::S(self.string()?),
            tag::N => AttributeValue::N(self.number()?),
            tag::B => AttributeValue::B(self.bytes()?.to_vec()),
            tag::FALSE => AttributeValue::Bool(false),
            tag::TRUE => AttributeValue::Bool(true),
            tag::NULL => AttributeValue::Null,
            tag::L => {
                let count = self.length()?;
                let list = (0..count)
                    .map(|_| self.value(depth + 1))
                    .collect::<Result<_, _>>()?;
                AttributeValue::L(list)
            }
            tag::M => AttributeValue::M(self.item(depth + 1)?.attributes),
            tag::SS => {
                let count = self.length()?;
                AttributeValue::Ss(
                    (0..count)
                        .map(|_| self.string())
                        .collect::<Result<_, CodecError>>()?,
                )
            }
            tag::NS => {
                let count = self.length()?;
                AttributeValue::Ns(
                    (0..count)
                        .map(|_| self.number())
                        .collect::<Result<_, CodecError>>()?,
                )
            }
            tag::BS => {
                let count = self.length()?;
                let set = (0..count).map(|_| self.bytes().map(<[u8]>::to_vec));
                AttributeValue::Bs(set.collect::<Result<_, _>>()?)
            }
            tag => return Err(CodecError::UnknownTag { tag }),
        })
    }
}

/// A value read in place from an encoded item: strings and binaries
/// borrow the encoding, and lists, maps and sets are iterated where they
/// lie. Reading an item this way allocates nothing; the router writes a
/// read's answer straight from the bytes the node sent.
#[derive(Debug, Clone)]
pub enum ValueRef<'a> {
    S(&'a str),
    N(Number),
    B(&'a [u8]),
    Bool(bool),
    Null,
    L(ValuesRef<'a>),
    M(AttributesRef<'a>),
    Ss(ValuesRef<'a>),
    Ns(ValuesRef<'a>),
    Bs(ValuesRef<'a>),
}

/// The attributes of an encoded item or map, in name order. Malformed
/// bytes are an error where the iteration reaches them, and end it.
#[derive(Debug, Clone)]
pub struct AttributesRef<'a> {
    reader: Reader<'a>,
    left: usize,
    depth: usize,
    failed: bool,
}

/// The elements of an encoded list (any values) or set (strings, numbers
/// or binaries, each yielded as the matching `ValueRef`).
#[derive(Debug, Clone)]
pub struct ValuesRef<'a> {
    reader: Reader<'a>,
    left: usize,
    depth: usize,
    tag: u8,
    failed: bool,
}

impl<'a> AttributesRef<'a> {
    /// The attributes of the encoded item `bytes`. Like [`Item::decode`],
    /// the iteration fails on trailing bytes.
    pub fn new(bytes: &'a [u8]) -> Result<AttributesRef<'a>, CodecError> {
        let mut reader = Reader { bytes, at: 0 };
        let left = reader.length()?;
        Ok(AttributesRef {
            reader,
            left,
            depth: 0,
            failed: false,
        })
    }

    /// Attributes still to come.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl<'a> ValuesRef<'a> {
    /// Elements still to come.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

/// What ends an in-place iteration: nothing if every byte of its extent
/// was read, else (once) the trailing bytes.
fn trailing(reader: &Reader<'_>, failed: &mut bool) -> Option<CodecError> {
    if *failed || reader.at == reader.bytes.len() {
        return None;
    }
    *failed = true;
    Some(CodecError::TrailingBytes {
        count: reader.bytes.len() - reader.at,
    })
}

impl<'a> Iterator for AttributesRef<'a> {
    type Item = Result<(&'a str, ValueRef<'a>), CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return trailing(&self.reader, &mut self.failed).map(Err);
        }
        let read = (|| {
            let name = self.reader.str()?;
            Ok((name, self.reader.value_ref(self.depth)?))
        })();
        self.left -= 1;
        if read.is_err() {
            self.left = 0;
            self.failed = true;
        }
        Some(read)
    }
}

impl<'a> Iterator for ValuesRef<'a> {
    type Item = Result<ValueRef<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return trailing(&self.reader, &mut self.failed).map(Err);
        }
        let read = match self.tag {
            tag::SS => self.reader.str().map(ValueRef::S),
            tag::NS => self.reader.number().map(ValueRef::N),
            tag::BS => self.reader.bytes().map(ValueRef::B),
            _ => self.reader.value_ref(self.depth),
        };
        self.left -= 1;
        if read.is_err() {
            self.left = 0;
            self.failed = true;
        }
        Some(read)
    }
}

impl<'a> Reader<'a> {
    /// One value in place. A list, map or set is walked once to find its
    /// extent (no allocation), then handed out as an iterator over it.
    fn value_ref(&mut self, depth: usize) -> Result<ValueRef<'a>, CodecError> {
        if depth > NESTING_DEPTH_MAX {
            return Err(CodecError::TooDeep);
        }
        Ok(match self.byte()? {
            tag::S => ValueRef::S(self.str()?),
            tag::N => ValueRef::N(self.number()?),
            tag::B => ValueRef::B(self.bytes()?),
            tag::FALSE => ValueRef::Bool(false),
            tag::TRUE => ValueRef::Bool(true),
            tag::NULL => ValueRef::Null,
            tag @ (tag::L | tag::M | tag::SS | tag::NS | tag::BS) => {
                let left = self.length()?;
                let start = self.at;
                for _ in 0..left {
                    self.skip_element(tag, depth + 1)?;
                }
                let reader = Reader {
                    bytes: &self.bytes[start..self.at],
                    at: 0,
                };
                let depth = depth + 1;
                let values = |reader| ValuesRef {
                    reader,
                    left,
                    depth,
                    tag,
                    failed: false,
                };
                match tag {
                    tag::L => ValueRef::L(values(reader)),
                    tag::SS => ValueRef::Ss(values(reader)),
                    tag::NS => ValueRef::Ns(values(reader)),
                    tag::BS => ValueRef::Bs(values(reader)),
                    _ => ValueRef::M(AttributesRef {
                        reader,
                        left,
                        depth,
                        failed: false,
                    }),
                }
            }
            tag => return Err(CodecError::UnknownTag { tag }),
        })
    }

    /// Skips one element of a container with tag `container`.
    fn skip_element(&mut self, container: u8, depth: usize) -> Result<(), CodecError> {
        match container {
            tag::L => self.skip_value(depth),
            tag::M => {
                self.bytes()?;
                self.skip_value(depth)
            }
            tag::NS => self.number().map(drop),
            _ => self.bytes().map(drop),
        }
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), CodecError> {
        if depth > NESTING_DEPTH_MAX {
            return Err(CodecError::TooDeep);
        }
        match self.byte()? {
            tag::S | tag::B => self.bytes().map(drop),
            tag::N => self.number().map(drop),
            tag::FALSE | tag::TRUE | tag::NULL => Ok(()),
            tag @ (tag::L | tag::M | tag::SS | tag::NS | tag::BS) => {
                for _ in 0..self.length()? {
                    self.skip_element(tag, depth + 1)?;
                }
                Ok(())
            }
            tag => Err(CodecError::UnknownTag { tag }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Item {
        let nested: BTreeMap<String, AttributeValue> = [
            (
                "x".to_owned(),
                AttributeValue::N("-1.25e-7".parse().unwrap()),
            ),
            (
                "y".to_owned(),
                AttributeValue::L(vec![AttributeValue::Null, AttributeValue::Bool(true)]),
            ),
        ]
        .into_iter()
        .collect();
        Item::new()
            .with("id", AttributeValue::S("user#1".into()))
            .with(
                "n",
                AttributeValue::N("12345678901234567890123456789012345678".parse().unwrap()),
            )
            .with("blob", AttributeValue::B(vec![0, 1, 2, 255]))
            .with("flag", AttributeValue::Bool(false))
            .with("map", AttributeValue::M(nested))
            .with(
                "ss",
                AttributeValue::Ss(["a".into(), "b".into()].into_iter().collect()),
            )
            .with(
                "ns",
                AttributeValue::Ns(["1".parse().unwrap()].into_iter().collect()),
            )
            .with("bs", AttributeValue::Bs([vec![9u8]].into_iter().collect()))
    }

    #[test]
    fn codec_round_trips() {
        let item = sample();
        assert_eq!(Item::decode(&item.to_bytes()).unwrap(), item);
    }

    #[test]
    fn codec_rejects_every_truncation_and_garbage() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                Item::decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            Item::decode(&extra),
            Err(CodecError::TrailingBytes { count: 1 })
        );
        // A huge length must be refused, not allocated.
        assert_eq!(
            Item::decode(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
            Err(CodecError::Truncated)
        );
    }

    /// The owned item an in-place view reads as.
    fn owned(bytes: &[u8]) -> Result<Item, CodecError> {
        fn value(read: ValueRef<'_>) -> Result<AttributeValue, CodecError> {
            Ok(match read {
                ValueRef::S(s) => AttributeValue::S(s.to_owned()),
                ValueRef::N(n) => AttributeValue::N(n),
                ValueRef::B(b) => AttributeValue::B(b.to_vec()),
                ValueRef::Bool(b) => AttributeValue::Bool(b),
                ValueRef::Null => AttributeValue::Null,
                ValueRef::L(list) => {
                    AttributeValue::L(list.map(|v| value(v?)).collect::<Result<_, _>>()?)
                }
                ValueRef::M(map) => AttributeValue::M(attributes(map)?),
                ValueRef::Ss(set) => AttributeValue::Ss(
                    set.map(|v| match v? {
                        ValueRef::S(s) => Ok(s.to_owned()),
                        other => panic!("a string set yielded {other:?}"),
                    })
                    .collect::<Result<_, CodecError>>()?,
                ),
                ValueRef::Ns(set) => AttributeValue::Ns(
                    set.map(|v| match v? {
                        ValueRef::N(n) => Ok(n),
                        other => panic!("a number set yielded {other:?}"),
                    })
                    .collect::<Result<_, CodecError>>()?,
                ),
                ValueRef::Bs(set) => AttributeValue::Bs(
                    set.map(|v| match v? {
                        ValueRef::B(b) => Ok(b.to_vec()),
                        other => panic!("a binary set yielded {other:?}"),
                    })
                    .collect::<Result<_, CodecError>>()?,
                ),
            })
        }
        fn attributes(
            map: AttributesRef<'_>,
        ) -> Result<BTreeMap<String, AttributeValue>, CodecError> {
            map.map(|entry| {
                let (name, v) = entry?;
                Ok((name.to_owned(), value(v)?))
            })
            .collect()
        }
        Ok(Item {
            attributes: attributes(AttributesRef::new(bytes)?)?,
        })
    }

    #[test]
    fn the_in_place_view_reads_what_decode_reads_and_refuses_what_it_refuses() {
        let bytes = sample().to_bytes();
        assert_eq!(owned(&bytes), Ok(sample()));
        for cut in 0..bytes.len() {
            assert!(owned(&bytes[..cut]).is_err(), "prefix of {cut} bytes read");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(owned(&extra), Err(CodecError::TrailingBytes { count: 1 }));
        // Every single-byte corruption: the view and decode agree on the
        // item or both refuse it.
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                assert_eq!(
                    owned(&bad).is_ok(),
                    Item::decode(&bad).is_ok(),
                    "byte {at} ^ {flip:#x}"
                );
                if let Ok(item) = Item::decode(&bad) {
                    assert_eq!(owned(&bad), Ok(item));
                }
            }
        }
        // Nesting deeper than DynamoDB allows is refused in place too.
        let mut deep = AttributeValue::Null;
        for _ in 0..=NESTING_DEPTH_MAX + 1 {
            deep = AttributeValue::L(vec![deep]);
        }
        let deep = Item::new().with("d", deep).to_bytes();
        assert_eq!(Item::decode(&deep), Err(CodecError::TooDeep));
        assert_eq!(owned(&deep), Err(CodecError::TooDeep));
    }

    #[test]
    fn validation_limits() {
        let big = Item::new().with("v", AttributeValue::B(vec![0; ITEM_SIZE_BYTES_MAX]));
        assert!(matches!(
            big.validate(),
            Err(ItemError::ItemTooLarge { .. })
        ));
        let just_fits = Item::new().with("v", AttributeValue::B(vec![0; ITEM_SIZE_BYTES_MAX - 1]));
        assert_eq!(just_fits.validate(), Ok(()));
        let empty_set = Item::new().with("s", AttributeValue::Ss(BTreeSet::new()));
        assert!(matches!(
            empty_set.validate(),
            Err(ItemError::EmptySet { .. })
        ));
        let mut deep = AttributeValue::Null;
        for _ in 0..40 {
            deep = AttributeValue::L(vec![deep]);
        }
        let deep = Item::new().with("d", deep);
        assert!(matches!(
            deep.validate(),
            Err(ItemError::NestingTooDeep { .. })
        ));
    }
}
