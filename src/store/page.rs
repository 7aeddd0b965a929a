//! The 4 KiB page: the unit of the data file, of the buffer pool and of page redo.
//!
//! Header (little-endian, bytes 0..40; the rest of the page belongs to its type's format):
//! ```text
//!  0  4 crc32c     CRC32C of (database id, little-endian u64) ++ page bytes 4..4096
//!  4  1 page type  1 meta, 2 leaf, 3 internal, 4 overflow, 5 free
//!  5  1 version    page format version
//!  6  2 reserved   zero
//!  8  8 page id    where the page belongs in the data file (a misplaced write is detected)
//! 16  8 page LSN   end LSN of the last redo record applied to the page (redo is idempotent by it)
//! 24 16 reserved   zero
//! ```
//! The checksum covers everything but itself and binds the database id, so a page of another
//! database, a page written at the wrong offset, a torn page and a flipped bit all fail `verify`.

use std::fmt;

use crate::wal::{DbId, Lsn};

pub const PAGE_SIZE: usize = crate::constants::BLOCK_SIZE;
pub const PAGE_HEADER_SIZE: usize = 40;
pub const PAGE_FORMAT_VERSION: u8 = 1;

/// A page's place in the data file (page `n` is at byte `n * PAGE_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageId(pub u64);

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageType {
    Meta = 1,
    Leaf = 2,
    Internal = 3,
    Overflow = 4,
    Free = 5,
}

impl PageType {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => PageType::Meta,
            2 => PageType::Leaf,
            3 => PageType::Internal,
            4 => PageType::Overflow,
            5 => PageType::Free,
            _ => return None,
        })
    }
}

/// Why a page read from disk cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{0} was never written (all zeroes)")]
    Unwritten(PageId),
    #[error("{0}: checksum mismatch (torn write, bit rot, or a page of another database)")]
    ChecksumMismatch(PageId),
    #[error("{expected}: the page there says it is {found} (misplaced write)")]
    Misplaced { expected: PageId, found: PageId },
    #[error("{0}: page format version {1} is not supported")]
    Version(PageId, u8),
    #[error("{0}: unknown page type {1}")]
    UnknownType(PageId, u8),
}

fn u64_at(page: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(page[at..at + 8].try_into().expect("8 bytes"))
}

pub fn page_type(page: &[u8]) -> Option<PageType> {
    PageType::from_byte(page[4])
}

pub fn page_id(page: &[u8]) -> PageId {
    PageId(u64_at(page, 8))
}

pub fn page_lsn(page: &[u8]) -> Lsn {
    Lsn(u64_at(page, 16))
}

pub fn set_page_lsn(page: &mut [u8], lsn: Lsn) {
    page[16..24].copy_from_slice(&lsn.0.to_le_bytes());
}

/// Makes `page` an empty page of `kind` with identity `id` (body zeroed; LSN zero).
pub fn init(page: &mut [u8], kind: PageType, id: PageId) {
    assert_eq!(page.len(), PAGE_SIZE);
    page.fill(0);
    page[4] = kind as u8;
    page[5] = PAGE_FORMAT_VERSION;
    page[8..16].copy_from_slice(&id.0.to_le_bytes());
}

/// Changes the type of a page in place, keeping its identity and LSN (freeing and reusing pages).
pub fn set_page_type(page: &mut [u8], kind: PageType) {
    page[4] = kind as u8;
}

fn checksum(page: &[u8], db_id: DbId) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&db_id.0.to_le_bytes()), &page[4..PAGE_SIZE])
}

/// Writes the checksum; called just before a page goes to disk.
pub fn seal(page: &mut [u8], db_id: DbId) {
    assert_eq!(page.len(), PAGE_SIZE);
    let crc = checksum(page, db_id);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks a page read from disk at `expected`'s place. Never panics on any bytes.
pub fn verify(page: &[u8], db_id: DbId, expected: PageId) -> Result<PageType, PageError> {
    assert_eq!(page.len(), PAGE_SIZE);
    if page.iter().all(|&b| b == 0) {
        return Err(PageError::Unwritten(expected));
    }
    let stored = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    if stored != checksum(page, db_id) {
        return Err(PageError::ChecksumMismatch(expected));
    }
    if page[5] != PAGE_FORMAT_VERSION {
        return Err(PageError::Version(expected, page[5]));
    }
    let found = page_id(page);
    if found != expected {
        return Err(PageError::Misplaced { expected, found });
    }
    PageType::from_byte(page[4]).ok_or(PageError::UnknownType(expected, page[4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE];
        init(&mut p, PageType::Leaf, PageId(7));
        set_page_lsn(&mut p, Lsn(4096));
        p[100..105].copy_from_slice(b"hello");
        seal(&mut p, DbId(3));
        p
    }

    #[test]
    fn sealed_pages_verify() {
        let p = sealed();
        assert_eq!(verify(&p, DbId(3), PageId(7)), Ok(PageType::Leaf));
        assert_eq!(page_lsn(&p), Lsn(4096));
    }

    #[test]
    fn every_bit_flip_and_identity_mismatch_is_caught() {
        let p = sealed();
        for bit in (0..PAGE_SIZE * 8).step_by(7) {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            assert!(verify(&q, DbId(3), PageId(7)).is_err(), "bit {bit}");
        }
        assert_eq!(verify(&p, DbId(4), PageId(7)), Err(PageError::ChecksumMismatch(PageId(7))));
        assert_eq!(verify(&p, DbId(3), PageId(8)), Err(PageError::Misplaced { expected: PageId(8), found: PageId(7) }));
        assert_eq!(verify(&vec![0u8; PAGE_SIZE], DbId(3), PageId(1)), Err(PageError::Unwritten(PageId(1))));
    }
}
