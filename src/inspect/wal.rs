//! `mirrorlog inspect wal DIR`: lists segments and records, verifies every checksum, prints the LSN
//! range and the first problem found.

use std::io::Write;
use std::path::Path;

use crate::constants::SEGMENT_HEADER_SIZE;
use crate::error::Result;
use crate::wal::recovery;
use crate::wal::segment::{self, SegmentHeader};

/// What the inspection found; `problem` is `None` for a clean log.
#[derive(Debug, Clone)]
pub struct WalInspection {
    pub segments: usize,
    pub records: u64,
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub problem: Option<String>,
    pub torn_tail: Option<String>,
}

/// Inspects the log in `dir`, writing a listing to `out` (records too when `list_records`).
pub fn inspect(dir: &Path, list_records: bool, out: &mut impl Write) -> Result<WalInspection> {
    let listed = segment::list_segments(dir)?;
    let mut first_problem = None;
    writeln!(out, "log directory {}: {} segment file(s)", dir.display(), listed.len()).ok();
    for (_, path) in &listed {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let head = std::fs::read(path).map(|b| b[..b.len().min(SEGMENT_HEADER_SIZE)].to_vec());
        match head
            .map_err(|e| e.to_string())
            .and_then(|b| SegmentHeader::decode(&b, path, None).map_err(|e| e.to_string()))
        {
            Ok(h) => {
                writeln!(
                    out,
                    "  {name}: database {} {}..{} size {} epoch {} header ok",
                    h.db_id,
                    h.first_lsn.0,
                    h.end_lsn().0,
                    h.segment_size,
                    h.epoch.0
                )
                .ok();
            }
            Err(e) => {
                writeln!(out, "  {name}: BAD: {e}").ok();
                first_problem.get_or_insert(e);
            }
        }
    }
    let mut records_listed = 0u64;
    let scan = recovery::scan(dir, None, |h, _body| {
        if list_records {
            writeln!(
                out,
                "    record {} kind {} epoch {} batch {} body {} B crc ok",
                h.lsn.0, h.kind.0, h.epoch.0, h.batch_lsn.0, h.body_len
            )
            .ok();
        }
        records_listed += 1;
    });
    let inspection = match scan {
        Ok(report) => {
            let torn = report.torn_tail.map(|t| {
                format!(
                    "torn tail at {} ({:?}), {} unacknowledged valid record(s) after it",
                    t.cut_at, t.observation, t.valid_records_discarded
                )
            });
            WalInspection {
                segments: listed.len(),
                records: report.records,
                start_lsn: report.start_lsn.0,
                end_lsn: report.end_lsn.0,
                problem: first_problem,
                torn_tail: torn,
            }
        }
        Err(e) => WalInspection {
            segments: listed.len(),
            records: records_listed,
            start_lsn: listed.first().map(|s| s.0 .0).unwrap_or(0),
            end_lsn: 0,
            problem: Some(first_problem.unwrap_or(e.to_string())),
            torn_tail: None,
        },
    };
    writeln!(out, "records: {} valid, every checksum verified", inspection.records).ok();
    if inspection.problem.is_none() {
        writeln!(out, "lsn range: {}..{}", inspection.start_lsn, inspection.end_lsn).ok();
    }
    match (&inspection.problem, &inspection.torn_tail) {
        (Some(p), _) => writeln!(out, "first problem: {p}").ok(),
        (None, Some(t)) => writeln!(out, "first problem: {t} (recovery cuts it; not corruption)").ok(),
        (None, None) => writeln!(out, "first problem: none").ok(),
    };
    Ok(inspection)
}
