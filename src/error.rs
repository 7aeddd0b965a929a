//! One flat error type for the library (binaries wrap it in `anyhow`).

use std::io;
use std::path::PathBuf;

use crate::wal::{DbId, Lsn};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("io_uring is not available: {detail} (likely cause: {likely_cause})")]
    IoUringUnavailable { detail: String, likely_cause: &'static str },
    #[error("{path}: direct I/O (O_DIRECT) is not supported here: {detail} (likely cause: a file system without O_DIRECT such as tmpfs or overlayfs; put the data directory on ext4 or xfs)")]
    DirectIoUnsupported { path: PathBuf, detail: String },
    #[error("kernel {found} is too old: mirrorlog needs Linux {needed} or newer for {feature}")]
    KernelTooOld { found: String, needed: &'static str, feature: &'static str },
    #[error("{path}: not a mirrorlog log segment (bad magic)")]
    SegmentBadMagic { path: PathBuf },
    #[error("{path}: segment header checksum mismatch (header is corrupt)")]
    SegmentHeaderCorrupt { path: PathBuf },
    #[error("{path}: segment format version {found} is not supported (this build reads version {supported})")]
    SegmentVersionUnsupported { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: segment belongs to database {found}, expected database {expected}")]
    SegmentWrongDatabase { path: PathBuf, found: DbId, expected: DbId },
    #[error("{path}: segment header is inconsistent: {detail}")]
    SegmentHeaderInvalid { path: PathBuf, detail: String },
    #[error("log has a gap: segment {path} starts at {found}, expected {expected}")]
    SegmentGap { path: PathBuf, found: Lsn, expected: Lsn },
    #[error("log corruption at {lsn}: {detail} (valid records follow it, so this is not a torn tail; refusing to truncate acknowledged log)")]
    LogCorrupt { lsn: Lsn, detail: String },
    #[error("the log failed and refuses further work (a failed write or flush is fatal: the kernel may have dropped the data): {0}")]
    LogFailed(String),
    #[error("the data file failed and the database refuses further work (a failed page write or fdatasync is fatal: the kernel may have dropped the data): {0}")]
    DataFailed(String),
    #[error("log record body of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("{0}")]
    PageCorrupt(#[from] crate::store::page::PageError),
    #[error("the page cache is full of changes the log has not hardened yet (waiting for {needs_hardened:?}); raise --cache-size if this persists")]
    CacheFull { needs_hardened: Option<Lsn> },
    /// A page the command needs is not cached and the pool was told not to read it on the spot
    /// (`BufferPool::set_async_misses`): the server reads it through the ring and runs the
    /// command again. Never reaches a client.
    #[error("{0} is not cached (read in progress)")]
    PageNotCached(crate::store::page::PageId),
    #[error("B+tree corruption: {0}")]
    TreeCorrupt(String),
    #[error("{0}")]
    Limit(String),
    #[error("mirroring: {0}")]
    Mirroring(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A server child process started by a tool (`bench commit`, `quickstart`) failed or hung.
    #[error("{name}: {detail}")]
    ChildProcess { name: String, detail: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// Attach a context string to an `io::Result`.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
