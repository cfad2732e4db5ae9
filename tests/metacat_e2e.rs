//! The metacat catalog end to end against a real tesserad, through clients generated from the
//! contract protos: a tenant, catalog, namespace tree, tables, views and snapshots; replays,
//! precondition conflicts, field masks, paging under concurrent inserts, cross-tenant access,
//! malformed ids and principals; then kill -9 and restart: nothing acknowledged is lost.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;

use prost::Message;
use tessera_proto::ai::floedb::metacat::catalog as cat;
use tessera_proto::ai::floedb::metacat::catalog::catalog_service_client::CatalogServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::directory_service_client::DirectoryServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::namespace_service_client::NamespaceServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::snapshot_service_client::SnapshotServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::table_service_client::TableServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::table_statistics_service_client::TableStatisticsServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::view_service_client::ViewServiceClient;
use tessera_proto::ai::floedb::metacat::common as mc;
use tessera_proto::ai::floedb::metacat::statistics as capture;
use tessera_proto::ai::floedb::metacat::statistics::stats_capture_client::StatsCaptureClient;
use tessera_proto::ai::floedb::metacat::tenant as ten;
use tessera_proto::ai::floedb::metacat::tenant::tenant_service_client::TenantServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

fn principal(tenant: &str, admin: bool) -> Auth {
    let p = mc::PrincipalContext {
        tenant_id: tenant.into(),
        subject: "tester".into(),
        roles: if admin { vec!["platform-admin".into()] } else { vec![] },
        ..Default::default()
    };
    let bytes = p.encode_to_vec();
    Box::new(move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert_bin("x-principal-bin", MetadataValue::from_bytes(&bytes));
        r.metadata_mut().insert("x-correlation-id", MetadataValue::from_static("corr-42"));
        Ok(r)
    })
}

fn rid(tenant: &str, id: &str, kind: mc::ResourceKind) -> mc::ResourceId {
    mc::ResourceId { tenant_id: tenant.into(), id: id.into(), kind: kind as i32 }
}

fn page(size: i32, token: &str) -> Option<mc::PageRequest> {
    Some(mc::PageRequest { page_size: size, page_token: token.into() })
}

async fn make_tenant(ch: &Channel, name: &str) -> String {
    let mut admin = TenantServiceClient::with_interceptor(ch.clone(), principal("", true));
    let req = ten::CreateTenantRequest {
        spec: Some(ten::TenantSpec { display_name: Some(name.into()), description: None }),
        idempotency: None,
    };
    admin.create_tenant(req).await.unwrap().into_inner().tenant.unwrap().resource_id.unwrap().id
}

struct Clients {
    catalogs: CatalogServiceClient<InterceptedService<Channel, Auth>>,
    namespaces: NamespaceServiceClient<InterceptedService<Channel, Auth>>,
    tables: TableServiceClient<InterceptedService<Channel, Auth>>,
    views: ViewServiceClient<InterceptedService<Channel, Auth>>,
    snapshots: SnapshotServiceClient<InterceptedService<Channel, Auth>>,
}

fn clients(ch: &Channel, tenant: &str) -> Clients {
    Clients {
        catalogs: CatalogServiceClient::with_interceptor(ch.clone(), principal(tenant, false)),
        namespaces: NamespaceServiceClient::with_interceptor(ch.clone(), principal(tenant, false)),
        tables: TableServiceClient::with_interceptor(ch.clone(), principal(tenant, false)),
        views: ViewServiceClient::with_interceptor(ch.clone(), principal(tenant, false)),
        snapshots: SnapshotServiceClient::with_interceptor(ch.clone(), principal(tenant, false)),
    }
}

fn table_spec(catalog: &mc::ResourceId, ns: &mc::ResourceId, name: &str) -> cat::TableSpec {
    cat::TableSpec {
        catalog_id: Some(catalog.clone()),
        namespace_id: Some(ns.clone()),
        display_name: Some(name.into()),
        schema_json: Some(r#"{"type":"struct","fields":[]}"#.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lifecycle_replays_preconditions_paging_isolation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let t = make_tenant(&ch, "acme").await;
    let other = make_tenant(&ch, "globex").await;
    let mut c = clients(&ch, &t);

    // Tenant administration needs the admin role; tenant-scoped calls need a principal.
    let mut plain = TenantServiceClient::with_interceptor(ch.clone(), principal(&t, false));
    let denied = plain.list_tenants(ten::ListTenantsRequest { page: None }).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let own = plain.get_tenant(ten::GetTenantRequest { tenant_id: Some(rid(&t, &t, mc::ResourceKind::RkTenant)) });
    assert_eq!(own.await.unwrap().into_inner().tenant.unwrap().display_name, "acme");
    let mut anon = CatalogServiceClient::new(ch.clone());
    assert_eq!(
        anon.list_catalogs(cat::ListCatalogsRequest { page: None }).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut garbled = tonic::Request::new(cat::ListCatalogsRequest { page: None });
    garbled.metadata_mut().insert_bin("x-principal-bin", MetadataValue::from_bytes(&[0xff, 0xff, 0xff]));
    assert_eq!(anon.list_catalogs(garbled).await.unwrap_err().code(), Code::InvalidArgument);

    // Create with an idempotency key; the replay returns the same ids and meta.
    let create = cat::CreateCatalogRequest {
        spec: Some(cat::CatalogSpec { display_name: "sales".into(), ..Default::default() }),
        idempotency: Some(mc::IdempotencyKey { key: "create-sales".into() }),
    };
    let first = c.catalogs.create_catalog(create.clone()).await.unwrap();
    assert_eq!(first.metadata().get("x-correlation-id").unwrap(), "corr-42");
    let first = first.into_inner();
    let again = c.catalogs.create_catalog(create.clone()).await.unwrap().into_inner();
    assert_eq!(first, again, "a replay returns the stored result");
    let mut changed = create.clone();
    changed.spec.as_mut().unwrap().description = Some("different".into());
    assert_eq!(c.catalogs.create_catalog(changed).await.unwrap_err().code(), Code::Aborted);
    let dup = cat::CreateCatalogRequest { idempotency: None, ..create.clone() };
    assert_eq!(c.catalogs.create_catalog(dup).await.unwrap_err().code(), Code::AlreadyExists);
    let catalog = first.catalog.unwrap().resource_id.unwrap();

    // Namespace tree: raw, raw.daily, raw.daily.eu, curated.
    let mut ns_ids = Vec::new();
    for (path, name) in [(vec![], "raw"), (vec!["raw"], "daily"), (vec!["raw", "daily"], "eu"), (vec![], "curated")] {
        let spec = cat::NamespaceSpec {
            catalog_id: Some(catalog.clone()),
            display_name: Some(name.into()),
            path: path.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let r = c.namespaces.create_namespace(cat::CreateNamespaceRequest { spec: Some(spec), idempotency: None });
        ns_ids.push(r.await.unwrap().into_inner().namespace.unwrap().resource_id.unwrap());
    }
    let orphan = cat::NamespaceSpec {
        catalog_id: Some(catalog.clone()),
        display_name: Some("x".into()),
        path: vec!["nope".into()],
        ..Default::default()
    };
    let e = c.namespaces.create_namespace(cat::CreateNamespaceRequest { spec: Some(orphan), idempotency: None });
    assert_eq!(e.await.unwrap_err().code(), Code::NotFound);
    let list = |parent: cat::list_namespaces_request::Parent, recursive: bool| cat::ListNamespacesRequest {
        parent: Some(parent),
        recursive,
        page: page(100, ""),
        ..Default::default()
    };
    use cat::list_namespaces_request::Parent;
    let top = c.namespaces.list_namespaces(list(Parent::CatalogId(catalog.clone()), false)).await.unwrap().into_inner();
    let names: Vec<String> = top.namespaces.iter().map(|n| n.display_name.clone()).collect();
    assert_eq!(names, ["curated", "raw"]);
    let all = c.namespaces.list_namespaces(list(Parent::CatalogId(catalog.clone()), true)).await.unwrap().into_inner();
    assert_eq!(all.namespaces.len(), 4);
    let under = c.namespaces.list_namespaces(list(Parent::NamespaceId(ns_ids[0].clone()), true)).await.unwrap();
    let under: Vec<(Vec<String>, String)> =
        under.into_inner().namespaces.into_iter().map(|n| (n.parents, n.display_name)).collect();
    assert_eq!(
        under,
        [(vec!["raw".to_string()], "daily".to_string()), (vec!["raw".into(), "daily".into()], "eu".into())]
    );

    // Tables; a view may not take a table's name.
    let ns = ns_ids[0].clone();
    let orders = c
        .tables
        .create_table(cat::CreateTableRequest { spec: Some(table_spec(&catalog, &ns, "orders")), idempotency: None })
        .await
        .unwrap()
        .into_inner();
    let table = orders.table.unwrap();
    assert_eq!(orders.meta.as_ref().unwrap().pointer_version, 1);
    let clash = cat::ViewSpec {
        catalog_id: Some(catalog.clone()),
        namespace_id: Some(ns.clone()),
        display_name: Some("orders".into()),
        sql: Some("select 1".into()),
        ..Default::default()
    };
    let e = c.views.create_view(cat::CreateViewRequest { spec: Some(clash.clone()), idempotency: None }).await;
    assert_eq!(e.unwrap_err().code(), Code::AlreadyExists);
    let view = cat::ViewSpec { display_name: Some("orders_v".into()), ..clash };
    c.views.create_view(cat::CreateViewRequest { spec: Some(view), idempotency: None }).await.unwrap();

    // Field mask: only the description changes; a stale precondition is refused with the
    // current version in the message; unknown paths are refused.
    let table_id = table.resource_id.clone().unwrap();
    let update = |mask: &[&str], version: i64| cat::UpdateTableRequest {
        table_id: Some(table_id.clone()),
        spec: Some(cat::TableSpec {
            description: Some("all orders".into()),
            display_name: Some("renamed".into()),
            ..Default::default()
        }),
        precondition: Some(mc::Precondition { expected_version: version, expected_etag: String::new() }),
        update_mask: Some(prost_types::FieldMask { paths: mask.iter().map(|s| s.to_string()).collect() }),
    };
    let updated = c.tables.update_table(update(&["description"], 1)).await.unwrap().into_inner();
    let t2 = updated.table.unwrap();
    assert_eq!((t2.display_name.as_str(), t2.description.as_deref()), ("orders", Some("all orders")));
    assert_eq!(t2.schema_json, table.schema_json, "fields outside the mask are kept");
    assert_eq!(updated.meta.unwrap().pointer_version, 2);
    let stale = c.tables.update_table(update(&["description"], 1)).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("version 2"), "{}", stale.message());
    assert_eq!(c.tables.update_table(update(&["bogus"], 0)).await.unwrap_err().code(), Code::InvalidArgument);

    // Snapshots: by id, as of a time, current.
    for (id, secs) in [(10i64, 1000i64), (11, 2000), (12, 3000)] {
        let spec = cat::SnapshotSpec {
            table_id: Some(table_id.clone()),
            snapshot_id: id,
            upstream_created_at: Some(prost_types::Timestamp { seconds: secs, nanos: 0 }),
            ..Default::default()
        };
        c.snapshots.create_snapshot(cat::CreateSnapshotRequest { spec: Some(spec), idempotency: None }).await.unwrap();
    }
    let get = |which: mc::snapshot_ref::Which| cat::GetSnapshotRequest {
        table_id: Some(table_id.clone()),
        snapshot: Some(mc::SnapshotRef { which: Some(which) }),
    };
    use mc::snapshot_ref::Which;
    let at = Which::AsOf(prost_types::Timestamp { seconds: 2500, nanos: 0 });
    assert_eq!(c.snapshots.get_snapshot(get(at)).await.unwrap().into_inner().snapshot.unwrap().snapshot_id, 11);
    let cur = Which::Special(mc::SpecialSnapshot::SsCurrent as i32);
    assert_eq!(c.snapshots.get_snapshot(get(cur)).await.unwrap().into_inner().snapshot.unwrap().snapshot_id, 12);
    let early = Which::AsOf(prost_types::Timestamp { seconds: 10, nanos: 0 });
    assert_eq!(c.snapshots.get_snapshot(get(early)).await.unwrap_err().code(), Code::NotFound);
    // A table with snapshots is only deleted with purge_snapshots.
    let del = |purge: bool| cat::DeleteTableRequest {
        table_id: Some(table_id.clone()),
        purge_stats: purge,
        purge_snapshots: purge,
        precondition: None,
    };
    assert_eq!(c.tables.delete_table(del(false)).await.unwrap_err().code(), Code::FailedPrecondition);

    // Paging under concurrent inserts: 120 tables listed 7 at a time, one more arriving per page.
    let bulk = ns_ids[3].clone();
    for i in 0..120 {
        let spec = table_spec(&catalog, &bulk, &format!("t{:03}", i * 2));
        c.tables.create_table(cat::CreateTableRequest { spec: Some(spec), idempotency: None }).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut inserted = 0;
    loop {
        let r = c
            .tables
            .list_tables(cat::ListTablesRequest { namespace_id: Some(bulk.clone()), page: page(7, &token) })
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.tables.into_iter().map(|t| t.display_name));
        if inserted < 40 {
            let spec = table_spec(&catalog, &bulk, &format!("t{:03}", inserted * 6 + 1));
            c.tables.create_table(cat::CreateTableRequest { spec: Some(spec), idempotency: None }).await.unwrap();
            inserted += 1;
        }
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "no repeats, in order");
    let seen: BTreeSet<String> = seen.into_iter().collect();
    assert!((0..120).all(|i| seen.contains(&format!("t{:03}", i * 2))), "nothing that existed was skipped");
    // A token only works for its own query.
    let r = c.tables.list_tables(cat::ListTablesRequest { namespace_id: Some(bulk.clone()), page: page(5, "") });
    let token = r.await.unwrap().into_inner().page.unwrap().next_page_token;
    let misuse = cat::ListTablesRequest { namespace_id: Some(ns.clone()), page: page(5, &token) };
    assert_eq!(c.tables.list_tables(misuse).await.unwrap_err().code(), Code::InvalidArgument);

    // Isolation: another tenant cannot read or guess our ids; malformed ids are refused.
    let mut theirs = clients(&ch, &other);
    let steal = cat::GetTableRequest { table_id: Some(table_id.clone()), snapshot: None };
    assert_eq!(theirs.tables.get_table(steal).await.unwrap_err().code(), Code::PermissionDenied);
    let guess =
        cat::GetTableRequest { table_id: Some(rid(&other, &table_id.id, mc::ResourceKind::RkTable)), snapshot: None };
    assert_eq!(theirs.tables.get_table(guess).await.unwrap_err().code(), Code::NotFound);
    let listed = theirs.catalogs.list_catalogs(cat::ListCatalogsRequest { page: None }).await.unwrap().into_inner();
    assert!(listed.catalogs.is_empty());
    let wrong_kind =
        cat::GetTableRequest { table_id: Some(rid(&t, &table_id.id, mc::ResourceKind::RkView)), snapshot: None };
    let e = c.tables.get_table(wrong_kind).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("table_id.kind"), "{}", e.message());
    let no_tenant =
        cat::GetTableRequest { table_id: Some(rid("", &table_id.id, mc::ResourceKind::RkTable)), snapshot: None };
    assert_eq!(c.tables.get_table(no_tenant).await.unwrap_err().code(), Code::InvalidArgument);

    // Directory: names and ids agree with the CRUD services.
    let mut dir_c = DirectoryServiceClient::with_interceptor(ch.clone(), principal(&t, false));
    let name = |path: &[&str], n: &str| mc::NameRef {
        catalog: "sales".into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        name: n.into(),
        resource_id: None,
    };
    let resolved = dir_c.resolve_table(cat::ResolveTableRequest { r#ref: Some(name(&["raw"], "orders")) }).await;
    assert_eq!(resolved.unwrap().into_inner().resource_id.unwrap(), table_id);
    let looked = dir_c.lookup_table(cat::LookupTableRequest { resource_id: Some(table_id.clone()) }).await.unwrap();
    let looked = looked.into_inner().name.unwrap();
    assert_eq!(
        (looked.catalog.as_str(), looked.path.as_slice(), looked.name.as_str()),
        ("sales", &["raw".to_string()][..], "orders")
    );
    let ns_eu =
        dir_c.resolve_namespace(cat::ResolveNamespaceRequest { r#ref: Some(name(&["raw", "daily"], "eu")) }).await;
    assert_eq!(ns_eu.unwrap().into_inner().resource_id.unwrap(), ns_ids[2]);
    let batch = cat::ResolveFqTablesRequest {
        selector: Some(cat::resolve_fq_tables_request::Selector::List(cat::NameList {
            names: vec![name(&["raw"], "orders"), name(&["raw"], "missing"), name(&["curated"], "t000")],
        })),
        page: page(2, ""),
    };
    let first_page = dir_c.resolve_fq_tables(batch.clone()).await.unwrap().into_inner();
    assert_eq!(first_page.tables.len(), 2);
    assert!(first_page.tables[1].resource_id.is_none(), "unknown names come back without an id");
    let rest = cat::ResolveFqTablesRequest { page: page(2, &first_page.page.unwrap().next_page_token), ..batch };
    let rest = dir_c.resolve_fq_tables(rest).await.unwrap().into_inner();
    assert_eq!(rest.tables.len(), 1);
    assert!(rest.tables[0].resource_id.is_some());
    let prefix = cat::ResolveFqTablesRequest {
        selector: Some(cat::resolve_fq_tables_request::Selector::Prefix(name(&["curated"], "t00"))),
        page: page(100, ""),
    };
    let under = dir_c.resolve_fq_tables(prefix).await.unwrap().into_inner();
    assert_eq!(under.tables.len(), 7, "t000 t001 t002 t004 t006 t007 t008");

    // Non-empty catalog: refused with require_empty.
    let del_cat = |require_empty| cat::DeleteCatalogRequest {
        catalog_id: Some(catalog.clone()),
        require_empty,
        precondition: None,
    };
    assert_eq!(c.catalogs.delete_catalog(del_cat(true)).await.unwrap_err().code(), Code::FailedPrecondition);

    // kill -9 and restart: every acknowledged change is there.
    d.kill9();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let mut c = clients(&ch, &t);
    let got = c.tables.get_table(cat::GetTableRequest { table_id: Some(table_id.clone()), snapshot: None }).await;
    assert_eq!(got.unwrap().into_inner().table.unwrap().description.as_deref(), Some("all orders"));
    let all = c.tables.list_tables(cat::ListTablesRequest { namespace_id: Some(bulk.clone()), page: page(1000, "") });
    assert_eq!(all.await.unwrap().into_inner().tables.len(), 120 + inserted);
    // The idempotency record survived too.
    assert_eq!(c.catalogs.create_catalog(create).await.unwrap().into_inner(), again);
    // Cascading delete with require_empty = false removes the whole tree.
    c.catalogs.delete_catalog(del_cat(false)).await.unwrap();
    let gone = c.tables.get_table(cat::GetTableRequest { table_id: Some(table_id), snapshot: None }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
}

fn column(id: &str, ndv: i64) -> cat::ColumnStats {
    cat::ColumnStats {
        column_id: id.into(),
        column_name: format!("col_{id}"),
        logical_type: "int64".into(),
        value_count: 1000,
        null_count: 3,
        ndv: Some(cat::Ndv { mode: Some(cat::ndv::Mode::Exact(ndv)), sketches: vec![] }),
        min: "1".into(),
        max: "999".into(),
        tdigest: vec![7; 64],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_round_trip_atomic_batches_paging_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let t = make_tenant(&ch, "acme").await;
    let mut c = clients(&ch, &t);
    let mut stats = TableStatisticsServiceClient::with_interceptor(ch.clone(), principal(&t, false));
    let catalog = c
        .catalogs
        .create_catalog(cat::CreateCatalogRequest {
            spec: Some(cat::CatalogSpec { display_name: "sales".into(), ..Default::default() }),
            idempotency: None,
        })
        .await
        .unwrap()
        .into_inner()
        .catalog
        .unwrap()
        .resource_id
        .unwrap();
    let spec = cat::NamespaceSpec {
        catalog_id: Some(catalog.clone()),
        display_name: Some("raw".into()),
        ..Default::default()
    };
    let ns = c
        .namespaces
        .create_namespace(cat::CreateNamespaceRequest { spec: Some(spec), idempotency: None })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap()
        .resource_id
        .unwrap();
    let table = c
        .tables
        .create_table(cat::CreateTableRequest { spec: Some(table_spec(&catalog, &ns, "orders")), idempotency: None })
        .await
        .unwrap()
        .into_inner()
        .table
        .unwrap()
        .resource_id
        .unwrap();
    for (id, at) in [(10i64, 1_000i64), (11, 2_000)] {
        let spec = cat::SnapshotSpec {
            table_id: Some(table.clone()),
            snapshot_id: id,
            upstream_created_at: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
            ..Default::default()
        };
        c.snapshots.create_snapshot(cat::CreateSnapshotRequest { spec: Some(spec), idempotency: None }).await.unwrap();
    }
    let snap = |id: i64| Some(mc::SnapshotRef { which: Some(mc::snapshot_ref::Which::SnapshotId(id)) });
    let current =
        Some(mc::SnapshotRef { which: Some(mc::snapshot_ref::Which::Special(mc::SpecialSnapshot::SsCurrent as i32)) });

    // Table statistics: put with a key, replay, read back by id and through SS_CURRENT.
    let put = cat::PutTableStatsRequest {
        table_id: Some(table.clone()),
        snapshot_id: 11,
        stats: Some(cat::TableStats {
            row_count: 1000,
            data_file_count: 4,
            total_size_bytes: 1 << 20,
            ..Default::default()
        }),
        idempotency: Some(mc::IdempotencyKey { key: "ts-11".into() }),
    };
    let first = stats.put_table_stats(put.clone()).await.unwrap().into_inner();
    assert_eq!(first.stats.as_ref().unwrap().snapshot_id, 11);
    assert_eq!(stats.put_table_stats(put.clone()).await.unwrap().into_inner(), first, "a replay is identical");
    let mut other = put.clone();
    other.stats.as_mut().unwrap().row_count = 5;
    assert_eq!(stats.put_table_stats(other).await.unwrap_err().code(), Code::Aborted);
    let got = stats
        .get_table_stats(cat::GetTableStatsRequest { table_id: Some(table.clone()), snapshot: current, page: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stats.unwrap().row_count, 1000);
    let none = stats.get_table_stats(cat::GetTableStatsRequest {
        table_id: Some(table.clone()),
        snapshot: snap(10),
        page: None,
    });
    assert_eq!(none.await.unwrap_err().code(), Code::NotFound);
    let mut bad = put.clone();
    bad.stats.as_mut().unwrap().row_count = -1;
    bad.idempotency = None;
    assert_eq!(stats.put_table_stats(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let mut unknown = put.clone();
    unknown.snapshot_id = 99;
    unknown.idempotency = None;
    assert_eq!(stats.put_table_stats(unknown).await.unwrap_err().code(), Code::NotFound);

    // Column statistics in a stream of three messages, written as one batch.
    let batch = |cols: Vec<cat::ColumnStats>| cat::PutColumnStatsRequest {
        table_id: Some(table.clone()),
        snapshot_id: 11,
        columns: cols,
        idempotency: None,
    };
    let msgs = vec![
        batch((0..40).map(|i| column(&format!("c{i:03}"), i)).collect()),
        batch((40..80).map(|i| column(&format!("c{i:03}"), i)).collect()),
        batch((80..120).map(|i| column(&format!("c{i:03}"), i)).collect()),
    ];
    let n = stats.put_column_stats(tonic::codegen::tokio_stream::iter(msgs)).await.unwrap().into_inner().upserted;
    assert_eq!(n, 120);
    // A bad entry in the last message refuses the whole stream: nothing of it is written.
    let mut broken = column("c000", 1);
    broken.null_count = -4;
    let msgs = vec![batch(vec![column("c000", 555), column("zzz", 1)]), batch(vec![broken])];
    let e = stats.put_column_stats(tonic::codegen::tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("columns[2].null_count"), "{}", e.message());
    // A stream naming two snapshots is refused.
    let mut elsewhere = batch(vec![column("x", 1)]);
    elsewhere.snapshot_id = 10;
    let e =
        stats.put_column_stats(tonic::codegen::tokio_stream::iter(vec![batch(vec![column("y", 1)]), elsewhere])).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    // Page through: 120 columns in order, none repeated.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = stats
            .list_column_stats(cat::ListColumnStatsRequest {
                table_id: Some(table.clone()),
                snapshot: snap(11),
                page: page(25, &token),
            })
            .await
            .unwrap()
            .into_inner();
        for col in &r.columns {
            assert_eq!(col.snapshot_id, 11);
            assert_eq!(col.table_id.as_ref(), Some(&table));
        }
        seen.extend(r.columns.into_iter().map(|c| (c.column_id, c.ndv)));
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 120);
    assert_eq!(seen[0].0, "c000");
    assert_eq!(seen[0].1.as_ref().unwrap().mode, Some(cat::ndv::Mode::Exact(0)), "the refused stream left c000 alone");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));

    // Per-file statistics with nested column statistics.
    let files = cat::PutFileColumnStatsRequest {
        table_id: Some(table.clone()),
        snapshot_id: 11,
        files: (0..3)
            .map(|i| cat::FileColumnStats {
                file_path: format!("s3://bucket/orders/part-{i}.parquet"),
                row_count: 100,
                size_bytes: 4096,
                columns: vec![column("c000", i)],
                ..Default::default()
            })
            .collect(),
        idempotency: Some(mc::IdempotencyKey { key: "files-11".into() }),
    };
    let n = stats
        .put_file_column_stats(tonic::codegen::tokio_stream::iter(vec![files.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.upserted, 3);
    let n = stats.put_file_column_stats(tonic::codegen::tokio_stream::iter(vec![files])).await.unwrap().into_inner();
    assert_eq!(n.upserted, 3, "a replayed stream answers the stored count");

    // StatsCapture: the contract's messages carry nothing to name a job.
    let mut capture_c = StatsCaptureClient::with_interceptor(ch.clone(), principal(&t, false));
    capture_c.list_jobs(capture::ListJobsRequest {}).await.unwrap();
    assert_eq!(capture_c.analyze(capture::AnalyzeRequest {}).await.unwrap_err().code(), Code::Unimplemented);

    // A crash loses nothing acknowledged.
    d.kill9();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let mut stats = TableStatisticsServiceClient::with_interceptor(ch.clone(), principal(&t, false));
    let mut c = clients(&ch, &t);
    let files = stats
        .list_file_column_stats(cat::ListFileColumnStatsRequest {
            table_id: Some(table.clone()),
            snapshot: snap(11),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .file_columns;
    assert_eq!(files.len(), 3);
    assert_eq!(files[2].columns[0].ndv.as_ref().unwrap().mode, Some(cat::ndv::Mode::Exact(2)));
    let got = stats.get_table_stats(cat::GetTableStatsRequest {
        table_id: Some(table.clone()),
        snapshot: snap(11),
        page: None,
    });
    assert_eq!(got.await.unwrap().into_inner().stats.unwrap().row_count, 1000);
    // Deleting the snapshot takes its statistics with it.
    c.snapshots
        .delete_snapshot(cat::DeleteSnapshotRequest {
            table_id: Some(table.clone()),
            snapshot_id: 11,
            precondition: None,
        })
        .await
        .unwrap();
    let gone = stats.list_column_stats(cat::ListColumnStatsRequest {
        table_id: Some(table.clone()),
        snapshot: snap(11),
        page: None,
    });
    assert_eq!(gone.await.unwrap_err().code(), Code::NotFound);
    // Another tenant cannot read them, even with the right ids.
    let other = make_tenant(&ch, "globex").await;
    let mut theirs = TableStatisticsServiceClient::with_interceptor(ch.clone(), principal(&other, false));
    let e = theirs.get_table_stats(cat::GetTableStatsRequest {
        table_id: Some(table.clone()),
        snapshot: snap(10),
        page: None,
    });
    assert_eq!(e.await.unwrap_err().code(), Code::PermissionDenied);
}
