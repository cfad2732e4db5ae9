//! `ai.floedb.metacat.tenant.TenantService` (administrative; see [`super::principal`]).

use tessera_core::catalog::{CatalogRequest, Kind, ListQuery, Resource};
use tessera_proto::ai::floedb::metacat::tenant::tenant_service_server::TenantService;
use tessera_proto::ai::floedb::metacat::tenant::*;
use tonic::{Request, Response, Status};

use super::principal::Caller;
use super::*;

fn tenant_msg(r: &Resource) -> Result<Tenant, Status> {
    let mut t: Tenant = decode(r)?;
    t.resource_id = Some(resource_id(r));
    t.display_name = r.name.clone();
    t.created_at = Some(ts(r.created_ms));
    Ok(t)
}

fn tenant_id(field: &str, r: Option<&mc::ResourceId>) -> Result<String, Status> {
    let r = r.ok_or_else(|| invalid(format!("{field}: required")))?;
    if r.kind != mc::ResourceKind::RkTenant as i32 {
        return Err(invalid(format!("{field}.kind: expected RK_TENANT")));
    }
    let id = if r.id.is_empty() { &r.tenant_id } else { &r.id };
    if id.is_empty() {
        return Err(invalid(format!("{field}.id: required")));
    }
    if !r.tenant_id.is_empty() && r.tenant_id != *id {
        return Err(invalid(format!("{field}: tenant_id and id must name the same tenant")));
    }
    tessera_core::ids::validate_id(&format!("{field}.id"), id).map_err(to_status)?;
    Ok(id.clone())
}

#[tonic::async_trait]
impl TenantService for Metacat {
    async fn list_tenants(&self, req: Request<ListTenantsRequest>) -> Result<Response<ListTenantsResponse>, Status> {
        let caller = Caller::from_metadata(req.metadata())?;
        caller.require_admin()?;
        let (page_size, page_token) = page_of(req.get_ref().page.as_ref())?;
        let q = ListQuery {
            tenant: String::new(),
            kind: Kind::Tenant,
            parent: String::new(),
            prefix: String::new(),
            direct_below: None,
            page_size,
            page_token,
            scope: "tenants".into(),
        };
        let (items, page) = self.page(q).await?;
        let tenants = items.iter().map(tenant_msg).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListTenantsResponse { tenants, page: Some(page) }))
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Result<Response<GetTenantResponse>, Status> {
        let caller = Caller::from_metadata(req.metadata())?;
        let id = tenant_id("tenant_id", req.get_ref().tenant_id.as_ref())?;
        if !caller.admin && caller.tenant != id {
            return Err(Status::permission_denied("tenant_id: callers may read only their own tenant"));
        }
        let r = self.one(CatalogRequest::Get { tenant: String::new(), kind: Kind::Tenant, id }).await?;
        Ok(respond(&caller, GetTenantResponse { tenant: Some(tenant_msg(&r)?) }))
    }

    async fn create_tenant(&self, req: Request<CreateTenantRequest>) -> Result<Response<CreateTenantResponse>, Status> {
        let caller = Caller::from_metadata(req.metadata())?;
        caller.require_admin()?;
        let r = req.into_inner();
        let spec = r.spec.clone().ok_or_else(|| invalid("spec: required"))?;
        let name = spec.display_name.clone().unwrap_or_default();
        check_name("spec.display_name", &name)?;
        check_text("spec.description", spec.description.as_deref().unwrap_or_default(), 4096)?;
        let idem =
            idem("CreateTenant", r.idempotency.as_ref(), &CreateTenantRequest { idempotency: None, ..r.clone() })?;
        let payload = Tenant { description: spec.description, ..Default::default() };
        let res = self
            .one(CatalogRequest::Create {
                tenant: String::new(),
                kind: Kind::Tenant,
                parent: String::new(),
                name,
                payload: payload.encode_to_vec(),
                time_ms: 0,
                idem,
            })
            .await?;
        Ok(respond(&caller, CreateTenantResponse { tenant: Some(tenant_msg(&res)?), meta: Some(meta(&res)) }))
    }

    async fn update_tenant(&self, req: Request<UpdateTenantRequest>) -> Result<Response<UpdateTenantResponse>, Status> {
        let caller = Caller::from_metadata(req.metadata())?;
        caller.require_admin()?;
        let r = req.into_inner();
        let id = tenant_id("tenant_id", r.tenant_id.as_ref())?;
        let spec = r.spec.ok_or_else(|| invalid("spec: required"))?;
        let paths = mask_paths(r.update_mask.as_ref(), &["display_name", "description"])?;
        let pre = precondition(r.precondition.as_ref())?;
        let res = self
            .update(String::new(), Kind::Tenant, id, pre, None, |t: &mut Tenant, name: &mut String| {
                for p in &paths {
                    match p.as_str() {
                        "display_name" => {
                            let n = spec.display_name.clone().unwrap_or_default();
                            check_name("spec.display_name", &n)?;
                            *name = n;
                        }
                        _ => t.description = spec.description.clone(),
                    }
                }
                Ok(())
            })
            .await?;
        Ok(respond(&caller, UpdateTenantResponse { tenant: Some(tenant_msg(&res)?), meta: Some(meta(&res)) }))
    }

    async fn delete_tenant(&self, req: Request<DeleteTenantRequest>) -> Result<Response<DeleteTenantResponse>, Status> {
        let caller = Caller::from_metadata(req.metadata())?;
        caller.require_admin()?;
        let r = req.into_inner();
        let id = tenant_id("tenant_id", r.tenant_id.as_ref())?;
        let pre = precondition(r.precondition.as_ref())?;
        // No cascade: a tenant's catalogs are deleted first, on purpose.
        let res = self
            .one(CatalogRequest::Delete {
                tenant: String::new(),
                kind: Kind::Tenant,
                id,
                pre,
                cascade: vec![],
                idem: None,
            })
            .await?;
        Ok(respond(&caller, DeleteTenantResponse { meta: Some(meta(&res)) }))
    }
}
