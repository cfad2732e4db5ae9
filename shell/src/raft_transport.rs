//! Carries the metadata machine's Raft messages to the other members over
//! `tessera.peer.v1.PeerService/Raft`. The driver hands each message over once the writes of
//! its step are durable; here each peer has a queue and one task that sends what has queued
//! as one call, in order. A message that cannot go (queue full, peer down) is dropped: Raft
//! retransmits, and a lagging follower is caught up by the leader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::tessera::peer::v1 as peer;
use tokio::sync::mpsc;

use crate::cluster_id::{ClusterId, PeerClient, peer_client};
use crate::driver::Outbox;

/// Messages one peer's queue holds before new ones are dropped.
const QUEUE: usize = 4096;
/// Most messages in one call.
const BATCH: usize = 256;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RaftTransport {
    me: String,
    /// Where this node listens, sent with its messages.
    me_addr: String,
    /// Where each member is: `--initial-cluster` at first, then the replicated layout.
    addresses: Mutex<BTreeMap<String, String>>,
    /// One queue per peer (and the address its sender task dials), made on first use.
    queues: Mutex<BTreeMap<String, Queue>>,
    /// The server's runtime: messages are handed over on the metadata driver's own thread,
    /// whose runtime has no network.
    rt: tokio::runtime::Handle,
    /// Stamped on every call (see `cluster_id`).
    cluster_id: Arc<ClusterId>,
}

/// A peer's address and the queue its sender task drains.
type Queue = (String, mpsc::Sender<Vec<u8>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RaftTransport {
    /// A transport to `peers` (`(id, host:port)`; this node is skipped). Call it on the
    /// server's runtime.
    pub fn new(me: &str, me_addr: &str, peers: &[(String, String)], cluster_id: Arc<ClusterId>) -> RaftTransport {
        let t = RaftTransport {
            me: me.to_owned(),
            me_addr: me_addr.to_owned(),
            addresses: Mutex::default(),
            queues: Mutex::default(),
            rt: tokio::runtime::Handle::current(),
            cluster_id,
        };
        t.set_addresses(peers.iter().cloned());
        t
    }

    /// Learns where `id` listens, from its own message, unless its address is known already
    /// (the layout's word stands).
    pub fn learn(&self, id: &str, addr: &str) {
        if id != self.me && !addr.is_empty() {
            lock(&self.addresses).entry(id.to_owned()).or_insert_with(|| addr.to_owned());
        }
    }

    /// Adds or updates members' addresses (a layout change); a changed address gets a new
    /// connection on the next message.
    pub fn set_addresses(&self, peers: impl IntoIterator<Item = (String, String)>) {
        let mut book = lock(&self.addresses);
        for (id, addr) in peers {
            if id != self.me {
                book.insert(id, addr);
            }
        }
    }

    fn queue(&self, to: &str) -> Option<mpsc::Sender<Vec<u8>>> {
        let addr = lock(&self.addresses).get(to)?.clone();
        let mut queues = lock(&self.queues);
        if let Some((a, q)) = queues.get(to)
            && *a == addr
        {
            return Some(q.clone());
        }
        let ch = match crate::cluster::peer_endpoint(&addr) {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!(peer = %to, %addr, error = %e, "bad peer address");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (me, me_addr, peer) = (self.me.clone(), self.me_addr.clone(), to.to_owned());
        let id = self.cluster_id.clone();
        // The channel is made on the server's runtime: this thread has no network.
        self.rt.spawn(async move { sender(me, me_addr, peer, peer_client(ch.connect_lazy(), &id), rx).await });
        queues.insert(to.to_owned(), (addr, tx.clone()));
        Some(tx)
    }
}

impl Outbox<Vec<u8>> for RaftTransport {
    fn send(&self, to: String, msg: Vec<u8>) {
        if let Some(q) = self.queue(&to)
            && q.try_send(msg).is_err()
        {
            tracing::debug!(peer = %to, "raft queue full; message dropped");
        }
    }
}

async fn sender(me: String, me_addr: String, to: String, mut client: PeerClient, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(first) = rx.recv().await {
        let mut messages = vec![first];
        while messages.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => messages.push(m),
                Err(_) => break,
            }
        }
        let call = client.raft(peer::RaftMessages { from: me.clone(), messages, from_addr: me_addr.clone() });
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!(peer = %to, error = %s.message(), "raft messages refused")
            }
            Ok(Err(s)) => tracing::debug!(peer = %to, error = %s.message(), "raft messages not delivered"),
            Err(_) => tracing::debug!(peer = %to, "raft messages timed out"),
        }
    }
}
