//! The map of a shard's client connections, keyed by connection id.
//!
//! Connection ids are a shard-local counter, so they need no flooding-resistant hash: SipHash
//! (the standard map's default) showed up in profiles of the command path, where each command
//! looks its connection up several times. Ids are spread with a Fibonacci multiply so the map's
//! control bytes (the hash's top bits) differ between neighbouring ids. Connections are boxed so
//! that taking one out of the map and putting it back, as the command path does, moves a pointer
//! and not the whole connection.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one u64 connection id.
#[derive(Default)]
pub struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; other input is folded in for completeness.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Connections by id.
pub type ConnMap<C> = HashMap<u64, Box<C>, BuildHasherDefault<ConnIdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn neighbouring_ids_differ_in_the_top_bits() {
        let build = BuildHasherDefault::<ConnIdHasher>::default();
        let tops: std::collections::HashSet<u64> = (0..64u64).map(|id| build.hash_one(id) >> 57).collect();
        assert!(tops.len() > 32, "only {} distinct top-7-bit values for 64 ids", tops.len());
    }

    #[test]
    fn a_map_keeps_every_connection() {
        let mut map: ConnMap<u64> = ConnMap::default();
        for id in 0..1000 {
            map.insert(id, Box::new(id * 2));
        }
        for id in 0..1000 {
            assert_eq!(*map.remove(&id).unwrap(), id * 2);
        }
        assert!(map.is_empty());
    }
}
