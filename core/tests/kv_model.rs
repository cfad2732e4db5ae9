//! The ring against brute-force placement, and sibling reconciliation against its laws:
//! order does not matter, nothing dominated survives, nothing concurrent is lost.

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tessera_core::kv::ring::key_position;
use tessera_core::kv::vclock::{reconcile, winner};
use tessera_core::kv::{Causal, KvConfig, KvMachine, KvRequest, KvResponse, Ring, VClock, Version};
use tessera_core::mem_store::MemStore;
use tessera_core::{Machine, Store};

fn brute_force(nodes: &[(String, u32)], tenant: &str, key: &str, rf: usize) -> Vec<String> {
    let p = key_position(tenant, key);
    let mut best: Vec<(u64, String)> = nodes
        .iter()
        .map(|(n, vnodes)| {
            let d = (0..*vnodes)
                .map(|i| {
                    let h = Sha256::digest(format!("{n}-vnode-{i}").as_bytes());
                    let t = u64::from_be_bytes(h[..8].try_into().unwrap());
                    t.wrapping_sub(p)
                })
                .min()
                .unwrap();
            (d, n.clone())
        })
        .collect();
    best.sort();
    best.into_iter().take(rf).map(|(_, n)| n).collect()
}

fn version() -> impl Strategy<Value = Version> {
    (proptest::collection::btree_map(0u8..4, 1u64..4, 0..4), 0u64..5, proptest::option::of(0u8..3)).prop_map(
        |(c, ts, v)| Version {
            clock: VClock(c.into_iter().map(|(n, c)| (format!("n{n}"), c)).collect()),
            ts_ms: ts,
            value: v.map(|b| vec![b]),
        },
    )
}

proptest! {
    #[test]
    fn ring_matches_brute_force(n in 1usize..7, vnodes in 1u32..40, keys in proptest::collection::vec("[a-z]{1,8}", 1..20), rf in 1usize..5) {
        let nodes: Vec<(String, u32)> = (0..n).map(|i| (format!("node-{i}"), vnodes + i as u32)).collect();
        let ring = Ring::new(&nodes);
        for k in &keys {
            let got: Vec<String> = ring.replicas("tenant", k, rf).into_iter().map(str::to_owned).collect();
            prop_assert_eq!(got, brute_force(&nodes, "tenant", k, rf));
        }
    }

    #[test]
    fn reconcile_is_order_free_and_keeps_exactly_the_undominated(vs in proptest::collection::vec(version(), 0..8)) {
        let forward = vs.iter().fold(Vec::new(), |acc, v| reconcile(&acc, std::slice::from_ref(v)));
        let backward = vs.iter().rev().fold(Vec::new(), |acc, v| reconcile(&acc, std::slice::from_ref(v)));
        let once = reconcile(&[], &vs);
        let clocks = |x: &[Version]| x.iter().map(|v| v.clock.clone()).collect::<Vec<_>>();
        prop_assert_eq!(clocks(&forward), clocks(&once));
        prop_assert_eq!(clocks(&backward), clocks(&once));
        for v in &vs {
            // Each input is kept (by clock) or superseded by something kept.
            prop_assert!(once.iter().any(|w| matches!(v.clock.compare(&w.clock), Causal::Before | Causal::Equal)));
        }
        for a in &once {
            for b in &once {
                prop_assert!(std::ptr::eq(a, b) || a.clock.compare(&b.clock) == Causal::Concurrent);
            }
        }
        prop_assert_eq!(winner(&once).is_some(), !vs.is_empty());
    }
}

fn step(m: &mut KvMachine, store: &MemStore, now: u64, req: KvRequest) -> KvResponse {
    let ready = m.step(now, 0, req, store).unwrap();
    store.write(&ready.writes).unwrap();
    store.sync().unwrap();
    ready.replies.into_iter().next().unwrap().1.unwrap()
}

/// Coordinates a write on a replica, which keeps the new version in the same step, as the
/// coordinator has its own replica do (whatever `keep` the request was built with).
fn write(m: &mut KvMachine, store: &MemStore, now: u64, req: KvRequest) -> KvResponse {
    let KvRequest::Coordinate { tenant, key, value, idem, .. } = req else { panic!() };
    step(m, store, now, KvRequest::Coordinate { tenant, key, value, idem, keep: true })
}

#[test]
fn a_coordination_stores_nothing_and_its_counters_never_repeat_across_restarts() {
    let store = MemStore::new();
    let coord = |k: &str| KvRequest::Coordinate {
        tenant: "t".into(),
        key: k.into(),
        value: Some(b"v".to_vec()),
        idem: None,
        keep: false,
    };
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    // The first coordination reserves a block of counters: that is its only write.
    let first = m.step(1, 0, coord("a"), &store).unwrap();
    assert!(!first.volatile && !first.writes.is_empty());
    store.write(&first.writes).unwrap();
    let KvResponse::Coordinated { clock: a, .. } = first.replies[0].1.clone().unwrap() else { panic!() };
    // Within the block, a coordination writes nothing; its answer still waits for its
    // group's sync (not volatile), which makes the block's ceiling durable first.
    let second = m.step(2, 0, coord("a"), &store).unwrap();
    assert!(!second.volatile && second.writes.is_empty());
    let KvResponse::Coordinated { clock: b, .. } = second.replies[0].1.clone().unwrap() else { panic!() };
    assert_eq!(a.0.len(), 1, "nothing was stored, so the context is still empty");
    assert_eq!(b.0.len(), 1);
    assert!(b.get("n1") > a.get("n1"), "but the counter is new");
    assert_eq!(
        step(&mut m, &store, 3, KvRequest::Read { tenant: "t".into(), key: "a".into() }),
        KvResponse::Versions(vec![])
    );
    // A restart (a new machine over the same store) never hands out a counter used before,
    // even though no version carrying one was stored here.
    let mut again = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    let KvResponse::Coordinated { clock: c, .. } = step(&mut again, &store, 4, coord("a")) else { panic!() };
    assert!(c.get("n1") > b.get("n1"));
}

#[test]
fn concurrent_coordinators_make_siblings_and_a_later_write_supersedes_them() {
    let (s1, s2) = (MemStore::new(), MemStore::new());
    let mut n1 = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    let mut n2 = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n2") });
    let coord = |v: &str| KvRequest::Coordinate {
        tenant: "t".into(),
        key: "k".into(),
        value: Some(v.into()),
        idem: None,
        keep: false,
    };
    // A partition: each side coordinates a write without seeing the other's.
    let KvResponse::Coordinated { versions: a, .. } = write(&mut n1, &s1, 10, coord("a")) else { panic!() };
    let KvResponse::Coordinated { versions: b, .. } = write(&mut n2, &s2, 11, coord("b")) else { panic!() };
    // Heal: each applies the other's version.
    let apply = |v: Vec<Version>| KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions: v, idem: None };
    let KvResponse::Versions(on1) = step(&mut n1, &s1, 12, apply(b.clone())) else { panic!() };
    let KvResponse::Versions(on2) = step(&mut n2, &s2, 12, apply(a.clone())) else { panic!() };
    assert_eq!(on1, on2);
    assert_eq!(on1.len(), 2, "concurrent writes are kept as siblings");
    assert_eq!(winner(&on1).unwrap().value.as_deref(), Some(b"b".as_slice()));
    // A write coordinated after seeing both supersedes both.
    let KvResponse::Coordinated { versions: c, clock, .. } = write(&mut n1, &s1, 13, coord("c")) else { panic!() };
    assert_eq!((clock.get("n1"), clock.get("n2")), (2, 1));
    let KvResponse::Versions(after) = step(&mut n2, &s2, 14, apply(c)) else { panic!() };
    assert_eq!(after.len(), 1);
    // Idempotency: a replay answers the first clock; another request under the key is refused.
    let idem = |v: &str, h: u8| KvRequest::Coordinate {
        tenant: "t".into(),
        key: "j".into(),
        value: Some(v.into()),
        idem: Some(tessera_core::kv::IdemKey { key: "op-1".into(), request_hash: vec![h], fresh: false }),
        keep: false,
    };
    let KvResponse::Coordinated { clock: first, duplicate: false, .. } = write(&mut n1, &s1, 20, idem("x", 1)) else {
        panic!()
    };
    let KvResponse::Coordinated { clock: again, duplicate: true, .. } = step(&mut n1, &s1, 21, idem("x", 1)) else {
        panic!()
    };
    assert_eq!(first, again);
    assert!(n1.step(22, 0, idem("y", 2), &s1).unwrap().replies[0].1.is_err());
    // Before its record is applied (the apply is still in flight), a replay through the same
    // replica is recognised, and a reuse for another write is refused.
    let early = |v: &str, h: u8| KvRequest::Coordinate {
        tenant: "t".into(),
        key: "j2".into(),
        value: Some(v.into()),
        idem: Some(tessera_core::kv::IdemKey { key: "op-2".into(), request_hash: vec![h], fresh: false }),
        keep: false,
    };
    let KvResponse::Coordinated { clock: minted, .. } = step(&mut n1, &s1, 23, early("x", 1)) else { panic!() };
    let KvResponse::Coordinated { clock: replayed, duplicate: true, .. } = step(&mut n1, &s1, 24, early("x", 1)) else {
        panic!()
    };
    assert_eq!(minted, replayed);
    assert!(matches!(
        n1.step(25, 0, early("y", 2), &s1).unwrap().replies[0].1,
        Err(tessera_core::CoreError::FailedPrecondition(_))
    ));
    // Stats count distinct keys.
    assert_eq!(step(&mut n1, &s1, 23, KvRequest::Stats), KvResponse::Stats { keys: 2, hints: 0 });
}

#[test]
fn a_fresh_key_is_not_looked_up_yet_its_record_serves_later_replays() {
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    let req = |fresh: bool, h: u8| KvRequest::Coordinate {
        tenant: "t".into(),
        key: "k".into(),
        value: Some(b"v".to_vec()),
        idem: Some(tessera_core::kv::IdemKey { key: "gen-1".into(), request_hash: vec![h], fresh }),
        keep: false,
    };
    let KvResponse::Coordinated { clock: first, duplicate: false, idem: Some(rec), .. } =
        write(&mut m, &store, 1, req(true, 1))
    else {
        panic!()
    };
    assert!(rec.fresh, "the record carries the key's freshness to its replicas");
    // The client replays with the key it was given: no longer fresh, so it is looked up.
    let KvResponse::Coordinated { clock: again, duplicate: true, idem: Some(stored), .. } =
        step(&mut m, &store, 2, req(false, 1))
    else {
        panic!()
    };
    assert_eq!((first, stored.fresh), (again, false));
    assert!(matches!(
        m.step(3, 0, req(false, 2), &store).unwrap().replies[0].1,
        Err(tessera_core::CoreError::FailedPrecondition(_))
    ));
    // A fresh apply writes its record without reading one first; applying it twice is harmless.
    let apply = KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions: vec![], idem: Some(rec) };
    assert!(matches!(step(&mut m, &store, 4, apply), KvResponse::Versions(_)));
    let KvResponse::Coordinated { duplicate: true, .. } = step(&mut m, &store, 5, req(false, 1)) else { panic!() };
}

#[test]
fn equal_clocks_with_different_content_converge_and_insane_clocks_are_refused() {
    let c = VClock([("n1".to_owned(), 5)].into());
    let a = Version { clock: c.clone(), ts_ms: 1, value: Some(b"a".to_vec()) };
    let b = Version { clock: c, ts_ms: 2, value: Some(b"b".to_vec()) };
    assert_eq!(reconcile(std::slice::from_ref(&a), std::slice::from_ref(&b)), vec![b.clone()]);
    assert_eq!(reconcile(std::slice::from_ref(&b), std::slice::from_ref(&a)), vec![b]);
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    let huge = Version { clock: VClock([("n2".to_owned(), u64::MAX)].into()), ts_ms: 1, value: None };
    let req = KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions: vec![huge], idem: None };
    assert!(m.step(1, 0, req, &store).unwrap().replies[0].1.is_err());
    // An empty apply stores nothing and counts no key.
    let req = KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions: vec![], idem: None };
    assert!(m.step(2, 0, req, &store).unwrap().writes.is_empty());
}

#[test]
fn a_full_sweep_asks_for_the_next_at_once() {
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 10, ..KvConfig::new("n1") });
    for i in 0..1500 {
        let req = KvRequest::Coordinate {
            tenant: "t".into(),
            key: format!("k{i}"),
            value: Some(b"v".to_vec()),
            idem: Some(tessera_core::kv::IdemKey { key: format!("i{i}"), request_hash: vec![1], fresh: false }),
            keep: false,
        };
        write(&mut m, &store, 1, req);
    }
    let first = m.tick(100, &store).unwrap();
    assert_eq!(first.deadline, Some(101), "more expired records remain");
    store.write(&first.writes).unwrap();
    let second = m.tick(101, &store).unwrap();
    store.write(&second.writes).unwrap();
    let third = m.tick(102, &store).unwrap();
    assert!(third.writes.is_empty());
    assert_eq!(third.deadline, Some(102 + 60_000));
}

#[test]
fn old_hints_expire_even_behind_many_fresh_ones() {
    use tessera_core::kv::replica::HINT_MAX_AGE_MS;
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 10, ..KvConfig::new("n1") });
    let hint = |target: &str, i: u32| KvRequest::Hint {
        target: target.into(),
        tenant: "t".into(),
        key: format!("k{i}"),
        versions: vec![Version { clock: VClock([("n1".to_owned(), 1)].into()), ts_ms: 1, value: None }],
        layout: 7,
        taken_ms: None,
    };
    // "a" sorts first and holds 1200 fresh hints; "b" holds one old one.
    step(&mut m, &store, 1, hint("b", 0));
    for i in 0..1200 {
        step(&mut m, &store, HINT_MAX_AGE_MS, hint("a", i));
    }
    let targets = step(&mut m, &store, HINT_MAX_AGE_MS + 4, KvRequest::HintTargets);
    assert_eq!(targets, KvResponse::Targets(vec!["a".into(), "b".into()]), "one seek per node, in order");
    let ready = m.tick(HINT_MAX_AGE_MS + 5, &store).unwrap();
    store.write(&ready.writes).unwrap();
    assert_eq!(step(&mut m, &store, HINT_MAX_AGE_MS + 6, KvRequest::Stats), KvResponse::Stats { keys: 0, hints: 1200 });
    let KvResponse::Hints(left) =
        step(&mut m, &store, HINT_MAX_AGE_MS + 7, KvRequest::Hints { target: "b".into(), limit: 10 })
    else {
        panic!()
    };
    assert!(left.is_empty());
    // A kept hint remembers the layout its write was placed by.
    let KvResponse::Hints(kept) =
        step(&mut m, &store, HINT_MAX_AGE_MS + 8, KvRequest::Hints { target: "a".into(), limit: 2 })
    else {
        panic!()
    };
    assert_eq!(kept.iter().map(|h| h.layout).collect::<Vec<_>>(), [7, 7]);
    assert_eq!(
        step(&mut m, &store, HINT_MAX_AGE_MS + 9, KvRequest::HintTargets),
        KvResponse::Targets(vec!["a".into()])
    );
}

#[test]
fn scan_pages_keys_and_digests_page_them_without_values() {
    use tessera_core::kv::vclock::digest;
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    for (t, k) in [("a", "x"), ("a", "y"), ("b", "x")] {
        let req = KvRequest::Coordinate {
            tenant: t.into(),
            key: k.into(),
            value: Some(b"v".to_vec()),
            idem: None,
            keep: false,
        };
        write(&mut m, &store, 1, req);
    }
    let KvResponse::Entries(first) = step(&mut m, &store, 2, KvRequest::Scan { after: None, limit: 2 }) else {
        panic!()
    };
    let names: Vec<(String, String)> = first.iter().map(|(t, k, _)| (t.clone(), k.clone())).collect();
    assert_eq!(names, [("a".into(), "x".into()), ("a".into(), "y".into())]);
    let after = Some(("a".to_owned(), "y".to_owned()));
    let KvResponse::Entries(rest) = step(&mut m, &store, 3, KvRequest::Scan { after, limit: 2 }) else { panic!() };
    assert_eq!(rest.len(), 1);
    let KvResponse::Digests(ds) = step(&mut m, &store, 4, KvRequest::Digests { after: None, limit: 10 }) else {
        panic!()
    };
    let expected: Vec<(String, String, Vec<u8>)> =
        first.iter().chain(&rest).map(|(t, k, vs)| (t.clone(), k.clone(), digest(vs))).collect();
    assert_eq!(ds, expected);
    assert!(ds.iter().all(|(_, _, d)| d.len() == 16));
    // Anti-entropy's digests are answered from the store alone, off the driver's thread,
    // alike; hand-over's scan queues behind the writes before it.
    let req = KvRequest::Digests { after: None, limit: 10 };
    let direct = KvMachine::read_only(&req, &store).expect("served directly").unwrap().unwrap();
    assert_eq!(direct, step(&mut m, &store, 5, req));
    assert!(KvMachine::read_only(&KvRequest::Scan { after: None, limit: 2 }, &store).is_none());
    assert!(KvMachine::read_only(&KvRequest::Stats, &store).is_none());
}

proptest! {
    /// While a node is added or removed, reads ask the old owners, writes reach both sets,
    /// and each key changes at most one owner (so at most one hand-over target per key).
    #[test]
    fn placement_during_a_layout_change(n in 2usize..6, added in any::<bool>(), keys in proptest::collection::vec("[a-z]{1,6}", 1..30), rf in 1usize..4) {
        use tessera_core::meta::{Layout, Placement};
        let members: Vec<(String, String, u32)> = (0..n).map(|i| (format!("n{i}"), format!("h:{}", i + 1), 40)).collect();
        let before = Layout::initial(&members);
        let mut after = before.clone();
        if added {
            let mut m = after.members[0].clone();
            (m.id, m.addr, m.raft_id) = ("n9".into(), "h:99".into(), 99);
            after.members.push(m);
        } else {
            after.members[n - 1].storage = false;
        }
        after.previous = Some(before.ring_nodes());
        let old = Placement::new(&before);
        let moving = Placement::new(&after);
        for k in &keys {
            let old_set = old.read_set("t", k, rf);
            prop_assert_eq!(moving.read_set("t", k, rf), old_set.clone());
            let sets = moving.write_sets("t", k, rf);
            prop_assert!(sets.contains(&old_set));
            let new_set = sets.last().unwrap().clone();
            let fresh: Vec<&String> = new_set.iter().filter(|x| !old_set.contains(x)).collect();
            prop_assert!(fresh.len() <= 1, "{:?} -> {:?}", old_set, new_set);
            for x in &old_set {
                prop_assert_eq!(moving.handoff_targets(x, "t", k, rf).len(), fresh.len());
            }
            let union = moving.write_nodes("t", k, rf);
            prop_assert!(old_set.iter().chain(&new_set).all(|x| union.contains(x)));
        }
    }
}

proptest! {
    /// While a tenant's factor changes, writes need W of both factors' sets, and once every
    /// old owner has handed its keys over, any R of the new set meets every write a W of the
    /// old set acknowledged (whichever W it was).
    #[test]
    fn placement_during_a_replication_factor_change(n in 1usize..7, from in 1u32..6, to in 1u32..6, keys in proptest::collection::vec("[a-z]{1,6}", 1..12)) {
        use tessera_core::meta::{Layout, Placement, RfChange};
        let members: Vec<(String, String, u32)> = (0..n).map(|i| (format!("n{i}"), format!("h:{}", i + 1), 40)).collect();
        let mut layout = Layout::initial(&members);
        layout.rf_change = Some(RfChange { tenant: "t".into(), from, to });
        let moving = Placement::new(&layout);
        let steady = Placement::new(&Layout::initial(&members));
        let quorum = |len: usize| len / 2 + 1;
        for k in &keys {
            let old = steady.read_set("t", k, from as usize);
            let new = steady.read_set("t", k, to as usize);
            prop_assert_eq!(moving.read_set("t", k, to as usize), old.clone());
            let sets = moving.write_sets("t", k, to as usize);
            prop_assert!(sets.contains(&old) && sets.contains(&new) && sets.len() <= 2);
            // Other tenants are placed by their own factor.
            prop_assert_eq!(moving.write_sets("u", k, 2), steady.write_sets("u", k, 2));
            prop_assert!(moving.handoff_targets(&old[0], "u", k, 2).is_empty());
            for w in subsets(&old, quorum(old.len())) {
                let mut holders: Vec<String> = w.clone();
                for x in &w {
                    holders.extend(moving.handoff_targets(x, "t", k, to as usize));
                }
                for r in subsets(&new, quorum(new.len())) {
                    prop_assert!(r.iter().any(|x| holders.contains(x)), "W {:?} of {:?} handed to {:?}; R {:?} of {:?}", w, old, holders, r, new);
                }
            }
        }
    }
}

/// Every subset of `items` of size `k`.
fn subsets(items: &[String], k: usize) -> Vec<Vec<String>> {
    (0u32..1 << items.len())
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| items.iter().enumerate().filter(|(i, _)| m & (1 << i) != 0).map(|(_, x)| x.clone()).collect())
        .collect()
}

#[test]
fn the_fence_floor_only_rises_and_survives_a_restart() {
    let store = MemStore::new();
    let config = KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") };
    let mut m = KvMachine::new(config.clone());
    assert_eq!(step(&mut m, &store, 1, KvRequest::Fence { version: 0 }), KvResponse::Fence(0));
    assert_eq!(step(&mut m, &store, 2, KvRequest::Fence { version: 5 }), KvResponse::Fence(5));
    assert_eq!(step(&mut m, &store, 3, KvRequest::Fence { version: 3 }), KvResponse::Fence(5));
    let mut again = KvMachine::new(config);
    assert_eq!(step(&mut again, &store, 4, KvRequest::Fence { version: 0 }), KvResponse::Fence(5));
}

#[test]
fn a_discard_removes_only_unchanged_copies_and_none_after_a_newer_write_was_placed() {
    use tessera_core::kv::vclock::digest;
    let store = MemStore::new();
    let config = KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") };
    let mut m = KvMachine::new(config.clone());
    let v =
        |n: u64, b: &[u8]| Version { clock: VClock([("n2".to_owned(), n)].into()), ts_ms: n, value: Some(b.to_vec()) };
    let apply = |key: &str, version: Version| KvRequest::Apply {
        tenant: "t".into(),
        key: key.into(),
        versions: vec![version],
        idem: None,
    };
    for k in ["a", "b", "c"] {
        step(&mut m, &store, 1, apply(k, v(1, b"x")));
    }
    let seen = digest(&[v(1, b"x")]);
    // "b" changed after it was looked at: it stays, with its new version.
    step(&mut m, &store, 2, apply("b", v(2, b"y")));
    let stale = |keys: &[&str]| keys.iter().map(|k| ("t".to_owned(), (*k).to_owned(), seen.clone())).collect();
    let out = step(&mut m, &store, 3, KvRequest::Discard { layout: 4, keys: stale(&["a", "b", "zz"]) });
    assert_eq!(out, KvResponse::Discarded(1));
    let read = |m: &mut KvMachine, k: &str| step(m, &store, 4, KvRequest::Read { tenant: "t".into(), key: k.into() });
    assert_eq!(read(&mut m, "a"), KvResponse::Versions(vec![]));
    assert_eq!(read(&mut m, "b"), KvResponse::Versions(vec![v(2, b"y")]));
    assert!(matches!(step(&mut m, &store, 5, KvRequest::Stats), KvResponse::Stats { keys: 2, .. }));
    // A write placed by layout 5 was recorded (durably, so also after a restart): copies found
    // stale by layout 4 stay, even unchanged ones.
    assert_eq!(step(&mut m, &store, 6, KvRequest::Placed { version: 5 }), KvResponse::Placed(5));
    assert_eq!(step(&mut m, &store, 6, KvRequest::Placed { version: 3 }), KvResponse::Placed(5));
    let mut again = KvMachine::new(config);
    let refused = again.step(7, 0, KvRequest::Discard { layout: 4, keys: stale(&["c"]) }, &store).unwrap();
    assert!(matches!(refused.replies[0].1, Err(tessera_core::CoreError::FailedPrecondition(_))));
    assert!(refused.writes.is_empty());
    assert_eq!(read(&mut again, "c"), KvResponse::Versions(vec![v(1, b"x")]));
    assert_eq!(
        step(&mut again, &store, 8, KvRequest::Discard { layout: 5, keys: stale(&["c"]) }),
        KvResponse::Discarded(1)
    );
    assert!(matches!(step(&mut again, &store, 9, KvRequest::Stats), KvResponse::Stats { keys: 1, .. }));
}

#[test]
fn a_replay_whose_copy_was_discarded_goes_to_another_replica_and_reuse_stays_refused() {
    use tessera_core::CoreError;
    use tessera_core::kv::IdemKey;
    use tessera_core::kv::vclock::digest;
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 60_000, ..KvConfig::new("n1") });
    let idem = |hash: u8| IdemKey { key: "once".into(), request_hash: vec![hash], fresh: false };
    let req = |key: &str, hash: u8| KvRequest::Coordinate {
        tenant: "t".into(),
        key: key.into(),
        value: Some(b"v".to_vec()),
        idem: Some(idem(hash)),
        keep: true,
    };
    let KvResponse::Coordinated { versions, .. } = write(&mut m, &store, 1, req("k", 7)) else { panic!() };
    // While the copy is held, a replay is a duplicate.
    let KvResponse::Coordinated { duplicate, .. } = write(&mut m, &store, 2, req("k", 7)) else { panic!() };
    assert!(duplicate);
    // The key used again for another write (another key, whose versions say nothing of the
    // record's) is refused.
    step(
        &mut m,
        &store,
        3,
        KvRequest::Apply {
            tenant: "t".into(),
            key: "other".into(),
            versions: vec![Version {
                clock: VClock([("n2".to_owned(), 3)].into()),
                ts_ms: 3,
                value: Some(b"o".to_vec()),
            }],
            idem: None,
        },
    );
    let reuse = m.step(4, 0, req("other", 8), &store).unwrap();
    assert!(matches!(reuse.replies[0].1, Err(CoreError::FailedPrecondition(_))), "{:?}", reuse.replies);
    // The node stops replicating the key and discards its copy; the record stays. A later
    // replay here (the node an owner again) is neither answered "done" with nothing held nor
    // coordinated anew on nothing: another replica answers it.
    let keys = vec![("t".to_owned(), "k".to_owned(), digest(&versions))];
    assert_eq!(step(&mut m, &store, 5, KvRequest::Discard { layout: 1, keys }), KvResponse::Discarded(1));
    let replay = m.step(6, 0, req("k", 7), &store).unwrap();
    assert!(matches!(replay.replies[0].1, Err(CoreError::Unavailable(_))), "{:?}", replay.replies);
    assert!(replay.writes.is_empty());
    // Once the write is handed back, the replay is a duplicate again.
    step(&mut m, &store, 7, KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions, idem: None });
    let KvResponse::Coordinated { duplicate, .. } = write(&mut m, &store, 8, req("k", 7)) else { panic!() };
    assert!(duplicate);
}

#[test]
fn tenant_keys_count_one_tenant_a_page_at_a_time() {
    let store = MemStore::new();
    let mut m = KvMachine::new(KvConfig { idempotency_ttl_ms: 1000, ..KvConfig::new("n1") });
    let v = Version { clock: VClock([("n2".to_owned(), 1)].into()), ts_ms: 1, value: Some(b"x".to_vec()) };
    let mut batch = Vec::new();
    for (tenant, n) in [("ab", 10_005), ("abc", 7), ("a", 3)] {
        for i in 0..n {
            let versions = vec![v.clone()];
            batch.push(KvRequest::Apply { tenant: tenant.into(), key: format!("k{i:05}"), versions, idem: None });
        }
    }
    for req in batch {
        step(&mut m, &store, 1, req);
    }
    let count = |m: &mut KvMachine, tenant: &str| {
        let (mut total, mut after, mut pages) = (0, None, 0);
        loop {
            pages += 1;
            match step(m, &store, 2, KvRequest::TenantKeys { tenant: tenant.into(), after }) {
                KvResponse::Count(n, Some(last)) => (total, after) = (total + n, Some(last)),
                KvResponse::Count(n, None) => return (total + n, pages),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(count(&mut m, "ab"), (10_005, 2));
    assert_eq!(count(&mut m, "abc"), (7, 1));
    assert_eq!(count(&mut m, "a"), (3, 1));
    assert_eq!(count(&mut m, "nobody"), (0, 1));
}
