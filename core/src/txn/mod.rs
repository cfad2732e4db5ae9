//! Transactions: the statehouse domain.
//!
//! Serializable by construction: one machine applies commits one at a time, in `commit_ts`
//! order, from a single writer (the driver). A transaction stages its writes in memory; a
//! crash forgets every open transaction, so after any crash each transaction is either fully
//! committed (its whole batch was synced) or absent. `commit_ts` is a global counter from 1;
//! each key's `version` counts the commits that wrote it; a delete writes a tombstone that
//! stays in history and replay but is hidden from listings.

mod keys;
mod machine;
mod records;

pub use machine::{TxnConfig, TxnMachine, TxnRequest, TxnResponse};
pub use records::{Event, Operation, Versioned};

use crate::error::{CoreError, CoreResult};

/// Longest namespace or agent id, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value (the encoded JSON object), in bytes.
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Most writes and deletes one transaction may stage.
pub const MAX_OPS_PER_TXN: usize = 10_000;
/// Most bytes one transaction may stage.
pub const MAX_TXN_BYTES: usize = 64 << 20;
/// Timeout of a transaction that names none, and the longest one may ask for.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// The namespace may be empty (the SDK sends whatever its user configured); only its length
/// is bounded.
pub(crate) fn validate_namespace(v: &str) -> CoreResult<()> {
    if v.len() > MAX_NAME_LEN {
        return Err(CoreError::InvalidArgument(format!("namespace: {} bytes, at most {MAX_NAME_LEN}", v.len())));
    }
    Ok(())
}

pub(crate) fn validate_name(field: &str, v: &str) -> CoreResult<()> {
    if v.is_empty() {
        return Err(CoreError::InvalidArgument(format!("{field}: must not be empty")));
    }
    if v.len() > MAX_NAME_LEN {
        return Err(CoreError::InvalidArgument(format!("{field}: {} bytes, at most {MAX_NAME_LEN}", v.len())));
    }
    Ok(())
}

pub(crate) fn validate_key(v: &str) -> CoreResult<()> {
    if v.is_empty() {
        return Err(CoreError::InvalidArgument("key: must not be empty".into()));
    }
    if v.len() > MAX_KEY_LEN {
        return Err(CoreError::InvalidArgument(format!("key: {} bytes, at most {MAX_KEY_LEN}", v.len())));
    }
    Ok(())
}
