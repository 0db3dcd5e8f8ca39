//! Conditions on a write, and filters on a read (DynamoDB's condition
//! expressions): attribute exists / not exists, comparisons between
//! attributes, values and `size()`, `BETWEEN`, `IN`, `begins_with`,
//! `contains`, `attribute_type`, joined with `AND`, `OR` and `NOT`, on
//! document paths (a top-level attribute, or one nested in maps and
//! lists).
//!
//! Comparison follows DynamoDB: `=` and `<>` compare any two values
//! (values of different types are unequal); ordering comparisons,
//! `BETWEEN` and `begins_with` need both sides to be S, N or B of the same
//! type, and are false otherwise. An operand naming a missing attribute
//! makes its comparison false. A condition on a missing item sees no
//! attributes.

use std::cmp::Ordering;

use crate::item::{AttributeValue, Item};
use crate::path::Path;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    // The discriminants are the wire bytes.
    Eq = 0,
    Ne = 1,
    Lt = 2,
    Le = 3,
    Gt = 4,
    Ge = 5,
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    Attribute(Path),
    Value(AttributeValue),
    /// `size(a)`: a string's length in characters, a binary's in bytes, a
    /// set's, list's or map's element count.
    Size(Path),
}

impl CompareOp {
    /// The wire byte: 0 `=`, 1 `<>`, 2 `<`, 3 `<=`, 4 `>`, 5 `>=`.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    pub fn from_byte(byte: u8) -> Option<CompareOp> {
        Some(match byte {
            0 => CompareOp::Eq,
            1 => CompareOp::Ne,
            2 => CompareOp::Lt,
            3 => CompareOp::Le,
            4 => CompareOp::Gt,
            5 => CompareOp::Ge,
            _ => return None,
        })
    }
}

/// A condition that must hold on the current item for a write to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Exists(Path),
    NotExists(Path),
    Compare {
        attribute: Path,
        op: CompareOp,
        value: AttributeValue,
    },
    /// A string or binary that begins with the prefix (a value, or another
    /// attribute's value).
    BeginsWith {
        attribute: Path,
        prefix: Operand,
    },
    /// The general comparison (`a < b`, `size(a) >= :n`, `:v = a`).
    CompareOperands {
        left: Operand,
        op: CompareOp,
        right: Operand,
    },
    /// `value BETWEEN low AND high`, both ends included.
    Between {
        value: Operand,
        low: Operand,
        high: Operand,
    },
    /// `value IN (a, b, …)`: equal to one of them.
    In {
        value: Operand,
        list: Vec<Operand>,
    },
    /// A string holding a substring, or a set or list holding an element.
    Contains {
        attribute: Path,
        operand: Operand,
    },
    /// `attribute_type(a, :t)` with `:t` one of S, N, B, BOOL, NULL, L, M,
    /// SS, NS, BS.
    AttributeType {
        attribute: Path,
        type_name: String,
    },
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
}

/// Deepest nesting of AND, OR and NOT a decoded condition may have.
pub const CONDITION_DEPTH_MAX: usize = 64;
/// Most operands in one IN list (DynamoDB's limit).
pub const IN_OPERANDS_MAX: usize = 100;

/// Orders two scalar values of the same type; `None` otherwise.
pub fn compare_scalars(a: &AttributeValue, b: &AttributeValue) -> Option<Ordering> {
    match (a, b) {
        (AttributeValue::S(x), AttributeValue::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (AttributeValue::N(x), AttributeValue::N(y)) => Some(x.cmp(y)),
        (AttributeValue::B(x), AttributeValue::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn size_of(value: &AttributeValue) -> Option<u64> {
    Some(match value {
        AttributeValue::S(s) => s.chars().count() as u64,
        AttributeValue::B(b) => b.len() as u64,
        AttributeValue::L(l) => l.len() as u64,
        AttributeValue::M(m) => m.len() as u64,
        AttributeValue::Ss(s) => s.len() as u64,
        AttributeValue::Ns(s) => s.len() as u64,
        AttributeValue::Bs(s) => s.len() as u64,
        AttributeValue::N(_) | AttributeValue::Bool(_) | AttributeValue::Null => return None,
    })
}

fn ordered(op: CompareOp, left: &AttributeValue, right: &AttributeValue) -> bool {
    match op {
        CompareOp::Eq => left == right,
        CompareOp::Ne => left != right,
        _ => compare_scalars(left, right).is_some_and(|ordering| match op {
            CompareOp::Lt => ordering == Ordering::Less,
            CompareOp::Le => ordering != Ordering::Greater,
            CompareOp::Gt => ordering == Ordering::Greater,
            CompareOp::Ge => ordering != Ordering::Less,
            CompareOp::Eq | CompareOp::Ne => unreachable!("handled above"),
        }),
    }
}

impl Operand {
    fn resolve(&self, item: Option<&Item>) -> Option<AttributeValue> {
        let get = |path: &Path| item.and_then(|i| path.get(i));
        match self {
            Operand::Attribute(path) => get(path).cloned(),
            Operand::Value(value) => Some(value.clone()),
            Operand::Size(path) => get(path)
                .and_then(size_of)
                .map(|n| AttributeValue::N(crate::number::Number::from_i64(n as i64))),
        }
    }
}

impl Condition {
    /// Whether the condition holds on `item` (`None`: no item stored).
    pub fn holds(&self, item: Option<&Item>) -> bool {
        let get = |path: &Path| item.and_then(|i| path.get(i));
        match self {
            Condition::CompareOperands { left, op, right } => {
                match (left.resolve(item), right.resolve(item)) {
                    (Some(l), Some(r)) => ordered(*op, &l, &r),
                    _ => false,
                }
            }
            Condition::Between { value, low, high } => {
                match (value.resolve(item), low.resolve(item), high.resolve(item)) {
                    (Some(v), Some(l), Some(h)) => {
                        ordered(CompareOp::Ge, &v, &l) && ordered(CompareOp::Le, &v, &h)
                    }
                    _ => false,
                }
            }
            Condition::In { value, list } => value.resolve(item).is_some_and(|v| {
                list.iter()
                    .any(|candidate| candidate.resolve(item).as_ref() == Some(&v))
            }),
            Condition::Contains { attribute, operand } => {
                match (get(attribute), operand.resolve(item)) {
                    (Some(AttributeValue::S(s)), Some(AttributeValue::S(sub))) => {
                        s.contains(sub.as_str())
                    }
                    (Some(AttributeValue::Ss(set)), Some(AttributeValue::S(e))) => set.contains(&e),
                    (Some(AttributeValue::Ns(set)), Some(AttributeValue::N(e))) => set.contains(&e),
                    (Some(AttributeValue::Bs(set)), Some(AttributeValue::B(e))) => set.contains(&e),
                    (Some(AttributeValue::B(b)), Some(AttributeValue::B(sub))) => {
                        sub.is_empty() || b.windows(sub.len()).any(|w| w == sub.as_slice())
                    }
                    (Some(AttributeValue::L(list)), Some(e)) => list.contains(&e),
                    _ => false,
                }
            }
            Condition::AttributeType {
                attribute,
                type_name,
            } => get(attribute).is_some_and(|v| v.type_name() == type_name),
            Condition::And(a, b) => a.holds(item) && b.holds(item),
            Condition::Or(a, b) => a.holds(item) || b.holds(item),
            Condition::Not(a) => !a.holds(item),
            Condition::Exists(name) => get(name).is_some(),
            Condition::NotExists(name) => get(name).is_none(),
            Condition::Compare {
                attribute,
                op,
                value,
            } => get(attribute).is_some_and(|current| ordered(*op, current, value)),
            Condition::BeginsWith { attribute, prefix } => {
                match (get(attribute), prefix.resolve(item)) {
                    (Some(AttributeValue::S(s)), Some(AttributeValue::S(p))) => {
                        s.starts_with(p.as_str())
                    }
                    (Some(AttributeValue::B(b)), Some(AttributeValue::B(p))) => b.starts_with(&p),
                    _ => false,
                }
            }
        }
    }
}

/// The stored and wire form of a condition: a tag byte per node, paths
/// in their own form ([`Path::encode`]), strings and values
/// length-prefixed (u32, little endian; values in the item codec). Layout
/// in docs/wire-format.md.
impl Condition {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, s: &str| put_bytes(out, s.as_bytes());
        fn operand(out: &mut Vec<u8>, o: &Operand) {
            match o {
                Operand::Attribute(path) => {
                    out.push(1);
                    path.encode(out);
                }
                Operand::Value(v) => {
                    out.push(2);
                    put_value(out, v);
                }
                Operand::Size(path) => {
                    out.push(3);
                    path.encode(out);
                }
            }
        }
        let op_byte = CompareOp::to_byte;
        match self {
            Condition::Exists(path) => {
                out.push(1);
                path.encode(out);
            }
            Condition::NotExists(path) => {
                out.push(2);
                path.encode(out);
            }
            Condition::Compare {
                attribute,
                op,
                value: v,
            } => {
                out.push(3);
                attribute.encode(out);
                out.push(op_byte(*op));
                put_value(out, v);
            }
            Condition::BeginsWith { attribute, prefix } => {
                out.push(4);
                attribute.encode(out);
                operand(out, prefix);
            }
            Condition::CompareOperands { left, op, right } => {
                out.push(5);
                operand(out, left);
                out.push(op_byte(*op));
                operand(out, right);
            }
            Condition::Between {
                value: v,
                low,
                high,
            } => {
                out.push(6);
                for o in [v, low, high] {
                    operand(out, o);
                }
            }
            Condition::In { value: v, list } => {
                out.push(7);
                operand(out, v);
                out.extend_from_slice(&(list.len() as u16).to_le_bytes());
                for o in list {
                    operand(out, o);
                }
            }
            Condition::Contains {
                attribute,
                operand: o,
            } => {
                out.push(8);
                attribute.encode(out);
                operand(out, o);
            }
            Condition::AttributeType {
                attribute,
                type_name,
            } => {
                out.push(9);
                attribute.encode(out);
                string(out, type_name);
            }
            Condition::And(a, b) | Condition::Or(a, b) => {
                out.push(if matches!(self, Condition::And(..)) {
                    10
                } else {
                    11
                });
                a.encode(out);
                b.encode(out);
            }
            Condition::Not(a) => {
                out.push(12);
                a.encode(out);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a whole condition; anything malformed, too deep or with
    /// bytes left over is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Condition, String> {
        let mut reader = Reader { bytes, at: 0 };
        let condition = reader.condition(0)?;
        if reader.at != bytes.len() {
            return Err("trailing bytes after the condition".into());
        }
        Ok(condition)
    }
}

/// Writes `bytes` length-prefixed (u32, little endian): how the tagged
/// encodings of conditions, paths and update actions carry strings.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Writes a value in the item codec, length-prefixed.
pub(crate) fn put_value(out: &mut Vec<u8>, value: &AttributeValue) {
    put_bytes(out, &value.to_bytes());
}

/// Reads the tagged, length-prefixed encodings of conditions, paths, SET
/// expressions and update actions.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let slice = self
            .bytes
            .get(self.at..self.at.checked_add(n).ok_or("length overflow")?)
            .ok_or("encoding truncated")?;
        self.at += n;
        Ok(slice)
    }

    pub(crate) fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn len(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    pub(crate) fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a name is not UTF-8".into())
    }

    /// A path in [`Path::encode`]'s form.
    pub(crate) fn path(&mut self) -> Result<Path, String> {
        let name = self.string()?;
        let count = usize::from(self.byte()?);
        if count > crate::path::PATH_STEPS_MAX {
            return Err(format!(
                "a path takes at most {} steps",
                crate::path::PATH_STEPS_MAX
            ));
        }
        let mut path = Path::top(name);
        for _ in 0..count {
            let step = match self.byte()? {
                0 => crate::path::Step::Key(self.string()?),
                1 => {
                    let b = self.take(4)?;
                    crate::path::Step::Index(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                other => return Err(format!("unknown path step {other}")),
            };
            path.steps.push(step);
        }
        Ok(path)
    }

    pub(crate) fn value(&mut self) -> Result<AttributeValue, String> {
        let n = self.len()?;
        AttributeValue::from_bytes(self.take(n)?).map_err(|e| e.to_string())
    }

    fn op(&mut self) -> Result<CompareOp, String> {
        let byte = self.byte()?;
        CompareOp::from_byte(byte).ok_or_else(|| format!("unknown comparison {byte}"))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        Ok(match self.byte()? {
            1 => Operand::Attribute(self.path()?),
            2 => Operand::Value(self.value()?),
            3 => Operand::Size(self.path()?),
            other => return Err(format!("unknown operand kind {other}")),
        })
    }

    fn condition(&mut self, depth: usize) -> Result<Condition, String> {
        if depth > CONDITION_DEPTH_MAX {
            return Err(format!(
                "condition nested deeper than {CONDITION_DEPTH_MAX}"
            ));
        }
        Ok(match self.byte()? {
            1 => Condition::Exists(self.path()?),
            2 => Condition::NotExists(self.path()?),
            3 => Condition::Compare {
                attribute: self.path()?,
                op: self.op()?,
                value: self.value()?,
            },
            4 => Condition::BeginsWith {
                attribute: self.path()?,
                prefix: self.operand()?,
            },
            5 => Condition::CompareOperands {
                left: self.operand()?,
                op: self.op()?,
                right: self.operand()?,
            },
            6 => Condition::Between {
                value: self.operand()?,
                low: self.operand()?,
                high: self.operand()?,
            },
            7 => {
                let value = self.operand()?;
                let b = self.take(2)?;
                let count = usize::from(u16::from_le_bytes([b[0], b[1]]));
                if count == 0 || count > IN_OPERANDS_MAX {
                    return Err(format!("IN takes 1..={IN_OPERANDS_MAX} operands"));
                }
                let list = (0..count)
                    .map(|_| self.operand())
                    .collect::<Result<_, _>>()?;
                Condition::In { value, list }
            }
            8 => Condition::Contains {
                attribute: self.path()?,
                operand: self.operand()?,
            },
            9 => Condition::AttributeType {
                attribute: self.path()?,
                type_name: self.string()?,
            },
            10 => {
                let a = self.condition(depth + 1)?;
                Condition::And(Box::new(a), Box::new(self.condition(depth + 1)?))
            }
            11 => {
                let a = self.condition(depth + 1)?;
                Condition::Or(Box::new(a), Box::new(self.condition(depth + 1)?))
            }
            12 => Condition::Not(Box::new(self.condition(depth + 1)?)),
            other => return Err(format!("unknown condition kind {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Number;

    fn n(v: i64) -> AttributeValue {
        AttributeValue::N(Number::from_i64(v))
    }

    #[test]
    fn conditions_follow_dynamodb_semantics() {
        let item = Item::new()
            .with("count", n(5))
            .with("name", AttributeValue::S("alice".into()));
        let holds = |c: Condition| c.holds(Some(&item));
        assert!(holds(Condition::Exists("count".into())));
        assert!(!holds(Condition::NotExists("count".into())));
        assert!(Condition::NotExists("count".into()).holds(None));
        assert!(!Condition::Exists("count".into()).holds(None));
        let cmp = |op, value| Condition::Compare {
            attribute: "count".into(),
            op,
            value,
        };
        assert!(holds(cmp(CompareOp::Eq, n(5))));
        assert!(holds(cmp(CompareOp::Lt, n(6))));
        assert!(holds(cmp(CompareOp::Ge, n(5))));
        assert!(!holds(cmp(CompareOp::Gt, n(5))));
        // Different types: unequal, and never ordered.
        assert!(holds(cmp(CompareOp::Ne, AttributeValue::S("5".into()))));
        assert!(!holds(cmp(CompareOp::Lt, AttributeValue::S("9".into()))));
        let prefix = |p: &str| Condition::BeginsWith {
            attribute: "name".into(),
            prefix: Operand::Value(AttributeValue::S(p.into())),
        };
        assert!(holds(prefix("ali")));
        assert!(!holds(prefix("bob")));
        assert!(!holds(Condition::BeginsWith {
            attribute: "count".into(),
            prefix: Operand::Value(AttributeValue::S("5".into()))
        }));
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn attr(name: &str) -> Operand {
        Operand::Attribute(name.into())
    }

    fn val(v: AttributeValue) -> Operand {
        Operand::Value(v)
    }

    #[test]
    fn the_general_forms_follow_dynamodb_semantics() {
        let item = Item::new()
            .with("count", n(5))
            .with("limit", n(9))
            .with("name", s("alice"))
            .with("tags", AttributeValue::Ss(["red".to_owned()].into()))
            .with("list", AttributeValue::L(vec![n(1), s("x")]));
        let holds = |c: &Condition| c.holds(Some(&item));
        let lt = Condition::CompareOperands {
            left: attr("count"),
            op: CompareOp::Lt,
            right: attr("limit"),
        };
        assert!(holds(&lt));
        assert!(!holds(&Condition::Not(Box::new(lt.clone()))));
        let size = |op, k| Condition::CompareOperands {
            left: Operand::Size("name".into()),
            op,
            right: val(n(k)),
        };
        assert!(holds(&size(CompareOp::Eq, 5)));
        assert!(!holds(&size(CompareOp::Gt, 5)));
        let between = |lo, hi| Condition::Between {
            value: attr("count"),
            low: val(n(lo)),
            high: val(n(hi)),
        };
        assert!(holds(&between(5, 5)) && holds(&between(1, 9)));
        assert!(!holds(&between(6, 9)));
        let within = Condition::In {
            value: attr("name"),
            list: vec![val(s("bob")), val(s("alice"))],
        };
        assert!(holds(&within));
        let contains = |a: &str, o| Condition::Contains {
            attribute: a.into(),
            operand: val(o),
        };
        assert!(holds(&contains("name", s("lic"))));
        assert!(holds(&contains("tags", s("red"))));
        assert!(!holds(&contains("tags", s("blue"))));
        assert!(holds(&contains("list", s("x"))));
        assert!(!holds(&contains("count", n(5))), "numbers contain nothing");
        let typed = |t: &str| Condition::AttributeType {
            attribute: "tags".into(),
            type_name: t.into(),
        };
        assert!(holds(&typed("SS")) && !holds(&typed("S")));
        // A missing attribute makes a comparison false, and NOT of it true.
        let missing = Condition::CompareOperands {
            left: attr("nope"),
            op: CompareOp::Ne,
            right: val(n(1)),
        };
        assert!(!holds(&missing));
        assert!(holds(&Condition::Not(Box::new(missing.clone()))));
        let either = Condition::Or(Box::new(missing.clone()), Box::new(within.clone()));
        let both = Condition::And(Box::new(missing), Box::new(within));
        assert!(holds(&either) && !holds(&both));
        for c in [
            lt,
            size(CompareOp::Ge, 2),
            between(1, 2),
            either,
            both,
            typed("N"),
        ] {
            assert_eq!(Condition::from_bytes(&c.to_bytes()).unwrap(), c);
        }
    }

    #[test]
    fn conditions_read_nested_paths_and_survive_their_codec() {
        use crate::path::Step;
        let inner: std::collections::BTreeMap<String, AttributeValue> =
            [("zip".to_owned(), s("12345"))].into_iter().collect();
        let item = Item::new().with(
            "addr",
            AttributeValue::L(vec![s("first"), AttributeValue::M(inner)]),
        );
        let zip = Path::top("addr")
            .then(Step::Index(1))
            .then(Step::Key("zip".into()));
        let holds = |c: &Condition| c.holds(Some(&item));
        let cases = [
            (Condition::Exists(zip.clone()), true),
            (
                Condition::Exists(Path::top("addr").then(Step::Index(2))),
                false,
            ),
            (
                Condition::Compare {
                    attribute: zip.clone(),
                    op: CompareOp::Eq,
                    value: s("12345"),
                },
                true,
            ),
            (
                Condition::BeginsWith {
                    attribute: zip.clone(),
                    prefix: Operand::Value(s("123")),
                },
                true,
            ),
            (
                Condition::BeginsWith {
                    attribute: zip.clone(),
                    prefix: Operand::Attribute(Path::top("addr").then(Step::Index(0))),
                },
                false,
            ),
            (
                Condition::CompareOperands {
                    left: Operand::Size(Path::top("addr")),
                    op: CompareOp::Eq,
                    right: Operand::Value(n(2)),
                },
                true,
            ),
        ];
        for (condition, want) in cases {
            assert_eq!(holds(&condition), want, "{condition:?}");
            let back = Condition::from_bytes(&condition.to_bytes()).unwrap();
            assert_eq!(back, condition);
        }
    }

    #[test]
    fn malformed_or_deep_encodings_are_refused() {
        let c = Condition::Exists("a".into());
        let bytes = c.to_bytes();
        assert!(Condition::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Condition::from_bytes(&trailing).is_err());
        assert!(Condition::from_bytes(&[99]).is_err());
        let mut deep = c;
        for _ in 0..100 {
            deep = Condition::Not(Box::new(deep));
        }
        assert!(
            Condition::from_bytes(&deep.to_bytes())
                .unwrap_err()
                .contains("deeper")
        );
    }
}
