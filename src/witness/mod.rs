//! The witness: holds no data, watches both partners of each mirroring session it serves, grants
//! at most one automatic failover per role sequence (durably) and records a principal that runs
//! exposed. `state` is the sans-IO rules, `report` the frames, `server` the process.

pub mod report;
pub mod sentinel;
pub mod server;
pub mod state;
