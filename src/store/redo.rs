//! Page redo records: how one page change is written to the log and applied again.
//!
//! Bodies (little-endian), inside log records of the kinds below:
//! ```text
//! PAGE_IMAGE  page id u64, page bytes 4..4096 (the whole page but its checksum)
//! PAGE_DIFF   page id u64, range count u16, then per range: offset u16, length u16, bytes
//! TX_COMMIT   transaction sequence u64
//! ```
//! Diffs never cover the checksum (bytes 0..4) nor the page LSN (bytes 16..24): redo sets the LSN
//! to the record's end LSN itself. Redo is idempotent: a record is applied only to a page whose
//! LSN is below the record's end LSN. Decoding never panics on any bytes.

use crate::store::page::{self, PageId, PAGE_SIZE};
use crate::wal::{Lsn, RecordKind};

pub const PAGE_IMAGE: RecordKind = RecordKind(16);
pub const PAGE_DIFF: RecordKind = RecordKind(17);
pub const TX_COMMIT: RecordKind = RecordKind(18);
/// Ends a transaction whose commit never came (the log ended inside it before a restart): its
/// records are dropped by redo and by the mirror. Body: empty.
pub const TX_ABORT: RecordKind = RecordKind(19);
/// A checkpoint of the principal at this LSN (body: its redo LSN, u64): from here on the first
/// change of every page is logged as a full image, so a mirror may checkpoint here too.
pub const CHECKPOINT: RecordKind = RecordKind(20);

const LSN_FIELD: std::ops::Range<usize> = 16..24;
/// Unchanged runs shorter than this between two changed runs are folded into one range (a range
/// header costs 4 bytes).
const GAP_MERGE: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageRedo<'a> {
    Image { page: PageId, bytes: &'a [u8] },
    Diff { page: PageId, ranges: Vec<(u16, &'a [u8])> },
}

impl PageRedo<'_> {
    pub fn page(&self) -> PageId {
        match self {
            PageRedo::Image { page, .. } | PageRedo::Diff { page, .. } => *page,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed redo record: {0}")]
pub struct RedoError(pub &'static str);

/// Appends the body of a full page image of `page` to `out`.
pub fn encode_image(page: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&page::page_id(page).0.to_le_bytes());
    out.extend_from_slice(&page[4..PAGE_SIZE]);
}

/// Whether two equally long byte blocks differ, compared a word at a time inline (a call to
/// memcmp per 64-byte block showed up in profiles of the SET path).
fn differs(a: &[u8], b: &[u8]) -> bool {
    let mut words = a.chunks_exact(8).zip(b.chunks_exact(8));
    let mut acc = 0u64;
    for (x, y) in &mut words {
        acc |= u64::from_ne_bytes(x.try_into().expect("8 bytes")) ^ u64::from_ne_bytes(y.try_into().expect("8 bytes"));
    }
    acc != 0 || a.chunks_exact(8).remainder() != b.chunks_exact(8).remainder()
}

/// Appends the body of a diff from `before` to `after` to `out`; returns false (and appends
/// nothing) when the pages are equal outside the checksum and LSN.
pub fn encode_diff(before: &[u8], after: &[u8], out: &mut Vec<u8>) -> bool {
    // Equal 64-byte blocks are skipped with one comparison each (a transaction changes a few
    // hundred bytes of a page); only blocks that differ are scanned byte by byte.
    const BLOCK: usize = 64;
    let changed = |i: usize| before[i] != after[i] && !LSN_FIELD.contains(&i);
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut block = 0;
    while block < PAGE_SIZE {
        let end = (block + BLOCK).min(PAGE_SIZE);
        if !differs(&before[block..end], &after[block..end]) {
            block = end;
            continue;
        }
        let mut i = block.max(4);
        while i < end {
            if !changed(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < PAGE_SIZE && changed(i) {
                i += 1;
            }
            match ranges.last_mut() {
                Some(last) if start - last.1 < GAP_MERGE && !(last.1..start).any(|j| LSN_FIELD.contains(&j)) => {
                    last.1 = i
                }
                _ => ranges.push((start, i)),
            }
        }
        block = end.max(i);
    }
    if ranges.is_empty() {
        return false;
    }
    out.extend_from_slice(&page::page_id(after).0.to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u16).to_le_bytes());
    for (start, end) in ranges {
        out.extend_from_slice(&(start as u16).to_le_bytes());
        out.extend_from_slice(&((end - start) as u16).to_le_bytes());
        out.extend_from_slice(&after[start..end]);
    }
    true
}

fn take<'a>(body: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], RedoError> {
    if body.len() < n {
        return Err(RedoError(what));
    }
    let (head, rest) = body.split_at(n);
    *body = rest;
    Ok(head)
}

/// Decodes a page record body of `kind`.
pub fn decode(kind: RecordKind, body: &[u8]) -> Result<PageRedo<'_>, RedoError> {
    let mut rest = body;
    let page = PageId(u64::from_le_bytes(take(&mut rest, 8, "missing page id")?.try_into().expect("8 bytes")));
    match kind {
        PAGE_IMAGE => {
            if rest.len() != PAGE_SIZE - 4 {
                return Err(RedoError("page image of the wrong size"));
            }
            Ok(PageRedo::Image { page, bytes: rest })
        }
        PAGE_DIFF => {
            let count = u16::from_le_bytes(take(&mut rest, 2, "missing range count")?.try_into().expect("2 bytes"));
            let mut ranges = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let head = take(&mut rest, 4, "truncated range header")?;
                let offset = u16::from_le_bytes([head[0], head[1]]);
                let len = u16::from_le_bytes([head[2], head[3]]) as usize;
                let end = offset as usize + len;
                if (offset as usize) < 4
                    || end > PAGE_SIZE
                    || (offset as usize) < LSN_FIELD.end && end > LSN_FIELD.start
                {
                    return Err(RedoError("range outside the page body"));
                }
                ranges.push((offset, take(&mut rest, len, "truncated range bytes")?));
            }
            if !rest.is_empty() {
                return Err(RedoError("trailing bytes after the ranges"));
            }
            Ok(PageRedo::Diff { page, ranges })
        }
        _ => Err(RedoError("not a page record kind")),
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The page already holds this change (its LSN is not below the record's end).
    AlreadyNewer,
    /// A diff cannot be applied to a page that failed verification: only an image restores it.
    NeedsImage,
}

/// Applies `redo` (from a record ending at `end_lsn`) to `page` if the page is older. `trusted`
/// says the page passed verification; an untrusted page (torn, corrupt, never written) takes only
/// an image, whatever LSN it claims.
pub fn apply(redo: &PageRedo<'_>, end_lsn: Lsn, page: &mut [u8], trusted: bool) -> Applied {
    if trusted && page::page_lsn(page) >= end_lsn {
        return Applied::AlreadyNewer;
    }
    match redo {
        PageRedo::Image { bytes, .. } => page[4..PAGE_SIZE].copy_from_slice(bytes),
        PageRedo::Diff { ranges, .. } => {
            if !trusted {
                return Applied::NeedsImage;
            }
            for (offset, bytes) in ranges {
                page[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
            }
        }
    }
    page::set_page_lsn(page, end_lsn);
    Applied::Applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::page::PageType;

    #[test]
    fn differs_sees_any_one_changed_byte() {
        let a = [7u8; 67];
        assert!(!differs(&a, &a));
        for i in 0..a.len() {
            let mut b = a;
            b[i] ^= 1;
            assert!(differs(&a, &b), "byte {i}");
        }
    }

    fn page_with(id: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE];
        page::init(&mut p, PageType::Leaf, PageId(id));
        p[100..200].fill(fill);
        p
    }

    #[test]
    fn diff_round_trip_and_idempotence() {
        let before = page_with(3, 1);
        let mut after = before.clone();
        after[150] = 9;
        after[152] = 9;
        after[4000..4010].copy_from_slice(b"0123456789");
        page::set_page_lsn(&mut after, Lsn(77));
        let mut body = Vec::new();
        assert!(encode_diff(&before, &after, &mut body));
        assert!(body.len() < 40, "a small change makes a small record ({} bytes)", body.len());
        let redo = decode(PAGE_DIFF, &body).unwrap();
        let mut replay = before.clone();
        assert_eq!(apply(&redo, Lsn(500), &mut replay, true), Applied::Applied);
        assert_eq!(&replay[24..], &after[24..]);
        assert_eq!(page::page_lsn(&replay), Lsn(500));
        assert_eq!(apply(&redo, Lsn(500), &mut replay, true), Applied::AlreadyNewer, "applied once only");
        assert_eq!(apply(&redo, Lsn(900), &mut replay.clone(), false), Applied::NeedsImage);
        let mut none = Vec::new();
        assert!(!encode_diff(&before, &before, &mut none));
        assert!(none.is_empty());
    }

    #[test]
    fn random_changes_replay_exactly() {
        let mut state = 7u64;
        for _ in 0..300 {
            let before = page_with(9, 3);
            let mut after = before.clone();
            for _ in 0..(state % 12) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = 24 + (state as usize % (PAGE_SIZE - 24));
                let len = 1 + (state >> 20) as usize % 100;
                for b in &mut after[at..(at + len).min(PAGE_SIZE)] {
                    *b = b.wrapping_add(1);
                }
            }
            let mut body = Vec::new();
            if encode_diff(&before, &after, &mut body) {
                let mut replay = before.clone();
                assert_eq!(apply(&decode(PAGE_DIFF, &body).unwrap(), Lsn(9), &mut replay, true), Applied::Applied);
                assert_eq!(&replay[24..], &after[24..]);
            } else {
                assert_eq!(&before[24..], &after[24..]);
            }
        }
    }

    #[test]
    fn image_restores_a_torn_page() {
        let good = page_with(4, 7);
        let mut body = Vec::new();
        encode_image(&good, &mut body);
        let redo = decode(PAGE_IMAGE, &body).unwrap();
        // A torn page may claim any LSN; untrusted, it is replaced by the image.
        let mut torn = good.clone();
        torn[2000..2100].fill(0xff);
        page::set_page_lsn(&mut torn, Lsn(900));
        assert_eq!(apply(&redo, Lsn(100), &mut torn, false), Applied::Applied);
        assert_eq!(&torn[24..], &good[24..]);
        assert_eq!(page::page_lsn(&torn), Lsn(100));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let mut state = 99u64;
        for len in 0..200 {
            let mut body = vec![0u8; len];
            for b in &mut body {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            for kind in [PAGE_IMAGE, PAGE_DIFF, TX_COMMIT] {
                let _ = decode(kind, &body);
            }
        }
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&16u16.to_le_bytes());
        body.extend_from_slice(&4u16.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        assert_eq!(decode(PAGE_DIFF, &body), Err(RedoError("range outside the page body")));
    }
}
