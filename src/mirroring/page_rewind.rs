//! Page rewind: a former principal that rejoins as mirror fetches, from the new principal, every
//! page it wrote with changes past the failover LSN.
//!
//! A principal that ran exposed (SAFETY OFF, or FULL without its mirror) may have written pages
//! holding transactions its mirror never hardened. After forced service those transactions are
//! not in the new principal's history, and redo cannot take them out of a page (it has no undo).
//! So at rejoin, after the log is cut back to the failover LSN:
//! 1. `pages_past` lists the pages on disk whose page LSN is past the cut, or that fail
//!    verification (a torn write of such a page); `RewindList::store` persists the list before
//!    the log is cut, so a crash mid-rewind resumes it.
//! 2. While the list is not empty the mirror appends nothing the principal ships (its log stays
//!    at the cut, so restart redo never touches a listed page with a newer record) and sends
//!    PAGE_REQUEST frames (`encode_page_request`).
//! 3. The principal answers each page with a PAGE_IMAGE frame (`encode_page_image`): its current
//!    committed and hardened image, sealed, or "absent" if it never wrote that page.
//! 4. The mirror verifies and writes each image (an absent page is zeroed: never written), then
//!    fdatasyncs the data file, removes the list, and closes the connection: the principal
//!    reconnects and ships from the cut. A fetched page may be newer than the mirror's log; redo
//!    skips the records it already holds (idempotent by page LSN).
//!
//! ```text
//! PAGE_REQUEST body   0 4 count n (1..=PAGE_REQUEST_IDS_MAX)   4 8n page ids
//! PAGE_IMAGE body     0 8 page id   8 1 present (0 or 1)   9 PAGE_SIZE image (if present)
//! rewind.pages file   0 8 magic "MLREWND1"   8 8 failover LSN   16 4 count n   20 8n ids
//!                     then 4 CRC32C of everything before
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::sync_dir;
use crate::store::data_file::DataFile;
use crate::store::page::{self, PageError, PageId, PAGE_SIZE};
use crate::wal::{DbId, Lsn};

/// Page ids one PAGE_REQUEST frame carries.
pub const PAGE_REQUEST_IDS_MAX: usize = 8192;
const REWIND_MAGIC: [u8; 8] = *b"MLREWND1";
const REWIND_FILE: &str = "rewind.pages";

/// The pages of the data file at `path` that a rejoin must fetch: those that verify with a page
/// LSN past `cut`, and those that do not verify at all (a torn or corrupt page may hold anything).
/// Pages never written are not listed.
pub fn pages_past(path: &Path, db_id: DbId, cut: Lsn) -> Result<Vec<PageId>> {
    let data = DataFile::open(path, db_id)?;
    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
    let mut out = Vec::new();
    for id in (0..data.capacity_pages()).map(PageId) {
        match data.read_page(id, &mut buf)? {
            Ok(_) if page::page_lsn(&buf[..PAGE_SIZE]) > cut => out.push(id),
            Ok(_) | Err(PageError::Unwritten(_)) => {}
            Err(_) => out.push(id),
        }
    }
    Ok(out)
}

pub fn encode_page_request(ids: &[PageId]) -> Vec<u8> {
    assert!(!ids.is_empty() && ids.len() <= PAGE_REQUEST_IDS_MAX);
    let mut out = Vec::with_capacity(4 + 8 * ids.len());
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.0.to_le_bytes());
    }
    out
}

pub fn decode_page_request(body: &[u8]) -> std::result::Result<Vec<PageId>, String> {
    let count = body.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let Some(count) = count.filter(|&n| (1..=PAGE_REQUEST_IDS_MAX).contains(&n)) else {
        return Err("a PAGE_REQUEST without a valid page count".into());
    };
    if body.len() != 4 + 8 * count {
        return Err(format!("a PAGE_REQUEST of {} bytes for {count} pages", body.len()));
    }
    Ok(body[4..].chunks_exact(8).map(|c| PageId(u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect())
}

/// A PAGE_IMAGE body: `image` is the page, sealed, or `None` if the principal never wrote it.
pub fn encode_page_image(id: PageId, image: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + PAGE_SIZE);
    out.extend_from_slice(&id.0.to_le_bytes());
    match image {
        Some(image) => {
            out.push(1);
            out.extend_from_slice(&image[..PAGE_SIZE]);
        }
        None => out.push(0),
    }
    out
}

/// A PAGE_IMAGE body's page id and image; the image is verified (checksum, database, page id).
pub fn decode_page_image(body: &[u8], db_id: DbId) -> std::result::Result<(PageId, Option<&[u8]>), String> {
    let Some(id) = body.get(..8).map(|b| PageId(u64::from_le_bytes(b.try_into().expect("8 bytes")))) else {
        return Err("a PAGE_IMAGE shorter than its page id".into());
    };
    match (body.get(8), body.len()) {
        (Some(0), 9) => Ok((id, None)),
        (Some(1), len) if len == 9 + PAGE_SIZE => {
            let image = &body[9..];
            page::verify(image, db_id, id).map_err(|e| format!("the image of {id} does not verify: {e}"))?;
            Ok((id, Some(image)))
        }
        _ => Err(format!("a malformed PAGE_IMAGE of {} bytes", body.len())),
    }
}

/// The persisted list of pages a rejoin still has to fetch.
pub struct RewindList {
    path: PathBuf,
    pub cut: Lsn,
    pub pages: BTreeSet<PageId>,
}

impl RewindList {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(REWIND_FILE)
    }

    /// Writes the list durably (a temporary file, synced, renamed over, directory synced).
    pub fn store(dir: &Path, cut: Lsn, pages: &[PageId]) -> Result<RewindList> {
        let path = Self::path_in(dir);
        let mut bytes = Vec::with_capacity(24 + 8 * pages.len());
        bytes.extend_from_slice(&REWIND_MAGIC);
        bytes.extend_from_slice(&cut.0.to_le_bytes());
        bytes.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for id in pages {
            bytes.extend_from_slice(&id.0.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).context(|| format!("create {}", tmp.display()))?;
            f.write_all(&bytes).context(|| format!("write {}", tmp.display()))?;
            f.sync_all().map_err(|e| Error::LogFailed(format!("fsync of {} failed: {e}", tmp.display())))?;
        }
        std::fs::rename(&tmp, &path).context(|| format!("rename {}", tmp.display()))?;
        sync_dir(dir)?;
        Ok(RewindList { path, cut, pages: pages.iter().copied().collect() })
    }

    /// The list in `dir`, if a rewind is pending there. A damaged file is an error (the pages it
    /// named are unknown: the database cannot be trusted as a mirror).
    pub fn load(dir: &Path) -> Result<Option<RewindList>> {
        let path = Self::path_in(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let bad = |what: &str| Error::Mirroring(format!("{}: {what}", path.display()));
        if bytes.len() < 24 || bytes[..8] != REWIND_MAGIC {
            return Err(bad("not a mirrorlog page rewind list"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
        let cut = Lsn(u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")));
        let count = u32::from_le_bytes(body[16..20].try_into().expect("4 bytes")) as usize;
        if body.len() != 20 + 8 * count {
            return Err(bad("length does not match its page count"));
        }
        let pages = body[20..].chunks_exact(8).map(|c| PageId(u64::from_le_bytes(c.try_into().expect("8 bytes"))));
        Ok(Some(RewindList { path, cut, pages: pages.collect() }))
    }

    /// Every page is fetched, written and synced: the list goes.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_file(&self.path).context(|| format!("remove {}", self.path.display()))?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_images_round_trip_and_garbage_is_refused() {
        let ids = vec![PageId(3), PageId(70_000)];
        assert_eq!(decode_page_request(&encode_page_request(&ids)).unwrap(), ids);
        assert!(decode_page_request(&[]).is_err());
        assert!(decode_page_request(&0u32.to_le_bytes()).is_err());
        let mut truncated = encode_page_request(&ids);
        truncated.pop();
        assert!(decode_page_request(&truncated).is_err());

        let db = DbId(4);
        let mut image = vec![0u8; PAGE_SIZE];
        page::init(&mut image, page::PageType::Leaf, PageId(3));
        page::seal(&mut image, db);
        let body = encode_page_image(PageId(3), Some(&image));
        let (id, got) = decode_page_image(&body, db).unwrap();
        assert_eq!((id, got), (PageId(3), Some(&image[..])));
        assert!(decode_page_image(&body, DbId(5)).is_err(), "another database's page");
        let mut flipped = body.clone();
        flipped[100] ^= 1;
        assert!(decode_page_image(&flipped, db).is_err(), "a flipped bit");
        assert!(decode_page_image(&encode_page_image(PageId(9), Some(&image)), db).is_err(), "a misplaced page");
        assert_eq!(decode_page_image(&encode_page_image(PageId(9), None), db).unwrap(), (PageId(9), None));
        assert!(decode_page_image(&body[..body.len() - 1], db).is_err());
    }

    #[test]
    fn the_list_persists_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir_in(".").unwrap();
        assert!(RewindList::load(dir.path()).unwrap().is_none());
        RewindList::store(dir.path(), Lsn(4096), &[PageId(1), PageId(9)]).unwrap();
        let list = RewindList::load(dir.path()).unwrap().unwrap();
        assert_eq!(list.cut, Lsn(4096));
        assert_eq!(list.pages.iter().copied().collect::<Vec<_>>(), vec![PageId(1), PageId(9)]);
        let path = RewindList::path_in(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[21] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(RewindList::load(dir.path()).is_err());
        RewindList::store(dir.path(), Lsn(1), &[]).unwrap().remove().unwrap();
        assert!(RewindList::load(dir.path()).unwrap().is_none());
    }
}
