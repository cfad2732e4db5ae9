//! The consistent-hash ring: where a key's replicas live.
//!
//! Each node owns `vnodes` positions (virtual node `i` of node `n` sits at the first 8 bytes,
//! big-endian, of SHA-256 of `"{n}-vnode-{i}"`). A key sits at the same hash of its tenant and
//! key together, so equal keys of different tenants land apart. Its replicas are the first
//! `rf` distinct nodes met walking clockwise from there. Placement is a pure function of the
//! layout: every node computes the same answer.

use sha2::{Digest, Sha256};

/// Virtual nodes per node unless the node says otherwise.
pub const DEFAULT_VNODES: u32 = 150;
/// Most virtual nodes one node may ask for.
pub const MAX_VNODES: u32 = 4096;

fn pos(bytes: &[u8]) -> u64 {
    let h = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b)
}

/// The ring position of a tenant's key.
pub fn key_position(tenant: &str, key: &str) -> u64 {
    let mut buf = Vec::with_capacity(tenant.len() + key.len() + 1);
    buf.extend_from_slice(tenant.as_bytes());
    // A separator no tenant id contains, so ("ab", "c") and ("a", "bc") differ.
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
    pos(&buf)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<(String, u32)>,
    /// (position, index into `nodes`), sorted; ties broken by node index.
    tokens: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring over `nodes` (id, virtual nodes), in any order: the result does not depend on it.
    pub fn new(nodes: &[(String, u32)]) -> Ring {
        let mut nodes: Vec<(String, u32)> = nodes.to_vec();
        nodes.sort();
        nodes.dedup_by(|a, b| a.0 == b.0);
        let mut tokens = Vec::with_capacity(nodes.iter().map(|n| n.1 as usize).sum());
        for (i, (id, vnodes)) in nodes.iter().enumerate() {
            for v in 0..(*vnodes).max(1) {
                tokens.push((pos(format!("{id}-vnode-{v}").as_bytes()), i));
            }
        }
        tokens.sort_unstable();
        Ring { nodes, tokens }
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, u32)> {
        self.nodes.iter().map(|(n, v)| (n.as_str(), *v))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node in the order met walking clockwise from `position`: the first `rf` are the
    /// replicas, the rest the fallbacks (in Dynamo's terms, the preference list).
    pub fn walk(&self, position: u64) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.nodes.len());
        if self.tokens.is_empty() {
            return out;
        }
        let start = self.tokens.partition_point(|t| t.0 < position);
        let mut seen = vec![false; self.nodes.len()];
        for k in 0..self.tokens.len() {
            let (_, n) = self.tokens[(start + k) % self.tokens.len()];
            if !seen[n] {
                seen[n] = true;
                out.push(&self.nodes[n].0);
                if out.len() == self.nodes.len() {
                    break;
                }
            }
        }
        out
    }

    /// The replicas of a tenant's key: at most `rf`, fewer when the ring has fewer nodes.
    pub fn replicas(&self, tenant: &str, key: &str, rf: usize) -> Vec<&str> {
        let mut w = self.walk(key_position(tenant, key));
        w.truncate(rf);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_ignores_node_order_and_spreads_keys() {
        let a = Ring::new(&[("n1".into(), 150), ("n2".into(), 150), ("n3".into(), 150)]);
        let b = Ring::new(&[("n3".into(), 150), ("n1".into(), 150), ("n2".into(), 150)]);
        assert_eq!(a, b);
        let mut first = std::collections::BTreeMap::<&str, usize>::new();
        for i in 0..3000 {
            let r = a.replicas("t", &format!("k{i}"), 3);
            assert_eq!(r.len(), 3);
            *first.entry(r[0]).or_default() += 1;
        }
        // 150 vnodes keep each node's share near a third.
        assert!(first.values().all(|&c| (800..1200).contains(&c)), "{first:?}");
        assert_ne!(key_position("ab", "c"), key_position("a", "bc"));
    }
}
