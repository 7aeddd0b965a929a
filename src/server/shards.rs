//! What the server's shard threads share: the stop flag, the client count, each database's
//! statistics for INFO, and the hand-over of connections between shards.
//!
//! Database `i` lives on shard `i % shards`. A connection starts on shard 0; when SELECT names a
//! database of another shard, the connection (its socket, its session and any input it has not
//! run yet) is pushed into that shard's bounded inbox and the shard is woken with MSG_RING. The
//! data path of a command never crosses threads.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::server::commands::Session;
use crate::sync::bounded_queue::BoundedQueue;

/// A connection moving to another shard.
pub struct Migration {
    pub fd: OwnedFd,
    pub session: Session,
    pub input: Vec<u8>,
}

/// One database's figures, published by its shard for INFO on any shard.
#[derive(Default)]
pub struct DbStats {
    pub keys: AtomicU64,
    pub lsn_appended: AtomicU64,
    pub lsn_hardened: AtomicU64,
    pub log_writes: AtomicU64,
    pub log_records: AtomicU64,
    pub log_write_micros: AtomicU64,
    pub checkpoint_lsn: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Pages the checkpoint in progress has still to write (0 when none is in progress).
    pub checkpoint_pages_left: AtomicU64,
    /// Buffer pool figures (`store::buffer_pool::PoolStats`).
    pub cache_misses: AtomicU64,
    pub page_reads_async: AtomicU64,
    pub page_writes: AtomicU64,
    pub eviction_writes: AtomicU64,
    pub cleaning_writes: AtomicU64,
    /// The database's mirroring status as `name=value` pairs (INFO mirroring), empty when it is
    /// not mirrored; replaced by its shard every timer tick (not on the data path).
    pub mirroring: std::sync::Mutex<String>,
}

pub struct Shared {
    pub shards: usize,
    pub stop: Arc<AtomicBool>,
    pub clients: AtomicUsize,
    /// CLIENT ID values, unique across shards.
    pub next_client_id: AtomicU64,
    pub stats: Vec<DbStats>,
    pub inboxes: Vec<BoundedQueue<Migration>>,
    /// Authenticated mirroring connections moving to the shard of their database.
    pub peer_inboxes: Vec<BoundedQueue<crate::server::shard_server::PeerMigration>>,
    /// Each shard's ring descriptor, the target of MSG_RING (published before any client comes).
    pub ring_fds: Vec<AtomicI32>,
}

/// Connections in flight to one shard at most.
pub const MIGRATION_QUEUE_CAPACITY: usize = 1024;

impl Shared {
    pub fn new(shards: usize, databases: usize, stop: Arc<AtomicBool>) -> Self {
        Self {
            shards,
            stop,
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            stats: (0..databases).map(|_| DbStats::default()).collect(),
            inboxes: (0..shards).map(|_| BoundedQueue::new(MIGRATION_QUEUE_CAPACITY)).collect(),
            peer_inboxes: (0..shards).map(|_| BoundedQueue::new(64)).collect(),
            ring_fds: (0..shards).map(|_| AtomicI32::new(-1)).collect(),
        }
    }

    /// The shard that owns database `db`.
    pub fn owner(&self, db: usize) -> usize {
        db % self.shards
    }

    pub fn ring_fd(&self, shard: usize) -> i32 {
        self.ring_fds[shard].load(Ordering::Acquire)
    }
}
