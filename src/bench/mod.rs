//! Benchmarks run by `mirrorlog bench …`, each beside the machine's own floor in the same run.

pub mod commit;
pub mod failover;
pub mod floor;
pub mod latency;
pub mod local_pair;
pub mod pair_floor;
pub mod wal;
