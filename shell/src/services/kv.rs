//! `proto.CoordinatorService` and our `tessera.kv.v1.KvService` on any node: validation and
//! protobuf here; the quorum work is [`crate::kv_coordinator`].

use std::sync::Arc;
use std::time::Duration;

use tessera_core::kv::quorum::Consistency;
use tessera_core::kv::vclock::{context, winner};
use tessera_core::kv::{DEFAULT_RF, MAX_KEY_BYTES, MAX_RF, MAX_VALUE_BYTES, MIN_RF, VClock};
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
            "tenant_id {id:?}: 1..={MAX_TENANT_BYTES} characters of letters, digits, '-', '_' or '.'"
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
        let Some(win) = winner(&versions).filter(|v| v.value.is_some()) else {
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
        let (old, t) = self.kv.set_replication_factor(&r.tenant_id, rf as u32, until).await.map_err(to_status)?;
        // No data moves yet: keys written under the old factor gain or lose replicas only as
        // they are written again or read (read repair). `migration_id` stays empty to say so.
        Ok(Response::new(wire::UpdateReplicationFactorResponse {
            success: true,
            tenant_id: t.id,
            old_replication_factor: old as i32,
            new_replication_factor: t.replication_factor as i32,
            migration_id: String::new(),
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
        let t = self.kv.tenant(&r.tenant_id, until).await.map_err(to_status)?;
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
        _req: Request<wire::AddStorageNodeRequest>,
    ) -> Result<Response<wire::AddStorageNodeResponse>, Status> {
        Err(fixed_membership("AddStorageNode"))
    }

    async fn remove_storage_node(
        &self,
        _req: Request<wire::RemoveStorageNodeRequest>,
    ) -> Result<Response<wire::RemoveStorageNodeResponse>, Status> {
        Err(fixed_membership("RemoveStorageNode"))
    }

    async fn get_migration_status(
        &self,
        req: Request<wire::GetMigrationStatusRequest>,
    ) -> Result<Response<wire::GetMigrationStatusResponse>, Status> {
        let id = req.into_inner().migration_id;
        if id.is_empty() {
            return Err(invalid("migration_id: required"));
        }
        Err(Status::not_found(format!("migration {id:?} not found: this cluster has run no migrations")))
    }

    async fn list_storage_nodes(
        &self,
        _req: Request<wire::ListStorageNodesRequest>,
    ) -> Result<Response<wire::ListStorageNodesResponse>, Status> {
        let mut nodes = Vec::with_capacity(self.cluster.members.len());
        // Every node at once: one that is down costs its timeout once, not once per node.
        let asks: Vec<_> = self
            .cluster
            .members
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
        for ((m, (_, vnodes)), stats) in self.cluster.members.iter().zip(self.cluster.ring.nodes()).zip(answers) {
            let (host, port) = m.addr.rsplit_once(':').unwrap_or((m.addr.as_str(), "0"));
            let (keys, disk) = stats.map(|(k, _, d)| (k as i64, d)).unwrap_or((0, 0.0));
            nodes.push(wire::StorageNodeInfo {
                node_id: m.id.clone(),
                host: host.to_owned(),
                port: port.parse().unwrap_or(0),
                status: if stats.is_some() { "active" } else { "inactive" }.into(),
                virtual_nodes: vnodes as i32,
                keys_count: keys,
                disk_usage_percent: disk,
            });
        }
        Ok(Response::new(wire::ListStorageNodesResponse { success: true, nodes, error_message: String::new() }))
    }
}

fn fixed_membership(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc}: membership is fixed by --initial-cluster in this version; node add and remove arrive with \
         migrations"
    ))
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
