//! The hardened-LSN watermark as seen from other threads.
//!
//! The shard thread that owns a log publishes each new hardened LSN; any thread may wait for an
//! LSN to be covered. Lost wake-ups are excluded by the store/load pairs being SeqCst on both sides
//! (a waiter registers, then re-reads the value under the lock; the publisher stores the value,
//! then reads the waiter count, and notifies under the lock). `loom-tests/` checks it.

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use crate::wal::Lsn;

pub struct HardenedLsn {
    value: AtomicU64,
    failed: AtomicBool,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFailed;

impl HardenedLsn {
    pub fn new(initial: Lsn) -> Self {
        Self {
            value: AtomicU64::new(initial.0),
            failed: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        }
    }

    pub fn get(&self) -> Lsn {
        Lsn(self.value.load(Ordering::Acquire))
    }

    /// Owner side: the log is hardened up to `lsn` (never lower than before).
    pub fn publish(&self, lsn: Lsn) {
        let previous = self.value.swap(lsn.0, Ordering::SeqCst);
        debug_assert!(
            previous <= lsn.0,
            "hardened LSN went back from {previous} to {}",
            lsn.0
        );
        self.notify();
    }

    /// Owner side: the log failed; every waiter returns `Err(LogFailed)`.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap();
            self.cond.notify_all();
        }
    }

    /// Blocks until the log is hardened at least to `lsn`.
    pub fn wait_for(&self, lsn: Lsn) -> Result<(), LogFailed> {
        if self.value.load(Ordering::Acquire) >= lsn.0 {
            return Ok(());
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap();
        let result = loop {
            if self.value.load(Ordering::SeqCst) >= lsn.0 {
                break Ok(());
            }
            if self.failed.load(Ordering::SeqCst) {
                break Err(LogFailed);
            }
            guard = self.cond.wait(guard).unwrap();
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}
