//! Key layout of the `meta` keyspace: the applied state and the Raft log under it.

/// The current layout.
pub const LAYOUT: &[u8] = b"state/layout";
/// Tenant records: `state/tenant/{id}`.
pub const TENANTS: &[u8] = b"state/tenant/";
/// Layout changes: `state/migration/{id}`.
pub const MIGRATIONS: &[u8] = b"state/migration/";
/// Contexts of recently applied proposals: `state/recent/{16 bytes}` -> log index.
pub const RECENT: &[u8] = b"state/recent/";
/// Index of the last log entry applied to the state above.
pub const APPLIED: &[u8] = b"raft/applied";
/// raft-rs's hard state (term, vote, commit).
pub const HARD_STATE: &[u8] = b"raft/hard";
/// Index, term and voters of the point the log was compacted to.
pub const SNAPSHOT: &[u8] = b"raft/snapshot";
/// Log entries: `raft/log/{index, big-endian}` so they sort by index.
pub const LOG: &[u8] = b"raft/log/";

pub fn tenant(id: &str) -> Vec<u8> {
    [TENANTS, id.as_bytes()].concat()
}

pub fn entry(index: u64) -> Vec<u8> {
    [LOG, &index.to_be_bytes()[..]].concat()
}

pub fn recent(ctx: &[u8; 16]) -> Vec<u8> {
    [RECENT, &ctx[..]].concat()
}

pub fn migration(id: &str) -> Vec<u8> {
    [MIGRATIONS, id.as_bytes()].concat()
}
