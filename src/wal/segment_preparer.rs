//! A background thread that readies the next segment file and retires old ones, so that neither
//! zero-filling 64 MiB nor unlinking a file ever runs on a shard thread's commit path.
//!
//! This is a cold path (one request per segment), so it uses a plain mutex and condition variable.
//!
//! Zero-filling shares the device with the log writes of a loaded server, so it is paced: after
//! each 64 KiB O_DIRECT chunk the thread rests three times as long as the chunk took, unless a log
//! is already waiting for the segment. Measured with redis-benchmark SET at 64 clients, a 64 MiB
//! fill written at full speed during the run doubled the p99 latency.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::constants::{SEGMENTS_RECYCLED_MAX, ZERO_FILL_REST_FACTOR};
use crate::error::{Error, Result};
use crate::wal::segment::{self, SegmentHeader};
use crate::wal::Lsn;

enum Job {
    Prepare(SegmentHeader),
    Retire(PathBuf),
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    prepared: HashMap<Lsn, std::result::Result<PathBuf, String>>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    /// Logs waiting in `take`: while any does, segments are zero-filled at full speed.
    takers_waiting: AtomicUsize,
}

pub struct SegmentPreparer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SegmentPreparer {
    pub fn start(dir: &Path) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            takers_waiting: AtomicUsize::new(0),
        });
        let worker = shared.clone();
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("segment-preparer".into())
            .spawn(move || run(&dir, &worker))
            .map_err(|e| Error::io("spawn segment preparer", e))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Starts preparing the segment `header` describes (idempotent per first LSN).
    pub fn request(&self, header: SegmentHeader) {
        let mut state = self.shared.state.lock().unwrap();
        let queued = state.jobs.iter().any(|j| matches!(j, Job::Prepare(h) if h.first_lsn == header.first_lsn));
        if !queued && !state.prepared.contains_key(&header.first_lsn) {
            state.jobs.push_back(Job::Prepare(header));
            self.shared.cond.notify_all();
        }
    }

    /// Hands a no longer needed segment to be recycled or removed.
    pub fn retire(&self, path: PathBuf) {
        let mut state = self.shared.state.lock().unwrap();
        state.jobs.push_back(Job::Retire(path));
        self.shared.cond.notify_all();
    }

    /// The prepared segment's path; waits if it is not ready yet (requesting it if needed).
    pub fn take(&self, header: SegmentHeader) -> Result<PathBuf> {
        self.request(header);
        let mut state = self.shared.state.lock().unwrap();
        self.shared.takers_waiting.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            if let Some(result) = state.prepared.remove(&header.first_lsn) {
                break result;
            }
            state = self.shared.cond.wait(state).unwrap();
        };
        self.shared.takers_waiting.fetch_sub(1, Ordering::SeqCst);
        result.map_err(|detail| Error::LogFailed(format!("preparing segment at {}: {detail}", header.first_lsn)))
    }

    /// Waits until every queued job is done (tests, clean shutdown).
    pub fn drain(&self) {
        let mut state = self.shared.state.lock().unwrap();
        while !state.jobs.is_empty() {
            state = self.shared.cond.wait(state).unwrap();
        }
    }
}

fn run(dir: &Path, shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.state.lock().unwrap();
            loop {
                if let Some(job) = state.jobs.front() {
                    break match job {
                        Job::Prepare(h) => Job::Prepare(*h),
                        Job::Retire(p) => Job::Retire(p.clone()),
                    };
                }
                if state.shutdown {
                    return;
                }
                state = shared.cond.wait(state).unwrap();
            }
        };
        let outcome = match &job {
            Job::Prepare(header) => {
                let recycled = segment::list_recycled(dir).ok().and_then(|mut v| v.pop());
                let mut pace = |took: Duration| {
                    if shared.takers_waiting.load(Ordering::SeqCst) == 0 {
                        std::thread::sleep(took * ZERO_FILL_REST_FACTOR);
                    }
                };
                let created = segment::create_segment(dir, header, recycled, &mut pace);
                Some((header.first_lsn, created.map_err(|e| e.to_string())))
            }
            Job::Retire(path) => {
                if let Err(e) = segment::retire_segment(dir, path, SEGMENTS_RECYCLED_MAX) {
                    eprintln!("mirrorlog: retiring segment {}: {e}", path.display());
                }
                None
            }
        };
        let mut state = shared.state.lock().unwrap();
        state.jobs.pop_front();
        if let Some((lsn, result)) = outcome {
            state.prepared.insert(lsn, result);
        }
        shared.cond.notify_all();
    }
}

impl Drop for SegmentPreparer {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap();
            state.shutdown = true;
            self.shared.cond.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
