//! `tessera kv`: tenants, keys and nodes of the key-value cluster.

use tessera_proto::proto as kv;
use tessera_proto::proto::coordinator_service_client::CoordinatorServiceClient;
use tessera_proto::tessera::kv::v1 as ext;
use tessera_proto::tessera::kv::v1::kv_service_client::KvServiceClient;
use tonic::transport::Channel;

#[derive(clap::Subcommand)]
pub enum KvCmd {
    /// Create a tenant
    CreateTenant {
        tenant: String,
        /// Replication factor (1..=10; default 3)
        #[arg(long, default_value_t = 3)]
        rf: i32,
    },
    /// Show a tenant
    Tenant { tenant: String },
    /// Change a tenant's replication factor
    SetRf { tenant: String, rf: i32 },
    /// Write a value (UTF-8 text)
    Put {
        tenant: String,
        key: String,
        value: String,
        /// one, quorum or all
        #[arg(long, default_value = "quorum")]
        consistency: String,
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// Read a key (siblings, if any, are listed)
    Get {
        tenant: String,
        key: String,
        #[arg(long, default_value = "quorum")]
        consistency: String,
    },
    /// Delete a key (a tombstone)
    Delete {
        tenant: String,
        key: String,
        #[arg(long, default_value = "quorum")]
        consistency: String,
    },
    /// Every node with its status, virtual nodes, keys and disk usage
    Nodes,
    /// Put a node on the ring (start it first with --initial-cluster-state existing)
    AddNode {
        node_id: String,
        /// host:port the node listens on
        addr: String,
        /// Virtual nodes (1..=4096; 0 = 150)
        #[arg(long, default_value_t = 0)]
        vnodes: i32,
    },
    /// Take a node off the ring; its keys move to the others
    RemoveNode {
        node_id: String,
        /// Even below a tenant's replication factor (and without the node's own hand-over)
        #[arg(long)]
        force: bool,
    },
    /// A layout change's progress
    Migration { migration_id: String },
}

fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn clock(c: &Option<kv::VectorClock>) -> String {
    let entries = c.as_ref().map(|c| c.entries.as_slice()).unwrap_or_default();
    let parts: Vec<String> =
        entries.iter().map(|e| format!("{}:{}", e.coordinator_node_id, e.logical_timestamp)).collect();
    format!("[{}]", parts.join(" "))
}

pub async fn run(ch: Channel, cmd: KvCmd) -> anyhow::Result<()> {
    let mut c = CoordinatorServiceClient::new(ch.clone());
    match cmd {
        KvCmd::CreateTenant { tenant, rf } => {
            let r = c.create_tenant(kv::CreateTenantRequest { tenant_id: tenant, replication_factor: rf });
            let r = r.await.map_err(grpc)?.into_inner();
            println!("{}  rf {}", r.tenant_id, r.replication_factor);
        }
        KvCmd::Tenant { tenant } => {
            let r = c.get_tenant(kv::GetTenantRequest { tenant_id: tenant }).await.map_err(grpc)?.into_inner();
            println!(
                "{}  rf {}  created {}  updated {}",
                r.tenant_id, r.replication_factor, r.created_at, r.updated_at
            );
        }
        KvCmd::SetRf { tenant, rf } => {
            let req = kv::UpdateReplicationFactorRequest { tenant_id: tenant, new_replication_factor: rf };
            let r = c.update_replication_factor(req).await.map_err(grpc)?.into_inner();
            match r.migration_id.as_str() {
                "" => println!("{}  rf {} -> {}", r.tenant_id, r.old_replication_factor, r.new_replication_factor),
                m => println!(
                    "{}  rf {} -> {}  keys moving: migration {m}",
                    r.tenant_id, r.old_replication_factor, r.new_replication_factor
                ),
            }
        }
        KvCmd::Put { tenant, key, value, consistency, idempotency_key } => {
            let req = kv::WriteKeyValueRequest {
                tenant_id: tenant,
                key,
                value: value.into_bytes(),
                consistency,
                idempotency_key,
            };
            let r = c.write_key_value(req).await.map_err(grpc)?.into_inner();
            println!(
                "ok  {} replicas ({})  clock {}  idempotency key {}{}",
                r.replica_count,
                r.consistency,
                clock(&r.vector_clock),
                r.idempotency_key,
                if r.is_duplicate { "  (duplicate)" } else { "" }
            );
        }
        KvCmd::Get { tenant, key, consistency } => {
            let req = kv::ReadKeyValueRequest { tenant_id: tenant, key, consistency };
            let r = c.read_key_value(req).await.map_err(grpc)?.into_inner();
            println!("{}  clock {}", String::from_utf8_lossy(&r.value), clock(&r.vector_clock));
            for s in &r.siblings {
                let v = if s.deleted { "(deleted)".to_owned() } else { String::from_utf8_lossy(&s.value).into_owned() };
                println!("  sibling {v}  clock {}  at {} ms", clock(&s.vector_clock), s.timestamp_ms);
            }
        }
        KvCmd::Delete { tenant, key, consistency } => {
            let req = ext::DeleteKeyRequest { tenant_id: tenant, key, consistency, idempotency_key: String::new() };
            let r = KvServiceClient::new(ch).delete_key(req).await.map_err(grpc)?.into_inner();
            println!("deleted  {} replicas  clock {}", r.replica_count, clock(&r.vector_clock));
        }
        KvCmd::AddNode { node_id, addr, vnodes } => {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("{addr:?}: expected host:port"))?;
            let port = port.parse().map_err(|_| anyhow::anyhow!("{addr:?}: the port is not a number"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let req = kv::AddStorageNodeRequest { node_id, host, port, virtual_nodes: vnodes };
            let r = c.add_storage_node(req).await.map_err(grpc)?.into_inner();
            println!("{}  migration {}\n{}", r.node_id, r.migration_id, r.message);
        }
        KvCmd::RemoveNode { node_id, force } => {
            let req = kv::RemoveStorageNodeRequest { node_id, force };
            let r = c.remove_storage_node(req).await.map_err(grpc)?.into_inner();
            println!("{}  migration {}\n{}", r.node_id, r.migration_id, r.message);
        }
        KvCmd::Migration { migration_id } => {
            let req = kv::GetMigrationStatusRequest { migration_id };
            let r = c.get_migration_status(req).await.map_err(grpc)?.into_inner();
            let p = r.progress.unwrap_or_default();
            println!(
                "{}  {} {}  {}  {}/{} keys ({:.1}%)  started {}  estimated {}",
                r.migration_id,
                r.r#type,
                r.node_id,
                r.status,
                p.keys_migrated,
                p.total_keys,
                p.percentage,
                r.started_at,
                r.estimated_completion
            );
        }
        KvCmd::Nodes => {
            let r = c.list_storage_nodes(kv::ListStorageNodesRequest {}).await.map_err(grpc)?.into_inner();
            for n in r.nodes {
                println!(
                    "{}\t{}:{}\t{}\t{} vnodes\t{} keys\t{:.1}% disk",
                    n.node_id, n.host, n.port, n.status, n.virtual_nodes, n.keys_count, n.disk_usage_percent
                );
            }
        }
    }
    Ok(())
}
