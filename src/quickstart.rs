//! `mirrorlog quickstart`: a principal, a mirror and a witness on this machine, SAFETY FULL, with
//! a live status line; Ctrl-C stops them all. Data, logs and the endpoint key persist in the
//! directory.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::local_pair::{LocalPair, MirrorStatus, PairConfig, Safety};
use crate::error::{Error, Result};

/// The principal's mirroring endpoint port by default (SQL Server's customary 5022); the
/// mirror's is the next one.
pub const PRINCIPAL_ENDPOINT_PORT: u16 = 5022;
/// Databases per server (the server's default).
pub const DATABASES: usize = 4;
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct QuickstartConfig {
    pub exe: PathBuf,
    pub dir: PathBuf,
    /// The principal's RESP port; the mirror's is the next one.
    pub port: u16,
    /// The principal's mirroring endpoint port; the mirror's is the next one.
    pub endpoint_port: u16,
}

static STOP_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe (signal-safety(7)).
    STOP_SIGNALLED.store(true, Ordering::SeqCst);
}

/// Runs until SIGINT or SIGTERM, then stops the principal and the mirror (by pid) and returns.
pub fn run(config: &QuickstartConfig) -> Result<()> {
    let next = |port: u16, flag: &str| {
        port.checked_add(1)
            .filter(|_| port != 0)
            .ok_or_else(|| Error::Config(format!("--{flag} {port} leaves no port for the mirror")))
    };
    let mirror_port = next(config.port, "port")?;
    let mirror_endpoint_port = next(config.endpoint_port, "endpoint-port")?;
    // SAFETY: installs handlers that only store to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop_signal as *const () as libc::sighandler_t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = stop.clone();
    std::thread::spawn(move || loop {
        if STOP_SIGNALLED.load(Ordering::SeqCst) {
            watcher.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut pair_config = PairConfig::new(config.exe.clone(), config.dir.clone(), Safety::Full);
    pair_config.principal_listen = loopback(config.port);
    pair_config.mirror_listen = loopback(mirror_port);
    pair_config.principal_endpoint = Some(loopback(config.endpoint_port));
    pair_config.mirror_endpoint = Some(loopback(mirror_endpoint_port));
    pair_config.databases = DATABASES;
    pair_config.cancel = Some(stop.clone());
    // The witness first (port after the mirror's endpoint): both partners report to it.
    let witness_port = next(mirror_endpoint_port, "endpoint-port")?;
    std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(format!("create {}", config.dir.display()), e))?;
    let key = crate::bench::local_pair::endpoint_key_file(&config.dir)?;
    let mut witness =
        crate::bench::local_pair::start_witness(&config.exe, &config.dir, &key, loopback(witness_port), &[])?;
    pair_config.server_args = vec!["--witness".into(), format!("tcp://{}", loopback(witness_port))];
    println!("mirrorlog quickstart: witness on {} (pid {})", loopback(witness_port), witness.id());
    println!("mirrorlog quickstart: starting a mirror and a principal (SAFETY FULL) in {}", config.dir.display());
    let mut pair = match LocalPair::start(&pair_config) {
        Ok(pair) => pair,
        Err(_) if stop.load(Ordering::SeqCst) => {
            println!("mirrorlog quickstart: stopped before the pair was ready");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    print_intro(&pair, config);
    let outcome = status_loop(&mut pair, &stop);
    println!();
    println!("mirrorlog quickstart: stopping the principal (pid {}) and the mirror", pair.principal.pid());
    let stopped = pair.stop(STOP_TIMEOUT);
    // SAFETY: kill(2) of our own child by pid.
    unsafe { libc::kill(witness.id() as i32, libc::SIGTERM) };
    let _ = witness.wait();
    outcome.and(stopped)?;
    println!("mirrorlog quickstart: both stopped; data kept in {}", config.dir.display());
    Ok(())
}

fn print_intro(pair: &LocalPair, config: &QuickstartConfig) {
    let mirror = pair.mirror.as_ref().expect("quickstart runs a mirror");
    let port = pair.principal.addr().port();
    println!(
        "principal: {} (endpoint {}, pid {})   mirror: {} (endpoint {}, pid {}, RESTORING)",
        pair.principal.addr(),
        pair.principal_endpoint.map_or("?".into(), |a| a.to_string()),
        pair.principal.pid(),
        mirror.addr(),
        pair.mirror_endpoint.map_or("?".into(), |a| a.to_string()),
        mirror.pid()
    );
    println!("data, endpoint.key and the servers' logs (principal.log, mirror.log) are in {}", config.dir.display());
    println!("try, in another terminal:");
    println!("  redis-cli -p {port} set hello world");
    println!("  redis-cli -p {port} mirror status");
    println!("  redis-cli -p {} mirror status      # the mirror's view", mirror.addr().port());
    println!("Ctrl-C stops both servers. Status of database 0, every second:");
}

/// Prints the status line every second until `stop`; an error if a server exits meanwhile.
fn status_loop(pair: &mut LocalPair, stop: &AtomicBool) -> Result<()> {
    // SAFETY: isatty(3) on the standard output descriptor.
    let tty = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        pair.principal.check_running()?;
        if let Some(mirror) = pair.mirror.as_mut() {
            mirror.check_running()?;
        }
        if Instant::now() >= next {
            next += STATUS_INTERVAL;
            let line = status_line(pair);
            if tty {
                print!("\r\x1b[2K{line}");
            } else {
                println!("{line}");
            }
            std::io::stdout().flush().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn status_line(pair: &LocalPair) -> String {
    let principal = pair.principal.mirror_status(0);
    let mirror = pair.mirror.as_ref().map(|m| m.mirror_status(0));
    let field = |s: &Result<MirrorStatus>, name: &str| {
        s.as_ref().ok().and_then(|s| s.get(name).map(str::to_string)).unwrap_or_else(|| "?".into())
    };
    let mirror = mirror.unwrap_or_else(|| Err(Error::Config("no mirror".into())));
    let state = match &principal {
        Ok(s) => s.state().to_string(),
        Err(_) => "principal not answering".into(),
    };
    format!(
        "{} {} | principal hardened {} | mirror hardened {} redone {} | send queue {} B | redo queue {} B",
        time_of_day(),
        state,
        field(&principal, "lsn_hardened"),
        field(&mirror, "lsn_hardened"),
        field(&mirror, "lsn_redone"),
        field(&principal, "send_queue_bytes"),
        field(&mirror, "redo_queue_bytes"),
    )
}

/// HH:MM:SS (UTC), for the status line.
fn time_of_day() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
