//! The Raft log as raft-rs reads it ([`raft::Storage`]): an in-memory mirror of what the
//! `meta` keyspace holds. Every change here also goes into a write batch, which the driver
//! makes durable before any message or reply of the same step leaves the node.

use std::ops::ControlFlow::Continue;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::store::{META as KEYSPACE, StoreError, StoreRead, WriteBatch, for_each_prefix};

use super::keys;

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { keyspace: KEYSPACE, reason: format!("{what}: {e}") }
}

pub struct RaftLog {
    pub hard: HardState,
    pub conf: ConfState,
    /// The point the log was compacted to: entries up to here are folded into the state.
    pub snap_index: u64,
    pub snap_term: u64,
    /// Entries after `snap_index`, in index order.
    entries: Vec<Entry>,
    /// What a follower that lags behind `snap_index` is sent: the state at some index at or
    /// after it (data and metadata), refreshed by the machine when it compacts.
    pub snapshot: Snapshot,
}

impl RaftLog {
    /// A new group with `voters` as its configuration, whose initial state counts as applied
    /// at index 1. Starting past 0 means a member added later cannot be caught up from the
    /// log alone (the initial state is not in it): it is sent a snapshot, which carries it.
    /// With no voters, a node that will join an existing group: empty until its leader
    /// sends a snapshot.
    pub fn bootstrap(voters: Vec<u64>, batch: &mut WriteBatch) -> RaftLog {
        let start = u64::from(!voters.is_empty());
        let conf = ConfState { voters, ..Default::default() };
        let hard = HardState { term: start, commit: start, ..Default::default() };
        let log = RaftLog {
            hard,
            conf,
            snap_index: start,
            snap_term: start,
            entries: Vec::new(),
            snapshot: Snapshot::default(),
        };
        log.persist_snapshot_point(batch);
        batch.put(KEYSPACE, keys::HARD_STATE.to_vec(), encode(&log.hard));
        log
    }

    /// A configuration change applied: stored with the snapshot point, where the next start
    /// reads it (the same batch stores the applied index past the change).
    pub fn set_conf(&mut self, conf: ConfState, batch: &mut WriteBatch) {
        self.conf = conf;
        self.persist_snapshot_point(batch);
    }

    /// The log as persisted; `None` if this node was never bootstrapped.
    pub fn load(store: &dyn StoreRead) -> Result<Option<RaftLog>, StoreError> {
        let Some(snap) = store.get(KEYSPACE, keys::SNAPSHOT)? else { return Ok(None) };
        let meta =
            raft::eraftpb::SnapshotMetadata::parse_from_bytes(&snap).map_err(|e| corrupt("snapshot point", e))?;
        let hard = match store.get(KEYSPACE, keys::HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let mut entries = Vec::new();
        for_each_prefix(store, KEYSPACE, keys::LOG, |_, v| {
            let e = Entry::parse_from_bytes(&v).map_err(|e| corrupt("log entry", e))?;
            if e.index > meta.index {
                entries.push(e);
            }
            Ok::<_, StoreError>(Continue(()))
        })?;
        for (i, e) in entries.iter().enumerate() {
            if e.index != meta.index + 1 + i as u64 {
                return Err(corrupt(
                    "log",
                    format!("entry {} where {} was expected", e.index, meta.index + 1 + i as u64),
                ));
            }
        }
        Ok(Some(RaftLog {
            hard,
            conf: meta.get_conf_state().clone(),
            snap_index: meta.index,
            snap_term: meta.term,
            entries,
            snapshot: Snapshot::default(),
        }))
    }

    fn persist_snapshot_point(&self, batch: &mut WriteBatch) {
        let mut meta =
            raft::eraftpb::SnapshotMetadata { index: self.snap_index, term: self.snap_term, ..Default::default() };
        meta.set_conf_state(self.conf.clone());
        batch.put(KEYSPACE, keys::SNAPSHOT.to_vec(), encode(&meta));
    }

    pub fn last(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    pub fn set_hard_state(&mut self, hs: HardState, batch: &mut WriteBatch) {
        batch.put(KEYSPACE, keys::HARD_STATE.to_vec(), encode(&hs));
        self.hard = hs;
    }

    pub fn set_commit(&mut self, commit: u64, batch: &mut WriteBatch) {
        let mut hs = self.hard.clone();
        hs.commit = commit;
        self.set_hard_state(hs, batch);
    }

    /// Appends `ents`, replacing any entries at or after the first one's index (a new leader
    /// overwriting an uncommitted tail).
    pub fn append(&mut self, ents: &[Entry], batch: &mut WriteBatch) {
        let Some(first) = ents.first() else { return };
        let old_last = self.last();
        let keep = first.index.saturating_sub(self.snap_index + 1) as usize;
        self.entries.truncate(keep);
        for e in ents {
            batch.put(KEYSPACE, keys::entry(e.index), encode(e));
            self.entries.push(e.clone());
        }
        for gone in self.last() + 1..=old_last {
            batch.delete(KEYSPACE, keys::entry(gone));
        }
    }

    /// Drops the entries up to `index` (already applied and folded into the state).
    pub fn compact(&mut self, index: u64, batch: &mut WriteBatch) {
        if index <= self.snap_index || index > self.last() {
            return;
        }
        let n = (index - self.snap_index) as usize;
        self.snap_term = self.entries[n - 1].term;
        for e in self.entries.drain(..n) {
            batch.delete(KEYSPACE, keys::entry(e.index));
        }
        self.snap_index = index;
        self.persist_snapshot_point(batch);
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn install(&mut self, snap: &Snapshot, batch: &mut WriteBatch) {
        let meta = snap.get_metadata();
        for e in self.entries.drain(..) {
            batch.delete(KEYSPACE, keys::entry(e.index));
        }
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.conf = meta.get_conf_state().clone();
        self.persist_snapshot_point(batch);
        let mut hs = self.hard.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(hs, batch);
        self.snapshot = snap.clone();
    }
}

pub fn encode(m: &impl protobuf::Message) -> Vec<u8> {
    // Writing a well-formed message to a Vec cannot fail; an empty record would show up
    // as a decode error at load time, never as silent loss.
    m.write_to_bytes().unwrap_or_default()
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.snap_index - 1) as usize;
        let hi = (high - self.snap_index - 1) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - self.snap_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < self.snap_index {
            // Not refreshed since the last compaction (the machine refreshes it at once).
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
