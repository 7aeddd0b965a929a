//! The B+tree: byte-string keys to values, on the buffer pool's pages.
//!
//! Page 0 is the meta page (root, page count, free list, key count). Leaves hold keys and values
//! (inline, or the first page of an overflow chain for large values) and link to their right
//! sibling; internal nodes route by separator keys (`node`). Inserts split full nodes bottom-up;
//! a split root grows the tree by one level. Pages freed by deletes and overwrites (overflow
//! chains) go to a free list and are reused before the file grows.
//!
//! Every change happens inside the buffer pool's transaction, so it is logged and undone on abort.

use crate::constants::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::error::{Error, Result};
use crate::store::buffer_pool::BufferPool;
use crate::store::node::{self, LeafValue, NodeError, NodeKind, PAGE_SIZE};
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

pub fn meta(pool: &mut BufferPool) -> Result<Meta> {
    let p = pool.read(META_PAGE)?;
    if page::page_type(p) != Some(PageType::Meta) || p[META_MAGIC_AT..META_MAGIC_AT + 4] != META_MAGIC {
        return Err(corrupt(META_PAGE, "not a meta page"));
    }
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

/// The leaf that holds (or would hold) `key`, and the internal nodes above it with the child
/// index taken in each.
fn descend(pool: &mut BufferPool, key: &[u8]) -> Result<(PageId, Vec<PageId>)> {
    let mut id = meta(pool)?.root;
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

/// The leaf page a key lives on (readers check its flush barrier).
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
        remove_at(pool, leaf, i)?;
    }
    let stored = if node::fits_inline(key.len(), value.len()) { None } else { Some(write_chain(pool, value)?) };
    let leaf_value = match stored {
        None => LeafValue::Inline(value),
        Some(first) => LeafValue::Overflow { first_page: first.0, len: value.len() as u32 },
    };
    let i = found.unwrap_or_else(|i| i);
    insert_into_leaf(pool, leaf, path, i, key, leaf_value)?;
    if found.is_err() {
        let mut m = meta(pool)?;
        m.key_count += 1;
        set_meta(pool, m)?;
    }
    Ok(found.is_ok())
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
    let (leaf, _) = descend(pool, key)?;
    match node::search(as_page(pool.read(leaf)?), NodeKind::Leaf, key).map_err(|e| node_err(leaf, e))? {
        Ok(i) => {
            remove_at(pool, leaf, i)?;
            let mut m = meta(pool)?;
            m.key_count = m.key_count.saturating_sub(1);
            set_meta(pool, m)?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

fn insert_into_leaf(
    pool: &mut BufferPool,
    leaf: PageId,
    path: Vec<PageId>,
    i: usize,
    key: &[u8],
    value: LeafValue,
) -> Result<()> {
    match node::leaf_insert(as_page_mut(pool.write(leaf)?), i, key, value) {
        Ok(()) => return Ok(()),
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
    insert_into_parent(pool, path, leaf, separator, right)
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
