//! Layout changes and the data they move.
//!
//! Adding or removing a storage node gives the layout a new version whose ring differs from
//! the old one. Until every node of the old ring has handed its keys to their new owners, the
//! layout keeps the old ring beside the new one (`Layout::previous`) and [`Placement`] answers
//! as DESIGN §4 asks: writes go to the union of the old and new replica sets (and need W in
//! each), reads need R of each. Each old owner reports its progress through the
//! metadata group; when the last one reports done, the old ring goes and the change is
//! complete. A [`Migration`] is the record of one such change, as `GetMigrationStatus` shows it.
//!
//! A tenant's replication factor change moves keys the same way, on the same ring: the layout
//! names the change ([`RfChange`]) and [`Placement`] answers with the replica sets of both
//! factors until every node has handed the tenant's keys over.

use std::collections::BTreeMap;

use crate::codec::{Decoder, Encoder};
use crate::kv::Ring;
use crate::store::{META as KEYSPACE, StoreError};

use super::state::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationKind {
    AddNode,
    RemoveNode,
    /// A tenant's replication factor changed; [`Migration::node`] names the tenant.
    ReplicationFactor,
}

impl MigrationKind {
    /// The name `GetMigrationStatus` reports in `type`: the origin's two names for node
    /// changes (its clients switch on them), and ours for a factor change, which it lacks.
    pub fn name(self) -> &'static str {
        match self {
            MigrationKind::AddNode => "node_addition",
            MigrationKind::RemoveNode => "node_deletion",
            MigrationKind::ReplicationFactor => "replication_factor",
        }
    }
}

/// One old owner's share of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeProgress {
    /// Keys handed to their new owners so far.
    pub moved: u64,
    /// Keys this node held when it began.
    pub total: u64,
    pub done: bool,
    /// The last key (tenant, key) handed over, in storage order: a hand-over that stops
    /// (a crash, an unreachable new owner) resumes after it.
    pub after: Option<(String, String)>,
}

/// Encodes an optional (tenant, key) cursor.
pub(super) fn encode_cursor(e: Encoder, c: &Option<(String, String)>) -> Encoder {
    match c {
        Some((t, k)) => e.u8(1).str(t).str(k),
        None => e.u8(0),
    }
}

pub(super) fn decode_cursor(d: &mut Decoder<'_>) -> Result<Option<(String, String)>, StoreError> {
    Ok(match d.u8()? {
        0 => None,
        _ => Some((d.string()?, d.string()?)),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub id: String,
    pub kind: MigrationKind,
    /// The node added or removed, or the tenant whose replication factor changed.
    pub node: String,
    /// The layout version the change created.
    pub version: u64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Ended before its keys moved: an added node removed by force while joining.
    pub cancelled: bool,
    /// Per node of the old ring (they hold the keys that move).
    pub progress: BTreeMap<String, NodeProgress>,
}

impl Migration {
    pub fn keys_migrated(&self) -> u64 {
        self.progress.values().map(|p| p.moved).sum()
    }

    pub fn total_keys(&self) -> u64 {
        self.progress.values().map(|p| p.total).sum()
    }

    /// 0..=100; a finished migration is 100 whatever its counts.
    pub fn percentage(&self) -> f32 {
        let total = self.total_keys();
        if self.finished_ms.is_some() {
            return 100.0;
        }
        if total == 0 {
            return 0.0;
        }
        (self.keys_migrated().min(total) as f64 / total as f64 * 100.0) as f32
    }

    /// `in_progress`, `completed` or `cancelled`, as `GetMigrationStatus` reports it (the
    /// origin's names; a change starts moving keys as soon as it is recorded, so it is never
    /// `pending`, and a hand-over that fails is retried rather than given up, so never `failed`).
    pub fn status(&self) -> &'static str {
        match (self.finished_ms, self.cancelled) {
            (None, _) => "in_progress",
            (Some(_), false) => "completed",
            (Some(_), true) => "cancelled",
        }
    }

    pub(super) fn encode(&self, e: Encoder) -> Encoder {
        let kind = match self.kind {
            MigrationKind::AddNode => 1,
            MigrationKind::RemoveNode => 2,
            MigrationKind::ReplicationFactor => 3,
        };
        let mut e = e
            .str(&self.id)
            .u8(kind)
            .str(&self.node)
            .u64(self.version)
            .u64(self.started_ms)
            .u64(self.finished_ms.map_or(0, |f| f.saturating_add(1)))
            .u8(self.cancelled as u8)
            .u64(self.progress.len() as u64);
        for (node, p) in &self.progress {
            e = encode_cursor(e.str(node).u64(p.moved).u64(p.total).u8(p.done as u8), &p.after);
        }
        e
    }

    pub(super) fn decode(d: &mut Decoder<'_>) -> Result<Migration, StoreError> {
        let id = d.string()?;
        let kind = match d.u8()? {
            1 => MigrationKind::AddNode,
            2 => MigrationKind::RemoveNode,
            3 => MigrationKind::ReplicationFactor,
            k => return Err(StoreError::Corrupt { keyspace: KEYSPACE, reason: format!("migration kind {k}") }),
        };
        let node = d.string()?;
        let version = d.u64()?;
        let started_ms = d.u64()?;
        let finished_ms = d.u64()?.checked_sub(1);
        let cancelled = d.u8()? != 0;
        let n = d.u64()?;
        let mut progress = BTreeMap::new();
        for _ in 0..n {
            let name = d.string()?;
            let (moved, total, done) = (d.u64()?, d.u64()?, d.u8()? != 0);
            let p = NodeProgress { moved, total, done, after: decode_cursor(d)? };
            progress.insert(name, p);
        }
        Ok(Migration { id, kind, node, version, started_ms, finished_ms, cancelled, progress })
    }
}

/// A tenant's replication factor change under way: until every node has handed the tenant's
/// keys over, its keys live in the replica sets of both factors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfChange {
    pub tenant: String,
    pub from: u32,
    pub to: u32,
}

/// Where a key lives under one layout: the ring of its storage nodes, and while a change is
/// under way, the ring before it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub version: u64,
    pub current: Ring,
    pub previous: Option<Ring>,
    pub rf_change: Option<RfChange>,
}

impl Placement {
    pub fn new(layout: &Layout) -> Placement {
        Placement {
            version: layout.version,
            current: Ring::new(&layout.ring_nodes()),
            previous: layout.previous.as_ref().map(|p| Ring::new(p)),
            rf_change: layout.rf_change.clone(),
        }
    }

    /// Whether no change is under way: the current ring alone, at each tenant's factor, places
    /// every key.
    pub fn settled(&self) -> bool {
        self.previous.is_none() && self.rf_change.is_none()
    }

    /// The factors before and after the change under way for `tenant`'s keys, if one is.
    fn rf_change_of(&self, tenant: &str) -> Option<(usize, usize)> {
        self.rf_change.as_ref().filter(|c| c.tenant == tenant).map(|c| (c.from as usize, c.to as usize))
    }

    /// The replica sets a write must reach W of, each: the new one, and while ranges move
    /// the old one too.
    pub fn write_sets(&self, tenant: &str, key: &str, rf: usize) -> Vec<Vec<String>> {
        let owned = |r: &Ring, rf| r.replicas(tenant, key, rf).into_iter().map(str::to_owned).collect::<Vec<_>>();
        if let Some((from, to)) = self.rf_change_of(tenant) {
            let (old, new) = (owned(&self.current, from), owned(&self.current, to));
            return if old == new { vec![new] } else { vec![old, new] };
        }
        let new = owned(&self.current, rf);
        match &self.previous {
            Some(old) => {
                let old = owned(old, rf);
                if old == new { vec![new] } else { vec![old, new] }
            }
            None => vec![new],
        }
    }

    /// Every node a write goes to (the union of [`Placement::write_sets`]), in a fixed order.
    pub fn write_nodes(&self, tenant: &str, key: &str, rf: usize) -> Vec<String> {
        Self::union(&self.write_sets(tenant, key, rf))
    }

    /// The nodes of `sets`, each once, in order of first appearance.
    pub fn union(sets: &[Vec<String>]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in sets.iter().flatten() {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    /// The owners before the change (the only ones when none is under way): they hold every
    /// key of the range, so a write's coordinator asks them first. A read during a change asks
    /// R of each of [`Placement::write_sets`].
    pub fn read_set(&self, tenant: &str, key: &str, rf: usize) -> Vec<String> {
        let rf = self.rf_change_of(tenant).map_or(rf, |(from, _)| from);
        let ring = self.previous.as_ref().unwrap_or(&self.current);
        ring.replicas(tenant, key, rf).into_iter().map(str::to_owned).collect()
    }

    /// The new owners `me` must hand a key to: those in the new set but not the old, when
    /// `me` is an old owner (every old owner sends, so a key reaches them while any old owner
    /// holding it is alive). Empty when no change is under way.
    ///
    /// A replication factor that grows works the same way: the old owners send to the owners
    /// the larger factor adds. One that shrinks adds no owner, but a write acknowledged by W
    /// of the larger set may have missed the smaller one's members: each owner it drops sends
    /// the key to every owner that stays. (If none of the W was dropped, the W are all in the
    /// smaller set and outnumber its R's complement.)
    pub fn handoff_targets(&self, me: &str, tenant: &str, key: &str, rf: usize) -> Vec<String> {
        if let Some((from, to)) = self.rf_change_of(tenant) {
            let old = self.current.replicas(tenant, key, from);
            let new = self.current.replicas(tenant, key, to);
            if !old.contains(&me) || (to < from && new.contains(&me)) {
                return Vec::new();
            }
            return new.into_iter().filter(|n| !(to > from && old.contains(n))).map(str::to_owned).collect();
        }
        let Some(old) = &self.previous else { return Vec::new() };
        let old = old.replicas(tenant, key, rf);
        if !old.contains(&me) {
            return Vec::new();
        }
        self.current.replicas(tenant, key, rf).into_iter().filter(|n| !old.contains(n)).map(str::to_owned).collect()
    }
}
