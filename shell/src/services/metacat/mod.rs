//! The metacat catalog APIs (`ai.floedb.metacat.*`) over the catalog machine.
//!
//! Each resource's wire message is stored whole as the machine's opaque payload; the
//! machine's record is authoritative for ids, names, versions, ETags and times, and those
//! are written back into the message on the way out. The caller's tenant comes from the
//! `x-principal-bin` header (see [`principal`]); every resource id in a request must carry
//! that tenant.

mod catalogs;
mod directory;
mod stats;

pub mod principal;

mod tables;
mod tenants;

use prost::Message;
use sha2::{Digest, Sha256};
use tessera_core::catalog::{
    CatalogMachine, CatalogRequest, CatalogResponse, Idempotency, Kind, MAX_PAGE_SIZE, PATH_SEP, Precondition, Resource,
};
use tessera_proto::ai::floedb::metacat::common as mc;
use tonic::{Response, Status};

use super::errors::{driver_status, to_status};
use crate::driver::HandleFor;
use principal::Caller;

pub type CatalogHandle = HandleFor<CatalogMachine>;

/// Serves every metacat service; cheap to clone (one handle to the catalog driver).
#[derive(Clone)]
pub struct Metacat {
    driver: CatalogHandle,
}

impl Metacat {
    pub fn new(driver: CatalogHandle) -> Self {
        Self { driver }
    }

    async fn call(&self, req: CatalogRequest) -> Result<CatalogResponse, Status> {
        self.driver.call(req).await.map_err(driver_status)?.map_err(to_status)
    }

    async fn one(&self, req: CatalogRequest) -> Result<Resource, Status> {
        match self.call(req).await? {
            CatalogResponse::Resource { resource, .. } => Ok(resource),
            _ => Err(Status::internal("unexpected answer from the catalog")),
        }
    }

    async fn page(&self, q: tessera_core::catalog::ListQuery) -> Result<(Vec<Resource>, mc::PageResponse), Status> {
        match self.call(CatalogRequest::List(q)).await? {
            CatalogResponse::Page { items, next_page_token } => {
                let page = mc::PageResponse {
                    next_page_token: next_page_token.unwrap_or_default(),
                    total_size: items.len() as i32,
                };
                Ok((items, page))
            }
            _ => Err(Status::internal("unexpected answer from the catalog")),
        }
    }

    /// Read, change, write back: `apply` edits the stored message and the name. Without a
    /// caller's precondition the write is guarded by the version read, and retried if
    /// another update slipped in between.
    async fn update<M: Message + Default>(
        &self,
        tenant: String,
        kind: Kind,
        id: String,
        pre: Precondition,
        idem: Option<Idempotency>,
        apply: impl Fn(&mut M, &mut String) -> Result<(), Status>,
    ) -> Result<Resource, Status> {
        let mut attempt = 0;
        loop {
            let cur = self.one(CatalogRequest::Get { tenant: tenant.clone(), kind, id: id.clone() }).await?;
            let mut msg: M = decode(&cur)?;
            let mut name = cur.name.clone();
            apply(&mut msg, &mut name)?;
            let guarded = pre.version.is_none() && pre.etag.is_none();
            let p = if guarded { Precondition { version: Some(cur.version), etag: None } } else { pre.clone() };
            let req = CatalogRequest::Update {
                tenant: tenant.clone(),
                kind,
                id: id.clone(),
                name: Some(name),
                payload: msg.encode_to_vec(),
                pre: p,
                idem: idem.clone(),
            };
            match self.one(req).await {
                Err(s) if guarded && s.code() == tonic::Code::FailedPrecondition && attempt < 4 => attempt += 1,
                other => return other,
            }
        }
    }

    async fn get(&self, caller: &Caller, kind: Kind, id: String) -> Result<Resource, Status> {
        self.one(CatalogRequest::Get { tenant: caller.tenant.clone(), kind, id }).await
    }
}

/// The wire kind of a resource id.
fn wire_kind(k: Kind) -> mc::ResourceKind {
    match k {
        Kind::Tenant => mc::ResourceKind::RkTenant,
        Kind::Catalog => mc::ResourceKind::RkCatalog,
        Kind::Namespace => mc::ResourceKind::RkNamespace,
        Kind::Table => mc::ResourceKind::RkTable,
        Kind::View => mc::ResourceKind::RkView,
        Kind::Snapshot | Kind::TableStats | Kind::ColumnStats | Kind::FileStats => mc::ResourceKind::RkStats,
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// Checks a resource id from a request: present, of the expected kind, in the caller's
/// tenant. Returns the id.
fn rid(field: &str, r: Option<&mc::ResourceId>, want: Kind, caller: &Caller) -> Result<String, Status> {
    let r = r.ok_or_else(|| invalid(format!("{field}: required")))?;
    if r.tenant_id.is_empty() {
        return Err(invalid(format!("{field}.tenant_id: required")));
    }
    let want_wire = wire_kind(want);
    if r.kind != want_wire as i32 {
        let got = mc::ResourceKind::try_from(r.kind).map(|k| k.as_str_name().to_owned()).unwrap_or(r.kind.to_string());
        return Err(invalid(format!("{field}.kind: expected {}, got {got}", want_wire.as_str_name())));
    }
    if r.id.is_empty() {
        return Err(invalid(format!("{field}.id: required")));
    }
    if let Err(e) = tessera_core::ids::validate_id(&format!("{field}.id"), &r.id) {
        return Err(to_status(e));
    }
    if r.tenant_id != caller.tenant {
        return Err(Status::permission_denied(format!("{field} belongs to another tenant than the caller's")));
    }
    Ok(r.id.clone())
}

fn resource_id(r: &Resource) -> mc::ResourceId {
    let tenant = if r.kind == Kind::Tenant { r.id.clone() } else { r.tenant.clone() };
    mc::ResourceId { tenant_id: tenant, id: r.id.clone(), kind: wire_kind(r.kind) as i32 }
}

fn id_of(tenant: &str, kind: Kind, id: &str) -> mc::ResourceId {
    mc::ResourceId { tenant_id: tenant.to_owned(), id: id.to_owned(), kind: wire_kind(kind) as i32 }
}

fn ts(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn ms(field: &str, t: &prost_types::Timestamp) -> Result<u64, Status> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(format!("{field}: must be a valid time at or after 1970-01-01")));
    }
    (t.seconds as u64)
        .checked_mul(1000)
        .map(|s| s + t.nanos as u64 / 1_000_000)
        .ok_or_else(|| invalid(format!("{field}: out of range")))
}

fn meta(r: &Resource) -> mc::MutationMeta {
    let tenant = if r.kind == Kind::Tenant { &r.id } else { &r.tenant };
    mc::MutationMeta {
        pointer_key: format!(
            "/tenants/{tenant}/{}/{}",
            wire_kind(r.kind).as_str_name().trim_start_matches("RK_").to_lowercase(),
            r.id
        ),
        blob_uri: String::new(),
        pointer_version: r.version as i64,
        etag: r.etag.clone(),
        updated_at: Some(ts(r.updated_ms)),
    }
}

fn decode<M: Message + Default>(r: &Resource) -> Result<M, Status> {
    M::decode(r.payload.as_slice())
        .map_err(|e| Status::internal(format!("stored {} is unreadable: {e}", r.kind.noun())))
}

/// The idempotency key of a mutation, with the SHA-256 of its canonical encoding (the
/// request with its idempotency key cleared; metacat maps are ordered, so the encoding is).
fn idem<M: Message>(op: &str, key: Option<&mc::IdempotencyKey>, canonical: &M) -> Result<Option<Idempotency>, Status> {
    let Some(k) = key.filter(|k| !k.key.is_empty()) else { return Ok(None) };
    if k.key.len() > 256 {
        return Err(invalid(format!("idempotency.key: {} bytes, at most 256", k.key.len())));
    }
    let mut h = Sha256::new();
    h.update(op.as_bytes());
    h.update(canonical.encode_to_vec());
    Ok(Some(Idempotency { op: op.to_owned(), key: k.key.clone(), request_hash: h.finalize().to_vec() }))
}

fn precondition(p: Option<&mc::Precondition>) -> Result<Precondition, Status> {
    let Some(p) = p else { return Ok(Precondition::default()) };
    if p.expected_version < 0 {
        return Err(invalid("precondition.expected_version: must not be negative"));
    }
    Ok(Precondition {
        version: (p.expected_version > 0).then_some(p.expected_version as u64),
        etag: (!p.expected_etag.is_empty()).then(|| p.expected_etag.clone()),
    })
}

/// Page size and token from a request.
fn page_of(p: Option<&mc::PageRequest>) -> Result<(usize, Option<String>), Status> {
    let Some(p) = p else { return Ok((0, None)) };
    if p.page_size < 0 {
        return Err(invalid("page.page_size: must not be negative"));
    }
    let token = (!p.page_token.is_empty()).then(|| p.page_token.clone());
    Ok(((p.page_size as usize).min(MAX_PAGE_SIZE), token))
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), Status> {
    if v.len() > max {
        return Err(invalid(format!("{field}: {} bytes, at most {max}", v.len())));
    }
    Ok(())
}

fn check_properties(props: &std::collections::BTreeMap<String, String>) -> Result<(), Status> {
    if props.len() > 1000 {
        return Err(invalid(format!("properties: {} entries, at most 1000", props.len())));
    }
    for (k, v) in props {
        if k.is_empty() || k.len() > 256 {
            return Err(invalid(format!("properties: key {k:?} must be 1..=256 bytes")));
        }
        check_text(&format!("properties[{k:?}]"), v, 64 << 10)?;
    }
    Ok(())
}

/// A display name: required, 1..=256 bytes, no control characters or '/'... dots are fine.
fn check_name(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(format!("{field}: required")));
    }
    if v.len() > 256 || v.chars().any(char::is_control) {
        return Err(invalid(format!("{field}: {v:?} must be 1..=256 bytes without control characters")));
    }
    Ok(())
}

/// A field mask's paths, checked against what the resource allows; empty means all.
fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>, Status> {
    let paths: Vec<String> = mask.map(|m| m.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        return Ok(allowed.iter().map(|s| (*s).to_owned()).collect());
    }
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            return Err(invalid(format!(
                "update_mask: unknown or immutable path {p:?}; allowed: {}",
                allowed.join(", ")
            )));
        }
    }
    Ok(paths)
}

fn path_name(segments: &[String]) -> String {
    segments.join(&PATH_SEP.to_string())
}

fn segments(name: &str) -> Vec<String> {
    name.split(PATH_SEP).map(str::to_owned).collect()
}

/// Sortable name of a snapshot id (ids may be negative).
fn snapshot_name(id: i64) -> String {
    format!("{:016x}", (id as u64) ^ (1 << 63))
}

fn respond<T>(caller: &Caller, msg: T) -> Response<T> {
    let mut r = Response::new(msg);
    caller.echo(r.metadata_mut());
    r
}
