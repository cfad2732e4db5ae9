//! `tessera bench kv`: put and get throughput and latency of the key-value API, against
//! tesserad and, in the same run, against etcd (its `etcdserverpb.KV` Put and linearizable
//! Range), so the figure that matters is the ratio.
//!
//! The etcd client is a dozen lines over tonic's generic client: the two messages it needs
//! are declared here with prost's derive, so no etcd proto enters the build.

use std::time::Duration;

use tessera_proto::proto as kv;
use tessera_proto::proto::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::Channel;

use crate::bench::{Figures, channels, drive};

/// What to run: the same for both systems.
#[derive(Debug, Clone)]
pub struct KvLoad {
    pub keys: u64,
    pub value_size: usize,
    pub clients: usize,
    pub duration: Duration,
    pub consistency: String,
}

fn value(load: &KvLoad, i: u64) -> Vec<u8> {
    let mut v = vec![b'x'; load.value_size.max(1)];
    let stamp = i.to_le_bytes();
    let n = stamp.len().min(v.len());
    v[..n].copy_from_slice(&stamp[..n]);
    v
}

/// Spreads client `t`'s `i`th operation over the key space.
fn key_index(load: &KvLoad, t: usize, i: u64) -> u64 {
    (i.wrapping_mul(7919).wrapping_add(t as u64 * 104_729)) % load.keys.max(1)
}

/// Puts then gets against tesserad (creates the tenant `bench` with RF 3 if missing).
pub async fn tessera(addr: &str, load: &KvLoad) -> anyhow::Result<(Figures, Figures)> {
    let chans = channels(addr, load.clients.clamp(1, 8)).await?;
    let mut c = CoordinatorServiceClient::new(chans[0].clone());
    let t = c.create_tenant(kv::CreateTenantRequest { tenant_id: "bench".into(), replication_factor: 3 }).await;
    if let Err(s) = t
        && s.code() != tonic::Code::AlreadyExists
    {
        anyhow::bail!("creating the bench tenant: {}", s.message());
    }
    let l = load.clone();
    let puts = drive(
        format!("tessera put, {} clients", load.clients),
        &chans,
        load.clients,
        load.duration,
        move |ch, t, i| {
            let l = l.clone();
            async move {
                let req = kv::WriteKeyValueRequest {
                    tenant_id: "bench".into(),
                    key: format!("key-{}", key_index(&l, t, i)),
                    value: value(&l, i),
                    consistency: l.consistency.clone(),
                    idempotency_key: String::new(),
                };
                CoordinatorServiceClient::new(ch).write_key_value(req).await.is_ok()
            }
        },
    )
    .await?;
    let l = load.clone();
    let gets = drive(
        format!("tessera get, {} clients", load.clients),
        &chans,
        load.clients,
        load.duration,
        move |ch, t, i| {
            let l = l.clone();
            async move {
                let req = kv::ReadKeyValueRequest {
                    tenant_id: "bench".into(),
                    key: format!("key-{}", key_index(&l, t, i)),
                    consistency: l.consistency.clone(),
                };
                // A key the put phase never reached is NOT_FOUND: still a completed read.
                match CoordinatorServiceClient::new(ch).read_key_value(req).await {
                    Ok(_) => true,
                    Err(s) => s.code() == tonic::Code::NotFound,
                }
            }
        },
    )
    .await?;
    Ok((puts, gets))
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    /// false: linearizable (goes through the leader's read index), like a quorum read.
    #[prost(bool, tag = "7")]
    serializable: bool,
}

/// Both responses are only counted, not read: an empty message decodes anything.
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

async fn etcd_unary<Req: prost::Message + Default + Send + Sync + 'static>(
    ch: Channel,
    path: &'static str,
    req: Req,
) -> Result<(), tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Ignored>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    g.unary(tonic::Request::new(req), path, codec).await.map(|_| ())
}

/// The same puts then gets against etcd's gRPC endpoint.
pub async fn etcd(addr: &str, load: &KvLoad) -> anyhow::Result<(Figures, Figures)> {
    let chans = channels(addr, load.clients.clamp(1, 8)).await?;
    let l = load.clone();
    let puts =
        drive(format!("etcd put, {} clients", load.clients), &chans, load.clients, load.duration, move |ch, t, i| {
            let l = l.clone();
            async move {
                let req = PutRequest { key: format!("key-{}", key_index(&l, t, i)).into_bytes(), value: value(&l, i) };
                etcd_unary(ch, "/etcdserverpb.KV/Put", req).await.is_ok()
            }
        })
        .await?;
    let l = load.clone();
    let gets =
        drive(format!("etcd get, {} clients", load.clients), &chans, load.clients, load.duration, move |ch, t, i| {
            let l = l.clone();
            async move {
                let req =
                    RangeRequest { key: format!("key-{}", key_index(&l, t, i)).into_bytes(), serializable: false };
                etcd_unary(ch, "/etcdserverpb.KV/Range", req).await.is_ok()
            }
        })
        .await?;
    Ok((puts, gets))
}
