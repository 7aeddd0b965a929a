//! Benchmarks run by `mirrorlog bench …`, each beside the machine's own floor in the same run.

pub mod floor;
pub mod latency;
pub mod wal;
