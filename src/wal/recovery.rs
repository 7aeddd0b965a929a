//! Recovery: reads the segments of a log, decides where the log ends, and refuses what it must.
//!
//! ## The decision table
//! Segment headers are checked first (`SegmentHeader::decode`), and each failure refuses the log
//! with its own error: bad magic, unsupported version, bad header checksum, another database,
//! an impossible size, a gap between segments.
//!
//! Records are then scanned in order. At each position one `Observation` is made; if it is not a
//! valid record, the rest of the log is searched for `Evidence`: valid records (checksums good,
//! written for exactly their position) beyond the bad spot, and whether any of them belongs to a
//! later group-commit batch than the one the bad spot could be part of. The group commit writes
//! one batch at a time and starts the next only after the previous write and flush completed, so:
//! a valid record whose batch started after the bad spot proves the bad spot was written and
//! acknowledged before — that is corruption, and it is reported, never truncated. Valid records
//! only from the same batch are what a torn last write leaves (its blocks can reach the disk in any
//! order), and nothing of that batch was acknowledged: the tail is cut.
//!
//! | observation at P                          | evidence after P        | decision        |
//! |-------------------------------------------|-------------------------|-----------------|
//! | valid record                              | (not searched)          | accept, go on   |
//! | valid record with a lower epoch           | any                     | corrupt         |
//! | zeroed header / record of another LSN     | none                    | end of log      |
//! | zeroed header / record of another LSN     | same batch only         | cut torn tail   |
//! | bad header / bad body / truncated         | none or same batch only | cut torn tail   |
//! | anything not valid                        | a later batch           | corrupt         |
//!
//! A limit this table accepts: bit rot inside the last batch, if that batch was acknowledged, looks
//! exactly like a torn write and is cut; the window is one batch (at most `LOG_BUFFER_SIZE`).
//! The cut is logged with the count of valid records it discards.

use std::path::{Path, PathBuf};

use crate::constants::{BLOCK_SIZE, LOG_BUFFER_SIZE, RECORD_ALIGN, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::error::{Error, Result};
use crate::wal::record::{self, RecordCheck, RecordHeader, RecordKind};
use crate::wal::segment::{self, SegmentHeader};
use crate::wal::{DbId, Epoch, Lsn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    Valid,
    EpochRegressed,
    Zeroed,
    WrongLsn,
    BadHeader,
    BadBody,
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    None,
    SameBatchOnly,
    LaterBatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    EndOfLog,
    CutTornTail,
    Corrupt,
}

impl Observation {
    pub const ALL: [Observation; 7] = [
        Observation::Valid,
        Observation::EpochRegressed,
        Observation::Zeroed,
        Observation::WrongLsn,
        Observation::BadHeader,
        Observation::BadBody,
        Observation::Truncated,
    ];
}

impl Evidence {
    pub const ALL: [Evidence; 3] = [Evidence::None, Evidence::SameBatchOnly, Evidence::LaterBatch];
}

/// The decision table above, as code.
pub fn decide(observation: Observation, evidence: Evidence) -> Decision {
    use Decision::*;
    use Observation::*;
    match (observation, evidence) {
        (Valid, _) => Accept,
        (EpochRegressed, _) => Corrupt,
        (_, Evidence::LaterBatch) => Corrupt,
        (Zeroed | WrongLsn, Evidence::None) => EndOfLog,
        (Zeroed | WrongLsn, Evidence::SameBatchOnly) => CutTornTail,
        (BadHeader | BadBody | Truncated, Evidence::None | Evidence::SameBatchOnly) => CutTornTail,
    }
}

/// One segment as recovery found it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub file_len: u64,
}

/// A record as recovery found it.
#[derive(Debug, Clone, Copy)]
pub struct RecordInfo {
    pub header: RecordHeader,
}

/// Where the log ends and how that was decided.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub segments: Vec<SegmentInfo>,
    /// First LSN of the first segment (what retention kept).
    pub start_lsn: Lsn,
    /// End of the last valid record: where appending resumes.
    pub end_lsn: Lsn,
    pub last_epoch: Option<Epoch>,
    pub records: u64,
    /// Set when a torn tail was cut.
    pub torn_tail: Option<TornTail>,
    /// The observation that ended the scan (`None` when the log ends exactly at a segment end).
    pub end_observation: Option<Observation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub cut_at: Lsn,
    pub observation: Observation,
    /// Valid records of the torn batch found after the cut (they were never acknowledged).
    pub valid_records_discarded: u64,
}

/// Reads and checks every segment of `dir`. `visit` sees each valid record (header and body) in
/// order, except the log's own padding records. Corruption and refused segments are errors; a torn tail is reported, not repaired (the
/// writer repairs it on open, see `LogWriter::open`).
pub fn scan(dir: &Path, db_id: Option<DbId>, mut visit: impl FnMut(&RecordHeader, &[u8])) -> Result<RecoveryReport> {
    // Headers first (one block per segment), then records one segment at a time: memory stays at
    // one segment however long the retained log is.
    let listed = segment::list_segments(dir)?;
    let mut segments = Vec::with_capacity(listed.len());
    let mut db_id = db_id;
    for (name_lsn, path) in listed {
        let (head, file_len) = segment::read_header_block(&path)?;
        let header = SegmentHeader::decode(&head, &path, db_id)?;
        db_id = Some(header.db_id);
        if header.first_lsn != name_lsn {
            return Err(Error::SegmentHeaderInvalid {
                path,
                detail: format!("file name says {name_lsn}, header says {}", header.first_lsn),
            });
        }
        if let Some(prev) = segments.last().map(|s: &SegmentInfo| s.header.end_lsn()) {
            if header.first_lsn != prev {
                return Err(Error::SegmentGap { path, found: header.first_lsn, expected: prev });
            }
        }
        segments.push(SegmentInfo { path, header, file_len });
    }
    let db_id = db_id.unwrap_or_default();
    let start_lsn = segments.first().map(|s| s.header.first_lsn).unwrap_or(Lsn::ZERO);
    let mut report = RecoveryReport {
        segments: segments.clone(),
        start_lsn,
        end_lsn: start_lsn,
        last_epoch: None,
        records: 0,
        torn_tail: None,
        end_observation: None,
    };

    for (index, segment) in segments.iter().enumerate() {
        let contents = segment::read_segment(&segment.path)?;
        let data = contents.get(SEGMENT_HEADER_SIZE..).unwrap_or(&[]);
        let data_size = segment.header.data_size() as usize;
        let mut offset = 0usize;
        while offset + RECORD_HEADER_SIZE <= data_size {
            let lsn = segment.header.first_lsn.advance(offset as u64);
            let available = &data[offset.min(data.len())..data.len().min(data_size)];
            let checked = record::check(available, db_id, lsn);
            let observation = match checked {
                RecordCheck::Valid(h) if report.last_epoch.is_some_and(|e| h.epoch < e) => Observation::EpochRegressed,
                RecordCheck::Valid(_) => Observation::Valid,
                RecordCheck::Zeroed => Observation::Zeroed,
                RecordCheck::WrongLsn(_) => Observation::WrongLsn,
                RecordCheck::BadHeader => Observation::BadHeader,
                RecordCheck::BadBody(_) => Observation::BadBody,
                RecordCheck::Truncated => Observation::Truncated,
            };
            if let RecordCheck::Valid(header) = checked {
                if observation == Observation::Valid {
                    if header.kind != RecordKind::PADDING {
                        visit(&header, record::body(available, &header));
                        report.records += 1;
                    }
                    report.last_epoch = Some(header.epoch);
                    offset += record::record_size(header.body_len as usize);
                    report.end_lsn = segment.header.first_lsn.advance(offset as u64);
                    continue;
                }
            }
            let (evidence, later) = search_evidence(&segments, data, db_id, index, offset, lsn)?;
            return match decide(observation, evidence) {
                Decision::Accept => unreachable!("only valid records are accepted"),
                Decision::EndOfLog => {
                    report.end_observation = Some(observation);
                    Ok(report)
                }
                Decision::CutTornTail => {
                    report.end_observation = Some(observation);
                    report.torn_tail = Some(TornTail { cut_at: lsn, observation, valid_records_discarded: later });
                    Ok(report)
                }
                Decision::Corrupt => Err(Error::LogCorrupt { lsn, detail: corruption_detail(observation, checked) }),
            };
        }
        // A remainder smaller than a record header is skipped by the writer; the next segment
        // continues the stream.
        report.end_lsn = segment.header.end_lsn();
    }
    Ok(report)
}

fn corruption_detail(observation: Observation, checked: RecordCheck) -> String {
    match (observation, checked) {
        (Observation::EpochRegressed, RecordCheck::Valid(h)) => {
            format!("record with {} after a record of a higher role sequence", h.epoch)
        }
        (Observation::BadBody, _) => "record body checksum mismatch".into(),
        (Observation::BadHeader, _) => "record header checksum mismatch".into(),
        (Observation::Truncated, _) => "record extends past the end of the segment file".into(),
        (Observation::Zeroed, _) => "zeroed bytes where a record should be".into(),
        (Observation::WrongLsn, RecordCheck::WrongLsn(h)) => {
            format!("record written for {} found here", h.lsn)
        }
        _ => format!("{observation:?}"),
    }
}

/// Searches everything after (`index`, `offset`) for valid records written for their position.
/// Returns the evidence and how many valid records were found.
/// `current` is the data of segment `index` (already in memory); later segments are read here.
fn search_evidence(
    segments: &[SegmentInfo],
    current: &[u8],
    db_id: DbId,
    index: usize,
    offset: usize,
    bad_lsn: Lsn,
) -> Result<(Evidence, u64)> {
    let mut found = 0u64;
    let mut later_batch = false;
    for (i, segment) in segments.iter().enumerate().skip(index) {
        let loaded;
        let data = if i == index {
            current
        } else {
            loaded = segment::read_segment(&segment.path)?;
            loaded.get(SEGMENT_HEADER_SIZE..).unwrap_or(&[])
        };
        let data = &data[..data.len().min(segment.header.data_size() as usize)];
        let mut at = if i == index { offset + RECORD_ALIGN } else { 0 };
        while at + RECORD_HEADER_SIZE <= data.len() {
            let lsn = segment.header.first_lsn.advance(at as u64);
            // Cheap filter first: the LSN field must name this very position.
            if data[at + 8..at + 16] == lsn.0.to_le_bytes() {
                if let RecordCheck::Valid(h) = record::check(&data[at..], db_id, lsn) {
                    found += 1;
                    if h.batch_lsn > bad_lsn {
                        later_batch = true;
                    }
                    at += record::record_size(h.body_len as usize);
                    continue;
                }
            }
            at += RECORD_ALIGN;
        }
    }
    let evidence = if later_batch {
        Evidence::LaterBatch
    } else if found > 0 {
        Evidence::SameBatchOnly
    } else {
        Evidence::None
    };
    Ok((evidence, found))
}

/// The stretch a torn last write can have touched after `cut_at`, within its segment: the writer
/// zeroes it before appending again, so no stale record of the torn batch can ever validate later.
pub fn torn_window_end(cut_at: Lsn, segment_end: Lsn) -> Lsn {
    let end = cut_at.block_floor().advance((LOG_BUFFER_SIZE + BLOCK_SIZE) as u64);
    end.min(segment_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of observation and evidence, against the table in the module docs.
    #[test]
    fn decision_table_is_exhaustive() {
        let mut seen = 0;
        for observation in Observation::ALL {
            for evidence in Evidence::ALL {
                let expected = match observation {
                    Observation::Valid => Decision::Accept,
                    Observation::EpochRegressed => Decision::Corrupt,
                    _ if evidence == Evidence::LaterBatch => Decision::Corrupt,
                    Observation::Zeroed | Observation::WrongLsn if evidence == Evidence::None => Decision::EndOfLog,
                    _ => Decision::CutTornTail,
                };
                assert_eq!(decide(observation, evidence), expected, "{observation:?} with {evidence:?}");
                seen += 1;
            }
        }
        assert_eq!(seen, 21);
    }
}
