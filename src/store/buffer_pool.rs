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

use std::collections::HashMap;
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

/// Page writes a checkpoint keeps in flight at once.
const PAGE_WRITES_IN_FLIGHT: usize = 64;
/// The low bits of a page write's token carry its frame index.
pub const PAGE_WRITE_FRAME_MASK: u64 = (1 << 32) - 1;

struct Frame {
    id: PageId,
    buf: AlignedBuf,
    dirty: bool,
    /// The log must be hardened to here before this page may be written.
    barrier: Lsn,
    referenced: bool,
    in_tx: bool,
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
    pub evictions: u64,
    pub page_writes: u64,
}

pub struct BufferPool {
    data: DataFile,
    frames: Vec<Frame>,
    map: PageMap,
    capacity: usize,
    hand: usize,
    touched: Vec<Touched>,
    in_tx: bool,
    lsn_hardened: Lsn,
    /// Pages whose LSN is at or below this take a full image at their next change.
    checkpoint_lsn: Lsn,
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
            in_tx: false,
            lsn_hardened: Lsn::ZERO,
            checkpoint_lsn: Lsn::ZERO,
            stats: PoolStats::default(),
        }
    }

    pub fn data_file(&mut self) -> &mut DataFile {
        &mut self.data
    }

    pub fn set_hardened(&mut self, lsn: Lsn) {
        self.lsn_hardened = lsn;
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
        self.touched.push(Touched { frame, before: f.buf[..PAGE_SIZE].to_vec().into_boxed_slice(), created });
    }

    fn load(&mut self, id: PageId) -> Result<usize> {
        if let Some(&frame) = self.map.get(&id) {
            self.stats.hits += 1;
            self.frames[frame].referenced = true;
            return Ok(frame);
        }
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
        let new = Frame { id, buf, dirty: false, barrier: Lsn::ZERO, referenced: true, in_tx: false };
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
        Ok(index)
    }

    /// Frees a frame by the clock: skips referenced frames once, pages of the transaction, and
    /// dirty pages whose barrier the log has not reached. Writes a dirty victim out.
    fn evict(&mut self) -> Result<usize> {
        let n = self.frames.len();
        let mut waiting_for = None::<Lsn>;
        for _ in 0..2 * n + 1 {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let f = &mut self.frames[i];
            if f.in_tx {
                continue;
            }
            if f.referenced {
                f.referenced = false;
                continue;
            }
            if f.dirty && f.barrier > self.lsn_hardened {
                waiting_for = Some(waiting_for.map_or(f.barrier, |w: Lsn| w.min(f.barrier)));
                continue;
            }
            if f.dirty {
                self.data.write_page(&mut f.buf)?;
                self.stats.page_writes += 1;
            }
            // An aborted new page leaves an unmapped frame behind; its id may live elsewhere now.
            if self.map.get(&f.id) == Some(&i) {
                self.map.remove(&f.id);
            }
            self.stats.evictions += 1;
            return Ok(i);
        }
        Err(Error::CacheFull { needs_hardened: waiting_for })
    }

    pub fn begin(&mut self) {
        assert!(!self.in_tx && self.touched.is_empty());
        self.in_tx = true;
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
        }
        self.in_tx = false;
    }

    /// The redo bodies of the transaction's changes, in the order pages were first changed.
    pub fn take_changes(&mut self) -> Vec<PageChange> {
        let mut out = Vec::with_capacity(self.touched.len());
        for t in &self.touched {
            let after = &self.frames[t.frame].buf[..PAGE_SIZE];
            let mut body = Vec::new();
            let image = t.created || page::page_lsn(&t.before) <= self.checkpoint_lsn;
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
    pub fn finish_commit(&mut self, logged: &[(usize, Lsn)], commit_end: Lsn) {
        for &(frame, lsn) in logged {
            page::set_page_lsn(&mut self.frames[frame].buf[..PAGE_SIZE], lsn);
        }
        for t in self.touched.drain(..) {
            let f = &mut self.frames[t.frame];
            f.in_tx = false;
            if f.buf[..PAGE_SIZE] != *t.before {
                f.dirty = true;
                f.barrier = commit_end;
            }
        }
        self.in_tx = false;
    }

    /// Writes every dirty page whose barrier the log has reached (a checkpoint's work); returns
    /// how many are still dirty because the log has not reached them.
    pub fn write_dirty(&mut self) -> Result<usize> {
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
        }
        Ok(left)
    }

    /// `write_dirty` through `ring`, up to `PAGE_WRITES_IN_FLIGHT` writes at a time instead of one
    /// synchronous write after another. Completions of other operations that arrive meanwhile
    /// are stashed in the ring for the shard loop.
    pub fn write_dirty_through(&mut self, ring: &mut Ring, token: Token) -> Result<usize> {
        assert_eq!(token & PAGE_WRITE_FRAME_MASK, 0, "the low bits of a page write token carry the frame");
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
        let fd = self.data.raw_fd();
        let mut in_flight = 0usize;
        let mut next = 0usize;
        let mut failure: Option<Error> = None;
        let mut completions = Vec::new();
        while next < queue.len() || in_flight > 0 {
            while failure.is_none() && next < queue.len() && in_flight < PAGE_WRITES_IN_FLIGHT {
                let frame = queue[next];
                let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
                buf.copy_from_slice(&self.frames[frame].buf[..PAGE_SIZE]);
                let offset = self.data.prepare_write(&mut buf)?;
                ring.write_at(fd, buf, PAGE_SIZE, offset, 0, token | frame as u64)?;
                in_flight += 1;
                next += 1;
            }
            if failure.is_some() && in_flight == 0 {
                break;
            }
            ring.wait_ignoring_stash(1)?;
            completions.clear();
            ring.reap(&mut completions);
            for c in completions.drain(..) {
                if c.token & !PAGE_WRITE_FRAME_MASK != token {
                    ring.stash(c);
                    continue;
                }
                in_flight -= 1;
                let frame = (c.token & PAGE_WRITE_FRAME_MASK) as usize;
                if c.result == PAGE_SIZE as i32 {
                    self.frames[frame].dirty = false;
                    self.stats.page_writes += 1;
                } else {
                    let e = std::io::Error::from_raw_os_error(-c.result.min(-1));
                    failure.get_or_insert(Error::io(format!("write {} of the data file", self.frames[frame].id), e));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(left),
        }
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
