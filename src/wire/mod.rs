//! The mirroring endpoint's wire format: frames and the authenticated handshake.

pub mod frame;
pub mod handshake;
