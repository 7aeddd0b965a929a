//! One database: its log, data file, buffer pool and B+tree, on one shard.
//!
//! Opening recovers: the log is recovered (torn tail cut, corruption refused), then every whole
//! transaction from the checkpoint's redo LSN on is redone onto the pages (idempotent by page
//! LSN; a page that fails its checksum is restored by the full image the log holds for it, or
//! reported — never served), the redone pages are written and synced, and a checkpoint is taken.
//!
//! A change runs as a transaction: `begin`, tree operations, `commit`. `commit` turns the page
//! changes into redo records followed by a commit record and appends them contiguously; the
//! caller answers the client once the log is hardened to the returned commit LSN.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::ring::{Ring, Token};
use crate::store::btree;
use crate::store::buffer_pool::{BufferPool, PageChange, DATA_SYNC_FRAME, PAGE_WRITE_FRAME_MASK};
use crate::store::control::ControlFile;
use crate::store::data_file::DataFile;
use crate::store::page::{self, PageId, PAGE_SIZE};
use crate::store::redo::{self, Applied};
use crate::wal::record::record_size;
use crate::wal::{recovery, AppendError, DbId, Epoch, LogConfig, LogWriter, Lsn, RecordKind, Wake};

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub dir: PathBuf,
    pub db_id: DbId,
    pub epoch: Epoch,
    pub cache_pages: usize,
    pub segment_size: u64,
    /// A mirror's copy (RESTORING, SQL Server's NORECOVERY): opened by redo of whole
    /// transactions only, never changed by this server (no tree is created, nothing is logged);
    /// its pages belong to the mirror's redo pipeline.
    pub restoring: bool,
}

/// What recovery did when the database opened.
#[derive(Debug, Clone, Default)]
pub struct RedoReport {
    pub redo_from: Lsn,
    pub transactions: u64,
    pub records_applied: u64,
    pub records_skipped: u64,
    pub pages_restored_from_images: u64,
    /// Transactions at the end of the log without their commit record (never acknowledged).
    pub incomplete_transaction_records: u64,
    /// Those records themselves (kind, body, end LSN): a mirror completes the transaction when
    /// the rest of it arrives.
    pub incomplete_transaction: Vec<(RecordKind, Vec<u8>, Lsn)>,
}

/// A transaction whose records are being appended.
struct PendingCommit {
    changes: VecDeque<PageChange>,
    logged: Vec<(usize, Lsn)>,
    seq: u64,
    /// Appended one record at a time (too large for one batch).
    piecewise: bool,
}

/// Where the incremental checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointPhase {
    Idle,
    /// Writing the pages that were dirty at the redo LSN.
    Writing(Lsn),
    /// Every page written; the data file's fdatasync is in flight.
    Syncing(Lsn),
}

/// The outcome of `commit` or `continue_commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitProgress {
    /// Every record is appended; the transaction is durable once the log is hardened here. For
    /// a transaction that changed nothing: what it read is durable once the log is hardened here.
    Appended(Lsn),
    /// The log buffer is full: call `continue_commit` after the next write completes.
    WaitingForSpace,
}

pub struct Database {
    pub log: LogWriter,
    pool: BufferPool,
    control: ControlFile,
    dir: PathBuf,
    tx_seq: u64,
    pending: Option<PendingCommit>,
    /// End of the last commit record appended.
    last_commit: Lsn,
    /// A checkpoint is due: it begins at the next transaction boundary.
    checkpoint_requested: bool,
    checkpoint_phase: CheckpointPhase,
    /// A completed checkpoint whose CHECKPOINT record is still to be logged (at the next
    /// transaction boundary).
    checkpoint_record_due: Option<Lsn>,
    /// A page write, fdatasync or control file write failed: fatal for the database.
    data_failure: Option<String>,
    /// Redo LSN of the last completed checkpoint.
    checkpoint_lsn: Lsn,
    /// The log's end after the last checkpoint (and its CHECKPOINT record): a checkpoint
    /// requested while the log is still there has nothing to do.
    lsn_after_checkpoint: Lsn,
    pub checkpoints: u64,
    pub redo_report: RedoReport,
    restoring: bool,
    cache_pages: usize,
    db_id: DbId,
    /// No new command starts (a manual failover drains the log first).
    pub failover_pending: bool,
    /// SAFETY FULL: pages are written only up to what the mirror hardened too, so a former
    /// principal never holds changes its mirror lacks and can rejoin by cutting its log
    /// (DESIGN: checkpoints in FULL mode).
    mirror_page_limit: Option<Lsn>,
    /// Log a CHECKPOINT record after each periodic checkpoint (a principal does, so its mirror
    /// can checkpoint at the same LSN).
    pub log_checkpoint_records: bool,
}

impl Database {
    /// Opens (creating if new) and recovers the database in `config.dir`; `log_token` is the ring
    /// token of its log writes. Blocks on `ring` for the writes recovery itself makes.
    pub fn open(config: DatabaseConfig, ring: &mut Ring, log_token: Token) -> Result<Self> {
        std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(format!("create {}", config.dir.display()), e))?;
        let mut log_config = LogConfig::new(config.dir.join("log"), config.db_id);
        log_config.epoch = config.epoch;
        log_config.segment_size = config.segment_size;
        let (log, _) = LogWriter::open(log_config, log_token)?;
        let data = DataFile::open(&config.dir.join("data.pages"), config.db_id)?;
        let control = ControlFile::new(&config.dir, config.db_id);
        let mut pool = BufferPool::new(data, config.cache_pages);
        let redo_from = control.read()?;
        let redo_report = redo(&config.dir.join("log"), config.db_id, redo_from, &mut pool)?;
        let mut db = Self {
            log,
            pool,
            control,
            dir: config.dir.clone(),
            tx_seq: 0,
            pending: None,
            last_commit: Lsn::ZERO,
            checkpoint_requested: false,
            checkpoint_phase: CheckpointPhase::Idle,
            checkpoint_record_due: None,
            data_failure: None,
            checkpoint_lsn: redo_from,
            lsn_after_checkpoint: Lsn::ZERO,
            checkpoints: 0,
            redo_report,
            restoring: config.restoring,
            cache_pages: config.cache_pages,
            db_id: config.db_id,
            failover_pending: false,
            mirror_page_limit: None,
            log_checkpoint_records: false,
        };
        db.last_commit = db.log.lsn_hardened();
        db.pool.set_hardened(db.page_write_limit());
        db.pool.raise_unbarriered_bound(db.log.lsn_hardened());
        if config.restoring {
            // Redo wrote and synced the pages it changed; the checkpoint stays where it was (a
            // mirror checkpoints only where its principal did: see `record_mirror_checkpoint`).
            return Ok(db);
        }
        if db.redo_report.incomplete_transaction_records > 0 {
            // The log ends inside a transaction that never committed: close it, so that neither
            // a later redo nor the mirror joins its records to the next transaction.
            db.log.append(redo::TX_ABORT, &[]).map_err(Error::from)?;
            db.harden_blocking(ring)?;
            db.last_commit = db.log.lsn_hardened();
        }
        db.checkpoint_now()?;
        if !btree::exists(&mut db.pool)? {
            db.begin();
            btree::create(&mut db.pool)?;
            let lsn = db.commit_blocking(ring)?;
            debug_assert!(db.log.lsn_hardened() >= lsn);
        }
        Ok(db)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this is a mirror's copy (RESTORING): clients may neither read nor write it.
    pub fn is_restoring(&self) -> bool {
        self.restoring
    }

    /// The mirror's redo pipeline wrote and synced every page changed before `redo_lsn` (a
    /// CHECKPOINT of the principal): record it, and release older log.
    pub fn record_mirror_checkpoint(&mut self, redo_lsn: Lsn) -> Result<()> {
        self.control.write(redo_lsn)?;
        self.log.set_retention_lsn(redo_lsn);
        self.checkpoint_lsn = redo_lsn;
        self.checkpoints += 1;
        Ok(())
    }

    /// Waits on `ring` until everything appended is hardened (start-up only).
    fn harden_blocking(&mut self, ring: &mut Ring) -> Result<()> {
        let mut wakes = Vec::new();
        while self.log.lsn_hardened() < self.log.lsn_appended() {
            self.log.submit(ring)?;
            let mut completions = Vec::new();
            while completions.is_empty() {
                ring.submit_and_wait(1)?;
                ring.reap(&mut completions);
            }
            for c in completions {
                self.log.complete(c, &mut wakes);
            }
            if self.log.is_failed() {
                return Err(Error::LogFailed("the log failed at start-up".into()));
            }
        }
        self.pool.set_hardened(self.page_write_limit());
        Ok(())
    }

    pub fn pool(&mut self) -> &mut BufferPool {
        &mut self.pool
    }

    /// End of the last commit record appended: a reader that saw the database's current state
    /// may answer once the log is hardened here.
    pub fn last_commit(&self) -> Lsn {
        self.last_commit
    }

    /// Whether a transaction is being appended (other changes wait until it is).
    pub fn commit_in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether new commands must wait: a transaction is being appended, or a manual failover
    /// drains the log. (A checkpoint never pauses commands: it is incremental.)
    pub fn paused(&self) -> bool {
        self.pending.is_some() || self.failover_pending
    }

    /// A principal hands its role over (manual failover): with its log fully hardened, its
    /// pages are checkpointed and its cache dropped; from now on it is a mirror copy
    /// (RESTORING) whose pages belong to a redo pipeline.
    pub fn become_restoring(&mut self, ring: &mut Ring, token: Token) -> Result<()> {
        if !self.checkpoint_through(ring, token)? {
            return Err(Error::Mirroring("the log is not drained: cannot hand the role over".into()));
        }
        self.restoring = true;
        self.failover_pending = false;
        self.mirror_page_limit = None;
        self.log_checkpoint_records = false;
        self.pool = BufferPool::new(DataFile::open(&self.dir.join("data.pages"), self.db_id)?, self.cache_pages);
        self.pool.set_hardened(self.page_write_limit());
        self.pool.raise_unbarriered_bound(self.log.lsn_hardened());
        Ok(())
    }

    /// A mirror copy takes the principal's role: its redo pipeline has written and synced every
    /// page (the caller stopped it). The pages are read afresh, a log that ends inside a
    /// transaction gets TX_ABORT, and a checkpoint makes the next change of every page log a
    /// full image. Blocks on `ring` for those writes.
    pub fn become_principal(&mut self, ring: &mut Ring, incomplete_tail: bool) -> Result<()> {
        self.pool = BufferPool::new(DataFile::open(&self.dir.join("data.pages"), self.db_id)?, self.cache_pages);
        self.pool.set_hardened(self.page_write_limit());
        self.pool.raise_unbarriered_bound(self.log.lsn_hardened());
        self.restoring = false;
        if incomplete_tail {
            self.log.append(redo::TX_ABORT, &[]).map_err(Error::from)?;
        }
        self.harden_blocking(ring)?;
        self.last_commit = self.log.lsn_hardened();
        self.checkpoint_now()?;
        if !btree::exists(&mut self.pool)? {
            return Err(Error::Mirroring("the mirror copy holds no tree: nothing was ever shipped to it".into()));
        }
        Ok(())
    }

    pub fn checkpoint_lsn(&self) -> Lsn {
        self.checkpoint_lsn
    }

    /// Asks for a checkpoint: `checkpoint_step` begins it at the next transaction boundary.
    pub fn request_checkpoint(&mut self) {
        self.checkpoint_requested = true;
    }

    /// Whether an incremental checkpoint is in progress.
    pub fn checkpoint_in_progress(&self) -> bool {
        self.checkpoint_phase != CheckpointPhase::Idle
    }

    /// Page writes (checkpoint, cleaner) in flight through the ring.
    pub fn page_writes_in_flight(&self) -> usize {
        self.pool.page_writes_in_flight()
    }

    /// Pages the checkpoint in progress has still to write.
    pub fn checkpoint_pages_left(&self) -> usize {
        self.pool.checkpoint_pages_left()
    }

    /// Moves the incremental checkpoint on (the shard calls it before each sleep; `token` marks
    /// this database's page writes and syncs and leaves its low 32 bits free):
    /// - a requested checkpoint begins at a transaction boundary: its redo LSN is the log's end,
    ///   and the pages dirty then are the ones it writes (new commands go on meanwhile);
    /// - up to `PAGE_WRITES_IN_FLIGHT` of them are written at a time through the ring, each once
    ///   the log (and, in SAFETY FULL, the mirror) has hardened its last change;
    /// - once all are written, the data file is fdatasynced through the ring, and
    ///   `on_checkpoint_completion` records the redo LSN and releases older log.
    ///
    /// Torn-page protection holds throughout: until the checkpoint is recorded, redo after a
    /// crash starts at the previous one, after which every page's first change logged a full
    /// image; from its redo LSN on, the first change of every page logs one again.
    pub fn checkpoint_step(&mut self, ring: &mut Ring, token: Token) -> Result<()> {
        if self.restoring || self.is_failed() {
            return Ok(());
        }
        let between_transactions = self.pending.is_none() && !self.pool.in_tx();
        if between_transactions {
            self.log_checkpoint_record()?;
        }
        if self.checkpoint_phase == CheckpointPhase::Idle && self.checkpoint_requested && between_transactions {
            let redo_lsn = self.log.lsn_appended();
            if redo_lsn == self.lsn_after_checkpoint {
                // Nothing was logged since the last checkpoint (and its record): nothing to do,
                // and no CHECKPOINT record every interval on an idle database.
                self.checkpoint_requested = false;
                return Ok(());
            }
            self.pool.begin_checkpoint(redo_lsn);
            self.checkpoint_requested = false;
            self.checkpoint_phase = CheckpointPhase::Writing(redo_lsn);
        }
        if let CheckpointPhase::Writing(redo_lsn) = self.checkpoint_phase {
            let submitted = self.pool.submit_checkpoint_writes(ring, token);
            self.fail_data_if(submitted)?;
            if self.pool.checkpoint_writes_done() {
                let fd = self.pool.data_file().raw_fd();
                ring.fsync(fd, true, token | DATA_SYNC_FRAME)?;
                self.checkpoint_phase = CheckpointPhase::Syncing(redo_lsn);
            }
        }
        Ok(())
    }

    /// When the cache is full, writes dirty pages ahead of the clock hand through the ring (their
    /// completions go to `on_checkpoint_completion` too), so evictions find clean pages.
    pub fn cleaning_step(&mut self, ring: &mut Ring, token: Token) -> Result<()> {
        if self.restoring || self.is_failed() {
            return Ok(());
        }
        let submitted = self.pool.submit_cleaning_writes(ring, token);
        self.fail_data_if(submitted)
    }

    /// A completion of a `checkpoint_step` operation. A failed page write or fdatasync is fatal
    /// for the database (the kernel may have dropped the pages).
    pub fn on_checkpoint_completion(&mut self, completion: crate::io::ring::Completion) -> Result<()> {
        let frame = completion.token & PAGE_WRITE_FRAME_MASK;
        if frame != DATA_SYNC_FRAME {
            let written = self.pool.complete_page_write(frame as usize, completion.result);
            return self.fail_data_if(written);
        }
        if completion.result < 0 {
            let e = std::io::Error::from_raw_os_error(-completion.result);
            return self.fail_data_if(Err(Error::DataFailed(format!("fdatasync of the data file failed: {e}"))));
        }
        let CheckpointPhase::Syncing(redo_lsn) = self.checkpoint_phase else {
            return Ok(()); // a checkpoint a synchronous one replaced
        };
        self.record_checkpoint(redo_lsn)?;
        self.checkpoint_phase = CheckpointPhase::Idle;
        if self.log_checkpoint_records {
            self.checkpoint_record_due = Some(redo_lsn);
        }
        Ok(())
    }

    /// Logs the CHECKPOINT record of the last completed checkpoint, if one is due (a principal's
    /// mirror checkpoints where it finds it). Between transactions only; if the log buffer is
    /// full it stays due.
    fn log_checkpoint_record(&mut self) -> Result<()> {
        let Some(redo_lsn) = self.checkpoint_record_due else { return Ok(()) };
        match self.log.append(redo::CHECKPOINT, &redo_lsn.0.to_le_bytes()) {
            Ok(end) => {
                self.checkpoint_record_due = None;
                if self.log.lsn_appended() == end && self.checkpoint_lsn == redo_lsn {
                    self.lsn_after_checkpoint = end;
                }
                Ok(())
            }
            Err(AppendError::Full) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps the first data file failure: from then on the database refuses commands.
    fn fail_data_if<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if self.data_failure.is_none() {
                self.data_failure = Some(e.to_string());
            }
        }
        result
    }

    pub fn begin(&mut self) {
        assert!(self.pending.is_none(), "a transaction is still being appended");
        self.pool.begin();
    }

    pub fn abort(&mut self) {
        self.pool.abort();
    }

    /// Logs the transaction's changes. Read-only transactions append nothing and return the last
    /// commit (what they read must be durable before they answer).
    pub fn commit(&mut self) -> Result<CommitProgress> {
        let changes: VecDeque<PageChange> = self.pool.take_changes().into();
        if changes.is_empty() {
            // Nothing to log: the answer depends only on the pages the transaction saw, so it
            // waits for their barriers, not for the last commit (a GET of a hardened key answers
            // at once while other keys' commits are in flight).
            let observed = self.pool.observed();
            self.pool.finish_commit(&[], self.last_commit);
            return Ok(CommitProgress::Appended(observed));
        }
        self.tx_seq += 1;
        self.pending = Some(PendingCommit { changes, logged: Vec::new(), seq: self.tx_seq, piecewise: false });
        self.continue_commit()
    }

    /// Appends what remains of the pending transaction.
    pub fn continue_commit(&mut self) -> Result<CommitProgress> {
        let Some(mut pending) = self.pending.take() else {
            return Ok(CommitProgress::Appended(self.last_commit));
        };
        if !pending.piecewise {
            let total: usize =
                pending.changes.iter().map(|c| record_size(c.body.len())).sum::<usize>() + record_size(8);
            match self.log.reserve(total) {
                Ok(()) => {}
                Err(AppendError::Full) => {
                    self.pending = Some(pending);
                    return Ok(CommitProgress::WaitingForSpace);
                }
                Err(AppendError::TooLarge { .. }) => pending.piecewise = true,
                Err(e) => return Err(self.fail_commit(e)),
            }
        }
        while let Some(change) = pending.changes.front() {
            match self.log.append(change.kind, &change.body) {
                Ok(end) => {
                    pending.logged.push((change.frame, end));
                    pending.changes.pop_front();
                }
                Err(AppendError::Full) => {
                    self.pending = Some(pending);
                    return Ok(CommitProgress::WaitingForSpace);
                }
                Err(e) => return Err(self.fail_commit(e)),
            }
        }
        match self.log.append(redo::TX_COMMIT, &pending.seq.to_le_bytes()) {
            Ok(end) => {
                self.pool.finish_commit(&pending.logged, end);
                self.last_commit = end;
                Ok(CommitProgress::Appended(end))
            }
            Err(AppendError::Full) => {
                self.pending = Some(pending);
                Ok(CommitProgress::WaitingForSpace)
            }
            Err(e) => Err(self.fail_commit(e)),
        }
    }

    /// The log refused the transaction (it failed: fatal for the database). Nothing of the
    /// transaction is kept in the pages, and no transaction stays pending.
    fn fail_commit(&mut self, e: AppendError) -> Error {
        self.pending = None;
        self.pool.abort();
        e.into()
    }

    /// Whether the database's log failed (fatal: every command gets an error).
    pub fn is_failed(&self) -> bool {
        self.log.is_failed() || self.data_failure.is_some()
    }

    /// Why the database failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.data_failure.clone().or_else(|| self.log.is_failed().then(|| "the log failed".to_string()))
    }

    /// Commits and waits on `ring` until the commit is hardened (start-up, tests, tools; the
    /// server waits asynchronously instead).
    pub fn commit_blocking(&mut self, ring: &mut Ring) -> Result<Lsn> {
        let mut progress = self.commit()?;
        let mut wakes = Vec::new();
        loop {
            if let CommitProgress::Appended(lsn) = progress {
                if self.log.lsn_hardened() >= lsn {
                    self.pool.set_hardened(self.page_write_limit());
                    return Ok(lsn);
                }
            }
            self.log.submit(ring)?;
            if self.log.write_in_flight() {
                let mut completions = Vec::new();
                while completions.is_empty() {
                    ring.submit_and_wait(1)?;
                    ring.reap(&mut completions);
                }
                for c in completions {
                    self.log.complete(c, &mut wakes);
                }
                if wakes.iter().any(|w| matches!(w, Wake::Failed(_))) || self.log.is_failed() {
                    return Err(Error::LogFailed("the log failed during a commit".into()));
                }
                wakes.clear();
                self.pool.set_hardened(self.page_write_limit());
            }
            if progress == CommitProgress::WaitingForSpace {
                progress = self.continue_commit()?;
            }
        }
    }

    /// Takes the log's completion and updates the pool's view of the hardened LSN.
    pub fn on_log_completion(&mut self, completion: crate::io::ring::Completion, wakes: &mut Vec<Wake>) {
        self.log.complete(completion, wakes);
        self.pool.set_hardened(self.page_write_limit());
    }

    /// A checkpoint: writes every page changed before the current log end, syncs the data file,
    /// records the redo LSN durably and releases older log segments. Only between transactions
    /// and with the log fully hardened; returns false (doing nothing) otherwise.
    pub fn checkpoint_now(&mut self) -> Result<bool> {
        self.checkpoint(None)
    }

    /// `checkpoint_now` with the page writes going through `ring` in parallel (the shard's ring).
    /// `token` marks them and must leave its low 32 bits free (they carry the frame).
    pub fn checkpoint_through(&mut self, ring: &mut Ring, token: Token) -> Result<bool> {
        self.checkpoint(Some((ring, token)))
    }

    /// Pages may be written up to here: the local hardened LSN, or (SAFETY FULL) what the
    /// mirror hardened if that is less.
    pub fn page_write_limit(&self) -> Lsn {
        let local = self.log.lsn_hardened();
        self.mirror_page_limit.map_or(local, |limit| local.min(limit))
    }

    /// Sets (or lifts) the mirror's part of the page write limit.
    pub fn set_mirror_page_limit(&mut self, limit: Option<Lsn>) {
        self.mirror_page_limit = limit;
        self.pool.set_hardened(self.page_write_limit());
    }

    fn checkpoint(&mut self, ring: Option<(&mut Ring, Token)>) -> Result<bool> {
        if self.pending.is_some() || self.pool.in_tx() || self.page_write_limit() < self.log.lsn_appended() {
            return Ok(false);
        }
        if ring.is_none() && self.pool.page_writes_in_flight() > 0 {
            return Ok(false); // only the ring can wait for them
        }
        let redo_lsn = self.log.lsn_appended();
        // From now on the first change of any page logs a full image (torn-page protection).
        self.pool.set_checkpoint_lsn(redo_lsn);
        self.pool.set_hardened(self.page_write_limit());
        // An incremental checkpoint in progress is replaced by this one (which writes every
        // dirty page); its writes in flight are waited for first.
        self.checkpoint_phase = CheckpointPhase::Idle;
        self.checkpoint_requested = false;
        let written = match ring {
            Some((ring, token)) => self.pool.write_dirty_through(ring, token),
            None => self.pool.write_dirty(),
        };
        let left = self.fail_data_if(written)?;
        debug_assert_eq!(left, 0, "the log is fully hardened");
        let synced = self.pool.data_file().sync();
        self.fail_data_if(synced)?;
        self.record_checkpoint(redo_lsn)?;
        Ok(true)
    }

    /// Every change before `redo_lsn` is in the synced data file: records it durably (a failure
    /// is fatal) and releases older log.
    fn record_checkpoint(&mut self, redo_lsn: Lsn) -> Result<()> {
        let recorded = self.control.write(redo_lsn);
        self.fail_data_if(recorded)?;
        self.log.set_retention_lsn(redo_lsn);
        self.checkpoint_lsn = redo_lsn;
        self.lsn_after_checkpoint = redo_lsn;
        self.checkpoints += 1;
        Ok(())
    }
}

/// The database in `dir` as crash recovery would find it, computed in memory without changing
/// any file: every page that redo from the checkpoint would write, with its content, beside the
/// report (`inspect pages` walks the tree over these and the data file's other pages).
pub fn recovered_pages(dir: &Path, db_id: DbId, data: &DataFile) -> Result<(RedoReport, Vec<AlignedBuf>)> {
    let from = ControlFile::new(dir, db_id).read()?;
    let mut pool = BufferPool::new(DataFile::open_read_only(data.path(), db_id)?, 16);
    let (report, pages) = redo_in_memory(&dir.join("log"), db_id, from, &mut pool)?;
    let mut out = Vec::with_capacity(pages.len());
    for (_, (buf, trusted)) in pages {
        if !trusted {
            return Err(Error::PageCorrupt(page::PageError::ChecksumMismatch(page::page_id(&buf))));
        }
        out.push(buf);
    }
    Ok((report, out))
}

/// Redo from `from`: applies every whole transaction's page records to the data file's pages.
fn redo(log_dir: &Path, db_id: DbId, from: Lsn, pool: &mut BufferPool) -> Result<RedoReport> {
    let (report, pages) = redo_in_memory(log_dir, db_id, from, pool)?;
    for (_, (mut buf, trusted)) in pages {
        if !trusted {
            return Err(Error::PageCorrupt(page::PageError::ChecksumMismatch(page::page_id(&buf))));
        }
        pool.data_file().write_page(&mut buf)?;
    }
    pool.data_file().sync()?;
    Ok(report)
}

/// The pages redo from `from` changes, with whether each is trusted (verified on disk or
/// restored from a full image), and the report.
type RedonePages = HashMap<PageId, (AlignedBuf, bool)>;

fn redo_in_memory(log_dir: &Path, db_id: DbId, from: Lsn, pool: &mut BufferPool) -> Result<(RedoReport, RedonePages)> {
    let mut report = RedoReport { redo_from: from, ..Default::default() };
    let mut pages: HashMap<PageId, (AlignedBuf, bool)> = HashMap::new();
    let mut open_tx: Vec<(RecordKind, Vec<u8>, Lsn)> = Vec::new();
    let mut failure: Option<Error> = None;
    recovery::scan(log_dir, Some(db_id), |header, body| {
        let end = header.lsn.advance(record_size(body.len()) as u64);
        if header.lsn < from || failure.is_some() {
            return;
        }
        match header.kind {
            redo::PAGE_IMAGE | redo::PAGE_DIFF => open_tx.push((header.kind, body.to_vec(), end)),
            redo::TX_ABORT => open_tx.clear(),
            redo::TX_COMMIT => {
                report.transactions += 1;
                for (kind, body, end) in open_tx.drain(..) {
                    if let Err(e) = redo_one(kind, &body, end, pool, &mut pages, &mut report) {
                        failure = Some(e);
                        return;
                    }
                }
            }
            _ => {}
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    report.incomplete_transaction_records = open_tx.len() as u64;
    report.incomplete_transaction = open_tx;
    Ok((report, pages))
}

fn redo_one(
    kind: RecordKind,
    body: &[u8],
    end: Lsn,
    pool: &mut BufferPool,
    pages: &mut HashMap<PageId, (AlignedBuf, bool)>,
    report: &mut RedoReport,
) -> Result<()> {
    let change = redo::decode(kind, body).map_err(|e| Error::LogCorrupt { lsn: end, detail: e.to_string() })?;
    let id = change.page();
    if let std::collections::hash_map::Entry::Vacant(slot) = pages.entry(id) {
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        let trusted = pool.read_from_disk(id, &mut buf)?.is_ok();
        if !trusted {
            page::init(&mut buf, page::PageType::Free, id);
        }
        slot.insert((buf, trusted));
    }
    let (buf, trusted) = pages.get_mut(&id).expect("inserted above");
    match redo::apply(&change, end, &mut buf[..PAGE_SIZE], *trusted) {
        Applied::Applied => {
            report.records_applied += 1;
            if !*trusted {
                report.pages_restored_from_images += 1;
            }
            *trusted = true;
            if page::page_id(&buf[..PAGE_SIZE]) != id {
                return Err(Error::LogCorrupt { lsn: end, detail: format!("image for {id} holds another page") });
            }
        }
        Applied::AlreadyNewer => report.records_skipped += 1,
        Applied::NeedsImage => {
            return Err(Error::PageCorrupt(page::PageError::ChecksumMismatch(id)));
        }
    }
    Ok(())
}
