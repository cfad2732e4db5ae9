//! The replicated cluster metadata: the layout (members and its version), the tenants, and
//! the layout changes (migrations) with their progress.
//! Every node applies the same committed commands in the same order, so each holds the same
//! state at the same log index; `apply` is the only way it changes.

use std::collections::BTreeMap;
use std::ops::ControlFlow::Continue;

use sha2::{Digest, Sha256};

use crate::codec::{Decoder, Encoder};
use crate::error::{CoreError, CoreResult};
use crate::store::{META as KEYSPACE, StoreError, StoreRead, WriteBatch, for_each_prefix};

use super::keys;
use super::migration::{Migration, MigrationKind, NodeProgress, RfChange, decode_cursor, encode_cursor};

/// One node of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// host:port its peers and clients reach it at.
    pub addr: String,
    pub vnodes: u32,
    /// Its id in the Raft group (raft-rs numbers peers).
    pub raft_id: u64,
    /// Whether it holds data (is on the ring). A removed node that votes in the Raft group
    /// stays listed with `false`, so the group can still reach it.
    pub storage: bool,
}

/// A node's number in the Raft group (raft-rs numbers peers), derived from its id so that a
/// node joining an existing cluster knows its own before it has seen any metadata.
pub fn raft_id_of(node_id: &str) -> u64 {
    let h = Sha256::digest(node_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    // 0 is raft-rs's "no node".
    u64::from_be_bytes(b).max(1)
}

/// The members at one layout version. Placement is a pure function of this value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub version: u64,
    /// Sorted by id.
    pub members: Vec<Member>,
    /// The ring's nodes (id, vnodes) before the change under way, until every old owner has
    /// handed its keys over; `None` when no change is under way.
    pub previous: Option<Vec<(String, u32)>>,
    /// A tenant's replication factor change under way (never at once with `previous`).
    pub rf_change: Option<RfChange>,
}

impl Layout {
    /// The first layout of a cluster: the initial members, in id order.
    pub fn initial(members: &[(String, String, u32)]) -> Layout {
        let mut sorted: Vec<&(String, String, u32)> = members.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let members = sorted
            .into_iter()
            .map(|(id, addr, vnodes)| Member {
                id: id.clone(),
                addr: addr.clone(),
                vnodes: *vnodes,
                raft_id: raft_id_of(id),
                storage: true,
            })
            .collect();
        Layout { version: 1, members, previous: None, rf_change: None }
    }

    /// The nodes on the ring now (id, vnodes), in id order.
    pub fn ring_nodes(&self) -> Vec<(String, u32)> {
        self.members.iter().filter(|m| m.storage).map(|m| (m.id.clone(), m.vnodes)).collect()
    }

    /// Whether `id` is on the ring a change under way started from (it owes a hand-over, or
    /// had one exempted).
    pub fn handing_over(&self, id: &str) -> bool {
        self.previous.as_ref().is_some_and(|p| p.iter().any(|(n, _)| n == id))
    }

    /// The members that hold keys: those on the ring and, while a change is under way, those
    /// still handing theirs over. A node removed for good is not among them.
    pub fn data_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.storage || self.handing_over(&m.id))
    }

    /// The ids of [`Layout::data_members`].
    pub fn data_nodes(&self) -> Vec<String> {
        self.data_members().map(|m| m.id.clone()).collect()
    }

    pub fn by_raft_id(&self, raft_id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.raft_id == raft_id)
    }

    pub fn by_id(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn encode(&self, e: Encoder) -> Encoder {
        let mut e = e.u64(self.version).u64(self.members.len() as u64);
        for m in &self.members {
            e = e.str(&m.id).str(&m.addr).u64(m.vnodes as u64).u64(m.raft_id).u8(m.storage as u8);
        }
        // The change under way: none (0), the ring before it (1), or a factor change (2).
        debug_assert!(self.previous.is_none() || self.rf_change.is_none(), "one change at a time");
        match (&self.previous, &self.rf_change) {
            (Some(nodes), _) => {
                e = e.u8(1).u64(nodes.len() as u64);
                for (id, vnodes) in nodes {
                    e = e.str(id).u64(*vnodes as u64);
                }
                e
            }
            (None, Some(c)) => e.u8(2).str(&c.tenant).u64(c.from as u64).u64(c.to as u64),
            (None, None) => e.u8(0),
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Layout, StoreError> {
        let version = d.u64()?;
        let n = d.u64()?;
        let mut members = Vec::new();
        for _ in 0..n {
            members.push(Member {
                id: d.string()?,
                addr: d.string()?,
                vnodes: d.u64()? as u32,
                raft_id: d.u64()?,
                storage: d.u8()? != 0,
            });
        }
        let (mut previous, mut rf_change) = (None, None);
        match d.u8()? {
            0 => {}
            1 => {
                let n = d.u64()?;
                let mut nodes = Vec::new();
                for _ in 0..n {
                    nodes.push((d.string()?, d.u64()? as u32));
                }
                previous = Some(nodes);
            }
            2 => rf_change = Some(RfChange { tenant: d.string()?, from: d.u64()? as u32, to: d.u64()? as u32 }),
            t => return Err(StoreError::Corrupt { keyspace: KEYSPACE, reason: format!("layout change kind {t}") }),
        }
        Ok(Layout { version, members, previous, rf_change })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: String,
    pub replication_factor: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The layout version at which the placement of this tenant's keys last changed by its
    /// factor (a change began, ended, or took effect at once); 0 if never. A coordinator
    /// serving by an older layout must catch up before it places the tenant's keys.
    pub rf_version: u64,
}

/// Marks a stored factor followed by `rf_version` (records from before it have neither).
const RF_VERSIONED: u64 = 1 << 63;

impl TenantRecord {
    fn encode(&self, e: Encoder) -> Encoder {
        e.str(&self.id)
            .u64(self.replication_factor as u64 | RF_VERSIONED)
            .u64(self.rf_version)
            .u64(self.created_ms)
            .u64(self.updated_ms)
    }

    fn decode(d: &mut Decoder<'_>) -> Result<TenantRecord, StoreError> {
        let id = d.string()?;
        let rf = d.u64()?;
        let rf_version = if rf & RF_VERSIONED != 0 { d.u64()? } else { 0 };
        Ok(TenantRecord {
            id,
            replication_factor: (rf & !RF_VERSIONED) as u32,
            created_ms: d.u64()?,
            updated_ms: d.u64()?,
            rf_version,
        })
    }
}

/// A change to the metadata, as it travels in the Raft log. The proposer stamps the time,
/// so applying is deterministic on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateTenant {
        id: String,
        replication_factor: u32,
        at_ms: u64,
    },
    /// Change a tenant's factor. With a migration id, keys move to the new replica sets
    /// first (a migration of that id) when the sets differ; without one (a command logged by
    /// an older version) the factor is simply set.
    SetReplicationFactor {
        id: String,
        replication_factor: u32,
        migration: Option<String>,
        at_ms: u64,
    },
    /// Put a storage node on the ring (a new layout version) and start moving keys to it.
    AddNode {
        id: String,
        addr: String,
        vnodes: u32,
        migration: String,
        at_ms: u64,
    },
    /// Take a node off the ring (a new layout version) and start moving its keys away.
    /// `force` allows leaving fewer storage nodes than some tenant's replication factor.
    RemoveNode {
        id: String,
        force: bool,
        migration: String,
        at_ms: u64,
    },
    /// An old owner's progress in handing keys over, up to and including key `after`.
    Progress {
        migration: String,
        node: String,
        moved: u64,
        total: u64,
        done: bool,
        after: Option<(String, String)>,
        at_ms: u64,
    },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Command::CreateTenant { id, replication_factor, at_ms } => {
                Encoder::new().u8(1).str(id).u64(*replication_factor as u64).u64(*at_ms).finish()
            }
            Command::SetReplicationFactor { id, replication_factor, migration: None, at_ms } => {
                Encoder::new().u8(2).str(id).u64(*replication_factor as u64).u64(*at_ms).finish()
            }
            Command::SetReplicationFactor { id, replication_factor, migration: Some(m), at_ms } => {
                Encoder::new().u8(6).str(id).u64(*replication_factor as u64).str(m).u64(*at_ms).finish()
            }
            Command::AddNode { id, addr, vnodes, migration, at_ms } => {
                Encoder::new().u8(3).str(id).str(addr).u64(*vnodes as u64).str(migration).u64(*at_ms).finish()
            }
            Command::RemoveNode { id, force, migration, at_ms } => {
                Encoder::new().u8(4).str(id).u8(*force as u8).str(migration).u64(*at_ms).finish()
            }
            Command::Progress { migration, node, moved, total, done, after, at_ms } => {
                let e = Encoder::new().u8(5).str(migration).str(node).u64(*moved).u64(*total).u8(*done as u8);
                encode_cursor(e, after).u64(*at_ms).finish()
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Command, StoreError> {
        let mut d = Decoder::new(KEYSPACE, buf);
        let c = match d.u8()? {
            1 => Command::CreateTenant { id: d.string()?, replication_factor: d.u64()? as u32, at_ms: d.u64()? },
            2 => Command::SetReplicationFactor {
                id: d.string()?,
                replication_factor: d.u64()? as u32,
                migration: None,
                at_ms: d.u64()?,
            },
            6 => Command::SetReplicationFactor {
                id: d.string()?,
                replication_factor: d.u64()? as u32,
                migration: Some(d.string()?),
                at_ms: d.u64()?,
            },
            3 => Command::AddNode {
                id: d.string()?,
                addr: d.string()?,
                vnodes: d.u64()? as u32,
                migration: d.string()?,
                at_ms: d.u64()?,
            },
            4 => Command::RemoveNode { id: d.string()?, force: d.u8()? != 0, migration: d.string()?, at_ms: d.u64()? },
            5 => Command::Progress {
                migration: d.string()?,
                node: d.string()?,
                moved: d.u64()?,
                total: d.u64()?,
                done: d.u8()? != 0,
                after: decode_cursor(&mut d)?,
                at_ms: d.u64()?,
            },
            t => return Err(StoreError::Corrupt { keyspace: KEYSPACE, reason: format!("unknown command {t}") }),
        };
        d.end()?;
        Ok(c)
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created(TenantRecord),
    ReplicationFactor {
        old: u32,
        new: TenantRecord,
        /// The migration that moves the tenant's keys, when the change moves any.
        migration: Option<Migration>,
    },
    /// A layout change began, or a migration's progress was recorded.
    Migration(Migration),
}

/// How many recent proposals' contexts the state remembers. A proposal is sent again when
/// the leader changes before it is applied (the first copy may or may not have made it), so
/// a context seen within this window marks a copy to skip: each change applies once.
pub const RECENT_PROPOSALS: usize = 10_000;
/// Finished migrations kept for `GetMigrationStatus`; older ones are forgotten.
pub const FINISHED_MIGRATIONS_KEPT: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaState {
    pub layout: Layout,
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Context of each recently applied proposal, with its log index.
    pub recent: BTreeMap<[u8; 16], u64>,
    /// Layout changes, running and recently finished, by id.
    pub migrations: BTreeMap<String, Migration>,
}

impl MetaState {
    /// Whether the proposal with this context was applied already (a copy sent again).
    pub fn seen(&self, ctx: &[u8; 16]) -> bool {
        self.recent.contains_key(ctx)
    }

    /// Remembers an applied proposal's context, forgetting the oldest beyond the window.
    pub fn remember(&mut self, ctx: [u8; 16], index: u64, batch: &mut WriteBatch) {
        self.recent.insert(ctx, index);
        batch.put(KEYSPACE, keys::recent(&ctx), index.to_be_bytes().to_vec());
        while self.recent.len() > RECENT_PROPOSALS {
            let Some((&oldest, _)) = self.recent.iter().min_by_key(|(_, i)| **i) else { break };
            self.recent.remove(&oldest);
            batch.delete(KEYSPACE, keys::recent(&oldest));
        }
    }

    /// Applies one committed command, adding its writes to `batch`. A refusal (a duplicate
    /// tenant, an unknown one) changes nothing, and every node refuses the same way.
    pub fn apply(&mut self, cmd: &Command, batch: &mut WriteBatch) -> CoreResult<Applied> {
        match cmd {
            Command::CreateTenant { id, replication_factor, at_ms } => {
                if self.tenants.contains_key(id) {
                    return Err(CoreError::AlreadyExists(format!("tenant {id:?} already exists")));
                }
                let t = TenantRecord {
                    id: id.clone(),
                    replication_factor: *replication_factor,
                    created_ms: *at_ms,
                    updated_ms: *at_ms,
                    rf_version: 0,
                };
                self.put_tenant(t.clone(), batch);
                Ok(Applied::Created(t))
            }
            Command::SetReplicationFactor { id, replication_factor, migration, at_ms } => {
                self.set_replication_factor(id, *replication_factor, migration.as_deref(), *at_ms, batch)
            }
            Command::AddNode { id, addr, vnodes, migration, at_ms } => {
                if let Some(m) = self.layout.by_id(id) {
                    let what = if m.storage { "a storage node already" } else { "a removed node's id" };
                    return Err(CoreError::AlreadyExists(format!("node {id:?} is {what}; pick another id")));
                }
                if let Some(m) = self.layout.members.iter().find(|m| m.storage && m.addr == *addr) {
                    return Err(CoreError::AlreadyExists(format!("address {addr} belongs to node {:?}", m.id)));
                }
                let raft_id = raft_id_of(id);
                if let Some(m) = self.layout.by_raft_id(raft_id) {
                    return Err(CoreError::AlreadyExists(format!(
                        "node id {id:?} hashes to the same Raft number as {:?}; pick another id",
                        m.id
                    )));
                }
                let member = Member { id: id.clone(), addr: addr.clone(), vnodes: *vnodes, raft_id, storage: true };
                self.begin(
                    MigrationKind::AddNode,
                    id,
                    migration,
                    *at_ms,
                    None,
                    |l| {
                        l.members.push(member);
                        l.members.sort_by(|a, b| a.id.cmp(&b.id));
                    },
                    batch,
                )
            }
            Command::RemoveNode { id, force, migration, at_ms } => {
                if let Some(running) = self.running().filter(|m| m.kind == MigrationKind::AddNode && m.node == *id)
                    && *force
                {
                    // Cancels the add (its node never came up, say): every write since went to
                    // the old replica sets too, with W in them, so the old ring still holds
                    // everything and goes back into service.
                    let mut m = running.clone();
                    m.cancelled = true;
                    if let Some(node) = self.layout.members.iter_mut().find(|n| n.id == *id) {
                        node.storage = false;
                    }
                    return Ok(self.finish(m, *at_ms, batch));
                }
                if !self.layout.by_id(id).is_some_and(|m| m.storage) {
                    // Still listed (draining, or kept so its id is not reused): say which.
                    if let Some(m) = self.running().filter(|m| m.kind == MigrationKind::RemoveNode && m.node == *id) {
                        return Err(CoreError::FailedPrecondition(format!(
                            "node {id:?} is being removed already (migration {:?}; GetMigrationStatus follows it)",
                            m.id
                        )));
                    }
                    if self.layout.by_id(id).is_some() {
                        return Err(CoreError::NotFound(format!("node {id:?} was removed from this cluster")));
                    }
                    return Err(CoreError::NotFound(format!("node {id:?} is not a storage node of this cluster")));
                }
                let left = self.layout.ring_nodes().len() - 1;
                if left == 0 {
                    return Err(CoreError::FailedPrecondition(format!("node {id:?} is the last storage node")));
                }
                let widest = self.tenants.values().map(|t| t.replication_factor as usize).max().unwrap_or(0);
                if left < widest && !force {
                    return Err(CoreError::FailedPrecondition(format!(
                        "node {id:?} is in use: {left} storage nodes would remain, and a tenant keeps {widest} \
                         replicas; add a node first or pass force"
                    )));
                }
                // Forced, the node owes no hand-over: it may be dead, and the other replicas
                // of its keys hand them over instead (with one replica, they are lost: that
                // is what forcing means).
                let exempt = force.then_some(id.as_str());
                self.begin(
                    MigrationKind::RemoveNode,
                    id,
                    migration,
                    *at_ms,
                    exempt,
                    |l| {
                        if let Some(m) = l.members.iter_mut().find(|m| m.id == *id) {
                            m.storage = false;
                        }
                    },
                    batch,
                )
            }
            Command::Progress { migration, node, moved, total, done, after, at_ms } => {
                let Some(mut m) = self.migrations.get(migration).cloned() else {
                    return Err(CoreError::NotFound(format!("migration {migration:?} not found")));
                };
                if m.finished_ms.is_some() {
                    // A late report (sent again after a leader change): nothing left to do.
                    return Ok(Applied::Migration(m));
                }
                let Some(p) = m.progress.get_mut(node) else {
                    return Err(CoreError::InvalidArgument(format!(
                        "node {node:?} owes no keys in migration {migration:?}"
                    )));
                };
                // A report sent again after a leader change may commit after a newer one:
                // progress never goes back.
                p.moved = p.moved.max(*moved);
                p.total = p.total.max(*total);
                p.done |= *done;
                if after.is_some() && *after > p.after {
                    p.after = after.clone();
                }
                if m.progress.values().all(|p| p.done) {
                    return Ok(self.finish(m, *at_ms, batch));
                }
                self.put_migration(m.clone(), batch);
                Ok(Applied::Migration(m))
            }
        }
    }

    /// Changes tenant `id`'s factor to `rf`. When that changes where some of its keys live
    /// (the factor is below the ring's size before or after), a new layout version names the
    /// change and every storage node owes a hand-over of the tenant's keys; the factor is in
    /// the record from the start, and [`Placement`] serves both until the migration ends.
    fn set_replication_factor(
        &mut self,
        id: &str,
        rf: u32,
        migration: Option<&str>,
        at_ms: u64,
        batch: &mut WriteBatch,
    ) -> CoreResult<Applied> {
        let Some(old) = self.tenants.get(id).cloned() else {
            return Err(CoreError::NotFound(format!("tenant {id:?} not found; create it with CreateTenant")));
        };
        let mut new = TenantRecord { replication_factor: rf, updated_ms: at_ms, ..old.clone() };
        let from = old.replication_factor;
        // Replica sets are walks of distinct nodes, so two factors at or above a ring's size
        // give the same sets on it.
        let mut rings = vec![self.layout.ring_nodes().len()];
        rings.extend(self.layout.previous.as_ref().map(Vec::len));
        let moves = rings.iter().any(|&n| (from as usize).min(n) != (rf as usize).min(n));
        if let Some(c) = self.layout.rf_change.clone().filter(|c| c.tenant == id) {
            return self.while_moving(c, old, rf, at_ms, batch);
        }
        let migration = match migration {
            Some(m) if moves && rf != from => m,
            _ => {
                // A command logged by an older version leaves the record as that version
                // wrote it, so every node applies it alike.
                if rf != from && migration.is_some() {
                    new.rf_version = self.layout.version;
                }
                self.put_tenant(new.clone(), batch);
                return Ok(Applied::ReplicationFactor { old: from, new, migration: None });
            }
        };
        self.check_idle(migration)?;
        self.layout.version += 1;
        self.layout.rf_change = Some(RfChange { tenant: id.to_owned(), from, to: rf });
        let progress = self.layout.ring_nodes().into_iter().map(|(n, _)| (n, NodeProgress::default())).collect();
        let m = Migration {
            id: migration.to_owned(),
            kind: MigrationKind::ReplicationFactor,
            node: id.to_owned(),
            version: self.layout.version,
            started_ms: at_ms,
            finished_ms: None,
            cancelled: false,
            progress,
        };
        new.rf_version = self.layout.version;
        self.put_tenant(new.clone(), batch);
        self.put_layout(batch);
        self.put_migration(m.clone(), batch);
        Ok(Applied::ReplicationFactor { old: from, new, migration: Some(m) })
    }

    /// A factor change asked for while the tenant's keys move by an earlier one (`c`): the
    /// same factor again is answered with the migration under way (a retry); the factor it
    /// replaces cancels it, as a forced removal cancels an add (every write meanwhile reached
    /// W of the old replica sets too, so they still hold everything). That is the way out
    /// when a node that owes its hand-over is dead: cancel, remove it, change again.
    fn while_moving(
        &mut self,
        c: RfChange,
        record: TenantRecord,
        rf: u32,
        at_ms: u64,
        batch: &mut WriteBatch,
    ) -> CoreResult<Applied> {
        let Some(running) = self.running().cloned() else {
            return Err(CoreError::FailedPrecondition(format!("tenant {:?}'s keys are moving", c.tenant)));
        };
        if rf == c.to {
            return Ok(Applied::ReplicationFactor {
                old: record.replication_factor,
                new: record,
                migration: Some(running),
            });
        }
        if rf != c.from {
            return Err(CoreError::FailedPrecondition(format!(
                "tenant {:?}'s keys are moving from factor {} to {} (migration {:?}); wait for it to complete, or set \
                 the factor back to {} to cancel it",
                c.tenant, c.from, c.to, running.id, c.from
            )));
        }
        let back = TenantRecord { replication_factor: rf, updated_ms: at_ms, ..record };
        self.put_tenant(back.clone(), batch);
        let m = self.end(Migration { cancelled: true, ..running }, at_ms, batch);
        let new = self.tenants.get(&c.tenant).cloned().unwrap_or(back);
        Ok(Applied::ReplicationFactor { old: c.to, new, migration: Some(m) })
    }

    /// Refuses to start a change while another runs, or under a migration id used already.
    fn check_idle(&self, id: &str) -> CoreResult<()> {
        if let Some(m) = self.running() {
            return Err(CoreError::FailedPrecondition(format!(
                "migration {:?} ({} {}) is still running; one change at a time",
                m.id,
                m.kind.name(),
                m.node
            )));
        }
        if self.migrations.contains_key(id) {
            return Err(CoreError::AlreadyExists(format!("migration id {id:?} was used already")));
        }
        Ok(())
    }

    /// Ends migration `m` at `at_ms` (done, or cancelled): the old ring (or the tenant's old
    /// factor) is dropped, a new placement and so a new version. A removed node stays listed
    /// (off the ring), so its id is not reused and the Raft group still reaches it until it
    /// leaves.
    fn finish(&mut self, m: Migration, at_ms: u64, batch: &mut WriteBatch) -> Applied {
        Applied::Migration(self.end(m, at_ms, batch))
    }

    /// [`Self::finish`], answering the migration as it ended.
    fn end(&mut self, mut m: Migration, at_ms: u64, batch: &mut WriteBatch) -> Migration {
        m.finished_ms = Some(at_ms);
        self.layout.previous = None;
        self.layout.version += 1;
        if let Some(c) = self.layout.rf_change.take()
            && let Some(t) = self.tenants.get(&c.tenant).cloned()
        {
            self.put_tenant(TenantRecord { rf_version: self.layout.version, ..t }, batch);
        }
        self.put_layout(batch);
        self.put_migration(m.clone(), batch);
        m
    }

    /// The migration under way, if any (at most one runs at a time).
    pub fn running(&self) -> Option<&Migration> {
        self.migrations.values().find(|m| m.finished_ms.is_none())
    }

    /// Starts a layout change: the ring before it becomes `previous`, every node of that ring
    /// but `exempt` owes a hand-over, and the version moves on.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        kind: MigrationKind,
        node: &str,
        id: &str,
        at_ms: u64,
        exempt: Option<&str>,
        change: impl FnOnce(&mut Layout),
        batch: &mut WriteBatch,
    ) -> CoreResult<Applied> {
        self.check_idle(id)?;
        let old = self.layout.ring_nodes();
        change(&mut self.layout);
        self.layout.version += 1;
        self.layout.previous = Some(old.clone());
        let progress: BTreeMap<String, NodeProgress> = old
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != exempt)
            .map(|(n, _)| (n, NodeProgress::default()))
            .collect();
        let m = Migration {
            id: id.to_owned(),
            kind,
            node: node.to_owned(),
            version: self.layout.version,
            started_ms: at_ms,
            finished_ms: None,
            cancelled: false,
            progress,
        };
        self.put_layout(batch);
        self.put_migration(m.clone(), batch);
        Ok(Applied::Migration(m))
    }

    fn put_layout(&self, batch: &mut WriteBatch) {
        batch.put(KEYSPACE, keys::LAYOUT.to_vec(), self.layout.encode(Encoder::new()).finish());
    }

    /// Stores a migration, forgetting the oldest finished ones beyond the kept number.
    fn put_migration(&mut self, m: Migration, batch: &mut WriteBatch) {
        batch.put(KEYSPACE, keys::migration(&m.id), m.encode(Encoder::new()).finish());
        self.migrations.insert(m.id.clone(), m);
        let mut finished: Vec<(u64, String)> =
            self.migrations.values().filter_map(|m| m.finished_ms.map(|f| (f, m.id.clone()))).collect();
        if finished.len() > FINISHED_MIGRATIONS_KEPT {
            finished.sort();
            for (_, id) in finished.iter().take(finished.len() - FINISHED_MIGRATIONS_KEPT) {
                self.migrations.remove(id);
                batch.delete(KEYSPACE, keys::migration(id));
            }
        }
    }

    fn put_tenant(&mut self, t: TenantRecord, batch: &mut WriteBatch) {
        batch.put(KEYSPACE, keys::tenant(&t.id), t.encode(Encoder::new()).finish());
        self.tenants.insert(t.id.clone(), t);
    }

    /// Writes the whole state (bootstrap, or a snapshot installed from the leader), removing
    /// what `previous` held that this state does not.
    pub fn persist_all(&self, previous: &MetaState, batch: &mut WriteBatch) {
        self.put_layout(batch);
        for id in previous.migrations.keys().filter(|id| !self.migrations.contains_key(*id)) {
            batch.delete(KEYSPACE, keys::migration(id));
        }
        for m in self.migrations.values() {
            batch.put(KEYSPACE, keys::migration(&m.id), m.encode(Encoder::new()).finish());
        }
        for id in previous.tenants.keys().filter(|id| !self.tenants.contains_key(*id)) {
            batch.delete(KEYSPACE, keys::tenant(id));
        }
        for t in self.tenants.values() {
            batch.put(KEYSPACE, keys::tenant(&t.id), t.encode(Encoder::new()).finish());
        }
        for ctx in previous.recent.keys().filter(|c| !self.recent.contains_key(*c)) {
            batch.delete(KEYSPACE, keys::recent(ctx));
        }
        for (ctx, index) in &self.recent {
            batch.put(KEYSPACE, keys::recent(ctx), index.to_be_bytes().to_vec());
        }
    }

    /// The state as persisted; `None` before the cluster was bootstrapped on this node.
    pub fn load(store: &dyn StoreRead) -> Result<Option<MetaState>, StoreError> {
        let Some(layout) = store.get(KEYSPACE, keys::LAYOUT)? else { return Ok(None) };
        let mut d = Decoder::new(KEYSPACE, &layout);
        let layout = Layout::decode(&mut d)?;
        d.end()?;
        let tenants = load_by_id(store, keys::TENANTS, TenantRecord::decode, |t| &t.id)?;
        let migrations = load_by_id(store, keys::MIGRATIONS, Migration::decode, |m| &m.id)?;
        let mut recent = BTreeMap::new();
        for_each_prefix(store, KEYSPACE, keys::RECENT, |k, v| {
            let ctx = <[u8; 16]>::try_from(&k[keys::RECENT.len()..]);
            let index = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes);
            let (Ok(ctx), Ok(index)) = (ctx, index) else {
                return Err(StoreError::Corrupt { keyspace: KEYSPACE, reason: "recent proposal record".into() });
            };
            recent.insert(ctx, index);
            Ok(Continue(()))
        })?;
        Ok(Some(MetaState { layout, tenants, recent, migrations }))
    }

    /// The whole state as one value (a Raft snapshot's data).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = self.layout.encode(Encoder::new()).u64(self.tenants.len() as u64);
        for t in self.tenants.values() {
            e = t.encode(e);
        }
        e = e.u64(self.recent.len() as u64);
        for (ctx, index) in &self.recent {
            e = e.bytes(ctx).u64(*index);
        }
        e = e.u64(self.migrations.len() as u64);
        for m in self.migrations.values() {
            e = m.encode(e);
        }
        e.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<MetaState, StoreError> {
        let mut d = Decoder::new(KEYSPACE, buf);
        let layout = Layout::decode(&mut d)?;
        let n = d.u64()?;
        let mut tenants = BTreeMap::new();
        for _ in 0..n {
            let t = TenantRecord::decode(&mut d)?;
            tenants.insert(t.id.clone(), t);
        }
        let n = d.u64()?;
        let mut recent = BTreeMap::new();
        for _ in 0..n {
            let ctx = <[u8; 16]>::try_from(d.bytes()?)
                .map_err(|_| StoreError::Corrupt { keyspace: KEYSPACE, reason: "proposal context".into() })?;
            recent.insert(ctx, d.u64()?);
        }
        let n = d.u64()?;
        let mut migrations = BTreeMap::new();
        for _ in 0..n {
            let m = Migration::decode(&mut d)?;
            migrations.insert(m.id.clone(), m);
        }
        d.end()?;
        Ok(MetaState { layout, tenants, recent, migrations })
    }

    /// 16 bytes that differ between any two different states (for the simulator's check that
    /// every node holds the same metadata at the same index).
    pub fn digest(&self) -> [u8; 16] {
        let full = Sha256::digest(self.encode());
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
}

/// Every record stored under `prefix` (each a whole value), by its id.
fn load_by_id<T>(
    store: &dyn StoreRead,
    prefix: &[u8],
    decode: fn(&mut Decoder<'_>) -> Result<T, StoreError>,
    id: fn(&T) -> &String,
) -> Result<BTreeMap<String, T>, StoreError> {
    let mut out = BTreeMap::new();
    for_each_prefix(store, KEYSPACE, prefix, |_, v| {
        let mut d = Decoder::new(KEYSPACE, &v);
        let r = decode(&mut d)?;
        d.end()?;
        out.insert(id(&r).clone(), r);
        Ok(Continue(()))
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(nodes: usize) -> MetaState {
        let members: Vec<(String, String, u32)> =
            (0..nodes).map(|i| (format!("n{i}"), format!("h:{}", i + 1), 16)).collect();
        let mut s = MetaState { layout: Layout::initial(&members), ..MetaState::default() };
        let create = Command::CreateTenant { id: "t".into(), replication_factor: 1, at_ms: 1 };
        s.apply(&create, &mut WriteBatch::default()).unwrap();
        s
    }

    fn set_rf(s: &mut MetaState, rf: u32, migration: &str) -> CoreResult<Applied> {
        let cmd = Command::SetReplicationFactor {
            id: "t".into(),
            replication_factor: rf,
            migration: Some(migration.into()),
            at_ms: 5,
        };
        s.apply(&cmd, &mut WriteBatch::default())
    }

    fn progress(s: &mut MetaState, migration: &str, node: &str) -> CoreResult<Applied> {
        let cmd = Command::Progress {
            migration: migration.into(),
            node: node.into(),
            moved: 1,
            total: 1,
            done: true,
            after: None,
            at_ms: 9,
        };
        s.apply(&cmd, &mut WriteBatch::default())
    }

    #[test]
    fn a_factor_change_that_moves_keys_runs_as_a_migration_of_every_storage_node() {
        let mut s = state(3);
        let Applied::ReplicationFactor { old: 1, new, migration: Some(m) } = set_rf(&mut s, 2, "mig-a").unwrap() else {
            panic!("no migration started")
        };
        assert_eq!((m.kind, m.node.as_str(), m.version), (MigrationKind::ReplicationFactor, "t", 2));
        assert_eq!(m.progress.keys().cloned().collect::<Vec<_>>(), ["n0", "n1", "n2"]);
        assert_eq!((new.replication_factor, new.rf_version), (2, 2));
        assert_eq!(s.layout.rf_change, Some(RfChange { tenant: "t".into(), from: 1, to: 2 }));
        // One change at a time, of either kind.
        assert!(matches!(set_rf(&mut s, 3, "mig-b"), Err(CoreError::FailedPrecondition(_))));
        let add =
            Command::AddNode { id: "n9".into(), addr: "h:9".into(), vnodes: 16, migration: "mig-c".into(), at_ms: 6 };
        assert!(matches!(s.apply(&add, &mut WriteBatch::default()), Err(CoreError::FailedPrecondition(_))));
        progress(&mut s, "mig-a", "n0").unwrap();
        progress(&mut s, "mig-a", "n1").unwrap();
        assert!(s.layout.rf_change.is_some());
        let Applied::Migration(done) = progress(&mut s, "mig-a", "n2").unwrap() else { panic!() };
        assert_eq!(done.status(), "completed");
        assert_eq!((s.layout.version, s.layout.rf_change.clone()), (3, None));
        // The end changes placement too: the record says by which version.
        assert_eq!((s.tenants["t"].replication_factor, s.tenants["t"].rf_version), (2, 3));
        // What was stored reads back the same.
        assert_eq!(MetaState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn a_factor_change_that_moves_no_key_takes_effect_at_once() {
        // Three nodes hold every key three times at a factor of 3 or more.
        let mut s = state(3);
        set_rf(&mut s, 3, "mig-a").unwrap();
        // Not while the tenant's keys move by the factor it replaces; asking for the same
        // one again is answered with the migration under way.
        assert!(matches!(set_rf(&mut s, 5, "mig-b"), Err(CoreError::FailedPrecondition(_))));
        let Applied::ReplicationFactor { migration: Some(m), .. } = set_rf(&mut s, 3, "mig-b").unwrap() else {
            panic!("a retry is not answered with the migration")
        };
        assert_eq!((m.id.as_str(), m.finished_ms), ("mig-a", None));
        for n in ["n0", "n1", "n2"] {
            progress(&mut s, "mig-a", n).unwrap();
        }
        let Applied::ReplicationFactor { old: 3, new, migration: None } = set_rf(&mut s, 5, "mig-b").unwrap() else {
            panic!("a migration started")
        };
        assert_eq!((new.replication_factor, new.rf_version, s.layout.rf_change.clone()), (5, s.layout.version, None));
        assert!(s.running().is_none());
        // The same factor again changes nothing.
        let Applied::ReplicationFactor { migration: None, new: same, .. } = set_rf(&mut s, 5, "mig-c").unwrap() else {
            panic!()
        };
        assert_eq!(same.rf_version, new.rf_version);
    }

    #[test]
    fn setting_the_old_factor_back_cancels_a_change_that_cannot_finish() {
        let mut s = state(3);
        set_rf(&mut s, 2, "mig-a").unwrap();
        // n2 is dead and never reports: setting the factor back ends the migration.
        progress(&mut s, "mig-a", "n0").unwrap();
        let Applied::ReplicationFactor { old: 2, new, migration: Some(m) } = set_rf(&mut s, 1, "mig-b").unwrap() else {
            panic!("not cancelled")
        };
        assert_eq!((m.id.as_str(), m.status()), ("mig-a", "cancelled"));
        assert_eq!((new.replication_factor, new.rf_version), (1, 3));
        assert_eq!((s.layout.version, s.layout.rf_change.clone(), s.running()), (3, None, None));
        // Now a node can be removed, and the factor changed again.
        let remove = Command::RemoveNode { id: "n2".into(), force: true, migration: "mig-c".into(), at_ms: 7 };
        s.apply(&remove, &mut WriteBatch::default()).unwrap();
        // Asked again while it drains, the answer names the removal under way; once it is
        // done, that the node was removed.
        let again = Command::RemoveNode { id: "n2".into(), force: true, migration: "mig-d".into(), at_ms: 8 };
        let e = s.apply(&again, &mut WriteBatch::default()).unwrap_err();
        assert!(matches!(&e, CoreError::FailedPrecondition(m) if m.contains("mig-c")), "{e:?}");
        for n in ["n0", "n1"] {
            progress(&mut s, "mig-c", n).unwrap();
        }
        assert_eq!(s.running(), None);
        let e = s.apply(&again, &mut WriteBatch::default()).unwrap_err();
        assert!(matches!(&e, CoreError::NotFound(m) if m.contains("was removed")), "{e:?}");
    }

    #[test]
    fn a_command_logged_by_an_older_version_applies_alike_on_every_node() {
        let mut s = state(3);
        let legacy = Command::SetReplicationFactor { id: "t".into(), replication_factor: 2, migration: None, at_ms: 4 };
        let Applied::ReplicationFactor { new, migration: None, .. } =
            s.apply(&legacy, &mut WriteBatch::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!((new.replication_factor, new.rf_version, s.layout.version), (2, 0, 1));
    }

    #[test]
    fn records_and_layouts_stored_before_factor_changes_still_load() {
        // A tenant record and a layout as encoded before they carried factor changes.
        let old = Encoder::new().str("t").u64(3).u64(1).u64(2).finish();
        let t = TenantRecord::decode(&mut Decoder::new(KEYSPACE, &old)).unwrap();
        assert_eq!((t.replication_factor, t.rf_version, t.created_ms, t.updated_ms), (3, 0, 1, 2));
        let layout = state(2).layout;
        let old = layout.encode(Encoder::new()).finish();
        assert_eq!(old.last(), Some(&0), "no change under way ends in a 0");
        assert_eq!(Layout::decode(&mut Decoder::new(KEYSPACE, &old)).unwrap(), layout);
        let old = Command::SetReplicationFactor { id: "t".into(), replication_factor: 2, migration: None, at_ms: 4 };
        assert_eq!(Command::decode(&old.encode()).unwrap(), old);
        assert_eq!(old.encode()[0], 2);
    }
}
