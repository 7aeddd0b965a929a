//! `mirrorlog bench failover`: how long a database is unavailable when its principal dies.
//!
//! A principal, a mirror (SAFETY FULL) and a witness run as child processes. Each run:
//! 1. waits until the session is SYNCHRONIZED and both partners hold a witness lease, with a
//!    writer committing on the principal;
//! 2. kills the principal with SIGKILL (a crash), and from that instant sends SET to the mirror
//!    every millisecond until one is acknowledged: that delay is the run's failover time
//!    (the partner timeout, the witness's grant, the mirror's redo and role change, and the
//!    first commit, hardened locally: the old principal is gone);
//! 3. restarts the killed server, which learns it was superseded, rejoins as mirror and
//!    synchronizes; the roles are now swapped, and the next run kills the other server.
//!
//! The target (issue 5) is partner timeout + 0.5 s. Every run's time is printed, then the
//! median and the maximum.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::local_pair::{self, LocalPair, PairConfig, Safety, ServerChild};
use crate::client::{Client, Value};
use crate::error::{Error, Result};

/// How often the prober tries a write on the mirror after the kill.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A run whose failover takes longer than this is a failure.
const FAILOVER_WAIT_MAX: Duration = Duration::from_secs(60);
const READY_WAIT_MAX: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct FailoverBenchConfig {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub runs: usize,
    pub partner_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// From SIGKILL of the principal to the first write acknowledged by the new principal.
    pub failover: Duration,
    /// Writes the old principal acknowledged before the kill, in this run.
    pub writes_before: u64,
    /// Of those, missing on the new principal (SAFETY FULL: must be 0).
    pub writes_lost: u64,
    /// From the restart of the killed server to the session SYNCHRONIZED again.
    pub resync: Duration,
}

pub struct Summary {
    pub runs: Vec<Run>,
    pub median: Duration,
    pub max: Duration,
}

fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
    listener.local_addr().map_err(|e| Error::io("local_addr", e))
}

/// Runs the benchmark; `on_run` sees each run as it ends.
pub fn run(config: &FailoverBenchConfig, mut on_run: impl FnMut(usize, &Run)) -> Result<Summary> {
    std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(format!("create {}", config.dir.display()), e))?;
    let key = local_pair::endpoint_key_file(&config.dir)?;
    let witness_addr = free_loopback_port()?;
    let witness_args = [
        "--partner-timeout".to_string(),
        config.partner_timeout.as_secs_f64().to_string(),
        "--sentinel".to_string(),
        "none".to_string(),
    ];
    let mut witness = local_pair::start_witness(&config.exe, &config.dir, &key, witness_addr, &witness_args)?;
    let result = run_with_witness(config, witness_addr, &mut on_run);
    // SAFETY: kill(2) of our own child by pid.
    unsafe { libc::kill(witness.id() as libc::pid_t, libc::SIGTERM) };
    let _ = witness.wait();
    result
}

fn run_with_witness(
    config: &FailoverBenchConfig,
    witness: SocketAddr,
    on_run: &mut impl FnMut(usize, &Run),
) -> Result<Summary> {
    let mut pair_config = PairConfig::new(config.exe.clone(), config.dir.clone(), Safety::Full);
    pair_config.server_args = vec![
        "--witness".into(),
        format!("tcp://{witness}"),
        "--partner-timeout".into(),
        format!("{}", config.partner_timeout.as_secs_f64()),
    ];
    let pair = LocalPair::start(&pair_config)?;
    let LocalPair { principal, mirror, .. } = pair;
    let mut servers = [principal, mirror.expect("a FULL pair has a mirror")];
    let mut principal = 0usize;
    let mut runs = Vec::with_capacity(config.runs);
    for i in 0..config.runs {
        let run = one_run(&mut servers, principal, &pair_config, i)?;
        on_run(i, &run);
        runs.push(run);
        principal = 1 - principal;
    }
    for server in servers.iter_mut() {
        let _ = server.stop(STOP_TIMEOUT);
    }
    let mut times: Vec<Duration> = runs.iter().map(|r| r.failover).collect();
    times.sort();
    let median = times[times.len() / 2];
    let max = *times.last().expect("at least one run");
    Ok(Summary { runs, median, max })
}

fn one_run(servers: &mut [ServerChild; 2], principal: usize, config: &PairConfig, index: usize) -> Result<Run> {
    let mirror = 1 - principal;
    wait_ready(&servers[principal], &servers[mirror])?;
    // A writer on the principal until it dies.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, addr) = (stop.clone(), written.clone(), servers[principal].addr());
        std::thread::spawn(move || {
            let Ok(mut client) = Client::connect(addr, Duration::from_secs(5)) else { return };
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("failover-bench-{index}-{n}");
                match client.command(&[b"SET", key.as_bytes(), b"v"]) {
                    Ok(Value::Simple(ok)) if ok == "OK" => {
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mirror_addr = servers[mirror].addr();
    let killed = Instant::now();
    servers[principal].kill9()?;
    stop.store(true, Ordering::SeqCst);
    let failover = probe_until_written(mirror_addr, killed)?;
    let _ = writer.join();
    let writes_before = written.load(Ordering::SeqCst);
    let writes_lost = count_missing(mirror_addr, index, writes_before)?;
    let restarted = Instant::now();
    servers[principal].restart(config)?;
    wait_ready(&servers[mirror], &servers[principal])?;
    Ok(Run { failover, writes_before, writes_lost, resync: restarted.elapsed() })
}

/// How many of the writer's acknowledged keys `failover-bench-INDEX-1..=written` are missing at
/// `addr`.
fn count_missing(addr: SocketAddr, index: usize, written: u64) -> Result<u64> {
    let mut client =
        Client::connect(addr, Duration::from_secs(5)).map_err(|e| Error::io(format!("connect {addr}"), e))?;
    let mut missing = 0;
    let keys: Vec<String> = (1..=written).map(|n| format!("failover-bench-{index}-{n}")).collect();
    for chunk in keys.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"EXISTS"];
        args.extend(chunk.iter().map(|k| k.as_bytes()));
        match client.command(&args) {
            Ok(Value::Integer(n)) => missing += chunk.len() as u64 - n as u64,
            other => {
                return Err(Error::ChildProcess {
                    name: "bench failover".into(),
                    detail: format!("EXISTS on the new principal answered {other:?}"),
                })
            }
        }
    }
    Ok(missing)
}

/// Sends SET to `addr` every `PROBE_INTERVAL` until one is acknowledged; the time since `from`.
fn probe_until_written(addr: SocketAddr, from: Instant) -> Result<Duration> {
    let mut client: Option<Client> = None;
    loop {
        if from.elapsed() > FAILOVER_WAIT_MAX {
            return Err(Error::ChildProcess {
                name: "bench failover".into(),
                detail: format!("no write acknowledged by {addr} within {FAILOVER_WAIT_MAX:?} of the kill"),
            });
        }
        if client.is_none() {
            client = Client::connect(addr, Duration::from_secs(2)).ok();
        }
        if let Some(c) = client.as_mut() {
            match c.command(&[b"SET", b"failover-bench-probe", b"1"]) {
                Ok(Value::Simple(ok)) if ok == "OK" => return Ok(from.elapsed()),
                Ok(_) => {}              // READONLY, no quorum yet, …
                Err(_) => client = None, // reconnect
            }
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Waits until `principal` is SYNCHRONIZED with SAFETY FULL, both partners are connected to the
/// witness with a valid lease, and the mirror knows it was synchronized: an automatic failover
/// is possible.
fn wait_ready(principal: &ServerChild, mirror: &ServerChild) -> Result<()> {
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        let p = principal.mirror_status(0);
        let m = mirror.mirror_status(0);
        if let (Ok(p), Ok(m)) = (&p, &m) {
            let ready = p.get("role") == Some("principal")
                && p.state() == "SYNCHRONIZED"
                && p.get("witness_lease") == Some("1")
                && m.get("role") == Some("mirror")
                && m.get("witness_lease") == Some("1")
                && m.get("principal_was_synchronized") == Some("1");
            if ready {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::ChildProcess {
                name: "bench failover".into(),
                detail: format!(
                    "the session was not ready for a failover within {READY_WAIT_MAX:?}: principal {p:?}, mirror {m:?}"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
