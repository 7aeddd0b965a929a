//! The principal's side of a mirroring session, as a sans-IO state machine: events in (the link
//! connected, the mirror acknowledged an LSN, time passed, an administrator changed a setting),
//! commands out (drop the link, dial, persist, run exposed, release held commits). The server's
//! shard executes the commands on its ring; tests assert the exact commands.
//!
//! The promise it keeps is the commit rule (`commit_lsn`):
//! - SAFETY OFF: a commit is answered once it is hardened locally.
//! - SAFETY FULL, SYNCHRONIZED: once hardened locally **and** on the mirror.
//! - SAFETY FULL, the mirror lost while SYNCHRONIZED: commits are held for the partner timeout
//!   (counted from when the mirror was last heard); after it the principal *runs exposed* —
//!   answers on the local flush alone — and says so.
//! - SAFETY FULL, SYNCHRONIZING (the mirror is catching up from the log files), SUSPENDED or
//!   DISCONNECTED past the timeout: exposed, as SQL Server's principal is until the mirror has
//!   caught up. Once shipping has caught up, commits wait for the mirror again, so that
//!   SYNCHRONIZED never claims a commit answered alone that the mirror lacks.
//!
//! LSN ordering kept by `validate`: `lsn_mirror_hardened <= lsn_sync_target` until SYNCHRONIZED.

use std::fmt;
use std::time::{Duration, Instant};

use crate::wal::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SafetyLevel {
    Off,
    Full,
}

impl SafetyLevel {
    pub fn parse(text: &str) -> Option<SafetyLevel> {
        match text.to_ascii_uppercase().as_str() {
            "FULL" => Some(SafetyLevel::Full),
            "OFF" => Some(SafetyLevel::Off),
            _ => None,
        }
    }
}

impl fmt::Display for SafetyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SafetyLevel::Off => "OFF",
            SafetyLevel::Full => "FULL",
        })
    }
}

/// SQL Server's `mirroring_state_desc`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirroringState {
    Synchronizing,
    Synchronized,
    Suspended,
    PendingFailover,
    Disconnected,
}

impl fmt::Display for MirroringState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MirroringState::Synchronizing => "SYNCHRONIZING",
            MirroringState::Synchronized => "SYNCHRONIZED",
            MirroringState::Suspended => "SUSPENDED",
            MirroringState::PendingFailover => "PENDING_FAILOVER",
            MirroringState::Disconnected => "DISCONNECTED",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The link to the mirror is authenticated; the mirror has hardened its log to this LSN.
    Connected {
        mirror_hardened: Lsn,
        now: Instant,
    },
    /// The link broke (or was refused).
    Disconnected {
        now: Instant,
    },
    /// The mirror hardened its log to `lsn`.
    Acked {
        lsn: Lsn,
        now: Instant,
    },
    /// Any frame from the mirror (a pong): it is alive.
    Heard {
        now: Instant,
    },
    /// Shipping caught up: everything before `live_from` was sent from the files, later batches
    /// go out as they are written.
    CaughtUp {
        live_from: Lsn,
    },
    /// Time passed (the shard's timer).
    Tick {
        now: Instant,
    },
    SetSafety(SafetyLevel),
    /// By an administrator or by an error (the reason is logged and shown).
    Suspend {
        reason: String,
    },
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the link (the mirror was silent for the partner timeout, or the session is
    /// suspended).
    Disconnect {
        reason: String,
    },
    /// Start dialing the mirror (again).
    Dial,
    /// The persisted settings changed (safety, suspended): write them before acting on them.
    Persist,
    StateChanged {
        from: MirroringState,
        to: MirroringState,
    },
    /// SAFETY FULL without a mirror: commits are now answered on the local flush alone.
    RunExposed,
    /// `commit_lsn` moved: answer the commits it covers.
    ReleaseCommits,
    /// Keep the log from this LSN on (the mirror still needs it).
    HoldLog {
        from: Lsn,
    },
}

#[derive(Debug, Clone)]
pub struct PrincipalSession {
    safety: SafetyLevel,
    partner_timeout: Duration,
    state: MirroringState,
    connected: bool,
    /// The mirror's hardened LSN, as last acknowledged.
    lsn_mirror_hardened: Lsn,
    /// Acknowledging this LSN makes the mirror SYNCHRONIZED (set when shipping caught up).
    lsn_sync_target: Option<Lsn>,
    last_heard: Option<Instant>,
    /// FULL lost a SYNCHRONIZED mirror at this time (when it was last heard): commits are held
    /// until the partner timeout has passed since.
    holding_since: Option<Instant>,
    suspend_reason: Option<String>,
}

impl PrincipalSession {
    /// A session as persisted: `suspended` survives restarts. It starts DISCONNECTED (or
    /// SUSPENDED) with the mirror's hardened LSN unknown until it connects.
    pub fn new(safety: SafetyLevel, partner_timeout: Duration, suspended: Option<String>) -> Self {
        let state = if suspended.is_some() { MirroringState::Suspended } else { MirroringState::Disconnected };
        Self {
            safety,
            partner_timeout,
            state,
            connected: false,
            lsn_mirror_hardened: Lsn::ZERO,
            lsn_sync_target: None,
            last_heard: None,
            holding_since: None,
            suspend_reason: suspended,
        }
    }

    pub fn state(&self) -> MirroringState {
        self.state
    }

    pub fn safety(&self) -> SafetyLevel {
        self.safety
    }

    pub fn partner_timeout(&self) -> Duration {
        self.partner_timeout
    }

    pub fn set_partner_timeout(&mut self, timeout: Duration) {
        self.partner_timeout = timeout;
    }

    pub fn lsn_mirror_hardened(&self) -> Lsn {
        self.lsn_mirror_hardened
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn suspend_reason(&self) -> Option<&str> {
        self.suspend_reason.as_deref()
    }

    /// Whether the link should be kept up or dialed.
    pub fn wants_link(&self) -> bool {
        self.state != MirroringState::Suspended
    }

    /// SAFETY FULL with commits answered on the local flush alone.
    pub fn is_exposed(&self) -> bool {
        self.safety == SafetyLevel::Full && self.state != MirroringState::Synchronized && self.holding_since.is_none()
    }

    /// Commits whose end LSN is at or below this may be answered, given the local hardened LSN.
    ///
    /// Once shipping has caught up (a sync target is set) commits wait for the mirror again, even
    /// before SYNCHRONIZED: every commit answered alone is then at or below the sync target, so
    /// the mirror holds them all when it acknowledges the target and the session becomes
    /// SYNCHRONIZED (and tells the witness so). Answering alone up to that moment could make
    /// SYNCHRONIZED claim commits the mirror lacks: the stateright model lost one that way.
    pub fn commit_lsn(&self, local_hardened: Lsn) -> Lsn {
        if self.safety == SafetyLevel::Full
            && (self.state == MirroringState::Synchronized
                || self.holding_since.is_some()
                || self.lsn_sync_target.is_some())
        {
            local_hardened.min(self.lsn_mirror_hardened)
        } else {
            local_hardened
        }
    }

    /// Feeds one event; returns what to do, in order.
    pub fn on_event(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Connected { mirror_hardened, now } => {
                if self.state == MirroringState::Suspended {
                    out.push(Command::Disconnect { reason: "the session is suspended".into() });
                } else {
                    self.connected = true;
                    self.last_heard = Some(now);
                    self.lsn_mirror_hardened = mirror_hardened;
                    self.lsn_sync_target = None;
                    out.push(Command::HoldLog { from: mirror_hardened });
                    self.change_state(MirroringState::Synchronizing, &mut out);
                }
            }
            Event::Disconnected { now } => {
                let was_connected = std::mem::replace(&mut self.connected, false);
                self.lsn_sync_target = None;
                if was_connected && self.state != MirroringState::Suspended {
                    self.lose_mirror(self.last_heard.unwrap_or(now), now, &mut out);
                }
            }
            Event::Acked { lsn, now } => {
                self.last_heard = Some(now);
                if !self.connected || lsn <= self.lsn_mirror_hardened {
                    return out;
                }
                self.lsn_mirror_hardened = lsn;
                out.push(Command::HoldLog { from: lsn });
                if self.state == MirroringState::Synchronizing && self.lsn_sync_target.is_some_and(|t| lsn >= t) {
                    self.change_state(MirroringState::Synchronized, &mut out);
                }
                out.push(Command::ReleaseCommits);
            }
            Event::Heard { now } => self.last_heard = Some(now),
            Event::CaughtUp { live_from } => {
                if self.connected && self.state == MirroringState::Synchronizing {
                    if self.lsn_mirror_hardened >= live_from {
                        self.change_state(MirroringState::Synchronized, &mut out);
                        out.push(Command::ReleaseCommits);
                    } else {
                        self.lsn_sync_target = Some(live_from);
                    }
                }
            }
            Event::Tick { now } => self.on_tick(now, &mut out),
            Event::SetSafety(safety) => {
                if safety != self.safety {
                    self.safety = safety;
                    self.holding_since = None;
                    out.push(Command::Persist);
                    out.push(Command::ReleaseCommits);
                }
            }
            Event::Suspend { reason } => {
                if self.state != MirroringState::Suspended {
                    self.suspend_reason = Some(reason.clone());
                    self.holding_since = None;
                    out.push(Command::Persist);
                    if self.connected {
                        self.connected = false;
                        out.push(Command::Disconnect { reason: format!("session suspended: {reason}") });
                    }
                    self.change_state(MirroringState::Suspended, &mut out);
                    if self.safety == SafetyLevel::Full {
                        out.push(Command::RunExposed);
                    }
                    out.push(Command::ReleaseCommits);
                }
            }
            Event::Resume => {
                if self.state == MirroringState::Suspended {
                    self.suspend_reason = None;
                    out.push(Command::Persist);
                    self.change_state(MirroringState::Disconnected, &mut out);
                    out.push(Command::Dial);
                }
            }
        }
        self.validate();
        out
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.connected {
            if let Some(heard) = self.last_heard {
                if now.saturating_duration_since(heard) >= self.partner_timeout {
                    self.connected = false;
                    self.lsn_sync_target = None;
                    out.push(Command::Disconnect {
                        reason: format!("the mirror was silent for the partner timeout ({:?})", self.partner_timeout),
                    });
                    self.lose_mirror(heard, now, out);
                }
            }
        }
        if let Some(since) = self.holding_since {
            if now.saturating_duration_since(since) >= self.partner_timeout {
                self.holding_since = None;
                out.push(Command::RunExposed);
                out.push(Command::ReleaseCommits);
            }
        }
    }

    /// The link to the mirror is gone; it was last heard at `heard`.
    fn lose_mirror(&mut self, heard: Instant, now: Instant, out: &mut Vec<Command>) {
        let was_synchronized = self.state == MirroringState::Synchronized;
        self.change_state(MirroringState::Disconnected, out);
        out.push(Command::Dial);
        if self.safety == SafetyLevel::Full && was_synchronized {
            if now.saturating_duration_since(heard) >= self.partner_timeout {
                out.push(Command::RunExposed);
                out.push(Command::ReleaseCommits);
            } else {
                self.holding_since = Some(heard);
            }
        }
    }

    fn change_state(&mut self, to: MirroringState, out: &mut Vec<Command>) {
        if self.state != to {
            out.push(Command::StateChanged { from: self.state, to });
            self.state = to;
        }
        if to == MirroringState::Synchronized {
            self.holding_since = None;
        }
    }

    /// Checks the invariants (cheap; on in release builds).
    pub fn validate(&self) {
        assert!(
            self.state != MirroringState::Synchronized || self.connected,
            "SYNCHRONIZED without a link to the mirror"
        );
        assert!(
            self.holding_since.is_none() || self.safety == SafetyLevel::Full,
            "commits held for the mirror in SAFETY OFF"
        );
        assert!(self.state != MirroringState::Suspended || !self.connected, "SUSPENDED with a live link");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// A FULL session that connected at LSN 100, caught up at 200 and saw 200 acknowledged.
    fn synchronized(base: Instant) -> PrincipalSession {
        let mut s = PrincipalSession::new(SafetyLevel::Full, TIMEOUT, None);
        s.on_event(Event::Connected { mirror_hardened: Lsn(100), now: base });
        s.on_event(Event::CaughtUp { live_from: Lsn(200) });
        s.on_event(Event::Acked { lsn: Lsn(200), now: base });
        assert_eq!(s.state(), MirroringState::Synchronized);
        s
    }

    #[test]
    fn connecting_holds_the_log_and_synchronizes_once_caught_up_and_acknowledged() {
        let base = Instant::now();
        let mut s = PrincipalSession::new(SafetyLevel::Full, TIMEOUT, None);
        assert_eq!(s.state(), MirroringState::Disconnected);
        assert_eq!(
            s.on_event(Event::Connected { mirror_hardened: Lsn(100), now: base }),
            vec![
                Command::HoldLog { from: Lsn(100) },
                Command::StateChanged { from: MirroringState::Disconnected, to: MirroringState::Synchronizing },
            ]
        );
        // Catching up: FULL commits are answered locally (exposed), as SQL Server does.
        assert!(s.is_exposed());
        assert_eq!(s.commit_lsn(Lsn(500)), Lsn(500));
        assert_eq!(s.on_event(Event::CaughtUp { live_from: Lsn(300) }), vec![]);
        // Caught up: commits wait for the mirror again (SYNCHRONIZED must cover every commit
        // answered alone), though the session is not SYNCHRONIZED yet.
        assert_eq!(s.commit_lsn(Lsn(500)), Lsn(100), "held for the mirror once caught up");
        assert_eq!(
            s.on_event(Event::Acked { lsn: Lsn(250), now: base }),
            vec![Command::HoldLog { from: Lsn(250) }, Command::ReleaseCommits]
        );
        assert_eq!(s.commit_lsn(Lsn(500)), Lsn(250));
        assert_eq!(
            s.on_event(Event::Acked { lsn: Lsn(300), now: base }),
            vec![
                Command::HoldLog { from: Lsn(300) },
                Command::StateChanged { from: MirroringState::Synchronizing, to: MirroringState::Synchronized },
                Command::ReleaseCommits,
            ]
        );
        assert!(!s.is_exposed());
        assert_eq!(s.commit_lsn(Lsn(500)), Lsn(300), "FULL waits for the mirror");
        assert_eq!(s.commit_lsn(Lsn(250)), Lsn(250), "and for the local flush");
        assert_eq!(s.on_event(Event::Acked { lsn: Lsn(300), now: base }), vec![], "a repeated ack changes nothing");
    }

    #[test]
    fn full_holds_commits_for_the_partner_timeout_after_losing_the_mirror_then_runs_exposed() {
        let base = Instant::now();
        let mut s = synchronized(base);
        assert_eq!(
            s.on_event(Event::Disconnected { now: at(base, 1000) }),
            vec![
                Command::StateChanged { from: MirroringState::Synchronized, to: MirroringState::Disconnected },
                Command::Dial,
            ]
        );
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(200), "held: the mirror may still have it");
        assert!(!s.is_exposed());
        assert_eq!(s.on_event(Event::Tick { now: at(base, 9_999) }), vec![]);
        assert_eq!(
            s.on_event(Event::Tick { now: at(base, 10_000) }),
            vec![Command::RunExposed, Command::ReleaseCommits],
            "the timeout counts from when the mirror was last heard"
        );
        assert!(s.is_exposed());
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(900));
    }

    #[test]
    fn a_silent_mirror_is_dropped_after_the_partner_timeout() {
        let base = Instant::now();
        let mut s = synchronized(base);
        s.on_event(Event::Heard { now: at(base, 2000) });
        assert_eq!(s.on_event(Event::Tick { now: at(base, 11_999) }), vec![]);
        assert_eq!(
            s.on_event(Event::Tick { now: at(base, 12_000) }),
            vec![
                Command::Disconnect { reason: "the mirror was silent for the partner timeout (10s)".into() },
                Command::StateChanged { from: MirroringState::Synchronized, to: MirroringState::Disconnected },
                Command::Dial,
                Command::RunExposed,
                Command::ReleaseCommits,
            ]
        );
        assert!(s.is_exposed());
    }

    #[test]
    fn safety_off_never_waits_for_the_mirror() {
        let base = Instant::now();
        let mut s = PrincipalSession::new(SafetyLevel::Off, TIMEOUT, None);
        s.on_event(Event::Connected { mirror_hardened: Lsn(0), now: base });
        s.on_event(Event::CaughtUp { live_from: Lsn(0) });
        assert_eq!(s.state(), MirroringState::Synchronized);
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(900));
        assert!(!s.is_exposed());
        assert_eq!(
            s.on_event(Event::Disconnected { now: base }),
            vec![
                Command::StateChanged { from: MirroringState::Synchronized, to: MirroringState::Disconnected },
                Command::Dial,
            ]
        );
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(900));
    }

    #[test]
    fn safety_changes_at_runtime() {
        let base = Instant::now();
        let mut s = synchronized(base);
        assert_eq!(s.on_event(Event::SetSafety(SafetyLevel::Off)), vec![Command::Persist, Command::ReleaseCommits]);
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(900));
        assert_eq!(s.on_event(Event::SetSafety(SafetyLevel::Off)), vec![]);
        assert_eq!(s.on_event(Event::SetSafety(SafetyLevel::Full)), vec![Command::Persist, Command::ReleaseCommits]);
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(200));
    }

    #[test]
    fn suspend_drops_the_link_keeps_the_log_and_resume_dials_again() {
        let base = Instant::now();
        let mut s = synchronized(base);
        assert_eq!(
            s.on_event(Event::Suspend { reason: "by an administrator".into() }),
            vec![
                Command::Persist,
                Command::Disconnect { reason: "session suspended: by an administrator".into() },
                Command::StateChanged { from: MirroringState::Synchronized, to: MirroringState::Suspended },
                Command::RunExposed,
                Command::ReleaseCommits,
            ]
        );
        assert!(s.is_exposed());
        assert!(!s.wants_link());
        // A late connection is refused while suspended.
        assert_eq!(
            s.on_event(Event::Connected { mirror_hardened: Lsn(200), now: base }),
            vec![Command::Disconnect { reason: "the session is suspended".into() }]
        );
        assert_eq!(s.on_event(Event::Tick { now: at(base, 60_000) }), vec![]);
        assert_eq!(
            s.on_event(Event::Resume),
            vec![
                Command::Persist,
                Command::StateChanged { from: MirroringState::Suspended, to: MirroringState::Disconnected },
                Command::Dial,
            ]
        );
        // A persisted suspension comes back suspended.
        let restarted = PrincipalSession::new(SafetyLevel::Full, TIMEOUT, Some("by an administrator".into()));
        assert_eq!(restarted.state(), MirroringState::Suspended);
        assert_eq!(restarted.suspend_reason(), Some("by an administrator"));
    }

    #[test]
    fn losing_a_mirror_that_was_still_synchronizing_holds_nothing() {
        let base = Instant::now();
        let mut s = PrincipalSession::new(SafetyLevel::Full, TIMEOUT, None);
        s.on_event(Event::Connected { mirror_hardened: Lsn(0), now: base });
        s.on_event(Event::Disconnected { now: base });
        assert!(s.is_exposed());
        assert_eq!(s.commit_lsn(Lsn(900)), Lsn(900));
    }
}
