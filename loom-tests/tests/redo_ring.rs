//! The mirror's redo ring (one dispatcher, one redo worker), model-checked by loom over all
//! interleavings: values arrive once and in order while the producer laps the ring, the producer's
//! free-slot count is a safe lower bound that follows the consumer, and values still in the ring
//! when both ends are gone are dropped exactly once.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;

use mirrorlog::mirroring::redo_ring::channel;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Capacity 2, four values: the producer wraps around twice while the consumer drains.
#[test]
fn redo_ring_delivers_in_order_across_wrap_around() {
    model(|| {
        let (mut tx, mut rx) = channel::<u32>(2);
        let producer = thread::spawn(move || {
            for v in 0..4u32 {
                let mut value = v;
                while let Err(back) = tx.try_push(value) {
                    value = back;
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 4 {
            match rx.try_pop() {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(rx.try_pop(), None);
        producer.join().unwrap();
    });
}

/// A full ring: the producer waits for `free_slots` to report room, and every slot it reports is
/// really free (the pushes it allows succeed); the count never exceeds the capacity.
#[test]
fn redo_ring_free_slots_follow_the_consumer() {
    model(|| {
        let (mut tx, mut rx) = channel::<u32>(2);
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert_eq!(tx.free_slots(), 0);
        let consumer = thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 3 {
                match rx.try_pop() {
                    Some(v) => got.push(v),
                    None => thread::yield_now(),
                }
            }
            got
        });
        let mut free = tx.free_slots();
        while free == 0 {
            thread::yield_now();
            free = tx.free_slots();
        }
        assert!(free <= 2);
        tx.try_push(3).expect("free_slots promised room");
        assert_eq!(consumer.join().unwrap(), vec![1, 2, 3]);
        assert_eq!(tx.free_slots(), 2, "the joined consumer took everything");
    });
}

/// The ends are dropped on different threads with values still queued: each value is dropped
/// exactly once (loom's `Arc` reports a leak otherwise; the count checks for double drops).
#[test]
fn redo_ring_drops_what_is_left_once() {
    model(|| {
        let value = Arc::new(());
        let (mut tx, mut rx) = channel::<Arc<()>>(2);
        tx.try_push(value.clone()).unwrap();
        tx.try_push(value.clone()).unwrap();
        let consumer = thread::spawn(move || {
            drop(rx.try_pop());
            drop(rx);
        });
        drop(tx);
        consumer.join().unwrap();
        assert_eq!(Arc::strong_count(&value), 1);
    });
}
