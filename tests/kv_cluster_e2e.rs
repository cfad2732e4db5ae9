//! The key-value coordinator end to end: a three-process loopback cluster driven by a client
//! generated from the contract. Write at quorum, kill -9 one node, keep writing and reading,
//! restart it, and check that hinted handoff and read repair brought it up to date.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use tessera_proto::proto as kv;
use tessera_proto::proto::coordinator_service_client::CoordinatorServiceClient;
use tessera_proto::tessera::kv::v1 as ext;
use tessera_proto::tessera::kv::v1::kv_service_client::KvServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn write(tenant: &str, key: &str, value: &str, consistency: &str, idem: &str) -> kv::WriteKeyValueRequest {
    kv::WriteKeyValueRequest {
        tenant_id: tenant.into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        consistency: consistency.into(),
        idempotency_key: idem.into(),
    }
}

fn read(tenant: &str, key: &str, consistency: &str) -> kv::ReadKeyValueRequest {
    kv::ReadKeyValueRequest { tenant_id: tenant.into(), key: key.into(), consistency: consistency.into() }
}

async fn keys_per_node(c: &mut CoordinatorServiceClient<Channel>) -> Vec<(String, String, i64)> {
    let nodes = c.list_storage_nodes(kv::ListStorageNodesRequest {}).await.unwrap().into_inner().nodes;
    nodes.into_iter().map(|n| (n.node_id, n.status, n.keys_count)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_kill_and_catch_up_by_handoff_and_repair() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs = common::free_addrs(3);
    let cluster = addrs.iter().enumerate().map(|(i, a)| format!("n{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let start = |i: usize| {
        let id = format!("n{}", i + 1);
        common::Daemon::start_at(dirs[i].path(), &addrs[i], &["--node-id", &id, "--initial-cluster", &cluster])
    };
    let mut nodes: Vec<Option<common::Daemon>> = (0..3).map(|i| Some(start(i))).collect();
    let ch = nodes[0].as_ref().unwrap().channel().await;
    let mut c = CoordinatorServiceClient::new(ch.clone());
    let ch2 = nodes[1].as_ref().unwrap().channel().await;
    let mut c2 = CoordinatorServiceClient::new(ch2.clone());

    // Tenants: default RF 3, duplicates refused, bad factors refused, visible on every node.
    let t = c.create_tenant(kv::CreateTenantRequest { tenant_id: "acme".into(), replication_factor: 0 }).await;
    assert_eq!(t.unwrap().into_inner().replication_factor, 3);
    let dup = c2.create_tenant(kv::CreateTenantRequest { tenant_id: "acme".into(), replication_factor: 3 }).await;
    assert_eq!(dup.unwrap_err().code(), Code::AlreadyExists);
    let bad = c.create_tenant(kv::CreateTenantRequest { tenant_id: "x".into(), replication_factor: 11 }).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let got = c2.get_tenant(kv::GetTenantRequest { tenant_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(got.replication_factor, 3);

    // Validation.
    for (req, what) in [
        (write("acme", "", "v", "", ""), "empty key"),
        (write("acme", "k", "", "", ""), "empty value"),
        (write("acme", "k", "v", "most", ""), "unknown consistency"),
        (write("", "k", "v", "", ""), "no tenant"),
        (write("acme", "k", "v", "", "op\n1"), "control character in the idempotency key"),
        (write(&"!".repeat(100_000), "k", "v", "", ""), "huge bad tenant"),
        (write("acme", "k", "v", &"x".repeat(100_000), ""), "huge bad consistency"),
    ] {
        let e = c.write_key_value(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
        // The bad value is shown cut: a status of 100 kB would exceed clients' header limits.
        assert!(e.message().len() < 300, "{what}: {} bytes of message", e.message().len());
    }
    assert_eq!(c.write_key_value(write("nobody", "k", "v", "", "")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.read_key_value(read("acme", "missing", "")).await.unwrap_err().code(), Code::NotFound);

    // Writes at quorum reach all three; idempotency keys are generated when absent.
    for i in 0..30 {
        let w = c.write_key_value(write("acme", &format!("k{i}"), &format!("v{i}"), "quorum", "")).await.unwrap();
        let w = w.into_inner();
        assert!(w.replica_count >= 2, "{w:?}");
        assert!(!w.idempotency_key.is_empty() && !w.is_duplicate);
    }
    let once = c.write_key_value(write("acme", "once", "1", "all", "op-1")).await.unwrap().into_inner();
    assert_eq!(once.replica_count, 3);
    let again = c2.write_key_value(write("acme", "once", "1", "all", "op-1")).await.unwrap().into_inner();
    assert!(again.is_duplicate, "a replay through another coordinator is a duplicate");
    assert_eq!(again.vector_clock, once.vector_clock);
    let clash = c.write_key_value(write("acme", "once", "2", "", "op-1")).await.unwrap_err();
    assert_eq!(clash.code(), Code::FailedPrecondition, "{}", clash.message());

    // Kill n3. Quorum writes and reads go on; `all` is unavailable and says how many answered.
    nodes[2].take().unwrap().kill9();
    for i in 30..60 {
        let w = c.write_key_value(write("acme", &format!("k{i}"), &format!("v{i}"), "", "")).await.unwrap();
        assert!(w.into_inner().replica_count >= 1);
    }
    // Overwrite keys written before the kill: n3 holds stale versions of these.
    for i in 0..10 {
        c2.write_key_value(write("acme", &format!("k{i}"), &format!("new{i}"), "", "")).await.unwrap();
    }
    let r = c.read_key_value(read("acme", "k5", "quorum")).await.unwrap().into_inner();
    assert_eq!(r.value, b"new5");
    let all = c.write_key_value(write("acme", "strict", "x", "all", "")).await;
    let all = all.unwrap_err();
    assert_eq!(all.code(), Code::Unavailable);
    assert!(all.message().contains("of 3"), "{}", all.message());
    let mut ext_c = KvServiceClient::new(ch.clone());
    let del = ext::DeleteKeyRequest { tenant_id: "acme".into(), key: "k59".into(), ..Default::default() };
    ext_c.delete_key(del).await.unwrap();
    assert_eq!(c2.read_key_value(read("acme", "k59", "")).await.unwrap_err().code(), Code::NotFound);
    let listed = keys_per_node(&mut c).await;
    assert_eq!(listed.iter().find(|n| n.0 == "n3").unwrap().1, "inactive");
    // Metadata changes need a majority of the Raft group, which two of three still are.
    let late = kv::CreateTenantRequest { tenant_id: "late".into(), replication_factor: 2 };
    assert_eq!(c2.create_tenant(late).await.unwrap().into_inner().replication_factor, 2);
    let get_late = || kv::GetTenantRequest { tenant_id: "late".into() };
    assert_eq!(c2.get_tenant(get_late()).await.unwrap().into_inner().replication_factor, 2);
    let up = kv::UpdateReplicationFactorRequest { tenant_id: "late".into(), new_replication_factor: 3 };
    let up = c.update_replication_factor(up).await.unwrap().into_inner();
    assert_eq!((up.old_replication_factor, up.new_replication_factor), (2, 3));
    // Read through another node at once, it is the new factor (a confirmed read, not n2's
    // cache of a moment ago).
    assert_eq!(c2.get_tenant(get_late()).await.unwrap().into_inner().replication_factor, 3);
    let missing = kv::UpdateReplicationFactorRequest { tenant_id: "ghost".into(), new_replication_factor: 3 };
    assert_eq!(c.update_replication_factor(missing).await.unwrap_err().code(), Code::NotFound);

    // Restart n3: hints fill it in, so it soon holds every key its peers hold.
    nodes[2] = Some(start(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = keys_per_node(&mut c).await;
        let counts: Vec<i64> = listed.iter().map(|n| n.2).collect();
        if listed.iter().all(|n| n.1 == "active") && counts.iter().all(|&k| k == counts[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "n3 did not catch up: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reading at `one` from n3 itself now sees the new values and the tombstone.
    let ch3 = nodes[2].as_ref().unwrap().channel().await;
    let mut c3 = CoordinatorServiceClient::new(ch3);
    // n3 learned the metadata committed while it was down from the Raft leader.
    let late = c3.get_tenant(kv::GetTenantRequest { tenant_id: "late".into() }).await.unwrap().into_inner();
    assert_eq!(late.replication_factor, 3);
    for i in 0..10 {
        // `one` answers from the first replica to reply; with n3 in the set, all must agree.
        let r = c3.read_key_value(read("acme", &format!("k{i}"), "all")).await.unwrap().into_inner();
        assert_eq!(r.value, format!("new{i}").into_bytes());
        assert!(r.siblings.is_empty());
    }
    assert_eq!(c3.read_key_value(read("acme", "k59", "all")).await.unwrap_err().code(), Code::NotFound);
    // Every acknowledged quorum write is readable at `all` now.
    for i in 10..59 {
        let r = c3.read_key_value(read("acme", &format!("k{i}"), "all")).await.unwrap().into_inner();
        assert_eq!(r.value, format!("v{i}").into_bytes());
    }
}

/// The internal peer service refuses malformed and oversized input with INVALID_ARGUMENT,
/// and the node keeps serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_service_refuses_bad_input_and_keeps_serving() {
    use tessera_core::CoreError;
    use tessera_core::kv::{KvRequest, wire};
    use tessera_proto::tessera::peer::v1 as peer;
    use tessera_proto::tessera::peer::v1::peer_service_client::PeerServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let node = common::Daemon::start(dir.path(), &[]);
    let ch = node.channel().await;
    let mut p = PeerServiceClient::new(ch.clone());
    let garbage = vec![0xff_u8; 40];
    let e = p.call(peer::PeerRequest { from: "x".into(), body: garbage.clone(), layout: 1 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("peer request"), "{}", e.message());
    let batch = |bodies: Vec<Vec<u8>>, layouts: Vec<u64>| peer::PeerBatch { from: "x".into(), bodies, layouts };
    let e = p.call_batch(batch(vec![garbage.clone()], vec![1])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = p.call_batch(batch(vec![garbage.clone()], vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("layout versions"), "{}", e.message());
    let e = p.call_batch(batch(vec![vec![]; 257], vec![1; 257])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 256"), "{}", e.message());
    let raft = |messages: Vec<Vec<u8>>, from_addr: &str| peer::RaftMessages {
        from: "x".into(),
        messages,
        from_addr: from_addr.into(),
    };
    let e = p.raft(raft(vec![garbage.clone()], "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("Raft message"), "{}", e.message());
    let e = p.raft(raft(vec![vec![]; 257], "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = p.raft(raft(vec![garbage], "no-port")).await.unwrap_err();
    assert!(e.message().contains("from_addr"), "{}", e.message());
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A keyed request placed by a layout older than the node's own is refused (the node is at
    // version 1; a coordinator that lags a layout change would send an older one).
    let read = wire::encode_request(&KvRequest::Read { tenant: "t".into(), key: "k".into() });
    let r = p.call(peer::PeerRequest { from: "x".into(), body: read, layout: 0 }).await.unwrap().into_inner();
    match wire::decode_reply(&r.body).unwrap() {
        Err(CoreError::Unavailable(m)) => assert!(m.contains("layout version 0"), "{m}"),
        other => panic!("a stale layout was served: {other:?}"),
    }
    // What only a node's own background work sends its replica is refused from a peer, alone
    // or in a batch: a peer could otherwise remove copies, or stop their removal for good.
    for own in [
        KvRequest::Placed { version: u64::MAX },
        KvRequest::Discard { layout: 1, keys: vec![("t".into(), "k".into(), vec![0; 16])] },
        KvRequest::Fence { version: 9 },
        KvRequest::Hints { target: "x".into(), limit: 10 },
        KvRequest::HintsDelivered { target: "x".into(), upto: u64::MAX },
        KvRequest::Hint {
            target: "x".into(),
            tenant: "t".into(),
            key: "k".into(),
            versions: vec![],
            layout: 1,
            taken_ms: None,
        },
    ] {
        let body = wire::encode_request(&own);
        let e = p.call(peer::PeerRequest { from: "x".into(), body: body.clone(), layout: 1 }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("own replica only"), "{}", e.message());
        let e = p.call_batch(batch(vec![body], vec![1])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // Anti-entropy tree questions: garbage and out-of-range nodes are INVALID_ARGUMENT, a
    // question placed by another layout is UNAVAILABLE, a good one is answered.
    use tessera_core::kv::merkle::{TreeAnswer, TreeQuery};
    let tree = |body: Vec<u8>, layout: u64| peer::PeerRequest { from: "x".into(), body, layout };
    let e = p.tree(tree(vec![0xff; 40], 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("anti-entropy question"), "{}", e.message());
    let roots = TreeQuery::Hashes { level: 1, indices: (0..16).collect() };
    let e = p.tree(tree(TreeQuery::Hashes { level: 1, indices: vec![16] }.encode(), 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = p.tree(tree(roots.encode(), 7)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("layout version 7"), "{}", e.message());
    let r = p.tree(tree(roots.encode(), 1)).await.unwrap().into_inner();
    assert!(matches!(TreeAnswer::decode(&r.body).unwrap(), TreeAnswer::Hashes(h) if h.len() == 16));
    // Still a working node: a tenant and a quorum write go through.
    let mut c = CoordinatorServiceClient::new(ch);
    let t = kv::CreateTenantRequest { tenant_id: "after".into(), replication_factor: 1 };
    assert!(c.create_tenant(t).await.unwrap().into_inner().success);
    let w = c.write_key_value(write("after", "k", "v", "quorum", "")).await.unwrap().into_inner();
    assert_eq!(w.replica_count, 1);
    node.terminate();
}

/// A node bootstrapped into another cluster (here: another `--initial-cluster-token`) is
/// refused by its would-be peers, so the two never mix metadata or keys; started afresh with
/// the right token, it forms the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_until_it_starts_afresh_in_this_one() {
    use tessera_proto::tessera::peer::v1 as peer;
    use tessera_proto::tessera::peer::v1::peer_service_client::PeerServiceClient;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs = common::free_addrs(2);
    let cluster = format!("n1={},n2={}", addrs[0], addrs[1]);
    let start = |i: usize, token: &str| {
        let id = format!("n{}", i + 1);
        let flags = ["--node-id", &id, "--initial-cluster", &cluster, "--initial-cluster-token", token];
        common::Daemon::start_at(dirs[i].path(), &addrs[i], &flags)
    };
    let n1 = start(0, "prod");
    let n2 = start(1, "staging");
    let id = |i: usize| common::cluster_id(dirs[i].path());
    let (id1, id2) = (id(0), id(1));
    assert_ne!(id1, id2, "another token, another cluster");

    // n1 refuses a peer call stamped with n2's cluster; one with its own passes.
    let mut p = PeerServiceClient::new(n1.channel().await);
    let stamped = |cluster: &str| {
        let mut r =
            tonic::Request::new(peer::RaftMessages { from: "n2".into(), messages: vec![], from_addr: "".into() });
        r.metadata_mut().insert("tessera-cluster-id", cluster.parse().unwrap());
        r
    };
    let e = p.raft(stamped(&id2)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("another cluster") && e.message().contains(&id2), "{}", e.message());
    p.raft(stamped(&id1)).await.unwrap();

    // The two cannot form a metadata quorum: nothing is decided.
    let mut c = CoordinatorServiceClient::new(n1.channel().await);
    let mut t = tonic::Request::new(kv::CreateTenantRequest { tenant_id: "acme".into(), replication_factor: 2 });
    t.set_timeout(Duration::from_secs(3));
    let made = tokio::time::timeout(Duration::from_secs(10), c.create_tenant(t)).await;
    assert!(!matches!(made, Ok(Ok(_))), "a tenant was created across two clusters: {made:?}");

    // Restarted with the right token, n2 keeps the id it was born with...
    drop(n2);
    let n2 = start(1, "prod");
    assert_eq!(id(1), id2);
    n2.terminate();
    // ... and once its data directory is new, it joins n1's cluster.
    std::fs::remove_dir_all(dirs[1].path()).unwrap();
    std::fs::create_dir_all(dirs[1].path()).unwrap();
    let _n2 = start(1, "prod");
    assert_eq!(id(1), id1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = kv::CreateTenantRequest { tenant_id: "acme".into(), replication_factor: 2 };
        match c.create_tenant(t).await {
            Ok(r) => {
                assert_eq!(r.into_inner().replication_factor, 2);
                break;
            }
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => assert!(Instant::now() < deadline, "the cluster did not form: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
