//! The client-facing server: RESP (the Redis protocol) on the shard runtime.

pub mod commands;
pub mod conn_map;
pub mod glob;
pub mod resp;
pub mod shard_server;
pub mod shards;

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
    /// Shard threads (each pinned to a core, owning databases `i` with `i % shards == index`);
    /// 0 means one per core, at most one per database.
    pub shards: usize,
    /// How long a shard polls its ring before it sleeps (see `Ring::submit_and_wait_polling`).
    pub idle_poll: Duration,
    /// How the shards' log writes are made durable (`Ring::write_shared_durable`).
    pub log_writes: crate::io::ring::DurableWrites,
    pub mirroring: MirroringConfig,
}

/// Database mirroring settings of a server (see `mirrorlog serve --help`).
#[derive(Debug, Clone)]
pub struct MirroringConfig {
    /// The mirroring endpoint (listening only when a key is set).
    pub endpoint: SocketAddr,
    /// The shared key partners prove to each other; no key, no mirroring.
    pub key: Option<Arc<Vec<u8>>>,
    /// `tcp://HOST:PORT` of the partner's endpoint, applied to every database at start-up.
    pub partner: Option<String>,
    pub safety: crate::mirroring::session::SafetyLevel,
    pub partner_timeout: Duration,
    /// Databases without mirroring settings start as mirror copies (RESTORING).
    pub restoring: bool,
    /// LZ4 per frame when the partner speaks a version that has it.
    pub log_compression: bool,
    /// Log kept for a lagging or suspended mirror, at most (bytes); beyond it the session is
    /// suspended and the log released.
    pub max_log_retention: u64,
    pub redo_workers: usize,
    /// `tcp://HOST:PORT` of the witness, applied to every mirrored database at start-up.
    pub witness: Option<String>,
}

impl Default for MirroringConfig {
    fn default() -> Self {
        Self {
            endpoint: "127.0.0.1:5022".parse().expect("a valid address"),
            key: None,
            partner: None,
            safety: crate::mirroring::session::SafetyLevel::Full,
            partner_timeout: Duration::from_secs(10),
            restoring: false,
            log_compression: false,
            max_log_retention: 4 << 30,
            redo_workers: 2,
            witness: None,
        }
    }
}

/// Smallest page cache per database: a transaction's pages stay cached until it commits, and
/// the largest value (16 MiB) spans about 4,200 pages.
pub const CACHE_PAGES_PER_DB_MIN: usize =
    crate::constants::VALUE_SIZE_MAX / crate::store::btree::OVERFLOW_CAPACITY + 256;

/// Opens the databases and serves clients until `stop` is set; `on_ready` gets the bound address.
pub fn run(
    config: ServerConfig,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>) + Send + 'static,
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
    use std::os::fd::AsRawFd;
    let addr = crate::io::net::local_addr(listener.as_raw_fd())?;
    let mut endpoint = match &config.mirroring.key {
        Some(_) => Some(
            crate::io::net::listen(config.mirroring.endpoint)
                .map_err(|e| Error::Config(format!("mirroring endpoint {}: {e}", config.mirroring.endpoint)))?,
        ),
        None => None,
    };
    let endpoint_addr = match &endpoint {
        Some(fd) => Some(crate::io::net::local_addr(fd.as_raw_fd())?),
        None => None,
    };
    let shards = match config.shards {
        0 => shard::available_cores().min(config.databases),
        n => n.min(config.databases),
    }
    .max(1);
    let shared = Arc::new(shards::Shared::new(shards, config.databases, stop.clone()));
    // Each shard opens its databases, then waits at the gate until all have (or one failed).
    let gate = Arc::new((std::sync::Mutex::new(None::<bool>), std::sync::Condvar::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let mut listener = Some(listener);
    let mut handles = Vec::with_capacity(shards);
    for index in 0..shards {
        let (config, shared, gate, ready_tx) = (config.clone(), shared.clone(), gate.clone(), ready_tx.clone());
        let listener = if index == 0 { listener.take() } else { None };
        let endpoint = if index == 0 { endpoint.take() } else { None };
        handles.push(shard::spawn(format!("shard-{index}"), Some(index), move |ring| {
            ring.set_durable_writes(config.log_writes, config.idle_poll);
            let opened = open_databases(&config, &shared, index, cache_pages, ring);
            let ok = opened.is_ok();
            shared.ring_fds[index].store(ring.fd(), std::sync::atomic::Ordering::Release);
            let _ = ready_tx.send(opened.as_ref().map(|_| ()).map_err(|e| Error::Config(e.to_string())));
            let go = {
                let (lock, cond) = &*gate;
                let mut state = lock.lock().unwrap();
                while state.is_none() {
                    state = cond.wait(state).unwrap();
                }
                state.unwrap_or(false)
            };
            let dbs = opened?;
            if !(go && ok) {
                return Ok(());
            }
            let mut work = shard_server::ServerShard::new(config, index, shared, dbs, listener, addr.port());
            work.set_endpoint(endpoint, endpoint_addr);
            work.init_mirroring()?;
            shard::run(ring, &mut work)
        })?);
    }
    drop(ready_tx);
    let mut first_error = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(Error::Config("a shard thread ended during start-up".into()));
            }
        }
    }
    {
        let (lock, cond) = &*gate;
        *lock.lock().unwrap() = Some(first_error.is_none());
        cond.notify_all();
    }
    if first_error.is_none() {
        on_ready(addr, endpoint_addr);
    }
    let mut result = Ok(());
    for handle in handles {
        let outcome = handle.join().map_err(|_| Error::Config("a shard thread panicked".into())).and_then(|r| r);
        if let Err(e) = outcome {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Opens the databases shard `index` owns (the others stay `None`).
fn open_databases(
    config: &ServerConfig,
    shared: &shards::Shared,
    index: usize,
    cache_pages: usize,
    ring: &mut crate::io::ring::Ring,
) -> Result<Vec<Option<Database>>> {
    let mut dbs = Vec::with_capacity(config.databases);
    for i in 0..config.databases {
        if shared.owner(i) != index {
            dbs.push(None);
            continue;
        }
        let dir = config.data_dir.join(format!("db{i}"));
        let settings = crate::mirroring::settings::MirroringSettings::load(&dir)?;
        let restoring = match &settings {
            Some(s) => s.role == crate::mirroring::settings::Role::Mirror,
            None => config.mirroring.restoring,
        };
        let db_config = DatabaseConfig {
            dir,
            restoring,
            db_id: DbId(i as u64 + 1),
            // The role sequence this database last acted in (1 for a database never mirrored).
            epoch: Epoch(settings.as_ref().map(|s| s.role_sequence).unwrap_or(1)),
            cache_pages,
            segment_size: config.segment_size,
        };
        dbs.push(Some(Database::open(db_config, ring, shard_server::token(shard_server::KIND_LOG, i as u64))?));
    }
    Ok(dbs)
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
