//! Database mirroring: the principal ships its log to the mirror, which hardens and redoes it.

pub mod page_rewind;
pub mod redo_pipeline;
pub mod redo_ring;
pub mod session;
pub mod settings;
pub mod witness_client;
