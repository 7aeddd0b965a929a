//! The log writer: appends records to an aligned log buffer and makes them durable with group
//! commit, on its shard's ring.
//!
//! Group commit without timers: at most one write is in flight. Appends gather in the gathering
//! buffer; when no write is in flight, the shard loop calls `submit`, which sends the whole
//! gathering buffer as one O_DIRECT write with RWF_DSYNC (a data-sync write: one operation instead
//! of a write linked to an fdatasync, which costs an io-wq hop; pwritev2(2), RWF_DSYNC). When it
//! completes, `complete` advances the hardened LSN, wakes exactly the waiters it covers, and the
//! next `submit` sends whatever gathered meanwhile. At low load a record is written at once; under
//! load, everything appended during one flush shares the next.
//!
//! The partly filled last block of a batch is carried into the next gathering buffer and
//! rewritten with the next batch: its already hardened prefix is rewritten with identical bytes,
//! so a torn rewrite leaves that prefix intact whichever version of each sector lands.
//!
//! LSN ordering, kept by `validate`: `lsn_hardened <= in-flight end <= gathering end = lsn_appended`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::constants::{
    APPEND_QUEUE_CAPACITY, BLOCK_SIZE, LOG_BUFFERS_PER_LOG, LOG_BUFFER_SIZE, RECORD_BODY_SIZE_MAX, RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
};
use crate::error::{Error, IoContext, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::doorbell::Doorbell;
use crate::io::file::open_direct;
use crate::io::ring::{Completion, Ring, Token};
use crate::io::shared_buf::SharedBuf;
use std::sync::Arc as FileArc;

use crate::sync::bounded_queue::BoundedQueue;
use crate::sync::Arc;
use crate::wal::hardened::HardenedLsn;
use crate::wal::record::{self, RecordKind};
use crate::wal::recovery::{self, RecoveryReport};
use crate::wal::remote::{AppendRequest, LogHandle, RemoteInbox};
use crate::wal::segment::{self, SegmentHeader};
use crate::wal::segment_preparer::SegmentPreparer;
use crate::wal::waiters::HardenedWaiters;
use crate::wal::{DbId, Epoch, Lsn};

/// Disk faults injected through the log's own storage layer (tests; the machine has no
/// device-mapper). The write whose 1-based number is given completes with EIO instead.
#[derive(Debug, Clone, Default)]
pub struct DiskFaults {
    pub fail_write_number: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub db_id: DbId,
    pub epoch: Epoch,
    pub segment_size: u64,
    pub faults: DiskFaults,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>, db_id: DbId) -> Self {
        Self {
            dir: dir.into(),
            db_id,
            epoch: Epoch(1),
            segment_size: crate::constants::SEGMENT_SIZE_DEFAULT,
            faults: DiskFaults::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// No room until the write in flight completes: wait with `wait_for_space`, then retry.
    Full,
    TooLarge {
        size: usize,
        max: usize,
    },
    /// The log failed (a write or flush error) and takes no more records.
    Failed(String),
    /// A mirror's log cannot take a record at the position the principal gave it (the two logs
    /// would differ); the mirroring connection is refused, the log itself is unharmed.
    Mismatch(String),
}

impl From<AppendError> for Error {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Full => Error::LogFailed("log buffer full".into()),
            AppendError::TooLarge { size, max } => Error::RecordTooLarge { size, max },
            AppendError::Failed(detail) => Error::LogFailed(detail),
            AppendError::Mismatch(detail) => Error::Mirroring(detail),
        }
    }
}

/// Why a waiter is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The waiter's LSN is hardened.
    Hardened(Token),
    /// Buffer space is free again: retry the append.
    Space(Token),
    /// The log failed; the waiter's record will never be hardened.
    Failed(Token),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    pub writes: u64,
    pub records_hardened: u64,
    pub bytes_written: u64,
    pub records_per_write_max: u64,
    /// Sum over log writes of the time from submission to the completion being handled, in
    /// microseconds: divided by `writes`, the mean time a group commit waits for the device.
    pub write_micros: u64,
}

struct Gathering {
    buf: AlignedBuf,
    /// LSN of `buf[0]` (block aligned).
    start_lsn: Lsn,
    /// First byte not written by an earlier batch.
    batch_lsn: Lsn,
    /// A padding record closed the segment: no more appends until this batch is submitted.
    sealed: bool,
    records: u64,
}

impl Gathering {
    fn end_lsn(&self) -> Lsn {
        self.start_lsn.advance(self.buf.len() as u64)
    }
}

struct InFlight {
    end_lsn: Lsn,
    write_len: usize,
    records: u64,
    submitted: std::time::Instant,
    /// The file written to, kept open until the completion (the segment may have rotated).
    _file: FileArc<File>,
}

struct OpenSegment {
    header: SegmentHeader,
    path: PathBuf,
    file: FileArc<File>,
}

pub struct LogWriter {
    config: LogConfig,
    op_token: Token,
    segment: OpenSegment,
    /// Earlier segments, oldest first, for retention.
    older_segments: Vec<(SegmentHeader, PathBuf)>,
    gathering: Gathering,
    in_flight: Option<InFlight>,
    spare_bufs: Vec<AlignedBuf>,
    lsn_appended: Lsn,
    lsn_hardened: Lsn,
    waiters: HardenedWaiters,
    space_waiters: Vec<Token>,
    failed: Option<String>,
    preparer: SegmentPreparer,
    inbox: Arc<RemoteInbox>,
    deferred_remote: Option<AppendRequest>,
    /// Whether submitted batches are also handed to the mirroring link (`take_shipped`).
    shipping: bool,
    shipped: Vec<ShippedBatch>,
    /// Log the mirror still needs: segments holding records at or after it are kept, whatever
    /// checkpoints release (`set_retention_hold`).
    retention_hold: Option<Lsn>,
    /// What checkpoints last allowed to release.
    retention_checkpoint: Lsn,
    /// Header of the last record appended (a mirror's partner checks it: see `last_record`).
    last_record: Option<record::RecordHeader>,
    pub stats: LogStats,
}

/// One group-commit batch as submitted to disk, for zero-copy shipping to the mirror: the bytes
/// of log stream positions `from..to` are `buf[from - start .. to - start]`. The buffer is the
/// one being written; it must not be changed, and goes back through `recycle_shared`.
pub struct ShippedBatch {
    pub buf: SharedBuf,
    pub start: Lsn,
    pub from: Lsn,
    pub to: Lsn,
}

impl ShippedBatch {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.from.since(self.start) as usize..self.to.since(self.start) as usize]
    }
}

impl LogWriter {
    /// Recovers the log in `config.dir` (creating it if new) and readies it for appending.
    /// `op_token` is the ring token of this log's writes.
    pub fn open(config: LogConfig, op_token: Token) -> Result<(Self, RecoveryReport)> {
        segment::validate_segment_size(config.segment_size).map_err(Error::Config)?;
        std::fs::create_dir_all(&config.dir).context(|| format!("create {}", config.dir.display()))?;
        crate::io::probe::check_direct_io(&config.dir)?;
        segment::remove_temporary_files(&config.dir)?;
        let mut last_record = None;
        let mut report = recovery::scan(&config.dir, Some(config.db_id), |header, _| last_record = Some(*header))?;
        if let Some(last) = report.last_epoch {
            if last > config.epoch {
                return Err(Error::Config(format!(
                    "the log already holds records of {last}; cannot append with the lower {}",
                    config.epoch
                )));
            }
        }
        let preparer = SegmentPreparer::start(&config.dir)?;
        if report.segments.is_empty() {
            let header = SegmentHeader::new(config.db_id, Lsn::ZERO, config.segment_size, config.epoch);
            let path = preparer.take(header)?;
            report.segments.push(recovery::SegmentInfo { path, header, file_len: header.segment_size });
        }
        let end = report.end_lsn;
        // The segment holding the end; segments after it hold no valid record (recovery proved
        // that) and are removed so the stream continues without a gap.
        let current =
            report.segments.iter().position(|s| end < s.header.end_lsn()).unwrap_or(report.segments.len() - 1);
        for later in &report.segments[current + 1..] {
            std::fs::remove_file(&later.path).context(|| format!("remove {}", later.path.display()))?;
        }
        let info = report.segments[current].clone();
        repair_tail(&info, &report)?;
        // The previous run's last write may not have completed: its bytes can read back valid from
        // the device's volatile cache yet not be durable. Flush before calling them hardened.
        for s in report.segments[current.saturating_sub(1)..=current].iter() {
            let f = std::fs::File::open(&s.path).context(|| format!("open {}", s.path.display()))?;
            f.sync_data().map_err(|e| Error::LogFailed(format!("fdatasync of {} failed: {e}", s.path.display())))?;
        }
        let older_segments = report.segments[..current].iter().map(|s| (s.header, s.path.clone())).collect();
        let file = FileArc::new(open_direct(&info.path)?);
        let gathering = Gathering {
            buf: AlignedBuf::new(LOG_BUFFER_SIZE),
            start_lsn: end.block_floor().max(info.header.first_lsn),
            batch_lsn: end,
            sealed: false,
            records: 0,
        };
        let hardened = Arc::new(HardenedLsn::new(end));
        let inbox = Arc::new(RemoteInbox {
            queue: BoundedQueue::new(APPEND_QUEUE_CAPACITY),
            doorbell: Doorbell::new()?,
            hardened,
        });
        let mut writer = Self {
            op_token,
            segment: OpenSegment { header: info.header, path: info.path.clone(), file },
            older_segments,
            gathering,
            in_flight: None,
            spare_bufs: (1..LOG_BUFFERS_PER_LOG).map(|_| AlignedBuf::new(LOG_BUFFER_SIZE)).collect(),
            lsn_appended: end,
            lsn_hardened: end,
            waiters: HardenedWaiters::default(),
            space_waiters: Vec::new(),
            failed: None,
            preparer,
            inbox,
            deferred_remote: None,
            shipping: false,
            shipped: Vec::new(),
            retention_hold: None,
            retention_checkpoint: Lsn::ZERO,
            last_record,
            stats: LogStats::default(),
            config,
        };
        // Carry the partly filled last block so the next write rewrites it whole.
        let carry = end.since(writer.gathering.start_lsn) as usize;
        if carry > 0 {
            let offset = writer.file_offset(writer.gathering.start_lsn);
            writer.gathering.buf.set_len(BLOCK_SIZE);
            writer
                .segment
                .file
                .read_exact_at(&mut writer.gathering.buf[..BLOCK_SIZE], offset)
                .context(|| format!("read last block of {}", info.path.display()))?;
            writer.gathering.buf.set_len(carry);
        }
        if end == writer.segment.header.end_lsn() {
            writer.gathering.sealed = true;
            writer.rotate()?;
        }
        writer.preparer.request(writer.next_segment_header());
        writer.validate();
        Ok((writer, report))
    }

    fn file_offset(&self, lsn: Lsn) -> u64 {
        SEGMENT_HEADER_SIZE as u64 + lsn.since(self.segment.header.first_lsn)
    }

    fn next_segment_header(&self) -> SegmentHeader {
        SegmentHeader::new(
            self.config.db_id,
            self.segment.header.end_lsn(),
            self.config.segment_size,
            self.config.epoch,
        )
    }

    pub fn db_id(&self) -> DbId {
        self.config.db_id
    }

    pub fn epoch(&self) -> Epoch {
        self.config.epoch
    }

    /// Records appended from now on carry role sequence `epoch` (it never goes back).
    pub fn set_epoch(&mut self, epoch: Epoch) {
        assert!(epoch >= self.config.epoch, "role sequence went back from {} to {epoch}", self.config.epoch);
        self.config.epoch = epoch;
    }

    pub fn lsn_appended(&self) -> Lsn {
        self.lsn_appended
    }

    pub fn lsn_hardened(&self) -> Lsn {
        self.lsn_hardened
    }

    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    pub fn write_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether appended records wait for a write (the shard must not sleep without submitting).
    pub fn has_unwritten(&self) -> bool {
        self.gathering.end_lsn() > self.gathering.batch_lsn || self.gathering.sealed
    }

    /// A handle for appending from other threads.
    pub fn handle(&self) -> LogHandle {
        LogHandle::new(self.inbox.clone())
    }

    /// The doorbell remote appenders ring; the shard keeps a read of its eventfd posted.
    pub fn doorbell(&self) -> &Doorbell {
        &self.inbox.doorbell
    }

    pub fn remote_pending(&self) -> bool {
        // A deferred request waits for space: progress needs a write to complete first.
        match self.deferred_remote {
            Some(_) => !self.write_in_flight(),
            None => self.inbox.queue.has_ready(),
        }
    }

    /// Appends one record; returns its end LSN (the LSN to wait for).
    pub fn append(&mut self, kind: RecordKind, body: &[u8]) -> Result<Lsn, AppendError> {
        if let Some(detail) = &self.failed {
            return Err(AppendError::Failed(detail.clone()));
        }
        if body.len() > RECORD_BODY_SIZE_MAX {
            return Err(AppendError::TooLarge { size: body.len(), max: RECORD_BODY_SIZE_MAX });
        }
        if self.gathering.sealed {
            return Err(AppendError::Full);
        }
        let size = record::record_size(body.len());
        let segment_end = self.segment.header.end_lsn();
        if self.lsn_appended.advance(size as u64) > segment_end {
            self.seal_segment(segment_end);
            if self.gathering.sealed && self.gathering.end_lsn() == self.gathering.batch_lsn {
                // The seal added no bytes (the remainder is too small for a header) and nothing
                // else waits to be written: no write will complete to wake a waiter, so move to
                // the next segment now and append there.
                self.rotate().map_err(|e| AppendError::Failed(e.to_string()))?;
                return self.append(kind, body);
            }
            return Err(AppendError::Full);
        }
        let at = self.gathering.buf.len();
        if at + size > self.gathering.buf.capacity() {
            return Err(AppendError::Full);
        }
        self.gathering.buf.set_len(at + size);
        let lsn = self.lsn_appended;
        record::encode(
            &mut self.gathering.buf[at..at + size],
            self.config.db_id,
            lsn,
            self.config.epoch,
            self.gathering.batch_lsn,
            kind,
            body,
        );
        self.gathering.records += 1;
        self.last_record = record::parse_header(&self.gathering.buf[at..at + size]);
        self.lsn_appended = lsn.advance(size as u64);
        Ok(self.lsn_appended)
    }

    /// Makes sure the next appends of `bytes` bytes in all (whole records, as `record_size`
    /// counts them) land in the same batch and segment, so a transaction that fits is appended
    /// contiguously without `Full` in its middle. `Full`: wait for space and call again.
    /// `TooLarge`: the records can never share one batch (append them one by one instead).
    pub fn reserve(&mut self, bytes: usize) -> Result<(), AppendError> {
        if let Some(detail) = &self.failed {
            return Err(AppendError::Failed(detail.clone()));
        }
        let batch_max = self.gathering.buf.capacity() - BLOCK_SIZE;
        let segment_data = self.segment.header.data_size() as usize;
        if bytes > batch_max || bytes > segment_data {
            return Err(AppendError::TooLarge { size: bytes, max: batch_max.min(segment_data) });
        }
        if self.gathering.sealed {
            return Err(AppendError::Full);
        }
        let segment_end = self.segment.header.end_lsn();
        if self.lsn_appended.advance(bytes as u64) > segment_end {
            self.seal_segment(segment_end);
            if self.gathering.sealed && self.gathering.end_lsn() == self.gathering.batch_lsn {
                self.rotate().map_err(|e| AppendError::Failed(e.to_string()))?;
                return self.reserve(bytes);
            }
            return Err(AppendError::Full);
        }
        if self.gathering.buf.len() + bytes > self.gathering.buf.capacity() {
            return Err(AppendError::Full);
        }
        Ok(())
    }

    /// The mirror's append: the record the principal wrote at `lsn` goes to the same LSN here.
    /// Both logs have the same segment size, so segments close at the same LSNs; a padding record
    /// (or a remainder too small for one, which the principal skipped) closes the segment here too.
    /// Returns the record's end LSN; `Full` means wait for space and call again.
    pub fn append_replica(&mut self, lsn: Lsn, kind: RecordKind, body: &[u8]) -> Result<Lsn, AppendError> {
        if let Some(detail) = &self.failed {
            return Err(AppendError::Failed(detail.clone()));
        }
        let size = record::record_size(body.len()) as u64;
        let segment_end = self.segment.header.end_lsn();
        if lsn != self.lsn_appended {
            let skipped_remainder = lsn == segment_end
                && self.lsn_appended < segment_end
                && (segment_end.since(self.lsn_appended) as usize) < RECORD_HEADER_SIZE;
            if !skipped_remainder {
                return Err(AppendError::Mismatch(format!(
                    "record at {lsn} does not follow this log's end ({})",
                    self.lsn_appended
                )));
            }
            if self.gathering.sealed {
                return Err(AppendError::Full);
            }
            self.seal_segment(segment_end);
            if self.gathering.end_lsn() == self.gathering.batch_lsn {
                self.rotate().map_err(|e| AppendError::Failed(e.to_string()))?;
            } else {
                return Err(AppendError::Full);
            }
            return self.append_replica(lsn, kind, body);
        }
        if kind == RecordKind::PADDING {
            if lsn.advance(size) != segment_end {
                return Err(AppendError::Mismatch(format!(
                    "padding at {lsn} of {size} bytes does not end this log's segment at {segment_end}"
                )));
            }
            if self.gathering.sealed {
                return Err(AppendError::Full);
            }
            self.seal_segment(segment_end);
            return if self.gathering.sealed { Ok(segment_end) } else { Err(AppendError::Full) };
        }
        if lsn < segment_end && lsn.advance(size) > segment_end {
            return Err(AppendError::Mismatch(format!(
                "record at {lsn} of {size} bytes crosses this log's segment end at {segment_end} (segment sizes differ?)"
            )));
        }
        let end = self.append(kind, body)?;
        if end != lsn.advance(size) {
            return Err(AppendError::Mismatch(format!("record at {lsn} landed at a different position")));
        }
        Ok(end)
    }

    /// Reads whole records of hardened log from `from` on, at most `max` bytes (at least one
    /// record), for a mirror that is behind. Returns the range read (its start moves past a
    /// segment's unused remainder) and the bytes, or `None` when nothing hardened is left to
    /// read. The read is O_DIRECT like the writes: a buffered read could return stale cached
    /// pages of a file written with direct I/O (open(2), O_DIRECT notes).
    pub fn read_hardened(&self, from: Lsn, max: usize) -> Result<Option<(Lsn, Lsn, Vec<u8>)>> {
        let hardened = self.lsn_hardened;
        let segments = self
            .older_segments
            .iter()
            .map(|(h, p)| (*h, p.clone()))
            .chain(std::iter::once((self.segment.header, self.segment.path.clone())));
        let mut from = from;
        for (header, path) in segments {
            if from < header.first_lsn {
                // Only the oldest kept segment can start after `from` (later ones continue where
                // the previous ended).
                {
                    return Err(Error::Mirroring(format!(
                        "the log from {from} was released (the oldest kept is {}); the mirror must be restored from a backup",
                        self.first_retained_lsn()
                    )));
                }
            }
            let end = header.end_lsn();
            if from >= end {
                continue;
            }
            if (end.since(from) as usize) < RECORD_HEADER_SIZE {
                from = end; // the principal skipped a remainder too small for a record
                continue;
            }
            let limit = end.min(hardened);
            if from >= limit {
                return Ok(None);
            }
            let aligned = from.block_floor().max(header.first_lsn);
            let read_end = limit.min(from.advance(max as u64));
            let len = (read_end.since(aligned) as usize).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
            let mut buf = AlignedBuf::zeroed(len);
            let file = open_direct(&path)?;
            let offset = SEGMENT_HEADER_SIZE as u64 + aligned.since(header.first_lsn);
            let file_len = file.metadata().context(|| format!("stat {}", path.display()))?.len();
            let readable = (file_len.saturating_sub(offset) as usize).min(len) / BLOCK_SIZE * BLOCK_SIZE;
            file.read_exact_at(&mut buf[..readable], offset).context(|| format!("read {}", path.display()))?;
            let bytes = &buf[from.since(aligned) as usize..];
            // Whole records only.
            let mut at = 0usize;
            let avail = read_end.since(from) as usize;
            while at < avail {
                let lsn = from.advance(at as u64);
                if (end.since(lsn) as usize) < RECORD_HEADER_SIZE {
                    // The segment's last bytes, too few for a record: the writer skipped them
                    // (they hold no record), and the next read starts in the next segment.
                    break;
                }
                match record::check(&bytes[at..(end.since(from) as usize).min(bytes.len())], self.config.db_id, lsn) {
                    record::RecordCheck::Valid(h) => {
                        let size = record::record_size(h.body_len as usize);
                        if at + size > avail {
                            break;
                        }
                        at += size;
                    }
                    record::RecordCheck::Truncated if at > 0 => break,
                    other => {
                        return Err(Error::LogCorrupt {
                            lsn,
                            detail: format!("hardened log does not read back as a record ({other:?})"),
                        })
                    }
                }
            }
            if at == 0 {
                return Err(Error::LogCorrupt { lsn: from, detail: "no whole record fits the read".into() });
            }
            return Ok(Some((from, from.advance(at as u64), bytes[..at].to_vec())));
        }
        Ok(None)
    }

    /// Fills the rest of the segment with a padding record (when a header fits) and closes it.
    fn seal_segment(&mut self, segment_end: Lsn) {
        let remaining = segment_end.since(self.lsn_appended) as usize;
        let at = self.gathering.buf.len();
        if remaining >= RECORD_HEADER_SIZE {
            if at + remaining > self.gathering.buf.capacity() {
                return; // no room yet: the caller waits for space and retries
            }
            self.gathering.buf.set_len(at + remaining);
            record::encode_padding(
                &mut self.gathering.buf[at..at + remaining],
                self.config.db_id,
                self.lsn_appended,
                self.config.epoch,
                self.gathering.batch_lsn,
            );
            self.last_record = record::parse_header(&self.gathering.buf[at..at + remaining]);
            self.lsn_appended = segment_end;
        } else {
            // Too small for a header: recovery skips such a remainder.
            self.lsn_appended = segment_end;
        }
        self.gathering.sealed = true;
    }

    /// Registers `token` to be woken when the log is hardened to `lsn`. Returns true (and
    /// registers nothing) if it already is.
    pub fn wait_hardened(&mut self, lsn: Lsn, token: Token) -> bool {
        if lsn <= self.lsn_hardened {
            return true;
        }
        self.waiters.push(lsn, token);
        false
    }

    /// Registers `token` to be woken (with `Wake::Space`) when the next write completes.
    pub fn wait_for_space(&mut self, token: Token) {
        self.space_waiters.push(token);
    }

    /// Appends queued requests from other threads.
    pub fn drain_remote(&mut self) {
        loop {
            let Some(request) = self.deferred_remote.take().or_else(|| self.inbox.queue.pop()) else {
                return;
            };
            match self.append(request.kind, &request.body) {
                Ok(end) => request.reply.set(Ok(end)),
                Err(AppendError::Full) => {
                    self.deferred_remote = Some(request);
                    return;
                }
                Err(AppendError::TooLarge { size, max }) => {
                    request.reply.set(Err(format!("record of {size} bytes exceeds {max}")))
                }
                Err(AppendError::Failed(detail) | AppendError::Mismatch(detail)) => request.reply.set(Err(detail)),
            }
        }
    }

    /// Starts the next group-commit write if none is in flight and records are waiting.
    /// Returns true if a write was submitted.
    pub fn submit(&mut self, ring: &mut Ring) -> Result<bool> {
        if self.in_flight.is_some() || self.failed.is_some() {
            return Ok(false);
        }
        let end = self.gathering.end_lsn();
        if end == self.gathering.batch_lsn {
            if self.gathering.sealed {
                self.rotate()?;
            }
            return Ok(false);
        }
        let segment_end = self.segment.header.end_lsn();
        let closes_segment = self.gathering.sealed || end == segment_end;
        let mut next = self.spare_bufs.pop().unwrap_or_else(|| AlignedBuf::new(LOG_BUFFER_SIZE));
        let len = self.gathering.buf.len();
        let next_start = if closes_segment { end } else { end.block_floor() };
        let carry = end.since(next_start) as usize;
        next.set_len(carry);
        next[..carry].copy_from_slice(&self.gathering.buf[len - carry..len]);

        let write_len = len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        self.gathering.buf.set_len(write_len);
        self.gathering.buf[len..write_len].fill(0);
        let offset = self.file_offset(self.gathering.start_lsn);
        let records = self.gathering.records;
        let gathered = std::mem::replace(
            &mut self.gathering,
            Gathering { buf: next, start_lsn: next_start, batch_lsn: end, sealed: false, records: 0 },
        );
        let file = self.segment.file.clone();
        let shared = SharedBuf::new(gathered.buf);
        ring.write_shared_durable(&file, shared.share(), write_len, offset, self.op_token)?;
        if self.shipping {
            self.shipped.push(ShippedBatch {
                buf: shared,
                start: gathered.start_lsn,
                from: gathered.batch_lsn,
                to: end,
            });
        } else {
            self.recycle_shared(shared);
        }
        self.in_flight =
            Some(InFlight { end_lsn: end, write_len, records, submitted: std::time::Instant::now(), _file: file });
        if closes_segment {
            self.gathering.sealed = true;
            self.rotate()?;
        }
        self.validate();
        Ok(true)
    }

    /// Moves the gathering buffer to the next segment (the current one is full or sealed).
    fn rotate(&mut self) -> Result<()> {
        debug_assert!(self.gathering.sealed);
        let header = self.next_segment_header();
        let opened = self.preparer.take(header).and_then(|path| Ok((open_direct(&path)?, path)));
        let (file, path) = match opened {
            Ok((file, path)) => (FileArc::new(file), path),
            Err(e) => {
                self.fail(format!("cannot start the next log segment: {e}"));
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.segment, OpenSegment { header, path, file });
        self.older_segments.push((old.header, old.path));
        let start = header.first_lsn;
        self.lsn_appended = self.lsn_appended.max(start);
        self.gathering.buf.set_len(0);
        self.gathering.start_lsn = start;
        self.gathering.batch_lsn = start;
        self.gathering.sealed = false;
        self.preparer.request(self.next_segment_header());
        Ok(())
    }

    /// Takes the completion of this log's write. Wakes go to `wakes`.
    pub fn complete(&mut self, mut completion: Completion, wakes: &mut Vec<Wake>) {
        let in_flight = self.in_flight.take().expect("log write completion without a write in flight");
        if let Some(buf) = completion.buf.take() {
            self.spare_bufs.push(buf);
        }
        if let Some(shared) = completion.shared.take() {
            self.recycle_shared(shared);
        }
        self.stats.writes += 1;
        self.stats.write_micros += in_flight.submitted.elapsed().as_micros() as u64;
        if self.config.faults.fail_write_number == Some(self.stats.writes) {
            completion.result = -libc::EIO;
        }
        if completion.result != in_flight.write_len as i32 {
            let detail = if completion.result < 0 {
                format!(
                    "log write to {} failed: {}",
                    self.segment.path.display(),
                    std::io::Error::from_raw_os_error(-completion.result)
                )
            } else {
                format!(
                    "short log write to {}: {} of {} bytes",
                    self.segment.path.display(),
                    completion.result,
                    in_flight.write_len
                )
            };
            self.fail(detail);
            self.collect_failed(wakes);
            return;
        }
        if self.failed.is_some() {
            // The log failed while this write was in flight (a rotation error): it acknowledges
            // nothing more.
            self.collect_failed(wakes);
            return;
        }
        self.lsn_hardened = in_flight.end_lsn;
        self.stats.records_hardened += in_flight.records;
        self.stats.bytes_written += in_flight.write_len as u64;
        self.stats.records_per_write_max = self.stats.records_per_write_max.max(in_flight.records);
        self.inbox.hardened.publish(self.lsn_hardened);
        let mut tokens = Vec::new();
        self.waiters.take_satisfied(self.lsn_hardened, &mut tokens);
        wakes.extend(tokens.into_iter().map(Wake::Hardened));
        wakes.extend(self.space_waiters.drain(..).map(Wake::Space));
        self.validate();
    }

    /// A failed write or flush is fatal for this log: the page cache may have dropped the data,
    /// so retrying would lie (fsync(2), ERRORS; the 2018 "fsyncgate" discussion).
    fn fail(&mut self, detail: String) {
        eprintln!("mirrorlog: database {}: {detail}; the log is now failed", self.config.db_id);
        self.failed = Some(detail);
        self.inbox.hardened.fail();
    }

    fn collect_failed(&mut self, wakes: &mut Vec<Wake>) {
        let mut tokens = Vec::new();
        self.waiters.take_all(&mut tokens);
        tokens.append(&mut self.space_waiters);
        wakes.extend(tokens.into_iter().map(Wake::Failed));
        if let Some(request) = self.deferred_remote.take() {
            request.reply.set(Err(self.failed.clone().unwrap_or_default()));
        }
    }

    /// Turns the hand-over of submitted batches to the mirroring link on or off.
    pub fn set_shipping(&mut self, on: bool) {
        self.shipping = on;
        if !on {
            for batch in std::mem::take(&mut self.shipped) {
                self.recycle_shared(batch.buf);
            }
        }
    }

    /// Batches submitted since the last call (only while shipping is on).
    pub fn take_shipped(&mut self) -> Vec<ShippedBatch> {
        std::mem::take(&mut self.shipped)
    }

    /// Takes back a reference to a log buffer; the last holder (disk write or network send)
    /// returns the buffer to the spares.
    pub fn recycle_shared(&mut self, shared: SharedBuf) {
        if let Some(buf) = shared.release() {
            if self.spare_bufs.len() < LOG_BUFFERS_PER_LOG {
                self.spare_bufs.push(buf);
            }
        }
    }

    /// Keeps every segment holding log at or after `lsn` (the mirror's hardened LSN), or lets
    /// checkpoints alone decide again (`None`).
    pub fn set_retention_hold(&mut self, hold: Option<Lsn>) {
        self.retention_hold = hold;
        self.set_retention_lsn(self.retention_checkpoint);
    }

    /// The header of the last record appended (recovered at open): where it starts, its kind,
    /// body length and body checksum identify it across the two partners' logs.
    pub fn last_record(&self) -> Option<record::RecordHeader> {
        self.last_record
    }

    /// The mirroring hold, if any.
    pub fn retention_hold(&self) -> Option<Lsn> {
        self.retention_hold
    }

    /// Bytes of log kept from the oldest retained segment to the appended end.
    pub fn retained_bytes(&self) -> u64 {
        let first = self.older_segments.first().map(|(h, _)| h.first_lsn).unwrap_or(self.segment.header.first_lsn);
        self.lsn_appended.since(first)
    }

    /// The first LSN still held in the log's segments.
    pub fn first_retained_lsn(&self) -> Lsn {
        self.older_segments.first().map(|(h, _)| h.first_lsn).unwrap_or(self.segment.header.first_lsn)
    }

    /// Segments whose every record is below `lsn` are no longer needed (checkpoints set this;
    /// a mirroring hold keeps what the mirror still needs); they are recycled or removed in the
    /// background.
    pub fn set_retention_lsn(&mut self, lsn: Lsn) {
        self.retention_checkpoint = lsn;
        let lsn = match self.retention_hold {
            Some(hold) => lsn.min(hold),
            None => lsn,
        };
        let lsn = lsn.min(self.lsn_hardened);
        while let Some((header, _)) = self.older_segments.first() {
            if header.end_lsn() > lsn {
                break;
            }
            let (_, path) = self.older_segments.remove(0);
            self.preparer.retire(path);
        }
    }

    /// Segment files currently part of the log, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.older_segments.iter().map(|(_, p)| p.clone()).chain(std::iter::once(self.segment.path.clone())).collect()
    }

    /// Waits for background segment work (tests).
    pub fn drain_background(&self) {
        self.preparer.drain();
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Checks the LSN ordering invariants (cheap; on in release builds).
    pub fn validate(&self) {
        let in_flight_end = self.in_flight.as_ref().map(|f| f.end_lsn).unwrap_or(self.lsn_hardened);
        assert!(
            self.lsn_hardened <= in_flight_end,
            "hardened {} beyond in-flight end {}",
            self.lsn_hardened,
            in_flight_end
        );
        assert!(
            in_flight_end <= self.gathering.batch_lsn || self.gathering.batch_lsn == self.segment.header.first_lsn,
            "in-flight end beyond gathering start"
        );
        assert!(self.gathering.end_lsn() <= self.lsn_appended, "gathering end beyond appended");
        assert!(self.lsn_appended <= self.segment.header.end_lsn(), "appended beyond segment end");
    }
}

impl Drop for LogWriter {
    /// Nobody will harden what is left: waiting threads get an error instead of waiting forever.
    fn drop(&mut self) {
        if self.failed.is_none() && self.lsn_appended > self.lsn_hardened {
            self.inbox.hardened.fail();
        }
        let detail = "the log was closed before this record was appended".to_string();
        if let Some(request) = self.deferred_remote.take() {
            request.reply.set(Err(detail.clone()));
        }
        while let Some(request) = self.inbox.queue.pop() {
            request.reply.set(Err(detail.clone()));
        }
    }
}

/// Before appending after a torn tail: zero everything the torn write can have touched after the
/// cut (keeping the bytes before it in its block), and give a short segment file its full size.
fn repair_tail(info: &recovery::SegmentInfo, report: &RecoveryReport) -> Result<()> {
    let path = &info.path;
    let file =
        std::fs::OpenOptions::new().read(true).write(true).open(path).context(|| format!("open {}", path.display()))?;
    let mut changed = false;
    if info.file_len < info.header.segment_size {
        file.set_len(info.header.segment_size).context(|| format!("extend {}", path.display()))?;
        changed = true;
    }
    if let Some(torn) = report.torn_tail {
        eprintln!(
            "mirrorlog: {}: torn tail cut at {} ({:?}); {} valid record(s) of the unacknowledged last write discarded",
            path.display(),
            torn.cut_at,
            torn.observation,
            torn.valid_records_discarded
        );
        let from = SEGMENT_HEADER_SIZE as u64 + torn.cut_at.since(info.header.first_lsn);
        let to = SEGMENT_HEADER_SIZE as u64
            + recovery::torn_window_end(torn.cut_at, info.header.end_lsn()).since(info.header.first_lsn);
        let zeros = vec![0u8; (to - from) as usize];
        file.write_all_at(&zeros, from).context(|| format!("zero torn tail of {}", path.display()))?;
        changed = true;
    }
    if changed {
        file.sync_all().context(|| format!("fsync {}", path.display()))?;
    }
    Ok(())
}
