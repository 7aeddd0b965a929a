//! A bounded lock-free queue between threads: appends fed to a log by other threads, connection
//! and peer migrations between shards, and log writes handed to a shard's durable-write thread.
//!
//! Dmitry Vyukov's bounded MPMC queue (each slot carries a sequence number that says whose turn it
//! is), used here with many producers and one consumer. No allocation after creation; a full
//! queue refuses the push and hands the value back. `loom-tests/` checks it.

use std::mem::MaybeUninit;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

struct Slot<T> {
    sequence: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

pub struct BoundedQueue<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    enqueue_pos: AtomicUsize,
    dequeue_pos: AtomicUsize,
}

// SAFETY: values move between threads through the queue (T: Send); a slot's value is accessed only
// by the one thread that won the slot's turn, as ordered by its sequence number.
unsafe impl<T: Send> Send for BoundedQueue<T> {}
// SAFETY: as above; all shared state is atomics or slot cells guarded by the sequence protocol.
unsafe impl<T: Send> Sync for BoundedQueue<T> {}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity >= 2 && capacity.is_power_of_two(), "capacity must be a power of two >= 2");
        let slots = (0..capacity)
            .map(|i| Slot { sequence: AtomicUsize::new(i), value: UnsafeCell::new(MaybeUninit::uninit()) })
            .collect();
        Self { slots, mask: capacity - 1, enqueue_pos: AtomicUsize::new(0), dequeue_pos: AtomicUsize::new(0) }
    }

    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Adds `value`, or hands it back if the queue is full.
    pub fn push(&self, value: T) -> Result<(), T> {
        let mut pos = self.enqueue_pos.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let sequence = slot.sequence.load(Ordering::Acquire);
            let diff = sequence as isize - pos as isize;
            if diff == 0 {
                match self.enqueue_pos.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `pos` while the slot's sequence equals `pos`
                        // gives this thread sole access to the slot until it publishes below.
                        slot.value.with_mut(|p| unsafe { (*p).write(value) });
                        slot.sequence.store(pos + 1, Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return Err(value);
            } else {
                pos = self.enqueue_pos.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the oldest value, if any.
    pub fn pop(&self) -> Option<T> {
        let mut pos = self.dequeue_pos.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let sequence = slot.sequence.load(Ordering::Acquire);
            let diff = sequence as isize - (pos + 1) as isize;
            if diff == 0 {
                match self.dequeue_pos.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        // SAFETY: the Acquire load of `pos + 1` saw the producer's Release store,
                        // so the value is initialized, and winning the CAS makes it ours alone.
                        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
                        slot.sequence.store(pos + self.mask + 1, Ordering::Release);
                        return Some(value);
                    }
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.dequeue_pos.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether a value is ready to pop (the shard's re-check before sleeping).
    pub fn has_ready(&self) -> bool {
        let pos = self.dequeue_pos.load(Ordering::SeqCst);
        let slot = &self.slots[pos & self.mask];
        slot.sequence.load(Ordering::SeqCst) == pos + 1
    }
}

impl<T> Drop for BoundedQueue<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fifo_and_full() {
        let q = BoundedQueue::new(4);
        for i in 0..4 {
            q.push(i).unwrap();
        }
        assert_eq!(q.push(9), Err(9));
        assert_eq!((0..4).map(|_| q.pop().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn many_producers_lose_nothing() {
        let q = Arc::new(BoundedQueue::new(64));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut v = (p << 32) | i;
                        while let Err(back) = q.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; 4];
        let mut got = 0;
        while got < 40_000 {
            if let Some(v) = q.pop() {
                let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(next[p], i, "producer {p} out of order");
                next[p] += 1;
                got += 1;
            }
        }
        producers.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn drop_releases_queued_values() {
        let q = BoundedQueue::new(4);
        let v = Arc::new(());
        q.push(v.clone()).unwrap();
        drop(q);
        assert_eq!(Arc::strong_count(&v), 1);
    }
}
