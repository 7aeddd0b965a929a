//! A shard: one thread, pinned to a core, that owns one ring and runs one event loop.
//!
//! The loop is completion-driven: the work (`ShardWork`) submits operations, the loop submits
//! them and sleeps in io_uring_enter until at least one completes, then hands every completion
//! back to the work. Before sleeping the work gets `before_sleep`, where the log writer submits its
//! gathered batch: that is what makes group commit timer-free.

use std::time::Duration;

use crate::constants::RING_ENTRIES;
use crate::error::{Error, Result};
use crate::io::doorbell::Doorbell;
use crate::io::ring::{Completion, Ring, Token};

/// Reserved token of the doorbell's eventfd read.
pub const DOORBELL_TOKEN: Token = u64::MAX - 1;

/// What a shard runs.
pub trait ShardWork {
    /// Called once before the loop.
    fn start(&mut self, ring: &mut Ring) -> Result<()>;
    /// Called before each sleep; submits whatever is ready. Returning false ends the loop (after
    /// it, operations still in flight are cancelled and reaped by the ring).
    fn before_sleep(&mut self, ring: &mut Ring) -> Result<bool>;
    /// One completion (never the doorbell's).
    fn complete(&mut self, ring: &mut Ring, completion: Completion) -> Result<()>;
    /// Work that is ready without a completion: the loop does not sleep while this is true.
    fn has_pending(&self) -> bool {
        false
    }
    /// The doorbell other threads ring, if this work takes cross-thread input.
    fn doorbell(&self) -> Option<&Doorbell> {
        None
    }
    /// How long the loop polls the ring before it sleeps (see `Ring::submit_and_wait_polling`).
    fn idle_poll(&self) -> Duration {
        Duration::ZERO
    }
}

/// Pins the calling thread to `core` (sched_setaffinity(2)).
pub fn pin_to_core(core: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_ZERO/CPU_SET only write inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(Error::io(format!("pin thread to core {core}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The CPUs this process may run on (its inherited affinity, sched_getaffinity(2)), in order.
/// Shard `i` is pinned to the `i`-th of them, so a process started under `taskset` or with an
/// affinity set by its parent keeps its shards inside that set.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..available_cores()).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Runs `work` on the calling thread's ring until `before_sleep` returns false.
pub fn run(ring: &mut Ring, work: &mut impl ShardWork) -> Result<()> {
    work.start(ring)?;
    let doorbell_fd = work.doorbell().map(|d| d.eventfd()).filter(|&fd| fd >= 0);
    if let Some(fd) = doorbell_fd {
        ring.read_eventfd(fd, DOORBELL_TOKEN)?;
    }
    let mut completions = Vec::with_capacity(RING_ENTRIES as usize);
    loop {
        // Observe the doorbell before `before_sleep` drains the cross-thread queues: a ring after
        // this point makes `try_sleep` fail (see `Doorbell`).
        let observed = work.doorbell().map(|d| d.observe());
        if !work.before_sleep(ring)? {
            return Ok(());
        }
        let mut sleep = !work.has_pending();
        if let (Some(doorbell), Some(observed)) = (work.doorbell(), observed) {
            sleep = sleep && doorbell.try_sleep(observed);
        }
        if sleep && ring.in_flight() > 0 {
            ring.submit_and_wait_polling(work.idle_poll())?;
        } else if sleep {
            return Err(Error::Config("shard loop would sleep forever: nothing in flight and no doorbell".into()));
        } else {
            ring.submit()?;
        }
        if let Some(doorbell) = work.doorbell() {
            doorbell.awake();
        }
        completions.clear();
        ring.reap(&mut completions);
        for completion in completions.drain(..) {
            if completion.token == DOORBELL_TOKEN {
                if let Some(fd) = doorbell_fd {
                    ring.read_eventfd(fd, DOORBELL_TOKEN)?;
                }
                continue;
            }
            work.complete(ring, completion)?;
        }
    }
}

/// Spawns a shard thread pinned to the `core`-th CPU this process may use (when there is one)
/// with its own ring, and runs `body` on it.
pub fn spawn<T: Send + 'static>(
    name: String,
    core: Option<usize>,
    body: impl FnOnce(&mut Ring) -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut durable_write_core = None;
            if let Some(index) = core {
                let cpus = allowed_cpus();
                if index < cpus.len() {
                    pin_to_core(cpus[index])?;
                    // The log's durable-write thread goes on another core than its shard: on the
                    // shard's own core it waited for the busy shard at each of a write's two
                    // wake-ups (1 client: 217-460 µs per write there, 112-120 µs on the other
                    // core; src/docs/log.md).
                    if cpus.len() > 1 {
                        durable_write_core = Some(cpus[(index + 1) % cpus.len()]);
                    }
                }
            }
            let mut ring = Ring::new(RING_ENTRIES)?;
            ring.set_durable_write_core(durable_write_core);
            body(&mut ring)
        })
        .map_err(|e| Error::io("spawn shard thread", e))
}

/// A short sleep on the ring (used by loops that poll with a deadline).
pub fn sleep_on_ring(ring: &mut Ring, after: Duration, token: Token) -> Result<()> {
    ring.timeout(after, token)?;
    Ok(())
}
