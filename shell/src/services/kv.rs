//! `proto.CoordinatorService` and our `tessera.kv.v1.KvService`: any node coordinates.
//!
//! A write goes to the key's replicas (the ring's first RF distinct nodes). The first replica
//! that answers coordinates it: its stored versions are the write's context, and it returns
//! the new version, which is then applied on the other replicas in parallel. The client is
//! answered once W replicas hold it (W = 1, RF/2+1 or RF); `replica_count` is the number that
//! did by then. A replica that does not answer gets a hint, kept on this node and delivered
//! when it answers again. A read asks every replica, answers from the first R, and repairs
//! every replica whose versions differ from the reconciled set, in the background.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_core::kv::quorum::{Consistency, resolve_read};
use tessera_core::kv::vclock::{context, winner};
use tessera_core::kv::{
    DEFAULT_RF, IdemKey, IdemRecord, KvRequest, KvResponse, MAX_KEY_BYTES, MAX_RF, MAX_VALUE_BYTES, MIN_RF,
    TenantRecord, VClock, Version,
};
use tessera_core::rng::Rng;
use tessera_proto::proto as wire;
use tessera_proto::proto::coordinator_service_server::CoordinatorService;
use tessera_proto::tessera::kv::v1 as ext;
use tessera_proto::tessera::kv::v1::kv_service_server::KvService;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::errors::to_status;
use crate::cluster::{Cluster, PEER_TIMEOUT};

/// Longest idempotency key, in bytes.
const MAX_IDEM_KEY: usize = 256;
/// Longest tenant id, in bytes.
const MAX_TENANT_BYTES: usize = 128;
/// How long a call may take when the client sets no deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// How long a tenant record read from the replicas is reused. A replication factor change
/// reaches a coordinator within this long.
const TENANT_CACHE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Coordinator {
    cluster: Arc<Cluster>,
    tenants: Arc<Mutex<std::collections::HashMap<String, (TenantRecord, Instant)>>>,
    rng: Arc<Mutex<Rng>>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// The time left before the client's `grpc-timeout`, or the default.
fn deadline<T>(req: &Request<T>) -> Instant {
    let t = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_DEADLINE);
    Instant::now() + t
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

/// What a write did.
struct Written {
    clock: VClock,
    acks: usize,
    duplicate: bool,
    idempotency_key: String,
}

impl Coordinator {
    pub fn new(cluster: Arc<Cluster>, seed: u64, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self { cluster, tenants: Arc::default(), rng: Arc::new(Mutex::new(Rng::new(seed))), clock }
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// A fresh idempotency key for a write whose client gave none.
    fn new_idem_key(&self) -> String {
        let mut b = [0u8; 16];
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).fill(&mut b);
        tessera_core::codec::hex(&b)
    }

    /// The tenant's record: from this node, else from any node that has it (and then kept here).
    async fn tenant(&self, id: &str, until: Instant) -> Result<TenantRecord, Status> {
        if let Some((t, at)) = self.tenants.lock().unwrap_or_else(|e| e.into_inner()).get(id)
            && at.elapsed() < TENANT_CACHE
        {
            return Ok(t.clone());
        }
        let t = self.fetch_tenant(id, until).await?;
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), (t.clone(), Instant::now()));
        Ok(t)
    }

    async fn fetch_tenant(&self, id: &str, until: Instant) -> Result<TenantRecord, Status> {
        let req = KvRequest::GetTenant { tenant: id.to_owned() };
        if let Ok(Ok(KvResponse::Tenant(Some(t)))) =
            self.cluster.call(&self.cluster.me, req.clone(), PEER_TIMEOUT).await
        {
            return Ok(t);
        }
        for m in self.cluster.members.iter().filter(|m| m.id != self.cluster.me) {
            let left = until.saturating_duration_since(Instant::now());
            if let Ok(Ok(KvResponse::Tenant(Some(t)))) = self.cluster.call(&m.id, req.clone(), left).await {
                let put = KvRequest::PutTenant { tenant: t.clone(), create: false };
                let _ = self.cluster.call(&self.cluster.me, put, PEER_TIMEOUT).await;
                return Ok(t);
            }
        }
        Err(Status::not_found(format!("tenant {id:?} not found; create it with CreateTenant")))
    }

    /// Stores a tenant record on every member; succeeds once a majority has it.
    async fn put_tenant(&self, t: TenantRecord, create: bool, until: Instant) -> Result<TenantRecord, Status> {
        let (tx, mut rx) = mpsc::channel(self.cluster.members.len());
        for m in &self.cluster.members {
            let (c, tx, id) = (self.cluster.clone(), tx.clone(), m.id.clone());
            let req = KvRequest::PutTenant { tenant: t.clone(), create };
            let left = until.saturating_duration_since(Instant::now());
            tokio::spawn(async move {
                let _ = tx.send(c.call(&id, req, left).await).await;
            });
        }
        drop(tx);
        let n = self.cluster.members.len();
        let need = n / 2 + 1;
        let (mut ok, mut latest) = (0, None);
        while let Some(r) = rx.recv().await {
            match r {
                Ok(Ok(KvResponse::TenantPut { new, .. })) => {
                    ok += 1;
                    latest = Some(new);
                    if ok >= need {
                        break;
                    }
                }
                Ok(Err(e)) => return Err(to_status(e)),
                _ => {}
            }
        }
        match latest {
            Some(t) if ok >= need => {
                self.tenants.lock().unwrap_or_else(|e| e.into_inner()).insert(t.id.clone(), (t.clone(), Instant::now()));
                Ok(t)
            }
            _ => Err(Status::unavailable(format!(
                "{ok} of {n} nodes stored the tenant record; {need} are needed. Retry when more nodes are up"
            ))),
        }
    }

    /// Coordinates a write (`value: None` deletes) and replicates it.
    async fn write(
        &self,
        tenant_id: String,
        key: String,
        value: Option<Vec<u8>>,
        consistency: Consistency,
        client_key: String,
        until: Instant,
    ) -> Result<Written, Status> {
        let tenant = self.tenant(&tenant_id, until).await?;
        if client_key.len() > MAX_IDEM_KEY {
            return Err(invalid(format!("idempotency_key: {} bytes, at most {MAX_IDEM_KEY}", client_key.len())));
        }
        let idempotency_key = if client_key.is_empty() { self.new_idem_key() } else { client_key };
        let mut h = Sha256::new();
        for part in [tenant_id.as_bytes(), key.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        match &value {
            Some(v) => {
                h.update([1]);
                h.update(v);
            }
            None => h.update([0]),
        }
        let idem = IdemKey { key: idempotency_key.clone(), request_hash: h.finalize().to_vec() };
        let replicas: Vec<String> = self
            .cluster
            .ring
            .replicas(&tenant_id, &key, tenant.replication_factor as usize)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let need = consistency.needed(replicas.len());

        // The first replica that answers coordinates, this node first when it is one (it
        // saves a hop, as in Dynamo).
        let mut order: Vec<usize> = (0..replicas.len()).collect();
        if let Some(me) = replicas.iter().position(|r| *r == self.cluster.me) {
            order.retain(|&i| i != me);
            order.insert(0, me);
        }
        let mut coordinated = None;
        let mut unreachable = Vec::new();
        let mut skipped = Vec::new();
        for i in order {
            let r = &replicas[i];
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let req = KvRequest::Coordinate {
                tenant: tenant_id.clone(),
                key: key.clone(),
                value: value.clone(),
                idem: Some(idem.clone()),
            };
            match self.cluster.call(r, req, left).await {
                Ok(Ok(KvResponse::Coordinated { clock, versions, duplicate, idem })) => {
                    coordinated = Some((i, clock, versions, duplicate, idem));
                    break;
                }
                Ok(Ok(_)) => return Err(Status::internal("unexpected answer from a replica")),
                Ok(Err(e)) => return Err(to_status(e)),
                Err(e) => {
                    unreachable.push(e.0);
                    skipped.push(i);
                }
            }
        }
        let Some((coord, clock, versions, duplicate, idem_rec)) = coordinated else {
            return Err(Status::unavailable(format!(
                "0 of {} replicas answered (needed {need}): {}",
                replicas.len(),
                unreachable.join("; ")
            )));
        };
        let acks = self
            .replicate(&tenant_id, &key, &replicas, coord, &skipped, versions, idem_rec, need, until)
            .await;
        if acks < need {
            return Err(Status::unavailable(format!(
                "quorum not reached: {acks} of {} replicas acknowledged the write (needed {need} for {}); \
                 it may still reach the others",
                replicas.len(),
                consistency.name()
            )));
        }
        Ok(Written { clock, acks, duplicate, idempotency_key })
    }

    /// Applies `versions` on every replica but the coordinating one (which has them), and
    /// returns once `need` replicas in all hold them or none can answer in time. Replicas
    /// that do not answer get a hint; the rest finish in the background.
    #[allow(clippy::too_many_arguments)]
    async fn replicate(
        &self,
        tenant: &str,
        key: &str,
        replicas: &[String],
        coord: usize,
        skipped: &[usize],
        versions: Vec<Version>,
        idem: Option<IdemRecord>,
        need: usize,
        until: Instant,
    ) -> usize {
        let mut acks = 1;
        if acks >= need && replicas.len() == 1 {
            return acks;
        }
        let (tx, mut rx) = mpsc::channel(replicas.len());
        for (i, r) in replicas.iter().enumerate() {
            if i == coord {
                continue;
            }
            let (c, tx, node) = (self.cluster.clone(), tx.clone(), r.clone());
            let req = KvRequest::Apply {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                versions: versions.clone(),
                idem: idem.clone(),
            };
            let left =
                if skipped.contains(&i) { Duration::ZERO } else { until.saturating_duration_since(Instant::now()) };
            let hint = KvRequest::Hint {
                target: node.clone(),
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                versions: versions.clone(),
            };
            tokio::spawn(async move {
                let ok = !left.is_zero()
                    && matches!(c.call(&node, req, left.max(Duration::from_millis(1))).await, Ok(Ok(_)));
                if !ok {
                    // Kept here until the node answers again; if this node cannot keep it
                    // either, reads repair the replica later.
                    if let Ok(Err(e)) = c.call(&c.me.clone(), hint, PEER_TIMEOUT).await {
                        tracing::warn!(%node, error = %e, "could not keep a hint");
                    }
                }
                let _ = tx.send(ok).await;
            });
        }
        drop(tx);
        while acks < need {
            match rx.recv().await {
                Some(true) => acks += 1,
                Some(false) => {}
                None => break,
            }
        }
        acks
    }

    /// Reads a key: the reconciled versions from R replicas, repairing stale ones.
    async fn read(
        &self,
        tenant_id: &str,
        key: &str,
        consistency: Consistency,
        until: Instant,
    ) -> Result<Vec<Version>, Status> {
        let tenant = self.tenant(tenant_id, until).await?;
        let replicas: Vec<String> = self
            .cluster
            .ring
            .replicas(tenant_id, key, tenant.replication_factor as usize)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let need = consistency.needed(replicas.len());
        // Ask R replicas (this node first when it is one) and another only for each that
        // fails, as Cassandra does: a quorum read costs R calls, not RF.
        let mut order: Vec<String> = replicas.clone();
        if let Some(me) = order.iter().position(|r| *r == self.cluster.me) {
            let mine = order.remove(me);
            order.insert(0, mine);
        }
        let mut queue = order.into_iter();
        let (tx, mut rx) = mpsc::channel(replicas.len());
        let ask = |node: String| {
            let (c, tx) = (self.cluster.clone(), tx.clone());
            let req = KvRequest::Read { tenant: tenant_id.to_owned(), key: key.to_owned() };
            let left = until.saturating_duration_since(Instant::now());
            tokio::spawn(async move {
                let out = match c.call(&node, req, left).await {
                    Ok(Ok(KvResponse::Versions(v))) => Some(v),
                    _ => None,
                };
                let _ = tx.send((node, out)).await;
            });
        };
        for node in queue.by_ref().take(need) {
            ask(node);
        }
        let mut replies: Vec<(String, Vec<Version>)> = Vec::new();
        let mut failed = 0;
        let mut in_flight = need;
        while replies.len() < need && in_flight > 0 {
            match rx.recv().await {
                Some((node, Some(v))) => {
                    in_flight -= 1;
                    replies.push((node, v));
                }
                Some((_, None)) => {
                    in_flight -= 1;
                    failed += 1;
                    if let Some(next) = queue.next() {
                        ask(next);
                        in_flight += 1;
                    }
                }
                None => break,
            }
        }
        drop(tx);
        if replies.len() < need {
            return Err(Status::unavailable(format!(
                "{} of {} replicas answered the read (needed {need} for {}; {failed} failed)",
                replies.len(),
                replicas.len(),
                consistency.name()
            )));
        }
        let outcome = resolve_read(&replies);
        // Read repair, off the client's path: bring every replica that answered up to the
        // reconciled set.
        let (c, tenant_id, key) = (self.cluster.clone(), tenant_id.to_owned(), key.to_owned());
        tokio::spawn(async move {
            while let Some((node, out)) = rx.recv().await {
                if let Some(v) = out {
                    replies.push((node, v));
                }
            }
            let full = resolve_read(&replies);
            for node in full.stale {
                let req = KvRequest::Apply {
                    tenant: tenant_id.clone(),
                    key: key.clone(),
                    versions: full.versions.clone(),
                    idem: None,
                };
                if let Ok(Ok(_)) = c.call(&node, req, PEER_TIMEOUT).await {
                    tracing::debug!(%node, key = %key, "read repair");
                }
            }
        });
        Ok(outcome.versions)
    }
}

#[tonic::async_trait]
impl CoordinatorService for Coordinator {
    async fn write_key_value(
        &self,
        req: Request<wire::WriteKeyValueRequest>,
    ) -> Result<Response<wire::WriteKeyValueResponse>, Status> {
        let until = deadline(&req);
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        check_key(&r.key)?;
        if r.value.is_empty() || r.value.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!("value: {} bytes, must be 1..={MAX_VALUE_BYTES}", r.value.len())));
        }
        let consistency = Consistency::parse(&r.consistency).map_err(to_status)?;
        let w = self.write(r.tenant_id, r.key.clone(), Some(r.value), consistency, r.idempotency_key, until).await?;
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
        let until = deadline(&req);
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        check_key(&r.key)?;
        let consistency = Consistency::parse(&r.consistency).map_err(to_status)?;
        let versions = self.read(&r.tenant_id, &r.key, consistency, until).await?;
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
        let until = deadline(&req);
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        let rf = if r.replication_factor == 0 { DEFAULT_RF as i32 } else { r.replication_factor };
        if !(MIN_RF as i32..=MAX_RF as i32).contains(&rf) {
            return Err(invalid(format!(
                "replication_factor: {rf}, must be {MIN_RF}..={MAX_RF} (0 means {DEFAULT_RF})"
            )));
        }
        let now = self.now_ms();
        let t =
            TenantRecord { id: r.tenant_id.clone(), replication_factor: rf as u32, created_ms: now, updated_ms: now };
        let t = self.put_tenant(t, true, until).await?;
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
        let until = deadline(&req);
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        let rf = r.new_replication_factor;
        if !(MIN_RF as i32..=MAX_RF as i32).contains(&rf) {
            return Err(invalid(format!("new_replication_factor: {rf}, must be {MIN_RF}..={MAX_RF}")));
        }
        let old = self.tenant(&r.tenant_id, until).await?;
        let now = self.now_ms().max(old.updated_ms + 1);
        let t = TenantRecord { replication_factor: rf as u32, updated_ms: now, ..old.clone() };
        let t = self.put_tenant(t, false, until).await?;
        // No data moves yet: keys written under the old factor gain or lose replicas only as
        // they are written again or read (read repair). `migration_id` stays empty to say so.
        Ok(Response::new(wire::UpdateReplicationFactorResponse {
            success: true,
            tenant_id: t.id,
            old_replication_factor: old.replication_factor as i32,
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
        let until = deadline(&req);
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        let t = self.tenant(&r.tenant_id, until).await?;
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
        for (m, (_, vnodes)) in self.cluster.members.iter().zip(self.cluster.ring.nodes()) {
            let stats = self.cluster.stats(&m.id).await;
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
        let until = deadline(&req);
        let r = req.into_inner();
        check_tenant_id(&r.tenant_id)?;
        check_key(&r.key)?;
        let consistency = Consistency::parse(&r.consistency).map_err(to_status)?;
        let w = self.write(r.tenant_id, r.key.clone(), None, consistency, r.idempotency_key, until).await?;
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
