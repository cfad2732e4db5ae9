//! A simulated tesserad: the production driver over a crashable MemStore, inside a madsim
//! node so that a kill stops all of its tasks at once. Like tesserad, a node runs one driver
//! per log (the status registry and the transaction store) over one store.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_core::kv::KvMachine;
use tessera_core::kv::ring::DEFAULT_VNODES;
use tessera_core::mem_store::MemStore;
use tessera_core::meta::{MetaConfig, MetaMachine};
use tessera_core::rng::Rng;
use tessera_core::status::{StatusConfig, StatusMachine};
use tessera_core::txn::{TxnConfig, TxnMachine};
use tessera_core::{Machine, WriteBatch};
use tessera_shell::driver::{Clock, Driver, DriverConfig, HandleFor, NoopObserver, Outbox};

use crate::run::World;

pub type Handle = HandleFor<StatusMachine>;
pub type TxnHandle = HandleFor<TxnMachine>;
pub type KvHandle = HandleFor<KvMachine>;
pub type MetaHandle = HandleFor<MetaMachine>;
pub type Coordinator = Arc<tessera_shell::kv_coordinator::KvCoordinator<crate::kv_model::SimPeers>>;

/// Simulated time plus this node's skew; fsync takes a random, seed-drawn time.
pub struct SimClock {
    pub world: Arc<World>,
    pub skew_ms: i64,
    pub max_fsync_ms: u64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        // An epoch well away from zero so negative skew stays positive.
        (1_000_000 + self.world.elapsed_ms() as i64 + self.skew_ms) as u64
    }
    fn sleep_ms(&self, ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(madsim::time::sleep(Duration::from_millis(ms)))
    }
    fn before_sync(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let ms = self.world.rng_below(self.max_fsync_ms + 1);
        Box::pin(madsim::time::sleep(Duration::from_micros(ms * 1000 + 100)))
    }
}

type Slot<H> = Arc<Mutex<Option<H>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct SimNode {
    pub name: String,
    pub id: madsim::task::NodeId,
    pub store: MemStore,
    /// The running drivers' handles; None while the node is down.
    pub slot: Slot<Handle>,
    pub txn_slot: Slot<TxnHandle>,
    pub kv_slot: Slot<KvHandle>,
    pub meta_slot: Slot<MetaHandle>,
    /// The node's key-value coordinator (in memory: rebuilt on restart).
    pub coord_slot: Slot<Coordinator>,
    /// Set when a driver stopped on a storage error (the node must restart).
    pub failed: Arc<AtomicBool>,
    pub up: bool,
}

struct Boot {
    world: Arc<World>,
    store: MemStore,
    failed: Arc<AtomicBool>,
    name: String,
    skew_ms: i64,
    max_fsync_ms: u64,
    driver: DriverConfig,
}

impl Boot {
    /// Starts one driver for `machine` on this node and publishes its handle in `slot`.
    fn spawn<M>(&self, log: &'static str, opened: Result<(M, WriteBatch), String>, slot: Slot<HandleFor<M>>)
    where
        M: Machine + Send + 'static,
        M::Input: Send + 'static,
        M::Output: Send + 'static,
        M::Message: Send + 'static,
    {
        self.spawn_with(log, opened, slot, None)
    }

    /// [`Boot::spawn`] for a machine whose messages go to peers through `outbox`.
    fn spawn_with<M>(
        &self,
        log: &'static str,
        opened: Result<(M, WriteBatch), String>,
        slot: Slot<HandleFor<M>>,
        outbox: Option<Arc<dyn Outbox<M::Message>>>,
    ) where
        M: Machine + Send + 'static,
        M::Input: Send + 'static,
        M::Output: Send + 'static,
        M::Message: Send + 'static,
    {
        let clock =
            Arc::new(SimClock { world: self.world.clone(), skew_ms: self.skew_ms, max_fsync_ms: self.max_fsync_ms });
        let started = opened.and_then(|(machine, init)| {
            Driver::new(machine, init, self.store.clone(), clock, Arc::new(NoopObserver), self.driver.clone())
                .map_err(|e| e.to_string())
        });
        let (driver, handle) = match started {
            Ok((d, h)) => (if let Some(o) = outbox { d.with_outbox(o) } else { d }, h),
            Err(e) => {
                self.world.event(format!("{} {log} failed to open: {e}", self.name));
                self.failed.store(true, Ordering::SeqCst);
                return;
            }
        };
        *lock(&slot) = Some(handle);
        let (world, failed, name) = (self.world.clone(), self.failed.clone(), self.name.clone());
        madsim::task::spawn(async move {
            match driver.run().await {
                Err(e) => {
                    world.event(format!("{name} {log} driver stopped: {e}"));
                    lock(&slot).take();
                    failed.store(true, Ordering::SeqCst);
                }
                Ok(()) => world.event(format!("{name} {log} driver ended: every handle dropped")),
            }
        });
    }
}

impl SimNode {
    pub fn start(world: &Arc<World>, index: usize, config: StatusConfig, driver: DriverConfig) -> SimNode {
        let name = format!("n{index}");
        let store = MemStore::new();
        let slot: Slot<Handle> = Arc::new(Mutex::new(None));
        let txn_slot: Slot<TxnHandle> = Arc::new(Mutex::new(None));
        let kv_slot: Slot<KvHandle> = Arc::new(Mutex::new(None));
        let meta_slot: Slot<MetaHandle> = Arc::new(Mutex::new(None));
        let coord_slot: Slot<Coordinator> = Arc::new(Mutex::new(None));
        let failed = Arc::new(AtomicBool::new(false));
        let (st, sl, tsl, fl, w, nm) =
            (store.clone(), slot.clone(), txn_slot.clone(), failed.clone(), world.clone(), name.clone());
        let (ksl, csl, msl) = (kv_slot.clone(), coord_slot.clone(), meta_slot.clone());
        let skew_ms = world.plan.skew_ms[index];
        let max_fsync_ms = world.plan.max_fsync_ms;
        let id = madsim::runtime::Handle::current()
            .create_node()
            .name(&name)
            .init(move || {
                let boot = Boot {
                    world: w.clone(),
                    store: st.clone(),
                    failed: fl.clone(),
                    name: nm.clone(),
                    skew_ms,
                    max_fsync_ms,
                    driver: driver.clone(),
                };
                let (slot, txn_slot, config) = (sl.clone(), tsl.clone(), config.clone());
                let (kv_slot, coord_slot, meta_slot) = (ksl.clone(), csl.clone(), msl.clone());
                async move {
                    let mut rng = Rng::new(boot.world.rng_below(u64::MAX));
                    let status = StatusMachine::open(&boot.store, config, &mut rng).map_err(|e| e.to_string());
                    boot.spawn("status", status, slot);
                    let txn = TxnMachine::open(&boot.store, TxnConfig::default(), Rng::new(rng.next_u64()))
                        .map(|m| (m, WriteBatch::default()))
                        .map_err(|e| e.to_string());
                    boot.spawn("txn", txn, txn_slot);
                    let kv = KvMachine::new(crate::kv_model::kv_config(&boot.world.opts, &boot.name));
                    boot.spawn("kv", Ok((kv, WriteBatch::default())), kv_slot.clone());
                    // The node past the initial ones joins later, knowing where they are.
                    let join = index >= boot.world.opts.nodes;
                    let initial = (0..boot.world.opts.nodes + usize::from(join))
                        .map(|i| (format!("n{i}"), format!("n{i}:7000"), DEFAULT_VNODES))
                        .collect();
                    let mut meta_config = MetaConfig::new(boot.name.clone(), initial);
                    meta_config.join = join;
                    let meta = MetaMachine::open(&boot.store, meta_config, Rng::new(rng.next_u64()))
                        .map_err(|e| e.to_string());
                    let layout = meta.as_ref().map(|(m, _)| m.state().layout.clone()).unwrap_or_default();
                    let outbox = Arc::new(crate::meta_model::SimRaft { world: boot.world.clone(), from: index });
                    boot.spawn_with("meta", meta, meta_slot, Some(outbox));
                    let peers = Arc::new(crate::kv_model::SimPeers::new(boot.world.clone(), index, skew_ms, layout));
                    // The fence floor stored before a restart holds before the node serves.
                    let kv = lock(&kv_slot).clone();
                    let floor = match &kv {
                        Some(kv) => kv.call(tessera_core::kv::KvRequest::Fence { version: 0 }).await.ok(),
                        None => None,
                    };
                    // And the newest layout that placed a write here (not recorded again).
                    if let Some(kv) = &kv
                        && let Ok(out) = kv.call(tessera_core::kv::KvRequest::Placed { version: 0 }).await
                    {
                        peers.view().observe(&out);
                    }
                    match floor {
                        Some(out @ Ok(_)) => peers.view().observe(&out),
                        // As tesserad: a node that cannot read its floor does not serve.
                        _ => {
                            boot.world.event(format!("{} could not read its layout fence floor", boot.name));
                            boot.failed.store(true, Ordering::SeqCst);
                            std::future::pending::<()>().await
                        }
                    }
                    madsim::task::spawn(crate::kv_model::follow_layout(peers.clone()));
                    let coord = tessera_shell::kv_coordinator::KvCoordinator::new(peers, rng.next_u64())
                        .with_hand_over_grace(crate::kv_model::HAND_OVER_GRACE_MS);
                    let coord = Arc::new(coord);
                    *lock(&coord_slot) = Some(coord.clone());
                    madsim::task::spawn(crate::kv_model::clean_up(coord.clone()));
                    madsim::task::spawn(crate::kv_model::hand_off(coord));
                    boot.world.event(format!("{} up", boot.name));
                    // madsim ends a node whose initial task returns (as a process whose main
                    // returns): live until killed, like tesserad.
                    std::future::pending::<()>().await;
                }
            })
            .build()
            .id();
        SimNode { name, id, store, slot, txn_slot, kv_slot, meta_slot, coord_slot, failed, up: true }
    }

    pub fn handle(&self) -> Option<Handle> {
        lock(&self.slot).clone()
    }

    pub fn txn_handle(&self) -> Option<TxnHandle> {
        lock(&self.txn_slot).clone()
    }

    pub fn kv_handle(&self) -> Option<KvHandle> {
        lock(&self.kv_slot).clone()
    }

    pub fn meta_handle(&self) -> Option<MetaHandle> {
        lock(&self.meta_slot).clone()
    }

    pub fn coordinator(&self) -> Option<Coordinator> {
        lock(&self.coord_slot).clone()
    }

    /// Power cut: every task stops, every unsynced write is gone.
    pub fn crash(&mut self) {
        lock(&self.slot).take();
        lock(&self.txn_slot).take();
        lock(&self.kv_slot).take();
        lock(&self.meta_slot).take();
        lock(&self.coord_slot).take();
        madsim::runtime::Handle::current().kill(self.id);
        self.store.crash();
        self.failed.store(false, Ordering::SeqCst);
        self.up = false;
    }

    pub fn restart(&mut self) {
        madsim::runtime::Handle::current().restart(self.id);
        self.up = true;
    }
}
