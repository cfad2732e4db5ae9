//! The key-value coordinator: how any node serves a client's write or read by talking to the
//! key's replicas. It knows nothing of gRPC or tokio's runtime: calls, task spawning and time
//! come through [`Peers`], which tesserad implements over `tessera.peer.v1` and the
//! simulator over its faulty in-memory network. The replica-side rules (clocks, siblings,
//! idempotency) are the core's `KvMachine`; the quorum arithmetic is `kv::quorum`.
//!
//! A write goes to the key's replicas (the ring's first RF distinct nodes; while a layout
//! change moves keys, those of the old ring and the new one, see [`Placement`]). The first
//! replica that answers mints its version, this node first when it is one, and every replica
//! then applies it in parallel. The client is answered once W replicas of each set hold it;
//! the count it gets is the number that did by then. A replica that does not answer gets a
//! hint, kept on this node and delivered when it answers again. A read asks R replicas
//! (another for each that fails; R of each set while keys move), answers from their
//! reconciled versions, and repairs the stale ones in the background.

mod anti_entropy;
mod clean_up;

pub use anti_entropy::{AntiEntropyReport, REPAIR_MARGIN_MS};

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sha2::{Digest, Sha256};
use tessera_core::kv::merkle::{TreeAnswer, TreeQuery};
use tessera_core::kv::quorum::{Consistency, resolve_read};
use tessera_core::kv::vclock::{holds_value, reconcile};
use tessera_core::kv::{Causal, IdemKey, IdemRecord, KvRequest, KvResponse, TenantRecord, VClock, Version};
use tessera_core::meta::{Layout, MetaRequest, MetaResponse, Migration, MigrationKind, Placement};
use tessera_core::rng::Rng;
use tessera_core::{CoreError, CoreResult};
use tokio::sync::mpsc;

pub use crate::driver::Durable;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a replica gave no answer.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

/// A replica's answer, or none.
pub type PeerResult = Result<CoreResult<KvResponse>, Unreachable>;

/// This node's replica's answer to a coordination it keeps, and when its copy is durable.
pub type KeptResult = Result<(CoreResult<KvResponse>, Option<Durable>), Unreachable>;

/// What the coordinator needs from its environment.
pub trait Peers: Send + Sync + 'static {
    fn me(&self) -> &str;
    /// Every node that holds keys (`Layout::data_nodes`), this one included if it does:
    /// where hints go. Hints for a node removed for good wait out their expiry instead of
    /// costing every round a timeout.
    fn members(&self) -> Vec<String>;
    /// Where keys live under the layout this node serves by now.
    fn placement(&self) -> Arc<Placement>;
    /// Serves by `layout` from now on if it is newer than the one in use (as the node does
    /// on its own every few hundred milliseconds).
    fn follow(&self, layout: Layout);
    /// Milliseconds on this node's clock.
    fn now_ms(&self) -> u64;
    /// Sends `req`, decided under layout version `layout`, to `node`'s replica; no answer
    /// within `timeout_ms` is `Unreachable`. The replica refuses it (see [`check_layout`]) if
    /// it already serves by a newer layout.
    fn send_at(self: &Arc<Self>, node: &str, req: KvRequest, layout: u64, timeout_ms: u64) -> BoxFuture<PeerResult>;
    /// Coordinates `req` (a `Coordinate` with `keep`) on this node's own replica, decided
    /// under layout version `layout`: the answer as soon as the version is minted, with the
    /// [`Durable`] of this replica's copy (none when the replica refused the request).
    fn coordinate_here(self: &Arc<Self>, req: KvRequest, layout: u64) -> BoxFuture<KeptResult>;
    /// [`Peers::send_at`] under the layout this node serves by now.
    fn send(self: &Arc<Self>, node: &str, req: KvRequest, timeout_ms: u64) -> BoxFuture<PeerResult> {
        let layout = self.placement().version;
        self.send_at(node, req, layout, timeout_ms)
    }
    /// Asks `node`'s coordinator about the Merkle tree it builds over the keys it shares
    /// with this node, by layout version `layout` (anti-entropy); no answer within
    /// `timeout_ms` is UNAVAILABLE.
    fn tree(
        self: &Arc<Self>,
        node: &str,
        query: TreeQuery,
        layout: u64,
        timeout_ms: u64,
    ) -> BoxFuture<CoreResult<TreeAnswer>>;
    /// Runs `fut` in the background (work that outlives the client's answer).
    fn spawn(&self, fut: BoxFuture<()>);
    /// Asks this node's metadata machine; no answer within `timeout_ms` is UNAVAILABLE.
    fn meta(self: &Arc<Self>, req: MetaRequest, timeout_ms: u64) -> BoxFuture<CoreResult<MetaResponse>>;
}

/// One layout version, as a node serves by it: the layout and where keys live under it.
pub struct View {
    pub layout: Layout,
    pub placement: Arc<Placement>,
}

/// The view a node serves by, replaced whole when it follows a newer layout, and the layout
/// fence its replica keeps.
pub struct ViewCell {
    view: RwLock<Arc<View>>,
    /// The stored fence floor (`KvRequest::Fence`) as last seen: the newest layout version
    /// this node handed keys over by. It holds across a restart that brings the node back on
    /// an older layout than the one it handed over by.
    floor: AtomicU64,
    /// The newest layout version on record in the replica as having placed a write here
    /// (`KvRequest::Placed`), as last seen.
    placed: AtomicU64,
}

impl ViewCell {
    pub fn new(layout: Layout) -> ViewCell {
        let view = Arc::new(View { placement: Arc::new(Placement::new(&layout)), layout });
        ViewCell { view: RwLock::new(view), floor: AtomicU64::new(0), placed: AtomicU64::new(0) }
    }

    pub fn get(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The oldest layout version this node's replica serves requests placed by.
    pub fn fence(&self) -> u64 {
        self.get().layout.version.max(self.floor.load(Ordering::SeqCst))
    }

    /// The replica's guard for one request placed by layout version `sender` (see
    /// [`check_layout`]).
    pub fn admit(&self, req: &KvRequest, sender: u64) -> CoreResult<()> {
        check_layout(req, sender, self.fence())
    }

    /// Takes note of the replica's answer: a fence floor it reports holds from now on, and
    /// a placing layout it has on record needs no recording again.
    pub fn observe(&self, reply: &CoreResult<KvResponse>) {
        match reply {
            Ok(KvResponse::Fence(v)) => _ = self.floor.fetch_max(*v, Ordering::SeqCst),
            Ok(KvResponse::Placed(v)) => _ = self.placed.fetch_max(*v, Ordering::SeqCst),
            _ => {}
        }
    }

    /// The layout version the replica must record (`KvRequest::Placed`) before it takes
    /// `req`, placed by `sender`: a request that may store a copy, placed by a layout newer
    /// than any on record.
    pub fn to_record(&self, req: &KvRequest, sender: u64) -> Option<u64> {
        let stores = matches!(req, KvRequest::Coordinate { .. } | KvRequest::Apply { .. } | KvRequest::HandOver { .. });
        (stores && sender > self.placed.load(Ordering::SeqCst)).then_some(sender)
    }

    /// The replica's guard for requests, each with the layout version it was placed by: which
    /// it may take (the caller queues those in its driver at once, in order), and why not the
    /// others. When one that may store a copy was placed by a layout newer than any on record,
    /// the replica records that layout first, through `record` (a `KvRequest::Placed` to its
    /// driver, awaited): a removal of copies found stale by an older layout, queued behind or
    /// ahead, then cannot undo a copy this node acknowledged (see `KvRequest::Discard`). Rare:
    /// once per layout change. The fence is checked again after it, as the node may have
    /// followed a newer layout, and handed keys over by it, meanwhile.
    pub async fn admit_all<E, F, Fut>(&self, reqs: &[(KvRequest, u64)], record: F) -> Result<Vec<CoreResult<()>>, E>
    where
        F: FnOnce(KvRequest) -> Fut,
        Fut: Future<Output = Result<CoreResult<KvResponse>, E>>,
    {
        let admit = || reqs.iter().map(|(r, sender)| self.admit(r, *sender)).collect::<Vec<_>>();
        let first = admit();
        let newest =
            reqs.iter().zip(&first).filter(|(_, ok)| ok.is_ok()).filter_map(|((r, s), _)| self.to_record(r, *s)).max();
        let Some(version) = newest else { return Ok(first) };
        let out = record(KvRequest::Placed { version }).await?;
        self.observe(&out);
        if let Err(e) = out {
            return Ok(first.into_iter().map(|a| a.and(Err(e.clone()))).collect());
        }
        Ok(first.into_iter().zip(admit()).map(|(a, b)| a.and(b)).collect())
    }

    /// [`ViewCell::admit_all`] for one request, handed back with its verdict.
    pub async fn admit_one<E, F, Fut>(
        &self,
        req: KvRequest,
        sender: u64,
        record: F,
    ) -> Result<(KvRequest, CoreResult<()>), E>
    where
        F: FnOnce(KvRequest) -> Fut,
        Fut: Future<Output = Result<CoreResult<KvResponse>, E>>,
    {
        let one = [(req, sender)];
        // One verdict per request; none would be a bug, refused rather than let through.
        let verdict = self.admit_all(&one, record).await?.pop();
        let verdict = verdict.unwrap_or_else(|| Err(CoreError::Unavailable("the fence gave no verdict".into())));
        let [(req, _)] = one;
        Ok((req, verdict))
    }

    /// Serves by `layout` from now on if it is newer than the one in use; returns the
    /// version it replaced and the new view.
    pub fn follow(&self, layout: Layout) -> Option<(u64, Arc<View>)> {
        let mut current = self.view.write().unwrap_or_else(|e| e.into_inner());
        let from = current.layout.version;
        if layout.version <= from {
            return None;
        }
        *current = Arc::new(View { placement: Arc::new(Placement::new(&layout)), layout });
        Some((from, current.clone()))
    }
}

/// A replica's guard against coordinators that lag behind a layout change: a request that
/// reads or writes a key (`Coordinate`, `Apply`, `Read`) decided under an older
/// layout than the replica's own is refused, since it may leave out the key's new owners
/// after this replica has handed its keys to them. The coordinator retries once it follows.
pub fn check_layout(req: &KvRequest, sender: u64, mine: u64) -> CoreResult<()> {
    let keyed = matches!(
        req,
        KvRequest::Coordinate { .. }
            | KvRequest::Apply { .. }
            | KvRequest::HandOver { .. }
            | KvRequest::Read { .. }
            | KvRequest::IdemLookup { .. }
            | KvRequest::Discard { .. }
    );
    if keyed && sender < mine {
        return Err(CoreError::Unavailable(format!(
            "the coordinator placed this request by layout version {sender}, but the replica already serves by \
             version {mine}; retry in a moment"
        )));
    }
    Ok(())
}

/// The SHA-256 an idempotency record keeps of its write (`value: None` is a delete), to tell
/// a replay from another write under the same key.
pub fn request_hash(tenant_id: &str, key: &str, value: Option<&[u8]>) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [tenant_id.as_bytes(), key.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    match value {
        Some(v) => {
            h.update([1]);
            h.update(v);
        }
        None => h.update([0]),
    }
    h.finalize().to_vec()
}

/// A new owner's answer to what a hand-over sent it: UNAVAILABLE naming `target` when it
/// did not take it (the pass stops, and the next one sends it again).
fn new_owner_took(target: &str, out: PeerResult) -> CoreResult<()> {
    let refused = match out {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.0,
    };
    Err(CoreError::Unavailable(format!("new owner {target}: {refused}")))
}

fn not_joined() -> CoreError {
    CoreError::Unavailable(
        "this node has not joined the cluster yet: its layout names no storage nodes (add it with \
         AddStorageNode, or ask another node)"
            .into(),
    )
}

fn unexpected(r: MetaResponse) -> CoreError {
    CoreError::Unavailable(format!("unexpected answer from the metadata machine: {r:?}"))
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEM_KEY: usize = 256;
/// How long one peer call may take at most.
pub const PEER_TIMEOUT_MS: u64 = 2_000;
/// How long after a layout change starts its hand-over begins (tesserad follows the layout
/// every 200 ms).
pub const HAND_OVER_GRACE_MS: u64 = 2_000;
/// Keys examined between two progress reports of a hand-over.
const HAND_OVER_REPORT_EVERY: u64 = 4_096;
/// How long a tenant record is reused. A replication factor change reaches every
/// coordinator within this long.
const TENANT_CACHE_MS: u64 = 1_000;

/// What a write did.
#[derive(Debug, Clone)]
pub struct Written {
    pub clock: VClock,
    pub acks: usize,
    pub duplicate: bool,
    pub idempotency_key: String,
}

/// The nodes a write goes to and the sets it needs W acknowledgements in, each.
struct Targets {
    /// The layout version the targets were placed by.
    layout: u64,
    nodes: Vec<String>,
    /// Per set: its members' positions in `nodes`, and how many must acknowledge.
    sets: Vec<(Vec<usize>, usize)>,
}

impl Targets {
    fn new(placement: &Placement, tenant: &TenantRecord, key: &str, consistency: Consistency) -> Targets {
        let rf = tenant.replication_factor as usize;
        // One placement lookup (a SHA-256 and a ring walk per ring) serves both.
        let sets = placement.write_sets(&tenant.id, key, rf);
        let nodes = Placement::union(&sets);
        let sets = sets
            .into_iter()
            .map(|set| {
                let at: Vec<usize> = set.iter().filter_map(|n| nodes.iter().position(|m| m == n)).collect();
                let need = consistency.needed(at.len());
                (at, need)
            })
            .collect();
        Targets { layout: placement.version, nodes, sets }
    }

    /// The same replicas, needing `consistency`'s count of each set (no second placement
    /// lookup).
    fn needing(&self, consistency: Consistency) -> Targets {
        let sets = self.sets.iter().map(|(at, _)| (at.clone(), consistency.needed(at.len()))).collect();
        Targets { layout: self.layout, nodes: self.nodes.clone(), sets }
    }

    /// Whether node `i` is in the first set: the old owners while keys move.
    fn old_owner(&self, i: usize) -> bool {
        self.sets.first().is_some_and(|(at, _)| at.contains(&i))
    }

    fn met(&self, acked: &[bool]) -> bool {
        self.sets.iter().all(|(at, need)| at.iter().filter(|&&i| acked[i]).count() >= *need)
    }

    /// What fell short, for the client's message.
    fn shortfall(&self, acked: &[bool]) -> String {
        let parts: Vec<String> = self
            .sets
            .iter()
            .map(|(at, need)| format!("{} of {} (needed {need})", at.iter().filter(|&&i| acked[i]).count(), at.len()))
            .collect();
        match parts.len() {
            1 => parts.concat(),
            _ => format!("old replica set {}, new replica set {} (keys are moving)", parts[0], parts[1]),
        }
    }
}

pub struct KvCoordinator<P: Peers> {
    peers: Arc<P>,
    /// Tenant records by id: the record, when it was fetched, and the layout version served
    /// by then (the record is at least as new as that layout).
    tenants: Mutex<BTreeMap<String, (TenantRecord, u64, u64)>>,
    rng: Mutex<Rng>,
    hand_over_grace_ms: u64,
    /// Trees built to answer peers' anti-entropy questions, by peer.
    trees: Mutex<BTreeMap<String, anti_entropy::KeptTree>>,
    /// When the last anti-entropy pass that compared this node with each peer to the end
    /// began, and by which layout version (see `anti_entropy`).
    compared: Mutex<BTreeMap<String, (u64, u64)>>,
    clean_up: Mutex<clean_up::CleanUp>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: Peers> KvCoordinator<P> {
    pub fn new(peers: Arc<P>, seed: u64) -> Self {
        Self {
            peers,
            tenants: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(Rng::new(seed)),
            hand_over_grace_ms: HAND_OVER_GRACE_MS,
            trees: Mutex::new(BTreeMap::new()),
            compared: Mutex::new(BTreeMap::new()),
            clean_up: Mutex::new(clean_up::CleanUp::default()),
        }
    }

    /// How long after a layout change starts this node begins its hand-over: longer than
    /// every coordinator takes to follow a new layout.
    pub fn with_hand_over_grace(mut self, ms: u64) -> Self {
        self.hand_over_grace_ms = ms;
        self
    }

    pub fn peers(&self) -> &Arc<P> {
        &self.peers
    }

    fn left(&self, until_ms: u64) -> u64 {
        until_ms.saturating_sub(self.peers.now_ms()).min(PEER_TIMEOUT_MS)
    }

    /// Too few replicas answered: DEADLINE_EXCEEDED if the client's deadline ran out first
    /// (the replicas not asked yet never were, and those asked were given only until it),
    /// UNAVAILABLE otherwise.
    fn shortfall(&self, until_ms: u64, what: String) -> CoreError {
        match self.peers.now_ms() >= until_ms {
            true => CoreError::DeadlineExceeded(format!("the deadline passed: {what}")),
            false => CoreError::Unavailable(what),
        }
    }

    /// A fresh idempotency key for a write whose client gave none.
    fn new_idem_key(&self) -> String {
        let mut b = [0u8; 16];
        lock(&self.rng).fill(&mut b);
        tessera_core::codec::hex(&b)
    }

    /// The tenant's record from the replicated metadata, reused for [`TENANT_CACHE_MS`] and
    /// while this node serves by the same layout (it is fetched again once the layout moves
    /// on, so it is never older than the placement it is used with). A tenant this node has
    /// not applied yet is looked up at the Raft leader's commit index before it is called
    /// unknown.
    pub async fn tenant(&self, id: &str, until_ms: u64) -> CoreResult<TenantRecord> {
        self.tenant_as_of(id, until_ms, self.peers.placement().version).await
    }

    /// [`Self::tenant`], at least as new as layout version `serving` (which this node serves
    /// by or did: its metadata has applied that far).
    async fn tenant_as_of(&self, id: &str, until_ms: u64, serving: u64) -> CoreResult<TenantRecord> {
        let now = self.peers.now_ms();
        if let Some((t, at, by)) = lock(&self.tenants).get(id)
            && now.saturating_sub(*at) < TENANT_CACHE_MS
            && *by >= serving
        {
            return Ok(t.clone());
        }
        let req = MetaRequest::Tenant { id: id.to_owned(), current: true };
        self.cache_tenant(id, self.meta(req, until_ms).await?, now, serving)
    }

    /// The metadata machine's answer about tenant `id`, cached (as of `now`, by layout
    /// version `serving`) when it is a record.
    fn cache_tenant(&self, id: &str, answer: MetaResponse, now: u64, serving: u64) -> CoreResult<TenantRecord> {
        match answer {
            MetaResponse::Tenant(Some(t)) => {
                lock(&self.tenants).insert(id.to_owned(), (t.clone(), now, serving));
                Ok(t)
            }
            MetaResponse::Tenant(None) => {
                Err(CoreError::NotFound(format!("tenant {id:?} not found; create it with CreateTenant")))
            }
            other => Err(unexpected(other)),
        }
    }

    /// A tenant's record as the metadata group's leader has it now (`GetTenant`: a factor
    /// just changed through another node is seen); the cache takes it too.
    pub async fn confirmed_tenant(&self, id: &str, until_ms: u64) -> CoreResult<TenantRecord> {
        let (now, serving) = (self.peers.now_ms(), self.peers.placement().version);
        let answer = self.meta(MetaRequest::ConfirmedTenant { id: id.to_owned() }, until_ms).await?;
        self.cache_tenant(id, answer, now, serving)
    }

    /// Creates a tenant through the metadata group; answered once the change is committed
    /// and applied on this node.
    pub async fn create_tenant(&self, id: &str, replication_factor: u32, until_ms: u64) -> CoreResult<TenantRecord> {
        let req = MetaRequest::CreateTenant { id: id.to_owned(), replication_factor };
        match self.meta(req, until_ms).await? {
            MetaResponse::Created(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// The tenant's record and the placement to put its keys by, both as of one layout
    /// version: the record is never older than the placement (see [`Self::tenant`]), and when
    /// its factor changed by a newer layout than this node serves by, the node follows its
    /// applied layout first.
    async fn placed(&self, tenant_id: &str, until_ms: u64) -> CoreResult<(TenantRecord, Arc<Placement>)> {
        let mut newer = 0;
        // Twice at most in practice: following brings the layout up to the record, and a
        // record fetched again for the newer layout is then as new as it.
        for _ in 0..3 {
            let placement = self.peers.placement();
            let tenant = self.tenant_as_of(tenant_id, until_ms, placement.version).await?;
            if tenant.rf_version <= placement.version {
                return Ok((tenant, placement));
            }
            newer = tenant.rf_version;
            if let MetaResponse::Layout(layout) = self.meta(MetaRequest::Layout, until_ms).await? {
                self.peers.follow(layout);
            }
        }
        Err(CoreError::Unavailable(format!(
            "tenant {tenant_id:?}'s replication factor changed at layout version {newer}, and this node serves by \
             version {}; retry in a moment",
            self.peers.placement().version
        )))
    }

    /// Changes a tenant's replication factor; returns the factor it had, the new record, and
    /// the migration that moves the tenant's keys when any move.
    pub async fn set_replication_factor(
        &self,
        id: &str,
        replication_factor: u32,
        until_ms: u64,
    ) -> CoreResult<(u32, TenantRecord, Option<Migration>)> {
        let req = MetaRequest::SetReplicationFactor { id: id.to_owned(), replication_factor };
        let serving = self.peers.placement().version;
        match self.meta(req, until_ms).await? {
            MetaResponse::ReplicationFactor { old, new, migration } => {
                lock(&self.tenants).insert(id.to_owned(), (new.clone(), self.peers.now_ms(), serving));
                Ok((old, new, migration))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Starts a layout change (`AddNode` or `RemoveNode`) through the metadata group;
    /// answered with its migration once committed and applied on this node.
    pub async fn change_layout(&self, req: MetaRequest, until_ms: u64) -> CoreResult<Migration> {
        match self.meta(req, until_ms).await? {
            MetaResponse::Migration(Some(m)) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// A migration as this node has applied it.
    pub async fn migration(&self, id: &str, until_ms: u64) -> CoreResult<Option<Migration>> {
        match self.meta(MetaRequest::Migration { id: id.to_owned() }, until_ms).await? {
            MetaResponse::Migration(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// One call to this node's metadata machine, bounded by the client's deadline.
    async fn meta(&self, req: MetaRequest, until_ms: u64) -> CoreResult<MetaResponse> {
        let left = until_ms.saturating_sub(self.peers.now_ms());
        if left == 0 {
            return Err(CoreError::DeadlineExceeded("the deadline passed before the metadata was consulted".into()));
        }
        let change = matches!(
            req,
            MetaRequest::CreateTenant { .. }
                | MetaRequest::SetReplicationFactor { .. }
                | MetaRequest::AddNode { .. }
                | MetaRequest::RemoveNode { .. }
        );
        match self.peers.meta(req, left).await {
            // No answer in time (no leader, or the deadline was short): the change may still
            // be applied, and a retry may find it done. UNAVAILABLE, not DEADLINE_EXCEEDED:
            // without a leader no deadline would have been long enough.
            Err(CoreError::Unavailable(e)) if change && self.peers.now_ms() >= until_ms => {
                Err(CoreError::Unavailable(format!("{e}; the change may still take effect")))
            }
            other => other,
        }
    }

    /// Coordinates a write (`value: None` deletes) and replicates it.
    pub async fn write(
        &self,
        tenant_id: &str,
        key: &str,
        value: Option<Vec<u8>>,
        consistency: Consistency,
        client_key: String,
        until_ms: u64,
    ) -> CoreResult<Written> {
        if client_key.len() > MAX_IDEM_KEY {
            return Err(CoreError::InvalidArgument(format!(
                "idempotency_key: {} bytes, at most {MAX_IDEM_KEY}",
                client_key.len()
            )));
        }
        if client_key.chars().any(char::is_control) {
            return Err(CoreError::InvalidArgument(format!(
                "idempotency_key {}: control characters (newlines, tabs, NUL...) are not allowed",
                tessera_core::ids::shown(&client_key)
            )));
        }
        let (tenant, placement) = self.placed(tenant_id, until_ms).await?;
        let fresh = client_key.is_empty();
        let idempotency_key = if fresh { self.new_idem_key() } else { client_key };
        let request_hash = request_hash(tenant_id, key, value.as_deref());
        let idem = IdemKey { key: idempotency_key.clone(), request_hash, fresh };
        let targets = Targets::new(&placement, &tenant, key, consistency);
        let replicas = &targets.nodes;
        if replicas.is_empty() {
            return Err(not_joined());
        }

        // The first replica that answers coordinates, this node first when it is one (it
        // saves a hop, as in Dynamo). While keys move, the old owners go first: they hold
        // the versions a new owner may not have been handed yet.
        let mut order: Vec<usize> = (0..replicas.len()).collect();
        // A replay goes to a replica that holds its record, wherever it came in: one that
        // missed the first write (it was down, or the key moved to it since) would take the
        // replay for a new write.
        let holder = match fresh {
            true => None,
            false => self.record_holder(tenant_id, key, &idem, &targets, until_ms).await?,
        };
        order.sort_by_key(|&i| (Some(i) != holder, !targets.old_owner(i), replicas[i] != self.peers.me()));
        let mut coordinated = None;
        let mut unreachable = Vec::new();
        let mut skipped = Vec::new();
        // This node's copy, when it coordinated: kept in the coordinating step itself.
        let mut kept = None;
        for i in order {
            let left = self.left(until_ms);
            if left == 0 {
                break;
            }
            let here = replicas[i] == self.peers.me();
            let req = KvRequest::Coordinate {
                tenant: tenant_id.to_owned(),
                key: key.to_owned(),
                value: value.clone(),
                idem: Some(idem.clone()),
                keep: here,
            };
            let answer = match here {
                true => match self.peers.coordinate_here(req, targets.layout).await {
                    Ok((answer, durable)) => {
                        kept = durable.map(|d| (i, d));
                        Ok(answer)
                    }
                    // This node's storage failed mid-step: the version may be in its store,
                    // unsynced, and back after a restart. Another coordinator's version would
                    // then stand beside it as a sibling: stop here.
                    Err(Unreachable(e)) => {
                        return Err(CoreError::Unavailable(format!(
                            "this node's storage failed while coordinating the write ({e}); it may or may not \
                             take effect: retry it on another node (with its idempotency key, if it had one)"
                        )));
                    }
                },
                false => self.peers.send_at(&replicas[i], req, targets.layout, left).await,
            };
            match answer {
                Ok(Ok(KvResponse::Coordinated { clock, versions, duplicate, idem })) => {
                    coordinated = Some((i, clock, versions, duplicate, idem));
                    break;
                }
                Ok(Ok(_)) => return Err(CoreError::Unavailable("unexpected answer from a replica".into())),
                // Only a replica that holds the record can tell this replay from a new write:
                // with it unable to answer, the client retries later rather than write twice.
                Ok(Err(CoreError::Unavailable(e))) | Err(Unreachable(e)) if Some(i) == holder => {
                    return Err(self.shortfall(
                        until_ms,
                        format!(
                            "{} holds the record of idempotency key {:?} but could not answer the replay: {e}",
                            replicas[i], idempotency_key
                        ),
                    ));
                }
                // A replica that cannot serve (its storage failed) is like one that is down.
                Ok(Err(CoreError::Unavailable(e))) => {
                    unreachable.push(e);
                    skipped.push(i);
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    unreachable.push(e.0);
                    skipped.push(i);
                }
            }
        }
        let Some((coord, clock, versions, duplicate, idem_rec)) = coordinated else {
            return Err(self.shortfall(
                until_ms,
                format!(
                    "0 of {} replicas answered ({}): {}",
                    replicas.len(),
                    targets.shortfall(&vec![false; replicas.len()]),
                    match unreachable.is_empty() {
                        true => "none was asked in time".to_owned(),
                        false => unreachable.join("; "),
                    }
                ),
            ));
        };
        let kept = kept.filter(|(i, _)| *i == coord);
        let (mut acked, held) =
            self.replicate(tenant_id, key, &targets, &skipped, kept, versions, idem_rec, until_ms).await;
        let mut clock = clock;
        // The coordinating replica may have missed a version others hold (it was down when
        // that write was acknowledged). Since the acknowledging replicas overlap every other
        // quorum, one of them shows it; then the write is coordinated once more with that
        // version as context, so a later write supersedes an earlier one instead of standing
        // beside it as a sibling. Only truly concurrent writes stay siblings.
        let held: Vec<Version> = held.into_iter().flatten().collect();
        // A replay too: its first copy may never have been replicated (a copy the network
        // duplicated, or a coordinator that crashed), and it must not stand beside a write
        // acknowledged before it. Unless a later write supersedes it already: a replay of a
        // write since overwritten (at quorum, so a replica here shows it) changes nothing;
        // writing its value again would undo the later write.
        let overwritten = duplicate && held.iter().any(|v| v.clock.compare(&clock) == Causal::After);
        let carried = targets.met(&acked) && overwritten;
        if carried {
            // The later version may be the first attempt's own supersede, which reached too
            // few replicas (a quorum answered with the write beside the one acknowledged
            // before it): it goes to a quorum now, or this answer would acknowledge two
            // sequential writes as siblings there.
            (acked, _) =
                self.replicate(tenant_id, key, &targets, &[], None, reconcile(&[], &held), None, until_ms).await;
        }
        let missed: Vec<Version> = held.into_iter().filter(|v| v.clock.compare(&clock) == Causal::Concurrent).collect();
        if targets.met(&acked) && !missed.is_empty() && !overwritten {
            (clock, acked) = self.supersede(tenant_id, key, value, &targets, coord, missed, until_ms).await?;
        }
        if !targets.met(&acked) {
            let what = match carried {
                // The replay's own write stands (a later one superseded it); what fell short
                // is carrying that later version to a quorum.
                true => format!(
                    "quorum not reached: this replays a write that a later version of the key superseded, and only {} \
                     acknowledged that later version (for {}); retry with the same idempotency key",
                    targets.shortfall(&acked),
                    consistency.name()
                ),
                false => format!(
                    "quorum not reached: {} acknowledged the write (for {}); it may still reach the others",
                    targets.shortfall(&acked),
                    consistency.name()
                ),
            };
            return Err(self.shortfall(until_ms, what));
        }
        let acks = acked.iter().filter(|a| **a).count();
        Ok(Written { clock, acks, duplicate, idempotency_key })
    }

    /// Which of the key's replicas (an index into its targets) holds the record of the
    /// client's idempotency key `idem` with its write, asking them all at once and waiting
    /// for a quorum of each replica set to say "none" (a record a quorum acknowledged is
    /// then seen: a layout change's hand-over takes records to the key's new owners). A
    /// record of the key for another request is FAILED_PRECONDITION at once; fewer answers
    /// than a quorum is UNAVAILABLE (also for writes at `one`: their replays must be told
    /// apart too).
    async fn record_holder(
        &self,
        tenant_id: &str,
        key: &str,
        idem: &IdemKey,
        targets: &Targets,
        until_ms: u64,
    ) -> CoreResult<Option<usize>> {
        let quorum = targets.needing(Consistency::Quorum);
        let layout = quorum.layout;
        let mut asked: FuturesUnordered<_> = quorum
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let req =
                    KvRequest::IdemLookup { tenant: tenant_id.to_owned(), key: key.to_owned(), idem: idem.key.clone() };
                let call = self.peers.send_at(node, req, layout, self.left(until_ms));
                async move { (i, call.await) }
            })
            .collect();
        let mut answered = vec![false; quorum.nodes.len()];
        let mut failed = Vec::new();
        while let Some((i, reply)) = asked.next().await {
            let (found, held) = match reply {
                Ok(Ok(KvResponse::Idem { record, held })) => (record, held),
                Ok(Ok(_)) => return Err(CoreError::Unavailable("unexpected answer from a replica".into())),
                Ok(Err(e)) => {
                    failed.push(format!("{}: {e}", quorum.nodes[i]));
                    continue;
                }
                Err(Unreachable(e)) => {
                    failed.push(e);
                    continue;
                }
            };
            match found.filter(|r| r.expires_ms > self.peers.now_ms()) {
                Some(r) if r.request_hash != idem.request_hash => {
                    return Err(CoreError::FailedPrecondition(format!(
                        "idempotency key {:?} was already used for a different write; use a new key",
                        idem.key
                    )));
                }
                Some(_) if held => return Ok(Some(i)),
                // None here, or a record whose write this replica no longer holds.
                _ => answered[i] = true,
            }
            if quorum.met(&answered) {
                return Ok(None);
            }
        }
        // Too few replicas answered to rule out a record: writing now could take a replay
        // for a new write. The write itself would need as many of them.
        Err(self.shortfall(
            until_ms,
            format!(
                "could not tell whether idempotency key {:?} was used: {} answered the lookup ({})",
                idem.key,
                quorum.shortfall(&answered),
                failed.join("; ")
            ),
        ))
    }

    /// Applies `versions` on every replica, the coordinating one included unless it `kept`
    /// them in the coordinating step (then its copy counts once durable), and returns once W
    /// replicas of each set hold them or none more can: which replicas acknowledged, and the
    /// versions each holds after its merge. Replicas that do not answer (or were `skipped`:
    /// they did not answer the coordinate call) get a hint; the rest finish in the background.
    #[allow(clippy::too_many_arguments)]
    async fn replicate(
        &self,
        tenant: &str,
        key: &str,
        targets: &Targets,
        skipped: &[usize],
        mut kept: Option<(usize, Durable)>,
        versions: Vec<Version>,
        idem: Option<IdemRecord>,
        until_ms: u64,
    ) -> (Vec<bool>, Vec<Vec<Version>>) {
        let (replicas, layout) = (&targets.nodes, targets.layout);
        let mut acked = vec![false; replicas.len()];
        let mut held = Vec::new();
        let (tx, mut rx) = mpsc::channel(replicas.len());
        for (i, node) in replicas.iter().enumerate() {
            if let Some((_, durable)) = kept.take_if(|(at, _)| *at == i) {
                let (tx, copy) = (tx.clone(), versions.clone());
                self.peers.spawn(Box::pin(async move {
                    let _ = tx.send((i, durable.wait().await.is_ok().then_some(copy))).await;
                }));
                continue;
            }
            let (p, tx, node) = (self.peers.clone(), tx.clone(), node.clone());
            let req = KvRequest::Apply {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                versions: versions.clone(),
                idem: idem.clone(),
            };
            let left = if skipped.contains(&i) { 0 } else { self.left(until_ms) };
            let hint = KvRequest::Hint {
                target: node.clone(),
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                versions: versions.clone(),
                layout,
                taken_ms: None,
            };
            self.peers.spawn(Box::pin(async move {
                let merged = match left > 0 {
                    true => match p.send_at(&node, req, layout, left).await {
                        Ok(Ok(KvResponse::Versions(v))) => Some(v),
                        _ => None,
                    },
                    false => None,
                };
                if merged.is_none() && node != p.me() {
                    // Kept here until the node answers again; if this node cannot keep it
                    // either (or it is this node's own replica), reads repair it later.
                    let me = p.me().to_owned();
                    if let Ok(Err(e)) = p.send(&me, hint, PEER_TIMEOUT_MS).await {
                        tracing::warn!(%node, error = %e, "could not keep a hint");
                    }
                }
                let _ = tx.send((i, merged)).await;
            }));
        }
        drop(tx);
        while !targets.met(&acked) {
            match rx.recv().await {
                Some((i, Some(v))) => {
                    acked[i] = true;
                    held.push(v);
                }
                Some((_, None)) => {}
                None => break,
            }
        }
        (acked, held)
    }

    /// Coordinates `value` again on the replica that coordinated it, after giving that
    /// replica the versions it had `missed`, and replicates the result: a version that
    /// supersedes both. Returns its clock and which replicas hold it.
    #[allow(clippy::too_many_arguments)]
    async fn supersede(
        &self,
        tenant: &str,
        key: &str,
        value: Option<Vec<u8>>,
        targets: &Targets,
        coord: usize,
        missed: Vec<Version>,
        until_ms: u64,
    ) -> CoreResult<(VClock, Vec<bool>)> {
        let node = &targets.nodes[coord];
        let give = KvRequest::Apply { tenant: tenant.to_owned(), key: key.to_owned(), versions: missed, idem: None };
        let again =
            KvRequest::Coordinate { tenant: tenant.to_owned(), key: key.to_owned(), value, idem: None, keep: false };
        let retry = async {
            self.peers.send_at(node, give, targets.layout, self.left(until_ms)).await.ok()?.ok()?;
            match self.peers.send_at(node, again, targets.layout, self.left(until_ms)).await {
                Ok(Ok(KvResponse::Coordinated { clock, versions, .. })) => Some((clock, versions)),
                _ => None,
            }
        };
        let Some((clock, versions)) = retry.await else {
            return Err(CoreError::Unavailable(format!(
                "the write reached a quorum beside a version its coordinator {node} had not seen, and \
                 superseding that version failed; it may still take effect"
            )));
        };
        let (acked, _) = self.replicate(tenant, key, targets, &[], None, versions, None, until_ms).await;
        Ok((clock, acked))
    }

    /// Reads a key: the reconciled versions from R replicas, repairing stale ones.
    pub async fn read(
        &self,
        tenant_id: &str,
        key: &str,
        consistency: Consistency,
        until_ms: u64,
    ) -> CoreResult<Vec<Version>> {
        let (tenant, placement) = self.placed(tenant_id, until_ms).await?;
        if self.left(until_ms) == 0 {
            return Err(CoreError::DeadlineExceeded("the deadline passed before any replica was asked".into()));
        }
        let targets = Targets::new(&placement, &tenant, key, consistency);
        let (replicas, layout) = (&targets.nodes, targets.layout);
        if replicas.is_empty() {
            return Err(not_joined());
        }
        // One replica set: ask R replicas (this node first when it is one) and another only
        // for each that fails, as Cassandra does: a quorum read costs R calls, not RF. While
        // keys move, ask every replica of the old set and the new one and take R from each:
        // a coordinator one layout behind or ahead of the writer still overlaps its W.
        let mut order: Vec<usize> = (0..replicas.len()).collect();
        order.sort_by_key(|&i| replicas[i] != self.peers.me());
        let mut queue = order.into_iter();
        let first = match targets.sets.as_slice() {
            [(_, need)] => *need,
            _ => replicas.len(),
        };
        // One replica's versions, or None when it did not answer with them.
        let read_one = |i: usize| {
            let (p, node) = (self.peers.clone(), replicas[i].clone());
            let req = KvRequest::Read { tenant: tenant_id.to_owned(), key: key.to_owned() };
            let left = self.left(until_ms);
            async move {
                let v = match p.send_at(&node, req, layout, left).await {
                    Ok(Ok(KvResponse::Versions(v))) => Some(v),
                    _ => None,
                };
                (i, v)
            }
        };
        // Polled here, not spawned: the answers wake this task alone, and a read leaves
        // nothing behind that must finish after it.
        let mut asked = FuturesUnordered::new();
        let mut local = None;
        for i in queue.by_ref().take(first) {
            match replicas[i] == self.peers.me() {
                true => local = Some(i),
                false => asked.push(read_one(i)),
            }
        }
        // This node's replica answers from its store at once: asked last, once the others'
        // requests are on their way.
        if let Some(i) = local {
            asked.push(read_one(i));
        }
        let mut answered = vec![false; replicas.len()];
        let mut replies: Vec<(String, Vec<Version>)> = Vec::new();
        let mut failed = 0;
        while !targets.met(&answered) {
            match asked.next().await {
                Some((i, Some(v))) => {
                    answered[i] = true;
                    replies.push((replicas[i].clone(), v));
                }
                Some((_, None)) => {
                    failed += 1;
                    if let Some(next) = queue.next() {
                        asked.push(read_one(next));
                    }
                }
                None => break,
            }
        }
        if !targets.met(&answered) {
            return Err(self.shortfall(
                until_ms,
                format!(
                    "{} answered the read (for {}; {failed} failed)",
                    targets.shortfall(&answered),
                    consistency.name()
                ),
            ));
        }
        let outcome = resolve_read(&replies);
        if outcome.stale.is_empty() {
            return Ok(outcome.versions);
        }
        // Read repair, off the client's path: bring every replica that answered up to the
        // reconciled set.
        let (p, tenant_id, key) = (self.peers.clone(), tenant_id.to_owned(), key.to_owned());
        let versions = outcome.versions.clone();
        self.peers.spawn(Box::pin(async move {
            for node in outcome.stale {
                let req = KvRequest::Apply {
                    tenant: tenant_id.clone(),
                    key: key.clone(),
                    versions: versions.clone(),
                    idem: None,
                };
                if let Ok(Ok(_)) = p.send_at(&node, req, layout, PEER_TIMEOUT_MS).await {
                    tracing::debug!(%node, key = %key, "read repair");
                }
            }
        }));
        Ok(outcome.versions)
    }

    /// One hand-over pass: when a layout change under way says this node owes keys to new
    /// owners, sends each key it holds to the owners it gains ([`Placement::handoff_targets`]),
    /// reports progress to the metadata group as it goes, and reports itself done at the end,
    /// which completes the change once every old owner has. A pass that fails stops; the next
    /// one (also after a crash) resumes after the last key on record. Returns how many keys
    /// were examined in all when this pass finished the node's share, `None` when nothing
    /// was owed.
    pub async fn hand_over_pass(&self) -> CoreResult<Option<u64>> {
        let me = self.peers.me().to_owned();
        let until = || self.peers.now_ms() + PEER_TIMEOUT_MS;
        let m = match self.meta(MetaRequest::Running, until()).await? {
            MetaResponse::Migration(Some(m)) => m,
            MetaResponse::Migration(None) => return Ok(None),
            other => return Err(unexpected(other)),
        };
        if m.progress.get(&me).is_none_or(|p| p.done) {
            return Ok(None);
        }
        let placement = self.peers.placement();
        // This node refuses requests placed by the old layout once it follows the new one
        // (the layout fence), so every write it takes from here on also reaches the new
        // owners. The grace only lets most coordinators catch up first, sparing them refusals;
        // it is measured on two nodes' clocks, and safety does not rest on it.
        if placement.version < m.version || self.peers.now_ms() < m.started_ms.saturating_add(self.hand_over_grace_ms) {
            return Ok(None);
        }
        // Durably first: a crash from here on must not bring this node back serving requests
        // placed by the old layout, for keys it may have handed over already.
        match self.peers.send(&me, KvRequest::Fence { version: m.version }, PEER_TIMEOUT_MS).await {
            Ok(Ok(KvResponse::Fence(_))) => {}
            _ => return Err(CoreError::Unavailable("this node's replica did not store the layout fence".into())),
        }
        // A factor change moves one tenant's keys, and counts only those.
        let only = (m.kind == MigrationKind::ReplicationFactor).then(|| m.node.clone());
        let total = self.keys_held(only.as_deref()).await?;
        let report = |moved: u64, done: bool, after: &Option<(String, String)>| MetaRequest::Progress {
            migration: m.id.clone(),
            node: me.clone(),
            moved,
            total: total.max(moved),
            done,
            after: after.clone(),
        };
        // Resume where the last report left off: the keys up to it have moved (a key the node
        // takes since was placed by the new layout, so it reached the new owners directly).
        let from = m.progress.get(&me).cloned().unwrap_or_default();
        let (mut after, mut moved) = (from.after, from.moved);
        let (mut handed, mut reported) = (after.clone(), moved);
        // That tenant's keys are stored together, from just before its first key (no key is
        // empty) to the first key of another tenant.
        if let Some(t) = &only
            && after.is_none()
        {
            after = Some((t.clone(), String::new()));
        }
        'pages: loop {
            let scan = |after| KvRequest::Scan { after, limit: 256 };
            let entries = self
                .own_page(&mut after, scan, |r| match r {
                    KvResponse::Entries(e) => Some(e),
                    _ => None,
                })
                .await?;
            if entries.is_empty() {
                break;
            }
            for (tenant, key, versions) in entries {
                if only.as_ref().is_some_and(|t| *t != tenant) {
                    break 'pages;
                }
                let at = (tenant.clone(), key.clone());
                let live = holds_value(&versions);
                if let Err(e) = self.hand_over_key(&placement, &me, tenant, key, versions).await {
                    // What moved so far is on record, for people watching and to resume from.
                    let _ = self.meta(report(moved, false, &handed), until()).await;
                    return Err(e);
                }
                handed = Some(at);
                // Counted as the total counts them: a node change's total is the live keys
                // held (`Stats`), a factor change's every key of the tenant (`TenantKeys`).
                moved += u64::from(only.is_some() || live);
            }
            // A report that fails does not stop the move; the next one carries it.
            if moved - reported >= HAND_OVER_REPORT_EVERY
                && self.meta(report(moved, false, &handed), until()).await.is_ok()
            {
                reported = moved;
            }
        }
        if let Err(e) = self.hand_over_records(&placement, &me, only.as_deref()).await {
            let _ = self.meta(report(moved, false, &handed), until()).await;
            return Err(e);
        }
        self.meta(report(moved, true, &handed), until()).await?;
        Ok(Some(moved))
    }

    /// Sends the live idempotency records this node holds (of `only` that tenant's keys, when
    /// given) to the owners their keys gain, after the keys themselves: a replay through any
    /// node is then still told apart once the change completes and only the new owners are
    /// asked. A new owner keeps a record when it holds the record's write. Not resumed after
    /// a crash: a pass sends them all again, and an owner keeps a record once. A page's
    /// records go out together, so the peer links carry them in batches.
    async fn hand_over_records(&self, placement: &Placement, me: &str, only: Option<&str>) -> CoreResult<()> {
        let mut after = only.map(|t| (t.to_owned(), String::new()));
        loop {
            let req = KvRequest::Records { after: after.clone(), limit: 256 };
            let (found, last) = match self.peers.send(me, req, PEER_TIMEOUT_MS).await {
                Ok(Ok(KvResponse::Records { found, last })) => (found, last),
                Ok(Err(e)) => return Err(e),
                _ => return Err(CoreError::Unavailable("this node's replica did not list its records".into())),
            };
            let now = self.peers.now_ms();
            let mut sends = Vec::new();
            // The end, or another tenant's records after the one whose factor changes (the
            // page's sends before it still go out).
            let mut done = last.is_none();
            for (tenant, key, rec) in found {
                if only.is_some_and(|t| t != tenant) {
                    done = true;
                    break;
                }
                if rec.expires_ms <= now {
                    continue;
                }
                let rf = self.tenant(&tenant, now + PEER_TIMEOUT_MS).await?.replication_factor as usize;
                for target in placement.handoff_targets(me, &tenant, &key, rf) {
                    let req = KvRequest::Apply {
                        tenant: tenant.clone(),
                        key: key.clone(),
                        versions: vec![],
                        idem: Some(rec.clone()),
                    };
                    let call = self.peers.send_at(&target, req, placement.version, PEER_TIMEOUT_MS);
                    sends.push(async move { (target, call.await) });
                }
            }
            for (target, out) in futures_util::future::join_all(sends).await {
                new_owner_took(&format!("{target} (idempotency records)"), out)?;
            }
            match last {
                Some(l) if !done => after = Some(l),
                _ => return Ok(()),
            }
        }
    }

    /// How many keys this node holds: all of them, or `tenant`'s (counted a page at a time).
    async fn keys_held(&self, tenant: Option<&str>) -> CoreResult<u64> {
        let me = self.peers.me().to_owned();
        let unknown = || CoreError::Unavailable("this node's replica did not report its key count".into());
        let Some(tenant) = tenant else {
            return match self.peers.send(&me, KvRequest::Stats, PEER_TIMEOUT_MS).await {
                Ok(Ok(KvResponse::Stats { keys, .. })) => Ok(keys),
                _ => Err(unknown()),
            };
        };
        let (mut total, mut after) = (0, None);
        loop {
            let req = KvRequest::TenantKeys { tenant: tenant.to_owned(), after };
            match self.peers.send(&me, req, PEER_TIMEOUT_MS).await {
                Ok(Ok(KvResponse::Count(n, last))) => {
                    total += n;
                    match last {
                        Some(k) => after = Some(k),
                        None => return Ok(total),
                    }
                }
                _ => return Err(unknown()),
            }
        }
    }

    /// Sends one key this node holds to the owners it gains under `placement`.
    async fn hand_over_key(
        &self,
        placement: &Placement,
        me: &str,
        tenant: String,
        key: String,
        versions: Vec<Version>,
    ) -> CoreResult<()> {
        // Tenants are never deleted, so a failed lookup is the metadata group being
        // unreachable: stop, rather than count a key that did not move.
        let rf = self.tenant(&tenant, self.peers.now_ms() + PEER_TIMEOUT_MS).await?.replication_factor as usize;
        for target in placement.handoff_targets(me, &tenant, &key, rf) {
            let req = KvRequest::HandOver { tenant: tenant.clone(), key: key.clone(), versions: versions.clone() };
            new_owner_took(&target, self.peers.send_at(&target, req, placement.version, PEER_TIMEOUT_MS).await)?;
        }
        Ok(())
    }

    /// The next page of keys this node holds, after `after` (which it moves on): asked for
    /// with `ask` (a `Scan` or a `Digests` from `after`), taken from the answer by `take`;
    /// empty at the end.
    async fn own_page<T>(
        &self,
        after: &mut Option<(String, String)>,
        ask: impl FnOnce(Option<(String, String)>) -> KvRequest,
        take: impl FnOnce(KvResponse) -> Option<Vec<(String, String, T)>>,
    ) -> CoreResult<Vec<(String, String, T)>> {
        let me = self.peers.me().to_owned();
        let page = match self.peers.send(&me, ask(after.clone()), PEER_TIMEOUT_MS).await {
            Ok(Ok(r)) => take(r),
            Ok(Err(e)) => return Err(e),
            Err(_) => None,
        };
        let page = page.ok_or_else(|| CoreError::Unavailable("this node's replica did not answer a scan".into()))?;
        if let Some((t, k, _)) = page.last() {
            *after = Some((t.clone(), k.clone()));
        }
        Ok(page)
    }

    /// Offers the hints this node holds to every other member, once, and sends those it holds
    /// for nodes that hold no keys any more (removed for good) to their keys' replicas.
    pub async fn hand_off_round(&self) {
        let me = self.peers.me().to_owned();
        let mut targets = self.peers.members();
        if let Ok(Ok(KvResponse::Targets(held))) = self.peers.send(&me, KvRequest::HintTargets, PEER_TIMEOUT_MS).await {
            for t in held {
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
        }
        for m in targets.into_iter().filter(|m| *m != me) {
            match self.hand_off_to(&m).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(node = %m, hints = n, "hints delivered"),
                Err(e) => tracing::debug!(node = %m, error = %e.0, "hinted handoff paused"),
            }
        }
    }

    /// Delivers the hints this node holds for `target` (oldest first) and drops them once
    /// delivered. Returns how many went out.
    ///
    /// A hint whose write was placed by the layout this node serves by goes to `target`,
    /// fenced like the write it carries. One placed by an older layout goes to the key's
    /// replicas under the layout in use instead (`target` among them if it still is one):
    /// since then `target` may have handed the key over, and a copy it takes now would
    /// reach no one, while the write may have missed its quorum and live nowhere else.
    pub async fn hand_off_to(&self, target: &str) -> Result<usize, Unreachable> {
        let me = self.peers.me().to_owned();
        let mut sent = 0;
        loop {
            let req = KvRequest::Hints { target: target.to_owned(), limit: 256 };
            let hints = match self.peers.send(&me, req, PEER_TIMEOUT_MS).await {
                Ok(Ok(KvResponse::Hints(h))) => h,
                _ => return Ok(sent),
            };
            let Some(last) = hints.last().map(|h| h.seq) else { return Ok(sent) };
            let placement = self.peers.placement();
            let member = self.peers.members().iter().any(|m| m == target);
            for h in hints {
                // 0: kept before hints recorded their layout; delivered as they always were
                // while their node holds keys.
                let redirect = !((h.layout == 0 && member) || h.layout >= placement.version);
                let to = match redirect {
                    false => vec![target.to_owned()],
                    true => {
                        let until = self.peers.now_ms() + PEER_TIMEOUT_MS;
                        let tenant = self
                            .tenant_as_of(&h.tenant, until, placement.version)
                            .await
                            .map_err(|e| Unreachable(e.to_string()))?;
                        if tenant.rf_version > placement.version {
                            // Its factor moved by a layout this node does not serve by yet: the
                            // next round places it by that layout.
                            return Ok(sent);
                        }
                        Targets::new(&placement, &tenant, &h.key, Consistency::All).nodes
                    }
                };
                for node in to {
                    let req = KvRequest::Apply {
                        tenant: h.tenant.clone(),
                        key: h.key.clone(),
                        versions: h.versions.clone(),
                        idem: None,
                    };
                    let refused = match self.peers.send_at(&node, req, placement.version, PEER_TIMEOUT_MS).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.0,
                    };
                    // The hint's own node (or this one) does not take it: try again later, the
                    // hint first in line. One of a redirected hint's owners does not: it gets a
                    // hint of its own under the layout in use, so the others are not held up.
                    if !redirect || node == me {
                        return Err(Unreachable(format!("{node}: {refused}")));
                    }
                    let keep = KvRequest::Hint {
                        target: node.clone(),
                        tenant: h.tenant.clone(),
                        key: h.key.clone(),
                        versions: h.versions.clone(),
                        layout: placement.version,
                        // Its age goes with it: a version must not travel longer than a hint
                        // lives (past it, its key's tombstones may have been collected).
                        taken_ms: Some(h.taken_ms),
                    };
                    if !matches!(self.peers.send(&me, keep, PEER_TIMEOUT_MS).await, Ok(Ok(_))) {
                        return Err(Unreachable(format!("{node}: {refused}; and this node could not keep a hint")));
                    }
                }
                sent += 1;
            }
            let done = KvRequest::HintsDelivered { target: target.to_owned(), upto: last };
            if !matches!(self.peers.send(&me, done, PEER_TIMEOUT_MS).await, Ok(Ok(_))) {
                // Not dropped: the next round sends them again (replicas merge), not this loop.
                return Ok(sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_fence_floor_refuses_older_requests_before_the_layout_catches_up() {
        let members = vec![("n1".to_owned(), "h:1".to_owned(), 8)];
        let cell = ViewCell::new(Layout::initial(&members));
        let read = KvRequest::Read { tenant: "t".into(), key: "k".into() };
        assert!(cell.admit(&read, 1).is_ok());
        // The replica reports it handed keys over by version 3 (say, before a restart).
        cell.observe(&Ok(KvResponse::Fence(3)));
        assert_eq!(cell.fence(), 3);
        assert!(matches!(cell.admit(&read, 2), Err(CoreError::Unavailable(_))));
        assert!(cell.admit(&read, 3).is_ok());
        // Requests about no key (stats, scans) are never refused.
        assert!(cell.admit(&KvRequest::Stats, 0).is_ok());
        // A lower report does not lower it.
        cell.observe(&Ok(KvResponse::Fence(1)));
        assert_eq!(cell.fence(), 3);
    }

    #[test]
    fn a_write_placed_by_a_newer_layout_is_recorded_once_before_it_is_stored() {
        let members = vec![("n1".to_owned(), "h:1".to_owned(), 8)];
        let cell = ViewCell::new(Layout::initial(&members));
        let apply = KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions: vec![], idem: None };
        let read = KvRequest::Read { tenant: "t".into(), key: "k".into() };
        assert_eq!(cell.to_record(&apply, 4), Some(4));
        // Reads store nothing: a removal may go ahead of them.
        assert_eq!(cell.to_record(&read, 4), None);
        cell.observe(&Ok(KvResponse::Placed(4)));
        assert_eq!(cell.to_record(&apply, 4), None);
        assert_eq!(cell.to_record(&apply, 3), None);
        assert_eq!(cell.to_record(&apply, 5), Some(5));
        // A removal decided by a layout older than the node serves by is refused.
        let discard = KvRequest::Discard { layout: 0, keys: vec![] };
        assert!(matches!(cell.admit(&discard, 0), Err(CoreError::Unavailable(_))));
        assert!(cell.admit(&discard, 1).is_ok());
    }

    #[tokio::test]
    async fn a_write_is_fenced_again_after_its_layout_was_recorded() {
        let members = vec![("n1".to_owned(), "h:1".to_owned(), 8)];
        let cell = ViewCell::new(Layout::initial(&members));
        let apply =
            |sender| (KvRequest::Apply { tenant: "t".into(), key: "k".into(), versions: vec![], idem: None }, sender);
        let read = (KvRequest::Read { tenant: "t".into(), key: "k".into() }, 1);
        // Nothing to record: no call.
        let none =
            cell.admit_all(std::slice::from_ref(&read), |_| async { Err::<CoreResult<KvResponse>, ()>(()) }).await;
        assert_eq!(none, Ok(vec![Ok(())]));
        // While the replica records layout 1, the node follows layout 2 (and may hand keys over
        // by it): the write placed by 1 is refused after all, the one placed by 2 goes.
        let next = Layout { version: 2, ..Layout::initial(&members) };
        let verdicts = cell
            .admit_all(&[apply(1), apply(2), read], |placed| {
                assert_eq!(placed, KvRequest::Placed { version: 2 });
                cell.follow(next);
                async { Ok::<_, ()>(Ok(KvResponse::Placed(2))) }
            })
            .await
            .unwrap();
        assert!(matches!(verdicts[..], [Err(CoreError::Unavailable(_)), Ok(()), Err(CoreError::Unavailable(_))]));
        // Recorded: not again.
        assert_eq!(cell.to_record(&apply(2).0, 2), None);
        // A replica that cannot record refuses what it was to take.
        let failed = cell
            .admit_all(&[apply(3)], |_| async { Ok::<_, ()>(Err(CoreError::Unavailable("disk".into()))) })
            .await
            .unwrap();
        assert!(matches!(failed[..], [Err(CoreError::Unavailable(_))]));
    }
}
