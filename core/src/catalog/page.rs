//! Page tokens for catalog listings: the name of the last item served, bound to the tenant
//! and query they were issued for and signed, so a token cannot be altered or replayed
//! against another listing. Names never repeat within a listing's parent, so the next page
//! starts strictly after the cursor: items created or deleted between pages never make an
//! existing item appear twice or vanish.

use sha2::{Digest, Sha256};

use crate::codec::{hex, unhex};
use crate::error::CoreError;

const VERSION: u8 = 1;
const SCOPE_LEN: usize = 8;
const MAC_LEN: usize = 12;

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// A short fingerprint of the tenant and query.
pub fn scope(tenant: &str, query: &str) -> [u8; SCOPE_LEN] {
    let d = digest(&[tenant.as_bytes(), query.as_bytes()]);
    let mut s = [0u8; SCOPE_LEN];
    s.copy_from_slice(&d[..SCOPE_LEN]);
    s
}

pub fn encode(key: &[u8; 32], scope: [u8; SCOPE_LEN], cursor: &[u8]) -> String {
    let mut p = vec![VERSION];
    p.extend_from_slice(&scope);
    p.extend_from_slice(cursor);
    let mac = digest(&[key, &p]);
    p.extend_from_slice(&mac[..MAC_LEN]);
    hex(&p)
}

pub fn decode(key: &[u8; 32], scope: [u8; SCOPE_LEN], token: &str) -> Result<Vec<u8>, CoreError> {
    let bad =
        || CoreError::InvalidArgument("page_token: not a token this server issued (altered or truncated?)".into());
    let raw = unhex(token).ok_or_else(bad)?;
    if raw.len() < 1 + SCOPE_LEN + MAC_LEN || raw[0] != VERSION {
        return Err(bad());
    }
    let (payload, mac) = raw.split_at(raw.len() - MAC_LEN);
    if digest(&[key, payload])[..MAC_LEN] != *mac {
        return Err(bad());
    }
    if payload[1..1 + SCOPE_LEN] != scope {
        return Err(CoreError::InvalidArgument(
            "page_token: this token belongs to another listing (different tenant, parent or filters)".into(),
        ));
    }
    Ok(payload[1 + SCOPE_LEN..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_scopes_and_edits() {
        let key = [7u8; 32];
        let s = scope("t1", "tables ns1");
        let t = encode(&key, s, b"orders");
        assert_eq!(decode(&key, s, &t).unwrap(), b"orders");
        assert!(decode(&key, scope("t2", "tables ns1"), &t).is_err());
        assert!(decode(&key, scope("t1", "tables ns2"), &t).is_err());
        let mut edited = t.clone().into_bytes();
        edited[20] = if edited[20] == b'0' { b'1' } else { b'0' };
        assert!(decode(&key, s, &String::from_utf8(edited).unwrap()).is_err());
        assert!(decode(&[8u8; 32], s, &t).is_err());
    }
}
