//! Cutting a log back to an LSN: what a former principal does to rejoin as mirror (its log
//! after the failover LSN holds transactions the new principal never had; none was acknowledged
//! under SAFETY FULL). The log must be closed. The cut-off bytes are returned so the caller can
//! keep them in a file: what was discarded, and where it is.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::constants::SEGMENT_HEADER_SIZE;
use crate::error::{IoContext, Result};
use crate::io::file::sync_dir;
use crate::wal::segment;
use crate::wal::Lsn;

/// Zeroes the log in `dir` from `at` on and removes the segments that start at or after it.
/// Returns the bytes that were there (the stream from `at` to the end of the last segment kept,
/// then each removed segment's data), unparsed.
pub fn truncate_after(dir: &Path, at: Lsn) -> Result<Vec<u8>> {
    let segments = segment::list_segments(dir)?;
    let mut cut = Vec::new();
    for (i, (first, path)) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map(|(f, _)| *f);
        if *first >= at {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .context(|| format!("read {}", path.display()))?;
            cut.extend_from_slice(bytes.get(SEGMENT_HEADER_SIZE..).unwrap_or(&[]));
            std::fs::remove_file(path).context(|| format!("remove {}", path.display()))?;
            continue;
        }
        if next_first.is_some_and(|n| n <= at) {
            continue; // wholly before the cut
        }
        let file =
            OpenOptions::new().read(true).write(true).open(path).context(|| format!("open {}", path.display()))?;
        let len = file.metadata().context(|| format!("stat {}", path.display()))?.len();
        let from = SEGMENT_HEADER_SIZE as u64 + at.since(*first);
        if from < len {
            let mut tail = vec![0u8; (len - from) as usize];
            file.read_exact_at(&mut tail, from).context(|| format!("read {}", path.display()))?;
            cut.extend_from_slice(&tail);
            file.write_all_at(&vec![0u8; tail.len()], from).context(|| format!("zero {}", path.display()))?;
        }
        file.sync_all().context(|| format!("fsync {}", path.display()))?;
    }
    sync_dir(dir)?;
    // Trailing zeroes are never-written space, not discarded log.
    while cut.last() == Some(&0) {
        cut.pop();
    }
    Ok(cut)
}
