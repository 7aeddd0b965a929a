//! `mirrorlog inspect …`: offline verification of on-disk state.

pub mod pages;
pub mod wal;
