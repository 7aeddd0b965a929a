//! Every cross-thread hand-off of the log, model-checked by loom over all interleavings:
//! the hardened-LSN publish/wait, the bounded queue that feeds the log from other threads, the
//! doorbell that wakes a sleeping shard, and the one-shot append reply.
#![cfg(loom)]

use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use mirrorlog::io::doorbell::Doorbell;
use mirrorlog::sync::bounded_queue::BoundedQueue;
use mirrorlog::wal::hardened::{HardenedLsn, LogFailed};
use mirrorlog::wal::remote::AppendReply;
use mirrorlog::wal::Lsn;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// A waiter never sleeps through the publication that satisfies it (loom reports a deadlock if
/// a wake-up is lost).
#[test]
fn hardened_lsn_publish_wakes_the_waiter() {
    model(|| {
        let hardened = Arc::new(HardenedLsn::new(Lsn(0)));
        let publisher = {
            let hardened = hardened.clone();
            thread::spawn(move || {
                hardened.publish(Lsn(5));
                hardened.publish(Lsn(10));
            })
        };
        assert_eq!(hardened.wait_for(Lsn(10)), Ok(()));
        assert!(hardened.get() >= Lsn(10));
        publisher.join().unwrap();
    });
}

#[test]
fn hardened_lsn_failure_wakes_the_waiter_with_an_error() {
    model(|| {
        let hardened = Arc::new(HardenedLsn::new(Lsn(0)));
        let owner = {
            let hardened = hardened.clone();
            thread::spawn(move || {
                hardened.publish(Lsn(5));
                hardened.fail();
            })
        };
        assert_eq!(hardened.wait_for(Lsn(10)), Err(LogFailed));
        owner.join().unwrap();
    });
}

#[test]
fn two_waiters_both_wake() {
    model(|| {
        let hardened = Arc::new(HardenedLsn::new(Lsn(0)));
        let waiter = {
            let hardened = hardened.clone();
            thread::spawn(move || hardened.wait_for(Lsn(3)))
        };
        let publisher = {
            let hardened = hardened.clone();
            thread::spawn(move || hardened.publish(Lsn(7)))
        };
        assert_eq!(hardened.wait_for(Lsn(7)), Ok(()));
        assert_eq!(waiter.join().unwrap(), Ok(()));
        publisher.join().unwrap();
    });
}

/// Two producers, one consumer: every value arrives exactly once, each producer's in order.
#[test]
fn queue_delivers_every_value_once_in_producer_order() {
    model(|| {
        let queue = Arc::new(BoundedQueue::new(2));
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let queue = queue.clone();
                thread::spawn(move || {
                    queue.push(p * 10).unwrap();
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 2 {
            match queue.pop() {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        got.sort();
        assert_eq!(got, vec![0, 10]);
        assert_eq!(queue.pop(), None);
        producers.into_iter().for_each(|p| p.join().unwrap());
    });
}

/// A producer laps the ring (capacity 2, three values) while the consumer drains it.
#[test]
fn queue_wraps_around_without_loss_or_reordering() {
    model(|| {
        let queue = Arc::new(BoundedQueue::new(2));
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || {
                for v in 0..3u32 {
                    let mut value = v;
                    while let Err(back) = queue.push(value) {
                        value = back;
                        thread::yield_now();
                    }
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 3 {
            match queue.pop() {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        assert_eq!(got, vec![0, 1, 2]);
        producer.join().unwrap();
    });
}

/// The eventfd, modelled as a counter under a lock: the shard blocks on it exactly as it blocks in
/// io_uring_enter on the eventfd read.
struct EventFd {
    count: Mutex<u32>,
    cond: Condvar,
}

impl EventFd {
    fn write(&self) {
        *self.count.lock().unwrap() += 1;
        self.cond.notify_all();
    }
    fn read_blocking(&self) {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.cond.wait(count).unwrap();
        }
        *count = 0;
    }
}

/// The shard observes the doorbell, drains its queue and sleeps only if nothing rang since; a
/// producer pushes and rings. Either the shard finds the value, or its sleep is refused, or the
/// producer sees it asleep and writes the eventfd: never neither (loom would report the shard
/// blocked forever).
#[test]
fn doorbell_never_loses_a_wakeup() {
    model(|| {
        let queue = Arc::new(BoundedQueue::new(2));
        let doorbell = Arc::new(Doorbell::without_eventfd());
        let eventfd = Arc::new(EventFd { count: Mutex::new(0), cond: Condvar::new() });
        let producer = {
            let (queue, doorbell, eventfd) = (queue.clone(), doorbell.clone(), eventfd.clone());
            thread::spawn(move || {
                queue.push(7u32).unwrap();
                if doorbell.ring() {
                    eventfd.write();
                }
            })
        };
        // The shard loop, as `io::shard::run` drives it.
        loop {
            let observed = doorbell.observe();
            if let Some(v) = queue.pop() {
                assert_eq!(v, 7);
                break;
            }
            if doorbell.try_sleep(observed) {
                eventfd.read_blocking();
            }
            doorbell.awake();
        }
        producer.join().unwrap();
    });
}

#[test]
fn append_reply_hands_the_lsn_to_the_waiting_thread() {
    model(|| {
        let reply = Arc::new(AppendReply::new());
        let shard = {
            let reply = reply.clone();
            thread::spawn(move || reply.set(Ok(Lsn(48))))
        };
        assert_eq!(reply.wait(), Ok(Lsn(48)));
        shard.join().unwrap();
    });
}

/// The shard hands log writes to its durable-write thread: every write is delivered once and in
/// order, a consumer parked on an empty queue is woken by the next push (loom reports a deadlock
/// if a wake-up is lost), and a stop after the pushes ends the consumer only once it has them all.
#[test]
fn write_handoff_delivers_every_write_then_stops() {
    use mirrorlog::io::write_handoff::WriteHandoff;
    model(|| {
        let handoff = Arc::new(WriteHandoff::new(2));
        let consumer = {
            let handoff = handoff.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(v) = handoff.next(|| false) {
                    got.push(v);
                }
                got
            })
        };
        let t = consumer.thread().clone();
        handoff.push(1u32, &t).unwrap();
        handoff.push(2u32, &t).unwrap();
        handoff.stop(&t);
        assert_eq!(consumer.join().unwrap(), vec![1, 2]);
    });
}

/// As the log uses it: one write in flight, the next pushed only after the consumer reported the
/// previous one done, so the consumer parks between writes and must be woken for each.
#[test]
fn write_handoff_wakes_the_parked_consumer_for_each_write() {
    use loom::sync::atomic::{AtomicU32, Ordering};
    use mirrorlog::io::write_handoff::WriteHandoff;
    model(|| {
        let handoff = Arc::new(WriteHandoff::new(2));
        let done = Arc::new(AtomicU32::new(0));
        let consumer = {
            let (handoff, done) = (handoff.clone(), done.clone());
            thread::spawn(move || {
                while let Some(v) = handoff.next(|| false) {
                    done.store(v, Ordering::Release);
                }
            })
        };
        let t = consumer.thread().clone();
        for v in 1..=2u32 {
            handoff.push(v, &t).unwrap();
            while done.load(Ordering::Acquire) != v {
                thread::yield_now();
            }
        }
        handoff.stop(&t);
        consumer.join().unwrap();
    });
}
