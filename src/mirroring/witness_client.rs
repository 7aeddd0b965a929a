//! A partner's side of the witness protocol, sans-IO: what it reports, what the witness's answers
//! give it (a lease, the record of its exposure, a failover grant, a newer role sequence), and
//! the rules that depend on them (quorum, answering commits while exposed, asking to take over).
//!
//! The server (`server::shard_server::peer`) and the deterministic simulator
//! (`testing::sim`) both drive this same code, so the simulator checks the rules the server runs.
//!
//! - Reports are numbered; the number of a report is at least `number_floor` (the server passes
//!   its clock in microseconds, so numbers grow across restarts: the witness orders reports by
//!   them).
//! - A lease runs from when the answered report was *sent*, for half the partner timeout: it ends
//!   before the witness could grant the other partner a failover (which needs this partner
//!   unheard for the whole timeout).
//! - An exposure record counts only from an answer to a report of the current exposure: an
//!   answer to an older report may describe an exposure the witness has since cleared.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::mirroring::session::PrincipalSession;
use crate::wal::Lsn;
use crate::witness::state::{Answer, Report, ReportRole};

/// Reports whose send time is kept (an answer to an older one gives no lease).
const SENT_REMEMBERED: usize = 64;

/// What a partner is, as far as its report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerView {
    Principal {
        role_sequence: u64,
        /// Its mirror is connected and SYNCHRONIZED.
        synchronized: bool,
        /// It answers (or wants to answer) commits without its mirror.
        exposed: bool,
    },
    Mirror {
        role_sequence: u64,
        /// The principal said SYNCHRONIZED, under SAFETY FULL, when it was last heard.
        synchronized: bool,
        /// The principal has been lost for the partner timeout (`principal_lost`).
        principal_lost: bool,
    },
}

/// What an answer asks of the partner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerEffects {
    /// A principal learns of a newer role sequence: it is fenced (stops accepting writes).
    pub fence: Option<u64>,
    /// A mirror is granted the failover: it takes over at this role sequence.
    pub take_over: Option<u64>,
    /// The witness recorded this principal's exposure: commits it held may be answered now.
    pub exposure_recorded: bool,
}

#[derive(Debug, Clone)]
pub struct WitnessClient {
    next_report: u64,
    /// Numbers and send times of recent reports.
    sent: VecDeque<(u64, Instant)>,
    lease_until: Option<Instant>,
    exposure_recorded: bool,
    /// The first report of the current exposure.
    exposed_since_report: Option<u64>,
    role_sequence_seen: u64,
}

impl Default for WitnessClient {
    fn default() -> Self {
        Self::new()
    }
}

impl WitnessClient {
    pub fn new() -> Self {
        Self {
            next_report: 1,
            sent: VecDeque::new(),
            lease_until: None,
            exposure_recorded: false,
            exposed_since_report: None,
            role_sequence_seen: 0,
        }
    }

    /// The next report, numbered at least `number_floor`, sent at `now`.
    pub fn report(&mut self, view: PartnerView, number_floor: u64, now: Instant) -> (u64, Report) {
        let report = match view {
            PartnerView::Principal { role_sequence, synchronized, exposed } => {
                Report { role: ReportRole::Principal, role_sequence, synchronized, exposed, wants_failover: false }
            }
            PartnerView::Mirror { role_sequence, synchronized, principal_lost } => Report {
                role: ReportRole::Mirror,
                role_sequence,
                synchronized,
                exposed: false,
                wants_failover: principal_lost && synchronized,
            },
        };
        let number = self.next_report.max(number_floor);
        self.next_report = number + 1;
        if report.exposed {
            self.exposed_since_report.get_or_insert(number);
        } else {
            self.exposed_since_report = None;
            self.exposure_recorded = false;
        }
        self.sent.push_back((number, now));
        while self.sent.len() > SENT_REMEMBERED {
            self.sent.pop_front();
        }
        (number, report)
    }

    /// The witness answered report `number`. `role` and `role_sequence` are the partner's now;
    /// `timeout` is the partner timeout.
    pub fn on_answer(
        &mut self,
        number: u64,
        answer: Answer,
        role: ReportRole,
        role_sequence: u64,
        timeout: Duration,
    ) -> AnswerEffects {
        // A principal told of a newer role sequence is stale: the answer gives it no lease and
        // no exposure record, whatever else it says (it is fenced; nothing more is released).
        let stale_principal = role == ReportRole::Principal && answer.role_sequence > role_sequence;
        if let Some(&(_, sent)) = self.sent.iter().find(|(n, _)| *n == number).filter(|_| !stale_principal) {
            self.lease_until = Some(sent + timeout / 2);
        }
        let was_recorded = self.exposure_recorded;
        self.exposure_recorded = !stale_principal
            && answer.exposure_recorded
            && self.exposed_since_report.is_some_and(|first| number >= first);
        self.role_sequence_seen = answer.role_sequence;
        let mut effects =
            AnswerEffects { exposure_recorded: self.exposure_recorded && !was_recorded, ..Default::default() };
        match (role, answer.granted) {
            (ReportRole::Principal, _) if answer.role_sequence > role_sequence => {
                effects.fence = Some(answer.role_sequence);
            }
            (ReportRole::Mirror, Some(granted)) if granted == role_sequence + 1 => effects.take_over = Some(granted),
            _ => {}
        }
        effects
    }

    /// The partner restarted: answers to its earlier reports give nothing any more.
    pub fn on_restart(&mut self) {
        self.sent.clear();
        self.lease_until = None;
        self.exposure_recorded = false;
        self.exposed_since_report = None;
    }

    /// The witness heard this partner less than half a partner timeout ago (counted from the
    /// send time of the answered report).
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.lease_until.is_some_and(|until| now < until)
    }

    /// The witness has recorded this principal's current exposure.
    pub fn exposure_recorded(&self) -> bool {
        self.exposure_recorded
    }

    /// The newest role sequence the witness said it knows.
    pub fn role_sequence_seen(&self) -> u64 {
        self.role_sequence_seen
    }

    /// Commits at or below this LSN may be answered by a principal with a witness (`hardened`
    /// is its local hardened LSN): the session's rule, except that running exposed needs the
    /// witness's record of the exposure and a valid lease — otherwise a failover could lose
    /// what is answered.
    pub fn commit_lsn(&self, session: &PrincipalSession, hardened: Lsn, now: Instant) -> Lsn {
        if session.is_exposed() && !(self.exposure_recorded && self.lease_valid(now)) {
            return hardened.min(session.lsn_mirror_hardened());
        }
        session.commit_lsn(hardened)
    }

    /// SQL Server's quorum rule: a principal with a witness that has neither its mirror nor the
    /// witness (a valid lease) stops serving; the mirror may be taking over.
    pub fn has_no_quorum(&self, mirror_connected: bool, now: Instant) -> bool {
        !mirror_connected && !self.lease_valid(now)
    }
}

/// A mirror has lost its principal: not connected and not heard for the partner timeout.
pub fn principal_lost(connected: bool, last_heard: Instant, now: Instant, timeout: Duration) -> bool {
    !connected && now.saturating_duration_since(last_heard) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirroring::session::SafetyLevel;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn answer(exposure_recorded: bool, granted: Option<u64>, role_sequence: u64) -> Answer {
        Answer { exposure_recorded, granted, role_sequence }
    }

    #[test]
    fn the_lease_runs_from_the_send_time_of_the_answered_report() {
        let t0 = Instant::now();
        let mut c = WitnessClient::new();
        let view = PartnerView::Principal { role_sequence: 1, synchronized: true, exposed: false };
        let (first, _) = c.report(view, 0, t0);
        let (second, _) = c.report(view, 0, t0 + Duration::from_millis(300));
        assert!(!c.lease_valid(t0));
        c.on_answer(first, answer(false, None, 1), ReportRole::Principal, 1, TIMEOUT);
        assert!(c.lease_valid(t0 + Duration::from_millis(499)));
        assert!(!c.lease_valid(t0 + Duration::from_millis(500)));
        c.on_answer(second, answer(false, None, 1), ReportRole::Principal, 1, TIMEOUT);
        assert!(c.lease_valid(t0 + Duration::from_millis(799)));
        // An answer to a report it no longer remembers gives no lease.
        c.on_answer(999, answer(false, None, 1), ReportRole::Principal, 1, TIMEOUT);
        assert!(!c.lease_valid(t0 + Duration::from_millis(800)));
        assert!(c.has_no_quorum(false, t0 + Duration::from_millis(800)));
        assert!(!c.has_no_quorum(true, t0 + Duration::from_millis(800)));
    }

    #[test]
    fn numbers_grow_and_respect_the_floor() {
        let now = Instant::now();
        let mut c = WitnessClient::new();
        let view = PartnerView::Mirror { role_sequence: 1, synchronized: true, principal_lost: false };
        assert_eq!(c.report(view, 0, now).0, 1);
        assert_eq!(c.report(view, 1_000, now).0, 1_000);
        assert_eq!(c.report(view, 0, now).0, 1_001);
    }

    #[test]
    fn an_exposure_counts_only_from_an_answer_to_a_report_of_this_exposure() {
        let now = Instant::now();
        let mut c = WitnessClient::new();
        let calm = PartnerView::Principal { role_sequence: 1, synchronized: true, exposed: false };
        let exposed = PartnerView::Principal { role_sequence: 1, synchronized: false, exposed: true };
        let (old, _) = c.report(calm, 0, now);
        let (first, report) = c.report(exposed, 0, now);
        assert!(report.exposed);
        // A late answer to the report before the exposure says nothing about this one.
        let e = c.on_answer(old, answer(true, None, 1), ReportRole::Principal, 1, TIMEOUT);
        assert!(!e.exposure_recorded && !c.exposure_recorded());
        let e = c.on_answer(first, answer(true, None, 1), ReportRole::Principal, 1, TIMEOUT);
        assert!(e.exposure_recorded && c.exposure_recorded());
        // A calm report ends the exposure and its record.
        c.report(calm, 0, now);
        assert!(!c.exposure_recorded());
    }

    #[test]
    fn answers_fence_a_stale_principal_and_hand_a_mirror_its_grant() {
        let now = Instant::now();
        let mut c = WitnessClient::new();
        let (n, report) =
            c.report(PartnerView::Mirror { role_sequence: 3, synchronized: true, principal_lost: true }, 0, now);
        assert!(report.wants_failover);
        let e = c.on_answer(n, answer(false, Some(4), 4), ReportRole::Mirror, 3, TIMEOUT);
        assert_eq!(e.take_over, Some(4));
        // A grant for another role sequence is not this mirror's.
        assert_eq!(c.on_answer(n, answer(false, Some(6), 6), ReportRole::Mirror, 3, TIMEOUT).take_over, None);
        // Unsynchronized: it does not ask.
        let (_, report) =
            c.report(PartnerView::Mirror { role_sequence: 3, synchronized: false, principal_lost: true }, 0, now);
        assert!(!report.wants_failover);
        let (n, _) = c.report(PartnerView::Principal { role_sequence: 3, synchronized: true, exposed: false }, 0, now);
        assert_eq!(c.on_answer(n, answer(false, None, 5), ReportRole::Principal, 3, TIMEOUT).fence, Some(5));
        assert_eq!(c.role_sequence_seen(), 5);
        // A stale principal's answer records no exposure and gives no lease, even if it says so.
        let mut c = WitnessClient::new();
        let (n, _) = c.report(PartnerView::Principal { role_sequence: 3, synchronized: false, exposed: true }, 0, now);
        let e = c.on_answer(n, answer(true, None, 4), ReportRole::Principal, 3, TIMEOUT);
        assert_eq!(e.fence, Some(4));
        assert!(!e.exposure_recorded && !c.exposure_recorded() && !c.lease_valid(now));
    }

    #[test]
    fn running_exposed_needs_the_record_and_the_lease() {
        let t0 = Instant::now();
        let mut session = PrincipalSession::new(SafetyLevel::Full, TIMEOUT, None);
        // A session that lost its mirror past the timeout runs exposed.
        session.on_event(crate::mirroring::session::Event::Disconnected { now: t0 });
        session.on_event(crate::mirroring::session::Event::Tick { now: t0 + TIMEOUT * 2 });
        assert!(session.is_exposed());
        let mut c = WitnessClient::new();
        let hardened = Lsn(1000);
        let mirror = session.lsn_mirror_hardened();
        assert_eq!(c.commit_lsn(&session, hardened, t0), mirror, "no record yet: held");
        let (n, _) = c.report(PartnerView::Principal { role_sequence: 1, synchronized: false, exposed: true }, 0, t0);
        c.on_answer(n, answer(true, None, 1), ReportRole::Principal, 1, TIMEOUT);
        assert_eq!(c.commit_lsn(&session, hardened, t0 + Duration::from_millis(100)), hardened);
        assert_eq!(c.commit_lsn(&session, hardened, t0 + TIMEOUT), mirror, "the lease ran out: held again");
        c.on_restart();
        assert!(!c.exposure_recorded() && !c.lease_valid(t0));
    }

    #[test]
    fn a_mirror_loses_its_principal_after_the_timeout_unconnected() {
        let t0 = Instant::now();
        assert!(!principal_lost(false, t0, t0 + Duration::from_millis(999), TIMEOUT));
        assert!(principal_lost(false, t0, t0 + TIMEOUT, TIMEOUT));
        assert!(!principal_lost(true, t0, t0 + TIMEOUT * 5, TIMEOUT));
    }
}
