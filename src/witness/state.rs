//! The witness's rules, sans-IO: reports from the partners in, answers out. It holds no data; it
//! remembers, per mirroring session, when it last heard each partner, whether the principal ran
//! exposed, and which failovers it granted — the last two durably (the caller persists `Grants`
//! before sending any answer that depends on them).
//!
//! The rules (SQL Server's quorum, made safe by timing and by role sequence):
//! - A principal may answer commits without its mirror (run *exposed*) only once the witness has
//!   recorded that it does: from then on the mirror lacks acknowledged commits, and the witness
//!   grants no failover to it until the principal reports the mirror SYNCHRONIZED again.
//! - A mirror may take over (automatic failover) only with a grant: the witness grants role
//!   sequence N+1 once, durably, to a mirror that was SYNCHRONIZED, if the principal of role
//!   sequence N has not been heard for the partner timeout and did not run exposed.
//! - A principal's right to serve without its mirror is a lease from the witness, counted from
//!   the *send* time of an answered report and shorter than the partner timeout (half of it),
//!   so an isolated principal has stopped answering before the witness can grant a failover.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A mirroring session as the witness knows it: the database and the two endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub db_id: u64,
    /// The partners' endpoints, in order (the same key whichever partner reports).
    pub endpoints: (String, String),
}

impl SessionKey {
    pub fn new(db_id: u64, a: &str, b: &str) -> Self {
        let endpoints = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        Self { db_id, endpoints }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportRole {
    Principal,
    Mirror,
}

/// What a partner tells the witness, every few hundred milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub role: ReportRole,
    pub role_sequence: u64,
    /// Principal: the mirror is SYNCHRONIZED and connected. Mirror: it was SYNCHRONIZED with the
    /// principal when it last heard it.
    pub synchronized: bool,
    /// Principal: it answers (or wants to answer) commits without its mirror.
    pub exposed: bool,
    /// Mirror: it asks to take over at `role_sequence + 1`.
    pub wants_failover: bool,
}

/// The witness's answer to one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The principal's exposure is recorded: it may answer commits without its mirror.
    pub exposure_recorded: bool,
    /// The mirror may take over at this role sequence (granted to it, durably).
    pub granted: Option<u64>,
    /// The newest role sequence the witness knows for this session (a partner below it is
    /// stale: fenced).
    pub role_sequence: u64,
}

/// What must survive a witness restart, per session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// The newest role sequence known (granted or reported).
    pub role_sequence: u64,
    /// The principal of this role sequence ran exposed.
    pub exposed_at: Option<u64>,
    /// The number of the report that recorded it: only a *later* report clears it (reports can
    /// arrive out of order, on an old connection, say).
    pub exposed_report: u64,
    /// Role sequences granted, with whom (the mirror's endpoint).
    pub granted: Vec<(u64, String)>,
}

#[derive(Debug, Default)]
struct Session {
    durable: Grants,
    principal_heard: Option<Instant>,
    /// Client (RESP) addresses last reported: the principal's (with its role sequence) and the
    /// mirror's — what the Sentinel answers tell clients.
    principal_client: Option<(u64, String)>,
    mirror_client: Option<(u64, String)>,
}

/// A session as Sentinel clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelView {
    pub db_id: u64,
    pub role_sequence: u64,
    pub principal: Option<String>,
    pub mirror: Option<String>,
}

/// The witness's state: every session it serves.
#[derive(Debug, Default)]
pub struct Witness {
    sessions: HashMap<SessionKey, Session>,
    /// Numbers for reports given without one (tests).
    next_number: u64,
}

impl Witness {
    /// A witness restarted at `now` with what it persisted. It counts every principal as heard
    /// at the restart: a principal may still hold a lease from before it, so no failover is
    /// granted until a full partner timeout has passed.
    pub fn restore(durable: impl IntoIterator<Item = (SessionKey, Grants)>, now: Instant) -> Self {
        let sessions = durable
            .into_iter()
            .map(|(k, g)| (k, Session { durable: g, principal_heard: Some(now), ..Default::default() }))
            .collect();
        Self { sessions, next_number: 0 }
    }

    /// Notes where a partner serves clients (`role_sequence` orders what is newest).
    pub fn note_client_addr(&mut self, key: &SessionKey, role: ReportRole, role_sequence: u64, addr: &str) {
        let session = self.sessions.entry(key.clone()).or_default();
        let slot = match role {
            ReportRole::Principal => &mut session.principal_client,
            ReportRole::Mirror => &mut session.mirror_client,
        };
        if slot.as_ref().is_none_or(|(rs, _)| *rs <= role_sequence) {
            *slot = Some((role_sequence, addr.to_string()));
        }
        // A mirror that was granted the next role sequence serves clients now.
        if role == ReportRole::Mirror && session.durable.granted.iter().any(|(rs, _)| *rs > role_sequence) {
            session.principal_client = Some((role_sequence + 1, addr.to_string()));
        }
    }

    /// Every session, for Sentinel's discovery commands; per database the newest session.
    pub fn sentinel_views(&self) -> Vec<SentinelView> {
        let mut views: Vec<SentinelView> = Vec::new();
        for (key, s) in &self.sessions {
            let rs = s.durable.role_sequence.max(s.principal_client.as_ref().map(|(r, _)| *r).unwrap_or(0));
            let view = SentinelView {
                db_id: key.db_id,
                role_sequence: rs,
                principal: s.principal_client.as_ref().map(|(_, a)| a.clone()),
                mirror: s
                    .mirror_client
                    .as_ref()
                    .map(|(_, a)| a.clone())
                    .filter(|m| Some(m) != s.principal_client.as_ref().map(|(_, a)| a)),
            };
            if view.principal.is_none() {
                continue;
            }
            match views.iter_mut().find(|v| v.db_id == view.db_id) {
                Some(v) if v.role_sequence < view.role_sequence => *v = view,
                Some(_) => {}
                None => views.push(view),
            }
        }
        views.sort_by_key(|v| v.db_id);
        views
    }

    pub fn grants(&self) -> impl Iterator<Item = (&SessionKey, &Grants)> {
        self.sessions.iter().map(|(k, s)| (k, &s.durable))
    }

    /// One report from `from` (the reporter's endpoint) at `now`. Returns the answer and whether
    /// the durable state changed (then it must be persisted before the answer is sent).
    pub fn on_report(
        &mut self,
        key: &SessionKey,
        from: &str,
        report: &Report,
        now: Instant,
        partner_timeout: Duration,
    ) -> (Answer, bool) {
        self.next_number += 1;
        let number = self.next_number;
        self.on_numbered_report(key, from, report, number, now, partner_timeout)
    }

    /// `on_report` for a report numbered by its sender (numbers grow across the sender's
    /// restarts: they order its reports however they arrive).
    pub fn on_numbered_report(
        &mut self,
        key: &SessionKey,
        from: &str,
        report: &Report,
        number: u64,
        now: Instant,
        partner_timeout: Duration,
    ) -> (Answer, bool) {
        let session = self.sessions.entry(key.clone()).or_default();
        let before = session.durable.clone();
        let d = &mut session.durable;
        // The newest role sequence decided: reported, or granted (a grant is a decision even
        // before its mirror reports at the new role sequence).
        let known = d.role_sequence.max(d.granted.iter().map(|(rs, _)| *rs).max().unwrap_or(0));
        match report.role {
            // A principal below a granted role sequence is stale: recording its exposure would
            // let it answer commits its successor never gets (the stateright model found this).
            ReportRole::Principal if report.role_sequence >= known => {
                d.role_sequence = report.role_sequence;
                session.principal_heard = Some(now);
                if report.exposed {
                    d.exposed_at = Some(report.role_sequence);
                    d.exposed_report = d.exposed_report.max(number);
                } else if report.synchronized && d.exposed_at == Some(report.role_sequence) && number > d.exposed_report
                {
                    // The mirror caught up: it holds every acknowledged commit again.
                    d.exposed_at = None;
                }
            }
            ReportRole::Principal => {} // stale: the answer's role sequence fences it
            ReportRole::Mirror => {
                // A witness that never heard this session's principal learns the role sequence
                // from the mirror (it only grows).
                d.role_sequence = d.role_sequence.max(report.role_sequence);
                let next = d.role_sequence + 1;
                let already = d.granted.iter().find(|(rs, _)| *rs == next).map(|(_, to)| to.clone());
                let principal_silent =
                    session.principal_heard.is_none_or(|t| now.saturating_duration_since(t) >= partner_timeout);
                let may_grant = report.wants_failover
                    && report.role_sequence == d.role_sequence
                    && report.synchronized
                    && principal_silent
                    && d.exposed_at != Some(d.role_sequence)
                    && already.as_deref().is_none_or(|to| to == from);
                if may_grant && already.is_none() {
                    d.granted.push((next, from.to_string()));
                }
            }
        }
        let d = &session.durable;
        let granted = match report.role {
            ReportRole::Mirror => {
                d.granted.iter().rev().find(|(rs, to)| *rs == report.role_sequence + 1 && to == from).map(|(rs, _)| *rs)
            }
            ReportRole::Principal => None,
        };
        let answer = Answer {
            exposure_recorded: report.role == ReportRole::Principal
                && report.exposed
                && d.exposed_at == Some(report.role_sequence),
            granted,
            role_sequence: d.role_sequence.max(d.granted.iter().map(|(rs, _)| *rs).max().unwrap_or(0)),
        };
        (answer, *d != before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn key() -> SessionKey {
        SessionKey::new(1, "127.0.0.1:5022", "127.0.0.1:5023")
    }

    fn principal(rs: u64, synchronized: bool, exposed: bool) -> Report {
        Report { role: ReportRole::Principal, role_sequence: rs, synchronized, exposed, wants_failover: false }
    }

    fn mirror(rs: u64, wants: bool) -> Report {
        Report {
            role: ReportRole::Mirror,
            role_sequence: rs,
            synchronized: true,
            exposed: false,
            wants_failover: wants,
        }
    }

    #[test]
    fn a_failover_is_granted_once_and_only_after_the_principal_is_silent_for_the_timeout() {
        let mut w = Witness::default();
        let t0 = Instant::now();
        w.on_report(&key(), "p", &principal(1, true, false), t0, T);
        let (a, _) = w.on_report(&key(), "m", &mirror(1, true), t0 + Duration::from_secs(9), T);
        assert_eq!(a.granted, None, "the principal was heard 9 s ago");
        let (a, changed) = w.on_report(&key(), "m", &mirror(1, true), t0 + T, T);
        assert_eq!(a.granted, Some(2));
        assert!(changed, "a grant must be persisted before it is answered");
        let (a, changed) = w.on_report(&key(), "m", &mirror(1, true), t0 + T, T);
        assert_eq!((a.granted, changed), (Some(2), false), "a lost answer is answered again");
        let (a, _) = w.on_report(&key(), "other", &mirror(1, true), t0 + T, T);
        assert_eq!(a.granted, None, "one grant per role sequence");
        // The old principal comes back: the answer tells it role sequence 2 exists.
        let (a, _) = w.on_report(&key(), "p", &principal(1, true, false), t0 + T, T);
        assert_eq!(a.role_sequence, 2);
    }

    #[test]
    fn a_principal_below_a_granted_role_sequence_gets_no_exposure_record() {
        let mut w = Witness::default();
        let t0 = Instant::now();
        w.on_report(&key(), "p", &principal(1, true, false), t0, T);
        let (a, _) = w.on_report(&key(), "m", &mirror(1, true), t0 + T, T);
        assert_eq!(a.granted, Some(2));
        // The old principal, cut off until now, reports exposed: it is stale, not exposed.
        let (a, _) = w.on_report(&key(), "p", &principal(1, false, true), t0 + T, T);
        assert!(!a.exposure_recorded, "a stale principal must not answer commits alone");
        assert_eq!(a.role_sequence, 2, "the answer fences it");
    }

    #[test]
    fn no_failover_to_a_mirror_that_lacks_exposed_commits() {
        let mut w = Witness::default();
        let t0 = Instant::now();
        let (a, changed) = w.on_report(&key(), "p", &principal(1, false, true), t0, T);
        assert!(a.exposure_recorded && changed);
        let (a, _) = w.on_report(&key(), "m", &mirror(1, true), t0 + 2 * T, T);
        assert_eq!(a.granted, None);
        // Once the mirror is synchronized again, failover is possible again.
        w.on_report(&key(), "p", &principal(1, true, false), t0 + 2 * T, T);
        let (a, _) = w.on_report(&key(), "m", &mirror(1, true), t0 + 4 * T, T);
        assert_eq!(a.granted, Some(2));
    }

    #[test]
    fn grants_survive_a_restart() {
        let mut w = Witness::default();
        let t0 = Instant::now();
        w.on_report(&key(), "m", &mirror(1, true), t0, T);
        let saved: Vec<_> = w.grants().map(|(k, g)| (k.clone(), g.clone())).collect();
        let mut w = Witness::restore(saved, t0);
        let (a, _) = w.on_report(&key(), "other", &mirror(1, true), t0, T);
        assert_eq!(a.granted, None, "role sequence 2 went to m before the restart");
    }

    #[test]
    fn a_mirror_that_was_not_synchronized_gets_no_grant() {
        let mut w = Witness::default();
        let mut m = mirror(1, true);
        m.synchronized = false;
        let (a, _) = w.on_report(&key(), "m", &m, Instant::now(), T);
        assert_eq!(a.granted, None);
    }
}
