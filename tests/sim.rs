//! The deterministic simulator: many seeds with no violation, and every planted bug caught.

use mirrorlog::testing::sim::{run, PlantedBug};

/// Seeds per test run here; CI runs 10,000 more with `mirrorlog sim --seeds 10000`.
const SEEDS: u64 = 40;

#[test]
fn seeds_run_without_violations() {
    let mut acknowledged = 0;
    let mut failovers = 0;
    for seed in 1..=SEEDS {
        let outcome = run(seed, None);
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        acknowledged += outcome.commits_acknowledged;
        failovers += outcome.failovers;
    }
    // The schedules are not idle: commits are answered and failovers happen.
    assert!(acknowledged > SEEDS * 100, "{acknowledged} commits acknowledged");
    assert!(failovers > 0, "no failover in {SEEDS} seeds");
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let (a, b) = (run(42, None), run(42, None));
    assert_eq!((a.commits_acknowledged, a.failovers), (b.commits_acknowledged, b.failovers));
}

/// Each planted bug must be caught within a few hundred seeds.
fn caught(bug: PlantedBug) -> Option<u64> {
    (1..=500).find(|&seed| !run(seed, Some(bug)).violations.is_empty())
}

#[test]
fn acking_before_the_mirror_hardened_is_caught() {
    let seed = caught(PlantedBug::AckBeforeMirrorHardened).expect("the planted bug was not caught");
    eprintln!(
        "acking before the mirror hardened: caught at seed {seed}: {:?}",
        run(seed, Some(PlantedBug::AckBeforeMirrorHardened)).violations
    );
}

#[test]
fn a_mirror_acking_what_it_received_is_caught() {
    let seed = caught(PlantedBug::MirrorAcksReceived).expect("the planted bug was not caught");
    eprintln!(
        "mirror acking received: caught at seed {seed}: {:?}",
        run(seed, Some(PlantedBug::MirrorAcksReceived)).violations
    );
}

#[test]
fn a_witness_that_forgets_what_it_recorded_is_caught() {
    let seed = caught(PlantedBug::WitnessForgetsOnRestart).expect("the planted bug was not caught");
    eprintln!(
        "witness forgetting on restart: caught at seed {seed}: {:?}",
        run(seed, Some(PlantedBug::WitnessForgetsOnRestart)).violations
    );
}
