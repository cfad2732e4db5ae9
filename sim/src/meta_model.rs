//! The cluster-metadata workload and its checker (DESIGN §5, Metadata).
//!
//! Every node runs the production metadata machine (raft-rs) under the production driver;
//! its Raft messages cross the same faulty network as everything else ([`SimRaft`]). Clients
//! create tenants `m0..` and raise their replication factor through random nodes. The
//! checker asserts:
//! - one state per applied index: an observer polls every node's status, and two nodes (or
//!   one node before and after a crash) that report the same applied index must report the
//!   same state digest;
//! - an acknowledged factor change reports the factor it set, and an old one in range;
//! - after the heal, every node reaches the same applied index and digest, holds every
//!   acknowledged tenant, and holds no tenant that no client tried to create;
//! - each tenant's final factor is explained by a request: one never acknowledged (it may
//!   land late), or an acknowledged one that no acknowledged request began after it ended
//!   (else that later one overwrote it). No request at all leaves the factor at 1.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::CoreError;
use tessera_core::meta::{MetaRequest, MetaResponse, MetaStatus};
use tessera_shell::driver::Outbox;

use crate::model::clip;
use crate::run::World;

/// Tenants the workload creates.
const TENANTS: u64 = 4;

#[derive(Debug, Default)]
pub struct MetaModel {
    /// Tenants whose creation was attempted, and whether one was acknowledged.
    created: BTreeMap<String, bool>,
    /// Highest factor acknowledged per tenant (the workload's next request asks one more).
    factor: BTreeMap<String, u32>,
    /// Every factor change asked: (tenant, factor, started, ended if acknowledged).
    sets: Vec<(String, u32, u64, Option<u64>)>,
    /// Digest reported at each applied index.
    seen: BTreeMap<u64, ([u8; 16], String)>,
}

impl MetaModel {
    /// The widest replication factor any request asked for (answered or not): a storage node
    /// removal below it is refused unless forced.
    pub fn widest_asked(&self) -> u32 {
        self.sets.iter().map(|s| s.1).max().unwrap_or(1)
    }
}

/// A node's outbox for its Raft messages: each travels alone over the simulated network
/// (loss, duplication, delay hence reordering, partitions) to the peer's metadata driver.
pub struct SimRaft {
    pub world: Arc<World>,
    pub from: usize,
}

impl Outbox<Vec<u8>> for SimRaft {
    fn send(&self, to: String, msg: Vec<u8>) {
        let Some(to) = to.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()) else { return };
        let copies = if !self.world.lock().healed && self.world.chance(self.world.plan.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let (world, from, msg) = (self.world.clone(), self.from, msg.clone());
            madsim::task::spawn(async move {
                let ms = world.rng_below(world.plan.max_delay_ms + 1);
                madsim::time::sleep(Duration::from_millis(ms)).await;
                let lost = world.nodes_cut(from, to) || (!world.lock().healed && world.chance(world.plan.loss));
                if lost {
                    return;
                }
                if let Some(h) = world.meta_handle(to) {
                    let _ = h.call(MetaRequest::Raft { from: format!("n{from}"), msg }).await;
                }
            });
        }
    }
}

/// One request to a node's metadata machine, as a client's call through that node; also
/// whether the network sent it twice.
async fn call(
    world: &Arc<World>,
    client: usize,
    node: usize,
    req: MetaRequest,
) -> (Option<Result<MetaResponse, CoreError>>, bool) {
    let (out, duplicated) = crate::net::call_traced(world, client, node, pick, req).await;
    match out {
        crate::net::Outcome::Reply(r) => (Some(r), duplicated),
        crate::net::Outcome::Unknown => (None, duplicated),
    }
}

fn pick(world: &World, node: usize) -> Option<crate::node::MetaHandle> {
    world.meta_handle(node)
}

pub async fn client(world: Arc<World>, client: usize, until_ms: u64) {
    while world.elapsed_ms() < until_ms {
        madsim::time::sleep(Duration::from_millis(200 + world.rng_below(300))).await;
        let node = world.rng_below(world.opts.nodes as u64) as usize;
        let id = format!("m{}", world.rng_below(TENANTS));
        if world.chance(0.5) {
            world.lock().meta.created.entry(id.clone()).or_insert(false);
            let (out, _) =
                call(&world, client, node, MetaRequest::CreateTenant { id: id.clone(), replication_factor: 1 }).await;
            show(&world, client, node, &format!("create {id}"), &out);
            // A refusal: another client's create, or the network's copy of this one, came first.
            if let Some(Ok(MetaResponse::Created(_))) = out {
                world.lock().meta.created.insert(id.clone(), true);
                world.lock().meta.factor.entry(id).or_insert(1);
            }
        } else {
            // Each change asks one more than the last acknowledged factor.
            let next = world.lock().meta.factor.get(&id).copied().unwrap_or(1) + 1;
            if next > 10 {
                continue;
            }
            let req = MetaRequest::SetReplicationFactor { id: id.clone(), replication_factor: next };
            let started = world.elapsed_ms();
            let (out, duplicated) = call(&world, client, node, req).await;
            show(&world, client, node, &format!("set {id} rf={next}"), &out);
            let acked = matches!(out, Some(Ok(MetaResponse::ReplicationFactor { .. })));
            let ended = world.elapsed_ms();
            world.lock().meta.sets.push((id.clone(), next, started, acked.then_some(ended)));
            if duplicated {
                // The second copy is another request, unanswered, that may apply at any time.
                world.lock().meta.sets.push((id.clone(), next, started, None));
            }
            if let Some(Ok(MetaResponse::ReplicationFactor { old, new, .. })) = out {
                let mut w = world.lock();
                let was = w.meta.factor.get(&id).copied().unwrap_or(1);
                if new.replication_factor != next || !(1..=10).contains(&old) {
                    drop(w);
                    world.violation(format!(
                        "meta: set {id} rf={next} answered old={old} new={}",
                        new.replication_factor
                    ));
                    continue;
                }
                w.meta.factor.insert(id.clone(), was.max(next));
                w.meta.created.insert(id, true);
            }
        }
    }
}

fn show(world: &World, client: usize, node: usize, what: &str, out: &Option<Result<MetaResponse, CoreError>>) {
    let shown = match out {
        Some(Ok(r)) => format!("{r:?}"),
        Some(Err(e)) => format!("refused: {e}"),
        None => "no answer".into(),
    };
    world.event(format!("c{client}->n{node} meta {what} => {}", clip(&shown)));
    world.lock().ops += 1;
}

async fn status(world: &World, node: usize) -> Option<MetaStatus> {
    let h = world.meta_handle(node)?;
    match madsim::time::timeout(Duration::from_millis(100), h.call(MetaRequest::Status)).await {
        Ok(Ok(Ok(MetaResponse::Status(s)))) => Some(s),
        _ => None,
    }
}

fn record(world: &World, s: &MetaStatus) {
    let mut w = world.lock();
    match w.meta.seen.get(&s.applied) {
        Some((d, who)) if *d != s.digest => {
            let v = format!("meta: {} and {who} hold different metadata at applied index {}", s.node_id, s.applied);
            drop(w);
            world.violation(v);
        }
        Some(_) => {}
        None => {
            w.meta.seen.insert(s.applied, (s.digest, s.node_id.clone()));
        }
    }
}

/// Polls every node's applied index and digest every 50 ms until `until_ms`.
pub async fn observer(world: Arc<World>, until_ms: u64) {
    while world.elapsed_ms() < until_ms {
        madsim::time::sleep(Duration::from_millis(50)).await;
        for n in 0..world.opts.all_nodes() {
            if let Some(s) = status(&world, n).await {
                record(&world, &s);
            }
        }
    }
}

/// After the heal: every node converges on one applied index and state, holding every
/// acknowledged tenant with at least its last acknowledged factor.
pub async fn final_check(world: &Arc<World>) {
    // The node that joins later is a member only once it was added; a removed one leaves the
    // Raft group once its keys are handed over, and hears no more from it.
    let layout = crate::kv_model::newest_layout(world).await.unwrap_or_default();
    let members: Vec<usize> = (0..world.opts.all_nodes())
        .filter(|n| n < &world.opts.nodes || layout.by_id(&format!("n{n}")).is_some())
        .filter(|n| layout.by_id(&format!("n{n}")).is_none_or(|m| m.storage))
        .collect();
    let mut last = Vec::new();
    for _ in 0..60 {
        madsim::time::sleep(Duration::from_millis(100)).await;
        last.clear();
        for &n in &members {
            if let Some(s) = status(world, n).await {
                record(world, &s);
                last.push(s);
            }
        }
        if last.len() == members.len()
            && last.windows(2).all(|w| (w[0].applied, w[0].digest) == (w[1].applied, w[1].digest))
        {
            break;
        }
    }
    if last.len() < members.len() || last.windows(2).any(|w| (w[0].applied, w[0].digest) != (w[1].applied, w[1].digest))
    {
        let shown: Vec<String> =
            last.iter().map(|s| format!("{} applied {} leader {:?}", s.node_id, s.applied, s.leader)).collect();
        return world.violation(format!("meta: nodes did not converge after the heal: {shown:?}"));
    }
    let (created, sets) = {
        let w = world.lock();
        (w.meta.created.clone(), w.meta.sets.clone())
    };
    let explained = |id: &str, rf: u32| {
        let mine: Vec<&(String, u32, u64, Option<u64>)> = sets.iter().filter(|s| s.0 == id).collect();
        if mine.is_empty() || (rf == 1 && mine.iter().all(|s| s.3.is_none())) {
            return rf == 1 || mine.iter().any(|s| s.1 == rf);
        }
        mine.iter().filter(|s| s.1 == rf).any(|s| match s.3 {
            None => true,
            Some(end) => !mine.iter().any(|o| o.3.is_some() && o.2 > end),
        })
    };
    for &n in &members {
        let Some(h) = world.meta_handle(n) else { continue };
        for i in 0..TENANTS {
            let id = format!("m{i}");
            if created.contains_key(&id) {
                continue;
            }
            if let Ok(Ok(MetaResponse::Tenant(Some(_)))) =
                h.call(MetaRequest::Tenant { id: id.clone(), current: false }).await
            {
                world.violation(format!("meta: n{n} holds tenant {id}, which no client tried to create"));
            }
        }
        for id in created.iter().filter(|(_, a)| **a).map(|(id, _)| id) {
            let out = h.call(MetaRequest::Tenant { id: id.clone(), current: false }).await;
            match out {
                Ok(Ok(MetaResponse::Tenant(Some(t)))) => {
                    if !explained(id, t.replication_factor) {
                        world.violation(format!(
                            "meta: n{n} holds {id} at rf {}, which no request explains",
                            t.replication_factor
                        ));
                    }
                }
                other => world.violation(format!("meta: n{n} lost acknowledged tenant {id}: {other:?}")),
            }
        }
    }
}
