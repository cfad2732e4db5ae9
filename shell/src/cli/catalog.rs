//! `tessera catalog`: list and create the common metacat resources by dotted name
//! (`catalog.namespace.sub.table`), as the caller named by `--tenant`.

use anyhow::{Context, bail};
use prost::Message;
use tessera_proto::ai::floedb::metacat::catalog as cat;
use tessera_proto::ai::floedb::metacat::catalog::catalog_service_client::CatalogServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::directory_service_client::DirectoryServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::namespace_service_client::NamespaceServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::table_service_client::TableServiceClient;
use tessera_proto::ai::floedb::metacat::catalog::view_service_client::ViewServiceClient;
use tessera_proto::ai::floedb::metacat::common as mc;
use tessera_proto::ai::floedb::metacat::tenant as ten;
use tessera_proto::ai::floedb::metacat::tenant::tenant_service_client::TenantServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(clap::Subcommand)]
pub enum CatalogCmd {
    /// List tenants (needs --admin)
    Tenants,
    /// Create a tenant and print its id (needs --admin)
    CreateTenant { name: String },
    /// List catalogs, or what a catalog or namespace holds: `ls`, `ls sales`, `ls sales.raw`
    Ls { path: Option<String> },
    /// Create a catalog
    CreateCatalog { name: String },
    /// Create a namespace; its parents must exist: `create-namespace sales.raw.daily`
    CreateNamespace { path: String },
    /// Create a table: `create-table sales.raw.orders --schema '{"type":"struct","fields":[]}'`
    CreateTable {
        path: String,
        #[arg(long)]
        schema: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show a table
    ShowTable { path: String },
    /// Delete a table (with its snapshots and statistics when --purge)
    DropTable {
        path: String,
        #[arg(long)]
        purge: bool,
    },
}

/// Who the CLI calls as. The principal is sent unsigned, as every metacat caller does today.
pub struct As {
    pub tenant: String,
    pub admin: bool,
}

impl As {
    fn principal(&self) -> Vec<u8> {
        mc::PrincipalContext {
            tenant_id: self.tenant.clone(),
            subject: "tessera-cli".into(),
            roles: if self.admin { vec!["platform-admin".into()] } else { vec![] },
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// A request carrying the caller's principal.
fn req<T>(who: &[u8], msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert_bin("x-principal-bin", MetadataValue::from_bytes(who));
    r
}

fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// `catalog.ns.sub.name` as (catalog, namespace path, last name).
fn split(path: &str) -> anyhow::Result<(String, Vec<String>, String)> {
    let mut parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        bail!("{path:?}: empty name segment");
    }
    let last = parts.pop().context("empty path")?;
    if parts.is_empty() {
        bail!("{path:?}: expected catalog.namespace[.more].name");
    }
    let catalog = parts.remove(0);
    Ok((catalog, parts, last))
}

struct Ids {
    who: Vec<u8>,
    dir: DirectoryServiceClient<Channel>,
}

impl Ids {
    async fn catalog(&mut self, name: &str) -> anyhow::Result<mc::ResourceId> {
        let r = mc::NameRef { catalog: name.into(), ..Default::default() };
        let got = self.dir.resolve_catalog(req(&self.who, cat::ResolveCatalogRequest { r#ref: Some(r) })).await;
        got.map_err(grpc)?.into_inner().resource_id.context("no catalog id in the answer")
    }

    async fn namespace(&mut self, catalog: &str, path: &[String]) -> anyhow::Result<mc::ResourceId> {
        let (last, up) = path.split_last().context("a namespace path is required")?;
        let r = mc::NameRef { catalog: catalog.into(), path: up.to_vec(), name: last.clone(), resource_id: None };
        let got = self.dir.resolve_namespace(req(&self.who, cat::ResolveNamespaceRequest { r#ref: Some(r) })).await;
        got.map_err(grpc)?.into_inner().resource_id.context("no namespace id in the answer")
    }

    async fn table(&mut self, path: &str) -> anyhow::Result<mc::ResourceId> {
        let (catalog, ns, name) = split(path)?;
        let r = mc::NameRef { catalog, path: ns, name, resource_id: None };
        let got = self.dir.resolve_table(req(&self.who, cat::ResolveTableRequest { r#ref: Some(r) })).await;
        got.map_err(grpc)?.into_inner().resource_id.context("no table id in the answer")
    }
}

/// Every page of a listing, following tokens.
async fn all_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(Option<mc::PageRequest>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<mc::PageResponse>), tonic::Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, page) = fetch(Some(mc::PageRequest { page_size: 1000, page_token: token })).await.map_err(grpc)?;
        out.extend(items);
        token = page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            return Ok(out);
        }
    }
}

pub async fn run(ch: Channel, who: As, cmd: CatalogCmd) -> anyhow::Result<()> {
    let p = who.principal();
    let mut ids = Ids { who: p.clone(), dir: DirectoryServiceClient::new(ch.clone()) };
    let mut catalogs = CatalogServiceClient::new(ch.clone());
    let mut namespaces = NamespaceServiceClient::new(ch.clone());
    let mut tables = TableServiceClient::new(ch.clone());
    let views = ViewServiceClient::new(ch.clone());
    let mut tenants = TenantServiceClient::new(ch);
    match cmd {
        CatalogCmd::Tenants => {
            let list = all_pages(|page| {
                let mut c = tenants.clone();
                let r = req(&p, ten::ListTenantsRequest { page });
                async move { c.list_tenants(r).await.map(|r| (r.get_ref().tenants.clone(), r.into_inner().page)) }
            })
            .await?;
            for t in list {
                println!("{}\t{}", t.resource_id.map(|r| r.id).unwrap_or_default(), t.display_name);
            }
        }
        CatalogCmd::CreateTenant { name } => {
            let spec = ten::TenantSpec { display_name: Some(name), description: None };
            let r = tenants.create_tenant(req(&p, ten::CreateTenantRequest { spec: Some(spec), idempotency: None }));
            let t = r.await.map_err(grpc)?.into_inner().tenant.context("no tenant in the answer")?;
            println!("{}", t.resource_id.map(|r| r.id).unwrap_or_default());
        }
        CatalogCmd::Ls { path: None } => {
            let list = all_pages(|page| {
                let mut c = catalogs.clone();
                let r = req(&p, cat::ListCatalogsRequest { page });
                async move { c.list_catalogs(r).await.map(|r| (r.get_ref().catalogs.clone(), r.into_inner().page)) }
            })
            .await?;
            for c in list {
                println!("catalog\t{}\t{}", c.display_name, c.resource_id.map(|r| r.id).unwrap_or_default());
            }
        }
        CatalogCmd::Ls { path: Some(path) } => {
            let mut parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            let catalog = parts.remove(0);
            let parent = if parts.is_empty() {
                cat::list_namespaces_request::Parent::CatalogId(ids.catalog(&catalog).await?)
            } else {
                cat::list_namespaces_request::Parent::NamespaceId(ids.namespace(&catalog, &parts).await?)
            };
            let list = all_pages(|page| {
                let mut c = namespaces.clone();
                let r =
                    req(&p, cat::ListNamespacesRequest { parent: Some(parent.clone()), page, ..Default::default() });
                async move { c.list_namespaces(r).await.map(|r| (r.get_ref().namespaces.clone(), r.into_inner().page)) }
            })
            .await?;
            for n in list {
                println!("namespace\t{}", n.display_name);
            }
            if let cat::list_namespaces_request::Parent::NamespaceId(ns) = parent {
                let list = all_pages(|page| {
                    let mut c = tables.clone();
                    let r = req(&p, cat::ListTablesRequest { namespace_id: Some(ns.clone()), page });
                    async move { c.list_tables(r).await.map(|r| (r.get_ref().tables.clone(), r.into_inner().page)) }
                })
                .await?;
                for t in list {
                    println!("table\t{}", t.display_name);
                }
                let list = all_pages(|page| {
                    let mut c = views.clone();
                    let r = req(&p, cat::ListViewsRequest { namespace_id: Some(ns.clone()), page });
                    async move { c.list_views(r).await.map(|r| (r.get_ref().views.clone(), r.into_inner().page)) }
                })
                .await?;
                for v in list {
                    println!("view\t{}", v.display_name);
                }
            }
        }
        CatalogCmd::CreateCatalog { name } => {
            let spec = cat::CatalogSpec { display_name: name, ..Default::default() };
            let r = catalogs.create_catalog(req(&p, cat::CreateCatalogRequest { spec: Some(spec), idempotency: None }));
            let c = r.await.map_err(grpc)?.into_inner().catalog.context("no catalog in the answer")?;
            println!("{}", c.resource_id.map(|r| r.id).unwrap_or_default());
        }
        CatalogCmd::CreateNamespace { path } => {
            let (catalog, up, name) = split(&path)?;
            let spec = cat::NamespaceSpec {
                catalog_id: Some(ids.catalog(&catalog).await?),
                display_name: Some(name),
                path: up,
                ..Default::default()
            };
            let r = namespaces
                .create_namespace(req(&p, cat::CreateNamespaceRequest { spec: Some(spec), idempotency: None }));
            let n = r.await.map_err(grpc)?.into_inner().namespace.context("no namespace in the answer")?;
            println!("{}", n.resource_id.map(|r| r.id).unwrap_or_default());
        }
        CatalogCmd::CreateTable { path, schema, description } => {
            let (catalog, ns, name) = split(&path)?;
            if ns.is_empty() {
                bail!("{path:?}: expected catalog.namespace[.more].table");
            }
            let spec = cat::TableSpec {
                catalog_id: Some(ids.catalog(&catalog).await?),
                namespace_id: Some(ids.namespace(&catalog, &ns).await?),
                display_name: Some(name),
                description,
                schema_json: schema,
                ..Default::default()
            };
            let r = tables.create_table(req(&p, cat::CreateTableRequest { spec: Some(spec), idempotency: None }));
            let t = r.await.map_err(grpc)?.into_inner().table.context("no table in the answer")?;
            println!("{}", t.resource_id.map(|r| r.id).unwrap_or_default());
        }
        CatalogCmd::ShowTable { path } => {
            let id = ids.table(&path).await?;
            let r = tables.get_table(req(&p, cat::GetTableRequest { table_id: Some(id), snapshot: None }));
            let t = r.await.map_err(grpc)?.into_inner().table.context("no table in the answer")?;
            println!("id          {}", t.resource_id.map(|r| r.id).unwrap_or_default());
            println!("name        {}", t.display_name);
            println!("description {}", t.description.unwrap_or_default());
            println!("schema      {}", t.schema_json);
            for (k, v) in t.properties {
                println!("property    {k} = {v}");
            }
        }
        CatalogCmd::DropTable { path, purge } => {
            let id = ids.table(&path).await?;
            let r = cat::DeleteTableRequest {
                table_id: Some(id),
                purge_snapshots: purge,
                purge_stats: purge,
                precondition: None,
            };
            tables.delete_table(req(&p, r)).await.map_err(grpc)?;
            println!("deleted {path}");
        }
    }
    Ok(())
}
