//! UpdateItem actions: set an attribute (to a value, or to an expression
//! of the item's attributes: `if_not_exists`, `list_append`, `+`, `-`),
//! remove it, add to it (DynamoDB's `ADD`: a number is incremented
//! exactly, a set gains elements; a missing attribute starts from the
//! operand), or delete elements from a set.
//!
//! As in DynamoDB, every expression on the right of a `SET` reads the item
//! as it was before the update.

use crate::condition::{Reader, put_value};
use crate::item::{AttributeValue, Item, ItemError};
use crate::number::Number;
use crate::path::Path;

/// One change UpdateItem makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateAction {
    Set(Path, AttributeValue),
    /// Remove what is at the path. The indexes of several removals from
    /// one list all count in the list as it was.
    Remove(Path),
    /// Add a number to a number, or elements to a set of the same type.
    Add(Path, AttributeValue),
    /// Set an attribute to an expression of the item's attributes.
    SetTo(Path, SetValue),
    /// Remove elements from a set; an emptied set is removed.
    Delete(Path, AttributeValue),
}

/// The right side of a `SET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetValue {
    Value(AttributeValue),
    /// The attribute's value; it must exist.
    Attribute(Path),
    /// The attribute's value if it exists, else the fallback.
    IfNotExists(Path, Box<SetValue>),
    /// Two lists, concatenated.
    ListAppend(Box<SetValue>, Box<SetValue>),
    Plus(Box<SetValue>, Box<SetValue>),
    Minus(Box<SetValue>, Box<SetValue>),
}

/// Deepest nesting of a decoded `SetValue`.
pub const SET_VALUE_DEPTH_MAX: usize = 32;

impl UpdateAction {
    /// Where the action writes.
    pub fn path(&self) -> &Path {
        match self {
            UpdateAction::Set(path, _)
            | UpdateAction::Remove(path)
            | UpdateAction::Add(path, _)
            | UpdateAction::SetTo(path, _)
            | UpdateAction::Delete(path, _) => path,
        }
    }

    /// Stored and wire form: a tag (1 Set, 2 Remove, 3 Add, 4 SetTo,
    /// 5 Delete), the path ([`Path::encode`]), then the value (`len u32 ‖
    /// item codec`) or the SET expression ([`SetValue::encode`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag = match self {
            UpdateAction::Set(..) => 1,
            UpdateAction::Remove(_) => 2,
            UpdateAction::Add(..) => 3,
            UpdateAction::SetTo(..) => 4,
            UpdateAction::Delete(..) => 5,
        };
        out.push(tag);
        self.path().encode(out);
        match self {
            UpdateAction::Set(_, v) | UpdateAction::Add(_, v) | UpdateAction::Delete(_, v) => {
                put_value(out, v);
            }
            UpdateAction::SetTo(_, expression) => expression.encode(out),
            UpdateAction::Remove(_) => {}
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<UpdateAction, String> {
        let mut reader = Reader { bytes, at: 0 };
        let tag = reader.byte()?;
        let path = reader.path()?;
        let action = match tag {
            1 => UpdateAction::Set(path, reader.value()?),
            2 => UpdateAction::Remove(path),
            3 => UpdateAction::Add(path, reader.value()?),
            4 => UpdateAction::SetTo(path, decode_set_value(&mut reader, 0)?),
            5 => UpdateAction::Delete(path, reader.value()?),
            other => return Err(format!("unknown update action {other}")),
        };
        if reader.at != bytes.len() {
            return Err("trailing bytes after an update action".into());
        }
        Ok(action)
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ItemError {
    ItemError::InvalidUpdate {
        name: path.to_string(),
        reason: reason.into(),
    }
}

/// Writes `value` at `path`, whose containers must exist.
fn set_at(item: &mut Item, path: &Path, value: AttributeValue) -> Result<(), ItemError> {
    path.set(item, value)
        .map_err(|e| invalid(path, e.to_string()))
}

impl SetValue {
    /// Evaluates against `before`, the item as it was before the update;
    /// `name` is the path being set (for errors).
    pub fn evaluate(&self, name: &Path, before: &Item) -> Result<AttributeValue, ItemError> {
        Ok(match self {
            SetValue::Value(value) => value.clone(),
            SetValue::Attribute(attribute) => attribute.get(before).cloned().ok_or_else(|| {
                invalid(
                    name,
                    format!(
                        "The provided expression refers to an attribute that does not exist in the item: {attribute}"
                    ),
                )
            })?,
            SetValue::IfNotExists(attribute, fallback) => match attribute.get(before) {
                Some(value) => value.clone(),
                None => fallback.evaluate(name, before)?,
            },
            SetValue::ListAppend(a, b) => {
                match (a.evaluate(name, before)?, b.evaluate(name, before)?) {
                    (AttributeValue::L(mut a), AttributeValue::L(b)) => {
                        a.extend(b);
                        AttributeValue::L(a)
                    }
                    (a, b) => {
                        return Err(invalid(
                            name,
                            format!(
                                "list_append takes two lists, not {} and {}",
                                a.type_name(),
                                b.type_name()
                            ),
                        ));
                    }
                }
            }
            SetValue::Plus(a, b) | SetValue::Minus(a, b) => {
                match (a.evaluate(name, before)?, b.evaluate(name, before)?) {
                    (AttributeValue::N(a), AttributeValue::N(b)) => {
                        let b = if matches!(self, SetValue::Minus(..)) {
                            negate(&b)
                        } else {
                            b
                        };
                        AttributeValue::N(a.checked_add(&b).map_err(|e| invalid(name, e.to_string()))?)
                    }
                    (a, b) => {
                        return Err(invalid(
                            name,
                            format!(
                                "+ and - take two numbers, not {} and {}",
                                a.type_name(),
                                b.type_name()
                            ),
                        ));
                    }
                }
            }
        })
    }

    /// Stored and wire form: a tag byte, then the fields (names and values
    /// length-prefixed, u32 little endian; values in the item codec).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SetValue::Value(value) => {
                out.push(1);
                put_value(out, value);
            }
            SetValue::Attribute(path) => {
                out.push(2);
                path.encode(out);
            }
            SetValue::IfNotExists(path, fallback) => {
                out.push(3);
                path.encode(out);
                fallback.encode(out);
            }
            SetValue::ListAppend(a, b) | SetValue::Plus(a, b) | SetValue::Minus(a, b) => {
                out.push(match self {
                    SetValue::ListAppend(..) => 4,
                    SetValue::Plus(..) => 5,
                    _ => 6,
                });
                a.encode(out);
                b.encode(out);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SetValue, String> {
        let mut reader = Reader { bytes, at: 0 };
        let value = decode_set_value(&mut reader, 0)?;
        if reader.at != bytes.len() {
            return Err("trailing bytes after a SET expression".into());
        }
        Ok(value)
    }
}

fn decode_set_value(reader: &mut Reader<'_>, depth: usize) -> Result<SetValue, String> {
    if depth > SET_VALUE_DEPTH_MAX {
        return Err(format!(
            "SET expression nested deeper than {SET_VALUE_DEPTH_MAX}"
        ));
    }
    Ok(match reader.byte()? {
        1 => SetValue::Value(reader.value()?),
        2 => SetValue::Attribute(reader.path()?),
        3 => {
            let attribute = reader.path()?;
            SetValue::IfNotExists(attribute, Box::new(decode_set_value(reader, depth + 1)?))
        }
        tag @ 4..=6 => {
            let a = Box::new(decode_set_value(reader, depth + 1)?);
            let b = Box::new(decode_set_value(reader, depth + 1)?);
            match tag {
                4 => SetValue::ListAppend(a, b),
                5 => SetValue::Plus(a, b),
                _ => SetValue::Minus(a, b),
            }
        }
        other => return Err(format!("unknown SET expression kind {other}")),
    })
}

/// `-n`.
pub fn negate(n: &Number) -> Number {
    Number::from_parts(!n.is_negative(), n.significand(), i32::from(n.exponent())).unwrap_or(*n)
}

/// Applies `actions` to `item` in order; the right sides of `SetTo` read
/// the item as it was before any of them. Removals come last, deepest
/// and highest index first, so that removing `a[1]` and `a[3]` removes
/// the elements that were at 1 and 3.
pub fn apply(item: &mut Item, actions: &[UpdateAction]) -> Result<(), ItemError> {
    let before = actions
        .iter()
        .any(|a| matches!(a, UpdateAction::SetTo(..)))
        .then(|| item.clone());
    let mut removals: Vec<&Path> = Vec::new();
    for action in actions {
        match action {
            UpdateAction::Set(path, value) => set_at(item, path, value.clone())?,
            UpdateAction::SetTo(path, value) => {
                let before = before.as_ref().expect("cloned when a SetTo is present");
                let value = value.evaluate(path, before)?;
                set_at(item, path, value)?;
            }
            UpdateAction::Delete(path, elements) => {
                let remaining = match (path.get(item), elements) {
                    (None, _) => continue,
                    (Some(AttributeValue::Ss(set)), AttributeValue::Ss(gone)) => {
                        AttributeValue::Ss(set.difference(gone).cloned().collect())
                    }
                    (Some(AttributeValue::Ns(set)), AttributeValue::Ns(gone)) => {
                        AttributeValue::Ns(set.difference(gone).copied().collect())
                    }
                    (Some(AttributeValue::Bs(set)), AttributeValue::Bs(gone)) => {
                        AttributeValue::Bs(set.difference(gone).cloned().collect())
                    }
                    (Some(found), _) => {
                        return Err(invalid(
                            path,
                            format!(
                                "DELETE takes a set of the attribute's type; it is {} and the operand {}",
                                found.type_name(),
                                elements.type_name()
                            ),
                        ));
                    }
                };
                let empty = match &remaining {
                    AttributeValue::Ss(s) => s.is_empty(),
                    AttributeValue::Ns(s) => s.is_empty(),
                    AttributeValue::Bs(s) => s.is_empty(),
                    _ => false,
                };
                if empty {
                    path.remove(item)
                        .map_err(|e| invalid(path, e.to_string()))?;
                } else {
                    set_at(item, path, remaining)?;
                }
            }
            UpdateAction::Remove(path) => removals.push(path),
            UpdateAction::Add(path, operand) => {
                let sum = add(path, path.get(item), operand)?;
                set_at(item, path, sum)?;
            }
        }
    }
    removals.sort_unstable_by(|a, b| b.cmp(a));
    for path in removals {
        path.remove(item)
            .map_err(|e| invalid(path, e.to_string()))?;
    }
    Ok(())
}

fn add(
    path: &Path,
    current: Option<&AttributeValue>,
    operand: &AttributeValue,
) -> Result<AttributeValue, ItemError> {
    let mismatch = |found: &AttributeValue| ItemError::InvalidAdd {
        name: path.to_string(),
        reason: format!(
            "cannot ADD {} to {}",
            operand.type_name(),
            found.type_name()
        ),
    };
    Ok(match (current, operand) {
        (
            None,
            AttributeValue::N(_)
            | AttributeValue::Ss(_)
            | AttributeValue::Ns(_)
            | AttributeValue::Bs(_),
        ) => operand.clone(),
        (Some(AttributeValue::N(a)), AttributeValue::N(b)) => {
            AttributeValue::N(a.checked_add(b).map_err(|e| ItemError::InvalidAdd {
                name: path.to_string(),
                reason: e.to_string(),
            })?)
        }
        (Some(AttributeValue::Ss(a)), AttributeValue::Ss(b)) => {
            AttributeValue::Ss(a.union(b).cloned().collect())
        }
        (Some(AttributeValue::Ns(a)), AttributeValue::Ns(b)) => {
            AttributeValue::Ns(a.union(b).copied().collect())
        }
        (Some(AttributeValue::Bs(a)), AttributeValue::Bs(b)) => {
            AttributeValue::Bs(a.union(b).cloned().collect())
        }
        (Some(found), _) => return Err(mismatch(found)),
        (None, _) => {
            return Err(ItemError::InvalidAdd {
                name: path.to_string(),
                reason: format!("ADD takes a number or a set, not {}", operand.type_name()),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn n(text: &str) -> AttributeValue {
        AttributeValue::N(text.parse().unwrap())
    }

    #[test]
    fn add_increments_numbers_and_extends_sets() {
        let mut item = Item::new().with("count", n("1.5"));
        apply(
            &mut item,
            &[
                UpdateAction::Add("count".into(), n("2.25")),
                UpdateAction::Add("fresh".into(), n("-3")),
            ],
        )
        .unwrap();
        assert_eq!(item.get("count"), Some(&n("3.75")));
        assert_eq!(item.get("fresh"), Some(&n("-3")));
        let tags = |t: &[&str]| AttributeValue::Ss(t.iter().map(|s| (*s).to_owned()).collect());
        apply(
            &mut item,
            &[
                UpdateAction::Add("tags".into(), tags(&["a"])),
                UpdateAction::Add("tags".into(), tags(&["b", "a"])),
            ],
        )
        .unwrap();
        assert_eq!(item.get("tags"), Some(&tags(&["a", "b"])));
        apply(
            &mut item,
            &[
                UpdateAction::Remove("tags".into()),
                UpdateAction::Set("s".into(), AttributeValue::Null),
            ],
        )
        .unwrap();
        assert_eq!(item.get("tags"), None);
        assert_eq!(item.get("s"), Some(&AttributeValue::Null));
    }

    #[test]
    fn add_refuses_wrong_types_and_overflow() {
        let mut item = Item::new()
            .with("name", AttributeValue::S("x".into()))
            .with("big", n(&"9".repeat(38)));
        assert!(matches!(
            apply(&mut item, &[UpdateAction::Add("name".into(), n("1"))]),
            Err(ItemError::InvalidAdd { .. })
        ));
        assert!(matches!(
            apply(
                &mut item,
                &[UpdateAction::Add(
                    "new".into(),
                    AttributeValue::S("x".into())
                )]
            ),
            Err(ItemError::InvalidAdd { .. })
        ));
        assert!(matches!(
            apply(&mut item, &[UpdateAction::Add("big".into(), n("0.1"))]),
            Err(ItemError::InvalidAdd { .. })
        ));
    }

    fn l(values: &[AttributeValue]) -> AttributeValue {
        AttributeValue::L(values.to_vec())
    }

    #[test]
    fn set_expressions_read_the_item_before_the_update() {
        let mut item = Item::new()
            .with("count", n("2"))
            .with("log", l(&[n("1")]))
            .with(
                "tags",
                AttributeValue::Ss(["a".to_owned(), "b".to_owned()].into()),
            );
        let value = |v: AttributeValue| Box::new(SetValue::Value(v));
        let attr = |a: &str| Box::new(SetValue::Attribute(a.into()));
        apply(
            &mut item,
            &[
                // Both read count = 2, not the 12 the first one writes.
                UpdateAction::SetTo(
                    "count".into(),
                    SetValue::Plus(attr("count"), value(n("10"))),
                ),
                UpdateAction::SetTo(
                    "copy".into(),
                    SetValue::Minus(attr("count"), value(n("0.5"))),
                ),
                UpdateAction::SetTo(
                    "hits".into(),
                    SetValue::Plus(
                        Box::new(SetValue::IfNotExists("hits".into(), value(n("0")))),
                        value(n("1")),
                    ),
                ),
                UpdateAction::SetTo(
                    "log".into(),
                    SetValue::ListAppend(attr("log"), value(l(&[n("2")]))),
                ),
                UpdateAction::Delete(
                    "tags".into(),
                    AttributeValue::Ss(["a".to_owned(), "z".to_owned()].into()),
                ),
                UpdateAction::Delete("absent".into(), AttributeValue::Ss(["a".to_owned()].into())),
            ],
        )
        .unwrap();
        assert_eq!(item.get("count"), Some(&n("12")));
        assert_eq!(item.get("copy"), Some(&n("1.5")));
        assert_eq!(item.get("hits"), Some(&n("1")));
        assert_eq!(item.get("log"), Some(&l(&[n("1"), n("2")])));
        assert_eq!(
            item.get("tags"),
            Some(&AttributeValue::Ss(["b".to_owned()].into()))
        );
        // An emptied set is removed.
        apply(
            &mut item,
            &[UpdateAction::Delete(
                "tags".into(),
                AttributeValue::Ss(["b".to_owned()].into()),
            )],
        )
        .unwrap();
        assert_eq!(item.get("tags"), None);
        // Errors: a missing operand, wrong types.
        for bad in [
            SetValue::Attribute("nope".into()),
            SetValue::Plus(attr("log"), value(n("1"))),
            SetValue::ListAppend(attr("count"), attr("log")),
        ] {
            assert!(matches!(
                apply(&mut item, &[UpdateAction::SetTo("x".into(), bad)]),
                Err(ItemError::InvalidUpdate { .. })
            ));
        }
        assert!(matches!(
            apply(
                &mut item,
                &[UpdateAction::Delete(
                    "count".into(),
                    AttributeValue::Ns([Number::from_i64(1)].into())
                )]
            ),
            Err(ItemError::InvalidUpdate { .. })
        ));
        let nested = SetValue::IfNotExists(
            "a".into(),
            Box::new(SetValue::ListAppend(attr("b"), value(l(&[])))),
        );
        assert_eq!(SetValue::from_bytes(&nested.to_bytes()).unwrap(), nested);
        let mut deep = SetValue::Value(n("1"));
        for _ in 0..40 {
            deep = SetValue::Plus(Box::new(deep), value(n("1")));
        }
        assert!(SetValue::from_bytes(&deep.to_bytes()).is_err());
        assert!(SetValue::from_bytes(&[9]).is_err());
    }

    #[test]
    fn nested_paths_set_remove_and_add_in_place() {
        use crate::path::Step;
        let list = |values: &[&str]| {
            AttributeValue::L(
                values
                    .iter()
                    .map(|v| AttributeValue::S((*v).into()))
                    .collect(),
            )
        };
        let mut item = Item::new()
            .with("doc", AttributeValue::M(BTreeMap::new()))
            .with("l", list(&["a", "b", "c", "d"]));
        let doc = |key: &str| Path::top("doc").then(Step::Key(key.into()));
        let at = |i: u32| Path::top("l").then(Step::Index(i));
        apply(
            &mut item,
            &[
                UpdateAction::Set(doc("x"), n("1")),
                UpdateAction::Add(doc("n"), n("5")),
                UpdateAction::Remove(at(1)),
                UpdateAction::Remove(at(3)),
                UpdateAction::SetTo(at(9), SetValue::Attribute(at(0))),
            ],
        )
        .unwrap();
        assert_eq!(doc("x").get(&item), Some(&n("1")));
        assert_eq!(doc("n").get(&item), Some(&n("5")));
        // [1] and [3] of the list as it was; the append landed at the end.
        assert_eq!(item.get("l"), Some(&list(&["a", "c", "a"])));
        // A missing container is an error, and nothing is applied.
        let before = item.clone();
        let missing = Path::top("nope").then(Step::Key("x".into()));
        assert!(matches!(
            apply(&mut item, &[UpdateAction::Set(missing, n("1"))]),
            Err(ItemError::InvalidUpdate { .. })
        ));
        assert_eq!(item, before);
        let action = UpdateAction::SetTo(
            doc("y"),
            SetValue::IfNotExists(at(0), Box::new(SetValue::Value(n("2")))),
        );
        assert_eq!(
            UpdateAction::from_bytes(&action.to_bytes()).unwrap(),
            action
        );
        assert!(UpdateAction::from_bytes(&action.to_bytes()[..4]).is_err());
    }
}
