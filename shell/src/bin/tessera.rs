//! tessera: the operator's command line for a running tesserad.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tessera_core::status::{Status as EntryStatus, StoreKind};
use tessera_proto::kms::v1::Empty;
use tessera_proto::metastore_status::v1 as wire;
use tessera_proto::metastore_status::v1::meta_store_status_service_client::MetaStoreStatusServiceClient;
use tessera_proto::tessera::status::v1 as producer;
use tessera_proto::tessera::status::v1::status_producer_service_client::StatusProducerServiceClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Operate a running tesserad")]
struct Cli {
    /// tesserad's gRPC address
    #[arg(long, env = "TESSERA_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the gRPC services the server offers (through reflection)
    Services,
    /// Query and record long-running request statuses
    #[command(subcommand)]
    Status(StatusCmd),
    /// Read and write the transactional state store (statehouse API)
    #[command(subcommand)]
    State(StateCmd),
    /// Upload a file in parallel chunks (resumable with --resume NODE_ID)
    Upload {
        file: std::path::PathBuf,
        /// Chunk size in bytes (at most 16 MiB)
        #[arg(long, default_value_t = 4 << 20)]
        chunk_size: u64,
        /// Concurrent senders
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Continue the interrupted upload of this node id
        #[arg(long)]
        resume: Option<String>,
    },
    /// Download a completed document, checking its SHA-256
    Download {
        node_id: String,
        #[arg(short = 'o', long)]
        output: std::path::PathBuf,
        #[arg(long)]
        version: Option<u64>,
    },
    /// List and create metacat catalog resources by dotted name (catalog.namespace.table)
    Catalog {
        /// The tenant id to act as
        #[arg(long, env = "TESSERA_TENANT", default_value = "")]
        tenant: String,
        /// Call with the platform-admin role (needed for tenants)
        #[arg(long)]
        admin: bool,
        #[command(subcommand)]
        cmd: tessera_shell::cli::catalog::CatalogCmd,
    },
    /// Tenants, keys and nodes of the key-value cluster
    #[command(subcommand)]
    Kv(tessera_shell::cli::kv::KvCmd),
    /// Load generators (figures for the README; not pass/fail)
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Ingest throughput of one large upload (MiB/s, with per-chunk latency)
    Upload {
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long, default_value_t = 4096)]
        chunk_kib: u64,
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Catalog of --tables tables: load rate, then GetTable, ResolveTable and ListTables
    /// page rates next to a health-check baseline
    Catalog {
        #[arg(long, default_value_t = 100_000)]
        tables: usize,
        #[arg(long, default_value_t = 10)]
        namespaces: usize,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
    /// Key-value puts then gets (tenant `bench`, RF 3); with --etcd, the same load against
    /// etcd in the same run, and the ratios
    Kv {
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long, default_value = "quorum")]
        consistency: String,
        /// etcd's client URL, e.g. http://127.0.0.1:2379
        #[arg(long)]
        etcd: Option<String>,
        /// Turns per phase, alternating between tesserad and etcd (`--secs` is each one's total)
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// More tesserad nodes (comma-separated gRPC URLs) the clients spread over besides
        /// --addr: any node coordinates, so a leaderless cluster's clients need not share one
        #[arg(long, value_delimiter = ',')]
        spread: Vec<String>,
        /// Threads of the load generator. One keeps its own CPU per operation lowest (about
        /// a quarter below two, measured on two cores shared with the servers)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        /// Puts carry idempotency keys of the client's own (one per put), which the
        /// coordinator looks up on the key's replicas first; etcd's puts are unchanged
        #[arg(long)]
        client_keys: bool,
        /// Process ids of the tesserad nodes (comma-separated): each phase then also shows
        /// the CPU they spent per operation (read from /proc)
        #[arg(long, value_delimiter = ',')]
        tessera_pids: Vec<u32>,
        /// Process ids of the etcd members, likewise
        #[arg(long, value_delimiter = ',')]
        etcd_pids: Vec<u32>,
    },
    /// Commits/s of 1-write transactions at each concurrency, then GetState reads/s
    State {
        /// Concurrent clients, comma-separated
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        clients: Vec<usize>,
        /// Seconds per load level
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Clients for the read phase (0 skips it)
        #[arg(long, default_value_t = 64)]
        readers: usize,
    },
}

async fn bench(addr: &str, cmd: BenchCmd) -> anyhow::Result<()> {
    use std::time::Duration;
    use tessera_shell::bench;
    match cmd {
        BenchCmd::Upload { size_mib, chunk_kib, parallel } => {
            let f = bench::upload(addr, size_mib << 20, chunk_kib << 10, parallel).await?;
            println!("{}  => {:.1} MiB/s", f.line(), f.per_sec());
        }
        BenchCmd::Catalog { tables, namespaces, clients, secs } => {
            let figures = bench::catalog(addr, tables, namespaces, clients, Duration::from_secs(secs)).await?;
            let floor = figures.get(1).map(|f| f.per_sec()).unwrap_or(0.0);
            for f in &figures {
                println!("{}  ({:.2} of health checks)", f.line(), f.per_sec() / floor.max(1e-9));
            }
        }
        BenchCmd::Kv {
            keys,
            value_size,
            clients,
            secs,
            consistency,
            etcd,
            rounds,
            spread,
            threads: _,
            client_keys,
            tessera_pids,
            etcd_pids,
        } => {
            use tessera_shell::bench_kv;
            let load = bench_kv::KvLoad {
                keys,
                value_size,
                clients,
                duration: Duration::from_secs(secs),
                consistency,
                client_keys,
            };
            let nodes: Vec<&str> = std::iter::once(addr).chain(spread.iter().map(String::as_str)).collect();
            let servers = bench_kv::ServerPids { tessera: tessera_pids, etcd: etcd_pids };
            let phases = bench_kv::compare(&nodes, etcd.as_deref(), &load, rounds, &servers).await?;
            for (_, t, e) in &phases {
                println!("{}", t.line());
                if let Some(e) = e {
                    println!("{}", e.line());
                }
            }
            let ratios: Vec<String> = phases
                .iter()
                .filter_map(|(phase, t, e)| {
                    let e = e.as_ref()?;
                    let cpu = match (t.server_cpu_us_per_op, e.server_cpu_us_per_op) {
                        (Some(t), Some(e)) => format!(", servers CPU per op {:.2}x etcd's", t / e.max(1e-9)),
                        _ => String::new(),
                    };
                    Some(format!(
                        "{} {:.2}x (p99 {} vs {} us{cpu})",
                        phase.name(),
                        t.per_sec() / e.per_sec().max(1e-9),
                        t.p99_us,
                        e.p99_us
                    ))
                })
                .collect();
            if !ratios.is_empty() {
                println!("ratio tessera/etcd: {}", ratios.join(", "));
            }
        }
        BenchCmd::State { clients, secs, readers } => {
            for c in clients {
                println!("{}", bench::state_commits(addr, c.max(1), Duration::from_secs(secs)).await?.line());
            }
            if readers > 0 {
                println!("{}", bench::state_reads(addr, readers, Duration::from_secs(secs)).await?.line());
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum StateCmd {
    /// Show a key's latest value (or the one at --version)
    Get {
        agent: String,
        key: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write a JSON object to a key, in its own transaction
    Put {
        agent: String,
        key: String,
        /// A JSON object, e.g. '{"step": 3}'
        json: String,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Delete a key (writes a tombstone), in its own transaction
    Delete {
        agent: String,
        key: String,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// List an agent's live keys, optionally under a prefix with their values
    Ls {
        agent: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Print an agent's committed transactions in commit_ts order
    Replay {
        agent: String,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

async fn state(ch: Channel, cmd: StateCmd) -> anyhow::Result<()> {
    use tessera_proto::statehouse::v1 as sh;
    use tessera_shell::cli::json;
    let mut c = sh::statehouse_service_client::StatehouseServiceClient::new(ch);
    let show =
        |v: &Option<prost_types::Struct>| v.as_ref().map_or("null".to_owned(), |s| json::from_struct(s).to_string());
    match cmd {
        StateCmd::Get { agent, key, namespace, version } => {
            let (value, version, commit_ts, exists) = match version {
                Some(version) => {
                    let r = c
                        .get_state_at_version(sh::GetStateAtVersionRequest { namespace, agent_id: agent, key, version })
                        .await
                        .map_err(grpc)?
                        .into_inner();
                    (r.value, r.version, r.commit_ts, r.exists)
                }
                None => {
                    let r = c
                        .get_state(sh::GetStateRequest { namespace, agent_id: agent, key })
                        .await
                        .map_err(grpc)?
                        .into_inner();
                    (r.value, r.version, r.commit_ts, r.exists)
                }
            };
            if exists {
                println!("{}  (version {version}, commit_ts {commit_ts})", show(&value));
            } else if version > 0 {
                println!("deleted  (version {version}, commit_ts {commit_ts})");
            } else {
                bail!("no such key");
            }
        }
        StateCmd::Put { agent, key, json: text, namespace } => {
            let serde_json::Value::Object(obj) = serde_json::from_str(&text).context("the value must be JSON")? else {
                bail!("the value must be a JSON object, like '{{\"a\": 1}}'");
            };
            let txn_id = c
                .begin_transaction(sh::BeginTransactionRequest { timeout_ms: None })
                .await
                .map_err(grpc)?
                .into_inner()
                .txn_id;
            c.write(sh::WriteRequest {
                txn_id: txn_id.clone(),
                namespace,
                agent_id: agent,
                key,
                value: Some(json::to_struct(obj)),
            })
            .await
            .map_err(grpc)?;
            let ts = c.commit(sh::CommitRequest { txn_id }).await.map_err(grpc)?.into_inner().commit_ts;
            println!("committed at commit_ts {ts}");
        }
        StateCmd::Delete { agent, key, namespace } => {
            let txn_id = c
                .begin_transaction(sh::BeginTransactionRequest { timeout_ms: None })
                .await
                .map_err(grpc)?
                .into_inner()
                .txn_id;
            c.delete(sh::DeleteRequest { txn_id: txn_id.clone(), namespace, agent_id: agent, key })
                .await
                .map_err(grpc)?;
            let ts = c.commit(sh::CommitRequest { txn_id }).await.map_err(grpc)?.into_inner().commit_ts;
            println!("deleted at commit_ts {ts}");
        }
        StateCmd::Ls { agent, prefix: None, namespace } => {
            let r = c
                .list_keys(sh::ListKeysRequest { namespace, agent_id: agent, limit: 0, page_token: String::new() })
                .await
                .map_err(grpc)?
                .into_inner();
            r.keys.iter().for_each(|k| println!("{k}"));
        }
        StateCmd::Ls { agent, prefix: Some(prefix), namespace } => {
            let r = c
                .scan_prefix(sh::ScanPrefixRequest {
                    namespace,
                    agent_id: agent,
                    prefix,
                    limit: 0,
                    page_token: String::new(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            for e in r.entries {
                println!("{}  {}  (version {}, commit_ts {})", e.key, show(&e.value), e.version, e.commit_ts);
            }
        }
        StateCmd::Replay { agent, from, to, namespace } => {
            let mut s = c
                .replay(sh::ReplayRequest { namespace, agent_id: agent, start_ts: from, end_ts: to })
                .await
                .map_err(grpc)?
                .into_inner();
            while let Some(e) = s.message().await.map_err(grpc)? {
                println!("commit_ts {}  txn {}", e.commit_ts, e.txn_id);
                for op in e.operations {
                    match &op.value {
                        Some(_) => println!("  put {} = {}  (version {})", op.key, show(&op.value), op.version),
                        None => println!("  delete {}  (version {})", op.key, op.version),
                    }
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum StatusCmd {
    /// List requests, following page tokens
    List {
        /// Meta-store: all, key_generation, public_decryption, user_decryption, crs_generation,
        /// preprocessing, migration, upload, plan, reconcile_job
        #[arg(long = "type", default_value = "all")]
        kind: String,
        /// any, processing, completed, failed, deleted
        #[arg(long, default_value = "any")]
        status: String,
        /// Page size asked of the server
        #[arg(long, default_value_t = 100)]
        page_size: i32,
        /// Stop after this many entries (0: no limit)
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Show the status of the given request ids
    Get {
        ids: Vec<String>,
        #[arg(long = "type", default_value = "all")]
        kind: String,
    },
    /// Capacity and count of every meta-store
    Info,
    /// Record a request (producer API)
    Record {
        id: String,
        #[arg(long = "type")]
        kind: String,
        #[arg(long, default_value = "processing")]
        status: String,
        #[arg(long)]
        error: Option<String>,
    },
    /// Move a request to a new status (producer API)
    Update {
        id: String,
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        status: String,
        #[arg(long)]
        error: Option<String>,
    },
    /// Mark a request deleted (producer API)
    Delete {
        id: String,
        #[arg(long = "type")]
        kind: String,
    },
}

fn parse_kind(s: &str) -> anyhow::Result<i32> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(wire::MetaStoreType::All as i32);
    }
    StoreKind::from_name(s).map(|k| k as i32).with_context(|| format!("unknown meta-store type {s:?}"))
}

fn parse_status(s: &str) -> anyhow::Result<i32> {
    if s.eq_ignore_ascii_case("any") {
        return Ok(wire::RequestProcessingStatus::Any as i32);
    }
    EntryStatus::from_name(s).map(|k| k as i32).with_context(|| format!("unknown status {s:?}"))
}

fn kind_name(n: i32) -> String {
    StoreKind::from_wire(n).map_or_else(|| format!("#{n}"), |k| k.name().to_owned())
}

fn status_name(n: i32) -> String {
    EntryStatus::from_wire(n).map_or_else(|| format!("#{n}"), |k| k.name().to_owned())
}

fn print_info(i: &wire::RequestStatusInfo) {
    let err = i.error_message.as_deref().map(|e| format!("  {e}")).unwrap_or_default();
    println!("{:<16} {:<10} {}{err}", kind_name(i.meta_store_type), status_name(i.status), i.request_id);
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_owned())
        .with_context(|| format!("bad --addr {addr:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach tesserad at {addr}"))
}

fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

async fn services(ch: Channel) -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream_once(req)).await.map_err(grpc)?.into_inner();
    if let Some(resp) = stream.message().await.map_err(grpc)? {
        match resp.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                for s in list.service {
                    println!("{}", s.name);
                }
            }
            Some(MessageResponse::ErrorResponse(e)) => bail!("reflection error: {}", e.error_message),
            _ => bail!("unexpected reflection answer"),
        }
    }
    Ok(())
}

/// A one-message request stream without pulling in a stream crate.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::codegen::tokio_stream::Stream<Item = T> {
    tonic::codegen::tokio_stream::iter(std::iter::once(item))
}

async fn status(ch: Channel, cmd: StatusCmd) -> anyhow::Result<()> {
    let mut client = MetaStoreStatusServiceClient::new(ch.clone());
    let mut prod = StatusProducerServiceClient::new(ch);
    match cmd {
        StatusCmd::List { kind, status, page_size, limit } => {
            let (kind, filter) = (parse_kind(&kind)?, parse_status(&status)?);
            let mut token = None;
            let mut shown = 0usize;
            loop {
                let resp = client
                    .list_requests(wire::ListRequestsRequest {
                        meta_store_type: kind,
                        status_filter: Some(filter),
                        max_results: Some(page_size),
                        page_token: token.take(),
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                for r in &resp.requests {
                    print_info(r);
                    shown += 1;
                    if limit > 0 && shown >= limit {
                        return Ok(());
                    }
                }
                match resp.next_page_token {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
            eprintln!("{shown} request(s)");
        }
        StatusCmd::Get { ids, kind } => {
            let kind = parse_kind(&kind)?;
            let resp = client
                .get_request_statuses(wire::GetRequestStatusesRequest { request_ids: ids, meta_store_type: Some(kind) })
                .await
                .map_err(grpc)?
                .into_inner();
            resp.statuses.iter().for_each(print_info);
        }
        StatusCmd::Info => {
            let resp = client.get_meta_store_info(Empty {}).await.map_err(grpc)?.into_inner();
            println!("{:<18} {:>10} {:>10}", "META-STORE", "CAPACITY", "COUNT");
            for s in resp.meta_stores {
                let cap = if s.capacity < 0 { "unlimited".to_owned() } else { s.capacity.to_string() };
                println!("{:<18} {cap:>10} {:>10}", kind_name(s.r#type), s.current_count);
            }
        }
        StatusCmd::Record { id, kind, status, error } => {
            let r = prod
                .record_request(producer::RecordRequestRequest {
                    request_id: id,
                    meta_store_type: parse_kind(&kind)?,
                    status: parse_status(&status)?,
                    error_message: error,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if let Some(i) = &r.info {
                print_info(i);
            }
            if let Some(e) = r.evicted_request_id {
                eprintln!("evicted {e} to make room");
            }
        }
        StatusCmd::Update { id, kind, status, error } => {
            let r = prod
                .update_status(producer::UpdateStatusRequest {
                    request_id: id,
                    meta_store_type: parse_kind(&kind)?,
                    status: parse_status(&status)?,
                    error_message: error,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            if let Some(i) = &r.info {
                print_info(i);
            }
        }
        StatusCmd::Delete { id, kind } => {
            let r = prod
                .delete_request(producer::DeleteRequestRequest { request_id: id, meta_store_type: parse_kind(&kind)? })
                .await
                .map_err(grpc)?
                .into_inner();
            if let Some(i) = &r.info {
                print_info(i);
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Multi-threaded: `tessera bench` drives many clients at once (the key-value bench on
    // as many threads as it is told, one by default).
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Command::Bench(BenchCmd::Kv { threads, .. }) = &cli.command {
        rt.worker_threads(usize::from(*threads));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async {
        let ch = connect(&cli.addr).await?;
        match cli.command {
            Command::Bench(cmd) => bench(&cli.addr, cmd).await,
            Command::Upload { file, chunk_size, parallel, resume } => {
                tessera_shell::cli::transfer::upload(ch, &file, chunk_size, parallel, resume).await
            }
            Command::Download { node_id, output, version } => {
                tessera_shell::cli::transfer::download(ch, node_id, version, &output).await
            }
            Command::Services => services(ch).await,
            Command::Kv(cmd) => tessera_shell::cli::kv::run(ch, cmd).await,
            Command::Catalog { tenant, admin, cmd } => {
                tessera_shell::cli::catalog::run(ch, tessera_shell::cli::catalog::As { tenant, admin }, cmd).await
            }
            Command::Status(cmd) => status(ch, cmd).await,
            Command::State(cmd) => state(ch, cmd).await,
        }
    })
}
