//! Wires one tesserad: lock the data dir, open fjall, open the core's machines, run the
//! driver on its own thread (fsync blocks, so it must not sit on the async workers), and
//! serve every implemented API, health and reflection on one port until shutdown.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tessera_core::StoreError;
use tessera_core::rng::Rng;
use tessera_core::status::StatusMachine;
use tessera_core::txn::{TxnConfig, TxnMachine};
use tessera_core::upload::{MAX_CHUNK_BYTES, UploadMachine};
use tessera_proto::ai::pipestream::repository::filesystem::upload::node_upload_service_server::NodeUploadServiceServer;
use tessera_proto::metastore_status::v1::meta_store_status_service_server::MetaStoreStatusServiceServer;
use tessera_proto::statehouse::v1::statehouse_service_server::StatehouseServiceServer;
use tessera_proto::tessera::repository::v1::document_service_server::DocumentServiceServer;
use tessera_proto::tessera::status::v1::status_producer_service_server::StatusProducerServiceServer;
use tonic::transport::server::TcpIncoming;

use crate::cluster::Cluster;
use crate::cluster_id::ClusterId;
use crate::config::Config;
use crate::driver::{BlockingWork, Clock, Driver, DriverConfig, HandleFor};
use crate::fjall_store::FjallStore;
use crate::lock::lock_data_dir;
use crate::metrics::{Metrics, MetricsLayer};
use crate::services::kv::Coordinator;
use crate::services::metacat::Metacat;
use crate::services::peer::Peer;
use crate::services::statehouse::StatehouseService;
use crate::services::status::StatusService;
use crate::services::upload::UploadService;
use tessera_core::catalog::{CatalogConfig, CatalogMachine};
use tessera_core::kv::ring::DEFAULT_VNODES;
use tessera_core::kv::{KvConfig, KvMachine};
use tessera_core::meta::{MetaConfig, MetaMachine};
use tessera_proto::ai::floedb::metacat::catalog::catalog_service_server::CatalogServiceServer;
use tessera_proto::ai::floedb::metacat::catalog::directory_service_server::DirectoryServiceServer;
use tessera_proto::ai::floedb::metacat::catalog::namespace_service_server::NamespaceServiceServer;
use tessera_proto::ai::floedb::metacat::catalog::snapshot_service_server::SnapshotServiceServer;
use tessera_proto::ai::floedb::metacat::catalog::table_service_server::TableServiceServer;
use tessera_proto::ai::floedb::metacat::catalog::table_statistics_service_server::TableStatisticsServiceServer;
use tessera_proto::ai::floedb::metacat::catalog::view_service_server::ViewServiceServer;
use tessera_proto::ai::floedb::metacat::statistics::stats_capture_server::StatsCaptureServer;
use tessera_proto::ai::floedb::metacat::tenant::tenant_service_server::TenantServiceServer;
use tessera_proto::proto::coordinator_service_server::CoordinatorServiceServer;
use tessera_proto::tessera::kv::v1::kv_service_server::KvServiceServer;
use tessera_proto::tessera::peer::v1::peer_service_server::PeerServiceServer;

/// Largest upload message: one chunk plus room for its other fields.
const UPLOAD_MESSAGE_LIMIT: usize = MAX_CHUNK_BYTES + (64 << 10);

/// Wall-clock milliseconds and tokio timers.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
    fn sleep_ms(&self, ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(Duration::from_millis(ms)))
    }
    fn offload(&self, work: BlockingWork) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(work)
                .await
                .unwrap_or_else(|e| Err(StoreError::Io(format!("fsync task failed: {e}"))))
        })
    }
}

/// Seeds the core's RNG from the OS.
fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    // No /dev/urandom: time and pid still make collisions between runs unlikely.
    SystemClock.now_ms() ^ (u64::from(std::process::id()) << 32)
}

/// Runs a machine's driver on its own thread (fsync blocks: it must not sit on the async
/// workers). A storage failure is reported on `failed`.
fn spawn_driver<M>(
    name: &'static str,
    machine: M,
    init: tessera_core::WriteBatch,
    store: Arc<FjallStore>,
    metrics: &Metrics,
    failed: tokio::sync::mpsc::Sender<String>,
) -> anyhow::Result<(HandleFor<M>, std::thread::JoinHandle<()>)>
where
    M: tessera_core::Machine + Send + 'static,
    M::Input: Send + 'static,
    M::Output: Send + 'static,
    M::Message: Send + 'static,
{
    spawn_driver_with(name, machine, init, store, metrics, failed, None)
}

/// [`spawn_driver`] for a machine that talks to peers through `outbox`.
fn spawn_driver_with<M>(
    name: &'static str,
    machine: M,
    init: tessera_core::WriteBatch,
    store: Arc<FjallStore>,
    metrics: &Metrics,
    failed: tokio::sync::mpsc::Sender<String>,
    outbox: Option<Arc<dyn crate::driver::Outbox<M::Message>>>,
) -> anyhow::Result<(HandleFor<M>, std::thread::JoinHandle<()>)>
where
    M: tessera_core::Machine + Send + 'static,
    M::Input: Send + 'static,
    M::Output: Send + 'static,
    M::Message: Send + 'static,
{
    let (mut driver, handle) =
        Driver::new(machine, init, store, Arc::new(SystemClock), Arc::new(metrics.clone()), DriverConfig::default())?;
    if let Some(outbox) = outbox {
        driver = driver.with_outbox(outbox);
    }
    let thread = std::thread::Builder::new()
        .name(format!("tessera-{name}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = failed.blocking_send(format!("{name} driver: cannot start its runtime: {e}"));
                    return;
                }
            };
            if let Err(e) = rt.block_on(driver.run()) {
                tracing::error!(driver = name, error = %e, "driver stopped");
                let _ = failed.blocking_send(format!("{name} driver: {e}"));
            }
        })
        .with_context(|| format!("spawning the {name} driver thread"))?;
    Ok((handle, thread))
}

/// Runs tesserad until `shutdown` resolves, then drains in-flight requests, lets the driver
/// sync what it holds, and returns. `on_listening` is told the bound address.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config.data_dir)?;
    let store = Arc::new(
        FjallStore::open_with_row_cache(&config.data_dir, config.row_cache_bytes)
            .with_context(|| format!("opening storage in {}", config.data_dir.display()))?,
    );
    let mut rng = Rng::new(os_seed());
    let metrics = Metrics::default();
    metrics.watch_store(store.clone());
    let (failed_tx, failed_rx) = tokio::sync::mpsc::channel::<String>(4);
    let mut drivers = Vec::new();

    let (machine, init) =
        StatusMachine::open(&*store, config.status.clone(), &mut rng).context("opening the status registry")?;
    let (status_handle, t) = spawn_driver("status", machine, init, store.clone(), &metrics, failed_tx.clone())?;
    drivers.push(t);
    let machine =
        TxnMachine::open(&*store, TxnConfig::default(), Rng::new(rng.next_u64())).context("opening the state store")?;
    let (txn_handle, t) =
        spawn_driver("state", machine, Default::default(), store.clone(), &metrics, failed_tx.clone())?;
    drivers.push(t);
    let machine = UploadMachine::open(&*store, config.upload.clone(), Rng::new(rng.next_u64()))
        .context("opening the document repository")?;
    let (upload_handle, t) =
        spawn_driver("upload", machine, Default::default(), store.clone(), &metrics, failed_tx.clone())?;
    drivers.push(t);
    let (machine, init) =
        CatalogMachine::open(&*store, CatalogConfig { idempotency_ttl_ms: config.idempotency_ttl_ms }, &mut rng)
            .context("opening the catalog")?;
    let (catalog_handle, t) = spawn_driver("catalog", machine, init, store.clone(), &metrics, failed_tx.clone())?;
    drivers.push(t);
    let machine = KvMachine::new(KvConfig {
        idempotency_ttl_ms: config.idempotency_ttl_ms,
        tombstone_grace_ms: config.tombstone_grace_ms,
        ..KvConfig::new(config.node_id.clone())
    });
    let (kv_handle, t) = spawn_driver("kv", machine, Default::default(), store.clone(), &metrics, failed_tx.clone())?;
    drivers.push(t);
    let initial = config.members.iter().map(|m| (m.id.clone(), m.addr.clone(), DEFAULT_VNODES)).collect();
    let mut meta_config = MetaConfig::new(config.node_id.clone(), initial);
    meta_config.join = config.join;
    let (machine, init) =
        MetaMachine::open(&*store, meta_config, Rng::new(rng.next_u64())).context("opening the cluster metadata")?;
    let layout = machine.state().layout.clone();
    let given: Vec<(&str, &str)> = config.members.iter().map(|m| (m.id.as_str(), m.addr.as_str())).collect();
    let held: Vec<(&str, &str)> = layout.members.iter().map(|m| (m.id.as_str(), m.addr.as_str())).collect();
    if config.members.len() > 1
        && !layout.members.is_empty()
        && given.iter().collect::<std::collections::BTreeSet<_>>() != held.iter().collect()
    {
        // As etcd does: --initial-cluster only bootstraps; the replicated layout rules after.
        tracing::warn!(?given, ?held, "--initial-cluster differs from the replicated layout; using the layout");
    }
    if layout.members.is_empty() {
        tracing::info!(
            node = %config.node_id,
            "joining an existing cluster: waiting for the metadata (add this node with AddStorageNode)"
        );
    }
    // Where the peers are: --initial-cluster, then the replicated layout over it.
    let peers: Vec<(String, String)> = config
        .members
        .iter()
        .map(|m| (m.id.clone(), m.addr.clone()))
        .chain(layout.members.iter().map(|m| (m.id.clone(), m.addr.clone())))
        .collect();
    // Where this node says it listens: its address in the layout, else in --initial-cluster.
    let me_addr = layout
        .by_id(&config.node_id)
        .map(|m| m.addr.clone())
        .or_else(|| config.members.iter().find(|m| m.id == config.node_id).map(|m| m.addr.clone()))
        .unwrap_or_else(|| config.listen.to_string());
    let cluster_id = Arc::new(
        ClusterId::open(&config.data_dir, config.join, &config.cluster_token, &config.members, rng.next_u64())
            .context("opening the cluster id")?,
    );
    let transport =
        Arc::new(crate::raft_transport::RaftTransport::new(&config.node_id, &me_addr, &peers, cluster_id.clone()));
    let (meta_handle, t) =
        spawn_driver_with("meta", machine, init, store.clone(), &metrics, failed_tx, Some(transport.clone()))?;
    drivers.push(t);
    let cluster = Cluster::new(
        config.node_id.clone(),
        &layout,
        kv_handle,
        meta_handle.clone(),
        config.data_dir.clone(),
        transport,
        cluster_id.clone(),
    );
    // The fence floor this node stored before a restart holds before it serves anything.
    cluster
        .serve_local(tessera_core::kv::KvRequest::Fence { version: 0 }, 0)
        .await
        .context("reading the layout fence floor")?
        .context("reading the layout fence floor")?;
    // And the newest layout that placed a write here, so that it is not recorded again.
    cluster
        .serve_local(tessera_core::kv::KvRequest::Placed { version: 0 }, 0)
        .await
        .context("reading the newest placing layout")?
        .context("reading the newest placing layout")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another server using it?)", config.listen))?;
    let addr = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let status_handle_for_uploads = status_handle.clone();
    let mirror = tokio::spawn(crate::cluster::mirror_migrations(cluster.clone(), status_handle.clone()));
    let status = StatusService::new(status_handle);
    let statehouse = StatehouseService::new(txn_handle);
    let uploads = UploadService::new(upload_handle, status_handle_for_uploads).with_prestage(store.clone());
    let metacat = Metacat::new(catalog_handle);
    let coordinator = Coordinator::new(cluster.clone(), rng.next_u64());
    let peer = Peer::new(meta_handle, cluster.clone(), coordinator.coordinator(), cluster_id);
    let handoff = tokio::spawn(crate::cluster::hand_off(coordinator.coordinator()));
    let anti_entropy = tokio::spawn(crate::cluster::anti_entropy(coordinator.coordinator(), metrics.clone()));
    let follow = tokio::spawn(crate::cluster::follow_layout(cluster.clone()));
    let hand_over = tokio::spawn(crate::cluster::hand_over(coordinator.coordinator()));
    let clean_up = tokio::spawn(crate::cluster::clean_up(coordinator.coordinator()));

    if let Some(maddr) = config.metrics_listen {
        // Bound before the daemon says it listens: a port taken by another process is an
        // error at start-up, not a daemon running without the metrics it was asked for.
        let listener = tokio::net::TcpListener::bind(maddr)
            .await
            .with_context(|| format!("binding the metrics endpoint {maddr}"))?;
        tokio::spawn(metrics.clone().serve(listener));
    }

    health.set_serving::<MetaStoreStatusServiceServer<StatusService>>().await;
    health.set_serving::<StatusProducerServiceServer<StatusService>>().await;
    health.set_serving::<StatehouseServiceServer<StatehouseService>>().await;
    health.set_serving::<NodeUploadServiceServer<UploadService>>().await;
    health.set_serving::<DocumentServiceServer<UploadService>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "tesserad serving");
    on_listening(addr);

    let health_on_stop = health.clone();
    let driver_failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let failed_slot = driver_failed.clone();
    let mut failed_rx = failed_rx;
    let stop = async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutdown requested: finishing in-flight requests"),
            Some(reason) = failed_rx.recv() => {
                tracing::error!(%reason, "storage failed: stopping so a restart can recover");
                *failed_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
        health_on_stop.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    };

    tonic::transport::Server::builder()
        // HTTP/2's default 64 KiB windows cost a round trip per 64 KiB of a multi-MiB chunk;
        // these let a whole chunk in flight per stream, still bounded per connection.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(1 << 20))
        .layer(MetricsLayer { metrics })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(MetaStoreStatusServiceServer::new(status.clone()))
        .add_service(StatusProducerServiceServer::new(status))
        .add_service(StatehouseServiceServer::new(statehouse))
        // Chunks may be up to 16 MiB (tessera_core::upload::MAX_CHUNK_BYTES).
        .add_service(NodeUploadServiceServer::new(uploads.clone()).max_decoding_message_size(UPLOAD_MESSAGE_LIMIT))
        .add_service(DocumentServiceServer::new(uploads))
        .add_service(TenantServiceServer::new(metacat.clone()))
        .add_service(CatalogServiceServer::new(metacat.clone()))
        .add_service(NamespaceServiceServer::new(metacat.clone()))
        .add_service(TableServiceServer::new(metacat.clone()))
        .add_service(ViewServiceServer::new(metacat.clone()))
        .add_service(SnapshotServiceServer::new(metacat.clone()))
        .add_service(TableStatisticsServiceServer::new(metacat.clone()))
        .add_service(StatsCaptureServer::new(metacat.clone()))
        .add_service(DirectoryServiceServer::new(metacat))
        .add_service(CoordinatorServiceServer::new(coordinator.clone()))
        .add_service(KvServiceServer::new(coordinator))
        // Values are up to 1 MiB; a peer message carries a few versions of one key.
        .add_service(PeerServiceServer::new(peer).max_decoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(
            crate::net_io::Incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
            stop,
        )
        .await
        .context("gRPC server")?;

    // The background tasks hold the cluster (and its driver handles): stop them first.
    for task in [handoff, anti_entropy, follow, hand_over, clean_up, mirror] {
        task.abort();
        let _ = task.await;
    }
    drop(cluster);
    // Every service (and so every driver handle) is gone: each driver serves what is queued,
    // syncs, and returns.
    // A stream still open past the grace period only holds reads: nothing unsynced is lost by
    // exiting without it.
    // Join every thread, even after one failed.
    let join = tokio::task::spawn_blocking(move || {
        let joined: Vec<bool> = drivers.into_iter().map(|t| t.join().is_ok()).collect();
        joined.into_iter().all(|ok| ok)
    });
    match tokio::time::timeout(Duration::from_secs(10), join).await {
        Ok(Ok(true)) => {}
        Ok(_) => anyhow::bail!("a driver thread panicked"),
        Err(_) => tracing::warn!("drivers still busy 10 s after shutdown (open streams?); exiting anyway"),
    }
    if let Some(reason) = driver_failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("storage failure: {reason}");
    }
    tracing::info!("tesserad stopped cleanly");
    Ok(())
}
