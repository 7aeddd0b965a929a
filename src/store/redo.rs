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

/// Appends the body of a diff from `before` to `after` to `out`; returns false (and appends
/// nothing) when the pages are equal outside the checksum and LSN.
///
/// The pages are compared a 64-byte block at a time, and within a block that differs a word at a
/// time: the first and last changed byte of a word come from its XOR's trailing and leading zero
/// bits. Unchanged runs shorter than `GAP_MERGE` between changes are folded into one range, except
/// across the LSN field, which no range covers. (Scanning byte by byte was the largest cost of a
/// SET of a new key after the tree search.)
pub fn encode_diff(before: &[u8], after: &[u8], out: &mut Vec<u8>) -> bool {
    const WORDS_PER_BLOCK: usize = 8;
    let word = |p: &[u8], w: usize| u64::from_le_bytes(p[w * 8..w * 8 + 8].try_into().expect("8 bytes"));
    // Bits of the bytes no range may cover: the checksum (bytes 0..4) and the LSN field (16..24).
    let ignored = |w: usize| match w {
        0 => 0xffff_ffff,
        2 => u64::MAX,
        _ => 0,
    };
    let body_start = out.len();
    out.extend_from_slice(&page::page_id(after).0.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // the range count, set below
    let mut count: u16 = 0;
    let mut run: Option<(usize, usize)> = None;
    let mut emit = |out: &mut Vec<u8>, (start, end): (usize, usize)| {
        out.extend_from_slice(&(start as u16).to_le_bytes());
        out.extend_from_slice(&((end - start) as u16).to_le_bytes());
        out.extend_from_slice(&after[start..end]);
        count += 1;
    };
    for block in 0..PAGE_SIZE / (8 * WORDS_PER_BLOCK) {
        let words = block * WORDS_PER_BLOCK..(block + 1) * WORDS_PER_BLOCK;
        if words.clone().fold(0, |acc, w| acc | (word(before, w) ^ word(after, w))) == 0 {
            continue;
        }
        for w in words {
            let d = (word(before, w) ^ word(after, w)) & !ignored(w);
            if d == 0 {
                continue;
            }
            let first = w * 8 + d.trailing_zeros() as usize / 8;
            let last = w * 8 + 8 - d.leading_zeros() as usize / 8;
            run = match run {
                Some((start, end)) if first - end < GAP_MERGE && (end >= LSN_FIELD.end || first <= LSN_FIELD.start) => {
                    Some((start, last))
                }
                Some(done) => {
                    emit(out, done);
                    Some((first, last))
                }
                None => Some((first, last)),
            };
        }
    }
    if let Some(done) = run {
        emit(out, done);
    }
    if count == 0 {
        out.truncate(body_start);
        return false;
    }
    out[body_start + 8..body_start + 10].copy_from_slice(&count.to_le_bytes());
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

    /// The byte-at-a-time diff this module used before: the word-wise one must produce the same
    /// bytes.
    fn reference_diff(before: &[u8], after: &[u8], out: &mut Vec<u8>) -> bool {
        let changed = |i: usize| before[i] != after[i] && !LSN_FIELD.contains(&i);
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        let mut i = 4;
        while i < PAGE_SIZE {
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

    #[test]
    fn the_word_wise_diff_equals_the_byte_wise_one() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3000 {
            let before: Vec<u8> = (0..PAGE_SIZE).map(|_| next() as u8).collect();
            let mut after = before.clone();
            // A few changes: single bytes, short and long runs, often near the header fields.
            for _ in 0..(next() % 6) {
                let at = if next() % 3 == 0 { (next() % 40) as usize } else { (next() % PAGE_SIZE as u64) as usize };
                let len = [1, 2, 7, 9, 30, 200][(next() % 6) as usize].min(PAGE_SIZE - at);
                for b in &mut after[at..at + len] {
                    *b = b.wrapping_add(1 + (next() % 3) as u8);
                }
            }
            let (mut got, mut want) = (vec![0xaa], vec![0xaa]);
            assert_eq!(
                encode_diff(&before, &after, &mut got),
                reference_diff(&before, &after, &mut want),
                "round {round}"
            );
            assert_eq!(got, want, "round {round}");
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
