//! On-disk pages: rkyv-archived B-tree nodes and catalogs behind a checked
//! header, and the bounded per-core page cache.
//!
//! A page occupies an *extent* of one or more page units (16 KiB by
//! default): a node holding one large item simply spans several units.
//! Header (32 bytes, little endian): `magic "CPG1" ‖ crc32c ‖ archived_len ‖
//! kind u8, 3 reserved ‖ addr u64 ‖ generation u64`, then the archive. The
//! crc covers everything after itself up to the end of the archive; the
//! stored address catches misdirected writes. Pages are validated once, when
//! they enter the cache (crc, then rkyv's structural check); after that a
//! lookup reads the archive in place, with no deserialization.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use rkyv::rancor;
use rkyv::util::AlignedVec;

const PAGE_MAGIC: &[u8; 4] = b"CPG1";
/// Bytes of the page header; the archive starts here (16-byte aligned).
pub const PAGE_HEADER_BYTES: usize = 32;

/// A page's location: `first_unit << 16 | units`. Zero means "no page"
/// (unit 0 holds the superblocks, so no page starts there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageAddr(pub u64);

impl PageAddr {
    pub const NONE: PageAddr = PageAddr(0);

    pub fn new(first_unit: u64, units: u64) -> PageAddr {
        assert!((1..1 << 16).contains(&units) && first_unit < 1 << 48);
        PageAddr(first_unit << 16 | units)
    }

    pub fn first_unit(self) -> u64 {
        self.0 >> 16
    }

    pub fn units(self) -> u64 {
        self.0 & 0xFFFF
    }
}

/// What a page holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    Node = 1,
    /// The first catalog layout ([`CatalogPageV1`]): read, never written.
    CatalogV1 = 2,
    /// The second ([`CatalogPageV2`], before hash ranges): read, never
    /// written.
    CatalogV2 = 3,
    /// The third ([`CatalogPageV4`], before membership changes): read,
    /// never written.
    CatalogV4 = 4,
    Catalog = 5,
}

/// A B-tree node as stored. A branch with `n` keys has `n + 1` children;
/// child `i` holds the keys `k` with `keys[i-1] <= k < keys[i]`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum NodePage {
    Leaf {
        keys: Vec<Vec<u8>>,
        values: Vec<Vec<u8>>,
    },
    Branch {
        keys: Vec<Vec<u8>>,
        children: Vec<u64>,
    },
}

/// One partition in the catalog.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub partition: u64,
    /// The partition's key schema, in the WAL's schema encoding.
    pub schema: Vec<u8>,
    /// Root page, or 0 for an empty tree.
    pub root: u64,
    /// For a replica of a replication group: its durable Paxos state.
    pub group: Option<CatalogGroup>,
    /// The partition-key hashes the partition serves, inclusive (the
    /// whole space until a split narrows it).
    pub range_first: u64,
    pub range_last: u64,
    /// Bytes of keys and values in its tree (0 in older catalogs, which
    /// did not count them).
    pub bytes: u64,
}

/// A replica's Paxos state at a checkpoint: what the WAL records it
/// retires held (docs/storage-format.md, "Replicated partitions").
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogGroup {
    /// `GroupSpec::to_bytes`.
    pub spec: Vec<u8>,
    pub promised_round: u64,
    pub promised_leader: u64,
    /// Slots below are known chosen (the newest commit marker).
    pub committed_through: u64,
    /// Slots below are reflected in the tree.
    pub applied_through: u64,
    /// Accepted values from `applied_through` - 1024 on (the retained
    /// window of applied slots, then the unapplied ones).
    pub accepted: Vec<CatalogAccepted>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogAccepted {
    pub slot: u64,
    pub round: u64,
    pub leader: u64,
    /// As in an ACCEPT record: 0 no-op, 1 command, 2 membership change.
    pub tag: u8,
    /// The command, or the group's encoded spec; empty for a no-op.
    pub body: Vec<u8>,
}

/// The list of a core's partitions and their roots, written at checkpoint.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default, PartialEq, Eq,
)]
pub struct CatalogPage {
    pub entries: Vec<CatalogEntry>,
}

/// The catalog layout of page kind 4, before membership changes gave
/// accepted values a third kind.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogPageV4 {
    pub entries: Vec<CatalogEntryV4>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntryV4 {
    pub partition: u64,
    pub schema: Vec<u8>,
    pub root: u64,
    pub group: Option<CatalogGroupV4>,
    pub range_first: u64,
    pub range_last: u64,
    pub bytes: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogGroupV4 {
    pub spec: Vec<u8>,
    pub promised_round: u64,
    pub promised_leader: u64,
    pub committed_through: u64,
    pub applied_through: u64,
    pub accepted: Vec<CatalogAcceptedV4>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogAcceptedV4 {
    pub slot: u64,
    pub round: u64,
    pub leader: u64,
    /// `None` for a no-op.
    pub command: Option<Vec<u8>>,
}

impl From<CatalogGroupV4> for CatalogGroup {
    fn from(v4: CatalogGroupV4) -> Self {
        CatalogGroup {
            spec: v4.spec,
            promised_round: v4.promised_round,
            promised_leader: v4.promised_leader,
            committed_through: v4.committed_through,
            applied_through: v4.applied_through,
            accepted: v4
                .accepted
                .into_iter()
                .map(|a| CatalogAccepted {
                    slot: a.slot,
                    round: a.round,
                    leader: a.leader,
                    tag: u8::from(a.command.is_some()),
                    body: a.command.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl From<CatalogPageV4> for CatalogPage {
    fn from(v4: CatalogPageV4) -> Self {
        CatalogPage {
            entries: v4
                .entries
                .into_iter()
                .map(|e| CatalogEntry {
                    partition: e.partition,
                    schema: e.schema,
                    root: e.root,
                    group: e.group.map(CatalogGroup::from),
                    range_first: e.range_first,
                    range_last: e.range_last,
                    bytes: e.bytes,
                })
                .collect(),
        }
    }
}

/// The second catalog layout (page kind 3), before splits gave
/// partitions hash ranges.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogPageV2 {
    pub entries: Vec<CatalogEntryV2>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntryV2 {
    pub partition: u64,
    pub schema: Vec<u8>,
    pub root: u64,
    pub group: Option<CatalogGroupV4>,
}

impl From<CatalogPageV2> for CatalogPage {
    fn from(v2: CatalogPageV2) -> Self {
        CatalogPageV4 {
            entries: v2
                .entries
                .into_iter()
                .map(|e| CatalogEntryV4 {
                    partition: e.partition,
                    schema: e.schema,
                    root: e.root,
                    group: e.group,
                    range_first: 0,
                    range_last: u64::MAX,
                    bytes: 0,
                })
                .collect(),
        }
        .into()
    }
}

/// The first catalog layout (page kind 2), before replicated partitions.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogPageV1 {
    pub entries: Vec<CatalogEntryV1>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntryV1 {
    pub partition: u64,
    pub schema: Vec<u8>,
    pub root: u64,
}

impl From<CatalogPageV1> for CatalogPage {
    fn from(v1: CatalogPageV1) -> Self {
        CatalogPageV2 {
            entries: v1
                .entries
                .into_iter()
                .map(|e| CatalogEntryV2 {
                    partition: e.partition,
                    schema: e.schema,
                    root: e.root,
                    group: None,
                })
                .collect(),
        }
        .into()
    }
}

/// The catalog in a framed page read from `addr`, in any layout a
/// checkpoint ever wrote, as the current one.
pub fn read_catalog(page: &[u8], addr: PageAddr) -> Result<CatalogPage, PageError> {
    let (kind, archived) = unframe_any(
        page,
        addr,
        &[
            PageKind::Catalog,
            PageKind::CatalogV4,
            PageKind::CatalogV2,
            PageKind::CatalogV1,
        ],
    )?;
    let corrupt = |e: rancor::Error| PageError::Corrupt {
        addr: addr.0,
        reason: format!("catalog: {e}"),
    };
    Ok(match kind {
        PageKind::CatalogV1 => rkyv::from_bytes::<CatalogPageV1, rancor::Error>(&archived)
            .map_err(corrupt)?
            .into(),
        PageKind::CatalogV2 => rkyv::from_bytes::<CatalogPageV2, rancor::Error>(&archived)
            .map_err(corrupt)?
            .into(),
        PageKind::CatalogV4 => rkyv::from_bytes::<CatalogPageV4, rancor::Error>(&archived)
            .map_err(corrupt)?
            .into(),
        _ => rkyv::from_bytes::<CatalogPage, rancor::Error>(&archived).map_err(corrupt)?,
    })
}

/// Why a page could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page {addr:#x}: {reason}")]
    Corrupt { addr: u64, reason: String },
}

/// Serializes a node into an rkyv archive.
pub fn archive_node(node: &NodePage) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(node).expect("serializing to memory cannot fail")
}

/// Serializes a catalog into an rkyv archive.
pub fn archive_catalog(catalog: &CatalogPage) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(catalog).expect("serializing to memory cannot fail")
}

/// Units an archive of `archived_len` bytes needs.
pub fn units_for(archived_len: usize, page_size: usize) -> u64 {
    (PAGE_HEADER_BYTES + archived_len).div_ceil(page_size) as u64
}

/// Frames an archive as a page at `addr`, padded to its extent.
pub fn frame(
    archived: &[u8],
    kind: PageKind,
    addr: PageAddr,
    generation: u64,
    page_size: usize,
) -> Vec<u8> {
    let mut page = vec![0u8; addr.units() as usize * page_size];
    page[0..4].copy_from_slice(PAGE_MAGIC);
    page[8..12].copy_from_slice(&(archived.len() as u32).to_le_bytes());
    page[12] = kind as u8;
    page[16..24].copy_from_slice(&addr.0.to_le_bytes());
    page[24..32].copy_from_slice(&generation.to_le_bytes());
    page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + archived.len()].copy_from_slice(archived);
    let crc = crc32c::crc32c(&page[8..PAGE_HEADER_BYTES + archived.len()]);
    page[4..8].copy_from_slice(&crc.to_le_bytes());
    page
}

/// Checks a framed page read from `addr` and returns its archive, aligned.
pub fn unframe(page: &[u8], addr: PageAddr, kind: PageKind) -> Result<AlignedVec, PageError> {
    unframe_any(page, addr, &[kind]).map(|(_, archived)| archived)
}

/// Like [`unframe`], for a page of any of `kinds`; returns which it is.
pub fn unframe_any(
    page: &[u8],
    addr: PageAddr,
    kinds: &[PageKind],
) -> Result<(PageKind, AlignedVec), PageError> {
    let corrupt = |reason: &str| PageError::Corrupt {
        addr: addr.0,
        reason: reason.to_owned(),
    };
    if page.len() < PAGE_HEADER_BYTES {
        return Err(corrupt("shorter than a page header"));
    }
    let archived_len = u32::from_le_bytes(page[8..12].try_into().expect("4 bytes")) as usize;
    if PAGE_HEADER_BYTES + archived_len > page.len() {
        return Err(corrupt("archive length runs past the extent"));
    }
    let crc = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&page[8..PAGE_HEADER_BYTES + archived_len]) {
        return Err(corrupt("checksum mismatch"));
    }
    if &page[0..4] != PAGE_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let Some(kind) = kinds.iter().copied().find(|k| page[12] == *k as u8) else {
        return Err(corrupt("unexpected page kind"));
    };
    if u64::from_le_bytes(page[16..24].try_into().expect("8 bytes")) != addr.0 {
        return Err(corrupt("page holds another address (misdirected write)"));
    }
    let mut archived = AlignedVec::with_capacity(archived_len);
    archived.extend_from_slice(&page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + archived_len]);
    Ok((kind, archived))
}

/// A validated node archive, read in place.
#[derive(Debug)]
pub struct PageBytes {
    archived: AlignedVec,
}

impl PageBytes {
    /// Validates the archive structurally (once) and wraps it.
    pub fn validated(archived: AlignedVec, addr: PageAddr) -> Result<PageBytes, PageError> {
        rkyv::access::<ArchivedNodePage, rancor::Error>(&archived).map_err(|error| {
            PageError::Corrupt {
                addr: addr.0,
                reason: format!("archive fails validation: {error}"),
            }
        })?;
        Ok(PageBytes { archived })
    }

    /// Wraps an archive this process just serialized.
    pub fn trusted(archived: AlignedVec) -> PageBytes {
        PageBytes { archived }
    }

    /// The node, zero-copy.
    pub fn node(&self) -> &ArchivedNodePage {
        // SAFETY: every PageBytes was either validated by `rkyv::access` in
        // `validated` or produced by rkyv's serializer in this process
        // (`trusted`), and the bytes are immutable afterwards.
        unsafe { rkyv::access_unchecked::<ArchivedNodePage>(&self.archived) }
    }

    pub fn size_bytes(&self) -> usize {
        self.archived.len()
    }
}

/// Multiplicative hash for page addresses (already well spread in the low
/// bits); SipHash would double the cost of a cached lookup.
#[derive(Debug, Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

#[derive(Debug)]
struct Slot {
    page: Rc<PageBytes>,
    referenced: Cell<bool>,
    /// Written by a checkpoint still in flight: not yet readable from disk.
    pinned: bool,
    /// A branch page: few, and on every lookup's path.
    branch: bool,
}

#[derive(Debug, Default)]
struct CacheInner {
    slots: HashMap<u64, Slot, BuildHasherDefault<AddrHasher>>,
    /// CLOCK ring; entries whose slot is gone are skipped lazily.
    ring: VecDeque<u64>,
    size_bytes: usize,
    /// Bytes of branch pages; they are kept while this is at most half
    /// the capacity, so a cold lookup costs one read (its leaf), not two.
    branch_bytes: usize,
}

/// A bounded cache of clean pages with CLOCK eviction. Pinned pages (being
/// written by a checkpoint) are never evicted.
#[derive(Debug)]
pub struct PageCache {
    capacity_bytes: usize,
    inner: RefCell<CacheInner>,
}

impl PageCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            inner: RefCell::default(),
        }
    }

    pub fn get(&self, addr: PageAddr) -> Option<Rc<PageBytes>> {
        let inner = self.inner.borrow();
        match inner.slots.get(&addr.0) {
            Some(slot) => {
                slot.referenced.set(true);
                Some(slot.page.clone())
            }
            None => None,
        }
    }

    pub fn insert(&self, addr: PageAddr, page: Rc<PageBytes>, pinned: bool) {
        let mut inner = self.inner.borrow_mut();
        let branch = matches!(page.node(), ArchivedNodePage::Branch { .. });
        inner.size_bytes += page.size_bytes();
        if branch {
            inner.branch_bytes += page.size_bytes();
        }
        let slot = Slot {
            page,
            referenced: Cell::new(false),
            pinned,
            branch,
        };
        match inner.slots.insert(addr.0, slot) {
            Some(old) => Self::forget(&mut inner, &old),
            None => inner.ring.push_back(addr.0),
        }
        Self::evict(&mut inner, self.capacity_bytes);
    }

    pub fn unpin(&self, addr: PageAddr) {
        if let Some(slot) = self.inner.borrow_mut().slots.get_mut(&addr.0) {
            slot.pinned = false;
        }
    }

    /// Evicts down to capacity: call after unpinning, since pinned pages
    /// may have held the cache above its bound.
    pub fn trim(&self) {
        Self::evict(&mut self.inner.borrow_mut(), self.capacity_bytes);
    }

    pub fn remove(&self, addr: PageAddr) {
        let mut inner = self.inner.borrow_mut();
        if let Some(old) = inner.slots.remove(&addr.0) {
            Self::forget(&mut inner, &old);
        }
    }

    /// Takes a removed slot out of the byte counts.
    fn forget(inner: &mut CacheInner, old: &Slot) {
        inner.size_bytes -= old.page.size_bytes();
        if old.branch {
            inner.branch_bytes -= old.page.size_bytes();
        }
    }

    fn evict(inner: &mut CacheInner, capacity_bytes: usize) {
        // Each entry is looked at most twice per call: once to clear its
        // reference bit, once to evict it.
        let mut budget = inner.ring.len() * 2;
        while inner.size_bytes > capacity_bytes && budget > 0 {
            budget -= 1;
            let Some(addr) = inner.ring.pop_front() else {
                break;
            };
            let Some(slot) = inner.slots.get(&addr) else {
                continue;
            };
            let protected = slot.branch && inner.branch_bytes <= capacity_bytes / 2;
            if slot.pinned || protected || slot.referenced.replace(false) {
                inner.ring.push_back(addr);
                continue;
            }
            let old = inner.slots.remove(&addr).expect("slot exists");
            Self::forget(inner, &old);
        }
        // Drop ring entries of removed slots so the ring stays bounded.
        if inner.ring.len() > 2 * inner.slots.len() + 64 {
            let slots = &inner.slots;
            inner.ring.retain(|addr| slots.contains_key(addr));
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.borrow().size_bytes
    }

    pub fn len(&self) -> usize {
        self.inner.borrow().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u8) -> NodePage {
        NodePage::Leaf {
            keys: vec![vec![n]],
            values: vec![vec![n; 100]],
        }
    }

    #[test]
    fn frame_round_trips_and_detects_damage() {
        let archived = archive_node(&leaf(7));
        let addr = PageAddr::new(3, 1);
        let page = frame(&archived, PageKind::Node, addr, 9, 16384);
        let back = unframe(&page, addr, PageKind::Node).unwrap();
        let bytes = PageBytes::validated(back, addr).unwrap();
        let ArchivedNodePage::Leaf { keys, .. } = bytes.node() else {
            panic!("not a leaf")
        };
        assert_eq!(keys[0].as_slice(), &[7]);
        // A flipped bit anywhere in header or archive is caught.
        for at in [5, 9, 12, 17, 40, PAGE_HEADER_BYTES + archived.len() - 1] {
            let mut bad = page.clone();
            bad[at] ^= 0x04;
            assert!(unframe(&bad, addr, PageKind::Node).is_err(), "flip at {at}");
        }
        // Read from the wrong place: a misdirected write.
        assert!(unframe(&page, PageAddr::new(4, 1), PageKind::Node).is_err());
    }

    /// A catalog written before membership changes (page kind 4) reads as
    /// the current layout: its no-ops and commands keep their slots,
    /// ballots and bytes, as tags 0 and 1.
    #[test]
    fn a_catalog_before_membership_changes_reads_as_the_current_layout() {
        let group = CatalogGroupV4 {
            spec: vec![1, 2, 3],
            promised_round: 4,
            promised_leader: 1,
            committed_through: 12,
            applied_through: 11,
            accepted: vec![
                CatalogAcceptedV4 {
                    slot: 10,
                    round: 4,
                    leader: 1,
                    command: None,
                },
                CatalogAcceptedV4 {
                    slot: 11,
                    round: 4,
                    leader: 1,
                    command: Some(vec![9; 20]),
                },
            ],
        };
        let old = CatalogPageV4 {
            entries: vec![CatalogEntryV4 {
                partition: 7,
                schema: vec![0, 1, 0, b'k', 0],
                root: 99,
                group: Some(group),
                range_first: 5,
                range_last: 50,
                bytes: 1234,
            }],
        };
        let archived = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let addr = PageAddr::new(6, 1);
        let page = frame(&archived, PageKind::CatalogV4, addr, 3, 4096);
        let catalog = read_catalog(&page, addr).unwrap();
        let entry = &catalog.entries[0];
        assert_eq!(
            (
                entry.partition,
                entry.root,
                entry.range_first,
                entry.range_last,
                entry.bytes
            ),
            (7, 99, 5, 50, 1234)
        );
        let group = entry.group.as_ref().unwrap();
        assert_eq!((group.applied_through, group.committed_through), (11, 12));
        let accepted: Vec<(u64, u8, Vec<u8>)> = group
            .accepted
            .iter()
            .map(|a| (a.slot, a.tag, a.body.clone()))
            .collect();
        assert_eq!(accepted, vec![(10, 0, vec![]), (11, 1, vec![9; 20])]);
        // The current layout reads back as written.
        let archived = rkyv::to_bytes::<rancor::Error>(&catalog).unwrap();
        let page = frame(&archived, PageKind::Catalog, addr, 4, 4096);
        assert_eq!(read_catalog(&page, addr).unwrap(), catalog);
    }

    /// Regression: a checkpoint inserts its pages pinned, so the cache may
    /// exceed its bound until they are written. Unpinning did not evict, and
    /// a read-only workload (all hits, no inserts) then kept the whole tree
    /// resident far past the bound (found by the cold-read benchmark).
    #[test]
    fn unpinned_pages_are_trimmed_back_to_capacity() {
        let one = archive_node(&leaf(1)).len();
        let cache = PageCache::new(one * 2);
        for n in 1..=10u64 {
            let page = Rc::new(PageBytes::trusted(archive_node(&leaf(n as u8))));
            cache.insert(PageAddr::new(n, 1), page, true);
        }
        assert_eq!(cache.len(), 10);
        for n in 1..=10u64 {
            cache.unpin(PageAddr::new(n, 1));
        }
        cache.trim();
        assert!(
            cache.size_bytes() <= one * 2,
            "{} bytes resident",
            cache.size_bytes()
        );
    }

    /// Branch pages stay while they fit in half the cache: a cold lookup
    /// then reads one page (its leaf) instead of two.
    #[test]
    fn branch_pages_outlive_leaves() {
        let branch = |n: u8| NodePage::Branch {
            keys: vec![vec![n]; 20],
            children: vec![1; 21],
        };
        let one = archive_node(&leaf(1))
            .len()
            .max(archive_node(&branch(1)).len());
        let cache = PageCache::new(one * 6);
        for n in 1..=2u64 {
            cache.insert(
                PageAddr::new(n, 1),
                Rc::new(PageBytes::trusted(archive_node(&branch(n as u8)))),
                false,
            );
        }
        for n in 3..=40u64 {
            cache.insert(
                PageAddr::new(n, 1),
                Rc::new(PageBytes::trusted(archive_node(&leaf(n as u8)))),
                false,
            );
        }
        assert!(cache.size_bytes() <= one * 6);
        assert!(
            cache.get(PageAddr::new(1, 1)).is_some() && cache.get(PageAddr::new(2, 1)).is_some()
        );
        assert!(
            cache.get(PageAddr::new(3, 1)).is_none(),
            "old leaves go first"
        );
    }

    #[test]
    fn cache_evicts_to_capacity_but_keeps_pinned_pages() {
        let one = archive_node(&leaf(1)).len();
        let cache = PageCache::new(one * 4);
        for n in 1..=10u64 {
            let page = Rc::new(PageBytes::trusted(archive_node(&leaf(n as u8))));
            cache.insert(PageAddr::new(n, 1), page, n == 1);
        }
        assert!(cache.size_bytes() <= one * 4);
        assert!(
            cache.get(PageAddr::new(1, 1)).is_some(),
            "pinned page evicted"
        );
        assert!(cache.get(PageAddr::new(10, 1)).is_some());
    }
}
