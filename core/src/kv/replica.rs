//! One node's share of the key-value data plane: the versions of the keys it replicates,
//! the tenants it knows, idempotency records, and hints held for replicas that were down.
//!
//! The coordinator (in the driver) talks to this machine on each replica, locally or over the
//! peer transport. A write is *coordinated* by one replica of its key: that replica's stored
//! versions are the write's context, so the new version supersedes everything it has seen,
//! and its clock gets a fresh counter under that replica's node id. Coordinating stores
//! nothing: the version is then *applied* on every replica, the coordinating one included,
//! which merge it with what they hold (a version dominated by another goes, concurrent ones
//! stay as siblings). So a coordination whose answer is lost leaves no orphan version behind
//! that a retry through another replica would stand beside as a sibling.
//!
//! Counters come from one node-wide sequence whose ceiling is stored in blocks, so a counter
//! is never handed out twice, not even across a crash that lost the versions carrying it.

use std::collections::BTreeMap;

use crate::codec::{Decoder, Encoder};
use crate::error::{CoreError, CoreResult};
use crate::ready::{ClientToken, Machine, Ready};
use crate::store::{StoreError, StoreRead, WriteBatch};

use super::keys;
use super::vclock::{VClock, Version, context, decode_versions, digest, encode_versions, reconcile};

pub(super) const KEYSPACE: &str = crate::store::KV;

/// Most hints one node holds for all others together.
pub const MAX_HINTS: u64 = 100_000;
/// Hints older than this are dropped: the replica is repaired by reads instead.
pub const HINT_MAX_AGE_MS: u64 = 3 * 60 * 60 * 1000;
/// Most versions one apply may carry (siblings of one key).
pub const MAX_SIBLINGS: usize = 64;
/// Most expired records or hints one sweep removes; a full sweep asks for the next at once.
const SWEEP_BATCH: usize = 1000;
/// Clock counters reserved per stored ceiling: one write per this many coordinations.
const MINT_BLOCK: u64 = 1 << 16;
/// How long a coordination's idempotency key is remembered in memory before its record
/// arrives with the apply, and how many such keys at most.
const PENDING_IDEM_MS: u64 = 60_000;
const MAX_PENDING_IDEM: usize = 10_000;
/// Default life of an idempotency record.
pub const DEFAULT_IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// A client's idempotency key for one write, with the hash of what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemKey {
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// What a replica remembers of an idempotent write: its request hash and the clock it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRecord {
    pub key: String,
    pub request_hash: Vec<u8>,
    pub clock: VClock,
    pub expires_ms: u64,
}

impl IdemRecord {
    fn encode(&self) -> Vec<u8> {
        self.clock.encode(Encoder::new().str(&self.key).bytes(&self.request_hash)).u64(self.expires_ms).finish()
    }

    fn decode(buf: &[u8]) -> Result<IdemRecord, StoreError> {
        let mut d = Decoder::new(KEYSPACE, buf);
        let key = d.string()?;
        let request_hash = d.bytes()?.to_vec();
        let clock = VClock::decode(&mut d)?;
        let expires_ms = d.u64()?;
        d.end()?;
        Ok(IdemRecord { key, request_hash, clock, expires_ms })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub seq: u64,
    pub tenant: String,
    pub key: String,
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvRequest {
    /// Coordinate a client's write or delete (`value: None`) of a key this node replicates.
    Coordinate {
        tenant: String,
        key: String,
        value: Option<Vec<u8>>,
        idem: Option<IdemKey>,
    },
    /// Merge versions coordinated elsewhere (replication, read repair, hint delivery).
    Apply {
        tenant: String,
        key: String,
        versions: Vec<Version>,
        idem: Option<IdemRecord>,
    },
    Read {
        tenant: String,
        key: String,
    },
    /// Hold versions for `target`, which did not answer.
    Hint {
        target: String,
        tenant: String,
        key: String,
        versions: Vec<Version>,
    },
    /// Up to `limit` hints held for `target`, oldest first.
    Hints {
        target: String,
        limit: usize,
    },
    /// `target` has the hints up to and including `upto`.
    HintsDelivered {
        target: String,
        upto: u64,
    },
    Stats,
    /// Raises the stored layout fence floor to `version` (durably, before the answer) and
    /// answers the floor; `version` 0 only reads it.
    Fence {
        version: u64,
    },
    /// Anti-entropy: up to `limit` keys this node holds, in key order after `after`
    /// (tenant, key), with their versions.
    Scan {
        after: Option<(String, String)>,
        limit: usize,
    },
    /// Anti-entropy: like `Scan`, with a 16-byte digest of each key's versions in place of
    /// the versions (no values leave the replica).
    Digests {
        after: Option<(String, String)>,
        limit: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResponse {
    /// The write's clock, the versions to apply on every replica, and whether this was a
    /// replay of an idempotency key already used for the same request.
    Coordinated {
        clock: VClock,
        versions: Vec<Version>,
        duplicate: bool,
        idem: Option<IdemRecord>,
    },
    /// The versions held after a merge or read (empty: the key is unknown here).
    Versions(Vec<Version>),
    Done,
    Hints(Vec<Hint>),
    Stats {
        keys: u64,
        hints: u64,
    },
    Entries(Vec<(String, String, Vec<Version>)>),
    Digests(Vec<(String, String, Vec<u8>)>),
    /// The layout fence floor stored on this node.
    Fence(u64),
}

#[derive(Debug, Clone)]
pub struct KvConfig {
    /// This node's id: the name of its entry in the clocks of writes it coordinates.
    pub node_id: String,
    pub idempotency_ttl_ms: u64,
}

pub struct KvMachine {
    config: KvConfig,
    /// (next counter to hand out, stored ceiling), read from the store on first use.
    mint: Option<(u64, u64)>,
    /// Idempotent coordinations whose record has not been applied here yet, by (tenant,
    /// idempotency key): a replay or a reuse of the key for another write meanwhile is still
    /// recognised. With the version minted and when.
    pending: BTreeMap<(String, String), (IdemRecord, Vec<Version>, u64)>,
}

fn count(store: &dyn StoreRead, key: &[u8]) -> Result<u64, StoreError> {
    Ok(store.get(KEYSPACE, key)?.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
}

impl KvMachine {
    pub fn new(config: KvConfig) -> KvMachine {
        KvMachine { config, mint: None, pending: BTreeMap::new() }
    }

    /// A counter for this node's entry in a new clock: above `seen` (this node's entry in the
    /// context) and above every counter handed out before, also before a restart. Raises the
    /// stored ceiling in `batch` when the reserved block runs out.
    fn mint(&mut self, store: &dyn StoreRead, batch: &mut WriteBatch, seen: u64) -> Result<u64, StoreError> {
        let (next, ceiling) = match self.mint {
            Some(m) => m,
            None => {
                let c = count(store, keys::MINT_CEILING)?;
                (c, c)
            }
        };
        let counter = next.max(seen.saturating_add(1)).max(1);
        let mut ceiling = ceiling;
        if counter >= ceiling {
            ceiling = counter.saturating_add(MINT_BLOCK);
            batch.put(KEYSPACE, keys::MINT_CEILING.to_vec(), ceiling.to_be_bytes().to_vec());
        }
        self.mint = Some((counter + 1, ceiling));
        Ok(counter)
    }

    fn versions(store: &dyn StoreRead, tenant: &str, key: &str) -> CoreResult<Option<Vec<Version>>> {
        match store.get(KEYSPACE, &keys::value(tenant, key))? {
            Some(buf) => Ok(Some(decode_versions(KEYSPACE, &buf)?)),
            None => Ok(None),
        }
    }

    /// Writes `versions` for the key, counting it if it is new here.
    fn store_versions(
        store: &dyn StoreRead,
        batch: &mut WriteBatch,
        tenant: &str,
        key: &str,
        existed: bool,
        versions: &[Version],
    ) -> Result<(), StoreError> {
        if !existed {
            let n = count(store, keys::KEY_COUNT)? + 1;
            batch.put(KEYSPACE, keys::KEY_COUNT.to_vec(), n.to_be_bytes().to_vec());
        }
        batch.put(KEYSPACE, keys::value(tenant, key), encode_versions(versions));
        Ok(())
    }

    fn idem(&self, store: &dyn StoreRead, now: u64, tenant: &str, key: &str) -> CoreResult<Option<IdemRecord>> {
        let Some(buf) = store.get(KEYSPACE, &keys::idempotency(tenant, key))? else { return Ok(None) };
        let r = IdemRecord::decode(&buf)?;
        // Expired but not yet swept: as good as gone.
        Ok((r.expires_ms > now).then_some(r))
    }

    /// Keeps a coordination's idempotency key in memory until its record is applied here,
    /// dropping expired ones, then the oldest, beyond the cap.
    fn remember_pending(&mut self, now: u64, tenant: &str, r: &IdemRecord, versions: &[Version]) {
        if self.pending.len() >= MAX_PENDING_IDEM {
            self.pending.retain(|_, (_, _, at)| at.saturating_add(PENDING_IDEM_MS) > now);
        }
        if self.pending.len() >= MAX_PENDING_IDEM
            && let Some(oldest) = self.pending.iter().min_by_key(|(_, (_, _, at))| *at).map(|(k, _)| k.clone())
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert((tenant.to_owned(), r.key.clone()), (r.clone(), versions.to_vec(), now));
    }

    fn remember(batch: &mut WriteBatch, tenant: &str, r: &IdemRecord) {
        let k = keys::idempotency(tenant, &r.key);
        batch.put(KEYSPACE, keys::expiry(r.expires_ms, &k), Vec::new());
        batch.put(KEYSPACE, k, r.encode());
    }

    fn handle(&mut self, now: u64, req: KvRequest, store: &dyn StoreRead) -> CoreResult<(KvResponse, WriteBatch)> {
        let mut batch = WriteBatch::default();
        match req {
            KvRequest::Coordinate { tenant, key, value, idem } => {
                let current = Self::versions(store, &tenant, &key)?;
                if let Some(i) = &idem {
                    // A replay: of a write whose record this replica holds (send what it holds
                    // again, merging is idempotent, so a write that missed its quorum the first
                    // time can still reach it), or of one coordinated here whose record is
                    // still on its way (send that version again).
                    let known = match self.idem(store, now, &tenant, &i.key)? {
                        Some(rec) => Some((rec, current.clone().unwrap_or_default())),
                        None => self
                            .pending
                            .get(&(tenant.clone(), i.key.clone()))
                            .filter(|(_, _, at)| at.saturating_add(PENDING_IDEM_MS) > now)
                            .map(|(rec, versions, _)| (rec.clone(), versions.clone())),
                    };
                    if let Some((rec, versions)) = known {
                        if rec.request_hash != i.request_hash {
                            return Err(CoreError::FailedPrecondition(format!(
                                "idempotency key {:?} was already used for a different write; use a new key",
                                i.key
                            )));
                        }
                        let out = KvResponse::Coordinated {
                            clock: rec.clock.clone(),
                            versions,
                            duplicate: true,
                            idem: Some(rec),
                        };
                        return Ok((out, batch));
                    }
                }
                let mut clock = context(current.as_deref().unwrap_or_default());
                let counter = self.mint(store, &mut batch, clock.get(&self.config.node_id))?;
                clock.0.insert(self.config.node_id.clone(), counter);
                let versions = vec![Version { clock: clock.clone(), ts_ms: now, value }];
                // Stored with the version when it is applied, here as on the other replicas.
                let rec = idem.map(|i| IdemRecord {
                    key: i.key,
                    request_hash: i.request_hash,
                    clock: clock.clone(),
                    expires_ms: now.saturating_add(self.config.idempotency_ttl_ms),
                });
                if let Some(r) = &rec {
                    self.remember_pending(now, &tenant, r, &versions);
                }
                Ok((KvResponse::Coordinated { clock, versions, duplicate: false, idem: rec }, batch))
            }
            KvRequest::Apply { tenant, key, versions, idem } => {
                if versions.len() > MAX_SIBLINGS || versions.iter().any(|v| !v.clock.is_sane()) {
                    return Err(CoreError::InvalidArgument(format!(
                        "apply of {key:?}: at most {MAX_SIBLINGS} versions with sane clocks"
                    )));
                }
                let current = Self::versions(store, &tenant, &key)?;
                if versions.is_empty() {
                    // Nothing to merge (a replay of a key this replica never held).
                    return Ok((KvResponse::Versions(current.unwrap_or_default()), batch));
                }
                let existed = current.is_some();
                let current = current.unwrap_or_default();
                let merged = reconcile(&current, &versions);
                if !existed || merged != current {
                    Self::store_versions(store, &mut batch, &tenant, &key, existed, &merged)?;
                }
                if let Some(r) = &idem {
                    self.pending.remove(&(tenant.clone(), r.key.clone()));
                }
                if let Some(r) = idem
                    && r.expires_ms > now
                    && self.idem(store, now, &tenant, &r.key)?.is_none()
                {
                    Self::remember(&mut batch, &tenant, &r);
                }
                Ok((KvResponse::Versions(merged), batch))
            }
            KvRequest::Read { tenant, key } => {
                Ok((KvResponse::Versions(Self::versions(store, &tenant, &key)?.unwrap_or_default()), batch))
            }
            KvRequest::Hint { target, tenant, key, versions } => {
                let held = count(store, keys::HINT_COUNT)?;
                if held >= MAX_HINTS {
                    return Err(CoreError::ResourceExhausted(format!(
                        "{held} hints held already (at most {MAX_HINTS}); {target} will be repaired by reads"
                    )));
                }
                let seq = count(store, keys::HINT_SEQ)? + 1;
                batch.put(KEYSPACE, keys::HINT_SEQ.to_vec(), seq.to_be_bytes().to_vec());
                batch.put(KEYSPACE, keys::HINT_COUNT.to_vec(), (held + 1).to_be_bytes().to_vec());
                let body = Encoder::new().u64(now).str(&tenant).str(&key).bytes(&encode_versions(&versions)).finish();
                batch.put(KEYSPACE, keys::hint(&target, seq), body);
                Ok((KvResponse::Done, batch))
            }
            KvRequest::Hints { target, limit } => {
                let rows = store.prefix(KEYSPACE, &keys::hints(&target), None, limit.clamp(1, 1000))?;
                let mut out = Vec::with_capacity(rows.len());
                for (k, v) in rows {
                    let (_, seq) = keys::hint_seq(&k)
                        .ok_or_else(|| StoreError::Corrupt { keyspace: KEYSPACE, reason: "bad hint key".into() })?;
                    let (_, tenant, key, versions) = decode_hint(&v)?;
                    out.push(Hint { seq, tenant, key, versions });
                }
                Ok((KvResponse::Hints(out), batch))
            }
            KvRequest::HintsDelivered { target, upto } => {
                let mut held = count(store, keys::HINT_COUNT)?;
                let rows = store.prefix(KEYSPACE, &keys::hints(&target), None, 1000)?;
                for (k, _) in rows {
                    if keys::hint_seq(&k).is_some_and(|(_, s)| s <= upto) {
                        batch.delete(KEYSPACE, k);
                        held = held.saturating_sub(1);
                    }
                }
                batch.put(KEYSPACE, keys::HINT_COUNT.to_vec(), held.to_be_bytes().to_vec());
                Ok((KvResponse::Done, batch))
            }
            KvRequest::Scan { after, limit } => {
                let out = Self::scan(store, after, limit, |versions| versions)?;
                Ok((KvResponse::Entries(out), batch))
            }
            KvRequest::Digests { after, limit } => {
                let out = Self::scan(store, after, limit, |versions| digest(&versions))?;
                Ok((KvResponse::Digests(out), batch))
            }
            KvRequest::Fence { version } => {
                let floor = count(store, keys::FENCE_FLOOR)?;
                if version > floor {
                    batch.put(KEYSPACE, keys::FENCE_FLOOR.to_vec(), version.to_be_bytes().to_vec());
                }
                Ok((KvResponse::Fence(floor.max(version)), batch))
            }
            KvRequest::Stats => Ok((
                KvResponse::Stats { keys: count(store, keys::KEY_COUNT)?, hints: count(store, keys::HINT_COUNT)? },
                batch,
            )),
        }
    }

    /// Up to `limit` (at most 1000) keys after `after` in (tenant, key) order, each with
    /// `what` of its versions.
    fn scan<T>(
        store: &dyn StoreRead,
        after: Option<(String, String)>,
        limit: usize,
        what: impl Fn(Vec<Version>) -> T,
    ) -> Result<Vec<(String, String, T)>, StoreError> {
        let after_key = after.map(|(t, k)| keys::value(&t, &k));
        let rows = store.prefix(KEYSPACE, keys::VALUE_PREFIX, after_key.as_deref(), limit.clamp(1, 1000))?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let (tenant, key) = keys::split_value(&k)
                .ok_or_else(|| StoreError::Corrupt { keyspace: KEYSPACE, reason: "bad value key".into() })?;
            out.push((tenant, key, what(decode_versions(KEYSPACE, &v)?)));
        }
        Ok(out)
    }

    /// Removes expired idempotency records and hints too old to deliver.
    fn sweep(&self, now: u64, store: &dyn StoreRead) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        for (k, _) in store.prefix(KEYSPACE, keys::EXPIRY_PREFIX, None, SWEEP_BATCH)? {
            match keys::expiry_at(&k).zip(keys::record_key(&k)) {
                Some((at, ikey)) if at <= now => {
                    // A newer record under the same key has its own expiry entry.
                    if let Some(buf) = store.get(KEYSPACE, ikey)?
                        && IdemRecord::decode(&buf)?.expires_ms <= now
                    {
                        batch.delete(KEYSPACE, ikey.to_vec());
                    }
                    batch.delete(KEYSPACE, k);
                }
                _ => break,
            }
        }
        let mut held = count(store, keys::HINT_COUNT)?;
        let before = held;
        // Per target, hints are in the order they were taken (their sequence numbers grow),
        // so each target's expired hints are a prefix of its run: take that prefix, then jump
        // to the next target. A target with many fresh hints cannot hide the others' old ones.
        let mut cursor = keys::HINT_PREFIX.to_vec();
        let mut removed = 0;
        while removed < SWEEP_BATCH {
            let end = crate::store::prefix_end(keys::HINT_PREFIX);
            let Some((first, _)) = store.range(KEYSPACE, &cursor, end.as_deref(), 1)?.into_iter().next() else { break };
            let target = keys::hint_seq(&first)
                .map(|(t, _)| t.to_vec())
                .ok_or_else(|| StoreError::Corrupt { keyspace: KEYSPACE, reason: "bad hint key".into() })?;
            let prefix = keys::hints(&String::from_utf8_lossy(&target));
            let mut after = None;
            'target: loop {
                let rows = store.prefix(KEYSPACE, &prefix, after.as_deref(), 256)?;
                let Some(last) = rows.last().map(|r| r.0.clone()) else { break };
                for (k, v) in rows {
                    let (at, ..) = decode_hint(&v)?;
                    if at.saturating_add(HINT_MAX_AGE_MS) > now || removed >= SWEEP_BATCH {
                        break 'target;
                    }
                    batch.delete(KEYSPACE, k);
                    held = held.saturating_sub(1);
                    removed += 1;
                }
                after = Some(last);
            }
            match crate::store::prefix_end(&prefix) {
                Some(next) => cursor = next,
                None => break,
            }
        }
        if held != before {
            batch.put(KEYSPACE, keys::HINT_COUNT.to_vec(), held.to_be_bytes().to_vec());
        }
        Ok(batch)
    }
}

fn decode_hint(buf: &[u8]) -> Result<(u64, String, String, Vec<Version>), StoreError> {
    let mut d = Decoder::new(KEYSPACE, buf);
    let at = d.u64()?;
    let tenant = d.string()?;
    let key = d.string()?;
    let versions = decode_versions(KEYSPACE, d.bytes()?)?;
    d.end()?;
    Ok((at, tenant, key, versions))
}

/// How often the machine sweeps expired records.
const SWEEP_EVERY_MS: u64 = 60_000;

impl Machine for KvMachine {
    type Input = KvRequest;
    type Output = CoreResult<KvResponse>;
    type Message = ();

    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: KvRequest,
        store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output>, StoreError> {
        let read_only = matches!(
            input,
            KvRequest::Read { .. }
                | KvRequest::Hints { .. }
                | KvRequest::Stats
                | KvRequest::Scan { .. }
                | KvRequest::Digests { .. }
        );
        let mut ready = Ready::answer(token, self.handle(now, input, store))?;
        // Reads promise nothing new about durable state. A coordination is not volatile even
        // when it writes nothing: its counter may come from a block whose raised ceiling is
        // still waiting for this group's sync, and no such counter may leave the node before
        // that ceiling is durable (a crash would hand it out again).
        ready.volatile = read_only;
        ready.deadline = Some(now + SWEEP_EVERY_MS);
        Ok(ready)
    }

    fn read_only(input: &KvRequest, store: &dyn StoreRead) -> Option<Result<Self::Output, StoreError>> {
        let KvRequest::Read { tenant, key } = input else { return None };
        Some(match Self::versions(store, tenant, key) {
            Ok(v) => Ok(Ok(KvResponse::Versions(v.unwrap_or_default()))),
            Err(CoreError::Storage(e)) => Err(e),
            Err(e) => Ok(Err(e)),
        })
    }

    fn tick(&mut self, now: u64, store: &dyn StoreRead) -> Result<Ready<Self::Output>, StoreError> {
        let writes = self.sweep(now, store)?;
        // A sweep that removed a full batch has more to do: come back at once, so records
        // never pile up faster than they expire.
        let next = if writes.len() >= SWEEP_BATCH { now + 1 } else { now + SWEEP_EVERY_MS };
        Ok(Ready { writes, deadline: Some(next), ..Ready::default() })
    }
}
