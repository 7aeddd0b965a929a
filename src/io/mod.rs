//! The shard runtime: one io_uring per shard thread, owned buffers, start-up checks.

pub mod buffer;
pub mod doorbell;
pub mod durable_writer;
pub mod file;
pub mod net;
pub mod probe;
pub mod ring;
pub mod shard;
pub mod shared_buf;
pub mod write_handoff;
