//! The status registry: one place that knows the state of every long-running request, so a
//! client that crashed can find out what happened to its work (the meta-store status API).
//!
//! Each meta-store kind is its own store with a capacity. Entries are listed in insertion
//! order (`seq`), which never changes, so page tokens stay stable while entries are added or
//! change status. When a store is full the oldest finished entry is evicted; an entry still
//! processing is never evicted.

mod keys;
mod machine;
mod token;
mod types;

pub use machine::{StatusMachine, StatusRequest, StatusResponse};
pub use types::{Entry, Status, StatusConfig, StoreInfo, StoreKind};

use crate::codec::Encoder;
use crate::error::{CoreError, CoreResult};
use crate::rng::Rng;
use crate::store::{STATUS, StoreError, StoreRead, WriteBatch};

/// Longest request id we accept.
pub const MAX_REQUEST_ID_LEN: usize = crate::ids::MAX_ID_LEN;
/// Most ids one `GetRequestStatuses` call may ask for.
pub const MAX_BATCH_IDS: usize = 1000;
/// `ListRequests` page size when the client gives none, and the largest we serve.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest error message a producer may attach.
pub const MAX_ERROR_LEN: usize = 4096;
/// How many index rows one store read fetches while filling a page.
const SCAN_CHUNK: usize = 256;

/// Checks a request id (see [`crate::ids::validate_id`]); KMS uses 64 hex digits.
pub fn validate_request_id(field: &str, id: &str) -> CoreResult<()> {
    crate::ids::validate_id(field, id)
}

/// The registry's in-memory summary of what the store holds: per-kind counts, the next
/// sequence number and the key that signs page tokens. Rebuilt from the store at open.
pub struct StatusRegistry {
    config: StatusConfig,
    counts: [u64; StoreKind::COUNT],
    next_seq: u64,
    token_key: [u8; 32],
}

impl StatusRegistry {
    /// Loads the registry; the returned batch (first start only) must be made durable
    /// before serving.
    pub fn open(store: &dyn StoreRead, config: StatusConfig, rng: &mut Rng) -> Result<(Self, WriteBatch), StoreError> {
        let mut init = WriteBatch::default();
        let token_key = match store.get(STATUS, keys::TOKEN_KEY)? {
            Some(k) if k.len() == 32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&k);
                a
            }
            Some(_) => return Err(StoreError::Corrupt { keyspace: STATUS, reason: "page-token key".into() }),
            None => {
                let mut a = [0u8; 32];
                rng.fill(&mut a);
                init.put(STATUS, keys::TOKEN_KEY.to_vec(), a.to_vec());
                a
            }
        };
        let next_seq = match store.get(STATUS, keys::NEXT_SEQ)? {
            Some(v) => keys::decode_u64(&v)?,
            None => 1,
        };
        let mut counts = [0u64; StoreKind::COUNT];
        for kind in StoreKind::ALL {
            if let Some(v) = store.get(STATUS, &keys::count(kind))? {
                counts[kind.index()] = keys::decode_u64(&v)?;
            }
        }
        Ok((Self { config, counts, next_seq, token_key }, init))
    }

    pub fn count(&self, kind: StoreKind) -> u64 {
        self.counts[kind.index()]
    }

    pub fn info(&self) -> Vec<StoreInfo> {
        StoreKind::ALL
            .iter()
            .map(|&kind| StoreInfo { kind, capacity: self.config.capacity(kind), count: self.count(kind) })
            .collect()
    }

    pub fn lookup(&self, store: &dyn StoreRead, kind: StoreKind, id: &str) -> Result<Option<Entry>, StoreError> {
        store.get(STATUS, &keys::entry(kind, id))?.map(|v| Entry::decode(kind, id, &v)).transpose()
    }

    fn put_entry(&self, batch: &mut WriteBatch, e: &Entry) {
        batch.put(STATUS, keys::entry(e.kind, &e.id), e.encode());
    }

    fn set_count(&mut self, batch: &mut WriteBatch, kind: StoreKind, count: u64) {
        self.counts[kind.index()] = count;
        batch.put(STATUS, keys::count(kind), Encoder::new().u64(count).finish());
    }

    /// Removes the `n` oldest finished entries of `kind`, all or nothing. Returns the
    /// evicted ids, or None if fewer than `n` entries have finished.
    fn evict(
        &mut self,
        store: &dyn StoreRead,
        kind: StoreKind,
        n: usize,
        batch: &mut WriteBatch,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let rows = store.prefix(STATUS, &keys::finished_prefix(kind), None, n)?;
        if rows.len() < n {
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(n);
        for (fkey, id) in rows {
            let id = String::from_utf8(id)
                .map_err(|_| StoreError::Corrupt { keyspace: STATUS, reason: "finished index id".into() })?;
            let seq = keys::seq_of(&fkey)?;
            batch.delete(STATUS, fkey);
            batch.delete(STATUS, keys::order(kind, seq));
            batch.delete(STATUS, keys::entry(kind, &id));
            ids.push(id);
        }
        let left = self.count(kind).saturating_sub(n as u64);
        self.set_count(batch, kind, left);
        Ok(Some(ids))
    }

    /// Records a new request. Returns the entry, whether it was created, and what was evicted.
    pub fn record(
        &mut self,
        store: &dyn StoreRead,
        now: u64,
        kind: StoreKind,
        id: &str,
        status: Status,
        error: Option<String>,
    ) -> CoreResult<(Entry, bool, Option<String>, WriteBatch)> {
        validate_request_id("request_id", id)?;
        validate_error(&error)?;
        if status == Status::Deleted {
            return Err(CoreError::InvalidArgument(
                "status: a request cannot be recorded as DELETED; record it, then call DeleteRequest".into(),
            ));
        }
        let mut batch = WriteBatch::default();
        if let Some(existing) = self.lookup(store, kind, id)? {
            if existing.status == status && existing.error == error {
                return Ok((existing, false, None, batch));
            }
            return Err(CoreError::AlreadyExists(format!(
                "request {id:?} is already recorded in {} as {}; use UpdateStatus to change it",
                kind.name(),
                existing.status.name()
            )));
        }
        let mut evicted = None;
        let cap = self.config.capacity(kind);
        if cap >= 0 {
            let cap = cap as u64;
            if cap == 0 {
                return Err(CoreError::ResourceExhausted(format!("the {} store has capacity 0", kind.name())));
            }
            // Usually one; more only if the capacity was lowered since the store filled up.
            let excess = (self.count(kind) + 1).saturating_sub(cap) as usize;
            if excess > 0 {
                match self.evict(store, kind, excess, &mut batch)? {
                    Some(gone) => evicted = gone.last().cloned(),
                    None => {
                        return Err(CoreError::ResourceExhausted(format!(
                            "the {} store is full ({cap} entries, all still processing); retry when some finish",
                            kind.name()
                        )));
                    }
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        batch.put(STATUS, keys::NEXT_SEQ.to_vec(), Encoder::new().u64(self.next_seq).finish());
        let entry = Entry { id: id.to_owned(), kind, status, error, seq, created_ms: now, updated_ms: now };
        self.put_entry(&mut batch, &entry);
        batch.put(STATUS, keys::order(kind, seq), id.as_bytes().to_vec());
        if status.is_finished() {
            batch.put(STATUS, keys::finished(kind, seq), id.as_bytes().to_vec());
        }
        let n = self.count(kind) + 1;
        self.set_count(&mut batch, kind, n);
        Ok((entry, true, evicted, batch))
    }

    /// Moves a request to a new status (or updates a processing request's message).
    pub fn update(
        &mut self,
        store: &dyn StoreRead,
        now: u64,
        kind: StoreKind,
        id: &str,
        status: Status,
        error: Option<String>,
    ) -> CoreResult<(Entry, WriteBatch)> {
        validate_request_id("request_id", id)?;
        validate_error(&error)?;
        if status == Status::Deleted {
            return Err(CoreError::InvalidArgument("status: use DeleteRequest to mark a request DELETED".into()));
        }
        self.transition(store, now, kind, id, status, error)
    }

    /// Marks a request DELETED (idempotent).
    pub fn delete(
        &mut self,
        store: &dyn StoreRead,
        now: u64,
        kind: StoreKind,
        id: &str,
    ) -> CoreResult<(Entry, WriteBatch)> {
        validate_request_id("request_id", id)?;
        self.transition(store, now, kind, id, Status::Deleted, None)
    }

    fn transition(
        &mut self,
        store: &dyn StoreRead,
        now: u64,
        kind: StoreKind,
        id: &str,
        status: Status,
        error: Option<String>,
    ) -> CoreResult<(Entry, WriteBatch)> {
        let mut batch = WriteBatch::default();
        let Some(mut entry) = self.lookup(store, kind, id)? else {
            return Err(CoreError::NotFound(format!("request {id:?} is not in the {} store", kind.name())));
        };
        if entry.status == status && (status == Status::Deleted || entry.error == error) {
            return Ok((entry, batch));
        }
        if entry.status.is_finished() && entry.status != status && status != Status::Deleted {
            return Err(CoreError::FailedPrecondition(format!(
                "request {id:?} already finished as {}; it cannot become {}",
                entry.status.name(),
                status.name()
            )));
        }
        if entry.status == Status::Deleted {
            return Err(CoreError::FailedPrecondition(format!("request {id:?} was deleted")));
        }
        if !entry.status.is_finished() && status.is_finished() {
            batch.put(STATUS, keys::finished(kind, entry.seq), id.as_bytes().to_vec());
        }
        entry.status = status;
        if status != Status::Deleted {
            entry.error = error;
        }
        entry.updated_ms = now;
        self.put_entry(&mut batch, &entry);
        Ok((entry, batch))
    }

    /// Looks up a batch of ids, in request order; unknown ids are simply absent.
    pub fn get_many(&self, store: &dyn StoreRead, ids: &[String], kind: Option<StoreKind>) -> CoreResult<Vec<Entry>> {
        if ids.is_empty() {
            return Err(CoreError::InvalidArgument("request_ids: give at least one request id".into()));
        }
        if ids.len() > MAX_BATCH_IDS {
            return Err(CoreError::InvalidArgument(format!(
                "request_ids: {} ids asked, at most {MAX_BATCH_IDS} per call",
                ids.len()
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            validate_request_id(&format!("request_ids[{i}]"), id)?;
        }
        let kinds: &[StoreKind] = match &kind {
            Some(k) => std::slice::from_ref(k),
            None => &StoreKind::ALL,
        };
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            for &k in kinds {
                if let Some(e) = self.lookup(store, k, id)? {
                    out.push(e);
                }
            }
        }
        if out.is_empty() {
            return Err(CoreError::NotFound(format!("none of the {} requested ids is known", seen.len())));
        }
        Ok(out)
    }

    /// One page of entries in (kind, insertion) order, optionally filtered by status.
    pub fn list(
        &self,
        store: &dyn StoreRead,
        kind: Option<StoreKind>,
        filter: Option<Status>,
        max_results: Option<i32>,
        page_token: Option<&str>,
    ) -> CoreResult<(Vec<Entry>, Option<String>)> {
        let limit = match max_results {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if n <= 0 => {
                return Err(CoreError::InvalidArgument(format!(
                    "max_results: {n} is not a page size; give 1 to {MAX_PAGE_SIZE} or leave it unset for {DEFAULT_PAGE_SIZE}"
                )));
            }
            // Larger asks are served at the maximum, as page sizes are a hint.
            Some(n) => (n as usize).min(MAX_PAGE_SIZE),
        };
        let scope = token::Scope { kind, filter };
        let mut pos = match page_token {
            None | Some("") => None,
            Some(t) => Some(token::decode(&self.token_key, &scope, t)?),
        };
        let kinds: Vec<StoreKind> = match kind {
            Some(k) => vec![k],
            None => StoreKind::ALL.to_vec(),
        };
        let mut out = Vec::with_capacity(limit);
        for k in kinds {
            let after = match pos {
                Some(p) if p.kind > k => continue,
                Some(p) if p.kind == k => Some(keys::order(k, p.seq)),
                _ => None,
            };
            let prefix = keys::order_prefix(k);
            let mut after = after;
            loop {
                let rows = store.prefix(STATUS, &prefix, after.as_deref(), SCAN_CHUNK)?;
                let Some(last) = rows.last() else { break };
                after = Some(last.0.clone());
                let exhausted = rows.len() < SCAN_CHUNK;
                for (_, id) in rows {
                    let id = String::from_utf8(id)
                        .map_err(|_| StoreError::Corrupt { keyspace: STATUS, reason: "order index id".into() })?;
                    let Some(e) = self.lookup(store, k, &id)? else {
                        return Err(CoreError::Storage(StoreError::Corrupt {
                            keyspace: STATUS,
                            reason: format!("order index points at missing entry {id:?}"),
                        }));
                    };
                    if filter.is_some_and(|f| f != e.status) {
                        continue;
                    }
                    if out.len() == limit {
                        // One more match exists: hand out a token for the rest.
                        let last: &Entry = &out[limit - 1];
                        let t =
                            token::encode(&self.token_key, &scope, token::Position { kind: last.kind, seq: last.seq });
                        return Ok((out, Some(t)));
                    }
                    out.push(e);
                }
                if exhausted {
                    break;
                }
            }
            pos = None;
        }
        Ok((out, None))
    }
}

fn validate_error(error: &Option<String>) -> CoreResult<()> {
    match error {
        Some(e) if e.len() > MAX_ERROR_LEN => {
            Err(CoreError::InvalidArgument(format!("error_message: {} bytes, at most {MAX_ERROR_LEN}", e.len())))
        }
        _ => Ok(()),
    }
}
