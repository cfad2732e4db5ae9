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
    /// CPU the load generator itself spent per operation: on a shared machine, what it
    /// takes from the servers it measures.
    pub client_cpu_us_per_op: f64,
    /// CPU the measured system's server processes spent per operation, when the bench was
    /// told their pids (see [`processes_cpu_us`]).
    pub server_cpu_us_per_op: Option<f64>,
}

impl Figures {
    fn from_samples(label: String, mut lat_us: Vec<u64>, errors: u64, secs: f64, cpu_us: u64) -> Self {
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
            client_cpu_us_per_op: cpu_us as f64 / (lat_us.len() as u64 + errors).max(1) as f64,
            server_cpu_us_per_op: None,
        }
    }

    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    pub fn line(&self) -> String {
        let cpu = match self.client_cpu_us_per_op > 0.0 {
            true => format!(", client CPU {:.1} us/op", self.client_cpu_us_per_op),
            false => String::new(),
        };
        let servers = match self.server_cpu_us_per_op {
            Some(us) => format!(", servers CPU {us:.1} us/op"),
            None => String::new(),
        };
        format!(
            "{:<28} {:>10.0} ops/s  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  ({} ops, {} errors, {:.1}s{cpu}{servers})",
            self.label,
            self.per_sec(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.ops,
            self.errors,
            self.secs,
        )
    }
}

pub(crate) async fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
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

/// Latencies and errors of one load, before they are summed up as [`Figures`]: several runs
/// of the same load (rounds) add up into one.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub lat_us: Vec<u64>,
    pub errors: u64,
    pub secs: f64,
    /// This process's CPU time over the run, in microseconds.
    pub cpu_us: u64,
}

impl Samples {
    pub fn add(&mut self, other: Samples) {
        self.lat_us.extend(other.lat_us);
        self.errors += other.errors;
        self.secs += other.secs;
        self.cpu_us += other.cpu_us;
    }

    pub fn figures(self, label: String) -> Figures {
        Figures::from_samples(label, self.lat_us, self.errors, self.secs, self.cpu_us)
    }
}

/// CPU time (user and system) this process has spent so far, in microseconds.
fn process_cpu_us() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// CPU time (user and system) the processes `pids` have spent so far, in microseconds, read
/// from /proc (Linux); `None` if one of them cannot be read (it has exited, or there is no
/// /proc). Sampled around each turn of a comparison, it shows what each system's servers
/// spend per operation on the same machine: the figure throughput follows once the machine
/// is busy.
pub fn processes_cpu_us(pids: &[u32]) -> Option<u64> {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let ticks_per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count fields after
        // its closing one, where field 3 (the state) comes first.
        let after_name = stat.get(stat.rfind(')')? + 1..)?;
        let mut fields = after_name.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        ticks += utime + stime;
    }
    Some(ticks * 1_000_000 / ticks_per_sec)
}

/// [`drive_samples`], summed up as [`Figures`] under `label`.
pub(crate) async fn drive<C, F, Fut>(
    label: String,
    chans: &[C],
    clients: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<Figures>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    Ok(drive_samples(chans, clients, duration, op).await?.figures(label))
}

/// Runs `clients` concurrent loops of `op` (given a connection, the loop's number and the
/// iteration) until `duration` has passed; `op` answers whether the operation succeeded.
pub(crate) async fn drive_samples<C, F, Fut>(
    chans: &[C],
    clients: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<Samples>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let cpu_at_start = process_cpu_us();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let client = chans[t % chans.len()].clone();
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
    let (mut lat_us, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat_us.extend(l);
        errors += e;
    }
    let cpu_us = process_cpu_us().saturating_sub(cpu_at_start);
    Ok(Samples { lat_us, errors, secs: started.elapsed().as_secs_f64(), cpu_us })
}

/// Commits/s of 1-write transactions (begin, write, commit) with `clients` concurrent clients.
pub async fn state_commits(addr: &str, clients: usize, duration: Duration) -> anyhow::Result<Figures> {
    let chans = channels(addr, clients.clamp(1, 8)).await?;
    drive(format!("commit, {clients} clients"), &chans, clients, duration, |ch, t, i| async move {
        one_commit(&mut StatehouseServiceClient::new(ch), &format!("bench-agent-{t}"), &format!("k{}", i % 1000), i)
            .await
            .is_ok()
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
    drive(format!("get_state, {clients} clients"), &chans, clients, duration, |ch, t, i| async move {
        let mut c = StatehouseServiceClient::new(ch);
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
        0,
    );
    // Report bytes, not chunks: ops = MiB moved.
    f.ops = size >> 20;
    Ok(f)
}

/// Point lookups and listings on a catalog of `tables` tables spread over `namespaces`
/// namespaces (loaded first, `clients` creates at a time). Prints, for the same clients and
/// duration: gRPC health checks (the floor cost of one call through this server), GetTable
/// by id, ResolveTable by name, and ListTables pages of the default size walked by token.
pub async fn catalog(
    addr: &str,
    tables: usize,
    namespaces: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Figures>> {
    use prost::Message;
    use tessera_proto::ai::floedb::metacat::catalog as cat;
    use tessera_proto::ai::floedb::metacat::catalog::catalog_service_client::CatalogServiceClient;
    use tessera_proto::ai::floedb::metacat::catalog::directory_service_client::DirectoryServiceClient;
    use tessera_proto::ai::floedb::metacat::catalog::namespace_service_client::NamespaceServiceClient;
    use tessera_proto::ai::floedb::metacat::catalog::table_service_client::TableServiceClient;
    use tessera_proto::ai::floedb::metacat::common as mc;
    use tessera_proto::ai::floedb::metacat::tenant as ten;
    use tessera_proto::ai::floedb::metacat::tenant::tenant_service_client::TenantServiceClient;

    let namespaces = namespaces.max(1);
    let clients = clients.max(1);
    let chans = channels(addr, clients.clamp(1, 8)).await?;
    let principal = |tenant: &str, admin: bool| {
        mc::PrincipalContext {
            tenant_id: tenant.to_owned(),
            subject: "bench".into(),
            roles: if admin { vec!["platform-admin".into()] } else { vec![] },
            ..Default::default()
        }
        .encode_to_vec()
    };
    fn req<T>(who: &[u8], msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert_bin("x-principal-bin", tonic::metadata::MetadataValue::from_bytes(who));
        r
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let admin = principal("", true);
    let tenant = TenantServiceClient::new(chans[0].clone())
        .create_tenant(req(
            &admin,
            ten::CreateTenantRequest {
                spec: Some(ten::TenantSpec { display_name: Some(format!("bench-{stamp}")), description: None }),
                idempotency: None,
            },
        ))
        .await?
        .into_inner()
        .tenant
        .and_then(|t| t.resource_id)
        .ok_or_else(|| anyhow::anyhow!("no tenant id"))?
        .id;
    let who = std::sync::Arc::new(principal(&tenant, false));
    let catalog = CatalogServiceClient::new(chans[0].clone())
        .create_catalog(req(
            &who,
            cat::CreateCatalogRequest {
                spec: Some(cat::CatalogSpec { display_name: "bench".into(), ..Default::default() }),
                idempotency: None,
            },
        ))
        .await?
        .into_inner()
        .catalog
        .and_then(|c| c.resource_id)
        .ok_or_else(|| anyhow::anyhow!("no catalog id"))?;
    let mut ns_ids = Vec::new();
    for n in 0..namespaces {
        let spec = cat::NamespaceSpec {
            catalog_id: Some(catalog.clone()),
            display_name: Some(format!("ns{n:04}")),
            ..Default::default()
        };
        let r = NamespaceServiceClient::new(chans[0].clone())
            .create_namespace(req(&who, cat::CreateNamespaceRequest { spec: Some(spec), idempotency: None }))
            .await?;
        ns_ids.push(r.into_inner().namespace.and_then(|n| n.resource_id).ok_or_else(|| anyhow::anyhow!("no ns id"))?);
    }
    let ns_ids = std::sync::Arc::new(ns_ids);

    // Load.
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (ch, next, who, ns_ids, catalog) =
            (chans[t % chans.len()].clone(), next.clone(), who.clone(), ns_ids.clone(), catalog.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = TableServiceClient::new(ch);
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= tables {
                    return Ok::<_, tonic::Status>(ids);
                }
                let spec = cat::TableSpec {
                    catalog_id: Some(catalog.clone()),
                    namespace_id: Some(ns_ids[i % ns_ids.len()].clone()),
                    display_name: Some(format!("t{i:07}")),
                    schema_json: Some(r#"{"type":"struct","fields":[{"id":1,"name":"id","type":"long"}]}"#.into()),
                    ..Default::default()
                };
                let r =
                    c.create_table(req(&who, cat::CreateTableRequest { spec: Some(spec), idempotency: None })).await?;
                ids.extend(r.into_inner().table.and_then(|t| t.resource_id));
            }
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await??);
    }
    let load_secs = started.elapsed().as_secs_f64();
    let mut out = vec![Figures {
        label: format!("create table ({tables})"),
        ops: ids.len() as u64,
        errors: 0,
        secs: load_secs,
        p50_us: 0,
        p99_us: 0,
        p999_us: 0,
        client_cpu_us_per_op: 0.0,
        server_cpu_us_per_op: None,
    }];
    let ids = std::sync::Arc::new(ids);

    out.push(
        drive(format!("health check, {clients} clients"), &chans, clients, duration, |ch, _, _| async move {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok()
        })
        .await?,
    );
    let (w, i2) = (who.clone(), ids.clone());
    out.push(
        drive(format!("GetTable, {clients} clients"), &chans, clients, duration, move |ch, t, i| {
            let (who, ids) = (w.clone(), i2.clone());
            async move {
                let id = ids[((i as usize) * 7919 + t * 104_729) % ids.len()].clone();
                let r = req(&who, cat::GetTableRequest { table_id: Some(id), snapshot: None });
                TableServiceClient::new(ch).get_table(r).await.is_ok()
            }
        })
        .await?,
    );
    let w = who.clone();
    out.push(
        drive(format!("ResolveTable, {clients} clients"), &chans, clients, duration, move |ch, t, i| {
            let who = w.clone();
            async move {
                let n = ((i as usize) * 7919 + t * 104_729) % tables;
                let name = mc::NameRef {
                    catalog: "bench".into(),
                    path: vec![format!("ns{:04}", n % namespaces)],
                    name: format!("t{n:07}"),
                    resource_id: None,
                };
                let r = req(&who, cat::ResolveTableRequest { r#ref: Some(name) });
                DirectoryServiceClient::new(ch).resolve_table(r).await.is_ok_and(|r| r.get_ref().resource_id.is_some())
            }
        })
        .await?,
    );
    // Each client walks one namespace page by page (default page size), starting over at the end.
    let tokens: std::sync::Arc<Vec<tokio::sync::Mutex<String>>> =
        std::sync::Arc::new((0..clients).map(|_| tokio::sync::Mutex::new(String::new())).collect());
    let (w, n2) = (who.clone(), ns_ids.clone());
    out.push(
        drive(format!("ListTables page of 50, {clients} clients"), &chans, clients, duration, move |ch, t, _| {
            let (who, ns_ids, tokens) = (w.clone(), n2.clone(), tokens.clone());
            async move {
                let mut token = tokens[t].lock().await;
                let r = cat::ListTablesRequest {
                    namespace_id: Some(ns_ids[t % ns_ids.len()].clone()),
                    page: Some(mc::PageRequest { page_size: 0, page_token: token.clone() }),
                };
                match TableServiceClient::new(ch).list_tables(req(&who, r)).await {
                    Ok(r) if r.get_ref().tables.len() <= 50 => {
                        *token = r.into_inner().page.map(|p| p.next_page_token).unwrap_or_default();
                        true
                    }
                    _ => false,
                }
            }
        })
        .await?,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_reading_grows_with_work_and_a_gone_process_reads_as_none() {
        let me = std::process::id();
        let before = processes_cpu_us(&[me]).expect("this process's /proc/PID/stat");
        // Spin until the kernel's tick-grained count has moved (a few ticks at most).
        let started = Instant::now();
        let mut x = 0u64;
        while processes_cpu_us(&[me]).expect("read again") <= before && started.elapsed() < Duration::from_secs(5) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        assert!(processes_cpu_us(&[me]).expect("read") > before, "5 s of spinning showed no CPU");
        // Two readings of the same process add up.
        let one = processes_cpu_us(&[me]).expect("read");
        assert!(processes_cpu_us(&[me, me]).expect("read") >= 2 * one);
        // Past the kernel's largest pid: no such process.
        assert_eq!(processes_cpu_us(&[me, 4_194_305]), None);
    }
}
