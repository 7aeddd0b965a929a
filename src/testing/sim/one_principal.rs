//! Invariant: at most one principal accepting writes per role sequence, and no overlap in time
//! between role sequences: once a principal of a newer role sequence has answered a commit, no
//! principal of an older one answers another.

use std::collections::BTreeMap;

/// Two partners, both up and both principal at the same role sequence: its role sequence.
pub fn two_principals_at(a: (bool, bool, u64), b: (bool, bool, u64)) -> Option<u64> {
    let (a_up, a_principal, a_rs) = a;
    let (b_up, b_principal, b_rs) = b;
    (a_up && b_up && a_principal && b_principal && a_rs == b_rs).then_some(a_rs)
}

/// A principal of role sequence `rs` is answering: the newer role sequence that has already
/// answered (`answered`: role sequence → when it first answered), if there is one.
pub fn newer_answered(answered: &BTreeMap<u64, u64>, rs: u64) -> Option<u64> {
    answered.range(rs + 1..).next().map(|(&newer, _)| newer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_principals_only_at_one_role_sequence_count() {
        assert_eq!(two_principals_at((true, true, 3), (true, true, 3)), Some(3));
        assert_eq!(two_principals_at((true, true, 3), (true, true, 4)), None);
        assert_eq!(two_principals_at((true, true, 3), (false, true, 3)), None);
        let answered: BTreeMap<u64, u64> = [(1, 10), (2, 20)].into();
        assert_eq!(newer_answered(&answered, 1), Some(2));
        assert_eq!(newer_answered(&answered, 2), None);
    }
}
