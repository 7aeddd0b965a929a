//! The buffer pool: cached pages of one database, bounded, with clock eviction, and the changes of
//! the transaction in progress.
//!
//! A transaction saves each page's image before its first change (`write`); `take_changes` turns
//! them into redo bodies (a diff against that image, or a full image for a new page or the first
//! change after a checkpoint); `finish_commit` stamps page LSNs and the flush barrier once the
//! records are in the log; `abort` puts the saved images back.
//!
//! WAL before data: a dirty page is written out only once the log is hardened to its flush
//! barrier — the end of the commit record of the last transaction that changed it. Pages of the
//! transaction in progress are never evicted.
//!
//! Page I/O goes through the shard's ring where a command need not wait for it:
//! - a cache miss, when the server asks for it (`set_async_misses`), is an `Error::PageNotCached`
//!   instead of a synchronous read: the command is undone, the server reads the page through the
//!   ring (`submit_read`, `complete_read`) and runs the command again;
//! - when the pool is full, `submit_cleaning_writes` writes dirty pages just ahead of the clock
//!   hand through the ring, and eviction prefers clean pages, so an eviction rarely has to write
//!   synchronously.
//!
//! Checkpoints are incremental (fuzzy): `begin_checkpoint` marks the pages dirty at that moment,
//! and `submit_checkpoint_writes` writes them through the ring a few at a time while commands go
//! on changing pages. A page is written from a copy, so later changes never race the write; a
//! page with a write in flight is never evicted or written by any other path, so two writes of
//! one page can never land out of order.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::ring::{Ring, Token};
use crate::store::data_file::DataFile;
use crate::store::page::{self, PageError, PageId, PageType, PAGE_SIZE};
use crate::store::redo;
use crate::wal::{Lsn, RecordKind};

/// Page ids are well-spread integers: a multiply-and-fold hash is enough, and much cheaper than
/// SipHash (which showed in profiles of the page lookup).
#[derive(Default)]
struct PageIdHasher(u64);

impl Hasher for PageIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let x = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

type PageMap = HashMap<PageId, usize, BuildHasherDefault<PageIdHasher>>;

/// Dirty victims eviction passes over looking for a clean one before it writes one itself.
const EVICT_DIRTY_SKIP: usize = 32;
/// Frames ahead of the clock hand the cleaner looks at, and the writes it keeps in flight.
const CLEAN_AHEAD: usize = 64;
const CLEAN_WRITES_IN_FLIGHT: usize = 16;
/// Before-images kept for reuse.
const SPARE_IMAGES_MAX: usize = 64;
/// Page writes a checkpoint keeps in flight at once.
const PAGE_WRITES_IN_FLIGHT: usize = 64;
/// Page writes an incremental checkpoint keeps in flight while commands run: fewer, so that log
/// flushes do not queue behind many page writes at the device.
const BACKGROUND_PAGE_WRITES_IN_FLIGHT: usize = 16;
/// The low bits of a page write's token carry its frame index.
pub const PAGE_WRITE_FRAME_MASK: u64 = (1 << 32) - 1;
/// Low bits of a checkpoint token that mark the data file's fdatasync, not a page write (no
/// frame has this index).
pub const DATA_SYNC_FRAME: u64 = PAGE_WRITE_FRAME_MASK;

struct Frame {
    id: PageId,
    buf: AlignedBuf,
    dirty: bool,
    /// The log must be hardened to here before this page may be written.
    barrier: Lsn,
    referenced: bool,
    in_tx: bool,
    /// Dirty when the checkpoint in progress began: it writes this page.
    checkpoint: bool,
    /// A write of this page is in flight (from a copy whose page LSN is `write_lsn`).
    writing: bool,
    write_lsn: Lsn,
}

impl Frame {
    fn new(id: PageId, buf: AlignedBuf) -> Self {
        Self {
            id,
            buf,
            dirty: false,
            barrier: Lsn::ZERO,
            referenced: true,
            in_tx: false,
            checkpoint: false,
            writing: false,
            write_lsn: Lsn::ZERO,
        }
    }
}

struct Touched {
    frame: usize,
    before: Box<[u8]>,
    /// Created in this transaction (its disk image is unknown: log a full image).
    created: bool,
}

/// A page change ready for the log.
pub struct PageChange {
    pub frame: usize,
    pub kind: RecordKind,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    /// Misses read through the ring (the rest were read synchronously).
    pub async_reads: u64,
    pub evictions: u64,
    pub page_writes: u64,
    /// Writes of a dirty victim by eviction itself (synchronous).
    pub eviction_writes: u64,
    /// Writes by the cleaner ahead of the clock hand (through the ring).
    pub cleaning_writes: u64,
}

pub struct BufferPool {
    data: DataFile,
    frames: Vec<Frame>,
    map: PageMap,
    capacity: usize,
    hand: usize,
    touched: Vec<Touched>,
    /// Before-images of finished transactions, reused (a fresh 4 KiB allocation per changed page
    /// showed in profiles).
    spare_images: Vec<Box<[u8]>>,
    in_tx: bool,
    /// The highest flush barrier among the pages the transaction in progress has read or
    /// changed: what it saw is durable once the log is hardened there.
    observed: Lsn,
    lsn_hardened: Lsn,
    /// No page without a barrier of its own (read from the data file, or recovered by redo at
    /// start-up) holds a change above this: the highest page write limit so far (`set_hardened`),
    /// and the log's end when the pool was made (`raise_unbarriered_bound`: redo writes pages
    /// the pool never saw).
    unbarriered_bound: Lsn,
    /// Pages whose LSN is at or below this take a full image at their next change.
    checkpoint_lsn: Lsn,
    /// Frames the checkpoint in progress has still to write, by flush barrier.
    checkpoint_queue: VecDeque<usize>,
    /// Page writes in flight through the ring.
    writes_in_flight: usize,
    /// A miss is reported (`Error::PageNotCached`) instead of read on the spot.
    async_misses: bool,
    /// Inspection: dirty pages (installed from an in-memory redo) are never written or evicted.
    read_only: bool,
    /// Ring reads in flight; true once the page was installed by another path meanwhile (the
    /// read's content may then be older: it is dropped).
    reads_in_flight: HashMap<PageId, bool, BuildHasherDefault<PageIdHasher>>,
    /// Disk fault injection (tests): the ring page write with this 1-based number completes with
    /// EIO instead.
    pub fail_page_write_number: Option<u64>,
    ring_page_writes: u64,
    pub stats: PoolStats,
}

impl BufferPool {
    /// A pool of at most `capacity` pages over `data`.
    pub fn new(data: DataFile, capacity: usize) -> Self {
        Self {
            data,
            frames: Vec::new(),
            map: PageMap::default(),
            capacity: capacity.max(16),
            hand: 0,
            touched: Vec::new(),
            spare_images: Vec::new(),
            in_tx: false,
            observed: Lsn::ZERO,
            lsn_hardened: Lsn::ZERO,
            unbarriered_bound: Lsn::ZERO,
            checkpoint_lsn: Lsn::ZERO,
            checkpoint_queue: VecDeque::new(),
            writes_in_flight: 0,
            async_misses: false,
            read_only: false,
            reads_in_flight: HashMap::default(),
            fail_page_write_number: None,
            ring_page_writes: 0,
            stats: PoolStats::default(),
        }
    }

    pub fn data_file(&mut self) -> &mut DataFile {
        &mut self.data
    }

    pub fn set_hardened(&mut self, lsn: Lsn) {
        self.lsn_hardened = lsn;
        self.unbarriered_bound = self.unbarriered_bound.max(lsn);
    }

    /// Pages on disk may hold changes up to `lsn` (the log's end, for a pool made over pages
    /// that redo wrote): reads of pages without a barrier of their own wait for it.
    pub fn raise_unbarriered_bound(&mut self, lsn: Lsn) {
        self.unbarriered_bound = self.unbarriered_bound.max(lsn);
    }

    pub fn set_checkpoint_lsn(&mut self, lsn: Lsn) {
        self.checkpoint_lsn = lsn;
    }

    pub fn cached(&self) -> usize {
        self.frames.len()
    }

    /// The flush barrier of a cached page (reads of it wait until the log is hardened there).
    pub fn barrier(&self, id: PageId) -> Lsn {
        self.map.get(&id).map(|&f| self.frames[f].barrier).unwrap_or(Lsn::ZERO)
    }

    /// The page, read from the data file if it is not cached.
    pub fn read(&mut self, id: PageId) -> Result<&[u8]> {
        let frame = self.load(id)?;
        Ok(&self.frames[frame].buf[..PAGE_SIZE])
    }

    /// The page, without counting it among the pages the transaction saw (`observed`). Only for
    /// the meta page's root pointer on a lookup: the meta page changes with every insert (the
    /// key count), but a change of the root also changes the root page itself in the same
    /// transaction, so the descent from it observes that change.
    pub fn read_unobserved(&mut self, id: PageId) -> Result<&[u8]> {
        let observed = self.observed;
        let frame = self.load(id)?;
        self.observed = observed;
        Ok(&self.frames[frame].buf[..PAGE_SIZE])
    }

    /// The page, for changing within the transaction in progress.
    pub fn write(&mut self, id: PageId) -> Result<&mut [u8]> {
        assert!(self.in_tx, "page changes happen inside a transaction");
        let frame = self.load(id)?;
        self.touch(frame, false);
        Ok(&mut self.frames[frame].buf[..PAGE_SIZE])
    }

    /// A new page `id` of `kind` (its old content, if any, is ignored), for the transaction.
    pub fn create(&mut self, id: PageId, kind: PageType) -> Result<&mut [u8]> {
        assert!(self.in_tx, "page changes happen inside a transaction");
        let frame = match self.map.get(&id) {
            Some(&f) => f,
            None => self.install(id, None)?,
        };
        self.touch(frame, true);
        let buf = &mut self.frames[frame].buf[..PAGE_SIZE];
        let lsn = page::page_lsn(buf);
        page::init(buf, kind, id);
        page::set_page_lsn(buf, lsn);
        Ok(buf)
    }

    fn touch(&mut self, frame: usize, created: bool) {
        let f = &mut self.frames[frame];
        f.referenced = true;
        if f.in_tx {
            if created {
                if let Some(t) = self.touched.iter_mut().find(|t| t.frame == frame) {
                    t.created = true;
                }
            }
            return;
        }
        f.in_tx = true;
        let mut before = self.spare_images.pop().unwrap_or_else(|| vec![0; PAGE_SIZE].into_boxed_slice());
        before.copy_from_slice(&f.buf[..PAGE_SIZE]);
        self.touched.push(Touched { frame, before, created });
    }

    fn load(&mut self, id: PageId) -> Result<usize> {
        if let Some(&frame) = self.map.get(&id) {
            self.stats.hits += 1;
            let f = &mut self.frames[frame];
            f.referenced = true;
            // A page with no barrier of its own came from the data file or from redo: it holds
            // nothing above `unbarriered_bound`. (Zero would be wrong: a page may be written once
            // the log is hardened, before its commit is released, e.g. while a principal's
            // mirror has not hardened it.)
            let barrier = if f.barrier == Lsn::ZERO { self.unbarriered_bound } else { f.barrier };
            self.observed = self.observed.max(barrier);
            return Ok(frame);
        }
        if self.async_misses {
            return Err(Error::PageNotCached(id));
        }
        self.observed = self.observed.max(self.unbarriered_bound);
        self.stats.misses += 1;
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        match self.data.read_page(id, &mut buf)? {
            Ok(_) => {}
            Err(e) => return Err(Error::PageCorrupt(e)),
        }
        self.install(id, Some(buf))
    }

    /// Puts page `id` in a frame (evicting if the pool is full); `buf` is its content (zeroes if
    /// `None`).
    fn install(&mut self, id: PageId, buf: Option<AlignedBuf>) -> Result<usize> {
        let frame = if self.frames.len() < self.capacity { None } else { Some(self.evict()?) };
        let buf = buf.unwrap_or_else(|| AlignedBuf::zeroed(PAGE_SIZE));
        let new = Frame::new(id, buf);
        let index = match frame {
            Some(i) => {
                self.frames[i] = new;
                i
            }
            None => {
                self.frames.push(new);
                self.frames.len() - 1
            }
        };
        self.map.insert(id, index);
        if let Some(stale) = self.reads_in_flight.get_mut(&id) {
            *stale = true;
        }
        Ok(index)
    }

    /// Frees a frame by the clock: skips referenced frames once, pages of the transaction, pages
    /// with a write in flight, and dirty pages whose barrier the log has not reached. Prefers a
    /// clean victim (the cleaner writes dirty ones ahead of the hand): only after passing
    /// `EVICT_DIRTY_SKIP` dirty candidates does it write the first one itself.
    fn evict(&mut self) -> Result<usize> {
        let n = self.frames.len();
        let mut waiting_for = None::<Lsn>;
        let mut dirty_victim = None::<usize>;
        let mut dirty_seen = 0;
        for _ in 0..2 * n + 1 {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let f = &mut self.frames[i];
            if f.in_tx || f.writing {
                continue;
            }
            if f.referenced {
                f.referenced = false;
                continue;
            }
            if f.dirty && self.read_only {
                continue;
            }
            if f.dirty && f.barrier > self.lsn_hardened {
                waiting_for = Some(waiting_for.map_or(f.barrier, |w: Lsn| w.min(f.barrier)));
                continue;
            }
            if f.dirty {
                dirty_victim.get_or_insert(i);
                dirty_seen += 1;
                if dirty_seen < EVICT_DIRTY_SKIP {
                    continue;
                }
                break;
            }
            return Ok(self.evict_frame(i));
        }
        let Some(i) = dirty_victim else {
            return Err(Error::CacheFull { needs_hardened: waiting_for });
        };
        let f = &mut self.frames[i];
        self.data.write_page(&mut f.buf)?;
        self.stats.page_writes += 1;
        self.stats.eviction_writes += 1;
        f.dirty = false;
        Ok(self.evict_frame(i))
    }

    /// Empties frame `i` (clean) for reuse.
    fn evict_frame(&mut self, i: usize) -> usize {
        let id = self.frames[i].id;
        // An aborted new page leaves an unmapped frame behind; its id may live elsewhere now.
        if self.map.get(&id) == Some(&i) {
            self.map.remove(&id);
        }
        self.stats.evictions += 1;
        i
    }

    /// Makes the pool read-only (inspection): dirty pages stay in memory and are never written;
    /// a pool full of them reports `CacheFull`.
    pub fn set_read_only(&mut self) {
        self.read_only = true;
    }

    /// Asks for cache misses to be reported (`Error::PageNotCached`) instead of read on the spot.
    pub fn set_async_misses(&mut self, on: bool) {
        self.async_misses = on;
    }

    /// Starts a ring read of page `id` (its completion goes to `complete_read`). Returns false if
    /// it cannot be read that way (beyond the data file: a synchronous read reports why) and true
    /// if it is in flight, now or already.
    pub fn submit_read(&mut self, ring: &mut Ring, token: Token, id: PageId) -> Result<bool> {
        if self.reads_in_flight.contains_key(&id) || self.map.contains_key(&id) {
            return Ok(true);
        }
        if id.0 >= self.data.capacity_pages() {
            return Ok(false);
        }
        let buf = AlignedBuf::zeroed(PAGE_SIZE);
        ring.read_at(self.data.raw_fd(), buf, PAGE_SIZE, id.0 * PAGE_SIZE as u64, token)?;
        self.reads_in_flight.insert(id, false);
        Ok(true)
    }

    /// A ring read of page `id` completed. Installs the page if it verifies and nothing installed
    /// it meanwhile; returns false if the read failed or the page does not verify (the command
    /// that wanted it runs again with synchronous reads, which report why).
    pub fn complete_read(&mut self, id: PageId, result: i32, buf: Option<AlignedBuf>) -> Result<bool> {
        let Some(stale) = self.reads_in_flight.remove(&id) else { return Ok(true) };
        if stale || self.map.contains_key(&id) {
            return Ok(true);
        }
        let Some(buf) = buf.filter(|_| result == PAGE_SIZE as i32) else { return Ok(false) };
        if self.data.verify(id, &buf).is_err() {
            return Ok(false);
        }
        self.stats.misses += 1;
        self.stats.async_reads += 1;
        let frame = self.install(id, Some(buf))?;
        self.frames[frame].referenced = true;
        Ok(true)
    }

    /// Ring reads in flight.
    pub fn reads_in_flight(&self) -> usize {
        self.reads_in_flight.len()
    }

    /// When the pool is full, writes dirty pages just ahead of the clock hand through the ring
    /// (those whose barrier the log has reached and that no transaction holds), so that the
    /// hand finds them clean and eviction need not write synchronously.
    pub fn submit_cleaning_writes(&mut self, ring: &mut Ring, token: Token) -> Result<()> {
        let n = self.frames.len();
        if n < self.capacity {
            return Ok(());
        }
        for k in 0..CLEAN_AHEAD.min(n) {
            if self.writes_in_flight >= CLEAN_WRITES_IN_FLIGHT {
                break;
            }
            let i = (self.hand + k) % n;
            let f = &self.frames[i];
            if f.dirty && !f.referenced && !f.in_tx && !f.writing && f.barrier <= self.lsn_hardened {
                self.submit_page_write(ring, token, i)?;
                self.stats.cleaning_writes += 1;
            }
        }
        Ok(())
    }

    pub fn begin(&mut self) {
        assert!(!self.in_tx && self.touched.is_empty());
        self.in_tx = true;
        self.observed = Lsn::ZERO;
    }

    /// Pages the transaction in progress has taken for changing (each with a before-image).
    pub fn pages_in_tx(&self) -> usize {
        self.touched.len()
    }

    /// The highest flush barrier among the pages the transaction in progress has read or
    /// changed. A transaction that changes nothing answers once the log is hardened here: every
    /// transaction that shaped a page it saw ends at or before that page's barrier.
    pub fn observed(&self) -> Lsn {
        self.observed
    }

    pub fn in_tx(&self) -> bool {
        self.in_tx
    }

    /// Undoes every change of the transaction in progress.
    pub fn abort(&mut self) {
        for t in self.touched.drain(..) {
            let f = &mut self.frames[t.frame];
            f.buf[..PAGE_SIZE].copy_from_slice(&t.before);
            f.in_tx = false;
            if t.created && !f.dirty {
                // The page never had content this pool vouches for: forget it, so a later read
                // goes to the data file and verifies.
                self.map.remove(&f.id);
                f.referenced = false;
            }
            if self.spare_images.len() < SPARE_IMAGES_MAX {
                self.spare_images.push(t.before);
            }
        }
        self.in_tx = false;
    }

    /// The redo bodies of the transaction's changes, in the order pages were first changed.
    pub fn take_changes(&mut self) -> Vec<PageChange> {
        let mut out = Vec::with_capacity(self.touched.len());
        for t in &self.touched {
            let after = &self.frames[t.frame].buf[..PAGE_SIZE];
            // A page written with the bytes it had (a SET of the value a key already has) logs
            // nothing: a diff finds no change, and an image is skipped.
            let image = t.created || (page::page_lsn(&t.before) <= self.checkpoint_lsn && t.before[..] != *after);
            // Sized for an image, or for the usual diff (a cell and its slot), so that it is
            // allocated once.
            let mut body = Vec::with_capacity(if image { PAGE_SIZE + 8 } else { 512 });
            if image {
                redo::encode_image(after, &mut body);
                out.push(PageChange { frame: t.frame, kind: redo::PAGE_IMAGE, body });
            } else if redo::encode_diff(&t.before, after, &mut body) {
                out.push(PageChange { frame: t.frame, kind: redo::PAGE_DIFF, body });
            }
        }
        out
    }

    /// Ends the transaction after its records are in the log: page `frame` was logged by a
    /// record ending at `lsn`; `commit_end` is the end of the commit record.
    /// A page changed by the transaction has a record in `logged` (`take_changes` logs every
    /// change), so only those become dirty.
    pub fn finish_commit(&mut self, logged: &[(usize, Lsn)], commit_end: Lsn) {
        for &(frame, lsn) in logged {
            let f = &mut self.frames[frame];
            page::set_page_lsn(&mut f.buf[..PAGE_SIZE], lsn);
            f.dirty = true;
            f.barrier = commit_end;
        }
        for t in self.touched.drain(..) {
            self.frames[t.frame].in_tx = false;
            if self.spare_images.len() < SPARE_IMAGES_MAX {
                self.spare_images.push(t.before);
            }
        }
        self.in_tx = false;
    }

    /// Writes every dirty page whose barrier the log has reached (a checkpoint's work); returns
    /// how many are still dirty because the log has not reached them. Only with no ring write in
    /// flight (one could land after this write and put an older page back).
    pub fn write_dirty(&mut self) -> Result<usize> {
        assert_eq!(self.writes_in_flight, 0, "a synchronous page write would race a ring write of the same page");
        let mut left = 0;
        for f in &mut self.frames {
            if !f.dirty || f.in_tx {
                continue;
            }
            if f.barrier > self.lsn_hardened {
                left += 1;
                continue;
            }
            self.data.write_page(&mut f.buf)?;
            self.stats.page_writes += 1;
            f.dirty = false;
            f.checkpoint = false;
        }
        self.checkpoint_queue.clear();
        Ok(left)
    }

    /// `write_dirty` through `ring`, up to `PAGE_WRITES_IN_FLIGHT` writes at a time instead of one
    /// synchronous write after another, blocking until they are done (start-up, a stop, a role
    /// change). Writes of an incremental checkpoint still in flight are waited for first.
    /// Completions of other operations that arrive meanwhile are stashed in the ring for the
    /// shard loop.
    pub fn write_dirty_through(&mut self, ring: &mut Ring, token: Token) -> Result<usize> {
        assert_eq!(token & PAGE_WRITE_FRAME_MASK, 0, "the low bits of a page write token carry the frame");
        let mut failure = self.wait_for_page_writes(ring, token, 0).err();
        let mut queue: Vec<usize> = Vec::new();
        let mut left = 0;
        for (i, f) in self.frames.iter().enumerate() {
            if !f.dirty || f.in_tx {
                continue;
            }
            if f.barrier > self.lsn_hardened {
                left += 1;
                continue;
            }
            queue.push(i);
        }
        let mut next = 0usize;
        while failure.is_none() && next < queue.len() {
            while next < queue.len() && self.writes_in_flight < PAGE_WRITES_IN_FLIGHT {
                self.submit_page_write(ring, token, queue[next])?;
                next += 1;
            }
            if let Err(e) = self.wait_for_page_writes(ring, token, PAGE_WRITES_IN_FLIGHT - 1) {
                failure.get_or_insert(e);
            }
        }
        if let Err(e) = self.wait_for_page_writes(ring, token, 0) {
            failure.get_or_insert(e);
        }
        self.checkpoint_queue.clear();
        for f in &mut self.frames {
            f.checkpoint = false;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(left),
        }
    }

    /// Blocks on `ring` until at most `in_flight_max` page writes of `token` are in flight.
    fn wait_for_page_writes(&mut self, ring: &mut Ring, token: Token, in_flight_max: usize) -> Result<()> {
        let mut failure = None;
        let mut completions = Vec::new();
        while self.writes_in_flight > in_flight_max {
            ring.wait_ignoring_stash(1)?;
            ring.reap(&mut completions);
            for c in completions.drain(..) {
                let frame = c.token & PAGE_WRITE_FRAME_MASK;
                if c.token & !PAGE_WRITE_FRAME_MASK != token || frame == DATA_SYNC_FRAME {
                    ring.stash(c);
                    continue;
                }
                if let Err(e) = self.complete_page_write(frame as usize, c.result) {
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Writes a copy of `frame`'s page through `ring` (its completion goes to
    /// `complete_page_write`).
    fn submit_page_write(&mut self, ring: &mut Ring, token: Token, frame: usize) -> Result<()> {
        let f = &mut self.frames[frame];
        debug_assert!(!f.writing && !f.in_tx && f.barrier <= self.lsn_hardened);
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        buf.copy_from_slice(&f.buf[..PAGE_SIZE]);
        let offset = self.data.prepare_write(&mut buf)?;
        ring.write_at(self.data.raw_fd(), buf, PAGE_SIZE, offset, 0, token | frame as u64)?;
        f.writing = true;
        f.write_lsn = page::page_lsn(&f.buf[..PAGE_SIZE]);
        self.writes_in_flight += 1;
        Ok(())
    }

    /// A page write of `frame` completed with `result`. The page is clean unless a transaction
    /// changed it after the copy was taken (its page LSN moved on). A failed write is an error
    /// the caller treats as fatal for the database.
    pub fn complete_page_write(&mut self, frame: usize, mut result: i32) -> Result<()> {
        self.ring_page_writes += 1;
        if self.fail_page_write_number == Some(self.ring_page_writes) {
            result = -libc::EIO;
        }
        let f = &mut self.frames[frame];
        assert!(f.writing, "a page write completed for frame {frame}, which has none in flight");
        f.writing = false;
        self.writes_in_flight -= 1;
        if result != PAGE_SIZE as i32 {
            let e = if result < 0 {
                std::io::Error::from_raw_os_error(-result)
            } else {
                std::io::Error::new(std::io::ErrorKind::WriteZero, format!("short write of {result} bytes"))
            };
            return Err(Error::DataFailed(format!("write of {} failed: {e}", f.id)));
        }
        self.stats.page_writes += 1;
        f.checkpoint = false;
        // A transaction in progress that changed the page has not stamped its LSN yet: the page
        // counts as clean now, and `finish_commit` makes it dirty again if the transaction logged
        // a change of it (against the image it began with, which is what was written), or
        // `abort` puts back exactly what was written.
        if page::page_lsn(&f.buf[..PAGE_SIZE]) == f.write_lsn {
            f.dirty = false;
        }
        Ok(())
    }

    /// Begins an incremental checkpoint at `redo_lsn` (between transactions): every page dirty
    /// now is to be written (`submit_checkpoint_writes`), and from now on the first change of any
    /// page logs a full image (torn-page protection for writes after this checkpoint).
    pub fn begin_checkpoint(&mut self, redo_lsn: Lsn) {
        assert!(!self.in_tx, "a checkpoint begins between transactions");
        self.checkpoint_lsn = redo_lsn;
        let mut queue: Vec<usize> = Vec::new();
        for (i, f) in self.frames.iter_mut().enumerate() {
            f.checkpoint = f.dirty;
            if f.dirty {
                queue.push(i);
            }
        }
        queue.sort_by_key(|&i| self.frames[i].barrier);
        self.checkpoint_queue = queue.into();
    }

    /// Submits writes of the checkpoint's pages, up to `BACKGROUND_PAGE_WRITES_IN_FLIGHT` in flight, in
    /// flush barrier order; a page whose barrier the log (or, in SAFETY FULL, the mirror) has not
    /// reached waits, and so does a page a transaction is changing.
    pub fn submit_checkpoint_writes(&mut self, ring: &mut Ring, token: Token) -> Result<()> {
        let mut busy: Vec<usize> = Vec::new();
        while self.writes_in_flight < BACKGROUND_PAGE_WRITES_IN_FLIGHT {
            let Some(frame) = self.checkpoint_queue.pop_front() else { break };
            let f = &self.frames[frame];
            if !f.checkpoint {
                continue; // written meanwhile (evicted)
            }
            if f.barrier > self.lsn_hardened {
                self.checkpoint_queue.push_front(frame); // and so are the ones after it (mostly)
                break;
            }
            if f.writing || f.in_tx {
                busy.push(frame);
                continue;
            }
            self.submit_page_write(ring, token, frame)?;
        }
        self.checkpoint_queue.extend(busy);
        Ok(())
    }

    /// Whether every page of the checkpoint in progress is written.
    pub fn checkpoint_writes_done(&self) -> bool {
        self.writes_in_flight == 0 && self.checkpoint_queue.iter().all(|&i| !self.frames[i].checkpoint)
    }

    /// Page writes in flight through the ring.
    pub fn page_writes_in_flight(&self) -> usize {
        self.writes_in_flight
    }

    /// Pages the checkpoint in progress has still to write.
    pub fn checkpoint_pages_left(&self) -> usize {
        self.checkpoint_queue.iter().filter(|&&i| self.frames[i].checkpoint).count()
    }

    /// The lowest page LSN among dirty pages: redo after a crash must start at or before it.
    pub fn oldest_dirty_lsn(&self) -> Option<Lsn> {
        self.frames.iter().filter(|f| f.dirty).map(|f| page::page_lsn(&f.buf[..PAGE_SIZE])).min()
    }

    /// Places a page recovered by redo in the pool as dirty (it differs from the data file).
    pub fn install_recovered(&mut self, buf: &[u8]) -> Result<()> {
        let id = page::page_id(buf);
        let frame = match self.map.get(&id) {
            Some(&f) => f,
            None => self.install(id, None)?,
        };
        let f = &mut self.frames[frame];
        f.buf[..PAGE_SIZE].copy_from_slice(buf);
        f.dirty = true;
        f.barrier = Lsn::ZERO;
        Ok(())
    }

    /// Reads a page from the data file bypassing the cache, verified or not (recovery).
    pub fn read_from_disk(&self, id: PageId, buf: &mut AlignedBuf) -> Result<std::result::Result<PageType, PageError>> {
        self.data.read_page(id, buf)
    }

    pub fn is_cached(&self, id: PageId) -> bool {
        self.map.contains_key(&id)
    }
}
