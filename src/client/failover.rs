//! A client with a failover-partner list, as SQL Server's `Failover Partner`: it finds the
//! principal among the partners and, when a command is refused because the server is no longer
//! the principal (a mirror answers `READONLY`, an isolated principal `no quorum`, a superseded
//! one `fenced`) or the connection is lost, moves on to the next partner on a retry schedule.
//!
//! A command refused that way was not executed, so it is sent again to the new principal. A
//! connection lost *during* a command leaves its outcome unknown: that error is returned (the
//! next command reconnects), as no client can tell whether a write it sent was applied.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{Client, Value};

/// How long and how often the client looks for the principal.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    /// Give up after this long without a principal.
    pub total: Duration,
    /// First pause between rounds over the partners; doubles up to `pause_max`.
    pub pause: Duration,
    pub pause_max: Duration,
    /// Connect and read timeout of one attempt.
    pub attempt_timeout: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            total: Duration::from_secs(30),
            pause: Duration::from_millis(50),
            pause_max: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

pub struct FailoverClient {
    partners: Vec<SocketAddr>,
    db: usize,
    schedule: RetrySchedule,
    /// The partner in use and its connection.
    current: Option<(usize, Client)>,
    /// Principal changes this client followed (for tests and logs).
    pub failovers_followed: u64,
    /// The partner whose connection broke last (the next search starts after it).
    last_failed: Option<usize>,
}

/// Whether a reply means "not the principal (any more): this command was not executed".
fn not_the_principal(value: &Value) -> bool {
    match value {
        Value::Error(e) => e.starts_with("READONLY") || e.contains("no quorum") || e.contains("fenced"),
        _ => false,
    }
}

impl FailoverClient {
    /// A client for database `db` of a mirrored pair (or more partners: any order).
    pub fn new(partners: &[SocketAddr], db: usize, schedule: RetrySchedule) -> Self {
        assert!(!partners.is_empty(), "a failover client needs at least one partner");
        Self { partners: partners.to_vec(), db, schedule, current: None, failovers_followed: 0, last_failed: None }
    }

    /// The partner currently used, if connected.
    pub fn principal(&self) -> Option<SocketAddr> {
        self.current.as_ref().map(|(i, _)| self.partners[*i])
    }

    /// Connects to the partner at `index` and checks that it is the principal of the database.
    fn try_partner(&self, index: usize) -> Option<Client> {
        let mut client = Client::connect(self.partners[index], self.schedule.attempt_timeout).ok()?;
        if let Value::Error(_) = client.command(&[b"SELECT", self.db.to_string().as_bytes()]).ok()? {
            return None;
        }
        let status = client.command(&[b"MIRROR", b"STATUS"]).ok()?;
        let text = String::from_utf8_lossy(status.as_bytes()?).into_owned();
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).unwrap_or("").to_string()
        };
        let serving = matches!(field("role").as_str(), "principal" | "none")
            && field("fenced_by").is_empty()
            && field("quorum") != "0";
        serving.then_some(client)
    }

    /// Finds the principal, trying every partner in rounds until the schedule runs out,
    /// starting after `failed` (the partner that just refused: the other is the likely new
    /// principal).
    fn connect(&mut self, failed: Option<usize>, started: Instant) -> std::io::Result<()> {
        let mut pause = self.schedule.pause;
        loop {
            let first = failed.map(|p| p + 1).unwrap_or(0);
            for k in 0..self.partners.len() {
                let index = (first + k) % self.partners.len();
                if let Some(client) = self.try_partner(index) {
                    if failed.is_some_and(|p| p != index) {
                        self.failovers_followed += 1;
                    }
                    self.current = Some((index, client));
                    return Ok(());
                }
            }
            if started.elapsed() + pause > self.schedule.total {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("no principal among {:?} within {:?}", self.partners, self.schedule.total),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(self.schedule.pause_max);
        }
    }

    /// Runs one command on the principal, following a failover if the command was refused
    /// because the server is not (or no longer) the principal.
    pub fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Value> {
        let started = Instant::now();
        let mut failed = self.last_failed.take();
        loop {
            if self.current.is_none() {
                self.connect(failed, started)?;
            }
            let (index, client) = self.current.as_mut().expect("connected above");
            let index = *index;
            match client.command(args) {
                Ok(value) if not_the_principal(&value) => {
                    // Not executed: find the principal and send it again.
                    self.current = None;
                    if started.elapsed() > self.schedule.total {
                        return Ok(value);
                    }
                    failed = Some(index);
                }
                Ok(value) => return Ok(value),
                Err(e) => {
                    // The outcome of this command is unknown: report it; reconnect next time,
                    // starting with the other partners.
                    self.current = None;
                    self.last_failed = Some(index);
                    return Err(e);
                }
            }
        }
    }
}
