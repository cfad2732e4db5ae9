//! Key layout of the `catalog` keyspace.
//!
//! ```text
//! r <tenant> 0 <id>                          -> resource record
//! n <tenant> 0 <parent> 0 <kind:u8> <name>   -> id   (names, unique per parent and kind; list order)
//! i <tenant> 0 <op> 0 <key>                  -> idempotency record
//! e <expires:u64> <i-key>                    -> ()   (idempotency records by expiry)
//! k                                          -> page-token signing key
//! ```
//! Tenants themselves live in the realm with the empty tenant id.

use super::records::Kind;

fn part(k: &mut Vec<u8>, s: &str) {
    k.extend_from_slice(s.as_bytes());
    k.push(0);
}

pub fn resource(tenant: &str, id: &str) -> Vec<u8> {
    let mut k = vec![b'r'];
    part(&mut k, tenant);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Every child name under `parent`, of every kind.
pub fn children(tenant: &str, parent: &str) -> Vec<u8> {
    let mut k = vec![b'n'];
    part(&mut k, tenant);
    part(&mut k, parent);
    k
}

/// The names of `kind` under `parent`; a name key is this plus the name.
pub fn names(tenant: &str, parent: &str, kind: Kind) -> Vec<u8> {
    let mut k = children(tenant, parent);
    k.push(kind as u8);
    k
}

pub fn name(tenant: &str, parent: &str, kind: Kind, name: &str) -> Vec<u8> {
    let mut k = names(tenant, parent, kind);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Every namespace below the namespace `name` of `catalog` (a name key minus the tail).
pub fn sub_namespaces(tenant: &str, catalog: &str, name: &str) -> Vec<u8> {
    let mut k = self::name(tenant, catalog, Kind::Namespace, name);
    k.push(0x1f);
    k
}

pub fn idempotency(tenant: &str, op: &str, key: &str) -> Vec<u8> {
    let mut k = vec![b'i'];
    part(&mut k, tenant);
    part(&mut k, op);
    k.extend_from_slice(key.as_bytes());
    k
}

pub use crate::expiry_keys::{EXPIRY_PREFIX, expiry, expiry_at, record_key};

pub const TOKEN_KEY: &[u8] = b"k";
