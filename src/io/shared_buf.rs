//! A log buffer with several readers in flight: the disk write of a group-commit batch and the
//! zero-copy send of the same bytes to the mirror. Each holder (the ring's write, the ring's
//! send, the mirroring link's queue) owns one `SharedBuf` handle; the bytes are only read while
//! any handle exists, and the buffer goes back to its owner exactly once, to whichever holder
//! releases last (`release`), however the releases race.
//!
//! The holder count is one atomic changed only by read-modify-writes: the releaser that takes it
//! from 1 to 0 is the only one that can see 1, so exactly one release returns the buffer
//! (`loom-tests/` checks it over every interleaving of two releasing threads).

use crate::io::buffer::AlignedBuf;
use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

struct Inner {
    holders: AtomicUsize,
    /// Taken out only by the last releaser; never changed while any holder reads it.
    buf: UnsafeCell<Option<AlignedBuf>>,
    /// Where the bytes are and how many (fixed at creation: read without touching `buf`).
    ptr: *const u8,
    len: usize,
    capacity: usize,
}

// SAFETY: the buffer is only read while shared (every holder reads, none writes), and only the
// last releaser — alone by construction of the count — takes it out; AlignedBuf is Send.
unsafe impl Send for Inner {}
// SAFETY: as above: shared access is read-only until the count says no one else holds it.
unsafe impl Sync for Inner {}

/// One holder of a shared, read-only log buffer.
pub struct SharedBuf {
    inner: Arc<Inner>,
    released: bool,
}

impl SharedBuf {
    /// Shares `buf`; this handle is its first holder.
    pub fn new(buf: AlignedBuf) -> Self {
        let (ptr, len, capacity) = (buf.as_ptr(), buf.len(), buf.capacity());
        let inner = Inner { holders: AtomicUsize::new(1), buf: UnsafeCell::new(Some(buf)), ptr, len, capacity };
        Self { inner: Arc::new(inner), released: false }
    }

    /// Another holder of the same bytes.
    pub fn share(&self) -> SharedBuf {
        // Relaxed: a new holder is made from an existing one, which keeps the count above zero.
        self.inner.holders.fetch_add(1, Ordering::Relaxed);
        SharedBuf { inner: self.inner.clone(), released: false }
    }

    /// Lets go of the bytes; returns the buffer to the holder that lets go last, `None` to the
    /// others.
    pub fn release(mut self) -> Option<AlignedBuf> {
        self.released = true;
        self.release_inner()
    }

    fn release_inner(&self) -> Option<AlignedBuf> {
        // AcqRel: the last releaser must see every other holder's reads as finished before it
        // takes the buffer (and may write to it).
        if self.inner.holders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        // SAFETY: the count went from 1 to 0 here, so no other holder exists or can appear
        // (`share` needs a live holder): this is the only access.
        self.inner.buf.with_mut(|buf| unsafe { (*buf).take() })
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.inner.ptr
    }

    pub fn len(&self) -> usize {
        self.inner.len
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }
}

impl std::fmt::Debug for SharedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBuf({} bytes, {} holders)", self.inner.len, self.inner.holders.load(Ordering::Relaxed))
    }
}

impl std::ops::Deref for SharedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the allocation lives while any holder exists (this one does) and is not
        // written while shared; `len` bytes of it were initialized when it was shared.
        unsafe { std::slice::from_raw_parts(self.inner.ptr, self.inner.len) }
    }
}

impl Drop for SharedBuf {
    /// A holder dropped without `release` (an error path) still counts as letting go; the last
    /// one then frees the buffer instead of recycling it.
    fn drop(&mut self) {
        if !self.released {
            drop(self.release_inner());
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_last_holder_gets_the_buffer_back_exactly_once() {
        let mut buf = AlignedBuf::new(4096);
        buf.set_len(100);
        buf.fill(7);
        let first = SharedBuf::new(buf);
        let second = first.share();
        let third = second.share();
        assert_eq!(&second[..], &[7u8; 100][..]);
        assert!(first.release().is_none());
        assert!(third.release().is_none());
        let back = second.release().expect("the last holder gets it");
        assert_eq!(back.len(), 100);
        assert_eq!(back.capacity(), 4096);
    }

    #[test]
    fn a_dropped_holder_counts_as_released() {
        let first = SharedBuf::new(AlignedBuf::new(4096));
        drop(first.share());
        assert!(first.release().is_some());
    }
}
