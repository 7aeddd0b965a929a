//! A thread that makes a shard's log writes durable with one blocking system call each, and reports
//! each completion into the shard's ring as if the ring had done the write.
//!
//! Why not the ring itself: an O_DIRECT write with RWF_DSYNC submitted through io_uring on a device
//! without FUA completes in two steps. The write's bio completes in interrupt context, then the
//! cache flush runs from a kernel worker (the direct-I/O completion work queue), and only after
//! that does the ring post the completion. Each step waits for a thread to be scheduled on a CPU
//! that is busy with the clients' network traffic. Measured on this machine with a network load
//! running (`src/docs/log.md`, "Durable writes from a thread"): the ring's write took a median of
//! 315 to 400 µs where a blocking pwrite + fdatasync took 140 to 180 µs. A blocking
//! `pwritev2(RWF_DSYNC)` waits in the calling thread for both steps, so the only wake-ups are this
//! thread's own.
//!
//! The shard keeps group commit as it was: one write in flight, the next submitted when this one
//! completes. It hands a write over through a bounded lock-free queue and unparks the thread; the
//! thread writes, lets go of its reference to the buffer, and posts the result with
//! IORING_OP_MSG_RING into the shard's completion queue under the operation's `user_data`. The
//! buffer is a `SharedBuf` (the same block may be in a zero-copy send to the mirror at the same
//! time): the ring's slot holds one reference and this thread another, so the bytes stay valid
//! until both are done.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::error::{Error, Result};
use crate::io::shared_buf::SharedBuf;
use crate::io::write_handoff::WriteHandoff;
use crate::sync::thread;

/// Writes queued at once at most. The ring hands over one write at a time (a log keeps one write in
/// flight, and a second log's write goes through the ring meanwhile: `Ring::write_shared_durable`);
/// 2 is the queue's smallest size.
const QUEUE_CAPACITY: usize = 2;

/// One durable write, with what its completion must carry.
pub struct DurableWrite {
    pub file: Arc<std::fs::File>,
    pub buf: SharedBuf,
    pub len: usize,
    pub offset: u64,
    /// The `user_data` of the ring slot that waits for this write.
    pub user_data: u64,
}

pub struct DurableWriter {
    handoff: Arc<WriteHandoff<DurableWrite>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DurableWriter {
    /// Starts the thread, pinned to `core` if given; completions go to the ring whose descriptor
    /// is `ring_fd`. After each write the thread polls its queue for up to `poll` before it sleeps
    /// (see `run`).
    pub fn start(ring_fd: RawFd, poll: Duration, core: Option<usize>) -> Result<Self> {
        let handoff = Arc::new(WriteHandoff::new(QUEUE_CAPACITY));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let worker = handoff.clone();
        let name = format!("{}-log", thread::current().name().unwrap_or("shard"));
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Some(core) = core {
                    if let Err(e) = crate::io::shard::pin_to_core(core) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                // A small ring of its own, only to post completions with MSG_RING (a ring created
                // with IORING_SETUP_SINGLE_ISSUER accepts submissions from its creator only).
                let mut ring = match IoUring::new(8) {
                    Ok(ring) => {
                        let _ = ready_tx.send(Ok(()));
                        ring
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(crate::io::probe::explain_setup_error(e)));
                        return;
                    }
                };
                run(&worker, &mut ring, ring_fd, poll);
            })
            .map_err(|e| Error::io("spawn log write thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { handoff, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(Error::Config("the log write thread ended during start-up".into())),
        }
    }

    /// Queues `write` and wakes the thread; hands the write back if the queue is full.
    pub fn push(&self, write: DurableWrite) -> std::result::Result<(), DurableWrite> {
        match &self.thread {
            Some(thread) => self.handoff.push(write, thread.thread()),
            None => Err(write),
        }
    }
}

impl Drop for DurableWriter {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handoff.stop(thread.thread());
            let _ = thread.join();
        }
    }
}

/// The thread's loop: each write as it comes (`WriteHandoff::next` polls, then parks, while there is
/// none). The queue is drained before stopping, so every write handed over gets its completion.
///
/// The poll: the next write comes one round of the shard after a completion (its replies, the
/// clients' next requests). A thread asleep by then is woken through the scheduler, and in a
/// virtual machine a halted vCPU through the host, which cost tens of microseconds per commit at
/// one client (the shard polls its ring before sleeping for the same reason,
/// `Ring::submit_and_wait_polling`). At 64 clients the shard's round is longer than the poll, and
/// polling only took CPU from the client on that core (3 % fewer SETs). So, like the kernel's
/// haltpoll, the thread polls (for up to `poll`, yielding the core on each turn) only while the
/// last write came within `poll` of the completion before it.
fn run(handoff: &WriteHandoff<DurableWrite>, ring: &mut IoUring, target_ring_fd: RawFd, poll: Duration) {
    let mut polling = true;
    loop {
        let idle_since = Instant::now();
        let Some(write) = handoff.next(|| polling && idle_since.elapsed() < poll) else {
            return;
        };
        polling = idle_since.elapsed() < poll;
        let result = write_durably(&write);
        let user_data = write.user_data;
        // Let go of the bytes before the shard hears of the completion, so that the shard's
        // release is the last and the buffer goes back to the log writer for reuse.
        drop(write);
        post(ring, target_ring_fd, user_data, result);
    }
}

/// pwritev2(2) with RWF_DSYNC ("per-write equivalent of O_DSYNC"): the bytes and the device cache
/// flush, in the calling thread. The result is what the ring's write would report: bytes written
/// or a negative errno.
fn write_durably(write: &DurableWrite) -> i32 {
    let iov = libc::iovec { iov_base: write.buf.as_ptr() as *mut libc::c_void, iov_len: write.len };
    loop {
        // SAFETY: the iovec points at `len` bytes of the shared buffer, which this thread holds a
        // reference to for the duration of the call; the file descriptor is held open by `file`.
        let n = unsafe { libc::pwritev2(write.file.as_raw_fd(), &iov, 1, write.offset as i64, libc::RWF_DSYNC) };
        if n >= 0 {
            return n as i32;
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return -errno;
        }
    }
}

/// Posts `result` under `user_data` into the target ring's completion queue. A full target queue
/// (EOVERFLOW) is retried until the shard has reaped: the shard waits for this completion and
/// nothing else would tell it.
fn post(ring: &mut IoUring, target_ring_fd: RawFd, user_data: u64, result: i32) {
    let entry = opcode::MsgRingData::new(types::Fd(target_ring_fd), result, user_data, None).build();
    loop {
        // SAFETY: the entry points at no memory.
        while unsafe { ring.submission().push(&entry) }.is_err() {
            let _ = ring.submit();
            ring.completion().for_each(drop);
        }
        let posted = loop {
            match ring.submit_and_wait(1) {
                Ok(_) => break ring.completion().map(|cqe| cqe.result()).min().unwrap_or(0),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => break -e.raw_os_error().unwrap_or(libc::EIO),
            }
        };
        match posted {
            0.. => return,
            e if e == -libc::EOVERFLOW || e == -libc::EAGAIN || e == -libc::EBUSY => {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            e => {
                // Only a closed target ring gets here (the ring waits for its writes before it
                // closes), and then no one waits for the completion.
                eprintln!(
                    "mirrorlog: log write thread cannot post a completion (MSG_RING): {}",
                    std::io::Error::from_raw_os_error(-e)
                );
                return;
            }
        }
    }
}
