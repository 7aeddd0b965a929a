//! Invariant: no acknowledged FULL commit is lost. Checked when a mirror takes over: every commit
//! any principal acknowledged must be in the new principal's log.

use std::collections::BTreeMap;

/// The first acknowledged commit (id → role sequence it was answered at) missing from `log`
/// (records as (role sequence, id)), if any.
pub fn first_missing(acknowledged: &BTreeMap<u64, u64>, log: &[(u64, u64)]) -> Option<u64> {
    acknowledged.keys().copied().find(|id| !log.iter().any(|(_, i)| i == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_the_log_lacks() {
        let acknowledged: BTreeMap<u64, u64> = [(1, 1), (2, 1), (3, 1)].into();
        assert_eq!(first_missing(&acknowledged, &[(1, 1), (1, 2), (1, 3)]), None);
        assert_eq!(first_missing(&acknowledged, &[(1, 1), (1, 3)]), Some(2));
    }
}
