//! Vector clocks and the sibling sets they decide.
//!
//! A clock holds one counter per coordinating node. A version whose clock another version's
//! clock dominates is superseded and dropped; versions whose clocks are concurrent are kept
//! side by side as siblings until a write that has seen them all supersedes them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::codec::{Decoder, Encoder};
use crate::store::StoreError;

/// Largest counter accepted from a peer.
pub const MAX_COUNTER: u64 = 1 << 62;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VClock(pub BTreeMap<String, u64>);

/// How two clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causal {
    Equal,
    Before,
    After,
    Concurrent,
}

impl VClock {
    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    pub fn compare(&self, other: &VClock) -> Causal {
        let (mut less, mut greater) = (false, false);
        for node in self.0.keys().chain(other.0.keys()) {
            match self.get(node).cmp(&other.get(node)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Causal::Equal,
            (true, false) => Causal::Before,
            (false, true) => Causal::After,
            (true, true) => Causal::Concurrent,
        }
    }

    /// The least clock that has seen both.
    pub fn merge(&mut self, other: &VClock) {
        for (n, c) in &other.0 {
            let e = self.0.entry(n.clone()).or_default();
            *e = (*e).max(*c);
        }
    }

    /// Whether every counter is in the range real clocks reach (so a new counter cannot saturate);
    /// versions from peers with anything else are refused.
    pub fn is_sane(&self) -> bool {
        self.0.values().all(|c| *c < MAX_COUNTER) && self.0.keys().all(|n| !n.is_empty() && n.len() <= 128)
    }

    /// Bytes [`VClock::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        8 + self.0.keys().map(|n| 4 + n.len() + 8).sum::<usize>()
    }

    pub fn encode(&self, mut e: Encoder) -> Encoder {
        e = e.u64(self.0.len() as u64);
        for (n, c) in &self.0 {
            e = e.str(n).u64(*c);
        }
        e
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<VClock, StoreError> {
        let n = d.u64()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let node = d.string()?;
            m.insert(node, d.u64()?);
        }
        Ok(VClock(m))
    }
}

/// One version of a key: its clock, the coordinator's wall time, and its value (`None` is a
/// delete's tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub clock: VClock,
    pub ts_ms: u64,
    pub value: Option<Vec<u8>>,
}

impl Version {
    /// Bytes [`Version::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.clock.encoded_len() + 8 + 1 + self.value.as_ref().map_or(0, |v| 4 + v.len())
    }

    pub fn encode(&self, e: Encoder) -> Encoder {
        let e = self.clock.encode(e).u64(self.ts_ms);
        match &self.value {
            Some(v) => e.u8(1).bytes(v),
            None => e.u8(0),
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<Version, StoreError> {
        let clock = VClock::decode(d)?;
        let ts_ms = d.u64()?;
        let value = match d.u8()? {
            0 => None,
            _ => Some(d.bytes()?.to_vec()),
        };
        Ok(Version { clock, ts_ms, value })
    }

    /// The deterministic order that picks a winner among siblings: later wall time, then a
    /// value over a tombstone, then the greater bytes, then the greater clock.
    fn rank(&self) -> (u64, Option<&[u8]>, &VClock) {
        (self.ts_ms, self.value.as_deref(), &self.clock)
    }
}

/// Merges `incoming` into `current`: drops every version some other version dominates and
/// keeps one copy of equal clocks. The result is sorted by clock, so it is the same whatever
/// order versions arrive in.
pub fn reconcile(current: &[Version], incoming: &[Version]) -> Vec<Version> {
    let all: Vec<&Version> = current.iter().chain(incoming).collect();
    let mut out: Vec<Version> = Vec::new();
    for (i, v) in all.iter().enumerate() {
        let superseded = all.iter().enumerate().any(|(j, w)| match v.clock.compare(&w.clock) {
            Causal::Before => true,
            // Equal clocks should be one write; if a crash let a node reuse a clock for other
            // content, every replica keeps the same copy (the higher rank), so they converge.
            Causal::Equal => (w.rank(), j) > (v.rank(), i),
            _ => false,
        });
        if !superseded {
            out.push((*v).clone());
        }
    }
    out.sort_by(|a, b| a.clock.cmp(&b.clock));
    out
}

/// The version a reader is shown among siblings.
pub fn winner(versions: &[Version]) -> Option<&Version> {
    versions.iter().max_by(|a, b| a.rank().cmp(&b.rank()))
}

/// Whether a key with these versions holds a value (not only deletes): a live key.
pub fn holds_value(versions: &[Version]) -> bool {
    versions.iter().any(|v| v.value.is_some())
}

/// Whether a tombstone stands among `versions` (alone or beside values).
pub fn holds_delete(versions: &[Version]) -> bool {
    versions.iter().any(|v| v.value.is_none())
}

/// The value a reader is shown: the winner among the versions that hold one. A delete
/// hides a key only when every sibling is a delete; one concurrent with a write (across a
/// partition, say) stands beside it as a sibling rather than hiding it.
pub fn live_winner(versions: &[Version]) -> Option<&Version> {
    versions.iter().filter(|v| v.value.is_some()).max_by(|a, b| a.rank().cmp(&b.rank()))
}

/// The clock a new write supersedes: everything the given versions have seen.
pub fn context(versions: &[Version]) -> VClock {
    let mut c = VClock::default();
    for v in versions {
        c.merge(&v.clock);
    }
    c
}

/// Bytes [`encode_versions`] writes.
pub fn versions_len(versions: &[Version]) -> usize {
    8 + versions.iter().map(Version::encoded_len).sum::<usize>()
}

pub fn encode_versions(versions: &[Version]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(versions_len(versions)).u64(versions.len() as u64);
    for v in versions {
        e = v.encode(e);
    }
    e.finish()
}

pub fn decode_versions(keyspace: &'static str, buf: &[u8]) -> Result<Vec<Version>, StoreError> {
    let mut d = Decoder::new(keyspace, buf);
    let n = d.u64()?;
    let mut out = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        out.push(Version::decode(&mut d)?);
    }
    d.end()?;
    Ok(out)
}

/// A short fingerprint of a reconciled version set (its encoding is canonical: sorted by
/// clock), for anti-entropy to find keys whose replicas differ without shipping values.
pub fn digest(versions: &[Version]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(encode_versions(versions))[..16].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(node: &str, ts_ms: u64, value: Option<&[u8]>) -> Version {
        Version { clock: VClock([(node.to_owned(), 1)].into()), ts_ms, value: value.map(<[u8]>::to_vec) }
    }

    #[test]
    fn encoded_lengths_are_exact() {
        let mut clock = VClock([("n1".to_owned(), 7), ("node-two".to_owned(), 1 << 40)].into());
        let vs = vec![
            Version { clock: clock.clone(), ts_ms: 3, value: Some(vec![9; 300]) },
            version("a", 5, None),
            Version { clock: VClock::default(), ts_ms: 0, value: Some(Vec::new()) },
        ];
        assert_eq!(versions_len(&vs), encode_versions(&vs).len());
        assert_eq!(versions_len(&[]), encode_versions(&[]).len());
        for v in &vs {
            assert_eq!(v.encoded_len(), v.encode(Encoder::new()).finish().len());
        }
        clock.0.clear();
        assert_eq!(clock.encoded_len(), clock.encode(Encoder::new()).finish().len());
    }

    #[test]
    fn a_delete_concurrent_with_a_write_does_not_hide_it() {
        let delete = version("a", 5, None);
        let write = version("b", 3, Some(b"x"));
        let both = reconcile(std::slice::from_ref(&delete), std::slice::from_ref(&write));
        assert_eq!(both.len(), 2, "concurrent: siblings");
        // The later delete wins the rank, but a reader is shown the write beside it.
        assert_eq!(winner(&both), Some(&delete));
        assert_eq!(live_winner(&both), Some(&write));
        assert_eq!(live_winner(&[delete.clone(), version("c", 9, None)]), None);
        assert_eq!(live_winner(&[]), None);
    }
}
