//! `tessera bench`: load generators against a running tesserad. Figures, not assertions:
//! compare them against a peer measured in the same run (see README, Benchmarks).

use std::time::{Duration, Instant};

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tessera_proto::statehouse::v1 as sh;
use tessera_proto::statehouse::v1::statehouse_service_client::StatehouseServiceClient;
use tonic::transport::Channel;

/// Throughput and latency of one load level.
#[derive(Debug, Clone)]
pub struct Figures {
    pub label: String,
    pub ops: u64,
    pub errors: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl Figures {
    fn from_samples(label: String, mut lat_us: Vec<u64>, errors: u64, secs: f64) -> Self {
        lat_us.sort_unstable();
        let pct = |p: f64| {
            lat_us.get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1))).copied().unwrap_or(0)
        };
        Self {
            label,
            ops: lat_us.len() as u64,
            errors,
            secs,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
        }
    }

    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    pub fn line(&self) -> String {
        format!(
            "{:<28} {:>10.0} ops/s  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  ({} ops, {} errors, {:.1}s)",
            self.label,
            self.per_sec(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.ops,
            self.errors,
            self.secs
        )
    }
}

async fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Channel::from_shared(addr.to_owned()).map_err(|e| anyhow::anyhow!("bad address {addr:?}: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // Several connections, so one HTTP/2 connection's ordering is not the bottleneck.
        out.push(endpoint.connect().await?);
    }
    Ok(out)
}

fn payload(i: u64) -> Struct {
    let mut s = Struct::default();
    s.fields.insert("i".into(), Value { kind: Some(Kind::NumberValue(i as f64)) });
    s.fields.insert("note".into(), Value { kind: Some(Kind::StringValue("benchmark payload".into())) });
    s
}

async fn one_commit(
    c: &mut StatehouseServiceClient<Channel>,
    agent: &str,
    key: &str,
    i: u64,
) -> Result<(), tonic::Status> {
    let txn_id = c.begin_transaction(sh::BeginTransactionRequest { timeout_ms: None }).await?.into_inner().txn_id;
    c.write(sh::WriteRequest {
        txn_id: txn_id.clone(),
        namespace: "bench".into(),
        agent_id: agent.into(),
        key: key.into(),
        value: Some(payload(i)),
    })
    .await?;
    c.commit(sh::CommitRequest { txn_id }).await?;
    Ok(())
}

type Client = StatehouseServiceClient<Channel>;

/// Runs `clients` concurrent loops of `op` (given a client, the loop's number and the
/// iteration) until `duration` has passed; `op` answers whether the operation succeeded.
async fn drive<F, Fut>(
    label: String,
    chans: &[Channel],
    clients: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<Figures>
where
    F: Fn(Client, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let client = StatehouseServiceClient::new(chans[t % chans.len()].clone());
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if op(client.clone(), t, i).await {
                    lat.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    Ok(Figures::from_samples(label, lat, errors, started.elapsed().as_secs_f64()))
}

/// Commits/s of 1-write transactions (begin, write, commit) with `clients` concurrent clients.
pub async fn state_commits(addr: &str, clients: usize, duration: Duration) -> anyhow::Result<Figures> {
    let chans = channels(addr, clients.clamp(1, 8)).await?;
    drive(format!("commit, {clients} clients"), &chans, clients, duration, |mut c, t, i| async move {
        one_commit(&mut c, &format!("bench-agent-{t}"), &format!("k{}", i % 1000), i).await.is_ok()
    })
    .await
}

/// GetState reads/s over keys written beforehand.
pub async fn state_reads(addr: &str, clients: usize, duration: Duration) -> anyhow::Result<Figures> {
    let chans = channels(addr, clients.clamp(1, 8)).await?;
    let mut c = StatehouseServiceClient::new(chans[0].clone());
    for k in 0..100u64 {
        one_commit(&mut c, "bench-reader", &format!("r{k}"), k).await?;
    }
    drive(format!("get_state, {clients} clients"), &chans, clients, duration, |mut c, t, i| async move {
        let req = sh::GetStateRequest {
            namespace: "bench".into(),
            agent_id: "bench-reader".into(),
            key: format!("r{}", (i + t as u64) % 100),
        };
        matches!(c.get_state(req).await, Ok(r) if r.get_ref().exists)
    })
    .await
}

/// Ingest throughput: one upload of `size` bytes in `chunk` byte chunks from `parallel`
/// senders (data generated in memory, so the client reads no disk).
pub async fn upload(addr: &str, size: u64, chunk: u64, parallel: usize) -> anyhow::Result<Figures> {
    use tessera_proto::ai::pipestream::repository::filesystem::upload as up;
    use tessera_proto::ai::pipestream::repository::filesystem::upload::node_upload_service_client::NodeUploadServiceClient;
    let chans = channels(addr, parallel.clamp(1, 8)).await?;
    let mut c = NodeUploadServiceClient::new(chans[0].clone());
    let init = c
        .initiate_upload(up::InitiateUploadRequest {
            name: "bench.bin".into(),
            expected_size: size as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    let n_chunks = size.div_ceil(chunk);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..parallel.max(1) {
        let mut c = NodeUploadServiceClient::new(chans[t % chans.len()].clone());
        let (next, init) = (next.clone(), init.clone());
        tasks.push(tokio::spawn(async move {
            // One random buffer per sender, stamped with the chunk number: chunks differ, and
            // the load generator spends its CPU sending rather than generating.
            let mut rng = tessera_core::rng::Rng::new(t as u64);
            let mut template = vec![0u8; chunk as usize];
            rng.fill(&mut template);
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= n_chunks {
                    return Ok::<_, tonic::Status>(lat);
                }
                let mut data = template[..(size - n * chunk).min(chunk) as usize].to_vec();
                let stamp = n.to_le_bytes();
                let k = stamp.len().min(data.len());
                data[..k].copy_from_slice(&stamp[..k]);
                let t0 = Instant::now();
                c.upload_chunk(up::UploadChunkRequest {
                    node_id: init.node_id.clone(),
                    upload_id: init.upload_id.clone(),
                    data,
                    chunk_number: n as i64,
                    is_last: n == n_chunks - 1,
                })
                .await?;
                lat.push(t0.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let s = c.get_upload_status(up::GetUploadStatusRequest { node_id: init.node_id.clone() }).await?.into_inner();
    if s.state != up::UploadState::Completed as i32 {
        anyhow::bail!("the benchmark upload did not complete: {s:?}");
    }
    let mut f = Figures::from_samples(
        format!("upload {} MiB, {} KiB chunks, {parallel} senders", size >> 20, chunk >> 10),
        lat,
        0,
        secs,
    );
    // Report bytes, not chunks: ops = MiB moved.
    f.ops = size >> 20;
    Ok(f)
}
