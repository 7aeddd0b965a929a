//! Identity newtypes of the log: positions, epochs, databases.

use std::fmt;

/// Log sequence number: the byte position in a database's log stream. The first record of a new
/// database is at `Lsn(0)`; a record's end LSN is the start of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn advance(self, bytes: u64) -> Lsn {
        Lsn(self.0.checked_add(bytes).expect("LSN overflow"))
    }

    /// Bytes from `earlier` to `self`.
    pub fn since(self, earlier: Lsn) -> u64 {
        assert!(self >= earlier, "{self} is before {earlier}");
        self.0 - earlier.0
    }

    /// The start of the block holding this position.
    pub fn block_floor(self) -> Lsn {
        Lsn(self.0 - self.0 % crate::constants::BLOCK_SIZE as u64)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lsn {}", self.0)
    }
}

/// Role sequence: the epoch of a database's roles. It only grows; every record and frame carries
/// it, and a record or frame from a lower epoch than one already seen is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role sequence {}", self.0)
    }
}

/// A database's identity, bound into every segment header and record checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DbId(pub u64);

impl fmt::Display for DbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
