//! Key layout of the status registry inside the `status` keyspace.
//!
//! ```text
//! e <kind> <id>        -> entry record
//! s <kind> <seq:u64>   -> id     listing order (insertion order, never rewritten)
//! f <kind> <seq:u64>   -> id     finished entries, oldest first: the eviction queue
//! c <kind>             -> u64    entries held per kind
//! n                    -> u64    next sequence number
//! k                    -> 32 B   key that signs page tokens
//! ```

use super::StoreKind;
use crate::codec::Decoder;
use crate::store::{STATUS, StoreError};

pub const NEXT_SEQ: &[u8] = b"n";
pub const TOKEN_KEY: &[u8] = b"k";

pub fn entry(kind: StoreKind, id: &str) -> Vec<u8> {
    let mut k = vec![b'e', kind as u8];
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn order_prefix(kind: StoreKind) -> Vec<u8> {
    vec![b's', kind as u8]
}

pub fn order(kind: StoreKind, seq: u64) -> Vec<u8> {
    let mut k = order_prefix(kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn finished_prefix(kind: StoreKind) -> Vec<u8> {
    vec![b'f', kind as u8]
}

pub fn finished(kind: StoreKind, seq: u64) -> Vec<u8> {
    let mut k = finished_prefix(kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn count(kind: StoreKind) -> Vec<u8> {
    vec![b'c', kind as u8]
}

/// The sequence number at the end of an order or finished key.
pub fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    decode_u64(key.get(2..).unwrap_or_default())
}

pub fn decode_u64(v: &[u8]) -> Result<u64, StoreError> {
    let mut d = Decoder::new(STATUS, v);
    let n = d.u64()?;
    d.end()?;
    Ok(n)
}
