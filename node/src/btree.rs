//! A copy-on-write B+tree over archived pages — the IO-free core.
//!
//! A tree is a root [`Child`]: either a clean page on disk (read in place from
//! the page cache) or a dirty node owned in memory. Changing a clean node
//! first copies it into an owned node ("makes it dirty") and records its old
//! page as freed; the page itself is never overwritten. A checkpoint writes
//! dirty nodes bottom-up to fresh extents ([`Tree::flush_dirty`]), turning
//! them clean again.
//!
//! Nothing here does IO. Operations take a [`PageSource`]; when a needed page
//! is not cached they stop with [`TreeError::Miss`] *before changing
//! anything*, and the caller loads the page and retries. Mutations are
//! therefore preceded by [`Tree::probe`], which faults in the path.

use std::ops::Bound;
use std::rc::Rc;

use crate::page::{ArchivedNodePage, NodePage, PageAddr, PageBytes, PageError};

/// Where a tree operation looks up clean pages.
pub trait PageSource {
    /// The page at `addr` if it is resident.
    fn page(&self, addr: PageAddr) -> Option<Rc<PageBytes>>;
}

impl PageSource for crate::page::PageCache {
    fn page(&self, addr: PageAddr) -> Option<Rc<PageBytes>> {
        self.get(addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("page {0:?} is not resident")]
    Miss(PageAddr),
    #[error(transparent)]
    Corrupt(#[from] PageError),
}

/// A node owned in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Leaf {
        keys: Vec<Vec<u8>>,
        values: Vec<Vec<u8>>,
    },
    Branch {
        keys: Vec<Vec<u8>>,
        children: Vec<Child>,
    },
}

/// A reference to a child: on disk, or owned and dirty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Child {
    Clean(PageAddr),
    Dirty(Box<Node>),
}

/// Size bookkeeping used to decide splits: an upper estimate of the archive.
const NODE_OVERHEAD_BYTES: usize = 64;
const ENTRY_OVERHEAD_BYTES: usize = 24;

impl Node {
    fn size_bytes(&self) -> usize {
        match self {
            Node::Leaf { keys, values } => {
                NODE_OVERHEAD_BYTES
                    + keys
                        .iter()
                        .zip(values)
                        .map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD_BYTES)
                        .sum::<usize>()
            }
            Node::Branch { keys, children } => {
                NODE_OVERHEAD_BYTES
                    + keys
                        .iter()
                        .map(|k| k.len() + ENTRY_OVERHEAD_BYTES)
                        .sum::<usize>()
                    + children.len() * 8
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Node::Leaf { keys, .. } => keys.is_empty(),
            Node::Branch { children, .. } => children.is_empty(),
        }
    }

    fn from_archived(archived: &ArchivedNodePage) -> Node {
        let bytes = |v: &rkyv::vec::ArchivedVec<rkyv::vec::ArchivedVec<u8>>| {
            v.iter().map(|b| b.as_slice().to_vec()).collect::<Vec<_>>()
        };
        match archived {
            ArchivedNodePage::Leaf { keys, values } => Node::Leaf {
                keys: bytes(keys),
                values: bytes(values),
            },
            ArchivedNodePage::Branch { keys, children } => Node::Branch {
                keys: bytes(keys),
                children: children
                    .iter()
                    .map(|c| Child::Clean(PageAddr(c.to_native())))
                    .collect(),
            },
        }
    }
}

/// A read-only view of a node, owned or archived.
#[derive(Clone, Copy)]
enum View<'a> {
    Owned(&'a Node),
    Archived(&'a ArchivedNodePage),
}

enum ChildView<'a> {
    Dirty(&'a Node),
    Clean(PageAddr),
}

impl<'a> View<'a> {
    fn key_count(self) -> usize {
        match self {
            View::Owned(Node::Leaf { keys, .. } | Node::Branch { keys, .. }) => keys.len(),
            View::Archived(
                ArchivedNodePage::Leaf { keys, .. } | ArchivedNodePage::Branch { keys, .. },
            ) => keys.len(),
        }
    }

    fn is_leaf(self) -> bool {
        matches!(
            self,
            View::Owned(Node::Leaf { .. }) | View::Archived(ArchivedNodePage::Leaf { .. })
        )
    }

    fn key(self, index: usize) -> &'a [u8] {
        match self {
            View::Owned(Node::Leaf { keys, .. } | Node::Branch { keys, .. }) => &keys[index],
            View::Archived(
                ArchivedNodePage::Leaf { keys, .. } | ArchivedNodePage::Branch { keys, .. },
            ) => keys[index].as_slice(),
        }
    }

    fn value(self, index: usize) -> &'a [u8] {
        match self {
            View::Owned(Node::Leaf { values, .. }) => &values[index],
            View::Archived(ArchivedNodePage::Leaf { values, .. }) => values[index].as_slice(),
            _ => unreachable!("value of a branch"),
        }
    }

    fn child(self, index: usize) -> ChildView<'a> {
        match self {
            View::Owned(Node::Branch { children, .. }) => match &children[index] {
                Child::Clean(addr) => ChildView::Clean(*addr),
                Child::Dirty(node) => ChildView::Dirty(node),
            },
            View::Archived(ArchivedNodePage::Branch { children, .. }) => {
                ChildView::Clean(PageAddr(children[index].to_native()))
            }
            _ => unreachable!("child of a leaf"),
        }
    }

    /// Number of keys `<= key`: in a branch, the index of the child to follow.
    fn upper_bound(self, key: &[u8]) -> usize {
        let (mut low, mut high) = (0, self.key_count());
        while low < high {
            let mid = (low + high) / 2;
            if self.key(mid) <= key {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// Number of keys `< key`.
    fn lower_bound(self, key: &[u8]) -> usize {
        let (mut low, mut high) = (0, self.key_count());
        while low < high {
            let mid = (low + high) / 2;
            if self.key(mid) < key {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

/// Resolves a child to a view, keeping its page alive in `hold`.
fn resolve<'a>(
    child: ChildView<'a>,
    src: &impl PageSource,
    hold: &'a mut Option<Rc<PageBytes>>,
) -> Result<View<'a>, TreeError> {
    match child {
        ChildView::Dirty(node) => Ok(View::Owned(node)),
        ChildView::Clean(addr) => {
            let page = src.page(addr).ok_or(TreeError::Miss(addr))?;
            Ok(View::Archived(hold.insert(page).node()))
        }
    }
}

/// Direction and bounds of a scan.
#[derive(Clone, Debug)]
pub struct ScanRange<'a> {
    pub start: Bound<&'a [u8]>,
    pub end: Bound<&'a [u8]>,
    pub reverse: bool,
}

impl ScanRange<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        let after_start = match self.start {
            Bound::Included(s) => key >= s,
            Bound::Excluded(s) => key > s,
            Bound::Unbounded => true,
        };
        let before_end = match self.end {
            Bound::Included(e) => key <= e,
            Bound::Excluded(e) => key < e,
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// Counters a tree keeps for memory accounting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirtyStats {
    /// Nodes made dirty or created since the last flush.
    pub dirty_nodes: usize,
}

/// One partition's B+tree.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    root: Option<Child>,
    page_size: usize,
    dirty: DirtyStats,
    /// Bytes of keys and values stored, as far as this tree has seen
    /// ([`Tree::set_stored_bytes`] carries the count across a reopen).
    bytes: u64,
}

impl Tree {
    pub fn new(page_size: usize) -> Tree {
        Tree {
            root: None,
            page_size,
            dirty: DirtyStats::default(),
            bytes: 0,
        }
    }

    pub fn with_root(root: PageAddr, page_size: usize) -> Tree {
        let root = (root != PageAddr::NONE).then_some(Child::Clean(root));
        Tree {
            root,
            page_size,
            dirty: DirtyStats::default(),
            bytes: 0,
        }
    }

    /// Bytes of keys and values the tree holds.
    pub fn stored_bytes(&self) -> u64 {
        self.bytes
    }

    /// Sets what [`Tree::stored_bytes`] counts from (a reopened tree's
    /// recorded size).
    pub fn set_stored_bytes(&mut self, bytes: u64) {
        self.bytes = bytes;
    }

    /// The root page, if the tree is clean (after a flush).
    pub fn root_addr(&self) -> PageAddr {
        match &self.root {
            Some(Child::Clean(addr)) => *addr,
            None => PageAddr::NONE,
            Some(Child::Dirty(_)) => panic!("root_addr of a dirty tree"),
        }
    }

    pub fn dirty_stats(&self) -> DirtyStats {
        self.dirty
    }

    fn root_view<'a>(
        &'a self,
        src: &impl PageSource,
        hold: &'a mut Option<Rc<PageBytes>>,
    ) -> Result<Option<View<'a>>, TreeError> {
        match &self.root {
            None => Ok(None),
            Some(Child::Dirty(node)) => Ok(Some(View::Owned(node))),
            Some(Child::Clean(addr)) => resolve(ChildView::Clean(*addr), src, hold).map(Some),
        }
    }

    /// Calls `f` with the value stored under `key`, read in place.
    pub fn get_with<R>(
        &self,
        src: &impl PageSource,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, TreeError> {
        let mut hold = None;
        match self.root_view(src, &mut hold)? {
            None => Ok(None),
            Some(view) => get_in(view, src, key, f),
        }
    }

    /// Faults in the path to `key`: `Ok` means a mutation of `key` will not miss.
    pub fn probe(&self, src: &impl PageSource, key: &[u8]) -> Result<(), TreeError> {
        self.get_with(src, key, |_| ()).map(|_| ())
    }

    /// Inserts or replaces. Call after a successful [`Tree::probe`]; old clean
    /// pages on the path are appended to `freed`.
    pub fn put(
        &mut self,
        src: &impl PageSource,
        key: Vec<u8>,
        value: Vec<u8>,
        freed: &mut Vec<PageAddr>,
    ) -> Result<(), TreeError> {
        self.probe(src, &key)?;
        let replaced = self
            .get_with(src, &key, <[u8]>::len)?
            .map_or(0, |v| key.len() + v);
        self.bytes =
            (self.bytes + (key.len() + value.len()) as u64).saturating_sub(replaced as u64);
        let page_size = self.page_size;
        let Some(root) = &mut self.root else {
            self.root = Some(Child::Dirty(Box::new(Node::Leaf {
                keys: vec![key],
                values: vec![value],
            })));
            self.dirty.dirty_nodes += 1;
            return Ok(());
        };
        let node = make_dirty(root, src, freed, &mut self.dirty)?;
        if let Some((separator, right)) =
            insert(node, src, key, value, freed, &mut self.dirty, page_size)?
        {
            let left = self.root.take().expect("root exists");
            self.root = Some(Child::Dirty(Box::new(Node::Branch {
                keys: vec![separator],
                children: vec![left, Child::Dirty(Box::new(right))],
            })));
            self.dirty.dirty_nodes += 2;
        }
        Ok(())
    }

    /// Removes `key`; returns whether it was present. Absent keys change nothing.
    pub fn delete(
        &mut self,
        src: &impl PageSource,
        key: &[u8],
        freed: &mut Vec<PageAddr>,
    ) -> Result<bool, TreeError> {
        let Some(len) = self.get_with(src, key, <[u8]>::len)? else {
            return Ok(false);
        };
        self.bytes = self.bytes.saturating_sub((key.len() + len) as u64);
        let root = self.root.as_mut().expect("key found, so a root exists");
        let node = make_dirty(root, src, freed, &mut self.dirty)?;
        remove(node, src, key, freed, &mut self.dirty)?;
        // Shrink: an empty root goes, a branch with one child is replaced by it.
        loop {
            match &mut self.root {
                Some(Child::Dirty(node)) if node.is_empty() => self.root = None,
                Some(Child::Dirty(node)) => match node.as_mut() {
                    Node::Branch { children, .. } if children.len() == 1 => {
                        self.root = children.pop();
                        continue;
                    }
                    _ => {}
                },
                _ => {}
            }
            break;
        }
        Ok(true)
    }

    /// Appends up to `limit` entries in `range` to `out`, in key order (or
    /// reverse). Returns whether the limit stopped the scan.
    pub fn scan(
        &self,
        src: &impl PageSource,
        range: &ScanRange<'_>,
        limit: usize,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, TreeError> {
        self.scan_bounded(src, range, limit, usize::MAX, out)
    }

    /// As [`Tree::scan`], also stopping once the keys and values read add
    /// up to `bytes_max` (the entry that crosses it is included).
    pub fn scan_bounded(
        &self,
        src: &impl PageSource,
        range: &ScanRange<'_>,
        limit: usize,
        bytes_max: usize,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, TreeError> {
        let mut hold = None;
        let start_len = out.len();
        let mut budget = ScanBudget {
            items: limit,
            bytes: bytes_max,
        };
        let result = match self.root_view(src, &mut hold)? {
            None => Ok(false),
            Some(view) => scan_in(view, src, range, &mut budget, out),
        };
        if result.is_err() {
            out.truncate(start_len); // a miss restarts the scan from scratch
        }
        result
    }

    /// Writes every dirty node bottom-up through `write`, which returns the
    /// page's new address; afterwards the tree is clean.
    pub fn flush_dirty(&mut self, write: &mut impl FnMut(NodePage) -> PageAddr) {
        let mut unbounded = usize::MAX;
        let clean = self.flush_some(&mut unbounded, write);
        debug_assert!(clean);
    }

    /// Writes at most `budget` dirty nodes, bottom-up, through `write`
    /// (decrementing `budget`); returns whether the tree is now clean. A
    /// checkpoint calls this in slices and lets writers run in between:
    /// a node they dirty again is simply written again by a later slice.
    pub fn flush_some(
        &mut self,
        budget: &mut usize,
        write: &mut impl FnMut(NodePage) -> PageAddr,
    ) -> bool {
        let before = *budget;
        let clean = match &mut self.root {
            Some(root) => flush_child(root, budget, write),
            None => true,
        };
        let flushed = before - *budget;
        self.dirty.dirty_nodes = if clean {
            0
        } else {
            self.dirty.dirty_nodes.saturating_sub(flushed)
        };
        clean
    }

    /// The clean pages that dirty nodes (or the root) point at: with
    /// every page reachable below them, the pages this tree holds on disk.
    pub fn clean_frontier(&self, out: &mut Vec<PageAddr>) {
        fn walk(child: &Child, out: &mut Vec<PageAddr>) {
            match child {
                Child::Clean(addr) => out.push(*addr),
                Child::Dirty(node) => {
                    if let Node::Branch { children, .. } = node.as_ref() {
                        children.iter().for_each(|c| walk(c, out));
                    }
                }
            }
        }
        if let Some(root) = &self.root {
            walk(root, out);
        }
    }

    /// Whether any node is dirty.
    pub fn is_dirty(&self) -> bool {
        matches!(self.root, Some(Child::Dirty(_)))
    }
}

fn get_in<R>(
    view: View<'_>,
    src: &impl PageSource,
    key: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Result<Option<R>, TreeError> {
    if view.is_leaf() {
        let index = view.lower_bound(key);
        if index < view.key_count() && view.key(index) == key {
            return Ok(Some(f(view.value(index))));
        }
        return Ok(None);
    }
    let mut hold = None;
    let child = resolve(view.child(view.upper_bound(key)), src, &mut hold)?;
    get_in(child, src, key, f)
}

fn make_dirty<'a>(
    child: &'a mut Child,
    src: &impl PageSource,
    freed: &mut Vec<PageAddr>,
    dirty: &mut DirtyStats,
) -> Result<&'a mut Node, TreeError> {
    if let Child::Clean(addr) = *child {
        let page = src.page(addr).ok_or(TreeError::Miss(addr))?;
        *child = Child::Dirty(Box::new(Node::from_archived(page.node())));
        freed.push(addr);
        dirty.dirty_nodes += 1;
    }
    match child {
        Child::Dirty(node) => Ok(node),
        Child::Clean(_) => unreachable!("just made dirty"),
    }
}

type Split = Option<(Vec<u8>, Node)>;

fn insert(
    node: &mut Node,
    src: &impl PageSource,
    key: Vec<u8>,
    value: Vec<u8>,
    freed: &mut Vec<PageAddr>,
    dirty: &mut DirtyStats,
    page_size: usize,
) -> Result<Split, TreeError> {
    match node {
        Node::Leaf { keys, values } => match keys.binary_search(&key) {
            Ok(index) => values[index] = value,
            Err(index) => {
                keys.insert(index, key);
                values.insert(index, value);
            }
        },
        Node::Branch { keys, children } => {
            let index = keys.partition_point(|k| k.as_slice() <= key.as_slice());
            let child = make_dirty(&mut children[index], src, freed, dirty)?;
            if let Some((separator, right)) =
                insert(child, src, key, value, freed, dirty, page_size)?
            {
                keys.insert(index, separator);
                children.insert(index + 1, Child::Dirty(Box::new(right)));
                dirty.dirty_nodes += 1;
            }
        }
    }
    Ok(split_if_full(node, page_size))
}

/// Splits an over-full node near its byte midpoint.
fn split_if_full(node: &mut Node, page_size: usize) -> Split {
    if node.size_bytes() <= page_size {
        return None;
    }
    match node {
        Node::Leaf { keys, values } => {
            if keys.len() < 2 {
                return None; // one large item: its page spans several units
            }
            let half = node_half(
                keys.iter()
                    .zip(values.iter())
                    .map(|(k, v)| k.len() + v.len()),
            );
            let Node::Leaf { keys, values } = node else {
                unreachable!()
            };
            let right_keys = keys.split_off(half);
            let right_values = values.split_off(half);
            Some((
                right_keys[0].clone(),
                Node::Leaf {
                    keys: right_keys,
                    values: right_values,
                },
            ))
        }
        Node::Branch { keys, children } => {
            if keys.len() < 3 {
                return None;
            }
            let middle = node_half(keys.iter().map(Vec::len)).min(keys.len() - 2);
            let right_keys = keys.split_off(middle + 1);
            let separator = keys.pop().expect("middle key");
            let right_children = children.split_off(middle + 1);
            Some((
                separator,
                Node::Branch {
                    keys: right_keys,
                    children: right_children,
                },
            ))
        }
    }
}

/// The index splitting entries of these sizes into two halves by bytes,
/// leaving at least one entry on each side.
fn node_half(sizes: impl ExactSizeIterator<Item = usize> + Clone) -> usize {
    let count = sizes.len();
    let total: usize = sizes.clone().sum();
    let mut running = 0;
    for (index, size) in sizes.enumerate() {
        running += size;
        if running * 2 >= total {
            return (index + 1).clamp(1, count - 1);
        }
    }
    count / 2
}

/// Removes `key` below `node` (known present); empty children are unlinked.
fn remove(
    node: &mut Node,
    src: &impl PageSource,
    key: &[u8],
    freed: &mut Vec<PageAddr>,
    dirty: &mut DirtyStats,
) -> Result<(), TreeError> {
    match node {
        Node::Leaf { keys, values } => {
            if let Ok(index) = keys.binary_search_by(|k| k.as_slice().cmp(key)) {
                keys.remove(index);
                values.remove(index);
            }
        }
        Node::Branch { keys, children } => {
            let index = keys.partition_point(|k| k.as_slice() <= key);
            let child = make_dirty(&mut children[index], src, freed, dirty)?;
            remove(child, src, key, freed, dirty)?;
            if child.is_empty() {
                children.remove(index);
                if !keys.is_empty() {
                    keys.remove(index.saturating_sub(1));
                }
            }
        }
    }
    Ok(())
}

/// What a scan may still return.
struct ScanBudget {
    items: usize,
    bytes: usize,
}

impl ScanBudget {
    fn spent(&self) -> bool {
        self.items == 0 || self.bytes == 0
    }
}

fn scan_in(
    view: View<'_>,
    src: &impl PageSource,
    range: &ScanRange<'_>,
    budget: &mut ScanBudget,
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<bool, TreeError> {
    if view.is_leaf() {
        let first = match range.start {
            Bound::Included(s) => view.lower_bound(s),
            Bound::Excluded(s) => view.upper_bound(s),
            Bound::Unbounded => 0,
        };
        let end = match range.end {
            Bound::Included(e) => view.upper_bound(e),
            Bound::Excluded(e) => view.lower_bound(e),
            Bound::Unbounded => view.key_count(),
        };
        let indexes: Box<dyn Iterator<Item = usize>> = if range.reverse {
            Box::new((first..end.max(first)).rev())
        } else {
            Box::new(first..end.max(first))
        };
        for index in indexes {
            if budget.spent() {
                return Ok(true);
            }
            debug_assert!(range.contains(view.key(index)));
            let (key, value) = (view.key(index), view.value(index));
            budget.items -= 1;
            budget.bytes = budget.bytes.saturating_sub(key.len() + value.len());
            out.push((key.to_vec(), value.to_vec()));
        }
        return Ok(budget.spent());
    }
    let first = match range.start {
        Bound::Included(s) | Bound::Excluded(s) => view.upper_bound(s),
        Bound::Unbounded => 0,
    };
    let last = match range.end {
        Bound::Included(e) | Bound::Excluded(e) => view.upper_bound(e),
        Bound::Unbounded => view.key_count(),
    };
    if last < first {
        return Ok(false);
    }
    let children: Box<dyn Iterator<Item = usize>> = if range.reverse {
        Box::new((first..=last).rev())
    } else {
        Box::new(first..=last)
    };
    for index in children {
        let mut hold = None;
        let child = resolve(view.child(index), src, &mut hold)?;
        if scan_in(child, src, range, budget, out)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Flushes the dirty subtree under `child`, children first, while `budget`
/// lasts. Returns whether the subtree is clean.
fn flush_child(
    child: &mut Child,
    budget: &mut usize,
    write: &mut impl FnMut(NodePage) -> PageAddr,
) -> bool {
    let Child::Dirty(node) = child else {
        return true;
    };
    if let Node::Branch { children, .. } = node.as_mut() {
        for grandchild in children.iter_mut() {
            if !flush_child(grandchild, budget, write) {
                return false;
            }
        }
    }
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    let empty = Node::Leaf {
        keys: Vec::new(),
        values: Vec::new(),
    };
    let page = match std::mem::replace(node.as_mut(), empty) {
        Node::Leaf { keys, values } => NodePage::Leaf { keys, values },
        Node::Branch { keys, children } => {
            let children = children
                .into_iter()
                .map(|c| match c {
                    Child::Clean(addr) => addr.0,
                    Child::Dirty(_) => unreachable!("children were flushed first"),
                })
                .collect();
            NodePage::Branch { keys, children }
        }
    };
    *child = Child::Clean(write(page));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{PageCache, archive_node};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::BTreeMap;

    /// Flushes into a cache directly, as a checkpoint would (minus the disk).
    fn flush(tree: &mut Tree, cache: &PageCache, next_unit: &mut u64) {
        tree.flush_dirty(&mut |page| {
            let archived = archive_node(&page);
            let addr = PageAddr::new(*next_unit, 1);
            *next_unit += 1;
            cache.insert(addr, Rc::new(PageBytes::trusted(archived)), true);
            addr
        });
    }

    fn scan_all(tree: &Tree, cache: &PageCache, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let range = ScanRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse,
        };
        tree.scan(cache, &range, usize::MAX, &mut out).unwrap();
        out
    }

    #[test]
    fn matches_a_btreemap_through_random_operations_and_flushes() {
        let mut rng = StdRng::seed_from_u64(42);
        let cache = PageCache::new(usize::MAX);
        let mut tree = Tree::new(1024);
        let mut model = BTreeMap::new();
        let mut next_unit = 1;
        let mut freed = Vec::new();
        for step in 0..6000 {
            let key = format!("k{:04}", rng.random_range(0..800)).into_bytes();
            match rng.random_range(0..10) {
                0..=5 => {
                    let value = vec![step as u8; rng.random_range(0..200)];
                    tree.put(&cache, key.clone(), value.clone(), &mut freed)
                        .unwrap();
                    model.insert(key, value);
                }
                6..=7 => {
                    assert_eq!(
                        tree.delete(&cache, &key, &mut freed).unwrap(),
                        model.remove(&key).is_some()
                    );
                }
                _ => {
                    let got = tree.get_with(&cache, &key, <[u8]>::to_vec).unwrap();
                    assert_eq!(got.as_ref(), model.get(&key));
                }
            }
            if step % 500 == 0 {
                flush(&mut tree, &cache, &mut next_unit);
            }
        }
        let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(scan_all(&tree, &cache, false), expected);
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(scan_all(&tree, &cache, true), reversed);
        // Bounded, limited scans against the model.
        for _ in 0..200 {
            let a = format!("k{:04}", rng.random_range(0..800)).into_bytes();
            let b = format!("k{:04}", rng.random_range(0..800)).into_bytes();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let limit = rng.random_range(1..50);
            let reverse = rng.random_bool(0.5);
            let range = ScanRange {
                start: Bound::Excluded(&lo),
                end: Bound::Included(&hi),
                reverse,
            };
            let mut out = Vec::new();
            tree.scan(&cache, &range, limit, &mut out).unwrap();
            let mut want: Vec<_> = model
                .range::<Vec<u8>, _>((Bound::Excluded(&lo), Bound::Included(&hi)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if reverse {
                want.reverse();
            }
            want.truncate(limit);
            assert_eq!(out, want);
        }
    }

    /// Flushing in small slices with writes in between (as an incremental
    /// checkpoint does) ends clean and matches a BTreeMap.
    #[test]
    fn sliced_flushes_interleaved_with_writes_stay_consistent() {
        let mut rng = StdRng::seed_from_u64(9);
        let cache = PageCache::new(usize::MAX);
        let mut tree = Tree::new(1024);
        let mut model = BTreeMap::new();
        let mut freed = Vec::new();
        let mut next_unit = 1;
        let mut write = |page: NodePage| {
            let addr = PageAddr::new(next_unit, 1);
            next_unit += 1;
            cache.insert(addr, Rc::new(PageBytes::trusted(archive_node(&page))), true);
            addr
        };
        for round in 0..40 {
            for _ in 0..100 {
                let key = format!("k{:04}", rng.random_range(0..2000)).into_bytes();
                let value = vec![round as u8; rng.random_range(0..100)];
                tree.put(&cache, key.clone(), value.clone(), &mut freed)
                    .unwrap();
                model.insert(key, value);
            }
            // A few slices of 3 nodes, each followed by more writes.
            for _ in 0..5 {
                let mut budget = 3;
                tree.flush_some(&mut budget, &mut write);
                let key = format!("k{:04}", rng.random_range(0..2000)).into_bytes();
                tree.put(&cache, key.clone(), vec![1], &mut freed).unwrap();
                model.insert(key, vec![1]);
            }
        }
        let mut budget = usize::MAX;
        assert!(tree.flush_some(&mut budget, &mut write));
        assert!(!tree.is_dirty());
        let expected: Vec<_> = model.into_iter().collect();
        assert_eq!(scan_all(&tree, &cache, false), expected);
    }

    #[test]
    fn missing_pages_are_reported_before_any_change() {
        let cache = PageCache::new(usize::MAX);
        let mut tree = Tree::new(512);
        let mut freed = Vec::new();
        for i in 0..100u32 {
            tree.put(&cache, i.to_be_bytes().to_vec(), vec![1; 50], &mut freed)
                .unwrap();
        }
        let mut next_unit = 1;
        flush(&mut tree, &cache, &mut next_unit);
        let empty = PageCache::new(usize::MAX);
        let before = format!("{tree:?}");
        assert!(matches!(
            tree.put(&empty, vec![0, 0, 0, 7], vec![2], &mut freed),
            Err(TreeError::Miss(_))
        ));
        assert!(matches!(
            tree.delete(&empty, &[0, 0, 0, 7], &mut freed),
            Err(TreeError::Miss(_))
        ));
        assert_eq!(format!("{tree:?}"), before);
    }

    #[test]
    fn large_values_get_a_leaf_of_their_own() {
        let cache = PageCache::new(usize::MAX);
        let mut tree = Tree::new(16384);
        let mut freed = Vec::new();
        for i in 0..5u8 {
            tree.put(&cache, vec![i], vec![i; 100_000], &mut freed)
                .unwrap();
        }
        let mut sizes = Vec::new();
        tree.flush_dirty(&mut |page| {
            if let NodePage::Leaf { keys, .. } = &page {
                sizes.push(keys.len());
            }
            let addr = PageAddr::new(sizes.len() as u64 + 100, 7);
            cache.insert(
                addr,
                Rc::new(PageBytes::trusted(archive_node(&page))),
                false,
            );
            addr
        });
        assert_eq!(sizes, vec![1; 5]);
        assert_eq!(
            tree.get_with(&cache, &[3], <[u8]>::len).unwrap(),
            Some(100_000)
        );
    }
}
