//! `tessera.peer.v1.PeerService`: other nodes' calls to this node's key-value replica, and
//! the metadata group's Raft messages.

use std::path::PathBuf;

use tessera_core::kv::wire;
use tessera_core::meta::MetaRequest;
use tessera_proto::tessera::peer::v1 as peer;
use tessera_proto::tessera::peer::v1::peer_service_server::PeerService;
use tonic::{Request, Response, Status};

use super::errors::driver_status;
use crate::cluster::{KvHandle, MetaHandle};

#[derive(Clone)]
pub struct Peer {
    local: KvHandle,
    meta: MetaHandle,
    data_dir: PathBuf,
}

impl Peer {
    pub fn new(local: KvHandle, meta: MetaHandle, data_dir: PathBuf) -> Self {
        Self { local, meta, data_dir }
    }
}

#[tonic::async_trait]
impl PeerService for Peer {
    async fn call(&self, req: Request<peer::PeerRequest>) -> Result<Response<peer::PeerReply>, Status> {
        let r = req.into_inner();
        let kv = wire::decode_request(&r.body)
            .map_err(|e| Status::invalid_argument(format!("peer request from {:?}: {e}", r.from)))?;
        let stats = matches!(kv, tessera_core::kv::KvRequest::Stats);
        let out = self.local.call(kv).await.map_err(driver_status)?;
        let mut reply = peer::PeerReply { body: wire::encode_reply(&out), disk_usage_percent: 0.0 };
        if stats {
            reply.disk_usage_percent = crate::cluster::Cluster::disk_usage_percent(&self.data_dir).unwrap_or(0.0);
        }
        Ok(Response::new(reply))
    }

    async fn call_batch(&self, req: Request<peer::PeerBatch>) -> Result<Response<peer::PeerBatchReply>, Status> {
        let r = req.into_inner();
        if r.bodies.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} requests in one batch, at most {MAX_BATCH}",
                r.bodies.len()
            )));
        }
        // Every request goes to the driver at once, so they share its group commit; the
        // answers are collected in order.
        let mut pending = Vec::with_capacity(r.bodies.len());
        for body in r.bodies {
            let kv = wire::decode_request(&body)
                .map_err(|e| Status::invalid_argument(format!("peer request from {:?}: {e}", r.from)))?;
            let local = self.local.clone();
            pending.push(tokio::spawn(async move { local.call(kv).await }));
        }
        let mut bodies = Vec::with_capacity(pending.len());
        for p in pending {
            let out =
                p.await.map_err(|e| Status::internal(format!("peer request task: {e}")))?.map_err(driver_status)?;
            bodies.push(wire::encode_reply(&out));
        }
        Ok(Response::new(peer::PeerBatchReply { bodies }))
    }

    async fn raft(&self, req: Request<peer::RaftMessages>) -> Result<Response<peer::RaftAck>, Status> {
        let r = req.into_inner();
        if r.messages.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} Raft messages in one call, at most {MAX_BATCH}",
                r.messages.len()
            )));
        }
        // In order: raft-rs copes with reordering, but there is no reason to cause it.
        for m in r.messages {
            if let Err(e) = self.meta.call(MetaRequest::Raft(m)).await.map_err(driver_status)? {
                return Err(Status::invalid_argument(format!("Raft message from {:?}: {e}", r.from)));
            }
        }
        Ok(Response::new(peer::RaftAck {}))
    }
}

/// Most requests one peer batch may carry.
pub const MAX_BATCH: usize = 256;
