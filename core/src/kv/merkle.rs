//! Merkle trees for anti-entropy: how two replicas find the keys they disagree on without
//! sending a digest per key.
//!
//! The ring's hash space is cut into [`RANGES`] ranges, each the root of a tree over
//! [`SEGMENTS`] / [`RANGES`] segments (fan-out [`FANOUT`], two levels below the range). A key
//! lands in the segment its ring position's top bits name; a segment's hash covers its keys
//! in the order a replica stores them (tenant, key) with a digest of each key's versions, and
//! every inner node hashes its children. Two replicas that build the tree over the keys they
//! should share compare range roots first and go down only where hashes differ, so a pass
//! over replicas in sync costs [`RANGES`] hashes, and one key out of place costs a path of
//! hashes plus the digests of one segment's keys (as Cassandra's repair and Riak's active
//! anti-entropy do).
//!
//! The tree is built on demand from a scan (Cassandra's way) rather than kept up to date on
//! every write: no write pays for it, and a pass costs one scan of the node's keys.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::codec::{Decoder, Encoder};
use crate::store::StoreError;

/// Ranges of the hash space, each the root of its own tree.
pub const RANGES: usize = 16;
/// Children per inner node.
pub const FANOUT: usize = 16;
/// Leaves of all the trees together.
pub const SEGMENTS: usize = RANGES * FANOUT * FANOUT;
/// Levels, from the range roots (1) down to the segments ([`LEAF_LEVEL`]).
pub const LEAF_LEVEL: u8 = 3;

/// One node's hash (the first 16 bytes of SHA-256).
pub type Hash = [u8; 16];

/// The segment a key at ring position `position` lands in.
pub fn segment_of(position: u64) -> usize {
    (position >> (64 - SEGMENTS.trailing_zeros())) as usize
}

/// How many nodes a level has.
pub fn level_width(level: u8) -> usize {
    RANGES * FANOUT.pow(u32::from(level.saturating_sub(1)))
}

/// Collects keys in (tenant, key) order and builds the tree.
pub struct TreeBuilder {
    /// Only the segments that have keys (most are empty on a small node).
    segments: BTreeMap<usize, Sha256>,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeBuilder {
    pub fn new() -> TreeBuilder {
        TreeBuilder { segments: BTreeMap::new() }
    }

    /// Adds one key at ring position `position` whose versions digest to `digest`. Keys must
    /// come in the order the replica stores them, so equal sets hash equal.
    pub fn add(&mut self, position: u64, tenant: &str, key: &str, digest: &[u8]) {
        let h = self.segments.entry(segment_of(position)).or_default();
        for part in [tenant.as_bytes(), key.as_bytes(), digest] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
    }

    pub fn finish(self) -> MerkleTree {
        let mut leaves = vec![Hash::default(); SEGMENTS];
        for (i, h) in self.segments {
            leaves[i] = truncate(h.finalize());
        }
        let mut levels = vec![leaves];
        while levels[0].len() > RANGES {
            let parents = levels[0].chunks(FANOUT).map(hash_children).collect();
            levels.insert(0, parents);
        }
        MerkleTree { levels }
    }
}

fn truncate(full: impl AsRef<[u8]>) -> Hash {
    let mut h = Hash::default();
    h.copy_from_slice(&full.as_ref()[..16]);
    h
}

/// An inner node: all zero when every child is (no keys below), so empty subtrees compare
/// equal cheaply and read plainly in a dump.
fn hash_children(children: &[Hash]) -> Hash {
    if children.iter().all(|c| *c == Hash::default()) {
        return Hash::default();
    }
    let mut h = Sha256::new();
    for c in children {
        h.update(c);
    }
    truncate(h.finalize())
}

/// A built tree: `levels[0]` holds the range roots, the last level the segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// The hashes of nodes `indices` on `level` (1 = range roots); `None` for a level or
    /// index out of bounds.
    pub fn hashes(&self, level: u8, indices: &[u32]) -> Option<Vec<Hash>> {
        let nodes = self.levels.get(usize::from(level).checked_sub(1)?)?;
        indices.iter().map(|&i| nodes.get(i as usize).copied()).collect()
    }

    /// The indices among `indices` on `level` whose hash differs from `theirs` (in the same
    /// order).
    pub fn differing(&self, level: u8, indices: &[u32], theirs: &[Hash]) -> Vec<u32> {
        let Some(mine) = self.hashes(level, indices) else { return indices.to_vec() };
        indices.iter().zip(mine.iter().zip(theirs)).filter(|(_, (a, b))| a != b).map(|(i, _)| *i).collect()
    }
}

/// The children, on the next level down, of nodes `indices`.
pub fn children(indices: &[u32]) -> Vec<u32> {
    indices.iter().flat_map(|&i| (i * FANOUT as u32)..((i + 1) * FANOUT as u32)).collect()
}

/// What one replica asks another about the tree the other builds over the keys they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeQuery {
    /// The hashes of nodes `indices` on `level`. Level 1 (the range roots) builds the tree
    /// afresh; deeper levels use the one built then.
    Hashes { level: u8, indices: Vec<u32> },
    /// The keys (tenant, key, digest of versions) in these segments (ascending), whole
    /// segments from the first until about [`MAX_TREE_KEY_BYTES`] (at least one segment).
    Keys { segments: Vec<u32> },
}

/// The answer to a [`TreeQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeAnswer {
    Hashes(Vec<Hash>),
    /// `covered` is how many of the asked segments these keys cover in full.
    Keys {
        covered: u32,
        items: Vec<(String, String, Vec<u8>)>,
    },
}

/// Bytes of keys one [`TreeQuery::Keys`] answer carries at most, unless its first segment
/// alone holds more.
pub const MAX_TREE_KEY_BYTES: usize = 2 << 20;
/// Bytes one key takes in a [`TreeAnswer::Keys`] (for [`MAX_TREE_KEY_BYTES`]).
pub fn key_bytes(tenant: &str, key: &str, digest: &[u8]) -> usize {
    12 + tenant.len() + key.len() + digest.len()
}
/// Most nodes or segments one query may name.
pub const MAX_TREE_INDICES: usize = SEGMENTS;

const WHAT: &str = "anti-entropy tree message";

impl TreeQuery {
    pub fn encode(&self) -> Vec<u8> {
        let (e, indices) = match self {
            TreeQuery::Hashes { level, indices } => (Encoder::new().u8(1).u8(*level), indices),
            TreeQuery::Keys { segments } => (Encoder::new().u8(2), segments),
        };
        indices.iter().fold(e.u64(indices.len() as u64), |e, i| e.u64(u64::from(*i))).finish()
    }

    /// Decodes and checks a query: levels, indices and counts in bounds.
    pub fn decode(buf: &[u8]) -> Result<TreeQuery, StoreError> {
        let mut d = Decoder::new(WHAT, buf);
        let tag = d.u8()?;
        let level = if tag == 1 { d.u8()? } else { LEAF_LEVEL };
        let n = d.u64()?;
        if tag == 0 || tag > 2 || level == 0 || level > LEAF_LEVEL || n > MAX_TREE_INDICES as u64 {
            return Err(StoreError::Corrupt {
                keyspace: WHAT,
                reason: format!("bad query (tag {tag}, level {level}, {n} indices)"),
            });
        }
        let width = level_width(level) as u64;
        let mut indices = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let i = d.u64()?;
            if i >= width {
                return Err(StoreError::Corrupt {
                    keyspace: WHAT,
                    reason: format!("node {i} of level {level}, which has {width}"),
                });
            }
            indices.push(i as u32);
        }
        d.end()?;
        Ok(match tag {
            1 => TreeQuery::Hashes { level, indices },
            _ => TreeQuery::Keys { segments: indices },
        })
    }
}

impl TreeAnswer {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TreeAnswer::Hashes(hs) => {
                hs.iter().fold(Encoder::new().u8(1).u64(hs.len() as u64), |e, h| e.bytes(h)).finish()
            }
            TreeAnswer::Keys { covered, items } => items
                .iter()
                .fold(Encoder::new().u8(2).u64(u64::from(*covered)).u64(items.len() as u64), |e, (t, k, d)| {
                    e.str(t).str(k).bytes(d)
                })
                .finish(),
        }
    }

    pub fn decode(buf: &[u8]) -> Result<TreeAnswer, StoreError> {
        let mut d = Decoder::new(WHAT, buf);
        let out = match d.u8()? {
            1 => {
                let n = d.u64()?;
                let mut hs = Vec::with_capacity(n.min(SEGMENTS as u64) as usize);
                for _ in 0..n {
                    let b = d.bytes()?;
                    let h: Hash = b.try_into().map_err(|_| StoreError::Corrupt {
                        keyspace: WHAT,
                        reason: "hash of the wrong length".into(),
                    })?;
                    hs.push(h);
                }
                TreeAnswer::Hashes(hs)
            }
            2 => {
                let covered = u32::try_from(d.u64()?)
                    .map_err(|_| StoreError::Corrupt { keyspace: WHAT, reason: "covered count out of range".into() })?;
                let n = d.u64()?;
                let mut items = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    items.push((d.string()?, d.string()?, d.bytes()?.to_vec()));
                }
                TreeAnswer::Keys { covered, items }
            }
            t => return Err(StoreError::Corrupt { keyspace: WHAT, reason: format!("unknown answer tag {t}") }),
        };
        d.end()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::ring::key_position;

    fn build(keys: &[(&str, &str, &[u8])]) -> MerkleTree {
        let mut b = TreeBuilder::new();
        for (t, k, d) in keys {
            b.add(key_position(t, k), t, k, d);
        }
        b.finish()
    }

    fn all(level: u8) -> Vec<u32> {
        (0..level_width(level) as u32).collect()
    }

    #[test]
    fn equal_sets_have_equal_trees_and_one_change_differs_along_one_path() {
        let keys: Vec<(String, String)> = (0..2000).map(|i| ("t".to_owned(), format!("k{i}"))).collect();
        let with = |changed: Option<usize>| {
            let v: Vec<(&str, &str, &[u8])> = keys
                .iter()
                .enumerate()
                .map(|(i, (t, k))| (t.as_str(), k.as_str(), if Some(i) == changed { &b"new"[..] } else { &b"old"[..] }))
                .collect();
            build(&v)
        };
        let (a, b) = (with(None), with(Some(7)));
        assert_eq!(a, with(None));
        let roots = a.hashes(1, &all(1)).unwrap();
        let ranges = b.differing(1, &all(1), &roots);
        assert_eq!(ranges.len(), 1);
        let mid = children(&ranges);
        let inner = b.differing(2, &mid, &a.hashes(2, &mid).unwrap());
        assert_eq!(inner.len(), 1);
        let segs = children(&inner);
        let leaves = b.differing(3, &segs, &a.hashes(3, &segs).unwrap());
        assert_eq!(leaves, vec![segment_of(key_position("t", "k7")) as u32]);
    }

    #[test]
    fn a_missing_key_differs_and_empty_subtrees_are_zero() {
        let a = build(&[("t", "a", b"d"), ("t", "b", b"d")]);
        let b = build(&[("t", "a", b"d")]);
        let diff = b.differing(1, &all(1), &a.hashes(1, &all(1)).unwrap());
        assert_eq!(diff, vec![(segment_of(key_position("t", "b")) / (FANOUT * FANOUT)) as u32]);
        let empty = TreeBuilder::new().finish();
        assert!(empty.hashes(1, &all(1)).unwrap().iter().all(|h| *h == Hash::default()));
        assert_eq!(empty.hashes(4, &[0]), None);
        assert_eq!(empty.hashes(1, &[RANGES as u32]), None);
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        for q in [TreeQuery::Hashes { level: 2, indices: vec![0, 255] }, TreeQuery::Keys { segments: vec![4095] }] {
            assert_eq!(TreeQuery::decode(&q.encode()).unwrap(), q);
        }
        for a in [
            TreeAnswer::Hashes(vec![[7; 16]]),
            TreeAnswer::Keys { covered: 2, items: vec![("t".into(), "k".into(), vec![1, 2])] },
        ] {
            assert_eq!(TreeAnswer::decode(&a.encode()).unwrap(), a);
        }
        assert!(TreeQuery::decode(&TreeQuery::Hashes { level: 1, indices: vec![16] }.encode()).is_err());
        assert!(TreeQuery::decode(&TreeQuery::Hashes { level: 4, indices: vec![] }.encode()).is_err());
        assert!(TreeQuery::decode(&TreeQuery::Keys { segments: vec![SEGMENTS as u32] }.encode()).is_err());
        assert!(TreeQuery::decode(&[9]).is_err());
        assert!(TreeAnswer::decode(&[1, 0]).is_err());
    }
}
