//! `tessera bench kv`: put and get throughput and latency of the key-value API, against
//! tesserad and, in the same run, against etcd (its `etcdserverpb.KV` Put and linearizable
//! Range), so the figure that matters is the ratio. The two take turns (see [`compare`]).
//!
//! Both are driven through the same lean gRPC client ([`UnaryClient`]), so the load
//! generator takes as little as it can from the servers it shares the machine with. The two
//! etcd messages it needs are declared here with prost's derive, so no etcd proto enters
//! the build.

use std::time::Duration;

use tessera_proto::proto as kv;
use tessera_proto::proto::coordinator_service_client::CoordinatorServiceClient;

use crate::bench::{Figures, Samples, drive_samples, processes_cpu_us};
use crate::grpc_unary::UnaryClient;

/// Connections per system: several, so one HTTP/2 connection's ordering is not the
/// bottleneck.
fn connections(load: &KvLoad) -> usize {
    load.clients.clamp(1, 8)
}

async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<UnaryClient>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            UnaryClient::connect(addr).await.map_err(|s| anyhow::anyhow!("connecting to {addr}: {}", s.message()))?,
        );
    }
    Ok(out)
}

/// What to run: the same for both systems.
#[derive(Debug, Clone)]
pub struct KvLoad {
    pub keys: u64,
    pub value_size: usize,
    pub clients: usize,
    pub duration: Duration,
    pub consistency: String,
    /// Puts carry an idempotency key of the client's own (unique per put), as retrying
    /// clients send; without, the server generates one.
    pub client_keys: bool,
}

fn value(load: &KvLoad, i: u64) -> Vec<u8> {
    let mut v = vec![b'x'; load.value_size.max(1)];
    let stamp = i.to_le_bytes();
    let n = stamp.len().min(v.len());
    v[..n].copy_from_slice(&stamp[..n]);
    v
}

/// The load's write of `value` under `key` (the probe's too, so it fails as the load would).
fn put_request(load: &KvLoad, key: String, value: Vec<u8>) -> kv::WriteKeyValueRequest {
    kv::WriteKeyValueRequest {
        tenant_id: "bench".into(),
        key,
        value,
        consistency: load.consistency.clone(),
        idempotency_key: String::new(),
    }
}

/// Spreads client `t`'s `i`th operation over the key space.
fn key_index(load: &KvLoad, t: usize, i: u64) -> u64 {
    (i.wrapping_mul(7919).wrapping_add(t as u64 * 104_729)) % load.keys.max(1)
}

/// Which phase of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Put,
    Get,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Put => "put",
            Phase::Get => "get",
        }
    }
}

/// tesserad's side: its connections, spread evenly over `nodes` (each client keeps one
/// connection, so one node), and the tenant `bench` (RF 3) created if missing.
pub async fn tessera_side(nodes: &[&str], load: &KvLoad) -> anyhow::Result<Vec<UnaryClient>> {
    let per_node = connections(load).div_ceil(nodes.len().max(1));
    let mut chans = Vec::new();
    for addr in nodes {
        chans.extend(connect(addr, per_node).await?);
    }
    // Client `t` takes connection `t % len`: interleave the nodes so clients alternate.
    let chans: Vec<UnaryClient> =
        (0..per_node).flat_map(|i| (0..nodes.len()).map(move |n| n * per_node + i)).map(|i| chans[i].clone()).collect();
    let first = nodes.first().ok_or_else(|| anyhow::anyhow!("no tesserad node to bench"))?;
    let mut c = CoordinatorServiceClient::connect(first.to_string()).await?;
    let t = c.create_tenant(kv::CreateTenantRequest { tenant_id: "bench".into(), replication_factor: 3 }).await;
    if let Err(s) = t
        && s.code() != tonic::Code::AlreadyExists
    {
        anyhow::bail!("creating the bench tenant: {}", s.message());
    }
    // One write first, so that a load every operation of which would fail (a bad
    // --consistency, a cluster without quorum) says why instead of counting errors.
    let probe = put_request(load, "bench-probe".into(), value(load, 0));
    if let Err(s) = c.write_key_value(probe).await {
        anyhow::bail!("the bench's first write failed ({:?}): {}", s.code(), s.message());
    }
    Ok(chans)
}

/// One run of `phase` against tesserad for `duration`.
pub async fn tessera(
    chans: &[UnaryClient],
    load: &KvLoad,
    phase: Phase,
    duration: Duration,
) -> anyhow::Result<Samples> {
    let l = load.clone();
    // Keys of this run only: a later round reusing one would be a cheap replay.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    drive_samples(chans, load.clients, duration, move |c, t, i| {
        let l = l.clone();
        async move {
            let key = format!("key-{}", key_index(&l, t, i));
            match phase {
                Phase::Put => {
                    let mut req = put_request(&l, key, value(&l, i));
                    if l.client_keys {
                        req.idempotency_key = format!("bench-{run}-{t}-{i}");
                    }
                    c.call::<_, Ignored>("/proto.CoordinatorService/WriteKeyValue", &req).await.is_ok()
                }
                Phase::Get => {
                    let req =
                        kv::ReadKeyValueRequest { tenant_id: "bench".into(), key, consistency: l.consistency.clone() };
                    // A key the put phase never reached is NOT_FOUND: still a completed read.
                    match c.call::<_, Ignored>("/proto.CoordinatorService/ReadKeyValue", &req).await {
                        Ok(_) => true,
                        Err(s) => s.code() == tonic::Code::NotFound,
                    }
                }
            }
        }
    })
    .await
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

/// Answers are only counted, not read (of either system): an empty message decodes anything.
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

/// etcd's side: its connections.
pub async fn etcd_side(addr: &str, load: &KvLoad) -> anyhow::Result<Vec<UnaryClient>> {
    connect(addr, connections(load)).await
}

/// One run of `phase` against etcd for `duration`: the same keys and values.
pub async fn etcd(chans: &[UnaryClient], load: &KvLoad, phase: Phase, duration: Duration) -> anyhow::Result<Samples> {
    let l = load.clone();
    drive_samples(chans, load.clients, duration, move |c, t, i| {
        let l = l.clone();
        async move {
            let key = format!("key-{}", key_index(&l, t, i)).into_bytes();
            match phase {
                Phase::Put => {
                    let req = PutRequest { key, value: value(&l, i) };
                    c.call::<_, Ignored>("/etcdserverpb.KV/Put", &req).await.is_ok()
                }
                Phase::Get => {
                    let req = RangeRequest { key, serializable: false };
                    c.call::<_, Ignored>("/etcdserverpb.KV/Range", &req).await.is_ok()
                }
            }
        }
    })
    .await
}

/// The server processes of each system, when known: each turn then also measures what they
/// spent per operation ([`processes_cpu_us`]).
#[derive(Debug, Clone, Default)]
pub struct ServerPids {
    pub tessera: Vec<u32>,
    pub etcd: Vec<u32>,
}

/// What `pids` spent in CPU while `turn` ran, added to `total` (which stays `None` once a
/// reading failed, so a partial sum is never shown).
async fn measured<T>(pids: &[u32], total: &mut Option<u64>, turn: impl std::future::Future<Output = T>) -> T {
    let before = processes_cpu_us(pids);
    let out = turn.await;
    let spent = before.zip(processes_cpu_us(pids)).map(|(b, a)| a.saturating_sub(b));
    *total = total.zip(spent).map(|(t, s)| t + s);
    out
}

/// Server CPU per operation of a phase, from the turns' sum.
fn per_op(total: Option<u64>, f: &Figures) -> Option<f64> {
    total.map(|us| us as f64 / (f.ops + f.errors).max(1) as f64)
}

/// Figures of each phase for tesserad and, when given, etcd. Each phase runs in `rounds`
/// turns that alternate between the two systems (tessera, etcd, tessera, ...), so a shared
/// machine that speeds up or slows down during the run weighs on both alike; each system
/// gets `load.duration` per phase in all. Puts come first: the gets read the keys they wrote.
pub async fn compare(
    tessera_nodes: &[&str],
    etcd_addr: Option<&str>,
    load: &KvLoad,
    rounds: u32,
    servers: &ServerPids,
) -> anyhow::Result<Vec<(Phase, Figures, Option<Figures>)>> {
    let t = tessera_side(tessera_nodes, load).await?;
    let e = match etcd_addr {
        Some(a) => Some(etcd_side(a, load).await?),
        None => None,
    };
    let rounds = rounds.max(1);
    let turn = load.duration / rounds;
    let start = |pids: &[u32]| (!pids.is_empty()).then_some(0u64);
    let mut out = Vec::new();
    for phase in [Phase::Put, Phase::Get] {
        let (mut ts, mut es) = (Samples::default(), Samples::default());
        let (mut t_cpu, mut e_cpu) = (start(&servers.tessera), start(&servers.etcd));
        for _ in 0..rounds {
            ts.add(measured(&servers.tessera, &mut t_cpu, tessera(&t, load, phase, turn)).await?);
            if let Some(e) = &e {
                es.add(measured(&servers.etcd, &mut e_cpu, etcd(e, load, phase, turn)).await?);
            }
        }
        let name = phase.name();
        let mut tf = ts.figures(format!("tessera {name}, {} clients", load.clients));
        tf.server_cpu_us_per_op = per_op(t_cpu, &tf);
        let ef = e.is_some().then(|| {
            let mut f = es.figures(format!("etcd {name}, {} clients", load.clients));
            f.server_cpu_us_per_op = per_op(e_cpu, &f);
            f
        });
        out.push((phase, tf, ef));
    }
    Ok(out)
}
