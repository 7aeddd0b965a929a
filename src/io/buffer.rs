//! Owned, block-aligned buffers that travel to the kernel by value.
//!
//! An `AlignedBuf` is moved into a ring operation and handed back with its completion, so the
//! kernel never reads or writes memory that Rust still lets someone else touch. O_DIRECT needs the
//! memory address, the length and the file offset aligned to the logical block size (open(2),
//! NOTES, "O_DIRECT"); these buffers are aligned to `BLOCK_SIZE` and sized in whole blocks.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::constants::BLOCK_SIZE;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: the buffer exclusively owns its allocation, like a `Vec<u8>`; moving it to another
// thread moves that ownership.
unsafe impl Send for AlignedBuf {}
// SAFETY: like a `Vec<u8>`, shared references only read (`Deref` to `&[u8]`); every mutation
// needs `&mut self`. A log block shared by a disk write and a zero-copy send is only read.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer with room for `capacity` bytes, rounded up to whole blocks; `len` is 0.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(BLOCK_SIZE).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, capacity, len: 0 }
    }

    /// A zeroed buffer whose `len` is its whole (block-rounded) capacity.
    pub fn zeroed(len: usize) -> Self {
        let mut buf = Self::new(len);
        buf.len = buf.capacity;
        buf
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, BLOCK_SIZE).expect("aligned buffer layout")
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the length of the initialized part; every byte of the allocation is initialized
    /// (allocated zeroed), so any length up to the capacity is sound.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "length {len} beyond capacity {}", self.capacity);
        self.len = len;
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The whole allocation, initialized or not by the caller's notion of `len`.
    pub fn as_full_slice(&self) -> &[u8] {
        // SAFETY: the allocation is `capacity` bytes, zero-initialized at creation, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    pub fn as_full_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.as_full_slice()[..self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.as_full_mut_slice()[..len]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("capacity", &self.capacity).field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded_to_blocks() {
        let mut buf = AlignedBuf::new(5000);
        assert_eq!(buf.capacity(), 2 * BLOCK_SIZE);
        assert_eq!(buf.as_ptr() as usize % BLOCK_SIZE, 0);
        assert!(buf.is_empty());
        buf.set_len(10);
        buf[..10].copy_from_slice(b"0123456789");
        assert_eq!(&buf[..], b"0123456789");
        assert!(buf.as_full_slice()[10..].iter().all(|&b| b == 0));
    }

    #[test]
    #[should_panic]
    fn length_beyond_capacity_is_refused() {
        AlignedBuf::new(1).set_len(BLOCK_SIZE + 1);
    }
}
