//! `mirrorlog debug append-loop`: a child process for crash tests. Committers append records whose
//! body starts with a sequence number and print `ack <seq> <end_lsn>` once each is hardened. A test
//! kills it with SIGKILL at random moments and checks every acknowledged record afterwards.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::io::ring::{Completion, Ring, Token};
use crate::io::shard::{self, ShardWork};
use crate::wal::{recovery, AppendError, DbId, LogConfig, LogWriter, RecordKind, Wake};

pub struct AppendLoopConfig {
    pub dir: PathBuf,
    pub clients: usize,
    pub segment_size: u64,
    pub body_size_max: usize,
    pub records: Option<u64>,
}

const LOG_TOKEN: Token = 1 << 40;

struct AppendLoop {
    log: LogWriter,
    next_seq: u64,
    seq_of_client: Vec<u64>,
    body_size_max: usize,
    limit: Option<u64>,
    acked: u64,
    out: std::io::BufWriter<std::io::Stdout>,
    wakes: Vec<Wake>,
    rng: u64,
}

impl AppendLoop {
    fn body(&mut self, seq: u64) -> Vec<u8> {
        // xorshift: sizes vary so records straddle blocks and segment ends.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let len = 8 + (self.rng as usize % self.body_size_max.max(1));
        let mut body = vec![(seq % 251) as u8; len];
        body[..8].copy_from_slice(&seq.to_le_bytes());
        body
    }

    fn issue(&mut self, client: usize) -> Result<()> {
        if self.limit.is_some_and(|l| self.next_seq >= l) {
            return Ok(());
        }
        let seq = self.next_seq;
        let body = self.body(seq);
        match self.log.append(RecordKind::DATA, &body) {
            Ok(end) => {
                self.next_seq += 1;
                self.seq_of_client[client] = seq;
                self.log.wait_hardened(end, client as Token);
                Ok(())
            }
            Err(AppendError::Full) => {
                self.log.wait_for_space(client as Token);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl ShardWork for AppendLoop {
    fn start(&mut self, _ring: &mut Ring) -> Result<()> {
        for client in 0..self.seq_of_client.len() {
            self.issue(client)?;
        }
        Ok(())
    }

    fn before_sleep(&mut self, ring: &mut Ring) -> Result<bool> {
        self.log.submit(ring)?;
        Ok(self.log.write_in_flight() || self.log.has_unwritten())
    }

    fn complete(&mut self, _ring: &mut Ring, completion: Completion) -> Result<()> {
        self.log.complete(completion, &mut self.wakes);
        let wakes = std::mem::take(&mut self.wakes);
        let hardened = self.log.lsn_hardened();
        for wake in &wakes {
            if let Wake::Hardened(client) = *wake {
                writeln!(self.out, "ack {} {}", self.seq_of_client[client as usize], hardened.0).ok();
                self.acked += 1;
            }
        }
        self.out.flush().ok();
        for wake in &wakes {
            match *wake {
                Wake::Hardened(client) | Wake::Space(client) => self.issue(client as usize)?,
                Wake::Failed(_) => return Err(Error::LogFailed("log failed".into())),
            }
        }
        self.wakes = wakes;
        self.wakes.clear();
        Ok(())
    }
}

pub fn append_loop(config: AppendLoopConfig) -> Result<()> {
    // Resume the sequence after the last record the log holds.
    let mut next_seq = 0;
    if config.dir.exists() {
        recovery::scan(&config.dir, Some(DbId(1)), |_, body| {
            if body.len() >= 8 {
                next_seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes")) + 1;
            }
        })?;
    }
    let handle = shard::spawn("append-loop".into(), None, move |ring| {
        let mut log_config = LogConfig::new(&config.dir, DbId(1));
        log_config.segment_size = config.segment_size;
        let (log, _) = LogWriter::open(log_config, LOG_TOKEN)?;
        println!("ready {}", log.lsn_hardened().0);
        let mut work = AppendLoop {
            log,
            next_seq,
            seq_of_client: vec![0; config.clients],
            body_size_max: config.body_size_max,
            limit: config.records.map(|r| next_seq + r),
            acked: 0,
            out: std::io::BufWriter::new(std::io::stdout()),
            wakes: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64,
        };
        shard::run(ring, &mut work)
    })?;
    handle.join().map_err(|_| Error::Config("append loop panicked".into()))?
}
