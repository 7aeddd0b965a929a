//! Slotted-page B+tree nodes: the byte layout of leaf and internal nodes inside a 4 KiB page.
//!
//! This module owns bytes `[40..4096)` of a leaf or internal page: the node header, the slot array
//! and the cells. Bytes `[0..40)` are the page header (checksum, page type, page id, page LSN) of
//! the page module; nothing here reads or writes them. The page type in that header says whether a
//! page is a leaf or an internal node, so callers pass it in as a [`NodeKind`].
//!
//! Layout (all integers little-endian):
//! ```text
//!  40  2 cell_count
//!  42  2 free_start     end of the slot array (always 56 + 2 * cell_count)
//!  44  2 content_start  start of the cell content area; cells are allocated downward from 4096
//!  46  2 fragmented     bytes of dead cells inside the content area, reclaimed by compaction
//!  48  8 link           leaf: right sibling page id (0 = none); internal: leftmost child page id
//!  56    slot array     one u16 cell offset per cell, in key order (bytewise, like `[u8]` Ord)
//!        free gap       [free_start..content_start)
//!        cells          [content_start..4096): live cells, and dead ones counted in `fragmented`
//!
//! leaf cell:     u16 key_len, u8 flags, u32 value_len, key bytes, then either value_len inline
//!                value bytes or, if flags bit 0 (OVERFLOW) is set, a u64 first overflow page id
//! internal cell: u16 key_len, u64 child page id, key bytes
//! ```
//! The child of internal cell `i` holds the keys `>= key_i` and `< key_{i+1}`; keys below `key_0`
//! belong to the leftmost child in `link`.
//!
//! Size limits: keys are at most [`MAX_KEY_LEN`] bytes, and a leaf cell with an inline value is at
//! most [`MAX_INLINE_CELL`] bytes (larger values live in an overflow chain managed elsewhere). The
//! largest possible cell, an overflow leaf cell with a longest key, is [`MAX_CELL_SIZE`] bytes; with
//! its slot that is at most a third of the node area, so every node holds at least 3 cells, and
//! after a split of a full node either half has room for any one more cell. The reverse of a
//! split, a merge of two adjacent nodes ([`merge_leaves`], [`merge_internal`]), succeeds when all
//! their cells fit in one node.
//!
//! Pages come from disk and may be corrupt. Every offset and length read from a page is
//! bounds-checked, and a bad one gives [`NodeError::Corrupt`], never a panic. Reads check what
//! they touch; [`validate`] checks the whole node. An operation that returns an error leaves its
//! pages unchanged.

use std::cmp::Ordering;
use std::fmt;

/// Size of a page.
pub const PAGE_SIZE: usize = 4096;
/// Start of the node header; the bytes before it belong to the page header.
pub const NODE_HEADER_OFFSET: usize = 40;
/// Size of the node header.
pub const NODE_HEADER_SIZE: usize = 16;
/// Start of the slot array.
pub const SLOTS_START: usize = NODE_HEADER_OFFSET + NODE_HEADER_SIZE;
/// Size of one slot (a u16 cell offset).
pub const SLOT_SIZE: usize = 2;
/// Bytes available to slots and cells.
pub const NODE_AREA: usize = PAGE_SIZE - SLOTS_START;
/// Longest key.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest leaf cell that may carry its value inline.
pub const MAX_INLINE_CELL: usize = NODE_AREA / 4;
/// Fixed part of a leaf cell: key_len, flags, value_len.
pub const LEAF_CELL_HEADER: usize = 7;
/// Fixed part of an internal cell: key_len, child.
pub const INTERNAL_CELL_HEADER: usize = 10;
/// Size of the overflow page id stored in place of an overflowing value.
const OVERFLOW_REF_SIZE: usize = 8;
/// Leaf cell flag: the value lives in an overflow chain.
pub const FLAG_OVERFLOW: u8 = 1;
/// Largest cell of any kind: an overflow leaf cell with a longest key.
pub const MAX_CELL_SIZE: usize = LEAF_CELL_HEADER + MAX_KEY_LEN + OVERFLOW_REF_SIZE;

// The largest cells bound the others, and three of them with their slots fit in a node. A third of
// the node area per cell is also what a split needs: each half of a full node then holds at most
// (NODE_AREA + largest) / 2 bytes, which leaves room for one more largest cell.
const _: () = assert!(MAX_INLINE_CELL <= MAX_CELL_SIZE);
const _: () = assert!(INTERNAL_CELL_HEADER + MAX_KEY_LEN <= MAX_CELL_SIZE);
const _: () = assert!(3 * (MAX_CELL_SIZE + SLOT_SIZE) <= NODE_AREA);
const _: () = assert!(PAGE_SIZE <= u16::MAX as usize + 1 && MAX_KEY_LEN <= u16::MAX as usize);

const COUNT_AT: usize = NODE_HEADER_OFFSET;
const FREE_START_AT: usize = NODE_HEADER_OFFSET + 2;
const CONTENT_START_AT: usize = NODE_HEADER_OFFSET + 4;
const FRAGMENTED_AT: usize = NODE_HEADER_OFFSET + 6;
const LINK_AT: usize = NODE_HEADER_OFFSET + 8;

/// A page buffer.
pub type Page = [u8; PAGE_SIZE];

/// Whether a node is a leaf or an internal node (recorded in the page header, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Leaf,
    Internal,
}

/// Why a node operation failed. Every error leaves the pages unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeError {
    /// The cell does not fit even after compaction: the caller splits the node.
    NoSpace,
    /// The page bytes break the node format.
    Corrupt(&'static str),
    /// The arguments break a precondition: an index out of range, a key out of order, a key or
    /// inline value over the size limits, or too few cells to split.
    Invalid(&'static str),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::NoSpace => write!(f, "node is full"),
            NodeError::Corrupt(why) => write!(f, "corrupt node: {why}"),
            NodeError::Invalid(why) => write!(f, "invalid node operation: {why}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// The value of a leaf cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafValue<'a> {
    /// The value bytes, stored in the cell.
    Inline(&'a [u8]),
    /// A value of `len` bytes stored in the overflow chain starting at `first_page`.
    Overflow { first_page: u64, len: u32 },
}

const OUT_OF_PAGE: NodeError = NodeError::Corrupt("cell extends past the end of the page");

/// The node header fields, read from a page and checked for consistency.
#[derive(Debug, Clone, Copy)]
struct Header {
    count: usize,
    free_start: usize,
    content_start: usize,
    fragmented: usize,
}

impl Header {
    fn read(page: &Page) -> Result<Header, NodeError> {
        let hdr = Header {
            count: header_u16(page, COUNT_AT),
            free_start: header_u16(page, FREE_START_AT),
            content_start: header_u16(page, CONTENT_START_AT),
            fragmented: header_u16(page, FRAGMENTED_AT),
        };
        if hdr.free_start != SLOTS_START + SLOT_SIZE * hdr.count {
            return Err(NodeError::Corrupt("free_start does not match cell_count"));
        }
        if hdr.content_start > PAGE_SIZE {
            return Err(NodeError::Corrupt("content_start is past the end of the page"));
        }
        if hdr.content_start < hdr.free_start {
            return Err(NodeError::Corrupt("content_start is below free_start"));
        }
        if hdr.fragmented > PAGE_SIZE - hdr.content_start {
            return Err(NodeError::Corrupt("fragmented is larger than the content area"));
        }
        Ok(hdr)
    }

    fn write(&self, page: &mut Page) {
        put_u16(page, COUNT_AT, self.count);
        put_u16(page, FREE_START_AT, self.free_start);
        put_u16(page, CONTENT_START_AT, self.content_start);
        put_u16(page, FRAGMENTED_AT, self.fragmented);
    }

    /// Contiguous free bytes between the slot array and the cells.
    fn gap(&self) -> usize {
        self.content_start - self.free_start
    }

    /// Free bytes once dead cells are compacted away.
    fn free_space(&self) -> usize {
        self.gap() + self.fragmented
    }

    /// The fragmented count after `dead` more bytes die, with the content area starting at
    /// `content_start`; an error if that exceeds the content area (only a corrupt page does that).
    fn fragmented_plus(&self, dead: usize, content_start: usize) -> Result<usize, NodeError> {
        let fragmented = self.fragmented + dead;
        if fragmented > PAGE_SIZE - content_start {
            return Err(NodeError::Corrupt("dead bytes exceed the content area"));
        }
        Ok(fragmented)
    }
}

/// A cell located in a page: where it starts, all its bytes, and its key.
#[derive(Debug, Clone, Copy)]
struct Cell<'a> {
    start: usize,
    bytes: &'a [u8],
    key: &'a [u8],
}

/// Reads a u16 node header field at the fixed offset `at` (always inside the page).
fn header_u16(page: &Page, at: usize) -> usize {
    usize::from(u16::from_le_bytes([page[at], page[at + 1]]))
}

/// Writes `value` (at most `u16::MAX`, checked by the caller) as a u16 at `at`.
fn put_u16(buf: &mut [u8], at: usize, value: usize) {
    buf[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
}

/// `len` bytes of `buf` from `start`, or `Corrupt` if they run past its end.
fn bytes_at(buf: &[u8], start: usize, len: usize) -> Result<&[u8], NodeError> {
    start.checked_add(len).and_then(|end| buf.get(start..end)).ok_or(OUT_OF_PAGE)
}

/// `N` bytes of `buf` from `at`, or `Corrupt` if they run past its end.
fn array_at<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], NodeError> {
    bytes_at(buf, at, N)?.try_into().map_err(|_| OUT_OF_PAGE)
}

/// The offset of cell `i`, checked to lie inside the content area.
fn slot(page: &Page, hdr: &Header, i: usize) -> Result<usize, NodeError> {
    if i >= hdr.count {
        return Err(NodeError::Invalid("cell index out of range"));
    }
    let offset = usize::from(u16::from_le_bytes(array_at(page, SLOTS_START + SLOT_SIZE * i)?));
    if offset < hdr.content_start {
        return Err(NodeError::Corrupt("slot points outside the cell content area"));
    }
    Ok(offset)
}

/// Parses the leaf cell at `start`.
fn leaf_cell(page: &Page, start: usize) -> Result<(Cell<'_>, LeafValue<'_>), NodeError> {
    let key_len = usize::from(u16::from_le_bytes(array_at(page, start)?));
    let [flags] = array_at::<1>(page, start + 2)?;
    let value_len = u32::from_le_bytes(array_at(page, start + 3)?);
    if flags & !FLAG_OVERFLOW != 0 {
        return Err(NodeError::Corrupt("unknown leaf cell flags"));
    }
    let key_start = start + LEAF_CELL_HEADER;
    let key = bytes_at(page, key_start, key_len)?;
    let value_start = key_start + key_len;
    let (value, value_size) = if flags & FLAG_OVERFLOW != 0 {
        let first_page = u64::from_le_bytes(array_at(page, value_start)?);
        (LeafValue::Overflow { first_page, len: value_len }, OVERFLOW_REF_SIZE)
    } else {
        let len = usize::try_from(value_len).map_err(|_| OUT_OF_PAGE)?;
        (LeafValue::Inline(bytes_at(page, value_start, len)?), len)
    };
    let bytes = bytes_at(page, start, LEAF_CELL_HEADER + key_len + value_size)?;
    Ok((Cell { start, bytes, key }, value))
}

/// Parses the internal cell at `start`.
fn internal_cell(page: &Page, start: usize) -> Result<(Cell<'_>, u64), NodeError> {
    let key_len = usize::from(u16::from_le_bytes(array_at(page, start)?));
    let child = u64::from_le_bytes(array_at(page, start + 2)?);
    let key = bytes_at(page, start + INTERNAL_CELL_HEADER, key_len)?;
    let bytes = bytes_at(page, start, INTERNAL_CELL_HEADER + key_len)?;
    Ok((Cell { start, bytes, key }, child))
}

/// Cell `i`, bounds-checked.
fn cell_at<'a>(page: &'a Page, kind: NodeKind, hdr: &Header, i: usize) -> Result<Cell<'a>, NodeError> {
    let start = slot(page, hdr, i)?;
    match kind {
        NodeKind::Leaf => Ok(leaf_cell(page, start)?.0),
        NodeKind::Internal => Ok(internal_cell(page, start)?.0),
    }
}

/// Cell `i`, bounds-checked and within the size limits.
fn checked_cell<'a>(page: &'a Page, kind: NodeKind, hdr: &Header, i: usize) -> Result<Cell<'a>, NodeError> {
    let start = slot(page, hdr, i)?;
    let cell = match kind {
        NodeKind::Leaf => {
            let (cell, value) = leaf_cell(page, start)?;
            if matches!(value, LeafValue::Inline(_)) && cell.bytes.len() > MAX_INLINE_CELL {
                return Err(NodeError::Corrupt("inline leaf cell is larger than MAX_INLINE_CELL"));
            }
            cell
        }
        NodeKind::Internal => internal_cell(page, start)?.0,
    };
    if cell.key.len() > MAX_KEY_LEN {
        return Err(NodeError::Corrupt("key is longer than MAX_KEY_LEN"));
    }
    Ok(cell)
}

/// The header and all cells of a node, after a full structural check.
fn checked_cells(page: &Page, kind: NodeKind) -> Result<(Header, Vec<Cell<'_>>), NodeError> {
    let hdr = Header::read(page)?;
    let cells = (0..hdr.count).map(|i| checked_cell(page, kind, &hdr, i)).collect::<Result<Vec<_>, _>>()?;
    if cells.windows(2).any(|pair| pair[0].key >= pair[1].key) {
        return Err(NodeError::Corrupt("keys are not strictly increasing"));
    }
    check_placement(&hdr, &cells)?;
    Ok((hdr, cells))
}

/// Checks that cells do not overlap and that live plus dead bytes fill the content area exactly.
fn check_placement(hdr: &Header, cells: &[Cell<'_>]) -> Result<(), NodeError> {
    let mut extents: Vec<(usize, usize)> = cells.iter().map(|c| (c.start, c.start + c.bytes.len())).collect();
    extents.sort_unstable();
    if extents.windows(2).any(|pair| pair[0].1 > pair[1].0) {
        return Err(NodeError::Corrupt("cells overlap"));
    }
    let live: usize = cells.iter().map(|c| c.bytes.len()).sum();
    if live + hdr.fragmented != PAGE_SIZE - hdr.content_start {
        return Err(NodeError::Corrupt("live and fragmented bytes do not fill the content area"));
    }
    Ok(())
}

/// Writes `cells` (in key order) as the whole node content: slots, contiguous cells, no dead bytes,
/// the free gap zeroed. Leaves the link alone.
fn rebuild(page: &mut Page, cells: &[&[u8]]) -> Result<(), NodeError> {
    let used: usize = cells.iter().map(|cell| cell.len() + SLOT_SIZE).sum();
    if used > NODE_AREA {
        return Err(NodeError::NoSpace);
    }
    let mut image = [0u8; PAGE_SIZE];
    let mut content_start = PAGE_SIZE;
    for (i, cell) in cells.iter().enumerate() {
        content_start -= cell.len();
        image[content_start..content_start + cell.len()].copy_from_slice(cell);
        put_u16(&mut image, SLOTS_START + SLOT_SIZE * i, content_start);
    }
    page[SLOTS_START..].copy_from_slice(&image[SLOTS_START..]);
    let free_start = SLOTS_START + SLOT_SIZE * cells.len();
    Header { count: cells.len(), free_start, content_start, fragmented: 0 }.write(page);
    Ok(())
}

/// A change to the cell list made while compacting.
enum Edit<'a> {
    Keep,
    Insert(usize, &'a [u8]),
    Replace(usize, &'a [u8]),
}

/// Checks the whole node, applies `edit` to its cell list and rewrites it compactly.
fn rebuild_with(page: &mut Page, kind: NodeKind, edit: Edit<'_>) -> Result<(), NodeError> {
    let src = *page;
    let (_, cells) = checked_cells(&src, kind)?;
    let mut bytes: Vec<&[u8]> = cells.iter().map(|cell| cell.bytes).collect();
    match edit {
        Edit::Keep => {}
        Edit::Insert(i, cell) if i <= bytes.len() => bytes.insert(i, cell),
        Edit::Replace(i, cell) if i < bytes.len() => bytes[i] = cell,
        Edit::Insert(..) | Edit::Replace(..) => return Err(NodeError::Invalid("cell index out of range")),
    }
    rebuild(page, &bytes)
}

/// Checks that `key` sorts strictly between cells `i - 1` and `i`, where it is to be inserted.
fn check_neighbours(page: &Page, kind: NodeKind, hdr: &Header, i: usize, key: &[u8]) -> Result<(), NodeError> {
    if i > 0 && cell_at(page, kind, hdr, i - 1)?.key >= key {
        return Err(NodeError::Invalid("key is not greater than the key before it"));
    }
    if i < hdr.count && cell_at(page, kind, hdr, i)?.key <= key {
        return Err(NodeError::Invalid("key is not less than the key after it"));
    }
    Ok(())
}

/// Inserts the encoded `cell` with `key` as cell `i`, compacting first if the gap is too small.
fn insert_cell(page: &mut Page, kind: NodeKind, i: usize, key: &[u8], cell: &[u8]) -> Result<(), NodeError> {
    let hdr = Header::read(page)?;
    if i > hdr.count {
        return Err(NodeError::Invalid("insert index out of range"));
    }
    check_neighbours(page, kind, &hdr, i, key)?;
    let need = cell.len() + SLOT_SIZE;
    if need > hdr.free_space() {
        return Err(NodeError::NoSpace);
    }
    if need > hdr.gap() {
        return rebuild_with(page, kind, Edit::Insert(i, cell));
    }
    let start = hdr.content_start - cell.len();
    page[start..hdr.content_start].copy_from_slice(cell);
    let slot_at = SLOTS_START + SLOT_SIZE * i;
    page.copy_within(slot_at..hdr.free_start, slot_at + SLOT_SIZE);
    put_u16(page, slot_at, start);
    Header { count: hdr.count + 1, free_start: hdr.free_start + SLOT_SIZE, content_start: start, ..hdr }.write(page);
    Ok(())
}

/// Removes cell `i`; its bytes become fragmented space.
fn remove_cell(page: &mut Page, kind: NodeKind, i: usize) -> Result<(), NodeError> {
    let hdr = Header::read(page)?;
    let size = cell_at(page, kind, &hdr, i)?.bytes.len();
    let fragmented = hdr.fragmented_plus(size, hdr.content_start)?;
    let slot_at = SLOTS_START + SLOT_SIZE * i;
    page.copy_within(slot_at + SLOT_SIZE..hdr.free_start, slot_at);
    page[hdr.free_start - SLOT_SIZE..hdr.free_start].fill(0);
    Header { count: hdr.count - 1, free_start: hdr.free_start - SLOT_SIZE, fragmented, ..hdr }.write(page);
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), NodeError> {
    if key.len() > MAX_KEY_LEN {
        return Err(NodeError::Invalid("key is longer than MAX_KEY_LEN"));
    }
    Ok(())
}

fn check_leaf_value(key_len: usize, value: &LeafValue<'_>) -> Result<(), NodeError> {
    match value {
        LeafValue::Inline(bytes) if !fits_inline(key_len, bytes.len()) => {
            Err(NodeError::Invalid("inline value too large: store it in an overflow chain"))
        }
        _ => Ok(()),
    }
}

/// Encodes a leaf cell into `buf` and returns its size. The key and value are within the limits.
fn encode_leaf_cell(buf: &mut [u8; MAX_CELL_SIZE], key: &[u8], value: &LeafValue<'_>) -> usize {
    let key_end = LEAF_CELL_HEADER + key.len();
    put_u16(buf, 0, key.len());
    buf[LEAF_CELL_HEADER..key_end].copy_from_slice(key);
    match *value {
        LeafValue::Inline(bytes) => {
            buf[2] = 0;
            buf[3..7].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf[key_end..key_end + bytes.len()].copy_from_slice(bytes);
            key_end + bytes.len()
        }
        LeafValue::Overflow { first_page, len } => {
            buf[2] = FLAG_OVERFLOW;
            buf[3..7].copy_from_slice(&len.to_le_bytes());
            buf[key_end..key_end + OVERFLOW_REF_SIZE].copy_from_slice(&first_page.to_le_bytes());
            key_end + OVERFLOW_REF_SIZE
        }
    }
}

/// Encodes an internal cell into `buf` and returns its size. The key is within the limit.
fn encode_internal_cell(buf: &mut [u8; MAX_CELL_SIZE], key: &[u8], child: u64) -> usize {
    put_u16(buf, 0, key.len());
    buf[2..INTERNAL_CELL_HEADER].copy_from_slice(&child.to_le_bytes());
    buf[INTERNAL_CELL_HEADER..INTERNAL_CELL_HEADER + key.len()].copy_from_slice(key);
    INTERNAL_CELL_HEADER + key.len()
}

/// The index that splits cells with these footprints (cell plus slot bytes) most evenly. Without
/// `drop_middle` the upper part starts at the index; with it the cell at the index leaves the node
/// and the upper part starts after it. Needs at least 2 footprints, 3 with `drop_middle`.
fn split_point(footprints: &[usize], drop_middle: bool) -> usize {
    let total: usize = footprints.iter().sum();
    let last = if drop_middle { footprints.len() - 2 } else { footprints.len() - 1 };
    let (mut best, mut best_diff, mut below) = (1, usize::MAX, footprints[0]);
    for (m, &footprint) in footprints.iter().enumerate().take(last + 1).skip(1) {
        let above = total - below - if drop_middle { footprint } else { 0 };
        if below.abs_diff(above) < best_diff {
            (best, best_diff) = (m, below.abs_diff(above));
        }
        below += footprint;
    }
    best
}

fn footprints(cells: &[Cell<'_>]) -> Vec<usize> {
    cells.iter().map(|cell| cell.bytes.len() + SLOT_SIZE).collect()
}

/// Makes `page` an empty node with the given link. Bytes `[0..40)` are left alone.
pub fn init(page: &mut Page, link: u64) {
    page[SLOTS_START..].fill(0);
    Header { count: 0, free_start: SLOTS_START, content_start: PAGE_SIZE, fragmented: 0 }.write(page);
    set_link(page, link);
}

/// The number of cells.
pub fn cell_count(page: &Page) -> Result<usize, NodeError> {
    Ok(Header::read(page)?.count)
}

/// The link: a leaf's right sibling page id (0 = none), an internal node's leftmost child page id.
pub fn link(page: &Page) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&page[LINK_AT..LINK_AT + 8]);
    u64::from_le_bytes(bytes)
}

/// Sets the link (see [`link`]).
pub fn set_link(page: &mut Page, link: u64) {
    page[LINK_AT..LINK_AT + 8].copy_from_slice(&link.to_le_bytes());
}

/// Free bytes once dead cells are compacted away: the gap plus the fragmented bytes. A cell fits
/// if its size plus [`SLOT_SIZE`] is at most this.
pub fn free_space(page: &Page) -> Result<usize, NodeError> {
    Ok(Header::read(page)?.free_space())
}

/// Checks the whole node: the header fields are consistent, every slot points into the content
/// area, every cell lies inside the page and within the size limits, no two cells overlap, live
/// plus fragmented bytes fill the content area exactly, and keys strictly increase.
pub fn validate(page: &Page, kind: NodeKind) -> Result<(), NodeError> {
    checked_cells(page, kind).map(|_| ())
}

/// The key of cell `i`.
pub fn key_at(page: &Page, kind: NodeKind, i: usize) -> Result<&[u8], NodeError> {
    let hdr = Header::read(page)?;
    Ok(cell_at(page, kind, &hdr, i)?.key)
}

/// Binary search for `key`, like `slice::binary_search`: `Ok(i)` if cell `i` has the key,
/// `Err(i)` if the key would be inserted as cell `i`.
pub fn search(page: &Page, kind: NodeKind, key: &[u8]) -> Result<Result<usize, usize>, NodeError> {
    let hdr = Header::read(page)?;
    let (mut low, mut high) = (0, hdr.count);
    while low < high {
        let mid = low + (high - low) / 2;
        match cell_at(page, kind, &hdr, mid)?.key.cmp(key) {
            Ordering::Less => low = mid + 1,
            Ordering::Greater => high = mid,
            Ordering::Equal => return Ok(Ok(mid)),
        }
    }
    Ok(Err(low))
}

/// The value of leaf cell `i`.
pub fn leaf_value_at(page: &Page, i: usize) -> Result<LeafValue<'_>, NodeError> {
    let hdr = Header::read(page)?;
    Ok(leaf_cell(page, slot(page, &hdr, i)?)?.1)
}

/// The size of a leaf cell (without its slot).
pub fn leaf_cell_size(key_len: usize, value: &LeafValue<'_>) -> usize {
    match value {
        LeafValue::Inline(bytes) => LEAF_CELL_HEADER + key_len + bytes.len(),
        LeafValue::Overflow { .. } => LEAF_CELL_HEADER + key_len + OVERFLOW_REF_SIZE,
    }
}

/// The size of an internal cell (without its slot).
pub fn internal_cell_size(key_len: usize) -> usize {
    INTERNAL_CELL_HEADER + key_len
}

/// Whether a value of `value_len` bytes may be stored inline with a key of `key_len` bytes.
pub fn fits_inline(key_len: usize, value_len: usize) -> bool {
    key_len <= MAX_KEY_LEN && LEAF_CELL_HEADER + key_len + value_len <= MAX_INLINE_CELL
}

/// Inserts `key` with `value` as leaf cell `i` (the position `search` returned). `key` must sort
/// strictly between its neighbours. Compacts the node if the space exists only fragmented;
/// `NoSpace` if the cell does not fit even then.
pub fn leaf_insert(page: &mut Page, i: usize, key: &[u8], value: LeafValue<'_>) -> Result<(), NodeError> {
    check_key(key)?;
    check_leaf_value(key.len(), &value)?;
    let mut buf = [0u8; MAX_CELL_SIZE];
    let len = encode_leaf_cell(&mut buf, key, &value);
    insert_cell(page, NodeKind::Leaf, i, key, &buf[..len])
}

/// Removes leaf cell `i`.
pub fn leaf_remove(page: &mut Page, i: usize) -> Result<(), NodeError> {
    remove_cell(page, NodeKind::Leaf, i)
}

/// Replaces the value of leaf cell `i`, keeping its key. A value that is not larger is written in
/// place; a larger one is written as a new cell, compacting if needed; `NoSpace` if it does not fit.
pub fn leaf_replace(page: &mut Page, i: usize, value: LeafValue<'_>) -> Result<(), NodeError> {
    let hdr = Header::read(page)?;
    let start = slot(page, &hdr, i)?;
    let mut buf = [0u8; MAX_CELL_SIZE];
    let (old_size, len) = {
        let (old, _) = leaf_cell(page, start)?;
        if old.key.len() > MAX_KEY_LEN {
            return Err(NodeError::Corrupt("key is longer than MAX_KEY_LEN"));
        }
        check_leaf_value(old.key.len(), &value)?;
        (old.bytes.len(), encode_leaf_cell(&mut buf, old.key, &value))
    };
    if len <= old_size {
        let fragmented = hdr.fragmented_plus(old_size - len, hdr.content_start)?;
        page[start..start + len].copy_from_slice(&buf[..len]);
        Header { fragmented, ..hdr }.write(page);
        Ok(())
    } else if len <= hdr.gap() {
        let new_start = hdr.content_start - len;
        let fragmented = hdr.fragmented_plus(old_size, new_start)?;
        page[new_start..hdr.content_start].copy_from_slice(&buf[..len]);
        put_u16(page, SLOTS_START + SLOT_SIZE * i, new_start);
        Header { content_start: new_start, fragmented, ..hdr }.write(page);
        Ok(())
    } else if len <= hdr.free_space() + old_size {
        rebuild_with(page, NodeKind::Leaf, Edit::Replace(i, &buf[..len]))
    } else {
        Err(NodeError::NoSpace)
    }
}

/// The child page id of internal cell `i` (the child for keys from key `i` up to key `i + 1`).
pub fn internal_child_at(page: &Page, i: usize) -> Result<u64, NodeError> {
    let hdr = Header::read(page)?;
    Ok(internal_cell(page, slot(page, &hdr, i)?)?.1)
}

/// The child page id to descend into for `key`.
pub fn internal_child_for(page: &Page, key: &[u8]) -> Result<u64, NodeError> {
    match search(page, NodeKind::Internal, key)? {
        Ok(i) => internal_child_at(page, i),
        Err(0) => Ok(link(page)),
        Err(i) => internal_child_at(page, i - 1),
    }
}

/// Inserts `key` with `child` as internal cell `i` (the position `search` returned). `key` must
/// sort strictly between its neighbours. Compacts if needed; `NoSpace` if the cell does not fit.
pub fn internal_insert(page: &mut Page, i: usize, key: &[u8], child: u64) -> Result<(), NodeError> {
    check_key(key)?;
    let mut buf = [0u8; MAX_CELL_SIZE];
    let len = encode_internal_cell(&mut buf, key, child);
    insert_cell(page, NodeKind::Internal, i, key, &buf[..len])
}

/// Removes internal cell `i` (its key and the child to its right).
pub fn internal_remove(page: &mut Page, i: usize) -> Result<(), NodeError> {
    remove_cell(page, NodeKind::Internal, i)
}

/// Rewrites the cells contiguously with no dead bytes, after a full check of the node. The logical
/// content (keys, values, children, link) stays the same.
pub fn compact(page: &mut Page, kind: NodeKind) -> Result<(), NodeError> {
    rebuild_with(page, kind, Edit::Keep)
}

/// Splits a leaf of at least 2 cells: moves the upper cells, chosen so that both halves hold
/// about the same number of bytes, from `left` into `right`, which is overwritten as a new node
/// (its bytes `[0..40)` are left alone). `right` takes `left`'s old link; the caller then sets
/// `left`'s link to `right`'s page id. Returns the separator: the first key of `right`.
pub fn split_leaf(left: &mut Page, right: &mut Page) -> Result<Vec<u8>, NodeError> {
    let src = *left;
    let (_, cells) = checked_cells(&src, NodeKind::Leaf)?;
    if cells.len() < 2 {
        return Err(NodeError::Invalid("a leaf split needs at least 2 cells"));
    }
    let m = split_point(&footprints(&cells), false);
    let bytes: Vec<&[u8]> = cells.iter().map(|cell| cell.bytes).collect();
    rebuild(right, &bytes[m..])?;
    rebuild(left, &bytes[..m])?;
    set_link(right, link(&src));
    Ok(cells[m].key.to_vec())
}

/// Splits an internal node of at least 3 cells: the middle cell, chosen so that both halves hold
/// about the same number of bytes, leaves the node; the cells above it move from `left` into
/// `right`, which is overwritten as a new node (its bytes `[0..40)` are left alone) whose leftmost
/// child is the middle cell's child. Returns the separator: the middle cell's key.
pub fn split_internal(left: &mut Page, right: &mut Page) -> Result<Vec<u8>, NodeError> {
    let src = *left;
    let (_, cells) = checked_cells(&src, NodeKind::Internal)?;
    if cells.len() < 3 {
        return Err(NodeError::Invalid("an internal split needs at least 3 cells"));
    }
    let m = split_point(&footprints(&cells), true);
    let (_, middle_child) = internal_cell(&src, cells[m].start)?;
    let bytes: Vec<&[u8]> = cells.iter().map(|cell| cell.bytes).collect();
    rebuild(right, &bytes[m + 1..])?;
    rebuild(left, &bytes[..m])?;
    set_link(right, middle_child);
    Ok(cells[m].key.to_vec())
}

/// Bytes taken by slots and live cells: what the node would hold after compaction.
pub fn used_bytes(page: &Page) -> Result<usize, NodeError> {
    // The header checks guarantee the free space is at most the node area.
    Ok(NODE_AREA - Header::read(page)?.free_space())
}

/// Merges two adjacent leaves: appends every cell of `right` (whose keys all sort after `left`'s)
/// to `left`, which takes `right`'s link. `NoSpace` if the cells do not fit in one node. After a
/// full check of both nodes; on any error `left` is unchanged.
pub fn merge_leaves(left: &mut Page, right: &Page) -> Result<(), NodeError> {
    merge_cells(left, None, right, NodeKind::Leaf)?;
    set_link(left, link(right));
    Ok(())
}

/// Merges two adjacent internal nodes around `separator`, the parent's key between them: `left`
/// takes the separator (with `right`'s leftmost child) and then every cell of `right`, so it
/// routes exactly as the two did. `NoSpace` if it does not fit in one node. After a full check of
/// both nodes; on any error `left` is unchanged.
pub fn merge_internal(left: &mut Page, separator: &[u8], right: &Page) -> Result<(), NodeError> {
    check_key(separator)?;
    let mut buf = [0u8; MAX_CELL_SIZE];
    let len = encode_internal_cell(&mut buf, separator, link(right));
    merge_cells(left, Some((separator, &buf[..len])), right, NodeKind::Internal)
}

/// Rewrites `left` as its cells, then `middle` (a key and its encoded cell), then `right`'s
/// cells, checking that the keys strictly increase across the seams.
fn merge_cells(left: &mut Page, middle: Option<(&[u8], &[u8])>, right: &Page, kind: NodeKind) -> Result<(), NodeError> {
    let src = *left;
    let (_, low) = checked_cells(&src, kind)?;
    let (_, high) = checked_cells(right, kind)?;
    let keys =
        low.last().map(|c| c.key).into_iter().chain(middle.map(|(key, _)| key)).chain(high.first().map(|c| c.key));
    let keys: Vec<&[u8]> = keys.collect();
    if keys.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(NodeError::Corrupt("merged nodes' keys are not in order"));
    }
    let bytes: Vec<&[u8]> =
        low.iter().map(|c| c.bytes).chain(middle.map(|(_, cell)| cell)).chain(high.iter().map(|c| c.bytes)).collect();
    rebuild(left, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A small deterministic xorshift64 generator.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        fn between(&mut self, low: usize, high: usize) -> usize {
            low + self.below(high - low + 1)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next_u64() as u8).collect()
        }

        /// A key of 1..=64 bytes, half the time from a 4-letter alphabet so that keys collide
        /// and share prefixes.
        fn key(&mut self) -> Vec<u8> {
            let len = self.between(1, 64);
            if self.below(2) == 0 {
                (0..len).map(|_| b'a' + self.below(4) as u8).collect()
            } else {
                self.bytes(len)
            }
        }

        /// An inline value of 0..=200 bytes, or one time in eight an overflow reference.
        fn value(&mut self) -> Val {
            if self.below(8) == 0 {
                Val::Overflow(self.next_u64() | 1, self.next_u64() as u32)
            } else {
                let len = self.between(0, 200);
                Val::Inline(self.bytes(len))
            }
        }
    }

    /// An owned leaf value, for the model.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Val {
        Inline(Vec<u8>),
        Overflow(u64, u32),
    }

    impl Val {
        fn as_leaf(&self) -> LeafValue<'_> {
            match self {
                Val::Inline(bytes) => LeafValue::Inline(bytes),
                Val::Overflow(first_page, len) => LeafValue::Overflow { first_page: *first_page, len: *len },
            }
        }

        fn owned(value: LeafValue<'_>) -> Val {
            match value {
                LeafValue::Inline(bytes) => Val::Inline(bytes.to_vec()),
                LeafValue::Overflow { first_page, len } => Val::Overflow(first_page, len),
            }
        }
    }

    /// The page header pattern every test page carries in bytes [0..40).
    fn stamp() -> [u8; NODE_HEADER_OFFSET] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
    }

    fn new_page(link: u64) -> Box<Page> {
        let mut page = Box::new([0xEEu8; PAGE_SIZE]);
        page[..NODE_HEADER_OFFSET].copy_from_slice(&stamp());
        init(&mut page, link);
        page
    }

    fn assert_stamp(page: &Page) {
        assert_eq!(page[..NODE_HEADER_OFFSET], stamp(), "page header bytes [0..40) changed");
    }

    fn assert_same(a: &Page, b: &Page, what: &str) {
        if let Some(at) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
            panic!("{what}: pages differ at byte {at}");
        }
    }

    fn raw_u16(page: &Page, at: usize) -> usize {
        usize::from(u16::from_le_bytes([page[at], page[at + 1]]))
    }

    fn set_raw_u16(page: &mut Page, at: usize, value: usize) {
        page[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
    }

    fn fragmented(page: &Page) -> usize {
        raw_u16(page, FRAGMENTED_AT)
    }

    /// Bytes taken by slots and cells, after compaction.
    fn used(page: &Page) -> usize {
        NODE_AREA - free_space(page).unwrap()
    }

    fn leaf_entries(page: &Page) -> Vec<(Vec<u8>, Val)> {
        (0..cell_count(page).unwrap())
            .map(|i| (key_at(page, NodeKind::Leaf, i).unwrap().to_vec(), Val::owned(leaf_value_at(page, i).unwrap())))
            .collect()
    }

    fn internal_entries(page: &Page) -> Vec<(Vec<u8>, u64)> {
        (0..cell_count(page).unwrap())
            .map(|i| (key_at(page, NodeKind::Internal, i).unwrap().to_vec(), internal_child_at(page, i).unwrap()))
            .collect()
    }

    /// Inserts or replaces `key` in a leaf, returning the result of the attempt.
    fn leaf_put(page: &mut Page, key: &[u8], value: &Val) -> Result<(), NodeError> {
        match search(page, NodeKind::Leaf, key)? {
            Ok(i) => leaf_replace(page, i, value.as_leaf()),
            Err(i) => leaf_insert(page, i, key, value.as_leaf()),
        }
    }

    /// Fills a leaf with up to `max_cells` random new keys, stopping at the first `NoSpace`.
    fn fill_leaf(page: &mut Page, rng: &mut Rng, max_cells: usize) {
        for _ in 0..max_cells {
            let (key, value) = (rng.key(), rng.value());
            if let Ok(Err(i)) = search(page, NodeKind::Leaf, &key) {
                match leaf_insert(page, i, &key, value.as_leaf()) {
                    Ok(()) => {}
                    Err(NodeError::NoSpace) => return,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        }
    }

    /// Fills an internal node with up to `max_cells` random new keys, stopping at `NoSpace`.
    fn fill_internal(page: &mut Page, rng: &mut Rng, max_cells: usize) {
        for _ in 0..max_cells {
            let key = rng.key();
            if let Ok(Err(i)) = search(page, NodeKind::Internal, &key) {
                match internal_insert(page, i, &key, rng.next_u64()) {
                    Ok(()) => {}
                    Err(NodeError::NoSpace) => return,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        }
    }

    fn sample_leaf() -> Box<Page> {
        let mut page = new_page(77);
        for (i, key) in [b"apple".as_slice(), b"banana", b"cherry", b"damson", b"elder"].iter().enumerate() {
            let value = vec![i as u8; 10 + i];
            leaf_insert(&mut page, i, key, LeafValue::Inline(&value)).unwrap();
        }
        page
    }

    fn sample_internal() -> Box<Page> {
        let mut page = new_page(1);
        for (i, key) in [b"b".as_slice(), b"d", b"f"].iter().enumerate() {
            internal_insert(&mut page, i, key, i as u64 + 2).unwrap();
        }
        page
    }

    #[test]
    fn empty_node() {
        let page = new_page(42);
        assert_eq!(cell_count(&page), Ok(0));
        assert_eq!(free_space(&page), Ok(NODE_AREA));
        assert_eq!(link(&page), 42);
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_eq!(validate(&page, NodeKind::Internal), Ok(()));
        assert_eq!(search(&page, NodeKind::Leaf, b"x"), Ok(Err(0)));
        assert_eq!(internal_child_for(&page, b"x"), Ok(42));
        assert!(page[SLOTS_START..].iter().all(|&b| b == 0));
        assert_stamp(&page);
    }

    #[test]
    fn link_round_trips() {
        let mut page = sample_leaf();
        set_link(&mut page, u64::MAX - 5);
        assert_eq!(link(&page), u64::MAX - 5);
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_stamp(&page);
    }

    #[test]
    fn sizes_and_inline_limit() {
        assert_eq!(MAX_INLINE_CELL, 1010);
        assert_eq!(MAX_CELL_SIZE, 1039);
        assert_eq!(leaf_cell_size(3, &LeafValue::Inline(&[0; 5])), 15);
        assert_eq!(leaf_cell_size(3, &LeafValue::Overflow { first_page: 9, len: 100_000 }), 18);
        assert_eq!(internal_cell_size(3), 13);
        assert!(fits_inline(0, MAX_INLINE_CELL - LEAF_CELL_HEADER));
        assert!(!fits_inline(0, MAX_INLINE_CELL - LEAF_CELL_HEADER + 1));
        assert!(fits_inline(100, MAX_INLINE_CELL - LEAF_CELL_HEADER - 100));
        assert!(!fits_inline(MAX_KEY_LEN + 1, 0));
        assert!(!fits_inline(MAX_KEY_LEN, 0));
    }

    #[test]
    fn three_largest_cells_fit_in_any_node() {
        let mut leaf = new_page(0);
        for i in 0..3u8 {
            let key = vec![i; MAX_KEY_LEN];
            let value = LeafValue::Overflow { first_page: 5, len: u32::MAX };
            assert_eq!(leaf_cell_size(key.len(), &value), MAX_CELL_SIZE);
            leaf_insert(&mut leaf, i as usize, &key, value).unwrap();
        }
        let mut inline = new_page(0);
        for i in 0..3u8 {
            let value = vec![i; MAX_INLINE_CELL - LEAF_CELL_HEADER - 1];
            leaf_insert(&mut inline, i as usize, &[i], LeafValue::Inline(&value)).unwrap();
        }
        let mut internal = new_page(0);
        for i in 0..3u8 {
            internal_insert(&mut internal, i as usize, &vec![i; MAX_KEY_LEN], 7).unwrap();
        }
        for (page, kind) in [(&leaf, NodeKind::Leaf), (&inline, NodeKind::Leaf), (&internal, NodeKind::Internal)] {
            assert_eq!(validate(page, kind), Ok(()));
            assert_eq!(cell_count(page), Ok(3));
            assert_stamp(page);
        }
    }

    #[test]
    fn leaf_insert_search_and_read() {
        let page = sample_leaf();
        assert_eq!(cell_count(&page), Ok(5));
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_eq!(search(&page, NodeKind::Leaf, b"cherry"), Ok(Ok(2)));
        assert_eq!(search(&page, NodeKind::Leaf, b"a"), Ok(Err(0)));
        assert_eq!(search(&page, NodeKind::Leaf, b"c"), Ok(Err(2)));
        assert_eq!(search(&page, NodeKind::Leaf, b"zz"), Ok(Err(5)));
        assert_eq!(key_at(&page, NodeKind::Leaf, 4), Ok(b"elder".as_slice()));
        assert_eq!(leaf_value_at(&page, 3), Ok(LeafValue::Inline(&[3; 13])));
        let keys = 5 + 6 + 6 + 6 + 5;
        let values = 10 + 11 + 12 + 13 + 14;
        assert_eq!(free_space(&page), Ok(NODE_AREA - 5 * (LEAF_CELL_HEADER + SLOT_SIZE) - keys - values));
        assert_stamp(&page);
    }

    #[test]
    fn out_of_range_indexes_are_invalid() {
        let mut page = sample_leaf();
        let before = page.clone();
        assert!(matches!(key_at(&page, NodeKind::Leaf, 5), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_value_at(&page, 99), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_remove(&mut page, 5), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_replace(&mut page, 5, LeafValue::Inline(b"")), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_insert(&mut page, 6, b"zzz", LeafValue::Inline(b"")), Err(NodeError::Invalid(_))));
        assert_same(&page, &before, "failed operations");
    }

    #[test]
    fn insert_rejects_bad_keys_and_values_without_change() {
        let mut page = sample_leaf();
        let before = page.clone();
        let inline = |v: &'static [u8]| LeafValue::Inline(v);
        assert!(matches!(leaf_insert(&mut page, 0, b"banana", inline(b"x")), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_insert(&mut page, 1, b"banana", inline(b"x")), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_insert(&mut page, 2, b"banana", inline(b"x")), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_insert(&mut page, 0, b"zebra", inline(b"x")), Err(NodeError::Invalid(_))));
        let long_key = vec![b'z'; MAX_KEY_LEN + 1];
        assert!(matches!(leaf_insert(&mut page, 5, &long_key, inline(b"")), Err(NodeError::Invalid(_))));
        let big = vec![1u8; MAX_INLINE_CELL];
        assert!(matches!(leaf_insert(&mut page, 5, b"zebra", LeafValue::Inline(&big)), Err(NodeError::Invalid(_))));
        assert!(matches!(leaf_replace(&mut page, 0, LeafValue::Inline(&big)), Err(NodeError::Invalid(_))));
        assert!(matches!(internal_insert(&mut page, 5, &long_key, 3), Err(NodeError::Invalid(_))));
        assert_same(&page, &before, "rejected inserts");
        leaf_insert(&mut page, 0, b"", inline(b"empty key")).unwrap();
        assert_eq!(key_at(&page, NodeKind::Leaf, 0), Ok(b"".as_slice()));
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
    }

    #[test]
    fn insert_until_full_then_no_space_leaves_page_unchanged() {
        let mut page = new_page(3);
        let value = [9u8; 100];
        let mut n = 0u32;
        loop {
            let key = n.to_be_bytes();
            let before = page.clone();
            match leaf_insert(&mut page, n as usize, &key, LeafValue::Inline(&value)) {
                Ok(()) => n += 1,
                Err(NodeError::NoSpace) => {
                    assert_same(&page, &before, "NoSpace insert");
                    break;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(n as usize, NODE_AREA / (LEAF_CELL_HEADER + 4 + 100 + SLOT_SIZE));
        assert!(free_space(&page).unwrap() < LEAF_CELL_HEADER + 4 + 100 + SLOT_SIZE);
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_stamp(&page);
    }

    #[test]
    fn overflow_values() {
        let mut page = new_page(0);
        let huge = LeafValue::Overflow { first_page: 0xABCD_EF01_2345, len: u32::MAX };
        leaf_insert(&mut page, 0, b"big", huge).unwrap();
        leaf_insert(&mut page, 1, b"small", LeafValue::Inline(b"v")).unwrap();
        leaf_insert(&mut page, 2, b"zero", LeafValue::Overflow { first_page: 17, len: 0 }).unwrap();
        assert_eq!(leaf_value_at(&page, 0), Ok(huge));
        assert_eq!(leaf_value_at(&page, 1), Ok(LeafValue::Inline(b"v")));
        assert_eq!(leaf_value_at(&page, 2), Ok(LeafValue::Overflow { first_page: 17, len: 0 }));
        assert_eq!(free_space(&page), Ok(NODE_AREA - (7 + 3 + 8) - (7 + 5 + 1) - (7 + 4 + 8) - 3 * SLOT_SIZE));
        leaf_replace(&mut page, 1, LeafValue::Overflow { first_page: 99, len: 5000 }).unwrap();
        assert_eq!(leaf_value_at(&page, 1), Ok(LeafValue::Overflow { first_page: 99, len: 5000 }));
        leaf_replace(&mut page, 0, LeafValue::Inline(b"now inline")).unwrap();
        assert_eq!(leaf_value_at(&page, 0), Ok(LeafValue::Inline(b"now inline")));
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        compact(&mut page, NodeKind::Leaf).unwrap();
        assert_eq!(leaf_value_at(&page, 1), Ok(LeafValue::Overflow { first_page: 99, len: 5000 }));
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_stamp(&page);
    }

    #[test]
    fn replace_shrinks_in_place_and_grows_elsewhere() {
        let mut page = sample_leaf();
        let start = raw_u16(&page, SLOTS_START + 2 * SLOT_SIZE);
        let free = free_space(&page).unwrap();
        leaf_replace(&mut page, 2, LeafValue::Inline(b"abc")).unwrap();
        assert_eq!(raw_u16(&page, SLOTS_START + 2 * SLOT_SIZE), start, "shrinking stays in place");
        assert_eq!(fragmented(&page), 12 - 3);
        assert_eq!(free_space(&page), Ok(free + 9));
        let grown = [5u8; 300];
        leaf_replace(&mut page, 2, LeafValue::Inline(&grown)).unwrap();
        assert_ne!(raw_u16(&page, SLOTS_START + 2 * SLOT_SIZE), start, "growing moves the cell");
        assert_eq!(fragmented(&page), 12 - 3 + (7 + 6 + 3));
        assert_eq!(free_space(&page), Ok(free - (300 - 12)));
        assert_eq!(leaf_value_at(&page, 2), Ok(LeafValue::Inline(&grown)));
        assert_eq!(key_at(&page, NodeKind::Leaf, 2), Ok(b"cherry".as_slice()));
        leaf_replace(&mut page, 2, LeafValue::Inline(&grown)).unwrap();
        assert_eq!(leaf_value_at(&page, 2), Ok(LeafValue::Inline(&grown)));
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_stamp(&page);
    }

    #[test]
    fn replace_compacts_when_the_gap_is_too_small() {
        let mut page = new_page(0);
        let value = [1u8; 300];
        for i in 0..12u8 {
            leaf_insert(&mut page, i as usize, &[i], LeafValue::Inline(&value)).unwrap();
        }
        for i in (0..12).step_by(2).rev() {
            leaf_remove(&mut page, i).unwrap();
        }
        let gap = raw_u16(&page, CONTENT_START_AT) - raw_u16(&page, FREE_START_AT);
        let free = free_space(&page).unwrap();
        let want = 7 + 1 + 300 + gap;
        assert!(want <= free + 308 && want > gap);
        let grown = vec![2u8; want - 8];
        leaf_replace(&mut page, 0, LeafValue::Inline(&grown)).unwrap();
        assert_eq!(fragmented(&page), 0, "replacement compacted the node");
        assert_eq!(leaf_value_at(&page, 0), Ok(LeafValue::Inline(grown.as_slice())));
        assert_eq!(free_space(&page), Ok(free + 308 - want));
        for i in 1..6 {
            assert_eq!(leaf_value_at(&page, i), Ok(LeafValue::Inline(value.as_slice())));
        }
        for i in 12..20u8 {
            let end = cell_count(&page).unwrap();
            let _ = leaf_insert(&mut page, end, &[i], LeafValue::Inline(&value));
        }
        assert!(free_space(&page).unwrap() + 308 < 1008);
        let before = page.clone();
        let too_big = LeafValue::Inline(&[3u8; 1000]);
        assert_eq!(leaf_replace(&mut page, 1, too_big), Err(NodeError::NoSpace));
        assert_same(&page, &before, "NoSpace replace");
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert_stamp(&page);
    }

    #[test]
    fn fragmentation_then_compaction_keeps_content() {
        let mut rng = Rng::new(11);
        let mut page = new_page(123);
        fill_leaf(&mut page, &mut rng, 1000);
        let count = cell_count(&page).unwrap();
        for i in (0..count).step_by(2).rev() {
            leaf_remove(&mut page, i).unwrap();
        }
        assert!(fragmented(&page) > 0);
        let entries = leaf_entries(&page);
        let free = free_space(&page).unwrap();
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        compact(&mut page, NodeKind::Leaf).unwrap();
        assert_eq!(fragmented(&page), 0);
        assert_eq!(free_space(&page), Ok(free));
        assert_eq!(raw_u16(&page, CONTENT_START_AT) - raw_u16(&page, FREE_START_AT), free);
        assert_eq!(leaf_entries(&page), entries);
        assert_eq!(link(&page), 123);
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        assert!(page[raw_u16(&page, FREE_START_AT)..raw_u16(&page, CONTENT_START_AT)].iter().all(|&b| b == 0));
        assert_stamp(&page);
    }

    #[test]
    fn insert_compacts_automatically_when_space_is_fragmented() {
        let mut page = new_page(0);
        let value = [7u8; 200];
        let mut n = 0u8;
        while leaf_insert(&mut page, n as usize, &[n], LeafValue::Inline(&value)).is_ok() {
            n += 1;
        }
        leaf_remove(&mut page, 3).unwrap();
        leaf_remove(&mut page, 1).unwrap();
        let gap = raw_u16(&page, CONTENT_START_AT) - raw_u16(&page, FREE_START_AT);
        let big = vec![8u8; 300];
        assert!(leaf_cell_size(1, &LeafValue::Inline(&big)) + SLOT_SIZE > gap);
        leaf_insert(&mut page, 1, &[1], LeafValue::Inline(&big)).unwrap();
        assert_eq!(fragmented(&page), 0);
        assert_eq!(leaf_value_at(&page, 1), Ok(LeafValue::Inline(big.as_slice())));
        assert_eq!(cell_count(&page), Ok(n as usize - 1));
        assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        let mut internal = new_page(0);
        let mut m = 0u8;
        while internal_insert(&mut internal, m as usize, &[m; 200], m as u64).is_ok() {
            m += 1;
        }
        internal_remove(&mut internal, 0).unwrap();
        internal_remove(&mut internal, 0).unwrap();
        internal_insert(&mut internal, 0, &[0; 300], 1234).unwrap();
        assert_eq!(fragmented(&internal), 0);
        assert_eq!(internal_child_at(&internal, 0), Ok(1234));
        assert_eq!(validate(&internal, NodeKind::Internal), Ok(()));
        assert_stamp(&page);
        assert_stamp(&internal);
    }

    #[test]
    fn removing_everything_leaves_a_valid_empty_node() {
        let mut page = sample_leaf();
        while cell_count(&page).unwrap() > 0 {
            leaf_remove(&mut page, 0).unwrap();
            assert_eq!(validate(&page, NodeKind::Leaf), Ok(()));
        }
        assert_eq!(free_space(&page), Ok(NODE_AREA));
        assert_eq!(search(&page, NodeKind::Leaf, b"apple"), Ok(Err(0)));
        assert_stamp(&page);
    }

    #[test]
    fn internal_routing() {
        let page = sample_internal();
        assert_eq!(validate(&page, NodeKind::Internal), Ok(()));
        let cases: [(&[u8], u64); 9] =
            [(b"", 1), (b"a", 1), (b"b", 2), (b"b\0", 2), (b"c", 2), (b"d", 3), (b"e", 3), (b"f", 4), (b"zzz", 4)];
        for (key, child) in cases {
            assert_eq!(internal_child_for(&page, key), Ok(child), "key {key:?}");
        }
        assert_eq!(internal_child_at(&page, 1), Ok(3));
        let mut page = page;
        internal_remove(&mut page, 1).unwrap();
        assert_eq!(internal_child_for(&page, b"e"), Ok(2));
        assert_eq!(internal_entries(&page), vec![(b"b".to_vec(), 2), (b"f".to_vec(), 4)]);
        assert_eq!(validate(&page, NodeKind::Internal), Ok(()));
        assert_stamp(&page);
    }

    /// A one-level tree of leaves, routed by their lowest keys, for the model test.
    struct Leaves {
        pages: Vec<Box<Page>>,
        ids: Vec<u64>,
        lows: Vec<Vec<u8>>,
        next_id: u64,
    }

    impl Leaves {
        fn new() -> Leaves {
            Leaves { pages: vec![new_page(0)], ids: vec![1], lows: vec![Vec::new()], next_id: 2 }
        }

        fn find(&self, key: &[u8]) -> usize {
            self.lows.partition_point(|low| low.as_slice() <= key) - 1
        }

        /// Inserts or replaces `key`, splitting its leaf at most once.
        fn put(&mut self, key: &[u8], value: &Val) {
            for attempt in 0..2 {
                let j = self.find(key);
                let free = free_space(&self.pages[j]).unwrap();
                let old = match search(&self.pages[j], NodeKind::Leaf, key).unwrap() {
                    Ok(i) => leaf_cell_size(key.len(), &leaf_value_at(&self.pages[j], i).unwrap()) + SLOT_SIZE,
                    Err(_) => 0,
                };
                match leaf_put(&mut self.pages[j], key, value) {
                    Ok(()) => {
                        let new = leaf_cell_size(key.len(), &value.as_leaf()) + SLOT_SIZE;
                        assert_eq!(free_space(&self.pages[j]).unwrap() + new, free + old);
                        return;
                    }
                    Err(NodeError::NoSpace) if attempt == 0 => self.split(j),
                    Err(e) => panic!("put failed after a split: {e:?}"),
                }
            }
        }

        fn remove(&mut self, key: &[u8]) {
            let j = self.find(key);
            let page = &mut self.pages[j];
            let i = search(page, NodeKind::Leaf, key).unwrap().unwrap();
            let size = leaf_cell_size(key.len(), &leaf_value_at(page, i).unwrap()) + SLOT_SIZE;
            let free = free_space(page).unwrap();
            leaf_remove(page, i).unwrap();
            assert_eq!(free_space(page), Ok(free + size));
            assert_eq!(search(page, NodeKind::Leaf, key), Ok(Err(i)));
        }

        fn get(&self, key: &[u8]) -> Option<Val> {
            let page = &self.pages[self.find(key)];
            match search(page, NodeKind::Leaf, key).unwrap() {
                Ok(i) => Some(Val::owned(leaf_value_at(page, i).unwrap())),
                Err(_) => None,
            }
        }

        fn split(&mut self, j: usize) {
            let before = leaf_entries(&self.pages[j]);
            let largest = (0..before.len())
                .map(|i| leaf_cell_size(before[i].0.len(), &before[i].1.as_leaf()) + SLOT_SIZE)
                .max()
                .unwrap();
            let old_link = link(&self.pages[j]);
            let mut right = new_page(0xDEAD);
            let separator = split_leaf(&mut self.pages[j], &mut right).unwrap();
            let id = self.next_id;
            self.next_id += 1;
            set_link(&mut self.pages[j], id);
            let left = &self.pages[j];
            assert_eq!(link(&right), old_link);
            for page in [left.as_ref(), right.as_ref()] {
                assert_eq!(validate(page, NodeKind::Leaf), Ok(()));
                assert_eq!(fragmented(page), 0);
                assert_stamp(page);
            }
            let (low, high) = (leaf_entries(left), leaf_entries(&right));
            assert!(!low.is_empty() && !high.is_empty());
            assert_eq!(high[0].0, separator);
            assert!(low.last().unwrap().0 < separator);
            assert!(self.lows[j] <= separator);
            assert!(used(left).abs_diff(used(&right)) <= largest, "halves are balanced by bytes");
            assert_eq!([low, high].concat(), before);
            self.pages.insert(j + 1, right);
            self.ids.insert(j + 1, id);
            self.lows.insert(j + 1, separator);
        }

        fn check(&self, model: &BTreeMap<Vec<u8>, Val>) {
            let mut all = Vec::new();
            for (j, page) in self.pages.iter().enumerate() {
                assert_eq!(validate(page, NodeKind::Leaf), Ok(()));
                assert_stamp(page);
                let next = self.ids.get(j + 1).copied().unwrap_or(0);
                assert_eq!(link(page), next, "leaf {j} links to its right sibling");
                let entries = leaf_entries(page);
                assert!(entries.iter().all(|(key, _)| *key >= self.lows[j]));
                if let Some(high) = self.lows.get(j + 1) {
                    assert!(entries.iter().all(|(key, _)| key < high));
                }
                all.extend(entries);
            }
            let expected: Vec<(Vec<u8>, Val)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(all, expected);
        }
    }

    #[test]
    fn leaves_match_a_btreemap_model() {
        let mut rng = Rng::new(2024);
        let mut model: BTreeMap<Vec<u8>, Val> = BTreeMap::new();
        let mut leaves = Leaves::new();
        for op in 0..8000 {
            let roll = rng.below(100);
            if roll < 55 || model.is_empty() {
                let (key, value) = (rng.key(), rng.value());
                leaves.put(&key, &value);
                model.insert(key, value);
            } else if roll < 70 {
                let key = model.keys().nth(rng.below(model.len())).unwrap().clone();
                let value = rng.value();
                leaves.put(&key, &value);
                model.insert(key, value);
            } else if roll < 88 {
                let key = model.keys().nth(rng.below(model.len())).unwrap().clone();
                leaves.remove(&key);
                model.remove(&key);
            } else if roll < 97 {
                let key = model.keys().nth(rng.below(model.len())).unwrap().clone();
                assert_eq!(leaves.get(&key).as_ref(), model.get(&key));
                let absent = rng.key();
                assert_eq!(leaves.get(&absent).as_ref(), model.get(&absent));
            } else {
                let j = rng.below(leaves.pages.len());
                let entries = leaf_entries(&leaves.pages[j]);
                compact(&mut leaves.pages[j], NodeKind::Leaf).unwrap();
                assert_eq!(leaf_entries(&leaves.pages[j]), entries);
            }
            if op % 500 == 499 {
                leaves.check(&model);
            }
        }
        leaves.check(&model);
        assert!(leaves.pages.len() > 20, "the test exercised many splits");
    }

    #[test]
    fn internal_node_matches_a_btreemap_model() {
        let mut rng = Rng::new(99);
        let mut page = new_page(1000);
        let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut splits = 0;
        for _ in 0..6000 {
            let key = rng.key();
            if rng.below(4) == 0 && !model.is_empty() {
                let victim = model.keys().nth(rng.below(model.len())).unwrap().clone();
                let i = search(&page, NodeKind::Internal, &victim).unwrap().unwrap();
                internal_remove(&mut page, i).unwrap();
                model.remove(&victim);
            } else if let Err(i) = search(&page, NodeKind::Internal, &key).unwrap() {
                let child = rng.next_u64();
                match internal_insert(&mut page, i, &key, child) {
                    Ok(()) => {
                        model.insert(key.clone(), child);
                    }
                    Err(NodeError::NoSpace) => {
                        let separator = check_internal_split(&mut page, &mut rng);
                        model.split_off(&separator);
                        splits += 1;
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            let expected = model.range(..=key.clone()).next_back().map_or(link(&page), |(_, child)| *child);
            assert_eq!(internal_child_for(&page, &key), Ok(expected));
        }
        let expected: Vec<(Vec<u8>, u64)> = model.into_iter().collect();
        assert_eq!(internal_entries(&page), expected);
        assert_eq!(validate(&page, NodeKind::Internal), Ok(()));
        assert!(splits > 5);
        assert_stamp(&page);
    }

    /// Splits a full internal node, checks both halves against the original, and returns the
    /// separator. `page` keeps the left half.
    fn check_internal_split(page: &mut Page, rng: &mut Rng) -> Vec<u8> {
        let original = *page;
        let before = internal_entries(page);
        let largest = before.iter().map(|(key, _)| internal_cell_size(key.len()) + SLOT_SIZE).max().unwrap();
        let mut right = new_page(0);
        let separator = split_internal(page, &mut right).unwrap();
        for half in [&*page, right.as_ref()] {
            assert_eq!(validate(half, NodeKind::Internal), Ok(()));
            assert_stamp(half);
        }
        let (low, high) = (internal_entries(page), internal_entries(&right));
        let middle = before.iter().position(|(key, _)| *key == separator).unwrap();
        assert_eq!(low, before[..middle]);
        assert_eq!(high, before[middle + 1..]);
        assert_eq!(link(page), link(&original));
        assert_eq!(link(&right), before[middle].1);
        assert!(used(page).abs_diff(used(&right)) <= largest, "halves are balanced by bytes");
        let probes = before.iter().map(|(key, _)| key.clone()).chain((0..200).map(|_| rng.key()));
        for probe in probes {
            let half = if probe < separator { &*page } else { right.as_ref() };
            assert_eq!(internal_child_for(half, &probe), internal_child_for(&original, &probe));
        }
        separator
    }

    #[test]
    fn split_leaf_moves_upper_half() {
        let mut left = sample_leaf();
        let mut right = new_page(0);
        right[..NODE_HEADER_OFFSET].copy_from_slice(&stamp());
        let before = leaf_entries(&left);
        let separator = split_leaf(&mut left, &mut right).unwrap();
        let (low, high) = (leaf_entries(&left), leaf_entries(&right));
        assert_eq!(separator, high[0].0);
        assert_eq!((low.len(), high.len()), (3, 2));
        assert_eq!([low, high].concat(), before);
        assert_eq!(link(&right), 77);
        assert_eq!(link(&left), 77, "the caller sets left's link");
        assert_stamp(&left);
        assert_stamp(&right);
    }

    #[test]
    fn split_needs_enough_cells_and_a_valid_page() {
        let mut one = new_page(0);
        leaf_insert(&mut one, 0, b"k", LeafValue::Inline(b"v")).unwrap();
        let mut right = new_page(5);
        let right_before = right.clone();
        assert!(matches!(split_leaf(&mut one, &mut right), Err(NodeError::Invalid(_))));
        let mut two = new_page(0);
        internal_insert(&mut two, 0, b"a", 1).unwrap();
        internal_insert(&mut two, 1, b"b", 2).unwrap();
        assert!(matches!(split_internal(&mut two, &mut right), Err(NodeError::Invalid(_))));
        let mut corrupt = sample_leaf();
        set_raw_u16(&mut corrupt, SLOTS_START, PAGE_SIZE - 1);
        let corrupt_before = corrupt.clone();
        assert!(matches!(split_leaf(&mut corrupt, &mut right), Err(NodeError::Corrupt(_))));
        assert_same(&corrupt, &corrupt_before, "failed split, left");
        assert_same(&right, &right_before, "failed split, right");
        let mut pair = new_page(9);
        leaf_insert(&mut pair, 0, b"a", LeafValue::Inline(b"1")).unwrap();
        leaf_insert(&mut pair, 1, b"b", LeafValue::Inline(b"2")).unwrap();
        assert_eq!(split_leaf(&mut pair, &mut right), Ok(b"b".to_vec()));
        assert_eq!((cell_count(&pair), cell_count(&right)), (Ok(1), Ok(1)));
    }

    #[test]
    fn split_internal_three_cells() {
        let mut left = sample_internal();
        let mut right = new_page(0);
        assert_eq!(split_internal(&mut left, &mut right), Ok(b"d".to_vec()));
        assert_eq!(internal_entries(&left), vec![(b"b".to_vec(), 2)]);
        assert_eq!(internal_entries(&right), vec![(b"f".to_vec(), 4)]);
        assert_eq!((link(&left), link(&right)), (1, 3));
        assert_eq!(validate(&left, NodeKind::Internal), Ok(()));
        assert_eq!(validate(&right, NodeKind::Internal), Ok(()));
    }

    #[test]
    fn used_bytes_counts_slots_and_live_cells() {
        let mut page = sample_leaf();
        assert_eq!(used_bytes(&new_page(0)), Ok(0));
        let cells: usize = (0..5)
            .map(|i| leaf_cell_size(key_at(&page, NodeKind::Leaf, i).unwrap().len(), &leaf_value_at(&page, i).unwrap()))
            .sum();
        assert_eq!(used_bytes(&page), Ok(cells + 5 * SLOT_SIZE));
        let removed = LEAF_CELL_HEADER + b"cherry".len() + 12 + SLOT_SIZE;
        leaf_remove(&mut page, 2).unwrap();
        assert!(fragmented(&page) > 0, "the dead cell is not counted");
        assert_eq!(used_bytes(&page), Ok(cells + 5 * SLOT_SIZE - removed));
        assert_eq!(used_bytes(&page), Ok(used(&page)));
        set_raw_u16(&mut page, COUNT_AT, 300);
        assert!(matches!(used_bytes(&page), Err(NodeError::Corrupt(_))));
    }

    #[test]
    fn merge_leaves_appends_the_right_cells_and_takes_its_link() {
        let mut left = new_page(7);
        leaf_insert(&mut left, 0, b"0", LeafValue::Inline(b"1")).unwrap();
        leaf_insert(&mut left, 1, b"1", LeafValue::Overflow { first_page: 40, len: 9000 }).unwrap();
        leaf_remove(&mut left, 0).unwrap();
        let mut right = sample_leaf();
        right[..NODE_HEADER_OFFSET].copy_from_slice(&[0x11; NODE_HEADER_OFFSET]);
        let right_before = right.clone();
        let expected = [leaf_entries(&left), leaf_entries(&right)].concat();
        let used_sum = used(&left) + used(&right);
        merge_leaves(&mut left, &right).unwrap();
        assert_eq!(leaf_entries(&left), expected);
        assert_eq!(leaf_value_at(&left, 0), Ok(LeafValue::Overflow { first_page: 40, len: 9000 }));
        assert_eq!(link(&left), 77, "left takes right's link");
        assert_eq!((used(&left), fragmented(&left)), (used_sum, 0));
        assert_eq!(validate(&left, NodeKind::Leaf), Ok(()));
        assert_same(&right, &right_before, "the right node is only read");
        assert_stamp(&left);
        // Into an empty left node, and an empty right node into a full one.
        let mut empty = new_page(1);
        merge_leaves(&mut empty, &right).unwrap();
        assert_eq!(leaf_entries(&empty), leaf_entries(&right));
        let before = leaf_entries(&left);
        merge_leaves(&mut left, &new_page(0)).unwrap();
        assert_eq!((leaf_entries(&left), link(&left)), (before, 0));
    }

    #[test]
    fn merge_internal_pulls_the_separator_down() {
        let mut left = sample_internal(); // link 1; b -> 2, d -> 3, f -> 4
        let mut right = new_page(10);
        internal_insert(&mut right, 0, b"x", 11).unwrap();
        internal_insert(&mut right, 1, b"y", 12).unwrap();
        let probes: [&[u8]; 9] = [b"", b"a", b"b", b"e", b"f", b"m", b"n", b"x", b"z"];
        let route = |page: &Page, key: &[u8]| internal_child_for(page, key).unwrap();
        let before: Vec<u64> =
            probes.iter().map(|k| if *k < b"m".as_slice() { route(&left, k) } else { route(&right, k) }).collect();
        merge_internal(&mut left, b"m", &right).unwrap();
        let expected: Vec<(Vec<u8>, u64)> = [(b"b", 2u64), (b"d", 3), (b"f", 4), (b"m", 10), (b"x", 11), (b"y", 12)]
            .iter()
            .map(|(k, c)| (k.to_vec(), *c))
            .collect();
        assert_eq!(internal_entries(&left), expected);
        assert_eq!(link(&left), 1, "left keeps its leftmost child");
        assert_eq!(probes.iter().map(|k| route(&left, k)).collect::<Vec<_>>(), before, "routes as the two did");
        assert_eq!(validate(&left, NodeKind::Internal), Ok(()));
        assert_stamp(&left);
        // Two nodes with no cells: the separator alone.
        let mut lone = new_page(5);
        merge_internal(&mut lone, b"k", &new_page(6)).unwrap();
        assert_eq!((link(&lone), internal_entries(&lone)), (5, vec![(b"k".to_vec(), 6)]));
    }

    #[test]
    fn split_then_merge_restores_the_node() {
        let mut rng = Rng::new(77);
        for _ in 0..50 {
            let mut leaf = new_page(rng.next_u64());
            fill_leaf(&mut leaf, &mut rng, 200);
            let (entries, old_link) = (leaf_entries(&leaf), link(&leaf));
            let mut right = new_page(0);
            split_leaf(&mut leaf, &mut right).unwrap();
            assert_eq!(merge_leaves(&mut leaf, &right), Ok(()));
            assert_eq!((leaf_entries(&leaf), link(&leaf)), (entries, old_link));

            let mut internal = new_page(rng.next_u64());
            fill_internal(&mut internal, &mut rng, 300);
            let (entries, old_link) = (internal_entries(&internal), link(&internal));
            let mut right = new_page(0);
            let separator = split_internal(&mut internal, &mut right).unwrap();
            assert_eq!(merge_internal(&mut internal, &separator, &right), Ok(()));
            assert_eq!((internal_entries(&internal), link(&internal)), (entries, old_link));
        }
    }

    #[test]
    fn a_merge_that_cannot_be_done_changes_nothing() {
        let mut rng = Rng::new(12);
        let mut full = new_page(3);
        fill_leaf(&mut full, &mut rng, 500);
        let mut high = new_page(0);
        leaf_insert(&mut high, 0, &[0xFF; 70], LeafValue::Inline(&[1; 900])).unwrap();
        let cases: Vec<(Box<Page>, Box<Page>, &str)> = vec![
            (full.clone(), high.clone(), "no space"),
            (high.clone(), sample_leaf(), "keys out of order"),
            (sample_leaf(), sample_leaf(), "equal keys"),
        ];
        for (mut left, right, what) in cases {
            let before = left.clone();
            let result = merge_leaves(&mut left, &right);
            let expected = if what == "no space" {
                NodeError::NoSpace
            } else {
                NodeError::Corrupt("merged nodes' keys are not in order")
            };
            assert_eq!(result, Err(expected), "{what}");
            assert_same(&left, &before, what);
        }
        let mut corrupt = sample_leaf();
        set_raw_u16(&mut corrupt, SLOTS_START, PAGE_SIZE - 1);
        let mut left = new_page(0);
        assert!(matches!(merge_leaves(&mut left, &corrupt), Err(NodeError::Corrupt(_))));
        assert_same(&left, &new_page(0), "corrupt right node");
        let mut internal = sample_internal();
        let before = internal.clone();
        assert!(matches!(
            merge_internal(&mut internal, &[b'z'; MAX_KEY_LEN + 1], &new_page(0)),
            Err(NodeError::Invalid(_))
        ));
        assert!(
            matches!(merge_internal(&mut internal, b"e", &new_page(0)), Err(NodeError::Corrupt(_))),
            "separator below left's last key"
        );
        let mut right = new_page(9);
        internal_insert(&mut right, 0, b"p", 10).unwrap();
        assert!(
            matches!(merge_internal(&mut internal, b"p", &right), Err(NodeError::Corrupt(_))),
            "separator not below right's first key"
        );
        let mut big = new_page(0);
        fill_internal(&mut big, &mut Rng::new(3), 1000);
        let mut bigger = new_page(0);
        // Longer than any random key and all 0xFF, so above them all.
        internal_insert(&mut bigger, 0, &[0xFF; 66], 1).unwrap();
        let big_before = big.clone();
        assert_eq!(merge_internal(&mut big, &[0xFF; 65], &bigger), Err(NodeError::NoSpace));
        assert_same(&big, &big_before, "internal no space");
        assert_same(&internal, &before, "failed internal merges");
    }

    #[test]
    fn after_a_split_either_half_takes_a_largest_cell() {
        let low_key = vec![0u8; MAX_KEY_LEN];
        let high_key = vec![0xFFu8; MAX_KEY_LEN];
        let largest = LeafValue::Overflow { first_page: 1, len: 1 };
        for seed in 0..150 {
            let mut rng = Rng::new(seed);
            let mut page = new_page(0);
            loop {
                let mut key = rng.key();
                key[0] = key[0].clamp(1, 0xFE);
                if rng.below(3) == 0 {
                    key.resize(rng.between(key.len(), MAX_KEY_LEN), 0x55);
                }
                let value = match rng.below(3) {
                    0 => Val::Overflow(3, 3),
                    1 if fits_inline(key.len(), 0) => {
                        Val::Inline(vec![1; MAX_INLINE_CELL - LEAF_CELL_HEADER - key.len()])
                    }
                    _ => rng.value(),
                };
                let value = match value {
                    Val::Inline(bytes) if !fits_inline(key.len(), bytes.len()) => Val::Overflow(4, 4),
                    value => value,
                };
                match leaf_put(&mut page, &key, &value) {
                    Ok(()) => {}
                    Err(NodeError::NoSpace) => break,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            let mut right = new_page(0);
            split_leaf(&mut page, &mut right).unwrap();
            let mut left = page;
            leaf_insert(&mut left, 0, &low_key, largest).unwrap();
            let end = cell_count(&right).unwrap();
            leaf_insert(&mut right, end, &high_key, largest).unwrap();
            assert_eq!(validate(&left, NodeKind::Leaf), Ok(()));
            assert_eq!(validate(&right, NodeKind::Leaf), Ok(()));

            let mut internal = new_page(0);
            loop {
                let mut key = rng.key();
                key[0] = key[0].clamp(1, 0xFE);
                key.resize(rng.between(key.len(), MAX_KEY_LEN), 0x55);
                match search(&internal, NodeKind::Internal, &key).unwrap() {
                    Ok(_) => continue,
                    Err(i) => match internal_insert(&mut internal, i, &key, 8) {
                        Ok(()) => {}
                        Err(NodeError::NoSpace) => break,
                        Err(e) => panic!("unexpected {e:?}"),
                    },
                }
            }
            let mut right = new_page(0);
            split_internal(&mut internal, &mut right).unwrap();
            internal_insert(&mut internal, 0, &low_key, 9).unwrap();
            let end = cell_count(&right).unwrap();
            internal_insert(&mut right, end, &high_key, 9).unwrap();
        }
    }

    /// Asserts that `validate` reports corruption, and that no read panics.
    fn assert_corrupt(page: &Page, kind: NodeKind, expected: Option<&str>) {
        match validate(page, kind) {
            Err(NodeError::Corrupt(why)) => {
                if let Some(expected) = expected {
                    assert_eq!(why, expected);
                }
            }
            other => panic!("validate returned {other:?}"),
        }
        exercise_reads(page, &mut Rng::new(1));
        let mut copy = *page;
        assert!(compact(&mut copy, kind).is_err());
        assert_same(&copy, page, "failed compaction");
    }

    #[test]
    fn validate_rejects_slot_past_the_end() {
        let mut page = sample_leaf();
        set_raw_u16(&mut page, SLOTS_START + 2, PAGE_SIZE - 3);
        assert_corrupt(&page, NodeKind::Leaf, Some("cell extends past the end of the page"));
        set_raw_u16(&mut page, SLOTS_START + 2, 0xFFFF);
        assert_corrupt(&page, NodeKind::Leaf, Some("cell extends past the end of the page"));
        let mut page = sample_leaf();
        set_raw_u16(&mut page, SLOTS_START + 2, SLOTS_START);
        assert_corrupt(&page, NodeKind::Leaf, Some("slot points outside the cell content area"));
    }

    #[test]
    fn validate_rejects_a_value_length_past_the_end() {
        let mut page = sample_leaf();
        let cell = raw_u16(&page, SLOTS_START);
        page[cell + 3..cell + 7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_corrupt(&page, NodeKind::Leaf, Some("cell extends past the end of the page"));
        let mut page = sample_internal();
        let cell = raw_u16(&page, SLOTS_START);
        set_raw_u16(&mut page, cell, 5000);
        assert_corrupt(&page, NodeKind::Internal, Some("cell extends past the end of the page"));
    }

    #[test]
    fn validate_rejects_overlapping_cells() {
        // Cell "a" carries an inline value whose bytes hold a well-formed cell "b"; both slots are
        // in key order and inside the content area, so only the overlap is wrong.
        let mut page = new_page(0);
        let inner = [1u8, 0, 0, 2, 0, 0, 0, b'b', b'x', b'y'];
        let mut value = vec![0u8; 5];
        value.extend_from_slice(&inner);
        leaf_insert(&mut page, 0, b"a", LeafValue::Inline(&value)).unwrap();
        let outer = raw_u16(&page, SLOTS_START);
        let inner_at = outer + LEAF_CELL_HEADER + 1 + 5;
        set_raw_u16(&mut page, SLOTS_START + 2, inner_at);
        set_raw_u16(&mut page, COUNT_AT, 2);
        set_raw_u16(&mut page, FREE_START_AT, SLOTS_START + 4);
        assert_eq!(leaf_value_at(&page, 1), Ok(LeafValue::Inline(b"xy")));
        assert_corrupt(&page, NodeKind::Leaf, Some("cells overlap"));
    }

    #[test]
    fn validate_rejects_unsorted_and_duplicate_keys() {
        let mut page = sample_leaf();
        let (a, b) = (raw_u16(&page, SLOTS_START + 2), raw_u16(&page, SLOTS_START + 4));
        set_raw_u16(&mut page, SLOTS_START + 2, b);
        set_raw_u16(&mut page, SLOTS_START + 4, a);
        assert_corrupt(&page, NodeKind::Leaf, Some("keys are not strictly increasing"));
        let mut page = sample_internal();
        let cell = raw_u16(&page, SLOTS_START + 2);
        page[cell + INTERNAL_CELL_HEADER] = b'b';
        assert_corrupt(&page, NodeKind::Internal, Some("keys are not strictly increasing"));
    }

    #[test]
    fn validate_rejects_bad_header_fields() {
        let base = sample_leaf();
        let count = cell_count(&base).unwrap();
        let mut page = base.clone();
        set_raw_u16(&mut page, COUNT_AT, count + 1);
        assert_corrupt(&page, NodeKind::Leaf, Some("free_start does not match cell_count"));
        let mut page = base.clone();
        set_raw_u16(&mut page, COUNT_AT, 3000);
        set_raw_u16(&mut page, FREE_START_AT, SLOTS_START + 6000);
        assert_corrupt(&page, NodeKind::Leaf, Some("content_start is below free_start"));
        let mut page = base.clone();
        set_raw_u16(&mut page, CONTENT_START_AT, raw_u16(&base, FREE_START_AT) - 2);
        assert_corrupt(&page, NodeKind::Leaf, Some("content_start is below free_start"));
        let mut page = base.clone();
        set_raw_u16(&mut page, CONTENT_START_AT, PAGE_SIZE + 1);
        assert_corrupt(&page, NodeKind::Leaf, Some("content_start is past the end of the page"));
        let mut page = base.clone();
        set_raw_u16(&mut page, FRAGMENTED_AT, 1);
        assert_corrupt(&page, NodeKind::Leaf, Some("live and fragmented bytes do not fill the content area"));
        let mut page = base.clone();
        set_raw_u16(&mut page, FRAGMENTED_AT, PAGE_SIZE);
        assert_corrupt(&page, NodeKind::Leaf, Some("fragmented is larger than the content area"));
        let mut page = base.clone();
        set_raw_u16(&mut page, CONTENT_START_AT, raw_u16(&base, CONTENT_START_AT) + 1);
        assert_corrupt(&page, NodeKind::Leaf, None);
    }

    #[test]
    fn validate_rejects_bad_cells() {
        let mut page = sample_leaf();
        let cell = raw_u16(&page, SLOTS_START);
        page[cell + 2] = 0x80;
        assert_corrupt(&page, NodeKind::Leaf, Some("unknown leaf cell flags"));
        // An internal cell with an over-long key that still lies inside the page.
        let mut page = new_page(0);
        set_raw_u16(&mut page, COUNT_AT, 1);
        set_raw_u16(&mut page, FREE_START_AT, SLOTS_START + 2);
        let start = PAGE_SIZE - (INTERNAL_CELL_HEADER + MAX_KEY_LEN + 1);
        set_raw_u16(&mut page, CONTENT_START_AT, start);
        set_raw_u16(&mut page, SLOTS_START, start);
        set_raw_u16(&mut page, start, MAX_KEY_LEN + 1);
        assert!(internal_child_at(&page, 0).is_ok());
        assert_corrupt(&page, NodeKind::Internal, Some("key is longer than MAX_KEY_LEN"));
        let mut copy = *page;
        assert!(split_internal(&mut copy, &mut new_page(0)).is_err());
        // A leaf cell with an inline value larger than the inline limit.
        let mut page = new_page(0);
        let size = MAX_INLINE_CELL + 1;
        let start = PAGE_SIZE - size;
        set_raw_u16(&mut page, COUNT_AT, 1);
        set_raw_u16(&mut page, FREE_START_AT, SLOTS_START + 2);
        set_raw_u16(&mut page, CONTENT_START_AT, start);
        set_raw_u16(&mut page, SLOTS_START, start);
        set_raw_u16(&mut page, start, 1);
        page[start + 3..start + 7].copy_from_slice(&((size - LEAF_CELL_HEADER - 1) as u32).to_le_bytes());
        assert!(leaf_value_at(&page, 0).is_ok());
        assert_corrupt(&page, NodeKind::Leaf, Some("inline leaf cell is larger than MAX_INLINE_CELL"));
    }

    #[test]
    fn validate_accepts_pages_from_every_operation() {
        let mut rng = Rng::new(5);
        let mut page = new_page(0);
        for step in 0..3000 {
            let count = cell_count(&page).unwrap();
            let roll = rng.below(10);
            let result = if roll < 5 {
                let (key, value) = (rng.key(), rng.value());
                leaf_put(&mut page, &key, &value)
            } else if roll < 7 && count > 0 {
                leaf_replace(&mut page, rng.below(count), rng.value().as_leaf())
            } else if roll < 9 && count > 0 {
                leaf_remove(&mut page, rng.below(count))
            } else {
                compact(&mut page, NodeKind::Leaf)
            };
            match result {
                Ok(()) | Err(NodeError::NoSpace) => {}
                Err(e) => panic!("step {step}: {e:?}"),
            }
            assert_eq!(validate(&page, NodeKind::Leaf), Ok(()), "step {step}");
            assert_stamp(&page);
        }
    }

    /// Calls every read function; it may fail but must not panic. On a page that validates, reads
    /// of existing cells succeed.
    fn exercise_reads(page: &Page, rng: &mut Rng) {
        let _ = (cell_count(page), free_space(page), link(page));
        let count = raw_u16(page, COUNT_AT).min(600);
        for kind in [NodeKind::Leaf, NodeKind::Internal] {
            let valid = validate(page, kind).is_ok();
            for i in 0..count + 2 {
                let key = key_at(page, kind, i);
                assert!(!valid || i >= count || key.is_ok());
            }
            for _ in 0..4 {
                let probe = rng.key();
                let found = search(page, kind, &probe);
                assert!(!valid || found.is_ok());
            }
            let leaf_valid = kind == NodeKind::Leaf && valid;
            let internal_valid = kind == NodeKind::Internal && valid;
            for i in 0..count + 2 {
                assert!(!leaf_valid || i >= count || leaf_value_at(page, i).is_ok());
                assert!(!internal_valid || i >= count || internal_child_at(page, i).is_ok());
            }
            let _ = internal_child_for(page, &rng.key());
        }
    }

    /// Runs one mutation on a copy of `page`: it must not panic, an error must leave the page
    /// unchanged, header bytes stay put, and a valid page stays valid.
    fn exercise_write(page: &Page, kind: NodeKind, op: impl FnOnce(&mut Page) -> Result<(), NodeError>) {
        let mut copy = *page;
        let was_valid = validate(page, kind).is_ok();
        match op(&mut copy) {
            Err(_) => assert_same(&copy, page, "failed mutation"),
            Ok(()) => assert!(!was_valid || validate(&copy, kind).is_ok(), "a valid page stays valid"),
        }
        assert_eq!(copy[..NODE_HEADER_OFFSET], page[..NODE_HEADER_OFFSET]);
    }

    fn exercise_writes(page: &Page, rng: &mut Rng) {
        let count = raw_u16(page, COUNT_AT).min(600);
        let (i, key, value, child) = (rng.below(count + 2), rng.key(), rng.value(), rng.next_u64());
        for kind in [NodeKind::Leaf, NodeKind::Internal] {
            let at = match search(page, kind, &key) {
                Ok(Err(at)) => at,
                _ => i,
            };
            match kind {
                NodeKind::Leaf => {
                    exercise_write(page, kind, |p| leaf_insert(p, at, &key, value.as_leaf()));
                    exercise_write(page, kind, |p| leaf_replace(p, i, value.as_leaf()));
                    exercise_write(page, kind, |p| leaf_remove(p, i));
                }
                NodeKind::Internal => {
                    exercise_write(page, kind, |p| internal_insert(p, at, &key, child));
                    exercise_write(page, kind, |p| internal_remove(p, i));
                }
            }
            exercise_write(page, kind, |p| compact(p, kind));
        }
        let sample = sample_leaf();
        exercise_write(page, NodeKind::Leaf, |p| merge_leaves(p, &sample));
        exercise_write(&sample, NodeKind::Leaf, |p| merge_leaves(p, page));
        exercise_write(page, NodeKind::Internal, |p| merge_internal(p, &key, &new_page(0)));
        exercise_write(&new_page(0), NodeKind::Internal, |p| merge_internal(p, &key, page));
        for kind in [NodeKind::Leaf, NodeKind::Internal] {
            let mut left = *page;
            let mut right = new_page(0);
            let right_before = right.clone();
            let split = match kind {
                NodeKind::Leaf => split_leaf(&mut left, &mut right),
                NodeKind::Internal => split_internal(&mut left, &mut right),
            };
            match split {
                Ok(_) => {
                    assert_eq!(validate(&left, kind), Ok(()));
                    assert_eq!(validate(&right, kind), Ok(()));
                }
                Err(_) => {
                    assert_same(&left, page, "failed split, left");
                    assert_same(&right, &right_before, "failed split, right");
                }
            }
            assert_stamp(&right);
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        let mut rng = Rng::new(31337);
        let mut leaf = new_page(8);
        fill_leaf(&mut leaf, &mut rng, 40);
        for i in (0..cell_count(&leaf).unwrap()).step_by(3).rev() {
            leaf_remove(&mut leaf, i).unwrap();
        }
        let mut internal = new_page(9);
        fill_internal(&mut internal, &mut rng, 60);
        let mut rejected = 0;
        for round in 0..4000 {
            let mut page = if round % 2 == 0 { leaf.clone() } else { internal.clone() };
            let free_start = raw_u16(&page, FREE_START_AT);
            for _ in 0..rng.between(1, 6) {
                let at = match rng.below(3) {
                    0 => rng.between(NODE_HEADER_OFFSET, SLOTS_START - 1),
                    1 => rng.between(SLOTS_START, free_start - 1),
                    _ => rng.between(NODE_HEADER_OFFSET, PAGE_SIZE - 1),
                };
                page[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xFF,
                    _ => rng.next_u64() as u8,
                };
            }
            exercise_reads(&page, &mut rng);
            exercise_writes(&page, &mut rng);
            assert_stamp(&page);
            rejected += usize::from(validate(&page, NodeKind::Leaf).is_err());
        }
        assert!(rejected > 1000, "most corruptions are detected ({rejected})");
    }

    #[test]
    fn arbitrary_pages_never_panic() {
        let mut rng = Rng::new(4);
        for round in 0..1500 {
            let mut page = new_page(0);
            let bytes = rng.bytes(PAGE_SIZE - NODE_HEADER_OFFSET);
            page[NODE_HEADER_OFFSET..].copy_from_slice(&bytes);
            // Keep the header plausible half the time so reads reach the cells.
            if round % 2 == 0 {
                let count = rng.below(40);
                set_raw_u16(&mut page, COUNT_AT, count);
                set_raw_u16(&mut page, FREE_START_AT, SLOTS_START + 2 * count);
                set_raw_u16(&mut page, CONTENT_START_AT, rng.between(SLOTS_START + 2 * count, PAGE_SIZE));
                set_raw_u16(&mut page, FRAGMENTED_AT, rng.below(64));
            }
            exercise_reads(&page, &mut rng);
            exercise_writes(&page, &mut rng);
            assert_stamp(&page);
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(NodeError::NoSpace.to_string(), "node is full");
        assert_eq!(NodeError::Corrupt("x").to_string(), "corrupt node: x");
        assert_eq!(NodeError::Invalid("y").to_string(), "invalid node operation: y");
    }
}
