//! `mirrorlog inspect pages DIR`: verifies the checksum of every page of every database under
//! DIR and prints a digest of each database's contents (a CRC32C over its keys and values in
//! order), so two copies can be compared.
//!
//! The contents are the database as recovery would find it: the log from the last checkpoint is
//! redone in memory over the data file's pages (checkpoints are incremental, so the data file
//! alone is a consistent tree only after a clean stop). Nothing is written: the data file is
//! opened read-only.

use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::io::buffer::AlignedBuf;
use crate::store::btree;
use crate::store::buffer_pool::BufferPool;
use crate::store::data_file::DataFile;
use crate::store::page::{PageError, PageId, PAGE_SIZE};
use crate::wal::DbId;

#[derive(Debug, Clone, Default)]
pub struct PagesInspection {
    pub databases: usize,
    pub pages_valid: u64,
    pub pages_unwritten: u64,
    pub pages_bad: Vec<String>,
    pub keys: u64,
}

/// Inspects `dir`: either one database directory (holding `data.pages`) or a server data
/// directory holding `db0`, `db1`, …
pub fn inspect(dir: &Path, out: &mut impl Write) -> Result<PagesInspection> {
    let mut dbs: Vec<(u64, std::path::PathBuf)> = Vec::new();
    if dir.join("data.pages").exists() {
        dbs.push((1, dir.to_path_buf()));
    } else {
        for i in 0..1024u64 {
            let d = dir.join(format!("db{i}"));
            if d.join("data.pages").exists() {
                dbs.push((i + 1, d));
            }
        }
    }
    let mut total = PagesInspection { databases: dbs.len(), ..Default::default() };
    for (db_id, db_dir) in dbs {
        let data = DataFile::open_read_only(&db_dir.join("data.pages"), DbId(db_id))?;
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        let (mut valid, mut unwritten, mut bad) = (0u64, 0u64, Vec::new());
        for id in 0..data.capacity_pages() {
            match data.read_page(PageId(id), &mut buf)? {
                Ok(_) => valid += 1,
                Err(PageError::Unwritten(_)) => unwritten += 1,
                Err(e) => bad.push(format!("{}: {e}", db_dir.display())),
            }
        }
        // The log redone in memory (as recovery would), installed over the data file's pages; the
        // pool is read-only: it evicts only clean pages and writes nothing.
        let redone = crate::store::database::recovered_pages(&db_dir, DbId(db_id), &data);
        let mut pool = BufferPool::new(data, 1024);
        let redone = redone.and_then(|(report, pages)| {
            pool =
                BufferPool::new(DataFile::open_read_only(&db_dir.join("data.pages"), DbId(db_id))?, pages.len() + 4096);
            pool.set_read_only();
            for page in &pages {
                pool.install_recovered(&page[..PAGE_SIZE])?;
            }
            Ok((report, pages.len()))
        });
        let (keys, digest) = match redone.and_then(|(report, pages)| {
            writeln!(
                out,
                "{}: redo from the log at {} (as recovery would, in memory): {} transaction(s), {pages} page(s), {} restored from full images",
                db_dir.display(),
                report.redo_from,
                report.transactions,
                report.pages_restored_from_images
            )
            .ok();
            btree::exists(&mut pool).and_then(|exists| if exists { digest(&mut pool) } else { Ok((0, 0)) })
        }) {
                Ok(found) => found,
                Err(e) => {
                    bad.push(format!("{}: the tree cannot be read: {e}", db_dir.display()));
                    (0, 0)
                }
            };
        writeln!(
            out,
            "{}: {valid} pages valid, {unwritten} unwritten, {} bad; {keys} keys; digest {digest:08x}",
            db_dir.display(),
            bad.len()
        )
        .ok();
        for b in &bad {
            writeln!(out, "  BAD {b}").ok();
        }
        total.pages_valid += valid;
        total.pages_unwritten += unwritten;
        total.pages_bad.extend(bad);
        total.keys += keys;
    }
    writeln!(out, "{} database(s): {} pages valid, {} bad", total.databases, total.pages_valid, total.pages_bad.len())
        .ok();
    Ok(total)
}

fn digest(pool: &mut BufferPool) -> Result<(u64, u32)> {
    let mut crc = 0u32;
    let mut keys = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (page, next) = btree::keys_after(pool, after.as_deref(), 1024)?;
        for k in page {
            let v = btree::get(pool, &k)?.unwrap_or_default();
            crc = crc32c::crc32c_append(crc, &(k.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, &k);
            crc = crc32c::crc32c_append(crc, &(v.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, &v);
            keys += 1;
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok((keys, crc)),
        }
    }
}
