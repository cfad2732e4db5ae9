//! Layout changes end to end: a three-process loopback cluster gains a fourth node, which
//! joins as etcd members do (`--initial-cluster-state existing`) and is added with
//! `AddStorageNode`; keys move to it while clients keep writing, and every acknowledged key
//! reads back at `all` from the new replica sets. Then a node is removed the same way.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use tessera_proto::metastore_status::v1::meta_store_status_service_client::MetaStoreStatusServiceClient;
use tessera_proto::metastore_status::v1::{GetRequestStatusesRequest, MetaStoreType, RequestProcessingStatus};
use tessera_proto::proto as kv;
use tessera_proto::proto::coordinator_service_client::CoordinatorServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn write(key: &str, value: &str) -> kv::WriteKeyValueRequest {
    kv::WriteKeyValueRequest {
        tenant_id: "acme".into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        consistency: "quorum".into(),
        idempotency_key: String::new(),
    }
}

fn read(key: &str) -> kv::ReadKeyValueRequest {
    kv::ReadKeyValueRequest { tenant_id: "acme".into(), key: key.into(), consistency: "all".into() }
}

fn add(node_id: &str, host: &str, port: i32, virtual_nodes: i32) -> kv::AddStorageNodeRequest {
    kv::AddStorageNodeRequest { node_id: node_id.into(), host: host.into(), port, virtual_nodes }
}

/// Waits for a migration to complete, checking its progress never goes back.
async fn wait_done(c: &mut CoordinatorServiceClient<Channel>, id: &str) -> kv::GetMigrationStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let req = kv::GetMigrationStatusRequest { migration_id: id.into() };
        let s = c.get_migration_status(req).await.unwrap().into_inner();
        let p = s.progress.unwrap();
        assert!(p.keys_migrated >= last, "progress went back: {s:?}");
        last = p.keys_migrated;
        if s.status == "completed" {
            return s;
        }
        assert_eq!(s.status, "in_progress");
        assert!(Instant::now() < deadline, "migration {id} did not finish: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts n1..n3 as one cluster, on the first three of `dirs` and `addrs`.
fn start_three(dirs: &[tempfile::TempDir], addrs: &[String]) -> Vec<common::Daemon> {
    let members = (0..3).map(|i| format!("n{}={}", i + 1, addrs[i])).collect::<Vec<_>>().join(",");
    (0..3)
        .map(|i| {
            let id = format!("n{}", i + 1);
            common::Daemon::start_at(dirs[i].path(), &addrs[i], &["--node-id", &id, "--initial-cluster", &members])
        })
        .collect()
}

/// Creates tenant `acme` with factor `rf` and writes `n` keys to it; returns them.
async fn acme_with_keys(c: &mut CoordinatorServiceClient<Channel>, rf: i32, n: usize) -> Vec<(String, String)> {
    let t = kv::CreateTenantRequest { tenant_id: "acme".into(), replication_factor: rf };
    c.create_tenant(t).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..n {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        c.write_key_value(write(&k, &v)).await.unwrap();
        acked.push((k, v));
    }
    acked
}

async fn nodes(c: &mut CoordinatorServiceClient<Channel>) -> Vec<kv::StorageNodeInfo> {
    c.list_storage_nodes(kv::ListStorageNodesRequest {}).await.unwrap().into_inner().nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_another_leaves_while_clients_write() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs = common::free_addrs(4);
    // A joining node needs to know only itself: the leader's messages say where it is.
    let only4 = format!("n4={}", addrs[3]);
    let mut daemons = start_three(&dirs, &addrs);
    let mut c1 = CoordinatorServiceClient::new(daemons[0].channel().await);
    // Two replicas per key, so a fourth node takes over a share of every node's keys.
    let mut acked = acme_with_keys(&mut c1, 2, 150).await;

    // Bad input is refused before anything changes.
    let (host, port) = addrs[3].rsplit_once(':').unwrap();
    let port: i32 = port.parse().unwrap();
    for (bad, what) in [
        (add("", host, port, 0), "no id"),
        (add("n 4", host, port, 0), "bad id"),
        (add("n4", "", port, 0), "no host"),
        (add("n4", "a b", port, 0), "space in host"),
        (add("n4", "h@x", port, 0), "@ in host"),
        (add("n4", "h:1", port, 0), "port in host"),
        (add("n4", host, 0, 0), "port 0"),
        (add("n4", host, 70_000, 0), "port too big"),
        (add("n4", host, port, -1), "negative vnodes"),
        (add("n4", host, port, 5_000), "too many vnodes"),
    ] {
        assert_eq!(c1.add_storage_node(bad).await.unwrap_err().code(), Code::InvalidArgument, "{what}");
    }
    let dup = c1.add_storage_node(add("n1", host, port, 0)).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{}", dup.message());
    let none = kv::GetMigrationStatusRequest { migration_id: "mig-0".into() };
    assert_eq!(c1.get_migration_status(none).await.unwrap_err().code(), Code::NotFound);
    let empty = kv::GetMigrationStatusRequest { migration_id: String::new() };
    assert_eq!(c1.get_migration_status(empty).await.unwrap_err().code(), Code::InvalidArgument);

    // n4 starts first and waits, serving no keys until the cluster adds it.
    daemons.push(common::Daemon::start_at(
        dirs[3].path(),
        &addrs[3],
        &["--node-id", "n4", "--initial-cluster", &only4, "--initial-cluster-state", "existing"],
    ));
    let mut c4 = CoordinatorServiceClient::new(daemons[3].channel().await);
    let early = c4.write_key_value(write("early", "x")).await.unwrap_err();
    assert_eq!(early.code(), Code::Unavailable, "{}", early.message());

    let added = c1.add_storage_node(add("n4", host, port, 64)).await.unwrap().into_inner();
    assert!(added.success && added.migration_id.starts_with("mig-"), "{added:?}");
    let second = c1.add_storage_node(add("n5", "127.0.0.1", 1, 0)).await.unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition, "one change at a time: {}", second.message());
    // Clients keep writing while keys move, through the old nodes and the new one.
    for i in 0..60 {
        let (k, v) = (format!("during{i}"), format!("d{i}"));
        let c = if i % 2 == 0 { &mut c1 } else { &mut c4 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // n4 answers UNAVAILABLE until it has the metadata; the old nodes never do.
            match c.write_key_value(write(&k, &v)).await {
                Ok(_) => break,
                Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("write {k}: {e}"),
            }
        }
        acked.push((k, v));
    }
    let done = wait_done(&mut c1, &added.migration_id).await;
    assert_eq!((done.r#type.as_str(), done.node_id.as_str()), ("node_addition", "n4"));
    // It was taken in: it holds its cluster's id, adopted from the leader's first message.
    assert_eq!(common::cluster_id(dirs[3].path()), common::cluster_id(dirs[0].path()));
    let p = done.progress.unwrap();
    assert_eq!(p.percentage, 100.0);
    assert!(p.total_keys >= 150 && p.keys_migrated >= 150, "{p:?}");

    // Every node mirrors the change into its status registry, for recovering clients.
    let mut q = MetaStoreStatusServiceClient::new(daemons[2].channel().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = GetRequestStatusesRequest {
            request_ids: vec![added.migration_id.clone()],
            meta_store_type: Some(MetaStoreType::Migration as i32),
        };
        let done = match q.get_request_statuses(req).await {
            Ok(r) => {
                r.into_inner().statuses.first().map(|s| s.status) == Some(RequestProcessingStatus::Completed as i32)
            }
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound, "{e}");
                false
            }
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "n3's status registry does not show {} completed", added.migration_id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let listed = nodes(&mut c4).await;
    assert_eq!(listed.len(), 4, "{listed:?}");
    let n4 = listed.iter().find(|n| n.node_id == "n4").unwrap();
    assert_eq!((n4.status.as_str(), n4.virtual_nodes, n4.port), ("active", 64, port));
    assert!(n4.keys_count > 0, "keys moved to n4: {listed:?}");
    // The old owners drop the copies of the keys n4 took from them (after a grace): then
    // every key is stored exactly twice, and each still reads back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = nodes(&mut c1).await;
        let held: i64 = listed.iter().map(|n| n.keys_count).sum();
        if held == 2 * acked.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{held} copies held of {} keys at RF 2: {listed:?}", acked.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (k, v) in &acked {
        let r = c4.read_key_value(read(k)).await.unwrap().into_inner();
        assert_eq!(r.value, v.as_bytes(), "{k} after the add");
    }

    // Remove n2: its keys move to the remaining owners; it is draining meanwhile.
    let gone = c4.remove_storage_node(kv::RemoveStorageNodeRequest { node_id: "n2".into(), force: false });
    let gone = gone.await.unwrap().into_inner();
    assert!(gone.success && gone.node_id == "n2", "{gone:?}");
    // Hand-over waits a grace period after the change, so n2 is seen draining first (once
    // n1 has applied the change too).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let during = nodes(&mut c1).await;
        let n2 = during.iter().find(|n| n.node_id == "n2").map(|n| n.status.clone());
        if n2.as_deref() == Some("draining") {
            break;
        }
        assert!(Instant::now() < deadline, "n2 not seen draining: {during:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_done(&mut c4, &gone.migration_id).await;
    let listed = nodes(&mut c1).await;
    assert_eq!(listed.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["n1", "n3", "n4"]);
    // The removed node's data is no longer needed: stop it and read everything.
    let n2 = daemons.remove(1);
    n2.kill9();
    for (k, v) in &acked {
        let r = c1.read_key_value(read(k)).await.unwrap().into_inner();
        assert_eq!(r.value, v.as_bytes(), "{k} after the removal");
    }
    let again = c1.remove_storage_node(kv::RemoveStorageNodeRequest { node_id: "n2".into(), force: false });
    assert_eq!(again.await.unwrap_err().code(), Code::NotFound);

    // n2 left the metadata group and n4 took its vote: with n2 gone and n1 killed too, n3 and
    // n4 still commit a metadata change.
    daemons.remove(0).kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = kv::CreateTenantRequest { tenant_id: "after-swap".into(), replication_factor: 2 };
        match c4.create_tenant(t).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => assert!(Instant::now() < deadline, "n3 and n4 do not make a quorum: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn set_rf(rf: i32) -> kv::UpdateReplicationFactorRequest {
    kv::UpdateReplicationFactorRequest { tenant_id: "acme".into(), new_replication_factor: rf }
}

/// Writes `(k, v)` at quorum, retrying while the coordinator answers UNAVAILABLE (it may be
/// catching up with a change a moment).
async fn write_retrying(c: &mut CoordinatorServiceClient<Channel>, k: &str, v: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.write_key_value(write(k, v)).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write {k}: {e}"),
        }
    }
}

/// A tenant's replication factor changes while clients write: its keys move to their new
/// replica sets as for a layout change, so after a rise from one replica every key survives
/// the loss of the node that held its only copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_change_moves_keys_to_their_new_replicas() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs = common::free_addrs(3);
    let mut daemons = start_three(&dirs, &addrs);
    let mut c1 = CoordinatorServiceClient::new(daemons[0].channel().await);
    let mut c2 = CoordinatorServiceClient::new(daemons[1].channel().await);
    let mut acked = acme_with_keys(&mut c1, 1, 120).await;
    // Another tenant's keys (stored after acme's) do not move, nor count in its progress.
    let zeta = kv::CreateTenantRequest { tenant_id: "zeta".into(), replication_factor: 3 };
    c1.create_tenant(zeta).await.unwrap();
    for i in 0..100 {
        c1.write_key_value(kv::WriteKeyValueRequest { tenant_id: "zeta".into(), ..write(&format!("z{i}"), "z") })
            .await
            .unwrap();
    }
    for (rf, code) in [(0, Code::InvalidArgument), (11, Code::InvalidArgument)] {
        assert_eq!(c1.update_replication_factor(set_rf(rf)).await.unwrap_err().code(), code, "rf {rf}");
    }
    let other = kv::UpdateReplicationFactorRequest { tenant_id: "nobody".into(), new_replication_factor: 2 };
    assert_eq!(c1.update_replication_factor(other).await.unwrap_err().code(), Code::NotFound);

    let up = c1.update_replication_factor(set_rf(2)).await.unwrap().into_inner();
    assert!(up.success && up.migration_id.starts_with("mig-"), "{up:?}");
    assert_eq!((up.old_replication_factor, up.new_replication_factor), (1, 2));
    let again = c1.update_replication_factor(set_rf(3)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "one change at a time: {}", again.message());
    // A retry of the change under way is answered with its migration.
    let retry = c2.update_replication_factor(set_rf(2)).await.unwrap().into_inner();
    assert_eq!(retry.migration_id, up.migration_id);
    for i in 0..40 {
        let (k, v) = (format!("during{i}"), format!("d{i}"));
        write_retrying(if i % 2 == 0 { &mut c1 } else { &mut c2 }, &k, &v).await;
        acked.push((k, v));
    }
    let done = wait_done(&mut c2, &up.migration_id).await;
    assert_eq!((done.r#type.as_str(), done.node_id.as_str()), ("replication_factor", "acme"));
    // Progress counts acme's keys only: each node's, when its hand-over began (at most two
    // copies of each; zeta's 300 copies would exceed that).
    let p = done.progress.unwrap();
    assert_eq!(p.percentage, 100.0);
    assert!(p.total_keys >= 120 && p.total_keys <= 2 * acked.len() as i64, "{p:?}");
    // Every key is stored twice now: once where it was, once where the rise put it (and
    // zeta's three times, as before).
    let held: u64 = nodes(&mut c1).await.iter().map(|n| n.keys_count as u64).sum();
    assert_eq!(held, 2 * acked.len() as u64 + 300);

    // The same factor again moves nothing; nor does a rise past the number of nodes.
    let same = c1.update_replication_factor(set_rf(2)).await.unwrap().into_inner();
    assert_eq!((same.old_replication_factor, same.migration_id.as_str()), (2, ""));

    // With n1 gone, every key still reads from its other replica (once n2 serves by the
    // layout that ended the move: until then it also asks the old replica set, n1's alone
    // for some keys).
    daemons.remove(0).kill9();
    for (k, v) in &acked {
        let req = kv::ReadKeyValueRequest { tenant_id: "acme".into(), key: k.clone(), consistency: "one".into() };
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = loop {
            match c2.read_key_value(req.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{k}: {e}"),
            }
        };
        assert_eq!(r.value, v.as_bytes(), "{k} after the rise");
    }
}
