//! `mirrorlog bench wal`: N committers on one shard, each appending one record and waiting for it
//! to harden, in a loop; beside it, in the same run and directory, the machine's floor.
//!
//! The committers live on the log's own shard thread, as client connections will: a commit costs
//! no cross-thread hand-off (each costs 30-40 µs here; see ../shared/CRATES.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bench::floor::{self, Floor};
use crate::bench::latency::{Latencies, Summary};
use crate::error::{Error, Result};
use crate::io::ring::{Completion, Ring, Token};
use crate::io::shard::{self, ShardWork};
use crate::wal::{AppendError, DbId, LogConfig, LogWriter, RecordKind, Wake};

#[derive(Debug, Clone)]
pub struct WalBenchConfig {
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub record_size: usize,
    /// Where the log and the floor file go (a fresh directory is made inside it).
    pub dir: PathBuf,
    pub segment_size: u64,
    pub floor_ops: usize,
    /// How the log's writes are made durable.
    pub log_writes: crate::io::ring::DurableWrites,
    /// How long the durable-write thread polls for the next write (as `serve --idle-poll-us`).
    pub idle_poll: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct WalBenchResult {
    pub clients: usize,
    pub record_size: usize,
    pub duration_s: f64,
    pub commits: u64,
    pub tps: f64,
    pub latency: Summary,
    pub flushes_per_s: f64,
    pub records_per_flush: f64,
    pub records_per_flush_max: u64,
    pub floor: Floor,
}

impl WalBenchResult {
    pub fn ratio_p50(&self) -> f64 {
        self.latency.p50_us / self.floor.best().1.p50_us
    }

    pub fn to_json(&self) -> String {
        let (method, best) = self.floor.best();
        format!(
            concat!(
                "{{\"bench\":\"wal\",\"clients\":{},\"record_size\":{},\"duration_s\":{:.2},\"commits\":{},\"tps\":{:.0},",
                "\"p50_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"max_us\":{:.0},\"flushes_per_s\":{:.0},",
                "\"records_per_flush\":{:.2},\"records_per_flush_max\":{},\"floor_method\":\"{}\",\"floor_p50_us\":{:.0},",
                "\"floor_p99_us\":{:.0},\"floor_pwrite_fdatasync_p50_us\":{:.0},\"floor_pwrite_fdatasync_p99_us\":{:.0},",
                "\"floor_uring_dsync_p50_us\":{:.0},\"floor_uring_dsync_p99_us\":{:.0},\"ratio_p50\":{:.3}}}"
            ),
            self.clients,
            self.record_size,
            self.duration_s,
            self.commits,
            self.tps,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            self.flushes_per_s,
            self.records_per_flush,
            self.records_per_flush_max,
            method,
            best.p50_us,
            best.p99_us,
            self.floor.pwrite_fdatasync.p50_us,
            self.floor.pwrite_fdatasync.p99_us,
            self.floor.uring_dsync.p50_us,
            self.floor.uring_dsync.p99_us,
            self.ratio_p50()
        )
    }
}

/// Runs the benchmark for each client count, with the floor measured before and after each.
pub fn run(config: &WalBenchConfig) -> Result<Vec<WalBenchResult>> {
    for &clients in &config.clients {
        if clients == 0 || clients > crate::constants::BENCH_CLIENTS_MAX {
            return Err(Error::Config(format!(
                "clients must be between 1 and {}",
                crate::constants::BENCH_CLIENTS_MAX
            )));
        }
    }
    std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(format!("create {}", config.dir.display()), e))?;
    let work_dir = tempfile_dir(&config.dir)?;
    let config = config.clone();
    let dir = work_dir.clone();
    let handle = shard::spawn("bench-wal".into(), Some(0), move |ring| {
        ring.set_durable_writes(config.log_writes, config.idle_poll);
        let mut results = Vec::new();
        for (i, &clients) in config.clients.iter().enumerate() {
            let (psync_a, uring_a) = floor::measure(&dir, ring, config.floor_ops / 2)?;
            let log_dir = dir.join(format!("log-{i}"));
            let mut result = run_one(&config, clients, &log_dir, ring)?;
            let _ = std::fs::remove_dir_all(&log_dir);
            let (psync_b, uring_b) = floor::measure(&dir, ring, config.floor_ops / 2)?;
            let (mut psync, mut uring) = (psync_a, uring_a);
            psync.merge(&psync_b);
            uring.merge(&uring_b);
            result.floor = Floor { pwrite_fdatasync: psync.summary(), uring_dsync: uring.summary() };
            results.push(result);
        }
        Ok(results)
    })?;
    let outcome = handle.join().map_err(|_| Error::Config("benchmark thread panicked".into()))?;
    let _ = std::fs::remove_dir_all(&work_dir);
    outcome
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("bench-wal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

const LOG_TOKEN: Token = 1 << 40;

struct Committers {
    log: LogWriter,
    body: Vec<u8>,
    started: Vec<Instant>,
    latencies: Latencies,
    measure_from: Instant,
    deadline: Instant,
    stopping: bool,
    commits_measured: u64,
    writes_at_measure: Option<(u64, u64)>,
    wakes: Vec<Wake>,
}

impl Committers {
    fn issue(&mut self, client: usize) -> Result<()> {
        self.started[client] = Instant::now();
        match self.log.append(RecordKind::DATA, &self.body) {
            Ok(end) => {
                let already = self.log.wait_hardened(end, client as Token);
                assert!(!already, "a record cannot be hardened when appended");
                Ok(())
            }
            Err(AppendError::Full) => {
                self.log.wait_for_space(client as Token);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl ShardWork for Committers {
    fn start(&mut self, _ring: &mut Ring) -> Result<()> {
        for client in 0..self.started.len() {
            self.issue(client)?;
        }
        Ok(())
    }

    fn before_sleep(&mut self, ring: &mut Ring) -> Result<bool> {
        let now = Instant::now();
        if now >= self.measure_from && self.writes_at_measure.is_none() {
            self.writes_at_measure = Some((self.log.stats.writes, self.log.stats.records_hardened));
        }
        if now >= self.deadline {
            self.stopping = true;
        }
        self.log.submit(ring)?;
        Ok(!self.stopping || self.log.write_in_flight())
    }

    fn complete(&mut self, _ring: &mut Ring, completion: Completion) -> Result<()> {
        self.log.complete(completion, &mut self.wakes);
        let wakes = std::mem::take(&mut self.wakes);
        let now = Instant::now();
        for wake in &wakes {
            match *wake {
                Wake::Hardened(client) => {
                    if now >= self.measure_from && now < self.deadline {
                        self.latencies.record(now - self.started[client as usize]);
                        self.commits_measured += 1;
                    }
                    if !self.stopping {
                        self.issue(client as usize)?;
                    }
                }
                Wake::Space(client) => {
                    if !self.stopping {
                        self.issue(client as usize)?;
                    }
                }
                Wake::Failed(_) => return Err(Error::LogFailed("log failed during the benchmark".into())),
            }
        }
        self.wakes = wakes;
        self.wakes.clear();
        Ok(())
    }
}

fn run_one(config: &WalBenchConfig, clients: usize, log_dir: &Path, ring: &mut Ring) -> Result<WalBenchResult> {
    let mut log_config = LogConfig::new(log_dir, DbId(1));
    log_config.segment_size = config.segment_size;
    let (log, _) = LogWriter::open(log_config, LOG_TOKEN)?;
    // Let the background preparer finish the spare segment before timing starts.
    log.drain_background();
    let warmup = (config.duration / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let now = Instant::now();
    let mut work = Committers {
        log,
        body: (0..config.record_size).map(|i| (i % 251) as u8).collect(),
        started: vec![now; clients],
        latencies: Latencies::new(),
        measure_from: now + warmup,
        deadline: now + warmup + config.duration,
        stopping: false,
        commits_measured: 0,
        writes_at_measure: None,
        wakes: Vec::new(),
    };
    shard::run(ring, &mut work)?;
    let window = config.duration.as_secs_f64();
    let (writes0, records0) = work.writes_at_measure.unwrap_or((0, 0));
    let writes = work.log.stats.writes - writes0;
    let records = work.log.stats.records_hardened - records0;
    Ok(WalBenchResult {
        clients,
        record_size: config.record_size,
        duration_s: window,
        commits: work.commits_measured,
        tps: work.commits_measured as f64 / window,
        latency: work.latencies.summary(),
        flushes_per_s: writes as f64 / window,
        records_per_flush: if writes > 0 { records as f64 / writes as f64 } else { 0.0 },
        records_per_flush_max: work.log.stats.records_per_write_max,
        floor: Floor::default(),
    })
}

/// The human-readable table.
pub fn print_table(results: &[WalBenchResult]) {
    println!(
        "{:>7} {:>10} {:>8} {:>8} {:>9} {:>9} {:>13} | {:>10} {:>10} | {:>9}",
        "clients",
        "commits/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "flushes/s",
        "records/flush",
        "floor p50",
        "floor p99",
        "p50/floor"
    );
    for r in results {
        let (_, best) = r.floor.best();
        println!(
            "{:>7} {:>10.0} {:>8.0} {:>8.0} {:>9.0} {:>9.0} {:>13.2} | {:>10.0} {:>10.0} | {:>9.3}",
            r.clients,
            r.tps,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.flushes_per_s,
            r.records_per_flush,
            best.p50_us,
            best.p99_us,
            r.ratio_p50()
        );
    }
    if let Some(r) = results.first() {
        println!(
            "floor: 4 KiB O_DIRECT write made durable at QD1 on a prefilled file in the same directory, measured before and after each row: pwrite+fdatasync p50 {:.0} us p99 {:.0} us; io_uring write+RWF_DSYNC p50 {:.0} us p99 {:.0} us; the faster ({}) is the floor",
            r.floor.pwrite_fdatasync.p50_us,
            r.floor.pwrite_fdatasync.p99_us,
            r.floor.uring_dsync.p50_us,
            r.floor.uring_dsync.p99_us,
            r.floor.best().0
        );
    }
    if let (Some(one), Some(last)) = (results.iter().find(|r| r.clients == 1), results.iter().max_by_key(|r| r.clients))
    {
        if last.clients > 1 {
            println!(
                "throughput at {} clients = {:.1} x the 1-client figure (same run)",
                last.clients,
                last.tps / one.tps
            );
        }
    }
}
