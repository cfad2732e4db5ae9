//! tesserad's configuration: flags, `TESSERA_*` environment variables and an optional TOML
//! file, in that order of precedence, over built-in defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;
use tessera_core::status::{StatusConfig, StoreKind};
use tessera_core::upload::UploadConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "./tessera-data";
pub const DEFAULT_CLUSTER_TOKEN: &str = "tessera";
/// Largest row cache (1 TiB): more is a typo, not a plan.
pub const MAX_ROW_CACHE_MIB: u64 = 1 << 20;
/// Longest `idempotency_ttl_secs`: a year.
pub const MAX_IDEMPOTENCY_TTL_SECS: u64 = 365 * 24 * 3600;
/// Longest `tombstone_grace_secs`: a year.
pub const MAX_TOMBSTONE_GRACE_SECS: u64 = 365 * 24 * 3600;
/// Most `worker_threads`.
pub const MAX_WORKER_THREADS: usize = 1024;

/// tesserad: one daemon serving Tessera's gRPC APIs on one port, on embedded storage (fjall).
#[derive(Debug, Parser)]
#[command(name = "tesserad", version, about)]
pub struct Flags {
    /// Address to serve gRPC on [default: 127.0.0.1:50051]
    #[arg(long, env = "TESSERA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for all durable state [default: ./tessera-data]
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file; flags and env vars override it
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (HTTP, path /metrics); off unless set
    #[arg(long, env = "TESSERA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter, e.g. "info" or "tessera_shell=debug" [default: RUST_LOG, else info]
    #[arg(long, env = "TESSERA_LOG")]
    pub log: Option<String>,
    /// This node's id in the cluster [default: n1]
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: Option<String>,
    /// Every member, as id=host:port,... (this node included); absent: a one-node cluster
    #[arg(long, env = "TESSERA_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` starts a cluster from --initial-cluster; `existing` joins a running one (add
    /// this node with AddStorageNode; it then receives the metadata; --initial-cluster need
    /// only name this node) [default: new]
    #[arg(long, env = "TESSERA_INITIAL_CLUSTER_STATE", value_parser = ["new", "existing"])]
    pub initial_cluster_state: Option<String>,
    /// Mixed into a new cluster's id with --initial-cluster: give two clusters with the same
    /// member list different tokens [default: tessera]
    #[arg(long, env = "TESSERA_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Memory for the latest values of hot keys, in MiB (0: none) [default: 64]
    #[arg(long, env = "TESSERA_ROW_CACHE_MIB")]
    pub row_cache_mib: Option<u64>,
    /// How long a replay with the same idempotency key is recognised, for key-value writes
    /// and catalog mutations, in seconds [default: 86400]
    #[arg(long, env = "TESSERA_IDEMPOTENCY_TTL_SECS")]
    pub idempotency_ttl_secs: Option<u64>,
    /// How long a deleted key keeps its tombstones after its newest delete, in seconds: every
    /// replica must learn of a delete within it (at least 4 hours) [default: 864000, 10 days]
    #[arg(long, env = "TESSERA_TOMBSTONE_GRACE_SECS")]
    pub tombstone_grace_secs: Option<u64>,
    /// Threads serving gRPC (as Go's GOMAXPROCS for etcd): fewer than the cores when several
    /// nodes, or other busy processes, share a machine [default: one per core]
    #[arg(long, env = "TESSERA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// The TOML file's shape. Every key is optional.
///
/// ```toml
/// listen = "127.0.0.1:50051"
/// data_dir = "/var/lib/tessera"
/// metrics_listen = "127.0.0.1:9100"
/// log = "info"
/// row_cache_mib = 64
/// idempotency_ttl_secs = 86400   # replays of a write or mutation are recognised this long
/// tombstone_grace_secs = 864000  # a deleted key's tombstones stay this long
/// worker_threads = 4             # threads serving gRPC (default: one per core)
///
/// [status.capacity]        # per meta-store; -1 (or absent) = unlimited
/// key_generation = 1000
/// upload = 10000
///
/// [upload]
/// ttl_secs = 86400          # abandoned uploads expire after this long without a chunk
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub log: Option<String>,
    pub node_id: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_state: Option<String>,
    pub initial_cluster_token: Option<String>,
    pub row_cache_mib: Option<u64>,
    pub idempotency_ttl_secs: Option<u64>,
    pub tombstone_grace_secs: Option<u64>,
    pub worker_threads: Option<usize>,
    #[serde(default)]
    pub status: StatusSection,
    #[serde(default)]
    pub upload: UploadSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSection {
    /// An open upload with no chunk for this long expires and frees its chunks (default 24 h).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    #[serde(default)]
    pub capacity: BTreeMap<String, i64>,
}

/// The resolved configuration tesserad runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub log: Option<String>,
    pub status: StatusConfig,
    pub upload: UploadConfig,
    pub node_id: String,
    /// The cluster's members; one (this node) unless `--initial-cluster` names more.
    pub members: Vec<crate::cluster::Member>,
    /// Join a running cluster (`--initial-cluster-state existing`) rather than start one.
    pub join: bool,
    /// `--initial-cluster-token` (see `cluster_id`).
    pub cluster_token: String,
    /// The store's row cache (see `row_cache`), in bytes.
    pub row_cache_bytes: usize,
    /// How long idempotency records live (key-value writes and catalog mutations).
    pub idempotency_ttl_ms: u64,
    /// How long a deleted key's tombstones stay (see `KvConfig::tombstone_grace_ms`).
    pub tombstone_grace_ms: u64,
    /// Threads of the async runtime serving gRPC; `None`: one per core (tokio's default).
    pub worker_threads: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn resolve(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let p = path.display().to_string();
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|source| ConfigError::Parse { path: p, source: Box::new(source) })?
            }
            None => FileConfig::default(),
        };
        let mut status = StatusConfig::default();
        for (name, cap) in &file.status.capacity {
            let kind = StoreKind::from_name(name).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "status.capacity.{name}: unknown meta-store (known: {})",
                    StoreKind::ALL.iter().map(|k| k.name().to_ascii_lowercase()).collect::<Vec<_>>().join(", ")
                ))
            })?;
            if *cap < -1 || *cap > i64::from(i32::MAX) {
                return Err(ConfigError::Invalid(format!(
                    "status.capacity.{name}: {cap} is not a capacity (-1 for unlimited, or 0 to {})",
                    i32::MAX
                )));
            }
            status = status.with_capacity(kind, *cap);
        }
        let mut upload = UploadConfig::default();
        if let Some(t) = file.upload.ttl_secs {
            if t == 0 {
                return Err(ConfigError::Invalid("upload.ttl_secs: must be at least 1".into()));
            }
            upload.ttl_ms = t.saturating_mul(1000);
        }
        let default_listen: SocketAddr =
            DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid("default listen".into()))?;
        let listen = flags.listen.or(file.listen).unwrap_or(default_listen);
        let node_id = flags.node_id.or(file.node_id).unwrap_or_else(|| "n1".to_owned());
        tessera_core::ids::validate_id("--node-id", &node_id).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let members = match flags.initial_cluster.or(file.initial_cluster) {
            Some(s) => crate::cluster::parse_members(&s)
                .map_err(|e| ConfigError::Invalid(format!("--initial-cluster: {e}")))?,
            None => vec![crate::cluster::Member { id: node_id.clone(), addr: listen.to_string() }],
        };
        if !members.iter().any(|m| m.id == node_id) {
            return Err(ConfigError::Invalid(format!("--node-id {node_id:?} is not in --initial-cluster")));
        }
        let join = match flags.initial_cluster_state.or(file.initial_cluster_state).as_deref() {
            None | Some("new") => false,
            Some("existing") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "initial_cluster_state: {other:?}, expected \"new\" or \"existing\""
                )));
            }
        };
        let row_cache_bytes = match flags.row_cache_mib.or(file.row_cache_mib) {
            None => crate::fjall_store::DEFAULT_ROW_CACHE_BYTES,
            Some(mib) if mib <= MAX_ROW_CACHE_MIB => (mib as usize) << 20,
            Some(mib) => {
                return Err(ConfigError::Invalid(format!(
                    "row_cache_mib: {mib} MiB is more than the {MAX_ROW_CACHE_MIB} MiB allowed"
                )));
            }
        };
        let idempotency_ttl_ms = match flags.idempotency_ttl_secs.or(file.idempotency_ttl_secs) {
            None => tessera_core::kv::replica::DEFAULT_IDEMPOTENCY_TTL_MS,
            Some(secs @ 1..=MAX_IDEMPOTENCY_TTL_SECS) => secs * 1000,
            Some(secs) => {
                return Err(ConfigError::Invalid(format!(
                    "idempotency_ttl_secs: {secs} is out of range (1 to {MAX_IDEMPOTENCY_TTL_SECS}, a year)"
                )));
            }
        };
        let min_grace = tessera_core::kv::replica::MIN_TOMBSTONE_GRACE_MS / 1000;
        let tombstone_grace_ms = match flags.tombstone_grace_secs.or(file.tombstone_grace_secs) {
            None => tessera_core::kv::replica::DEFAULT_TOMBSTONE_GRACE_MS,
            Some(secs) if (min_grace..=MAX_TOMBSTONE_GRACE_SECS).contains(&secs) => secs * 1000,
            Some(secs) => {
                return Err(ConfigError::Invalid(format!(
                    "tombstone_grace_secs: {secs} is out of range ({min_grace}, longer than a hint lives, to \
                     {MAX_TOMBSTONE_GRACE_SECS}, a year)"
                )));
            }
        };
        let worker_threads = match flags.worker_threads.or(file.worker_threads) {
            Some(n @ 1..=MAX_WORKER_THREADS) => Some(n),
            Some(n) => {
                return Err(ConfigError::Invalid(format!(
                    "worker_threads: {n} is out of range (1 to {MAX_WORKER_THREADS})"
                )));
            }
            None => None,
        };
        if tombstone_grace_ms < idempotency_ttl_ms {
            return Err(ConfigError::Invalid(format!(
                "tombstone_grace_secs ({}) is shorter than idempotency_ttl_secs ({}): a replay of a write to a key \
                 deleted since would find neither the write nor its tombstone; raise the grace or shorten the ttl",
                tombstone_grace_ms / 1000,
                idempotency_ttl_ms / 1000
            )));
        }
        Ok(Self {
            row_cache_bytes,
            idempotency_ttl_ms,
            tombstone_grace_ms,
            worker_threads,
            listen,
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            log: flags.log.or(file.log),
            status,
            upload,
            node_id,
            members,
            join,
            cluster_token: flags
                .initial_cluster_token
                .or(file.initial_cluster_token)
                .unwrap_or_else(|| DEFAULT_CLUSTER_TOKEN.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(std::iter::once("tesserad").chain(args.iter().copied()))
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:7000\"\ndata_dir = \"/x\"\n[status.capacity]\nupload = 5\n")
            .unwrap();
        let c = Config::resolve(flags(&["--config", path.to_str().unwrap(), "--listen", "127.0.0.1:7001"])).unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.status.capacity(StoreKind::Upload), 5);
        assert_eq!(c.status.capacity(StoreKind::Plan), -1);
        let d = Config::resolve(flags(&[])).unwrap();
        assert_eq!(d.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(d.row_cache_bytes, crate::fjall_store::DEFAULT_ROW_CACHE_BYTES);
        assert_eq!(Config::resolve(flags(&["--row-cache-mib", "0"])).unwrap().row_cache_bytes, 0);
        std::fs::write(&path, "row_cache_mib = 3\n").unwrap();
        let c = Config::resolve(flags(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.row_cache_bytes, 3 << 20);
        let e = Config::resolve(flags(&["--row-cache-mib", "99999999"])).unwrap_err().to_string();
        assert!(e.contains("row_cache_mib") && e.contains("allowed"), "{e}");
    }

    #[test]
    fn idempotency_ttl_from_flag_env_or_file() {
        let d = Config::resolve(flags(&[])).unwrap();
        assert_eq!(d.idempotency_ttl_ms, 24 * 3600 * 1000);
        let c = Config::resolve(flags(&["--idempotency-ttl-secs", "60"])).unwrap();
        assert_eq!(c.idempotency_ttl_ms, 60_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "idempotency_ttl_secs = 7\n").unwrap();
        let c = Config::resolve(flags(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.idempotency_ttl_ms, 7000);
        let c = Config::resolve(flags(&["--config", path.to_str().unwrap(), "--idempotency-ttl-secs", "9"])).unwrap();
        assert_eq!(c.idempotency_ttl_ms, 9000);
        for bad in ["0", "31536001"] {
            let e = Config::resolve(flags(&["--idempotency-ttl-secs", bad])).unwrap_err().to_string();
            assert!(e.contains("idempotency_ttl_secs") && e.contains("out of range"), "{e}");
        }
    }

    #[test]
    fn tombstone_grace_from_flag_or_file_within_its_range() {
        assert_eq!(Config::resolve(flags(&[])).unwrap().tombstone_grace_ms, 10 * 24 * 3600 * 1000);
        let c = Config::resolve(flags(&["--tombstone-grace-secs", "14400", "--idempotency-ttl-secs", "3600"])).unwrap();
        assert_eq!(c.tombstone_grace_ms, 14_400_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "tombstone_grace_secs = 86400\n").unwrap();
        let c = Config::resolve(flags(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.tombstone_grace_ms, 86_400_000);
        for bad in ["60", "14399", "31536001"] {
            let e = Config::resolve(flags(&["--tombstone-grace-secs", bad])).unwrap_err().to_string();
            assert!(e.contains("tombstone_grace_secs") && e.contains("out of range"), "{e}");
        }
        let e = Config::resolve(flags(&["--idempotency-ttl-secs", "1000000"])).unwrap_err().to_string();
        assert!(e.contains("shorter than idempotency_ttl_secs"), "{e}");
    }

    #[test]
    fn worker_threads_from_flag_or_file_within_its_range() {
        assert_eq!(Config::resolve(flags(&[])).unwrap().worker_threads, None);
        assert_eq!(Config::resolve(flags(&["--worker-threads", "1"])).unwrap().worker_threads, Some(1));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "worker_threads = 3\n").unwrap();
        let c = Config::resolve(flags(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.worker_threads, Some(3));
        for bad in ["0", "1025"] {
            let e = Config::resolve(flags(&["--worker-threads", bad])).unwrap_err().to_string();
            assert!(e.contains("worker_threads") && e.contains("out of range"), "{e}");
        }
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[status.capacity]\nnope = 5\n").unwrap();
        let e = Config::resolve(flags(&["--config", path.to_str().unwrap()])).unwrap_err().to_string();
        assert!(e.contains("unknown meta-store"), "{e}");
        std::fs::write(&path, "lisen = 1\n").unwrap();
        let e = Config::resolve(flags(&["--config", path.to_str().unwrap()])).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }
}
