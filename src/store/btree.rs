//! The B+tree: byte-string keys to values, on the buffer pool's pages.
//!
//! Page 0 is the meta page (root, page count, free list, key count). Leaves hold keys and values
//! (inline, or the first page of an overflow chain for large values) and link to their right
//! sibling; internal nodes route by separator keys (`node`). Inserts split full nodes bottom-up;
//! a split root grows the tree by one level.
//!
//! Deletes (and overwrites with a smaller value) merge, bottom-up along the path the key took: a
//! node left under-full ([`MERGE_BELOW`]) takes all the cells of its right sibling under the same
//! parent, or moves into its left sibling if it is the last child (or the right one has no room),
//! when the two fit in one node. The left node of the pair survives, so the leaves' right-sibling
//! chain stays intact; internal nodes also take the parent's separator between them. The parent
//! loses that separator and the right child, and is checked in turn. A root left with a single
//! child is replaced by it: the tree shrinks by one level. Siblings that do not fit together are
//! left as they are (no borrowing of cells, which would log more pages per delete for a fuller
//! tree): the under-full node's siblings are then about three quarters full or more, and it merges
//! later if it shrinks further. Overflow chains never move; only the leaf cells that point to them
//! do.
//!
//! Pages freed by merges and by deletes and overwrites (overflow chains) go to a free list and are
//! reused before the file grows.
//!
//! Every change happens inside the buffer pool's transaction, so it is logged and undone on abort.

use crate::constants::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::error::{Error, Result};
use crate::store::buffer_pool::BufferPool;
use crate::store::node::{self, LeafValue, NodeError, NodeKind, NODE_AREA, PAGE_SIZE};
use crate::store::page::{self, PageId, PageType};

pub const META_PAGE: PageId = PageId(0);
const META_MAGIC: [u8; 4] = *b"MLBT";
const META_ROOT: usize = 40;
const META_NEXT_PAGE: usize = 48;
const META_FREE_HEAD: usize = 56;
const META_KEY_COUNT: usize = 64;
const META_MAGIC_AT: usize = 72;

const OVERFLOW_NEXT: usize = 40;
const OVERFLOW_LEN: usize = 48;
const OVERFLOW_DATA: usize = 56;
/// Value bytes one overflow page holds.
pub const OVERFLOW_CAPACITY: usize = PAGE_SIZE - OVERFLOW_DATA;
const FREE_NEXT: usize = 40;

/// Deepest tree walked before the structure is declared corrupt (a cycle would loop forever).
const DEPTH_MAX: usize = 32;

/// A node whose slots and cells take fewer bytes than this after a delete is merged with an
/// adjacent sibling, if the two fit in one node. A quarter of the node area: a split leaves each
/// half typically about half full, well above it, so a key inserted and deleted in turn does not
/// split and merge the same node over and over (a merge needs about a quarter of a node deleted
/// first); and an under-full node fits with any sibling up to three quarters full, so a tree
/// emptied by deletes shrinks to near what its keys need. A higher bar would keep nodes fuller at
/// the cost of more merges (and more pages logged by deletes).
pub const MERGE_BELOW: usize = NODE_AREA / 4;

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u64(p: &mut [u8], at: usize, v: u64) {
    p[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn as_page(p: &[u8]) -> &[u8; PAGE_SIZE] {
    p.try_into().expect("a page is PAGE_SIZE bytes")
}

fn as_page_mut(p: &mut [u8]) -> &mut [u8; PAGE_SIZE] {
    p.try_into().expect("a page is PAGE_SIZE bytes")
}

fn corrupt(page: PageId, what: &str) -> Error {
    Error::TreeCorrupt(format!("{page}: {what}"))
}

fn node_err(page: PageId, e: NodeError) -> Error {
    match e {
        NodeError::Corrupt(what) | NodeError::Invalid(what) => corrupt(page, what),
        NodeError::NoSpace => corrupt(page, "unexpected lack of space"),
    }
}

/// The meta page's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub root: PageId,
    pub next_page: u64,
    pub free_head: PageId,
    pub key_count: u64,
}

/// Whether the data file holds a tree yet (the meta page verifies).
pub fn exists(pool: &mut BufferPool) -> Result<bool> {
    match pool.read(META_PAGE) {
        Ok(_) => Ok(true),
        Err(Error::PageCorrupt(page::PageError::Unwritten(_))) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates an empty tree (meta page and an empty root leaf). Inside a transaction.
pub fn create(pool: &mut BufferPool) -> Result<()> {
    let root = PageId(1);
    let leaf = pool.create(root, PageType::Leaf)?;
    node::init(as_page_mut(leaf), 0);
    let meta = pool.create(META_PAGE, PageType::Meta)?;
    put_u64(meta, META_ROOT, root.0);
    put_u64(meta, META_NEXT_PAGE, 2);
    put_u64(meta, META_FREE_HEAD, 0);
    put_u64(meta, META_KEY_COUNT, 0);
    meta[META_MAGIC_AT..META_MAGIC_AT + 4].copy_from_slice(&META_MAGIC);
    Ok(())
}

/// `p`, if it is the meta page.
fn checked_meta(p: &[u8]) -> Result<&[u8]> {
    if page::page_type(p) != Some(PageType::Meta) || p[META_MAGIC_AT..META_MAGIC_AT + 4] != META_MAGIC {
        return Err(corrupt(META_PAGE, "not a meta page"));
    }
    Ok(p)
}

pub fn meta(pool: &mut BufferPool) -> Result<Meta> {
    let p = checked_meta(pool.read(META_PAGE)?)?;
    Ok(Meta {
        root: PageId(u64_at(p, META_ROOT)),
        next_page: u64_at(p, META_NEXT_PAGE),
        free_head: PageId(u64_at(p, META_FREE_HEAD)),
        key_count: u64_at(p, META_KEY_COUNT),
    })
}

fn set_meta(pool: &mut BufferPool, m: Meta) -> Result<()> {
    let p = pool.write(META_PAGE)?;
    put_u64(p, META_ROOT, m.root.0);
    put_u64(p, META_NEXT_PAGE, m.next_page);
    put_u64(p, META_FREE_HEAD, m.free_head.0);
    put_u64(p, META_KEY_COUNT, m.key_count);
    Ok(())
}

/// Takes a page from the free list, or a new one at the end of the file.
fn allocate(pool: &mut BufferPool, kind: PageType) -> Result<PageId> {
    let mut m = meta(pool)?;
    let id = if m.free_head.0 != 0 {
        let id = m.free_head;
        let p = pool.read(id)?;
        // Freed tree pages are marked free; freed overflow chains keep their type (see
        // `free_chain`). Both keep the next free page at the same offset.
        if !matches!(page::page_type(p), Some(PageType::Free | PageType::Overflow)) {
            return Err(corrupt(id, "free list entry is not a free page"));
        }
        const _: () = assert!(FREE_NEXT == OVERFLOW_NEXT);
        m.free_head = PageId(u64_at(p, FREE_NEXT));
        id
    } else {
        let id = PageId(m.next_page);
        m.next_page += 1;
        id
    };
    set_meta(pool, m)?;
    pool.create(id, kind)?;
    Ok(id)
}

fn check_limits(key: &[u8], value_len: usize) -> Result<()> {
    if key.len() > KEY_SIZE_MAX {
        return Err(Error::Limit(format!("key of {} bytes exceeds the limit of {KEY_SIZE_MAX} bytes", key.len())));
    }
    if value_len > VALUE_SIZE_MAX + crate::store::value::STORED_VALUE_OVERHEAD_MAX {
        return Err(Error::Limit(format!("value of {value_len} bytes exceeds the limit of {VALUE_SIZE_MAX} bytes")));
    }
    Ok(())
}

/// The root page, read from the meta page without counting the meta page among the pages the
/// transaction saw (`BufferPool::read_unobserved`): every insert changes the meta page (the key
/// count), and a lookup that counted it would wait for the last insert in flight. What a lookup
/// depends on is the root pointer, and a transaction that changes it also changes the root page
/// (a root split creates it; a root collapse merged into the child that becomes the root), which
/// the descent observes.
fn root(pool: &mut BufferPool) -> Result<PageId> {
    let p = checked_meta(pool.read_unobserved(META_PAGE)?)?;
    Ok(PageId(u64_at(p, META_ROOT)))
}

/// The leaf that holds (or would hold) `key`, and the internal nodes above it, root first.
fn descend(pool: &mut BufferPool, key: &[u8]) -> Result<(PageId, Vec<PageId>)> {
    let mut id = root(pool)?;
    let mut path = Vec::new();
    for _ in 0..DEPTH_MAX {
        let p = pool.read(id)?;
        match page::page_type(p) {
            Some(PageType::Leaf) => return Ok((id, path)),
            Some(PageType::Internal) => {
                let child = PageId(node::internal_child_for(as_page(p), key).map_err(|e| node_err(id, e))?);
                path.push(id);
                id = child;
            }
            _ => return Err(corrupt(id, "tree page is neither leaf nor internal")),
        }
    }
    Err(corrupt(id, "tree deeper than possible (a cycle?)"))
}

/// The value of `key`, if present.
pub fn get(pool: &mut BufferPool, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let (leaf, _) = descend(pool, key)?;
    let p = pool.read(leaf)?;
    let i = match node::search(as_page(p), NodeKind::Leaf, key).map_err(|e| node_err(leaf, e))? {
        Ok(i) => i,
        Err(_) => return Ok(None),
    };
    match node::leaf_value_at(as_page(p), i).map_err(|e| node_err(leaf, e))? {
        LeafValue::Inline(v) => Ok(Some(v.to_vec())),
        LeafValue::Overflow { first_page, len } => read_chain(pool, PageId(first_page), len as usize).map(Some),
    }
}

/// The first `len` bytes (at most) of `key`'s value, reading only the first page of an overflow
/// chain (the expiry sweep needs only the value's header).
pub fn get_prefix(pool: &mut BufferPool, key: &[u8], len: usize) -> Result<Option<Vec<u8>>> {
    let (leaf, _) = descend(pool, key)?;
    let p = pool.read(leaf)?;
    let i = match node::search(as_page(p), NodeKind::Leaf, key).map_err(|e| node_err(leaf, e))? {
        Ok(i) => i,
        Err(_) => return Ok(None),
    };
    match node::leaf_value_at(as_page(p), i).map_err(|e| node_err(leaf, e))? {
        LeafValue::Inline(v) => Ok(Some(v[..v.len().min(len)].to_vec())),
        LeafValue::Overflow { first_page, .. } => {
            let id = PageId(first_page);
            let p = pool.read(id)?;
            if page::page_type(p) != Some(PageType::Overflow) {
                return Err(corrupt(id, "overflow chain points to a page that is not an overflow page"));
            }
            let n = u32::from_le_bytes(p[OVERFLOW_LEN..OVERFLOW_LEN + 4].try_into().expect("4 bytes")) as usize;
            if n == 0 || n > OVERFLOW_CAPACITY {
                return Err(corrupt(id, "overflow page length out of range"));
            }
            Ok(Some(p[OVERFLOW_DATA..OVERFLOW_DATA + n.min(len)].to_vec()))
        }
    }
}

/// The leaf page a key lives on (or would live on).
pub fn leaf_of(pool: &mut BufferPool, key: &[u8]) -> Result<PageId> {
    Ok(descend(pool, key)?.0)
}

fn read_chain(pool: &mut BufferPool, first: PageId, len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut id = first;
    while out.len() < len {
        if id.0 == 0 {
            return Err(corrupt(first, "overflow chain ends early"));
        }
        let p = pool.read(id)?;
        if page::page_type(p) != Some(PageType::Overflow) {
            return Err(corrupt(id, "overflow chain points to a page that is not an overflow page"));
        }
        let n = u32::from_le_bytes(p[OVERFLOW_LEN..OVERFLOW_LEN + 4].try_into().expect("4 bytes")) as usize;
        if n == 0 || n > OVERFLOW_CAPACITY || out.len() + n > len {
            return Err(corrupt(id, "overflow page length out of range"));
        }
        out.extend_from_slice(&p[OVERFLOW_DATA..OVERFLOW_DATA + n]);
        id = PageId(u64_at(p, OVERFLOW_NEXT));
    }
    Ok(out)
}

fn write_chain(pool: &mut BufferPool, value: &[u8]) -> Result<PageId> {
    // Written back to front, so each page knows its successor when it is filled.
    let mut next = 0u64;
    let chunks: Vec<&[u8]> = value.chunks(OVERFLOW_CAPACITY).collect();
    for chunk in chunks.iter().rev() {
        let id = allocate(pool, PageType::Overflow)?;
        let p = pool.write(id)?;
        put_u64(p, OVERFLOW_NEXT, next);
        p[OVERFLOW_LEN..OVERFLOW_LEN + 4].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        p[OVERFLOW_DATA..OVERFLOW_DATA + chunk.len()].copy_from_slice(chunk);
        next = id.0;
    }
    Ok(PageId(next))
}

/// Returns a whole overflow chain to the free list by linking it in front: only its last page
/// and the meta page change (the chain's own next pointers already link it), so deleting a large
/// value logs a few bytes, not the value.
fn free_chain(pool: &mut BufferPool, first: PageId, len: usize) -> Result<()> {
    let pages = len.div_ceil(OVERFLOW_CAPACITY);
    let mut id = first;
    for i in 0..pages {
        if id.0 == 0 {
            return Err(corrupt(first, "overflow chain ends early"));
        }
        let p = pool.read(id)?;
        if page::page_type(p) != Some(PageType::Overflow) {
            return Err(corrupt(id, "overflow chain points to a page that is not an overflow page"));
        }
        if i + 1 == pages {
            break;
        }
        id = PageId(u64_at(p, OVERFLOW_NEXT));
    }
    let mut m = meta(pool)?;
    put_u64(pool.write(id)?, OVERFLOW_NEXT, m.free_head.0);
    m.free_head = first;
    set_meta(pool, m)
}

/// Stores `value` under `key`. Returns true if the key existed (its value is replaced).
pub fn put(pool: &mut BufferPool, key: &[u8], value: &[u8]) -> Result<bool> {
    check_limits(key, value.len())?;
    let (leaf, path) = descend(pool, key)?;
    let found = node::search(as_page(pool.read(leaf)?), NodeKind::Leaf, key).map_err(|e| node_err(leaf, e))?;
    if let Ok(i) = found {
        match replace_inline(pool, leaf, i, value)? {
            Replaced::Same => return Ok(true),
            Replaced::Changed => {
                rebalance(pool, leaf, path, key)?;
                return Ok(true);
            }
            Replaced::NotInline => {}
        }
        remove_at(pool, leaf, i)?;
    }
    let stored = if node::fits_inline(key.len(), value.len()) { None } else { Some(write_chain(pool, value)?) };
    let leaf_value = match stored {
        None => LeafValue::Inline(value),
        Some(first) => LeafValue::Overflow { first_page: first.0, len: value.len() as u32 },
    };
    let i = found.unwrap_or_else(|i| i);
    let split = insert_into_leaf(pool, leaf, &path, i, key, leaf_value)?;
    if found.is_err() {
        let mut m = meta(pool)?;
        m.key_count += 1;
        set_meta(pool, m)?;
    } else if !split {
        // A smaller value may leave the leaf under-full.
        rebalance(pool, leaf, path, key)?;
    }
    Ok(found.is_ok())
}

/// What `replace_inline` did.
enum Replaced {
    /// The cell already held this value: nothing was written (the page is not even taken into
    /// the transaction, so it costs no before-image).
    Same,
    Changed,
    /// Either value is not inline, or the new one does not fit: the leaf is unchanged.
    NotInline,
}

/// Replaces the inline value of cell `i` of `leaf` with `value` inside the leaf (in place when it
/// is not larger), the common case of a SET on an existing key: the cell keeps its slot, so only
/// the value's bytes change and the logged diff is about the size of the value.
fn replace_inline(pool: &mut BufferPool, leaf: PageId, i: usize, value: &[u8]) -> Result<Replaced> {
    let old_inline = match node::leaf_value_at(as_page(pool.read(leaf)?), i).map_err(|e| node_err(leaf, e))? {
        LeafValue::Inline(old) if old == value => return Ok(Replaced::Same),
        LeafValue::Inline(_) => true,
        LeafValue::Overflow { .. } => false,
    };
    let key_len = node::key_at(as_page(pool.read(leaf)?), NodeKind::Leaf, i).map_err(|e| node_err(leaf, e))?.len();
    if !old_inline || !node::fits_inline(key_len, value.len()) {
        return Ok(Replaced::NotInline);
    }
    match node::leaf_replace(as_page_mut(pool.write(leaf)?), i, LeafValue::Inline(value)) {
        Ok(()) => Ok(Replaced::Changed),
        Err(NodeError::NoSpace) => Ok(Replaced::NotInline),
        Err(e) => Err(node_err(leaf, e)),
    }
}

/// Removes cell `i` of `leaf`, freeing its overflow chain.
fn remove_at(pool: &mut BufferPool, leaf: PageId, i: usize) -> Result<()> {
    let old = match node::leaf_value_at(as_page(pool.read(leaf)?), i).map_err(|e| node_err(leaf, e))? {
        LeafValue::Overflow { first_page, len } => Some((PageId(first_page), len as usize)),
        LeafValue::Inline(_) => None,
    };
    if let Some((first, len)) = old {
        free_chain(pool, first, len)?;
    }
    node::leaf_remove(as_page_mut(pool.write(leaf)?), i).map_err(|e| node_err(leaf, e))
}

/// Removes `key`. Returns true if it was present.
pub fn delete(pool: &mut BufferPool, key: &[u8]) -> Result<bool> {
    if key.len() > KEY_SIZE_MAX {
        return Ok(false);
    }
    let (leaf, path) = descend(pool, key)?;
    match node::search(as_page(pool.read(leaf)?), NodeKind::Leaf, key).map_err(|e| node_err(leaf, e))? {
        Ok(i) => {
            remove_at(pool, leaf, i)?;
            let mut m = meta(pool)?;
            m.key_count = m.key_count.saturating_sub(1);
            set_meta(pool, m)?;
            rebalance(pool, leaf, path, key)?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Inserts the cell as cell `i` of `leaf`, splitting up `path` as needed. Returns whether the leaf
/// split.
fn insert_into_leaf(
    pool: &mut BufferPool,
    leaf: PageId,
    path: &[PageId],
    i: usize,
    key: &[u8],
    value: LeafValue,
) -> Result<bool> {
    match node::leaf_insert(as_page_mut(pool.write(leaf)?), i, key, value) {
        Ok(()) => return Ok(false),
        Err(NodeError::NoSpace) => {}
        Err(e) => return Err(node_err(leaf, e)),
    }
    // Split: the upper half moves to a new right sibling.
    let mut split = Split::begin(pool, leaf, PageType::Leaf)?;
    let separator = node::split_leaf(&mut split.left_copy, &mut split.right_copy).map_err(|e| node_err(leaf, e))?;
    node::set_link(&mut split.left_copy, split.right.0);
    let (target, target_id) = split.half_for(key, &separator);
    let at = node::search(target, NodeKind::Leaf, key).map_err(|e| node_err(target_id, e))?.unwrap_or_else(|i| i);
    node::leaf_insert(target, at, key, value).map_err(|e| node_err(target_id, e))?;
    let right = split.finish(pool)?;
    insert_into_parent(pool, path.to_vec(), leaf, separator, right)?;
    Ok(true)
}

fn insert_into_parent(
    pool: &mut BufferPool,
    mut path: Vec<PageId>,
    left: PageId,
    separator: Vec<u8>,
    right: PageId,
) -> Result<()> {
    let Some(parent) = path.pop() else {
        // `left` was the root: a new root above it.
        let root = allocate(pool, PageType::Internal)?;
        let p = as_page_mut(pool.write(root)?);
        node::init(p, left.0);
        node::internal_insert(p, 0, &separator, right.0).map_err(|e| node_err(root, e))?;
        let mut m = meta(pool)?;
        m.root = root;
        return set_meta(pool, m);
    };
    let at = node::search(as_page(pool.read(parent)?), NodeKind::Internal, &separator)
        .map_err(|e| node_err(parent, e))?
        .unwrap_or_else(|i| i);
    match node::internal_insert(as_page_mut(pool.write(parent)?), at, &separator, right.0) {
        Ok(()) => return Ok(()),
        Err(NodeError::NoSpace) => {}
        Err(e) => return Err(node_err(parent, e)),
    }
    let mut split = Split::begin(pool, parent, PageType::Internal)?;
    let up = node::split_internal(&mut split.left_copy, &mut split.right_copy).map_err(|e| node_err(parent, e))?;
    let (target, target_id) = split.half_for(&separator, &up);
    let at =
        node::search(target, NodeKind::Internal, &separator).map_err(|e| node_err(target_id, e))?.unwrap_or_else(|i| i);
    node::internal_insert(target, at, &separator, right.0).map_err(|e| node_err(target_id, e))?;
    let sibling = split.finish(pool)?;
    insert_into_parent(pool, path, parent, up, sibling)
}

/// A full node being split: copies of it and of its new, empty right sibling, edited together
/// off the pool and written back together.
struct Split {
    left: PageId,
    right: PageId,
    left_copy: [u8; PAGE_SIZE],
    right_copy: [u8; PAGE_SIZE],
}

impl Split {
    fn begin(pool: &mut BufferPool, left: PageId, kind: PageType) -> Result<Self> {
        let right = allocate(pool, kind)?;
        let left_copy = *as_page(pool.read(left)?);
        let mut right_copy = *as_page(pool.read(right)?);
        node::init(&mut right_copy, 0);
        Ok(Self { left, right, left_copy, right_copy })
    }

    /// The half that takes `key`: the right one from the separator on.
    fn half_for(&mut self, key: &[u8], separator: &[u8]) -> (&mut [u8; PAGE_SIZE], PageId) {
        if key >= separator {
            (&mut self.right_copy, self.right)
        } else {
            (&mut self.left_copy, self.left)
        }
    }

    /// Writes both halves back; returns the new sibling.
    fn finish(self, pool: &mut BufferPool) -> Result<PageId> {
        pool.write(self.left)?.copy_from_slice(&self.left_copy);
        pool.write(self.right)?.copy_from_slice(&self.right_copy);
        Ok(self.right)
    }
}

/// After a delete from `leaf`, reached by `key` through `path`: while the node is under-full, merges
/// it with a sibling under the same parent and goes on with that parent, which lost a child; then
/// collapses a root left with one child.
fn rebalance(pool: &mut BufferPool, leaf: PageId, mut path: Vec<PageId>, key: &[u8]) -> Result<()> {
    let mut child = leaf;
    while let Some(parent) = path.pop() {
        if !under_full(pool, child)? || !merge_with_sibling(pool, parent, child, key)? {
            return Ok(());
        }
        child = parent;
    }
    collapse_root(pool)
}

fn under_full(pool: &mut BufferPool, id: PageId) -> Result<bool> {
    let used = node::used_bytes(as_page(pool.read(id)?)).map_err(|e| node_err(id, e))?;
    Ok(used < MERGE_BELOW)
}

/// The child at `position` of an internal node: 0 is the leftmost child (the link), `i + 1` the
/// child of cell `i`, right of separator `i`.
fn child_at(p: &node::Page, position: usize) -> std::result::Result<u64, NodeError> {
    match position {
        0 => Ok(node::link(p)),
        i => node::internal_child_at(p, i - 1),
    }
}

/// The position (see `child_at`) of the child `key` descends into.
fn position_for(p: &node::Page, key: &[u8]) -> std::result::Result<usize, NodeError> {
    Ok(match node::search(p, NodeKind::Internal, key)? {
        Ok(i) => i + 1,
        Err(i) => i,
    })
}

/// Merges `child` of `parent` (the one `key` descends into) with its right sibling, or, if it is
/// the last child or the pair does not fit, into its left sibling. Returns whether it merged.
fn merge_with_sibling(pool: &mut BufferPool, parent: PageId, child: PageId, key: &[u8]) -> Result<bool> {
    let p = as_page(pool.read(parent)?);
    let count = node::cell_count(p).map_err(|e| node_err(parent, e))?;
    let at = position_for(p, key).map_err(|e| node_err(parent, e))?;
    if child_at(p, at).map_err(|e| node_err(parent, e))? != child.0 {
        return Err(corrupt(parent, "the key's path does not lead through this parent"));
    }
    // Separator `i` lies between the children at positions `i` and `i + 1`.
    let with_right = (at < count).then_some(at);
    for separator in with_right.into_iter().chain(at.checked_sub(1)) {
        let mut merge = Merge::begin(pool, parent, separator)?;
        if merge.combine(pool)? {
            merge.finish(pool)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Two adjacent children of `parent` being merged, those either side of its separator `at`: a
/// copy of the left node takes the right node's cells (and, between internal nodes, the
/// separator) off the pool; only a merge that fits is written back.
struct Merge {
    parent: PageId,
    at: usize,
    left: PageId,
    right: PageId,
    separator: Vec<u8>,
    internal: bool,
    left_copy: [u8; PAGE_SIZE],
}

impl Merge {
    fn begin(pool: &mut BufferPool, parent: PageId, at: usize) -> Result<Self> {
        let p = as_page(pool.read(parent)?);
        let left = PageId(child_at(p, at).map_err(|e| node_err(parent, e))?);
        let right = PageId(node::internal_child_at(p, at).map_err(|e| node_err(parent, e))?);
        let separator = node::key_at(p, NodeKind::Internal, at).map_err(|e| node_err(parent, e))?.to_vec();
        if left == right || [left, right].iter().any(|&c| c == META_PAGE || c == parent) {
            return Err(corrupt(parent, "a child pointer repeats, or points to the meta page or the parent"));
        }
        let kind = page::page_type(pool.read(right)?);
        let left_copy = *as_page(pool.read(left)?);
        if page::page_type(&left_copy) != kind || !matches!(kind, Some(PageType::Leaf | PageType::Internal)) {
            return Err(corrupt(parent, "adjacent children are not tree nodes of one kind"));
        }
        let internal = kind == Some(PageType::Internal);
        Ok(Self { parent, at, left, right, separator, internal, left_copy })
    }

    /// Moves the right node's cells into the copy of the left one; false if they do not fit.
    fn combine(&mut self, pool: &mut BufferPool) -> Result<bool> {
        let right = as_page(pool.read(self.right)?);
        let merged = if self.internal {
            node::merge_internal(&mut self.left_copy, &self.separator, right)
        } else {
            node::merge_leaves(&mut self.left_copy, right)
        };
        match merged {
            Ok(()) => Ok(true),
            Err(NodeError::NoSpace) => Ok(false),
            Err(e) => Err(corrupt(self.left, &format!("merging {} into it: {e}", self.right))),
        }
    }

    /// Writes the merged node back, removes the separator and the right child from the parent,
    /// and frees the right page.
    fn finish(self, pool: &mut BufferPool) -> Result<()> {
        pool.write(self.left)?.copy_from_slice(&self.left_copy);
        let parent = as_page_mut(pool.write(self.parent)?);
        node::internal_remove(parent, self.at).map_err(|e| node_err(self.parent, e))?;
        free_page(pool, self.right)
    }
}

/// Replaces an internal root with no separators left by its only child, and frees it: the tree
/// shrinks by one level.
fn collapse_root(pool: &mut BufferPool) -> Result<()> {
    for pass in 0..DEPTH_MAX {
        let root = meta(pool)?.root;
        let p = as_page(pool.read(root)?);
        if page::page_type(p) != Some(PageType::Internal) || node::cell_count(p).map_err(|e| node_err(root, e))? > 0 {
            return Ok(());
        }
        let child = PageId(node::link(p));
        if child == META_PAGE || child == root {
            return Err(corrupt(root, "the root's only child is the meta page or the root itself"));
        }
        // The child that becomes the root was changed by the merge that emptied the root, in this
        // transaction: lookups count it instead of the meta page (see `root`). A second pass would
        // make an unchanged page the root; a merge leaves its surviving node at least one cell.
        debug_assert_eq!(pass, 0, "a root collapsed twice in one transaction");
        free_page(pool, root)?;
        let mut m = meta(pool)?;
        m.root = child;
        set_meta(pool, m)?;
    }
    Err(corrupt(META_PAGE, "tree deeper than possible (a cycle?)"))
}

/// Puts a tree page on the free list: marks it free and links it in front. Its old cells stay
/// behind, never read: `allocate` creates a reused page anew. Logs a few bytes, not the page.
fn free_page(pool: &mut BufferPool, id: PageId) -> Result<()> {
    let mut m = meta(pool)?;
    let p = pool.write(id)?;
    page::set_page_type(p, PageType::Free);
    put_u64(p, FREE_NEXT, m.free_head.0);
    m.free_head = id;
    set_meta(pool, m)
}

/// A page of keys and the key to continue after (`None` at the end).
pub type KeyPage = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Up to `count` keys after `after` (from the first key when `None`), in order, with the key to
/// continue from (`None` at the end).
pub fn keys_after(pool: &mut BufferPool, after: Option<&[u8]>, count: usize) -> Result<KeyPage> {
    let start: &[u8] = after.unwrap_or(&[]);
    let (mut leaf, _) = descend(pool, start)?;
    let mut out = Vec::new();
    let mut visited = 0usize;
    loop {
        let p = as_page(pool.read(leaf)?);
        let n = node::cell_count(p).map_err(|e| node_err(leaf, e))?;
        for i in 0..n {
            let k = node::key_at(p, NodeKind::Leaf, i).map_err(|e| node_err(leaf, e))?;
            if after.is_some_and(|a| k <= a) {
                continue;
            }
            if out.len() == count {
                let last = out.last().cloned();
                return Ok((out, last));
            }
            out.push(k.to_vec());
        }
        let next = node::link(p);
        if next == 0 {
            return Ok((out, None));
        }
        visited += 1;
        if visited as u64 > meta(pool)?.next_page {
            return Err(corrupt(leaf, "leaf sibling chain loops"));
        }
        leaf = PageId(next);
    }
}

/// Removes every key (FLUSHDB): the tree starts over with a fresh root at page 1 and an empty
/// free list; every other page becomes unreachable and is reused as the file fills again (a
/// reused page is always created anew, so its old content never matters). Touches two pages,
/// whatever the size of the database.
pub fn clear(pool: &mut BufferPool) -> Result<()> {
    let root = PageId(1);
    let leaf = pool.create(root, PageType::Leaf)?;
    node::init(as_page_mut(leaf), 0);
    set_meta(pool, Meta { root, next_page: 2, free_head: PageId(0), key_count: 0 })
}

/// The tree's shape, from a walk of every node and of the free list (see [`shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeShape {
    /// Levels of nodes: 1 for a lone root leaf.
    pub height: usize,
    pub leaves: u64,
    pub internals: u64,
    /// Keys in the leaves.
    pub keys: u64,
    /// Pages of the overflow chains the leaves point to (from the values' lengths).
    pub overflow_pages: u64,
    /// Pages on the free list: freed tree pages and freed overflow chains.
    pub free_pages: u64,
}

impl TreeShape {
    /// The pages accounted for: the meta page, the nodes, the live overflow pages and the free
    /// list. When no page leaked, the meta page's `next_page`.
    pub fn pages(&self) -> u64 {
        1 + self.leaves + self.internals + self.overflow_pages + self.free_pages
    }
}

/// A node to visit and the key range its parent gives it: `low <= key < high`.
struct Bounded {
    id: PageId,
    low: Option<Vec<u8>>,
    high: Option<Vec<u8>>,
}

/// Walks every tree node, level by level, and the free list, checking as it goes: every node is
/// well formed, keys lie within their parent's separators, all leaves are at one depth, and the
/// leaves' sibling links follow them in key order (`TreeCorrupt` otherwise). Reads every node:
/// for tests and tools, not for serving requests.
pub fn shape(pool: &mut BufferPool) -> Result<TreeShape> {
    let m = meta(pool)?;
    let mut shape = TreeShape::default();
    let mut level = vec![Bounded { id: m.root, low: None, high: None }];
    loop {
        shape.height += 1;
        let nodes = shape.leaves + shape.internals + level.len() as u64;
        if shape.height > DEPTH_MAX || nodes > m.next_page {
            return Err(corrupt(m.root, "more tree nodes than pages (a cycle?)"));
        }
        match page::page_type(pool.read(level[0].id)?) {
            Some(PageType::Internal) => {
                shape.internals += level.len() as u64;
                level = children(pool, &level)?;
            }
            Some(PageType::Leaf) => {
                walk_leaves(pool, &level, &mut shape)?;
                break;
            }
            _ => return Err(corrupt(level[0].id, "tree page is neither leaf nor internal")),
        }
    }
    shape.free_pages = free_list_len(pool, &m)?;
    Ok(shape)
}

/// Reads node `b` of `kind` and checks it: well formed, its keys within its bounds. Returns its
/// keys.
fn checked_keys(pool: &mut BufferPool, b: &Bounded, kind: PageType) -> Result<Vec<Vec<u8>>> {
    let p = as_page(pool.read(b.id)?);
    if page::page_type(p) != Some(kind) {
        return Err(corrupt(b.id, "tree nodes of one level differ in kind"));
    }
    let node_kind = if kind == PageType::Leaf { NodeKind::Leaf } else { NodeKind::Internal };
    node::validate(p, node_kind).map_err(|e| node_err(b.id, e))?;
    let n = node::cell_count(p).map_err(|e| node_err(b.id, e))?;
    let keys =
        (0..n).map(|i| node::key_at(p, node_kind, i).map(<[u8]>::to_vec)).collect::<std::result::Result<Vec<_>, _>>();
    let keys = keys.map_err(|e| node_err(b.id, e))?;
    let below = keys.first().zip(b.low.as_ref()).is_some_and(|(k, low)| k < low);
    let above = keys.last().zip(b.high.as_ref()).is_some_and(|(k, high)| k >= high);
    if below || above {
        return Err(corrupt(b.id, "a key lies outside its parent's separators"));
    }
    Ok(keys)
}

/// The children of one level of internal nodes, in key order, with their bounds.
fn children(pool: &mut BufferPool, level: &[Bounded]) -> Result<Vec<Bounded>> {
    let mut out = Vec::new();
    for b in level {
        let keys = checked_keys(pool, b, PageType::Internal)?;
        let p = as_page(pool.read(b.id)?);
        let mut low = b.low.clone();
        for position in 0..=keys.len() {
            let id = PageId(child_at(p, position).map_err(|e| node_err(b.id, e))?);
            let high = keys.get(position).cloned().or_else(|| b.high.clone());
            out.push(Bounded { id, low, high: high.clone() });
            low = high;
        }
    }
    Ok(out)
}

/// Checks the leaves of the bottom level, their sibling links, and counts their keys and
/// overflow pages.
fn walk_leaves(pool: &mut BufferPool, level: &[Bounded], shape: &mut TreeShape) -> Result<()> {
    for (j, b) in level.iter().enumerate() {
        let keys = checked_keys(pool, b, PageType::Leaf)?;
        let p = as_page(pool.read(b.id)?);
        let next = level.get(j + 1).map_or(0, |n| n.id.0);
        if node::link(p) != next {
            return Err(corrupt(b.id, "leaf sibling link does not lead to the next leaf"));
        }
        shape.leaves += 1;
        shape.keys += keys.len() as u64;
        for i in 0..keys.len() {
            if let LeafValue::Overflow { len, .. } = node::leaf_value_at(p, i).map_err(|e| node_err(b.id, e))? {
                shape.overflow_pages += (len as usize).div_ceil(OVERFLOW_CAPACITY) as u64;
            }
        }
    }
    Ok(())
}

fn free_list_len(pool: &mut BufferPool, m: &Meta) -> Result<u64> {
    let (mut id, mut len) = (m.free_head, 0u64);
    while id.0 != 0 {
        len += 1;
        if len > m.next_page {
            return Err(corrupt(m.free_head, "free list loops"));
        }
        let p = pool.read(id)?;
        if !matches!(page::page_type(p), Some(PageType::Free | PageType::Overflow)) {
            return Err(corrupt(id, "free list entry is not a free page"));
        }
        id = PageId(u64_at(p, FREE_NEXT));
    }
    Ok(len)
}
