//! The write-ahead log: segment files, records, group commit, recovery.
//!
//! See `log_writer` for the group commit, `recovery` for the decision table, `record` and
//! `segment` for the on-disk formats.

pub mod hardened;
pub mod log_writer;
mod lsn;
pub mod record;
pub mod recovery;
pub mod remote;
pub mod segment;
mod segment_preparer;
pub mod truncate;
pub mod waiters;

pub use log_writer::{AppendError, DiskFaults, LogConfig, LogWriter, Wake};
pub use lsn::{DbId, Epoch, Lsn};
pub use record::RecordKind;
