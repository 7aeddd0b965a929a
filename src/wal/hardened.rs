//! The hardened-LSN watermark as seen from other threads.
//!
//! The shard thread that owns a log publishes each new hardened LSN; any thread may wait for an
//! LSN to be covered. One atomic word holds the LSN and two flags: WAITERS (someone may be asleep)
//! and FAILED. A waiter sets WAITERS with a read-modify-write while holding the lock, checks the
//! LSN it got back, and only then sleeps; the publisher swaps in the new LSN (clearing WAITERS) and,
//! if WAITERS was set, notifies under the lock. All steps on the word are read-modify-writes, so no
//! publication slips between a waiter's check and its sleep. `loom-tests/` checks it.

use crate::sync::{AtomicU64, Condvar, Mutex, Ordering};
use crate::wal::Lsn;

const WAITERS: u64 = 1 << 63;
const FAILED: u64 = 1 << 62;
const LSN_MASK: u64 = FAILED - 1;

pub struct HardenedLsn {
    word: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFailed;

impl HardenedLsn {
    pub fn new(initial: Lsn) -> Self {
        assert!(initial.0 <= LSN_MASK);
        Self { word: AtomicU64::new(initial.0), lock: Mutex::new(()), cond: Condvar::new() }
    }

    pub fn get(&self) -> Lsn {
        Lsn(self.word.load(Ordering::Acquire) & LSN_MASK)
    }

    /// Owner side: the log is hardened up to `lsn` (never lower than before, never after `fail`).
    pub fn publish(&self, lsn: Lsn) {
        assert!(lsn.0 <= LSN_MASK);
        let previous = self.word.swap(lsn.0, Ordering::AcqRel);
        debug_assert!(previous & FAILED == 0, "publish after fail");
        debug_assert!(previous & LSN_MASK <= lsn.0, "hardened LSN went back");
        if previous & WAITERS != 0 {
            self.notify();
        }
    }

    /// Owner side: the log failed; every waiter returns `Err(LogFailed)`.
    pub fn fail(&self) {
        let previous = self.word.fetch_or(FAILED, Ordering::AcqRel);
        if previous & WAITERS != 0 {
            self.notify();
        }
    }

    fn notify(&self) {
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }

    /// Blocks until the log is hardened at least to `lsn`, or has failed.
    pub fn wait_for(&self, lsn: Lsn) -> Result<(), LogFailed> {
        let word = self.word.load(Ordering::Acquire);
        if word & LSN_MASK >= lsn.0 {
            return Ok(());
        }
        if word & FAILED != 0 {
            return Err(LogFailed);
        }
        let mut guard = self.lock.lock().unwrap();
        loop {
            let word = self.word.fetch_or(WAITERS, Ordering::AcqRel);
            if word & LSN_MASK >= lsn.0 {
                return Ok(());
            }
            if word & FAILED != 0 {
                return Err(LogFailed);
            }
            guard = self.cond.wait(guard).unwrap();
        }
    }
}
