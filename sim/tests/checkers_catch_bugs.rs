//! The simulator must catch a driver that acknowledges before its writes are durable, and
//! a seed must replay to the same trace.
#![cfg(madsim)]

use tessera_sim::cli::check_seed;
use tessera_sim::run::Options;

#[test]
fn ack_before_sync_is_caught() {
    let opts = Options { ack_before_sync: true, ..Options::default() };
    let caught: Vec<u64> = (0..20).filter(|s| !check_seed(*s, &opts).0.violations.is_empty()).collect();
    assert!(
        caught.len() >= 5,
        "a driver that acks before fsync lost writes in only {} of 20 seeds: {caught:?}",
        caught.len()
    );
    // The violation names the lost acknowledged write.
    let r = check_seed(caught[0], &opts).0;
    assert!(r.violations.iter().any(|v| v.contains("acknowledged")), "{:?}", r.violations);
}

#[test]
fn correct_driver_passes_and_replays_identically() {
    let opts = Options::default();
    for seed in 0..10 {
        let (r, deterministic) = check_seed(seed, &opts);
        assert!(deterministic, "seed {seed} is not reproducible");
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert!(r.ops > 100, "seed {seed} ran only {} ops", r.ops);
    }
}

#[test]
fn different_seeds_give_different_histories() {
    let opts = Options::default();
    assert_ne!(check_seed(1, &opts).0.hash, check_seed(2, &opts).0.hash);
}

/// With a grace of seconds, tombstones really are collected while clients run (reads find
/// deleted keys gone) and by the end, and the checks pass, also where a node was kept down
/// longer than the grace (tombstones then wait for it).
#[test]
fn tombstone_collection_runs_and_passes() {
    let opts = Options { tombstone_gc: true, duration_ms: 14_000, ..Options::default() };
    let (mut collected, mut read_gone, mut long_outages) = (0u64, 0u64, 0);
    // Half the seeds keep a node down, which holds collection back while clients run.
    for seed in 0..8 {
        let (r, deterministic) = check_seed(seed, &opts);
        assert!(deterministic, "seed {seed} is not reproducible");
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        let line = r.events.iter().find(|e| e.contains("keys collected on every node")).expect("no collection report");
        let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        collected += numbers[0];
        read_gone += numbers[1];
        long_outages += usize::from(r.events.iter().any(|e| e.contains("DOWN until the heal")));
    }
    assert!(collected > 0 && read_gone > 0, "collected {collected} keys, {read_gone} reads found one gone");
    assert!(long_outages > 0, "no seed kept a node down longer than the grace");
}
