//! A bounded single-producer/single-consumer ring: how the mirror's dispatcher hands redo work to
//! one redo worker without a lock.
//!
//! Two monotonic counters say everything: `tail` (items pushed, written by the producer only) and
//! `head` (items popped, written by the consumer only); the slot of counter `c` is `c & mask`.
//! Slots `head..tail` hold values. The producer writes a slot and then publishes it with a Release
//! store of `tail`; the consumer's Acquire load of `tail` makes the value visible before it reads
//! it. The consumer moves a value out and then frees the slot with a Release store of `head`; the
//! producer's Acquire load of `head` orders its next write of that slot after the read. Each side
//! caches the other's counter and reloads it only when the cache says full (or empty), so a push or
//! a pop touches the other side's cache line only when it must. No allocation after creation.
//! `loom-tests/tests/redo_ring.rs` checks the protocol over all interleavings.

use std::mem::MaybeUninit;

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Items popped so far (written by the consumer only).
    head: AtomicUsize,
    /// Items pushed so far (written by the producer only).
    tail: AtomicUsize,
}

impl<T> Ring<T> {
    fn capacity(&self) -> usize {
        self.mask + 1
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both ends are gone (this is the last `Arc`); dropping an `Arc` orders everything either
        // end did before this, so Relaxed loads see the final counters.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut at = head;
        while at != tail {
            // SAFETY: slots `head..tail` hold values that were pushed and never popped, each
            // initialized exactly once; nobody else can reach the ring any more.
            self.slots[at & self.mask].with_mut(|p| unsafe { (*p).assume_init_drop() });
            at = at.wrapping_add(1);
        }
    }
}

/// The sending end: exactly one thread pushes.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// Our own `tail` (we are its only writer).
    tail: usize,
    /// The last `head` we loaded: the consumer has popped at least this many.
    head_seen: usize,
}

/// The receiving end: exactly one thread pops.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Our own `head` (we are its only writer).
    head: usize,
    /// The last `tail` we loaded: the producer has pushed at least this many.
    tail_seen: usize,
}

// SAFETY: a `Producer` is the only handle that writes slots outside `head..tail` and the only
// writer of `tail`; moving it to another thread moves that role with it. Values of `T` travel to
// the consumer's thread, hence `T: Send`. It is not `Sync`: two threads sharing one producer would
// both be "the" producer.
unsafe impl<T: Send> Send for Producer<T> {}
// SAFETY: symmetric to `Producer`: the only reader of slots `head..tail` and the only writer of
// `head`; values of `T` are moved out on whichever thread owns it, hence `T: Send`.
unsafe impl<T: Send> Send for Consumer<T> {}

/// A ring of `capacity` slots (a power of two) and its two ends.
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity >= 1 && capacity.is_power_of_two(), "ring capacity {capacity} must be a power of two");
    let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let ring = Arc::new(Ring { slots, mask: capacity - 1, head: AtomicUsize::new(0), tail: AtomicUsize::new(0) });
    (Producer { ring: ring.clone(), tail: 0, head_seen: 0 }, Consumer { ring, head: 0, tail_seen: 0 })
}

impl<T> Producer<T> {
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Adds `value` at the back, or hands it back if the ring is full.
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        if self.tail.wrapping_sub(self.head_seen) == self.ring.capacity() {
            self.head_seen = self.ring.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_seen) == self.ring.capacity() {
                return Err(value);
            }
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: counter `tail` is outside `head..tail`, so its slot is free: either never used,
        // or the consumer moved its value out before the Release store of a `head` beyond it, which
        // our Acquire load of `head` observed. The consumer reads it only after our Release store
        // of `tail` below. We are the only producer (`&mut self`).
        slot.with_mut(|p| unsafe { (*p).write(value) });
        self.tail = self.tail.wrapping_add(1);
        self.ring.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Free slots: a lower bound (the consumer may have freed more since), which only grows until
    /// our next push; so `free_slots() >= n` guarantees the next `n` pushes succeed.
    pub fn free_slots(&self) -> usize {
        let head = self.ring.head.load(Ordering::Acquire);
        self.ring.capacity() - self.tail.wrapping_sub(head)
    }
}

impl<T> Consumer<T> {
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Takes the oldest value, if any.
    pub fn try_pop(&mut self) -> Option<T> {
        if self.head == self.tail_seen {
            self.tail_seen = self.ring.tail.load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return None;
            }
        }
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: counter `head` is inside `head..tail` as of our Acquire load of `tail`, which
        // observed the producer's Release store made after it initialized this slot. The producer
        // does not touch the slot again until our Release store of a `head` beyond it, below. We
        // are the only consumer (`&mut self`), and move the value out exactly once.
        let value = slot.with(|p| unsafe { (*p).assume_init_read() });
        self.head = self.head.wrapping_add(1);
        self.ring.head.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Values waiting (at least this many: the producer may have pushed more since).
    pub fn len(&self) -> usize {
        self.ring.tail.load(Ordering::Acquire).wrapping_sub(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_full_and_free_slots() {
        let (mut tx, mut rx) = channel(4);
        assert_eq!(tx.free_slots(), 4);
        for i in 0..4 {
            tx.try_push(i).unwrap();
        }
        assert_eq!(tx.free_slots(), 0);
        assert_eq!(tx.try_push(9), Err(9));
        assert_eq!(rx.len(), 4);
        assert_eq!(rx.try_pop(), Some(0));
        assert_eq!(tx.free_slots(), 1);
        tx.try_push(4).unwrap();
        assert_eq!((0..4).map(|_| rx.try_pop().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(rx.try_pop(), None);
        assert!(rx.is_empty());
        assert_eq!(tx.free_slots(), 4);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn capacity_must_be_a_power_of_two() {
        let _ = channel::<u8>(3);
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_once() {
        let marker = std::sync::Arc::new(());
        let (mut tx, mut rx) = channel(8);
        for _ in 0..5 {
            tx.try_push(marker.clone()).unwrap();
        }
        drop(rx.try_pop());
        assert_eq!(std::sync::Arc::strong_count(&marker), 5);
        drop(tx);
        assert_eq!(std::sync::Arc::strong_count(&marker), 5, "the consumer can still pop");
        drop(rx);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }

    #[test]
    fn a_million_values_cross_threads_in_order_across_wrap_around() {
        const N: u64 = 1_000_000;
        let (mut tx, mut rx) = channel(8);
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                let mut v = i;
                while let Err(back) = tx.try_push(v) {
                    v = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        while expected < N {
            match rx.try_pop() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_pop(), None);
    }
}
