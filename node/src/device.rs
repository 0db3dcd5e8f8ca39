//! Narrow IO traits for the storage engine, with two implementations:
//!
//! - [`DmaFs`]: files opened `O_DIRECT` through glommio's io_uring reactor,
//!   optionally `O_DSYNC` so that a completed write is already durable (one
//!   IO per group commit instead of a write followed by `fdatasync`).
//! - [`MemFs`]: an in-memory file system for tests and simulation. Writes
//!   land in a volatile image; `sync` makes them durable; [`MemFs::crash`]
//!   keeps or loses each unsynced 4 KiB block at random (seeded), which is
//!   how a power cut tears a multi-block write on real media.
//!
//! Every write and read offset and length must be a multiple of
//! [`BLOCK_SIZE`]: the engine is written for `O_DIRECT`, and the in-memory
//! implementation enforces the same rule so simulation catches violations.

#![allow(async_fn_in_trait)] // Files are per-core and never cross threads.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Alignment of every direct-IO offset and length.
pub const BLOCK_SIZE: usize = 4096;

/// How a file is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Create the file if it does not exist.
    pub create: bool,
    /// Every completed write is durable (`O_DSYNC`); `sync` is then a no-op
    /// for data already written.
    pub dsync: bool,
}

/// A file addressed in aligned blocks.
pub trait BlockFile: std::fmt::Debug {
    /// Reads `len` bytes at `offset`; returns fewer only at end of file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Writes all of `data` at `offset`.
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable.
    async fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    async fn size_bytes(&self) -> io::Result<u64>;
}

/// A directory of block files.
pub trait FileSystem: std::fmt::Debug {
    type File: BlockFile;
    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<Self::File>;
    /// Names of the files in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable.
    async fn sync_dir(&self) -> io::Result<()>;
}

fn check_aligned(offset: u64, len: usize) -> io::Result<()> {
    if !offset.is_multiple_of(BLOCK_SIZE as u64) || !len.is_multiple_of(BLOCK_SIZE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unaligned direct IO: offset {offset}, length {len}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// glommio / io_uring implementation

/// A directory whose files are opened `O_DIRECT` through glommio. Must be
/// used from inside a glommio executor.
#[derive(Debug, Clone)]
pub struct DmaFs {
    dir: PathBuf,
}

impl DmaFs {
    /// Opens (creating if needed) a data directory for direct IO from the
    /// calling glommio executor.
    ///
    /// glommio decides per device and per thread whether reads may use its
    /// IOPOLL ring by reading offset 0 of the first file opened there. If
    /// that file is empty the read succeeds without reaching the device,
    /// glommio concludes "pollable", and every later read on a device
    /// without poll queues (virtio, most SATA) fails with EOPNOTSUPP. So the
    /// first open here is a probe file that holds a block of data.
    pub async fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let probe = dir.join(".iopoll-probe");
        std::fs::write(&probe, [0u8; BLOCK_SIZE])?;
        let file = glommio::io::DmaFile::open(&probe)
            .await
            .map_err(io::Error::from)?;
        let read = file
            .read_at_aligned(0, BLOCK_SIZE)
            .await
            .map_err(io::Error::from);
        file.close().await.map_err(io::Error::from)?;
        std::fs::remove_file(&probe)?;
        read?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A file opened `O_DIRECT` (and optionally `O_DSYNC`) through glommio.
#[derive(Debug)]
pub struct DmaFile {
    file: glommio::io::DmaFile,
}

impl BlockFile for DmaFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        check_aligned(offset, len)?;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = offset + out.len() as u64;
            let chunk = (len - out.len()).min(1 << 20);
            let read = self
                .file
                .read_at_aligned(at, chunk)
                .await
                .map_err(io::Error::from)?;
            if read.is_empty() {
                break;
            }
            out.extend_from_slice(&read);
            if read.len() < chunk {
                break;
            }
        }
        Ok(out)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_aligned(offset, data.len())?;
        let mut buffer = self.file.alloc_dma_buffer(data.len());
        buffer.as_bytes_mut().copy_from_slice(data);
        let written = self
            .file
            .write_at(buffer, offset)
            .await
            .map_err(io::Error::from)?;
        if written != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short direct write",
            ));
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }
}

impl FileSystem for DmaFs {
    type File = DmaFile;

    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<DmaFile> {
        let flags = if mode.dsync { libc::O_DSYNC } else { 0 };
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(mode.create)
            .custom_flags(flags)
            .dma_open(self.dir.join(name))
            .await
            .map_err(io::Error::from)?;
        Ok(DmaFile { file })
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&self.dir)
            .await
            .map_err(io::Error::from)?;
        dir.sync().await.map_err(io::Error::from)
    }
}

// ---------------------------------------------------------------------------
// In-memory implementation with crash simulation

#[derive(Debug, Default)]
struct MemFileData {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    dsync: bool,
}

#[derive(Debug, Default)]
struct MemFsState {
    files: BTreeMap<String, Rc<RefCell<MemFileData>>>,
    /// When set, every write and sync fails with this error kind.
    failing: Option<io::ErrorKind>,
    /// When set, `sync` returns without making anything durable: the
    /// moment between a write completing and its flush, frozen for a crash.
    syncs_discarded: bool,
    /// IO operations left before the power fails (every later one errors).
    ios_until_power_loss: Option<u64>,
}

impl MemFsState {
    /// Counts one IO against the power-loss trigger and fails if it fired
    /// or a failure is injected.
    fn count_io(&mut self) -> io::Result<()> {
        if let Some(left) = &mut self.ios_until_power_loss {
            if *left == 0 {
                self.failing = Some(io::ErrorKind::BrokenPipe);
            } else {
                *left -= 1;
            }
        }
        match self.failing {
            Some(kind) => Err(io::Error::new(kind, "injected IO failure")),
            None => Ok(()),
        }
    }
}

/// An in-memory directory; clones share the same files, so a test can crash
/// it and open a new engine over what "survived".
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    state: Rc<RefCell<MemFsState>>,
}

/// A file of a [`MemFs`].
#[derive(Debug)]
pub struct MemFile {
    data: Rc<RefCell<MemFileData>>,
    fs: Rc<RefCell<MemFsState>>,
}

impl MemFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power cut: each unsynced 4 KiB block independently keeps
    /// its new contents or reverts to what was durable. `keep` decides per
    /// block (a seeded RNG in tests).
    pub fn crash(&self, mut keep: impl FnMut() -> bool) {
        let state = self.state.borrow();
        for file in state.files.values() {
            let mut file = file.borrow_mut();
            let file = &mut *file;
            let blocks = file
                .volatile
                .len()
                .max(file.durable.len())
                .div_ceil(BLOCK_SIZE);
            let mut survived = file.durable.clone();
            for block in 0..blocks {
                let range = block * BLOCK_SIZE..(block + 1) * BLOCK_SIZE;
                let new = file.volatile.get(range.clone());
                let old = file.durable.get(range.clone());
                if new == old || new.is_none() || !keep() {
                    continue;
                }
                if survived.len() < range.end {
                    survived.resize(range.end, 0);
                }
                survived[range.clone()].copy_from_slice(new.unwrap_or_default());
            }
            file.volatile = survived.clone();
            file.durable = survived;
        }
    }

    /// XORs `mask` into the byte at `offset` of `name`, durably: bit rot.
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) {
        let state = self.state.borrow();
        let mut file = state.files[name].borrow_mut();
        file.durable[offset] ^= mask;
        file.volatile[offset] ^= mask;
    }

    /// Makes every later write and sync fail (a dying disk), or heals it.
    pub fn set_failing(&self, failing: Option<io::ErrorKind>) {
        self.state.borrow_mut().failing = failing;
    }

    /// After `ios` more writes, syncs, renames or removals, every IO fails:
    /// the process lost power mid-operation. Follow with [`MemFs::crash`]
    /// and [`MemFs::restore_power`].
    pub fn lose_power_after(&self, ios: u64) {
        self.state.borrow_mut().ios_until_power_loss = Some(ios);
    }

    /// Clears injected failures and the power-loss trigger.
    pub fn restore_power(&self) {
        let mut state = self.state.borrow_mut();
        state.ios_until_power_loss = None;
        state.failing = None;
    }

    /// Makes `sync` succeed without effect until reset, so a test can crash
    /// after writes the engine believes are in flight.
    pub fn set_syncs_discarded(&self, discarded: bool) {
        self.state.borrow_mut().syncs_discarded = discarded;
    }
}

impl MemFile {
    fn check_failing(&self) -> io::Result<()> {
        self.fs.borrow_mut().count_io()
    }
}

impl BlockFile for MemFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        check_aligned(offset, len)?;
        let data = self.data.borrow();
        let start = (offset as usize).min(data.volatile.len());
        let end = (start + len).min(data.volatile.len());
        Ok(data.volatile[start..end].to_vec())
    }

    async fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        check_aligned(offset, bytes.len())?;
        self.check_failing()?;
        let mut data = self.data.borrow_mut();
        let start = offset as usize;
        let end = start + bytes.len();
        if data.volatile.len() < end {
            data.volatile.resize(end, 0);
        }
        data.volatile[start..end].copy_from_slice(bytes);
        if data.dsync {
            if data.durable.len() < end {
                data.durable.resize(end, 0);
            }
            data.durable[start..end].copy_from_slice(bytes);
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.check_failing()?;
        if self.fs.borrow().syncs_discarded {
            return Ok(());
        }
        let mut data = self.data.borrow_mut();
        data.durable = data.volatile.clone();
        Ok(())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.data.borrow().volatile.len() as u64)
    }
}

impl FileSystem for MemFs {
    type File = MemFile;

    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<MemFile> {
        let mut state = self.state.borrow_mut();
        let data = match state.files.get(name) {
            Some(data) => data.clone(),
            None if mode.create => {
                let data = Rc::new(RefCell::new(MemFileData::default()));
                state.files.insert(name.to_owned(), data.clone());
                data
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, name.to_owned())),
        };
        data.borrow_mut().dsync = mode.dsync;
        Ok(MemFile {
            data,
            fs: self.state.clone(),
        })
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.borrow().files.keys().cloned().collect())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.count_io()?;
        let data = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_owned()))?;
        state.files.insert(to.to_owned(), data);
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.count_io()?;
        state.files.remove(name);
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.state.borrow_mut().count_io()
    }
}
