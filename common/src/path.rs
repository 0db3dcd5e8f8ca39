//! Document paths: a top-level attribute, then map keys and list indexes
//! (`a.b[2].c` in DynamoDB's expressions). Conditions, updates and
//! projections name attributes by path.
//!
//! Reads follow DynamoDB: a step into the wrong type, a missing key or an
//! index past a list's end finds nothing. Writes need every step but the
//! last to exist with the right type; setting an index past a list's end
//! appends, and removing a missing key or index changes nothing.

use std::collections::BTreeMap;
use std::fmt;

use crate::condition::put_bytes;
use crate::item::{AttributeValue, Item};

/// One step below the top-level attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// A map's key (`.name`).
    Key(String),
    /// A list's element (`[index]`).
    Index(u32),
}

/// A top-level attribute name and the steps below it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path {
    pub name: String,
    pub steps: Vec<Step>,
}

/// Most steps a path may take below its attribute (DynamoDB's nesting
/// limit is 32 levels in all).
pub const PATH_STEPS_MAX: usize = 31;

/// Why a path cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("The document path provided in the update expression is invalid for update: {path}")]
pub struct InvalidPath {
    pub path: String,
}

impl From<&str> for Path {
    fn from(name: &str) -> Path {
        Path::top(name)
    }
}

impl From<String> for Path {
    fn from(name: String) -> Path {
        Path::top(name)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for step in &self.steps {
            match step {
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn step_into<'a>(value: &'a AttributeValue, step: &Step) -> Option<&'a AttributeValue> {
    match (value, step) {
        (AttributeValue::M(map), Step::Key(key)) => map.get(key),
        (AttributeValue::L(list), Step::Index(index)) => list.get(*index as usize),
        _ => None,
    }
}

fn step_into_mut<'a>(value: &'a mut AttributeValue, step: &Step) -> Option<&'a mut AttributeValue> {
    match (value, step) {
        (AttributeValue::M(map), Step::Key(key)) => map.get_mut(key),
        (AttributeValue::L(list), Step::Index(index)) => list.get_mut(*index as usize),
        _ => None,
    }
}

impl Path {
    pub fn top(name: impl Into<String>) -> Path {
        Path {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    /// A top-level attribute, with no steps below it.
    pub fn is_top(&self) -> bool {
        self.steps.is_empty()
    }

    /// The path one step further.
    pub fn then(mut self, step: Step) -> Path {
        self.steps.push(step);
        self
    }

    /// Whether one path is a prefix of the other (or they are equal): two
    /// such paths in one update or projection overlap.
    pub fn overlaps(&self, other: &Path) -> bool {
        self.name == other.name && self.steps.iter().zip(&other.steps).all(|(a, b)| a == b)
    }

    /// The value at this path, if there is one.
    pub fn get<'a>(&self, item: &'a Item) -> Option<&'a AttributeValue> {
        let mut value = item.get(&self.name)?;
        for step in &self.steps {
            value = step_into(value, step)?;
        }
        Some(value)
    }

    fn invalid(&self) -> InvalidPath {
        InvalidPath {
            path: self.to_string(),
        }
    }

    /// The container the last step goes into, which must exist.
    fn parent_mut<'a>(&self, item: &'a mut Item) -> Result<&'a mut AttributeValue, InvalidPath> {
        let (_, above) = self.steps.split_last().ok_or_else(|| self.invalid())?;
        let mut value = item.get_mut(&self.name).ok_or_else(|| self.invalid())?;
        for step in above {
            value = step_into_mut(value, step).ok_or_else(|| self.invalid())?;
        }
        Ok(value)
    }

    /// Stores `value` at this path. An index past the end of a list
    /// appends to it.
    pub fn set(&self, item: &mut Item, value: AttributeValue) -> Result<(), InvalidPath> {
        let Some(last) = self.steps.last() else {
            item.insert(self.name.clone(), value);
            return Ok(());
        };
        match (self.parent_mut(item)?, last) {
            (AttributeValue::M(map), Step::Key(key)) => {
                map.insert(key.clone(), value);
            }
            (AttributeValue::L(list), Step::Index(index)) => match list.get_mut(*index as usize) {
                Some(slot) => *slot = value,
                None => list.push(value),
            },
            _ => return Err(self.invalid()),
        }
        Ok(())
    }

    /// Removes what is at this path and returns it; a missing key or
    /// index is not an error, a missing or mistyped container is.
    pub fn remove(&self, item: &mut Item) -> Result<Option<AttributeValue>, InvalidPath> {
        let Some(last) = self.steps.last() else {
            return Ok(item.remove(&self.name));
        };
        Ok(match (self.parent_mut(item)?, last) {
            (AttributeValue::M(map), Step::Key(key)) => map.remove(key),
            (AttributeValue::L(list), Step::Index(index)) => {
                let index = *index as usize;
                (index < list.len()).then(|| list.remove(index))
            }
            _ => return Err(self.invalid()),
        })
    }

    /// Stored and wire form: the name (`len u32 ‖ UTF-8`), a step count
    /// (u8), then each step: `0 ‖ len u32 ‖ key` or `1 ‖ index u32`, little
    /// endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, s: &str| put_bytes(out, s.as_bytes());
        string(out, &self.name);
        out.push(self.steps.len() as u8);
        for step in &self.steps {
            match step {
                Step::Key(key) => {
                    out.push(0);
                    string(out, key);
                }
                Step::Index(index) => {
                    out.push(1);
                    out.extend_from_slice(&index.to_le_bytes());
                }
            }
        }
    }
}

/// A projection of `item` onto `paths`: what each path finds, at the same
/// place. Elements picked from a list keep their order and close up, as in
/// DynamoDB (`a[1], a[3]` gives a two-element `a`).
pub fn project(item: &Item, paths: &[Path]) -> Item {
    /// The projection being built: lists as their picked indexes.
    enum Node {
        Value(AttributeValue),
        Map(BTreeMap<String, Node>),
        List(BTreeMap<u32, Node>),
    }
    fn place(node: &mut Node, steps: &[Step], value: &AttributeValue) {
        let Some((step, rest)) = steps.split_first() else {
            *node = Node::Value(value.clone());
            return;
        };
        let child = match (node, step) {
            (Node::Map(map), Step::Key(key)) => map
                .entry(key.clone())
                .or_insert_with(|| Node::Map(BTreeMap::new())),
            (Node::List(list), Step::Index(index)) => list
                .entry(*index)
                .or_insert_with(|| Node::Map(BTreeMap::new())),
            // The first path through here decided the container's type;
            // the value at this path exists, so it is the same type.
            _ => return,
        };
        if let (Node::Map(map), Some(next)) = (&mut *child, rest.first())
            && map.is_empty()
            && matches!(next, Step::Index(_))
        {
            *child = Node::List(BTreeMap::new());
        }
        place(child, rest, value);
    }
    fn finish(node: Node) -> AttributeValue {
        match node {
            Node::Value(value) => value,
            Node::Map(map) => {
                AttributeValue::M(map.into_iter().map(|(k, n)| (k, finish(n))).collect())
            }
            Node::List(list) => AttributeValue::L(list.into_values().map(finish).collect()),
        }
    }
    let mut tops: BTreeMap<String, Node> = BTreeMap::new();
    for path in paths {
        let Some(value) = path.get(item) else {
            continue;
        };
        let root = tops
            .entry(path.name.clone())
            .or_insert_with(|| match path.steps.first() {
                Some(Step::Index(_)) => Node::List(BTreeMap::new()),
                _ => Node::Map(BTreeMap::new()),
            });
        place(root, &path.steps, value);
    }
    tops.into_iter()
        .map(|(name, node)| (name, finish(node)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> AttributeValue {
        AttributeValue::S(text.into())
    }

    fn doc() -> Item {
        let inner: BTreeMap<String, AttributeValue> = [
            ("c".to_owned(), s("deep")),
            ("d".to_owned(), AttributeValue::L(vec![s("x"), s("y")])),
        ]
        .into_iter()
        .collect();
        Item::new()
            .with("top", s("t"))
            .with(
                "m",
                AttributeValue::M(
                    [("b".to_owned(), AttributeValue::M(inner))]
                        .into_iter()
                        .collect(),
                ),
            )
            .with(
                "l",
                AttributeValue::L(vec![s("zero"), s("one"), s("two"), s("three")]),
            )
    }

    fn path(name: &str, steps: &[Step]) -> Path {
        Path {
            name: name.into(),
            steps: steps.to_vec(),
        }
    }

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    #[test]
    fn reads_follow_maps_and_lists_and_find_nothing_off_the_document() {
        let item = doc();
        assert_eq!(
            path("m", &[key("b"), key("c")]).get(&item),
            Some(&s("deep"))
        );
        assert_eq!(
            path("m", &[key("b"), key("d"), Step::Index(1)]).get(&item),
            Some(&s("y"))
        );
        assert_eq!(path("l", &[Step::Index(3)]).get(&item), Some(&s("three")));
        for missing in [
            path("l", &[Step::Index(4)]),
            path("l", &[key("x")]),
            path("m", &[Step::Index(0)]),
            path("top", &[key("a")]),
            path("absent", &[]),
        ] {
            assert_eq!(missing.get(&item), None, "{missing}");
        }
        assert_eq!(
            path("m", &[key("b"), key("d"), Step::Index(1)]).to_string(),
            "m.b.d[1]"
        );
    }

    #[test]
    fn writes_need_their_container_and_append_past_a_lists_end() {
        let mut item = doc();
        path("m", &[key("b"), key("new")])
            .set(&mut item, s("n"))
            .unwrap();
        assert_eq!(path("m", &[key("b"), key("new")]).get(&item), Some(&s("n")));
        path("l", &[Step::Index(1)])
            .set(&mut item, s("uno"))
            .unwrap();
        path("l", &[Step::Index(99)])
            .set(&mut item, s("four"))
            .unwrap();
        assert_eq!(path("l", &[Step::Index(1)]).get(&item), Some(&s("uno")));
        assert_eq!(path("l", &[Step::Index(4)]).get(&item), Some(&s("four")));
        for invalid in [
            path("absent", &[key("a")]),
            path("m", &[key("nothing"), key("a")]),
            path("l", &[key("a")]),
            path("top", &[Step::Index(0)]),
        ] {
            let before = item.clone();
            assert!(invalid.set(&mut item, s("v")).is_err(), "{invalid}");
            assert!(invalid.remove(&mut item).is_err(), "{invalid}");
            assert_eq!(item, before, "a refused write changes nothing");
        }
        assert_eq!(
            path("l", &[Step::Index(0)]).remove(&mut item).unwrap(),
            Some(s("zero"))
        );
        assert_eq!(path("l", &[Step::Index(0)]).get(&item), Some(&s("uno")));
        assert_eq!(
            path("l", &[Step::Index(50)]).remove(&mut item).unwrap(),
            None
        );
        assert_eq!(
            path("m", &[key("b"), key("gone")])
                .remove(&mut item)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_projection_keeps_each_path_in_place_and_closes_up_lists() {
        let item = doc();
        let projected = project(
            &item,
            &[
                path("l", &[Step::Index(3)]),
                path("l", &[Step::Index(1)]),
                path("m", &[key("b"), key("d"), Step::Index(0)]),
                path("top", &[]),
                path("missing", &[key("x")]),
            ],
        );
        let want_m: BTreeMap<String, AttributeValue> = [(
            "b".to_owned(),
            AttributeValue::M(
                [("d".to_owned(), AttributeValue::L(vec![s("x")]))]
                    .into_iter()
                    .collect(),
            ),
        )]
        .into_iter()
        .collect();
        let want = Item::new()
            .with("l", AttributeValue::L(vec![s("one"), s("three")]))
            .with("m", AttributeValue::M(want_m))
            .with("top", s("t"));
        assert_eq!(projected, want);
    }

    #[test]
    fn overlapping_paths_share_a_prefix() {
        assert!(path("a", &[]).overlaps(&path("a", &[key("b")])));
        assert!(path("a", &[key("b")]).overlaps(&path("a", &[key("b")])));
        assert!(!path("a", &[key("b")]).overlaps(&path("a", &[key("c")])));
        assert!(!path("a", &[Step::Index(0)]).overlaps(&path("a", &[Step::Index(1)])));
        assert!(!path("a", &[]).overlaps(&path("b", &[])));
    }
}
