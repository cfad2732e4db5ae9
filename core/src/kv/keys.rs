//! Key layout of the `kv` keyspace.
//!
//! ```text
//! v <tenant> 0 <key>            -> versions (siblings) of a key
//! t <tenant>                    -> tenant record
//! i <tenant> 0 <idem key>       -> idempotency record (and its write's key)
//! e <at:u64> <i-key or v-key>  -> ()   (records by expiry, tombstones by end of grace)
//! a <v-key>                     -> when its versions were last stored holding a tombstone
//! w <since:u64> <v-key>         -> ()   (spent tombstones waiting for anti-entropy)
//! h <target> 0 <seq:u64>        -> hint for a replica that did not answer
//! #keys, #hints, #hbytes, #hseq -> counters
//! #mint                         -> ceiling of the clock counters this node may hand out
//! #fence, #placed               -> layout versions (see below)
//! ```

fn part(k: &mut Vec<u8>, s: &str) {
    k.extend_from_slice(s.as_bytes());
    k.push(0);
}

pub const VALUE_PREFIX: &[u8] = b"v";

/// (tenant, key) of a value key.
pub fn split_value(k: &[u8]) -> Option<(String, String)> {
    split(k, VALUE_PREFIX)
}

/// (tenant, idempotency key) of a record's key.
pub fn split_idempotency(k: &[u8]) -> Option<(String, String)> {
    split(k, IDEM_PREFIX)
}

fn split(k: &[u8], prefix: &[u8]) -> Option<(String, String)> {
    let rest = k.strip_prefix(prefix)?;
    let cut = rest.iter().position(|b| *b == 0)?;
    let tenant = std::str::from_utf8(&rest[..cut]).ok()?;
    let key = std::str::from_utf8(&rest[cut + 1..]).ok()?;
    Some((tenant.to_owned(), key.to_owned()))
}

pub fn value(tenant: &str, key: &str) -> Vec<u8> {
    let mut k = vec![b'v'];
    part(&mut k, tenant);
    k.extend_from_slice(key.as_bytes());
    k
}

pub const IDEM_PREFIX: &[u8] = b"i";

pub fn idempotency(tenant: &str, key: &str) -> Vec<u8> {
    let mut k = IDEM_PREFIX.to_vec();
    part(&mut k, tenant);
    k.extend_from_slice(key.as_bytes());
    k
}

pub use crate::expiry_keys::{EXPIRY_PREFIX, expiry, expiry_at, record_key};

/// `a <v-key>`: when the key's versions were last stored while a tombstone stood among
/// them. A spent tombstone goes only once anti-entropy has compared this node with every
/// other since then (see `KvRequest::Repaired`): then every replica holds it, or nothing it
/// deleted, whatever hints and reads missed.
pub fn tombstone_since(vkey: &[u8]) -> Vec<u8> {
    let mut k = b"a".to_vec();
    k.extend_from_slice(vkey);
    k
}

pub const WAITING_PREFIX: &[u8] = b"w";

/// `w <since:u64> <v-key>`: a key whose spent tombstones wait for an anti-entropy pass with
/// every other node that began after `since`, in the order the sweep takes them.
pub fn waiting(since: u64, vkey: &[u8]) -> Vec<u8> {
    let mut k = WAITING_PREFIX.to_vec();
    k.extend_from_slice(&since.to_be_bytes());
    k.extend_from_slice(vkey);
    k
}

/// (since, v-key) of a waiting key.
pub fn split_waiting(key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = key.strip_prefix(WAITING_PREFIX)?;
    let (since, vkey) = rest.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*since), vkey))
}

pub const HINT_PREFIX: &[u8] = b"h";

pub fn hints(target: &str) -> Vec<u8> {
    let mut k = HINT_PREFIX.to_vec();
    part(&mut k, target);
    k
}

pub fn hint(target: &str, seq: u64) -> Vec<u8> {
    let mut k = hints(target);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// (target, seq) of a hint key.
pub fn hint_seq(key: &[u8]) -> Option<(&[u8], u64)> {
    let rest = key.strip_prefix(HINT_PREFIX)?;
    let (seq, head) = rest.split_last_chunk::<8>().map(|(h, s)| (u64::from_be_bytes(*s), h))?;
    Some((head.strip_suffix(&[0])?, seq))
}

/// Live keys held (a key whose versions are all deletes is not counted). Before the count
/// left tombstones out it counted every key: a data directory from then counts a key deleted
/// back then until it is written again.
pub const KEY_COUNT: &[u8] = b"#keys";
pub const HINT_COUNT: &[u8] = b"#hints";
/// The bytes the hints held take (their stored bodies).
pub const HINT_BYTES: &[u8] = b"#hbytes";
pub const HINT_SEQ: &[u8] = b"#hseq";
/// The clock counters this node hands out stay below this stored ceiling; after a restart
/// it starts from it, so no counter is handed out twice.
pub const MINT_CEILING: &[u8] = b"#mint";
/// The newest layout version this node handed keys over by: after a restart it refuses
/// requests placed by an older one, even before it follows that layout again.
pub const FENCE_FLOOR: &[u8] = b"#fence";
/// The newest layout version a write stored here was placed by: copies found stale by an
/// older layout are not removed any more (see `KvRequest::Discard`).
pub const PLACED: &[u8] = b"#placed";
