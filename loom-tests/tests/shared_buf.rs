//! One buffer, two consumers: a log block is read by the disk write and by the zero-copy send
//! to the mirror, and goes back to the log exactly once, to whichever consumer finishes last —
//! model-checked by loom over every interleaving of the two releases (on two threads here; the
//! server happens to receive both completions on one shard thread, which this covers too).
#![cfg(loom)]

use loom::thread;

use mirrorlog::io::buffer::AlignedBuf;
use mirrorlog::io::shared_buf::SharedBuf;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn a_log_buffer_is_recycled_once_after_both_consumers() {
    model(|| {
        let mut buf = AlignedBuf::new(4096);
        buf.set_len(64);
        buf.fill(0x5a);
        let write = SharedBuf::new(buf);
        let send = write.share();
        let sender = thread::spawn(move || {
            // The send reads the bytes while the write may still hold them.
            assert!(send.iter().all(|&b| b == 0x5a));
            send.release()
        });
        assert!(write.iter().all(|&b| b == 0x5a));
        let by_write = write.release();
        let by_send = sender.join().unwrap();
        assert!(by_write.is_some() != by_send.is_some(), "exactly one consumer gets the buffer back");
        let back = by_write.or(by_send).unwrap();
        assert_eq!(back.len(), 64);
        assert!(back.iter().all(|&b| b == 0x5a));
    });
}

#[test]
fn a_consumer_dropped_on_an_error_path_still_lets_the_other_recycle() {
    model(|| {
        let write = SharedBuf::new(AlignedBuf::new(4096));
        let send = write.share();
        let sender = thread::spawn(move || drop(send));
        let by_write = write.release();
        sender.join().unwrap();
        // Either the write released last (and got it) or the dropped sender was last (and
        // freed it): never both, never a double free.
        let _ = by_write;
    });
}
