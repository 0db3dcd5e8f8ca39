//! Cairn's shared vocabulary: the item model (attribute values, numbers,
//! size limits), key schemas with their order-preserving byte encoding, and
//! the item codec. Every other crate depends on this one, never on each
//! other's internals.

pub mod admission;
pub mod client;
pub mod condition;
pub mod group;
pub mod item;
pub mod key;
pub mod number;
pub mod path;
pub mod quic;
pub mod scrape;
pub mod tcp;
pub mod update;
pub mod wire;

pub use item::{AttributeValue, AttributesRef, CodecError, Item, ItemError, ValueRef, ValuesRef};
pub use key::{KeyAttribute, KeyRange, KeySchema, KeyType, SchemaDecodeError};
pub use number::{Number, NumberError};
pub use path::{Path, Step};
