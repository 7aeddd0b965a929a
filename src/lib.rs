//! mirrorlog: SQL Server-style database mirroring on io_uring.
//!
//! This crate holds the engine; `src/main.rs` is the `mirrorlog` binary. Design notes live in
//! `src/docs/` and are part of this documentation.

pub mod bench;
pub mod client;
pub mod config_file;
pub mod constants;
pub mod ctl;
pub mod debug;
pub mod error;
pub mod inspect;
pub mod io;
pub mod mirroring;
pub mod quickstart;
pub mod server;
pub mod store;
pub mod sync;
pub mod testing;
pub mod wal;
pub mod wire;
pub mod witness;

/// Design notes: why the engine is built the way it is.
pub mod docs {
    #[doc = include_str!("docs/log.md")]
    pub mod log {}
    #[doc = include_str!("docs/store.md")]
    pub mod store {}
    #[doc = include_str!("docs/mirroring.md")]
    pub mod mirroring {}
}

pub use error::{Error, Result};
