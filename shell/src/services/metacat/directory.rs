//! `DirectoryService`: names to ids and back, for catalogs, namespaces, tables and views.
//! Every answer is read through the same machine as the CRUD services, so the two always
//! agree.

use sha2::{Digest, Sha256};
use tessera_core::catalog::{CatalogRequest, Kind, ListQuery, Resource};
use tessera_proto::ai::floedb::metacat::catalog::directory_service_server::DirectoryService;
use tessera_proto::ai::floedb::metacat::catalog::*;
use tonic::{Request, Response, Status};

use super::principal::Caller;
use super::*;

/// Most names one batched resolve may carry.
const MAX_NAMES: usize = 1000;

impl Metacat {
    async fn resolve(&self, caller: &Caller, kind: Kind, parent: String, name: String) -> Result<Resource, Status> {
        self.one(CatalogRequest::Resolve { tenant: caller.tenant.clone(), kind, parent, name }).await
    }

    async fn resolve_catalog(&self, caller: &Caller, r: &mc::NameRef) -> Result<Resource, Status> {
        check_name("ref.catalog", &r.catalog)?;
        self.resolve(caller, Kind::Catalog, String::new(), r.catalog.clone()).await
    }

    /// The namespace `segs` names in the catalog `r.catalog`.
    async fn resolve_namespace(&self, caller: &Caller, r: &mc::NameRef, segs: &[String]) -> Result<Resource, Status> {
        if segs.is_empty() {
            return Err(invalid("ref.path: the namespace path is required"));
        }
        for (i, s) in segs.iter().enumerate() {
            check_name(&format!("ref.path[{i}]"), s)?;
        }
        let catalog = self.resolve_catalog(caller, r).await?;
        self.resolve(caller, Kind::Namespace, catalog.id, path_name(segs)).await
    }

    /// A table or view named by catalog, namespace path and name.
    async fn resolve_relation(&self, caller: &Caller, kind: Kind, r: &mc::NameRef) -> Result<Resource, Status> {
        check_name("ref.name", &r.name)?;
        let ns = self.resolve_namespace(caller, r, &r.path).await?;
        self.resolve(caller, kind, ns.id, r.name.clone()).await
    }

    /// The full name of a table or view.
    async fn name_of(&self, caller: &Caller, r: &Resource) -> Result<mc::NameRef, Status> {
        let ns = self.get(caller, Kind::Namespace, r.parent.clone()).await?;
        let catalog = self.get(caller, Kind::Catalog, ns.parent.clone()).await?;
        Ok(mc::NameRef {
            catalog: catalog.name,
            path: segments(&ns.name),
            name: r.name.clone(),
            resource_id: Some(resource_id(r)),
        })
    }

    async fn lookup_relation(
        &self,
        caller: &Caller,
        kind: Kind,
        id: Option<&mc::ResourceId>,
    ) -> Result<mc::NameRef, Status> {
        let id = rid("resource_id", id, kind, caller)?;
        let r = self.get(caller, kind, id).await?;
        self.name_of(caller, &r).await
    }

    /// Batched resolution of tables or views: a list of names (answered in order, unknown
    /// names without a resource id) or every relation under a namespace prefix.
    async fn resolve_fq(
        &self,
        caller: &Caller,
        kind: Kind,
        list: Option<Vec<mc::NameRef>>,
        prefix: Option<mc::NameRef>,
        page: Option<&mc::PageRequest>,
    ) -> Result<(Vec<(Option<mc::ResourceId>, mc::NameRef)>, mc::PageResponse), Status> {
        let (size, token) = page_of(page)?;
        let size = if size == 0 { tessera_core::catalog::DEFAULT_PAGE_SIZE } else { size };
        match (list, prefix) {
            (Some(names), None) => {
                if names.len() > MAX_NAMES {
                    return Err(invalid(format!("list.names: {} names, at most {MAX_NAMES}", names.len())));
                }
                // Offsets into the caller's own list, bound to that list by a hash.
                let mut h = Sha256::new();
                h.update(caller.tenant.as_bytes());
                for n in &names {
                    h.update(n.encode_to_vec());
                    h.update([0xff]);
                }
                let bind = tessera_core::codec::hex(&h.finalize()[..8]);
                let start = match token {
                    None => 0,
                    Some(t) => match t.split_once('.') {
                        Some((off, b)) if b == bind => {
                            off.parse::<usize>().map_err(|_| invalid("page.page_token: malformed"))?
                        }
                        _ => return Err(invalid("page.page_token: this token belongs to another request")),
                    },
                };
                let mut out = Vec::new();
                for n in names.iter().skip(start).take(size) {
                    let id = match self.resolve_relation(caller, kind, n).await {
                        Ok(r) => Some(resource_id(&r)),
                        Err(e) if e.code() == tonic::Code::NotFound => None,
                        Err(e) => return Err(e),
                    };
                    out.push((id, n.clone()));
                }
                let end = start + out.len();
                let next = if end < names.len() { format!("{end}.{bind}") } else { String::new() };
                Ok((out, mc::PageResponse { next_page_token: next, total_size: names.len() as i32 }))
            }
            (None, Some(p)) => {
                let ns = self.resolve_namespace(caller, &p, &p.path).await?;
                let q = ListQuery {
                    tenant: caller.tenant.clone(),
                    kind,
                    scope: format!("resolve {} {}", kind.noun(), ns.id),
                    parent: ns.id.clone(),
                    prefix: p.name.clone(),
                    direct_below: None,
                    page_size: size,
                    page_token: token,
                };
                let (items, page) = self.page(q).await?;
                let out = items
                    .iter()
                    .map(|r| {
                        let name = mc::NameRef {
                            catalog: p.catalog.clone(),
                            path: p.path.clone(),
                            name: r.name.clone(),
                            resource_id: Some(resource_id(r)),
                        };
                        (Some(resource_id(r)), name)
                    })
                    .collect();
                Ok((out, page))
            }
            _ => Err(invalid("selector: list or prefix is required")),
        }
    }
}

#[tonic::async_trait]
impl DirectoryService for Metacat {
    async fn resolve_catalog(
        &self,
        req: Request<ResolveCatalogRequest>,
    ) -> Result<Response<ResolveCatalogResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.get_ref().r#ref.clone().ok_or_else(|| invalid("ref: required"))?;
        let c = Metacat::resolve_catalog(self, &caller, &r).await?;
        Ok(respond(&caller, ResolveCatalogResponse { resource_id: Some(resource_id(&c)) }))
    }

    async fn lookup_catalog(
        &self,
        req: Request<LookupCatalogRequest>,
    ) -> Result<Response<LookupCatalogResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let id = rid("resource_id", req.get_ref().resource_id.as_ref(), Kind::Catalog, &caller)?;
        let c = self.get(&caller, Kind::Catalog, id).await?;
        Ok(respond(&caller, LookupCatalogResponse { display_name: c.name }))
    }

    async fn resolve_namespace(
        &self,
        req: Request<ResolveNamespaceRequest>,
    ) -> Result<Response<ResolveNamespaceResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.get_ref().r#ref.clone().ok_or_else(|| invalid("ref: required"))?;
        let mut segs = r.path.clone();
        if !r.name.is_empty() {
            segs.push(r.name.clone());
        }
        let ns = Metacat::resolve_namespace(self, &caller, &r, &segs).await?;
        Ok(respond(&caller, ResolveNamespaceResponse { resource_id: Some(resource_id(&ns)) }))
    }

    async fn lookup_namespace(
        &self,
        req: Request<LookupNamespaceRequest>,
    ) -> Result<Response<LookupNamespaceResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let id = rid("resource_id", req.get_ref().resource_id.as_ref(), Kind::Namespace, &caller)?;
        let ns = self.get(&caller, Kind::Namespace, id).await?;
        let catalog = self.get(&caller, Kind::Catalog, ns.parent.clone()).await?;
        let mut path = segments(&ns.name);
        let name = path.pop().unwrap_or_default();
        let r = mc::NameRef { catalog: catalog.name, path, name, resource_id: Some(resource_id(&ns)) };
        Ok(respond(&caller, LookupNamespaceResponse { r#ref: Some(r) }))
    }

    async fn resolve_table(&self, req: Request<ResolveTableRequest>) -> Result<Response<ResolveTableResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.get_ref().r#ref.clone().ok_or_else(|| invalid("ref: required"))?;
        let t = self.resolve_relation(&caller, Kind::Table, &r).await?;
        Ok(respond(&caller, ResolveTableResponse { resource_id: Some(resource_id(&t)) }))
    }

    async fn resolve_fq_tables(
        &self,
        req: Request<ResolveFqTablesRequest>,
    ) -> Result<Response<ResolveFqTablesResponse>, Status> {
        use resolve_fq_tables_request::Selector;
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let (list, prefix) = match r.selector {
            Some(Selector::List(l)) => (Some(l.names), None),
            Some(Selector::Prefix(p)) => (None, Some(p)),
            None => (None, None),
        };
        let (found, page) = self.resolve_fq(&caller, Kind::Table, list, prefix, r.page.as_ref()).await?;
        let tables = found
            .into_iter()
            .map(|(resource_id, name)| resolve_fq_tables_response::Entry { resource_id, name: Some(name) })
            .collect();
        Ok(respond(&caller, ResolveFqTablesResponse { tables, page: Some(page) }))
    }

    async fn lookup_table(&self, req: Request<LookupTableRequest>) -> Result<Response<LookupTableResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let name = self.lookup_relation(&caller, Kind::Table, req.get_ref().resource_id.as_ref()).await?;
        Ok(respond(&caller, LookupTableResponse { name: Some(name) }))
    }

    async fn resolve_view(&self, req: Request<ResolveViewRequest>) -> Result<Response<ResolveViewResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.get_ref().r#ref.clone().ok_or_else(|| invalid("ref: required"))?;
        let v = self.resolve_relation(&caller, Kind::View, &r).await?;
        Ok(respond(&caller, ResolveViewResponse { resource_id: Some(resource_id(&v)) }))
    }

    async fn resolve_fq_views(
        &self,
        req: Request<ResolveFqViewsRequest>,
    ) -> Result<Response<ResolveFqViewsResponse>, Status> {
        use resolve_fq_views_request::Selector;
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let (list, prefix) = match r.selector {
            Some(Selector::List(l)) => (Some(l.names), None),
            Some(Selector::Prefix(p)) => (None, Some(p)),
            None => (None, None),
        };
        let (found, page) = self.resolve_fq(&caller, Kind::View, list, prefix, r.page.as_ref()).await?;
        let views = found
            .into_iter()
            .map(|(resource_id, name)| resolve_fq_views_response::Entry { resource_id, name: Some(name) })
            .collect();
        Ok(respond(&caller, ResolveFqViewsResponse { views, page: Some(page) }))
    }

    async fn lookup_view(&self, req: Request<LookupViewRequest>) -> Result<Response<LookupViewResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let name = self.lookup_relation(&caller, Kind::View, req.get_ref().resource_id.as_ref()).await?;
        Ok(respond(&caller, LookupViewResponse { name: Some(name) }))
    }
}
