//! The mirror's redo pipeline: the shard thread (the *dispatcher*) routes the page records of
//! whole, hardened transactions to K redo worker threads, which redo them onto the mirror's pages.
//!
//! Routing is by page (`page_id % K`) over one bounded SPSC ring per worker
//! (`redo_ring`), so each page sees its records in LSN order and no two workers share a page.
//! Each worker owns a bounded cache of its pages and its own O_DIRECT handle of the data file.
//! Only records already hardened in the mirror's log are dispatched, so a worker may write a dirty
//! page at any time without breaking write-ahead logging.
//!
//! Progress flows back through atomics, never through a lock the dispatcher waits on:
//! ```text
//! mark(lsn)        every worker, after all it was given before the mark, publishes lsn;
//!                  lsn_redone = min over workers  (<= the last mark pushed <= lsn_hardened)
//! checkpoint(lsn)  every worker writes the pages dirty when it reaches the checkpoint, then
//!                  counts the checkpoint done (and publishes lsn as a mark); once all have,
//!                  checkpoint_complete fdatasyncs the file and returns Some(lsn): the caller
//!                  may record the checkpoint durably
//! ```
//! A worker writes a checkpoint's pages incrementally: one page every few records it redoes, and
//! many at a time whenever its ring is empty. Redo goes on meanwhile (a page changed after the
//! checkpoint item is written with those changes too: harmless), so a checkpoint never stops
//! redo for the time it takes to write every dirty page.
//! Failures: the first error of any worker (a read or write error, an undecodable record, a diff
//! for a page that failed verification, an image holding another page) is kept; the failed worker
//! drops its cache, writes nothing more and discards what follows (its marks too, so the
//! watermark stops), and every later call of the dispatcher returns the error.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::open_direct;
use crate::mirroring::redo_ring::{self, Consumer, Producer};
use crate::store::data_file::DataFile;
use crate::store::page::{self, PageError, PageId, PageType, PAGE_SIZE};
use crate::store::redo::{self, Applied, PAGE_DIFF, PAGE_IMAGE};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};
use crate::wal::{DbId, Lsn, RecordKind};

/// How long an idle worker sleeps before looking at its ring again. The dispatcher unparks every
/// worker after each dispatch round (`try_mark`) and an unpark before the park makes the park return at once
/// (`std::thread::park`: "if the token is available, it will be consumed and return
/// immediately"), so no wake-up is lost: the timeout is only a backstop.
const WORKER_PARK_TIMEOUT: Duration = Duration::from_millis(5);
/// How long `stop` waits between attempts to queue the stop request on a full ring.
const STOP_RETRY: Duration = Duration::from_micros(200);

/// One page redo record of the mirror's hardened log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedoRecord {
    /// `redo::PAGE_IMAGE` or `redo::PAGE_DIFF`.
    pub kind: RecordKind,
    pub body: Vec<u8>,
    pub end_lsn: Lsn,
}

enum Item {
    Record(RedoRecord),
    Mark(Lsn),
    Checkpoint(Lsn),
    Stop,
}

/// What one worker publishes to the dispatcher and to watermark readers.
struct WorkerProgress {
    lsn_redone: AtomicU64,
    checkpoints_done: AtomicU64,
    items_done: AtomicU64,
    bytes_done: AtomicU64,
}

struct Failure {
    message: String,
    error: Error,
}

struct Shared {
    workers: Box<[WorkerProgress]>,
    failure: Mutex<Option<Failure>>,
    /// Set when the pipeline is dropped without `stop`: workers exit without writing.
    abandoned: crate::sync::AtomicBool,
}

impl Shared {
    fn lsn_redone(&self) -> Lsn {
        Lsn(self.workers.iter().map(|w| w.lsn_redone.load(Ordering::Acquire)).min().expect("at least one worker"))
    }

    /// Keeps the first failure; later ones are consequences.
    fn fail(&self, message: String, error: Error) {
        let mut failure = self.failure.lock().expect("failure lock");
        if failure.is_none() {
            *failure = Some(Failure { message, error });
        }
    }

    fn failure(&self) -> Option<(String, Error)> {
        let failure = self.failure.lock().expect("failure lock");
        failure.as_ref().map(|f| (f.message.clone(), replicate(&f.error)))
    }
}

/// A copy of a worker's error for each caller that asks (`Error` is not `Clone`: an `io::Error`
/// is rebuilt from its kind and message).
fn replicate(error: &Error) -> Error {
    match error {
        Error::Io { context, source } => {
            Error::io(context.clone(), std::io::Error::new(source.kind(), source.to_string()))
        }
        Error::LogCorrupt { lsn, detail } => Error::LogCorrupt { lsn: *lsn, detail: detail.clone() },
        Error::PageCorrupt(e) => Error::PageCorrupt(e.clone()),
        Error::LogFailed(detail) => Error::LogFailed(detail.clone()),
        other => Error::LogFailed(other.to_string()),
    }
}

/// The redo watermark, readable from any thread.
#[derive(Clone)]
pub struct RedoWatermark {
    shared: Arc<Shared>,
}

impl RedoWatermark {
    /// Every record with an end LSN at or below this is redone onto the worker's pages (in its
    /// cache or on disk; durable only after a checkpoint).
    pub fn get(&self) -> Lsn {
        self.shared.lsn_redone()
    }
}

pub struct RedoPipeline {
    db_id: DbId,
    /// The dispatcher's handle of the data file: it created the file and fdatasyncs it.
    data: DataFile,
    producers: Vec<Producer<Item>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    items_queued: Vec<u64>,
    bytes_queued: Vec<u64>,
    /// End LSN of the last record dispatched (records must come in log order).
    lsn_dispatched: Lsn,
    /// The last mark (or checkpoint) queued: the watermark never passes it.
    lsn_marked: Lsn,
    checkpoints_requested: u64,
    checkpoint_pending: Option<Lsn>,
    /// Scratch: each worker's share of the transaction being dispatched.
    shares: Vec<usize>,
}

impl RedoPipeline {
    /// Starts `workers` threads (named `redo-{db}-{i}`) over the data file at `data_path` (created
    /// if missing). The watermark starts at `lsn_redone` (the checkpoint redo resumes from).
    pub fn start(
        data_path: &Path,
        db_id: DbId,
        lsn_redone: Lsn,
        workers: usize,
        cache_pages_per_worker: usize,
        ring_capacity: usize,
    ) -> Result<Self> {
        assert!(workers >= 1, "the redo pipeline needs at least one worker");
        assert!(cache_pages_per_worker >= 1, "a redo worker caches at least one page");
        let data = DataFile::open(data_path, db_id)?;
        let progress = (0..workers)
            .map(|_| WorkerProgress {
                lsn_redone: AtomicU64::new(lsn_redone.0),
                checkpoints_done: AtomicU64::new(0),
                items_done: AtomicU64::new(0),
                bytes_done: AtomicU64::new(0),
            })
            .collect();
        let shared = Arc::new(Shared {
            workers: progress,
            failure: Mutex::new(None),
            abandoned: crate::sync::AtomicBool::new(false),
        });
        let mut pipeline = Self {
            db_id,
            data,
            producers: Vec::with_capacity(workers),
            threads: Vec::with_capacity(workers),
            shared,
            items_queued: vec![0; workers],
            bytes_queued: vec![0; workers],
            lsn_dispatched: lsn_redone,
            lsn_marked: lsn_redone,
            checkpoints_requested: 0,
            checkpoint_pending: None,
            shares: vec![0; workers],
        };
        for index in 0..workers {
            let (producer, ring) = redo_ring::channel(ring_capacity);
            let worker = Worker {
                index,
                db_id,
                file: open_direct(data_path)?,
                path: data_path.to_path_buf(),
                pages: HashMap::with_capacity(cache_pages_per_worker),
                cache_pages_max: cache_pages_per_worker,
                clock: 0,
                shared: pipeline.shared.clone(),
                ring,
                failed: false,
                checkpoint: None,
                items_since_page_write: 0,
            };
            let thread = thread::Builder::new()
                .name(format!("redo-{db_id}-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::io(format!("spawn redo worker {index} of database {db_id}"), e))?;
            pipeline.producers.push(producer);
            pipeline.threads.push(thread);
        }
        Ok(pipeline)
    }

    pub fn workers(&self) -> usize {
        self.producers.len()
    }

    /// Routes the page records of one whole, hardened transaction, in log order, all or nothing:
    /// returns Ok(false) and queues nothing if some worker's ring lacks room for its share (retry
    /// later). On Ok(true) `records` is left empty. Records of one page keep their order.
    pub fn try_dispatch(&mut self, records: &mut Vec<RedoRecord>) -> Result<bool> {
        self.check_failure()?;
        self.shares.fill(0);
        let mut lsn = self.lsn_dispatched;
        for record in records.iter() {
            if record.kind != PAGE_IMAGE && record.kind != PAGE_DIFF {
                let detail = format!("record kind {} is not a page redo record", record.kind.0);
                return Err(Error::LogCorrupt { lsn: record.end_lsn, detail });
            }
            if record.end_lsn <= lsn {
                let detail = format!("redo record ends at {} after a record ending at {lsn}", record.end_lsn);
                return Err(Error::LogCorrupt { lsn: record.end_lsn, detail });
            }
            lsn = record.end_lsn;
            let worker = self.route(record)?;
            self.shares[worker] += 1;
        }
        if self.producers.iter().zip(&self.shares).any(|(producer, &share)| producer.free_slots() < share) {
            return Ok(false);
        }
        for record in records.drain(..) {
            let worker = self.route(&record).expect("routed above");
            self.items_queued[worker] += 1;
            self.bytes_queued[worker] += record.body.len() as u64;
            let pushed = self.producers[worker].try_push(Item::Record(record));
            assert!(pushed.is_ok(), "free_slots is a lower bound: the push has room");
        }
        self.lsn_dispatched = lsn;
        // No wake-up per transaction: the mark that ends each dispatch round (`try_mark`) wakes
        // every worker once (a wake-up of a parked thread is a context switch; the mirror
        // dispatches thousands of transactions per second under load).
        Ok(true)
    }

    /// Marks `lsn` on every worker: once each has processed everything queued before the mark,
    /// the watermark reaches `lsn`. Returns Ok(false) if a ring is full (retry later).
    pub fn try_mark(&mut self, lsn: Lsn) -> Result<bool> {
        assert!(lsn >= self.lsn_marked, "redo mark {lsn} is below the previous mark {}", self.lsn_marked);
        self.check_failure()?;
        if !self.push_to_all(|| Item::Mark(lsn)) {
            return Ok(false);
        }
        self.lsn_marked = lsn;
        Ok(true)
    }

    /// The redo watermark: the minimum over workers of the last mark each processed.
    pub fn lsn_redone(&self) -> Lsn {
        self.shared.lsn_redone()
    }

    /// A handle that reads the watermark from any thread.
    pub fn watermark(&self) -> RedoWatermark {
        RedoWatermark { shared: self.shared.clone() }
    }

    /// Asks every worker, after everything queued before, to write all its dirty pages (the
    /// checkpoint also marks `lsn`: every record at or below it must have been dispatched). The
    /// principal's checkpoints are incremental, so `lsn` (its redo LSN) is usually below marks
    /// already queued: the watermark never moves back for it.
    /// Returns Ok(false) if a ring is full (retry later). Poll `checkpoint_complete`; one
    /// checkpoint at a time.
    pub fn try_begin_checkpoint(&mut self, lsn: Lsn) -> Result<bool> {
        assert!(self.checkpoint_pending.is_none(), "a redo checkpoint is already in flight");
        self.check_failure()?;
        if !self.push_to_all(|| Item::Checkpoint(lsn)) {
            return Ok(false);
        }
        self.lsn_marked = self.lsn_marked.max(lsn);
        self.checkpoints_requested += 1;
        self.checkpoint_pending = Some(lsn);
        Ok(true)
    }

    /// Whether a checkpoint is in flight (a second one waits until `checkpoint_complete` has
    /// returned the first).
    pub fn checkpoint_in_flight(&self) -> bool {
        self.checkpoint_pending.is_some()
    }

    /// Polls the checkpoint in flight: Ok(None) while some worker is still writing (or none is in
    /// flight); once every worker has written its pages, fdatasyncs the data file (the only
    /// blocking call, one per checkpoint) and returns Some(lsn): the caller may now record the
    /// checkpoint durably. A failed fdatasync is fatal (the kernel may have dropped the pages).
    pub fn checkpoint_complete(&mut self) -> Result<Option<Lsn>> {
        self.check_failure()?;
        let Some(lsn) = self.checkpoint_pending else { return Ok(None) };
        let requested = self.checkpoints_requested;
        if self.shared.workers.iter().any(|w| w.checkpoints_done.load(Ordering::Acquire) < requested) {
            return Ok(None);
        }
        // fsync(2): fdatasync flushes the file's data, whichever descriptor wrote it, and the
        // device's write cache; the workers' pwrites completed before their Release of the count.
        if let Err(e) = self.data.sync() {
            self.shared.fail(format!("redo checkpoint at {lsn} of database {}: {e}", self.db_id), replicate(&e));
            return Err(e);
        }
        self.checkpoint_pending = None;
        Ok(Some(lsn))
    }

    /// The first failure of any worker, if one failed.
    pub fn failure(&self) -> Option<String> {
        if let Some((message, _)) = self.shared.failure() {
            return Some(message);
        }
        self.exited_worker().map(|index| format!("redo worker {index} of database {} exited (panicked)", self.db_id))
    }

    /// Items (records, marks, checkpoints) queued and not yet processed.
    pub fn queued_items(&self) -> u64 {
        let done = self.shared.workers.iter().map(|w| w.items_done.load(Ordering::Acquire));
        self.items_queued.iter().zip(done).map(|(queued, done)| queued - done).sum()
    }

    /// Bytes of record bodies queued and not yet processed: the mirror's redo queue.
    pub fn queued_bytes(&self) -> u64 {
        let done = self.shared.workers.iter().map(|w| w.bytes_done.load(Ordering::Acquire));
        self.bytes_queued.iter().zip(done).map(|(queued, done)| queued - done).sum()
    }

    /// Stops the workers after they drain their rings, writes every dirty page and fdatasyncs.
    /// Blocks (it is the end of the pipeline). Returns the first failure, if any.
    pub fn stop(mut self) -> Result<()> {
        for (index, producer) in self.producers.iter_mut().enumerate() {
            self.items_queued[index] += 1;
            let mut item = Item::Stop;
            while let Err(back) = producer.try_push(item) {
                if self.threads[index].is_finished() {
                    break;
                }
                item = back;
                self.threads[index].thread().unpark();
                thread::sleep(STOP_RETRY);
            }
            self.threads[index].thread().unpark();
        }
        let mut panicked = None;
        for (index, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            if thread.join().is_err() && panicked.is_none() {
                panicked = Some(index);
            }
        }
        let synced = self.data.sync();
        if let Some((_, error)) = self.shared.failure() {
            return Err(error);
        }
        if let Some(index) = panicked {
            return Err(Error::LogFailed(format!("redo worker {index} of database {} panicked", self.db_id)));
        }
        synced
    }

    fn route(&self, record: &RedoRecord) -> Result<usize> {
        let Some(id) = record.body.get(..8) else {
            let detail = "page redo record too short for its page id".to_string();
            return Err(Error::LogCorrupt { lsn: record.end_lsn, detail });
        };
        let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
        Ok((id % self.producers.len() as u64) as usize)
    }

    /// Queues one item on every ring, or none if some ring is full.
    fn push_to_all(&mut self, item: impl Fn() -> Item) -> bool {
        if self.producers.iter().any(|p| p.free_slots() == 0) {
            return false;
        }
        for (worker, producer) in self.producers.iter_mut().enumerate() {
            self.items_queued[worker] += 1;
            assert!(producer.try_push(item()).is_ok(), "free_slots is a lower bound: the push has room");
            self.threads[worker].thread().unpark();
        }
        true
    }

    fn exited_worker(&self) -> Option<usize> {
        self.threads.iter().position(|t| t.is_finished())
    }

    fn check_failure(&self) -> Result<()> {
        if let Some((_, error)) = self.shared.failure() {
            return Err(error);
        }
        match self.exited_worker() {
            Some(index) => Err(Error::LogFailed(format!("redo worker {index} of database {} exited", self.db_id))),
            None => Ok(()),
        }
    }
}

impl Drop for RedoPipeline {
    /// Dropped without `stop` (an error path): the workers exit without writing; redo restarts
    /// from the last checkpoint.
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.abandoned.store(true, Ordering::Release);
        for thread in std::mem::take(&mut self.threads) {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

struct CachedPage {
    buf: AlignedBuf,
    /// Why the page read from disk cannot be trusted; None once verified or restored by an image.
    untrusted: Option<PageError>,
    dirty: bool,
    last_used: u64,
}

struct Worker {
    index: usize,
    db_id: DbId,
    file: File,
    path: PathBuf,
    pages: HashMap<PageId, CachedPage>,
    cache_pages_max: usize,
    /// Counts records, to order pages by last use.
    clock: u64,
    shared: Arc<Shared>,
    ring: Consumer<Item>,
    failed: bool,
    /// The checkpoint in progress: its LSN and the pages still to write (popped from the end).
    checkpoint: Option<(Lsn, Vec<PageId>)>,
    /// Items processed since the last checkpoint page write.
    items_since_page_write: usize,
}

/// While a checkpoint is in progress, one of its pages is written every this many items redone.
const CHECKPOINT_ITEMS_PER_PAGE: usize = 4;
/// Pages of a checkpoint written in one go while the worker's ring is empty.
const CHECKPOINT_PAGES_WHEN_IDLE: usize = 32;

impl Worker {
    fn run(mut self) {
        loop {
            if self.shared.abandoned.load(Ordering::Acquire) {
                return;
            }
            let Some(item) = self.ring.try_pop() else {
                if self.checkpoint.is_some() && !self.failed {
                    // Idle: the checkpoint's pages go out many at a time.
                    if let Err(error) = self.checkpoint_step(CHECKPOINT_PAGES_WHEN_IDLE) {
                        self.fail(error);
                    }
                    continue;
                }
                thread::park_timeout(WORKER_PARK_TIMEOUT);
                continue;
            };
            let bytes = match &item {
                Item::Record(record) => record.body.len() as u64,
                _ => 0,
            };
            let stop = matches!(item, Item::Stop);
            if !self.failed {
                if let Err(error) = self.process(item) {
                    self.fail(error);
                }
            }
            if self.checkpoint.is_some() && !self.failed {
                self.items_since_page_write += 1;
                if self.items_since_page_write >= CHECKPOINT_ITEMS_PER_PAGE {
                    self.items_since_page_write = 0;
                    if let Err(error) = self.checkpoint_step(1) {
                        self.fail(error);
                    }
                }
            }
            let progress = &self.shared.workers[self.index];
            progress.bytes_done.fetch_add(bytes, Ordering::Release);
            progress.items_done.fetch_add(1, Ordering::Release);
            if stop {
                return;
            }
        }
    }

    fn fail(&mut self, error: Error) {
        self.failed = true;
        self.pages.clear();
        let message = format!("redo worker {} of database {}: {error}", self.index, self.db_id);
        self.shared.fail(message, error);
    }

    fn process(&mut self, item: Item) -> Result<()> {
        match item {
            Item::Record(record) => self.redo(&record)?,
            Item::Mark(lsn) => self.shared.workers[self.index].lsn_redone.store(lsn.0, Ordering::Release),
            Item::Checkpoint(lsn) => {
                assert!(self.checkpoint.is_none(), "one checkpoint at a time (the dispatcher waits for the last)");
                let mut dirty: Vec<PageId> = self.pages.iter().filter(|(_, p)| p.dirty).map(|(&id, _)| id).collect();
                dirty.sort_unstable_by(|a, b| b.cmp(a)); // popped from the end: ascending
                self.checkpoint = Some((lsn, dirty));
                self.checkpoint_step(0)?;
            }
            Item::Stop => {
                self.write_dirty()?;
                self.checkpoint_step(0)?; // every page is written: a checkpoint in progress is done
            }
        }
        Ok(())
    }

    /// Applies one record, with `store::database::redo_one`'s semantics.
    fn redo(&mut self, record: &RedoRecord) -> Result<()> {
        let end = record.end_lsn;
        let change = redo::decode(record.kind, &record.body)
            .map_err(|e| Error::LogCorrupt { lsn: end, detail: e.to_string() })?;
        let id = change.page();
        self.load(id, end)?;
        self.clock += 1;
        let page = self.pages.get_mut(&id).expect("loaded above");
        page.last_used = self.clock;
        match redo::apply(&change, end, &mut page.buf[..PAGE_SIZE], page.untrusted.is_none()) {
            Applied::Applied => {
                let found = page::page_id(&page.buf[..PAGE_SIZE]);
                if found != id {
                    self.pages.remove(&id);
                    let detail = format!("the image for {id} holds {found}");
                    return Err(Error::LogCorrupt { lsn: end, detail });
                }
                page.untrusted = None;
                page.dirty = true;
            }
            Applied::AlreadyNewer => {}
            Applied::NeedsImage => {
                // Never write a guess: the page stays as it is on disk, and redo stops here.
                let reason = page.untrusted.clone().expect("only an untrusted page needs an image");
                return Err(Error::PageCorrupt(reason));
            }
        }
        Ok(())
    }

    /// Brings page `id` into the cache, reading and verifying it; a page that fails verification
    /// (torn, corrupt, never written, beyond the end of the file) is kept untrusted.
    fn load(&mut self, id: PageId, end: Lsn) -> Result<()> {
        if self.pages.contains_key(&id) {
            return Ok(());
        }
        let Some(offset) = id.0.checked_mul(PAGE_SIZE as u64) else {
            return Err(Error::LogCorrupt { lsn: end, detail: format!("{id} lies beyond any data file") });
        };
        if self.pages.len() >= self.cache_pages_max {
            self.evict()?;
        }
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        let read = loop {
            match self.file.read_at(&mut buf[..PAGE_SIZE], offset) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read {id} of {}", self.path.display()), e)),
                Ok(n) => break n,
            }
        };
        // A read at or across the end of the file is short: the rest does not exist yet.
        buf[read..PAGE_SIZE].fill(0);
        let untrusted = page::verify(&buf[..PAGE_SIZE], self.db_id, id).err();
        if untrusted.is_some() {
            page::init(&mut buf[..PAGE_SIZE], PageType::Free, id);
        }
        self.pages.insert(id, CachedPage { buf, untrusted, dirty: false, last_used: self.clock });
        Ok(())
    }

    /// Drops a quarter of the cache, clean pages first, least recently used first; dirty victims
    /// are written first (their records are hardened, so this obeys write-ahead logging).
    fn evict(&mut self) -> Result<()> {
        let mut order: Vec<(bool, u64, PageId)> =
            self.pages.iter().map(|(&id, p)| (p.dirty, p.last_used, id)).collect();
        order.sort_unstable();
        let victims = (self.cache_pages_max / 4).clamp(1, order.len());
        for &(_, _, id) in &order[..victims] {
            let mut page = self.pages.remove(&id).expect("listed above");
            if page.dirty {
                write_page(&self.file, &self.path, self.db_id, id, &mut page.buf)?;
            }
        }
        Ok(())
    }

    /// Writes up to `pages` more of the checkpoint's pages (those evicted meanwhile were written
    /// then); once none is left, counts the checkpoint done.
    fn checkpoint_step(&mut self, pages: usize) -> Result<()> {
        let Some((lsn, left)) = self.checkpoint.as_mut() else { return Ok(()) };
        let lsn = *lsn;
        let mut written = 0;
        while written < pages {
            let Some(id) = left.pop() else { break };
            if let Some(page) = self.pages.get_mut(&id).filter(|p| p.dirty) {
                write_page(&self.file, &self.path, self.db_id, id, &mut page.buf)?;
                page.dirty = false;
                written += 1;
            }
        }
        // Skip pages written meanwhile (evicted, or clean again), so that `done` is exact.
        while let Some(&id) = left.last() {
            if self.pages.get(&id).is_some_and(|p| p.dirty) {
                break;
            }
            left.pop();
        }
        if left.is_empty() {
            self.checkpoint = None;
            let progress = &self.shared.workers[self.index];
            progress.lsn_redone.fetch_max(lsn.0, Ordering::Release);
            progress.checkpoints_done.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    fn write_dirty(&mut self) -> Result<()> {
        let mut dirty: Vec<PageId> = self.pages.iter().filter(|(_, p)| p.dirty).map(|(&id, _)| id).collect();
        dirty.sort_unstable();
        for id in dirty {
            let page = self.pages.get_mut(&id).expect("listed above");
            write_page(&self.file, &self.path, self.db_id, id, &mut page.buf)?;
            page.dirty = false;
        }
        Ok(())
    }
}

/// Seals and writes one page at `id * PAGE_SIZE` (O_DIRECT: the buffer, length and offset are
/// block-aligned; a write past the end extends the file). Not durable until fdatasync.
fn write_page(file: &File, path: &Path, db_id: DbId, id: PageId, buf: &mut AlignedBuf) -> Result<()> {
    assert_eq!(page::page_id(&buf[..PAGE_SIZE]), id, "a page is written only at its own place");
    page::seal(&mut buf[..PAGE_SIZE], db_id);
    file.write_all_at(&buf[..PAGE_SIZE], id.0 * PAGE_SIZE as u64)
        .map_err(|e| Error::io(format!("write {id} of {}", path.display()), e))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    const DB: DbId = DbId(11);
    const PAGES: u64 = 50;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A transaction's page records and the LSN its commit ends at.
    type Tx = (Vec<RedoRecord>, Lsn);

    /// Random transactions over `PAGES` pages, as a principal would log them: the first touch of a
    /// page is an image, later touches are diffs against the page as the principal holds it.
    fn workload(seed: u64, count: usize) -> Vec<Tx> {
        let mut rng = Rng(seed);
        let mut pages: HashMap<PageId, Vec<u8>> = HashMap::new();
        let mut lsn = Lsn(4096);
        let mut txs = Vec::new();
        for _ in 0..count {
            let mut records = Vec::new();
            for _ in 0..1 + rng.below(5) {
                let id = PageId(rng.below(PAGES));
                let mut body = Vec::new();
                let kind = match pages.get_mut(&id) {
                    None => {
                        let mut fresh = vec![0u8; PAGE_SIZE];
                        page::init(&mut fresh, PageType::Leaf, id);
                        let fill = rng.next() as u8;
                        fresh[PAGE_HEADER_END..].iter_mut().enumerate().for_each(|(i, b)| *b = fill ^ i as u8);
                        redo::encode_image(&fresh, &mut body);
                        pages.insert(id, fresh);
                        PAGE_IMAGE
                    }
                    Some(current) => {
                        let before = current.clone();
                        for _ in 0..1 + rng.below(4) {
                            let at = PAGE_HEADER_END + rng.below((PAGE_SIZE - PAGE_HEADER_END) as u64) as usize;
                            let len = 1 + rng.below(200) as usize;
                            let value = rng.next() as u8;
                            current[at..(at + len).min(PAGE_SIZE)].fill(value);
                        }
                        if !redo::encode_diff(&before, current, &mut body) {
                            continue;
                        }
                        PAGE_DIFF
                    }
                };
                lsn = lsn.advance(24 + body.len() as u64);
                records.push(RedoRecord { kind, body, end_lsn: lsn });
            }
            lsn = lsn.advance(32);
            txs.push((records, lsn));
        }
        let diffs = txs.iter().flat_map(|(records, _)| records).filter(|r| r.kind == PAGE_DIFF).count();
        assert!(diffs > count, "the workload is mostly diffs ({diffs})");
        txs
    }

    const PAGE_HEADER_END: usize = page::PAGE_HEADER_SIZE;

    /// The same records applied one after another, as `store::database::redo_one` would.
    fn reference(txs: &[Tx]) -> HashMap<PageId, Vec<u8>> {
        let mut pages: HashMap<PageId, (Vec<u8>, bool)> = HashMap::new();
        for record in txs.iter().flat_map(|(records, _)| records) {
            let change = redo::decode(record.kind, &record.body).unwrap();
            let (page, trusted) = pages.entry(change.page()).or_insert_with(|| {
                let mut fresh = vec![0u8; PAGE_SIZE];
                page::init(&mut fresh, PageType::Free, change.page());
                (fresh, false)
            });
            assert_eq!(redo::apply(&change, record.end_lsn, page, *trusted), Applied::Applied);
            *trusted = true;
        }
        pages.into_iter().map(|(id, (page, _))| (id, page)).collect()
    }

    fn read_disk(path: &Path, id: PageId) -> std::result::Result<Vec<u8>, PageError> {
        let file = std::fs::read(path).unwrap();
        let at = id.0 as usize * PAGE_SIZE;
        let mut page = vec![0u8; PAGE_SIZE];
        if at < file.len() {
            page.copy_from_slice(&file[at..at + PAGE_SIZE]);
        }
        page::verify(&page, DB, id).map(|_| page)
    }

    fn assert_disk_matches(path: &Path, expected: &HashMap<PageId, Vec<u8>>) {
        for (id, want) in expected {
            let got = read_disk(path, *id).unwrap_or_else(|e| panic!("{id} on disk: {e}"));
            assert!(got[4..] == want[4..], "{id} on disk differs from the sequential redo");
        }
    }

    fn dispatch(pipeline: &mut RedoPipeline, tx: &Tx, marked: &std::sync::atomic::AtomicU64) {
        let mut records = tx.0.clone();
        while !pipeline.try_dispatch(&mut records).unwrap() {
            thread::yield_now();
        }
        assert!(records.is_empty());
        marked.store(tx.1 .0, std::sync::atomic::Ordering::SeqCst);
        while !pipeline.try_mark(tx.1).unwrap() {
            thread::yield_now();
        }
        assert!(pipeline.lsn_redone() <= tx.1, "the watermark never passes the last mark");
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_micros(100));
        }
    }

    fn checkpoint(pipeline: &mut RedoPipeline, lsn: Lsn) {
        while !pipeline.try_begin_checkpoint(lsn).unwrap() {
            thread::yield_now();
        }
        let mut done = None;
        wait_until("the checkpoint", || {
            done = pipeline.checkpoint_complete().unwrap();
            done.is_some()
        });
        assert_eq!(done, Some(lsn));
    }

    fn pipeline_matches_sequential_redo(workers: usize) {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("data.pages");
        let txs = workload(0x9e37_79b9 + workers as u64, 600);
        let mut pipeline = RedoPipeline::start(&path, DB, Lsn(4096), workers, 6, 8).unwrap();
        assert_eq!(pipeline.workers(), workers);
        // A reader on another thread: the watermark only grows and never passes the last mark.
        let marked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(4096));
        let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let (watermark, marked, watching) = (pipeline.watermark(), marked.clone(), watching.clone());
            thread::spawn(move || {
                let mut last = Lsn::ZERO;
                while watching.load(std::sync::atomic::Ordering::SeqCst) {
                    let now = watermark.get();
                    assert!(now >= last, "the watermark went back from {last} to {now}");
                    assert!(now.0 <= marked.load(std::sync::atomic::Ordering::SeqCst), "{now} passed the last mark");
                    last = now;
                    thread::yield_now();
                }
            })
        };
        // First quarter, then a checkpoint in flight while the second quarter is dispatched.
        let (quarter, half) = (txs.len() / 4, txs.len() / 2);
        for tx in &txs[..quarter] {
            dispatch(&mut pipeline, tx, &marked);
        }
        let lsn = txs[quarter - 1].1;
        while !pipeline.try_begin_checkpoint(lsn).unwrap() {
            thread::yield_now();
        }
        let mut completed = None;
        for tx in &txs[quarter..half] {
            dispatch(&mut pipeline, tx, &marked);
            completed = completed.or(pipeline.checkpoint_complete().unwrap());
        }
        if completed.is_none() {
            wait_until("the checkpoint in flight", || {
                completed = pipeline.checkpoint_complete().unwrap();
                completed.is_some()
            });
        }
        assert_eq!(completed, Some(lsn));
        // At the half, a checkpoint with nothing in flight: the file holds exactly the redo so far.
        let lsn = txs[half - 1].1;
        checkpoint(&mut pipeline, lsn);
        assert_eq!(pipeline.lsn_redone(), lsn);
        assert_eq!((pipeline.queued_items(), pipeline.queued_bytes()), (0, 0));
        assert_disk_matches(&path, &reference(&txs[..half]));
        for tx in &txs[half..] {
            dispatch(&mut pipeline, tx, &marked);
        }
        let last = txs.last().unwrap().1;
        wait_until("the watermark", || pipeline.lsn_redone() == last);
        assert_eq!(pipeline.failure(), None);
        watching.store(false, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap();
        pipeline.stop().unwrap();
        assert_disk_matches(&path, &reference(&txs));
    }

    #[test]
    fn one_worker_matches_sequential_redo() {
        pipeline_matches_sequential_redo(1);
    }

    #[test]
    fn two_workers_match_sequential_redo() {
        pipeline_matches_sequential_redo(2);
    }

    #[test]
    fn three_workers_match_sequential_redo() {
        pipeline_matches_sequential_redo(3);
    }

    #[test]
    fn full_rings_refuse_whole_transactions() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("data.pages");
        let mut pipeline = RedoPipeline::start(&path, DB, Lsn(0), 2, 64, 2).unwrap();
        // Pages 2, 4 and 6 all go to worker 0, whose ring holds 2: the transaction never fits.
        let mut records = vec![image(2, 1, 100), image(4, 1, 200), image(6, 1, 300)];
        let before = records.clone();
        assert!(!pipeline.try_dispatch(&mut records).unwrap());
        assert_eq!(records, before, "a refused transaction is left as it was");
        assert_eq!((pipeline.queued_items(), pipeline.queued_bytes()), (0, 0));
        // Two of them fit; the mark then waits for worker 0 to drain.
        records.truncate(2);
        assert!(pipeline.try_dispatch(&mut records).unwrap());
        assert!(records.is_empty());
        wait_until("worker 0 to drain", || pipeline.try_mark(Lsn(200)).unwrap());
        wait_until("the watermark", || pipeline.lsn_redone() == Lsn(200));
        assert_eq!((pipeline.queued_items(), pipeline.queued_bytes()), (0, 0));
        pipeline.stop().unwrap();
        assert_eq!(read_disk(&path, PageId(4)).unwrap()[150], 1);
    }

    /// Starts a pipeline of two workers, dispatches `txs` and waits for the first failure.
    fn run_until_failure(path: &Path, txs: &[Tx]) -> (RedoPipeline, String) {
        let mut pipeline = RedoPipeline::start(path, DB, Lsn(0), 2, 16, 16).unwrap();
        let marked = std::sync::atomic::AtomicU64::new(0);
        for tx in txs {
            dispatch(&mut pipeline, tx, &marked);
        }
        let mut failure = None;
        wait_until("the failure", || {
            failure = pipeline.failure();
            failure.is_some()
        });
        (pipeline, failure.unwrap())
    }

    fn image(id: u64, fill: u8, end: u64) -> RedoRecord {
        let mut p = vec![0u8; PAGE_SIZE];
        page::init(&mut p, PageType::Leaf, PageId(id));
        p[100..200].fill(fill);
        let mut body = Vec::new();
        redo::encode_image(&p, &mut body);
        RedoRecord { kind: PAGE_IMAGE, body, end_lsn: Lsn(end) }
    }

    fn diff(id: u64, end: u64) -> RedoRecord {
        let mut before = vec![0u8; PAGE_SIZE];
        page::init(&mut before, PageType::Leaf, PageId(id));
        let mut after = before.clone();
        after[300..310].fill(7);
        let mut body = Vec::new();
        assert!(redo::encode_diff(&before, &after, &mut body));
        RedoRecord { kind: PAGE_DIFF, body, end_lsn: Lsn(end) }
    }

    #[test]
    fn a_diff_for_a_page_never_imaged_fails_and_writes_nothing() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("data.pages");
        // Page 1 goes to worker 1, page 2 to worker 0; page 2 was never imaged.
        let txs = vec![(vec![image(1, 5, 100)], Lsn(120)), (vec![diff(2, 200)], Lsn(220))];
        let (mut pipeline, failure) = run_until_failure(&path, &txs);
        assert!(failure.contains("page 2 was never written"), "{failure}");
        // Worker 0 processed the first mark and nothing after its failure.
        wait_until("worker 1's mark", || pipeline.lsn_redone() == Lsn(120));
        thread::sleep(Duration::from_millis(20));
        assert_eq!(pipeline.lsn_redone(), Lsn(120), "the watermark stops at the failure");
        let mut more = vec![image(3, 1, 300)];
        assert!(matches!(pipeline.try_dispatch(&mut more), Err(Error::PageCorrupt(PageError::Unwritten(PageId(2))))));
        assert!(matches!(pipeline.stop(), Err(Error::PageCorrupt(_))));
        assert_eq!(read_disk(&path, PageId(2)), Err(PageError::Unwritten(PageId(2))), "the page is not written");
        assert_eq!(read_disk(&path, PageId(1)).unwrap()[150], 5, "the healthy worker wrote its page");
    }

    #[test]
    fn undecodable_records_and_misplaced_images_fail_the_pipeline() {
        let mut truncated = diff(4, 100);
        truncated.body.truncate(truncated.body.len() - 3);
        let mut misplaced = image(6, 9, 100);
        misplaced.body[..8].copy_from_slice(&8u64.to_le_bytes());
        for (record, expected) in
            [(truncated, "truncated range bytes"), (misplaced, "the image for page 8 holds page 6")]
        {
            let dir = tempfile::tempdir_in(".").unwrap();
            let path = dir.path().join("data.pages");
            let (pipeline, failure) = run_until_failure(&path, &[(vec![record], Lsn(110))]);
            assert!(failure.contains(expected), "{failure}");
            assert!(matches!(pipeline.stop(), Err(Error::LogCorrupt { lsn: Lsn(100), .. })));
            for id in [4, 6, 8] {
                assert!(read_disk(&path, PageId(id)).is_err(), "page {id} is not written");
            }
        }
    }

    #[test]
    fn records_out_of_log_order_or_not_page_records_are_refused() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("data.pages");
        let mut pipeline = RedoPipeline::start(&path, DB, Lsn(0), 1, 4, 4).unwrap();
        let mut records = vec![image(1, 1, 200), image(2, 1, 150)];
        assert!(matches!(pipeline.try_dispatch(&mut records), Err(Error::LogCorrupt { lsn: Lsn(150), .. })));
        let mut records = vec![RedoRecord { kind: redo::TX_COMMIT, body: vec![0; 8], end_lsn: Lsn(300) }];
        assert!(matches!(pipeline.try_dispatch(&mut records), Err(Error::LogCorrupt { .. })));
        let mut records = vec![RedoRecord { kind: PAGE_DIFF, body: vec![0; 5], end_lsn: Lsn(300) }];
        assert!(matches!(pipeline.try_dispatch(&mut records), Err(Error::LogCorrupt { .. })));
        assert_eq!(pipeline.queued_items(), 0);
        pipeline.stop().unwrap();
    }
}
