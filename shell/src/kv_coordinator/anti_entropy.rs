//! Anti-entropy over Merkle trees: what hints and read repair missed, a pass finds and
//! repairs. Each pass this node builds, from one scan of its keys, a tree per peer over the
//! keys the two should both hold (core `kv::merkle`), asks the peer for the hashes of the
//! tree it builds over the same keys, and goes down only where they differ: range roots,
//! then inner nodes, then segments. Only for the segments that differ do the two exchange
//! key digests, and only the keys whose digests differ are repaired. Between replicas in
//! sync, a pass costs each node one scan for its own trees and one per peer that asks, and
//! sixteen hashes per peer on the wire.
//!
//! Which keys two nodes share is a function of the layout, so both sides must build by the
//! same layout version; a peer that serves by another refuses, and the next pass tries again.
//!
//! A pass that compared this node with a peer to the end, repairing every key that differed,
//! began at a time since which every tombstone held here is held there too (or what it
//! deleted is gone there). Once that time is known for every other node, this node's replica
//! hears of the earliest ([`KvRequest::Repaired`]): its spent tombstones stored before it
//! may go. A node that stays away holds them back on the others until it returns and is
//! compared, as Scylla's repair-based tombstone collection does, so a node kept down longer
//! than the grace cannot bring back what was deleted meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tessera_core::kv::merkle::{
    self, LEAF_LEVEL, MAX_TREE_KEY_BYTES, MerkleTree, TreeAnswer, TreeBuilder, TreeQuery, key_bytes,
};
use tessera_core::kv::ring::key_position;
use tessera_core::kv::{KvRequest, KvResponse};
use tessera_core::meta::{MetaRequest, MetaResponse, Placement};
use tessera_core::{CoreError, CoreResult};

use super::{KvCoordinator, PEER_TIMEOUT_MS, Peers, lock};

/// What one pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AntiEntropyReport {
    /// Peers whose trees were compared with this node's.
    pub peers: usize,
    /// Ranges whose roots differed, summed over peers.
    pub ranges_differing: usize,
    /// Segments (leaves) whose hashes differed, summed over peers.
    pub segments_differing: usize,
    /// Pages of key digests asked for (each answer holds whole segments, up to a budget).
    pub key_pages: usize,
    /// Keys whose digests were exchanged (those of the differing segments).
    pub keys_compared: usize,
    /// Keys brought to the same versions on both sides.
    pub repaired: usize,
    /// What the replica was told: every other node compared to the end in passes begun at or
    /// after this time (less [`REPAIR_MARGIN_MS`]); `None` while some node never was.
    pub repaired_before: Option<u64>,
}

/// A key this node holds: (tenant, key, digest of its versions).
type Digested = (String, String, Vec<u8>);

/// A key's digest on this node and on the peer (`None`: not held there).
type DigestPair = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Replication factors by tenant, as looked up during one walk.
type Factors = BTreeMap<String, Option<usize>>;

/// A tree built to answer a peer: the layout version it was built by, when, and the tree.
pub(super) type KeptTree = (u64, u64, Arc<MerkleTree>);

/// How long a tree built for a peer's first question answers its deeper ones (a pass asks
/// them within a few round trips; a later pass starts with a fresh tree).
const TREE_KEEP_MS: u64 = 30_000;
/// Most peers whose trees are kept at once (the oldest goes first).
const TREES_KEPT: usize = 64;
/// How long a tree question may take: the peer scans its keys to answer, which takes long on
/// a big node, and nothing waits on anti-entropy.
pub const TREE_TIMEOUT_MS: u64 = 60_000;
/// Taken off a pass's start before the replica hears of it, as slack: the start is the
/// replica's own stamp (`KvRequest::Stamp`, which never goes back), taken in its queue after
/// every write stepped before it, so the pass's scan sees what the stamp covers.
pub const REPAIR_MARGIN_MS: u64 = 1_000;

fn bad_answer(peer: &str, what: &str) -> CoreError {
    CoreError::Unavailable(format!("{peer} answered an anti-entropy question with {what}"))
}

impl<P: Peers> KvCoordinator<P> {
    /// One anti-entropy pass with every other node that holds keys. Returns what it found.
    pub async fn anti_entropy_pass(&self) -> AntiEntropyReport {
        let me = self.peers.me().to_owned();
        let placement = self.peers.placement();
        let members = self.peers.members();
        let mut report = AntiEntropyReport::default();
        if members.is_empty() {
            // A layout this node has not learnt yet: it may hold writes placed by the one
            // the others follow, so its tombstones wait for a pass by that one.
            return report;
        }
        // When the pass began, by the replica's stamp: the scale it records tombstones by.
        // Without one (the replica is busy or failing) the pass still repairs, but counts for
        // no tombstone.
        let began = match self.peers.send_at(&me, KvRequest::Stamp, placement.version, PEER_TIMEOUT_MS).await {
            Ok(Ok(KvResponse::Stamp(t))) => Some(t),
            other => {
                tracing::debug!(answer = ?other, "the replica gave no stamp: this pass counts for no tombstone");
                None
            }
        };
        // While a layout change is under way, an old owner that was away may still hand over
        // a value deleted meanwhile, to a new owner that holds the tombstone only since its
        // own hand-over: tombstones wait for passes by the settled layout (a new version, so
        // the comparisons made until then no longer count). Repairs go on.
        let counts = began.filter(|_| placement.settled());
        if !members.contains(&me) {
            // Removed (ids are never reused): this node replicates nothing any more, and what
            // it still holds is served to no one, so its tombstones wait for nothing. (A node
            // whose view lags its join looks the same: its replica refuses the mark once it
            // took a hand-over placed by the layout that adds it.)
            if let Some(began) = counts {
                report.repaired_before = self.tell_repaired(&me, &[], began, placement.version).await;
            }
            return report;
        }
        let peers: Vec<String> = members.into_iter().filter(|m| *m != me).collect();
        let (trees, whole) = match self.build_trees(&placement, &peers).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "anti-entropy pass stopped while building its trees");
                return report;
            }
        };
        for (peer, tree) in &trees {
            match self.compare_with(&placement, peer, tree, &mut report).await {
                Ok(clean) => {
                    report.peers += 1;
                    if let Some(began) = counts.filter(|_| clean && whole) {
                        lock(&self.compared).insert(peer.clone(), (placement.version, began));
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "anti-entropy skipped a peer this pass"),
            }
        }
        if let Some(began) = counts {
            report.repaired_before = self.tell_repaired(&me, &peers, began, placement.version).await;
        }
        report
    }

    /// Tells this node's replica since when every other node has been compared with it to
    /// the end (see the module's doc), and returns that time. Only comparisons by the layout
    /// in use count: under another, the two nodes shared other keys.
    async fn tell_repaired(&self, me: &str, peers: &[String], began: u64, layout: u64) -> Option<u64> {
        let since = {
            let mut compared = lock(&self.compared);
            compared.retain(|p, (by, _)| peers.contains(p) && *by == layout);
            peers
                .iter()
                .map(|p| compared.get(p).map(|(_, at)| *at))
                .try_fold(began, |low, at| at.map(|at| low.min(at)))?
        };
        let before_ms = since.saturating_sub(REPAIR_MARGIN_MS);
        match self.peers.send_at(me, KvRequest::Repaired { before_ms, layout }, layout, PEER_TIMEOUT_MS).await {
            Ok(Ok(_)) => Some(before_ms),
            other => {
                tracing::debug!(answer = ?other, "the replica did not take the anti-entropy mark");
                None
            }
        }
    }

    /// Answers `from`'s question about the tree over the keys this node shares with it.
    /// `layout` is the version `from` built its own tree by; this node must serve by the same
    /// one, or the two trees would cover different keys.
    pub async fn answer_tree(&self, from: &str, layout: u64, query: TreeQuery) -> CoreResult<TreeAnswer> {
        let placement = self.peers.placement();
        if placement.version != layout {
            return Err(CoreError::Unavailable(format!(
                "{from} compares trees by layout version {layout}, this node serves by version {}; a later pass \
                 will compare",
                placement.version
            )));
        }
        match query {
            TreeQuery::Hashes { level, indices } => {
                let tree = self.tree_for(&placement, from, level == 1).await?;
                tree.hashes(level, &indices).map(TreeAnswer::Hashes).ok_or_else(|| {
                    CoreError::InvalidArgument(format!(
                        "level {level} or one of its {} nodes is out of range",
                        indices.len()
                    ))
                })
            }
            TreeQuery::Keys { segments } => {
                let (covered, items) = self.keys_page(&placement, from, segments.into_iter().collect()).await?;
                Ok(TreeAnswer::Keys { covered, items })
            }
        }
    }

    /// The tree over the keys shared with `peer`: built afresh when `fresh` (a pass's first
    /// question) or when none is kept for this layout, else the one kept since.
    async fn tree_for(&self, placement: &Placement, peer: &str, fresh: bool) -> CoreResult<Arc<MerkleTree>> {
        let now = self.peers.now_ms();
        if !fresh
            && let Some((_, _, t)) = lock(&self.trees)
                .get(peer)
                .filter(|(v, at, _)| *v == placement.version && now.saturating_sub(*at) < TREE_KEEP_MS)
        {
            return Ok(t.clone());
        }
        let (mut built, _) = self.build_trees(placement, &[peer.to_owned()]).await?;
        let tree = Arc::new(built.remove(peer).unwrap_or_else(|| TreeBuilder::new().finish()));
        let mut kept = lock(&self.trees);
        if kept.len() >= TREES_KEPT
            && !kept.contains_key(peer)
            && let Some(oldest) = kept.iter().min_by_key(|(_, (_, at, _))| *at).map(|(p, _)| p.clone())
        {
            kept.remove(&oldest);
        }
        kept.insert(peer.to_owned(), (placement.version, now, tree.clone()));
        Ok(tree)
    }

    /// Compares this node's tree for `peer` with the peer's, top down, and repairs the keys
    /// of the segments that differ. Whether every key that differed was repaired.
    async fn compare_with(
        &self,
        placement: &Placement,
        peer: &str,
        tree: &MerkleTree,
        report: &mut AntiEntropyReport,
    ) -> CoreResult<bool> {
        let mut differing: Vec<u32> = (0..merkle::RANGES as u32).collect();
        for level in 1..=LEAF_LEVEL {
            if level > 1 {
                differing = merkle::children(&differing);
            }
            let query = TreeQuery::Hashes { level, indices: differing.clone() };
            let theirs = match self.peers.tree(peer, query, placement.version, TREE_TIMEOUT_MS).await? {
                TreeAnswer::Hashes(h) if h.len() == differing.len() => h,
                _ => return Err(bad_answer(peer, "the wrong hashes")),
            };
            differing = tree.differing(level, &differing, &theirs);
            if level == 1 {
                report.ranges_differing += differing.len();
            }
            if differing.is_empty() {
                return Ok(true);
            }
        }
        report.segments_differing += differing.len();
        let mut clean = true;
        let mut rest = differing;
        while !rest.is_empty() {
            let query = TreeQuery::Keys { segments: rest.clone() };
            let (covered, items) = match self.peers.tree(peer, query, placement.version, TREE_TIMEOUT_MS).await? {
                TreeAnswer::Keys { covered, items } if covered > 0 => (covered as usize, items),
                _ => return Err(bad_answer(peer, "no keys")),
            };
            report.key_pages += 1;
            let done: BTreeSet<u32> = rest.drain(..covered.min(rest.len())).collect();
            let mine = self.keys_in(placement, peer, &done).await?;
            // Per key: (this node's digest, the peer's); a key one side lacks differs.
            let (mut keys, mut factors): (BTreeMap<(String, String), DigestPair>, _) =
                (BTreeMap::new(), Factors::new());
            for (t, k, d) in mine.into_values().flatten() {
                keys.entry((t, k)).or_default().0 = Some(d);
            }
            for (t, k, d) in items {
                // Only keys of the segments asked about that both nodes should hold: a peer
                // that answers with others is wrong, and this node takes none of them.
                if done.contains(&(merkle::segment_of(key_position(&t, &k)) as u32))
                    && self.shared(&mut factors, placement, peer, &t, &k).await?
                {
                    keys.entry((t, k)).or_default().1 = Some(d);
                }
            }
            report.keys_compared += keys.len();
            for ((tenant, key), _) in keys.into_iter().filter(|(_, (a, b))| a != b) {
                match self.repair_key(placement.version, peer, tenant, key.clone()).await {
                    Ok(true) => report.repaired += 1,
                    Ok(false) => {}
                    // The peer or this node's replica is away: the next pass tries again.
                    Err(e @ CoreError::Unavailable(_)) => return Err(e),
                    // One key that cannot be merged (say, too many siblings) must not keep
                    // the others from being repaired.
                    Err(e) => {
                        clean = false;
                        tracing::warn!(%peer, key = %key, error = %e, "anti-entropy could not repair a key");
                    }
                }
            }
        }
        Ok(clean)
    }

    /// Brings one key to the same versions here and on `peer`: pushes this node's versions
    /// there and applies the merged set the peer answers with here. Whether anything was
    /// held on either side.
    async fn repair_key(&self, layout: u64, peer: &str, tenant: String, key: String) -> CoreResult<bool> {
        let me = self.peers.me().to_owned();
        let versions = |r: super::PeerResult, whose: &str| match r {
            Ok(Ok(KvResponse::Versions(v))) => Ok(v),
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) | Err(_) => Err(CoreError::Unavailable(format!("{whose} gave no versions of {key:?}"))),
        };
        let read = KvRequest::Read { tenant: tenant.clone(), key: key.clone() };
        let mine = versions(self.peers.send_at(&me, read, layout, PEER_TIMEOUT_MS).await, "this node")?;
        let push = KvRequest::Apply { tenant: tenant.clone(), key: key.clone(), versions: mine, idem: None };
        let merged = versions(self.peers.send_at(peer, push, layout, PEER_TIMEOUT_MS).await, peer)?;
        if merged.is_empty() {
            return Ok(false);
        }
        let pull = KvRequest::Apply { tenant, key: key.clone(), versions: merged, idem: None };
        versions(self.peers.send_at(&me, pull, layout, PEER_TIMEOUT_MS).await, "this node")?;
        Ok(true)
    }

    /// One tree per peer in `peers` over the keys this node and that peer should both hold
    /// under `placement`, from one scan, and whether they cover every key held here (none
    /// of a tenant this node's metadata does not know yet was left out).
    async fn build_trees(
        &self,
        placement: &Placement,
        peers: &[String],
    ) -> CoreResult<(BTreeMap<String, MerkleTree>, bool)> {
        let mut builders: BTreeMap<String, TreeBuilder> =
            peers.iter().map(|p| (p.clone(), TreeBuilder::new())).collect();
        let skipped = self
            .for_each_shared(placement, |(t, k, d), position, replicas| {
                for r in replicas {
                    if let Some(b) = builders.get_mut(r) {
                        b.add(position, t, k, d);
                    }
                }
            })
            .await?;
        Ok((builders.into_iter().map(|(p, b)| (p, b.finish())).collect(), !skipped))
    }

    /// This node's keys that `peer` should hold too, in the first of `segments` (ascending),
    /// whole segments up to [`MAX_TREE_KEY_BYTES`] (at least one): how many segments they
    /// cover, and the keys by segment. Memory stays within the budget and a segment.
    async fn keys_page(
        &self,
        placement: &Placement,
        peer: &str,
        segments: BTreeSet<u32>,
    ) -> CoreResult<(u32, Vec<Digested>)> {
        let mut held: BTreeMap<u32, (usize, Vec<Digested>)> = BTreeMap::new();
        let (mut bytes, mut cutoff) = (0usize, u32::MAX);
        self.for_each_shared(placement, |item, position, replicas| {
            let s = merkle::segment_of(position) as u32;
            if s > cutoff || !segments.contains(&s) || !replicas.iter().any(|r| r == peer) {
                return;
            }
            let size = key_bytes(&item.0, &item.1, &item.2);
            let entry = held.entry(s).or_default();
            entry.0 += size;
            entry.1.push(item.clone());
            bytes += size;
            // Over budget: give up the highest segments held (the ones after it too).
            while bytes > MAX_TREE_KEY_BYTES && held.len() > 1 {
                let Some((last, (size, _))) = held.pop_last() else { break };
                bytes -= size;
                cutoff = last.saturating_sub(1);
            }
        })
        .await?;
        let covered = segments.iter().take_while(|s| **s <= cutoff).count();
        let items = held.into_values().flat_map(|(_, keys)| keys).collect();
        Ok((u32::try_from(covered).unwrap_or(u32::MAX), items))
    }

    /// Whether this node and `peer` should both hold `tenant`'s `key` under `placement`.
    async fn shared(
        &self,
        factors: &mut Factors,
        placement: &Placement,
        peer: &str,
        tenant: &str,
        key: &str,
    ) -> CoreResult<bool> {
        let Some(rf) = self.replication_factor(factors, tenant).await? else { return Ok(false) };
        let replicas = placement.write_nodes(tenant, key, rf);
        Ok(replicas.iter().any(|r| r == peer) && replicas.iter().any(|r| r == self.peers.me()))
    }

    /// A tenant's replication factor as this node's metadata has it applied, looked up once
    /// per walk; `None` for a tenant not known here (its keys are left alone). A local read,
    /// not a current one: anti-entropy must work while this node's metadata lags the group
    /// (say, just after a restart), and a stale factor only costs a few extra comparisons.
    async fn replication_factor(&self, factors: &mut Factors, tenant: &str) -> CoreResult<Option<usize>> {
        if let Some(rf) = factors.get(tenant) {
            return Ok(*rf);
        }
        let req = MetaRequest::Tenant { id: tenant.to_owned(), current: false };
        let rf = match self.meta(req, self.peers.now_ms() + PEER_TIMEOUT_MS).await? {
            MetaResponse::Tenant(t) => t.map(|t| t.replication_factor as usize),
            other => return Err(super::unexpected(other)),
        };
        factors.insert(tenant.to_owned(), rf);
        Ok(rf)
    }

    /// This node's keys that `peer` should hold too, in `segments`, by segment.
    async fn keys_in(
        &self,
        placement: &Placement,
        peer: &str,
        segments: &BTreeSet<u32>,
    ) -> CoreResult<BTreeMap<u32, Vec<Digested>>> {
        let mut out: BTreeMap<u32, Vec<Digested>> = BTreeMap::new();
        self.for_each_shared(placement, |item, position, replicas| {
            let s = merkle::segment_of(position) as u32;
            if segments.contains(&s) && replicas.iter().any(|r| r == peer) {
                out.entry(s).or_default().push(item.clone());
            }
        })
        .await?;
        Ok(out)
    }

    /// Calls `each` with every key this node holds and is a replica of under `placement`
    /// (in storage order, with its ring position and replicas). A key of a tenant not known
    /// here is skipped (the answer says whether one was); a metadata machine that does not
    /// answer stops the walk.
    async fn for_each_shared(
        &self,
        placement: &Placement,
        mut each: impl FnMut(&Digested, u64, &[String]) + Send,
    ) -> CoreResult<bool> {
        let me = self.peers.me().to_owned();
        let (mut after, mut factors, mut skipped) = (None, Factors::new(), false);
        loop {
            let scan = |after| KvRequest::Digests { after, limit: 1000 };
            let page = self
                .own_page(&mut after, scan, |r| match r {
                    KvResponse::Digests(d) => Some(d),
                    _ => None,
                })
                .await?;
            if page.is_empty() {
                return Ok(skipped);
            }
            for item in &page {
                let Some(rf) = self.replication_factor(&mut factors, &item.0).await? else {
                    skipped = true;
                    continue;
                };
                let replicas = placement.write_nodes(&item.0, &item.1, rf);
                if replicas.contains(&me) {
                    each(item, key_position(&item.0, &item.1), &replicas);
                }
            }
        }
    }
}
