//! The transaction state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::keys;
use super::records::{self, Event, Operation, Versioned};
use super::{
    DEFAULT_TIMEOUT_MS, MAX_OPS_PER_TXN, MAX_TIMEOUT_MS, MAX_TXN_BYTES, MAX_VALUE_LEN, validate_key, validate_name,
    validate_namespace,
};
use crate::codec::{Encoder, hex};
use crate::error::{CoreError, CoreResult};
use crate::ready::{ClientToken, Machine, Ready};
use crate::rng::Rng;
use crate::store::{STATE, StoreError, StoreRead, WriteBatch};
use crate::txn::keys::ts_suffix;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// Most transactions open at once; more is RESOURCE_EXHAUSTED.
    pub max_open: usize,
    /// How many finished transaction ids are remembered, so a late commit gets "already
    /// committed" or "expired" instead of "unknown".
    pub remember_finished: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self { max_open: 10_000, remember_finished: 100_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnRequest {
    Begin {
        timeout_ms: Option<u64>,
    },
    Write {
        txn_id: String,
        namespace: String,
        agent_id: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        txn_id: String,
        namespace: String,
        agent_id: String,
        key: String,
    },
    Commit {
        txn_id: String,
    },
    Abort {
        txn_id: String,
    },
    Get {
        namespace: String,
        agent_id: String,
        key: String,
    },
    GetAtVersion {
        namespace: String,
        agent_id: String,
        key: String,
        version: u64,
    },
    /// Live keys of an agent in key order, after `after`, at most `limit`.
    ListKeys {
        namespace: String,
        agent_id: String,
        after: Option<String>,
        limit: usize,
    },
    /// Live entries whose key starts with `prefix`, after `after`, at most `limit`.
    Scan {
        namespace: String,
        agent_id: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
    /// Events with `from_ts <= commit_ts <= to_ts`, at most `limit`.
    Replay {
        namespace: String,
        agent_id: String,
        from_ts: u64,
        to_ts: u64,
        limit: usize,
    },
    /// The newest commit_ts (0 before the first commit).
    LastCommitTs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResponse {
    Begun {
        txn_id: String,
        expires_at_ms: u64,
    },
    Staged,
    Committed {
        commit_ts: u64,
    },
    Aborted,
    /// `None`: the key never existed (or that version does not exist).
    State(Option<Versioned>),
    Keys {
        keys: Vec<String>,
        more: bool,
    },
    Entries {
        entries: Vec<(String, Versioned)>,
        more: bool,
    },
    Events {
        events: Vec<Event>,
        more: bool,
    },
    LastCommitTs(u64),
}

/// Why a transaction id no longer accepts work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Committed(u64),
    Aborted,
    Expired,
}

#[derive(Debug)]
struct OpenTxn {
    deadline: u64,
    /// (namespace, agent, key) -> value, None for a delete. Last write wins.
    ops: BTreeMap<(String, String, String), Option<Vec<u8>>>,
    bytes: usize,
}

pub struct TxnMachine {
    config: TxnConfig,
    rng: Rng,
    last_ts: u64,
    open: BTreeMap<String, OpenTxn>,
    expiry: BTreeSet<(u64, String)>,
    finished: BTreeMap<String, Finished>,
    finished_order: VecDeque<String>,
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Corrupt { keyspace: STATE, reason: reason.to_owned() }
}

impl TxnMachine {
    /// Opens the machine over what the store holds. Nothing to write at start-up.
    pub fn open(store: &dyn StoreRead, config: TxnConfig, rng: Rng) -> Result<Self, StoreError> {
        let last_ts = match store.get(STATE, keys::LAST_TS)? {
            Some(v) => {
                let a: [u8; 8] = v.as_slice().try_into().map_err(|_| corrupt("last commit_ts"))?;
                u64::from_be_bytes(a)
            }
            None => 0,
        };
        Ok(Self {
            config,
            rng,
            last_ts,
            open: BTreeMap::new(),
            expiry: BTreeSet::new(),
            finished: BTreeMap::new(),
            finished_order: VecDeque::new(),
        })
    }

    pub fn last_commit_ts(&self) -> u64 {
        self.last_ts
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn next_deadline(&self) -> Option<u64> {
        self.expiry.first().map(|(d, _)| *d)
    }

    fn finish(&mut self, id: String, how: Finished) {
        if self.finished.insert(id.clone(), how).is_none() {
            self.finished_order.push_back(id);
        }
        while self.finished_order.len() > self.config.remember_finished {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    fn expire_due(&mut self, now: u64) {
        while let Some((deadline, id)) = self.expiry.first().cloned() {
            if deadline > now {
                break;
            }
            self.expiry.remove(&(deadline, id.clone()));
            if self.open.remove(&id).is_some() {
                self.finish(id, Finished::Expired);
            }
        }
    }

    /// The open transaction `id`, or the error that explains why it is not open.
    fn live(&mut self, now: u64, id: &str) -> CoreResult<&mut OpenTxn> {
        self.expire_due(now);
        if self.open.contains_key(id) {
            return self.open.get_mut(id).ok_or_else(|| CoreError::NotFound(format!("transaction {id:?} not found")));
        }
        Err(match self.finished.get(id) {
            Some(Finished::Committed(ts)) => {
                CoreError::FailedPrecondition(format!("transaction {id:?} was already committed at commit_ts {ts}"))
            }
            Some(Finished::Aborted) => CoreError::FailedPrecondition(format!("transaction {id:?} was aborted")),
            Some(Finished::Expired) => {
                CoreError::DeadlineExceeded(format!("transaction {id:?} expired before it was committed"))
            }
            None => CoreError::NotFound(format!(
                "transaction {id:?} not found (never begun here, or lost when the server restarted)"
            )),
        })
    }

    fn begin(&mut self, now: u64, timeout_ms: Option<u64>) -> CoreResult<TxnResponse> {
        let timeout = match timeout_ms {
            None | Some(0) => DEFAULT_TIMEOUT_MS,
            Some(t) if t > MAX_TIMEOUT_MS => {
                return Err(CoreError::InvalidArgument(format!(
                    "timeout_ms: {t} is longer than the maximum of {MAX_TIMEOUT_MS} (24 h)"
                )));
            }
            Some(t) => t,
        };
        self.expire_due(now);
        if self.open.len() >= self.config.max_open {
            return Err(CoreError::ResourceExhausted(format!(
                "{} transactions are open, the limit; commit or abort some, or wait for them to expire",
                self.open.len()
            )));
        }
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw);
        let txn_id = hex(&raw);
        let deadline = now.saturating_add(timeout);
        self.open.insert(txn_id.clone(), OpenTxn { deadline, ops: BTreeMap::new(), bytes: 0 });
        self.expiry.insert((deadline, txn_id.clone()));
        Ok(TxnResponse::Begun { txn_id, expires_at_ms: deadline })
    }

    fn stage(
        &mut self,
        now: u64,
        id: &str,
        ns: String,
        agent: String,
        key: String,
        value: Option<Vec<u8>>,
    ) -> CoreResult<TxnResponse> {
        validate_namespace(&ns)?;
        validate_name("agent_id", &agent)?;
        validate_key(&key)?;
        if let Some(v) = &value
            && v.len() > MAX_VALUE_LEN
        {
            return Err(CoreError::InvalidArgument(format!("value: {} bytes, at most {MAX_VALUE_LEN}", v.len())));
        }
        let txn = self.live(now, id)?;
        let size = ns.len() + agent.len() + key.len() + value.as_ref().map_or(0, Vec::len);
        let slot = (ns, agent, key);
        if !txn.ops.contains_key(&slot) && txn.ops.len() >= MAX_OPS_PER_TXN {
            return Err(CoreError::InvalidArgument(format!(
                "transaction {id:?} already stages {MAX_OPS_PER_TXN} keys, the most one transaction may write"
            )));
        }
        if txn.bytes + size > MAX_TXN_BYTES {
            return Err(CoreError::InvalidArgument(format!(
                "transaction {id:?} would stage more than {MAX_TXN_BYTES} bytes; split it"
            )));
        }
        txn.bytes += size;
        txn.ops.insert(slot, value);
        Ok(TxnResponse::Staged)
    }

    fn commit(&mut self, now: u64, id: &str, store: &dyn StoreRead) -> CoreResult<(TxnResponse, WriteBatch)> {
        // A retried commit (the reply was lost, or the request was duplicated) learns the
        // outcome instead of an error: commit is idempotent while the id is remembered.
        if let Some(Finished::Committed(ts)) = self.finished.get(id) {
            return Ok((TxnResponse::Committed { commit_ts: *ts }, WriteBatch::default()));
        }
        self.live(now, id)?;
        let Some(txn) = self.open.remove(id) else {
            return Err(CoreError::NotFound(format!("transaction {id:?} not found")));
        };
        self.expiry.remove(&(txn.deadline, id.to_owned()));
        let ts = self.last_ts + 1;
        let mut batch = WriteBatch::default();
        // One event per agent the transaction touched, with its operations in key order.
        let mut events: BTreeMap<(String, String), Vec<Operation>> = BTreeMap::new();
        for ((ns, agent, key), value) in txn.ops {
            let lkey = keys::latest(&ns, &agent, &key);
            let prev = match store.get(STATE, &lkey)? {
                Some(v) => Some(Versioned::decode(&v)?),
                None => None,
            };
            let version = prev.map_or(1, |p| p.version + 1);
            let rec = Versioned { value: value.clone(), version, commit_ts: ts };
            let enc = rec.encode();
            batch.put(STATE, keys::history(&ns, &agent, &key, version), enc.clone());
            batch.put(STATE, lkey, enc);
            events.entry((ns, agent)).or_default().push(Operation { key, value, version });
        }
        let agents: Vec<(String, String)> = events.keys().cloned().collect();
        for ((ns, agent), operations) in events {
            let ev = Event { txn_id: id.to_owned(), commit_ts: ts, operations };
            batch.put(STATE, keys::event(&ns, &agent, ts), ev.encode());
        }
        batch.put(STATE, keys::global(ts), records::encode_global(id, &agents));
        batch.put(STATE, keys::LAST_TS.to_vec(), Encoder::new().u64(ts).finish());
        self.last_ts = ts;
        self.finish(id.to_owned(), Finished::Committed(ts));
        Ok((TxnResponse::Committed { commit_ts: ts }, batch))
    }

    fn abort(&mut self, now: u64, id: &str) -> CoreResult<TxnResponse> {
        self.expire_due(now);
        if let Some(txn) = self.open.remove(id) {
            self.expiry.remove(&(txn.deadline, id.to_owned()));
            self.finish(id.to_owned(), Finished::Aborted);
            return Ok(TxnResponse::Aborted);
        }
        match self.finished.get(id) {
            // Aborting twice, or aborting what already expired, leaves nothing behind: fine.
            Some(Finished::Aborted | Finished::Expired) => Ok(TxnResponse::Aborted),
            Some(Finished::Committed(ts)) => Err(CoreError::FailedPrecondition(format!(
                "transaction {id:?} was already committed at commit_ts {ts}; it cannot be aborted"
            ))),
            // Unknown (or forgotten, or lost in a restart): nothing is staged under this id, so
            // the abort has nothing to undo. The SDK may abort after a failed commit.
            None => Ok(TxnResponse::Aborted),
        }
    }

    fn get(store: &dyn StoreRead, ns: &str, agent: &str, key: &str) -> CoreResult<Option<Versioned>> {
        validate_namespace(ns)?;
        validate_name("agent_id", agent)?;
        validate_key(key)?;
        Ok(store.get(STATE, &keys::latest(ns, agent, key))?.map(|v| Versioned::decode(&v)).transpose()?)
    }

    fn get_at(store: &dyn StoreRead, ns: &str, agent: &str, key: &str, version: u64) -> CoreResult<Option<Versioned>> {
        validate_namespace(ns)?;
        validate_name("agent_id", agent)?;
        validate_key(key)?;
        if version == 0 {
            return Err(CoreError::InvalidArgument("version: versions start at 1".into()));
        }
        Ok(store.get(STATE, &keys::history(ns, agent, key, version))?.map(|v| Versioned::decode(&v)).transpose()?)
    }

    /// Live (not deleted) entries under `prefix`, paged by key.
    fn live_entries(
        store: &dyn StoreRead,
        ns: &str,
        agent: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> CoreResult<(Vec<(String, Versioned)>, bool)> {
        validate_namespace(ns)?;
        validate_name("agent_id", agent)?;
        let base = keys::latest_prefix(ns, agent);
        let mut scan_prefix = base.clone();
        scan_prefix.extend_from_slice(prefix.as_bytes());
        let mut cursor = after.map(|a| keys::latest(ns, agent, a));
        let limit = limit.max(1);
        let mut out = Vec::new();
        loop {
            let rows = store.prefix(STATE, &scan_prefix, cursor.as_deref(), 512)?;
            let exhausted = rows.len() < 512;
            for (k, v) in rows {
                cursor = Some(k.clone());
                let rec = Versioned::decode(&v)?;
                if rec.value.is_none() {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                let key = String::from_utf8(k[base.len()..].to_vec()).map_err(|_| corrupt("key is not UTF-8"))?;
                out.push((key, rec));
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    fn replay(
        store: &dyn StoreRead,
        ns: &str,
        agent: &str,
        from_ts: u64,
        to_ts: u64,
        limit: usize,
    ) -> CoreResult<(Vec<Event>, bool)> {
        validate_namespace(ns)?;
        validate_name("agent_id", agent)?;
        if from_ts > to_ts {
            return Ok((Vec::new(), false));
        }
        let start = keys::event(ns, agent, from_ts);
        let end = keys::event(ns, agent, to_ts.saturating_add(1));
        let end = if to_ts == u64::MAX { crate::store::prefix_end(&keys::event_prefix(ns, agent)) } else { Some(end) };
        let limit = limit.max(1);
        let rows = store.range(STATE, &start, end.as_deref(), limit + 1)?;
        let more = rows.len() > limit;
        let mut events = Vec::with_capacity(rows.len().min(limit));
        for (k, v) in rows.into_iter().take(limit) {
            let ev = Event::decode(&v)?;
            if ts_suffix(&k) != Some(ev.commit_ts) {
                return Err(CoreError::Storage(corrupt("event key and record disagree")));
            }
            events.push(ev);
        }
        Ok((events, more))
    }

    fn handle(&mut self, now: u64, req: TxnRequest, store: &dyn StoreRead) -> CoreResult<(TxnResponse, WriteBatch)> {
        let none = WriteBatch::default;
        Ok(match req {
            TxnRequest::Begin { timeout_ms } => (self.begin(now, timeout_ms)?, none()),
            TxnRequest::Write { txn_id, namespace, agent_id, key, value } => {
                (self.stage(now, &txn_id, namespace, agent_id, key, Some(value))?, none())
            }
            TxnRequest::Delete { txn_id, namespace, agent_id, key } => {
                (self.stage(now, &txn_id, namespace, agent_id, key, None)?, none())
            }
            TxnRequest::Commit { txn_id } => self.commit(now, &txn_id, store)?,
            TxnRequest::Abort { txn_id } => (self.abort(now, &txn_id)?, none()),
            TxnRequest::Get { namespace, agent_id, key } => {
                (TxnResponse::State(Self::get(store, &namespace, &agent_id, &key)?), none())
            }
            TxnRequest::GetAtVersion { namespace, agent_id, key, version } => {
                (TxnResponse::State(Self::get_at(store, &namespace, &agent_id, &key, version)?), none())
            }
            TxnRequest::ListKeys { namespace, agent_id, after, limit } => {
                let (entries, more) = Self::live_entries(store, &namespace, &agent_id, "", after.as_deref(), limit)?;
                (TxnResponse::Keys { keys: entries.into_iter().map(|e| e.0).collect(), more }, none())
            }
            TxnRequest::Scan { namespace, agent_id, prefix, after, limit } => {
                let (entries, more) =
                    Self::live_entries(store, &namespace, &agent_id, &prefix, after.as_deref(), limit)?;
                (TxnResponse::Entries { entries, more }, none())
            }
            TxnRequest::Replay { namespace, agent_id, from_ts, to_ts, limit } => {
                let (events, more) = Self::replay(store, &namespace, &agent_id, from_ts, to_ts, limit)?;
                (TxnResponse::Events { events, more }, none())
            }
            TxnRequest::LastCommitTs => (TxnResponse::LastCommitTs(self.last_ts), none()),
        })
    }

    /// Every commit_ts in `from..=to` with its transaction id, from the global log (for
    /// checkers and audits).
    pub fn global_log(store: &dyn StoreRead, from: u64, to: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = store.range(STATE, &keys::global(from), Some(&keys::global(to.saturating_add(1))), usize::MAX)?;
        rows.into_iter()
            .map(|(k, v)| {
                let ts = ts_suffix(&k).ok_or_else(|| corrupt("global log key"))?;
                Ok((ts, records::decode_global(&v)?.0))
            })
            .collect()
    }
}

impl Machine for TxnMachine {
    type Input = TxnRequest;
    type Output = CoreResult<TxnResponse>;
    type Message = ();

    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: TxnRequest,
        store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output>, StoreError> {
        let mut ready = Ready::answer(token, self.handle(now, input, store))?;
        // Begun, staged and aborted transactions live in memory only (a crash forgets them
        // whatever we answer), so those answers need not wait for anyone's fsync. Errors
        // wait: "already committed" may speak of a commit that is not yet durable.
        ready.volatile = ready.writes.is_empty()
            && matches!(
                ready.replies.first(),
                Some((_, Ok(TxnResponse::Begun { .. } | TxnResponse::Staged | TxnResponse::Aborted)))
            );
        ready.deadline = self.next_deadline();
        Ok(ready)
    }

    fn tick(&mut self, now: u64, _store: &dyn StoreRead) -> Result<Ready<Self::Output>, StoreError> {
        self.expire_due(now);
        Ok(Ready { deadline: self.next_deadline(), ..Ready::default() })
    }
}
