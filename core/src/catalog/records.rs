//! The catalog's stored records.

use sha2::{Digest, Sha256};

use crate::codec::{Decoder, Encoder, hex};
use crate::store::StoreError;

pub(super) const KEYSPACE: &str = crate::store::CATALOG;

/// What a resource is; fixes its parent's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    Tenant = 1,
    Catalog = 2,
    Namespace = 3,
    Table = 4,
    View = 5,
    Snapshot = 6,
    TableStats = 7,
    ColumnStats = 8,
    FileStats = 9,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Tenant,
        Kind::Catalog,
        Kind::Namespace,
        Kind::Table,
        Kind::View,
        Kind::Snapshot,
        Kind::TableStats,
        Kind::ColumnStats,
        Kind::FileStats,
    ];

    pub fn from_u8(v: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == v)
    }

    /// The kind of this kind's parent; `None` for roots (tenants, and catalogs whose parent
    /// is their tenant).
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Tenant | Kind::Catalog => None,
            Kind::Namespace => Some(Kind::Catalog),
            Kind::Table | Kind::View => Some(Kind::Namespace),
            Kind::Snapshot => Some(Kind::Table),
            // Statistics describe one snapshot and go when it goes.
            Kind::TableStats | Kind::ColumnStats | Kind::FileStats => Some(Kind::Snapshot),
        }
    }

    /// Kinds whose names must not collide with this kind's under one parent.
    pub fn shares_names_with(self) -> Option<Kind> {
        match self {
            Kind::Table => Some(Kind::View),
            Kind::View => Some(Kind::Table),
            _ => None,
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Catalog => "catalog",
            Kind::Namespace => "namespace",
            Kind::Table => "table",
            Kind::View => "view",
            Kind::Snapshot => "snapshot",
            Kind::TableStats => "table statistics",
            Kind::ColumnStats => "column statistics",
            Kind::FileStats => "file statistics",
        }
    }
}

fn etag(id: &str, version: u64, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(version.to_be_bytes());
    h.update(payload);
    hex(&h.finalize()[..8])
}

/// One node of the catalog tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    /// Owning tenant; empty for tenants themselves.
    pub tenant: String,
    pub id: String,
    /// Parent resource id; empty for tenants and catalogs.
    pub parent: String,
    /// Unique among the parent's children of this kind (a namespace's whole path).
    pub name: String,
    /// 1 at creation, +1 on every update.
    pub version: u64,
    pub etag: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// A time the catalog orders by (a snapshot's upstream creation); 0 when unused.
    pub time_ms: u64,
    /// The shell's encoded message; opaque here.
    pub payload: Vec<u8>,
}

impl Resource {
    /// A new resource at version 1.
    #[allow(clippy::too_many_arguments)]
    pub fn fresh(
        kind: Kind,
        tenant: String,
        id: String,
        parent: String,
        name: String,
        payload: Vec<u8>,
        now: u64,
        time_ms: u64,
    ) -> Self {
        let mut r = Resource {
            kind,
            tenant,
            id,
            parent,
            name,
            version: 0,
            etag: String::new(),
            created_ms: now,
            updated_ms: now,
            time_ms,
            payload,
        };
        r.revise(None, now);
        r
    }

    /// The next version: a new payload (if given), ETag and update time.
    pub fn revise(&mut self, payload: Option<Vec<u8>>, now: u64) {
        if let Some(p) = payload {
            self.payload = p;
        }
        self.version += 1;
        self.etag = etag(&self.id, self.version, &self.payload);
        self.updated_ms = now;
    }

    pub fn encode(&self) -> Vec<u8> {
        Encoder::new()
            .u8(self.kind as u8)
            .str(&self.tenant)
            .str(&self.id)
            .str(&self.parent)
            .str(&self.name)
            .u64(self.version)
            .str(&self.etag)
            .u64(self.created_ms)
            .u64(self.updated_ms)
            .u64(self.time_ms)
            .bytes(&self.payload)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut d = Decoder::new(KEYSPACE, buf);
        let kind = Kind::from_u8(d.u8()?)
            .ok_or_else(|| StoreError::Corrupt { keyspace: KEYSPACE, reason: "resource kind".into() })?;
        let r = Resource {
            kind,
            tenant: d.string()?,
            id: d.string()?,
            parent: d.string()?,
            name: d.string()?,
            version: d.u64()?,
            etag: d.string()?,
            created_ms: d.u64()?,
            updated_ms: d.u64()?,
            time_ms: d.u64()?,
            payload: d.bytes()?.to_vec(),
        };
        d.end()?;
        Ok(r)
    }
}

/// What an idempotency key recorded: the request's hash and the result to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IdemRecord {
    pub hash: Vec<u8>,
    pub expires_ms: u64,
    pub resource: Option<Resource>,
    pub count: u64,
}

impl IdemRecord {
    pub fn encode(&self) -> Vec<u8> {
        let res = self.resource.as_ref().map(Resource::encode).unwrap_or_default();
        Encoder::new()
            .bytes(&self.hash)
            .u64(self.expires_ms)
            .u8(u8::from(self.resource.is_some()))
            .bytes(&res)
            .u64(self.count)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut d = Decoder::new(KEYSPACE, buf);
        let hash = d.bytes()?.to_vec();
        let expires_ms = d.u64()?;
        let has = d.u8()? == 1;
        let res = d.bytes()?;
        let resource = if has { Some(Resource::decode(res)?) } else { None };
        let count = d.u64()?;
        d.end()?;
        Ok(Self { hash, expires_ms, resource, count })
    }
}
