//! `TableService`, `ViewService` and `SnapshotService`.

use tessera_core::catalog::{CatalogRequest, Kind, ListQuery, Resource};
use tessera_proto::ai::floedb::metacat::catalog::snapshot_service_server::SnapshotService;
use tessera_proto::ai::floedb::metacat::catalog::table_service_server::TableService;
use tessera_proto::ai::floedb::metacat::catalog::view_service_server::ViewService;
use tessera_proto::ai::floedb::metacat::catalog::*;
use tessera_proto::ai::floedb::metacat::common::snapshot_ref::Which;
use tonic::{Request, Response, Status};

use super::principal::Caller;
use super::*;

pub(super) fn table_msg(r: &Resource, catalog: &str) -> Result<Table, Status> {
    let mut t: Table = decode(r)?;
    t.resource_id = Some(resource_id(r));
    t.display_name = r.name.clone();
    t.namespace_id = Some(id_of(&r.tenant, Kind::Namespace, &r.parent));
    t.catalog_id = Some(id_of(&r.tenant, Kind::Catalog, catalog));
    t.created_at = Some(ts(r.created_ms));
    Ok(t)
}

pub(super) fn view_msg(r: &Resource, catalog: &str) -> Result<View, Status> {
    let mut v: View = decode(r)?;
    v.resource_id = Some(resource_id(r));
    v.display_name = r.name.clone();
    v.namespace_id = Some(id_of(&r.tenant, Kind::Namespace, &r.parent));
    v.catalog_id = Some(id_of(&r.tenant, Kind::Catalog, catalog));
    v.created_at = Some(ts(r.created_ms));
    Ok(v)
}

fn snapshot_msg(r: &Resource) -> Result<Snapshot, Status> {
    let mut s: Snapshot = decode(r)?;
    s.table_id = Some(id_of(&r.tenant, Kind::Table, &r.parent));
    Ok(s)
}

fn check_table_spec(s: &TableSpec) -> Result<(), Status> {
    check_text("spec.description", s.description.as_deref().unwrap_or_default(), 4096)?;
    check_text("spec.schema_json", s.schema_json.as_deref().unwrap_or_default(), 4 << 20)?;
    check_properties(&s.properties)
}

fn check_view_spec(s: &ViewSpec) -> Result<(), Status> {
    check_text("spec.description", s.description.as_deref().unwrap_or_default(), 4096)?;
    check_text("spec.sql", s.sql.as_deref().unwrap_or_default(), 1 << 20)?;
    check_properties(&s.properties)
}

impl Metacat {
    /// The namespace a create names, checked to sit in the catalog it names.
    async fn namespace_in(
        &self,
        caller: &Caller,
        catalog: Option<&mc::ResourceId>,
        namespace: Option<&mc::ResourceId>,
    ) -> Result<(String, String), Status> {
        let ns = rid("spec.namespace_id", namespace, Kind::Namespace, caller)?;
        let ns_res = self.get(caller, Kind::Namespace, ns.clone()).await?;
        if let Some(c) = catalog {
            let c = rid("spec.catalog_id", Some(c), Kind::Catalog, caller)?;
            if c != ns_res.parent {
                return Err(invalid("spec.namespace_id: that namespace is not in spec.catalog_id"));
            }
        }
        Ok((ns_res.parent, ns))
    }

    /// The catalog holding a namespace.
    pub(super) async fn catalog_of(&self, caller: &Caller, namespace: &str) -> Result<String, Status> {
        Ok(self.get(caller, Kind::Namespace, namespace.to_owned()).await?.parent)
    }

    /// The snapshot a `SnapshotRef` names.
    pub(super) async fn snapshot(
        &self,
        caller: &Caller,
        table: &str,
        r: Option<&mc::SnapshotRef>,
    ) -> Result<Resource, Status> {
        let which =
            r.and_then(|r| r.which).ok_or_else(|| invalid("snapshot: snapshot_id, as_of or special is required"))?;
        let tenant = caller.tenant.clone();
        let parent = table.to_owned();
        let req = match which {
            Which::SnapshotId(id) => {
                CatalogRequest::Resolve { tenant, kind: Kind::Snapshot, parent, name: snapshot_name(id) }
            }
            Which::AsOf(t) => CatalogRequest::Latest {
                tenant,
                kind: Kind::Snapshot,
                parent,
                at_most_ms: Some(ms("snapshot.as_of", &t)?),
            },
            Which::Special(s) if s == mc::SpecialSnapshot::SsCurrent as i32 => {
                CatalogRequest::Latest { tenant, kind: Kind::Snapshot, parent, at_most_ms: None }
            }
            Which::Special(s) => return Err(invalid(format!("snapshot.special: {s} is not a valid SpecialSnapshot"))),
        };
        // The table itself must exist, with a clear error if it does not.
        self.get(caller, Kind::Table, table.to_owned()).await?;
        self.one(req).await
    }
}

#[tonic::async_trait]
impl TableService for Metacat {
    async fn list_tables(&self, req: Request<ListTablesRequest>) -> Result<Response<ListTablesResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let ns = rid("namespace_id", req.get_ref().namespace_id.as_ref(), Kind::Namespace, &caller)?;
        let catalog = self.catalog_of(&caller, &ns).await?;
        let (page_size, page_token) = page_of(req.get_ref().page.as_ref())?;
        let q = ListQuery {
            tenant: caller.tenant.clone(),
            kind: Kind::Table,
            scope: format!("tables {ns}"),
            parent: ns,
            prefix: String::new(),
            direct_below: None,
            page_size,
            page_token,
        };
        let (items, page) = self.page(q).await?;
        let tables = items.iter().map(|r| table_msg(r, &catalog)).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListTablesResponse { tables, page: Some(page) }))
    }

    async fn get_table(&self, req: Request<GetTableRequest>) -> Result<Response<GetTableResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let id = rid("table_id", req.get_ref().table_id.as_ref(), Kind::Table, &caller)?;
        let r = self.get(&caller, Kind::Table, id.clone()).await?;
        if let Some(s) = &req.get_ref().snapshot {
            // Table metadata is not versioned per snapshot; the snapshot must exist.
            self.snapshot(&caller, &id, Some(s)).await?;
        }
        let catalog = self.catalog_of(&caller, &r.parent).await?;
        Ok(respond(&caller, GetTableResponse { table: Some(table_msg(&r, &catalog)?) }))
    }

    async fn create_table(&self, req: Request<CreateTableRequest>) -> Result<Response<CreateTableResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let spec = r.spec.clone().ok_or_else(|| invalid("spec: required"))?;
        let name = spec.display_name.clone().unwrap_or_default();
        check_name("spec.display_name", &name)?;
        check_table_spec(&spec)?;
        let (catalog, ns) = self.namespace_in(&caller, spec.catalog_id.as_ref(), spec.namespace_id.as_ref()).await?;
        let idem = idem("CreateTable", r.idempotency.as_ref(), &CreateTableRequest { idempotency: None, ..r.clone() })?;
        let payload = Table {
            description: spec.description,
            schema_json: spec.schema_json.unwrap_or_default(),
            upstream: spec.upstream,
            properties: spec.properties,
            ..Default::default()
        };
        let res = self
            .one(CatalogRequest::Create {
                tenant: caller.tenant.clone(),
                kind: Kind::Table,
                parent: ns,
                name,
                payload: payload.encode_to_vec(),
                time_ms: 0,
                idem,
            })
            .await?;
        Ok(respond(&caller, CreateTableResponse { table: Some(table_msg(&res, &catalog)?), meta: Some(meta(&res)) }))
    }

    async fn update_table(&self, req: Request<UpdateTableRequest>) -> Result<Response<UpdateTableResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("table_id", r.table_id.as_ref(), Kind::Table, &caller)?;
        let spec = r.spec.ok_or_else(|| invalid("spec: required"))?;
        check_table_spec(&spec)?;
        let paths = mask_paths(
            r.update_mask.as_ref(),
            &["display_name", "description", "schema_json", "upstream", "properties"],
        )?;
        let pre = precondition(r.precondition.as_ref())?;
        let res = self
            .update(caller.tenant.clone(), Kind::Table, id, pre, None, |t: &mut Table, name| {
                for p in &paths {
                    match p.as_str() {
                        "display_name" => {
                            let n = spec.display_name.clone().unwrap_or_default();
                            check_name("spec.display_name", &n)?;
                            *name = n;
                        }
                        "description" => t.description.clone_from(&spec.description),
                        "schema_json" => t.schema_json = spec.schema_json.clone().unwrap_or_default(),
                        "upstream" => t.upstream.clone_from(&spec.upstream),
                        _ => t.properties.clone_from(&spec.properties),
                    }
                }
                Ok(())
            })
            .await?;
        let catalog = self.catalog_of(&caller, &res.parent).await?;
        Ok(respond(&caller, UpdateTableResponse { table: Some(table_msg(&res, &catalog)?), meta: Some(meta(&res)) }))
    }

    async fn delete_table(&self, req: Request<DeleteTableRequest>) -> Result<Response<DeleteTableResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("table_id", r.table_id.as_ref(), Kind::Table, &caller)?;
        let pre = precondition(r.precondition.as_ref())?;
        let mut cascade = Vec::new();
        if r.purge_snapshots {
            cascade.push(Kind::Snapshot);
        }
        if r.purge_stats {
            cascade.extend([Kind::TableStats, Kind::ColumnStats, Kind::FileStats]);
        }
        let res = self
            .one(CatalogRequest::Delete {
                tenant: caller.tenant.clone(),
                kind: Kind::Table,
                id,
                pre,
                cascade,
                idem: None,
            })
            .await?;
        Ok(respond(&caller, DeleteTableResponse { meta: Some(meta(&res)) }))
    }
}

#[tonic::async_trait]
impl ViewService for Metacat {
    async fn list_views(&self, req: Request<ListViewsRequest>) -> Result<Response<ListViewsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let ns = rid("namespace_id", req.get_ref().namespace_id.as_ref(), Kind::Namespace, &caller)?;
        let catalog = self.catalog_of(&caller, &ns).await?;
        let (page_size, page_token) = page_of(req.get_ref().page.as_ref())?;
        let q = ListQuery {
            tenant: caller.tenant.clone(),
            kind: Kind::View,
            scope: format!("views {ns}"),
            parent: ns,
            prefix: String::new(),
            direct_below: None,
            page_size,
            page_token,
        };
        let (items, page) = self.page(q).await?;
        let views = items.iter().map(|r| view_msg(r, &catalog)).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListViewsResponse { views, page: Some(page) }))
    }

    async fn get_view(&self, req: Request<GetViewRequest>) -> Result<Response<GetViewResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let id = rid("view_id", req.get_ref().view_id.as_ref(), Kind::View, &caller)?;
        let r = self.get(&caller, Kind::View, id).await?;
        let catalog = self.catalog_of(&caller, &r.parent).await?;
        Ok(respond(&caller, GetViewResponse { view: Some(view_msg(&r, &catalog)?) }))
    }

    async fn create_view(&self, req: Request<CreateViewRequest>) -> Result<Response<CreateViewResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let spec = r.spec.clone().ok_or_else(|| invalid("spec: required"))?;
        let name = spec.display_name.clone().unwrap_or_default();
        check_name("spec.display_name", &name)?;
        check_view_spec(&spec)?;
        let (catalog, ns) = self.namespace_in(&caller, spec.catalog_id.as_ref(), spec.namespace_id.as_ref()).await?;
        let idem = idem("CreateView", r.idempotency.as_ref(), &CreateViewRequest { idempotency: None, ..r.clone() })?;
        let payload = View {
            description: spec.description,
            sql: spec.sql.unwrap_or_default(),
            properties: spec.properties,
            ..Default::default()
        };
        let res = self
            .one(CatalogRequest::Create {
                tenant: caller.tenant.clone(),
                kind: Kind::View,
                parent: ns,
                name,
                payload: payload.encode_to_vec(),
                time_ms: 0,
                idem,
            })
            .await?;
        Ok(respond(&caller, CreateViewResponse { view: Some(view_msg(&res, &catalog)?), meta: Some(meta(&res)) }))
    }

    async fn update_view(&self, req: Request<UpdateViewRequest>) -> Result<Response<UpdateViewResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("view_id", r.view_id.as_ref(), Kind::View, &caller)?;
        let spec = r.spec.ok_or_else(|| invalid("spec: required"))?;
        check_view_spec(&spec)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["display_name", "description", "sql", "properties"])?;
        let pre = precondition(r.precondition.as_ref())?;
        let res = self
            .update(caller.tenant.clone(), Kind::View, id, pre, None, |v: &mut View, name| {
                for p in &paths {
                    match p.as_str() {
                        "display_name" => {
                            let n = spec.display_name.clone().unwrap_or_default();
                            check_name("spec.display_name", &n)?;
                            *name = n;
                        }
                        "description" => v.description.clone_from(&spec.description),
                        "sql" => v.sql = spec.sql.clone().unwrap_or_default(),
                        _ => v.properties.clone_from(&spec.properties),
                    }
                }
                Ok(())
            })
            .await?;
        let catalog = self.catalog_of(&caller, &res.parent).await?;
        Ok(respond(&caller, UpdateViewResponse { view: Some(view_msg(&res, &catalog)?), meta: Some(meta(&res)) }))
    }

    async fn delete_view(&self, req: Request<DeleteViewRequest>) -> Result<Response<DeleteViewResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let id = rid("view_id", r.view_id.as_ref(), Kind::View, &caller)?;
        let pre = precondition(r.precondition.as_ref())?;
        let res = self
            .one(CatalogRequest::Delete {
                tenant: caller.tenant.clone(),
                kind: Kind::View,
                id,
                pre,
                cascade: vec![],
                idem: None,
            })
            .await?;
        Ok(respond(&caller, DeleteViewResponse { meta: Some(meta(&res)) }))
    }
}

#[tonic::async_trait]
impl SnapshotService for Metacat {
    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let table = rid("table_id", req.get_ref().table_id.as_ref(), Kind::Table, &caller)?;
        self.get(&caller, Kind::Table, table.clone()).await?;
        let (page_size, page_token) = page_of(req.get_ref().page.as_ref())?;
        let q = ListQuery {
            tenant: caller.tenant.clone(),
            kind: Kind::Snapshot,
            scope: format!("snapshots {table}"),
            parent: table,
            prefix: String::new(),
            direct_below: None,
            page_size,
            page_token,
        };
        let (items, page) = self.page(q).await?;
        let snapshots = items.iter().map(snapshot_msg).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListSnapshotsResponse { snapshots, page: Some(page) }))
    }

    async fn get_snapshot(&self, req: Request<GetSnapshotRequest>) -> Result<Response<GetSnapshotResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let table = rid("table_id", req.get_ref().table_id.as_ref(), Kind::Table, &caller)?;
        let r = self.snapshot(&caller, &table, req.get_ref().snapshot.as_ref()).await?;
        Ok(respond(&caller, GetSnapshotResponse { snapshot: Some(snapshot_msg(&r)?) }))
    }

    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let spec = r.spec.clone().ok_or_else(|| invalid("spec: required"))?;
        let table = rid("spec.table_id", spec.table_id.as_ref(), Kind::Table, &caller)?;
        let upstream = spec.upstream_created_at.ok_or_else(|| invalid("spec.upstream_created_at: required"))?;
        let time_ms = ms("spec.upstream_created_at", &upstream)?;
        if let Some(t) = &spec.ingested_at {
            ms("spec.ingested_at", t)?;
        }
        let idem =
            idem("CreateSnapshot", r.idempotency.as_ref(), &CreateSnapshotRequest { idempotency: None, ..r.clone() })?;
        let payload = Snapshot {
            table_id: None,
            snapshot_id: spec.snapshot_id,
            upstream_created_at: Some(upstream),
            ingested_at: spec.ingested_at,
            parent_snapshot_id: spec.parent_snapshot_id,
        };
        let res = self
            .one(CatalogRequest::Create {
                tenant: caller.tenant.clone(),
                kind: Kind::Snapshot,
                parent: table,
                name: snapshot_name(spec.snapshot_id),
                payload: payload.encode_to_vec(),
                time_ms,
                idem,
            })
            .await?;
        let mut snap = snapshot_msg(&res)?;
        if snap.ingested_at.is_none() {
            snap.ingested_at = Some(ts(res.created_ms));
        }
        Ok(respond(&caller, CreateSnapshotResponse { snapshot: Some(snap), meta: Some(meta(&res)) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let table = rid("table_id", r.table_id.as_ref(), Kind::Table, &caller)?;
        let pre = precondition(r.precondition.as_ref())?;
        let which = mc::SnapshotRef { which: Some(Which::SnapshotId(r.snapshot_id)) };
        let snap = self.snapshot(&caller, &table, Some(&which)).await?;
        let res = self
            .one(CatalogRequest::Delete {
                tenant: caller.tenant.clone(),
                kind: Kind::Snapshot,
                id: snap.id,
                pre,
                // A snapshot's statistics describe only it.
                cascade: vec![Kind::TableStats, Kind::ColumnStats, Kind::FileStats],
                idem: None,
            })
            .await?;
        Ok(respond(&caller, DeleteSnapshotResponse { meta: Some(meta(&res)) }))
    }
}
