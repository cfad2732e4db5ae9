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
use tessera_core::rng::Rng;
use tessera_core::status::StatusMachine;
use tessera_proto::metastore_status::v1::meta_store_status_service_server::MetaStoreStatusServiceServer;
use tessera_proto::tessera::status::v1::status_producer_service_server::StatusProducerServiceServer;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::driver::{Clock, Driver, DriverConfig};
use crate::fjall_store::FjallStore;
use crate::lock::lock_data_dir;
use crate::metrics::{Metrics, MetricsLayer};
use crate::services::status::StatusService;

/// Wall-clock milliseconds and tokio timers.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
    fn sleep_ms(&self, ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(Duration::from_millis(ms)))
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

/// Runs tesserad until `shutdown` resolves, then drains in-flight requests, lets the driver
/// sync what it holds, and returns. `on_listening` is told the bound address.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config.data_dir)?;
    let store = FjallStore::open(&config.data_dir.join("db"))
        .with_context(|| format!("opening storage in {}", config.data_dir.display()))?;
    let mut rng = Rng::new(os_seed());
    let (machine, init) =
        StatusMachine::open(&store, config.status.clone(), &mut rng).context("opening the status registry")?;
    let metrics = Metrics::default();
    let (driver, handle) =
        Driver::new(machine, init, store, Arc::new(SystemClock), Arc::new(metrics.clone()), DriverConfig::default())?;

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let driver_thread = std::thread::Builder::new()
        .name("tessera-driver".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = failed_tx.send(format!("cannot start the driver runtime: {e}"));
                    return;
                }
            };
            if let Err(e) = rt.block_on(driver.run()) {
                tracing::error!(error = %e, "driver stopped");
                let _ = failed_tx.send(e.to_string());
            }
        })
        .context("spawning the driver thread")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another server using it?)", config.listen))?;
    let addr = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let status = StatusService::new(handle);

    if let Some(maddr) = config.metrics_listen {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = m.serve(maddr).await {
                tracing::error!(error = %e, %maddr, "metrics endpoint failed");
            }
        });
    }

    health.set_serving::<MetaStoreStatusServiceServer<StatusService>>().await;
    health.set_serving::<StatusProducerServiceServer<StatusService>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "tesserad serving");
    on_listening(addr);

    let health_on_stop = health.clone();
    let driver_failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let failed_slot = driver_failed.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutdown requested: finishing in-flight requests"),
            Ok(reason) = failed_rx => {
                tracing::error!(%reason, "storage failed: stopping so a restart can recover");
                *failed_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
        health_on_stop.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    };

    tonic::transport::Server::builder()
        .layer(MetricsLayer { metrics })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(MetaStoreStatusServiceServer::new(status.clone()))
        .add_service(StatusProducerServiceServer::new(status))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop)
        .await
        .context("gRPC server")?;

    // Every service (and so every driver handle) is gone: the driver serves what is queued,
    // syncs, and returns.
    let joined = tokio::task::spawn_blocking(move || driver_thread.join()).await;
    if joined.is_err() || joined.is_ok_and(|j| j.is_err()) {
        anyhow::bail!("the driver thread panicked");
    }
    if let Some(reason) = driver_failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("storage failure: {reason}");
    }
    tracing::info!("tesserad stopped cleanly");
    Ok(())
}
