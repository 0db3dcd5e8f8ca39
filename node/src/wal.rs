//! The per-core write-ahead log.
//!
//! One log per core multiplexes every partition that core owns. Records are
//! framed `crc32c ‖ length ‖ lsn ‖ batch_first_lsn ‖ segment_seq ‖ partition
//! ‖ payload` (docs/storage-format.md has the byte layout) and written in
//! *batches*: group commit gathers every record submitted while the previous
//! flush was in flight, writes them with one direct-IO write starting on a
//! fresh 4 KiB block, and makes them durable with one sync (or none, when
//! the segment is open `O_DSYNC`). A writer's future completes only once its
//! record is durable. The wait is bounded by one flush: there is no timer.
//!
//! Segments are fixed-size files, pre-written with zeros before use so that a
//! commit overwrites allocated blocks instead of growing the file (an append
//! costs an extra journal commit on ext4; see shared/MACHINE.md).
//!
//! Recovery reads segments in order and stops at the first record that is
//! not valid. Because only the last batch can be in flight at a crash, it
//! then looks further: a valid record of a *later* batch means the bad record
//! was once durable, and recovery fails with [`WalError::Corrupt`] instead of
//! silently dropping acknowledged writes. After recovery new records go to a
//! fresh segment, so remnants of a torn batch can never follow newer data.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use event_listener::Event;

use crate::device::{BLOCK_SIZE, BlockFile, FileSystem, OpenMode};

/// Log sequence number: the position of a record in one core's log.
pub type Lsn = u64;

const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNWAL";
const FORMAT_VERSION: u32 = 1;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 48;
const SEGMENT_HEADER_CRC_AT: usize = 40;

/// WAL tuning.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Size of each segment file, a multiple of 4 KiB.
    pub segment_size_bytes: u64,
    /// Most record bytes one group commit writes.
    pub batch_bytes_max: usize,
    /// Most bytes waiting for a flush; beyond it `submit` throttles.
    pub pending_bytes_max: usize,
    /// Open segments `O_DSYNC`: a completed write is durable, no fdatasync.
    pub dsync: bool,
    /// Pre-written segments kept ready for rollover.
    pub spare_segments: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 << 20,
            batch_bytes_max: 1 << 20,
            pending_bytes_max: 16 << 20,
            dsync: true,
            spare_segments: 1,
        }
    }
}

impl WalConfig {
    /// Largest payload one record may carry: it must fit in a segment. (A
    /// record larger than `batch_bytes_max` is written as a batch alone.)
    pub fn payload_bytes_max(&self) -> usize {
        self.segment_size_bytes as usize - BLOCK_SIZE - RECORD_HEADER_BYTES
    }
}

/// Errors of the log. `Throttled` is retryable; the others are not.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log is full of pending records ({pending_bytes} bytes); retry later")]
    Throttled { pending_bytes: usize },
    #[error("record payload is {size_bytes} bytes; at most {size_bytes_max} fit")]
    RecordTooLarge {
        size_bytes: usize,
        size_bytes_max: usize,
    },
    #[error("write-ahead log IO failed ({kind:?}): {message}; the log stopped accepting writes")]
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    #[error("write-ahead log corrupt in {segment} at byte {offset} (expected lsn {lsn}): {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        lsn: Lsn,
        reason: String,
    },
    #[error("write-ahead log segment {segment} has an invalid header: {reason}")]
    BadSegmentHeader { segment: String, reason: String },
    #[error("write-ahead log is missing records {from}..{to}")]
    Missing { from: Lsn, to: Lsn },
}

impl From<io::Error> for WalError {
    fn from(error: io::Error) -> Self {
        WalError::Io {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// A record read back during recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub partition: u64,
    pub payload: Vec<u8>,
}

/// What recovery found, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments_read: usize,
    pub records_replayed: u64,
    /// A batch at the tail was incomplete and was discarded.
    pub torn_tail: bool,
    pub next_lsn: Lsn,
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

fn spare_name(id: u64) -> String {
    format!("wal-spare-{id:016x}.log")
}

fn align_up(value: usize) -> usize {
    value.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

#[derive(Debug)]
struct SegmentHeader {
    seq: u64,
    first_lsn: Lsn,
    size_bytes: u64,
}

impl SegmentHeader {
    fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_SIZE];
        block[0..8].copy_from_slice(SEGMENT_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[16..24].copy_from_slice(&self.seq.to_le_bytes());
        block[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        block[32..40].copy_from_slice(&self.size_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&block[..SEGMENT_HEADER_CRC_AT]);
        block[SEGMENT_HEADER_CRC_AT..SEGMENT_HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        block
    }

    fn decode(block: &[u8]) -> Result<SegmentHeader, String> {
        if block.len() < BLOCK_SIZE {
            return Err("shorter than one block".into());
        }
        let crc = read_u32(block, SEGMENT_HEADER_CRC_AT);
        if crc != crc32c::crc32c(&block[..SEGMENT_HEADER_CRC_AT]) {
            return Err("checksum mismatch".into());
        }
        if &block[0..8] != SEGMENT_MAGIC {
            return Err("bad magic".into());
        }
        let version = read_u32(block, 8);
        if version != FORMAT_VERSION {
            return Err(format!("unsupported format version {version}"));
        }
        Ok(SegmentHeader {
            seq: read_u64(block, 16),
            first_lsn: read_u64(block, 24),
            size_bytes: read_u64(block, 32),
        })
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// A parsed record header; `crc` covers bytes 4.. of the header and the payload.
struct RecordHeader {
    crc: u32,
    payload_len: usize,
    lsn: Lsn,
    batch_first_lsn: Lsn,
    batch_last_lsn: Lsn,
    segment_seq: u64,
    partition: u64,
}

impl RecordHeader {
    fn read(bytes: &[u8]) -> RecordHeader {
        RecordHeader {
            crc: read_u32(bytes, 0),
            payload_len: read_u32(bytes, 4) as usize,
            lsn: read_u64(bytes, 8),
            batch_first_lsn: read_u64(bytes, 16),
            batch_last_lsn: read_u64(bytes, 24),
            segment_seq: read_u64(bytes, 32),
            partition: read_u64(bytes, 40),
        }
    }
}

fn encode_record(out: &mut Vec<u8>, record: &PendingRecord, batch: (Lsn, Lsn), segment_seq: u64) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record.lsn.to_le_bytes());
    out.extend_from_slice(&batch.0.to_le_bytes());
    out.extend_from_slice(&batch.1.to_le_bytes());
    out.extend_from_slice(&segment_seq.to_le_bytes());
    out.extend_from_slice(&record.partition.to_le_bytes());
    out.extend_from_slice(&record.payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of parsing at one position of a segment.
enum Parsed {
    Valid {
        header: RecordHeader,
        end: usize,
    },
    /// Zero bytes where a header would be: padding or unwritten space.
    Zero,
    Invalid(&'static str),
    /// A valid record left by an earlier use of a recycled segment file.
    Stale,
}

fn parse_at(data: &[u8], at: usize, segment_seq: u64) -> Parsed {
    if at + RECORD_HEADER_BYTES > data.len() {
        return Parsed::Zero;
    }
    let head = &data[at..at + RECORD_HEADER_BYTES];
    if head.iter().all(|b| *b == 0) {
        return Parsed::Zero;
    }
    let header = RecordHeader::read(head);
    let end = at + RECORD_HEADER_BYTES + header.payload_len;
    if end > data.len() {
        return Parsed::Invalid("length runs past the segment");
    }
    if crc32c::crc32c(&data[at + 4..end]) != header.crc {
        return Parsed::Invalid("checksum mismatch");
    }
    if header.segment_seq != segment_seq {
        return Parsed::Stale;
    }
    Parsed::Valid { header, end }
}

#[derive(Debug)]
struct PendingRecord {
    lsn: Lsn,
    partition: u64,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Segment<File> {
    seq: u64,
    first_lsn: Lsn,
    name: String,
    file: Option<Rc<File>>,
}

#[derive(Debug)]
struct State<File> {
    next_lsn: Lsn,
    durable_lsn: Lsn,
    pending: VecDeque<PendingRecord>,
    pending_bytes: usize,
    flushing: bool,
    poisoned: Option<WalError>,
    /// Segments holding live records, oldest first; the last one is written.
    segments: VecDeque<Segment<File>>,
    /// Next write offset in the last segment (block aligned).
    write_offset: u64,
    spares: Vec<String>,
    next_spare_id: u64,
    /// Records at or below this LSN are in a checkpoint: their segments may go.
    retired_through: Lsn,
}

/// The write-ahead log of one core.
#[derive(Debug)]
pub struct Wal<Fs: FileSystem> {
    fs: Rc<Fs>,
    config: WalConfig,
    state: RefCell<State<Fs::File>>,
    flushed: Event,
    maintaining: Cell<bool>,
    flush_count: Cell<u64>,
}

impl<Fs: FileSystem> Wal<Fs> {
    /// Opens the log, calling `replay` with every record after
    /// `checkpoint_lsn` in order, then starts a fresh segment for new records.
    pub async fn open(
        fs: Rc<Fs>,
        config: WalConfig,
        checkpoint_lsn: Lsn,
        mut replay: impl FnMut(Record),
    ) -> Result<(Self, RecoveryReport), WalError> {
        assert!(config.segment_size_bytes.is_multiple_of(BLOCK_SIZE as u64));
        assert!(config.batch_bytes_max >= BLOCK_SIZE);
        let names = fs.list().await?;
        let mut spares = Vec::new();
        let mut next_spare_id = 0;
        let mut found = Vec::new();
        for name in names {
            if name.starts_with("wal-") && name.ends_with(".tmp") {
                fs.remove(&name).await?;
            } else if let Some(id) = name
                .strip_prefix("wal-spare-")
                .and_then(|n| n.strip_suffix(".log"))
            {
                next_spare_id = next_spare_id.max(u64::from_str_radix(id, 16).unwrap_or(0) + 1);
                spares.push(name);
            } else if name.starts_with("wal-") && name.ends_with(".log") {
                let file = fs
                    .open(
                        &name,
                        OpenMode {
                            create: false,
                            dsync: config.dsync,
                        },
                    )
                    .await?;
                let block = file.read_at(0, BLOCK_SIZE).await?;
                let header =
                    SegmentHeader::decode(&block).map_err(|reason| WalError::BadSegmentHeader {
                        segment: name.clone(),
                        reason,
                    })?;
                found.push((header, name, file));
            }
        }
        found.sort_by_key(|(header, _, _)| header.seq);

        // Start from the newest segment that begins at or before the first
        // record we need; older ones hold only checkpointed records.
        let needed = checkpoint_lsn + 1;
        let start = found.iter().rposition(|(h, _, _)| h.first_lsn <= needed);
        if let Some((first, _, _)) = found.first()
            && start.is_none()
        {
            return Err(WalError::Missing {
                from: needed,
                to: first.first_lsn,
            });
        }
        let start = start.unwrap_or(0);
        let mut report = RecoveryReport::default();
        let mut expected = needed;
        let mut segments = VecDeque::new();
        let mut last_seq = 0;
        for (index, (header, name, file)) in found.into_iter().enumerate() {
            last_seq = header.seq;
            if index < start {
                spares.push(name); // wholly checkpointed: recycle it
                continue;
            }
            if index > start && header.first_lsn != expected {
                return Err(WalError::Missing {
                    from: expected,
                    to: header.first_lsn,
                });
            }
            let mut cursor = header.first_lsn;
            let data = file.read_at(0, header.size_bytes as usize).await?;
            let torn = read_segment(&data, &header, &name, &mut cursor, |record| {
                if record.lsn >= needed {
                    report.records_replayed += 1;
                    replay(record);
                }
            })?;
            report.torn_tail |= torn;
            report.segments_read += 1;
            expected = cursor;
            segments.push_back(Segment {
                seq: header.seq,
                first_lsn: header.first_lsn,
                name,
                file: None,
            });
        }
        if expected < needed {
            return Err(WalError::Missing {
                from: expected,
                to: needed,
            });
        }
        // Renaming retired segments to spares happens lazily in `maintain`.
        let retired: Vec<String> = spares
            .iter()
            .filter(|n| !n.starts_with("wal-spare-"))
            .cloned()
            .collect();
        spares.retain(|n| n.starts_with("wal-spare-"));
        report.next_lsn = expected;
        let wal = Wal {
            fs,
            config,
            state: RefCell::new(State {
                next_lsn: expected,
                durable_lsn: expected - 1,
                pending: VecDeque::new(),
                pending_bytes: 0,
                flushing: false,
                poisoned: None,
                segments,
                write_offset: 0,
                spares,
                next_spare_id,
                retired_through: checkpoint_lsn,
            }),
            flushed: Event::new(),
            maintaining: Cell::new(false),
            flush_count: Cell::new(0),
        };
        for name in retired {
            wal.recycle(&name).await?;
        }
        if wal.state.borrow().spares.is_empty() {
            // A fresh log: pre-writing its first segment here is expected.
            let spare = wal.prepare_spare().await?;
            wal.state.borrow_mut().spares.push(spare);
        }
        wal.start_segment(last_seq + 1, expected).await?;
        Ok((wal, report))
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// The highest LSN known durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.state.borrow().durable_lsn
    }

    /// Bytes submitted and not yet durable.
    pub fn pending_bytes(&self) -> usize {
        self.state.borrow().pending_bytes
    }

    /// The LSN the next submitted record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.state.borrow().next_lsn
    }

    /// Queues a record and returns its LSN without waiting. The record is
    /// durable once [`Wal::wait_durable`] for that LSN returns.
    pub fn submit(&self, partition: u64, payload: Vec<u8>) -> Result<Lsn, WalError> {
        let size_bytes_max = self.config.payload_bytes_max();
        if payload.len() > size_bytes_max {
            return Err(WalError::RecordTooLarge {
                size_bytes: payload.len(),
                size_bytes_max,
            });
        }
        let mut state = self.state.borrow_mut();
        if let Some(error) = &state.poisoned {
            return Err(error.clone());
        }
        let size = RECORD_HEADER_BYTES + payload.len();
        if state.pending_bytes + size > self.config.pending_bytes_max {
            return Err(WalError::Throttled {
                pending_bytes: state.pending_bytes,
            });
        }
        let lsn = state.next_lsn;
        state.next_lsn += 1;
        state.pending_bytes += size;
        state.pending.push_back(PendingRecord {
            lsn,
            partition,
            payload,
        });
        Ok(lsn)
    }

    /// Submits a record and waits until it is durable.
    pub async fn append(&self, partition: u64, payload: Vec<u8>) -> Result<Lsn, WalError> {
        let lsn = self.submit(partition, payload)?;
        self.wait_durable(lsn).await?;
        Ok(lsn)
    }

    /// Waits until every record up to `lsn` is durable. The first waiter to
    /// find no flush in progress leads the next one; the others wait for it.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        loop {
            let listener = {
                let state = self.state.borrow();
                if let Some(error) = &state.poisoned {
                    return Err(error.clone());
                }
                if state.durable_lsn >= lsn {
                    return Ok(());
                }
                if !state.flushing {
                    None
                } else {
                    Some(self.flushed.listen())
                }
            };
            match listener {
                Some(listener) => listener.await,
                None => self.flush_batch().await?,
            }
        }
    }

    /// Writes one batch of pending records and makes it durable.
    async fn flush_batch(&self) -> Result<(), WalError> {
        self.state.borrow_mut().flushing = true;
        let result = self.write_batch().await;
        let mut state = self.state.borrow_mut();
        state.flushing = false;
        if let Err(error) = &result {
            tracing::error!(%error, "write-ahead log failed; refusing further writes");
            state.poisoned = Some(error.clone());
        }
        drop(state);
        self.flushed.notify(usize::MAX);
        result
    }

    async fn write_batch(&self) -> Result<(), WalError> {
        let batch_bytes_max = self.config.batch_bytes_max;
        let segment_size = self.config.segment_size_bytes;
        // Take records up to the batch bound (always at least one).
        let (records, bytes) = {
            let mut state = self.state.borrow_mut();
            let mut bytes = 0;
            let mut records = Vec::new();
            while let Some(next) = state.pending.front() {
                let size = RECORD_HEADER_BYTES + next.payload.len();
                if !records.is_empty() && bytes + size > batch_bytes_max {
                    break;
                }
                bytes += size;
                records.push(state.pending.pop_front().expect("front exists"));
            }
            state.pending_bytes -= bytes;
            (records, align_up(bytes))
        };
        let Some(first) = records.first() else {
            return Ok(());
        };
        let (first_lsn, last_lsn) = (first.lsn, records[records.len() - 1].lsn);
        if self.state.borrow().write_offset + bytes as u64 > segment_size {
            let seq = self.state.borrow().segments.back().map_or(1, |s| s.seq + 1);
            self.start_segment(seq, first_lsn).await?;
        }
        let (file, offset, seq) = {
            let state = self.state.borrow();
            let segment = state.segments.back().expect("a segment is open");
            (
                segment.file.clone().expect("open"),
                state.write_offset,
                segment.seq,
            )
        };
        let mut buffer = Vec::with_capacity(bytes);
        for record in &records {
            encode_record(&mut buffer, record, (first_lsn, last_lsn), seq);
        }
        buffer.resize(bytes, 0);
        file.write_at(offset, &buffer).await?;
        if !self.config.dsync {
            file.sync().await?;
        }
        let mut state = self.state.borrow_mut();
        state.write_offset += bytes as u64;
        state.durable_lsn = last_lsn;
        self.flush_count.set(self.flush_count.get() + 1);
        Ok(())
    }

    /// Turns a spare (or a new pre-written file) into segment `seq` starting
    /// at `first_lsn`, and makes it the one being written.
    async fn start_segment(&self, seq: u64, first_lsn: Lsn) -> Result<(), WalError> {
        let spare = self.state.borrow_mut().spares.pop();
        let spare = match spare {
            Some(spare) => spare,
            None => {
                tracing::warn!("no spare write-ahead log segment ready; pre-writing one inline");
                self.prepare_spare().await?
            }
        };
        let name = segment_name(seq);
        let temporary = format!("wal-{seq:016x}.tmp");
        self.fs.rename(&spare, &temporary).await?;
        let mode = OpenMode {
            create: false,
            dsync: self.config.dsync,
        };
        let file = self.fs.open(&temporary, mode).await?;
        let header = SegmentHeader {
            seq,
            first_lsn,
            size_bytes: self.config.segment_size_bytes,
        };
        file.write_at(0, &header.encode()).await?;
        file.sync().await?;
        self.fs.rename(&temporary, &name).await?;
        self.fs.sync_dir().await?;
        let mut state = self.state.borrow_mut();
        if let Some(last) = state.segments.back_mut() {
            last.file = None;
        }
        state.segments.push_back(Segment {
            seq,
            first_lsn,
            name,
            file: Some(Rc::new(file)),
        });
        state.write_offset = BLOCK_SIZE as u64;
        Ok(())
    }

    /// Creates a zero-filled segment-sized spare file, durably.
    async fn prepare_spare(&self) -> Result<String, WalError> {
        let id = {
            let mut state = self.state.borrow_mut();
            state.next_spare_id += 1;
            state.next_spare_id - 1
        };
        let temporary = format!("wal-{id:016x}-spare.tmp");
        let file = self
            .fs
            .open(
                &temporary,
                OpenMode {
                    create: true,
                    dsync: false,
                },
            )
            .await?;
        let chunk = vec![0u8; (1 << 20).min(self.config.segment_size_bytes as usize)];
        let mut offset = 0;
        while offset < self.config.segment_size_bytes {
            let len = chunk
                .len()
                .min((self.config.segment_size_bytes - offset) as usize);
            file.write_at(offset, &chunk[..len]).await?;
            offset += len as u64;
        }
        file.sync().await?;
        let name = spare_name(id);
        self.fs.rename(&temporary, &name).await?;
        self.fs.sync_dir().await?;
        Ok(name)
    }

    async fn recycle(&self, name: &str) -> Result<(), WalError> {
        let keep = self.state.borrow().spares.len() < self.config.spare_segments;
        if keep {
            let id = {
                let mut state = self.state.borrow_mut();
                state.next_spare_id += 1;
                state.next_spare_id - 1
            };
            let spare = spare_name(id);
            self.fs.rename(name, &spare).await?;
            self.state.borrow_mut().spares.push(spare);
        } else {
            self.fs.remove(name).await?;
        }
        self.fs.sync_dir().await?;
        Ok(())
    }

    /// Records that everything up to `lsn` is in a durable checkpoint, so
    /// segments holding only such records may be recycled by `maintain`.
    pub fn retire_through(&self, lsn: Lsn) {
        let mut state = self.state.borrow_mut();
        state.retired_through = state.retired_through.max(lsn);
    }

    /// Background upkeep, paced by the caller: recycles retired segments
    /// and pre-writes spares so rollover never waits for zeroing.
    pub async fn maintain(&self) -> Result<(), WalError> {
        if self.maintaining.replace(true) {
            return Ok(());
        }
        let result = self.maintain_inner().await;
        self.maintaining.set(false);
        result
    }

    async fn maintain_inner(&self) -> Result<(), WalError> {
        loop {
            let retire = {
                let mut state = self.state.borrow_mut();
                let through = state.retired_through;
                let wholly_retired = state.segments.len() > 1
                    && state
                        .segments
                        .get(1)
                        .is_some_and(|next| next.first_lsn <= through + 1);
                if wholly_retired {
                    state.segments.pop_front()
                } else {
                    None
                }
            };
            match retire {
                Some(segment) => self.recycle(&segment.name).await?,
                None => break,
            }
        }
        while self.state.borrow().spares.len() < self.config.spare_segments {
            let spare = self.prepare_spare().await?;
            self.state.borrow_mut().spares.push(spare);
        }
        Ok(())
    }

    /// Group commits done since open: one write (and sync) each.
    pub fn flush_count(&self) -> u64 {
        self.flush_count.get()
    }

    /// Number of segment files holding live records.
    pub fn live_segments(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Bytes of log written since the oldest live segment began: what a
    /// restart would replay at most.
    pub fn live_bytes(&self) -> u64 {
        let state = self.state.borrow();
        (state.segments.len() as u64).saturating_sub(1) * self.config.segment_size_bytes
            + state.write_offset
    }
}

/// Reads the records of one segment from `*cursor` on, advancing it past
/// each valid record. Returns whether the segment ended in a torn batch.
fn read_segment(
    data: &[u8],
    header: &SegmentHeader,
    name: &str,
    cursor: &mut Lsn,
    mut emit: impl FnMut(Record),
) -> Result<bool, WalError> {
    let mut at = BLOCK_SIZE;
    let mut expected = header.first_lsn;
    loop {
        match parse_at(data, at, header.seq) {
            Parsed::Valid {
                header: record,
                end,
            } if record.lsn == expected => {
                emit(Record {
                    lsn: record.lsn,
                    partition: record.partition,
                    payload: data[at + RECORD_HEADER_BYTES..end].to_vec(),
                });
                expected += 1;
                *cursor = expected;
                // The next batch starts on a fresh block.
                at = if record.lsn == record.batch_last_lsn {
                    align_up(end)
                } else {
                    end
                };
            }
            // Zeros where a batch would start: the end of the log.
            Parsed::Zero if at.is_multiple_of(BLOCK_SIZE) => return Ok(false),
            Parsed::Zero => {
                check_tail(data, header, name, at, expected, "zeros inside a batch")?;
                return Ok(true);
            }
            Parsed::Stale => {
                check_tail(data, header, name, at, expected, "stale record")?;
                return Ok(false);
            }
            Parsed::Valid { .. } => {
                check_tail(data, header, name, at, expected, "unexpected lsn")?;
                return Ok(true);
            }
            Parsed::Invalid(reason) => {
                check_tail(data, header, name, at, expected, reason)?;
                return Ok(true);
            }
        }
    }
}

/// The record at `at` is not valid. It is the end of the log unless a record
/// of a later batch follows; then it is corruption of durable data.
fn check_tail(
    data: &[u8],
    header: &SegmentHeader,
    name: &str,
    at: usize,
    expected: Lsn,
    reason: &str,
) -> Result<(), WalError> {
    let mut block = align_up(at + 1);
    while block + RECORD_HEADER_BYTES <= data.len() {
        if let Parsed::Valid { header: later, .. } = parse_at(data, block, header.seq)
            && later.batch_first_lsn > expected
            && later.lsn >= expected
        {
            return Err(WalError::Corrupt {
                segment: name.to_owned(),
                offset: at as u64,
                lsn: expected,
                reason: format!("{reason}; a later batch (lsn {}) follows", later.lsn),
            });
        }
        block += BLOCK_SIZE;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemFs;
    use futures_lite::future::block_on;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn config() -> WalConfig {
        WalConfig {
            segment_size_bytes: 64 * 1024,
            batch_bytes_max: 16 * 1024,
            pending_bytes_max: 1 << 20,
            dsync: false,
            spare_segments: 1,
        }
    }

    fn open(fs: &MemFs, checkpoint: Lsn) -> (Wal<MemFs>, Vec<Record>, RecoveryReport) {
        let mut records = Vec::new();
        let (wal, report) = block_on(Wal::open(Rc::new(fs.clone()), config(), checkpoint, |r| {
            records.push(r);
        }))
        .unwrap();
        (wal, records, report)
    }

    fn payload(lsn: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (lsn as usize * 31 + i) as u8).collect()
    }

    #[test]
    fn appends_survive_reopen_across_segments() {
        let fs = MemFs::new();
        let (wal, records, _) = open(&fs, 0);
        assert!(records.is_empty());
        for i in 0..200u64 {
            let lsn =
                block_on(wal.append(i % 3, payload(i + 1, (i as usize * 37) % 3000))).unwrap();
            assert_eq!(lsn, i + 1);
        }
        assert!(
            wal.live_segments() > 1,
            "records should span several segments"
        );
        drop(wal);
        let (wal, records, report) = open(&fs, 0);
        assert_eq!(records.len(), 200);
        assert!(!report.torn_tail);
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.lsn, i as u64 + 1);
            assert_eq!(record.partition, i as u64 % 3);
            assert_eq!(record.payload, payload(i as u64 + 1, (i * 37) % 3000));
        }
        assert_eq!(wal.next_lsn(), 201);
    }

    #[test]
    fn group_commit_batches_concurrent_writers() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        let lsns: Vec<Lsn> = (0..64)
            .map(|i| wal.submit(1, payload(i, 100)).unwrap())
            .collect();
        // One wait flushes everything queued before it as one batch.
        block_on(wal.wait_durable(lsns[63])).unwrap();
        assert_eq!(wal.durable_lsn(), 64);
        assert_eq!(wal.flush_count(), 1);
        // Batches are bounded: 64 records of 1000 bytes need several.
        let lsns: Vec<Lsn> = (0..64)
            .map(|i| wal.submit(1, payload(i, 1000)).unwrap())
            .collect();
        block_on(wal.wait_durable(lsns[63])).unwrap();
        let batches = (64 * (1000 + RECORD_HEADER_BYTES)).div_ceil(config().batch_bytes_max) as u64;
        assert!(wal.flush_count() > batches);
    }

    /// Regression: a batch whose last record ended within a header's length
    /// of a block boundary made the reader parse a "header" straddling the
    /// padding and the next batch, and report corruption of a healthy log
    /// (found by the kill -9 test). Batches now say where they end.
    #[test]
    fn a_batch_ending_just_before_a_block_boundary_reads_back() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        for tail_gap in [1, 7, 39, 40, 41] {
            let len = BLOCK_SIZE - RECORD_HEADER_BYTES - tail_gap;
            block_on(wal.append(0, vec![0xAB; len])).unwrap();
            block_on(wal.append(0, vec![0xCD; 10])).unwrap();
        }
        drop(wal);
        let (_, records, report) = open(&fs, 0);
        assert_eq!(records.len(), 10);
        assert!(!report.torn_tail);
    }

    #[test]
    fn checkpoint_retires_segments_and_replay_starts_after_it() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        for i in 1..=100 {
            block_on(wal.append(0, payload(i, 2000))).unwrap();
        }
        let live = wal.live_segments();
        wal.retire_through(90);
        block_on(wal.maintain()).unwrap();
        assert!(wal.live_segments() < live);
        drop(wal);
        let (_, records, _) = open(&fs, 90);
        let lsns: Vec<Lsn> = records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, (91..=100).collect::<Vec<_>>());
    }

    #[test]
    fn throttles_when_pending_is_full_and_rejects_huge_records() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        let too_big = wal.config().payload_bytes_max() + 1;
        assert!(matches!(
            wal.submit(0, vec![0; too_big]),
            Err(WalError::RecordTooLarge { .. })
        ));
        let mut throttled = false;
        for _ in 0..1000 {
            if let Err(WalError::Throttled { .. }) = wal.submit(0, vec![0; 8000]) {
                throttled = true;
                break;
            }
        }
        assert!(throttled);
    }

    #[test]
    fn torn_tail_is_discarded_and_new_writes_follow_cleanly() {
        let mut rng = StdRng::seed_from_u64(1);
        for round in 0..50 {
            let fs = MemFs::new();
            let (wal, _, _) = open(&fs, 0);
            let mut acknowledged = 0;
            for i in 1..=20 {
                acknowledged = block_on(wal.append(0, payload(i, 700))).unwrap();
            }
            // A batch written but not yet synced, then a power cut that
            // keeps a random subset of its blocks.
            fs.set_syncs_discarded(true);
            let batch: Vec<Lsn> = (0..12)
                .map(|i| wal.submit(0, payload(100 + i, 700)).unwrap())
                .collect();
            block_on(wal.wait_durable(batch[11])).unwrap();
            drop(wal);
            fs.set_syncs_discarded(false);
            fs.crash(|| rng.random_bool(0.5));
            let (wal, records, _) = open(&fs, 0);
            assert!(records.len() >= acknowledged as usize, "round {round}");
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.lsn, i as u64 + 1);
            }
            // Write more, crash cleanly, and check the log still reads back.
            let next = block_on(wal.append(0, payload(7, 10))).unwrap();
            drop(wal);
            let (_, again, _) = open(&fs, 0);
            assert_eq!(again.last().map(|r| r.lsn), Some(next));
        }
    }

    #[test]
    fn unsynced_batch_lost_at_crash_leaves_acknowledged_records() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        block_on(wal.append(0, payload(1, 10))).unwrap();
        fs.set_syncs_discarded(true);
        block_on(wal.append(0, payload(2, 10))).unwrap();
        drop(wal);
        fs.crash(|| false);
        let (_, records, report) = open(&fs, 0);
        assert_eq!(records.len(), 1);
        assert!(!report.torn_tail);
    }

    #[test]
    fn corruption_before_the_tail_is_reported() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        for i in 1..=10 {
            block_on(wal.append(0, payload(i, 100))).unwrap();
        }
        drop(wal);
        // Flip a bit in the third record's batch (each append is one batch,
        // one block): a later batch follows, so this is corruption.
        fs.corrupt("wal-0000000000000001.log", 3 * BLOCK_SIZE + 50, 0x10);
        let result = block_on(Wal::open(Rc::new(fs.clone()), config(), 0, |_| {}));
        match result {
            Err(WalError::Corrupt { lsn, .. }) => assert_eq!(lsn, 3),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_last_record_is_a_torn_tail() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        for i in 1..=5 {
            block_on(wal.append(0, payload(i, 100))).unwrap();
        }
        drop(wal);
        fs.corrupt("wal-0000000000000001.log", 5 * BLOCK_SIZE + 60, 0x01);
        let (_, records, report) = open(&fs, 0);
        assert_eq!(records.len(), 4);
        assert!(report.torn_tail);
    }

    #[test]
    fn io_failure_poisons_the_log() {
        let fs = MemFs::new();
        let (wal, _, _) = open(&fs, 0);
        fs.set_failing(Some(io::ErrorKind::Other));
        assert!(matches!(
            block_on(wal.append(0, vec![1])),
            Err(WalError::Io { .. })
        ));
        fs.set_failing(None);
        assert!(matches!(wal.submit(0, vec![1]), Err(WalError::Io { .. })));
    }
}
