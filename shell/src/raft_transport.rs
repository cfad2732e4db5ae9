//! Carries the metadata machine's Raft messages to the other members over
//! `tessera.peer.v1.PeerService/Raft`. The driver hands each message over once the writes of
//! its step are durable; here each peer has a queue and one task that sends what has queued
//! as one call, in order. A message that cannot go (queue full, peer down) is dropped: Raft
//! retransmits, and a lagging follower is caught up by the leader.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_proto::tessera::peer::v1 as peer;
use tessera_proto::tessera::peer::v1::peer_service_client::PeerServiceClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::driver::Outbox;

/// Messages one peer's queue holds before new ones are dropped.
const QUEUE: usize = 4096;
/// Most messages in one call.
const BATCH: usize = 256;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RaftTransport {
    queues: BTreeMap<String, mpsc::Sender<Vec<u8>>>,
}

impl RaftTransport {
    /// One queue and sender task per peer (`(id, host:port)`, this node excluded).
    pub fn new(me: &str, peers: &[(String, String)]) -> anyhow::Result<RaftTransport> {
        let mut queues = BTreeMap::new();
        for (id, addr) in peers.iter().filter(|(id, _)| id != me) {
            let ch = Channel::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender(me.to_owned(), id.clone(), PeerServiceClient::new(ch), rx));
            queues.insert(id.clone(), tx);
        }
        Ok(RaftTransport { queues })
    }
}

impl Outbox<Vec<u8>> for RaftTransport {
    fn send(&self, to: String, msg: Vec<u8>) {
        if let Some(q) = self.queues.get(&to)
            && q.try_send(msg).is_err()
        {
            tracing::debug!(peer = %to, "raft queue full; message dropped");
        }
    }
}

async fn sender(me: String, to: String, mut client: PeerServiceClient<Channel>, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(first) = rx.recv().await {
        let mut messages = vec![first];
        while messages.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => messages.push(m),
                Err(_) => break,
            }
        }
        let call = client.raft(peer::RaftMessages { from: me.clone(), messages });
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => tracing::debug!(peer = %to, error = %s.message(), "raft messages not delivered"),
            Err(_) => tracing::debug!(peer = %to, "raft messages timed out"),
        }
    }
}
