//! Removing stale copies: once a layout change has finished, a node that lost keys to new
//! owners (a node added, a replication factor lowered) still holds its copies of them. Read
//! and write no longer reach those copies, but they fill its disk and its key count, and a
//! node added to relieve the others would relieve none. As Riak drops a partition after its
//! handoff (Cassandra needs `nodetool cleanup`), each node removes them itself, once per
//! settled layout, after a grace that lets the coordinators still serving by the change's
//! layout move on (they read the old owners, which refuse them once they follow).
//!
//! Why no acknowledged write is lost: the layout is settled only after every old owner has
//! handed each key it held to the owners it gained, so every key written at W before or
//! during the change is held by W of its new owners. What this node still holds of keys it
//! does not replicate adds nothing to that. A copy goes only if it is unchanged since it was
//! looked at, and none goes once the replica recorded a write placed by a newer layout, which
//! may make this node an owner again (`KvRequest::Discard`, `ViewCell::to_record`).

use tessera_core::kv::{KvRequest, KvResponse};
use tessera_core::{CoreError, CoreResult};

use super::{KvCoordinator, PEER_TIMEOUT_MS, Peers, lock};

/// Keys looked at per page of the scan.
const PAGE: usize = 256;

/// Which settled layout this node last saw, since when, and whether its stale copies are gone.
#[derive(Debug, Default)]
pub(super) struct CleanUp {
    version: u64,
    since_ms: u64,
    done: bool,
}

impl<P: Peers> KvCoordinator<P> {
    /// Removes this node's copies of the keys it does not replicate under the settled layout
    /// it serves by, once per layout and after the hand-over grace. Returns how many went when
    /// this pass went through, `None` when there was nothing to do yet (or any more). A pass
    /// that fails or sees the layout move on stops; the next one starts over, as does the next
    /// after a pass that kept copies changed since its scan.
    pub async fn clean_up_pass(&self) -> CoreResult<Option<u64>> {
        let me = self.peers.me().to_owned();
        let placement = self.peers.placement();
        let version = placement.version;
        // A node removed from the ring keeps what it held: it may be the last copy of writes
        // a forced removal gave up on, for an operator to recover. A cluster whose layout
        // never changed scans nothing: only a change makes copies stale (except a factor
        // lowered in place by a binary from before factor migrations, whose copies stay until
        // the next change).
        if !placement.settled() || version <= 1 || !self.peers.members().contains(&me) {
            return Ok(None);
        }
        let now = self.peers.now_ms();
        {
            let mut c = lock(&self.clean_up);
            if c.version != version {
                *c = CleanUp { version, since_ms: now, done: false };
            }
            if c.done || now < c.since_ms.saturating_add(self.hand_over_grace_ms) {
                return Ok(None);
            }
        }
        let until = || self.peers.now_ms() + PEER_TIMEOUT_MS;
        let (mut after, mut gone, mut kept_some) = (None, 0, false);
        loop {
            let ask = |after| KvRequest::Digests { after, limit: PAGE };
            let page = self
                .own_page(&mut after, ask, |r| match r {
                    KvResponse::Digests(d) => Some(d),
                    _ => None,
                })
                .await?;
            if page.is_empty() {
                break;
            }
            let mut stale = Vec::new();
            for (tenant, key, digest) in page {
                let t = self.tenant_as_of(&tenant, until(), version).await?;
                if t.rf_version > version {
                    // Its factor moved by a layout this node does not serve by yet.
                    return Ok(None);
                }
                // Settled: the current ring alone places the key.
                if !placement.current.replicas(&tenant, &key, t.replication_factor as usize).contains(&me.as_str()) {
                    stale.push((tenant, key, digest));
                }
            }
            if self.peers.placement().version != version {
                return Ok(None);
            }
            if stale.is_empty() {
                continue;
            }
            let sent = stale.len() as u64;
            let req = KvRequest::Discard { layout: version, keys: stale };
            match self.peers.send_at(&me, req, version, PEER_TIMEOUT_MS).await {
                Ok(Ok(KvResponse::Discarded(n))) => {
                    gone += n;
                    // A copy that changed since the scan stays; the next pass looks again.
                    kept_some |= n < sent;
                }
                // Refused: the node serves by a newer layout, or took a write placed by one.
                Ok(Err(e @ (CoreError::Unavailable(_) | CoreError::FailedPrecondition(_)))) => {
                    tracing::debug!(error = %e, "stale copies kept");
                    return Ok(None);
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(other)) => {
                    return Err(CoreError::Unavailable(format!("unexpected answer to a discard: {other:?}")));
                }
                Err(e) => return Err(CoreError::Unavailable(format!("this node's replica: {}", e.0))),
            }
        }
        let mut c = lock(&self.clean_up);
        if c.version != version {
            return Ok(None);
        }
        c.done = !kept_some;
        Ok(Some(gone))
    }
}
