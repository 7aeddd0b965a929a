//! The `mirrorlog` binary: one binary for every role and tool.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mirrorlog::bench::wal::{self as wal_bench, WalBenchConfig};
use mirrorlog::constants::SEGMENT_SIZE_DEFAULT;

#[derive(Parser)]
#[command(
    name = "mirrorlog",
    version,
    about = "SQL Server-style database mirroring on io_uring: a direct-I/O write-ahead log shipped to a mirror"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves databases over RESP (the Redis protocol). Every flag can also be set in a config
    /// file (`--config FILE`, one `name value` per line); flags on the command line win.
    Serve(Box<ServeArgs>),
    /// Benchmarks, each beside the machine's floor in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Administers a server's database mirroring (the same MIRROR commands redis-cli can send).
    Ctl(CtlArgs),
    /// The deterministic simulator of a mirroring session (two partners, a witness, faults):
    /// `--seeds N` runs seeds 1..=N, `--seed S` replays one.
    Sim {
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Runs a witness: it holds no data, watches both partners of each session it serves and
    /// grants automatic failovers (one per role sequence, persisted in --data).
    Witness {
        /// Where partners connect.
        #[arg(long, default_value = "127.0.0.1:5024")]
        endpoint: std::net::SocketAddr,
        /// Where grants are persisted.
        #[arg(long, default_value = "./mirrorlog-data/witness")]
        data: PathBuf,
        /// The shared key (the partners' --endpoint-key-file).
        #[arg(long)]
        endpoint_key_file: PathBuf,
        /// Seconds without hearing a principal before its mirror may be granted a failover; the
        /// partners' --partner-timeout.
        #[arg(long, default_value_t = 10.0)]
        partner_timeout: f64,
        /// Where Redis Sentinel's discovery commands are answered (SENTINEL
        /// get-master-addr-by-name dbN …), so Sentinel-aware clients find the principal; `none`
        /// to turn it off.
        #[arg(long, default_value = "127.0.0.1:26379")]
        sentinel: String,
    },
    /// Offline verification of on-disk state.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Start-up checks: io_uring, kernel operations, O_DIRECT on a directory.
    Check {
        /// Directory whose file system must support O_DIRECT.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Starts a principal and a mirror (SAFETY FULL) on this machine and shows their status
    /// every second; Ctrl-C stops both. Data persists in --dir across runs.
    Quickstart {
        /// Holds both servers' data, the endpoint key and their logs.
        #[arg(long, default_value = "./mirrorlog-data/quickstart")]
        dir: PathBuf,
        /// The principal's RESP port (the mirror listens on the next one).
        #[arg(long, default_value_t = 6379)]
        port: u16,
        /// The principal's mirroring endpoint port (the mirror's is the next one).
        #[arg(long, default_value_t = mirrorlog::quickstart::PRINCIPAL_ENDPOINT_PORT)]
        endpoint_port: u16,
        /// Run the servers from this executable instead of this one (`EXE serve …`).
        #[arg(long, hide = true)]
        server_exe: Option<PathBuf>,
    },
    /// A fault-injecting TCP proxy on loopback, for experiments by hand or from scripts: give a
    /// partner (or the witness) the printed address instead of the target's, then type faults on
    /// standard input, one per line: heal, cut, blackhole, blackhole-to-target,
    /// blackhole-from-target, delay MS, flip-to-target, flip-from-target; `stats` prints the
    /// traffic so far. End of input stops it.
    FaultProxy {
        /// Where the proxy forwards to (a loopback address only).
        #[arg(long)]
        target: std::net::SocketAddr,
    },
    /// Tools for tests (crash children); not for production use.
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
struct ServeArgs {
    /// Address to serve clients on (RESP).
    #[arg(long, default_value = "127.0.0.1:6379")]
    listen: std::net::SocketAddr,
    /// Data directory (one subdirectory per database: log and data file).
    #[arg(long, default_value = "./mirrorlog-data")]
    data: PathBuf,
    /// Number of databases (SELECT 0..N-1), each with its own log and data file.
    #[arg(long, default_value_t = 4)]
    databases: usize,
    /// Page cache, shared evenly by the databases (K, M, G suffixes; at least 17 MiB per database).
    #[arg(long, default_value = "256MiB", value_parser = mirrorlog::config_file::parse_size)]
    cache_size: u64,
    /// Log segment size (K, M, G suffixes).
    #[arg(long, default_value = "64MiB", value_parser = mirrorlog::config_file::parse_size)]
    segment_size: u64,
    /// Password clients must give with AUTH (none by default).
    #[arg(long)]
    requirepass: Option<String>,
    /// Most clients connected at once; more are refused with an error.
    #[arg(long, default_value_t = 10_000)]
    maxclients: usize,
    /// Seconds between checkpoints (dirty pages written, old log released).
    #[arg(long, default_value_t = 30.0)]
    checkpoint_interval: f64,
    /// Shard threads, one per core, each owning the databases `i % shards`; 0 = one per core
    /// (at most one per database).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Microseconds a shard thread polls its ring for new work before it sleeps (0 = sleep at
    /// once), and the log write thread its queue (that one only while writes come that close
    /// together). Polling keeps a core awake for the next request: waking a sleeping core costs
    /// tens of microseconds on virtual machines. A shard polls only after work, never while idle.
    #[arg(long, default_value_t = 200)]
    idle_poll_us: u64,
    /// How a log write is made durable: `thread` (a blocking pwritev2 with RWF_DSYNC on a thread
    /// beside each shard, which reports to the shard's ring) or `ring` (an io_uring write with
    /// RWF_DSYNC). With the CPUs busy serving clients, `thread` took half the time per write on
    /// the machine it was measured on (see src/docs/log.md).
    #[arg(long, default_value = "thread", value_parser = ["thread", "ring"])]
    log_writes: String,
    /// Read settings from this file first (`name value` per line; flags given here win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Database mirroring endpoint: partners (and later the witness) connect here. It listens
    /// only when --endpoint-key-file is given.
    #[arg(long, default_value = "127.0.0.1:5022")]
    endpoint: std::net::SocketAddr,
    /// File holding the shared key partners prove to each other (challenge-response; the key is
    /// never sent). At least 16 bytes. Without it, mirroring is off.
    #[arg(long)]
    endpoint_key_file: Option<PathBuf>,
    /// The partner's endpoint, tcp://HOST:PORT. On a principal: every database is mirrored to it.
    /// With --restoring: the principal expected to connect (shown in status).
    #[arg(long)]
    partner: Option<String>,
    /// Transaction safety of new mirroring sessions: full (a commit waits for the mirror to
    /// harden it) or off (it waits for the local flush only). Changeable at runtime with
    /// MIRROR SET SAFETY.
    #[arg(long, default_value = "full", value_parser = ["full", "off", "FULL", "OFF"])]
    safety: String,
    /// Seconds without hearing the partner before it counts as lost (SAFETY FULL then holds
    /// commits no longer: the principal runs exposed). At least 1.
    #[arg(long, default_value_t = 10.0)]
    partner_timeout: f64,
    /// Databases without mirroring settings start as mirror copies (RESTORING, as after a restore
    /// WITH NORECOVERY): empty, read-only, waiting for a principal.
    #[arg(long)]
    restoring: bool,
    /// Compression of shipped log frames: none or lz4 (when the partner speaks a version with it).
    #[arg(long, default_value = "none", value_parser = ["none", "lz4"])]
    log_compression: String,
    /// Most log kept for a lagging or suspended mirror (K, M, G suffixes); beyond it the session
    /// is suspended with a message and the log released, rather than fill the disk.
    #[arg(long, default_value = "4GiB", value_parser = mirrorlog::config_file::parse_size)]
    max_log_retention: u64,
    /// Redo worker threads per mirror database (pages are partitioned among them).
    #[arg(long, default_value_t = 2)]
    redo_workers: usize,
    /// The witness, tcp://HOST:PORT (`mirrorlog witness`), on both partners: automatic
    /// failover, and a principal that loses both its mirror and the witness stops serving.
    #[arg(long)]
    witness: Option<String>,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The server (its client address, RESP).
    #[arg(long, default_value = "127.0.0.1:6379")]
    server: std::net::SocketAddr,
    /// Password for AUTH, if the server has --requirepass.
    #[arg(long)]
    password: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Shows the database's mirroring status (role, state, safety, LSNs, send and redo queues).
    Status { db: usize },
    /// Sets the partner: on a RESTORING database (the mirror) first, then on the principal,
    /// which starts the session. PARTNER is tcp://HOST:PORT of the other side's endpoint.
    SetPartner { db: usize, partner: String },
    /// Sets the witness (on both partners): WITNESS is tcp://HOST:PORT of `mirrorlog witness`'s
    /// endpoint. With SAFETY FULL it makes failover automatic.
    SetWitness { db: usize, witness: String },
    /// Sets the transaction safety on the principal: full or off.
    SetSafety {
        db: usize,
        #[arg(value_parser = ["full", "off", "FULL", "OFF"])]
        safety: String,
    },
    /// Suspends the session on the principal (the log is kept for the mirror until RESUME).
    Suspend { db: usize },
    /// Resumes a suspended session.
    Resume { db: usize },
    /// Ends the session (MIRROR OFF).
    Remove { db: usize },
    /// Manual failover, on the principal: SAFETY FULL, SYNCHRONIZED; the roles swap with no
    /// data loss (PENDING_FAILOVER while the log drains).
    Failover { db: usize },
    /// Forced service, on the mirror when the principal is gone: it serves with the log it has
    /// (possible data loss) at a new role sequence that fences the old principal.
    ForceService { db: usize },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Commits through real servers: a principal and a mirror (SAFETY FULL or OFF) or a
    /// standalone server, N clients sending SET, beside the local and the pair floor.
    Commit(CommitBenchArgs),
    /// Automatic failover: a principal, a mirror (SAFETY FULL) and a witness; the principal is
    /// killed (SIGKILL) and the time to the first write acknowledged by the new principal is
    /// measured; the killed server rejoins as mirror and the next run kills the other one.
    Failover {
        /// Failovers to measure.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The partner timeout, in seconds (the target: failover within it + 0.5 s).
        #[arg(long, default_value_t = 1.0)]
        partner_timeout: f64,
        /// Directory for the servers' data, the witness's and the logs (must support O_DIRECT).
        #[arg(long, default_value = ".bench-failover")]
        dir: PathBuf,
        /// Print one JSON object per run and one for the summary instead of the table.
        #[arg(long)]
        json: bool,
        /// Run the servers and the witness from this executable instead of this one.
        #[arg(long)]
        server_exe: Option<PathBuf>,
    },
    /// Group commit: N committers each append one record and wait for it to harden, in a loop.
    Wal {
        /// Concurrent committers; a comma-separated list runs one row per count.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        clients: Vec<usize>,
        /// Measured seconds per row (after a warm-up of a tenth of it, 0.2 s to 2 s).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Record body size in bytes.
        #[arg(long, default_value_t = 128)]
        record_size: usize,
        /// Directory for the log and the floor file (must support O_DIRECT).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Log segment size in bytes.
        #[arg(long, default_value_t = SEGMENT_SIZE_DEFAULT)]
        segment_size: u64,
        /// Floor writes per row (half before, half after it).
        #[arg(long, default_value_t = 2000)]
        floor_ops: usize,
        /// Print one JSON object per row instead of the table.
        #[arg(long)]
        json: bool,
        /// How each log write is made durable: `thread` or `ring` (as `serve --log-writes`).
        #[arg(long, default_value = "thread", value_parser = ["thread", "ring"])]
        log_writes: String,
        /// Microseconds the log write thread polls for the next write before it sleeps (as
        /// `serve --idle-poll-us`).
        #[arg(long, default_value_t = 200)]
        idle_poll_us: u64,
    },
}

#[derive(clap::Args)]
struct CommitBenchArgs {
    /// Safety modes, one block of rows each: full, off (a mirror), none (a standalone server).
    #[arg(long, value_delimiter = ',', default_value = "full,off,none")]
    safety: Vec<String>,
    /// Concurrent clients (one connection each); a comma-separated list runs one row per count.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per row (after a warm-up of a tenth of it, 0.2 s to 2 s).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Value size of each SET, in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Directory for the servers' data and the floor files (must support O_DIRECT).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print one JSON object per mode and client count instead of the table.
    #[arg(long)]
    json: bool,
    /// Floor writes per mode, for each floor (half before the mode, half after it).
    #[arg(long, default_value_t = 2000)]
    floor_ops: usize,
    /// Pin the principal to this core and the mirror to the next one, as the floors' principal
    /// and mirror threads are; `none` leaves the servers unpinned.
    #[arg(long, default_value = "0")]
    first_core: String,
    /// Run the servers from this executable instead of this one (`EXE serve …`), e.g. another
    /// build.
    #[arg(long)]
    server_exe: Option<PathBuf>,
}

#[derive(Subcommand)]
enum InspectCommand {
    /// Lists segments and records, verifies every checksum, prints the LSN range and the first problem.
    Wal {
        /// The log directory.
        dir: PathBuf,
        /// List every record too.
        #[arg(long)]
        records: bool,
    },
    /// Verifies every page checksum of every database under DIR and prints a digest of each.
    Pages {
        /// A server data directory (holding db0, db1, …) or one database's directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Appends records in a loop and prints `ack <seq> <end_lsn>` per hardened record.
    AppendLoop {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 256 * 1024)]
        segment_size: u64,
        #[arg(long, default_value_t = 3000)]
        body_size_max: usize,
        /// Stop after this many records (default: run until killed).
        #[arg(long)]
        records: Option<u64>,
    },
}

fn main() {
    let argv = match mirrorlog::config_file::expand(std::env::args().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("mirrorlog: error: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(argv);
    if let Err(e) = run(cli) {
        eprintln!("mirrorlog: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args)?,
        Command::Bench(BenchCommand::Wal {
            clients,
            duration,
            record_size,
            dir,
            segment_size,
            floor_ops,
            json,
            log_writes,
            idle_poll_us,
        }) => {
            mirrorlog::io::probe::check_io_uring()?;
            mirrorlog::io::probe::check_direct_io(&dir)?;
            anyhow::ensure!(duration > 0.0, "--duration must be positive");
            anyhow::ensure!(
                record_size <= mirrorlog::constants::RECORD_BODY_SIZE_MAX,
                "--record-size must be at most {}",
                mirrorlog::constants::RECORD_BODY_SIZE_MAX
            );
            let config = WalBenchConfig {
                clients,
                duration: Duration::from_secs_f64(duration),
                record_size,
                dir,
                segment_size,
                floor_ops: floor_ops.max(2),
                log_writes: mirrorlog::io::ring::DurableWrites::parse(&log_writes).expect("checked by clap"),
                idle_poll: Duration::from_micros(idle_poll_us),
            };
            if !json {
                println!(
                    "mirrorlog bench wal: record body {} B, {:.1} s per row, log writes by the {}, log in {}, kernel {}",
                    record_size,
                    duration,
                    log_writes,
                    config.dir.display(),
                    mirrorlog::io::probe::kernel_release()
                );
            }
            let results = wal_bench::run(&config)?;
            if json {
                for r in &results {
                    println!("{}", r.to_json());
                }
            } else {
                wal_bench::print_table(&results);
            }
        }
        Command::Bench(BenchCommand::Commit(args)) => bench_commit(args)?,
        Command::Bench(BenchCommand::Failover { runs, partner_timeout, dir, json, server_exe }) => {
            bench_failover(runs, partner_timeout, dir, json, server_exe)?
        }
        Command::Witness { endpoint, data, endpoint_key_file, partner_timeout, sentinel } => {
            let sentinel = match sentinel.as_str() {
                "none" => None,
                s => Some(s.parse().map_err(|_| anyhow::anyhow!("--sentinel takes HOST:PORT or none"))?),
            };
            anyhow::ensure!(partner_timeout >= 1.0, "--partner-timeout must be at least 1 second");
            let key = mirrorlog::wire::handshake::load_key(&endpoint_key_file).map_err(anyhow::Error::msg)?;
            let stop = install_stop_signals();
            let config = mirrorlog::witness::server::WitnessConfig {
                endpoint,
                data: data.clone(),
                key: std::sync::Arc::new(key),
                partner_timeout: Duration::from_secs_f64(partner_timeout),
                sentinel,
            };
            mirrorlog::witness::server::run(config, stop, |addr, sentinel| {
                println!("mirrorlog: witness serving from {} on {addr}", data.display());
                if let Some(sentinel) = sentinel {
                    println!("mirrorlog: Sentinel discovery commands answered on {sentinel}");
                }
                use std::io::Write;
                std::io::stdout().flush().ok();
            })?;
            eprintln!("mirrorlog: witness stopped");
        }
        Command::Sim { seeds, seed } => {
            let range = match seed {
                Some(s) => s..=s,
                None => 1..=seeds,
            };
            let started = std::time::Instant::now();
            // Seeds are independent: one thread per core, each taking every n-th seed.
            let threads = mirrorlog::io::shard::available_cores().max(1) as u64;
            let seeds: Vec<u64> = range.collect();
            let outcomes: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let mine: Vec<u64> = seeds.iter().copied().filter(|s| s % threads == t).collect();
                        scope.spawn(move || {
                            mine.into_iter().map(|s| mirrorlog::testing::sim::run(s, None)).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().expect("a simulation thread panicked")).collect()
            });
            let (mut passed, mut failed, mut commits, mut failovers) = (0u64, 0u64, 0u64, 0u64);
            for outcome in &outcomes {
                commits += outcome.commits_acknowledged;
                failovers += outcome.failovers;
                if outcome.violations.is_empty() {
                    passed += 1;
                } else {
                    failed += 1;
                    let s = outcome.seed;
                    println!("seed {s} FAILED (replay: mirrorlog sim --seed {s}):");
                    for v in &outcome.violations {
                        println!("  {v}");
                    }
                }
            }
            println!(
                "mirrorlog sim: {:.1} s, {commits} commits acknowledged, {failovers} automatic failovers",
                started.elapsed().as_secs_f64()
            );
            println!("sim: {passed} passed, {failed} failed");
            if failed > 0 {
                std::process::exit(1);
            }
        }
        Command::Ctl(args) => {
            use mirrorlog::ctl::CtlRequest;
            let (db, request) = match args.command {
                CtlCommand::Status { db } => (db, CtlRequest::Status),
                CtlCommand::SetPartner { db, partner } => (db, CtlRequest::SetPartner(partner)),
                CtlCommand::SetWitness { db, witness } => (db, CtlRequest::SetWitness(witness)),
                CtlCommand::SetSafety { db, safety } => (db, CtlRequest::SetSafety(safety.to_uppercase())),
                CtlCommand::Suspend { db } => (db, CtlRequest::Suspend),
                CtlCommand::Resume { db } => (db, CtlRequest::Resume),
                CtlCommand::Remove { db } => (db, CtlRequest::Remove),
                CtlCommand::Failover { db } => (db, CtlRequest::Failover),
                CtlCommand::ForceService { db } => (db, CtlRequest::ForceService),
            };
            let out = mirrorlog::ctl::run(args.server, args.password.as_deref(), db, &request)?;
            println!("{}", out.trim_end());
        }
        Command::Quickstart { dir, port, endpoint_port, server_exe } => {
            let exe = server_exe_or_this(server_exe)?;
            mirrorlog::quickstart::run(&mirrorlog::quickstart::QuickstartConfig { exe, dir, port, endpoint_port })?;
        }
        Command::Inspect(InspectCommand::Wal { dir, records }) => {
            let mut out = std::io::stdout();
            let inspection = mirrorlog::inspect::wal::inspect(&dir, records, &mut out)
                .with_context(|| format!("inspect {}", dir.display()))?;
            if inspection.problem.is_some() {
                std::process::exit(2);
            }
        }
        Command::Inspect(InspectCommand::Pages { dir }) => {
            let mut out = std::io::stdout();
            let inspection = mirrorlog::inspect::pages::inspect(&dir, &mut out)
                .with_context(|| format!("inspect {}", dir.display()))?;
            if !inspection.pages_bad.is_empty() {
                std::process::exit(2);
            }
        }
        Command::Check { dir } => {
            mirrorlog::io::probe::check_io_uring()?;
            println!(
                "io_uring: ok (kernel {}), every required operation supported",
                mirrorlog::io::probe::kernel_release()
            );
            mirrorlog::io::probe::check_direct_io(&dir)?;
            println!("O_DIRECT on {}: ok", dir.display());
        }
        Command::FaultProxy { target } => fault_proxy(target)?,
        Command::Debug(DebugCommand::AppendLoop { dir, clients, segment_size, body_size_max, records }) => {
            mirrorlog::debug::append_loop(mirrorlog::debug::AppendLoopConfig {
                dir,
                clients,
                segment_size,
                body_size_max,
                records,
            })?;
        }
    }
    Ok(())
}

fn server_exe_or_this(server_exe: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match server_exe {
        Some(exe) => Ok(exe),
        None => std::env::current_exe().context("find the mirrorlog executable"),
    }
}

fn bench_commit(args: CommitBenchArgs) -> anyhow::Result<()> {
    use mirrorlog::bench::commit::{self, CommitBenchConfig, ModeResult};
    use mirrorlog::bench::local_pair::Safety;
    mirrorlog::io::probe::check_io_uring()?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    mirrorlog::io::probe::check_direct_io(&args.dir)?;
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let safeties = args.safety.iter().map(|s| Safety::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let config = CommitBenchConfig {
        exe: server_exe_or_this(args.server_exe)?,
        safeties,
        clients: args.clients,
        duration: Duration::from_secs_f64(args.duration),
        value_size: args.value_size,
        dir: args.dir,
        floor_ops: args.floor_ops.max(2),
        first_core: match args.first_core.as_str() {
            "none" => None,
            n => Some(n.parse().map_err(|_| anyhow::anyhow!("--first-core takes a core number or none"))?),
        },
    };
    if !args.json {
        println!(
            "mirrorlog bench commit: SET of {} B values, {:.1} s per row, data in {}, kernel {}, {} cores{}",
            config.value_size,
            args.duration,
            config.dir.display(),
            mirrorlog::io::probe::kernel_release(),
            mirrorlog::io::shard::available_cores(),
            config.first_core.map_or(String::new(), |c| format!(", principal on core {c}, mirror on the next"))
        );
        commit::print_header();
    }
    let json = args.json;
    let results = commit::run(&config, |result| {
        if json {
            for line in result.to_json_lines() {
                println!("{line}");
            }
        } else {
            commit::print_mode(result);
        }
        use std::io::Write;
        std::io::stdout().flush().ok();
        if let ModeResult::Failed { safety, error } = result {
            eprintln!("mirrorlog: bench commit: safety {}: {error}", safety.as_str());
        }
    })?;
    let failed = results.iter().filter(|r| matches!(r, ModeResult::Failed { .. })).count();
    anyhow::ensure!(failed == 0, "{failed} of {} safety modes failed (see above)", results.len());
    if !json {
        println!("p50/local = commit p50 / local floor p50 (the faster of the two methods); p50/pair = commit p50 / pair floor p50; redo queue = the mirror's redo_queue_bytes after the row");
    }
    Ok(())
}

fn bench_failover(
    runs: usize,
    partner_timeout: f64,
    dir: PathBuf,
    json: bool,
    server_exe: Option<PathBuf>,
) -> anyhow::Result<()> {
    use mirrorlog::bench::failover::{self, FailoverBenchConfig};
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    anyhow::ensure!(partner_timeout >= 1.0, "--partner-timeout is at least 1 second");
    mirrorlog::io::probe::check_io_uring()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    mirrorlog::io::probe::check_direct_io(&dir)?;
    let config = FailoverBenchConfig {
        exe: server_exe_or_this(server_exe)?,
        dir,
        runs,
        partner_timeout: Duration::from_secs_f64(partner_timeout),
    };
    let target = config.partner_timeout + Duration::from_millis(500);
    if !json {
        println!(
            "mirrorlog bench failover: {runs} runs, partner timeout {partner_timeout} s (target: failover within {:.1} s), data in {}",
            target.as_secs_f64(),
            config.dir.display()
        );
        println!(
            "{:>4} {:>12} {:>14} {:>11} {:>12}",
            "run", "failover ms", "writes before", "writes lost", "resync ms"
        );
    }
    let summary = failover::run(&config, |i, run| {
        if json {
            println!(
                "{{\"run\":{},\"failover_ms\":{:.1},\"writes_before\":{},\"writes_lost\":{},\"resync_ms\":{:.1}}}",
                i + 1,
                run.failover.as_secs_f64() * 1e3,
                run.writes_before,
                run.writes_lost,
                run.resync.as_secs_f64() * 1e3
            );
        } else {
            println!(
                "{:>4} {:>12.1} {:>14} {:>11} {:>12.1}",
                i + 1,
                run.failover.as_secs_f64() * 1e3,
                run.writes_before,
                run.writes_lost,
                run.resync.as_secs_f64() * 1e3
            );
        }
        use std::io::Write;
        std::io::stdout().flush().ok();
    })?;
    let (median_ms, max_ms) = (summary.median.as_secs_f64() * 1e3, summary.max.as_secs_f64() * 1e3);
    let lost: u64 = summary.runs.iter().map(|r| r.writes_lost).sum();
    if json {
        println!(
            "{{\"runs\":{},\"partner_timeout_ms\":{:.0},\"failover_median_ms\":{median_ms:.1},\"failover_max_ms\":{max_ms:.1},\"target_ms\":{:.0}}}",
            summary.runs.len(),
            partner_timeout * 1e3,
            target.as_secs_f64() * 1e3
        );
    } else {
        println!(
            "failover: median {median_ms:.1} ms, max {max_ms:.1} ms over {} runs; target {:.0} ms: {}",
            summary.runs.len(),
            target.as_secs_f64() * 1e3,
            if summary.max <= target { "met" } else { "missed" }
        );
    }
    anyhow::ensure!(
        lost == 0,
        "{lost} acknowledged write(s) missing on the new principals (SAFETY FULL must lose none)"
    );
    Ok(())
}

fn fault_proxy(target: std::net::SocketAddr) -> anyhow::Result<()> {
    use mirrorlog::testing::{Direction, Fault, FaultProxy};
    use std::io::BufRead;
    let proxy = FaultProxy::start(target)?;
    println!("mirrorlog fault-proxy: listening on {} for {target}; type faults, one per line", proxy.addr());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        if command == "stats" {
            println!(
                "connections {}, bytes to target {}, bytes from target {}",
                proxy.connections_accepted(),
                proxy.bytes_forwarded(Direction::ToTarget),
                proxy.bytes_forwarded(Direction::FromTarget)
            );
            continue;
        }
        match Fault::parse(command) {
            Ok(fault) => {
                proxy.set(fault);
                println!("fault: {fault:?}");
            }
            Err(e) => eprintln!("mirrorlog fault-proxy: {e}"),
        }
    }
    Ok(())
}

static STOP_SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// SIGTERM and SIGINT set the returned flag (a watcher thread turns the signal into it).
fn install_stop_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop_signal as *const () as libc::sighandler_t);
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let watcher_stop = stop.clone();
    std::thread::spawn(move || loop {
        if STOP_SIGNALLED.load(Ordering::SeqCst) {
            eprintln!("mirrorlog: stopping: finishing in-flight work");
            watcher_stop.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    stop
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    anyhow::ensure!(args.checkpoint_interval > 0.0, "--checkpoint-interval must be positive");
    mirrorlog::wal::segment::validate_segment_size(args.segment_size).map_err(anyhow::Error::msg)?;
    let stop = install_stop_signals();
    anyhow::ensure!(args.partner_timeout >= 1.0, "--partner-timeout must be at least 1 second");
    anyhow::ensure!((1..=64).contains(&args.redo_workers), "--redo-workers must be between 1 and 64");
    let key = match &args.endpoint_key_file {
        Some(path) => Some(Arc::new(mirrorlog::wire::handshake::load_key(path).map_err(anyhow::Error::msg)?)),
        None => None,
    };
    anyhow::ensure!(
        key.is_some() || (args.partner.is_none() && !args.restoring),
        "mirroring (--partner, --restoring) needs --endpoint-key-file"
    );
    if let Some(partner) = &args.partner {
        mirrorlog::mirroring::settings::parse_partner(partner)?;
    }
    if let Some(witness) = &args.witness {
        mirrorlog::mirroring::settings::parse_partner(witness)?;
        anyhow::ensure!(args.safety.eq_ignore_ascii_case("full"), "a witness needs --safety full");
    }
    let mirroring = mirrorlog::server::MirroringConfig {
        endpoint: args.endpoint,
        key,
        partner: args.partner,
        safety: mirrorlog::mirroring::session::SafetyLevel::parse(&args.safety).expect("checked by clap"),
        partner_timeout: Duration::from_secs_f64(args.partner_timeout),
        restoring: args.restoring,
        log_compression: args.log_compression == "lz4",
        max_log_retention: args.max_log_retention,
        redo_workers: args.redo_workers,
        witness: args.witness,
    };
    let config = mirrorlog::server::ServerConfig {
        listen: args.listen,
        data_dir: args.data,
        databases: args.databases,
        cache_size: args.cache_size,
        segment_size: args.segment_size,
        requirepass: args.requirepass,
        maxclients: args.maxclients,
        checkpoint_interval: Duration::from_secs_f64(args.checkpoint_interval),
        shards: args.shards,
        idle_poll: Duration::from_micros(args.idle_poll_us),
        log_writes: mirrorlog::io::ring::DurableWrites::parse(&args.log_writes).expect("checked by clap"),
        mirroring,
    };
    let data = config.data_dir.display().to_string();
    let databases = config.databases;
    mirrorlog::server::run(config, stop, move |addr, endpoint| {
        println!("mirrorlog: serving {databases} database(s) from {data} on {addr}");
        if let Some(endpoint) = endpoint {
            println!("mirrorlog: mirroring endpoint listening on {endpoint}");
        }
        use std::io::Write;
        std::io::stdout().flush().ok();
    })?;
    eprintln!("mirrorlog: stopped cleanly");
    Ok(())
}
