//! Helpers shared by the integration tests: drive a log writer on a ring, synchronously.
#![allow(dead_code)]

pub mod server;

use std::path::Path;

use mirrorlog::io::ring::Ring;
use mirrorlog::wal::recovery;
use mirrorlog::wal::{AppendError, DbId, LogConfig, LogWriter, Lsn, RecordKind, Wake};

pub const LOG_TOKEN: u64 = 1 << 40;
pub const SMALL_SEGMENT: u64 = 256 * 1024;

pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

pub fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir, DbId(1));
    c.segment_size = SMALL_SEGMENT;
    c
}

pub fn open(dir: &Path) -> LogWriter {
    LogWriter::open(config(dir), LOG_TOKEN).unwrap().0
}

/// Waits for the write in flight and feeds its completion to the log.
pub fn complete_one(log: &mut LogWriter, ring: &mut Ring, wakes: &mut Vec<Wake>) {
    let mut completions = Vec::new();
    while completions.is_empty() {
        ring.submit_and_wait(1).unwrap();
        ring.reap(&mut completions);
    }
    for c in completions {
        assert_eq!(c.token, LOG_TOKEN);
        log.complete(c, wakes);
    }
}

/// Appends `bodies` as one or more batches and waits until all are hardened; returns end LSNs.
pub fn append_batch(log: &mut LogWriter, ring: &mut Ring, bodies: &[Vec<u8>]) -> Vec<Lsn> {
    let mut ends = Vec::new();
    let mut wakes = Vec::new();
    for body in bodies {
        loop {
            match log.append(RecordKind::DATA, body) {
                Ok(end) => {
                    ends.push(end);
                    break;
                }
                Err(AppendError::Full) => {
                    log.submit(ring).unwrap();
                    if log.write_in_flight() {
                        complete_one(log, ring, &mut wakes);
                    }
                }
                Err(e) => panic!("append: {e:?}"),
            }
        }
    }
    while log.has_unwritten() || log.write_in_flight() {
        log.submit(ring).unwrap();
        if log.write_in_flight() {
            complete_one(log, ring, &mut wakes);
        }
    }
    assert!(log.lsn_hardened() >= *ends.last().unwrap_or(&Lsn::ZERO));
    ends
}

/// Every record body in the log, in order.
pub fn read_all(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    recovery::scan(dir, Some(DbId(1)), |_, body| out.push(body.to_vec())).unwrap();
    out
}

pub fn bodies(count: usize, seed: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| vec![((i + seed) % 251) as u8; 1 + (i * 37 + seed) % 700]).collect()
}

/// Compares record lists without printing megabytes on failure.
pub fn assert_same_records(found: &[Vec<u8>], expected: &[Vec<u8>], what: &str) {
    let first_difference = found.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        found.len() == expected.len() && first_difference.is_none(),
        "{what}: found {} records, expected {}; first difference at index {:?}",
        found.len(),
        expected.len(),
        first_difference
    );
}
