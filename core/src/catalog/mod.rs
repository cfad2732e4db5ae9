//! The data catalog (metacat): tenants, catalogs, namespaces, tables, views, snapshots and
//! statistics, as one tree of [`Resource`]s.
//!
//! The core knows the tree, not the wire: each resource carries its kind, tenant, parent,
//! name and an opaque payload (the shell's encoded message). It enforces what must hold
//! atomically: parents exist, names are unique within their parent (tables and views share
//! a namespace's names), versions and ETags move on every change and guard preconditions,
//! non-empty parents are not deleted unless the caller allows a cascade, idempotency keys
//! replay the stored result (and refuse a different request), and listings page with
//! signed cursors that never skip or repeat an item. Every change is one write batch.

mod keys;
mod machine;
mod page;
mod records;

pub use machine::{
    CatalogConfig, CatalogMachine, CatalogRequest, CatalogResponse, Idempotency, ListQuery, Precondition,
};
pub use records::{Kind, Resource};

/// Items per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most items per page; larger asks are served at this size.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most resources one cascading delete or statistics batch may touch.
pub const MAX_BATCH: usize = 10_000;
/// Longest resource name, in bytes (a namespace's whole path counts once per segment).
pub const MAX_NAME_BYTES: usize = 1024;
/// Default life of an idempotency record.
pub const DEFAULT_IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Separates a namespace path's segments inside its stored name.
pub const PATH_SEP: char = '\u{1f}';
