//! Waking a shard thread that sleeps in io_uring_enter from a thread that has no ring.
//!
//! The shard keeps a read of an eventfd posted on its ring. To avoid an eventfd write per item,
//! the doorbell is an event count: one atomic word holding a count of rings and a SLEEPING bit.
//! - The shard reads the word (`observe`), drains its queues, and goes to sleep only if it can swap
//!   the very word it observed for the same word with SLEEPING set (`try_sleep`). A ring that
//!   happened in between changed the count, so the swap fails and the shard drains again.
//! - A producer publishes its work, then increments the count (`ring`); if the word it replaced had
//!   SLEEPING set, it writes the eventfd.
//!
//! Every step is a read-modify-write of the one word, so the steps are totally ordered without
//! relying on SeqCst store/load pairs across two locations (the Dekker pattern, which loom does
//! not model and which is easy to get wrong). `loom-tests/` checks that no wake-up is lost.
//!
//! Shard-to-shard wake-ups use IORING_OP_MSG_RING instead (`Ring::msg_ring`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::error::{IoContext, Result};
use crate::sync::{AtomicU64, Ordering};

const SLEEPING: u64 = 1 << 63;

pub struct Doorbell {
    word: AtomicU64,
    eventfd: Option<OwnedFd>,
}

impl Doorbell {
    pub fn new() -> Result<Self> {
        // SAFETY: plain eventfd(2) call.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context(|| "eventfd".into());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self { word: AtomicU64::new(0), eventfd: Some(unsafe { OwnedFd::from_raw_fd(fd) }) })
    }

    /// A doorbell without an eventfd: `ring` only reports whether a write would be due (models).
    pub fn without_eventfd() -> Self {
        Self { word: AtomicU64::new(0), eventfd: None }
    }

    pub fn eventfd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.eventfd.as_ref().map(|fd| fd.as_raw_fd()).unwrap_or(-1)
    }

    /// Shard side, before draining its queues: the word to pass to `try_sleep`.
    pub fn observe(&self) -> u64 {
        self.word.load(Ordering::Acquire) & !SLEEPING
    }

    /// Shard side, after draining: true if the shard may sleep (no ring since `observed`); the
    /// SLEEPING bit is then set and the next ring writes the eventfd.
    pub fn try_sleep(&self, observed: u64) -> bool {
        self.word.compare_exchange(observed, observed | SLEEPING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Shard side, after waking.
    pub fn awake(&self) {
        self.word.fetch_and(!SLEEPING, Ordering::AcqRel);
    }

    /// Producer side, after publishing work. Returns true if the shard was asleep and the eventfd
    /// was (or, without one, would be) written.
    pub fn ring(&self) -> bool {
        // Clear SLEEPING while counting, so that one sleep costs one eventfd write.
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let next = (current & !SLEEPING).wrapping_add(1) & !SLEEPING;
            match self.word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(previous) => {
                    let was_sleeping = previous & SLEEPING != 0;
                    if was_sleeping {
                        self.write_eventfd();
                    }
                    return was_sleeping;
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn write_eventfd(&self) {
        if let Some(fd) = &self.eventfd {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. It cannot fail with a
            // counter this far from overflow.
            unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
    }
}
