//! The pair floor: the least a SAFETY FULL commit can cost on this machine, with no database.
//!
//! A minimal principal/mirror pair in one process, at queue depth 1: per op the principal thread
//! sends one 4 KiB block (with an 8-byte sequence header) over loopback TCP, then writes and
//! syncs its own copy, then waits for the mirror's 8-byte ack; the mirror thread writes and syncs
//! the block into its own file before acking. The local and the remote hardening overlap, as the
//! principal's log writer and the mirror's do. This is the "parallel" line of
//! `../shared/anchors/mirror-floor.sh`, in Rust, so that `mirrorlog bench commit` can put it
//! beside each row of the same run.
//!
//! Both sides write with pwrite(2) into an O_DIRECT file followed by fdatasync(2), as the anchor
//! does, into prefilled files (pure overwrite, like a recycled log segment). The principal thread
//! runs on `first_core` and the mirror thread on the next core when the machine has two or more
//! (the anchor's "cross" placement); a hand-off across cores is part of what a real pair pays.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::bench::floor::prefill;
use crate::bench::latency::Latencies;
use crate::constants::BLOCK_SIZE;
use crate::error::{Error, IoContext, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::open_direct;
use crate::io::shard::{available_cores, pin_to_core};

/// Ops run before the measured ones (connection, page cache and device warm-up).
pub const WARMUP_OPS: usize = 200;

const HEADER_SIZE: usize = 8;

/// Measures `ops` pair commits (after [`WARMUP_OPS`]) with files in `dir`; the principal runs on
/// core `first_core` and the mirror on `first_core + 1` (modulo the cores) when there are two.
pub fn measure(dir: &Path, ops: usize, first_core: usize) -> Result<Latencies> {
    assert!(ops > 0, "the pair floor needs at least one op");
    let total = (ops + WARMUP_OPS) * BLOCK_SIZE;
    let principal_path = dir.join(format!("pair-floor-principal-{}.dat", std::process::id()));
    let mirror_path = dir.join(format!("pair-floor-mirror-{}.dat", std::process::id()));
    prefill(&principal_path, total)?;
    prefill(&mirror_path, total)?;
    let cores = available_cores();
    let (principal_core, mirror_core) =
        if cores >= 2 { (Some(first_core % cores), Some((first_core + 1) % cores)) } else { (None, None) };
    let listener = TcpListener::bind("127.0.0.1:0").context(|| "pair floor: bind 127.0.0.1:0".into())?;
    let addr = listener.local_addr().context(|| "pair floor: listener address".into())?;
    let mirror_file = open_direct(&mirror_path)?;
    let mirror = std::thread::Builder::new()
        .name("pair-floor-mirror".into())
        .spawn(move || -> Result<u64> {
            if let Some(core) = mirror_core {
                pin_to_core(core)?;
            }
            let (stream, _) = listener.accept().context(|| "pair floor: accept".into())?;
            mirror_loop(stream, &mirror_file, total)
        })
        .map_err(|e| Error::io("spawn pair floor mirror thread", e))?;
    let principal_file = open_direct(&principal_path)?;
    let principal = std::thread::Builder::new()
        .name("pair-floor-principal".into())
        .spawn(move || -> Result<Latencies> {
            if let Some(core) = principal_core {
                pin_to_core(core)?;
            }
            let stream = TcpStream::connect(addr).context(|| format!("pair floor: connect {addr}"))?;
            principal_loop(stream, &principal_file, ops)
        })
        .map_err(|e| Error::io("spawn pair floor principal thread", e))?;
    let latencies = principal.join().map_err(|_| Error::Config("pair floor principal thread panicked".into()))?;
    let mirrored = mirror.join().map_err(|_| Error::Config("pair floor mirror thread panicked".into()))?;
    let _ = std::fs::remove_file(&principal_path);
    let _ = std::fs::remove_file(&mirror_path);
    let latencies = latencies?;
    let mirrored = mirrored?;
    assert_eq!(mirrored, (ops + WARMUP_OPS) as u64, "the mirror hardened every block the principal sent");
    Ok(latencies)
}

/// pwrite(2) of one block at `offset` into an O_DIRECT file, then fdatasync(2): the block is on
/// stable storage when this returns (fdatasync(2): "flushes all modified in-core data of the file
/// to the disk device"; O_DIRECT alone gives no durability, open(2) NOTES).
fn write_durable(file: &std::fs::File, block: &[u8], offset: u64, what: &str) -> Result<()> {
    file.write_all_at(block, offset).context(|| format!("pair floor: {what} pwrite"))?;
    // SAFETY: plain fdatasync(2) on a descriptor the caller owns for the duration of the call.
    if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
        return Err(Error::io(format!("pair floor: {what} fdatasync"), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn principal_loop(mut stream: TcpStream, file: &std::fs::File, ops: usize) -> Result<Latencies> {
    stream.set_nodelay(true).context(|| "pair floor: TCP_NODELAY".into())?;
    let mut block = AlignedBuf::zeroed(BLOCK_SIZE);
    block.fill(0x5a);
    let mut frame = vec![0u8; HEADER_SIZE + BLOCK_SIZE];
    frame[HEADER_SIZE..].fill(0x5a);
    let mut ack = [0u8; HEADER_SIZE];
    let mut latencies = Latencies::new();
    for i in 0..ops + WARMUP_OPS {
        let seq = i as u64;
        frame[..HEADER_SIZE].copy_from_slice(&seq.to_le_bytes());
        let started = Instant::now();
        // Ship first, so that the mirror's hardening overlaps the local one.
        stream.write_all(&frame).context(|| "pair floor: send block".into())?;
        write_durable(file, &block, seq * BLOCK_SIZE as u64, "principal")?;
        stream.read_exact(&mut ack).context(|| "pair floor: read ack".into())?;
        if i >= WARMUP_OPS {
            latencies.record(started.elapsed());
        }
        if u64::from_le_bytes(ack) != seq {
            return Err(Error::Config(format!(
                "pair floor: ack for block {} while waiting for {seq}",
                u64::from_le_bytes(ack)
            )));
        }
    }
    Ok(latencies)
}

/// Hardens and acks blocks until the principal closes the connection; returns how many.
fn mirror_loop(mut stream: TcpStream, file: &std::fs::File, file_size: usize) -> Result<u64> {
    stream.set_nodelay(true).context(|| "pair floor: TCP_NODELAY".into())?;
    let mut header = [0u8; HEADER_SIZE];
    let mut block = AlignedBuf::zeroed(BLOCK_SIZE);
    let mut hardened = 0;
    loop {
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(hardened),
            Err(e) => return Err(Error::io("pair floor: mirror read header", e)),
        }
        stream.read_exact(&mut block).context(|| "pair floor: mirror read block".into())?;
        let seq = u64::from_le_bytes(header);
        let offset = seq.checked_mul(BLOCK_SIZE as u64).filter(|&o| o + BLOCK_SIZE as u64 <= file_size as u64);
        let Some(offset) = offset else {
            return Err(Error::Config(format!("pair floor: block {seq} is past the prefilled mirror file")));
        };
        write_durable(file, &block, offset, "mirror")?;
        stream.write_all(&header).context(|| "pair floor: mirror send ack".into())?;
        hardened += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_floor_costs_at_least_a_durable_write() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let pair = measure(dir.path(), 100, 0).unwrap().summary();
        assert_eq!(pair.count, 100);
        assert!(pair.p50_us > 0.0 && pair.p50_us <= pair.p99_us && pair.p99_us <= pair.max_us, "{pair:?}");
        // A pair commit includes a durable write on each side: it cannot beat one durable write
        // by much (the two run in parallel), and a durable O_DIRECT write is never free.
        let mut ring = crate::io::ring::Ring::new(8).unwrap();
        let (psync, _) = crate::bench::floor::measure(dir.path(), &mut ring, 100).unwrap();
        let local = psync.summary();
        assert!(pair.p50_us >= local.p50_us * 0.5, "pair {pair:?} vs local {local:?}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the floor files are removed");
    }
}
