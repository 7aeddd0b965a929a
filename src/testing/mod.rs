//! Test tooling: what tests of the mirroring engine use to run real nodes under network faults.
//! Never on the data path.

pub mod fault_proxy;
pub mod sim;

pub use fault_proxy::{Direction, Fault, FaultProxy};
