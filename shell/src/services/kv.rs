//! `proto.CoordinatorService` and our `tessera.kv.v1.KvService` on any node: validation and
//! protobuf here; the quorum work is [`crate::kv_coordinator`].

use std::sync::Arc;
use std::time::Duration;

use tessera_core::ids::{MAX_ADDR_LEN, shown};
use tessera_core::kv::quorum::Consistency;
use tessera_core::kv::ring::{DEFAULT_VNODES, MAX_VNODES};
use tessera_core::kv::vclock::{context, live_winner};
use tessera_core::kv::{DEFAULT_RF, MAX_KEY_BYTES, MAX_RF, MAX_VALUE_BYTES, MIN_RF, VClock};
use tessera_core::meta::MetaRequest;
use tessera_core::meta::state::FINISHED_MIGRATIONS_KEPT;
use tessera_proto::proto as wire;
use tessera_proto::proto::coordinator_service_server::CoordinatorService;
use tessera_proto::tessera::kv::v1 as ext;
use tessera_proto::tessera::kv::v1::kv_service_server::KvService;
use tonic::{Request, Response, Status};

use super::errors::to_status;
use crate::cluster::Cluster;
use crate::kv_coordinator::{KvCoordinator, Peers};

/// Longest tenant id, in bytes.
const MAX_TENANT_BYTES: usize = 128;
/// How long a call may take when the client sets no deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Coordinator {
    cluster: Arc<Cluster>,
    kv: Arc<KvCoordinator<Cluster>>,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// The client's `grpc-timeout` as a time on `now_ms`'s clock, or the default.
fn deadline<T>(req: &Request<T>, now_ms: u64) -> u64 {
    let t = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_DEADLINE);
    now_ms.saturating_add(t.as_millis() as u64)
}

fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn check_tenant_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("tenant_id: required"));
    }
    if id.len() > MAX_TENANT_BYTES || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(invalid(format!(
            "tenant_id {}: 1..={MAX_TENANT_BYTES} characters of letters, digits, '-', '_' or '.'",
            shown(id)
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!("key: {} bytes, must be 1..={MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

fn wire_clock(c: &VClock) -> wire::VectorClock {
    wire::VectorClock {
        entries: c
            .0
            .iter()
            .map(|(n, t)| wire::VectorClockEntry { coordinator_node_id: n.clone(), logical_timestamp: *t as i64 })
            .collect(),
    }
}

fn secs(ms: u64) -> i64 {
    (ms / 1000) as i64
}

impl Coordinator {
    pub fn new(cluster: Arc<Cluster>, seed: u64) -> Self {
        Self { kv: Arc::new(KvCoordinator::new(cluster.clone(), seed)), cluster }
    }

    pub fn coordinator(&self) -> Arc<KvCoordinator<Cluster>> {
        self.kv.clone()
    }

    fn now_ms(&self) -> u64 {
        self.cluster.now_ms()
    }
}

#[tonic::async_trait]
impl CoordinatorService for Coordinator {
    async fn write_key_value(
        &self,
        req: Request<wire::WriteKeyValueRequest>,
    ) -> Result<Response<wire::WriteKeyValueResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        check_key(&r.key)?;
        if r.value.is_empty() || r.value.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!("value: {} bytes, must be 1..={MAX_VALUE_BYTES}", r.value.len())));
        }
        let consistency = Consistency::parse(&r.consistency).map_err(to_status)?;
        let w = self
            .kv
            .write(&r.tenant_id, &r.key, Some(r.value), consistency, r.idempotency_key, until)
            .await
            .map_err(to_status)?;
        Ok(Response::new(wire::WriteKeyValueResponse {
            success: true,
            key: r.key,
            idempotency_key: w.idempotency_key,
            vector_clock: Some(wire_clock(&w.clock)),
            replica_count: w.acks as i32,
            consistency: consistency.name().into(),
            is_duplicate: w.duplicate,
            error_message: String::new(),
        }))
    }

    async fn read_key_value(
        &self,
        req: Request<wire::ReadKeyValueRequest>,
    ) -> Result<Response<wire::ReadKeyValueResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        check_key(&r.key)?;
        let consistency = Consistency::parse(&r.consistency).map_err(to_status)?;
        let versions = self.kv.read(&r.tenant_id, &r.key, consistency, until).await.map_err(to_status)?;
        let Some(win) = live_winner(&versions) else {
            return Err(Status::not_found(format!("key {:?} not found in tenant {:?}", r.key, r.tenant_id)));
        };
        let siblings = if versions.len() > 1 {
            versions
                .iter()
                .map(|v| wire::Sibling {
                    value: v.value.clone().unwrap_or_default(),
                    vector_clock: Some(wire_clock(&v.clock)),
                    deleted: v.value.is_none(),
                    timestamp_ms: v.ts_ms as i64,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(wire::ReadKeyValueResponse {
            success: true,
            key: r.key,
            value: win.value.clone().unwrap_or_default(),
            // The context of every sibling: a write made with it supersedes them all.
            vector_clock: Some(wire_clock(&context(&versions))),
            error_message: String::new(),
            siblings,
        }))
    }

    async fn create_tenant(
        &self,
        req: Request<wire::CreateTenantRequest>,
    ) -> Result<Response<wire::CreateTenantResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        let rf = if r.replication_factor == 0 { DEFAULT_RF as i32 } else { r.replication_factor };
        if !(MIN_RF as i32..=MAX_RF as i32).contains(&rf) {
            return Err(invalid(format!(
                "replication_factor: {rf}, must be {MIN_RF}..={MAX_RF} (0 means {DEFAULT_RF})"
            )));
        }
        let t = self.kv.create_tenant(&r.tenant_id, rf as u32, until).await.map_err(to_status)?;
        Ok(Response::new(wire::CreateTenantResponse {
            success: true,
            tenant_id: t.id,
            replication_factor: t.replication_factor as i32,
            created_at: secs(t.created_ms),
            error_message: String::new(),
        }))
    }

    async fn update_replication_factor(
        &self,
        req: Request<wire::UpdateReplicationFactorRequest>,
    ) -> Result<Response<wire::UpdateReplicationFactorResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        let rf = r.new_replication_factor;
        if !(MIN_RF as i32..=MAX_RF as i32).contains(&rf) {
            return Err(invalid(format!("new_replication_factor: {rf}, must be {MIN_RF}..={MAX_RF}")));
        }
        let (old, t, m) = self.kv.set_replication_factor(&r.tenant_id, rf as u32, until).await.map_err(to_status)?;
        // When keys move to their new replica sets, `migration_id` names the migration
        // (`GetMigrationStatus`), as it does the one a factor set back cancels; empty when no
        // key moves (the sets are the same either way).
        Ok(Response::new(wire::UpdateReplicationFactorResponse {
            success: true,
            tenant_id: t.id,
            old_replication_factor: old as i32,
            new_replication_factor: t.replication_factor as i32,
            migration_id: m.map(|m| m.id).unwrap_or_default(),
            updated_at: secs(t.updated_ms),
            error_message: String::new(),
        }))
    }

    async fn get_tenant(
        &self,
        req: Request<wire::GetTenantRequest>,
    ) -> Result<Response<wire::GetTenantResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        let t = self.kv.confirmed_tenant(&r.tenant_id, until).await.map_err(to_status)?;
        Ok(Response::new(wire::GetTenantResponse {
            success: true,
            tenant_id: t.id,
            replication_factor: t.replication_factor as i32,
            created_at: secs(t.created_ms),
            updated_at: secs(t.updated_ms),
            error_message: String::new(),
        }))
    }

    async fn add_storage_node(
        &self,
        req: Request<wire::AddStorageNodeRequest>,
    ) -> Result<Response<wire::AddStorageNodeResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_node_id(&r.node_id)?;
        let addr = node_addr(&r.host, r.port)?;
        let vnodes = match r.virtual_nodes {
            0 => DEFAULT_VNODES,
            v if (1..=MAX_VNODES as i32).contains(&v) => v as u32,
            v => {
                return Err(invalid(format!(
                    "virtual_nodes: {v}, must be 1..={MAX_VNODES} (0 means {DEFAULT_VNODES})"
                )));
            }
        };
        let req = MetaRequest::AddNode { id: r.node_id.clone(), addr: addr.clone(), vnodes };
        let m = self.kv.change_layout(req, until).await.map_err(to_status)?;
        let owners: Vec<&str> = m.progress.keys().map(String::as_str).collect();
        Ok(Response::new(wire::AddStorageNodeResponse {
            success: true,
            node_id: m.node.clone(),
            migration_id: m.id.clone(),
            message: format!(
                "node {} ({addr}, {vnodes} virtual nodes) is on the ring as of layout version {}; {} hand its keys \
                 over. Start it with --initial-cluster-state existing if it is not running; follow the move \
                 with GetMigrationStatus",
                m.node,
                m.version,
                owners.join(", ")
            ),
            estimated_completion: 0,
            error_message: String::new(),
        }))
    }

    async fn remove_storage_node(
        &self,
        req: Request<wire::RemoveStorageNodeRequest>,
    ) -> Result<Response<wire::RemoveStorageNodeResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_node_id(&r.node_id)?;
        let req = MetaRequest::RemoveNode { id: r.node_id.clone(), force: r.force };
        let m = self.kv.change_layout(req, until).await.map_err(to_status)?;
        let message = if m.cancelled {
            format!(
                "the add of node {} ({}) is cancelled: the ring is as it was before it, as of layout version {}",
                m.node,
                m.id,
                m.version + 1
            )
        } else {
            format!(
                "node {} is off the ring as of layout version {}; it keeps serving its keys until they are handed \
                 over; follow the move with GetMigrationStatus",
                m.node, m.version
            )
        };
        Ok(Response::new(wire::RemoveStorageNodeResponse {
            success: true,
            node_id: m.node.clone(),
            migration_id: m.id.clone(),
            message,
            estimated_completion: 0,
            error_message: String::new(),
        }))
    }

    async fn get_migration_status(
        &self,
        req: Request<wire::GetMigrationStatusRequest>,
    ) -> Result<Response<wire::GetMigrationStatusResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let id = req.into_inner().migration_id;
        if id.is_empty() {
            return Err(invalid("migration_id: required"));
        }
        if id.len() > 64 {
            return Err(invalid(format!("migration_id: {} bytes, at most 64", id.len())));
        }
        let Some(m) = self.kv.migration(&id, until).await.map_err(to_status)? else {
            return Err(Status::not_found(format!(
                "migration {id:?} not found (never started, or one of more than {FINISHED_MIGRATIONS_KEPT} \
                 finished since)"
            )));
        };
        Ok(Response::new(wire::GetMigrationStatusResponse {
            success: true,
            migration_id: m.id.clone(),
            r#type: m.kind.name().to_owned(),
            node_id: m.node.clone(),
            status: m.status().to_owned(),
            progress: Some(wire::MigrationProgress {
                keys_migrated: m.keys_migrated() as i64,
                total_keys: m.total_keys() as i64,
                percentage: m.percentage(),
            }),
            started_at: secs(m.started_ms),
            estimated_completion: secs(m.finished_ms.or_else(|| estimate(&m, self.now_ms())).unwrap_or(0)),
            error_message: String::new(),
        }))
    }

    async fn list_storage_nodes(
        &self,
        _req: Request<wire::ListStorageNodesRequest>,
    ) -> Result<Response<wire::ListStorageNodesResponse>, Status> {
        let view = self.cluster.refresh().await;
        let layout = &view.layout;
        // A removed node is listed while it still hands keys over (draining), not after.
        let listed: Vec<_> = layout.data_members().collect();
        // Every node at once: one that is down costs its timeout once, not once per node.
        let asks: Vec<_> = listed
            .iter()
            .map(|m| {
                let (c, id) = (self.cluster.clone(), m.id.clone());
                tokio::spawn(async move { c.stats(&id).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(asks.len());
        for a in asks {
            answers.push(a.await.ok().flatten());
        }
        let mut nodes = Vec::with_capacity(listed.len());
        for (m, stats) in listed.into_iter().zip(answers) {
            let (host, port) = m.addr.rsplit_once(':').unwrap_or((m.addr.as_str(), "0"));
            let (keys, disk) = stats.map(|(k, _, d)| (k as i64, d)).unwrap_or((0, 0.0));
            let status = match (stats.is_some(), m.storage) {
                (false, _) => "inactive",
                (true, true) => "active",
                (true, false) => "draining",
            };
            nodes.push(wire::StorageNodeInfo {
                node_id: m.id.clone(),
                host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port: port.parse().unwrap_or(0),
                status: status.into(),
                virtual_nodes: m.vnodes as i32,
                keys_count: keys,
                disk_usage_percent: disk,
            });
        }
        Ok(Response::new(wire::ListStorageNodesResponse { success: true, nodes, error_message: String::new() }))
    }
}

fn check_node_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("node_id: required"));
    }
    tessera_core::ids::validate_id("node_id", id).map_err(|e| invalid(e.to_string()))
}

/// `host:port` for a node's address (IPv6 hosts in brackets).
fn node_addr(host: &str, port: i32) -> Result<String, Status> {
    if host.is_empty() {
        return Err(invalid("host: required"));
    }
    // An IP address, or a DNS name (RFC 1123 labels): anything else could never be dialled.
    let name = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if host.parse::<std::net::IpAddr>().is_err() && !name {
        return Err(invalid(format!("host: {} is not a host name or IP address", shown(host))));
    }
    if !(1..=65535).contains(&port) {
        return Err(invalid(format!("port: {port}, must be 1..=65535")));
    }
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    // The cluster keeps addresses of up to 255 bytes (`ids::validate_addr`): say so here,
    // about the field the client sent, rather than about an address it never wrote.
    if addr.len() > MAX_ADDR_LEN {
        return Err(invalid(format!(
            "host: {} bytes; with the port, the address must fit in {MAX_ADDR_LEN} bytes",
            host.len()
        )));
    }
    Ok(addr)
}

/// When a running migration should finish at the pace it has kept so far; `None` before
/// any key has moved.
fn estimate(m: &tessera_core::meta::Migration, now_ms: u64) -> Option<u64> {
    let (moved, total) = (m.keys_migrated(), m.total_keys());
    if moved == 0 || total == 0 {
        return None;
    }
    let elapsed = now_ms.saturating_sub(m.started_ms);
    let left = total.saturating_sub(moved);
    Some(now_ms + (elapsed as u128 * left as u128 / moved as u128) as u64)
}

#[tonic::async_trait]
impl KvService for Coordinator {
    async fn delete_key(
        &self,
        req: Request<ext::DeleteKeyRequest>,
    ) -> Result<Response<ext::DeleteKeyResponse>, Status> {
        let until = deadline(&req, self.now_ms());
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        check_key(&r.key)?;
        let consistency = Consistency::parse(&r.consistency).map_err(to_status)?;
        let w = self
            .kv
            .write(&r.tenant_id, &r.key, None, consistency, r.idempotency_key, until)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ext::DeleteKeyResponse {
            success: true,
            key: r.key,
            idempotency_key: w.idempotency_key,
            vector_clock: Some(wire_clock(&w.clock)),
            replica_count: w.acks as i32,
            consistency: consistency.name().into(),
            is_duplicate: w.duplicate,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
