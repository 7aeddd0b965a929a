//! Appending to a log from a thread that is not its shard: requests go through a bounded
//! lock-free queue, the shard is woken by its doorbell, and the caller learns its record's end LSN
//! through a one-shot reply, then waits on the published hardened LSN.

use crate::error::{Error, Result};
use crate::io::doorbell::Doorbell;
use crate::sync::bounded_queue::BoundedQueue;
use crate::sync::{Arc, Condvar, Mutex};
use crate::wal::hardened::HardenedLsn;
use crate::wal::record::RecordKind;
use crate::wal::Lsn;

/// A one-shot slot for the shard's answer to one request.
pub struct AppendReply {
    slot: Mutex<Option<std::result::Result<Lsn, String>>>,
    cond: Condvar,
}

impl AppendReply {
    pub fn new() -> Self {
        Self { slot: Mutex::new(None), cond: Condvar::new() }
    }

    pub fn set(&self, result: std::result::Result<Lsn, String>) {
        let mut slot = self.slot.lock().unwrap();
        *slot = Some(result);
        self.cond.notify_all();
    }

    pub fn wait(&self) -> std::result::Result<Lsn, String> {
        let mut slot = self.slot.lock().unwrap();
        loop {
            if let Some(result) = slot.take() {
                return result;
            }
            slot = self.cond.wait(slot).unwrap();
        }
    }
}

impl Default for AppendReply {
    fn default() -> Self {
        Self::new()
    }
}

pub struct AppendRequest {
    pub kind: RecordKind,
    pub body: Vec<u8>,
    pub reply: Arc<AppendReply>,
}

/// What the shard and the remote appenders share.
pub struct RemoteInbox {
    pub queue: BoundedQueue<AppendRequest>,
    pub doorbell: Doorbell,
    pub hardened: Arc<HardenedLsn>,
}

/// A cloneable handle for appending from other threads.
#[derive(Clone)]
pub struct LogHandle {
    inbox: Arc<RemoteInbox>,
}

impl LogHandle {
    pub fn new(inbox: Arc<RemoteInbox>) -> Self {
        Self { inbox }
    }

    /// Appends one record and returns its end LSN once it is hardened.
    pub fn append_and_wait(&self, kind: RecordKind, body: Vec<u8>) -> Result<Lsn> {
        let reply = Arc::new(AppendReply::new());
        let mut request = AppendRequest { kind, body, reply: reply.clone() };
        loop {
            match self.inbox.queue.push(request) {
                Ok(()) => break,
                Err(back) => {
                    request = back;
                    self.inbox.doorbell.ring();
                    std::thread::yield_now();
                }
            }
        }
        self.inbox.doorbell.ring();
        let end = reply.wait().map_err(Error::LogFailed)?;
        self.inbox
            .hardened
            .wait_for(end)
            .map_err(|_| Error::LogFailed("the log failed before the record was hardened".into()))?;
        Ok(end)
    }

    pub fn hardened(&self) -> Lsn {
        self.inbox.hardened.get()
    }
}
