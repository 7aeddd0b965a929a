//! The data file: one per database, page `n` at byte `n × PAGE_SIZE`, O_DIRECT.
//!
//! The file grows in zero-filled extents of `DATA_FILE_EXTENT_PAGES` pages, so page writes never
//! allocate blocks or extend the file (writing into unwritten space costs about twice as much on
//! ext4; ../shared/CRATES.md).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::constants::DATA_FILE_EXTENT_PAGES;
use crate::error::{Error, IoContext, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{open_direct, sync_dir};
use crate::store::page::{self, PageError, PageId, PageType, PAGE_SIZE};
use crate::wal::DbId;

pub struct DataFile {
    file: File,
    path: PathBuf,
    db_id: DbId,
    /// Pages the file has room for (a multiple of the extent).
    capacity_pages: u64,
}

impl DataFile {
    /// Opens the data file at `path`, creating it (one zero-filled extent) if missing.
    pub fn open(path: &Path, db_id: DbId) -> Result<Self> {
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .context(|| format!("create {}", tmp.display()))?;
                f.sync_all().context(|| format!("fsync {}", tmp.display()))?;
            }
            std::fs::rename(&tmp, path).context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        let file = open_direct(path)?;
        let len = file.metadata().context(|| format!("stat {}", path.display()))?.len();
        if len % PAGE_SIZE as u64 != 0 {
            return Err(Error::Config(format!("{}: length {len} is not a whole number of pages", path.display())));
        }
        let mut data = Self { file, path: path.to_path_buf(), db_id, capacity_pages: len / PAGE_SIZE as u64 };
        if data.capacity_pages == 0 {
            data.ensure_capacity(1)?;
        }
        Ok(data)
    }

    /// Opens an existing data file for reading only (inspection): any write through it fails
    /// with an error instead of changing the file.
    pub fn open_read_only(path: &Path, db_id: DbId) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .context(|| format!("open {}", path.display()))?;
        let len = file.metadata().context(|| format!("stat {}", path.display()))?.len();
        if len % PAGE_SIZE as u64 != 0 {
            return Err(Error::Config(format!("{}: length {len} is not a whole number of pages", path.display())));
        }
        Ok(Self { file, path: path.to_path_buf(), db_id, capacity_pages: len / PAGE_SIZE as u64 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity_pages(&self) -> u64 {
        self.capacity_pages
    }

    /// Grows the file (zero-filled, synced) so that pages `0..pages` exist.
    pub fn ensure_capacity(&mut self, pages: u64) -> Result<()> {
        if pages <= self.capacity_pages {
            return Ok(());
        }
        let extent = DATA_FILE_EXTENT_PAGES as u64;
        let target = pages.div_ceil(extent) * extent;
        let zeros = AlignedBuf::zeroed(DATA_FILE_EXTENT_PAGES * PAGE_SIZE);
        let mut at = self.capacity_pages;
        while at < target {
            let n = (target - at).min(extent) as usize;
            self.file
                .write_all_at(&zeros[..n * PAGE_SIZE], at * PAGE_SIZE as u64)
                .context(|| format!("extend {}", self.path.display()))?;
            at += n as u64;
        }
        self.file.sync_all().context(|| format!("fsync {}", self.path.display()))?;
        self.capacity_pages = target;
        Ok(())
    }

    /// Reads page `id` into `buf` (one page, aligned) and verifies it.
    pub fn read_page(&self, id: PageId, buf: &mut AlignedBuf) -> Result<std::result::Result<PageType, PageError>> {
        assert!(buf.capacity() >= PAGE_SIZE);
        buf.set_len(PAGE_SIZE);
        if id.0 >= self.capacity_pages {
            buf.fill(0);
            return Ok(Err(PageError::Unwritten(id)));
        }
        self.file
            .read_exact_at(&mut buf[..PAGE_SIZE], id.0 * PAGE_SIZE as u64)
            .context(|| format!("read {id} of {}", self.path.display()))?;
        Ok(page::verify(&buf[..PAGE_SIZE], self.db_id, id))
    }

    /// Verifies page `id` read into `buf` by other means (a ring read).
    pub fn verify(&self, id: PageId, buf: &[u8]) -> std::result::Result<PageType, PageError> {
        page::verify(&buf[..PAGE_SIZE], self.db_id, id)
    }

    /// Makes page `id` a page never written (zeroes), if the file reaches it. Not durable until
    /// `sync`.
    pub fn write_unwritten(&mut self, id: PageId) -> Result<()> {
        if id.0 >= self.capacity_pages {
            return Ok(());
        }
        let zeroes = AlignedBuf::zeroed(PAGE_SIZE);
        self.file
            .write_all_at(&zeroes[..PAGE_SIZE], id.0 * PAGE_SIZE as u64)
            .context(|| format!("write {id} of {}", self.path.display()))
    }

    /// Seals (checksums) and writes one page at its place. Not durable until `sync`.
    pub fn write_page(&mut self, buf: &mut AlignedBuf) -> Result<()> {
        let id = page::page_id(&buf[..PAGE_SIZE]);
        self.ensure_capacity(id.0 + 1)?;
        page::seal(&mut buf[..PAGE_SIZE], self.db_id);
        self.file
            .write_all_at(&buf[..PAGE_SIZE], id.0 * PAGE_SIZE as u64)
            .context(|| format!("write {id} of {}", self.path.display()))
    }

    /// Seals `buf` (one page) for writing at its place and returns the file offset, growing the
    /// file if needed; the caller writes it (through the ring).
    pub fn prepare_write(&mut self, buf: &mut AlignedBuf) -> Result<u64> {
        let id = page::page_id(&buf[..PAGE_SIZE]);
        self.ensure_capacity(id.0 + 1)?;
        page::seal(&mut buf[..PAGE_SIZE], self.db_id);
        Ok(id.0 * PAGE_SIZE as u64)
    }

    /// fdatasync(2). A failure is fatal for the database (the caller stops it).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::LogFailed(format!("fdatasync of {} failed: {e}", self.path.display())))
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("data.pages");
        let mut data = DataFile::open(&path, DbId(5)).unwrap();
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        page::init(&mut buf, PageType::Leaf, PageId(300));
        buf[200] = 42;
        data.write_page(&mut buf).unwrap();
        data.sync().unwrap();
        assert!(data.capacity_pages() > 300);
        let mut back = AlignedBuf::zeroed(PAGE_SIZE);
        assert_eq!(data.read_page(PageId(300), &mut back).unwrap(), Ok(PageType::Leaf));
        assert_eq!(back[200], 42);
        assert_eq!(data.read_page(PageId(299), &mut back).unwrap(), Err(PageError::Unwritten(PageId(299))));
        assert_eq!(data.read_page(PageId(1 << 40), &mut back).unwrap(), Err(PageError::Unwritten(PageId(1 << 40))));
        drop(data);
        // Flip a byte on disk: the read reports it, never returns the page as good.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        f.write_all_at(&[43], 300 * PAGE_SIZE as u64 + 200).unwrap();
        let data = DataFile::open(&path, DbId(5)).unwrap();
        assert_eq!(data.read_page(PageId(300), &mut back).unwrap(), Err(PageError::ChecksumMismatch(PageId(300))));
    }
}
