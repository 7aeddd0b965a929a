//! `mirrorlog inspect …`: offline verification of on-disk state.

pub mod wal;
