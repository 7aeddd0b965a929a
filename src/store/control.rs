//! The control file: where redo starts after a crash (the last checkpoint's redo LSN).
//!
//! ```text
//! 0 8 magic "MLCTRL01"   16 8 checkpoint redo LSN
//! 8 8 database id        24 4 CRC32C of bytes 0..24
//! ```
//! Replaced atomically: written to a temporary file, synced, renamed over, directory synced.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::io::file::sync_dir;
use crate::wal::{DbId, Lsn};

const MAGIC: [u8; 8] = *b"MLCTRL01";

pub struct ControlFile {
    path: PathBuf,
    db_id: DbId,
}

impl ControlFile {
    pub fn new(dir: &Path, db_id: DbId) -> Self {
        Self { path: dir.join("control"), db_id }
    }

    /// The checkpoint redo LSN, or `Lsn::ZERO` for a database without a checkpoint yet.
    pub fn read(&self) -> Result<Lsn> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lsn::ZERO),
            Err(e) => return Err(Error::io(format!("read {}", self.path.display()), e)),
        };
        let bad = |what: &str| Error::Config(format!("{}: {what}", self.path.display()));
        if bytes.len() != 28 || bytes[0..8] != MAGIC {
            return Err(bad("not a mirrorlog control file"));
        }
        if crc32c::crc32c(&bytes[0..24]).to_le_bytes() != bytes[24..28] {
            return Err(bad("checksum mismatch"));
        }
        let db = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if db != self.db_id.0 {
            return Err(bad(&format!("belongs to database {db}, expected {}", self.db_id)));
        }
        Ok(Lsn(u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"))))
    }

    pub fn write(&self, checkpoint: Lsn) -> Result<()> {
        let mut bytes = Vec::with_capacity(28);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&self.db_id.0.to_le_bytes());
        bytes.extend_from_slice(&checkpoint.0.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).context(|| format!("create {}", tmp.display()))?;
            f.write_all(&bytes).context(|| format!("write {}", tmp.display()))?;
            f.sync_all().map_err(|e| Error::LogFailed(format!("fsync of {} failed: {e}", tmp.display())))?;
        }
        std::fs::rename(&tmp, &self.path).context(|| format!("rename {}", tmp.display()))?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}
