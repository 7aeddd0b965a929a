//! Segment files: a fixed-size file per stretch of the log stream, with a header block.
//!
//! File `seg-<first_lsn as 16 hex digits>.wal`: block 0 holds the header, the rest holds the log
//! bytes from `first_lsn` to `first_lsn + segment_size - SEGMENT_HEADER_SIZE`. Segments tile the
//! stream without gaps. A segment file gets its final name only once it is fully zero-filled (or
//! recycled), its header written and both synced, so a file with a final name is always whole.
//!
//! Header layout (little-endian, in block 0; the rest of the block is zero):
//! ```text
//!  0  8 magic "MLOGSEG1"        24  8 first_lsn
//!  8  4 format version          32  8 segment_size (whole file, header block included)
//! 12  4 flags (zero)            40  8 epoch when the segment was started
//! 16  8 database id             48  4 CRC32C of bytes 0..48
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::constants::{BLOCK_SIZE, SEGMENT_HEADER_SIZE, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN, ZERO_FILL_CHUNK};
use crate::error::{Error, IoContext, Result};
use crate::io::file::sync_dir;
use crate::wal::{DbId, Epoch, Lsn};

pub const SEGMENT_MAGIC: [u8; 8] = *b"MLOGSEG1";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// LSNs stay below 2^62 (the hardened watermark keeps two flag bits above them).
pub const LSN_LIMIT: u64 = 1 << 62;
const HEADER_FIELDS_SIZE: usize = 52;
const _: () = assert!(HEADER_FIELDS_SIZE <= SEGMENT_HEADER_SIZE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub db_id: DbId,
    pub first_lsn: Lsn,
    pub segment_size: u64,
    pub epoch: Epoch,
}

impl SegmentHeader {
    pub fn new(db_id: DbId, first_lsn: Lsn, segment_size: u64, epoch: Epoch) -> Self {
        Self { version: SEGMENT_FORMAT_VERSION, db_id, first_lsn, segment_size, epoch }
    }

    /// Log bytes the segment holds.
    pub fn data_size(&self) -> u64 {
        self.segment_size - SEGMENT_HEADER_SIZE as u64
    }

    pub fn end_lsn(&self) -> Lsn {
        self.first_lsn.advance(self.data_size())
    }

    /// The header block.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE] {
        let mut b = [0u8; SEGMENT_HEADER_SIZE];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.db_id.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.epoch.0.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Validates a header block, in the order of the decision table in `recovery`: magic, version
    /// (before the checksum, so a newer format is named as such rather than as corruption),
    /// checksum, database, size.
    pub fn decode(bytes: &[u8], path: &Path, expected_db: Option<DbId>) -> Result<Self> {
        let path_buf = || path.to_path_buf();
        if bytes.len() < HEADER_FIELDS_SIZE {
            return Err(Error::SegmentHeaderInvalid {
                path: path_buf(),
                detail: format!("file holds {} bytes, less than a header", bytes.len()),
            });
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(Error::SegmentBadMagic { path: path_buf() });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SEGMENT_FORMAT_VERSION {
            return Err(Error::SegmentVersionUnsupported {
                path: path_buf(),
                found: version,
                supported: SEGMENT_FORMAT_VERSION,
            });
        }
        let crc = u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[0..48]) != crc || bytes[12..16] != [0; 4] {
            return Err(Error::SegmentHeaderCorrupt { path: path_buf() });
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let header = SegmentHeader {
            version,
            db_id: DbId(u64_at(16)),
            first_lsn: Lsn(u64_at(24)),
            segment_size: u64_at(32),
            epoch: Epoch(u64_at(40)),
        };
        if let Some(expected) = expected_db {
            if header.db_id != expected {
                return Err(Error::SegmentWrongDatabase { path: path_buf(), found: header.db_id, expected });
            }
        }
        validate_segment_size(header.segment_size)
            .map_err(|detail| Error::SegmentHeaderInvalid { path: path_buf(), detail })?;
        if header.first_lsn.0.checked_add(header.segment_size).is_none_or(|end| end > LSN_LIMIT) {
            return Err(Error::SegmentHeaderInvalid {
                path: path_buf(),
                detail: format!("{} is beyond the largest LSN", header.first_lsn),
            });
        }
        if header.first_lsn.0 % BLOCK_SIZE as u64 != 0 {
            return Err(Error::SegmentHeaderInvalid {
                path: path_buf(),
                detail: format!("first {} is not block aligned", header.first_lsn),
            });
        }
        Ok(header)
    }
}

pub fn validate_segment_size(size: u64) -> std::result::Result<(), String> {
    if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&size) || size % BLOCK_SIZE as u64 != 0 {
        return Err(format!(
            "segment size {size} must be a multiple of {BLOCK_SIZE} between {SEGMENT_SIZE_MIN} and {SEGMENT_SIZE_MAX}"
        ));
    }
    Ok(())
}

pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("seg-{:016x}.wal", first_lsn.0)
}

/// The first LSN encoded in a segment file name, if the name is one.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

const RECYCLE_SUFFIX: &str = ".recycle";
const TMP_SUFFIX: &str = ".tmp";

/// Segment files of `dir`, sorted by first LSN.
pub fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).context(|| format!("read directory {}", dir.display()))? {
        let entry = entry.context(|| format!("read directory {}", dir.display()))?;
        if let Some(lsn) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((lsn, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Retired segment files kept for reuse.
pub fn list_recycled(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).context(|| format!("read directory {}", dir.display()))? {
        let path = entry.context(|| format!("read directory {}", dir.display()))?.path();
        if path.to_str().is_some_and(|p| p.ends_with(RECYCLE_SUFFIX)) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes half-prepared segment files left by a crash (they never got their final name).
pub fn remove_temporary_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).context(|| format!("read directory {}", dir.display()))? {
        let path = entry.context(|| format!("read directory {}", dir.display()))?.path();
        if path.to_str().is_some_and(|p| p.ends_with(TMP_SUFFIX)) {
            std::fs::remove_file(&path).context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Creates the segment described by `header` under its final name, durably: reuses a recycled
/// file when one is given, else zero-fills a new one (overwriting written blocks later is cheaper
/// than writing into unwritten extents; see ../shared/CRATES.md).
///
/// The zero-fill is written with O_DIRECT in `ZERO_FILL_CHUNK` pieces, and `pace` is called after
/// each with the time the piece took, so that a caller preparing a segment in the background can
/// leave the device to the log writes meanwhile (see `SegmentPreparer`). A buffered fill would
/// reach the device in large writeback bursts and with the final fsync, and every log write's
/// flush in that window would wait for them.
pub fn create_segment(
    dir: &Path,
    header: &SegmentHeader,
    recycled: Option<PathBuf>,
    pace: &mut dyn FnMut(std::time::Duration),
) -> Result<PathBuf> {
    let final_path = dir.join(segment_file_name(header.first_lsn));
    let tmp_path = dir.join(format!("{}{TMP_SUFFIX}", segment_file_name(header.first_lsn)));
    let reuse = recycled.filter(|p| std::fs::metadata(p).map(|m| m.len() == header.segment_size).unwrap_or(false));
    let file = match &reuse {
        Some(old) => {
            std::fs::rename(old, &tmp_path)
                .context(|| format!("rename {} to {}", old.display(), tmp_path.display()))?;
            OpenOptions::new().write(true).open(&tmp_path).context(|| format!("open {}", tmp_path.display()))?
        }
        None => {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp_path)
                .context(|| format!("create {}", tmp_path.display()))?;
            zero_fill(&file, &tmp_path, header.segment_size, pace)?;
            file
        }
    };
    file.write_all_at(&header.encode(), 0).context(|| format!("write header of {}", tmp_path.display()))?;
    file.sync_all().context(|| format!("fsync {}", tmp_path.display()))?;
    drop(file);
    std::fs::rename(&tmp_path, &final_path)
        .context(|| format!("rename {} to {}", tmp_path.display(), final_path.display()))?;
    sync_dir(dir)?;
    Ok(final_path)
}

/// Writes `len` zero bytes from the start of `file` (created at `path`), a chunk at a time, with
/// O_DIRECT when the file system allows it.
fn zero_fill(file: &File, path: &Path, len: u64, pace: &mut dyn FnMut(std::time::Duration)) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok();
    let target = direct.as_ref().unwrap_or(file);
    let mut zeros = crate::io::buffer::AlignedBuf::new(ZERO_FILL_CHUNK);
    zeros.set_len(ZERO_FILL_CHUNK);
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(ZERO_FILL_CHUNK as u64) as usize;
        let started = std::time::Instant::now();
        target.write_all_at(&zeros[..n], offset).context(|| format!("zero-fill {}", path.display()))?;
        offset += n as u64;
        pace(started.elapsed());
    }
    Ok(())
}

/// Retires a segment no longer needed: kept for recycling while fewer than `keep` are kept,
/// else removed.
pub fn retire_segment(dir: &Path, path: &Path, keep: usize) -> Result<()> {
    let kept = list_recycled(dir)?.len();
    if kept < keep {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
        let target = dir.join(format!("{name}{RECYCLE_SUFFIX}"));
        std::fs::rename(path, &target).context(|| format!("rename {} to {}", path.display(), target.display()))?;
    } else {
        std::fs::remove_file(path).context(|| format!("remove {}", path.display()))?;
    }
    sync_dir(dir)
}

/// Reads a whole segment file (recovery and inspection; not the hot path).
pub fn read_segment(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).context(|| format!("read {}", path.display()))
}

/// The header block of a segment file (shorter if the file is) and the file's length.
pub fn read_header_block(path: &Path) -> Result<(Vec<u8>, u64)> {
    let file = File::open(path).context(|| format!("open {}", path.display()))?;
    let len = file.metadata().context(|| format!("stat {}", path.display()))?.len();
    let mut head = vec![0u8; (len as usize).min(SEGMENT_HEADER_SIZE)];
    file.read_exact_at(&mut head, 0).context(|| format!("read header of {}", path.display()))?;
    Ok((head, len))
}

/// Opens a segment for reading its header and records with plain I/O.
pub fn open_plain(path: &Path) -> Result<File> {
    File::open(path).context(|| format!("open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_refusals() {
        let h = SegmentHeader::new(DbId(9), Lsn(1 << 20), 1 << 20, Epoch(2));
        let p = Path::new("seg");
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes, p, Some(DbId(9))).unwrap(), h);
        assert!(matches!(SegmentHeader::decode(&bytes, p, Some(DbId(1))), Err(Error::SegmentWrongDatabase { .. })));
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(matches!(SegmentHeader::decode(&bad, p, None), Err(Error::SegmentBadMagic { .. })));
        let mut bad = bytes;
        bad[8] = 2;
        assert!(matches!(SegmentHeader::decode(&bad, p, None), Err(Error::SegmentVersionUnsupported { found: 2, .. })));
        let mut bad = bytes;
        bad[30] ^= 0x10;
        assert!(matches!(SegmentHeader::decode(&bad, p, None), Err(Error::SegmentHeaderCorrupt { .. })));
        assert!(matches!(SegmentHeader::decode(&bytes[..20], p, None), Err(Error::SegmentHeaderInvalid { .. })));
        let beyond = SegmentHeader::new(DbId(9), Lsn(u64::MAX - 4095), 1 << 20, Epoch(2)).encode();
        assert!(matches!(SegmentHeader::decode(&beyond, p, None), Err(Error::SegmentHeaderInvalid { .. })));
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(Lsn(0x1000)), "seg-0000000000001000.wal");
        assert_eq!(parse_segment_file_name("seg-0000000000001000.wal"), Some(Lsn(0x1000)));
        assert_eq!(parse_segment_file_name("seg-1000.wal"), None);
        assert_eq!(parse_segment_file_name("seg-0000000000001000.wal.tmp"), None);
    }
}
