//! Invariant: after every fault heals, a principal exists and commits proceed: some commit is
//! answered within the healing period.

/// Whether the run stalled: no commit answered between `before` and `after` (counts of
/// acknowledged commits at the start and the end of the healing period).
pub fn stalled(before: usize, after: usize) -> bool {
    after == before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_new_commit_is_a_stall() {
        assert!(stalled(5, 5));
        assert!(!stalled(5, 6));
    }
}
