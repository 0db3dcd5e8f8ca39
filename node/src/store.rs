//! The per-core page file: two superblock slots, an extent allocator, and
//! the page cache in front of it.
//!
//! Layout of `pages.db`: unit 0 (one page size) holds superblock slots A at
//! byte 0 and B at byte 4096; pages start at unit 1. A checkpoint of
//! generation `g` writes its pages to free extents, syncs, then writes slot
//! `g % 2` and syncs again. Open picks the valid slot with the highest
//! generation, so a torn superblock write falls back to the previous
//! checkpoint, whose pages were never overwritten (copy-on-write: extents
//! freed by checkpoint `g` are reused only after `g + 1` is durable).
//!
//! The free list is not stored: open walks every tree from the catalog and
//! treats the gaps as free. That costs a read of every page at start-up
//! (and checks every page's crc as it goes); a persisted free list is a
//! later optimisation.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use crate::device::{BLOCK_SIZE, BlockFile, FileSystem, OpenMode};
use crate::page::{
    ArchivedNodePage, CatalogPage, PageAddr, PageBytes, PageCache, PageError, PageKind, unframe,
};
use crate::wal::Lsn;

const SUPERBLOCK_MAGIC: &[u8; 8] = b"CAIRNSB1";
const FORMAT_VERSION: u32 = 1;
const SUPERBLOCK_CRC_AT: usize = 48;
/// The page file's name inside a core's directory.
pub const PAGE_FILE: &str = "pages.db";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("page file IO failed ({kind:?}): {message}")]
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    #[error(transparent)]
    Corrupt(#[from] PageError),
    #[error("page file was written with page size {found}; configured {configured}")]
    PageSizeMismatch { found: u32, configured: u32 },
}

impl From<io::Error> for StoreError {
    fn from(error: io::Error) -> Self {
        StoreError::Io {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// The root of everything durable in the page file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    /// Every WAL record up to this LSN is reflected in the pages.
    pub checkpoint_lsn: Lsn,
    pub catalog: PageAddr,
    pub page_size: u32,
}

impl Superblock {
    fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_SIZE];
        block[0..8].copy_from_slice(SUPERBLOCK_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        block[16..24].copy_from_slice(&self.generation.to_le_bytes());
        block[24..32].copy_from_slice(&self.checkpoint_lsn.to_le_bytes());
        block[32..40].copy_from_slice(&self.catalog.0.to_le_bytes());
        let crc = crc32c::crc32c(&block[..SUPERBLOCK_CRC_AT]);
        block[SUPERBLOCK_CRC_AT..SUPERBLOCK_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        block
    }

    fn decode(block: &[u8]) -> Option<Superblock> {
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        if block.len() < BLOCK_SIZE
            || &block[0..8] != SUPERBLOCK_MAGIC
            || u32_at(8) != FORMAT_VERSION
            || u32_at(SUPERBLOCK_CRC_AT) != crc32c::crc32c(&block[..SUPERBLOCK_CRC_AT])
        {
            return None;
        }
        Some(Superblock {
            page_size: u32_at(12),
            generation: u64_at(16),
            checkpoint_lsn: u64_at(24),
            catalog: PageAddr(u64_at(32)),
        })
    }
}

/// Free extents of page units; first fit, coalescing on free.
#[derive(Debug, Default)]
struct Allocator {
    free: BTreeMap<u64, u64>,
    end_unit: u64,
}

impl Allocator {
    fn from_used(mut used: Vec<PageAddr>) -> Allocator {
        used.sort();
        let mut allocator = Allocator {
            free: BTreeMap::new(),
            end_unit: 1,
        };
        for addr in used {
            if addr.first_unit() > allocator.end_unit {
                allocator
                    .free
                    .insert(allocator.end_unit, addr.first_unit() - allocator.end_unit);
            }
            allocator.end_unit = allocator.end_unit.max(addr.first_unit() + addr.units());
        }
        allocator
    }

    fn allocate(&mut self, units: u64) -> PageAddr {
        let fit = self
            .free
            .iter()
            .find(|(_, len)| **len >= units)
            .map(|(start, len)| (*start, *len));
        match fit {
            Some((start, len)) => {
                self.free.remove(&start);
                if len > units {
                    self.free.insert(start + units, len - units);
                }
                PageAddr::new(start, units)
            }
            None => {
                let start = self.end_unit;
                self.end_unit += units;
                PageAddr::new(start, units)
            }
        }
    }

    fn free(&mut self, addr: PageAddr) {
        let (mut start, mut len) = (addr.first_unit(), addr.units());
        if let Some((&before, &before_len)) = self.free.range(..start).next_back()
            && before + before_len == start
        {
            self.free.remove(&before);
            start = before;
            len += before_len;
        }
        if let Some(after_len) = self.free.remove(&(start + len)) {
            len += after_len;
        }
        debug_assert!(start + len <= self.end_unit, "freeing past the end");
        self.free.insert(start, len);
    }

    #[cfg(test)]
    fn free_units(&self) -> u64 {
        self.free.values().sum()
    }
}

/// One core's page file.
#[derive(Debug)]
pub struct PageStore<Fs: FileSystem> {
    file: Fs::File,
    page_size: usize,
    cache: PageCache,
    allocator: RefCell<Allocator>,
    superblock: Cell<Superblock>,
    /// Pages read from the file since open.
    loads: Cell<u64>,
}

impl<Fs: FileSystem> PageStore<Fs> {
    /// Opens (or creates) the page file and returns the catalog of the last
    /// checkpoint. The allocator is empty until [`PageStore::set_used`].
    pub async fn open(
        fs: &Fs,
        page_size: usize,
        cache_bytes: usize,
    ) -> Result<(Self, CatalogPage), StoreError> {
        assert!(page_size.is_multiple_of(BLOCK_SIZE) && page_size >= 2 * BLOCK_SIZE);
        let file = fs
            .open(
                PAGE_FILE,
                OpenMode {
                    create: true,
                    dsync: false,
                },
            )
            .await?;
        let length = file.size_bytes().await?;
        let fresh = Superblock {
            page_size: page_size as u32,
            ..Superblock::default()
        };
        let superblock = if length == 0 {
            fresh
        } else {
            let head = file.read_at(0, 2 * BLOCK_SIZE).await?;
            let slots = [
                &head[..BLOCK_SIZE.min(head.len())],
                head.get(BLOCK_SIZE..).unwrap_or_default(),
            ];
            match slots
                .iter()
                .filter_map(|slot| Superblock::decode(slot))
                .max_by_key(|s| s.generation)
            {
                Some(superblock) => superblock,
                None => {
                    // The first checkpoint never committed (or both slots
                    // rotted): recover from the whole WAL. If a checkpoint
                    // had retired log segments, the WAL reports them missing.
                    tracing::warn!(
                        "page file has no valid superblock; recovering from the log alone"
                    );
                    fresh
                }
            }
        };
        if superblock.page_size != page_size as u32 {
            return Err(StoreError::PageSizeMismatch {
                found: superblock.page_size,
                configured: page_size as u32,
            });
        }
        let store = PageStore {
            file,
            page_size,
            cache: PageCache::new(cache_bytes),
            allocator: RefCell::new(Allocator {
                free: BTreeMap::new(),
                end_unit: 1,
            }),
            superblock: Cell::new(superblock),
            loads: Cell::new(0),
        };
        let catalog = if superblock.catalog == PageAddr::NONE {
            CatalogPage::default()
        } else {
            store.read_catalog(superblock.catalog).await?
        };
        Ok((store, catalog))
    }

    async fn read_catalog(&self, addr: PageAddr) -> Result<CatalogPage, StoreError> {
        let bytes = self.read_extent(addr).await?;
        Ok(crate::page::read_catalog(&bytes, addr)?)
    }

    async fn read_extent(&self, addr: PageAddr) -> Result<Vec<u8>, StoreError> {
        let offset = addr.first_unit() * self.page_size as u64;
        let len = addr.units() as usize * self.page_size;
        let bytes = self.file.read_at(offset, len).await?;
        if bytes.len() < len {
            return Err(PageError::Corrupt {
                addr: addr.0,
                reason: "page lies past the end of the file".into(),
            }
            .into());
        }
        Ok(bytes)
    }

    /// Reads, checks and caches a node page.
    pub async fn load(&self, addr: PageAddr) -> Result<Rc<PageBytes>, StoreError> {
        if let Some(page) = self.cache.get(addr) {
            return Ok(page);
        }
        let bytes = self.read_extent(addr).await?;
        self.loads.set(self.loads.get() + 1);
        let page = Rc::new(PageBytes::validated(
            unframe(&bytes, addr, PageKind::Node)?,
            addr,
        )?);
        self.cache.insert(addr, page.clone(), false);
        Ok(page)
    }

    /// Every page reachable from `root`, loading each.
    pub async fn reachable(
        &self,
        root: PageAddr,
        out: &mut Vec<PageAddr>,
    ) -> Result<(), StoreError> {
        let mut stack = vec![root];
        while let Some(addr) = stack.pop() {
            if addr == PageAddr::NONE {
                continue;
            }
            out.push(addr);
            let page = self.load(addr).await?;
            if let ArchivedNodePage::Branch { children, .. } = page.node() {
                stack.extend(children.iter().map(|c| PageAddr(c.to_native())));
            }
        }
        Ok(())
    }

    /// Rebuilds the allocator from the extents in use.
    pub fn set_used(&self, used: Vec<PageAddr>) {
        *self.allocator.borrow_mut() = Allocator::from_used(used);
    }

    pub fn allocate(&self, units: u64) -> PageAddr {
        self.allocator.borrow_mut().allocate(units)
    }

    /// Returns an extent to the allocator and drops it from the cache. Only
    /// for extents no durable superblock can reach any more.
    pub fn free(&self, addr: PageAddr) {
        self.cache.remove(addr);
        self.allocator.borrow_mut().free(addr);
    }

    pub async fn write(&self, addr: PageAddr, framed: &[u8]) -> Result<(), StoreError> {
        debug_assert_eq!(framed.len(), addr.units() as usize * self.page_size);
        self.file
            .write_at(addr.first_unit() * self.page_size as u64, framed)
            .await?;
        Ok(())
    }

    /// Writes a run of framed pages starting at byte `offset`.
    pub async fn write_bytes(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_at(offset, bytes).await?;
        Ok(())
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        self.file.sync().await?;
        Ok(())
    }

    /// Writes `superblock` to its slot and makes it durable: the commit
    /// point of a checkpoint.
    pub async fn commit_superblock(&self, superblock: Superblock) -> Result<(), StoreError> {
        let slot = (superblock.generation % 2) * BLOCK_SIZE as u64;
        self.file.write_at(slot, &superblock.encode()).await?;
        self.file.sync().await?;
        self.superblock.set(superblock);
        Ok(())
    }

    /// Node pages read from the file since open.
    pub fn loads(&self) -> u64 {
        self.loads.get()
    }

    pub fn superblock(&self) -> Superblock {
        self.superblock.get()
    }

    pub fn cache(&self) -> &PageCache {
        &self.cache
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_reuses_and_coalesces() {
        let mut allocator = Allocator::from_used(vec![PageAddr::new(1, 2), PageAddr::new(6, 1)]);
        assert_eq!(allocator.free_units(), 3); // units 3, 4, 5
        assert_eq!(allocator.allocate(3), PageAddr::new(3, 3));
        assert_eq!(allocator.allocate(1), PageAddr::new(7, 1));
        allocator.free(PageAddr::new(3, 3));
        allocator.free(PageAddr::new(1, 2));
        assert_eq!(allocator.free.get(&1), Some(&5));
        assert_eq!(allocator.allocate(5), PageAddr::new(1, 5));
    }

    #[test]
    fn superblock_round_trips_and_rejects_damage() {
        let sb = Superblock {
            generation: 7,
            checkpoint_lsn: 99,
            catalog: PageAddr::new(5, 1),
            page_size: 16384,
        };
        let block = sb.encode();
        assert_eq!(Superblock::decode(&block), Some(sb));
        let mut bad = block.clone();
        bad[20] ^= 1;
        assert_eq!(Superblock::decode(&bad), None);
    }
}
