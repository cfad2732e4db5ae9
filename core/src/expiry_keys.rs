//! Expiry index keys, shared by every keyspace that keeps records with a time to live
//! (idempotency records of the catalog and the key-value plane): `e <at:u64> <record key>`,
//! so a sweep reads the due ones first.

pub const EXPIRY_PREFIX: &[u8] = b"e";

pub fn expiry(at: u64, record_key: &[u8]) -> Vec<u8> {
    let mut k = EXPIRY_PREFIX.to_vec();
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(record_key);
    k
}

/// The expiry time at the front of an expiry key.
pub fn expiry_at(key: &[u8]) -> Option<u64> {
    key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// The record key an expiry key points at.
pub fn record_key(key: &[u8]) -> Option<&[u8]> {
    key.get(9..)
}
