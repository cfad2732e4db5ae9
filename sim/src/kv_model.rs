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
//!
//! With `--tombstone-gc` the tombstone grace, the records' life and the hints' age shrink to
//! seconds, so tombstones are collected on each replica while clients go on. Then a read may
//! show nothing of a delete once its grace may have passed on some replica's clock, but never
//! a version that delete superseded nor an acknowledged write before it (a resurrection); and
//! in the end no replica keeps a key whose versions are all deletes past their grace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::kv::merkle::{TreeAnswer, TreeQuery};
use tessera_core::kv::quorum::Consistency;
use tessera_core::kv::ring::DEFAULT_VNODES;
use tessera_core::kv::{Causal, KvConfig, KvRequest, KvResponse, Version};
use tessera_core::meta::{Layout, MetaRequest, MetaResponse, Placement};
use tessera_core::{CoreError, CoreResult};
use tessera_shell::kv_coordinator::{BoxFuture, KeptResult, PeerResult, Peers, Unreachable, ViewCell, Written};

use crate::model::clip;
use crate::net::REQUEST_TIMEOUT;
use crate::node::Coordinator;
use crate::run::World;

const TENANT: &str = "sim";
const KEYS_PER_CLIENT: usize = 3;
/// Life of an idempotency record (tesserad: 24 h): longer than any run.
const RECORD_TTL_MS: u64 = 60_000;
/// With `--tombstone-gc`: tombstones go and records expire this long after their write...
pub const GC_GRACE_MS: u64 = 6_000;
/// ...hints older than this are not delivered (under the grace by more than the clocks'
/// spread, as tesserad's 3 h are under its 4 h or more)...
const GC_HINT_AGE_MS: u64 = 2_000;
/// ...and each node sweeps this often (tesserad: every minute).
const GC_SWEEP_MS: u64 = 250;
/// With `--tombstone-gc`: how long each client leaves its last key unwritten after a write.
const GC_REST_MS: u64 = 7_000;
/// Node clocks are off real time by at most this much (see `FaultPlan::skew_ms`)...
const MAX_SKEW_MS: u64 = 1_000;
/// ...and with `--tombstone-gc`, this much.
pub const GC_MAX_SKEW_MS: u64 = 250;

/// A node's key-value configuration in this run.
pub fn kv_config(opts: &crate::run::Options, node: &str) -> KvConfig {
    let config = KvConfig { idempotency_ttl_ms: RECORD_TTL_MS, ..KvConfig::new(node) };
    match opts.tombstone_gc {
        false => config,
        true => KvConfig {
            idempotency_ttl_ms: GC_GRACE_MS,
            tombstone_grace_ms: GC_GRACE_MS,
            hint_max_age_ms: GC_HINT_AGE_MS,
            sweep_every_ms: GC_SWEEP_MS,
            ..config
        },
    }
}

/// The tombstone grace of this run, when it is short enough to pass within it.
fn gc_grace(world: &World) -> Option<u64> {
    world.opts.tombstone_gc.then_some(GC_GRACE_MS)
}

/// How far node clocks are off real time at most in this run.
fn max_skew(world: &World) -> u64 {
    if world.opts.tombstone_gc { GC_MAX_SKEW_MS } else { MAX_SKEW_MS }
}

/// Whether a write first sent at `started_ms` may still be replayed as a duplicate: its
/// record lives the records' life from its coordination by the coordinator's clock, checked
/// by a replica's clock, and the replay takes up to a request timeout to get there.
fn replayable_now(world: &World, started_ms: u64) -> bool {
    let ttl = kv_config(&world.opts, "").idempotency_ttl_ms;
    let window = ttl - 2 * max_skew(world) - REQUEST_TIMEOUT.as_millis() as u64 - 100;
    world.elapsed_ms() < started_ms + window
}

#[derive(Debug, Default, Clone)]
pub struct KeyState {
    /// Highest sequence number acknowledged at quorum or all.
    last_acked: u64,
    /// Highest sequence number sent (acknowledged or not).
    attempted: u64,
    /// The clocks each acknowledged write or delete was acknowledged with: the acknowledged
    /// version is the one with that clock. A write may leave other versions of its value,
    /// unacknowledged, which may stand beside later writes as any unacknowledged write may:
    /// a coordination whose answer was lost, before another replica coordinated it; a request
    /// the network duplicated; a first attempt whose replay found no record and wrote anew.
    /// And a delete's tombstone carries no sequence number: its clock is how a read shows it.
    clocks: BTreeMap<u64, Vec<tessera_core::kv::VClock>>,
    /// When its last write or delete was sent.
    last_sent_ms: u64,
    /// Deletes sent, acknowledged or not: when the first attempt of each was sent (its
    /// tombstone's time is no earlier, by the clock of the node that coordinated it).
    deletes: BTreeMap<u64, u64>,
}

impl KeyState {
    /// The acknowledged write or delete `v` is, if it is one.
    fn acked_as(&self, v: &Version) -> Option<u64> {
        match seq(v) {
            Some(s) => self.clocks.get(&s).is_some_and(|cs| cs.contains(&v.clock)).then_some(s),
            None => self.clocks.iter().find(|(_, cs)| cs.contains(&v.clock)).map(|(s, _)| *s),
        }
    }
}

#[derive(Debug, Default)]
pub struct KvModel {
    keys: BTreeMap<String, KeyState>,
    /// The smallest factor the tenant was asked to take (it may apply at any moment after
    /// the ask), below its first of 3: a write's acknowledgements are counted against it.
    smallest_factor: Option<u32>,
    /// Acknowledged writes with the client's own idempotency key, which clients replay
    /// later, maybe after a layout change.
    replayable: Vec<Put>,
    /// Reads that found nothing of a key whose last acknowledged write was a delete: its
    /// tombstones were collected (with `--tombstone-gc`).
    collected_reads: u64,
}

/// One node's view of the others, over the simulated network.
pub struct SimPeers {
    world: Arc<World>,
    index: usize,
    name: String,
    skew_ms: i64,
    /// The layout this node serves by: its members and placement, following the applied one.
    view: ViewCell,
}

/// How long after a layout change starts old owners begin handing keys over (nodes follow
/// the layout every 100 ms here).
pub const HAND_OVER_GRACE_MS: u64 = 400;

impl SimPeers {
    /// A node's peers as of `layout`, the one its metadata machine opened with (as tesserad
    /// starts from its stored layout); a node that has not joined yet has none.
    pub fn new(world: Arc<World>, index: usize, skew_ms: i64, layout: Layout) -> SimPeers {
        SimPeers { world, index, name: format!("n{index}"), skew_ms, view: ViewCell::new(layout) }
    }

    /// The layout this node serves by and its replica's fence.
    pub fn view(&self) -> &ViewCell {
        &self.view
    }
}

/// Follows this node's applied layout every 100 ms (tesserad: 200 ms).
pub async fn follow_layout(peers: Arc<SimPeers>) {
    loop {
        madsim::time::sleep(Duration::from_millis(100)).await;
        let Some(h) = peers.world.meta_handle(peers.index) else { continue };
        if let Ok(Ok(MetaResponse::Layout(layout))) = h.call(MetaRequest::Layout).await {
            peers.view.follow(layout);
        }
    }
}

async fn delay(world: &World) {
    let ms = world.rng_below(world.plan.max_delay_ms + 1);
    madsim::time::sleep(Duration::from_millis(ms)).await;
}

/// The replica's side of a call: refused if placed by a layout older than the node's own or
/// its fence floor (as tesserad's peer service does), else served by its driver. `None`: the
/// node is down.
async fn serve(world: &World, to: usize, req: KvRequest, layout: u64) -> Option<CoreResult<KvResponse>> {
    let peers = world.coordinator(to).map(|(c, _)| c.peers().clone())?;
    let (req, verdict) = admit(world, to, &peers, req, layout).await?;
    if let Err(e) = verdict {
        return Some(Err(e));
    }
    let out = world.kv_handle(to)?.call(req).await.ok()?;
    peers.view().observe(&out);
    Some(out)
}

/// The fence's verdict on `req` for node `to`'s replica (`ViewCell::admit_one`, as tesserad's
/// peer service has it). `None`: the node is down.
async fn admit(
    world: &World,
    to: usize,
    peers: &SimPeers,
    req: KvRequest,
    layout: u64,
) -> Option<(KvRequest, CoreResult<()>)> {
    let handle = world.kv_handle(to)?;
    peers.view().admit_one(req, layout, |placed| handle.call(placed)).await.ok()
}

/// A message from node `from` to node `to` and its answer, through the faulty network: each
/// way delayed, and lost if the two are cut apart or (before the heal) by chance. `None` when
/// no answer came within `timeout_ms`; `call` is the receiving side (`None`: it is down).
async fn cross<T>(
    world: &World,
    from: usize,
    to: usize,
    timeout_ms: u64,
    call: impl std::future::Future<Output = Option<T>>,
) -> Option<T> {
    let lost = |w: &World| w.nodes_cut(from, to) || (!w.lock().healed && w.chance(w.plan.loss));
    let attempt = async {
        delay(world).await;
        if lost(world) {
            return None;
        }
        let out = call.await?;
        delay(world).await;
        if lost(world) { None } else { Some(out) }
    };
    madsim::time::timeout(Duration::from_millis(timeout_ms), attempt).await.ok().flatten()
}

/// One node-to-node call to a replica through the faulty network.
async fn deliver(
    world: Arc<World>,
    from: usize,
    to: usize,
    req: KvRequest,
    layout: u64,
    timeout_ms: u64,
) -> PeerResult {
    cross(&world, from, to, timeout_ms, serve(&world, to, req, layout))
        .await
        .ok_or_else(|| Unreachable(format!("n{to} gave no answer")))
}

impl Peers for SimPeers {
    fn me(&self) -> &str {
        &self.name
    }

    fn members(&self) -> Vec<String> {
        self.view.get().layout.data_nodes()
    }

    fn placement(&self) -> Arc<Placement> {
        self.view.get().placement.clone()
    }

    fn follow(&self, layout: Layout) {
        self.view.follow(layout);
    }

    fn now_ms(&self) -> u64 {
        (1_000_000 + self.world.elapsed_ms() as i64 + self.skew_ms) as u64
    }

    fn send_at(self: &Arc<Self>, node: &str, req: KvRequest, layout: u64, timeout_ms: u64) -> BoxFuture<PeerResult> {
        let world = self.world.clone();
        let (from, to) = (self.index, node.trim_start_matches('n').parse::<usize>().unwrap_or(usize::MAX));
        Box::pin(async move {
            if timeout_ms == 0 || to >= world.opts.all_nodes() {
                return Err(Unreachable(format!("n{to}: no time left or not a member")));
            }
            if to == from {
                // This node's own replica: no network in between.
                return serve(&world, to, req, layout)
                    .await
                    .ok_or_else(|| Unreachable("this node's replica is down".into()));
            }
            if !world.lock().healed && world.chance(world.plan.duplicate) {
                madsim::task::spawn(deliver(world.clone(), from, to, req.clone(), layout, timeout_ms));
            }
            deliver(world, from, to, req, layout, timeout_ms).await
        })
    }

    fn coordinate_here(self: &Arc<Self>, req: KvRequest, layout: u64) -> BoxFuture<KeptResult> {
        let (world, me) = (self.world.clone(), self.index);
        Box::pin(async move {
            let down = || Unreachable("this node's replica is down".into());
            let peers = world.coordinator(me).map(|(c, _)| c.peers().clone()).ok_or_else(down)?;
            let (req, verdict) = admit(&world, me, &peers, req, layout).await.ok_or_else(down)?;
            if let Err(e) = verdict {
                return Ok((Err(e), None));
            }
            let (out, durable) =
                world.kv_handle(me).ok_or_else(down)?.call_early(req).await.map_err(|e| Unreachable(e.to_string()))?;
            peers.view().observe(&out);
            Ok((out, Some(durable)))
        })
    }

    fn tree(
        self: &Arc<Self>,
        node: &str,
        query: TreeQuery,
        layout: u64,
        timeout_ms: u64,
    ) -> BoxFuture<CoreResult<TreeAnswer>> {
        let (world, from) = (self.world.clone(), self.name.clone());
        let (me, to) = (self.index, node.trim_start_matches('n').parse::<usize>().unwrap_or(usize::MAX));
        Box::pin(async move {
            if to >= world.opts.all_nodes() {
                return Err(CoreError::Unavailable(format!("n{to}: not a member")));
            }
            // On the peer's node, as tesserad's peer service runs it: a crash there ends it.
            let answer = async {
                let (coord, id) = world.coordinator(to)?;
                let handle = madsim::runtime::Handle::current().get_node(id)?;
                handle.spawn(async move { coord.answer_tree(&from, layout, query).await }).await.ok()
            };
            // tesserad waits long for a peer scanning many keys; the simulator's nodes hold a
            // few, and a lost message must not stall the node's background loop.
            let timeout_ms = timeout_ms.min(tessera_shell::kv_coordinator::PEER_TIMEOUT_MS);
            cross(&world, me, to, timeout_ms, answer)
                .await
                .unwrap_or_else(|| Err(CoreError::Unavailable(format!("n{to} gave no answer"))))
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

/// Offers held hints to their nodes every 100 ms (tesserad: 500 ms), hands keys over to
/// new owners every 200 ms when a layout change says so (tesserad: 1 s), and runs an
/// anti-entropy pass every 400 ms (tesserad: 10 s).
pub async fn hand_off(coord: Coordinator) {
    let mut round = 0u64;
    loop {
        madsim::time::sleep(Duration::from_millis(100)).await;
        coord.hand_off_round().await;
        round += 1;
        if round.is_multiple_of(2) {
            let _ = coord.hand_over_pass().await;
        }
        if round.is_multiple_of(4) {
            let r = coord.anti_entropy_pass().await;
            if r.repaired > 0 {
                let me = coord.peers().me().to_owned();
                coord.peers().world.event(format!(
                    "{me} anti-entropy: {} peers, {} ranges and {} segments differ, {} keys compared, {} repaired",
                    r.peers, r.ranges_differing, r.segments_differing, r.keys_compared, r.repaired
                ));
            }
        }
    }
}

/// Removes stale copies every 200 ms once a layout change has finished (tesserad: 1 s), in
/// a task of its own as in tesserad.
pub async fn clean_up(coord: Coordinator) {
    loop {
        madsim::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Some(n @ 1..)) = coord.clean_up_pass().await {
            let me = coord.peers().me().to_owned();
            coord.peers().world.event(format!("{me} removed {n} stale copies"));
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

/// The sequence number a version's value carries (none for a delete).
fn seq(v: &Version) -> Option<u64> {
    std::str::from_utf8(v.value.as_deref()?).ok()?.parse().ok()
}

fn seqs(versions: &[Version]) -> Vec<u64> {
    versions.iter().filter_map(seq).collect()
}

/// A read's versions for the trace: the values' numbers, and how many tombstones.
fn shown_versions(versions: &[Version]) -> String {
    let deletes = versions.iter().filter(|v| v.value.is_none()).count();
    match deletes {
        0 => format!("{:?}", seqs(versions)),
        n => format!("{:?} and {n} deleted", seqs(versions)),
    }
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
        // ALREADY_EXISTS: an earlier attempt committed after its caller had given up on it
        // (the group's first election took most of its deadline).
        if matches!(done, Ok(Ok(_) | Err(CoreError::AlreadyExists(_)))) {
            world.event("kv tenant created".into());
            return;
        }
        let why = match done {
            Ok(Err(e)) => e.to_string(),
            _ => "the node went away".into(),
        };
        world.event(format!("kv tenant create through n{}: {}", attempt % world.opts.nodes, clip(&why)));
    }
    world.violation("kv: could not create the tenant before any fault".into());
}

pub async fn client(world: Arc<World>, client: usize, until_ms: u64) {
    while world.elapsed_ms() < until_ms {
        let key = format!("c{client}-k{}", world.rng_below(KEYS_PER_CLIENT as u64));
        let node = world.rng_below(world.opts.all_nodes() as u64) as usize;
        if world.chance(0.04) {
            late_replay(&world, client, node).await;
        } else if world.chance(0.55) && !resting(&world, &key) {
            write(&world, client, node, &key).await;
        } else {
            read(&world, client, node, &key).await;
        }
    }
}

/// With tombstones collected in the run, each client's last key is written only every
/// [`GC_REST_MS`] (half of the writes deletes) and read in between: so reads find a key whose
/// tombstones went, under faults, and the next write comes to a key collected on some
/// replicas and maybe not on others.
fn resting(world: &World, key: &str) -> bool {
    rests(world, key) && world.lock().kv.keys.get(key).is_some_and(|s| world.elapsed_ms() < s.last_sent_ms + GC_REST_MS)
}

/// Whether `key` is a client's last key in a run that collects tombstones (see [`resting`]).
fn rests(world: &World, key: &str) -> bool {
    world.opts.tombstone_gc && key.ends_with(&format!("-k{}", KEYS_PER_CLIENT - 1))
}

/// One write or delete of a client's key, as sent (and sent again).
#[derive(Debug, Clone)]
struct Put {
    key: String,
    /// The write's place in the key's sequence; a write's value is this number.
    seq: u64,
    delete: bool,
    consistency: Consistency,
    /// The client's idempotency key, or empty (the server generates one).
    idem: String,
    /// When its first attempt was sent.
    started_ms: u64,
}

async fn write(world: &Arc<World>, client: usize, node: usize, key: &str) {
    let consistency = if world.chance(0.15) { Consistency::All } else { Consistency::Quorum };
    let delete = world.chance(if rests(world, key) { 0.5 } else { 0.15 });
    let started_ms = world.elapsed_ms();
    let seq = {
        let mut w = world.lock();
        let s = w.kv.keys.entry(key.to_owned()).or_default();
        s.attempted += 1;
        s.last_sent_ms = started_ms;
        if delete {
            s.deletes.insert(s.attempted, started_ms);
        }
        s.attempted
    };
    // Some writes carry the client's own idempotency key, and are retried with it through a
    // random node (maybe the same) when no answer came or the write was refused, and some
    // acknowledged ones once more.
    let idem = if world.chance(0.3) { format!("c{client}-{key}-{seq}") } else { String::new() };
    let op = Put { key: key.to_owned(), seq, delete, consistency, idem: idem.clone(), started_ms };
    let first = put(world, client, node, &op, "put").await;
    let first_acked = matches!(first, Some(Ok(_)));
    if first_acked && !idem.is_empty() {
        world.lock().kv.replayable.push(op.clone());
    }
    if idem.is_empty() || (first_acked && !world.chance(0.3)) {
        return;
    }
    let other = world.rng_below(world.opts.all_nodes() as u64) as usize;
    let again = put(world, client, other, &op, "replay").await;
    // A replay of an acknowledged write is a duplicate, whichever node it comes through: the
    // replicas that acknowledged it hold its record, a hand-over takes it to new owners, and
    // a quorum of any set meets them.
    if first_acked
        && let Some(Ok(w)) = &again
        && !w.duplicate
    {
        world.violation(format!("kv replay of acknowledged put {key}={seq} (key {idem:?}) was taken for a new write"));
    }
}

/// Replays one of this client's acknowledged writes with its own idempotency key through
/// `node`, however long ago it was written and whatever moved since: it must be a duplicate
/// (its record outlives the run, and follows its key to new owners), and change nothing. (The
/// client's own: a key is written by one client at a time, which the checks rely on.)
async fn late_replay(world: &Arc<World>, client: usize, node: usize) {
    let mine = format!("c{client}-");
    let own: Vec<Put> = world
        .lock()
        .kv
        .replayable
        .iter()
        .filter(|p| p.key.starts_with(&mine) && replayable_now(world, p.started_ms))
        .cloned()
        .collect();
    if own.is_empty() {
        return;
    }
    let op = own[world.rng_below(own.len() as u64) as usize].clone();
    let before = world.lock().kv.keys.get(&op.key).cloned().unwrap_or_default();
    match put(world, client, node, &op, "late replay").await {
        Some(Ok(w)) if !w.duplicate => world.violation(format!(
            "kv late replay of acknowledged put {}={} (key {:?}) was taken for a new write",
            op.key, op.seq, op.idem
        )),
        // Overwritten since: the replay must change nothing, so it answers the clock the write
        // was acknowledged with, or the one before its supersede step (the record's); a new
        // one would be a new version of the old value.
        Some(Ok(w))
            if before.last_acked > op.seq
                && !before.clocks.get(&op.seq).is_some_and(|cs| {
                    cs.iter().any(|c| matches!(w.clock.compare(c), Causal::Before | Causal::Equal))
                }) =>
        {
            world.violation(format!(
                "kv late replay of {}={}, overwritten by {} since, wrote it again",
                op.key, op.seq, before.last_acked
            ))
        }
        _ => {}
    }
}

/// One attempt at writing `seq` to `key` through `node`; an acknowledgement is recorded in
/// the model.
#[allow(clippy::too_many_arguments)]
async fn put(world: &Arc<World>, client: usize, node: usize, op: &Put, what: &str) -> Option<CoreResult<Written>> {
    let (key, seq, consistency) = (op.key.as_str(), op.seq, op.consistency);
    let (k, i) = (key.to_owned(), op.idem.clone());
    let value = (!op.delete).then(|| seq.to_string().into_bytes());
    let out =
        on_node(
            world,
            client,
            node,
            move |c, until| async move { c.write(TENANT, &k, value, consistency, i, until).await },
        )
        .await;
    let what = if op.delete { format!("{what} (delete)") } else { what.to_owned() };
    let shown = match &out {
        Some(Ok(w)) if w.duplicate => format!("acked by {} ({}), duplicate", w.acks, consistency.name()),
        Some(Ok(w)) => format!("acked by {} ({})", w.acks, consistency.name()),
        Some(Err(e)) => format!("refused: {e}"),
        None => "no answer".into(),
    };
    world.event(format!("c{client}->n{node} kv {what} {key}={seq} => {}", clip(&shown)));
    world.lock().ops += 1;
    if let Some(Ok(w)) = &out {
        let rf = world.lock().kv.smallest_factor.unwrap_or(3).min(3);
        if w.acks < consistency.needed(rf as usize) {
            world.violation(format!("kv {what} {key}={seq} acked by {} replicas at {}", w.acks, consistency.name()));
            return out;
        }
        let mut g = world.lock();
        let s = g.kv.keys.entry(key.to_owned()).or_default();
        s.last_acked = s.last_acked.max(seq);
        let clocks = s.clocks.entry(seq).or_default();
        if !clocks.contains(&w.clock) {
            clocks.push(w.clock.clone());
        }
    }
    out
}

/// Whether the tombstones of a delete first sent at `started_ms` may be gone by `now_ms` on
/// some replica (collected after the run's grace, if tombstones are collected in it): its
/// coordinator's clock, and the collecting replica's, are each off by up to `GC_MAX_SKEW_MS`.
fn collectable(started_ms: u64, now_ms: u64, grace_ms: Option<u64>) -> bool {
    grace_ms.is_some_and(|grace| now_ms >= started_ms + grace.saturating_sub(2 * GC_MAX_SKEW_MS))
}

/// Whether a read's `versions` show the last write or delete `state` knows acknowledged, or
/// a later one: a value numbered at least that, or a tombstone at or after its clock (a
/// delete that saw it; not an earlier acknowledged delete, as a replay of one would make if
/// it wrote anew). A delete that did not see it leaves it a sibling.
///
/// Unless that was a delete, or a delete was sent after it (acknowledged or not, it may have
/// taken effect), whose grace may have passed by `now_ms` on some replica's clock
/// (`grace_ms`: the run's, if tombstones are collected in it): its tombstones may be gone,
/// and with them versions concurrent with it that were never acknowledged (a spent delete
/// leaves any set it stands in). What is left must still not be a version the last
/// acknowledged write or delete superseded, nor an acknowledged one before it: that would
/// be a resurrection.
fn sees(versions: &[Version], state: &KeyState, now_ms: u64, grace_ms: Option<u64>) -> bool {
    let must_see = state.last_acked;
    let clocks = state.clocks.get(&must_see).map_or(&[][..], Vec::as_slice);
    let seen = must_see == 0
        || seqs(versions).iter().any(|s| *s >= must_see)
        || versions.iter().any(|v| {
            v.value.is_none()
                && state.acked_as(v).is_none_or(|s| s >= must_see)
                && clocks.iter().any(|c| matches!(v.clock.compare(c), Causal::After | Causal::Equal))
        });
    let collectable = state.deletes.range(must_see..).any(|(_, started)| collectable(*started, now_ms, grace_ms));
    seen || (collectable
        && versions.iter().all(|v| {
            state.acked_as(v).is_none_or(|s| s > must_see)
                && !clocks.iter().any(|c| matches!(v.clock.compare(c), Causal::Before | Causal::Equal))
        }))
}

async fn read(world: &Arc<World>, client: usize, node: usize, key: &str) {
    let at_start = world.lock().kv.keys.get(key).cloned().unwrap_or_default();
    let must_see = at_start.last_acked;
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
        Some(Ok(v)) => shown_versions(v),
        Some(Err(e)) => format!("refused: {e}"),
        None => "no answer".into(),
    };
    world.event(format!("c{client}->n{node} kv get {key} => {}", clip(&shown)));
    world.lock().ops += 1;
    if let Some(Ok(v)) = out {
        let (now, grace) = (world.elapsed_ms(), gc_grace(world));
        let seen = shown_versions(&v);
        if v.is_empty() && at_start.deletes.contains_key(&must_see) {
            world.lock().kv.collected_reads += 1;
        }
        if !sees(&v, &at_start, now, grace) {
            let held = replicas_hold(world, key).await;
            world.violation(format!(
                "kv get {key} at quorum saw {seen}, but write {must_see} was acknowledged before the read began \
                 (replicas hold {held})"
            ));
        }
        // One client writes this key, one write at a time: two acknowledged writes are never
        // concurrent (the later began after the earlier was acknowledged at a quorum), so they
        // must not both survive as siblings.
        let acked: Vec<u64> = {
            let w = world.lock();
            let Some(state) = w.kv.keys.get(key) else { return };
            // Only the versions acknowledged count (see `KeyState::clocks`).
            let mut distinct: std::collections::BTreeSet<u64> = v.iter().filter_map(|x| state.acked_as(x)).collect();
            // Except a delete whose grace may have passed on some clock, beside a later write:
            // a node that collected its tombstones coordinated that write without it, and
            // a node whose clock runs behind keeps it until its own clock says the grace
            // passed (a reader is shown the value: see `live_winner`).
            let last = distinct.last().copied().unwrap_or(0);
            distinct.retain(|s| *s == last || !state.deletes.get(s).is_some_and(|at| collectable(*at, now, grace)));
            distinct.into_iter().collect()
        };
        if acked.len() > 1 {
            let clocks: Vec<_> = v.iter().map(|x| x.clock.clone()).collect();
            world.violation(format!(
                "kv get {key} returned acknowledged sequential writes {acked:?} as siblings (of {seen}, clocks {clocks:?})"
            ));
        }
    }
}

/// What each node holds for `key` (the versions' numbers or deletes, times and clocks), for
/// a violation's report.
async fn replicas_hold(world: &World, key: &str) -> String {
    let mut out = Vec::new();
    for n in 0..world.opts.all_nodes() {
        let shown = match held_on(world, n, key).await {
            Ok(v) => v
                .iter()
                .map(|x| format!("{}@{} {:?}", seq(x).map_or("deleted".into(), |s| s.to_string()), x.ts_ms, x.clock.0))
                .collect::<Vec<_>>()
                .join(", "),
            Err(why) => why,
        };
        out.push(format!("n{n}: [{shown}]"));
    }
    out.join("; ")
}

/// What node `n`'s replica holds for `key`, read from its driver directly; or why it cannot
/// tell (the node is down, or its driver did not answer).
async fn held_on(world: &World, n: usize, key: &str) -> Result<Vec<Version>, String> {
    let h = world.kv_handle(n).ok_or_else(|| "the node is down".to_owned())?;
    match h.call(KvRequest::Read { tenant: TENANT.into(), key: key.to_owned() }).await {
        Ok(Ok(KvResponse::Versions(v))) => Ok(v),
        other => Err(format!("unreadable: {other:?}")),
    }
}

/// After the heal and a restart of every node: with no client reading, hinted handoff and
/// anti-entropy alone bring every replica of every key to the same versions; then every
/// acknowledged write is readable at `all`.
pub async fn final_check(world: &Arc<World>) {
    let keys: Vec<(String, u64)> = world.lock().kv.keys.iter().map(|(k, s)| (k.clone(), s.last_acked)).collect();
    let states = world.lock().kv.keys.clone();
    // A layout change still under way finishes once its old owners have handed over.
    let settled = |l: &Layout| l.previous.is_none() && l.rf_change.is_none();
    let Some(layout) = await_layout(world, settled, world.elapsed_ms() + 15_000).await else {
        return world.violation("kv: the layout change did not finish within 15 s of the heal".into());
    };
    world.event(format!("kv final layout v{}: ring {:?}", layout.version, layout.ring_nodes()));
    let ring = Placement::new(&layout).current;
    let Some(rf) = factor(world).await else {
        return world.violation(format!("kv: no node knows tenant {TENANT} after the heal"));
    };
    // Anti-entropy runs every 400 ms per node, each pass with the peers it reaches: within a
    // few seconds every key's replicas hold the same versions.
    let until = world.elapsed_ms() + 8_000;
    loop {
        madsim::time::sleep(Duration::from_millis(500)).await;
        let mut diverged = Vec::new();
        for (key, _) in &keys {
            let mut per_node = Vec::new();
            let replicas = ring.replicas(TENANT, key, rf as usize);
            for n in (0..world.opts.all_nodes()).filter(|n| replicas.contains(&format!("n{n}").as_str())) {
                if let Ok(v) = held_on(world, n, key).await {
                    let mut clocks: Vec<_> = v.iter().map(|x| x.clock.clone()).collect();
                    clocks.sort();
                    per_node.push((n, clocks));
                }
            }
            if per_node.windows(2).any(|w| w[0].1 != w[1].1) {
                diverged.push(format!("kv: replicas of {key} did not converge within 8 s of the heal: {per_node:?}"));
            }
        }
        if diverged.is_empty() {
            break;
        }
        if world.elapsed_ms() >= until {
            for d in diverged {
                world.violation(d);
            }
            break;
        }
    }
    stale_copies_go(world, &ring, rf, &keys).await;
    replays_after_the_heal(world).await;
    for (key, acked) in &keys {
        let mut seen = None;
        for attempt in 0..10 {
            let node = attempt % world.opts.all_nodes();
            let Some((coord, id)) = world.coordinator(node) else {
                madsim::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let until = coord.peers().now_ms() + 1_000;
            let k = key.clone();
            let Some(handle) = madsim::runtime::Handle::current().get_node(id) else { continue };
            let out = handle.spawn(async move { coord.read(TENANT, &k, Consistency::All, until).await }).await;
            if let Ok(Ok(v)) = out {
                seen = Some(v);
                break;
            }
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
        match seen {
            None => world.violation(format!("kv: {key} unreadable at all after the heal")),
            Some(v) if !states.get(key).is_none_or(|s| sees(&v, s, world.elapsed_ms(), gc_grace(world))) => world
                .violation(format!("kv: acknowledged write {key}={acked} lost; replicas hold {}", shown_versions(&v))),
            Some(_) => {}
        }
    }
    if let Some(grace) = gc_grace(world) {
        tombstones_collected(world, grace, &keys, &layout).await;
    }
}

/// With tombstones collected in the run: once every delete is past its grace on every clock
/// (clients stopped at the heal), no node of the final layout keeps a tombstone, alone or
/// beside a value. (A node the layout changes left behind, say one whose join was cancelled,
/// may never learn it was removed: what it holds is served to no one.)
async fn tombstones_collected(world: &Arc<World>, grace: u64, keys: &[(String, u64)], layout: &Layout) {
    let members = layout.data_nodes();
    madsim::time::sleep(Duration::from_millis(grace + 2 * MAX_SKEW_MS + 4 * GC_SWEEP_MS)).await;
    let mut kept = Vec::new();
    let mut gone = 0;
    for (key, _) in keys {
        let mut empty = 0;
        for n in (0..world.opts.all_nodes()).filter(|n| members.contains(&format!("n{n}"))) {
            match held_on(world, n, key).await {
                Ok(v) if v.is_empty() => empty += 1,
                // Alone or beside a value: every delete was sent before the heal.
                Ok(v) if v.iter().any(|x| x.value.is_none()) => {
                    kept.push(format!("n{n}:{key} ({})", shown_versions(&v)))
                }
                Ok(_) => {}
                Err(why) => kept.push(format!("n{n}:{key} ({why})")),
            }
        }
        gone += usize::from(empty == members.len());
    }
    let reads = world.lock().kv.collected_reads;
    world.event(format!(
        "kv: {gone} keys collected on every node; {reads} reads found a deleted key collected while clients ran"
    ));
    if !kept.is_empty() {
        world.violation(format!("kv: tombstones past their grace not collected (or not checked): {}", kept.join(", ")));
    }
}

/// Replays up to 30 acknowledged writes with the client's own idempotency keys through random
/// nodes, once the network has healed and any layout change has finished: each must be a
/// duplicate, whatever moved since it was written (and the checks after this one see that
/// it changed nothing).
async fn replays_after_the_heal(world: &Arc<World>) {
    let ops: Vec<Put> =
        world.lock().kv.replayable.iter().filter(|p| replayable_now(world, p.started_ms)).cloned().collect();
    let n = ops.len() as u64;
    for _ in 0..n.min(30) {
        let i = world.rng_below(n) as usize;
        let op = ops[i].clone();
        // Replays before this one may have taken long (a node waiting for metadata).
        if !replayable_now(world, op.started_ms) {
            continue;
        }
        let node = world.rng_below(world.opts.all_nodes() as u64) as usize;
        let Some((coord, id)) = world.coordinator(node) else { continue };
        let Some(handle) = madsim::runtime::Handle::current().get_node(id) else { continue };
        let until = coord.peers().now_ms() + 1_000;
        let value = (!op.delete).then(|| op.seq.to_string().into_bytes());
        let (key, idem, consistency) = (op.key.clone(), op.idem.clone(), op.consistency);
        let out = handle.spawn(async move { coord.write(TENANT, &key, value, consistency, idem, until).await }).await;
        let shown = match &out {
            Ok(Ok(w)) => format!("duplicate={}", w.duplicate),
            Ok(Err(e)) => format!("refused: {e}"),
            Err(_) => "the node went away".into(),
        };
        world.event(format!("n{node} kv replay after the heal {}={} => {}", op.key, op.seq, clip(&shown)));
        if let Ok(Ok(w)) = out
            && !w.duplicate
        {
            world.violation(format!(
                "kv replay after the heal of acknowledged put {}={} (key {:?}) was taken for a new write",
                op.key, op.seq, op.idem
            ));
        }
    }
}

/// Within 10 s of the checks above, no node of the settled ring holds a copy of a key it does
/// not replicate (each removes its stale copies once a change has finished).
async fn stale_copies_go(world: &Arc<World>, ring: &tessera_core::kv::Ring, rf: u32, keys: &[(String, u64)]) {
    let until = world.elapsed_ms() + 10_000;
    loop {
        let mut stale = Vec::new();
        for (node, _) in ring.nodes() {
            let Some(n) = node.strip_prefix('n').and_then(|i| i.parse::<usize>().ok()) else { continue };
            for (key, _) in keys.iter().filter(|(k, _)| !ring.replicas(TENANT, k, rf as usize).contains(&node)) {
                if matches!(held_on(world, n, key).await, Ok(v) if !v.is_empty()) {
                    stale.push(format!("{node}:{key}"));
                }
            }
        }
        if stale.is_empty() {
            return;
        }
        if world.elapsed_ms() >= until {
            let n = stale.len();
            stale.truncate(5);
            return world.violation(format!("kv: {n} stale copies left 10 s after the layout settled, e.g. {stale:?}"));
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What each initial node's metadata machine answers `req` with (those that answer within
/// 100 ms; the checker's view, not a client's).
async fn meta_answers(world: &Arc<World>, req: MetaRequest) -> Vec<MetaResponse> {
    let mut out = Vec::new();
    for n in 0..world.opts.nodes {
        let Some(h) = world.meta_handle(n) else { continue };
        if let Ok(Ok(Ok(r))) = madsim::time::timeout(Duration::from_millis(100), h.call(req.clone())).await {
            out.push(r);
        }
    }
    out
}

/// The newest layout any initial node has applied.
pub async fn newest_layout(world: &Arc<World>) -> Option<Layout> {
    let layouts = meta_answers(world, MetaRequest::Layout).await.into_iter().filter_map(|r| match r {
        MetaResponse::Layout(l) => Some(l),
        _ => None,
    });
    layouts.max_by_key(|l| l.version)
}

/// The newest layout once it satisfies `pred`, asking every 100 ms until `until_ms`.
async fn await_layout(world: &Arc<World>, pred: impl Fn(&Layout) -> bool, until_ms: u64) -> Option<Layout> {
    loop {
        if let Some(l) = newest_layout(world).await.filter(|l| pred(l)) {
            return Some(l);
        }
        if world.elapsed_ms() >= until_ms {
            return None;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks a random initial node to make a layout change until one attempt has taken effect
/// (`done` says so of the newest layout) or `until_ms` has passed.
async fn change_layout(world: &Arc<World>, req: MetaRequest, done: impl Fn(&Layout) -> bool, until_ms: u64) -> bool {
    while world.elapsed_ms() < until_ms {
        let node = world.rng_below(world.opts.nodes as u64) as usize;
        let r = req.clone();
        let out = on_node(world, 0, node, move |c, until| async move { c.change_layout(r, until).await }).await;
        let shown = match &out {
            Some(Ok(m)) => format!("migration {} to v{}", m.id, m.version),
            Some(Err(e)) => format!("refused: {e}"),
            None => "no answer".into(),
        };
        world.event(format!("layout {req:?} via n{node} => {}", clip(&shown)));
        // An attempt without an answer, or refused as already made, may have taken effect.
        if newest_layout(world).await.is_some_and(|l| done(&l)) {
            return true;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The key-value tenant's factor as the initial nodes have it applied (the highest one seen).
async fn factor(world: &Arc<World>) -> Option<u32> {
    let req = MetaRequest::Tenant { id: TENANT.into(), current: false };
    let factors = meta_answers(world, req).await.into_iter().filter_map(|r| match r {
        MetaResponse::Tenant(Some(t)) => Some(t.replication_factor),
        _ => None,
    });
    factors.max()
}

/// Asks a random initial node to set the key-value tenant's factor to `rf` until one attempt
/// has taken effect or `until_ms` has passed.
async fn change_factor(world: &Arc<World>, rf: u32, until_ms: u64) -> bool {
    {
        let mut w = world.lock();
        w.kv.smallest_factor = Some(w.kv.smallest_factor.unwrap_or(rf).min(rf));
    }
    while world.elapsed_ms() < until_ms {
        let node = world.rng_below(world.opts.nodes as u64) as usize;
        let out =
            on_node(world, 0, node, move |c, until| async move { c.set_replication_factor(TENANT, rf, until).await })
                .await;
        let shown = match &out {
            Some(Ok((old, _, m))) => format!("from {old}, migration {:?}", m.as_ref().map(|m| (&m.id, m.version))),
            Some(Err(e)) => format!("refused: {e}"),
            None => "no answer".into(),
        };
        world.event(format!("layout: set {TENANT} factor {rf} via n{node} => {}", clip(&shown)));
        if factor(world).await == Some(rf) {
            return true;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Adds the node that started outside the cluster while clients write and faults go on;
/// once its keys have moved, maybe removes one of the initial nodes the same way.
pub async fn layout_changes(world: Arc<World>, until_ms: u64) {
    let joiner = format!("n{}", world.opts.nodes);
    let window = until_ms.saturating_sub(world.elapsed_ms());
    madsim::time::sleep(Duration::from_millis(200 + world.rng_below(window / 4))).await;
    let add = MetaRequest::AddNode { id: joiner.clone(), addr: format!("{joiner}:7000"), vnodes: DEFAULT_VNODES };
    let j = joiner.clone();
    // The add goes on past the faulty phase if it must: without it nothing here is tested.
    if !change_layout(&world, add, move |l| l.by_id(&j).is_some(), until_ms + 5_000).await {
        return;
    }
    world.event(format!("layout: {joiner} added"));
    if world.chance(0.2) {
        // Changed our mind: a forced removal while the add runs cancels it.
        let cancel = MetaRequest::RemoveNode { id: joiner.clone(), force: true };
        let j = joiner.clone();
        if change_layout(&world, cancel, move |l| l.by_id(&j).is_some_and(|m| !m.storage), until_ms + 5_000).await {
            world.event(format!("layout: {joiner} cancelled or removed"));
        }
        return;
    }
    // Past the faulty phase too if need be (clients have stopped then; the network still
    // loses messages until the heal).
    if await_layout(&world, |l| l.previous.is_none(), until_ms + 5_000).await.is_none() {
        return;
    }
    world.event(format!("layout: keys moved to {joiner}"));
    // The key-value tenant's factor changes too, sometimes: down to 1 or 2, or up to 4 of the
    // four storage nodes, each of which moves keys while clients write and faults go on.
    let mut rf = 3;
    if world.chance(0.5) {
        let to = [1, 2, 4][world.rng_below(3) as usize];
        if change_factor(&world, to, until_ms + 5_000).await {
            rf = to;
            world.event(format!("layout: {TENANT} factor {to} set"));
            // Changed our mind: setting the old factor back cancels the move (or, if it ended
            // already, moves the keys back).
            if world.chance(0.25) && change_factor(&world, 3, until_ms + 5_000).await {
                rf = 3;
                world.event(format!("layout: {TENANT} factor 3 set back"));
            }
            if await_layout(&world, |l| l.rf_change.is_none(), until_ms + 8_000).await.is_none() {
                return;
            }
            world.event(format!("layout: {TENANT} keys moved to factor {rf}"));
        }
    }
    if world.chance(0.7) {
        let victim = format!("n{}", world.rng_below(world.opts.nodes as u64));
        // The metadata workload raises other tenants' factors up to 10, which makes a plain
        // removal refused as in use: then force it (the node owes no hand-over). Not at one
        // replica: a forced removal loses the keys the node held alone, as forcing means.
        let force = world.lock().meta.widest_asked() > 3 || rf > 3 || world.chance(0.5);
        if force && rf == 1 {
            return;
        }
        let remove = MetaRequest::RemoveNode { id: victim.clone(), force };
        let v = victim.clone();
        if change_layout(&world, remove, move |l| l.by_id(&v).is_some_and(|m| !m.storage), until_ms + 8_000).await {
            world.event(format!("layout: {victim} removed"));
        }
    }
}
