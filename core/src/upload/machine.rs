//! The upload state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow::Continue;

use sha2::{Digest, Sha256};

use super::keys;
use super::records::{Upload, UploadState, decode_len, encode_len};
use super::{DECLARED_SHA256_KEY, DEFAULT_TTL_MS, MAX_CHUNK_BYTES, MAX_CHUNKS};
use crate::codec::{Decoder, Encoder, hex};
use crate::error::{CoreError, CoreResult};
use crate::ids::validate_id;
use crate::ready::{ClientToken, Machine, Ready};
use crate::rng::Rng;
use crate::store::{BLOB, StoreError, StoreRead, UPLOAD, WriteBatch, for_each_prefix};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// An open upload with no chunk for this long expires and frees its chunks.
    pub ttl_ms: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self { ttl_ms: DEFAULT_TTL_MS }
    }
}

/// What `InitiateUpload` declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intake {
    pub drive: String,
    pub name: String,
    pub path: String,
    pub mime_type: String,
    pub metadata: Vec<(String, String)>,
    pub expected_size: i64,
    pub client_node_id: String,
    pub fail_if_exists: bool,
}

/// One `UploadChunk` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIn {
    pub node_id: String,
    pub upload_id: String,
    pub number: i64,
    pub data: Vec<u8>,
    pub is_last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadRequest {
    Initiate(Intake),
    Chunk(ChunkIn),
    /// The latest version's upload.
    Status {
        node_id: String,
    },
    Cancel {
        node_id: String,
    },
    /// A completed version (`None`: the latest) for download.
    Document {
        node_id: String,
        version: Option<u64>,
    },
    ReadChunk {
        upload_id: String,
        number: u64,
    },
    /// Every chunk's length, in order (for ranged downloads).
    ChunkLengths {
        upload_id: String,
    },
    /// Chunk numbers not yet received below the highest (or last) one, at most `limit`:
    /// what a client resuming after a crash must send again.
    Missing {
        upload_id: String,
        limit: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadResponse {
    Initiated { upload: Upload, is_update: bool },
    ChunkStored { upload: Upload, chunk: u64, duplicate: bool },
    Status(Upload),
    Cancelled(Upload),
    Document(Upload),
    Chunk(Vec<u8>),
    ChunkLengths(Vec<u64>),
    Missing(Vec<u64>),
}

/// The running hash over an upload's contiguous chunk prefix.
struct Prefix {
    next: u64,
    hasher: Sha256,
}

pub struct UploadMachine {
    config: UploadConfig,
    rng: Rng,
    /// (deadline, upload id) of every open upload.
    expiry: BTreeSet<(u64, String)>,
    deadlines: BTreeMap<String, u64>,
    prefixes: BTreeMap<String, Prefix>,
}

const MAX_NAME: usize = 1024;
const MAX_PATH: usize = 4096;
const MAX_META_ENTRIES: usize = 128;
const MAX_META_KEY: usize = 256;
const MAX_META_VALUE: usize = 4096;

fn invalid(msg: String) -> CoreError {
    CoreError::InvalidArgument(msg)
}

fn check_len(field: &str, v: &str, max: usize) -> CoreResult<()> {
    if v.len() > max { Err(invalid(format!("{field}: {} bytes, at most {max}", v.len()))) } else { Ok(()) }
}

fn load(store: &dyn StoreRead, upload_id: &str) -> CoreResult<Option<Upload>> {
    Ok(store.get(UPLOAD, &keys::upload(upload_id))?.map(|v| Upload::decode(&v)).transpose()?)
}

/// (latest version, its upload id) of a node.
fn node_latest(store: &dyn StoreRead, node_id: &str) -> CoreResult<Option<(u64, String)>> {
    let Some(v) = store.get(UPLOAD, &keys::node(node_id))? else { return Ok(None) };
    let mut d = Decoder::new(UPLOAD, &v);
    let version = d.u64()?;
    let id = d.string()?;
    d.end()?;
    Ok(Some((version, id)))
}

impl UploadMachine {
    /// Opens the machine; open uploads get their expiry deadlines back from the store.
    pub fn open(store: &dyn StoreRead, config: UploadConfig, rng: Rng) -> Result<Self, StoreError> {
        let mut m =
            Self { config, rng, expiry: BTreeSet::new(), deadlines: BTreeMap::new(), prefixes: BTreeMap::new() };
        for_each_prefix(store, UPLOAD, keys::ACTIVE_PREFIX, |k, v| {
            let id = String::from_utf8(k[1..].to_vec())
                .map_err(|_| StoreError::Corrupt { keyspace: UPLOAD, reason: "active upload id".into() })?;
            let mut d = Decoder::new(UPLOAD, &v);
            let deadline = d.u64()?;
            m.expiry.insert((deadline, id.clone()));
            m.deadlines.insert(id, deadline);
            Ok::<_, StoreError>(Continue(()))
        })?;
        Ok(m)
    }

    fn random_id(&mut self) -> String {
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw);
        hex(&raw)
    }

    fn set_deadline(&mut self, batch: &mut WriteBatch, id: &str, deadline: u64) {
        if let Some(old) = self.deadlines.insert(id.to_owned(), deadline) {
            self.expiry.remove(&(old, id.to_owned()));
        }
        self.expiry.insert((deadline, id.to_owned()));
        batch.put(UPLOAD, keys::active(id), Encoder::new().u64(deadline).finish());
    }

    fn close(&mut self, batch: &mut WriteBatch, id: &str) {
        if let Some(old) = self.deadlines.remove(id) {
            self.expiry.remove(&(old, id.to_owned()));
        }
        self.prefixes.remove(id);
        batch.delete(UPLOAD, keys::active(id));
    }

    /// Deletes every chunk of an upload (cancel, failure, expiry).
    fn free_chunks(store: &dyn StoreRead, batch: &mut WriteBatch, id: &str) -> CoreResult<()> {
        let prefix = keys::digest_prefix(id);
        for_each_prefix(store, UPLOAD, &prefix, |k, _| {
            let n = keys::tail_u64(k).ok_or(StoreError::Corrupt { keyspace: UPLOAD, reason: "chunk key".into() })?;
            batch.delete(BLOB, keys::chunk(id, n));
            batch.delete(UPLOAD, k.to_vec());
            Ok::<_, CoreError>(Continue(()))
        })
    }

    fn initiate(
        &mut self,
        now: u64,
        intake: Intake,
        store: &dyn StoreRead,
    ) -> CoreResult<(UploadResponse, WriteBatch)> {
        check_len("name", &intake.name, MAX_NAME)?;
        check_len("path", &intake.path, MAX_PATH)?;
        check_len("drive", &intake.drive, MAX_NAME)?;
        check_len("mime_type", &intake.mime_type, MAX_NAME)?;
        if intake.expected_size < 0 {
            return Err(invalid(format!("expected_size: {} is negative", intake.expected_size)));
        }
        if intake.metadata.len() > MAX_META_ENTRIES {
            return Err(invalid(format!("metadata: {} entries, at most {MAX_META_ENTRIES}", intake.metadata.len())));
        }
        let mut declared = None;
        for (k, v) in &intake.metadata {
            check_len("metadata key", k, MAX_META_KEY)?;
            check_len(&format!("metadata[{k:?}]"), v, MAX_META_VALUE)?;
            if k == DECLARED_SHA256_KEY {
                let ok = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(invalid(format!("metadata[\"{DECLARED_SHA256_KEY}\"]: {v:?} is not 64 hex digits")));
                }
                declared = Some(v.to_ascii_lowercase());
            }
        }
        let node_id = if intake.client_node_id.is_empty() {
            self.random_id()
        } else {
            validate_id("client_node_id", &intake.client_node_id)?;
            intake.client_node_id.clone()
        };
        let previous = node_latest(store, &node_id)?;
        if previous.is_some() && intake.fail_if_exists {
            return Err(CoreError::AlreadyExists(format!("node {node_id:?} already exists and fail_if_exists is set")));
        }
        let upload_id = self.random_id();
        let version = previous.as_ref().map_or(1, |p| p.0 + 1);
        let upload = Upload {
            upload_id: upload_id.clone(),
            node_id: node_id.clone(),
            version,
            previous_upload_id: previous.as_ref().map(|p| p.1.clone()),
            state: UploadState::Pending,
            name: intake.name,
            path: intake.path,
            drive: intake.drive,
            mime_type: intake.mime_type,
            metadata: intake.metadata,
            expected_size: intake.expected_size as u64,
            declared_sha256: declared,
            last_chunk: None,
            highest_chunk: None,
            chunks_received: 0,
            bytes_received: 0,
            sha256: None,
            error: None,
            created_ms: now,
            updated_ms: now,
        };
        let mut batch = WriteBatch::default();
        batch.put(UPLOAD, keys::upload(&upload_id), upload.encode());
        batch.put(UPLOAD, keys::node(&node_id), Encoder::new().u64(version).str(&upload_id).finish());
        batch.put(UPLOAD, keys::version(&node_id, version), upload_id.as_bytes().to_vec());
        self.set_deadline(&mut batch, &upload_id, now.saturating_add(self.config.ttl_ms));
        Ok((UploadResponse::Initiated { upload, is_update: previous.is_some() }, batch))
    }

    /// Extends the running hash over every chunk now contiguous. `fresh` is the chunk this
    /// step received (not yet in the store).
    fn advance_prefix(&mut self, store: &dyn StoreRead, rec: &Upload, fresh: (u64, &[u8])) -> CoreResult<u64> {
        let id = rec.upload_id.clone();
        let p = self.prefixes.entry(id.clone()).or_insert_with(|| Prefix { next: 0, hasher: Sha256::new() });
        let top = rec.highest_chunk.unwrap_or(0);
        while p.next <= top {
            if p.next == fresh.0 {
                p.hasher.update(fresh.1);
            } else {
                match store.get(BLOB, &keys::chunk(&id, p.next))? {
                    Some(bytes) => p.hasher.update(&bytes),
                    None => break,
                }
            }
            p.next += 1;
        }
        Ok(p.next)
    }

    fn chunk(&mut self, now: u64, c: ChunkIn, store: &dyn StoreRead) -> CoreResult<(UploadResponse, WriteBatch)> {
        let ChunkIn { node_id, upload_id, number, data, is_last } = c;
        let (node_id, upload_id) = (node_id.as_str(), upload_id.as_str());
        validate_id("node_id", node_id)?;
        validate_id("upload_id", upload_id)?;
        if number < 0 {
            return Err(invalid(format!("chunk_number: {number} is negative; chunks are numbered from 0")));
        }
        let n = number as u64;
        if n >= MAX_CHUNKS {
            return Err(invalid(format!("chunk_number: {n} is past the limit of {MAX_CHUNKS} chunks")));
        }
        if data.is_empty() {
            return Err(invalid(format!("data: chunk {n} is empty")));
        }
        if data.len() > MAX_CHUNK_BYTES {
            return Err(invalid(format!("data: chunk {n} has {} bytes, at most {MAX_CHUNK_BYTES}", data.len())));
        }
        let Some(mut rec) = load(store, upload_id)? else {
            return Err(CoreError::NotFound(format!("upload {upload_id:?} not found (never initiated, or expired)")));
        };
        if rec.node_id != node_id {
            return Err(invalid(format!("upload {upload_id:?} belongs to node {:?}, not {node_id:?}", rec.node_id)));
        }
        // A repeated chunk with the same bytes is a success, even after completion.
        if let Some(stored) = store.get(BLOB, &keys::chunk(upload_id, n))? {
            if stored == data {
                return Ok((
                    UploadResponse::ChunkStored { upload: rec, chunk: n, duplicate: true },
                    WriteBatch::default(),
                ));
            }
            return Err(CoreError::AlreadyExists(format!(
                "chunk {n} of upload {upload_id:?} was already received with different bytes"
            )));
        }
        if rec.state.is_terminal() {
            return Err(CoreError::FailedPrecondition(format!(
                "upload {upload_id:?} is {}; it takes no more chunks",
                rec.state.name()
            )));
        }
        if let Some(last) = rec.last_chunk {
            if n > last {
                return Err(invalid(format!("chunk {n} is past the last chunk, {last}")));
            }
            if is_last && n != last {
                return Err(invalid(format!("chunk {n} says it is the last, but chunk {last} already did")));
            }
        }
        if is_last && rec.highest_chunk.is_some_and(|h| h > n) {
            return Err(invalid(format!(
                "chunk {n} says it is the last, but chunk {} was already received",
                rec.highest_chunk.unwrap_or(0)
            )));
        }
        let mut batch = WriteBatch::default();
        let len = data.len() as u64;
        rec.chunks_received += 1;
        rec.bytes_received += len;
        rec.highest_chunk = Some(rec.highest_chunk.map_or(n, |h| h.max(n)));
        if is_last {
            rec.last_chunk = Some(n);
        }
        rec.state = UploadState::Uploading;
        rec.updated_ms = now;
        let contiguous = self.advance_prefix(store, &rec, (n, &data))?;
        batch.put(BLOB, keys::chunk(upload_id, n), data);
        batch.put(UPLOAD, keys::digest(upload_id, n), encode_len(len));
        let complete = rec.last_chunk.is_some_and(|l| rec.chunks_received == l + 1 && contiguous == l + 1);
        if complete {
            let sha = self.prefixes.remove(upload_id).map(|p| hex(&p.hasher.finalize())).unwrap_or_default();
            let mut failure = None;
            if rec.expected_size > 0 && rec.expected_size != rec.bytes_received {
                failure = Some(format!(
                    "size mismatch: declared {} bytes, received {}",
                    rec.expected_size, rec.bytes_received
                ));
            } else if let Some(d) = &rec.declared_sha256
                && *d != sha
            {
                failure = Some(format!("SHA-256 mismatch: declared {d}, received {sha}"));
            }
            rec.sha256 = Some(sha);
            match failure {
                None => rec.state = UploadState::Completed,
                Some(reason) => {
                    rec.state = UploadState::Failed;
                    rec.error = Some(reason);
                    Self::free_chunks(store, &mut batch, upload_id)?;
                    batch.delete(BLOB, keys::chunk(upload_id, n));
                    batch.delete(UPLOAD, keys::digest(upload_id, n));
                }
            }
            self.close(&mut batch, upload_id);
        } else {
            self.set_deadline(&mut batch, upload_id, now.saturating_add(self.config.ttl_ms));
        }
        batch.put(UPLOAD, keys::upload(upload_id), rec.encode());
        Ok((UploadResponse::ChunkStored { upload: rec, chunk: n, duplicate: false }, batch))
    }

    fn latest(store: &dyn StoreRead, node_id: &str) -> CoreResult<Upload> {
        validate_id("node_id", node_id)?;
        let Some((_, id)) = node_latest(store, node_id)? else {
            return Err(CoreError::NotFound(format!("node {node_id:?} not found")));
        };
        load(store, &id)?.ok_or_else(|| {
            CoreError::Storage(StoreError::Corrupt {
                keyspace: UPLOAD,
                reason: format!("node {node_id:?} points at missing upload {id:?}"),
            })
        })
    }

    /// Stops an open upload and frees its chunks, as cancel or expiry.
    fn stop(
        &mut self,
        now: u64,
        mut rec: Upload,
        state: UploadState,
        error: Option<String>,
        store: &dyn StoreRead,
    ) -> CoreResult<(Upload, WriteBatch)> {
        let mut batch = WriteBatch::default();
        Self::free_chunks(store, &mut batch, &rec.upload_id)?;
        self.close(&mut batch, &rec.upload_id);
        rec.state = state;
        rec.error = error;
        rec.updated_ms = now;
        batch.put(UPLOAD, keys::upload(&rec.upload_id), rec.encode());
        Ok((rec, batch))
    }

    fn cancel(&mut self, now: u64, node_id: &str, store: &dyn StoreRead) -> CoreResult<(UploadResponse, WriteBatch)> {
        let rec = Self::latest(store, node_id)?;
        match rec.state {
            UploadState::Cancelled => Ok((UploadResponse::Cancelled(rec), WriteBatch::default())),
            UploadState::Completed | UploadState::Failed => Err(CoreError::FailedPrecondition(format!(
                "upload {:?} of node {node_id:?} already ended as {}",
                rec.upload_id,
                rec.state.name()
            ))),
            UploadState::Pending | UploadState::Uploading => {
                let (rec, batch) =
                    self.stop(now, rec, UploadState::Cancelled, Some("cancelled by the client".into()), store)?;
                Ok((UploadResponse::Cancelled(rec), batch))
            }
        }
    }

    fn document(store: &dyn StoreRead, node_id: &str, version: Option<u64>) -> CoreResult<Upload> {
        let rec = match version {
            None => Self::latest(store, node_id)?,
            Some(v) => {
                validate_id("node_id", node_id)?;
                let Some(id) = store.get(UPLOAD, &keys::version(node_id, v))? else {
                    return Err(CoreError::NotFound(format!("node {node_id:?} has no version {v}")));
                };
                let id = String::from_utf8(id)
                    .map_err(|_| StoreError::Corrupt { keyspace: UPLOAD, reason: "version upload id".into() })?;
                load(store, &id)?.ok_or_else(|| CoreError::NotFound(format!("version {v} of {node_id:?} is gone")))?
            }
        };
        if rec.state != UploadState::Completed {
            return Err(CoreError::FailedPrecondition(format!(
                "version {} of node {node_id:?} is {}, not COMPLETED",
                rec.version,
                rec.state.name()
            )));
        }
        Ok(rec)
    }

    fn missing(store: &dyn StoreRead, upload_id: &str, limit: usize) -> CoreResult<Vec<u64>> {
        let Some(rec) = load(store, upload_id)? else {
            return Err(CoreError::NotFound(format!("upload {upload_id:?} not found")));
        };
        let Some(top) = rec.last_chunk.or(rec.highest_chunk) else { return Ok(Vec::new()) };
        let prefix = keys::digest_prefix(upload_id);
        let (mut out, mut expect) = (Vec::new(), 0u64);
        for_each_prefix(store, UPLOAD, &prefix, |k, _| {
            let n = keys::tail_u64(k).unwrap_or(expect);
            while expect < n && out.len() < limit {
                out.push(expect);
                expect += 1;
            }
            expect = n + 1;
            Ok::<_, CoreError>(Continue(()))
        })?;
        while expect <= top && out.len() < limit {
            out.push(expect);
            expect += 1;
        }
        Ok(out)
    }

    fn chunk_lengths(store: &dyn StoreRead, upload_id: &str) -> CoreResult<Vec<u64>> {
        let prefix = keys::digest_prefix(upload_id);
        let mut out = Vec::new();
        for_each_prefix(store, UPLOAD, &prefix, |k, v| {
            if keys::tail_u64(k) != Some(out.len() as u64) {
                return Err(CoreError::Storage(StoreError::Corrupt {
                    keyspace: UPLOAD,
                    reason: format!("upload {upload_id:?} has a gap at chunk {}", out.len()),
                }));
            }
            out.push(decode_len(&v)?);
            Ok(Continue(()))
        })?;
        Ok(out)
    }

    fn handle(
        &mut self,
        now: u64,
        req: UploadRequest,
        store: &dyn StoreRead,
    ) -> CoreResult<(UploadResponse, WriteBatch)> {
        let none = WriteBatch::default;
        match req {
            UploadRequest::Initiate(intake) => self.initiate(now, intake, store),
            UploadRequest::Chunk(c) => self.chunk(now, c, store),
            UploadRequest::Status { node_id } => Ok((UploadResponse::Status(Self::latest(store, &node_id)?), none())),
            UploadRequest::Cancel { node_id } => self.cancel(now, &node_id, store),
            UploadRequest::Document { node_id, version } => {
                Ok((UploadResponse::Document(Self::document(store, &node_id, version)?), none()))
            }
            UploadRequest::ReadChunk { upload_id, number } => {
                validate_id("upload_id", &upload_id)?;
                match store.get(BLOB, &keys::chunk(&upload_id, number))? {
                    Some(b) => Ok((UploadResponse::Chunk(b), none())),
                    None => Err(CoreError::NotFound(format!("upload {upload_id:?} has no chunk {number}"))),
                }
            }
            UploadRequest::Missing { upload_id, limit } => {
                validate_id("upload_id", &upload_id)?;
                Ok((UploadResponse::Missing(Self::missing(store, &upload_id, limit)?), none()))
            }
            UploadRequest::ChunkLengths { upload_id } => {
                validate_id("upload_id", &upload_id)?;
                Ok((UploadResponse::ChunkLengths(Self::chunk_lengths(store, &upload_id)?), none()))
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.expiry.first().map(|(d, _)| *d)
    }
}

impl Machine for UploadMachine {
    type Input = UploadRequest;
    type Output = CoreResult<UploadResponse>;
    type Message = ();

    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: UploadRequest,
        store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output>, StoreError> {
        let mut ready = Ready::answer(token, self.handle(now, input, store))?;
        ready.deadline = self.next_deadline();
        Ok(ready)
    }

    /// Expires uploads that went without a chunk for the TTL, freeing their chunks.
    fn tick(&mut self, now: u64, store: &dyn StoreRead) -> Result<Ready<Self::Output>, StoreError> {
        let mut writes = WriteBatch::default();
        while let Some((deadline, id)) = self.expiry.first().cloned() {
            if deadline > now {
                break;
            }
            let rec = match load(store, &id) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.close(&mut writes, &id);
                    continue;
                }
                Err(CoreError::Storage(e)) => return Err(e),
                Err(_) => continue,
            };
            let why = format!("expired: no chunk for {} s", self.config.ttl_ms / 1000);
            match self.stop(now, rec, UploadState::Failed, Some(why), store) {
                Ok((_, b)) => writes.extend(b),
                Err(CoreError::Storage(e)) => return Err(e),
                Err(_) => self.close(&mut writes, &id),
            }
        }
        Ok(Ready { writes, deadline: self.next_deadline(), ..Ready::default() })
    }
}
