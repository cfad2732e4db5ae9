//! A simulated tesserad: the production driver over a crashable MemStore, inside a madsim
//! node so that a kill stops all of its tasks at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_core::CoreResult;
use tessera_core::mem_store::MemStore;
use tessera_core::rng::Rng;
use tessera_core::status::{StatusConfig, StatusMachine, StatusRequest, StatusResponse};
use tessera_shell::driver::{Clock, Driver, DriverConfig, DriverHandle, NoopObserver};

use crate::run::World;

pub type Handle = DriverHandle<StatusRequest, CoreResult<StatusResponse>>;

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

pub struct SimNode {
    pub name: String,
    pub id: madsim::task::NodeId,
    pub store: MemStore,
    /// The running driver's handle; None while the node is down.
    pub slot: Arc<Mutex<Option<Handle>>>,
    /// Set when the driver stopped on a storage error (the node must restart).
    pub failed: Arc<AtomicBool>,
    pub up: bool,
}

impl SimNode {
    pub fn start(world: &Arc<World>, index: usize, config: StatusConfig, driver: DriverConfig) -> SimNode {
        let name = format!("n{index}");
        let store = MemStore::new();
        let slot: Arc<Mutex<Option<Handle>>> = Arc::new(Mutex::new(None));
        let failed = Arc::new(AtomicBool::new(false));
        let (st, sl, fl, w, nm) = (store.clone(), slot.clone(), failed.clone(), world.clone(), name.clone());
        let skew_ms = world.plan.skew_ms[index];
        let max_fsync_ms = world.plan.max_fsync_ms;
        let id = madsim::runtime::Handle::current()
            .create_node()
            .name(&name)
            .init(move || {
                let (store, slot, failed, world, name) = (st.clone(), sl.clone(), fl.clone(), w.clone(), nm.clone());
                let (config, driver_config) = (config.clone(), driver.clone());
                async move {
                    let clock = Arc::new(SimClock { world: world.clone(), skew_ms, max_fsync_ms });
                    let mut rng = Rng::new(world.rng_below(u64::MAX));
                    let opened = StatusMachine::open(&store, config, &mut rng).map_err(|e| e.to_string()).and_then(
                        |(machine, init)| {
                            Driver::new(machine, init, store.clone(), clock, Arc::new(NoopObserver), driver_config)
                                .map_err(|e| e.to_string())
                        },
                    );
                    let (driver, handle) = match opened {
                        Ok(x) => x,
                        Err(e) => {
                            world.event(format!("{name} failed to open: {e}"));
                            failed.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                    world.event(format!("{name} up"));
                    if let Err(e) = driver.run().await {
                        world.event(format!("{name} driver stopped: {e}"));
                        slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                        failed.store(true, Ordering::SeqCst);
                    }
                }
            })
            .build()
            .id();
        SimNode { name, id, store, slot, failed, up: true }
    }

    pub fn handle(&self) -> Option<Handle> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Power cut: every task stops, every unsynced write is gone.
    pub fn crash(&mut self) {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
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
