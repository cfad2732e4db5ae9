//! Anti-entropy over Merkle trees, in one process: three production coordinators and replica
//! drivers over in-memory stores, wired together by calls (every tree question and answer
//! goes through its wire encoding). Replicas in sync exchange no key digests; a few keys out
//! of place cost only their segments' digests and are repaired both ways. Also hinted
//! handoff across a layout change (a fourth replica, n4, holds keys once the layout names it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tessera_core::kv::merkle::{TreeAnswer, TreeQuery};
use tessera_core::kv::quorum::Consistency;
use tessera_core::kv::{
    IdemKey, IdemRecord, KvConfig, KvMachine, KvRequest, KvResponse, TenantRecord, VClock, Version,
};
use tessera_core::mem_store::MemStore;
use tessera_core::meta::migration::NodeProgress;
use tessera_core::meta::{Layout, MetaRequest, MetaResponse, Migration, MigrationKind, Placement, RfChange};
use tessera_core::{CoreError, CoreResult, WriteBatch};
use tessera_shell::driver::{Driver, DriverConfig, HandleFor, NoopObserver};
use tessera_shell::kv_coordinator::{
    AntiEntropyReport, BoxFuture, KeptResult, KvCoordinator, PeerResult, Peers, Unreachable,
};
use tessera_shell::server::SystemClock;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The three nodes, as each coordinator reaches the others.
#[derive(Default)]
struct Net {
    replicas: BTreeMap<String, HandleFor<KvMachine>>,
    stores: BTreeMap<String, MemStore>,
    coordinators: Mutex<BTreeMap<String, Arc<KvCoordinator<LocalPeers>>>>,
    placement: Mutex<Option<Arc<Placement>>>,
    /// Tenants and their replication factors (the metadata group, here fixed).
    tenants: BTreeMap<String, u32>,
    /// Nodes that answer no call, and nodes that answer no `Coordinate` (a reply lost).
    down: Mutex<std::collections::BTreeSet<String>>,
    no_coordinate: Mutex<std::collections::BTreeSet<String>>,
    /// The migration under way, as the metadata group would answer `Running`.
    migration: Mutex<Option<Migration>>,
}

struct LocalPeers {
    me: String,
    net: Arc<Net>,
}

impl Peers for LocalPeers {
    fn me(&self) -> &str {
        &self.me
    }
    fn members(&self) -> Vec<String> {
        NODES.iter().map(|n| n.to_string()).collect()
    }
    fn placement(&self) -> Arc<Placement> {
        self.net.placement.lock().unwrap().clone().expect("placement set before use")
    }
    fn follow(&self, layout: Layout) {
        let mut p = self.net.placement.lock().unwrap();
        if p.as_ref().is_none_or(|p| p.version < layout.version) {
            *p = Some(Arc::new(Placement::new(&layout)));
        }
    }
    fn now_ms(&self) -> u64 {
        use tessera_shell::driver::Clock;
        SystemClock.now_ms()
    }
    fn send_at(self: &Arc<Self>, node: &str, req: KvRequest, _layout: u64, _timeout_ms: u64) -> BoxFuture<PeerResult> {
        let silent = self.net.down.lock().unwrap().contains(node)
            || (matches!(req, KvRequest::Coordinate { .. }) && self.net.no_coordinate.lock().unwrap().contains(node));
        if silent {
            let node = node.to_owned();
            return Box::pin(async move { Err(Unreachable(format!("{node} gave no answer"))) });
        }
        let replica = self.net.replicas.get(node).cloned();
        Box::pin(async move {
            let replica = replica.ok_or_else(|| Unreachable("no such node".into()))?;
            replica.call(req).await.map_err(|e| Unreachable(e.to_string()))
        })
    }
    fn coordinate_here(self: &Arc<Self>, req: KvRequest, _layout: u64) -> BoxFuture<KeptResult> {
        let replica = self.net.replicas.get(&self.me).cloned();
        Box::pin(async move {
            let replica = replica.ok_or_else(|| Unreachable("no such node".into()))?;
            let (out, durable) = replica.call_early(req).await.map_err(|e| Unreachable(e.to_string()))?;
            Ok((out, Some(durable)))
        })
    }
    fn tree(
        self: &Arc<Self>,
        node: &str,
        query: TreeQuery,
        layout: u64,
        _timeout_ms: u64,
    ) -> BoxFuture<CoreResult<TreeAnswer>> {
        let coordinator = self.net.coordinators.lock().unwrap().get(node).cloned();
        let down = self.net.down.lock().unwrap().contains(node);
        let me = self.me.clone();
        Box::pin(async move {
            let c = coordinator.filter(|_| !down).ok_or_else(|| CoreError::Unavailable("no answer".into()))?;
            let query = TreeQuery::decode(&query.encode()).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
            let answer = c.answer_tree(&me, layout, query).await?;
            TreeAnswer::decode(&answer.encode()).map_err(|e| CoreError::Unavailable(e.to_string()))
        })
    }
    fn spawn(&self, fut: BoxFuture<()>) {
        tokio::spawn(fut);
    }
    fn meta(self: &Arc<Self>, req: MetaRequest, _timeout_ms: u64) -> BoxFuture<CoreResult<MetaResponse>> {
        let out = match req {
            MetaRequest::Running => Ok(MetaResponse::Migration(self.net.migration.lock().unwrap().clone())),
            MetaRequest::Progress { node, moved, total, done, after, .. } => {
                if let Some(m) = self.net.migration.lock().unwrap().as_mut() {
                    m.progress.insert(node, NodeProgress { moved, total, done, after });
                }
                Ok(MetaResponse::Migration(None))
            }
            MetaRequest::Tenant { id, .. } => Ok(MetaResponse::Tenant(self.net.tenants.get(&id).map(|rf| {
                TenantRecord { id: id.clone(), replication_factor: *rf, created_ms: 1, updated_ms: 1, rf_version: 0 }
            }))),
            other => Err(CoreError::Unavailable(format!("no metadata group here for {other:?}"))),
        };
        Box::pin(std::future::ready(out))
    }
}

fn start() -> Arc<Net> {
    start_with(|n| KvConfig { idempotency_ttl_ms: 60_000, ..KvConfig::new(n) })
}

/// Nodes whose tombstones (and records) live 50 ms, swept every 10 ms.
fn start_gc() -> Arc<Net> {
    start_with(|n| KvConfig { tombstone_grace_ms: 50, idempotency_ttl_ms: 50, sweep_every_ms: 10, ..KvConfig::new(n) })
}

fn start_with(config: impl Fn(&str) -> KvConfig) -> Arc<Net> {
    let mut net = Net::default();
    let members: Vec<(String, String, u32)> =
        NODES.iter().map(|n| (n.to_string(), format!("{n}.local:7000"), 32)).collect();
    net.placement = Mutex::new(Some(Arc::new(Placement::new(&Layout::initial(&members)))));
    net.tenants = [("t3".to_owned(), 3), ("t1".to_owned(), 1)].into();
    for n in NODES.into_iter().chain(["n4"]) {
        let machine = KvMachine::new(config(n));
        let store = MemStore::new();
        net.stores.insert(n.into(), store.clone());
        let (driver, handle) = Driver::new(
            machine,
            WriteBatch::default(),
            store,
            Arc::new(SystemClock),
            Arc::new(NoopObserver),
            DriverConfig::default(),
        )
        .unwrap();
        tokio::spawn(driver.run());
        net.replicas.insert(n.into(), handle);
    }
    let net = Arc::new(net);
    for n in NODES {
        let peers = Arc::new(LocalPeers { me: n.into(), net: net.clone() });
        net.coordinators.lock().unwrap().insert(n.into(), Arc::new(KvCoordinator::new(peers, 7)));
    }
    net
}

fn coordinator(net: &Net, node: &str) -> Arc<KvCoordinator<LocalPeers>> {
    net.coordinators.lock().unwrap()[node].clone()
}

async fn replica(net: &Net, node: &str, req: KvRequest) -> KvResponse {
    net.replicas[node].call(req).await.unwrap().unwrap()
}

/// What a node's replica holds for a key (clocks only).
async fn held(net: &Net, node: &str, tenant: &str, key: &str) -> Vec<Version> {
    let KvResponse::Versions(v) = replica(net, node, KvRequest::Read { tenant: tenant.into(), key: key.into() }).await
    else {
        panic!("read answered with something else")
    };
    v
}

/// Writes a new version of `key` (tenant t3) on `node`'s replica alone, as a write whose
/// other copies were lost.
async fn write_on_one(net: &Net, node: &str, key: &str) {
    write_value_on_one(net, node, key, b"new").await
}

async fn write_value_on_one(net: &Net, node: &str, key: &str, value: &[u8]) {
    coordinate_on_one(net, node, key, value, None).await;
}

/// Coordinates a write of `value` to `key` (tenant t3) on `node`'s replica alone, under the
/// client's idempotency key `idem` if given: its clock, versions and record.
async fn coordinate_on_one(
    net: &Net,
    node: &str,
    key: &str,
    value: &[u8],
    idem: Option<&str>,
) -> (VClock, Vec<Version>, Option<IdemRecord>) {
    use tessera_shell::kv_coordinator::request_hash;
    let idem =
        idem.map(|i| IdemKey { key: i.into(), request_hash: request_hash("t3", key, Some(value)), fresh: false });
    let req =
        KvRequest::Coordinate { tenant: "t3".into(), key: key.into(), value: Some(value.to_vec()), idem, keep: true };
    let KvResponse::Coordinated { clock, versions, idem, .. } = replica(net, node, req).await else {
        panic!("not coordinated")
    };
    (clock, versions, idem)
}

fn in_sync(r: &AntiEntropyReport) -> bool {
    r.peers == 2 && r.ranges_differing == 0 && r.keys_compared == 0 && r.repaired == 0 && r.key_pages == 0
}

#[tokio::test]
async fn merkle_anti_entropy_finds_and_repairs_only_what_differs() {
    let net = start();
    let n1 = coordinator(&net, "n1");
    let far = n1.peers().now_ms() + 60_000;
    for i in 0..1500 {
        n1.write("t3", &format!("k{i}"), Some(b"v".to_vec()), Consistency::All, String::new(), far).await.unwrap();
    }
    // One replica per key: its keys are shared with nobody, so they never make trees differ.
    for i in 0..300 {
        n1.write("t1", &format!("solo{i}"), Some(b"v".to_vec()), Consistency::All, String::new(), far).await.unwrap();
    }
    for n in NODES {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert!(in_sync(&r), "{n} found differences in replicas in sync: {r:?}");
    }

    // Out of place: three keys only n1 has the newest version of, and one key only n2 has.
    for k in ["k3", "k700", "k1499"] {
        write_on_one(&net, "n1", k).await;
    }
    write_on_one(&net, "n2", "only-n2").await;

    let r = n1.anti_entropy_pass().await;
    // With n2: the three keys and the one n1 lacks; with n3: the three keys.
    assert_eq!(r.repaired, 7, "{r:?}");
    assert_eq!(r.segments_differing, 7, "{r:?}");
    // Only the differing segments' keys were exchanged (8 when written), not 1500 per peer.
    assert!(r.keys_compared < 20, "{r:?}");
    // n1's tree for n3 was built before it pulled the key from n2: the next pass takes it on.
    let r = n1.anti_entropy_pass().await;
    assert_eq!(r.repaired, 1, "{r:?}");

    for k in ["k3", "k700", "k1499", "only-n2", "k0"] {
        let all: Vec<Vec<Version>> = held_everywhere(&net, "t3", k).await;
        assert!(all.iter().all(|v| *v == all[0] && !v.is_empty()), "{k}: {all:?}");
    }
    for n in NODES {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert!(in_sync(&r), "{n} after the repair: {r:?}");
    }

    // A peer serving by another layout version refuses to compare.
    let refused = coordinator(&net, "n2").answer_tree("n1", 99, TreeQuery::Hashes { level: 1, indices: vec![0] }).await;
    assert!(matches!(refused, Err(CoreError::Unavailable(_))), "{refused:?}");
    // Nodes out of range are a clear error.
    let bad = coordinator(&net, "n2").answer_tree("n1", 1, TreeQuery::Hashes { level: 1, indices: vec![16] }).await;
    assert!(matches!(bad, Err(CoreError::InvalidArgument(_))), "{bad:?}");
}

async fn held_everywhere(net: &Net, tenant: &str, key: &str) -> Vec<Vec<Version>> {
    let mut out = Vec::new();
    for n in NODES {
        out.push(held(net, n, tenant, key).await);
    }
    out
}

/// A peer that holds many keys this node lacks answers with its digests in pages of whole
/// segments within a byte budget; every key still comes across.
#[tokio::test]
async fn many_keys_out_of_place_come_in_pages() {
    let net = start();
    // 2 500 keys of 1 000 bytes each, on n2 alone: about 2.5 MB of digests.
    let keys: Vec<String> = (0..2500).map(|i| format!("{i:04}{}", "x".repeat(996))).collect();
    for k in &keys {
        write_value_on_one(&net, "n2", k, b"v").await;
    }
    let r = coordinator(&net, "n1").anti_entropy_pass().await;
    assert_eq!(r.repaired, 2500, "{r:?}");
    assert!(r.key_pages >= 2, "one answer held more than the budget: {r:?}");
    for k in [&keys[0], &keys[1234], &keys[2499]] {
        assert!(!held(&net, "n1", "t3", k).await.is_empty(), "n1 lacks {}", &k[..4]);
    }
    // n1 now has them all; n3 gets them from either in the next passes.
    coordinator(&net, "n3").anti_entropy_pass().await;
    for n in NODES {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert!(in_sync(&r), "{n}: {r:?}");
    }
}

#[tokio::test]
async fn a_hint_from_an_older_layout_goes_to_the_keys_owners_under_the_layout_in_use() {
    let net = start();
    // Under the first layout (n1, n2, n3; RF 3) n3 missed a write: n1 keeps a hint for it.
    let v = Version { clock: VClock([("n1".to_owned(), 1)].into()), ts_ms: 1, value: Some(b"v".to_vec()) };
    let hint = |target: &str, key: &str, layout: u64| KvRequest::Hint {
        target: target.into(),
        tenant: "t3".into(),
        key: key.into(),
        versions: vec![v.clone()],
        layout,
        taken_ms: None,
    };
    replica(&net, "n1", hint("n3", "k", 1)).await;
    // Then n3 leaves and n4 joins (version 2, the change done): n3 owns no key any more.
    let members: Vec<(String, String, u32)> =
        ["n1", "n2", "n4"].iter().map(|n| (n.to_string(), format!("{n}.local:7000"), 32)).collect();
    let mut next = Layout::initial(&members);
    next.version = 2;
    *net.placement.lock().unwrap() = Some(Arc::new(Placement::new(&next)));
    assert_eq!(coordinator(&net, "n1").hand_off_to("n3").await.unwrap(), 1);
    for n in ["n1", "n2", "n4"] {
        assert_eq!(held(&net, n, "t3", "k").await, vec![v.clone()], "{n} owns the key now");
    }
    assert!(held(&net, "n3", "t3", "k").await.is_empty(), "n3 handed its keys over: it gets no copy");
    let KvResponse::Hints(left) = replica(&net, "n1", KvRequest::Hints { target: "n3".into(), limit: 10 }).await else {
        panic!()
    };
    assert!(left.is_empty(), "a delivered hint is dropped");
    // A hint placed by the layout in use goes to its target alone, as before.
    replica(&net, "n1", hint("n4", "k2", 2)).await;
    assert_eq!(coordinator(&net, "n1").hand_off_to("n4").await.unwrap(), 1);
    assert_eq!(held(&net, "n4", "t3", "k2").await, vec![v.clone()]);
    assert!(held(&net, "n2", "t3", "k2").await.is_empty());
    // Hints for a node that holds no keys (removed for good) reach their keys' owners too,
    // in the ordinary hand-off round.
    replica(&net, "n1", hint("n9", "k3", 1)).await;
    coordinator(&net, "n1").hand_off_round().await;
    for n in ["n1", "n2", "n4"] {
        assert_eq!(held(&net, n, "t3", "k3").await, vec![v.clone()], "{n} owns k3");
    }
    let KvResponse::Targets(targets) = replica(&net, "n1", KvRequest::HintTargets).await else { panic!() };
    assert!(targets.is_empty(), "every hint was delivered: {targets:?}");
}

#[tokio::test]
async fn a_redirected_hint_an_owner_misses_becomes_that_owners_hint_and_holds_up_no_other() {
    let net = start();
    let v = Version { clock: VClock([("n1".to_owned(), 1)].into()), ts_ms: 1, value: Some(b"v".to_vec()) };
    for key in ["a", "b"] {
        let hint = KvRequest::Hint {
            target: "n3".into(),
            tenant: "t3".into(),
            key: key.into(),
            versions: vec![v.clone()],
            layout: 1,
            taken_ms: None,
        };
        replica(&net, "n1", hint).await;
    }
    // Version 2: n3 left and n5 joined, but n5 does not answer (it has no replica here).
    let members: Vec<(String, String, u32)> =
        ["n1", "n2", "n5"].iter().map(|n| (n.to_string(), format!("{n}.local:7000"), 32)).collect();
    let mut next = Layout::initial(&members);
    next.version = 2;
    *net.placement.lock().unwrap() = Some(Arc::new(Placement::new(&next)));
    let KvResponse::Hints(for_n3) = replica(&net, "n1", KvRequest::Hints { target: "n3".into(), limit: 10 }).await
    else {
        panic!()
    };
    let taken: Vec<u64> = for_n3.iter().map(|h| h.taken_ms).collect();
    // A clock tick or more later, so a hint kept anew would show a later time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(coordinator(&net, "n1").hand_off_to("n3").await.unwrap(), 2, "n5 holds up neither hint");
    for key in ["a", "b"] {
        assert_eq!(held(&net, "n2", "t3", key).await, vec![v.clone()]);
    }
    let KvResponse::Targets(targets) = replica(&net, "n1", KvRequest::HintTargets).await else { panic!() };
    assert_eq!(targets, ["n5"], "n3's hints are gone; n5 has its own");
    let KvResponse::Hints(for_n5) = replica(&net, "n1", KvRequest::Hints { target: "n5".into(), limit: 10 }).await
    else {
        panic!()
    };
    assert_eq!(for_n5.iter().map(|h| (h.key.as_str(), h.layout)).collect::<Vec<_>>(), [("a", 2), ("b", 2)]);
    // Kept again, each is as old as it was: no version travels longer than a hint lives.
    assert_eq!(for_n5.iter().map(|h| h.taken_ms).collect::<Vec<_>>(), taken);
}

#[tokio::test]
async fn a_write_whose_coordinating_node_fails_its_sync_fails_rather_than_coordinating_elsewhere() {
    let net = start();
    let n1 = coordinator(&net, "n1");
    let far = n1.peers().now_ms() + 60_000;
    // n1 coordinates and keeps the version; its first coordination raises the counters'
    // ceiling, so the answer waits for that sync, which fails: n1's replica stops. The kept
    // version might come back after a restart, so no other replica may coordinate the write
    // beside it.
    net.stores["n1"].fail_next_sync();
    let err = n1.write("t3", "k", Some(b"v".to_vec()), Consistency::Quorum, String::new(), far).await.unwrap_err();
    assert!(matches!(&err, CoreError::Unavailable(m) if m.contains("storage failed")), "{err:?}");
    for n in ["n2", "n3"] {
        assert!(held(&net, n, "t3", "k").await.is_empty(), "{n} holds a version of the failed write");
    }
}

#[tokio::test]
async fn a_deadline_that_ran_out_is_deadline_exceeded_not_unavailable() {
    let net = start();
    let n1 = coordinator(&net, "n1");
    let far = n1.peers().now_ms() + 60_000;
    // The tenant is now cached, so the next calls go straight to the replicas.
    n1.write("t3", "k", Some(b"v".to_vec()), Consistency::Quorum, String::new(), far).await.unwrap();
    let past = n1.peers().now_ms() - 1;
    let err = n1.write("t3", "k", Some(b"w".to_vec()), Consistency::Quorum, String::new(), past).await.unwrap_err();
    assert!(matches!(&err, CoreError::DeadlineExceeded(m) if m.contains("none was asked in time")), "{err:?}");
    let err = n1.read("t3", "k", Consistency::Quorum, past).await.unwrap_err();
    assert!(matches!(&err, CoreError::DeadlineExceeded(m) if m.contains("before any replica")), "{err:?}");
    // With time left, the same calls go through.
    assert_eq!(n1.read("t3", "k", Consistency::Quorum, far).await.unwrap()[0].value.as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused_before_the_tenant_is_looked_up() {
    let net = start();
    let n1 = coordinator(&net, "n1");
    let far = n1.peers().now_ms() + 60_000;
    for (tenant, key) in [("t3", "op\n1".to_owned()), ("nobody", "op\u{0}".to_owned()), ("nobody", "x".repeat(257))] {
        let err = n1.write(tenant, "k", Some(b"v".to_vec()), Consistency::Quorum, key, far).await.unwrap_err();
        assert!(matches!(&err, CoreError::InvalidArgument(m) if m.contains("idempotency_key")), "{err:?}");
    }
    let ok = n1.write("t3", "k", Some(b"v".to_vec()), Consistency::Quorum, "op 1/ü".into(), far).await.unwrap();
    assert!(!ok.duplicate);
}

#[tokio::test]
async fn a_replay_through_a_replica_that_missed_the_write_is_answered_by_one_that_holds_its_record() {
    let net = start();
    // The first write of "op-1" reached n1 and n2 (a quorum) but not n3, which was down.
    let (clock, versions, rec) = coordinate_on_one(&net, "n1", "k", b"v1", Some("op-1")).await;
    let apply = KvRequest::Apply { tenant: "t3".into(), key: "k".into(), versions, idem: rec };
    replica(&net, "n2", apply).await;
    assert!(held(&net, "n3", "t3", "k").await.is_empty());

    // The client's retry comes in through n3: a duplicate, with the first write's clock,
    // and n3 now holds that very version (not a new one of its own).
    let n3 = coordinator(&net, "n3");
    let far = n3.peers().now_ms() + 60_000;
    let again = n3.write("t3", "k", Some(b"v1".to_vec()), Consistency::Quorum, "op-1".into(), far).await.unwrap();
    assert!(again.duplicate, "the replay was taken for a new write");
    assert_eq!(again.clock, clock);
    for n in NODES {
        let v = held(&net, n, "t3", "k").await;
        assert_eq!(v.iter().map(|v| &v.clock).collect::<Vec<_>>(), vec![&clock], "{n}");
    }
    // The same key for another write of another key is refused wherever it comes in.
    let e = n3.write("t3", "other", Some(b"v".to_vec()), Consistency::Quorum, "op-1".into(), far).await;
    assert!(matches!(&e, Err(CoreError::FailedPrecondition(m)) if m.contains("op-1")), "{e:?}");
}

#[tokio::test]
async fn a_replay_that_cannot_reach_a_record_holder_fails_rather_than_write_again() {
    let net = start();
    let n3 = coordinator(&net, "n3");
    let far = n3.peers().now_ms() + 60_000;
    // Too few replicas answer the lookup: a record could be on those that do not.
    net.down.lock().unwrap().extend(["n1".to_owned(), "n2".to_owned()]);
    let e = n3.write("t3", "k", Some(b"v1".to_vec()), Consistency::One, "op-2".into(), far).await;
    assert!(matches!(&e, Err(CoreError::Unavailable(m)) if m.contains("could not tell")), "{e:?}");
    assert!(held(&net, "n3", "t3", "k").await.is_empty(), "n3 wrote it anyway");
    net.down.lock().unwrap().clear();
    // n1 holds the first write and its record; the replay's coordination there gets no answer.
    let (clock, ..) = coordinate_on_one(&net, "n1", "k", b"v1", Some("op-1")).await;
    net.no_coordinate.lock().unwrap().insert("n1".into());
    let e = n3.write("t3", "k", Some(b"v1".to_vec()), Consistency::Quorum, "op-1".into(), far).await;
    assert!(matches!(&e, Err(CoreError::Unavailable(m)) if m.contains("holds the record")), "{e:?}");
    for n in ["n2", "n3"] {
        assert!(held(&net, n, "t3", "k").await.is_empty(), "{n} took the replay for a new write");
    }
    // Once n1 answers, the replay is its duplicate.
    net.no_coordinate.lock().unwrap().clear();
    let again = n3.write("t3", "k", Some(b"v1".to_vec()), Consistency::Quorum, "op-1".into(), far).await.unwrap();
    assert!(again.duplicate && again.clock == clock, "{again:?}");
}

#[tokio::test]
async fn a_late_replay_of_a_write_since_overwritten_changes_nothing() {
    let net = start();
    let (n1, n3) = (coordinator(&net, "n1"), coordinator(&net, "n3"));
    let far = n1.peers().now_ms() + 60_000;
    let first = n1.write("t3", "k", Some(b"v1".to_vec()), Consistency::Quorum, "op-1".into(), far).await.unwrap();
    let later = n1.write("t3", "k", Some(b"v2".to_vec()), Consistency::Quorum, String::new(), far).await.unwrap();
    // A version concurrent with both, from a coordinator that saw neither: without the
    // overwrite check, the replay would supersede it, and the later write with it.
    let orphan = Version { clock: VClock([("n9".to_owned(), 1)].into()), ts_ms: 1, value: Some(b"x".to_vec()) };
    for n in NODES {
        let apply =
            KvRequest::Apply { tenant: "t3".into(), key: "k".into(), versions: vec![orphan.clone()], idem: None };
        replica(&net, n, apply).await;
    }
    let again = n3.write("t3", "k", Some(b"v1".to_vec()), Consistency::Quorum, "op-1".into(), far).await.unwrap();
    assert!(again.duplicate && again.clock == first.clock, "{again:?}");
    for n in NODES {
        let mut clocks: Vec<_> = held(&net, n, "t3", "k").await.into_iter().map(|v| v.clock).collect();
        clocks.sort();
        let mut want = vec![later.clock.clone(), orphan.clock.clone()];
        want.sort();
        assert_eq!(clocks, want, "{n}: the replay wrote v1 again over v2");
    }
}

#[tokio::test]
async fn a_factor_change_hands_the_tenants_records_over_with_its_keys() {
    let net = start();
    let far = coordinator(&net, "n1").peers().now_ms() + 60_000;
    // Tenant t1 (one replica) has written keys with the client's own idempotency keys; t3,
    // whose records are stored after t1's, one too.
    let mut written = Vec::new();
    for i in 0..5 {
        let (key, idem) = (format!("k{i}"), format!("op-{i}"));
        let w = coordinator(&net, "n1")
            .write("t1", &key, Some(b"v".to_vec()), Consistency::Quorum, idem.clone(), far)
            .await
            .unwrap();
        written.push((key, idem, w.clock));
    }
    coordinator(&net, "n1")
        .write("t3", "z", Some(b"v".to_vec()), Consistency::Quorum, "op-z".into(), far)
        .await
        .unwrap();
    // t1's factor rises to 2: each key's one owner hands it, and its record, to the owner
    // the rise adds.
    let members: Vec<(String, String, u32)> =
        NODES.iter().map(|n| (n.to_string(), format!("{n}.local:7000"), 32)).collect();
    let mut next = Layout::initial(&members);
    next.version = 2;
    next.rf_change = Some(RfChange { tenant: "t1".into(), from: 1, to: 2 });
    let placement = Arc::new(Placement::new(&next));
    *net.placement.lock().unwrap() = Some(placement.clone());
    let progress = NODES.iter().map(|n| (n.to_string(), NodeProgress::default())).collect();
    *net.migration.lock().unwrap() = Some(Migration {
        id: "mig-1".into(),
        kind: MigrationKind::ReplicationFactor,
        node: "t1".into(),
        version: 2,
        started_ms: 0,
        finished_ms: None,
        cancelled: false,
        progress,
    });
    for n in NODES {
        coordinator(&net, n).hand_over_pass().await.unwrap();
    }
    for (key, idem, clock) in &written {
        let owners = placement.current.replicas("t1", key, 2);
        assert_eq!(owners.len(), 2);
        for owner in owners {
            let lookup = KvRequest::IdemLookup { tenant: "t1".into(), key: key.clone(), idem: idem.clone() };
            let KvResponse::Idem { record, held } = replica(&net, owner, lookup).await else { panic!() };
            assert!(held && record.is_some_and(|r| r.clock == *clock), "{owner} lacks {key}'s record");
        }
    }
}

/// A delete whose grace passes while a replica is down stays on the others until anti-entropy
/// has compared them with it: else the value the down replica still holds would come back
/// when it returns, as nothing would be left to say it was deleted.
#[tokio::test]
async fn a_tombstone_stays_until_every_replica_was_compared_since_it_came() {
    use std::time::Duration;
    let net = start_gc();
    let n1 = coordinator(&net, "n1");
    let far = n1.peers().now_ms() + 60_000;
    n1.write("t3", "k", Some(b"v".to_vec()), Consistency::All, String::new(), far).await.unwrap();
    for n in NODES {
        coordinator(&net, n).anti_entropy_pass().await;
    }
    // n3 is away: the delete reaches n1 and n2 only.
    net.down.lock().unwrap().insert("n3".into());
    let deleted = n1.peers().now_ms();
    n1.write("t3", "k", None, Consistency::Quorum, String::new(), far).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in ["n1", "n2"] {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert!(r.repaired_before.is_some_and(|t| t < deleted), "{n} counted a pass that could not reach n3: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in ["n1", "n2"] {
        let v = held(&net, n, "t3", "k").await;
        assert!(v.len() == 1 && v[0].value.is_none(), "{n} dropped the tombstone while n3 was away: {v:?}");
    }
    // n3 returns with the value. The passes carry the delete to it, where it removes the
    // value and stays (to be carried on from there); once passes that began after each
    // tombstone came have reached every node, the sweeps drop them.
    net.down.lock().unwrap().clear();
    for n in NODES {
        coordinator(&net, n).anti_entropy_pass().await;
    }
    let stored = n1.peers().now_ms();
    let v = held(&net, "n3", "t3", "k").await;
    assert!(v.iter().all(|v| v.value.is_none()), "n3 kept the deleted value: {v:?}");
    tokio::time::sleep(Duration::from_millis(tessera_shell::kv_coordinator::REPAIR_MARGIN_MS + 100)).await;
    for n in NODES {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert!(r.repaired_before.is_some_and(|t| t > stored), "{n}: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in NODES {
        assert_eq!(held(&net, n, "t3", "k").await, vec![], "{n} still holds the key");
    }
}

/// A layout change hands a spent tombstone to a new owner, which keeps it: an old owner that
/// was away while the key was deleted hands its copy, the deleted value, over later in the
/// same change, and the tombstone must still be there to remove it. And while the change is
/// under way, anti-entropy tells the replicas nothing, so no tombstone goes before every old
/// owner has handed its keys over.
#[tokio::test]
async fn a_spent_tombstone_handed_over_outlives_the_value_a_late_old_owner_hands_over() {
    use std::time::Duration;
    let net = start_gc();
    let n1 = coordinator(&net, "n1");
    let far = n1.peers().now_ms() + 60_000;
    // n4 joins the ring: a key it will replicate.
    let all: Vec<(String, String, u32)> =
        ["n1", "n2", "n3", "n4"].iter().map(|n| (n.to_string(), format!("{n}.local:7000"), 32)).collect();
    let mut joining = Layout::initial(&all);
    joining.version = 2;
    joining.previous = Some(NODES.iter().map(|n| (n.to_string(), 32)).collect());
    let placement = Arc::new(Placement::new(&joining));
    // One n4 takes over from n3: n3 keeps its old copy until the change settles.
    let key = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let owners = placement.current.replicas("t3", k, 3);
            owners.contains(&"n4") && !owners.contains(&"n3")
        })
        .expect("n4 takes some key over from n3");
    n1.write("t3", &key, Some(b"v".to_vec()), Consistency::All, String::new(), far).await.unwrap();
    // n3 is away: the delete reaches n1 and n2, and its grace passes.
    net.down.lock().unwrap().insert("n3".into());
    n1.write("t3", &key, None, Consistency::Quorum, String::new(), far).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The change begins; n1 and n2 hand their keys over while n3 is still away.
    *net.placement.lock().unwrap() = Some(placement.clone());
    *net.migration.lock().unwrap() = Some(Migration {
        id: "mig-1".into(),
        kind: MigrationKind::AddNode,
        node: "n4".into(),
        version: 2,
        started_ms: 0,
        finished_ms: None,
        cancelled: false,
        progress: NODES.iter().map(|n| (n.to_string(), NodeProgress::default())).collect(),
    });
    for n in ["n1", "n2"] {
        coordinator(&net, n).hand_over_pass().await.unwrap();
    }
    let v = held(&net, "n4", "t3", &key).await;
    assert!(v.len() == 1 && v[0].value.is_none(), "n4 did not keep the spent tombstone handed to it: {v:?}");
    // n3 returns and hands over what it holds: the value deleted while it was away.
    net.down.lock().unwrap().clear();
    coordinator(&net, "n3").hand_over_pass().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in placement.current.replicas("t3", &key, 3) {
        let v = held(&net, n, "t3", &key).await;
        assert!(v.iter().all(|v| v.value.is_none()), "{n} holds the deleted value again: {v:?}");
    }
    // Every node is up and compared, but the change has not settled: no tombstone may go.
    for n in NODES {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert_eq!(r.repaired_before, None, "{n} let tombstones go during the change: {r:?}");
    }
    // Settled (a new version): passes count again.
    let mut settled = Layout::initial(&all);
    settled.version = 3;
    *net.placement.lock().unwrap() = Some(Arc::new(Placement::new(&settled)));
    *net.migration.lock().unwrap() = None;
    for n in NODES {
        let r = coordinator(&net, n).anti_entropy_pass().await;
        assert!(r.repaired_before.is_some(), "{n}: {r:?}");
    }
}

/// A replay answered as a duplicate because a replica holds a later version puts that version
/// on a quorum: the later version may be the first attempt's own supersede, which reached one
/// replica, while the replicas that acknowledge the replay hold the write beside the one
/// acknowledged before it (the simulator's seed 589 of `--tombstone-gc`).
#[tokio::test]
async fn a_replay_puts_the_first_attempts_supersede_on_a_quorum() {
    let net = start();
    let far = coordinator(&net, "n1").peers().now_ms() + 60_000;
    // Write 1 reaches n1 and n2 (n3 away).
    net.down.lock().unwrap().insert("n3".into());
    coordinator(&net, "n1")
        .write("t3", "k", Some(b"v1".to_vec()), Consistency::Quorum, String::new(), far)
        .await
        .unwrap();
    net.down.lock().unwrap().clear();
    let first = held(&net, "n1", "t3", "k").await;
    // Write 2's first attempt, coordinated on n3, which had not seen write 1. A quorum showed
    // write 1 beside it, so n3 was given write 1 and coordinated once more (storing nothing);
    // that supersede reached n1 alone, and the client got no answer.
    coordinate_on_one(&net, "n3", "k", b"v2", Some("op-2")).await;
    let apply =
        |versions: Vec<Version>| KvRequest::Apply { tenant: "t3".into(), key: "k".into(), versions, idem: None };
    replica(&net, "n3", apply(first)).await;
    let again = KvRequest::Coordinate {
        tenant: "t3".into(),
        key: "k".into(),
        value: Some(b"v2".to_vec()),
        idem: None,
        keep: false,
    };
    let KvResponse::Coordinated { clock: supersede, versions, .. } = replica(&net, "n3", again).await else {
        panic!("not coordinated")
    };
    replica(&net, "n1", apply(versions)).await;
    // The client's replay through n2, whose own replica does not answer: n3 (which holds the
    // record) coordinates it, and n1 and n3 acknowledge it.
    net.down.lock().unwrap().insert("n2".into());
    let replay =
        coordinator(&net, "n2").write("t3", "k", Some(b"v2".to_vec()), Consistency::Quorum, "op-2".into(), far).await;
    assert!(replay.as_ref().is_ok_and(|w| w.duplicate), "{replay:?}");
    // n3 holds the supersede alone, not write 1 beside write 2: with n2 back (holding write
    // 1), a quorum read through n2 and n3 would show those two as siblings.
    let on_n3: Vec<VClock> = held(&net, "n3", "t3", "k").await.into_iter().map(|v| v.clock).collect();
    assert_eq!(on_n3, vec![supersede], "n3 holds two acknowledged sequential writes as siblings");
}
