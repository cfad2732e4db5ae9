//! `tessera.peer.v1.PeerService`: other nodes' calls to this node's key-value replica, and
//! the metadata group's Raft messages.

use std::sync::Arc;

use tessera_core::ids::validate_addr;
use tessera_core::kv::merkle::TreeQuery;
use tessera_core::kv::{KvRequest, wire};
use tessera_core::meta::MetaRequest;
use tessera_proto::tessera::peer::v1 as peer;
use tessera_proto::tessera::peer::v1::peer_service_server::PeerService;
use tonic::{Request, Response, Status};

use super::errors::{driver_status, to_status};
use crate::cluster::{Cluster, MetaHandle};
use crate::cluster_id::ClusterId;
use crate::kv_coordinator::KvCoordinator;

#[derive(Clone)]
pub struct Peer {
    meta: MetaHandle,
    /// This node's replica, behind the layout fence.
    cluster: Arc<Cluster>,
    /// This node's coordinator, which answers anti-entropy questions.
    coordinator: Arc<KvCoordinator<Cluster>>,
    /// Checked on every call (see `cluster_id`).
    cluster_id: Arc<ClusterId>,
}

impl Peer {
    pub fn new(
        meta: MetaHandle,
        cluster: Arc<Cluster>,
        coordinator: Arc<KvCoordinator<Cluster>>,
        cluster_id: Arc<ClusterId>,
    ) -> Self {
        Self { meta, cluster, coordinator, cluster_id }
    }

    /// The replica's encoded answer to one request placed by layout version `layout`.
    async fn serve(cluster: Arc<Cluster>, req: KvRequest, layout: u64) -> Result<Vec<u8>, Status> {
        let out = cluster.serve_local(req, layout).await.map_err(driver_status)?;
        Ok(wire::encode_reply(&out))
    }
}

/// A peer's request to this node's replica; those only the node itself sends are refused.
fn decode(from: &str, body: &[u8]) -> Result<KvRequest, Status> {
    let kv = wire::decode_request(body)
        .map_err(|e| Status::invalid_argument(format!("peer request from {}: {e}", tessera_core::ids::shown(from))))?;
    if kv.local_only() {
        return Err(Status::invalid_argument(format!(
            "peer request from {}: {} is for a node's own replica only",
            tessera_core::ids::shown(from),
            kv.kind()
        )));
    }
    Ok(kv)
}

#[tonic::async_trait]
impl PeerService for Peer {
    async fn call(&self, req: Request<peer::PeerRequest>) -> Result<Response<peer::PeerReply>, Status> {
        self.cluster_id.check(&req, false)?;
        let r = req.into_inner();
        let kv = decode(&r.from, &r.body)?;
        let stats = matches!(kv, KvRequest::Stats);
        let body = Self::serve(self.cluster.clone(), kv, r.layout).await?;
        let mut reply = peer::PeerReply { body, disk_usage_percent: 0.0 };
        if stats {
            reply.disk_usage_percent = Cluster::disk_usage_percent(self.cluster.data_dir()).unwrap_or(0.0);
        }
        Ok(Response::new(reply))
    }

    async fn call_batch(&self, req: Request<peer::PeerBatch>) -> Result<Response<peer::PeerBatchReply>, Status> {
        self.cluster_id.check(&req, false)?;
        let r = req.into_inner();
        if r.bodies.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} requests in one batch, at most {MAX_BATCH}",
                r.bodies.len()
            )));
        }
        if r.layouts.len() != r.bodies.len() {
            return Err(Status::invalid_argument(format!(
                "{} layout versions for {} requests; one each",
                r.layouts.len(),
                r.bodies.len()
            )));
        }
        let mut reqs = Vec::with_capacity(r.bodies.len());
        for (body, layout) in r.bodies.into_iter().zip(r.layouts) {
            reqs.push((decode(&r.from, &body)?, layout));
        }
        // The whole batch goes to the driver at once, so it shares one group commit.
        let answers = self.cluster.serve_local_many(reqs).await.map_err(driver_status)?;
        Ok(Response::new(peer::PeerBatchReply { bodies: answers.iter().map(wire::encode_reply).collect() }))
    }

    async fn tree(&self, req: Request<peer::PeerRequest>) -> Result<Response<peer::PeerReply>, Status> {
        self.cluster_id.check(&req, false)?;
        let r = req.into_inner();
        let query = TreeQuery::decode(&r.body)
            .map_err(|e| Status::invalid_argument(format!("anti-entropy question from {:?}: {e}", r.from)))?;
        let answer = self.coordinator.answer_tree(&r.from, r.layout, query).await.map_err(to_status)?;
        Ok(Response::new(peer::PeerReply { body: answer.encode(), disk_usage_percent: 0.0 }))
    }

    async fn raft(&self, req: Request<peer::RaftMessages>) -> Result<Response<peer::RaftAck>, Status> {
        self.cluster_id.check(&req, true)?;
        let r = req.into_inner();
        if r.messages.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} Raft messages in one call, at most {MAX_BATCH}",
                r.messages.len()
            )));
        }
        if !r.from_addr.is_empty() {
            validate_addr("from_addr", &r.from_addr).map_err(to_status)?;
            self.cluster.learn_raft_peer(&r.from, &r.from_addr);
        }
        // In order: raft-rs copes with reordering, but there is no reason to cause it.
        for m in r.messages {
            let req = MetaRequest::Raft { from: r.from.clone(), msg: m };
            if let Err(e) = self.meta.call(req).await.map_err(driver_status)? {
                return Err(Status::invalid_argument(format!("Raft message from {:?}: {e}", r.from)));
            }
        }
        Ok(Response::new(peer::RaftAck {}))
    }
}

/// Most requests one peer batch may carry.
pub const MAX_BATCH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::kv::{VClock, Version};

    #[test]
    fn requests_for_a_nodes_own_replica_are_refused_from_peers() {
        let own = [
            KvRequest::Fence { version: 2 },
            KvRequest::Placed { version: 2 },
            KvRequest::Discard { layout: 2, keys: vec![] },
            KvRequest::Records { after: None, limit: 10 },
            KvRequest::Hints { target: "n2".into(), limit: 10 },
            KvRequest::HintsDelivered { target: "n2".into(), upto: 1 },
            KvRequest::Repaired { before_ms: u64::MAX, layout: 9 },
            KvRequest::Stamp,
        ];
        for req in own {
            let err = decode("n2", &wire::encode_request(&req)).expect_err(req.kind());
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", req.kind());
            assert!(err.message().contains("own replica only"), "{}", err.message());
        }
        // A hand-over's keys come from another node.
        let v = Version { clock: VClock([("n1".to_owned(), 1)].into()), ts_ms: 1, value: None };
        let handed = KvRequest::HandOver { tenant: "t".into(), key: "k".into(), versions: vec![v] };
        assert_eq!(decode("n1", &wire::encode_request(&handed)).expect("a hand-over"), handed);
    }
}
