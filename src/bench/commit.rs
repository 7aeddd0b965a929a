//! `mirrorlog bench commit`: end-to-end commits through real servers, per safety mode.
//!
//! For each mode (SAFETY FULL, SAFETY OFF, or `none`: a standalone principal) a [`LocalPair`] of
//! child processes is started; for each client count, N client threads (one connection each)
//! send `SET key:<thread>:<n> <value>` in a loop and time every request. After a warm-up the
//! measured window opens; throughput is the commits completed inside it divided by its measured
//! length. Before and after each mode, with no server running, the same run measures the local
//! floor (one 4 KiB O_DIRECT write made durable, QD1, see [`crate::bench::floor`]) and the pair
//! floor (see [`crate::bench::pair_floor`]); each row is shown as a multiple of both.
//!
//! After each mirrored row the principal's and the mirror's `MIRROR STATUS` are read: the
//! mirror's `redo_queue_bytes` is the redo backlog the load left behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::bench::floor::{self, Floor};
use crate::bench::latency::{Latencies, Summary};
use crate::bench::local_pair::{LocalPair, MirrorStatus, PairConfig, Safety};
use crate::bench::pair_floor;
use crate::client::{Client, Value};
use crate::error::{Error, Result};
use crate::io::shard;

#[derive(Debug, Clone)]
pub struct CommitBenchConfig {
    /// The `mirrorlog` executable the servers run from.
    pub exe: PathBuf,
    pub safeties: Vec<Safety>,
    pub clients: Vec<usize>,
    /// Measured time per row (after a warm-up of a tenth of it, 0.2 s to 2 s).
    pub duration: Duration,
    pub value_size: usize,
    /// A work directory is made inside it (data directories and floor files; removed after).
    pub dir: PathBuf,
    /// Floor ops per mode and floor (half before the mode, half after).
    pub floor_ops: usize,
    /// Principal (and pair floor principal) on this core, mirror on the next.
    pub first_core: Option<usize>,
}

/// The floors measured around one mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floors {
    pub local: Floor,
    pub pair: Summary,
}

#[derive(Debug, Clone)]
pub struct CommitRow {
    pub safety: Safety,
    pub clients: usize,
    pub value_size: usize,
    /// Length of the measured window, as measured.
    pub duration_s: f64,
    pub commits: u64,
    pub tps: f64,
    pub latency: Summary,
    pub floors: Floors,
    /// `MIRROR STATUS` after the row, on the principal and on the mirror (mirrored modes only).
    pub principal_status: Option<MirrorStatus>,
    pub mirror_status: Option<MirrorStatus>,
}

/// What one mode produced: its rows, or why it could not run.
#[derive(Debug)]
pub enum ModeResult {
    Rows(Vec<CommitRow>),
    Failed { safety: Safety, error: String },
}

impl CommitRow {
    pub fn ratio_local_p50(&self) -> f64 {
        self.latency.p50_us / self.floors.local.best().1.p50_us
    }

    pub fn ratio_pair_p50(&self) -> f64 {
        self.latency.p50_us / self.floors.pair.p50_us
    }

    /// The mirror's redo backlog after the row, if mirrored and reported.
    pub fn redo_queue_bytes(&self) -> Option<u64> {
        self.mirror_status.as_ref().and_then(|s| s.get_u64("redo_queue_bytes"))
    }

    pub fn to_json(&self) -> String {
        let (method, local) = self.floors.local.best();
        let principal = |name: &str| json_u64(self.principal_status.as_ref().and_then(|s| s.get_u64(name)));
        let mirror = |name: &str| json_u64(self.mirror_status.as_ref().and_then(|s| s.get_u64(name)));
        let state = self.principal_status.as_ref().map_or("null".to_string(), |s| json_string(s.state()));
        format!(
            concat!(
                "{{\"bench\":\"commit\",\"safety\":\"{}\",\"clients\":{},\"value_size\":{},\"duration_s\":{:.3},",
                "\"commits\":{},\"tps\":{:.0},\"p50_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"max_us\":{:.0},",
                "\"mean_us\":{:.1},\"floor_local_method\":\"{}\",\"floor_local_p50_us\":{:.0},\"floor_local_p99_us\":{:.0},",
                "\"floor_pair_p50_us\":{:.0},\"floor_pair_p99_us\":{:.0},\"ratio_local_p50\":{:.3},",
                "\"ratio_pair_p50\":{:.3},\"state\":{},\"send_queue_bytes\":{},\"lsn_hardened\":{},",
                "\"mirror_lsn_hardened\":{},\"mirror_lsn_redone\":{},\"redo_queue_bytes\":{}}}"
            ),
            self.safety.as_str(),
            self.clients,
            self.value_size,
            self.duration_s,
            self.commits,
            self.tps,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            self.latency.mean_us,
            method,
            local.p50_us,
            local.p99_us,
            self.floors.pair.p50_us,
            self.floors.pair.p99_us,
            self.ratio_local_p50(),
            self.ratio_pair_p50(),
            state,
            principal("send_queue_bytes"),
            principal("lsn_hardened"),
            mirror("lsn_hardened"),
            mirror("lsn_redone"),
            mirror("redo_queue_bytes"),
        )
    }
}

impl ModeResult {
    pub fn to_json_lines(&self) -> Vec<String> {
        match self {
            ModeResult::Rows(rows) => rows.iter().map(CommitRow::to_json).collect(),
            ModeResult::Failed { safety, error } => {
                vec![format!(
                    "{{\"bench\":\"commit\",\"safety\":\"{}\",\"error\":{}}}",
                    safety.as_str(),
                    json_string(error)
                )]
            }
        }
    }
}

fn json_u64(v: Option<u64>) -> String {
    v.map_or("null".to_string(), |v| v.to_string())
}

/// A JSON string literal (RFC 8259 §7: quote, backslash and control characters escaped).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs every mode in turn and hands each result to `report` as soon as it is complete. A mode
/// that cannot start is reported as [`ModeResult::Failed`] and the others still run. Must be
/// called from a thread that outlives the servers (see [`crate::bench::local_pair`]).
pub fn run(config: &CommitBenchConfig, mut report: impl FnMut(&ModeResult)) -> Result<Vec<ModeResult>> {
    for &clients in &config.clients {
        if clients == 0 || clients > crate::constants::BENCH_CLIENTS_MAX {
            return Err(Error::Config(format!(
                "clients must be between 1 and {}",
                crate::constants::BENCH_CLIENTS_MAX
            )));
        }
    }
    let work = config.dir.join(format!(".bench-commit-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| Error::io(format!("create {}", work.display()), e))?;
    let mut results = Vec::new();
    for &safety in &config.safeties {
        let result = run_mode(config, safety, &work);
        let result = match result {
            Ok(rows) => ModeResult::Rows(rows),
            Err(e) => ModeResult::Failed { safety, error: e.to_string() },
        };
        report(&result);
        results.push(result);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(results)
}

fn run_mode(config: &CommitBenchConfig, safety: Safety, work: &Path) -> Result<Vec<CommitRow>> {
    let before = measure_floors(config, work)?;
    let data = work.join(safety.as_str());
    let _ = std::fs::remove_dir_all(&data);
    let mut pair_config = PairConfig::new(config.exe.clone(), data.clone(), safety);
    pair_config.first_core = config.first_core;
    let mut rows = Vec::new();
    let outcome = (|| -> Result<()> {
        let pair = LocalPair::start(&pair_config)?;
        let warmup = (config.duration / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let mut thread_base = 0;
        for &clients in &config.clients {
            let load = drive_clients(pair.principal.addr(), clients, thread_base, warmup, config)?;
            thread_base += clients;
            let (principal_status, mirror_status) =
                if safety.mirrored() { pair.statuses(0).map(|(p, m)| (Some(p), m))? } else { (None, None) };
            rows.push(CommitRow {
                safety,
                clients,
                value_size: config.value_size,
                duration_s: load.elapsed.as_secs_f64(),
                commits: load.commits,
                tps: load.commits as f64 / load.elapsed.as_secs_f64(),
                latency: load.latencies.summary(),
                floors: Floors::default(),
                principal_status,
                mirror_status,
            });
        }
        pair.stop(Duration::from_secs(30))
    })();
    let _ = std::fs::remove_dir_all(&data);
    outcome?;
    let after = measure_floors(config, work)?;
    let floors = merge_floors(before, after);
    for row in &mut rows {
        row.floors = floors;
    }
    Ok(rows)
}

struct FloorSamples {
    pwrite_fdatasync: Latencies,
    uring_dsync: Latencies,
    pair: Latencies,
}

fn measure_floors(config: &CommitBenchConfig, work: &Path) -> Result<FloorSamples> {
    let ops = (config.floor_ops / 2).max(1);
    let core = config.first_core.unwrap_or(0);
    let dir = work.to_path_buf();
    // On a pinned thread of its own: the calling thread starts the servers and stays unpinned.
    let (pwrite_fdatasync, uring_dsync) =
        shard::spawn("floor".into(), Some(core), move |ring| floor::measure(&dir, ring, ops))?
            .join()
            .map_err(|_| Error::Config("floor thread panicked".into()))??;
    let pair = pair_floor::measure(work, ops, core)?;
    Ok(FloorSamples { pwrite_fdatasync, uring_dsync, pair })
}

fn merge_floors(mut a: FloorSamples, b: FloorSamples) -> Floors {
    a.pwrite_fdatasync.merge(&b.pwrite_fdatasync);
    a.uring_dsync.merge(&b.uring_dsync);
    a.pair.merge(&b.pair);
    Floors {
        local: Floor { pwrite_fdatasync: a.pwrite_fdatasync.summary(), uring_dsync: a.uring_dsync.summary() },
        pair: a.pair.summary(),
    }
}

struct Load {
    latencies: Latencies,
    commits: u64,
    elapsed: Duration,
}

const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

/// Runs `clients` threads against `addr`: warm-up, then the measured window.
fn drive_clients(
    addr: SocketAddr,
    clients: usize,
    thread_base: usize,
    warmup: Duration,
    config: &CommitBenchConfig,
) -> Result<Load> {
    let phase = Arc::new(AtomicU8::new(PHASE_WARMUP));
    let ready = Arc::new(Barrier::new(clients + 1));
    let mut threads = Vec::with_capacity(clients);
    for i in 0..clients {
        let (phase, ready) = (phase.clone(), ready.clone());
        let value_size = config.value_size;
        let thread = thread_base + i;
        let handle = std::thread::Builder::new()
            .name(format!("bench-client-{thread}"))
            .spawn(move || {
                let client = Client::connect(addr, Duration::from_secs(30));
                ready.wait();
                client_loop(client?, thread, value_size, &phase)
            })
            .map_err(|e| Error::io("spawn client thread", e))?;
        threads.push(handle);
    }
    ready.wait();
    std::thread::sleep(warmup);
    phase.store(PHASE_MEASURE, Ordering::SeqCst);
    let opened = Instant::now();
    std::thread::sleep(config.duration);
    phase.store(PHASE_STOP, Ordering::SeqCst);
    let elapsed = opened.elapsed();
    let mut load = Load { latencies: Latencies::new(), commits: 0, elapsed };
    let mut first_error = None;
    for handle in threads {
        match handle.join() {
            Ok(Ok((latencies, commits))) => {
                load.latencies.merge(&latencies);
                load.commits += commits;
            }
            Ok(Err(e)) => first_error = first_error.or(Some(Error::io(format!("bench client against {addr}"), e))),
            Err(_) => first_error = first_error.or(Some(Error::Config("bench client thread panicked".into()))),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if load.commits == 0 => {
            Err(Error::Config(format!("no commit completed in {elapsed:?} at {clients} clients")))
        }
        None => Ok(load),
    }
}

/// SETs unique keys and values until the phase says stop; times the requests that complete
/// while the window is open.
fn client_loop(
    mut client: Client,
    thread: usize,
    value_size: usize,
    phase: &AtomicU8,
) -> std::io::Result<(Latencies, u64)> {
    let mut latencies = Latencies::new();
    let mut commits = 0;
    let mut key = Vec::with_capacity(32);
    let mut value = Vec::with_capacity(value_size.max(32));
    for n in 0u64.. {
        key.clear();
        key.extend_from_slice(format!("key:{thread}:{n}").as_bytes());
        value.clear();
        value.extend_from_slice(format!("{thread}:{n}:").as_bytes());
        value.resize(value_size.max(value.len()), b'x');
        let started = Instant::now();
        let reply = client.command(&[b"SET", &key, &value])?;
        let elapsed = started.elapsed();
        if reply != Value::Simple("OK".into()) {
            return Err(std::io::Error::other(format!("SET answered {reply:?}")));
        }
        match phase.load(Ordering::Relaxed) {
            PHASE_WARMUP => {}
            PHASE_MEASURE => {
                latencies.record(elapsed);
                commits += 1;
            }
            _ => break,
        }
    }
    Ok((latencies, commits))
}

/// The table header.
pub fn print_header() {
    println!(
        "{:>6} {:>7} {:>10} {:>8} {:>8} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>10}",
        "safety",
        "clients",
        "commits/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "local p50",
        "pair p50",
        "p50/local",
        "p50/pair",
        "redo queue"
    );
}

/// One mode's rows of the table (or its failure), then its floors.
pub fn print_mode(result: &ModeResult) {
    let rows = match result {
        ModeResult::Rows(rows) => rows,
        ModeResult::Failed { safety, error } => {
            println!("{:>6} failed: {}", safety.label(), error.lines().next().unwrap_or(""));
            return;
        }
    };
    for r in rows {
        let redo = match (r.safety.mirrored(), r.redo_queue_bytes()) {
            (false, _) => "-".to_string(),
            (true, None) => "n/a".to_string(),
            (true, Some(b)) => format!("{b} B"),
        };
        println!(
            "{:>6} {:>7} {:>10.0} {:>8.0} {:>8.0} {:>9.0} | {:>9.0} {:>9.0} | {:>9.3} {:>9.3} | {:>10}",
            r.safety.label(),
            r.clients,
            r.tps,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.floors.local.best().1.p50_us,
            r.floors.pair.p50_us,
            r.ratio_local_p50(),
            r.ratio_pair_p50(),
            redo
        );
    }
    if let Some(r) = rows.first() {
        let f = r.floors;
        println!(
            "       floors around {}: local pwrite+fdatasync p50 {:.0} p99 {:.0} us, io_uring+RWF_DSYNC p50 {:.0} p99 {:.0} us; pair (ship || local flush, mirror flush, ack) p50 {:.0} p99 {:.0} us",
            r.safety.label(),
            f.local.pwrite_fdatasync.p50_us,
            f.local.pwrite_fdatasync.p99_us,
            f.local.uring_dsync.p50_us,
            f.local.uring_dsync.p99_us,
            f.pair.p50_us,
            f.pair.p99_us
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn failed_mode_is_one_json_object_with_the_error() {
        let failed = ModeResult::Failed { safety: Safety::Full, error: "mirror: exited\n\"x\"".into() };
        assert_eq!(
            failed.to_json_lines(),
            vec!["{\"bench\":\"commit\",\"safety\":\"full\",\"error\":\"mirror: exited\\n\\\"x\\\"\"}".to_string()]
        );
    }
}
