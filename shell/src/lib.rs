//! tessera-shell: the production driver of tessera-core.
//!
//! [`driver`] is the one place that orders "write, sync, then reply"; the simulator runs the
//! same code. Everything else (fjall storage, tonic services, config, metrics) sits behind
//! the `server` feature so the simulator can build the driver alone.

pub mod driver;
pub mod kv_coordinator;

#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "server")]
pub mod bench_kv;
#[cfg(feature = "server")]
mod blob_files;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod cluster_id;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod fjall_store;
#[cfg(feature = "server")]
pub mod grpc_unary;
#[cfg(feature = "server")]
pub mod lock;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod net_io;
#[cfg(feature = "server")]
pub mod raft_transport;
#[cfg(feature = "server")]
pub mod row_cache;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod services;
