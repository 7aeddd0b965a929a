//! Bad bytes on disk: every case of the recovery decision table, from real log files.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use mirrorlog::constants::{BLOCK_SIZE, SEGMENT_HEADER_SIZE};
use mirrorlog::io::ring::Ring;
use mirrorlog::wal::record::{self, RecordHeader};
use mirrorlog::wal::recovery::{self, Observation};
use mirrorlog::wal::{DbId, Epoch, LogWriter, Lsn, RecordKind};
use mirrorlog::Error;

/// A single-segment log written as `batches` group-commit batches of `per_batch` records.
fn log_with_batches(dir: &Path, batches: usize, per_batch: usize, body_len: usize) -> Vec<RecordHeader> {
    let mut ring = Ring::new(16).unwrap();
    let mut log = open(dir);
    for b in 0..batches {
        let bodies: Vec<Vec<u8>> = (0..per_batch).map(|i| vec![(b * per_batch + i) as u8; body_len]).collect();
        append_batch(&mut log, &mut ring, &bodies);
    }
    assert_eq!(log.stats.writes as usize, batches, "one write per batch");
    drop(log);
    headers(dir)
}

fn headers(dir: &Path) -> Vec<RecordHeader> {
    let mut out = Vec::new();
    recovery::scan(dir, Some(DbId(1)), |h, _| out.push(*h)).unwrap();
    out
}

fn first_segment(dir: &Path) -> PathBuf {
    mirrorlog::wal::segment::list_segments(dir).unwrap()[0].1.clone()
}

fn file_offset(lsn: Lsn) -> u64 {
    SEGMENT_HEADER_SIZE as u64 + lsn.0
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, offset).unwrap();
}

fn zero_range(path: &Path, from: u64, to: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; (to - from) as usize], from).unwrap();
}

fn end_of(h: &RecordHeader) -> Lsn {
    h.lsn.advance(record::record_size(h.body_len as usize) as u64)
}

#[test]
fn a_flipped_bit_in_an_acknowledged_batch_is_corruption_and_the_log_refuses_to_open() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 20, 300);
    let victim = hs[10];
    flip_bit(&first_segment(dir.path()), file_offset(victim.lsn) + 60, 3);
    match recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}) {
        Err(Error::LogCorrupt { lsn, .. }) => assert_eq!(lsn, victim.lsn),
        other => panic!("expected corruption, got {other:?}"),
    }
    let err = LogWriter::open(config(dir.path()), LOG_TOKEN).err().expect("refused");
    assert!(err.to_string().contains("not a torn tail"), "{err}");
    // Nothing was truncated by the refused open.
    flip_bit(&first_segment(dir.path()), file_offset(victim.lsn) + 60, 3);
    assert_eq!(headers(dir.path()).len(), 60);
}

#[test]
fn a_flipped_bit_in_the_last_record_is_a_torn_tail_that_is_cut_and_repaired() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 20, 300);
    let last = *hs.last().unwrap();
    flip_bit(&first_segment(dir.path()), file_offset(last.lsn) + 45, 0);
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    let torn = report.torn_tail.expect("torn tail");
    assert_eq!(torn.cut_at, last.lsn);
    assert_eq!(torn.observation, Observation::BadBody);
    assert_eq!(report.records, 59);

    let mut ring = Ring::new(16).unwrap();
    let (mut log, _) = LogWriter::open(config(dir.path()), LOG_TOKEN).unwrap();
    assert_eq!(log.lsn_hardened(), last.lsn, "appending resumes at the cut");
    append_batch(&mut log, &mut ring, &bodies(5, 9));
    drop(log);
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    assert!(report.torn_tail.is_none(), "the repaired log is clean");
    assert_eq!(report.records, 64);
}

#[test]
fn a_bad_first_record_of_the_last_batch_discards_the_whole_unacknowledged_batch() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 20, 300);
    let first_of_last = hs[40];
    assert_eq!(first_of_last.batch_lsn, first_of_last.lsn);
    flip_bit(&first_segment(dir.path()), file_offset(first_of_last.lsn) + 2, 7);
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!(torn.observation, Observation::BadHeader);
    assert_eq!(torn.cut_at, first_of_last.lsn);
    assert_eq!(torn.valid_records_discarded, 19);
    assert_eq!(report.end_lsn, end_of(&hs[39]));
}

#[test]
fn a_zeroed_tail_ends_the_log() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 20, 300);
    let seg = first_segment(dir.path());
    zero_range(&seg, file_offset(hs[45].lsn), file_offset(end_of(&hs[59])));
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    assert_eq!(report.records, 45);
    assert_eq!(report.end_lsn, hs[45].lsn);
    assert_eq!(report.end_observation, Some(Observation::Zeroed));
    assert!(report.torn_tail.is_none());
}

#[test]
fn a_torn_write_with_a_hole_is_cut_and_its_stale_records_never_come_back() {
    let dir = scratch();
    // One big last batch spanning several blocks.
    let hs = log_with_batches(dir.path(), 2, 60, 500);
    let last_batch = hs[60].batch_lsn;
    let hole_block = last_batch.block_floor().advance(2 * BLOCK_SIZE as u64);
    let seg = first_segment(dir.path());
    zero_range(&seg, file_offset(hole_block), file_offset(hole_block) + BLOCK_SIZE as u64);
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    let torn = report.torn_tail.expect("torn");
    assert!(torn.cut_at >= last_batch && torn.cut_at < hole_block.advance(BLOCK_SIZE as u64));
    assert!(torn.valid_records_discarded > 0, "valid records of the same batch lie after the hole");
    let kept = report.records;

    // Reopen: the torn window is zeroed, then a short append lands before the stale records' place.
    let mut ring = Ring::new(16).unwrap();
    let (mut log, _) = LogWriter::open(config(dir.path()), LOG_TOKEN).unwrap();
    append_batch(&mut log, &mut ring, &[vec![0xee; 10]]);
    drop(log);
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    assert!(report.torn_tail.is_none(), "no stale record of the torn batch validates after the new end");
    assert_eq!(report.end_observation, Some(Observation::Zeroed));
    assert_eq!(report.records, kept + 1);
}

#[test]
fn a_truncated_segment_file_is_cut_and_extended_back() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 20, 300);
    let seg = first_segment(dir.path());
    let cut = file_offset(hs[50].lsn) + 17;
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
    let report = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).unwrap();
    assert_eq!(report.torn_tail.unwrap().observation, Observation::Truncated);
    assert_eq!(report.records, 50);
    let mut ring = Ring::new(16).unwrap();
    let (mut log, _) = LogWriter::open(config(dir.path()), LOG_TOKEN).unwrap();
    append_batch(&mut log, &mut ring, &bodies(3, 1));
    drop(log);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), SMALL_SEGMENT);
    assert_eq!(headers(dir.path()).len(), 53);
}

fn multi_segment_log(dir: &Path) {
    let mut ring = Ring::new(16).unwrap();
    let mut log = open(dir);
    for round in 0..8 {
        let b: Vec<Vec<u8>> = (0..30).map(|i| vec![(round + i) as u8; 3500]).collect();
        append_batch(&mut log, &mut ring, &b);
    }
    log.drain_background();
    drop(log);
    assert!(mirrorlog::wal::segment::list_segments(dir).unwrap().len() >= 3);
}

#[test]
fn a_truncated_early_segment_with_records_after_it_is_corruption() {
    let dir = scratch();
    multi_segment_log(dir.path());
    let seg = first_segment(dir.path());
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(SMALL_SEGMENT / 2).unwrap();
    assert!(matches!(recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}), Err(Error::LogCorrupt { .. })));
}

#[test]
fn a_missing_middle_segment_is_a_gap() {
    let dir = scratch();
    multi_segment_log(dir.path());
    let segs = mirrorlog::wal::segment::list_segments(dir.path()).unwrap();
    std::fs::remove_file(&segs[1].1).unwrap();
    assert!(matches!(recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}), Err(Error::SegmentGap { .. })));
    assert!(LogWriter::open(config(dir.path()), LOG_TOKEN).is_err());
}

#[test]
fn bad_segment_headers_are_refused_each_with_its_own_error() {
    type Check = fn(&Error) -> bool;
    let cases: [(&str, u64, Check); 3] = [
        ("magic", 0, |e| matches!(e, Error::SegmentBadMagic { .. })),
        ("version", 8, |e| matches!(e, Error::SegmentVersionUnsupported { found: 3, .. })),
        ("checksum", 26, |e| matches!(e, Error::SegmentHeaderCorrupt { .. })),
    ];
    for (what, offset, check) in cases {
        let dir = scratch();
        log_with_batches(dir.path(), 1, 5, 100);
        let seg = first_segment(dir.path());
        if what == "version" {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .write_all_at(&3u32.to_le_bytes(), offset)
                .unwrap();
        } else {
            flip_bit(&seg, offset, 1);
        }
        let err =
            recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}).err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(check(&err), "{what}: {err}");
        let err = LogWriter::open(config(dir.path()), LOG_TOKEN).err().unwrap_or_else(|| panic!("{what}: opened"));
        assert!(check(&err), "{what}: {err}");
    }
}

#[test]
fn a_segment_of_another_database_is_refused() {
    let dir = scratch();
    log_with_batches(dir.path(), 1, 5, 100);
    let mut other = config(dir.path());
    other.db_id = DbId(2);
    let err = LogWriter::open(other, LOG_TOKEN).err().expect("refused");
    assert!(matches!(err, Error::SegmentWrongDatabase { found: DbId(1), expected: DbId(2), .. }), "{err}");
}

#[test]
fn a_record_with_a_lower_epoch_after_a_higher_one_is_corruption() {
    let dir = scratch();
    let mut c = config(dir.path());
    c.epoch = Epoch(5);
    let mut ring = Ring::new(8).unwrap();
    let (mut log, _) = LogWriter::open(c, LOG_TOKEN).unwrap();
    append_batch(&mut log, &mut ring, &bodies(4, 0));
    let end = log.lsn_hardened();
    drop(log);
    let mut bytes = vec![0u8; record::record_size(8)];
    record::encode(&mut bytes, DbId(1), end, Epoch(3), end, RecordKind::DATA, &[1; 8]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(first_segment(dir.path()))
        .unwrap()
        .write_all_at(&bytes, file_offset(end))
        .unwrap();
    match recovery::scan(dir.path(), Some(DbId(1)), |_, _| {}) {
        Err(Error::LogCorrupt { lsn, detail }) => {
            assert_eq!(lsn, end);
            assert!(detail.contains("role sequence 3"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

/// Flip one bit at many positions of a three-batch log: recovery never panics, reports corruption
/// exactly when the bit lies before the last batch, and otherwise cuts at the damaged record.
#[test]
fn bit_flips_across_the_log_get_the_decision_the_table_says() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 12, 200);
    let seg = first_segment(dir.path());
    let last_batch = hs.last().unwrap().batch_lsn;
    let end = end_of(hs.last().unwrap());
    let mut checked = 0;
    for pos in (0..end.0 + 64).step_by(3) {
        let bit = (pos % 8) as u8;
        flip_bit(&seg, file_offset(Lsn(pos)), bit);
        let result = recovery::scan(dir.path(), Some(DbId(1)), |_, _| {});
        flip_bit(&seg, file_offset(Lsn(pos)), bit);
        let containing = hs.iter().find(|h| h.lsn.0 <= pos && pos < end_of(h).0);
        match (pos < last_batch.0, result) {
            (true, Err(Error::LogCorrupt { lsn, .. })) => {
                assert_eq!(Some(lsn), containing.map(|h| h.lsn), "position {pos}")
            }
            (false, Ok(report)) => {
                let expected_cut = containing.map(|h| h.lsn).unwrap_or(end);
                assert_eq!(report.end_lsn, expected_cut, "position {pos}");
                // Damage inside a record is a torn tail; a flip in the zeroes after the end is one
                // too when it lands in the next header's place, else the log just ends there.
                let in_next_header = pos >= end.0 && pos < end.0 + 40;
                assert_eq!(report.torn_tail.is_some(), containing.is_some() || in_next_header, "position {pos}");
            }
            (before_last, other) => {
                panic!("position {pos} (before last batch: {before_last}): {other:?}")
            }
        }
        checked += 1;
    }
    assert!(checked > 1000);
}

#[test]
fn inspect_reports_a_clean_log_and_names_the_first_problem_of_a_bad_one() {
    let dir = scratch();
    let hs = log_with_batches(dir.path(), 3, 20, 300);
    let bin = env!("CARGO_BIN_EXE_mirrorlog");
    let out =
        std::process::Command::new(bin).args(["inspect", "wal"]).arg(dir.path()).arg("--records").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("records: 60 valid"), "{text}");
    assert!(text.contains(&format!("lsn range: 0..{}", end_of(hs.last().unwrap()).0)), "{text}");
    assert!(text.contains("first problem: none"), "{text}");
    assert_eq!(text.matches("crc ok").count(), 60);

    flip_bit(&first_segment(dir.path()), file_offset(hs[5].lsn) + 100, 2);
    let out = std::process::Command::new(bin).args(["inspect", "wal"]).arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("first problem: log corruption at lsn {}", hs[5].lsn.0)), "{text}");
}
