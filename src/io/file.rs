//! Opening files for direct I/O, and durable directory changes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Opens an existing file for O_DIRECT reads and writes.
pub fn open_direct(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            Error::DirectIoUnsupported { path: path.to_path_buf(), detail: e.to_string() }
        } else {
            Error::io(format!("open {}", path.display()), e)
        }
    })
}

/// fsync(2) on a directory, so that a create, rename or unlink in it is durable
/// (fsync(2): "Calling fsync() does not necessarily ensure that the entry in the directory
/// containing the file has also reached disk. For that an explicit fsync() on a file descriptor
/// for the directory is also needed.").
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).context(|| format!("open directory {}", dir.display()))?;
    d.sync_all().context(|| format!("fsync directory {}", dir.display()))
}
