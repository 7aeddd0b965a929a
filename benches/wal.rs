//! Hot paths of the log: record encode/check, CRC32C, log-buffer append, and group commit on disk.
//! Ids are parameter paths (`wal_group_commit/clients=64/size=128`). `cargo test --benches` runs
//! each once (CI does, so they never rot); `cargo bench --bench wal` measures.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mirrorlog::io::ring::Ring;
use mirrorlog::wal::record::{self, RecordCheck};
use mirrorlog::wal::{AppendError, DbId, Epoch, LogConfig, LogWriter, Lsn, RecordKind, Wake};

const LOG_TOKEN: u64 = 1 << 40;

fn bench_dir() -> tempfile::TempDir {
    // The target directory is on the same file system as the project (O_DIRECT capable).
    tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("bench directory")
}

fn record_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_record");
    for size in [128usize, 1024, 4096] {
        let body = vec![0xa5u8; size];
        let mut out = vec![0u8; record::record_size(size)];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", format!("size={size}")), &size, |b, _| {
            b.iter(|| {
                record::encode(
                    black_box(&mut out),
                    DbId(1),
                    Lsn(4096),
                    Epoch(1),
                    Lsn(4096),
                    RecordKind::DATA,
                    black_box(&body),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("check", format!("size={size}")), &size, |b, _| {
            b.iter(|| assert!(matches!(record::check(black_box(&out), DbId(1), Lsn(4096)), RecordCheck::Valid(_))))
        });
    }
    group.finish();
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for size in [64usize, 4096, 65536] {
        let data = vec![0x3cu8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(format!("size={size}")), &size, |b, _| {
            b.iter(|| crc32c::crc32c(black_box(&data)))
        });
    }
    group.finish();
}

/// Appending into the log buffer (no I/O timed: a full buffer is written out untimed).
fn log_buffer_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    for size in [128usize, 1024] {
        let dir = bench_dir();
        let mut config = LogConfig::new(dir.path(), DbId(1));
        config.segment_size = 64 << 20;
        let (mut log, _) = LogWriter::open(config, LOG_TOKEN).expect("open log");
        let mut ring = Ring::new(16).expect("ring");
        let body = vec![7u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(format!("size={size}")), &size, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut wakes = Vec::new();
                for _ in 0..iters {
                    let started = Instant::now();
                    let appended = log.append(RecordKind::DATA, black_box(&body));
                    timed += started.elapsed();
                    match appended {
                        Ok(_) => {}
                        Err(AppendError::Full) => flush_all(&mut log, &mut ring, &mut wakes),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                flush_all(&mut log, &mut ring, &mut wakes);
                timed
            })
        });
    }
    group.finish();
}

fn flush_all(log: &mut LogWriter, ring: &mut Ring, wakes: &mut Vec<Wake>) {
    let mut completions = Vec::new();
    while log.has_unwritten() || log.write_in_flight() {
        log.submit(ring).expect("submit");
        if log.write_in_flight() {
            completions.clear();
            while completions.is_empty() {
                ring.submit_and_wait(1).expect("wait");
                ring.reap(&mut completions);
            }
            for c in completions.drain(..) {
                log.complete(c, wakes);
            }
        }
        wakes.clear();
    }
}

/// One round of `clients` committers, each appending one record and waiting for it to harden:
/// the time of a round is the commit latency at that concurrency.
fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    let size = 128usize;
    for clients in [1usize, 16, 64] {
        let dir = bench_dir();
        let mut config = LogConfig::new(dir.path(), DbId(1));
        config.segment_size = 64 << 20;
        let (mut log, _) = LogWriter::open(config, LOG_TOKEN).expect("open log");
        log.drain_background();
        let mut ring = Ring::new(16).expect("ring");
        let body = vec![9u8; size];
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("clients={clients}/size={size}")),
            &clients,
            |b, &clients| {
                let mut wakes = Vec::new();
                b.iter(|| {
                    for client in 0..clients {
                        let end = log.append(RecordKind::DATA, &body).expect("append");
                        log.wait_hardened(end, client as u64);
                    }
                    flush_all(&mut log, &mut ring, &mut wakes);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, record_codec, crc, log_buffer_append, group_commit);
criterion_main!(benches);
