//! The metadata machine as a Raft group: three members over in-memory stores, a seeded
//! lossy network, crashes that drop unsynced writes, and a lagging member that must catch up
//! through a snapshot. Checks that every acknowledged change is on every member at the end,
//! and that members agree on the state at every applied index they report.

use std::collections::BTreeMap;

use tessera_core::kv::TenantRecord;
use tessera_core::mem_store::MemStore;
use tessera_core::meta::{MetaConfig, MetaMachine, MetaRequest, MetaResponse};
use tessera_core::rng::Rng;
use tessera_core::{CoreError, CoreResult, Machine, Ready, Store};

const TICK: u64 = 100;

struct Node {
    id: String,
    store: MemStore,
    machine: Option<MetaMachine>,
}

struct Net {
    nodes: Vec<Node>,
    now: u64,
    rng: Rng,
    loss: f64,
    /// Messages in flight: (deliver at, from, to, bytes).
    wire: Vec<(u64, String, usize, Vec<u8>)>,
    down: Vec<bool>,
    replies: BTreeMap<u64, CoreResult<MetaResponse>>,
    next_token: u64,
    /// (node, applied) -> digest, as reported.
    seen: BTreeMap<u64, [u8; 16]>,
}

fn config(id: &str, compact_after: u64) -> MetaConfig {
    // A node past the initial three joins the group, as `--initial-cluster-state existing`,
    // knowing no other member: it learns of the leader from the leader's own messages.
    let join = !["n0", "n1", "n2"].contains(&id);
    let initial = match join {
        false => (0..3).map(|i| (format!("n{i}"), format!("127.0.0.1:{}", 7000 + i), 150)).collect(),
        true => vec![(id.to_owned(), "127.0.0.1:7100".to_owned(), 150)],
    };
    let mut c = MetaConfig::new(id.to_owned(), initial);
    c.compact_after = compact_after;
    c.join = join;
    c
}

impl Net {
    fn new(seed: u64, compact_after: u64) -> Net {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let id = format!("n{i}");
            let store = MemStore::new();
            let (m, init) = MetaMachine::open(&store, config(&id, compact_after), Rng::new(seed + i)).unwrap();
            store.write(&init).unwrap();
            store.sync().unwrap();
            nodes.push(Node { id, store, machine: Some(m) });
        }
        Net {
            nodes,
            now: 1_000,
            rng: Rng::new(seed),
            loss: 0.0,
            wire: Vec::new(),
            down: vec![false; 3],
            replies: BTreeMap::new(),
            next_token: 0,
            seen: BTreeMap::new(),
        }
    }

    /// Starts node `id` empty, to join the group once the layout names it.
    fn start_joining(&mut self, id: &str, compact_after: u64) -> usize {
        let store = MemStore::new();
        let (m, init) = MetaMachine::open(&store, config(id, compact_after), Rng::new(500)).unwrap();
        store.write(&init).unwrap();
        store.sync().unwrap();
        self.nodes.push(Node { id: id.to_owned(), store, machine: Some(m) });
        self.down.push(false);
        self.nodes.len() - 1
    }

    /// What a driver does with a Ready: write, sync, then send and answer.
    fn take(&mut self, from: usize, ready: Ready<CoreResult<MetaResponse>, Vec<u8>>) {
        let store = &self.nodes[from].store;
        store.write(&ready.writes).unwrap();
        store.sync().unwrap();
        for (to, msg) in ready.messages {
            if self.rng.chance(self.loss) {
                continue;
            }
            let at = self.now + 1 + self.rng.below(30);
            // A member the layout names but that was never started gets nothing.
            let Some(to) = self.nodes.iter().position(|n| n.id == to) else { continue };
            self.wire.push((at, self.nodes[from].id.clone(), to, msg));
        }
        for (token, r) in ready.replies {
            self.replies.insert(token, r);
        }
    }

    fn call(&mut self, node: usize, req: MetaRequest) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let store = self.nodes[node].store.clone();
        let Some(m) = self.nodes[node].machine.as_mut() else { return token };
        let ready = m.step(self.now, token, req, &store).unwrap();
        self.take(node, ready);
        token
    }

    /// Advances time by `ms`, delivering messages and ticking every member.
    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 1;
            let due: Vec<(u64, String, usize, Vec<u8>)>;
            (due, self.wire) = std::mem::take(&mut self.wire).into_iter().partition(|(at, _, _, _)| *at <= self.now);
            for (_, from, to, msg) in due {
                if !self.down[to] {
                    self.call(to, MetaRequest::Raft { from: from.clone(), msg });
                }
            }
            if self.now.is_multiple_of(TICK) {
                for i in 0..self.nodes.len() {
                    let store = self.nodes[i].store.clone();
                    if let Some(m) = self.nodes[i].machine.as_mut() {
                        let ready = m.tick(self.now, &store).unwrap();
                        self.take(i, ready);
                    }
                }
                self.observe();
            }
        }
    }

    fn observe(&mut self) {
        for i in 0..self.nodes.len() {
            let t = self.call(i, MetaRequest::Status);
            if let Some(Ok(MetaResponse::Status(s))) = self.replies.remove(&t) {
                if let Some(d) = self.seen.get(&s.applied) {
                    assert_eq!(*d, s.digest, "{} holds different metadata at index {}", s.node_id, s.applied);
                }
                self.seen.insert(s.applied, s.digest);
            }
        }
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].machine = None;
        self.nodes[i].store.crash();
        self.down[i] = true;
    }

    fn restart(&mut self, i: usize, compact_after: u64) {
        let id = self.nodes[i].id.clone();
        let (m, init) =
            MetaMachine::open(&self.nodes[i].store, config(&id, compact_after), Rng::new(99 + i as u64)).unwrap();
        self.nodes[i].store.write(&init).unwrap();
        self.nodes[i].store.sync().unwrap();
        self.nodes[i].machine = Some(m);
        self.down[i] = false;
    }

    fn tenant(&mut self, i: usize, id: &str) -> Option<TenantRecord> {
        let t = self.call(i, MetaRequest::Tenant { id: id.to_owned(), current: false });
        match self.replies.remove(&t) {
            Some(Ok(MetaResponse::Tenant(t))) => t,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_tenant_created_through_any_member_reaches_every_member() {
    let mut net = Net::new(1, 1_000);
    net.run(3_000);
    let t = net.call(2, MetaRequest::CreateTenant { id: "acme".into(), replication_factor: 3 });
    net.run(500);
    assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Created(_)))));
    for i in 0..3 {
        assert_eq!(net.tenant(i, "acme").map(|t| t.replication_factor), Some(3));
    }
    // A duplicate is refused the same way through any member.
    let t = net.call(0, MetaRequest::CreateTenant { id: "acme".into(), replication_factor: 2 });
    net.run(500);
    assert!(matches!(net.replies.remove(&t), Some(Err(CoreError::AlreadyExists(_)))));
    // The factor change reports the real old and new values. On three nodes every key has
    // three replicas either way, so no key moves and no migration starts.
    let t = net.call(1, MetaRequest::SetReplicationFactor { id: "acme".into(), replication_factor: 5 });
    net.run(500);
    match net.replies.remove(&t) {
        Some(Ok(MetaResponse::ReplicationFactor { old, new, migration })) => {
            assert_eq!((old, new.replication_factor, migration), (3, 5, None))
        }
        other => panic!("unexpected {other:?}"),
    }
    // A confirmed read (GetTenant's) through another member waits for a read index round,
    // then shows the new factor; an unknown tenant is not found the same way.
    let t = net.call(2, MetaRequest::ConfirmedTenant { id: "acme".into() });
    assert!(!net.replies.contains_key(&t), "answered before confirming with the leader");
    net.run(300);
    match net.replies.remove(&t) {
        Some(Ok(MetaResponse::Tenant(Some(t)))) => assert_eq!(t.replication_factor, 5),
        other => panic!("unexpected {other:?}"),
    }
    let t = net.call(0, MetaRequest::ConfirmedTenant { id: "nobody".into() });
    net.run(300);
    assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Tenant(None)))));
    // A current read of an unknown tenant is answered (not found) after the read index.
    let t = net.call(1, MetaRequest::Tenant { id: "nobody".into(), current: true });
    net.run(300);
    assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Tenant(None)))));
    // Bad input is refused before it reaches the log.
    let t = net.call(0, MetaRequest::CreateTenant { id: "bad id".into(), replication_factor: 3 });
    assert!(matches!(net.replies.remove(&t), Some(Err(CoreError::InvalidArgument(_)))));
    let t = net.call(0, MetaRequest::CreateTenant { id: "x".into(), replication_factor: 11 });
    assert!(matches!(net.replies.remove(&t), Some(Err(CoreError::InvalidArgument(_)))));
}

#[test]
fn without_a_quorum_changes_fail_clearly_and_none_is_lost_after() {
    let mut net = Net::new(2, 1_000);
    net.run(3_000);
    net.crash(1);
    net.crash(2);
    let t = net.call(0, MetaRequest::CreateTenant { id: "lonely".into(), replication_factor: 1 });
    net.run(6_000);
    match net.replies.remove(&t) {
        Some(Err(CoreError::Unavailable(m))) => assert!(m.contains("ms"), "{m}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    net.restart(1, 1_000);
    net.restart(2, 1_000);
    net.run(4_000);
    let t = net.call(1, MetaRequest::CreateTenant { id: "later".into(), replication_factor: 2 });
    net.run(1_000);
    assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Created(_)))));
    for i in 0..3 {
        assert!(net.tenant(i, "later").is_some(), "n{i} lacks the tenant");
    }
}

#[test]
fn lossy_network_crashes_and_a_snapshot_catch_up_keep_every_acknowledged_change() {
    for seed in 0..8 {
        let compact = 20;
        let mut net = Net::new(100 + seed, compact);
        net.loss = 0.1;
        net.run(3_000);
        let mut acked = Vec::new();
        let mut pending = Vec::new();
        // n2 is down for most of the run, long enough for the others to compact past it.
        net.crash(2);
        for i in 0..120u64 {
            let node = (i % 2) as usize;
            let id = format!("t{i}");
            let token = net.call(node, MetaRequest::CreateTenant { id: id.clone(), replication_factor: 3 });
            pending.push((token, id));
            net.run(60);
            if i == 60 {
                net.crash(0);
                net.run(500);
                net.restart(0, compact);
            }
        }
        net.restart(2, compact);
        net.loss = 0.0;
        net.run(8_000);
        for (token, id) in pending {
            if let Some(Ok(MetaResponse::Created(_))) = net.replies.remove(&token) {
                acked.push(id);
            }
        }
        assert!(acked.len() > 40, "seed {seed}: only {} of 120 creates were acknowledged", acked.len());
        for i in 0..3 {
            for id in &acked {
                assert!(net.tenant(i, id).is_some(), "seed {seed}: n{i} lost acknowledged tenant {id}");
            }
        }
        net.observe();
    }
}

/// Applies `req` through member `via` and returns its migration, after the group committed it.
fn migration(net: &mut Net, via: usize, req: MetaRequest) -> CoreResult<tessera_core::meta::Migration> {
    let t = net.call(via, req);
    net.run(500);
    match net.replies.remove(&t) {
        Some(Ok(MetaResponse::Migration(Some(m)))) => Ok(m),
        Some(Err(e)) => Err(e),
        other => panic!("unexpected {other:?}"),
    }
}

fn layout(net: &mut Net, i: usize) -> tessera_core::meta::Layout {
    let t = net.call(i, MetaRequest::Layout);
    match net.replies.remove(&t) {
        Some(Ok(MetaResponse::Layout(l))) => l,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_layout_change_keeps_the_old_ring_until_every_old_owner_hands_over() {
    let mut net = Net::new(3, 1_000);
    net.run(3_000);
    let t = net.call(0, MetaRequest::CreateTenant { id: "wide".into(), replication_factor: 3 });
    net.run(500);
    assert!(matches!(net.replies.remove(&t), Some(Ok(_))));
    let add = |id: &str, addr: &str, vnodes| MetaRequest::AddNode { id: id.into(), addr: addr.into(), vnodes };
    // Bad input is refused before the log; a taken id or address by the group.
    for bad in [add("bad id", "h:1", 150), add("n9", "nohost", 150), add("n9", "h:1", 0), add("n9", "h:1", 5000)] {
        assert!(matches!(migration(&mut net, 0, bad), Err(CoreError::InvalidArgument(_))));
    }
    assert!(matches!(migration(&mut net, 1, add("n1", "h:1", 150)), Err(CoreError::AlreadyExists(_))));
    assert!(matches!(migration(&mut net, 1, add("n9", "127.0.0.1:7000", 150)), Err(CoreError::AlreadyExists(_))));
    // Adding n3 (64 vnodes): a new version whose previous ring is the old one, every old
    // owner owing a hand-over.
    let m = migration(&mut net, 2, add("n3", "127.0.0.1:7003", 64)).unwrap();
    assert_eq!((m.kind.name(), m.node.as_str(), m.version, m.status()), ("node_addition", "n3", 2, "in_progress"));
    assert_eq!(m.progress.keys().cloned().collect::<Vec<_>>(), ["n0", "n1", "n2"]);
    for i in 0..3 {
        let l = layout(&mut net, i);
        assert_eq!(l.version, 2);
        assert_eq!(l.ring_nodes().len(), 4);
        assert_eq!(l.by_id("n3").map(|m| m.vnodes), Some(64));
        assert_eq!(l.previous.as_ref().map(Vec::len), Some(3));
    }
    // One change at a time.
    let other = MetaRequest::RemoveNode { id: "n0".into(), force: false };
    assert!(matches!(migration(&mut net, 0, other), Err(CoreError::FailedPrecondition(_))));
    // Progress adds up; the change completes when the last old owner is done.
    let progress = |node: &str, moved: u64, total, done| MetaRequest::Progress {
        migration: m.id.clone(),
        node: node.into(),
        moved,
        total,
        done,
        after: Some(("t".into(), format!("k{moved:04}"))),
    };
    migration(&mut net, 0, progress("n0", 10, 40, false)).unwrap();
    // A stale report (sent again, committed late) moves neither the count nor the cursor back.
    let stale = migration(&mut net, 1, progress("n0", 5, 40, false)).unwrap();
    let n0 = &stale.progress["n0"];
    assert_eq!((n0.moved, n0.after.clone()), (10, Some(("t".into(), "k0010".into()))));
    migration(&mut net, 1, progress("n1", 30, 30, true)).unwrap();
    let half = migration(&mut net, 2, progress("n0", 40, 40, true)).unwrap();
    assert_eq!((half.keys_migrated(), half.total_keys(), half.status()), (70, 70, "in_progress"));
    assert!(matches!(migration(&mut net, 2, progress("n3", 1, 1, true)), Err(CoreError::InvalidArgument(_))));
    let done = migration(&mut net, 1, progress("n2", 0, 0, true)).unwrap();
    assert_eq!((done.status(), done.percentage()), ("completed", 100.0));
    for i in 0..3 {
        let l = layout(&mut net, i);
        assert_eq!((l.version, l.previous.is_none()), (3, true));
        let t = net.call(i, MetaRequest::Migration { id: m.id.clone() });
        assert!(
            matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Migration(Some(x)))) if x.status() == "completed")
        );
    }
    // Removing: unknown nodes are NOT_FOUND; going below a tenant's factor needs force.
    let remove = |id: &str, force| MetaRequest::RemoveNode { id: id.into(), force };
    assert!(matches!(migration(&mut net, 0, remove("n7", false)), Err(CoreError::NotFound(_))));
    let m = migration(&mut net, 0, remove("n1", false)).unwrap();
    assert_eq!((m.kind.name(), m.version), ("node_deletion", 4));
    for node in ["n0", "n1", "n2", "n3"] {
        migration(
            &mut net,
            0,
            MetaRequest::Progress {
                migration: m.id.clone(),
                node: node.into(),
                moved: 1,
                total: 1,
                done: true,
                after: None,
            },
        )
        .unwrap();
    }
    let l = layout(&mut net, 2);
    assert_eq!((l.version, l.ring_nodes().len()), (5, 3));
    assert!(l.by_id("n1").is_some_and(|m| !m.storage), "a removed voter stays listed, off the ring");
    assert_eq!(l.data_nodes(), ["n0", "n2", "n3"], "no hints go to a node removed for good");
    assert!(matches!(migration(&mut net, 0, remove("n2", false)), Err(CoreError::FailedPrecondition(_))));
    // A restarted member loads the migrations and the layout it had applied.
    net.crash(1);
    net.restart(1, 1_000);
    net.run(1_000);
    assert_eq!(layout(&mut net, 1).version, 5);
    let t = net.call(1, MetaRequest::Migration { id: m.id.clone() });
    assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Migration(Some(_))))));
    // Forced, a removal goes below the factor, and the removed node (perhaps dead) owes no
    // hand-over: the others hand its keys over.
    let forced = migration(&mut net, 2, remove("n2", true)).unwrap();
    assert_eq!(forced.progress.keys().cloned().collect::<Vec<_>>(), ["n0", "n3"]);
    let t = net.call(0, MetaRequest::Running);
    assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Migration(Some(r)))) if r.id == forced.id));
}

#[test]
fn a_joining_node_gets_the_metadata_as_a_learner_and_keeps_it_across_a_restart() {
    for compact_after in [1_000, 5] {
        let mut net = Net::new(11, compact_after);
        net.run(3_000);
        for i in 0..8 {
            let t = net.call(i % 3, MetaRequest::CreateTenant { id: format!("t{i}"), replication_factor: 3 });
            net.run(300);
            assert!(matches!(net.replies.remove(&t), Some(Ok(_))));
        }
        // Started before the layout names it: it waits, empty, and campaigns for nothing.
        let n3 = net.start_joining("n3", compact_after);
        net.run(2_000);
        assert_eq!(layout(&mut net, n3).version, 0);
        assert_eq!(net.tenant(n3, "t0"), None);
        let add = MetaRequest::AddNode { id: "n3".into(), addr: "127.0.0.1:7003".into(), vnodes: 64 };
        let added = migration(&mut net, 0, add).unwrap();
        net.run(3_000);
        let want = layout(&mut net, 0);
        assert_eq!(layout(&mut net, n3), want, "the learner holds the leader's layout");
        for i in 0..8 {
            assert!(net.tenant(n3, &format!("t{i}")).is_some(), "t{i} reached the learner");
        }
        // It proposes through the leader like any member, and sees later changes.
        let t = net.call(n3, MetaRequest::CreateTenant { id: "late".into(), replication_factor: 2 });
        net.run(1_000);
        assert!(matches!(net.replies.remove(&t), Some(Ok(MetaResponse::Created(_)))), "a learner's proposal");
        for i in 0..4 {
            assert!(net.tenant(i, "late").is_some());
        }
        // A learner does not vote: the three voters still make a quorum without it, and it
        // loses nothing across a crash.
        net.crash(n3);
        let t = net.call(1, MetaRequest::CreateTenant { id: "while-down".into(), replication_factor: 1 });
        net.run(1_000);
        assert!(matches!(net.replies.remove(&t), Some(Ok(_))));
        net.restart(n3, compact_after);
        net.run(3_000);
        assert_eq!(layout(&mut net, n3), layout(&mut net, 0));
        assert!(net.tenant(n3, "while-down").is_some());
        assert!(net.tenant(n3, "late").is_some());
        assert_eq!(voters(&mut net, 0), ["n0", "n1", "n2"], "a fourth node stays a learner");
        // Remove n1, a voter: once its hand-over is done it leaves the group and the learner
        // takes its vote, so the group keeps three voters.
        finish(&mut net, &added);
        let m = migration(&mut net, 0, MetaRequest::RemoveNode { id: "n1".into(), force: false }).unwrap();
        net.run(1_000);
        assert_eq!(voters(&mut net, 0), ["n0", "n1", "n2", "n3"], "n1 votes until its hand-over is done");
        finish(&mut net, &m);
        net.run(3_000);
        for i in [0, 2, n3] {
            assert_eq!(voters(&mut net, i), ["n0", "n2", "n3"], "voters seen by node {i}");
        }
        // Without the removed node and one more, the remaining two voters still commit.
        net.crash(1);
        net.crash(0);
        let t = net.call(n3, MetaRequest::CreateTenant { id: "after-swap".into(), replication_factor: 1 });
        net.run(4_000);
        assert!(matches!(net.replies.remove(&t), Some(Ok(_))), "n2 and n3 make a quorum");
    }
}

/// Reports every old owner of `m` done.
fn finish(net: &mut Net, m: &tessera_core::meta::Migration) {
    for node in m.progress.keys() {
        let done = MetaRequest::Progress {
            migration: m.id.clone(),
            node: node.clone(),
            moved: 0,
            total: 0,
            done: true,
            after: None,
        };
        migration(net, 0, done).unwrap();
    }
}

fn voters(net: &mut Net, i: usize) -> Vec<String> {
    let t = net.call(i, MetaRequest::Status);
    match net.replies.remove(&t) {
        Some(Ok(MetaResponse::Status(s))) => s.voters,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_forced_removal_of_a_node_still_joining_cancels_its_add() {
    let mut net = Net::new(5, 1_000);
    net.run(3_000);
    let add = MetaRequest::AddNode { id: "n7".into(), addr: "127.0.0.1:7007".into(), vnodes: 150 };
    let m = migration(&mut net, 0, add).unwrap();
    assert_eq!((m.version, layout(&mut net, 1).ring_nodes().len()), (2, 4));
    // Without force the removal waits its turn; with it, the add is cancelled.
    let plain = MetaRequest::RemoveNode { id: "n7".into(), force: false };
    assert!(matches!(migration(&mut net, 1, plain), Err(CoreError::FailedPrecondition(_))));
    let cancel = migration(&mut net, 1, MetaRequest::RemoveNode { id: "n7".into(), force: true }).unwrap();
    assert_eq!((cancel.id.as_str(), cancel.status(), cancel.percentage()), (m.id.as_str(), "cancelled", 100.0));
    for i in 0..3 {
        let l = layout(&mut net, i);
        assert_eq!((l.version, l.previous.is_none()), (3, true));
        assert_eq!(l.ring_nodes().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["n0", "n1", "n2"]);
    }
    // The next change may start, and the cancelled id is not reused.
    let again = MetaRequest::AddNode { id: "n7".into(), addr: "127.0.0.1:7007".into(), vnodes: 150 };
    assert!(matches!(migration(&mut net, 2, again), Err(CoreError::AlreadyExists(_))));
    let other = MetaRequest::AddNode { id: "n8".into(), addr: "127.0.0.1:7008".into(), vnodes: 150 };
    assert_eq!(migration(&mut net, 2, other).unwrap().status(), "in_progress");
}
