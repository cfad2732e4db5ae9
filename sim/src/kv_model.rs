//! The key-value workload and its checker (DESIGN §5, KV).
//!
//! Every node runs the production coordinator (`tessera_shell::kv_coordinator`) over
//! [`SimPeers`]: node-to-node calls cross the same faulty network as clients (loss,
//! duplication, delay, partitions that isolate a node), and land on the peer's production
//! driver. Client `c` owns keys `c{c}-k0..2` and writes them in sequence (value = the write's
//! sequence number) through random nodes, mostly at `quorum`, sometimes at `all`, and reads
//! them back at `quorum`. The checker asserts:
//! - a quorum read sees the last write acknowledged before it started, or a later one (as
//!   the value or among the siblings);
//! - siblings only for concurrent writes: a read never returns two acknowledged writes of one
//!   key as siblings (each key's writes are sequential);
//! - after the faults heal and every node restarts, every acknowledged write is still there;
//! - after a read at `all` of every key, every replica holds the same versions (convergence
//!   through read repair and hinted handoff).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::kv::quorum::Consistency;
use tessera_core::kv::ring::DEFAULT_VNODES;
use tessera_core::kv::{KvRequest, KvResponse, Ring, Version};
use tessera_core::meta::{MetaRequest, MetaResponse, Placement};
use tessera_core::{CoreError, CoreResult};
use tessera_shell::kv_coordinator::{BoxFuture, PeerResult, Peers, Unreachable};

use crate::model::clip;
use crate::net::REQUEST_TIMEOUT;
use crate::node::Coordinator;
use crate::run::World;

const TENANT: &str = "sim";
const KEYS_PER_CLIENT: usize = 3;

#[derive(Debug, Default, Clone)]
pub struct KeyState {
    /// Highest sequence number acknowledged at quorum or all.
    last_acked: u64,
    /// Highest sequence number sent (acknowledged or not).
    attempted: u64,
    /// Every sequence number acknowledged at quorum or all.
    acked: std::collections::BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub struct KvModel {
    keys: BTreeMap<String, KeyState>,
}

/// One node's view of the others, over the simulated network.
pub struct SimPeers {
    world: Arc<World>,
    index: usize,
    skew_ms: i64,
    members: Vec<String>,
    placement: Arc<Placement>,
}

impl SimPeers {
    pub fn new(world: Arc<World>, index: usize, skew_ms: i64) -> SimPeers {
        let members: Vec<String> = (0..world.opts.nodes).map(|i| format!("n{i}")).collect();
        let ring = Ring::new(&members.iter().map(|m| (m.clone(), DEFAULT_VNODES)).collect::<Vec<_>>());
        let placement = Arc::new(Placement { version: 1, current: ring, previous: None });
        SimPeers { world, index, skew_ms, members, placement }
    }
}

async fn delay(world: &World) {
    let ms = world.rng_below(world.plan.max_delay_ms + 1);
    madsim::time::sleep(Duration::from_millis(ms)).await;
}

/// One node-to-node call through the faulty network.
async fn deliver(world: Arc<World>, from: usize, to: usize, req: KvRequest, timeout_ms: u64) -> PeerResult {
    let lost = |w: &World| w.nodes_cut(from, to) || (!w.lock().healed && w.chance(w.plan.loss));
    let timeout = Duration::from_millis(timeout_ms);
    let attempt = async {
        delay(&world).await;
        if lost(&world) {
            return None;
        }
        let handle = world.kv_handle(to)?;
        let out = handle.call(req).await.ok()?;
        delay(&world).await;
        if lost(&world) { None } else { Some(out) }
    };
    match madsim::time::timeout(timeout, attempt).await {
        Ok(Some(out)) => Ok(out),
        _ => Err(Unreachable(format!("n{to} gave no answer"))),
    }
}

impl Peers for SimPeers {
    fn me(&self) -> &str {
        &self.members[self.index]
    }

    fn members(&self) -> Vec<String> {
        self.members.clone()
    }

    fn placement(&self) -> Arc<Placement> {
        self.placement.clone()
    }

    fn now_ms(&self) -> u64 {
        (1_000_000 + self.world.elapsed_ms() as i64 + self.skew_ms) as u64
    }

    fn send(self: &Arc<Self>, node: &str, req: KvRequest, timeout_ms: u64) -> BoxFuture<PeerResult> {
        let world = self.world.clone();
        let (from, to) = (self.index, node.trim_start_matches('n').parse::<usize>().unwrap_or(usize::MAX));
        Box::pin(async move {
            if timeout_ms == 0 || to >= world.opts.nodes {
                return Err(Unreachable(format!("n{to}: no time left or not a member")));
            }
            if to == from {
                // This node's own replica: no network in between.
                let h = world.kv_handle(to).ok_or_else(|| Unreachable("this node's replica is down".into()))?;
                return h.call(req).await.map_err(|e| Unreachable(e.to_string()));
            }
            if !world.lock().healed && world.chance(world.plan.duplicate) {
                madsim::task::spawn(deliver(world.clone(), from, to, req.clone(), timeout_ms));
            }
            deliver(world, from, to, req, timeout_ms).await
        })
    }

    fn spawn(&self, fut: BoxFuture<()>) {
        madsim::task::spawn(fut);
    }

    fn meta(self: &Arc<Self>, req: MetaRequest, timeout_ms: u64) -> BoxFuture<CoreResult<MetaResponse>> {
        let world = self.world.clone();
        let me = self.index;
        Box::pin(async move {
            let h = world.meta_handle(me).ok_or_else(|| CoreError::Unavailable("metadata machine down".into()))?;
            match madsim::time::timeout(Duration::from_millis(timeout_ms), h.call(req)).await {
                Ok(Ok(out)) => out,
                _ => Err(CoreError::Unavailable(format!("no metadata answer within {timeout_ms} ms"))),
            }
        })
    }
}

/// Offers held hints to their nodes every 100 ms (tesserad: 500 ms), and runs an
/// anti-entropy pass every 400 ms (tesserad: 10 s).
pub async fn hand_off(coord: Coordinator) {
    let mut round = 0u64;
    loop {
        madsim::time::sleep(Duration::from_millis(100)).await;
        coord.hand_off_round().await;
        round += 1;
        if round.is_multiple_of(4) {
            coord.anti_entropy_pass().await;
        }
    }
}

/// Runs `op` on node `node`'s coordinator as a client request: through the client network,
/// on that node (a crash kills it), within the client's timeout. `None`: no answer.
async fn on_node<T, F, Fut>(world: &Arc<World>, client: usize, node: usize, op: F) -> Option<CoreResult<T>>
where
    T: Send + 'static,
    F: FnOnce(Coordinator, u64) -> Fut,
    Fut: std::future::Future<Output = CoreResult<T>> + Send + 'static,
{
    let started = world.elapsed_ms();
    let attempt = async {
        delay(world).await;
        if world.cut(client, node) || world.chance(world.plan.loss) {
            return None;
        }
        let (coord, id) = world.coordinator(node)?;
        // The coordinator gives up a little before the client does.
        let until = coord.peers().now_ms() + REQUEST_TIMEOUT.as_millis() as u64 - 50;
        let handle = madsim::runtime::Handle::current().get_node(id)?;
        let out = handle.spawn(op(coord, until)).await.ok()?;
        delay(world).await;
        if world.cut(client, node) || world.chance(world.plan.loss) { None } else { Some(out) }
    };
    let out = madsim::time::timeout(REQUEST_TIMEOUT, attempt).await.ok().flatten();
    if out.is_none() {
        let waited = world.elapsed_ms().saturating_sub(started);
        madsim::time::sleep(Duration::from_millis((REQUEST_TIMEOUT.as_millis() as u64).saturating_sub(waited))).await;
    }
    out
}

fn seqs(versions: &[Version]) -> Vec<u64> {
    versions.iter().filter_map(|v| std::str::from_utf8(v.value.as_deref()?).ok()?.parse().ok()).collect()
}

/// Creates the workload's tenant (RF 3) before any fault.
pub async fn setup(world: &Arc<World>) {
    for attempt in 0..20 {
        let Some((coord, id)) = world.coordinator(attempt % world.opts.nodes) else {
            madsim::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = coord.peers().now_ms();
        let Some(handle) = madsim::runtime::Handle::current().get_node(id) else { continue };
        // The first create may wait out the metadata group's first election.
        let done = handle.spawn(async move { coord.create_tenant(TENANT, 3, now + 6_000).await }).await;
        if matches!(done, Ok(Ok(_))) {
            world.event("kv tenant created".into());
            return;
        }
    }
    world.violation("kv: could not create the tenant before any fault".into());
}

pub async fn client(world: Arc<World>, client: usize, duration_ms: u64) {
    while world.elapsed_ms() < duration_ms {
        let key = format!("c{client}-k{}", world.rng_below(KEYS_PER_CLIENT as u64));
        let node = world.rng_below(world.opts.nodes as u64) as usize;
        if world.chance(0.55) {
            write(&world, client, node, &key).await;
        } else {
            read(&world, client, node, &key).await;
        }
    }
}

async fn write(world: &Arc<World>, client: usize, node: usize, key: &str) {
    let consistency = if world.chance(0.15) { Consistency::All } else { Consistency::Quorum };
    let seq = {
        let mut w = world.lock();
        let s = w.kv.keys.entry(key.to_owned()).or_default();
        s.attempted += 1;
        s.attempted
    };
    let k = key.to_owned();
    let out = on_node(world, client, node, move |c, until| async move {
        c.write(TENANT, &k, Some(seq.to_string().into_bytes()), consistency, String::new(), until).await
    })
    .await;
    let shown = match &out {
        Some(Ok(w)) => format!("acked by {} ({})", w.acks, consistency.name()),
        Some(Err(e)) => format!("refused: {e}"),
        None => "no answer".into(),
    };
    world.event(format!("c{client}->n{node} kv put {key}={seq} => {}", clip(&shown)));
    world.lock().ops += 1;
    if let Some(Ok(w)) = out {
        if w.acks < consistency.needed(3) {
            return world.violation(format!(
                "kv put {key}={seq} acked by {} replicas at {}",
                w.acks,
                consistency.name()
            ));
        }
        let mut g = world.lock();
        let s = g.kv.keys.entry(key.to_owned()).or_default();
        s.last_acked = s.last_acked.max(seq);
        s.acked.insert(seq);
    }
}

async fn read(world: &Arc<World>, client: usize, node: usize, key: &str) {
    let must_see = world.lock().kv.keys.get(key).map_or(0, |s| s.last_acked);
    let k = key.to_owned();
    let out =
        on_node(
            world,
            client,
            node,
            move |c, until| async move { c.read(TENANT, &k, Consistency::Quorum, until).await },
        )
        .await;
    let shown = match &out {
        Some(Ok(v)) => format!("{:?}", seqs(v)),
        Some(Err(e)) => format!("refused: {e}"),
        None => "no answer".into(),
    };
    world.event(format!("c{client}->n{node} kv get {key} => {}", clip(&shown)));
    world.lock().ops += 1;
    if let Some(Ok(v)) = out {
        let seen = seqs(&v);
        if must_see > 0 && !seen.iter().any(|s| *s >= must_see) {
            world.violation(format!(
                "kv get {key} at quorum saw {seen:?}, but write {must_see} was acknowledged before the read began"
            ));
        }
        // One client writes this key, one write at a time: two acknowledged writes are never
        // concurrent (the later began after the earlier was acknowledged at a quorum), so they
        // must not both survive as siblings.
        let acked: Vec<u64> = {
            let w = world.lock();
            let a = w.kv.keys.get(key).map(|s| s.acked.clone()).unwrap_or_default();
            // The same write twice (the network duplicated the request, and both copies were
            // coordinated at once) is one write, concurrent with itself.
            let distinct: std::collections::BTreeSet<u64> = seen.iter().copied().filter(|s| a.contains(s)).collect();
            distinct.into_iter().collect()
        };
        if acked.len() > 1 {
            let clocks: Vec<_> = v.iter().map(|x| x.clock.clone()).collect();
            world.violation(format!(
                "kv get {key} returned acknowledged sequential writes {acked:?} as siblings (of {seen:?}, clocks {clocks:?})"
            ));
        }
    }
}

/// After the heal and a restart of every node: with no client reading, hinted handoff and
/// anti-entropy alone bring every replica of every key to the same versions; then every
/// acknowledged write is readable at `all`.
pub async fn final_check(world: &Arc<World>) {
    let keys: Vec<(String, u64)> = world.lock().kv.keys.iter().map(|(k, s)| (k.clone(), s.last_acked)).collect();
    // A few anti-entropy rounds (every 400 ms per node).
    madsim::time::sleep(Duration::from_millis(2_000)).await;
    let members: Vec<(String, u32)> = (0..world.opts.nodes).map(|i| (format!("n{i}"), DEFAULT_VNODES)).collect();
    let ring = Ring::new(&members);
    for (key, _) in &keys {
        let mut per_node = Vec::new();
        let replicas = ring.replicas(TENANT, key, 3);
        for n in (0..world.opts.nodes).filter(|n| replicas.contains(&format!("n{n}").as_str())) {
            let Some(h) = world.kv_handle(n) else { continue };
            if let Ok(Ok(KvResponse::Versions(v))) =
                h.call(KvRequest::Read { tenant: TENANT.into(), key: key.clone() }).await
            {
                let mut clocks: Vec<_> = v.iter().map(|x| x.clock.clone()).collect();
                clocks.sort();
                per_node.push((n, clocks));
            }
        }
        if per_node.windows(2).any(|w| w[0].1 != w[1].1) {
            world.violation(format!("kv: replicas of {key} did not converge: {per_node:?}"));
        }
    }
    for (key, acked) in &keys {
        let mut seen = None;
        for attempt in 0..10 {
            let node = attempt % world.opts.nodes;
            let Some((coord, id)) = world.coordinator(node) else {
                madsim::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let until = coord.peers().now_ms() + 1_000;
            let k = key.clone();
            let Some(handle) = madsim::runtime::Handle::current().get_node(id) else { continue };
            let out = handle.spawn(async move { coord.read(TENANT, &k, Consistency::All, until).await }).await;
            if let Ok(Ok(v)) = out {
                seen = Some(seqs(&v));
                break;
            }
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
        match seen {
            None => world.violation(format!("kv: {key} unreadable at all after the heal")),
            Some(s) if *acked > 0 && !s.iter().any(|x| x >= acked) => {
                world.violation(format!("kv: acknowledged write {key}={acked} lost; replicas hold {s:?}"))
            }
            Some(_) => {}
        }
    }
}
