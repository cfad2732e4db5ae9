//! The replicated cluster metadata: the layout (members and its version) and the tenants.
//! Every node applies the same committed commands in the same order, so each holds the same
//! state at the same log index; `apply` is the only way it changes.

use std::collections::BTreeMap;
use std::ops::ControlFlow::Continue;

use sha2::{Digest, Sha256};

use crate::codec::{Decoder, Encoder};
use crate::error::{CoreError, CoreResult};
use crate::store::{META as KEYSPACE, StoreError, StoreRead, WriteBatch, for_each_prefix};

use super::keys;

/// One node of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// host:port its peers and clients reach it at.
    pub addr: String,
    pub vnodes: u32,
    /// Its id in the Raft group (raft-rs numbers peers).
    pub raft_id: u64,
}

/// The members at one layout version. Placement is a pure function of this value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub version: u64,
    /// Sorted by id.
    pub members: Vec<Member>,
}

impl Layout {
    /// The first layout of a cluster: the initial members, numbered for Raft in id order so
    /// every node that is given the same list numbers them the same.
    pub fn initial(members: &[(String, String, u32)]) -> Layout {
        let mut sorted: Vec<&(String, String, u32)> = members.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let members = sorted
            .into_iter()
            .enumerate()
            .map(|(i, (id, addr, vnodes))| Member {
                id: id.clone(),
                addr: addr.clone(),
                vnodes: *vnodes,
                raft_id: i as u64 + 1,
            })
            .collect();
        Layout { version: 1, members }
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
            e = e.str(&m.id).str(&m.addr).u64(m.vnodes as u64).u64(m.raft_id);
        }
        e
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Layout, StoreError> {
        let version = d.u64()?;
        let n = d.u64()?;
        let mut members = Vec::new();
        for _ in 0..n {
            members.push(Member { id: d.string()?, addr: d.string()?, vnodes: d.u64()? as u32, raft_id: d.u64()? });
        }
        Ok(Layout { version, members })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: String,
    pub replication_factor: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl TenantRecord {
    fn encode(&self, e: Encoder) -> Encoder {
        e.str(&self.id).u64(self.replication_factor as u64).u64(self.created_ms).u64(self.updated_ms)
    }

    fn decode(d: &mut Decoder<'_>) -> Result<TenantRecord, StoreError> {
        Ok(TenantRecord {
            id: d.string()?,
            replication_factor: d.u64()? as u32,
            created_ms: d.u64()?,
            updated_ms: d.u64()?,
        })
    }
}

/// A change to the metadata, as it travels in the Raft log. The proposer stamps the time,
/// so applying is deterministic on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateTenant { id: String, replication_factor: u32, at_ms: u64 },
    SetReplicationFactor { id: String, replication_factor: u32, at_ms: u64 },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Command::CreateTenant { id, replication_factor, at_ms } => {
                Encoder::new().u8(1).str(id).u64(*replication_factor as u64).u64(*at_ms).finish()
            }
            Command::SetReplicationFactor { id, replication_factor, at_ms } => {
                Encoder::new().u8(2).str(id).u64(*replication_factor as u64).u64(*at_ms).finish()
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Command, StoreError> {
        let mut d = Decoder::new(KEYSPACE, buf);
        let c = match d.u8()? {
            1 => Command::CreateTenant { id: d.string()?, replication_factor: d.u64()? as u32, at_ms: d.u64()? },
            2 => {
                Command::SetReplicationFactor { id: d.string()?, replication_factor: d.u64()? as u32, at_ms: d.u64()? }
            }
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
    ReplicationFactor { old: u32, new: TenantRecord },
}

/// How many recent proposals' contexts the state remembers. A proposal is sent again when
/// the leader changes before it is applied (the first copy may or may not have made it), so
/// a context seen within this window marks a copy to skip: each change applies once.
pub const RECENT_PROPOSALS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaState {
    pub layout: Layout,
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Context of each recently applied proposal, with its log index.
    pub recent: BTreeMap<[u8; 16], u64>,
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
                };
                self.put_tenant(t.clone(), batch);
                Ok(Applied::Created(t))
            }
            Command::SetReplicationFactor { id, replication_factor, at_ms } => {
                let Some(old) = self.tenants.get(id).cloned() else {
                    return Err(CoreError::NotFound(format!("tenant {id:?} not found; create it with CreateTenant")));
                };
                let new = TenantRecord { replication_factor: *replication_factor, updated_ms: *at_ms, ..old.clone() };
                self.put_tenant(new.clone(), batch);
                Ok(Applied::ReplicationFactor { old: old.replication_factor, new })
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
        batch.put(KEYSPACE, keys::LAYOUT.to_vec(), self.layout.encode(Encoder::new()).finish());
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
        let mut tenants = BTreeMap::new();
        for_each_prefix(store, KEYSPACE, keys::TENANTS, |_, v| {
            let mut d = Decoder::new(KEYSPACE, &v);
            let t = TenantRecord::decode(&mut d)?;
            d.end()?;
            tenants.insert(t.id.clone(), t);
            Ok::<_, StoreError>(Continue(()))
        })?;
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
        Ok(Some(MetaState { layout, tenants, recent }))
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
        d.end()?;
        Ok(MetaState { layout, tenants, recent })
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
