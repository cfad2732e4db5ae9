//! `CatalogService` and `NamespaceService`.

use tessera_core::catalog::{CatalogRequest, Kind, ListQuery, Resource};
use tessera_proto::ai::floedb::metacat::catalog::catalog_service_server::CatalogService;
use tessera_proto::ai::floedb::metacat::catalog::list_namespaces_request::Parent;
use tessera_proto::ai::floedb::metacat::catalog::namespace_service_server::NamespaceService;
use tessera_proto::ai::floedb::metacat::catalog::*;
use tonic::{Request, Response, Status};

use super::principal::Caller;
use super::*;

/// Everything below a catalog or namespace, for deletes with `require_empty = false`.
pub(super) const CONTENTS: [Kind; 7] =
    [Kind::Namespace, Kind::Table, Kind::View, Kind::Snapshot, Kind::TableStats, Kind::ColumnStats, Kind::FileStats];

pub(super) fn catalog_msg(r: &Resource) -> Result<Catalog, Status> {
    let mut c: Catalog = decode(r)?;
    c.resource_id = Some(resource_id(r));
    c.display_name = r.name.clone();
    c.created_at = Some(ts(r.created_ms));
    Ok(c)
}

pub(super) fn namespace_msg(r: &Resource) -> Result<Namespace, Status> {
    let mut n: Namespace = decode(r)?;
    let mut segs = segments(&r.name);
    n.display_name = segs.pop().unwrap_or_default();
    n.parents = segs;
    n.resource_id = Some(resource_id(r));
    n.catalog_id = Some(id_of(&r.tenant, Kind::Catalog, &r.parent));
    n.created_at = Some(ts(r.created_ms));
    Ok(n)
}

fn check_catalog_spec(s: &CatalogSpec) -> Result<(), Status> {
    check_text("spec.description", s.description.as_deref().unwrap_or_default(), 4096)?;
    check_text("spec.connector_ref", s.connector_ref.as_deref().unwrap_or_default(), 1024)?;
    check_text("spec.policy_ref", s.policy_ref.as_deref().unwrap_or_default(), 1024)?;
    check_properties(&s.properties)
}

fn check_segments(field: &str, segs: &[String]) -> Result<(), Status> {
    if segs.len() > 32 {
        return Err(invalid(format!("{field}: {} levels, at most 32", segs.len())));
    }
    for (i, s) in segs.iter().enumerate() {
        check_name(&format!("{field}[{i}]"), s)?;
    }
    Ok(())
}

/// A namespace spec's full path: `path` then `display_name`.
fn full_path(spec: &NamespaceSpec) -> Result<Vec<String>, Status> {
    let mut segs = spec.path.clone();
    if let Some(n) = &spec.display_name {
        segs.push(n.clone());
    }
    if segs.is_empty() {
        return Err(invalid("spec.display_name: required (with spec.path holding the parent namespaces)"));
    }
    check_segments("spec.path", &segs)?;
    Ok(segs)
}

#[tonic::async_trait]
impl CatalogService for Metacat {
    async fn list_catalogs(&self, req: Request<ListCatalogsRequest>) -> Result<Response<ListCatalogsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let (page_size, page_token) = page_of(req.get_ref().page.as_ref())?;
        let q = ListQuery {
            tenant: caller.tenant.clone(),
            kind: Kind::Catalog,
            parent: String::new(),
            prefix: String::new(),
            direct_below: None,
            page_size,
            page_token,
            scope: "catalogs".into(),
        };
        let (items, page) = self.page(q).await?;
        let catalogs = items.iter().map(catalog_msg).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListCatalogsResponse { catalogs, page: Some(page) }))
    }

    async fn get_catalog(&self, req: Request<GetCatalogRequest>) -> Result<Response<GetCatalogResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let id = rid("catalog_id", req.get_ref().catalog_id.as_ref(), Kind::Catalog, &caller)?;
        let r = self.get(&caller, Kind::Catalog, id).await?;
        Ok(respond(&caller, GetCatalogResponse { catalog: Some(catalog_msg(&r)?) }))
    }

    async fn create_catalog(
        &self,
        req: Request<CreateCatalogRequest>,
    ) -> Result<Response<CreateCatalogResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let spec = r.spec.clone().ok_or_else(|| invalid("spec: required"))?;
        check_name("spec.display_name", &spec.display_name)?;
        check_catalog_spec(&spec)?;
        let idem =
            idem("CreateCatalog", r.idempotency.as_ref(), &CreateCatalogRequest { idempotency: None, ..r.clone() })?;
        let payload = Catalog {
            description: spec.description,
            connector_ref: spec.connector_ref,
            policy_ref: spec.policy_ref,
            properties: spec.properties,
            ..Default::default()
        };
        let res = self
            .one(CatalogRequest::Create {
                tenant: caller.tenant.clone(),
                kind: Kind::Catalog,
                parent: String::new(),
                name: spec.display_name,
                payload: payload.encode_to_vec(),
                time_ms: 0,
                idem,
            })
            .await?;
        Ok(respond(&caller, CreateCatalogResponse { catalog: Some(catalog_msg(&res)?), meta: Some(meta(&res)) }))
    }

    async fn update_catalog(
        &self,
        req: Request<UpdateCatalogRequest>,
    ) -> Result<Response<UpdateCatalogResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("catalog_id", r.catalog_id.as_ref(), Kind::Catalog, &caller)?;
        let spec = r.spec.ok_or_else(|| invalid("spec: required"))?;
        check_catalog_spec(&spec)?;
        let paths = mask_paths(
            r.update_mask.as_ref(),
            &["display_name", "description", "connector_ref", "policy_ref", "properties"],
        )?;
        let pre = precondition(r.precondition.as_ref())?;
        let res = self
            .update(caller.tenant.clone(), Kind::Catalog, id, pre, None, |c: &mut Catalog, name| {
                for p in &paths {
                    match p.as_str() {
                        "display_name" => {
                            check_name("spec.display_name", &spec.display_name)?;
                            name.clone_from(&spec.display_name);
                        }
                        "description" => c.description.clone_from(&spec.description),
                        "connector_ref" => c.connector_ref.clone_from(&spec.connector_ref),
                        "policy_ref" => c.policy_ref.clone_from(&spec.policy_ref),
                        _ => c.properties.clone_from(&spec.properties),
                    }
                }
                Ok(())
            })
            .await?;
        Ok(respond(&caller, UpdateCatalogResponse { catalog: Some(catalog_msg(&res)?), meta: Some(meta(&res)) }))
    }

    async fn delete_catalog(
        &self,
        req: Request<DeleteCatalogRequest>,
    ) -> Result<Response<DeleteCatalogResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("catalog_id", r.catalog_id.as_ref(), Kind::Catalog, &caller)?;
        let pre = precondition(r.precondition.as_ref())?;
        let cascade = if r.require_empty { vec![] } else { CONTENTS.to_vec() };
        let res = self
            .one(CatalogRequest::Delete {
                tenant: caller.tenant.clone(),
                kind: Kind::Catalog,
                id,
                pre,
                cascade,
                idem: None,
            })
            .await?;
        Ok(respond(&caller, DeleteCatalogResponse { meta: Some(meta(&res)) }))
    }
}

#[tonic::async_trait]
impl NamespaceService for Metacat {
    async fn list_namespaces(
        &self,
        req: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.get_ref();
        if r.recursive && r.children_only {
            return Err(invalid("recursive and children_only: choose one"));
        }
        check_segments("path", &r.path)?;
        let (catalog, mut base) = match &r.parent {
            Some(Parent::CatalogId(c)) => (rid("catalog_id", Some(c), Kind::Catalog, &caller)?, Vec::new()),
            Some(Parent::NamespaceId(n)) => {
                let id = rid("namespace_id", Some(n), Kind::Namespace, &caller)?;
                let ns = self.get(&caller, Kind::Namespace, id).await?;
                (ns.parent.clone(), segments(&ns.name))
            }
            None => return Err(invalid("catalog_id or namespace_id: one is required")),
        };
        // Make sure the catalog exists (and is ours) even when the listing is empty.
        self.get(&caller, Kind::Catalog, catalog.clone()).await?;
        base.extend(r.path.iter().cloned());
        let mut prefix = path_name(&base);
        if !prefix.is_empty() {
            prefix.push(PATH_SEP);
        }
        let base_len = prefix.len();
        prefix.push_str(&r.name_prefix);
        let (page_size, page_token) = page_of(r.page.as_ref())?;
        let q = ListQuery {
            tenant: caller.tenant.clone(),
            kind: Kind::Namespace,
            parent: catalog.clone(),
            scope: format!("namespaces {catalog} {prefix:?} {}", r.recursive),
            prefix,
            direct_below: (!r.recursive).then_some(base_len),
            page_size,
            page_token,
        };
        let (items, page) = self.page(q).await?;
        let namespaces = items.iter().map(namespace_msg).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListNamespacesResponse { namespaces, page: Some(page) }))
    }

    async fn get_namespace(&self, req: Request<GetNamespaceRequest>) -> Result<Response<GetNamespaceResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let id = rid("namespace_id", req.get_ref().namespace_id.as_ref(), Kind::Namespace, &caller)?;
        let r = self.get(&caller, Kind::Namespace, id).await?;
        Ok(respond(&caller, GetNamespaceResponse { namespace: Some(namespace_msg(&r)?) }))
    }

    async fn create_namespace(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let spec = r.spec.clone().ok_or_else(|| invalid("spec: required"))?;
        let catalog = rid("spec.catalog_id", spec.catalog_id.as_ref(), Kind::Catalog, &caller)?;
        let segs = full_path(&spec)?;
        check_text("spec.description", spec.description.as_deref().unwrap_or_default(), 4096)?;
        check_properties(&spec.properties)?;
        let idem = idem(
            "CreateNamespace",
            r.idempotency.as_ref(),
            &CreateNamespaceRequest { idempotency: None, ..r.clone() },
        )?;
        let payload = Namespace {
            description: spec.description,
            policy_ref: spec.policy_ref,
            properties: spec.properties,
            ..Default::default()
        };
        let res = self
            .one(CatalogRequest::Create {
                tenant: caller.tenant.clone(),
                kind: Kind::Namespace,
                parent: catalog,
                name: path_name(&segs),
                payload: payload.encode_to_vec(),
                time_ms: 0,
                idem,
            })
            .await?;
        Ok(respond(&caller, CreateNamespaceResponse { namespace: Some(namespace_msg(&res)?), meta: Some(meta(&res)) }))
    }

    async fn update_namespace(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("namespace_id", r.namespace_id.as_ref(), Kind::Namespace, &caller)?;
        let spec = r.spec.ok_or_else(|| invalid("spec: required"))?;
        check_text("spec.description", spec.description.as_deref().unwrap_or_default(), 4096)?;
        check_properties(&spec.properties)?;
        let paths =
            mask_paths(r.update_mask.as_ref(), &["display_name", "path", "description", "policy_ref", "properties"])?;
        let pre = precondition(r.precondition.as_ref())?;
        let res = self
            .update(caller.tenant.clone(), Kind::Namespace, id, pre, None, |n: &mut Namespace, name| {
                let mut segs = segments(name);
                for p in &paths {
                    match p.as_str() {
                        "display_name" => {
                            let leaf = spec.display_name.clone().unwrap_or_default();
                            check_name("spec.display_name", &leaf)?;
                            if let Some(last) = segs.last_mut() {
                                *last = leaf;
                            }
                        }
                        "path" => {
                            let leaf = segs.pop().unwrap_or_default();
                            check_segments("spec.path", &spec.path)?;
                            segs = spec.path.clone();
                            segs.push(leaf);
                        }
                        "description" => n.description.clone_from(&spec.description),
                        "policy_ref" => n.policy_ref.clone_from(&spec.policy_ref),
                        _ => n.properties.clone_from(&spec.properties),
                    }
                }
                *name = path_name(&segs);
                Ok(())
            })
            .await?;
        Ok(respond(&caller, UpdateNamespaceResponse { namespace: Some(namespace_msg(&res)?), meta: Some(meta(&res)) }))
    }

    async fn delete_namespace(
        &self,
        req: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("namespace_id", r.namespace_id.as_ref(), Kind::Namespace, &caller)?;
        let pre = precondition(r.precondition.as_ref())?;
        let cascade = if r.require_empty { vec![] } else { CONTENTS.to_vec() };
        let res = self
            .one(CatalogRequest::Delete {
                tenant: caller.tenant.clone(),
                kind: Kind::Namespace,
                id,
                pre,
                cascade,
                idem: None,
            })
            .await?;
        Ok(respond(&caller, DeleteNamespaceResponse { meta: Some(meta(&res)) }))
    }
}
