//! A deterministic simulation of a mirroring session: two partners and a witness on a simulated
//! network (per-direction links that drop, delay and reorder, partitions of any pair), simulated
//! disks (a crash loses what was not flushed), a simulated clock, and clients committing all
//! the time. The partners' commit rule and states are the real `PrincipalSession`, the witness is
//! the real `witness::Witness`, and each partner's side of the witness protocol (leases,
//! exposure records, quorum) is the real `mirroring::witness_client::WitnessClient`. The log
//! shipping and the mirror's log are modelled here the way the server does them
//! (`server::shard_server::peer`).
//!
//! Invariants, checked as the run goes, each in its own file:
//! - `no_lost_commit`: no commit acknowledged under SAFETY FULL is missing from a later
//!   principal's log;
//! - `one_principal`: at most one principal per role sequence, and no overlap in time (once a
//!   principal of role sequence N+1 has answered a commit, no principal of a lower one answers
//!   another);
//! - `mirror_prefix`: while SYNCHRONIZED, the log the mirror hardened and acknowledged is a
//!   prefix of its principal's (same role sequence);
//! - `progress`: after every fault heals, a principal exists and commits proceed.
//!
//! A run is a pure function of its seed: a failure prints the seed, and `run(seed)` replays it.

mod mirror_prefix;
mod no_lost_commit;
mod one_principal;
mod progress;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::mirroring::session::{Command, Event, MirroringState, PrincipalSession, SafetyLevel};
use crate::mirroring::witness_client::{principal_lost, PartnerView, WitnessClient};
use crate::wal::Lsn;
use crate::witness::state::{Answer, Report, ReportRole, SessionKey, Witness};

/// Bugs planted on purpose, each of which the invariants must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The principal answers a commit once it is hardened locally, even when SYNCHRONIZED.
    AckBeforeMirrorHardened,
    /// The mirror acknowledges what it received, not what it hardened.
    MirrorAcksReceived,
    /// The witness forgets, when it restarts, what it recorded (exposure, grants).
    WitnessForgetsOnRestart,
}

#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub seed: u64,
    pub commits_acknowledged: u64,
    pub failovers: u64,
    pub violations: Vec<String>,
}

const TIMEOUT_MS: u64 = 1000;
const RUN_MS: u64 = 20_000;
const HEAL_MS: u64 = 5_000;

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

#[derive(Debug, Clone)]
enum Msg {
    /// Principal → mirror: its log from `from` (records are (role sequence, commit id)), its
    /// state, its role sequence.
    /// `incarnation` counts the principal's restarts: a frame of an older one is stale (the real
    /// mirror drops frames of a replaced connection).
    Log {
        rs: u64,
        incarnation: u64,
        from: usize,
        records: Vec<(u64, u64)>,
        synchronized: bool,
    },
    /// Mirror → principal: hardened up to `hardened`, the last of those records being `tail`
    /// (the principal counts it only if its own log agrees: the real `check_tail`).
    Ack {
        rs: u64,
        hardened: usize,
        tail: Option<(u64, u64)>,
    },
    Report {
        from: usize,
        report: Report,
        number: u64,
    },
    Answer {
        number: u64,
        granted: Option<u64>,
        exposure_recorded: bool,
        role_sequence: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Principal,
    Mirror,
    Fenced,
}

struct Partner {
    role: Role,
    rs: u64,
    up: bool,
    log: Vec<(u64, u64)>,
    /// Durable prefix.
    hardened: usize,
    /// A flush completes at this time, making `log[..to]` durable.
    flush: Option<(u64, usize)>,
    session: PrincipalSession,
    /// Mirror: when the principal was last heard, and whether it said SYNCHRONIZED then.
    heard_principal: u64,
    principal_synchronized: bool,
    /// Principal: when the mirror was last heard and what it hardened.
    heard_mirror: Option<u64>,
    /// The partner's side of the witness protocol: the server's own code.
    witness: WitnessClient,
    /// Commits waiting for their answer: (end index, id).
    waiting: VecDeque<(usize, u64)>,
    /// A principal that restarted after a crash resends from where its log was cut until the
    /// mirror is SYNCHRONIZED again (the mirror may hold records it lost: they are replaced).
    resend_from: Option<usize>,
    /// Restarts of this node; and, as a mirror, the newest incarnation of its principal seen.
    incarnation: u64,
    principal_incarnation: u64,
}

impl Partner {
    fn new(role: Role) -> Self {
        Self {
            role,
            rs: 1,
            up: true,
            log: Vec::new(),
            hardened: 0,
            flush: None,
            session: PrincipalSession::new(SafetyLevel::Full, Duration::from_millis(TIMEOUT_MS), None),
            heard_principal: 0,
            principal_synchronized: false,
            heard_mirror: None,
            witness: WitnessClient::new(),
            waiting: VecDeque::new(),
            resend_from: None,
            incarnation: 0,
            principal_incarnation: 0,
        }
    }
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    base: Instant,
    planted: Option<PlantedBug>,
    nodes: [Partner; 2],
    witness: Witness,
    witness_up: bool,
    /// links[a][b]: can a send to b (2 is the witness)?
    links: [[bool; 3]; 3],
    in_flight: Vec<(u64, usize, Msg)>,
    next_id: u64,
    /// Every acknowledged commit: id → role sequence it was answered in.
    acknowledged: BTreeMap<u64, u64>,
    /// Latest role sequence that answered a commit, and the first time it did.
    answered: BTreeMap<u64, u64>,
    failovers: u64,
    violations: Vec<String>,
}

impl Sim {
    pub fn new(seed: u64, planted: Option<PlantedBug>) -> Self {
        Self {
            seed,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            now: 0,
            base: Instant::now(),
            planted,
            nodes: [Partner::new(Role::Principal), Partner::new(Role::Mirror)],
            witness: Witness::default(),
            witness_up: true,
            links: [[true; 3]; 3],
            in_flight: Vec::new(),
            next_id: 1,
            acknowledged: BTreeMap::new(),
            answered: BTreeMap::new(),
            failovers: 0,
            violations: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.links[from][to] || self.rng.chance(20_000) {
            return; // partitioned, or dropped
        }
        let delay = 1 + self.rng.below(4) + if self.rng.chance(10_000) { self.rng.below(300) } else { 0 };
        self.in_flight.push((self.now + delay, to, msg));
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 5 {
            self.violations.push(format!("t={} ms: {what}", self.now));
        }
    }

    /// One millisecond.
    fn step(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        // Deliver what is due (in the order due; reordering comes from the random delays).
        let now = self.now;
        let mut due: Vec<(u64, usize, Msg)> = Vec::new();
        self.in_flight.retain(|m| {
            if m.0 <= now {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|m| m.0);
        for (_, to, msg) in due {
            self.deliver(to, msg);
        }
        for n in 0..2 {
            self.tick_partner(n);
        }
        self.check_invariants();
    }

    fn inject_faults(&mut self) {
        if self.rng.chance(1_500) {
            let (a, b) = (self.rng.below(3) as usize, self.rng.below(3) as usize);
            if a != b {
                self.links[a][b] = !self.links[a][b];
                if self.rng.chance(500_000) {
                    self.links[b][a] = self.links[a][b]; // symmetric, often
                }
            }
        }
        if self.rng.chance(300) {
            let n = self.rng.below(2) as usize;
            self.crash(n);
        }
        for n in 0..2 {
            if !self.nodes[n].up && self.rng.chance(2_000) {
                self.nodes[n].up = true;
            }
        }
        if self.rng.chance(100) {
            self.witness_up = !self.witness_up;
            if self.witness_up {
                // A restart: what was persisted comes back (unless the planted bug forgets it).
                let durable: Vec<_> = self.witness.grants().map(|(k, g)| (k.clone(), g.clone())).collect();
                self.witness = if self.planted == Some(PlantedBug::WitnessForgetsOnRestart) {
                    Witness::default()
                } else {
                    Witness::restore(durable, self.at(self.now))
                };
            }
        }
    }

    fn crash(&mut self, n: usize) {
        let p = &mut self.nodes[n];
        p.up = false;
        p.log.truncate(p.hardened); // what was not flushed is lost
        p.resend_from = Some(p.hardened);
        p.incarnation += 1;
        p.flush = None;
        p.waiting.clear();
        p.witness.on_restart();
        p.heard_mirror = None;
        p.heard_principal = self.now;
        let safety = p.session.safety();
        p.session = PrincipalSession::new(safety, Duration::from_millis(TIMEOUT_MS), None);
    }

    fn deliver(&mut self, to: usize, msg: Msg) {
        if to == 2 {
            if let Msg::Report { from, report, number } = msg {
                if !self.witness_up {
                    return;
                }
                let key = SessionKey::new(1, "a", "b");
                let names = ["a", "b"];
                let (answer, _) = self.witness.on_numbered_report(
                    &key,
                    names[from],
                    &report,
                    number,
                    self.at(self.now),
                    Duration::from_millis(TIMEOUT_MS),
                );
                self.answer(from, number, answer);
            }
            return;
        }
        if !self.nodes[to].up {
            return;
        }
        match msg {
            Msg::Log { rs, incarnation, from, records, synchronized } => {
                self.on_log(to, (rs, incarnation), from, records, synchronized)
            }
            Msg::Ack { rs, hardened, tail } => self.on_ack(to, rs, hardened, tail),
            Msg::Answer { number, granted, exposure_recorded, role_sequence, .. } => {
                self.on_answer(to, number, Answer { exposure_recorded, granted, role_sequence })
            }
            Msg::Report { .. } => {}
        }
    }

    fn answer(&mut self, to: usize, number: u64, answer: crate::witness::state::Answer) {
        let msg = Msg::Answer {
            number,
            granted: answer.granted,
            exposure_recorded: answer.exposure_recorded,
            role_sequence: answer.role_sequence,
        };
        self.send(2, to, msg);
    }

    fn on_log(
        &mut self,
        n: usize,
        (rs, incarnation): (u64, u64),
        from: usize,
        records: Vec<(u64, u64)>,
        synchronized: bool,
    ) {
        let now = self.now;
        let p = &mut self.nodes[n];
        if rs == p.rs && p.role == Role::Mirror && incarnation < p.principal_incarnation {
            return; // a stale frame of a principal that restarted since
        }
        if rs > p.rs {
            p.principal_incarnation = incarnation;
        } else {
            p.principal_incarnation = p.principal_incarnation.max(incarnation);
        }
        if rs < p.rs || p.role == Role::Fenced {
            return; // fenced: a stale principal's log is refused
        }
        if p.role == Role::Principal {
            if rs > p.rs {
                p.role = Role::Fenced; // a newer principal exists
            }
            return;
        }
        p.rs = rs;
        p.heard_principal = now;
        p.principal_synchronized = synchronized;
        if from > p.log.len() {
            return; // a gap: the principal resends from what was acknowledged
        }
        // Resent records below the end must agree; a differing tail is cut (the principal's
        // log is the truth for its role sequence).
        for (i, record) in records.into_iter().enumerate() {
            let at = from + i;
            if at < p.log.len() {
                if p.log[at] != record {
                    p.log.truncate(at);
                    p.hardened = p.hardened.min(at);
                    p.log.push(record);
                }
            } else {
                p.log.push(record);
            }
        }
        if p.flush.is_none() && p.log.len() > p.hardened {
            p.flush = Some((now + 1 + self.rng.below(3), p.log.len()));
        }
        let ack = if self.planted == Some(PlantedBug::MirrorAcksReceived) { p.log.len() } else { p.hardened };
        let rs = p.rs;
        let tail = ack.checked_sub(1).and_then(|i| p.log.get(i).copied());
        let principal = 1 - n;
        self.send(n, principal, Msg::Ack { rs, hardened: ack, tail });
    }

    fn on_ack(&mut self, n: usize, rs: u64, hardened: usize, tail: Option<(u64, u64)>) {
        let now = self.now;
        let p = &mut self.nodes[n];
        if p.role != Role::Principal {
            return;
        }
        if rs > p.rs {
            p.role = Role::Fenced;
            return;
        }
        if hardened > p.log.len() || hardened.checked_sub(1).and_then(|i| p.log.get(i).copied()) != tail {
            return; // the logs differ there: not an acknowledgement of this log (resent below)
        }
        if !p.session.is_connected() {
            p.session.on_event(Event::Connected {
                mirror_hardened: Lsn(hardened as u64),
                now: self.base + Duration::from_millis(now),
            });
            p.session.on_event(Event::CaughtUp { live_from: Lsn(p.log.len() as u64) });
        }
        p.heard_mirror = Some(now);
        p.session.on_event(Event::Acked { lsn: Lsn(hardened as u64), now: self.base + Duration::from_millis(now) });
    }

    fn on_answer(&mut self, n: usize, number: u64, answer: Answer) {
        let p = &mut self.nodes[n];
        let role = match p.role {
            Role::Principal => ReportRole::Principal,
            Role::Mirror => ReportRole::Mirror,
            Role::Fenced => return,
        };
        let effects = p.witness.on_answer(number, answer, role, p.rs, Duration::from_millis(TIMEOUT_MS));
        if effects.fence.is_some() {
            p.role = Role::Fenced;
        }
        if let Some(rs) = effects.take_over {
            // Automatic failover: serve at the granted role sequence with the hardened log.
            p.role = Role::Principal;
            p.rs = rs;
            p.log.truncate(p.hardened);
            p.flush = None;
            p.session = PrincipalSession::new(SafetyLevel::Full, Duration::from_millis(TIMEOUT_MS), None);
            self.failovers += 1;
            if let Some(id) = no_lost_commit::first_missing(&self.acknowledged, &self.nodes[n].log) {
                self.violation(format!(
                    "acknowledged commit {id} is missing from the new principal (role sequence {rs}, seed {})",
                    self.seed
                ));
            }
        }
    }

    fn tick_partner(&mut self, n: usize) {
        let now = self.now;
        let t = self.base + Duration::from_millis(now);
        if !self.nodes[n].up {
            return;
        }
        // Flush completion.
        if let Some((at, to)) = self.nodes[n].flush {
            if at <= now {
                let p = &mut self.nodes[n];
                p.hardened = p.hardened.max(to.min(p.log.len()));
                p.flush = None;
                if p.log.len() > p.hardened {
                    p.flush = Some((now + 1 + self.rng.below(3), p.log.len()));
                }
                if p.role == Role::Mirror {
                    let (rs, hardened) = (p.rs, p.hardened);
                    let tail = hardened.checked_sub(1).and_then(|i| p.log.get(i).copied());
                    self.send(n, 1 - n, Msg::Ack { rs, hardened, tail });
                }
            }
        }
        match self.nodes[n].role {
            Role::Principal => self.tick_principal(n, now, t),
            Role::Mirror => {}
            Role::Fenced => {}
        }
        // Reports to the witness every 20 ms.
        if now % 20 == n as u64 * 10 {
            let p = &mut self.nodes[n];
            let view = match p.role {
                Role::Principal => PartnerView::Principal {
                    role_sequence: p.rs,
                    synchronized: p.session.state() == MirroringState::Synchronized,
                    exposed: p.session.is_exposed(),
                },
                Role::Mirror => PartnerView::Mirror {
                    role_sequence: p.rs,
                    synchronized: p.principal_synchronized,
                    // The simulated mirror has no connection to lose, only silence.
                    principal_lost: principal_lost(
                        false,
                        self.base + Duration::from_millis(p.heard_principal),
                        t,
                        Duration::from_millis(TIMEOUT_MS),
                    ),
                },
                Role::Fenced => return,
            };
            let (number, report) = p.witness.report(view, 0, t);
            self.send(n, 2, Msg::Report { from: n, report, number });
        }
    }

    fn tick_principal(&mut self, n: usize, now: u64, t: Instant) {
        // Clients commit all the time.
        if self.rng.chance(300_000) {
            let id = self.next_id;
            self.next_id += 1;
            let p = &mut self.nodes[n];
            let rs = p.rs;
            p.log.push((rs, id));
            p.waiting.push_back((p.log.len(), id));
            if p.flush.is_none() {
                p.flush = Some((now + 1 + self.rng.below(3), p.log.len()));
            }
        }
        // The session's clock: a silent mirror is dropped after the partner timeout.
        let p = &mut self.nodes[n];
        if p.heard_mirror.is_some_and(|h| now.saturating_sub(h) >= TIMEOUT_MS) && p.session.is_connected() {
            p.session.on_event(Event::Disconnected {
                now: self.base + Duration::from_millis(p.heard_mirror.unwrap_or(now)),
            });
        }
        let cmds = p.session.on_event(Event::Tick { now: t });
        let _ = cmds.iter().filter(|c| matches!(c, Command::RunExposed)).count();
        // Ship the log every 5 ms (as a live stream would) from what the mirror hardened.
        if now % 5 == 0 {
            if p.session.state() == MirroringState::Synchronized {
                p.resend_from = None;
            }
            let from = (p.session.lsn_mirror_hardened().0 as usize).min(p.resend_from.unwrap_or(usize::MAX));
            let from = from.min(p.log.len());
            let records = p.log[from..].to_vec();
            let synchronized = p.session.state() == MirroringState::Synchronized;
            let (rs, incarnation) = (p.rs, p.incarnation);
            self.send(n, 1 - n, Msg::Log { rs, incarnation, from, records, synchronized });
        }
        // Answer the commits the rule allows.
        let p = &mut self.nodes[n];
        let local = Lsn(p.hardened as u64);
        // The server's rules: running exposed needs the witness's record and lease; no mirror and
        // no lease is no quorum.
        let mut allowed = p.witness.commit_lsn(&p.session, local, t);
        if self.planted == Some(PlantedBug::AckBeforeMirrorHardened) {
            allowed = local;
        }
        let no_quorum = p.witness.has_no_quorum(p.session.is_connected(), t);
        if no_quorum {
            return;
        }
        let rs = p.rs;
        let mut answered = Vec::new();
        while let Some(&(end, id)) = p.waiting.front() {
            if end as u64 > allowed.0 {
                break;
            }
            p.waiting.pop_front();
            // The log may have been cut (crash): only what is still there is answered.
            if p.log.get(end - 1).is_some_and(|r| r.1 == id) {
                answered.push(id);
            }
        }
        for id in answered {
            self.acknowledged.insert(id, rs);
            self.answered.entry(rs).or_insert(now);
            if let Some(newer) = one_principal::newer_answered(&self.answered, rs) {
                self.violation(format!(
                    "a principal of role sequence {rs} answered commit {id} after one of role sequence {newer} had (seed {})",
                    self.seed
                ));
            }
        }
    }

    fn check_invariants(&mut self) {
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        let view = |p: &Partner| (p.up, p.role == Role::Principal, p.rs);
        if let Some(rs) = one_principal::two_principals_at(view(a), view(b)) {
            self.violation(format!("two principals at role sequence {rs} (seed {})", self.seed));
        }
        for (m, p) in [(0, 1), (1, 0)] {
            let (mirror, principal) = (&self.nodes[m], &self.nodes[p]);
            // The SYNCHRONIZED promise: the mirror's hardened log is the principal's.
            let synchronized = principal.session.state() == MirroringState::Synchronized;
            if synchronized
                && mirror.role == Role::Mirror
                && principal.role == Role::Principal
                && mirror.rs == principal.rs
            {
                let acknowledged = principal.session.lsn_mirror_hardened().0 as usize;
                if principal.up
                    && mirror.up
                    && mirror_prefix::broken(
                        &mirror.log,
                        mirror.hardened,
                        acknowledged,
                        &principal.log,
                        principal.hardened,
                    )
                {
                    let msg =
                        format!("the mirror's hardened log is not a prefix of the principal's (seed {})", self.seed);
                    self.violation(msg);
                }
            }
        }
    }

    /// Runs the whole schedule: faults, then healing, then a check of progress.
    pub fn run(mut self) -> SimOutcome {
        for _ in 0..RUN_MS {
            self.step(true);
        }
        self.links = [[true; 3]; 3];
        self.witness_up = true;
        for p in &mut self.nodes {
            p.up = true;
        }
        let before = self.acknowledged.len();
        for _ in 0..HEAL_MS {
            self.step(false);
        }
        if progress::stalled(before, self.acknowledged.len()) {
            let msg = format!("no commit answered in {HEAL_MS} ms after every fault healed (seed {})", self.seed);
            self.violation(msg);
        }
        SimOutcome {
            seed: self.seed,
            commits_acknowledged: self.acknowledged.len() as u64,
            failovers: self.failovers,
            violations: self.violations,
        }
    }
}

/// Runs seed `seed` (with a planted bug, for the tests that prove the invariants catch it).
pub fn run(seed: u64, planted: Option<PlantedBug>) -> SimOutcome {
    Sim::new(seed, planted).run()
}
