//! Waking a shard thread that sleeps in io_uring_enter from a thread that has no ring.
//!
//! The shard keeps a read of an eventfd posted on its ring. Producers push work into a queue and
//! then ring the doorbell; to avoid an eventfd write per item, the shard announces that it is about
//! to sleep (`sleeping = true`), re-checks its queues, and only then blocks. A producer writes the
//! eventfd only when it sees `sleeping` set. Both sides use SeqCst for the flag and the queue check
//! (a store followed by a load on each side: the Dekker pattern), which the loom model
//! `doorbell_no_lost_wakeup` checks.
//!
//! Shard-to-shard wake-ups use IORING_OP_MSG_RING instead (`Ring::msg_ring`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::error::{IoContext, Result};
use crate::sync::{AtomicBool, Ordering};

pub struct Doorbell {
    sleeping: AtomicBool,
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
        Ok(Self {
            sleeping: AtomicBool::new(false),
            eventfd: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// A doorbell without an eventfd, for models and tests of the flag protocol alone.
    pub fn without_eventfd() -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            eventfd: None,
        }
    }

    pub fn eventfd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.eventfd.as_ref().map(|fd| fd.as_raw_fd()).unwrap_or(-1)
    }

    /// Shard side, before blocking: announce sleep. The caller must re-check its queues after this
    /// and call `awake` instead of sleeping if it finds work.
    pub fn prepare_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Shard side, after waking (or when the re-check found work).
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Producer side, after publishing work: returns true if the shard was asleep and had to be
    /// woken (the eventfd was written).
    pub fn ring(&self) -> bool {
        if !self.sleeping.load(Ordering::SeqCst) {
            return false;
        }
        if !self.sleeping.swap(false, Ordering::SeqCst) {
            return false; // another producer woke it
        }
        if let Some(fd) = &self.eventfd {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A failure (counter
            // overflow) cannot happen with at most one pending wake-up per sleep.
            unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
        true
    }
}
