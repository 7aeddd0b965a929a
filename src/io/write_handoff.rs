//! The hand-over of log writes from a shard to its durable-write thread (`io::durable_writer`):
//! a bounded lock-free queue, a stop flag, and park/unpark as the wake-up. `loom-tests/` checks
//! over every interleaving that no write is lost or delivered twice, that a consumer parked on an
//! empty queue is always woken by the next push, and that a stopped consumer finishes what was
//! pushed before it returns.
//!
//! park/unpark is a token: an unpark that comes before the park makes the park return at once
//! (std::thread::park: "if the token is already available ... it will return immediately"). So
//! the consumer looks at the queue, then parks; a push that lands between the two has already
//! left the token.

use crate::sync::bounded_queue::BoundedQueue;
use crate::sync::thread;
use crate::sync::{AtomicBool, Ordering};

pub struct WriteHandoff<T> {
    queue: BoundedQueue<T>,
    stop: AtomicBool,
}

impl<T> WriteHandoff<T> {
    /// `capacity` must be a power of two, at least 2.
    pub fn new(capacity: usize) -> Self {
        Self { queue: BoundedQueue::new(capacity), stop: AtomicBool::new(false) }
    }

    /// Producer: queues `value` and wakes `consumer`; hands the value back if the queue is full.
    pub fn push(&self, value: T, consumer: &thread::Thread) -> Result<(), T> {
        self.queue.push(value)?;
        consumer.unpark();
        Ok(())
    }

    /// Producer: asks `consumer` to stop once it has taken everything pushed so far.
    pub fn stop(&self, consumer: &thread::Thread) {
        self.stop.store(true, Ordering::Release);
        consumer.unpark();
    }

    /// Consumer: the next value, waiting for one; `None` once stopped and drained. While the
    /// queue is empty it first polls, yielding the core on each turn, for as long as
    /// `keep_polling` says, then parks.
    pub fn next(&self, mut keep_polling: impl FnMut() -> bool) -> Option<T> {
        loop {
            if let Some(value) = self.queue.pop() {
                return Some(value);
            }
            // Acquire: pairs with `stop`'s Release, so every push made before the stop is
            // visible to the pop below.
            if self.stop.load(Ordering::Acquire) {
                return self.queue.pop();
            }
            while !self.queue.has_ready() && !self.stop.load(Ordering::Relaxed) && keep_polling() {
                thread::yield_now();
            }
            if !self.queue.has_ready() && !self.stop.load(Ordering::Relaxed) {
                thread::park();
            }
        }
    }
}
