//! The cluster's id, stamped on every peer call and checked where it lands, as etcd checks its
//! cluster ID: a node of another cluster (a data directory reused from elsewhere, an address
//! list that names the wrong hosts) is refused instead of mixing its Raft log and its keys
//! into this cluster.
//!
//! The members of a new cluster derive the same id on their own, from `--initial-cluster`
//! and `--initial-cluster-token` (so two clusters with the same member list need different
//! tokens, as with etcd); a one-node cluster draws a random one. A node joining a running
//! cluster has none until the first Raft message from it, whose id it adopts. Each node keeps
//! its id in its data directory: a restart keeps it whatever the flags say.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use tessera_proto::tessera::peer::v1::peer_service_client::PeerServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::cluster::Member;

/// The gRPC metadata key that carries the sender's cluster id.
pub const HEADER: &str = "tessera-cluster-id";
const FILE: &str = "cluster-id";

#[derive(Debug, thiserror::Error)]
pub enum ClusterIdError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {id:?} is not a cluster id (16 hex digits)")]
    Corrupt { path: PathBuf, id: String },
}

pub struct ClusterId {
    path: PathBuf,
    /// The id, and the same as the header value stamped on calls.
    id: OnceLock<(String, MetadataValue<Ascii>)>,
    /// Held while a joining node adopts an id, so the file and the memory agree.
    adopting: std::sync::Mutex<()>,
    /// When a refusal was last logged: a foreign node retries several times a second.
    warned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// At most one warning about refused calls in this long.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn valid(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The id the members of a new cluster all derive from its member list and token.
pub fn derive(token: &str, members: &[Member]) -> String {
    let mut listed: Vec<(&str, &str)> = members.iter().map(|m| (m.id.as_str(), m.addr.as_str())).collect();
    listed.sort();
    let mut h = Sha256::new();
    for part in std::iter::once(token).chain(listed.iter().flat_map(|(id, addr)| [*id, *addr])) {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    tessera_core::codec::hex(&h.finalize()[..8])
}

impl ClusterId {
    /// The id kept in `data_dir`; else, for a node that starts a cluster (`join` false), the
    /// one derived from `members` and `token` (or from `seed` for a one-node cluster), kept
    /// from now on; else none yet.
    pub fn open(
        data_dir: &Path,
        join: bool,
        token: &str,
        members: &[Member],
        seed: u64,
    ) -> Result<ClusterId, ClusterIdError> {
        let path = data_dir.join(FILE);
        let me = ClusterId {
            path: path.clone(),
            id: OnceLock::new(),
            adopting: Default::default(),
            warned: Default::default(),
        };
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let id = s.trim().to_owned();
                me.set(id)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !join {
                    let id = match members.len() {
                        1 => format!("{seed:016x}"),
                        _ => derive(token, members),
                    };
                    me.keep(&id)?;
                    me.set(id)?;
                }
            }
            Err(error) => return Err(ClusterIdError::Io { path, error }),
        }
        Ok(me)
    }

    pub fn get(&self) -> Option<&str> {
        self.id.get().map(|(id, _)| id.as_str())
    }

    /// The id as a header value (none yet on a joining node).
    pub(crate) fn header(&self) -> Option<&MetadataValue<Ascii>> {
        self.id.get().map(|(_, v)| v)
    }

    /// Takes `id` as this node's, unless it has one already.
    fn set(&self, id: String) -> Result<(), ClusterIdError> {
        let corrupt = |id| ClusterIdError::Corrupt { path: self.path.clone(), id };
        if !valid(&id) {
            return Err(corrupt(id));
        }
        let v = id.parse().map_err(|_| corrupt(id.clone()))?;
        let _ = self.id.set((id, v));
        Ok(())
    }

    /// Writes the id durably (a new file, synced, renamed into place, the directory synced).
    fn keep(&self, id: &str) -> Result<(), ClusterIdError> {
        let io = |error| ClusterIdError::Io { path: self.path.clone(), error };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// Checks the id a peer call carries. A call without one comes from a node still
    /// joining (it has none yet) and passes. A node without an id adopts the one of the
    /// first Raft message it gets (`adopt`): that is its cluster taking it in.
    pub fn check<T>(&self, req: &Request<T>, adopt: bool) -> Result<(), Status> {
        let Some(theirs) = req.metadata().get(HEADER) else { return Ok(()) };
        let theirs = theirs
            .to_str()
            .ok()
            .filter(|t| valid(t))
            .ok_or_else(|| Status::invalid_argument(format!("{HEADER}: expected 16 hex digits, got {theirs:?}")))?;
        match self.get() {
            Some(mine) if mine == theirs => Ok(()),
            Some(mine) => {
                let mut last = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    *last = Some(std::time::Instant::now());
                    tracing::warn!(mine, theirs, "refusing peer calls from another cluster");
                }
                Err(Status::failed_precondition(format!(
                    "this node belongs to cluster {mine}, the call came from cluster {theirs}: a node of \
                     another cluster (check --initial-cluster, --initial-cluster-token and the data directory)"
                )))
            }
            None if adopt => {
                let _one = self.adopting.lock().unwrap_or_else(|e| e.into_inner());
                match self.get() {
                    Some(mine) if mine != theirs => Err(Status::failed_precondition(format!(
                        "this node joined cluster {mine} a moment ago, the call came from cluster {theirs}"
                    ))),
                    Some(_) => Ok(()),
                    None => {
                        let keep = |e| Status::unavailable(format!("keeping the cluster id: {e}"));
                        self.keep(theirs).map_err(keep)?;
                        self.set(theirs.to_owned()).map_err(keep)?;
                        tracing::info!(cluster = theirs, "joined: adopted the cluster id");
                        Ok(())
                    }
                }
            }
            None => Ok(()),
        }
    }
}

/// Puts this node's cluster id on each outgoing peer call.
#[derive(Clone)]
pub struct Stamp(Arc<ClusterId>);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = self.0.header() {
            req.metadata_mut().insert(HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A client of a peer's `PeerService` that stamps this node's cluster id on each call.
pub type PeerClient = PeerServiceClient<InterceptedService<Channel, Stamp>>;

pub fn peer_client(ch: Channel, id: &Arc<ClusterId>) -> PeerClient {
    PeerServiceClient::with_interceptor(ch, Stamp(id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &str)]) -> Vec<Member> {
        list.iter().map(|(id, addr)| Member { id: (*id).into(), addr: (*addr).into() }).collect()
    }

    fn call(id: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(id) = id {
            r.metadata_mut().insert(HEADER, id.parse().expect("header"));
        }
        r
    }

    #[test]
    fn the_members_of_a_new_cluster_derive_one_id_whatever_their_order_and_the_token_changes_it() {
        let a = members(&[("n1", "h1:1"), ("n2", "h2:1"), ("n3", "h3:1")]);
        let b = members(&[("n3", "h3:1"), ("n1", "h1:1"), ("n2", "h2:1")]);
        assert_eq!(derive("t", &a), derive("t", &b));
        assert!(valid(&derive("t", &a)));
        assert_ne!(derive("t", &a), derive("u", &a));
        assert_ne!(derive("t", &a), derive("t", &members(&[("n1", "h1:1"), ("n2", "h2:1"), ("n3", "h4:1")])));
    }

    #[test]
    fn an_id_is_kept_across_restarts_whatever_the_flags_say_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let three = members(&[("n1", "h1:1"), ("n2", "h2:1"), ("n3", "h3:1")]);
        let first = ClusterId::open(dir.path(), false, "t", &three, 7).expect("open");
        let id = first.get().expect("an id").to_owned();
        assert_eq!(id, derive("t", &three));
        let again = ClusterId::open(dir.path(), false, "other", &three[..1], 9).expect("open");
        assert_eq!(again.get(), Some(id.as_str()));
        std::fs::write(dir.path().join(FILE), "not hex\n").expect("write");
        assert!(matches!(ClusterId::open(dir.path(), false, "t", &three, 7), Err(ClusterIdError::Corrupt { .. })));
    }

    #[test]
    fn a_call_from_another_cluster_is_refused_and_one_without_an_id_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mine = ClusterId::open(dir.path(), false, "t", &members(&[("n1", "h1:1")]), 0xabc).expect("open");
        assert_eq!(mine.get(), Some("0000000000000abc"));
        assert!(mine.check(&call(Some("0000000000000abc")), true).is_ok());
        assert!(mine.check(&call(None), true).is_ok());
        let e = mine.check(&call(Some("0000000000000def")), true).expect_err("another cluster");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("cluster 0000000000000def"), "{}", e.message());
        let e = mine.check(&call(Some("x")), false).expect_err("not an id");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_joining_node_adopts_the_id_of_its_first_raft_message_keeps_it_and_refuses_others_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let joiner = Arc::new(ClusterId::open(dir.path(), true, "t", &members(&[("n4", "h4:1")]), 1).expect("open"));
        assert_eq!(joiner.get(), None);
        let mut stamp = Stamp(joiner.clone());
        let stamped = |stamp: &mut Stamp| {
            let r = tonic::service::Interceptor::call(stamp, Request::new(())).expect("stamp");
            r.metadata().get(HEADER).map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(stamped(&mut stamp), None, "no id yet, no header");
        // A replica call does not adopt: only the metadata group's messages take a node in.
        assert!(joiner.check(&call(Some("00000000000000aa")), false).is_ok());
        assert_eq!(joiner.get(), None);
        assert!(joiner.check(&call(Some("00000000000000aa")), true).is_ok());
        assert_eq!(joiner.get(), Some("00000000000000aa"));
        assert_eq!(stamped(&mut stamp).as_deref(), Some("00000000000000aa"), "its calls carry the id from now on");
        let e = joiner.check(&call(Some("00000000000000bb")), true).expect_err("another cluster");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let restarted = ClusterId::open(dir.path(), true, "t", &[], 1).expect("open");
        assert_eq!(restarted.get(), Some("00000000000000aa"));
    }
}
