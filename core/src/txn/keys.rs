//! Key layout of the transactional state store inside the `state` keyspace.
//!
//! Names are length-prefixed so that one agent's keys never share a prefix with another's.
//!
//! ```text
//! t                                   -> u64 last commit_ts
//! l <ns> <agent> <key>                -> latest record of a key (tombstones included)
//! h <ns> <agent> <key:len> <version>  -> every version of a key, for time travel
//! e <ns> <agent> <commit_ts>          -> that transaction's operations on this agent (replay)
//! g <commit_ts>                       -> txn id and the agents it touched (the global log)
//! ```

pub const LAST_TS: &[u8] = b"t";

fn name(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Prefix of every latest record of one agent.
pub fn latest_prefix(ns: &str, agent: &str) -> Vec<u8> {
    let mut k = vec![b'l'];
    name(&mut k, ns);
    name(&mut k, agent);
    k
}

pub fn latest(ns: &str, agent: &str, key: &str) -> Vec<u8> {
    let mut k = latest_prefix(ns, agent);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn history(ns: &str, agent: &str, key: &str, version: u64) -> Vec<u8> {
    let mut k = vec![b'h'];
    name(&mut k, ns);
    name(&mut k, agent);
    name(&mut k, key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub fn event_prefix(ns: &str, agent: &str) -> Vec<u8> {
    let mut k = vec![b'e'];
    name(&mut k, ns);
    name(&mut k, agent);
    k
}

pub fn event(ns: &str, agent: &str, ts: u64) -> Vec<u8> {
    let mut k = event_prefix(ns, agent);
    k.extend_from_slice(&ts.to_be_bytes());
    k
}

pub fn global(ts: u64) -> Vec<u8> {
    let mut k = vec![b'g'];
    k.extend_from_slice(&ts.to_be_bytes());
    k
}

/// The commit_ts at the end of an event key.
pub fn ts_suffix(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}
