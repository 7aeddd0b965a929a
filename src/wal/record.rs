//! The log record: a 40-byte header and a body, 8-byte aligned in the log stream.
//!
//! ```text
//! offset size field
//!      0    4 header_crc  CRC32C of (database id, little-endian u64) ++ header bytes 4..40
//!      4    4 body_crc    CRC32C of the body and its alignment padding (every byte is covered)
//!      8    8 lsn         position of this record in the log stream (must equal where it is read)
//!     16    8 epoch       role sequence of the writer
//!     24    8 batch_lsn   where the group-commit batch holding this record starts (recovery uses it
//!                         to tell a torn last write from corruption: see `recovery`)
//!     32    4 body_len
//!     36    1 kind
//!     37    3 reserved, zero
//! ```
//! The header checksum covers the body checksum, so a valid header vouches for the body's
//! checksum, and binds the database id, so a record copied from another database never validates.
//! Records may span blocks; they never span segments (a padding record fills a segment's end).

use crate::constants::{RECORD_ALIGN, RECORD_HEADER_SIZE};
use crate::wal::{DbId, Epoch, Lsn};

/// What a record holds. Kinds above `PADDING` belong to the layers above the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKind(pub u8);

impl RecordKind {
    /// Fills the rest of a segment; carries no data.
    pub const PADDING: RecordKind = RecordKind(1);
    /// Opaque payload of the layer above (the log benchmark, tests).
    pub const DATA: RecordKind = RecordKind(2);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub header_crc: u32,
    pub body_crc: u32,
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub batch_lsn: Lsn,
    pub body_len: u32,
    pub kind: RecordKind,
}

const _: () = assert!(RECORD_HEADER_SIZE == 40);

/// Bytes a record with a body of `body_len` occupies in the stream (header, body, alignment).
pub fn record_size(body_len: usize) -> usize {
    (RECORD_HEADER_SIZE + body_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

fn header_crc(db_id: DbId, header_tail: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&db_id.0.to_le_bytes()), header_tail)
}

/// Encodes a record into `out` (which must be exactly `record_size(body.len())` bytes).
pub fn encode(out: &mut [u8], db_id: DbId, lsn: Lsn, epoch: Epoch, batch_lsn: Lsn, kind: RecordKind, body: &[u8]) {
    assert_eq!(out.len(), record_size(body.len()));
    let (header, rest) = out.split_at_mut(RECORD_HEADER_SIZE);
    rest[..body.len()].copy_from_slice(body);
    rest[body.len()..].fill(0);
    header[4..8].copy_from_slice(&crc32c::crc32c(rest).to_le_bytes());
    header[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    header[16..24].copy_from_slice(&epoch.0.to_le_bytes());
    header[24..32].copy_from_slice(&batch_lsn.0.to_le_bytes());
    header[32..36].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[36] = kind.0;
    header[37..40].fill(0);
    let crc = header_crc(db_id, &header[4..]);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a padding record of `size` bytes (a multiple of the alignment, at least a header).
pub fn encode_padding(out: &mut [u8], db_id: DbId, lsn: Lsn, epoch: Epoch, batch_lsn: Lsn) {
    let size = out.len();
    assert!(size >= RECORD_HEADER_SIZE && size % RECORD_ALIGN == 0);
    let body_len = size - RECORD_HEADER_SIZE;
    out[RECORD_HEADER_SIZE..].fill(0);
    let (header, body) = out.split_at_mut(RECORD_HEADER_SIZE);
    header[4..8].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    header[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    header[16..24].copy_from_slice(&epoch.0.to_le_bytes());
    header[24..32].copy_from_slice(&batch_lsn.0.to_le_bytes());
    header[32..36].copy_from_slice(&(body_len as u32).to_le_bytes());
    header[36] = RecordKind::PADDING.0;
    header[37..40].fill(0);
    let crc = header_crc(db_id, &header[4..]);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// What is found at a position of the log stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordCheck {
    /// A whole record with valid checksums, written for this position.
    Valid(RecordHeader),
    /// The header bytes are all zero: never written.
    Zeroed,
    /// The header checksum does not match (torn, overwritten or from another database).
    BadHeader,
    /// A valid header written for another position (a recycled segment's old content).
    WrongLsn(RecordHeader),
    /// The header is valid but the body checksum does not match.
    BadBody(RecordHeader),
    /// The bytes end before the header or the body does.
    Truncated,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses a header from the first `RECORD_HEADER_SIZE` bytes of `bytes` without checking it.
pub fn parse_header(bytes: &[u8]) -> Option<RecordHeader> {
    let h = bytes.get(..RECORD_HEADER_SIZE)?;
    Some(RecordHeader {
        header_crc: u32_at(h, 0),
        body_crc: u32_at(h, 4),
        lsn: Lsn(u64_at(h, 8)),
        epoch: Epoch(u64_at(h, 16)),
        batch_lsn: Lsn(u64_at(h, 24)),
        body_len: u32_at(h, 32),
        kind: RecordKind(h[36]),
    })
}

/// Checks the record at the start of `bytes`, expected at stream position `lsn`. `bytes` extends
/// at most to the end of the segment; a record reaching past it is `Truncated`. Never panics.
pub fn check(bytes: &[u8], db_id: DbId, lsn: Lsn) -> RecordCheck {
    let Some(header_bytes) = bytes.get(..RECORD_HEADER_SIZE) else {
        return if bytes.iter().all(|&b| b == 0) { RecordCheck::Zeroed } else { RecordCheck::Truncated };
    };
    if header_bytes.iter().all(|&b| b == 0) {
        return RecordCheck::Zeroed;
    }
    let header = parse_header(header_bytes).expect("header bytes present");
    if header_crc(db_id, &header_bytes[4..]) != header.header_crc || header_bytes[37..40] != [0, 0, 0] {
        return RecordCheck::BadHeader;
    }
    if header.lsn != lsn {
        return RecordCheck::WrongLsn(header);
    }
    let size = record_size(header.body_len as usize);
    let Some(body_and_padding) = bytes.get(RECORD_HEADER_SIZE..size) else {
        return RecordCheck::Truncated;
    };
    if crc32c::crc32c(body_and_padding) != header.body_crc {
        return RecordCheck::BadBody(header);
    }
    RecordCheck::Valid(header)
}

/// The body of a record already checked `Valid` at the start of `bytes`.
pub fn body<'a>(bytes: &'a [u8], header: &RecordHeader) -> &'a [u8] {
    &bytes[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + header.body_len as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(body: &[u8], lsn: u64) -> Vec<u8> {
        let mut out = vec![0u8; record_size(body.len())];
        encode(&mut out, DbId(7), Lsn(lsn), Epoch(3), Lsn(lsn), RecordKind::DATA, body);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = encoded(b"hello", 4096);
        assert_eq!(bytes.len(), 48);
        match check(&bytes, DbId(7), Lsn(4096)) {
            RecordCheck::Valid(h) => {
                assert_eq!(h.epoch, Epoch(3));
                assert_eq!(h.kind, RecordKind::DATA);
                assert_eq!(body(&bytes, &h), b"hello");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn identity_is_bound() {
        let bytes = encoded(b"hello", 4096);
        assert_eq!(check(&bytes, DbId(8), Lsn(4096)), RecordCheck::BadHeader);
        assert!(matches!(check(&bytes, DbId(7), Lsn(0)), RecordCheck::WrongLsn(_)));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encoded(b"some body bytes", 0);
        for bit in 0..(RECORD_HEADER_SIZE + 15) * 8 {
            let mut copy = bytes.clone();
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(check(&copy, DbId(7), Lsn(0)), RecordCheck::Valid(_)), "bit {bit}");
        }
    }

    #[test]
    fn truncation_and_zeroes() {
        let bytes = encoded(b"0123456789abcdef", 0);
        for cut in 1..bytes.len() {
            assert_eq!(check(&bytes[..cut], DbId(7), Lsn(0)), RecordCheck::Truncated, "cut {cut}");
        }
        assert_eq!(check(&[0u8; 64], DbId(7), Lsn(0)), RecordCheck::Zeroed);
        assert_eq!(check(&[], DbId(7), Lsn(0)), RecordCheck::Zeroed);
    }

    #[test]
    fn huge_length_in_a_valid_header_is_truncated_not_a_panic() {
        let mut bytes = encoded(b"x", 0);
        bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = header_crc(DbId(7), &bytes[4..RECORD_HEADER_SIZE]);
        bytes[0..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check(&bytes, DbId(7), Lsn(0)), RecordCheck::Truncated);
    }
}
