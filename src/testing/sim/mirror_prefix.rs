//! Invariant: while SYNCHRONIZED, the mirror's hardened log is a prefix of the principal's.
//! Only what the mirror hardened *and* acknowledged counts (an acknowledgement is counted only
//! where both logs agree), and not below a principal's own crash: a principal that lost log it
//! had sent comes back with less than its mirror, the case the real principal detects and refuses
//! (`check_tail`).

/// Whether the prefix promise is broken: `mirror_log[..h] != principal_log[..h]`, where `h` is
/// what the mirror hardened, capped by what the principal counts as acknowledged, and the
/// principal's own log still reaches `h` (it did not lose it in a crash).
pub fn broken(
    mirror_log: &[(u64, u64)],
    mirror_hardened: usize,
    acknowledged: usize,
    principal_log: &[(u64, u64)],
    principal_hardened: usize,
) -> bool {
    let h = mirror_hardened.min(mirror_log.len()).min(acknowledged);
    h <= principal_log.len() && mirror_log[..h] != principal_log[..h] && principal_hardened >= h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_differing_acknowledged_prefix_is_broken() {
        let principal = [(1, 1), (1, 2), (1, 3)];
        assert!(!broken(&[(1, 1), (1, 2)], 2, 2, &principal, 3));
        assert!(broken(&[(1, 1), (1, 9)], 2, 2, &principal, 3));
        assert!(!broken(&[(1, 1), (1, 9)], 2, 1, &principal, 3), "only what was acknowledged counts");
        assert!(!broken(&[(1, 1), (1, 9)], 2, 2, &principal, 1), "the principal lost it itself");
    }
}
