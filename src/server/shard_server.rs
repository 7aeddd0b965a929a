//! The server's shard: accepts clients, reads their commands, runs them against the databases it
//! owns, and writes each reply once the log makes it durable — all on one io_uring.
//!
//! Per connection: received bytes gather in `input`; every complete command in it runs at once
//! (pipelining: a pipeline's writes share group commits); replies queue in order, each with the
//! LSN its database's log must reach before it may be sent; replies whose LSN is hardened move to
//! `output`, which one send at a time drains.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::io::buffer::AlignedBuf;
use crate::io::ring::{Completion, CompletionKind, OpId, Ring, Token};
use crate::io::shard::ShardWork;
use crate::server::commands::{self, Cursors, Outcome, ServerInfo, Session};
use crate::server::conn_map::ConnMap;
use crate::server::resp::{self, ParseError, Reply};
use crate::server::shards::{Migration, Shared};
use crate::server::ServerConfig;
use crate::store::database::{CommitProgress, Database};
use crate::store::page::PageId;
use crate::wal::{Lsn, Wake};

mod peer;
pub use peer::PeerMigration;

const KIND_SHIFT: u32 = 56;
const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
pub const KIND_LOG: u64 = 4;
const KIND_TIMER: u64 = 5;
const KIND_MSG_SENT: u64 = 6;
const KIND_CHECKPOINT: u64 = 7;
// 8..=11: the mirroring endpoint (`peer`).
const KIND_PAGE_READ: u64 = 12;
const ID_MASK: u64 = (1 << KIND_SHIFT) - 1;

pub fn token(kind: u64, id: u64) -> Token {
    (kind << KIND_SHIFT) | (id & ID_MASK)
}

/// Tokens of database `db`'s checkpoint page writes and data file syncs (the low 32 bits carry
/// the frame, or `DATA_SYNC_FRAME`).
fn checkpoint_token(db: usize) -> Token {
    token(KIND_CHECKPOINT, (db as u64) << 32)
}

/// Token of a ring read of page `page` of database `db` (page ids below 2^32 only: larger ones
/// are read synchronously).
fn page_read_token(db: usize, page: PageId) -> Option<Token> {
    (page.0 < 1 << 32).then(|| token(KIND_PAGE_READ, ((db as u64) << 32) | page.0))
}

/// A command that missed the cache this many times in a row runs once with synchronous reads (a
/// transaction touching more pages than the cache holds could otherwise evict its own pages).
const PAGE_READ_RETRIES_MAX: u32 = 16;

/// Bytes of one receive.
const RECV_SIZE: usize = 64 * 1024;
/// Unparsed input a client may accumulate (one largest command and then some).
const INPUT_MAX: usize = 2 * crate::constants::VALUE_SIZE_MAX + (1 << 20);
/// Output waiting for a slow reader beyond which the server stops reading from it.
const OUTPUT_PAUSE: usize = 32 << 20;
const TIMER_PERIOD: Duration = Duration::from_millis(100);
/// At a stop, how long the server waits for clients to read their last replies.
const STOP_SEND_GRACE: Duration = Duration::from_secs(5);

/// A reply already encoded into the connection's output, held back until the commit it
/// answers is durable (`wait`, in database `db`'s log; zero for replies that wait for nothing).
/// Replies are released in order, so one held reply holds back every reply after it.
struct PendingReply {
    db: usize,
    wait: Lsn,
    /// Where the reply's bytes end, as an offset in the connection's output stream.
    end: u64,
}

struct Conn {
    fd: OwnedFd,
    session: Session,
    input: Vec<u8>,
    /// Replies in `output` not yet released, oldest first.
    replies: VecDeque<PendingReply>,
    /// Encoded replies not yet sent: `output[0]` is byte `output_base` of the connection's output
    /// stream. Bytes before `released` may be sent; the rest belong to held replies.
    output: Vec<u8>,
    output_base: u64,
    released: u64,
    /// Bytes of the send in flight (from the front of `output`), zero when none is.
    send_len: usize,
    /// The buffer sends are copied into, kept between sends (it is in the ring while one is in
    /// flight).
    send_buf: Option<AlignedBuf>,
    receiving: bool,
    /// No more reading: close once everything queued is sent.
    closing: bool,
    /// A reply whose transaction waits for log space to be appended.
    waiting_space: Option<(Reply, usize)>,
    /// The next command runs again once this database's log is hardened to this LSN.
    retry_after: Option<(usize, Lsn)>,
    /// The next command runs again once this page of this database is read.
    waiting_read: Option<(usize, PageId)>,
    /// Cache misses of the next command so far.
    read_retries: u32,
    /// The session selected a database of this shard: the connection moves there once its
    /// replies are sent.
    migrate_to: Option<usize>,
    recv_op: Option<OpId>,
    recv_cancelled: bool,
    /// Everything is sent and the connection may go.
    closing_done: bool,
}

impl Conn {
    /// Encodes `reply` into the output, held until database `db`'s log is hardened to `wait`.
    fn push_reply(&mut self, reply: &Reply, protocol: crate::server::resp::Protocol, db: usize, wait: Lsn) {
        reply.encode(protocol, &mut self.output);
        let end = self.output_base + self.output.len() as u64;
        self.replies.push_back(PendingReply { db, wait, end });
    }

    /// Drops the held replies from the `first`-th on, bytes included (none of them was sent).
    fn drop_replies_from(&mut self, first: usize) {
        let start = if first == 0 { self.released } else { self.replies[first - 1].end };
        self.output.truncate((start - self.output_base) as usize);
        self.replies.truncate(first);
    }

    fn new(fd: OwnedFd, mut session: Session, input: Vec<u8>) -> Self {
        session.async_page_reads = true;
        Self {
            fd,
            session,
            input,
            replies: VecDeque::new(),
            output: Vec::new(),
            output_base: 0,
            released: 0,
            send_len: 0,
            send_buf: None,
            receiving: false,
            closing: false,
            waiting_space: None,
            retry_after: None,
            waiting_read: None,
            read_retries: 0,
            migrate_to: None,
            recv_op: None,
            recv_cancelled: false,
            closing_done: false,
        }
    }
}

fn local(dbs: &[Option<Database>], db: usize) -> &Database {
    dbs[db].as_ref().expect("a shard touches only its own databases")
}

fn local_mut(dbs: &mut [Option<Database>], db: usize) -> &mut Database {
    dbs[db].as_mut().expect("a shard touches only its own databases")
}

pub struct ServerShard {
    config: ServerConfig,
    index: usize,
    shared: Arc<Shared>,
    /// Indexed by database number; `None` for the databases of other shards.
    dbs: Vec<Option<Database>>,
    listener: Option<OwnedFd>,
    conns: ConnMap<Conn>,
    next_conn_id: u64,
    cursors: Cursors,
    stopping: bool,
    stop_began: Option<Instant>,
    started: Instant,
    last_checkpoint: Instant,
    config_table: Vec<(&'static str, String)>,
    wakes: Vec<Wake>,
    tcp_port: u16,
    /// Receive buffers come back here for reuse (allocating and zeroing 64 KiB per receive
    /// showed up as the top cost in profiles). Send buffers stay with their connection.
    spare_bufs: Vec<AlignedBuf>,
    /// Per database: where the expired-key sweep goes on, and when it last failed (it rests
    /// for `SWEEP_REST_AFTER_ERROR` then, instead of reporting the same bad page every tick).
    sweep_after: Vec<Option<Vec<u8>>>,
    sweep_failed_at: Vec<Option<Instant>>,
    /// The mirroring endpoint's listener (shard 0, when a key is configured).
    endpoint: Option<OwnedFd>,
    /// Per database: its mirroring link, if it is mirrored.
    links: Vec<Option<peer::Link>>,
    peers: HashMap<u64, peer::PeerConn>,
    next_peer_id: u64,
    /// Authenticated endpoint connections waiting to move to their database's shard.
    pending_peer_hello: HashMap<u64, crate::wire::handshake::Hello>,
    /// Session commands produced where they could not run at once.
    deferred_session_commands: Vec<(usize, Vec<crate::mirroring::session::Command>)>,
    /// Databases whose held replies may have become sendable.
    release_dbs: Vec<usize>,
    /// The endpoint's accept failed: it is posted again on the next timer tick.
    endpoint_accept_failed: bool,
    /// Where partners reach this server's endpoint.
    endpoint_addr: Option<std::net::SocketAddr>,
    /// Role changes asked for by frames or commands, run in `before_sleep` (see `peer`).
    pending_fences: Vec<(usize, crate::wal::Epoch)>,
    pending_rejoins: Vec<(usize, crate::wal::Epoch, Lsn)>,
    pending_failovers: Vec<(u64, usize, crate::wire::frame::FrameHeader, Vec<u8>)>,
    pending_role_changes: Vec<(usize, crate::wal::Epoch)>,
    pending_force_service: Vec<usize>,
    pending_auto_failovers: Vec<(usize, crate::wal::Epoch)>,
    /// Per database: its connection to the witness, if one is configured.
    witness_links: Vec<Option<peer::WitnessLink>>,
    /// Pages commands wait for, to be read through the ring before the next sleep.
    page_reads_wanted: Vec<(usize, PageId)>,
}

const SPARE_BUFS_MAX: usize = 256;
/// A connection keeps its send buffer between sends up to this size (larger ones, for large
/// replies, are freed after use).
const SEND_BUF_KEPT: usize = 64 * 1024;
/// The smallest send buffer a connection allocates (room for a pipeline's worth of short replies).
const SEND_BUF_MIN: usize = 16 * 1024;
/// Keys the expired-key sweep looks at per database per timer tick.
const SWEEP_KEYS_PER_TICK: usize = 64;
const SWEEP_REST_AFTER_ERROR: Duration = Duration::from_secs(60);

impl ServerShard {
    pub fn new(
        config: ServerConfig,
        index: usize,
        shared: Arc<Shared>,
        dbs: Vec<Option<Database>>,
        listener: Option<OwnedFd>,
        tcp_port: u16,
    ) -> Self {
        let dbs_len = dbs.len();
        let config_table = vec![
            ("save", String::new()),
            ("appendonly", "no".to_string()),
            ("appendfsync", "always".to_string()),
            ("databases", config.databases.to_string()),
            ("maxclients", config.maxclients.to_string()),
            ("port", tcp_port.to_string()),
            ("dir", config.data_dir.display().to_string()),
        ];
        Self {
            config,
            index,
            shared,
            dbs,
            listener,
            conns: ConnMap::default(),
            next_conn_id: 1,
            cursors: Cursors::default(),
            stopping: false,
            stop_began: None,
            started: Instant::now(),
            last_checkpoint: Instant::now(),
            config_table,
            wakes: Vec::new(),
            tcp_port,
            spare_bufs: Vec::new(),
            sweep_after: vec![None; dbs_len],
            sweep_failed_at: vec![None; dbs_len],
            endpoint: None,
            links: (0..dbs_len).map(|_| None).collect(),
            peers: HashMap::new(),
            next_peer_id: 1,
            pending_peer_hello: HashMap::new(),
            deferred_session_commands: Vec::new(),
            release_dbs: Vec::new(),
            endpoint_accept_failed: false,
            endpoint_addr: None,
            pending_fences: Vec::new(),
            pending_rejoins: Vec::new(),
            pending_failovers: Vec::new(),
            pending_role_changes: Vec::new(),
            pending_force_service: Vec::new(),
            pending_auto_failovers: Vec::new(),
            witness_links: (0..dbs_len).map(|_| None).collect(),
            page_reads_wanted: Vec::new(),
        }
    }

    /// Sets up the mirroring links of the databases this shard owns (see `peer`).
    pub fn init_mirroring(&mut self) -> Result<()> {
        self.init_links()
    }

    /// Sends every reply of database `db` that the commit rule now allows.
    fn release_replies(&mut self, ring: &mut Ring, db: usize) -> Result<()> {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.replies.front().is_some_and(|r| r.db == db) || c.retry_after.is_some_and(|(d, _)| d == db)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // A command waiting for pages to become writable may run again now.
            self.process(id);
            self.flush(ring, id)?;
            self.try_migrate(ring, id)?;
        }
        Ok(())
    }

    fn remove_conn(&mut self, id: u64) {
        if self.conns.remove(&id).is_some() {
            self.shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Publishes this shard's databases' figures for INFO on any shard.
    fn publish_stats(&mut self) {
        for i in 0..self.dbs.len() {
            if self.dbs[i].is_none() {
                continue;
            }
            let line = self.links[i].as_ref().map(|_| peer::info_line(&self.mirror_status(i))).unwrap_or_default();
            if let Ok(mut published) = self.shared.stats[i].mirroring.lock() {
                *published = line;
            }
        }
        for (i, db) in self.dbs.iter_mut().enumerate() {
            let Some(db) = db else { continue };
            let stats = &self.shared.stats[i];
            stats.lsn_appended.store(db.log.lsn_appended().0, Ordering::Relaxed);
            stats.lsn_hardened.store(db.log.lsn_hardened().0, Ordering::Relaxed);
            stats.log_writes.store(db.log.stats.writes, Ordering::Relaxed);
            stats.log_records.store(db.log.stats.records_hardened, Ordering::Relaxed);
            stats.log_write_micros.store(db.log.stats.write_micros, Ordering::Relaxed);
            stats.checkpoint_lsn.store(db.checkpoint_lsn().0, Ordering::Relaxed);
            stats.checkpoints.store(db.checkpoints, Ordering::Relaxed);
            stats.checkpoint_pages_left.store(db.checkpoint_pages_left() as u64, Ordering::Relaxed);
            let pool = db.pool().stats;
            stats.cache_misses.store(pool.misses, Ordering::Relaxed);
            stats.page_reads_async.store(pool.async_reads, Ordering::Relaxed);
            stats.page_writes.store(pool.page_writes, Ordering::Relaxed);
            stats.eviction_writes.store(pool.eviction_writes, Ordering::Relaxed);
            stats.cleaning_writes.store(pool.cleaning_writes, Ordering::Relaxed);
            if db.is_restoring() {
                continue; // its pages belong to the redo workers
            }
            if let Ok(m) = crate::store::btree::meta(db.pool()) {
                stats.keys.store(m.key_count, Ordering::Relaxed);
            }
        }
    }

    fn accept_next(&mut self, ring: &mut Ring) -> Result<()> {
        if let Some(listener) = &self.listener {
            ring.accept(listener.as_raw_fd(), token(KIND_ACCEPT, 0))?;
        }
        Ok(())
    }

    fn on_accept(&mut self, ring: &mut Ring, c: Completion) -> Result<()> {
        if self.listener.is_none() {
            if c.result >= 0 {
                // SAFETY: a successful accept returns a new descriptor we own.
                drop(unsafe { OwnedFd::from_raw_fd(c.result) });
            }
            return Ok(());
        }
        if c.result < 0 {
            eprintln!("mirrorlog: accept failed: {}", std::io::Error::from_raw_os_error(-c.result));
            return self.accept_next(ring);
        }
        // SAFETY: a successful accept returns a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
        if self.shared.clients.load(Ordering::SeqCst) >= self.config.maxclients {
            let msg = b"-ERR max number of clients reached\r\n";
            // SAFETY: plain send(2) of a static buffer on a descriptor we own; best effort.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    msg.as_ptr() as *const libc::c_void,
                    msg.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
        } else {
            let _ = crate::io::net::set_nodelay(fd.as_raw_fd());
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            let client_id = self.shared.next_client_id.fetch_add(1, Ordering::SeqCst);
            let session = Session::new(client_id, self.config.requirepass.is_some());
            self.shared.clients.fetch_add(1, Ordering::SeqCst);
            self.conns.insert(id, Box::new(Conn::new(fd, session, Vec::new())));
            self.post_recv(ring, id)?;
        }
        self.accept_next(ring)
    }

    fn post_recv(&mut self, ring: &mut Ring, id: u64) -> Result<()> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        if conn.receiving
            || conn.closing
            || conn.migrate_to.is_some()
            || conn.output.len() > OUTPUT_PAUSE
            || conn.input.len() > INPUT_MAX
        {
            return Ok(());
        }
        conn.receiving = true;
        let buf =
            self.spare_bufs.pop().filter(|b| b.capacity() >= RECV_SIZE).unwrap_or_else(|| AlignedBuf::new(RECV_SIZE));
        conn.recv_op = Some(ring.recv_poll_first(conn.fd.as_raw_fd(), buf, token(KIND_RECV, id))?);
        Ok(())
    }

    fn on_recv(&mut self, ring: &mut Ring, id: u64, mut c: Completion) -> Result<()> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        conn.receiving = false;
        conn.recv_op = None;
        if c.result == -libc::ECANCELED && conn.recv_cancelled {
            // Cancelled to hand the connection to another shard.
            if let Some(buf) = c.buf.take() {
                self.recycle(buf);
            }
            return self.try_migrate(ring, id);
        }
        if c.result <= 0 {
            // EOF or an error: the client is gone; nothing more can be sent to it.
            self.remove_conn(id);
            return Ok(());
        }
        let buf = c.buf.take().expect("a receive returns its buffer");
        conn.input.extend_from_slice(&buf[..c.result as usize]);
        self.recycle(buf);
        self.process(id);
        self.flush(ring, id)?;
        self.post_recv(ring, id)?;
        self.try_migrate(ring, id)
    }

    /// Hands a connection whose session selected another shard's database to that shard, once
    /// nothing of it is in flight here: replies sent, no transaction waiting, receive cancelled.
    fn try_migrate(&mut self, ring: &mut Ring, id: u64) -> Result<()> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        let Some(target) = conn.migrate_to else { return Ok(()) };
        if conn.closing
            || !conn.replies.is_empty()
            || !conn.output.is_empty()
            || conn.send_len > 0
            || conn.waiting_space.is_some()
        {
            return Ok(());
        }
        if conn.receiving {
            if !conn.recv_cancelled {
                conn.recv_cancelled = true;
                if let Some(op) = conn.recv_op {
                    ring.cancel(op)?;
                }
            }
            return Ok(());
        }
        let conn = *self.conns.remove(&id).expect("present above");
        let migration = Migration { fd: conn.fd, session: conn.session, input: conn.input };
        match self.shared.inboxes[target].push(migration) {
            Ok(()) => {
                ring.msg_ring(self.shared.ring_fd(target), 1, token(KIND_MSG_SENT, 0))?;
            }
            Err(back) => {
                // The target's inbox is full: the connection stays here until the next attempt.
                let mut conn = Box::new(Conn::new(back.fd, back.session, back.input));
                conn.migrate_to = Some(target);
                self.conns.insert(id, conn);
            }
        }
        Ok(())
    }

    /// Connections handed over by other shards.
    fn on_migrations(&mut self, ring: &mut Ring) -> Result<()> {
        while let Some(m) = self.shared.inboxes[self.index].pop() {
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            self.conns.insert(id, Box::new(Conn::new(m.fd, m.session, m.input)));
            self.process(id);
            self.flush(ring, id)?;
            self.post_recv(ring, id)?;
            self.try_migrate(ring, id)?;
        }
        Ok(())
    }

    /// Runs every complete command in the connection's input.
    fn process(&mut self, id: u64) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        self.process_conn(id, &mut conn);
        self.conns.insert(id, conn);
    }

    fn process_conn(&mut self, id: u64, conn: &mut Conn) {
        let info_clients = self.shared.clients.load(Ordering::Relaxed);
        if conn.migrate_to.is_some() || conn.waiting_read.is_some() {
            return;
        }
        let mut used = 0;
        if let Some((db, lsn)) = conn.retry_after {
            if local(&self.dbs, db).page_write_limit() < lsn && !local(&self.dbs, db).is_failed() {
                return;
            }
            conn.retry_after = None;
        }
        while !conn.closing && conn.waiting_space.is_none() && !self.stopping {
            let owner = self.shared.owner(conn.session.db);
            if owner != self.index {
                conn.migrate_to = Some(owner);
                break;
            }
            if local(&self.dbs, conn.session.db).paused() {
                break; // resumed when the transaction in progress is appended or the checkpoint ran
            }
            let (command, n) = match resp::parse_command(&conn.input[used..]) {
                Ok(parsed) => parsed,
                Err(ParseError::Incomplete) => {
                    if conn.input.len() - used > INPUT_MAX {
                        queue_now(conn, Reply::error("ERR Protocol error: client query buffer exceeds the limit"));
                        conn.closing = true;
                    }
                    break;
                }
                Err(ParseError::Protocol(text)) => {
                    eprintln!("mirrorlog: client {id}: {text}; closing the connection");
                    queue_now(conn, Reply::Error(format!("ERR {text}")));
                    conn.closing = true;
                    break;
                }
            };
            let start = used;
            used += n;
            if command.is_empty() {
                continue;
            }
            let args: Vec<&[u8]> = command.args.iter().map(|r| &conn.input[start + r.start..start + r.end]).collect();
            if args[0].eq_ignore_ascii_case(b"MIRROR") && conn.session.authenticated {
                if conn.session.multi.is_some() {
                    queue_now(conn, Reply::error("ERR MIRROR is not allowed inside MULTI"));
                    continue;
                }
                let owned: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                let reply =
                    self.mirror_command(conn.session.db, &owned).unwrap_or_else(|e| Reply::error(format!("ERR {e}")));
                queue_now(conn, reply);
                continue;
            }
            if args[0].eq_ignore_ascii_case(b"EXEC") {
                if let Some(db) = commands::exec_database(&conn.session, self.dbs.len()) {
                    // A transaction that SELECTed another database runs there: the connection
                    // switches to it (moving to its shard if need be) and EXEC runs again.
                    conn.session.db = db;
                    used = start;
                    continue;
                }
            }
            if let Some(why) =
                self.refuses_clients(conn.session.db).filter(|_| !commands::is_connection_command(args[0]))
            {
                queue_now(conn, Reply::error(why));
                continue;
            }
            let info = ServerInfo {
                requirepass: self.config.requirepass.as_deref(),
                connected_clients: info_clients,
                uptime_s: self.started.elapsed().as_secs(),
                tcp_port: self.tcp_port,
                maxclients: self.config.maxclients,
                config: &self.config_table,
                stats: &self.shared.stats,
            };
            let protocol_before = conn.session.protocol;
            let outcome = commands::execute(&args, &mut conn.session, &mut self.dbs, &mut self.cursors, &info);
            let protocol = if args[0].eq_ignore_ascii_case(b"HELLO") { conn.session.protocol } else { protocol_before };
            if !matches!(outcome, Outcome::ReadPage { .. }) {
                conn.read_retries = 0;
                conn.session.async_page_reads = true;
            }
            match outcome {
                Outcome::ReadPage { db, page } => {
                    used = start; // the command stays in the input and runs again
                    conn.read_retries += 1;
                    if conn.read_retries >= PAGE_READ_RETRIES_MAX {
                        conn.session.async_page_reads = false;
                        continue;
                    }
                    conn.waiting_read = Some((db, page));
                    self.page_reads_wanted.push((db, page));
                    break;
                }
                Outcome::Reply { reply, db, wait } => conn.push_reply(&reply, protocol, db, wait),
                Outcome::Close(reply) => {
                    queue_now(conn, reply);
                    conn.closing = true;
                }
                Outcome::WaitingForSpace { reply, db } => conn.waiting_space = Some((reply, db)),
                Outcome::RetryAfter { db, lsn } => {
                    used = start; // the command stays in the input and runs again
                    conn.retry_after = Some((db, lsn));
                    break;
                }
            }
        }
        conn.input.drain(..used);
    }

    /// Moves hardened replies to the output and starts a send.
    fn flush(&mut self, ring: &mut Ring, id: u64) -> Result<()> {
        let Some(mut conn) = self.conns.remove(&id) else { return Ok(()) };
        let result = self.flush_conn(ring, id, &mut conn);
        self.conns.insert(id, conn);
        if self.conns.get(&id).is_some_and(|c| c.closing_done) {
            self.remove_conn(id);
        }
        result
    }

    fn flush_conn(&mut self, ring: &mut Ring, _id: u64, conn: &mut Conn) -> Result<()> {
        let id = _id;
        while let Some(front) = conn.replies.front() {
            if front.wait > Lsn::ZERO && front.wait > self.commit_lsn(front.db) {
                break;
            }
            conn.released = front.end;
            conn.replies.pop_front();
        }
        let sendable = (conn.released - conn.output_base) as usize;
        if conn.send_len == 0 && sendable > 0 {
            let len = sendable.min(4 << 20);
            let mut buf = match conn.send_buf.take() {
                Some(b) if len <= b.capacity() => b,
                _ => AlignedBuf::new(len.max(SEND_BUF_MIN)),
            };
            buf.set_len(len);
            buf.copy_from_slice(&conn.output[..len]);
            conn.send_len = len;
            ring.send(conn.fd.as_raw_fd(), buf, 0, len, token(KIND_SEND, id))?;
        } else if conn.send_len == 0
            && conn.closing
            && conn.replies.is_empty()
            && conn.waiting_space.is_none()
            && !conn.receiving
        {
            conn.closing_done = true;
        }
        Ok(())
    }

    fn recycle(&mut self, buf: AlignedBuf) {
        if self.spare_bufs.len() < SPARE_BUFS_MAX && buf.capacity() == RECV_SIZE {
            self.spare_bufs.push(buf);
        }
    }

    fn on_send(&mut self, ring: &mut Ring, id: u64, mut c: Completion) -> Result<()> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        if let Some(buf) = c.buf.take().filter(|b| b.capacity() <= SEND_BUF_KEPT) {
            conn.send_buf = Some(buf);
        }
        if c.result <= 0 {
            self.remove_conn(id);
            return Ok(());
        }
        let sent = (c.result as usize).min(conn.send_len);
        conn.output.drain(..sent);
        conn.output_base += sent as u64;
        conn.send_len = 0;
        self.flush(ring, id)?;
        self.post_recv(ring, id)?;
        self.try_migrate(ring, id)
    }

    fn on_log(&mut self, ring: &mut Ring, db: usize, c: Completion) -> Result<()> {
        local_mut(&mut self.dbs, db).on_log_completion(c, &mut self.wakes);
        self.wakes.clear();
        // The next batch (commits appended while this write was in flight) goes to the device
        // now, before this one's replies are queued: a send runs the loopback TCP path inline in
        // io_uring_enter (several microseconds each), and sends queued first would hold the
        // write back by all of them.
        if let Some(database) = self.dbs[db].as_mut().filter(|d| !d.is_failed()) {
            if database.log.submit(ring)? {
                self.after_submit(ring)?;
                ring.submit()?;
            }
        }
        self.peer_log_progress(ring, db)?;
        self.continue_pending_commit(db);
        if local(&self.dbs, db).is_failed() {
            eprintln!("mirrorlog: database {db}: the log failed; its clients get errors");
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if local(&self.dbs, db).is_failed() {
                self.fail_replies(id, db);
            }
            let Some(conn) = self.conns.get(&id) else { continue };
            if conn.replies.front().is_some_and(|r| r.db == db)
                || conn.closing
                || (!conn.input.is_empty() && self.dbs[conn.session.db].as_ref().is_some_and(|d| !d.paused()))
            {
                self.process(id);
                self.flush(ring, id)?;
                self.try_migrate(ring, id)?;
            }
        }
        Ok(())
    }

    /// A page write or data file sync of database `db`'s checkpoint completed.
    fn on_checkpoint(&mut self, ring: &mut Ring, db: usize, c: Completion) -> Result<()> {
        let Some(database) = self.dbs.get_mut(db).and_then(|d| d.as_mut()) else { return Ok(()) };
        if let Err(e) = database.on_checkpoint_completion(c) {
            eprintln!("mirrorlog: database {db}: checkpoint failed: {e}; the database accepts no more commands");
            self.fail_waiting_replies(ring, db)?;
        }
        Ok(())
    }

    /// Starts the ring reads commands wait for. A page that cannot be read that way (beyond the
    /// data file) is not waited for: its commands run again with synchronous reads, which say why.
    fn submit_page_reads(&mut self, ring: &mut Ring) -> Result<()> {
        for (db, page) in std::mem::take(&mut self.page_reads_wanted) {
            let Some(database) = self.dbs[db].as_mut() else { continue };
            let submitted = match page_read_token(db, page) {
                Some(token) => database.pool().submit_read(ring, token, page)?,
                None => false,
            };
            if !submitted {
                self.page_read_done(ring, db, page, false)?;
            }
        }
        Ok(())
    }

    fn on_page_read(&mut self, ring: &mut Ring, db: usize, page: PageId, mut c: Completion) -> Result<()> {
        let Some(database) = self.dbs.get_mut(db).and_then(|d| d.as_mut()) else { return Ok(()) };
        let installed = match database.pool().complete_read(page, c.result, c.buf.take()) {
            Ok(installed) => installed,
            Err(e) => {
                eprintln!("mirrorlog: database {db}: installing {page} read through the ring: {e}");
                false
            }
        };
        self.page_read_done(ring, db, page, installed)
    }

    /// Page `page` of database `db` is cached now (or, if not `installed`, the commands waiting
    /// for it run with synchronous reads): those commands run again.
    fn page_read_done(&mut self, ring: &mut Ring, db: usize, page: PageId, installed: bool) -> Result<()> {
        let ids: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.waiting_read == Some((db, page))).map(|(id, _)| *id).collect();
        for id in ids {
            let conn = self.conns.get_mut(&id).expect("listed above");
            conn.waiting_read = None;
            if !installed {
                conn.session.async_page_reads = false;
            }
            self.process(id);
            self.flush(ring, id)?;
            self.try_migrate(ring, id)?;
        }
        Ok(())
    }

    /// Database `db` failed: every reply still waiting on it becomes an error (as when its log
    /// fails), so no client waits forever.
    fn fail_waiting_replies(&mut self, ring: &mut Ring, db: usize) -> Result<()> {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.fail_replies(id, db);
            self.flush(ring, id)?;
        }
        Ok(())
    }

    /// Appends what remains of database `db`'s pending transaction, whoever started it: a
    /// connection (which gets its reply), the expired-key sweep, or a client that disconnected
    /// meanwhile (the transaction still completes, so the database never stays paused).
    fn continue_pending_commit(&mut self, db: usize) {
        if !local(&self.dbs, db).commit_in_progress() {
            return;
        }
        let progress = local_mut(&mut self.dbs, db).continue_commit();
        let owner =
            self.conns.iter().find(|(_, c)| c.waiting_space.as_ref().is_some_and(|w| w.1 == db)).map(|(id, _)| *id);
        match (progress, owner) {
            (Ok(CommitProgress::WaitingForSpace), _) => {}
            (Ok(CommitProgress::Appended(lsn)), Some(id)) => {
                let conn = self.conns.get_mut(&id).expect("found above");
                let (reply, db) = conn.waiting_space.take().expect("waiting");
                let protocol = conn.session.protocol;
                conn.push_reply(&reply, protocol, db, lsn);
            }
            (Ok(CommitProgress::Appended(_)), None) => {}
            (Err(e), owner) => {
                eprintln!("mirrorlog: database {db}: commit failed: {e}");
                if let Some(conn) = owner.and_then(|id| self.conns.get_mut(&id)) {
                    conn.waiting_space = None;
                    queue_now(conn, Reply::error(format!("ERR {e}")));
                    conn.closing = true;
                }
            }
        }
    }

    /// The log of `db` failed: the first reply of connection `id` that waits on it, and every
    /// reply after it, are replaced by one error, and the connection closes — so no reply can
    /// shift onto another command and make an undurable write look acknowledged.
    fn fail_replies(&mut self, id: u64, db: usize) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if let Some(first) = conn.replies.iter().position(|r| r.db == db && r.wait > Lsn::ZERO) {
            conn.drop_replies_from(first);
            queue_now(conn, Reply::error("ERR the database's log failed; this and later commands are not durable"));
            conn.closing = true;
            conn.input.clear();
        }
    }

    fn on_timer(&mut self, ring: &mut Ring) -> Result<()> {
        if self.shared.stop.load(Ordering::SeqCst) && !self.stopping {
            self.stopping = true;
            self.stop_began = Some(Instant::now());
            self.listener = None; // no new clients; in-flight commits finish
        }
        for db in 0..self.dbs.len() {
            let resting = self.sweep_failed_at[db].is_some_and(|t| t.elapsed() < SWEEP_REST_AFTER_ERROR);
            if !resting
                && self.dbs[db]
                    .as_ref()
                    .is_some_and(|d| !self.stopping && !d.paused() && !d.is_failed() && !d.is_restoring())
            {
                self.sweep_expired(db);
            }
        }
        self.publish_stats();
        self.peer_timer(ring)?;
        if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
            for db in self.dbs.iter_mut().flatten().filter(|d| !d.is_restoring()) {
                db.request_checkpoint();
            }
            self.last_checkpoint = Instant::now();
        }
        ring.timeout(TIMER_PERIOD, token(KIND_TIMER, 0))?;
        Ok(())
    }

    /// Deletes expired keys among the next few keys of database `db` (reads treat expired keys
    /// as absent already; this gives their space back and keeps DBSIZE honest), as one
    /// transaction through the log like any other change.
    fn sweep_expired(&mut self, db: usize) {
        let database = local_mut(&mut self.dbs, db);
        database.begin();
        // A page the sweep lacks is read through the ring; the sweep goes on from the same key
        // at the next tick.
        database.pool().set_async_misses(true);
        let now = crate::store::value::now_ms();
        let swept = (|| -> Result<Option<Vec<u8>>> {
            let (keys, next) =
                crate::store::btree::keys_after(database.pool(), self.sweep_after[db].as_deref(), SWEEP_KEYS_PER_TICK)?;
            for key in keys {
                let expired = crate::store::btree::get_prefix(
                    database.pool(),
                    &key,
                    crate::store::value::STORED_VALUE_OVERHEAD_MAX,
                )?
                .and_then(|head| crate::store::value::expiry_of(&head))
                .is_some_and(|at| at <= now);
                if expired {
                    crate::store::btree::delete(database.pool(), &key)?;
                }
            }
            Ok(next)
        })();
        database.pool().set_async_misses(false);
        match swept {
            Err(crate::error::Error::PageNotCached(page)) => {
                database.abort();
                self.page_reads_wanted.push((db, page));
            }
            Ok(next) => {
                self.sweep_after[db] = next;
                // A commit that must wait for log space goes on in `continue_pending_commit`.
                if let Err(e) = database.commit() {
                    eprintln!("mirrorlog: database {db}: expired-key sweep commit failed: {e}");
                }
            }
            Err(e) => {
                database.abort();
                self.sweep_after[db] = None;
                self.sweep_failed_at[db] = Some(Instant::now());
                eprintln!("mirrorlog: database {db}: expired-key sweep paused for {SWEEP_REST_AFTER_ERROR:?}: {e}");
            }
        }
    }

    /// Every log is drained (or failed, in which case nothing more will harden).
    fn quiescent(&self) -> bool {
        self.dbs.iter().flatten().all(|db| {
            db.is_failed()
                || (!db.commit_in_progress()
                    && db.log.lsn_hardened() >= db.log.lsn_appended()
                    && !db.log.write_in_flight())
        })
    }

    /// Replies are all sent (or the grace period for clients that do not read is over).
    fn replies_sent(&self) -> bool {
        let grace_over = self.stop_began.is_some_and(|t| t.elapsed() > STOP_SEND_GRACE);
        grace_over
            || self
                .conns
                .values()
                .all(|c| c.send_len == 0 && c.output.is_empty() && c.replies.iter().all(|r| r.wait == Lsn::ZERO))
    }
}

fn queue_now(conn: &mut Conn, reply: Reply) {
    let protocol = conn.session.protocol;
    conn.push_reply(&reply, protocol, 0, Lsn::ZERO);
}

impl ShardWork for ServerShard {
    fn start(&mut self, ring: &mut Ring) -> Result<()> {
        self.accept_next(ring)?;
        self.start_endpoint(ring)?;
        ring.timeout(TIMER_PERIOD, token(KIND_TIMER, 0))?;
        Ok(())
    }

    fn before_sleep(&mut self, ring: &mut Ring) -> Result<bool> {
        // The log write first: it is what commits wait for, and the device takes requests in order.
        for db in self.dbs.iter_mut().flatten() {
            db.log.submit(ring)?;
        }
        self.submit_page_reads(ring)?;
        for i in 0..self.dbs.len() {
            let Some(db) = self.dbs[i].as_mut().filter(|d| !d.is_failed()) else { continue };
            let stepped = db.checkpoint_step(ring, checkpoint_token(i));
            if let Err(e) = stepped.and_then(|_| db.cleaning_step(ring, checkpoint_token(i))) {
                eprintln!("mirrorlog: database {i}: checkpoint failed: {e}; the database accepts no more commands");
                self.fail_waiting_replies(ring, i)?;
            }
        }
        for db in self.dbs.iter_mut().flatten() {
            db.log.submit(ring)?;
        }
        self.after_submit(ring)?;
        if self.stopping && self.quiescent() {
            // Every commit is durable: send every reply, wait for the sends, checkpoint, stop.
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                self.flush(ring, id)?;
            }
            let redo_wait_over = self.stop_began.is_some_and(|t| t.elapsed() > STOP_SEND_GRACE);
            if self.replies_sent() && (self.redo_caught_up() || redo_wait_over) {
                self.stop_links();
                for (i, db) in self.dbs.iter_mut().enumerate() {
                    if let Some(db) = db.as_mut().filter(|d| !d.is_failed() && !d.is_restoring()) {
                        db.checkpoint_through(ring, checkpoint_token(i))?;
                    }
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn idle_poll(&self) -> Duration {
        self.config.idle_poll
    }

    fn complete(&mut self, ring: &mut Ring, c: Completion) -> Result<()> {
        if c.kind == CompletionKind::Message {
            self.on_peer_migrations(ring)?;
            return self.on_migrations(ring);
        }
        let id = c.token & ID_MASK;
        match c.token >> KIND_SHIFT {
            KIND_ACCEPT => self.on_accept(ring, c),
            KIND_RECV => self.on_recv(ring, id, c),
            KIND_SEND => self.on_send(ring, id, c),
            KIND_LOG => self.on_log(ring, id as usize, c),
            KIND_TIMER => self.on_timer(ring),
            KIND_CHECKPOINT => self.on_checkpoint(ring, (id >> 32) as usize, c),
            KIND_PAGE_READ => self.on_page_read(ring, (id >> 32) as usize, PageId(id & 0xffff_ffff), c),
            peer::KIND_PEER_ACCEPT..=peer::KIND_PEER_SEND => self.peer_complete(ring, c),
            KIND_MSG_SENT => {
                if c.result < 0 {
                    eprintln!(
                        "mirrorlog: waking another shard failed: {}",
                        std::io::Error::from_raw_os_error(-c.result)
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
