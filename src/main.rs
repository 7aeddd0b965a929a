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
    /// Benchmarks, each beside the machine's floor in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Offline verification of on-disk state.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Start-up checks: io_uring, kernel operations, O_DIRECT on a directory.
    Check {
        /// Directory whose file system must support O_DIRECT.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Tools for tests (crash children); not for production use.
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
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
    },
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
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("mirrorlog: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(BenchCommand::Wal { clients, duration, record_size, dir, segment_size, floor_ops, json }) => {
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
            };
            if !json {
                println!(
                    "mirrorlog bench wal: record body {} B, {:.1} s per row, log in {}, kernel {}",
                    record_size,
                    duration,
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
        Command::Inspect(InspectCommand::Wal { dir, records }) => {
            let mut out = std::io::stdout();
            let inspection = mirrorlog::inspect::wal::inspect(&dir, records, &mut out)
                .with_context(|| format!("inspect {}", dir.display()))?;
            if inspection.problem.is_some() {
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
