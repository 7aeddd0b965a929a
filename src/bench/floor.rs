//! The machine's floor for a durable log write: one 4 KiB O_DIRECT write made durable, at queue
//! depth 1, into a prefilled file (pure overwrite, like a recycled log segment), measured two ways:
//! pwrite(2) + fdatasync(2), and one io_uring write with RWF_DSYNC (what the log writer does).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::bench::latency::{Latencies, Summary};
use crate::constants::BLOCK_SIZE;
use crate::error::{Error, IoContext, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::open_direct;
use crate::io::ring::Ring;

#[derive(Debug, Clone, Copy, Default)]
pub struct Floor {
    pub pwrite_fdatasync: Summary,
    pub uring_dsync: Summary,
}

impl Floor {
    /// The faster of the two methods (by median): the floor the log is compared against.
    pub fn best(&self) -> (&'static str, Summary) {
        if self.uring_dsync.p50_us <= self.pwrite_fdatasync.p50_us {
            ("io_uring write+RWF_DSYNC", self.uring_dsync)
        } else {
            ("pwrite+fdatasync", self.pwrite_fdatasync)
        }
    }
}

const WARMUP_OPS: usize = 50;

fn prefilled_file(dir: &Path, ops: usize) -> Result<std::path::PathBuf> {
    let path = dir.join("floor.dat");
    prefill(&path, (ops + WARMUP_OPS) * BLOCK_SIZE)?;
    Ok(path)
}

/// Creates (or truncates) `path` and writes `total` zero bytes into it, made durable, so that the
/// floor's writes overwrite allocated blocks and never extend the file (writing into unwritten or
/// file-extending space costs about twice as much here; see ../shared/CRATES.md).
pub(crate) fn prefill(path: &Path, total: usize) -> Result<()> {
    let file = std::fs::File::create(path).context(|| format!("create {}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < total {
        let n = (total - at).min(zeros.len());
        file.write_all_at(&zeros[..n], at as u64).context(|| format!("prefill {}", path.display()))?;
        at += n;
    }
    file.sync_all().context(|| format!("fsync {}", path.display()))
}

/// Measures both methods with `ops` writes each, in `dir`, on the calling thread's `ring`.
pub fn measure(dir: &Path, ring: &mut Ring, ops: usize) -> Result<(Latencies, Latencies)> {
    let path = prefilled_file(dir, ops)?;
    let file = open_direct(&path)?;
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
    buf.fill(0x5a);
    let mut psync = Latencies::new();
    for i in 0..ops + WARMUP_OPS {
        let started = Instant::now();
        file.write_all_at(&buf, (i * BLOCK_SIZE) as u64).context(|| "floor pwrite".into())?;
        // SAFETY: plain fdatasync(2) on a descriptor we own.
        if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
            return Err(Error::io("floor fdatasync", std::io::Error::last_os_error()));
        }
        if i >= WARMUP_OPS {
            psync.record(started.elapsed());
        }
    }
    let mut uring = Latencies::new();
    let mut completions = Vec::new();
    let mut buf = Some(buf);
    for i in 0..ops + WARMUP_OPS {
        let started = Instant::now();
        ring.write_at(
            file.as_raw_fd(),
            buf.take().expect("buffer back"),
            BLOCK_SIZE,
            (i * BLOCK_SIZE) as u64,
            libc::RWF_DSYNC,
            0,
        )?;
        while completions.is_empty() {
            ring.submit_and_wait(1)?;
            ring.reap(&mut completions);
        }
        let c = completions.pop().expect("one completion");
        c.io_result().context(|| "floor io_uring write".into())?;
        buf = c.buf;
        if i >= WARMUP_OPS {
            uring.record(started.elapsed());
        }
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok((psync, uring))
}
