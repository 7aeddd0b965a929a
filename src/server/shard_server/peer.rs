//! The mirroring endpoint on the server's shards: connections between partners, the principal's
//! log shipping and the mirror's hardening, acknowledgement and redo dispatch — all on the ring
//! of the shard that owns the database.
//!
//! Principal: dials the mirror's endpoint, authenticates (`wire::handshake`), learns the mirror's
//! hardened LSN and sends the log from there: first from the segment files (catch-up), then each
//! group-commit batch as it is written — one buffer, two consumers: the block the disk write
//! reads is the block the zero-copy send reads (`LogWriter::take_shipped`,
//! `Ring::send_zc_shared`). Acknowledgements drive the sans-IO `PrincipalSession`, whose
//! `commit_lsn` decides which replies may be sent.
//!
//! Mirror: accepts the principal, verifies every record, appends it at the same LSN
//! (`LogWriter::append_replica`), acknowledges only what its own log hardened, and hands whole
//! hardened transactions to the redo pipeline.
//!
//! Sends on one connection are strictly sequential (one operation in flight): two sends in
//! flight on one socket may complete in any order (io_uring does not order independent
//! requests; IOSQE_IO_LINK would), which would interleave frames.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::ring::{Completion, CompletionKind, Ring};
use crate::mirroring::page_rewind::{self, RewindList};
use crate::mirroring::redo_pipeline::{RedoPipeline, RedoRecord};
use crate::mirroring::session::{Command, Event, MirroringState, PrincipalSession, SafetyLevel};
use crate::mirroring::settings::{self, MirroringSettings, Role};
use crate::mirroring::witness_client::{principal_lost, PartnerView, WitnessClient};
use crate::server::resp::Reply;
use crate::store::page::PageId;
use crate::store::redo;
use crate::wal::log_writer::ShippedBatch;
use crate::wal::record::{self, RecordCheck};
use crate::wal::{AppendError, DbId, Epoch, Lsn, RecordKind};
use crate::wire::frame::{self, FrameHeader, FrameKind, Parsed};
use crate::wire::handshake::{self, Acceptor, AcceptorStep, Dialer, DialerStep, LogTail, ReadyInfo};
use crate::witness::state::ReportRole;

use super::{token, ServerShard, ID_MASK, KIND_SHIFT};

pub(super) const KIND_PEER_ACCEPT: u64 = 8;
pub(super) const KIND_PEER_CONNECT: u64 = 9;
pub(super) const KIND_PEER_RECV: u64 = 10;
pub(super) const KIND_PEER_SEND: u64 = 11;

/// Receive size of a mirroring connection.
const PEER_RECV_SIZE: usize = 256 * 1024;
/// Unprocessed input beyond which a connection stops receiving (the mirror's log is full).
const PEER_INPUT_MAX: usize = 2 * frame::FRAME_BODY_MAX + 2 * frame::FRAME_HEADER_SIZE;
/// Frames queued on one connection at most; live batches beyond it are left to catch-up.
const PEER_SEND_QUEUE_MAX: usize = 16;
/// Log sent and not yet acknowledged, at most (the in-flight window).
pub const SEND_WINDOW_BYTES: u64 = 16 << 20;
/// Largest catch-up read.
const CATCH_UP_CHUNK: usize = 1 << 20;
/// Between two dials of an unreachable mirror.
const DIAL_RETRY: Duration = Duration::from_millis(500);
/// Endpoint connections not authenticated yet, at most; more are closed at once.
const UNAUTHENTICATED_MAX: usize = 64;
/// Record bodies a mirror holds for redo, at most; beyond it it stops receiving until redo
/// catches up (the principal's window then fills and it falls back to the files).
const REDO_PENDING_BYTES_MAX: usize = 64 << 20;
/// Redo ring slots per worker.
const REDO_RING_CAPACITY: usize = 1 << 14;
/// Pages each redo worker caches at least (they share the database's --cache-size budget).
const REDO_CACHE_PAGES_PER_WORKER_MIN: usize = 1024;

const _: () = assert!(CATCH_UP_CHUNK <= frame::FRAME_BODY_MAX);
const _: () = assert!(crate::constants::LOG_BUFFER_SIZE <= frame::FRAME_BODY_MAX);
const _: () = assert!(REDO_RING_CAPACITY.is_power_of_two());

/// An authenticated endpoint connection handed to the shard that owns its database.
pub struct PeerMigration {
    pub fd: OwnedFd,
    pub input: Vec<u8>,
    pub version: u16,
    pub hello: handshake::Hello,
    pub peer: String,
}

enum Phase {
    Connecting,
    Dialing(Box<Dialer>),
    Accepting(Box<Acceptor>),
    Ready { version: u16, compress: bool },
}

enum Outgoing {
    Bytes(Vec<u8>),
    /// A live batch: the frame header, then the batch's bytes straight from the log buffer.
    Live {
        header: Vec<u8>,
        batch: ShippedBatch,
    },
}

struct Sending {
    item: Outgoing,
    /// Bytes of the item already sent (a live frame counts its header, then its body).
    offset: usize,
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Bytes(bytes) => bytes.len(),
            Outgoing::Live { header, batch } => header.len() + batch.bytes().len(),
        }
    }
}

pub(super) struct PeerConn {
    fd: OwnedFd,
    db: Option<usize>,
    phase: Phase,
    input: Vec<u8>,
    receiving: bool,
    out: VecDeque<Outgoing>,
    sending: Option<Sending>,
    /// Operations in flight on the socket (the connection is dropped only at zero).
    ops: usize,
    closed: bool,
    /// Closed, but what is queued (a REFUSE) is still sent before the socket is shut down.
    linger: bool,
    shut_down: bool,
    migrate_to: Option<usize>,
    peer: String,
    /// When the connection was made: it must be authenticated within the partner timeout.
    started: Instant,
    /// Receive and send buffers between operations (a fresh 256 KiB buffer per receive costs
    /// an mmap, zeroing and a munmap: measurable on every FULL commit).
    spare_recv: Option<AlignedBuf>,
    spare_send: Option<AlignedBuf>,
    /// A connection to the witness (not to the partner).
    witness: bool,
}

impl PeerConn {
    fn new(fd: OwnedFd, db: Option<usize>, phase: Phase, peer: String) -> Self {
        Self {
            fd,
            db,
            phase,
            input: Vec::new(),
            receiving: false,
            out: VecDeque::new(),
            sending: None,
            ops: 0,
            closed: false,
            linger: false,
            shut_down: false,
            migrate_to: None,
            peer,
            started: Instant::now(),
            spare_recv: None,
            spare_send: None,
            witness: false,
        }
    }

    fn ready(&self) -> bool {
        !self.closed && matches!(self.phase, Phase::Ready { .. })
    }

    fn version(&self) -> u16 {
        match self.phase {
            Phase::Ready { version, .. } => version,
            _ => frame::PROTOCOL_VERSION_MIN,
        }
    }
}

pub(super) struct PrincipalLink {
    settings: MirroringSettings,
    partner: SocketAddr,
    session: PrincipalSession,
    conn: Option<u64>,
    next_dial: Instant,
    /// The next log position to send.
    lsn_sent: Lsn,
    /// The last batch went out live (not from the files).
    live: bool,
    last_ping: Instant,
    last_dial_error: Option<String>,
    frames_live: u64,
    frames_catch_up: u64,
    bytes_sent: u64,
    /// Why this fenced principal could not rejoin as mirror (it does not try again).
    rejoin_refused: Option<String>,
    /// A manual failover in progress (PENDING_FAILOVER).
    failover: Option<Failover>,
    /// Pages a rejoining mirror asked for (page rewind), to answer on this connection.
    page_requests: VecDeque<PageId>,
    page_requests_conn: Option<u64>,
}

impl PrincipalLink {
    /// Persists the link's settings. Once FAILOVER is sent the outcome is in doubt, and a restart
    /// must come back on the safe side, as the mirror at the new role sequence (the outcome the
    /// runtime takes too): so from then on the in-doubt mirror settings are what is stored.
    fn persist(&self, dir: &std::path::Path) -> Result<()> {
        match self.failover {
            Some(Failover::Sent { epoch, .. }) => MirroringSettings::new(
                Role::Mirror,
                self.settings.partner.clone(),
                self.settings.safety,
                epoch.0,
                self.settings.witness.clone(),
            )
            .store(dir),
            _ => self.settings.store(dir),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Failover {
    /// New commands wait while the log drains and the mirror hardens all of it.
    Draining { since: Instant },
    /// FAILOVER sent at this LSN: the mirror takes role sequence `epoch`.
    Sent { lsn: Lsn, epoch: Epoch, since: Instant },
}

pub(super) struct MirrorLink {
    settings: MirroringSettings,
    conn: Option<u64>,
    /// Records appended to this log, waiting to be hardened and dispatched.
    pending: VecDeque<RedoRecord>,
    /// Bytes of record bodies in `pending` and `tx`.
    pending_bytes: usize,
    /// Page records of the transaction being gathered (its commit not dispatched yet).
    tx: Vec<RedoRecord>,
    pipeline: Option<RedoPipeline>,
    lsn_acked: Lsn,
    /// End of the last transaction handed to the pipeline, and the last mark set.
    lsn_dispatched: Lsn,
    lsn_marked: Lsn,
    principal_state: Option<MirroringState>,
    principal_safety: Option<SafetyLevel>,
    /// The principal said SYNCHRONIZED the last time it was heard (kept after the link is lost:
    /// the witness grants a failover only to a mirror that was synchronized).
    last_synchronized: bool,
    last_heard: Instant,
    frames_received: u64,
    frames_rejected: u64,
    /// A frame waits for log space.
    stalled: bool,
    failure: Option<String>,
    /// Records appended and not yet hardened (end LSN, identity), and the last hardened one: the
    /// principal checks it when it connects.
    tails: VecDeque<(Lsn, LogTail)>,
    tail_hardened: LogTail,
    /// A rejoin's page rewind in progress (`mirroring::page_rewind`): until every listed page is
    /// fetched, nothing the principal ships is appended and nothing is redone.
    rewind: Option<RewindList>,
    /// The connection the pages were asked on.
    rewind_asked_on: Option<u64>,
    rewind_data: Option<crate::store::data_file::DataFile>,
    /// Pages rewound by this link.
    rewound_pages: u64,
}

/// A database's connection to the witness and what the witness last said.
pub(super) struct WitnessLink {
    addr: SocketAddr,
    conn: Option<u64>,
    next_dial: Instant,
    last_dial_error: Option<String>,
    /// The protocol's state: reports, lease, exposure record (shared with the simulator).
    client: WitnessClient,
}

impl WitnessLink {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None, next_dial: Instant::now(), last_dial_error: None, client: WitnessClient::new() }
    }

    fn lease_valid(&self, now: Instant) -> bool {
        self.client.lease_valid(now)
    }
}

pub(super) enum Link {
    Principal(Box<PrincipalLink>),
    Mirror(Box<MirrorLink>),
}

fn db_id_of(db: usize) -> DbId {
    DbId(db as u64 + 1)
}

impl ServerShard {
    /// The endpoint's listener (shard 0 only) and the address partners reach this server's
    /// endpoint at (every shard: a failover tells the new principal where its mirror is).
    pub fn set_endpoint(&mut self, listener: Option<OwnedFd>, addr: Option<SocketAddr>) {
        self.endpoint = listener;
        self.endpoint_addr = addr;
    }

    /// Reads each owned database's mirroring settings (creating them from the command line's
    /// --partner / --restoring) and sets up its link.
    pub(super) fn init_links(&mut self) -> Result<()> {
        let m = self.config.mirroring.clone();
        let m_witness = m.witness.clone();
        for db in 0..self.dbs.len() {
            let Some(database) = self.dbs[db].as_mut() else { continue };
            let dir = database.dir().to_path_buf();
            let mut settings = MirroringSettings::load(&dir)?;
            if settings.is_none() && database.is_restoring() {
                if database.log.lsn_hardened() > Lsn::ZERO && !database.log.segment_paths().is_empty() {
                    // An existing mirror copy without settings is fine only if it is empty.
                    let pages = crate::store::btree::exists(database.pool()).unwrap_or(true);
                    if pages {
                        return Err(Error::Config(format!(
                            "database {db} holds data of its own; --restoring needs an empty database or a mirror copy"
                        )));
                    }
                }
                settings = Some(MirroringSettings::new(
                    Role::Mirror,
                    m.partner.clone().unwrap_or_default(),
                    m.safety,
                    database.log.epoch().0,
                    m_witness.clone(),
                ));
                settings.as_ref().expect("set").store(&dir)?;
            } else if let (None, Some(partner), false) = (&settings, &m.partner, database.is_restoring()) {
                settings = Some(MirroringSettings::new(
                    Role::Principal,
                    partner.clone(),
                    m.safety,
                    database.log.epoch().0,
                    m_witness.clone(),
                ));
                settings.as_ref().expect("set").store(&dir)?;
            } else if let (Some(s), Some(partner)) = (settings.as_mut(), &m.partner) {
                // Flags given at start-up win over the persisted partner and safety; a
                // suspension stays until RESUME.
                if s.role == Role::Principal && (s.partner != *partner || s.safety != m.safety) {
                    s.partner = partner.clone();
                    s.safety = m.safety;
                    s.store(&dir)?;
                }
            }
            if let (Some(s), Some(witness)) = (settings.as_mut(), &m.witness) {
                if s.witness.as_ref() != Some(witness) {
                    s.witness = Some(witness.clone());
                    s.store(&dir)?;
                }
            }
            if let Some(witness) = settings.as_ref().and_then(|s| s.witness.as_ref()) {
                self.witness_links[db] = Some(WitnessLink::new(settings::parse_partner(witness)?));
            }
            let Some(settings) = settings else { continue };
            if m.key.is_none() {
                return Err(Error::Config(format!(
                    "database {db} is mirrored ({} of {}) but no --endpoint-key-file was given",
                    settings.role, settings.partner
                )));
            }
            let link = match settings.role {
                Role::Principal => self.principal_link(db, settings)?,
                Role::Mirror => self.mirror_link(db, settings)?,
            };
            self.links[db] = Some(link);
        }
        Ok(())
    }

    fn principal_link(&mut self, db: usize, settings: MirroringSettings) -> Result<Link> {
        let partner = settings::parse_partner(&settings.partner)?;
        let database = self.dbs[db].as_mut().expect("owned");
        database.log.set_shipping(true);
        database.log_checkpoint_records = true;
        // The mirror's hardened LSN is unknown until it connects: keep everything still here.
        let first = database.log.first_retained_lsn();
        database.log.set_retention_hold(Some(first));
        let session =
            PrincipalSession::new(settings.safety, self.config.mirroring.partner_timeout, settings.suspended.clone());
        if let Some(reason) = &settings.suspended {
            eprintln!("mirrorlog: database {db}: mirroring SUSPENDED ({reason}); MIRROR RESUME continues it");
        }
        Ok(Link::Principal(Box::new(PrincipalLink {
            settings,
            partner,
            session,
            conn: None,
            next_dial: Instant::now(),
            lsn_sent: Lsn::ZERO,
            live: false,
            last_ping: Instant::now(),
            last_dial_error: None,
            frames_live: 0,
            frames_catch_up: 0,
            bytes_sent: 0,
            rejoin_refused: None,
            failover: None,
            page_requests: VecDeque::new(),
            page_requests_conn: None,
        })))
    }

    fn mirror_link(&mut self, db: usize, settings: MirroringSettings) -> Result<Link> {
        let database = self.dbs[db].as_mut().expect("owned");
        // Redo is complete up to the last commit; a transaction the log ends inside is redone
        // once the rest of it arrives, so the watermark starts before its first record.
        let incomplete_from = database
            .redo_report
            .incomplete_transaction
            .first()
            .map(|(_, body, end)| Lsn(end.0 - record::record_size(body.len()) as u64));
        let redone = incomplete_from.unwrap_or(database.log.lsn_hardened());
        let pipeline = RedoPipeline::start(
            &database.dir().join("data.pages"),
            db_id_of(db),
            redone,
            self.config.mirroring.redo_workers,
            // The mirror's pages live in its redo workers, not in the buffer pool: they get the
            // database's share of --cache-size, as the principal's pool does.
            (self.config.cache_size as usize
                / crate::store::page::PAGE_SIZE
                / self.config.databases
                / self.config.mirroring.redo_workers)
                .max(REDO_CACHE_PAGES_PER_WORKER_MIN),
            REDO_RING_CAPACITY,
        )?;
        // A transaction the log ends inside continues when the rest arrives from the principal.
        let tx: Vec<RedoRecord> = database
            .redo_report
            .incomplete_transaction
            .drain(..)
            .filter(|(kind, _, _)| *kind == redo::PAGE_IMAGE || *kind == redo::PAGE_DIFF)
            .map(|(kind, body, end_lsn)| RedoRecord { kind, body, end_lsn })
            .collect();
        let hardened = database.log.lsn_hardened();
        let rewind = RewindList::load(database.dir())?;
        if let Some(list) = &rewind {
            eprintln!(
                "mirrorlog: database {db}: a page rewind is pending: {} page(s) to fetch from the principal",
                list.pages.len()
            );
        }
        // Everything appended is hardened here (at start-up, and when a principal hands over).
        let tail_hardened = database
            .log
            .last_record()
            .map(|h| LogTail { lsn: h.lsn, body_crc: h.body_crc, body_len: h.body_len, kind: h.kind.0 })
            .unwrap_or_default();
        Ok(Link::Mirror(Box::new(MirrorLink {
            settings,
            conn: None,
            pending: VecDeque::new(),
            pending_bytes: tx.iter().map(|r: &RedoRecord| r.body.len()).sum(),
            tx,
            pipeline: Some(pipeline),
            lsn_acked: hardened,
            lsn_dispatched: redone,
            lsn_marked: Lsn::ZERO,
            principal_state: None,
            principal_safety: None,
            last_synchronized: false,
            last_heard: Instant::now(),
            frames_received: 0,
            frames_rejected: 0,
            stalled: false,
            failure: None,
            tails: VecDeque::new(),
            tail_hardened,
            rewind,
            rewind_asked_on: None,
            rewind_data: None,
            rewound_pages: 0,
        })))
    }

    /// Commits of database `db` whose end LSN is at or below this may be answered.
    pub(super) fn commit_lsn(&self, db: usize) -> Lsn {
        let hardened = self.dbs[db].as_ref().expect("owned").log.lsn_hardened();
        match (&self.links[db], &self.witness_links[db]) {
            // A principal that learned of a newer role sequence releases nothing its mirror did
            // not harden (those commits may be cut when it rejoins).
            (Some(Link::Principal(link)), _) if link.settings.fenced_by.is_some() => {
                hardened.min(link.session.lsn_mirror_hardened())
            }
            // With a witness, running exposed needs its record of it and a valid lease.
            (Some(Link::Principal(link)), Some(w)) => w.client.commit_lsn(&link.session, hardened, Instant::now()),
            (Some(Link::Principal(link)), _) => link.session.commit_lsn(hardened),
            _ => hardened,
        }
    }

    /// A principal with a witness that has neither its mirror nor the witness's lease has no
    /// quorum: it stops serving (SQL Server's rule; the mirror may be taking over).
    fn has_no_quorum(&self, db: usize) -> bool {
        match (&self.links[db], &self.witness_links[db]) {
            (Some(Link::Principal(link)), Some(w)) => {
                let mirror = link.conn.is_some_and(|id| self.peers.get(&id).is_some_and(|c| c.ready()));
                w.client.has_no_quorum(mirror, Instant::now())
            }
            _ => false,
        }
    }

    /// Connects database `db` to its witness (retrying, never failing the shard).
    fn dial_witness(&mut self, ring: &mut Ring, db: usize) -> Result<()> {
        let Some(w) = self.witness_links[db].as_mut() else { return Ok(()) };
        let now = Instant::now();
        if w.conn.is_some() || now < w.next_dial {
            return Ok(());
        }
        w.next_dial = now + DIAL_RETRY;
        let addr = w.addr;
        let Ok(fd) = crate::io::net::tcp_socket(addr) else { return Ok(()) };
        let id = self.next_peer_id;
        self.next_peer_id += 1;
        let mut conn = PeerConn::new(fd, Some(db), Phase::Connecting, addr.to_string());
        conn.witness = true;
        if ring.connect(conn.fd.as_raw_fd(), addr, token(KIND_PEER_CONNECT, id)).is_err() {
            return Ok(());
        }
        conn.ops = 1;
        w.conn = Some(id);
        self.peers.insert(id, conn);
        Ok(())
    }

    /// Sends database `db`'s report to its witness (every timer tick).
    fn report_to_witness(&mut self, db: usize, now: Instant) {
        let Some(w) = self.witness_links[db].as_mut() else { return };
        let Some(id) = w.conn else { return };
        let Some(conn) = self.peers.get_mut(&id).filter(|c| c.ready()) else { return };
        let database = self.dbs[db].as_ref().expect("owned");
        let own = self.endpoint_addr.map(|a| a.to_string()).unwrap_or_default();
        let timeout = self.config.mirroring.partner_timeout;
        let (view, partner) = match &self.links[db] {
            Some(Link::Principal(link)) => (
                PartnerView::Principal {
                    role_sequence: database.log.epoch().0,
                    synchronized: link.session.state() == MirroringState::Synchronized,
                    exposed: link.session.is_exposed(),
                },
                // The mirror's own endpoint (it says so in its pongs), not the address dialed,
                // which may be a proxy: both partners must name the session alike.
                link.settings.partner_endpoint.clone().unwrap_or_else(|| link.partner.to_string()),
            ),
            Some(Link::Mirror(link)) => (
                PartnerView::Mirror {
                    role_sequence: database.log.epoch().0,
                    synchronized: link.last_synchronized && link.principal_safety == Some(SafetyLevel::Full),
                    principal_lost: principal_lost(link.conn.is_some(), link.last_heard, now, timeout),
                },
                normalized_partner(&link.settings.partner),
            ),
            None => return,
        };
        if own.is_empty() || partner.is_empty() {
            return; // the session cannot be named yet (the partner's endpoint is not known)
        }
        // Numbers grow across this server's restarts too: the witness orders reports by them.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let (number, report) = w.client.report(view, clock, now);
        let body = crate::witness::report::encode_report(&crate::witness::report::ReportBody {
            report,
            own_endpoint: own,
            partner_endpoint: partner,
            client_addr: std::net::SocketAddr::new(self.config.listen.ip(), self.tcp_port).to_string(),
        });
        let bytes = frame::encode_frame(
            conn.version(),
            FrameKind::WitnessReport,
            db_id_of(db),
            database.log.epoch(),
            Lsn(number),
            Lsn(number),
            &body,
            false,
        );
        conn.out.push_back(Outgoing::Bytes(bytes));
    }

    /// The witness answered report number `header.lsn_to`.
    fn witness_answer(
        &mut self,
        _id: u64,
        db: usize,
        header: &FrameHeader,
        body: &[u8],
    ) -> std::result::Result<(), String> {
        if header.kind == FrameKind::Refuse {
            return Err(format!("the witness refused: {}", String::from_utf8_lossy(body)));
        }
        if header.kind != FrameKind::WitnessAnswer {
            return Err(format!("unexpected {:?} frame from the witness", header.kind));
        }
        let answer = crate::witness::report::decode_answer(body)?;
        let timeout = self.config.mirroring.partner_timeout;
        let ours = self.dbs[db].as_ref().expect("owned").log.epoch();
        let role = match &self.links[db] {
            Some(Link::Principal(_)) => ReportRole::Principal,
            Some(Link::Mirror(_)) => ReportRole::Mirror,
            None => return Ok(()),
        };
        let Some(w) = self.witness_links[db].as_mut() else { return Ok(()) };
        let effects = w.client.on_answer(header.lsn_to.0, answer, role, ours.0, timeout);
        let exposed_waiting = matches!(&self.links[db], Some(Link::Principal(l)) if l.session.is_exposed());
        if exposed_waiting && w.client.exposure_recorded() {
            self.release_dbs.push(db); // held commits may be answered now
        }
        if let Some(by) = effects.fence {
            self.pending_fences.push((db, Epoch(by)));
        }
        if let Some(granted) = effects.take_over {
            self.pending_auto_failovers.push((db, Epoch(granted)));
        }
        Ok(())
    }

    pub(super) fn start_endpoint(&mut self, ring: &mut Ring) -> Result<()> {
        if let Some(listener) = &self.endpoint {
            ring.accept(listener.as_raw_fd(), token(KIND_PEER_ACCEPT, 0))?;
        }
        Ok(())
    }

    pub(super) fn peer_complete(&mut self, ring: &mut Ring, c: Completion) -> Result<()> {
        let id = c.token & ID_MASK;
        match c.token >> KIND_SHIFT {
            KIND_PEER_ACCEPT => self.on_peer_accept(ring, c),
            KIND_PEER_CONNECT => self.on_peer_connect(ring, id, c),
            KIND_PEER_RECV => self.on_peer_recv(ring, id, c),
            KIND_PEER_SEND => self.on_peer_send(ring, id, c),
            _ => Ok(()),
        }
    }

    fn on_peer_accept(&mut self, ring: &mut Ring, c: Completion) -> Result<()> {
        if self.endpoint.is_none() {
            if c.result >= 0 {
                // SAFETY: a successful accept returns a new descriptor we own.
                drop(unsafe { OwnedFd::from_raw_fd(c.result) });
            }
            return Ok(());
        }
        if c.result >= 0 {
            // SAFETY: a successful accept returns a new descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
            let unauthenticated =
                self.peers.values().filter(|c| !c.closed && !matches!(c.phase, Phase::Ready { .. })).count();
            if unauthenticated >= UNAUTHENTICATED_MAX {
                eprintln!(
                    "mirrorlog: endpoint: {unauthenticated} connections are still authenticating; refusing {:?}",
                    c.peer
                );
                drop(fd);
                return self.start_endpoint(ring);
            }
            let _ = crate::io::net::set_nodelay(fd.as_raw_fd());
            let key = self.config.mirroring.key.clone().expect("the endpoint listens only with a key");
            let acceptor = Acceptor::new(&key, handshake::random_nonce());
            let peer = c.peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
            let id = self.next_peer_id;
            self.next_peer_id += 1;
            self.peers.insert(id, PeerConn::new(fd, None, Phase::Accepting(Box::new(acceptor)), peer));
            self.post_peer_recv(ring, id)?;
        } else {
            // Out of descriptors, say: accept again on the next timer tick, not in a busy loop.
            eprintln!("mirrorlog: endpoint accept failed: {}", std::io::Error::from_raw_os_error(-c.result));
            self.endpoint_accept_failed = true;
            return Ok(());
        }
        self.start_endpoint(ring)
    }

    /// Connections handed over by the shard that accepted them.
    pub(super) fn on_peer_migrations(&mut self, ring: &mut Ring) -> Result<()> {
        while let Some(m) = self.shared.peer_inboxes[self.index].pop() {
            let id = self.next_peer_id;
            self.next_peer_id += 1;
            let mut conn = PeerConn::new(m.fd, None, Phase::Connecting, m.peer);
            conn.input = m.input;
            self.peers.insert(id, conn);
            self.mirror_accept(id, m.version, m.hello);
            self.process_peer_input(id);
            self.post_peer_recv(ring, id)?;
        }
        Ok(())
    }

    fn post_peer_recv(&mut self, ring: &mut Ring, id: u64) -> Result<()> {
        let Some(conn) = self.peers.get_mut(&id) else { return Ok(()) };
        if conn.receiving || conn.closed || conn.migrate_to.is_some() || conn.input.len() > PEER_INPUT_MAX {
            return Ok(());
        }
        if let Some(Link::Mirror(link)) = conn.db.and_then(|db| self.links[db].as_ref()) {
            if link.pending_bytes > REDO_PENDING_BYTES_MAX {
                return Ok(()); // redo is behind: `mirror_dispatch` receives again
            }
        }
        conn.receiving = true;
        conn.ops += 1;
        let buf = conn.spare_recv.take().unwrap_or_else(|| AlignedBuf::new(PEER_RECV_SIZE));
        ring.recv(conn.fd.as_raw_fd(), buf, token(KIND_PEER_RECV, id))?;
        Ok(())
    }

    fn on_peer_recv(&mut self, ring: &mut Ring, id: u64, mut c: Completion) -> Result<()> {
        let Some(conn) = self.peers.get_mut(&id) else { return Ok(()) };
        conn.receiving = false;
        conn.ops -= 1;
        if conn.closed {
            self.reap_peer(id);
            return Ok(());
        }
        if c.result <= 0 {
            let why = if c.result == 0 {
                "the partner closed the connection".to_string()
            } else {
                std::io::Error::from_raw_os_error(-c.result).to_string()
            };
            self.close_peer(id, &why);
            self.reap_peer(id);
            return Ok(());
        }
        let buf = c.buf.take().expect("a receive returns its buffer");
        conn.input.extend_from_slice(&buf[..c.result as usize]);
        conn.spare_recv = Some(buf);
        self.process_peer_input(id);
        self.try_migrate_peer(ring, id)?;
        self.post_peer_recv(ring, id)
    }

    /// Handles every complete frame in the connection's input.
    fn process_peer_input(&mut self, id: u64) {
        let mut used = 0;
        loop {
            let Some(conn) = self.peers.get_mut(&id) else { return };
            if conn.closed || conn.migrate_to.is_some() {
                break;
            }
            let (header, total) = match frame::parse(&conn.input[used..]) {
                Ok(Parsed::Incomplete { .. }) => break,
                Ok(Parsed::Frame { header, total_len }) => (header, total_len),
                Err(e) => {
                    let reason = format!("bad frame: {e}");
                    self.refuse_peer(id, &reason);
                    return;
                }
            };
            let bytes = conn.input[used..used + total].to_vec();
            match self.handle_frame(id, &header, &bytes) {
                Ok(true) => used += total,
                Ok(false) => break, // waits (the mirror's log is full): the frame stays
                Err(reason) => {
                    self.refuse_peer(id, &reason);
                    return;
                }
            }
        }
        if let Some(conn) = self.peers.get_mut(&id) {
            conn.input.drain(..used.min(conn.input.len()));
        }
    }

    /// One frame; Ok(false) when it must be handled again later (nothing of it was lost).
    fn handle_frame(&mut self, id: u64, header: &FrameHeader, bytes: &[u8]) -> std::result::Result<bool, String> {
        let body = frame::body_bytes(header, bytes).map_err(|e| format!("bad frame body: {e}"))?;
        let conn = self.peers.get_mut(&id).expect("present");
        match &mut conn.phase {
            Phase::Connecting => Err("a frame before the connection was set up".into()),
            Phase::Dialing(dialer) => match dialer.on_frame(header, &body).map_err(|e| {
                if let handshake::HandshakeError::Refused(reason) = &e {
                    if let Some(rest) = reason.strip_prefix("FENCED ") {
                        let mut words = rest.split(':').next().unwrap_or("").split(' ');
                        let by = words.next().and_then(|w| w.parse().ok());
                        let start = words.next().and_then(|w| w.parse::<u64>().ok()).filter(|&s| s > 0);
                        if let Some(by) = by {
                            let db = conn.db.expect("dialed");
                            self.pending_fences.push((db, Epoch(by)));
                            if let Some(start) = start {
                                self.pending_rejoins.push((db, Epoch(by), Lsn(start)));
                            }
                        }
                    }
                }
                e.to_string()
            })? {
                DialerStep::Send(proof) => {
                    conn.out.push_back(Outgoing::Bytes(proof));
                    Ok(true)
                }
                DialerStep::Ready { version, info } => {
                    let db = conn.db.expect("a dialed connection has its database");
                    let compress = self.config.mirroring.log_compression && version >= frame::PROTOCOL_VERSION_LZ4;
                    conn.phase = Phase::Ready { version, compress };
                    if conn.witness {
                        if let Some(w) = self.witness_links[db].as_mut() {
                            w.last_dial_error = None;
                            eprintln!("mirrorlog: database {db}: connected to the witness at {}", w.addr);
                        }
                        return Ok(true);
                    }
                    self.principal_connected(id, db, info)?;
                    Ok(true)
                }
            },
            Phase::Accepting(acceptor) => match acceptor.on_frame(header, &body) {
                Ok(AcceptorStep::Send(challenge)) => {
                    conn.out.push_back(Outgoing::Bytes(challenge));
                    Ok(true)
                }
                Ok(AcceptorStep::Authenticated(hello)) => {
                    let version = hello.version;
                    let db = hello.db_id.0.wrapping_sub(1) as usize;
                    if db >= self.dbs.len() {
                        return Err(format!("no database {} here", hello.db_id));
                    }
                    let owner = self.shared.owner(db);
                    if owner != self.index {
                        conn.migrate_to = Some(owner);
                        conn.phase = Phase::Connecting;
                        self.pending_peer_hello.insert(id, hello);
                        return Ok(true);
                    }
                    conn.phase = Phase::Connecting;
                    self.mirror_accept(id, version, hello);
                    Ok(true)
                }
                Ok(AcceptorStep::Refuse { frame, error }) => {
                    conn.out.push_back(Outgoing::Bytes(frame));
                    Err(error.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Phase::Ready { .. } if conn.witness => {
                let db = conn.db.expect("a witness connection has its database");
                self.witness_answer(id, db, header, &body).map(|()| true)
            }
            Phase::Ready { .. } => {
                let db = conn.db.expect("a ready connection has its database");
                self.ready_frame(id, db, header, &body)
            }
        }
    }

    /// Hands an authenticated endpoint connection to the shard owning its database, once no
    /// operation is in flight on it.
    fn try_migrate_peer(&mut self, ring: &mut Ring, id: u64) -> Result<()> {
        let Some(conn) = self.peers.get(&id) else { return Ok(()) };
        let Some(target) = conn.migrate_to else { return Ok(()) };
        if conn.ops > 0 || conn.sending.is_some() || !conn.out.is_empty() {
            return Ok(());
        }
        let conn = self.peers.remove(&id).expect("present");
        let hello = self.pending_peer_hello.remove(&id).expect("kept with migrate_to");
        let version = hello.version;
        let migration = PeerMigration { fd: conn.fd, input: conn.input, version, hello, peer: conn.peer };
        match self.shared.peer_inboxes[target].push(migration) {
            Ok(()) => {
                ring.msg_ring(self.shared.ring_fd(target), 2, token(super::KIND_MSG_SENT, 0))?;
            }
            Err(back) => {
                eprintln!("mirrorlog: endpoint: shard {target} cannot take a connection now; dropping it");
                drop(back);
            }
        }
        Ok(())
    }

    // ---- principal -------------------------------------------------------------------------

    fn principal_connected(&mut self, id: u64, db: usize, info: ReadyInfo) -> std::result::Result<(), String> {
        let database = self.dbs[db].as_ref().expect("owned");
        let Some(Link::Principal(link)) = self.links[db].as_mut() else {
            return Err("this database is no longer a principal".into());
        };
        if info.epoch > database.log.epoch() {
            self.pending_fences.push((db, info.epoch));
            return Err(format!("the mirror acts at role sequence {}: this principal is stale", info.epoch.0));
        }
        if info.segment_size != self.config.segment_size {
            return Err(format!(
                "the mirror's log segments are {} bytes, this principal's {}; both must use the same --segment-size",
                info.segment_size, self.config.segment_size
            ));
        }
        if info.lsn_hardened > database.log.lsn_hardened() {
            let reason = format!(
                "the mirror has log up to {} beyond this principal's {}: the copies diverged; restore the mirror",
                info.lsn_hardened,
                database.log.lsn_hardened()
            );
            let cmds = link.session.on_event(Event::Suspend { reason: reason.clone() });
            self.deferred_session_commands.push((db, cmds));
            return Err(reason);
        }
        if let Err(reason) = check_tail(database, &info) {
            let cmds = link.session.on_event(Event::Suspend { reason: reason.clone() });
            self.deferred_session_commands.push((db, cmds));
            return Err(reason);
        }
        link.conn = Some(id);
        link.lsn_sent = info.lsn_hardened;
        link.live = false;
        link.last_dial_error = None;
        let peer = self.peers.get(&id).map(|c| c.peer.clone()).unwrap_or_default();
        eprintln!(
            "mirrorlog: database {db}: connected to the mirror at {peer}; it has hardened the log to {}",
            info.lsn_hardened
        );
        let cmds = link.session.on_event(Event::Connected { mirror_hardened: info.lsn_hardened, now: Instant::now() });
        self.deferred_session_commands.push((db, cmds));
        Ok(())
    }

    /// Runs the session's commands for database `db`.
    pub(super) fn run_session_commands(&mut self, db: usize, cmds: Vec<Command>) {
        self.run_session_commands_inner(db, cmds);
        // SAFETY FULL, waiting for the mirror: pages are written only up to what it hardened.
        if let (Some(Link::Principal(link)), Some(database)) = (&self.links[db], self.dbs[db].as_mut()) {
            let waits_for = link.session.commit_lsn(Lsn(u64::MAX));
            database.set_mirror_page_limit((waits_for.0 != u64::MAX).then_some(waits_for));
        }
    }

    fn run_session_commands_inner(&mut self, db: usize, cmds: Vec<Command>) {
        for cmd in cmds {
            match cmd {
                Command::Disconnect { reason } => {
                    if let Some(Link::Principal(link)) = self.links[db].as_mut() {
                        if let Some(id) = link.conn.take() {
                            self.close_peer(id, &reason);
                        }
                    }
                }
                Command::Dial => {
                    if let Some(Link::Principal(link)) = self.links[db].as_mut() {
                        link.next_dial = link.next_dial.min(Instant::now() + DIAL_RETRY);
                    }
                }
                Command::Persist => {
                    if let Some(Link::Principal(link)) = self.links[db].as_mut() {
                        link.settings.safety = link.session.safety();
                        link.settings.suspended = link.session.suspend_reason().map(str::to_string);
                        let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
                        if let Err(e) = link.persist(&dir) {
                            eprintln!("mirrorlog: database {db}: cannot persist the mirroring settings: {e}");
                        }
                    }
                }
                Command::StateChanged { from, to } => {
                    eprintln!("mirrorlog: database {db}: mirroring state {from} -> {to}");
                    // The mirror learns the state from pings: the next tick sends one (a mirror
                    // that does not know it is SYNCHRONIZED cannot be granted a failover).
                    if let Some(Link::Principal(link)) = self.links[db].as_mut() {
                        link.last_ping =
                            Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
                    }
                }
                Command::RunExposed => {
                    eprintln!(
                        "mirrorlog: database {db}: SAFETY FULL is running exposed: commits are answered without the mirror"
                    );
                }
                Command::ReleaseCommits => {
                    if !self.release_dbs.contains(&db) {
                        self.release_dbs.push(db);
                    }
                }
                Command::HoldLog { from } => {
                    // One byte before the mirror's hardened LSN: the segment holding the mirror's
                    // last record stays even when that record ends a segment, so the next
                    // connection can check it (`check_tail`).
                    let hold = Lsn(from.0.saturating_sub(1));
                    self.dbs[db].as_mut().expect("owned").log.set_retention_hold(Some(hold));
                }
            }
        }
    }

    fn run_deferred_session_commands(&mut self) {
        while !self.deferred_session_commands.is_empty() {
            let pending = std::mem::take(&mut self.deferred_session_commands);
            for (db, cmds) in pending {
                self.run_session_commands(db, cmds);
            }
        }
    }

    fn dial(&mut self, ring: &mut Ring, db: usize) -> Result<()> {
        let Some(Link::Principal(link)) = self.links[db].as_mut() else { return Ok(()) };
        let now = Instant::now();
        if link.conn.is_some() || !link.session.wants_link() || now < link.next_dial {
            return Ok(());
        }
        link.next_dial = now + DIAL_RETRY;
        let partner = link.partner;
        // A failure to even start dialing (out of descriptors, say) is retried like an
        // unreachable mirror; it never ends the shard.
        let fd = match crate::io::net::tcp_socket(partner) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("mirrorlog: database {db}: cannot dial the mirror at {partner}: {e}; retrying");
                return Ok(());
            }
        };
        let id = self.next_peer_id;
        self.next_peer_id += 1;
        let mut conn = PeerConn::new(fd, Some(db), Phase::Connecting, partner.to_string());
        if let Err(e) = ring.connect(conn.fd.as_raw_fd(), partner, token(KIND_PEER_CONNECT, id)) {
            eprintln!("mirrorlog: database {db}: cannot dial the mirror at {partner}: {e}; retrying");
            return Ok(());
        }
        conn.ops = 1;
        link.conn = Some(id);
        self.peers.insert(id, conn);
        Ok(())
    }

    fn on_peer_connect(&mut self, ring: &mut Ring, id: u64, c: Completion) -> Result<()> {
        let Some(conn) = self.peers.get_mut(&id) else { return Ok(()) };
        conn.ops -= 1;
        let db = conn.db.expect("dialed");
        if conn.closed {
            self.reap_peer(id);
            return Ok(());
        }
        if c.result < 0 && conn.witness {
            let why = std::io::Error::from_raw_os_error(-c.result).to_string();
            if let Some(w) = self.witness_links[db].as_mut() {
                if w.last_dial_error.as_deref() != Some(&why) {
                    eprintln!("mirrorlog: database {db}: cannot reach the witness at {}: {why}; retrying", w.addr);
                    w.last_dial_error = Some(why);
                }
                w.conn = None;
            }
            conn.closed = true;
            self.reap_peer(id);
            return Ok(());
        }
        if c.result < 0 {
            let why = std::io::Error::from_raw_os_error(-c.result).to_string();
            let peer = conn.peer.clone();
            if let Some(Link::Principal(link)) = self.links[db].as_mut() {
                if link.last_dial_error.as_deref() != Some(&why) {
                    eprintln!("mirrorlog: database {db}: cannot reach the mirror at {peer}: {why}; retrying");
                    link.last_dial_error = Some(why);
                }
                link.conn = None;
            }
            conn.closed = true;
            self.reap_peer(id);
            return Ok(());
        }
        let key = self.config.mirroring.key.clone().expect("mirroring has a key");
        let epoch = self.dbs[db].as_ref().expect("owned").log.epoch();
        let (dialer, hello) = Dialer::start(
            &key,
            db_id_of(db),
            epoch,
            self.config.segment_size,
            self.config.mirroring.log_compression,
            handshake::random_nonce(),
        );
        conn.phase = Phase::Dialing(Box::new(dialer));
        conn.out.push_back(Outgoing::Bytes(hello));
        self.post_peer_recv(ring, id)
    }

    /// Sends log to the mirror of `db` from the files while it is behind.
    fn pump_catch_up(&mut self, db: usize) {
        loop {
            let Some(Link::Principal(link)) = self.links[db].as_mut() else { return };
            let Some(id) = link.conn else { return };
            let Some(conn) = self.peers.get_mut(&id) else { return };
            if !conn.ready() || conn.out.len() >= PEER_SEND_QUEUE_MAX / 2 {
                return;
            }
            let database = self.dbs[db].as_ref().expect("owned");
            let unacked = link.lsn_sent.0.saturating_sub(link.session.lsn_mirror_hardened().0);
            if link.lsn_sent >= database.log.lsn_hardened() {
                if !link.live && !database.log.write_in_flight() && !database.log.has_unwritten() {
                    // At the stream's head with nothing being written: the next batch starts
                    // here and goes out live.
                    link.live = true;
                    let cmds = link.session.on_event(Event::CaughtUp { live_from: link.lsn_sent });
                    self.deferred_session_commands.push((db, cmds));
                }
                return;
            }
            if unacked >= SEND_WINDOW_BYTES {
                return;
            }
            match database.log.read_hardened(link.lsn_sent, CATCH_UP_CHUNK) {
                Ok(Some((from, to, bytes))) => {
                    let Phase::Ready { version, compress } = conn.phase else { return };
                    let frame = frame::encode_frame(
                        version,
                        FrameKind::Log,
                        db_id_of(db),
                        database.log.epoch(),
                        from,
                        to,
                        &bytes,
                        compress,
                    );
                    link.bytes_sent += frame.len() as u64;
                    link.frames_catch_up += 1;
                    conn.out.push_back(Outgoing::Bytes(frame));
                    link.lsn_sent = to;
                    link.live = false;
                }
                Ok(None) => return,
                Err(e) => {
                    let reason = format!("cannot send the log the mirror needs: {e}");
                    eprintln!("mirrorlog: database {db}: {reason}; session suspended");
                    let cmds = link.session.on_event(Event::Suspend { reason });
                    self.deferred_session_commands.push((db, cmds));
                    return;
                }
            }
        }
    }

    /// After the log writers submitted: ships each principal's new batch live when the mirror
    /// is caught up to its start, and starts pending sends.
    pub(super) fn after_submit(&mut self, ring: &mut Ring) -> Result<()> {
        for db in 0..self.links.len() {
            self.serve_page_requests(db);
        }
        for db in 0..self.links.len() {
            let Some(Link::Principal(link)) = self.links[db].as_mut() else { continue };
            let database = self.dbs[db].as_mut().expect("owned");
            for batch in database.log.take_shipped() {
                let conn = link.conn.and_then(|id| self.peers.get_mut(&id)).filter(|c| c.ready());
                let unacked = link.lsn_sent.0.saturating_sub(link.session.lsn_mirror_hardened().0);
                let fits = unacked < SEND_WINDOW_BYTES;
                match conn {
                    Some(conn) if batch.from == link.lsn_sent && fits && conn.out.len() < PEER_SEND_QUEUE_MAX => {
                        let Phase::Ready { version, compress } = conn.phase else { unreachable!() };
                        let (from, to) = (batch.from, batch.to);
                        if compress {
                            let frame = frame::encode_frame(
                                version,
                                FrameKind::Log,
                                db_id_of(db),
                                database.log.epoch(),
                                from,
                                to,
                                batch.bytes(),
                                true,
                            );
                            link.bytes_sent += frame.len() as u64;
                            conn.out.push_back(Outgoing::Bytes(frame));
                            database.log.recycle_shared(batch.buf);
                        } else {
                            let header = frame::header_for_body(
                                version,
                                FrameKind::Log,
                                db_id_of(db),
                                database.log.epoch(),
                                from,
                                to,
                                batch.bytes(),
                            );
                            link.bytes_sent += (header.len() + batch.bytes().len()) as u64;
                            conn.out.push_back(Outgoing::Live { header: header.to_vec(), batch });
                        }
                        link.frames_live += 1;
                        link.lsn_sent = to;
                        if !link.live {
                            link.live = true;
                            let cmds = link.session.on_event(Event::CaughtUp { live_from: from });
                            self.deferred_session_commands.push((db, cmds));
                        }
                    }
                    _ => {
                        link.live = false;
                        database.log.recycle_shared(batch.buf);
                    }
                }
            }
        }
        self.run_role_changes(ring)?;
        self.run_deferred_session_commands();
        let release = std::mem::take(&mut self.release_dbs);
        for db in release {
            self.release_replies(ring, db)?;
        }
        for db in 0..self.links.len() {
            self.dial(ring, db)?;
        }
        let ids: Vec<u64> =
            self.peers.iter().filter(|(_, c)| c.sending.is_none() && !c.out.is_empty()).map(|(id, _)| *id).collect();
        for id in ids {
            self.start_peer_send(ring, id)?;
        }
        Ok(())
    }

    fn start_peer_send(&mut self, ring: &mut Ring, id: u64) -> Result<()> {
        let Some(conn) = self.peers.get_mut(&id) else { return Ok(()) };
        if conn.sending.is_some() || (conn.closed && !conn.linger) {
            return Ok(());
        }
        let Some(item) = conn.out.pop_front() else {
            return Ok(());
        };
        conn.sending = Some(Sending { item, offset: 0 });
        Self::submit_peer_send(ring, id, conn)
    }

    fn submit_peer_send(ring: &mut Ring, id: u64, conn: &mut PeerConn) -> Result<()> {
        let sending = conn.sending.as_ref().expect("a send in progress");
        let fd = conn.fd.as_raw_fd();
        let offset = sending.offset;
        match &sending.item {
            Outgoing::Bytes(bytes) => {
                let rest = &bytes[offset..];
                let mut buf = match conn.spare_send.take() {
                    Some(b) if b.capacity() >= rest.len() => b,
                    _ => AlignedBuf::new(rest.len().max(1)),
                };
                buf.set_len(rest.len());
                buf.copy_from_slice(rest);
                ring.send(fd, buf, 0, rest.len(), token(KIND_PEER_SEND, id))?;
            }
            Outgoing::Live { header, batch } => {
                let body_start = batch.from.since(batch.start) as usize;
                let body_len = batch.to.since(batch.start) as usize - body_start;
                if offset < header.len() {
                    // Header and body in one operation: the header copied, the body read in
                    // place from the log buffer the disk write is reading too.
                    ring.sendmsg_zc_shared(
                        fd,
                        header[offset..].to_vec(),
                        batch.buf.share(),
                        body_start,
                        body_len,
                        token(KIND_PEER_SEND, id),
                    )?;
                } else {
                    let sent = offset - header.len();
                    let start = body_start + sent;
                    ring.send_zc_shared(fd, batch.buf.share(), start, body_len - sent, token(KIND_PEER_SEND, id))?;
                }
            }
        }
        conn.ops += 1;
        Ok(())
    }

    fn on_peer_send(&mut self, ring: &mut Ring, id: u64, mut c: Completion) -> Result<()> {
        let Some(conn) = self.peers.get_mut(&id) else {
            return Ok(());
        };
        if let Some(buf) = c.buf.take() {
            if buf.capacity() <= 64 * 1024 {
                conn.spare_send = Some(buf);
            }
        }
        if let Some(shared) = c.shared.take() {
            // The kernel is done with a log buffer: give it back to its log.
            if let Some(db) = conn.db {
                if let Some(database) = self.dbs[db].as_mut() {
                    database.log.recycle_shared(shared);
                }
            }
        }
        match c.kind {
            CompletionKind::SendZcNotified { .. } => {
                conn.ops -= 1;
                if conn.closed {
                    self.reap_peer(id);
                }
                return Ok(());
            }
            CompletionKind::SendZcResult => {}
            _ => conn.ops -= 1,
        }
        if conn.closed && !conn.linger {
            self.reap_peer(id);
            return Ok(());
        }
        if c.result <= 0 {
            conn.linger = false;
            let why = if c.result == 0 {
                "send made no progress".into()
            } else {
                std::io::Error::from_raw_os_error(-c.result).to_string()
            };
            self.close_peer(id, &why);
            self.reap_peer(id);
            return Ok(());
        }
        let sending = conn.sending.as_mut().expect("a send in progress");
        sending.offset += c.result as usize;
        if sending.offset < sending.item.len() {
            return Self::submit_peer_send(ring, id, conn);
        }
        let done = conn.sending.take().expect("in progress");
        if let (Outgoing::Live { batch, .. }, Some(db)) = (done.item, conn.db) {
            if let Some(database) = self.dbs[db].as_mut() {
                database.log.recycle_shared(batch.buf);
            }
        }
        self.start_peer_send(ring, id)?;
        self.reap_peer(id);
        self.try_migrate_peer(ring, id)
    }

    // ---- frames on a ready connection ---------------------------------------------------------

    fn ready_frame(
        &mut self,
        id: u64,
        db: usize,
        header: &FrameHeader,
        body: &[u8],
    ) -> std::result::Result<bool, String> {
        let now = Instant::now();
        match (&mut self.links[db], header.kind) {
            (Some(Link::Principal(link)), FrameKind::Ack | FrameKind::Pong) => {
                if link.conn != Some(id) {
                    return Ok(true);
                }
                let ack = header.lsn_to;
                if header.kind == FrameKind::Pong {
                    if let Some(endpoint) = std::str::from_utf8(body).ok().filter(|e| !e.is_empty()) {
                        if link.settings.partner_endpoint.as_deref() != Some(endpoint) {
                            link.settings.partner_endpoint = Some(endpoint.to_string());
                            let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
                            if let Err(e) = link.persist(&dir) {
                                eprintln!("mirrorlog: database {db}: cannot persist the mirror's endpoint: {e}");
                            }
                        }
                    }
                }
                if ack > link.lsn_sent {
                    // Checked before it counts: an acknowledgement releases FULL commits.
                    // Beyond what this connection sent is fine only up to this log's hardened
                    // end — records the mirror appended from an earlier connection and hardened
                    // since (they are this log's: `mirror_receive` compares them).
                    let hardened = self.dbs[db].as_ref().expect("owned").log.lsn_hardened();
                    if ack > hardened {
                        return Err(format!("the mirror acknowledged {ack}, beyond this log's hardened {hardened}"));
                    }
                    link.lsn_sent = ack;
                    link.live = false;
                }
                let cmds = link.session.on_event(Event::Acked { lsn: ack, now });
                self.deferred_session_commands.push((db, cmds));
                Ok(true)
            }
            (Some(Link::Mirror(link)), FrameKind::Ping) => {
                link.last_heard = now;
                link.principal_state = body.first().and_then(|b| match b {
                    1 => Some(MirroringState::Synchronizing),
                    2 => Some(MirroringState::Synchronized),
                    _ => None,
                });
                link.principal_safety = body.get(1).map(|&b| if b == 1 { SafetyLevel::Full } else { SafetyLevel::Off });
                link.last_synchronized = link.principal_state == Some(MirroringState::Synchronized);
                // The principal's endpoint: where this mirror reaches it after a failover, and
                // half of the session's name at the witness.
                if let Some(endpoint) =
                    body.get(2..).and_then(|b| std::str::from_utf8(b).ok()).filter(|e| !e.is_empty())
                {
                    let partner = format!("tcp://{endpoint}");
                    if link.settings.partner != partner {
                        link.settings.partner = partner;
                        let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
                        if let Err(e) = link.settings.store(&dir) {
                            eprintln!("mirrorlog: database {db}: cannot persist the principal's endpoint: {e}");
                        }
                    }
                }
                let hardened = self.dbs[db].as_ref().expect("owned").log.lsn_hardened();
                let epoch = self.dbs[db].as_ref().expect("owned").log.epoch();
                let own = self.endpoint_addr.map(|a| a.to_string()).unwrap_or_default();
                if let Some(conn) = self.peers.get_mut(&id) {
                    let bytes = frame::encode_frame(
                        conn.version(),
                        FrameKind::Pong,
                        db_id_of(db),
                        epoch,
                        hardened,
                        hardened,
                        own.as_bytes(),
                        false,
                    );
                    conn.out.push_back(Outgoing::Bytes(bytes));
                }
                Ok(true)
            }
            (Some(Link::Mirror(link)), FrameKind::Log) => {
                link.last_heard = now;
                if link.conn != Some(id) {
                    return Err("a log frame on a connection that was replaced".into());
                }
                self.mirror_receive(db, header, body)
            }
            (Some(Link::Mirror(link)), FrameKind::Failover) => {
                if link.conn != Some(id) {
                    return Err("FAILOVER on a connection that was replaced".into());
                }
                self.pending_failovers.push((id, db, *header, body.to_vec()));
                Ok(true)
            }
            (Some(Link::Principal(link)), FrameKind::FailoverDone) => match link.failover {
                Some(Failover::Sent { lsn, epoch, .. }) if lsn == header.lsn_to && epoch == header.epoch => {
                    self.pending_role_changes.push((db, epoch));
                    Ok(true)
                }
                _ => Err("an unexpected FAILOVER_DONE".into()),
            },
            (Some(Link::Principal(link)), FrameKind::PageRequest) => {
                if link.conn != Some(id) {
                    return Err("a PAGE_REQUEST on a connection that was replaced".into());
                }
                let pages = page_rewind::decode_page_request(body)?;
                if link.page_requests_conn != Some(id) {
                    link.page_requests.clear();
                    link.page_requests_conn = Some(id);
                }
                eprintln!("mirrorlog: database {db}: the mirror asks for {} page(s) to rewind", pages.len());
                link.page_requests.extend(pages);
                self.serve_page_requests(db);
                Ok(true)
            }
            (Some(Link::Mirror(link)), FrameKind::PageImage) => {
                if link.conn != Some(id) || link.rewind_asked_on != Some(id) {
                    return Err("a PAGE_IMAGE on a connection that did not ask for it".into());
                }
                self.mirror_page_image(id, db, body)
            }
            (_, FrameKind::Refuse) => Err(format!("the partner refused: {}", String::from_utf8_lossy(body))),
            (_, kind) => Err(format!("unexpected {kind:?} frame")),
        }
    }

    /// Queues a small frame carrying an LSN (ACK, PONG).
    fn queue_control(&mut self, id: u64, db: usize, kind: FrameKind, lsn: Lsn) {
        let epoch = self.dbs[db].as_ref().expect("owned").log.epoch();
        let Some(conn) = self.peers.get_mut(&id) else { return };
        let bytes = frame::encode_frame(conn.version(), kind, db_id_of(db), epoch, lsn, lsn, &[], false);
        conn.out.push_back(Outgoing::Bytes(bytes));
    }

    // ---- mirror ------------------------------------------------------------------------------

    fn mirror_accept(&mut self, id: u64, version: u16, hello: handshake::Hello) {
        let db = hello.db_id.0.wrapping_sub(1) as usize;
        let refuse = |reason: String| reason;
        let mut superseded = None;
        let result = match (self.links.get(db).and_then(|l| l.as_ref()), self.dbs.get(db).and_then(|d| d.as_ref())) {
            (link, Some(database)) if hello.epoch < database.log.epoch() => {
                // Fencing: a principal of an older role sequence is refused, whatever this
                // database is now; the reason tells it to stop serving, and where this role
                // sequence began (the failover LSN: where it may cut its log back to rejoin).
                let ours = database.log.epoch();
                let start = match link {
                    Some(Link::Principal(l)) => l.settings.role_start_lsn.unwrap_or(0),
                    _ => 0,
                };
                Err(refuse(format!(
                    "FENCED {} {start}: role sequence {} is stale; this database acts at role sequence {}",
                    ours.0, hello.epoch.0, ours.0
                )))
            }
            (Some(Link::Mirror(_)), Some(database)) => {
                if hello.segment_size != self.config.segment_size {
                    Err(refuse(format!(
                        "log segment sizes differ: the principal's are {} bytes, this mirror's {}",
                        hello.segment_size, self.config.segment_size
                    )))
                } else {
                    Ok(database.log.lsn_hardened())
                }
            }
            (_, Some(database)) if hello.epoch > database.log.epoch() => {
                // A principal of a newer role sequence: this database was superseded (forced
                // service, or a failover it did not see finish). It stops serving at once.
                superseded = Some(hello.epoch);
                Err(refuse(format!(
                    "database {db} here acted at role sequence {}; it is fenced now, and rejoins as mirror once it learns where the newer role sequence began",
                    database.log.epoch().0
                )))
            }
            (_, Some(_)) => Err(refuse(format!("database {db} is not a mirror here (it is not RESTORING)"))),
            _ => Err(refuse(format!("database {db} is not served by this shard"))),
        };
        if let Some(by) = superseded {
            self.fence(db, by);
        }
        if result.is_ok() {
            self.adopt_role_sequence(db, hello.epoch);
        }
        let Some(conn) = self.peers.get_mut(&id) else { return };
        conn.db = Some(db);
        match result {
            Err(reason) => {
                conn.out.push_back(Outgoing::Bytes(handshake::encode_refuse(version, db_id_of(db), &reason)));
                conn.phase = Phase::Connecting;
                self.close_peer_lingering(id, &format!("refused: {reason}"), true);
            }
            Ok(hardened) => {
                let compress = hello.wants_lz4 && version >= frame::PROTOCOL_VERSION_LZ4;
                conn.phase = Phase::Ready { version, compress };
                let Some(Link::Mirror(link)) = self.links[db].as_mut() else { unreachable!() };
                while link.tails.front().is_some_and(|(end, _)| *end <= hardened) {
                    link.tail_hardened = link.tails.pop_front().expect("front").1;
                }
                let epoch = self.dbs[db].as_ref().expect("owned").log.epoch();
                let info = ReadyInfo {
                    lsn_hardened: hardened,
                    epoch,
                    segment_size: self.config.segment_size,
                    tail: link.tail_hardened,
                };
                let conn = self.peers.get_mut(&id).expect("present");
                conn.out.push_back(Outgoing::Bytes(handshake::encode_ready(version, db_id_of(db), epoch, &info)));
                let peer = conn.peer.clone();
                let Some(Link::Mirror(link)) = self.links[db].as_mut() else { unreachable!() };
                let old = link.conn.replace(id);
                link.last_heard = Instant::now();
                link.stalled = false;
                eprintln!(
                    "mirrorlog: database {db}: the principal at {peer} connected (protocol version {version}); log hardened here to {hardened}"
                );
                if let Some(old) = old {
                    self.close_peer(old, "replaced by a new connection from the principal");
                }
                self.ask_for_rewind_pages(id, db, version);
            }
        }
    }

    /// A rejoin's page rewind is pending: asks the principal, on connection `id`, for every page
    /// still listed.
    fn ask_for_rewind_pages(&mut self, id: u64, db: usize, version: u16) {
        let Some(Link::Mirror(link)) = self.links[db].as_mut() else { return };
        let Some(list) = &link.rewind else { return };
        if version < frame::PROTOCOL_VERSION_REWIND {
            let reason = format!(
                "this mirror must rewind {} page(s) first, which protocol version {version} cannot do; upgrade the principal",
                list.pages.len()
            );
            eprintln!("mirrorlog: database {db}: {reason}");
            self.close_peer(id, &reason);
            return;
        }
        let ids: Vec<PageId> = list.pages.iter().copied().collect();
        link.rewind_asked_on = Some(id);
        let epoch = self.dbs[db].as_ref().expect("owned").log.epoch();
        let Some(conn) = self.peers.get_mut(&id) else { return };
        for chunk in ids.chunks(page_rewind::PAGE_REQUEST_IDS_MAX) {
            let body = page_rewind::encode_page_request(chunk);
            let bytes = frame::encode_frame(
                version,
                FrameKind::PageRequest,
                db_id_of(db),
                epoch,
                Lsn::ZERO,
                Lsn::ZERO,
                &body,
                false,
            );
            conn.out.push_back(Outgoing::Bytes(bytes));
        }
        eprintln!("mirrorlog: database {db}: asked the principal for {} page(s) to rewind", ids.len());
    }

    /// A PAGE_IMAGE of a rejoin's page rewind: the image is written in place (an absent page is
    /// zeroed). Once the last listed page is written, the data file is synced, the list removed,
    /// and the connection closed: the principal reconnects and ships from the cut.
    fn mirror_page_image(&mut self, id: u64, db: usize, body: &[u8]) -> std::result::Result<bool, String> {
        let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
        let Some(Link::Mirror(link)) = self.links[db].as_mut() else { unreachable!() };
        let Some(list) = link.rewind.as_mut() else {
            return Err("a PAGE_IMAGE, but no page rewind is pending".into());
        };
        let (page, image) = page_rewind::decode_page_image(body, db_id_of(db))?;
        if !list.pages.contains(&page) {
            return Err(format!("a PAGE_IMAGE of {page}, which this mirror did not ask for"));
        }
        if link.rewind_data.is_none() {
            let data = crate::store::data_file::DataFile::open(&dir.join("data.pages"), db_id_of(db))
                .map_err(|e| format!("cannot open the data file to rewind pages: {e}"))?;
            link.rewind_data = Some(data);
        }
        let data = link.rewind_data.as_mut().expect("opened above");
        let written = match image {
            Some(image) => {
                let mut buf = AlignedBuf::zeroed(crate::store::page::PAGE_SIZE);
                buf.copy_from_slice(image);
                data.write_page(&mut buf)
            }
            None => data.write_unwritten(page),
        };
        written.map_err(|e| format!("cannot write the rewound {page}: {e}"))?;
        list.pages.remove(&page);
        link.rewound_pages += 1;
        if !list.pages.is_empty() {
            return Ok(true);
        }
        let data = link.rewind_data.take().expect("opened above");
        let finished = data.sync().and_then(|()| link.rewind.take().expect("pending").remove());
        if let Err(e) = finished {
            // A failed fdatasync is fatal: the pages may be lost; the list stays for a restart.
            let reason = format!("finishing the page rewind failed: {e}");
            link.failure = Some(reason.clone());
            return Err(reason);
        }
        link.rewind_asked_on = None;
        eprintln!(
            "mirrorlog: database {db}: every page is rewound; the principal ships from the cut once it reconnects"
        );
        self.close_peer(id, "pages rewound: reconnect and ship from the cut");
        Ok(true)
    }

    /// Answers a rejoining mirror's PAGE_REQUEST frames: each page's current image, committed and
    /// hardened (a page a transaction is appending, or whose last change is not hardened yet,
    /// waits), sealed; or absent if this database never wrote it.
    pub(super) fn serve_page_requests(&mut self, db: usize) {
        let Some(Link::Principal(link)) = self.links[db].as_mut() else { return };
        let Some(id) = link.page_requests_conn else { return };
        let Some(conn) = self.peers.get_mut(&id).filter(|c| c.ready() && !c.closed) else {
            link.page_requests.clear();
            link.page_requests_conn = None;
            return;
        };
        let database = self.dbs[db].as_mut().expect("owned");
        let version = conn.version();
        let mut failure = None;
        while let Some(&page) = link.page_requests.front() {
            if conn.out.len() >= PEER_SEND_QUEUE_MAX || database.commit_in_progress() {
                break;
            }
            let image = match database.pool().read(page) {
                Ok(p) => Some(p.to_vec()),
                Err(Error::PageCorrupt(crate::store::page::PageError::Unwritten(_))) => None,
                Err(e) => {
                    failure = Some(format!("cannot send {page} for a page rewind: {e}"));
                    break;
                }
            };
            if image.is_some() && database.pool().barrier(page) > database.log.lsn_hardened() {
                break; // its last change is not hardened yet: after the next log write
            }
            let body = match image {
                Some(mut image) => {
                    crate::store::page::seal(&mut image, db_id_of(db));
                    page_rewind::encode_page_image(page, Some(&image))
                }
                None => page_rewind::encode_page_image(page, None),
            };
            let lsn = database.log.lsn_hardened();
            let epoch = database.log.epoch();
            let bytes = frame::encode_frame(version, FrameKind::PageImage, db_id_of(db), epoch, lsn, lsn, &body, false);
            conn.out.push_back(Outgoing::Bytes(bytes));
            link.page_requests.pop_front();
        }
        if let Some(reason) = failure {
            eprintln!("mirrorlog: database {db}: {reason}");
            link.page_requests.clear();
            link.page_requests_conn = None;
            self.close_peer(id, &reason);
        }
    }

    /// A LOG frame on the mirror: every record verified, then appended at its own LSN.
    fn mirror_receive(&mut self, db: usize, header: &FrameHeader, body: &[u8]) -> std::result::Result<bool, String> {
        let database = self.dbs[db].as_mut().expect("owned");
        let Some(Link::Mirror(link)) = self.links[db].as_mut() else { unreachable!() };
        if link.rewind.is_some() {
            // A page rewind is pending: the log stays at the cut (so a restart's redo never
            // applies a newer record to a page still to be fetched); the principal ships this
            // again after the rewind, when it reconnects.
            return Ok(true);
        }
        let db_id = db_id_of(db);
        let mut at = 0usize;
        let mut lsn = header.lsn_from;
        while at < body.len() {
            let rest = &body[at..];
            let h = match record::check(rest, db_id, lsn) {
                RecordCheck::Valid(h) => h,
                other => {
                    return Err(format!("record at {lsn} in a log frame does not verify ({other:?})"));
                }
            };
            let size = record::record_size(h.body_len as usize);
            let record_body = record::body(rest, &h);
            // Records below the log's end arrived before (a reconnect resends from the hardened
            // LSN): those not hardened yet must be the same records, or the logs would differ
            // once they are; append_replica checks everything at or past the end.
            if lsn < database.log.lsn_appended() {
                if let Some((_, tail)) = link.tails.iter().find(|(_, t)| t.lsn == lsn) {
                    if tail.body_crc != h.body_crc || tail.body_len != h.body_len || tail.kind != h.kind.0 {
                        return Err(format!(
                            "the principal's record at {lsn} differs from the one this mirror appended before"
                        ));
                    }
                }
            } else {
                match database.log.append_replica(lsn, h.kind, record_body) {
                    Ok(end) => {
                        link.tails.push_back((
                            end,
                            LogTail { lsn, body_crc: h.body_crc, body_len: h.body_len, kind: h.kind.0 },
                        ));
                        if is_redo_kind(h.kind) && link.failure.is_none() {
                            link.pending_bytes += record_body.len();
                            link.pending.push_back(RedoRecord {
                                kind: h.kind,
                                body: record_body.to_vec(),
                                end_lsn: end,
                            });
                        }
                    }
                    Err(AppendError::Full) => {
                        link.stalled = true;
                        return Ok(false);
                    }
                    Err(e) => {
                        return Err(format!("cannot append the principal's record: {}", Error::from(e)));
                    }
                }
            }
            at += size;
            lsn = lsn.advance(size as u64);
        }
        if lsn != header.lsn_to {
            return Err(format!("a log frame says it ends at {} but its records end at {lsn}", header.lsn_to));
        }
        link.frames_received += 1;
        link.stalled = false;
        Ok(true)
    }

    /// After a log write of `db` completed: a mirror acknowledges and dispatches redo; a
    /// principal sends more of a catch-up.
    pub(super) fn peer_log_progress(&mut self, ring: &mut Ring, db: usize) -> Result<()> {
        match self.links[db].as_mut() {
            Some(Link::Mirror(link)) => {
                let hardened = self.dbs[db].as_ref().expect("owned").log.lsn_hardened();
                let conn = link.conn;
                let stalled = link.stalled;
                while link.tails.front().is_some_and(|(end, _)| *end <= hardened) {
                    link.tail_hardened = link.tails.pop_front().expect("front").1;
                }
                if hardened > link.lsn_acked {
                    link.lsn_acked = hardened;
                    if let Some(id) = conn {
                        // The acknowledgement leaves before the redo workers are woken: a woken
                        // worker may take this core first, and the principal's commit waits for
                        // this frame.
                        self.queue_control(id, db, FrameKind::Ack, hardened);
                        self.start_peer_send(ring, id)?;
                        ring.submit()?;
                    }
                }
                self.mirror_dispatch(db);
                if let Some(id) = conn {
                    if stalled {
                        self.process_peer_input(id);
                    }
                    self.post_peer_recv(ring, id)?; // also after redo made room
                }
            }
            Some(Link::Principal(_)) => self.pump_catch_up(db),
            None => {}
        }
        Ok(())
    }

    /// Hands whole hardened transactions to the redo pipeline.
    fn mirror_dispatch(&mut self, db: usize) {
        let database = self.dbs[db].as_mut().expect("owned");
        let hardened = database.log.lsn_hardened();
        let Some(Link::Mirror(link)) = self.links[db].as_mut() else { return };
        let Some(pipeline) = link.pipeline.as_mut() else { return };
        if link.failure.is_some() || link.rewind.is_some() {
            return;
        }
        let mut failure = None;
        while let Some(front) = link.pending.front() {
            if front.end_lsn > hardened {
                break;
            }
            match front.kind {
                redo::PAGE_IMAGE | redo::PAGE_DIFF => {
                    let record = link.pending.pop_front().expect("front");
                    link.tx.push(record);
                }
                redo::TX_ABORT => {
                    link.pending.pop_front();
                    link.pending_bytes =
                        link.pending_bytes.saturating_sub(link.tx.iter().map(|r| r.body.len()).sum::<usize>());
                    link.tx.clear();
                }
                redo::TX_COMMIT => {
                    let bytes: usize = link.tx.iter().map(|r| r.body.len()).sum();
                    let dispatched = match pipeline.try_dispatch(&mut link.tx) {
                        // A transaction larger than a worker's ring never fits whole: with the
                        // rings empty it goes in pieces (its commit is hardened, so every piece
                        // will be applied; nothing reads the mirror's pages in between).
                        Ok(false) if pipeline.queued_items() == 0 => dispatch_in_pieces(pipeline, &mut link.tx),
                        other => other,
                    };
                    match dispatched {
                        Ok(true) => {
                            link.tx.clear();
                            link.pending_bytes = link.pending_bytes.saturating_sub(bytes);
                            let commit = link.pending.pop_front().expect("front");
                            link.pending_bytes = link.pending_bytes.saturating_sub(commit.body.len());
                            link.lsn_dispatched = commit.end_lsn;
                        }
                        Ok(false) => {
                            // Pieces may have gone: count what is left.
                            let left: usize = link.tx.iter().map(|r| r.body.len()).sum();
                            link.pending_bytes = link.pending_bytes.saturating_sub(bytes - left.min(bytes));
                            break;
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                redo::CHECKPOINT if pipeline.checkpoint_in_flight() => break, // after the one in flight
                redo::CHECKPOINT => {
                    let redo_lsn = front.body.get(..8).map(|b| Lsn(u64::from_le_bytes(b.try_into().expect("8 bytes"))));
                    match redo_lsn.map(|lsn| pipeline.try_begin_checkpoint(lsn)) {
                        Some(Ok(true)) | None => {
                            let record = link.pending.pop_front().expect("front");
                            link.pending_bytes = link.pending_bytes.saturating_sub(record.body.len());
                            if link.tx.is_empty() {
                                // Between transactions: everything up to here is dispatched, so
                                // the watermark may pass the record (an idle log's tail is
                                // CHECKPOINT records, with nothing to redo).
                                link.lsn_dispatched = record.end_lsn;
                            }
                        }
                        Some(Ok(false)) => break,
                        Some(Err(e)) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                _ => {
                    let record = link.pending.pop_front().expect("front");
                    link.pending_bytes = link.pending_bytes.saturating_sub(record.body.len());
                }
            }
        }
        if failure.is_none() && link.lsn_dispatched > link.lsn_marked {
            match pipeline.try_mark(link.lsn_dispatched) {
                Ok(true) => link.lsn_marked = link.lsn_dispatched,
                Ok(false) => {}
                Err(e) => failure = Some(e.to_string()),
            }
        }
        if let Some(f) = failure.or_else(|| pipeline.failure()) {
            eprintln!("mirrorlog: database {db}: redo failed: {f}; the mirror stops redoing (its log is still hardened and acknowledged)");
            link.failure = Some(f);
            link.pending.clear();
            link.tx.clear();
            link.pending_bytes = 0;
        }
    }

    /// The timer: session ticks, dials, pings, retention, the mirror's checkpoints.
    pub(super) fn peer_timer(&mut self, ring: &mut Ring) -> Result<()> {
        let now = Instant::now();
        for db in 0..self.witness_links.len() {
            if self.witness_links[db].is_some() {
                self.dial_witness(ring, db)?;
                self.report_to_witness(db, now);
            }
        }
        if std::mem::take(&mut self.endpoint_accept_failed) {
            self.start_endpoint(ring)?;
        }
        // A connection that has not authenticated within the partner timeout is dropped (a peer
        // that accepts and goes silent must not keep the principal from dialing again).
        let deadline = self.config.mirroring.partner_timeout;
        let stale: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, c)| !c.closed && !matches!(c.phase, Phase::Ready { .. }) && c.migrate_to.is_none())
            .filter(|(_, c)| now.saturating_duration_since(c.started) >= deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close_peer(id, "no authentication within the partner timeout");
        }
        for db in 0..self.links.len() {
            match self.links[db].as_mut() {
                Some(Link::Principal(link)) => {
                    let cmds = link.session.on_event(Event::Tick { now });
                    self.deferred_session_commands.push((db, cmds));
                    self.check_retention(db);
                    self.run_deferred_session_commands();
                    self.ping(db, now);
                    self.pump_catch_up(db);
                }
                Some(Link::Mirror(link)) => {
                    if let Some(id) = link.conn {
                        if now.saturating_duration_since(link.last_heard) >= self.config.mirroring.partner_timeout {
                            link.conn = None;
                            link.principal_state = None;
                            self.close_peer(id, "the principal was silent for the partner timeout");
                        }
                    }
                    self.mirror_dispatch(db);
                    self.mirror_checkpoint(db);
                    if let Some(Link::Mirror(link)) = self.links[db].as_ref() {
                        if let Some(id) = link.conn {
                            self.post_peer_recv(ring, id)?;
                        }
                    }
                }
                None => {}
            }
        }
        self.run_deferred_session_commands();
        Ok(())
    }

    fn ping(&mut self, db: usize, now: Instant) {
        let Some(Link::Principal(link)) = self.links[db].as_mut() else { return };
        let interval = (link.session.partner_timeout() / 4).min(Duration::from_secs(1));
        let Some(id) = link.conn else { return };
        if now.saturating_duration_since(link.last_ping) < interval {
            return;
        }
        let Some(conn) = self.peers.get_mut(&id).filter(|c| c.ready()) else { return };
        link.last_ping = now;
        let state = match link.session.state() {
            MirroringState::Synchronizing => 1,
            MirroringState::Synchronized => 2,
            _ => 0,
        };
        let safety = (link.session.safety() == SafetyLevel::Full) as u8;
        let lsn = link.lsn_sent;
        let bytes = frame::encode_frame(
            conn.version(),
            FrameKind::Ping,
            db_id_of(db),
            self.dbs[db].as_ref().expect("owned").log.epoch(),
            lsn,
            lsn,
            &[&[state, safety][..], self.endpoint_addr.map(|a| a.to_string()).unwrap_or_default().as_bytes()].concat(),
            false,
        );
        conn.out.push_back(Outgoing::Bytes(bytes));
    }

    fn check_retention(&mut self, db: usize) {
        let database = self.dbs[db].as_mut().expect("owned");
        let Some(Link::Principal(link)) = self.links[db].as_mut() else { return };
        let max = self.config.mirroring.max_log_retention;
        // What the mirror holds back, not what checkpoints have not released yet.
        let Some(hold) = database.log.retention_hold() else { return };
        if database.log.lsn_appended().0.saturating_sub(hold.0) <= max {
            return;
        }
        let reason = format!(
            "the mirror needs more log than --max-log-retention ({max} bytes) allows; the log is released and the mirror must be restored"
        );
        if link.session.state() != MirroringState::Suspended {
            eprintln!("mirrorlog: database {db}: {reason}; session suspended");
            let cmds = link.session.on_event(Event::Suspend { reason });
            self.deferred_session_commands.push((db, cmds));
        }
        database.log.set_retention_hold(None);
    }

    fn mirror_checkpoint(&mut self, db: usize) {
        let Some(Link::Mirror(link)) = self.links[db].as_mut() else { return };
        let Some(pipeline) = link.pipeline.as_mut() else { return };
        match pipeline.checkpoint_complete() {
            Ok(Some(lsn)) => {
                if let Err(e) = self.dbs[db].as_mut().expect("owned").record_mirror_checkpoint(lsn) {
                    eprintln!("mirrorlog: database {db}: mirror checkpoint at {lsn} not recorded: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => {
                if link.failure.is_none() {
                    eprintln!("mirrorlog: database {db}: mirror checkpoint failed: {e}");
                    link.failure = Some(e.to_string());
                }
            }
        }
    }

    // ---- closing -----------------------------------------------------------------------------

    /// Sends a REFUSE with the reason, logs it and closes the connection; the server stays up.
    fn refuse_peer(&mut self, id: u64, reason: &str) {
        let Some(conn) = self.peers.get_mut(&id) else { return };
        let version = conn.version();
        let db = conn.db.map(db_id_of).unwrap_or(DbId(0));
        let already_queued = conn.out.iter().any(|o| matches!(o, Outgoing::Bytes(b) if is_refuse(b)));
        if !matches!(conn.phase, Phase::Dialing(_)) && !already_queued {
            conn.out.push_back(Outgoing::Bytes(handshake::encode_refuse(version, db, reason)));
        }
        if let Some(db) = conn.db {
            if let Some(Link::Mirror(link)) = self.links[db].as_mut() {
                if link.conn == Some(id) {
                    link.frames_rejected += 1;
                }
            }
        }
        self.close_peer_lingering(id, reason, true);
    }

    /// Closes a connection at once (idempotent).
    fn close_peer(&mut self, id: u64, reason: &str) {
        self.close_peer_lingering(id, reason, false);
    }

    /// Closes a connection: its link forgets it and it is logged. With `linger`, what is queued
    /// (a REFUSE) is sent first; then the socket is shut down so that operations in flight
    /// complete, and the connection is dropped once none is left.
    fn close_peer_lingering(&mut self, id: u64, reason: &str, linger: bool) {
        let Some(conn) = self.peers.get_mut(&id) else { return };
        let was_closed = conn.closed;
        conn.closed = true;
        conn.linger = if was_closed { conn.linger && linger } else { linger };
        let peer = conn.peer.clone();
        let db = conn.db;
        let witness = conn.witness;
        if !was_closed && witness {
            if let Some(w) = db.and_then(|db| self.witness_links[db].as_mut()).filter(|w| w.conn == Some(id)) {
                eprintln!("mirrorlog: connection with the witness at {} closed: {reason}", w.addr);
                w.conn = None;
            }
        } else if !was_closed {
            eprintln!("mirrorlog: endpoint: connection with {peer} closed: {reason}");
            if let Some(db) = db {
                match self.links[db].as_mut() {
                    Some(Link::Principal(link)) if link.conn == Some(id) => {
                        link.conn = None;
                        link.live = false;
                        let cmds = link.session.on_event(Event::Disconnected { now: Instant::now() });
                        self.deferred_session_commands.push((db, cmds));
                    }
                    Some(Link::Mirror(link)) if link.conn == Some(id) => {
                        link.conn = None;
                        link.principal_state = None;
                    }
                    _ => {}
                }
            }
        }
        self.reap_peer(id);
    }

    /// Shuts a closed connection down once its lingering output is sent, and drops it once no
    /// operation is in flight on it.
    fn reap_peer(&mut self, id: u64) {
        let Some(conn) = self.peers.get_mut(&id) else { return };
        if !conn.closed {
            return;
        }
        let output_left = conn.sending.is_some() || !conn.out.is_empty();
        if conn.linger && output_left {
            return; // sent first; `on_peer_send` comes back here
        }
        if !conn.shut_down {
            conn.shut_down = true;
            // SAFETY: shutdown(2) on a descriptor we own; operations in flight on it complete.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if conn.ops > 0 {
            return;
        }
        let conn = self.peers.remove(&id).expect("present");
        self.pending_peer_hello.remove(&id);
        let items = conn.sending.map(|s| s.item).into_iter().chain(conn.out);
        for item in items {
            if let (Outgoing::Live { batch, .. }, Some(db)) = (item, conn.db) {
                if let Some(database) = self.dbs[db].as_mut() {
                    database.log.recycle_shared(batch.buf);
                }
            }
        }
    }

    /// At a clean stop: mirrors stop their redo pipelines (dirty pages written and synced).
    pub(super) fn stop_links(&mut self) {
        for (db, link) in self.links.iter_mut().enumerate() {
            if let Some(Link::Mirror(link)) = link {
                if let Some(pipeline) = link.pipeline.take() {
                    if let Err(e) = pipeline.stop() {
                        eprintln!("mirrorlog: database {db}: stopping redo: {e}");
                    }
                }
            }
        }
    }

    /// Whether a mirror database's redo has caught up with its hardened log (clean stops wait
    /// for it briefly).
    pub(super) fn redo_caught_up(&self) -> bool {
        self.links.iter().enumerate().all(|(db, link)| match link {
            Some(Link::Mirror(link)) => {
                link.failure.is_some()
                    || link.pipeline.as_ref().is_none_or(|p| p.lsn_redone() >= link.lsn_dispatched)
                    || self.dbs[db].is_none()
            }
            _ => true,
        })
    }

    // ---- status and administration -------------------------------------------------------------

    /// `MIRROR STATUS` of database `db`: `name:value` lines.
    pub(super) fn mirror_status(&self, db: usize) -> String {
        let database = self.dbs[db].as_ref().expect("owned");
        let mut out = String::new();
        let mut line = |name: &str, value: String| {
            out.push_str(name);
            out.push(':');
            out.push_str(&value);
            out.push_str("\r\n");
        };
        line("database", db.to_string());
        line("lsn_appended", database.log.lsn_appended().0.to_string());
        line("lsn_hardened", database.log.lsn_hardened().0.to_string());
        line("role_sequence", database.log.epoch().0.to_string());
        if let Some(w) = &self.witness_links[db] {
            line("witness", format!("tcp://{}", w.addr));
            line(
                "witness_connected",
                (w.conn.is_some_and(|id| self.peers.get(&id).is_some_and(|c| c.ready())) as u8).to_string(),
            );
            line("witness_lease", (w.lease_valid(Instant::now()) as u8).to_string());
            line("quorum", (!self.has_no_quorum(db) as u8).to_string());
        }
        match &self.links[db] {
            None => {
                line("role", "none".into());
                line("state", "NONE".into());
            }
            Some(Link::Principal(link)) => {
                let s = &link.session;
                line("role", "principal".into());
                let state = if link.failover.is_some() { MirroringState::PendingFailover } else { s.state() };
                line("state", state.to_string());
                line("fenced_by", link.settings.fenced_by.map(|f| f.to_string()).unwrap_or_default());
                line("rejoin_refused", link.rejoin_refused.clone().unwrap_or_default());
                line("safety", s.safety().to_string());
                line("partner", link.settings.partner.clone());
                line("partner_timeout_ms", s.partner_timeout().as_millis().to_string());
                line(
                    "connected",
                    (link.conn.is_some_and(|id| self.peers.get(&id).is_some_and(|c| c.ready())) as u8).to_string(),
                );
                line("exposed", (s.is_exposed() as u8).to_string());
                line("mirror_lsn_hardened", s.lsn_mirror_hardened().0.to_string());
                line("lsn_sent", link.lsn_sent.0.to_string());
                line(
                    "send_queue_bytes",
                    database.log.lsn_hardened().0.saturating_sub(s.lsn_mirror_hardened().0).to_string(),
                );
                line("unsent_bytes", database.log.lsn_hardened().0.saturating_sub(link.lsn_sent.0).to_string());
                line("frames_live", link.frames_live.to_string());
                line("frames_catch_up", link.frames_catch_up.to_string());
                line("bytes_sent", link.bytes_sent.to_string());
                line("log_retained_bytes", database.log.retained_bytes().to_string());
                line("suspended_reason", s.suspend_reason().unwrap_or("").to_string());
                line("commit_lsn", s.commit_lsn(database.log.lsn_hardened()).0.to_string());
            }
            Some(Link::Mirror(link)) => {
                let redone = link.pipeline.as_ref().map(|p| p.lsn_redone()).unwrap_or(Lsn::ZERO);
                let state = match (link.conn, link.principal_state) {
                    (None, _) => MirroringState::Disconnected,
                    (Some(_), Some(state)) => state,
                    (Some(_), None) => MirroringState::Synchronizing,
                };
                line("role", "mirror".into());
                line("state", state.to_string());
                line("safety", link.principal_safety.unwrap_or(link.settings.safety).to_string());
                line("partner", link.settings.partner.clone());
                line("connected", (link.conn.is_some() as u8).to_string());
                line("exposed", "0".into());
                line("database_state", "RESTORING".into());
                line("discarded", link.settings.discarded.clone().unwrap_or_default());
                line("principal_was_synchronized", (link.last_synchronized as u8).to_string());
                line("principal_safety", link.principal_safety.map(|s| s.to_string()).unwrap_or_default());
                line("lsn_redone", redone.0.to_string());
                line("lsn_dispatched", link.lsn_dispatched.0.to_string());
                line("redo_queue_bytes", database.log.lsn_hardened().0.saturating_sub(redone.0).to_string());
                line(
                    "redo_queue_pipeline_bytes",
                    link.pipeline.as_ref().map(|p| p.queued_bytes()).unwrap_or(0).to_string(),
                );
                line("frames_received", link.frames_received.to_string());
                line("frames_rejected", link.frames_rejected.to_string());
                line("redo_failure", link.failure.clone().unwrap_or_default());
                line("rewind_pages_left", link.rewind.as_ref().map_or(0, |r| r.pages.len()).to_string());
                line("rewound_pages", link.rewound_pages.to_string());
                line("checkpoint_lsn", database.checkpoint_lsn().0.to_string());
            }
        }
        out
    }

    /// `MIRROR …` on database `db`.
    pub(super) fn mirror_command(&mut self, db: usize, args: &[Vec<u8>]) -> Result<Reply> {
        let words: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).collect();
        let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        let reply = match (word(1), word(2)) {
            ("STATUS", "") => Reply::Bulk(self.mirror_status(db).into_bytes()),
            ("SET", "PARTNER") if args.len() == 4 => {
                let partner = String::from_utf8_lossy(&args[3]).to_string();
                self.set_partner(db, partner)?
            }
            ("SET", "SAFETY") if args.len() == 4 => match SafetyLevel::parse(word(3)) {
                None => Reply::error("ERR MIRROR SET SAFETY takes FULL or OFF"),
                Some(safety) => match self.links[db].as_mut() {
                    Some(Link::Principal(link)) => {
                        let cmds = link.session.on_event(Event::SetSafety(safety));
                        self.run_session_commands(db, cmds);
                        Reply::ok()
                    }
                    _ => Reply::error("ERR the safety level is set on the principal"),
                },
            },
            ("SET", "WITNESS") if args.len() == 4 => self.set_witness(db, String::from_utf8_lossy(&args[3]).to_string())?,
            ("SUSPEND", "") | ("RESUME", "") => match self.links[db].as_mut() {
                Some(Link::Principal(link)) => {
                    let event = if word(1) == "SUSPEND" {
                        Event::Suspend { reason: "by an administrator (MIRROR SUSPEND)".into() }
                    } else {
                        Event::Resume
                    };
                    let cmds = link.session.on_event(event);
                    self.run_session_commands(db, cmds);
                    Reply::ok()
                }
                _ => Reply::error("ERR SUSPEND and RESUME are given on the principal"),
            },
            ("OFF", "") => self.mirroring_off(db)?,
            ("FAILOVER", "") => self.start_failover(db),
            ("FORCE_SERVICE", "") => {
                self.pending_force_service.push(db);
                Reply::ok()
            }
            _ => Reply::error(
                "ERR usage: MIRROR STATUS | SET PARTNER tcp://HOST:PORT | SET WITNESS tcp://HOST:PORT|OFF | SET SAFETY FULL|OFF | SUSPEND | RESUME | OFF | FAILOVER | FORCE_SERVICE",
            ),
        };
        Ok(reply)
    }

    fn set_partner(&mut self, db: usize, partner: String) -> Result<Reply> {
        if self.config.mirroring.key.is_none() {
            return Ok(Reply::error("ERR mirroring needs the server started with --endpoint-key-file"));
        }
        if let Err(e) = settings::parse_partner(&partner) {
            return Ok(Reply::error(format!("ERR {e}")));
        }
        let database = self.dbs[db].as_ref().expect("owned");
        let dir = database.dir().to_path_buf();
        match self.links[db].as_mut() {
            Some(Link::Mirror(link)) => {
                link.settings.partner = partner;
                link.settings.store(&dir)?;
                return Ok(Reply::ok());
            }
            Some(Link::Principal(_)) => {
                return Ok(Reply::error("ERR this database is already mirrored; MIRROR OFF first"));
            }
            None => {}
        }
        if database.is_restoring() {
            return Ok(Reply::error("ERR a RESTORING database without mirroring settings cannot be set up here"));
        }
        let settings = MirroringSettings::new(
            Role::Principal,
            partner,
            self.config.mirroring.safety,
            database.log.epoch().0,
            self.config.mirroring.witness.clone(),
        );
        settings.store(&dir)?;
        let link = self.principal_link(db, settings)?;
        self.links[db] = Some(link);
        Ok(Reply::ok())
    }

    /// MIRROR SET WITNESS tcp://HOST:PORT | OFF, on either partner (both need it).
    fn set_witness(&mut self, db: usize, witness: String) -> Result<Reply> {
        let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
        let off = witness.eq_ignore_ascii_case("OFF");
        let addr = if off {
            None
        } else {
            match settings::parse_partner(&witness) {
                Ok(a) => Some(a),
                Err(e) => return Ok(Reply::error(format!("ERR {e}"))),
            }
        };
        let settings = match self.links[db].as_mut() {
            Some(Link::Principal(link)) if link.session.safety() != SafetyLevel::Full && !off => {
                return Ok(Reply::error("ERR a witness needs SAFETY FULL"));
            }
            Some(Link::Principal(link)) => &mut link.settings,
            Some(Link::Mirror(link)) => &mut link.settings,
            None => return Ok(Reply::error("ERR this database is not mirrored: set the partner first")),
        };
        settings.witness = if off { None } else { Some(witness) };
        settings.store(&dir)?;
        if let Some(id) = self.witness_links[db].take().and_then(|w| w.conn) {
            self.close_peer(id, "witness changed");
        }
        self.witness_links[db] = addr.map(WitnessLink::new);
        Ok(Reply::ok())
    }

    fn mirroring_off(&mut self, db: usize) -> Result<Reply> {
        let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
        match self.links[db].take() {
            Some(Link::Principal(link)) => {
                MirroringSettings::remove(&dir)?;
                if let Some(id) = link.conn {
                    self.close_peer(id, "mirroring removed (MIRROR OFF)");
                }
                let database = self.dbs[db].as_mut().expect("owned");
                database.log.set_shipping(false);
                database.log.set_retention_hold(None);
                database.log_checkpoint_records = false;
                database.set_mirror_page_limit(None);
                eprintln!("mirrorlog: database {db}: mirroring removed");
                self.release_dbs.push(db);
                Ok(Reply::ok())
            }
            Some(Link::Mirror(link)) => {
                // The copy stays RESTORING (and keeps its settings): recovering it into a
                // database of its own is a restore step, not this command.
                let conn = link.conn;
                self.links[db] = Some(Link::Mirror(link));
                if let Some(id) = conn {
                    self.close_peer(id, "mirroring removed on the mirror (MIRROR OFF)");
                }
                Ok(Reply::ok())
            }
            None => Ok(Reply::error("ERR this database is not mirrored")),
        }
    }

    /// Why clients may not use database `db`, if they may not: a mirror copy, or a principal
    /// that a newer one superseded.
    pub(super) fn refuses_clients(&self, db: usize) -> Option<String> {
        let database = self.dbs[db].as_ref()?;
        if database.is_restoring() {
            return Some(format!(
                "READONLY database {db} is a mirror (RESTORING): it can be neither read nor written; connect to the principal"
            ));
        }
        match &self.links[db] {
            Some(Link::Principal(link)) if link.settings.fenced_by.is_some() => Some(format!(
                "READONLY database {db} is fenced: a principal of role sequence {} took over; connect to it",
                link.settings.fenced_by.unwrap_or(0)
            )),
            Some(Link::Principal(link)) if link.failover.is_some() => None, // waits (paused) instead
            Some(Link::Principal(_)) if self.has_no_quorum(db) => Some(format!(
                "ERR database {db} has no quorum: it lost both its mirror and the witness (the mirror may be taking over)"
            )),
            _ => None,
        }
    }

    /// Database `db` learned of a principal at role sequence `by`, newer than its own: it stops
    /// serving at once, and remembers it across restarts.
    fn fence(&mut self, db: usize, by: Epoch) {
        let dir = self.dbs[db].as_ref().expect("owned").dir().to_path_buf();
        let Some(Link::Principal(link)) = self.links[db].as_mut() else { return };
        if link.settings.fenced_by.is_some_and(|f| f >= by.0) {
            return;
        }
        eprintln!(
            "mirrorlog: database {db}: FENCED: a principal of role sequence {} exists; this one (role sequence {}) takes no more commands",
            by.0, link.settings.role_sequence
        );
        link.settings.fenced_by = Some(by.0);
        if let Err(e) = link.persist(&dir) {
            eprintln!("mirrorlog: database {db}: cannot persist the fencing: {e}");
        }
        // Not suspended: it keeps dialing its partner, whose refusal says where the newer role
        // sequence began — the LSN it cuts its log back to when it rejoins as mirror.
        self.release_dbs.push(db);
    }

    /// A mirror follows its principal's role sequence (persisted before it acts on it).
    fn adopt_role_sequence(&mut self, db: usize, epoch: Epoch) {
        let database = self.dbs[db].as_mut().expect("owned");
        if epoch <= database.log.epoch() {
            return;
        }
        database.log.set_epoch(epoch);
        let dir = database.dir().to_path_buf();
        if let Some(Link::Mirror(link)) = self.links[db].as_mut() {
            link.settings.role_sequence = epoch.0;
            if let Err(e) = link.settings.store(&dir) {
                eprintln!("mirrorlog: database {db}: cannot persist role sequence {}: {e}", epoch.0);
            }
        }
    }

    // ---- role changes ------------------------------------------------------------------------

    /// MIRROR FAILOVER on the principal: SAFETY FULL, SYNCHRONIZED, connected. New commands
    /// wait (PENDING_FAILOVER) while the log drains to the mirror; then the mirror is told to
    /// take over at that LSN (`drive_failover`).
    fn start_failover(&mut self, db: usize) -> Reply {
        let Some(Link::Principal(link)) = self.links[db].as_mut() else {
            return Reply::error("ERR MIRROR FAILOVER is given on the principal");
        };
        let s = &link.session;
        if s.safety() != SafetyLevel::Full || s.state() != MirroringState::Synchronized || link.conn.is_none() {
            return Reply::error(format!(
                "ERR manual failover needs SAFETY FULL and a connected, SYNCHRONIZED mirror (now: SAFETY {}, {})",
                s.safety(),
                s.state()
            ));
        }
        if link.failover.is_some() {
            return Reply::error("ERR a failover is already in progress");
        }
        link.failover = Some(Failover::Draining { since: Instant::now() });
        self.dbs[db].as_mut().expect("owned").failover_pending = true;
        eprintln!("mirrorlog: database {db}: manual failover requested: PENDING_FAILOVER, draining the log");
        Reply::ok()
    }

    /// Moves a manual failover on: once the log is drained and hardened on the mirror, sends
    /// FAILOVER; gives up (and becomes a mirror anyway: never two principals) if the mirror
    /// does not answer within the partner timeout.
    fn drive_failover(&mut self, ring: &mut Ring, db: usize) -> Result<()> {
        let now = Instant::now();
        let timeout = self.config.mirroring.partner_timeout;
        let endpoint = self.endpoint_addr;
        let database = self.dbs[db].as_mut().expect("owned");
        let Some(Link::Principal(link)) = self.links[db].as_mut() else { return Ok(()) };
        match link.failover {
            None => {}
            Some(Failover::Draining { since }) => {
                let drained = !database.commit_in_progress()
                    && !database.log.write_in_flight()
                    && !database.log.has_unwritten()
                    && database.log.lsn_hardened() == database.log.lsn_appended();
                let lsn = database.log.lsn_hardened();
                let conn = link.conn.and_then(|id| self.peers.get_mut(&id)).filter(|c| c.ready());
                match conn {
                    Some(conn) if drained && link.session.lsn_mirror_hardened() == lsn => {
                        let next = Epoch(database.log.epoch().0 + 1);
                        // The in-doubt outcome (this database the mirror at `next`) is durable
                        // before FAILOVER leaves: a restart before FAILOVER_DONE must not come
                        // back as the principal of the old role sequence (the stateright model
                        // found a lost commit that way).
                        link.failover = Some(Failover::Sent { lsn, epoch: next, since: now });
                        if let Err(e) = link.persist(database.dir()) {
                            link.failover = None;
                            database.failover_pending = false;
                            eprintln!("mirrorlog: database {db}: manual failover abandoned: cannot persist it: {e}");
                            self.release_dbs.push(db);
                            return Ok(());
                        }
                        let body = endpoint.map(|e| e.to_string()).unwrap_or_default();
                        let bytes = frame::encode_frame(
                            conn.version(),
                            FrameKind::Failover,
                            db_id_of(db),
                            next,
                            lsn,
                            lsn,
                            body.as_bytes(),
                            false,
                        );
                        conn.out.push_back(Outgoing::Bytes(bytes));
                        link.failover = Some(Failover::Sent { lsn, epoch: next, since: now });
                        eprintln!(
                            "mirrorlog: database {db}: failover at {lsn}: the mirror takes role sequence {}",
                            next.0
                        );
                    }
                    Some(_) if now.saturating_duration_since(since) < timeout => {}
                    _ => {
                        // The mirror went away or never caught up: the failover is called off
                        // and this database goes on as principal.
                        link.failover = None;
                        database.failover_pending = false;
                        eprintln!("mirrorlog: database {db}: manual failover abandoned: the mirror did not catch up");
                        self.release_dbs.push(db);
                    }
                }
            }
            // In doubt: the mirror may have taken over. Becoming a mirror is the safe side (at
            // worst no principal; FORCE_SERVICE on the other side fixes that).
            Some(Failover::Sent { lsn, epoch, since }) if now.saturating_duration_since(since) >= timeout => {
                eprintln!(
                    "mirrorlog: database {db}: no answer to FAILOVER at {lsn} within the partner timeout; becoming the mirror anyway (in doubt)"
                );
                self.become_mirror(ring, db, epoch)?;
            }
            Some(Failover::Sent { .. }) => {}
        }
        Ok(())
    }

    /// Rejoin: a fenced former principal becomes the mirror of the principal of role sequence
    /// `by`, whose role began at `at` (the failover LSN). Its log after `at` holds transactions
    /// the new principal never had (none was acknowledged under SAFETY FULL); they are cut and
    /// kept in a file, the database reopens as a mirror copy at `at`, and the new principal ships
    /// it the rest. A log that ends before `at` is kept whole and caught up from its end. Under
    /// SAFETY FULL no page on disk is newer than what the mirror hardened, so nothing needs
    /// rewinding; pages that are (the principal ran exposed) are fetched from the
    /// new principal first (`mirroring::page_rewind`).
    fn rejoin(&mut self, ring: &mut Ring, db: usize, by: Epoch, at: Lsn) -> Result<()> {
        let Some(Link::Principal(link)) = self.links[db].as_ref() else { return Ok(()) };
        if link.rejoin_refused.is_some() {
            return Ok(());
        }
        let database = self.dbs[db].as_ref().expect("owned");
        if database.commit_in_progress()
            || database.log.write_in_flight()
            || database.log.has_unwritten()
            || database.page_writes_in_flight() > 0
        {
            // After the writes in flight (a page write landing after the scan below could
            // escape the rewind; its completion must not reach the reopened database).
            self.pending_rejoins.push((db, by, at));
            return Ok(());
        }
        let end = database.log.lsn_hardened();
        // A log that ends before the failover LSN is a prefix of the new principal's, and nothing
        // is cut: the mirror hardens each batch while the principal writes it, so a principal
        // killed meanwhile comes back with less log than its mirror had. Everything this server
        // hardened was shipped in order from the same buffers, and the new principal hardened
        // what it received up to `at`. It ships the rest from `end`, as to any mirror behind it.
        let cut = at.min(end);
        // Pages holding changes past the cut (written while the session ran exposed) are fetched
        // from the new principal once connected; the list is persisted before the log is cut.
        let dir = database.dir().to_path_buf();
        let rewind = page_rewind::pages_past(&dir.join("data.pages"), db_id_of(db), cut)?;
        // What is cut: count its transactions while the log is still open.
        let mut transactions = 0u64;
        let mut pos = cut;
        while let Some((_, to, bytes)) = database.log.read_hardened(pos, 1 << 20)? {
            let mut off = 0;
            while let Some(h) = record::parse_header(&bytes[off..]) {
                transactions += (h.kind == redo::TX_COMMIT) as u64;
                off += record::record_size(h.body_len as usize);
                if off >= bytes.len() {
                    break;
                }
            }
            pos = to;
        }
        let old = match self.links[db].take() {
            Some(Link::Principal(old)) => old,
            _ => unreachable!("checked above"),
        };
        if let Some(id) = old.conn {
            self.close_peer(id, "rejoining as mirror");
        }
        let config = crate::store::database::DatabaseConfig {
            dir: dir.clone(),
            db_id: db_id_of(db),
            epoch: by,
            cache_pages: (self.config.cache_size as usize / crate::store::page::PAGE_SIZE) / self.config.databases,
            segment_size: self.config.segment_size,
            restoring: true,
        };
        // Close the log and the pages (its dirty pages hold nothing the new principal lacks
        // that is worth keeping: they are dropped), then cut the log.
        self.dbs[db] = None;
        if !rewind.is_empty() {
            RewindList::store(&dir, cut, &rewind)?;
        }
        // A checkpoint taken past the cut wrote every change up to the cut: redo starts at the
        // cut then (the log past it is not this history any more).
        let control = crate::store::control::ControlFile::new(&dir, db_id_of(db));
        if control.read()? > cut {
            control.write(cut)?;
        }
        let cut_bytes = crate::wal::truncate::truncate_after(&dir.join("log"), cut)?;
        let file = format!("discarded-{}-{}.log", at.0, end.0);
        let discarded = if end > at {
            std::fs::write(dir.join(&file), &cut_bytes).map_err(|e| Error::io(format!("write {file}"), e))?;
            Some(format!("{at} to {end}, {transactions} transaction(s), in {}", dir.join(&file).display()))
        } else {
            None
        };
        let settings = MirroringSettings {
            discarded: discarded.clone(),
            ..MirroringSettings::new(
                Role::Mirror,
                old.settings.partner.clone(),
                old.settings.safety,
                by.0,
                old.settings.witness.clone(),
            )
        };
        settings.store(&dir)?;
        let database = crate::store::database::Database::open(config, ring, token(super::KIND_LOG, db as u64))?;
        self.dbs[db] = Some(database);
        let link = self.mirror_link(db, settings)?;
        self.links[db] = Some(link);
        eprintln!(
            "mirrorlog: database {db}: REJOINED as mirror at role sequence {} from {cut}; discarded {}; {} page(s) to rewind{}",
            by.0,
            discarded.unwrap_or_else(|| "nothing".to_string()),
            rewind.len(),
            if end < at { format!("; the new principal ships {end} to {at}, which this server had not hardened") } else { String::new() }
        );
        self.release_dbs.push(db);
        Ok(())
    }

    /// Role changes and fencing that frames or commands asked for, run where the ring is at
    /// hand.
    fn run_role_changes(&mut self, ring: &mut Ring) -> Result<()> {
        let changed = !self.pending_failovers.is_empty()
            || !self.pending_auto_failovers.is_empty()
            || !self.pending_role_changes.is_empty()
            || !self.pending_force_service.is_empty()
            || self.links.iter().any(|l| matches!(l, Some(Link::Principal(p)) if p.failover.is_some()));
        for (db, by) in std::mem::take(&mut self.pending_fences) {
            self.fence(db, by);
        }
        for (db, by, at) in std::mem::take(&mut self.pending_rejoins) {
            if let Err(e) = self.rejoin(ring, db, by, at) {
                eprintln!("mirrorlog: database {db}: cannot rejoin as mirror: {e}; it stays fenced");
                if let Some(Link::Principal(link)) = self.links[db].as_mut() {
                    link.rejoin_refused = Some(e.to_string());
                }
            }
        }
        for (id, db, header, body) in std::mem::take(&mut self.pending_failovers) {
            if let Err(reason) = self.mirror_failover(ring, id, db, &header, &body) {
                eprintln!("mirrorlog: database {db}: {reason}");
                self.refuse_peer(id, &reason);
            }
        }
        for (db, epoch) in std::mem::take(&mut self.pending_role_changes) {
            if let Err(e) = self.become_mirror(ring, db, epoch) {
                eprintln!("mirrorlog: database {db}: becoming the mirror failed: {e}");
            }
        }
        for (db, epoch) in std::mem::take(&mut self.pending_auto_failovers) {
            let partner = match &self.links[db] {
                Some(Link::Mirror(link)) => Some(link.settings.partner.clone()).filter(|p| !p.is_empty()),
                _ => continue,
            };
            eprintln!(
                "mirrorlog: database {db}: AUTOMATIC FAILOVER granted by the witness: serving at role sequence {}",
                epoch.0
            );
            if let Err(e) = self.become_principal(ring, db, epoch, partner) {
                eprintln!("mirrorlog: database {db}: automatic failover failed: {e}");
            }
        }
        for db in std::mem::take(&mut self.pending_force_service) {
            let log = &self.dbs[db].as_ref().expect("owned").log;
            if log.write_in_flight() || log.has_unwritten() {
                // Serve with the whole log this copy holds: let the write in flight finish.
                self.pending_force_service.push(db);
                continue;
            }
            if let Err(e) = self.force_service(ring, db).map(|r| {
                if let Reply::Error(e) = r {
                    eprintln!("mirrorlog: database {db}: {e}")
                }
            }) {
                eprintln!("mirrorlog: database {db}: forced service failed: {e}");
            }
        }
        for db in 0..self.links.len() {
            if matches!(self.links[db], Some(Link::Principal(ref l)) if l.failover.is_some()) {
                self.drive_failover(ring, db)?;
            }
        }
        if changed {
            // Commands that waited (PENDING_FAILOVER) run now, against the new role.
            let ids: Vec<u64> = self.conns.iter().filter(|(_, c)| !c.input.is_empty()).map(|(id, _)| *id).collect();
            for id in ids {
                self.process(id);
                self.flush(ring, id)?;
            }
        }
        Ok(())
    }

    /// The old principal's side of a failover (or an in-doubt one): role sequence `epoch`
    /// persisted first, then the database becomes a mirror copy waiting for the new principal.
    fn become_mirror(&mut self, ring: &mut Ring, db: usize, epoch: Epoch) -> Result<()> {
        let Some(Link::Principal(old)) = self.links[db].take() else { return Ok(()) };
        if let Some(id) = old.conn {
            self.close_peer(id, "failover: this database is the mirror now");
        }
        let database = self.dbs[db].as_mut().expect("owned");
        let settings = MirroringSettings::new(
            Role::Mirror,
            old.settings.partner.clone(),
            old.settings.safety,
            epoch.0,
            old.settings.witness.clone(),
        );
        let dir = database.dir().to_path_buf();
        settings.store(&dir)?;
        database.log.set_epoch(epoch);
        database.log.set_shipping(false);
        database.log.set_retention_hold(None);
        database.become_restoring(ring, super::checkpoint_token(db))?;
        let link = self.mirror_link(db, settings)?;
        self.links[db] = Some(link);
        eprintln!("mirrorlog: database {db}: now the MIRROR (RESTORING) at role sequence {}", epoch.0);
        self.release_dbs.push(db);
        Ok(())
    }

    /// The mirror's side of a failover or of forced service: redo finished (every page written
    /// and synced), role sequence `epoch` persisted, then the database serves as principal and
    /// dials `partner` as its mirror (if given).
    fn become_principal(&mut self, ring: &mut Ring, db: usize, epoch: Epoch, partner: Option<String>) -> Result<()> {
        // Every hardened transaction goes to the redo workers first (the rings may be full:
        // dispatch until nothing hardened is left).
        loop {
            self.mirror_checkpoint(db);
            self.mirror_dispatch(db);
            let hardened = self.dbs[db].as_ref().expect("owned").log.lsn_hardened();
            let Some(Link::Mirror(link)) = self.links[db].as_ref() else { return Ok(()) };
            let left = link
                .pending
                .front()
                .is_some_and(|r| r.end_lsn <= hardened && r.kind != redo::PAGE_IMAGE && r.kind != redo::PAGE_DIFF)
                || link.pending.iter().any(|r| r.kind == redo::TX_COMMIT && r.end_lsn <= hardened);
            if !left || link.failure.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(Link::Mirror(mut old)) = self.links[db].take() else { return Ok(()) };
        if let Some(f) = &old.failure {
            let failure = f.clone();
            self.links[db] = Some(Link::Mirror(old));
            return Err(Error::Mirroring(format!("redo failed on this mirror ({failure}): it cannot serve")));
        }
        if let Some(pipeline) = old.pipeline.take() {
            // Blocks this shard for as long as redo takes to finish: a role change is rare, and
            // nothing may be served before every hardened transaction is in the pages.
            pipeline.stop()?;
        }
        let incomplete_tail =
            !old.tx.is_empty() || old.pending.iter().any(|r| r.kind == redo::PAGE_IMAGE || r.kind == redo::PAGE_DIFF);
        let database = self.dbs[db].as_mut().expect("owned");
        let dir = database.dir().to_path_buf();
        let partner = partner.filter(|p| settings::parse_partner(p).is_ok());
        let settings = partner.map(|partner| MirroringSettings {
            // The failover LSN: a former principal that rejoins cuts its log back to here.
            role_start_lsn: Some(database.log.lsn_hardened().0),
            ..MirroringSettings::new(
                Role::Principal,
                partner,
                old.settings.safety,
                epoch.0,
                old.settings.witness.clone(),
            )
        });
        match &settings {
            Some(s) => s.store(&dir)?,
            None => MirroringSettings::remove(&dir)?,
        }
        database.log.set_epoch(epoch);
        database.become_principal(ring, incomplete_tail)?;
        eprintln!(
            "mirrorlog: database {db}: now the PRINCIPAL at role sequence {} (log end {})",
            epoch.0,
            database.log.lsn_hardened()
        );
        if let Some(settings) = settings {
            let link = self.principal_link(db, settings)?;
            self.links[db] = Some(link);
        }
        self.release_dbs.push(db);
        Ok(())
    }

    /// FAILOVER from the principal: everything up to its LSN is here and hardened.
    fn mirror_failover(
        &mut self,
        ring: &mut Ring,
        id: u64,
        db: usize,
        header: &FrameHeader,
        body: &[u8],
    ) -> std::result::Result<(), String> {
        let database = self.dbs[db].as_ref().expect("owned");
        let (hardened, appended, ours) =
            (database.log.lsn_hardened(), database.log.lsn_appended(), database.log.epoch());
        if hardened != header.lsn_to || appended != header.lsn_to || header.epoch <= ours {
            return Err(format!(
                "FAILOVER at {} with role sequence {} refused: this mirror has hardened {hardened} (appended {appended}) at role sequence {}",
                header.lsn_to, header.epoch.0, ours.0
            ));
        }
        let partner = Some(format!("tcp://{}", String::from_utf8_lossy(body)));
        if let Err(e) = self.become_principal(ring, db, header.epoch, partner) {
            return Err(format!("failover failed here: {e}"));
        }
        // The old principal learns it is done; this connection ends, the new principal dials.
        let Some(conn) = self.peers.get_mut(&id) else { return Ok(()) };
        let bytes = frame::encode_frame(
            conn.version(),
            FrameKind::FailoverDone,
            db_id_of(db),
            header.epoch,
            header.lsn_to,
            header.lsn_to,
            &[],
            false,
        );
        conn.out.push_back(Outgoing::Bytes(bytes));
        conn.db = None;
        self.close_peer_lingering(id, "failover done: this database is the principal now", true);
        Ok(())
    }

    /// MIRROR FORCE_SERVICE on the mirror: the principal is gone; this copy serves with what it
    /// has (possible data loss: what the principal did not ship), at a new role sequence that
    /// fences the old principal.
    fn force_service(&mut self, ring: &mut Ring, db: usize) -> Result<Reply> {
        let Some(Link::Mirror(link)) = self.links[db].as_ref() else {
            return Ok(Reply::error("ERR MIRROR FORCE_SERVICE is given on the mirror"));
        };
        if link.conn.is_some() {
            return Ok(Reply::error(
                "ERR the principal is connected: use MIRROR FAILOVER on the principal (no data loss)",
            ));
        }
        let partner = Some(link.settings.partner.clone()).filter(|p| !p.is_empty());
        let next = Epoch(self.dbs[db].as_ref().expect("owned").log.epoch().0 + 1);
        eprintln!(
            "mirrorlog: database {db}: FORCE_SERVICE: serving at role sequence {} with the log hardened here (what the principal did not ship is lost)",
            next.0
        );
        self.become_principal(ring, db, next, partner)?;
        Ok(Reply::ok())
    }
}

/// INFO mirroring's line for one database: the status fields that matter most, `name=value`.
pub(super) fn info_line(status: &str) -> String {
    const FIELDS: [&str; 10] = [
        "role",
        "state",
        "safety",
        "exposed",
        "partner",
        "lsn_hardened",
        "mirror_lsn_hardened",
        "send_queue_bytes",
        "lsn_redone",
        "redo_queue_bytes",
    ];
    let pairs: Vec<(&str, &str)> = status.split("\r\n").filter_map(|l| l.split_once(':')).collect();
    FIELDS
        .iter()
        .filter_map(|f| pairs.iter().find(|(k, _)| k == f).map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks that the principal's log holds, where the mirror's hardened log ends, the same record
/// as the mirror: a principal that lost the tail of its log in a crash (after sending it) and
/// wrote other records at those LSNs would otherwise extend a mirror that has diverged.
fn check_tail(database: &crate::store::database::Database, info: &ReadyInfo) -> std::result::Result<(), String> {
    let tail = info.tail;
    if info.lsn_hardened == Lsn::ZERO {
        return Ok(());
    }
    let diverged = |detail: String| {
        format!(
            "the mirror's log differs from this principal's before {} ({detail}): the principal lost log it had sent (a crash?); restore the mirror",
            info.lsn_hardened
        )
    };
    let read = database
        .log
        .read_hardened(tail.lsn, record::record_size(crate::constants::RECORD_BODY_SIZE_MAX))
        .map_err(|e| diverged(format!("no record here at {}: {e}", tail.lsn)))?;
    let Some((from, _, bytes)) = read else {
        return Err(diverged(format!("this log ends before {}", tail.lsn)));
    };
    let header = record::parse_header(&bytes).filter(|_| from == tail.lsn);
    match header {
        Some(h)
            if h.body_crc == tail.body_crc
                && h.body_len == tail.body_len
                && h.kind.0 == tail.kind
                && tail.lsn.advance(record::record_size(h.body_len as usize) as u64) <= info.lsn_hardened =>
        {
            Ok(())
        }
        _ => Err(diverged(format!("the records at {} differ", tail.lsn))),
    }
}

/// Dispatches one transaction's page records in pieces that fit the rings (each piece keeps
/// the records' order). Ok(false) if even a piece does not fit now.
fn dispatch_in_pieces(pipeline: &mut RedoPipeline, tx: &mut Vec<RedoRecord>) -> Result<bool> {
    let piece = (REDO_RING_CAPACITY / 2).max(1);
    while !tx.is_empty() {
        let rest = tx.split_off(piece.min(tx.len()));
        let mut part = std::mem::replace(tx, rest);
        if !pipeline.try_dispatch(&mut part)? {
            part.append(tx);
            *tx = part;
            return Ok(false);
        }
    }
    Ok(true)
}

/// `tcp://HOST:PORT` as the socket address string both partners use for it.
fn normalized_partner(partner: &str) -> String {
    settings::parse_partner(partner).map(|a| a.to_string()).unwrap_or_else(|_| partner.to_string())
}

/// Whether encoded frame bytes are a REFUSE.
fn is_refuse(bytes: &[u8]) -> bool {
    bytes.get(10) == Some(&(FrameKind::Refuse as u8))
}

fn is_redo_kind(kind: RecordKind) -> bool {
    matches!(kind, redo::PAGE_IMAGE | redo::PAGE_DIFF | redo::TX_COMMIT | redo::TX_ABORT | redo::CHECKPOINT)
}
