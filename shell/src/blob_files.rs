//! The `blob` keyspace on disk: one file per value, indexed by a fjall keyspace.
//!
//! Upload chunks are megabytes each. Stored in fjall they are written twice (journal, then
//! blob file or SSTable) and sit in memtables until a flush; as files they are written once
//! and memory stays flat however large the document. The index maps each key to a file
//! generation and length, and is committed in the same fjall batch as the rest of the write,
//! so a blob and the records that mention it appear (and disappear) together.
//!
//! Crash safety rests on two orderings:
//! - a file is written and fsynced (and its directory entry too) *before* the index entry
//!   naming it is committed, so an index entry that reached the disk names complete bytes,
//!   even if fjall's journal reached the disk through the OS before our own `sync`;
//! - a file replaced or deleted is unlinked only *after* the sync that made the index stop
//!   naming it, so a crash never leaves a durable index entry without its file.
//!
//! Files no index entry names (written by a batch that never committed, or not yet unlinked
//! at a crash) are removed when the store opens.
//!
//! Writing and fsyncing a file inside `write` would serialise every chunk behind one driver
//! thread. So the upload service *prestages* a chunk (writes and fsyncs its file from its own
//! task, many in parallel) before asking the machine; when the machine's batch then puts the
//! same bytes under the same key, the prestaged file is adopted instead of written again
//! (matched by length and a 128-bit XXH3 of the bytes). A prestaged file the machine did not
//! want (a duplicate, a rejected chunk) is removed when the service releases it. Prestaging
//! is only a head start: correctness never depends on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Keyspace, OwnedWriteBatch};
use tessera_core::store::{BLOB, Entry, StoreError};

pub struct BlobFiles {
    dir: PathBuf,
    index: Keyspace,
    next_gen: AtomicU64,
    bytes: AtomicU64,
    /// Files whose index entries are gone from committed batches, unlinked after the next sync.
    doomed: Mutex<Vec<u64>>,
    /// Files written ahead of their batch, by key, until adopted or released.
    prestaged: Mutex<BTreeMap<Vec<u8>, Vec<Prestaged>>>,
}

/// A file written and fsynced ahead of the batch that will name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prestaged {
    gen_: u64,
    len: u64,
    digest: u128,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { keyspace: BLOB, reason: reason.into() }
}

/// Index value: file generation and length.
fn encode(gen_: u64, len: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&gen_.to_be_bytes());
    v[8..].copy_from_slice(&len.to_be_bytes());
    v
}

fn decode(v: &[u8]) -> Result<(u64, u64), StoreError> {
    let (g, l) = v.split_at_checked(8).ok_or_else(|| corrupt("short index entry"))?;
    let g = u64::from_be_bytes(g.try_into().map_err(|_| corrupt("index generation"))?);
    let l = u64::from_be_bytes(l.try_into().map_err(|_| corrupt("index length"))?);
    Ok((g, l))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing directory", dir, e))
}

impl BlobFiles {
    /// Opens the files under `dir` with `index`, removing files the index does not name.
    pub fn open(dir: PathBuf, index: Keyspace) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
        let mut named = BTreeMap::new();
        let mut bytes = 0;
        for guard in index.iter() {
            let (_, v) = guard.into_inner().map_err(|e| StoreError::Io(e.to_string()))?;
            let (g, len) = decode(&v)?;
            named.insert(g, len);
            bytes += len;
        }
        let mut max_gen = named.keys().next_back().copied().unwrap_or(0);
        let mut present = BTreeSet::new();
        let mut removed = 0usize;
        for entry in fs::read_dir(&dir).map_err(|e| io("listing", &dir, e))? {
            let entry = entry.map_err(|e| io("listing", &dir, e))?;
            let name = entry.file_name();
            let Some(g) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) else {
                tracing::warn!(file = ?name, "unexpected file among blobs; leaving it");
                continue;
            };
            max_gen = max_gen.max(g);
            if named.contains_key(&g) {
                present.insert(g);
            } else {
                fs::remove_file(entry.path()).map_err(|e| io("removing orphan", &entry.path(), e))?;
                removed += 1;
            }
        }
        if let Some(g) = named.keys().find(|g| !present.contains(*g)) {
            return Err(corrupt(format!(
                "blob file {g:016x} is named by the index but missing from {}",
                dir.display()
            )));
        }
        if removed > 0 {
            tracing::info!(removed, "removed blob files left by an interrupted write");
        }
        Ok(Self {
            dir,
            index,
            next_gen: AtomicU64::new(max_gen + 1),
            bytes: AtomicU64::new(bytes),
            doomed: Mutex::new(Vec::new()),
            prestaged: Mutex::new(BTreeMap::new()),
        })
    }

    fn path(&self, gen_: u64) -> PathBuf {
        self.dir.join(format!("{gen_:016x}"))
    }

    /// Bytes held in blob files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn read(&self, index_value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (g, len) = decode(index_value)?;
        let path = self.path(g);
        let bytes = fs::read(&path).map_err(|e| io("reading", &path, e))?;
        if bytes.len() as u64 != len {
            return Err(corrupt(format!("blob file {g:016x} has {} bytes, index says {len}", bytes.len())));
        }
        Ok(bytes)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.index.get(key).map_err(|e| StoreError::Io(e.to_string()))? {
            Some(v) => self.read(&v).map(Some),
            None => Ok(None),
        }
    }

    pub fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let iter = match end {
            Some(e) => self.index.range(start..e),
            None => self.index.range(start..),
        };
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (k, v) = guard.into_inner().map_err(|e| StoreError::Io(e.to_string()))?;
            out.push((k.to_vec(), self.read(&v)?));
        }
        Ok(out)
    }

    fn write_file(&self, bytes: &[u8]) -> Result<u64, StoreError> {
        let g = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let path = self.path(g);
        let write = || -> std::io::Result<()> {
            let mut f = File::options().write(true).create_new(true).open(&path)?;
            f.write_all(bytes)?;
            f.sync_data()
        };
        write().map_err(|e| io("writing", &path, e))?;
        Ok(g)
    }

    /// Writes and fsyncs `bytes` for a batch expected to put them under `key`.
    pub fn prestage(&self, key: &[u8], bytes: &[u8]) -> Result<Prestaged, StoreError> {
        let g = self.write_file(bytes)?;
        fsync_dir(&self.dir)?;
        let p = Prestaged { gen_: g, len: bytes.len() as u64, digest: xxhash_rust::xxh3::xxh3_128(bytes) };
        lock(&self.prestaged).entry(key.to_vec()).or_default().push(p);
        Ok(p)
    }

    /// Forgets a prestaged file; removes it unless a committed batch adopted it.
    pub fn release(&self, key: &[u8], p: Prestaged) {
        let mut map = lock(&self.prestaged);
        let Some(list) = map.get_mut(key) else { return };
        let Some(i) = list.iter().position(|x| *x == p) else { return };
        list.swap_remove(i);
        if list.is_empty() {
            map.remove(key);
        }
        drop(map);
        self.unlink(vec![p.gen_]);
    }

    /// Takes a prestaged file holding exactly `bytes` for `key`, if there is one.
    fn adopt(&self, key: &[u8], bytes: &[u8]) -> Option<u64> {
        let mut map = lock(&self.prestaged);
        let list = map.get_mut(key)?;
        let digest = xxhash_rust::xxh3::xxh3_128(bytes);
        let i = list.iter().position(|p| p.len == bytes.len() as u64 && p.digest == digest)?;
        let p = list.swap_remove(i);
        if list.is_empty() {
            map.remove(key);
        }
        Some(p.gen_)
    }

    /// Writes and fsyncs the files of a batch's blob operations and adds their index changes
    /// to `batch`. Returns the generations to unlink once `batch` has committed.
    pub fn stage<'a>(
        &self,
        ops: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        batch: &mut OwnedWriteBatch,
    ) -> Result<Staged, StoreError> {
        // What this batch already did to a key, ahead of the committed index.
        let mut overlay: BTreeMap<&[u8], Option<(u64, u64)>> = BTreeMap::new();
        let mut staged = Staged::default();
        for (key, value) in ops {
            let before = match overlay.get(key) {
                Some(b) => *b,
                None => {
                    self.index.get(key).map_err(|e| StoreError::Io(e.to_string()))?.map(|v| decode(&v)).transpose()?
                }
            };
            if let Some((g, len)) = before {
                staged.doomed.push(g);
                staged.freed += len;
            }
            let after = match value {
                Some(bytes) => {
                    let g = match self.adopt(key, bytes) {
                        Some(g) => g,
                        None => {
                            staged.created = true;
                            self.write_file(bytes)?
                        }
                    };
                    staged.added += bytes.len() as u64;
                    batch.insert(&self.index, key, encode(g, bytes.len() as u64));
                    Some((g, bytes.len() as u64))
                }
                None => {
                    if before.is_some() {
                        batch.remove(&self.index, key);
                    }
                    None
                }
            };
            overlay.insert(key, after);
        }
        if staged.created {
            fsync_dir(&self.dir)?;
        }
        Ok(staged)
    }

    /// Records a committed batch's effects.
    pub fn committed(&self, staged: Staged) {
        self.bytes.fetch_add(staged.added, Ordering::Relaxed);
        self.bytes.fetch_sub(staged.freed.min(self.bytes()), Ordering::Relaxed);
        if !staged.doomed.is_empty() {
            lock(&self.doomed).extend(staged.doomed);
        }
    }

    /// Generations whose removal is committed; take them *before* a sync, unlink them after.
    pub fn take_doomed(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.doomed))
    }

    /// Unlinks files whose index entries are durably gone. A failure only leaves an orphan,
    /// which the next open removes.
    pub fn unlink(&self, gens: Vec<u64>) {
        for g in gens {
            let path = self.path(g);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a freed blob file");
            }
        }
    }
}

/// The file-side effects of one batch, applied once its index changes have committed.
#[derive(Default)]
pub struct Staged {
    created: bool,
    added: u64,
    freed: u64,
    doomed: Vec<u64>,
}
