//! Page tokens for `ListRequests`: opaque to clients, signed so a tampered or foreign token
//! is refused, and bound to the query (kind and filter) they were issued for.
//!
//! A token names the last entry served, as (kind, seq). Because seq is assigned at insertion
//! and never changes, the next page starts exactly after it: nothing is skipped or repeated
//! when entries are added or change status between pages.

use sha2::{Digest, Sha256};

use super::{Status, StoreKind};
use crate::codec::{hex, unhex};
use crate::error::CoreError;

const VERSION: u8 = 1;
const MAC_LEN: usize = 8;
const PAYLOAD_LEN: usize = 1 + 1 + 1 + 1 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub kind: Option<StoreKind>,
    pub filter: Option<Status>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub kind: StoreKind,
    pub seq: u64,
}

fn mac(key: &[u8; 32], payload: &[u8]) -> [u8; MAC_LEN] {
    let mut h = Sha256::new();
    h.update(key);
    h.update(payload);
    let d = h.finalize();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&d[..MAC_LEN]);
    out
}

pub fn encode(key: &[u8; 32], scope: &Scope, pos: Position) -> String {
    let mut p = Vec::with_capacity(PAYLOAD_LEN + MAC_LEN);
    p.push(VERSION);
    p.push(scope.kind.map_or(0, |k| k as u8));
    p.push(scope.filter.map_or(0xff, |s| s as u8));
    p.push(pos.kind as u8);
    p.extend_from_slice(&pos.seq.to_be_bytes());
    let m = mac(key, &p);
    p.extend_from_slice(&m);
    hex(&p)
}

pub fn decode(key: &[u8; 32], scope: &Scope, token: &str) -> Result<Position, CoreError> {
    let bad = || {
        CoreError::InvalidArgument("page_token: not a token this server issued (was it altered or truncated?)".into())
    };
    let raw = unhex(token).ok_or_else(bad)?;
    if raw.len() != PAYLOAD_LEN + MAC_LEN || raw[0] != VERSION {
        return Err(bad());
    }
    let (payload, m) = raw.split_at(PAYLOAD_LEN);
    if mac(key, payload) != m {
        return Err(bad());
    }
    let kind_scope = payload[1];
    let filter = payload[2];
    if kind_scope != scope.kind.map_or(0, |k| k as u8) || filter != scope.filter.map_or(0xff, |s| s as u8) {
        return Err(CoreError::InvalidArgument(
            "page_token: this token belongs to a listing with a different meta_store_type or status_filter".into(),
        ));
    }
    let kind = StoreKind::from_wire(payload[3] as i32).ok_or_else(bad)?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&payload[4..12]);
    Ok(Position { kind, seq: u64::from_be_bytes(seq) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn roundtrip_and_tamper() {
        let scope = Scope { kind: None, filter: Some(Status::Processing) };
        let pos = Position { kind: StoreKind::Upload, seq: 42 };
        let t = encode(&KEY, &scope, pos);
        assert_eq!(decode(&KEY, &scope, &t).unwrap(), pos);
        let mut bytes = t.into_bytes();
        bytes[10] = if bytes[10] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(decode(&KEY, &scope, &tampered).is_err());
        assert!(decode(&KEY, &scope, "garbage").is_err());
        assert!(decode(&[8; 32], &scope, &encode(&KEY, &scope, pos)).is_err());
    }

    #[test]
    fn bound_to_scope() {
        let a = Scope { kind: None, filter: None };
        let b = Scope { kind: Some(StoreKind::Plan), filter: None };
        let t = encode(&KEY, &a, Position { kind: StoreKind::Plan, seq: 1 });
        assert!(decode(&KEY, &b, &t).is_err());
    }
}
