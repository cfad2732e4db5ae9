//! The catalog state machine: every read and change of the resource tree.

use std::collections::BTreeSet;
use std::ops::ControlFlow::Continue;

use super::records::{IdemRecord, KEYSPACE, Kind, Resource};
use super::{
    DEFAULT_IDEMPOTENCY_TTL_MS, DEFAULT_PAGE_SIZE, MAX_BATCH, MAX_NAME_BYTES, MAX_PAGE_SIZE, PATH_SEP, keys, page,
};
use crate::codec::hex;
use crate::error::{CoreError, CoreResult};
use crate::ready::{ClientToken, Machine, Ready};
use crate::rng::Rng;
use crate::store::{StoreError, StoreRead, WriteBatch, for_each_prefix};

#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// How long an idempotency key remembers its request and result.
    pub idempotency_ttl_ms: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self { idempotency_ttl_ms: DEFAULT_IDEMPOTENCY_TTL_MS }
    }
}

/// A mutation's idempotency key, scoped by tenant and operation, with the SHA-256 of the
/// canonical request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub op: String,
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// Expected state of the resource a mutation changes; unset parts are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub version: Option<u64>,
    pub etag: Option<String>,
}

/// One page of a parent's children of one kind, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub tenant: String,
    pub kind: Kind,
    pub parent: String,
    /// Only names starting with this.
    pub prefix: String,
    /// Only names with no path separator after their first `n` bytes (direct children in a
    /// namespace tree).
    pub direct_below: Option<usize>,
    /// 0 means the default.
    pub page_size: usize,
    pub page_token: Option<String>,
    /// The shell's description of the query; a token only works for the same one.
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogRequest {
    Create {
        tenant: String,
        kind: Kind,
        parent: String,
        name: String,
        payload: Vec<u8>,
        time_ms: u64,
        idem: Option<Idempotency>,
    },
    Get {
        tenant: String,
        kind: Kind,
        id: String,
    },
    Resolve {
        tenant: String,
        kind: Kind,
        parent: String,
        name: String,
    },
    List(ListQuery),
    /// The child of `kind` with the greatest `time_ms` (then name) not after `at_most_ms`.
    Latest {
        tenant: String,
        kind: Kind,
        parent: String,
        at_most_ms: Option<u64>,
    },
    Update {
        tenant: String,
        kind: Kind,
        id: String,
        /// A new name, if it changes.
        name: Option<String>,
        payload: Vec<u8>,
        pre: Precondition,
        idem: Option<Idempotency>,
    },
    /// Deletes a resource; children of the kinds in `cascade` go with it, any other child
    /// makes the delete fail.
    Delete {
        tenant: String,
        kind: Kind,
        id: String,
        pre: Precondition,
        cascade: Vec<Kind>,
        idem: Option<Idempotency>,
    },
    /// Creates or replaces children of one kind by name, all or none.
    Upsert {
        tenant: String,
        kind: Kind,
        parent: String,
        items: Vec<(String, Vec<u8>)>,
        idem: Option<Idempotency>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogResponse {
    /// The resource as created, read, updated or (for a delete) as it was removed.
    Resource {
        resource: Resource,
        replayed: bool,
    },
    Page {
        items: Vec<Resource>,
        next_page_token: Option<String>,
    },
    /// Upserted resources (a replay returns only the first, and the count).
    Upserted {
        resources: Vec<Resource>,
        count: u64,
        replayed: bool,
    },
}

pub struct CatalogMachine {
    config: CatalogConfig,
    rng: Rng,
    token_key: [u8; 32],
    next_expiry: Option<u64>,
}

fn not_found(kind: Kind, id: &str) -> CoreError {
    CoreError::NotFound(format!("{} {id:?} not found", kind.noun()))
}

fn validate_name(kind: Kind, name: &str) -> CoreResult<()> {
    let what = kind.noun();
    if name.is_empty() {
        return Err(CoreError::InvalidArgument(format!("{what} name: must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(CoreError::InvalidArgument(format!("{what} name: {} bytes, at most {MAX_NAME_BYTES}", name.len())));
    }
    let bad = |c: char| c.is_control() && !(kind == Kind::Namespace && c == PATH_SEP);
    if name.chars().any(bad) || name.split(PATH_SEP).any(str::is_empty) {
        return Err(CoreError::InvalidArgument(format!(
            "{what} name {name:?}: empty path segments and control characters are not allowed"
        )));
    }
    Ok(())
}

impl CatalogMachine {
    /// Opens the catalog: loads (or creates, in the returned batch) the token signing key.
    pub fn open(store: &dyn StoreRead, config: CatalogConfig, rng: &mut Rng) -> Result<(Self, WriteBatch), StoreError> {
        let mut init = WriteBatch::default();
        let token_key = match store.get(KEYSPACE, keys::TOKEN_KEY)? {
            Some(k) if k.len() == 32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&k);
                a
            }
            _ => {
                let mut a = [0u8; 32];
                rng.fill(&mut a);
                init.put(KEYSPACE, keys::TOKEN_KEY.to_vec(), a.to_vec());
                a
            }
        };
        let next_expiry = Self::first_expiry(store)?;
        Ok((Self { config, rng: Rng::new(rng.next_u64()), token_key, next_expiry }, init))
    }

    fn first_expiry(store: &dyn StoreRead) -> Result<Option<u64>, StoreError> {
        let first = store.prefix(KEYSPACE, keys::EXPIRY_PREFIX, None, 1)?;
        Ok(first.first().and_then(|(k, _)| keys::expiry_at(k)))
    }

    fn new_id(&mut self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b);
        hex(&b)
    }

    fn load(store: &dyn StoreRead, tenant: &str, kind: Kind, id: &str) -> CoreResult<Resource> {
        let r = match store.get(KEYSPACE, &keys::resource(tenant, id))? {
            Some(v) => Resource::decode(&v)?,
            None => return Err(not_found(kind, id)),
        };
        if r.kind != kind {
            return Err(CoreError::InvalidArgument(format!("{id:?} is a {}, not a {}", r.kind.noun(), kind.noun())));
        }
        Ok(r)
    }

    fn check_tenant(store: &dyn StoreRead, tenant: &str, kind: Kind) -> CoreResult<()> {
        if kind == Kind::Tenant {
            return Ok(());
        }
        if tenant.is_empty() {
            return Err(CoreError::InvalidArgument("tenant_id: must not be empty".into()));
        }
        Self::load(store, "", Kind::Tenant, tenant).map(|_| ())
    }

    fn check_parent(store: &dyn StoreRead, tenant: &str, kind: Kind, parent: &str) -> CoreResult<()> {
        match kind.parent() {
            None if parent.is_empty() => Ok(()),
            None => Err(CoreError::InvalidArgument(format!("a {} has no parent", kind.noun()))),
            Some(pk) => Self::load(store, tenant, pk, parent).map(|_| ()),
        }
    }

    fn lookup(store: &dyn StoreRead, tenant: &str, parent: &str, kind: Kind, name: &str) -> CoreResult<Option<String>> {
        Ok(store
            .get(KEYSPACE, &keys::name(tenant, parent, kind, name))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Refuses a name already taken under `parent` (by this kind or one sharing its names).
    fn check_name_free(store: &dyn StoreRead, tenant: &str, parent: &str, kind: Kind, name: &str) -> CoreResult<()> {
        for k in std::iter::once(kind).chain(kind.shares_names_with()) {
            if let Some(id) = Self::lookup(store, tenant, parent, k, name)? {
                return Err(CoreError::AlreadyExists(format!(
                    "a {} named {:?} already exists here (id {id})",
                    k.noun(),
                    name.replace(PATH_SEP, ".")
                )));
            }
        }
        if kind == Kind::Namespace
            && let Some((up, _)) = name.rsplit_once(PATH_SEP)
            && Self::lookup(store, tenant, parent, kind, up)?.is_none()
        {
            return Err(CoreError::NotFound(format!(
                "parent namespace {:?} does not exist; create it first",
                up.replace(PATH_SEP, ".")
            )));
        }
        Ok(())
    }

    fn check_pre(r: &Resource, pre: &Precondition) -> CoreResult<()> {
        if let Some(v) = pre.version
            && v != r.version
        {
            return Err(CoreError::FailedPrecondition(format!(
                "{} {} is at version {} (etag {}), not the expected {v}",
                r.kind.noun(),
                r.id,
                r.version,
                r.etag
            )));
        }
        if let Some(e) = &pre.etag
            && *e != r.etag
        {
            return Err(CoreError::FailedPrecondition(format!(
                "{} {} has etag {} (version {}), not the expected {e}",
                r.kind.noun(),
                r.id,
                r.etag,
                r.version
            )));
        }
        Ok(())
    }

    /// A live record for this key: `Ok(Some)` to replay, `Err` for a different request.
    fn replay(
        &self,
        store: &dyn StoreRead,
        now: u64,
        tenant: &str,
        idem: Option<&Idempotency>,
    ) -> CoreResult<Option<IdemRecord>> {
        let Some(idem) = idem else { return Ok(None) };
        let Some(v) = store.get(KEYSPACE, &keys::idempotency(tenant, &idem.op, &idem.key))? else { return Ok(None) };
        let rec = IdemRecord::decode(&v)?;
        if rec.expires_ms <= now {
            return Ok(None);
        }
        if rec.hash != idem.request_hash {
            return Err(CoreError::Aborted(format!(
                "idempotency key {:?} was already used for a different {} request; use a new key",
                idem.key, idem.op
            )));
        }
        Ok(Some(rec))
    }

    fn remember(
        &mut self,
        batch: &mut WriteBatch,
        now: u64,
        tenant: &str,
        idem: &Idempotency,
        resource: Option<&Resource>,
        count: u64,
    ) {
        let expires_ms = now.saturating_add(self.config.idempotency_ttl_ms);
        let key = keys::idempotency(tenant, &idem.op, &idem.key);
        let rec = IdemRecord { hash: idem.request_hash.clone(), expires_ms, resource: resource.cloned(), count };
        batch.put(KEYSPACE, keys::expiry(expires_ms, &key), Vec::new());
        batch.put(KEYSPACE, key, rec.encode());
        self.next_expiry = Some(self.next_expiry.map_or(expires_ms, |n| n.min(expires_ms)));
    }

    fn put(batch: &mut WriteBatch, r: &Resource) {
        batch.put(KEYSPACE, keys::resource(&r.tenant, &r.id), r.encode());
    }

    fn handle(
        &mut self,
        now: u64,
        req: CatalogRequest,
        store: &dyn StoreRead,
    ) -> CoreResult<(CatalogResponse, WriteBatch)> {
        let mut batch = WriteBatch::default();
        let resource = |resource: Resource, replayed: bool| CatalogResponse::Resource { resource, replayed };
        match req {
            CatalogRequest::Get { tenant, kind, id } => {
                Self::check_tenant(store, &tenant, kind)?;
                Ok((resource(Self::load(store, &tenant, kind, &id)?, false), batch))
            }
            CatalogRequest::Resolve { tenant, kind, parent, name } => {
                Self::check_tenant(store, &tenant, kind)?;
                let id = Self::lookup(store, &tenant, &parent, kind, &name)?.ok_or_else(|| {
                    CoreError::NotFound(format!("no {} named {:?} here", kind.noun(), name.replace(PATH_SEP, ".")))
                })?;
                Ok((resource(Self::load(store, &tenant, kind, &id)?, false), batch))
            }
            CatalogRequest::List(q) => {
                Self::check_tenant(store, &q.tenant, q.kind)?;
                let (items, next_page_token) = self.list(store, &q)?;
                Ok((CatalogResponse::Page { items, next_page_token }, batch))
            }
            CatalogRequest::Latest { tenant, kind, parent, at_most_ms } => {
                Self::check_tenant(store, &tenant, kind)?;
                Self::check_parent(store, &tenant, kind, &parent)?;
                let best = Self::latest(store, &tenant, kind, &parent, at_most_ms)?.ok_or_else(|| {
                    CoreError::NotFound(match at_most_ms {
                        Some(t) => format!("no {} at or before {t} ms since the epoch", kind.noun()),
                        None => format!("no {} yet", kind.noun()),
                    })
                })?;
                Ok((resource(best, false), batch))
            }
            CatalogRequest::Create { tenant, kind, parent, name, payload, time_ms, idem } => {
                Self::check_tenant(store, &tenant, kind)?;
                if let Some(r) = self.replay(store, now, &tenant, idem.as_ref())?.and_then(|rec| rec.resource) {
                    return Ok((resource(r, true), batch));
                }
                validate_name(kind, &name)?;
                Self::check_parent(store, &tenant, kind, &parent)?;
                Self::check_name_free(store, &tenant, &parent, kind, &name)?;
                let r = Resource::fresh(kind, tenant.clone(), self.new_id(), parent, name, payload, now, time_ms);
                Self::put(&mut batch, &r);
                batch.put(KEYSPACE, keys::name(&tenant, &r.parent, kind, &r.name), r.id.as_bytes().to_vec());
                if let Some(i) = &idem {
                    self.remember(&mut batch, now, &tenant, i, Some(&r), 1);
                }
                Ok((resource(r, false), batch))
            }
            CatalogRequest::Update { tenant, kind, id, name, payload, pre, idem } => {
                Self::check_tenant(store, &tenant, kind)?;
                if let Some(r) = self.replay(store, now, &tenant, idem.as_ref())?.and_then(|rec| rec.resource) {
                    return Ok((resource(r, true), batch));
                }
                let mut r = Self::load(store, &tenant, kind, &id)?;
                Self::check_pre(&r, &pre)?;
                if let Some(new) = name.filter(|n| *n != r.name) {
                    validate_name(kind, &new)?;
                    if kind == Kind::Namespace && Self::has_sub_namespaces(store, &r)? {
                        return Err(CoreError::FailedPrecondition(format!(
                            "namespace {} has child namespaces; rename or move them first",
                            r.name.replace(PATH_SEP, ".")
                        )));
                    }
                    Self::check_name_free(store, &tenant, &r.parent, kind, &new)?;
                    batch.delete(KEYSPACE, keys::name(&tenant, &r.parent, kind, &r.name));
                    batch.put(KEYSPACE, keys::name(&tenant, &r.parent, kind, &new), r.id.as_bytes().to_vec());
                    r.name = new;
                }
                r.revise(Some(payload), now);
                Self::put(&mut batch, &r);
                if let Some(i) = &idem {
                    self.remember(&mut batch, now, &tenant, i, Some(&r), 1);
                }
                Ok((resource(r, false), batch))
            }
            CatalogRequest::Delete { tenant, kind, id, pre, cascade, idem } => {
                Self::check_tenant(store, &tenant, kind)?;
                if let Some(r) = self.replay(store, now, &tenant, idem.as_ref())?.and_then(|rec| rec.resource) {
                    return Ok((resource(r, true), batch));
                }
                let mut r = Self::load(store, &tenant, kind, &id)?;
                Self::check_pre(&r, &pre)?;
                let doomed = Self::subtree(store, &r, &cascade)?;
                for d in doomed.iter().chain(std::iter::once(&r)) {
                    batch.delete(KEYSPACE, keys::resource(&d.tenant, &d.id));
                    batch.delete(KEYSPACE, keys::name(&d.tenant, &d.parent, d.kind, &d.name));
                }
                r.updated_ms = now;
                if let Some(i) = &idem {
                    self.remember(&mut batch, now, &tenant, i, Some(&r), 1);
                }
                Ok((resource(r, false), batch))
            }
            CatalogRequest::Upsert { tenant, kind, parent, items, idem } => {
                Self::check_tenant(store, &tenant, kind)?;
                if let Some(rec) = self.replay(store, now, &tenant, idem.as_ref())? {
                    let resources = rec.resource.into_iter().collect();
                    return Ok((CatalogResponse::Upserted { resources, count: rec.count, replayed: true }, batch));
                }
                if items.len() > MAX_BATCH {
                    return Err(CoreError::InvalidArgument(format!(
                        "{} items in one batch, at most {MAX_BATCH}",
                        items.len()
                    )));
                }
                Self::check_parent(store, &tenant, kind, &parent)?;
                let mut seen = BTreeSet::new();
                let mut out = Vec::with_capacity(items.len());
                for (name, payload) in items {
                    validate_name(kind, &name)?;
                    if !seen.insert(name.clone()) {
                        return Err(CoreError::InvalidArgument(format!(
                            "{} {name:?} appears twice in one batch",
                            kind.noun()
                        )));
                    }
                    let r = match Self::lookup(store, &tenant, &parent, kind, &name)? {
                        Some(id) => {
                            let mut r = Self::load(store, &tenant, kind, &id)?;
                            r.revise(Some(payload), now);
                            r
                        }
                        None => {
                            let id = self.new_id();
                            batch.put(KEYSPACE, keys::name(&tenant, &parent, kind, &name), id.as_bytes().to_vec());
                            Resource::fresh(kind, tenant.clone(), id, parent.clone(), name, payload, now, 0)
                        }
                    };
                    Self::put(&mut batch, &r);
                    out.push(r);
                }
                let count = out.len() as u64;
                if let Some(i) = &idem {
                    self.remember(&mut batch, now, &tenant, i, out.first(), count);
                }
                Ok((CatalogResponse::Upserted { resources: out, count, replayed: false }, batch))
            }
        }
    }

    fn has_sub_namespaces(store: &dyn StoreRead, ns: &Resource) -> CoreResult<bool> {
        let prefix = keys::sub_namespaces(&ns.tenant, &ns.parent, &ns.name);
        Ok(!store.prefix(KEYSPACE, &prefix, None, 1)?.is_empty())
    }

    /// Everything below `root` (children, their children, and for a namespace its child
    /// namespaces), refusing kinds not in `cascade` and trees larger than [`MAX_BATCH`].
    fn subtree(store: &dyn StoreRead, root: &Resource, cascade: &[Kind]) -> CoreResult<Vec<Resource>> {
        let mut out: Vec<Resource> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = vec![root.clone()];
        while let Some(r) = queue.pop() {
            let mut ids = Vec::new();
            // A tenant's catalogs live in its own realm, with no parent id.
            let (tenant, prefix) = match r.kind {
                Kind::Tenant => (r.id.clone(), keys::children(&r.id, "")),
                _ => (r.tenant.clone(), keys::children(&r.tenant, &r.id)),
            };
            Self::ids_under(store, &prefix, |_| true, &mut ids)?;
            if r.kind == Kind::Namespace {
                // Only direct child namespaces: each one brings its own below it.
                let p = keys::sub_namespaces(&r.tenant, &r.parent, &r.name);
                Self::ids_under(store, &p, |rest| !rest.contains(&0x1f), &mut ids)?;
            }
            for id in ids {
                if !seen.insert(id.clone()) {
                    continue;
                }
                let Some(v) = store.get(KEYSPACE, &keys::resource(&tenant, &id))? else { continue };
                let child = Resource::decode(&v)?;
                if !cascade.contains(&child.kind) {
                    return Err(CoreError::FailedPrecondition(format!(
                        "{} {} is not empty: it holds {} {:?}{}",
                        root.kind.noun(),
                        root.name.replace(PATH_SEP, "."),
                        child.kind.noun(),
                        child.name.replace(PATH_SEP, "."),
                        match root.kind {
                            Kind::Table => "; set purge_snapshots / purge_stats to delete them too",
                            Kind::Tenant => "; delete its catalogs first",
                            _ => "; delete its contents first, or send require_empty=false",
                        }
                    )));
                }
                out.push(child.clone());
                if out.len() > MAX_BATCH {
                    return Err(CoreError::FailedPrecondition(format!(
                        "{} {} holds more than {MAX_BATCH} resources; delete its contents in parts first",
                        root.kind.noun(),
                        root.name.replace(PATH_SEP, ".")
                    )));
                }
                queue.push(child);
            }
        }
        Ok(out)
    }

    /// Appends the ids named under `prefix` whose key tail (after the prefix) passes `keep`,
    /// stopping once past [`MAX_BATCH`] (the caller refuses trees that large).
    fn ids_under(
        store: &dyn StoreRead,
        prefix: &[u8],
        keep: impl Fn(&[u8]) -> bool,
        ids: &mut Vec<String>,
    ) -> CoreResult<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = store.prefix(KEYSPACE, prefix, after.as_deref(), 1024)?;
            let done = rows.len() < 1024;
            for (k, v) in rows {
                if keep(&k[prefix.len()..]) {
                    ids.push(String::from_utf8_lossy(&v).into_owned());
                }
                after = Some(k);
            }
            if done || ids.len() > MAX_BATCH {
                return Ok(());
            }
        }
    }

    fn latest(
        store: &dyn StoreRead,
        tenant: &str,
        kind: Kind,
        parent: &str,
        at_most_ms: Option<u64>,
    ) -> CoreResult<Option<Resource>> {
        let prefix = keys::names(tenant, parent, kind);
        let mut best: Option<Resource> = None;
        for_each_prefix(store, KEYSPACE, &prefix, |_, v| {
            let id = String::from_utf8_lossy(&v).into_owned();
            let r = Self::load(store, tenant, kind, &id)?;
            if at_most_ms.is_none_or(|t| r.time_ms <= t)
                && best.as_ref().is_none_or(|b| (r.time_ms, &r.name) >= (b.time_ms, &b.name))
            {
                best = Some(r);
            }
            Ok::<_, CoreError>(Continue(()))
        })?;
        Ok(best)
    }

    fn list(&self, store: &dyn StoreRead, q: &ListQuery) -> CoreResult<(Vec<Resource>, Option<String>)> {
        let size = match q.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let scope = page::scope(&q.tenant, &q.scope);
        let base = keys::names(&q.tenant, &q.parent, q.kind);
        let mut prefix = base.clone();
        prefix.extend_from_slice(q.prefix.as_bytes());
        let mut after: Option<Vec<u8>> = match &q.page_token {
            Some(t) if !t.is_empty() => {
                let mut k = base.clone();
                k.extend_from_slice(&page::decode(&self.token_key, scope, t)?);
                Some(k)
            }
            _ => None,
        };
        let matches = |k: &[u8]| match q.direct_below {
            Some(n) => !k.get(base.len() + n..).unwrap_or_default().contains(&0x1f),
            None => true,
        };
        let mut out = Vec::new();
        // Bounded work per call: a sparse match returns a short page with a token.
        let mut budget = size * 16 + 4096;
        loop {
            let rows = store.prefix(KEYSPACE, &prefix, after.as_deref(), 256)?;
            let done = rows.len() < 256;
            for (k, v) in rows {
                if !matches(&k) {
                    after = Some(k);
                    budget = budget.saturating_sub(1);
                    if budget == 0 {
                        let cursor = after.as_deref().unwrap_or_default();
                        return Ok((out, Some(page::encode(&self.token_key, scope, &cursor[base.len()..]))));
                    }
                    continue;
                }
                if out.len() == size {
                    // One more match exists: hand out a token after the last item served.
                    let last = after.as_deref().unwrap_or_default();
                    return Ok((out, Some(page::encode(&self.token_key, scope, &last[base.len()..]))));
                }
                let id = String::from_utf8_lossy(&v).into_owned();
                out.push(Self::load(store, &q.tenant, q.kind, &id)?);
                after = Some(k);
            }
            if done {
                return Ok((out, None));
            }
        }
    }

    /// Forgets idempotency records past their expiry.
    fn expire(&mut self, now: u64, store: &dyn StoreRead) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        let rows = store.prefix(KEYSPACE, keys::EXPIRY_PREFIX, None, 1024)?;
        for (k, _) in &rows {
            let Some((at, idem_key)) = keys::expiry_at(k).zip(keys::record_key(k)) else { continue };
            if at > now {
                break;
            }
            // The key may have been reused since, with a later expiry: only drop what expired.
            if let Some(v) = store.get(KEYSPACE, idem_key)?
                && IdemRecord::decode(&v)?.expires_ms <= now
            {
                batch.delete(KEYSPACE, idem_key.to_vec());
            }
            batch.delete(KEYSPACE, k.clone());
        }
        // Rows are in expiry order: the first one still live is the next deadline; if every
        // row read had expired, more may wait behind them, so come back at once.
        self.next_expiry = rows
            .iter()
            .filter_map(|(k, _)| keys::expiry_at(k))
            .find(|at| *at > now)
            .or(if rows.len() == 1024 { Some(now) } else { None });
        Ok(batch)
    }
}

impl Machine for CatalogMachine {
    type Input = CatalogRequest;
    type Output = CoreResult<CatalogResponse>;
    type Message = ();

    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: CatalogRequest,
        store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output>, StoreError> {
        let mut ready = Ready::answer(token, self.handle(now, input, store))?;
        ready.deadline = self.next_expiry;
        Ok(ready)
    }

    fn tick(&mut self, now: u64, store: &dyn StoreRead) -> Result<Ready<Self::Output>, StoreError> {
        let writes = self.expire(now, store)?;
        Ok(Ready { writes, deadline: self.next_expiry, ..Ready::default() })
    }
}
