//! One seeded run: build the world, start the nodes, run clients and faults, heal, check.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tessera_core::rng::Rng;
use tessera_core::status::{StatusConfig, StoreKind};
use tessera_shell::driver::DriverConfig;

use crate::faults::FaultPlan;
use crate::model::{self, Model};
use crate::node::{Handle, SimNode, TxnHandle};
use crate::trace::Trace;
use crate::txn_model::{self, TxnModel};

#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub clients: usize,
    /// Simulated duration of the faulty phase.
    pub duration_ms: u64,
    /// Run the driver with replies released before the sync (a deliberately broken driver).
    pub ack_before_sync: bool,
    /// Start one more node, joining the cluster later (`AddStorageNode` mid-run while clients
    /// write), and then possibly remove one of the first nodes.
    pub layout_changes: bool,
    /// Shrink the tombstone grace (and the records' life and the hints' age with it) to
    /// seconds, so tombstones are collected while clients write, delete and replay.
    pub tombstone_gc: bool,
}

impl Options {
    /// Every simulated node: the initial members, and the one that joins later.
    pub fn all_nodes(&self) -> usize {
        self.nodes + usize::from(self.layout_changes)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 3,
            clients: 6,
            duration_ms: 5_000,
            ack_before_sync: false,
            layout_changes: false,
            tombstone_gc: false,
        }
    }
}

/// Stores with a capacity, so eviction is exercised; the others are unlimited.
pub const CAPPED: StoreKind = StoreKind::Upload;
pub const CAPACITY: i64 = 6;
pub const KINDS: [StoreKind; 3] = [StoreKind::KeyGeneration, StoreKind::Upload, StoreKind::Plan];

pub struct SeedReport {
    pub seed: u64,
    pub hash: String,
    pub violations: Vec<String>,
    pub events: Vec<String>,
    pub plan: String,
    pub ops: u64,
}

pub struct WorldInner {
    pub rng: Rng,
    pub trace: Trace,
    pub violations: Vec<String>,
    /// (client, node) pairs that cannot talk.
    pub cuts: BTreeSet<(usize, usize)>,
    /// Set once the faults have healed: the network stops losing and duplicating messages.
    pub healed: bool,
    /// Nodes cut off from the other nodes.
    pub isolated: BTreeSet<usize>,
    /// The node of the plan's long outage while it lasts: no fault restarts it meanwhile.
    pub held_down: Option<usize>,
    pub model: Model,
    pub kv: crate::kv_model::KvModel,
    pub meta: crate::meta_model::MetaModel,
    pub txn: TxnModel,
    pub ops: u64,
}

pub struct World {
    pub seed: u64,
    pub plan: FaultPlan,
    pub opts: Options,
    start: madsim::time::Instant,
    inner: Mutex<WorldInner>,
    nodes: Mutex<Vec<SimNode>>,
}

impl World {
    pub fn lock(&self) -> MutexGuard<'_, WorldInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn rng_below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.lock().rng.below(n)
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.lock().rng.chance(p)
    }

    pub fn event(&self, e: String) {
        let now = self.elapsed_ms();
        self.lock().trace.record(now, e);
    }

    pub fn violation(&self, v: String) {
        let now = self.elapsed_ms();
        let mut w = self.lock();
        w.trace.record(now, format!("VIOLATION {v}"));
        w.violations.push(format!("at {now}ms: {v}"));
    }

    pub fn cut(&self, client: usize, node: usize) -> bool {
        self.lock().cuts.contains(&(client, node))
    }

    pub fn node_handle(&self, node: usize) -> Option<Handle> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(node).and_then(SimNode::handle)
    }

    pub fn kv_handle(&self, node: usize) -> Option<crate::node::KvHandle> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(node).and_then(SimNode::kv_handle)
    }

    pub fn meta_handle(&self, node: usize) -> Option<crate::node::MetaHandle> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(node).and_then(SimNode::meta_handle)
    }

    /// A node's coordinator and its madsim node id (to run a call on that node).
    pub fn coordinator(&self, node: usize) -> Option<(crate::node::Coordinator, madsim::task::NodeId)> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let n = nodes.get(node)?;
        Some((n.coordinator()?, n.id))
    }

    /// Whether two nodes cannot talk: a partitioned node is cut from clients and peers alike.
    pub fn nodes_cut(&self, a: usize, b: usize) -> bool {
        let w = self.lock();
        w.isolated.contains(&a) || w.isolated.contains(&b)
    }

    pub fn txn_handle(&self, node: usize) -> Option<TxnHandle> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(node).and_then(SimNode::txn_handle)
    }

    /// The node's store, for checkers that read what is durable directly.
    pub fn store(&self, node: usize) -> Option<tessera_core::mem_store::MemStore> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(node).map(|n| n.store.clone())
    }

    fn with_nodes<R>(&self, f: impl FnOnce(&mut Vec<SimNode>) -> R) -> R {
        f(&mut self.nodes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Injects crashes, partitions and disk errors until `until_ms`, restarting nodes whose
/// driver stopped on a storage error.
async fn faults(world: Arc<World>, until_ms: u64) {
    let plan = world.plan.clone();
    let n = world.opts.all_nodes();
    loop {
        let wait = 1 + world.rng_below(plan.fault_every_ms.min(10_000) * 2);
        madsim::time::sleep(Duration::from_millis(wait.min(until_ms.saturating_sub(world.elapsed_ms())))).await;
        supervise(&world);
        if world.elapsed_ms() >= until_ms {
            return;
        }
        let node = world.rng_below(n as u64) as usize;
        let outage = 1 + world.rng_below(plan.max_outage_ms);
        let roll = world.rng_below(1000) as f64 / 1000.0;
        if roll < plan.crash_share {
            let crashed = world.with_nodes(|nodes| {
                if nodes[node].up {
                    nodes[node].crash();
                    true
                } else {
                    false
                }
            });
            if crashed {
                world.event(format!("n{node} CRASH for {outage}ms"));
                let w = world.clone();
                madsim::task::spawn(async move {
                    madsim::time::sleep(Duration::from_millis(outage)).await;
                    if w.lock().held_down != Some(node) {
                        w.with_nodes(|nodes| nodes[node].restart());
                        w.event(format!("n{node} restart"));
                    }
                });
            }
        } else if roll < plan.crash_share + plan.disk_error_share {
            world.with_nodes(|nodes| nodes[node].store.fail_next_sync());
            world.event(format!("n{node} disk will fail its next sync"));
        } else {
            let clients: Vec<usize> = (0..world.opts.clients).filter(|_| world.chance(0.6)).collect();
            // Half the partitions also cut the node off from its peers.
            let from_peers = world.chance(0.5);
            {
                let mut w = world.lock();
                for c in &clients {
                    w.cuts.insert((*c, node));
                }
                if from_peers {
                    w.isolated.insert(node);
                }
            }
            world.event(format!(
                "partition n{node} from clients {clients:?}{} for {outage}ms",
                if from_peers { " and its peers" } else { "" }
            ));
            let w = world.clone();
            madsim::task::spawn(async move {
                madsim::time::sleep(Duration::from_millis(outage)).await;
                let mut g = w.lock();
                for c in clients {
                    g.cuts.remove(&(c, node));
                }
                g.isolated.remove(&node);
            });
        }
    }
}

/// The plan's long outage: its node goes down (or stays down) until the heal, longer than
/// the tombstone grace, while the others take writes and deletes (those of the resting keys'
/// second round among them) and sweep; the heal brings it back with what it held. Nothing it
/// missed may come back.
async fn long_outage(world: Arc<World>, started_ms: u64, until_ms: u64) {
    let Some((node, from)) = world.plan.long_outage else { return };
    madsim::time::sleep(Duration::from_millis((started_ms + from).saturating_sub(world.elapsed_ms()))).await;
    world.lock().held_down = Some(node);
    world.with_nodes(|nodes| {
        if nodes[node].up {
            nodes[node].crash();
        }
    });
    world.event(format!("n{node} DOWN until the heal, longer than the tombstone grace"));
    madsim::time::sleep(Duration::from_millis(until_ms.saturating_sub(world.elapsed_ms()))).await;
    world.lock().held_down = None;
}

/// With tombstones collected within the run, a node whose storage failed is restarted within
/// 100 ms instead of at the next fault: the grace is seconds here. (A node kept down longer
/// than the grace on purpose is the plan's long outage.)
async fn prompt_supervisor(world: Arc<World>, until_ms: u64) {
    while world.elapsed_ms() < until_ms {
        madsim::time::sleep(Duration::from_millis(100)).await;
        supervise(&world);
    }
}

/// Restarts nodes whose driver stopped on a disk error (what a process supervisor does).
fn supervise(world: &Arc<World>) {
    let failed: Vec<usize> = world.with_nodes(|nodes| {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.failed.load(std::sync::atomic::Ordering::SeqCst))
            .map(|(i, _)| i)
            .collect()
    });
    let held = world.lock().held_down;
    for i in failed.into_iter().filter(|i| Some(*i) != held) {
        world.with_nodes(|nodes| {
            nodes[i].crash();
            nodes[i].restart();
        });
        world.event(format!("n{i} restarted after a storage failure"));
    }
}

/// Runs one seed to completion and reports what the checkers found.
pub fn run_seed(seed: u64, opts: &Options) -> SeedReport {
    // Each run on a fresh thread: raft-rs draws from rand's thread RNG (and the metadata
    // machine overrides each draw), but that RNG seeds and reseeds itself from getrandom,
    // which madsim serves from the run's seeded RNG. A thread RNG left over from an earlier
    // run would reseed at a different moment and shift every draw after it.
    let opts = opts.clone();
    match std::thread::Builder::new().name(format!("seed-{seed}")).spawn(move || run_seed_here(seed, &opts)) {
        Ok(t) => t.join().unwrap_or_else(|_| panic!("seed {seed}: the run panicked")),
        Err(e) => panic!("seed {seed}: cannot start a thread for the run: {e}"),
    }
}

fn run_seed_here(seed: u64, opts: &Options) -> SeedReport {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let opts = opts.clone();
    rt.block_on(async move {
        let mut rng = Rng::new(seed ^ 0x7e55_e7a5_1a0b_u64);
        // With tombstones collected within seconds, storms are milder and clocks closer: the
        // contract asks every replica to learn of a delete within the grace, as measured by
        // clocks that agree to well within it (tesserad: a grace of 4 h or more, clocks within
        // minutes), and under a fault every 50 ms, or with clocks 2 s apart, hints and
        // anti-entropy can miss a replica for longer than a grace of seconds.
        let (min_fault_every, max_skew) = match opts.tombstone_gc {
            true => (250, crate::kv_model::GC_MAX_SKEW_MS as i64),
            false => (50, 1_000),
        };
        let mut plan = FaultPlan::draw(&mut rng, opts.all_nodes(), min_fault_every, max_skew);
        if opts.tombstone_gc {
            // After the resting keys' first round and before their second, which comes
            // GC_REST_MS later: its deletes pass their grace before the heal.
            plan.draw_long_outage(&mut rng, opts.all_nodes(), 3_000);
        }
        let world = Arc::new(World {
            seed,
            plan: plan.clone(),
            opts: opts.clone(),
            start: madsim::time::Instant::now(),
            inner: Mutex::new(WorldInner {
                rng,
                trace: Trace::default(),
                violations: Vec::new(),
                cuts: BTreeSet::new(),
                healed: false,
                isolated: BTreeSet::new(),
                held_down: None,
                model: Model::new(opts.nodes),
                kv: crate::kv_model::KvModel::default(),
                meta: crate::meta_model::MetaModel::default(),
                txn: TxnModel::new(opts.nodes),
                ops: 0,
            }),
            nodes: Mutex::new(Vec::new()),
        });
        world.event(format!("seed {seed} plan {}", plan.describe()));
        let config = StatusConfig::default().with_capacity(CAPPED, CAPACITY);
        let driver = DriverConfig { ack_before_sync: opts.ack_before_sync, ..DriverConfig::default() };
        for i in 0..opts.all_nodes() {
            let node = SimNode::start(&world, i, config.clone(), driver.clone());
            world.with_nodes(|nodes| nodes.push(node));
        }
        madsim::time::sleep(Duration::from_millis(5)).await;

        let mut tasks = Vec::new();
        crate::kv_model::setup(&world).await;
        // The window counts from the end of setup: under heavy loss the metadata group's
        // first election and the tenant's creation can take seconds, and the clients must
        // still get their whole run.
        let until = world.elapsed_ms() + opts.duration_ms;
        for c in 0..opts.clients {
            tasks.push(madsim::task::spawn(crate::kv_model::client(world.clone(), c, until)));
            tasks.push(madsim::task::spawn(model::client(world.clone(), c, until)));
            tasks.push(madsim::task::spawn(txn_model::client(world.clone(), c, until)));
            tasks.push(madsim::task::spawn(crate::meta_model::client(world.clone(), c, until)));
        }
        tasks.push(madsim::task::spawn(crate::meta_model::observer(world.clone(), until)));
        tasks.push(madsim::task::spawn(faults(world.clone(), until)));
        if opts.tombstone_gc {
            tasks.push(madsim::task::spawn(prompt_supervisor(world.clone(), until)));
            tasks.push(madsim::task::spawn(long_outage(world.clone(), until - opts.duration_ms, until)));
        }
        if opts.layout_changes {
            tasks.push(madsim::task::spawn(crate::kv_model::layout_changes(world.clone(), until)));
        }
        for t in tasks {
            let _ = t.await;
        }

        // Heal: no more faults, every node back up, wait for in-flight copies to land.
        {
            let mut w = world.lock();
            w.cuts.clear();
            w.isolated.clear();
            w.healed = true;
        }
        madsim::time::sleep(Duration::from_millis(1_000)).await;
        supervise(&world);
        world.with_nodes(|nodes| {
            for n in nodes.iter_mut().filter(|n| !n.up) {
                n.restart();
            }
        });
        madsim::time::sleep(Duration::from_millis(50)).await;
        world.event("healed".into());
        // One more crash of every node, so the final check reads only what is durable.
        world.with_nodes(|nodes| {
            for n in nodes.iter_mut() {
                n.crash();
                n.restart();
            }
        });
        madsim::time::sleep(Duration::from_millis(50)).await;
        model::final_check(&world).await;
        txn_model::final_check(&world).await;
        crate::kv_model::final_check(&world).await;
        crate::meta_model::final_check(&world).await;

        let w = world.lock();
        SeedReport {
            seed,
            hash: w.trace.hash(),
            violations: w.violations.clone(),
            events: w.trace.events().to_vec(),
            plan: plan.describe(),
            ops: w.ops,
        }
    })
}
