//! The client-facing server: RESP (the Redis protocol) on the shard runtime.

pub mod commands;
pub mod glob;
pub mod resp;
pub mod shard_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::shard;
use crate::store::database::{Database, DatabaseConfig};
use crate::store::page::PAGE_SIZE;
use crate::wal::{DbId, Epoch};

/// The Redis version clients are told (they pick features by it).
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub databases: usize,
    /// Page cache in bytes, shared evenly by the databases.
    pub cache_size: u64,
    pub segment_size: u64,
    pub requirepass: Option<String>,
    pub maxclients: usize,
    pub checkpoint_interval: Duration,
}

/// Smallest page cache per database: a transaction's pages stay cached until it commits, and
/// the largest value (16 MiB) spans about 4,200 pages.
pub const CACHE_PAGES_PER_DB_MIN: usize =
    crate::constants::VALUE_SIZE_MAX / crate::store::btree::OVERFLOW_CAPACITY + 256;

/// Opens the databases and serves clients until `stop` is set; `on_ready` gets the bound address.
pub fn run(
    config: ServerConfig,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<()> {
    if config.databases == 0 || config.databases > 1024 {
        return Err(Error::Config("--databases must be between 1 and 1024".into()));
    }
    let cache_pages = (config.cache_size as usize / PAGE_SIZE) / config.databases;
    if cache_pages < CACHE_PAGES_PER_DB_MIN {
        return Err(Error::Config(format!(
            "--cache-size {} gives {} pages per database; at least {} are needed ({} MiB per database)",
            config.cache_size,
            cache_pages,
            CACHE_PAGES_PER_DB_MIN,
            (CACHE_PAGES_PER_DB_MIN * PAGE_SIZE) >> 20
        )));
    }
    crate::io::probe::check_io_uring()?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::io(format!("create {}", config.data_dir.display()), e))?;
    crate::io::probe::check_direct_io(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let listener = crate::io::net::listen(config.listen)?;
    let handle = shard::spawn("shard-0".into(), Some(0), move |ring| {
        let mut dbs = Vec::with_capacity(config.databases);
        for i in 0..config.databases {
            let db_config = DatabaseConfig {
                dir: config.data_dir.join(format!("db{i}")),
                db_id: DbId(i as u64 + 1),
                epoch: Epoch(1),
                cache_pages,
                segment_size: config.segment_size,
            };
            dbs.push(Database::open(db_config, ring, shard_server::token(shard_server::KIND_LOG, i as u64))?);
        }
        use std::os::fd::AsRawFd;
        let addr = crate::io::net::local_addr(listener.as_raw_fd())?;
        on_ready(addr);
        let mut work = shard_server::ServerShard::new(config, dbs, listener, stop);
        shard::run(ring, &mut work)
    })?;
    handle.join().map_err(|_| Error::Config("the server thread panicked".into()))?
}

/// Takes an exclusive lock on the data directory for the life of the returned file, so that two
/// processes never write the same databases.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Config(format!(
            "{} is in use by another mirrorlog process (lock held on {})",
            dir.display(),
            path.display()
        )));
    }
    Ok(file)
}
