//! The Dynamo-style key-value data plane: the ring, vector clocks, each node's replica
//! machine and the quorum rules the coordinator follows.

mod keys;
pub mod merkle;
pub mod quorum;
pub mod replica;
pub mod ring;
pub mod vclock;
pub mod wire;

pub use crate::meta::TenantRecord;
/// Where a key's versions are stored in the `kv` keyspace: the keys a store may cache.
pub use keys::VALUE_PREFIX;
pub use quorum::Consistency;
pub use replica::{Hint, IdemKey, IdemRecord, KvConfig, KvMachine, KvRequest, KvResponse};
pub use ring::Ring;
pub use vclock::{Causal, VClock, Version};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Replication factor bounds and default.
pub const MIN_RF: u32 = 1;
pub const MAX_RF: u32 = 10;
pub const DEFAULT_RF: u32 = 3;
