//! The production [`Store`]: fjall 3.x, one fjall keyspace per Tessera keyspace.
//!
//! Batches are committed without their own fsync (`manual_journal_persist`); the driver calls
//! [`Store::sync`] once per group, which hands fjall's buffered journal bytes to the OS and
//! fsyncs the journal file itself (see `ActiveJournal`). Any I/O failure poisons the store,
//! as fjall poisons itself: every later write and sync fails, so no caller is acknowledged
//! after a failed fsync. The driver stops, the process exits, and a restart recovers from
//! the journal.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tessera_core::store::{BLOB, Entry, KEYSPACES, KV, Op, Store, StoreError, StoreRead, WriteBatch};

use crate::blob_files::BlobFiles;
pub use crate::blob_files::Prestaged;
use crate::row_cache::{Lookup, RowCache};

/// The row cache's size unless configured (`--row-cache-mib`).
pub const DEFAULT_ROW_CACHE_BYTES: usize = 64 << 20;

/// Keys the row cache holds: a key-value key's versions, read by every read and write of it.
fn cached(keyspace: &str, key: &[u8]) -> bool {
    keyspace == KV && key.starts_with(tessera_core::kv::VALUE_PREFIX)
}

pub struct FjallStore {
    db: Database,
    keyspaces: BTreeMap<&'static str, Keyspace>,
    blobs: BlobFiles,
    journal: ActiveJournal,
    /// Set by a failed sync. Linux reports a writeback error to one fsync only: a later one
    /// by another driver could succeed although the pages it should have covered are lost.
    poisoned: AtomicBool,
    /// Latest values of hot key-value keys; `None` when configured off.
    rows: Option<RowCache>,
    /// Taken by batches that touch cached keys, across their commit and their cache update,
    /// so the cache follows fjall's commit order.
    cache_order: std::sync::Mutex<()>,
    /// Tests: runs once between a cache miss's read of fjall and its fill.
    #[cfg(test)]
    before_fill: std::sync::Mutex<Option<FillHook>>,
}

/// The journal file fjall is appending to, opened a second time so that [`Store::sync`] can
/// fsync it without holding fjall's journal lock. `Database::persist` with a sync mode holds
/// that lock through the fsync, and every batch commit needs it: the driver's next writes
/// would wait for the disk, and stepping could not overlap syncing.
///
/// fjall names its journals `0.jnl`, `1.jnl`, ... in its directory and seals one (with a full
/// fsync, under the lock) before it creates the next, and deletes sealed ones once flushed.
/// So after the buffered bytes are handed to the OS, fsyncing the newest file covers them: if
/// they went to an older journal, that one was sealed since, synced. An fsync through any
/// descriptor of a file makes all of its written data durable.
struct ActiveJournal {
    dir: PathBuf,
    current: std::sync::Mutex<(u64, Arc<File>)>,
}

impl ActiveJournal {
    fn path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("{id}.jnl"))
    }

    fn open(dir: &Path) -> Result<Self, StoreError> {
        let current = Self::newest(dir)?;
        Ok(Self { dir: dir.to_owned(), current: std::sync::Mutex::new(current) })
    }

    /// The highest-numbered journal, opened. A file deleted between the listing and the open
    /// was sealed: list again.
    fn newest(dir: &Path) -> Result<(u64, Arc<File>), StoreError> {
        let listing = |e: std::io::Error| StoreError::Io(format!("listing {}: {e}", dir.display()));
        for _ in 0..8 {
            let mut newest = None;
            for entry in std::fs::read_dir(dir).map_err(listing)? {
                let name = entry.map_err(listing)?.file_name();
                let id = name.to_str().and_then(|n| n.strip_suffix(".jnl")).and_then(|n| n.parse::<u64>().ok());
                newest = newest.max(id);
            }
            let id = newest.ok_or_else(|| StoreError::Io(format!("no journal file in {}", dir.display())))?;
            let path = Self::path(dir, id);
            match File::open(&path) {
                Ok(f) => return Ok((id, Arc::new(f))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io(format!("opening {}: {e}", path.display()))),
            }
        }
        Err(StoreError::Io(format!("the journals in {} kept changing while being listed", dir.display())))
    }

    /// Makes durable every journal byte handed to the OS before this call.
    fn sync(&self) -> Result<(), StoreError> {
        let file = {
            let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            // Moved on: a next file exists, or ours is gone (fjall may have sealed and
            // deleted several since the last sync).
            let gone = |f: &File| f.metadata().map(|m| m.nlink() == 0);
            let moved = Self::path(&self.dir, cur.0 + 1).exists()
                || gone(&cur.1).map_err(|e| StoreError::Io(format!("stat of the journal: {e}")))?;
            if moved {
                let (id, file) = Self::newest(&self.dir)?;
                if id > cur.0 {
                    *cur = (id, file);
                }
            }
            cur.1.clone()
        };
        file.sync_all().map_err(|e| StoreError::Io(format!("fsync of the journal: {e}")))
    }
}

#[cfg(test)]
type FillHook = Box<dyn FnOnce(&FjallStore) + Send>;

fn op_cached(op: &Op) -> bool {
    match op {
        Op::Put { keyspace, key, .. } | Op::Delete { keyspace, key } => cached(keyspace, key),
    }
}

fn op_key(op: &Op) -> &[u8] {
    match op {
        Op::Put { key, .. } | Op::Delete { key, .. } => key,
    }
}

fn io(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Poisoned => StoreError::Poisoned,
        other => StoreError::Io(other.to_string()),
    }
}

impl FjallStore {
    fn check(&self) -> Result<(), StoreError> {
        match self.poisoned.load(Ordering::SeqCst) {
            true => Err(StoreError::Poisoned),
            false => Ok(()),
        }
    }

    /// Opens (or creates) the store in a data directory: fjall in `db/`, blob files in `blobs/`,
    /// with the default row cache.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_row_cache(data_dir, DEFAULT_ROW_CACHE_BYTES)
    }

    /// [`FjallStore::open`] with a row cache of `row_cache_bytes` (0: none).
    pub fn open_with_row_cache(data_dir: &Path, row_cache_bytes: usize) -> Result<Self, StoreError> {
        let dir = &data_dir.join("db");
        // A bounded block cache keeps tesserad's memory flat whatever it stores; the large
        // values (upload chunks) live in files, not in memtables (see `blob_files`).
        let db = Database::builder(dir).manual_journal_persist(true).cache_size(32 << 20).open().map_err(io)?;
        let mut keyspaces = BTreeMap::new();
        for name in KEYSPACES {
            keyspaces.insert(*name, db.keyspace(name, KeyspaceCreateOptions::default).map_err(io)?);
        }
        let index = keyspaces.get(BLOB).cloned().ok_or_else(|| StoreError::UnknownKeyspace(BLOB.to_owned()))?;
        let blob_dir = data_dir.join("blobs");
        let blobs = BlobFiles::open(blob_dir, index)?;
        let journal = ActiveJournal::open(dir)?;
        let rows = (row_cache_bytes > 0).then(|| RowCache::new(row_cache_bytes));
        Ok(Self {
            db,
            keyspaces,
            blobs,
            journal,
            poisoned: AtomicBool::new(false),
            rows,
            cache_order: std::sync::Mutex::new(()),
            #[cfg(test)]
            before_fill: Default::default(),
        })
    }

    fn get_uncached(&self, keyspace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.ks(keyspace)?.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn ks(&self, name: &str) -> Result<&Keyspace, StoreError> {
        self.keyspaces.get(name).ok_or_else(|| StoreError::UnknownKeyspace(name.to_owned()))
    }

    /// Writes and fsyncs a `blob` value ahead of the batch expected to put it under `key`
    /// (see `blob_files`); call [`FjallStore::release_blob`] once that batch is done.
    pub fn prestage_blob(&self, key: &[u8], bytes: &[u8]) -> Result<Prestaged, StoreError> {
        self.blobs.prestage(key, bytes)
    }

    /// Drops a prestaged value no batch adopted.
    pub fn release_blob(&self, key: &[u8], p: Prestaged) {
        self.blobs.release(key, p)
    }

    /// The row cache's counts, when there is one.
    pub fn row_cache_stats(&self) -> Option<crate::row_cache::RowCacheStats> {
        self.rows.as_ref().map(RowCache::stats)
    }

    /// Bytes on disk, for metrics and node listings.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0) + self.blobs.bytes()
    }
}

impl StoreRead for FjallStore {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if keyspace == BLOB {
            return self.blobs.get(key);
        }
        let read = || self.get_uncached(keyspace, key);
        match &self.rows {
            Some(rows) if cached(keyspace, key) => match rows.get(key) {
                Lookup::Hit(v) => Ok(Some(v)),
                Lookup::Miss(writes) => {
                    let v = read()?;
                    #[cfg(test)]
                    {
                        let hook = self.before_fill.lock().unwrap_or_else(|e| e.into_inner()).take();
                        if let Some(hook) = hook {
                            hook(self);
                        }
                    }
                    if let Some(v) = &v {
                        rows.fill(key, v, writes);
                    }
                    Ok(v)
                }
            },
            _ => read(),
        }
    }

    fn get_for_update(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.rows {
            Some(rows) if cached(keyspace, key) => match rows.peek(key) {
                Some(v) => Ok(Some(v)),
                None => self.get_uncached(keyspace, key),
            },
            _ => self.get(keyspace, key),
        }
    }

    fn range(
        &self,
        keyspace: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if keyspace == BLOB {
            return self.blobs.range(start, end, limit);
        }
        let ks = self.ks(keyspace)?;
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let iter = match end {
            Some(e) => ks.range(start..e),
            None => ks.range(start..),
        };
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (k, v) = guard.into_inner().map_err(io)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

impl Store for FjallStore {
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.check()?;
        let mut b = self.db.batch();
        let blob_ops = batch.ops.iter().filter_map(|op| match op {
            Op::Put { keyspace: BLOB, key, value } => Some((key.as_slice(), Some(value.as_slice()))),
            Op::Delete { keyspace: BLOB, key } => Some((key.as_slice(), None)),
            _ => None,
        });
        let staged = self.blobs.stage(blob_ops, &mut b)?;
        for op in &batch.ops {
            match op {
                Op::Put { keyspace: BLOB, .. } | Op::Delete { keyspace: BLOB, .. } => {}
                Op::Put { keyspace, key, value } => b.insert(self.ks(keyspace)?, key.as_slice(), value.as_slice()),
                Op::Delete { keyspace, key } => b.remove(self.ks(keyspace)?, key.as_slice()),
            }
        }
        // Only batches that touch cached keys go through the cache, one at a time.
        let rows = self.rows.as_ref().filter(|_| batch.ops.iter().any(op_cached));
        let _order = rows.map(|_| self.cache_order.lock().unwrap_or_else(|e| e.into_inner()));
        let was: Vec<bool> = match rows {
            Some(rows) => batch.ops.iter().map(|op| op_cached(op) && rows.begin_write(op_key(op))).collect(),
            None => Vec::new(),
        };
        let committed = b.commit();
        if let Some(rows) = rows {
            for (op, was) in batch.ops.iter().zip(was).filter(|(op, _)| op_cached(op)) {
                let value = match (op, &committed) {
                    (Op::Put { value, .. }, Ok(())) => Some(value.as_slice()),
                    _ => None,
                };
                rows.end_write(op_key(op), value, was);
            }
        }
        committed.map_err(io)?;
        self.blobs.committed(staged);
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.check()?;
        // Only files whose removal was committed before this persist may go after it.
        let doomed = self.blobs.take_doomed();
        // Hands fjall's buffered journal bytes to the OS (under its lock, briefly), then
        // fsyncs them outside it (see `ActiveJournal`).
        let synced = self.db.persist(PersistMode::Buffer).map_err(io).and_then(|()| self.journal.sync());
        if let Err(e) = synced {
            self.poisoned.store(true, Ordering::SeqCst);
            return Err(e);
        }
        self.blobs.unlink(doomed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tessera_core::store::STATUS;

    #[test]
    fn synced_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FjallStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(STATUS, b"a".to_vec(), b"1".to_vec());
            b.put(STATUS, b"b".to_vec(), b"2".to_vec());
            s.write(&b).unwrap();
            s.sync().unwrap();
            let mut b = WriteBatch::default();
            b.delete(STATUS, b"a".to_vec());
            s.write(&b).unwrap();
            s.sync().unwrap();
        }
        let s = FjallStore::open(dir.path()).unwrap();
        assert_eq!(s.get(STATUS, b"a").unwrap(), None);
        assert_eq!(s.get(STATUS, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.prefix(STATUS, b"", None, 10).unwrap().len(), 1);
    }

    #[test]
    fn sync_follows_the_journal_fjall_moves_on_to() {
        let dir = tempfile::tempdir().unwrap();
        // Incompressible, so the journal really grows by a megabyte a write.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let big: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let jnl = |id: u64| ActiveJournal::path(&dir.path().join("db"), id);
        {
            let s = FjallStore::open(dir.path()).unwrap();
            // fjall seals a journal past 64 MB when a memtable is flushed, and deletes it
            // once flushed.
            let seal = |from: u32| {
                for i in from..from + 70 {
                    let mut b = WriteBatch::default();
                    b.put(STATUS, i.to_be_bytes().to_vec(), big.clone());
                    s.write(&b).unwrap();
                }
                s.ks(STATUS).unwrap().rotate_memtable_and_wait().unwrap();
            };
            let current = || s.journal.current.lock().unwrap().0;
            let mut b = WriteBatch::default();
            b.put(STATUS, b"a".to_vec(), b"1".to_vec());
            s.write(&b).unwrap();
            s.sync().unwrap();
            assert_eq!(current(), 0);
            // One journal further: the next file is there.
            seal(0);
            s.sync().unwrap();
            assert_eq!(current(), 1);
            // Two further with no sync between: the file in between is gone already.
            seal(100);
            seal(200);
            assert!(!jnl(0).exists() && !jnl(1).exists() && !jnl(2).exists(), "sealed journals kept");
            s.sync().unwrap();
            assert!(current() >= 3 && jnl(current()).exists(), "syncing journal {} fjall left", current());
        }
        let s = FjallStore::open(dir.path()).unwrap();
        assert_eq!(s.get(STATUS, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(STATUS, &269u32.to_be_bytes()).unwrap(), Some(big));
    }

    /// A key-value key (cached) as the kv machine writes it.
    fn kv_key(i: u32) -> Vec<u8> {
        tessera_core::kv::VALUE_PREFIX.iter().copied().chain(b"acme\0".iter().copied()).chain(i.to_be_bytes()).collect()
    }

    #[test]
    fn cached_reads_never_go_back_while_a_writer_commits() {
        const KEYS: u32 = 2048;
        let dir = tempfile::tempdir().unwrap();
        // Room for a few hundred of the keys: readers miss, read fjall and fill the cache
        // all the time while the writer moves the same keys on.
        let s = Arc::new(FjallStore::open_with_row_cache(dir.path(), 32 << 10).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3u32)
            .map(|r| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = vec![0u64; KEYS as usize];
                    let mut i = r * 7;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 13) % KEYS;
                        let got = s.get(KV, &kv_key(i)).unwrap();
                        let n = got.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                        assert!(n >= seen[i as usize], "key {i} went back from {} to {n}", seen[i as usize]);
                        seen[i as usize] = n;
                    }
                })
            })
            .collect();
        for n in 1..=20_000u64 {
            let mut b = WriteBatch::default();
            b.put(KV, kv_key((n % u64::from(KEYS)) as u32), n.to_be_bytes().to_vec());
            s.write(&b).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        // A fill that raced a write and won would still be cached here, older than fjall.
        for i in 0..KEYS {
            let stored = s.ks(KV).unwrap().get(kv_key(i)).unwrap().map(|v| v.to_vec());
            assert_eq!(s.get(KV, &kv_key(i)).unwrap(), stored, "key {i}: the cache disagrees with the store");
        }
    }

    #[test]
    fn a_read_that_raced_a_write_leaves_the_newer_value_cached() {
        let dir = tempfile::tempdir().unwrap();
        let s = FjallStore::open(dir.path()).unwrap();
        let put = |s: &FjallStore, v: &[u8]| {
            let mut b = WriteBatch::default();
            b.put(KV, kv_key(1), v.to_vec());
            s.write(&b).unwrap();
        };
        put(&s, b"old");
        // A reader that finds the key uncached (writes fill nothing) reads "old" from fjall;
        // before it fills the cache, the writer commits "new".
        *s.before_fill.lock().unwrap() = Some(Box::new(move |s: &FjallStore| put(s, b"new")));
        assert_eq!(s.get(KV, &kv_key(1)).unwrap(), Some(b"old".to_vec()));
        assert_eq!(s.get(KV, &kv_key(1)).unwrap(), Some(b"new".to_vec()), "the older read was cached");
        // The same with a delete.
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = FjallStore::open(dir2.path()).unwrap();
        put(&s2, b"old");
        *s2.before_fill.lock().unwrap() = Some(Box::new(|s: &FjallStore| {
            let mut b = WriteBatch::default();
            b.delete(KV, kv_key(1));
            s.write(&b).unwrap();
        }));
        assert_eq!(s2.get(KV, &kv_key(1)).unwrap(), Some(b"old".to_vec()));
        assert_eq!(s2.get(KV, &kv_key(1)).unwrap(), None, "a deleted key's older read was cached");
    }

    #[test]
    fn keys_only_written_take_no_room_and_a_cached_key_follows_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = FjallStore::open(dir.path()).unwrap();
        let rows = s.rows.as_ref().unwrap();
        let put = |v: &[u8]| {
            let mut b = WriteBatch::default();
            b.put(KV, kv_key(1), v.to_vec());
            s.write(&b).unwrap();
        };
        put(b"1");
        // A write's merge reads its key without caching it.
        assert_eq!(s.get_for_update(KV, &kv_key(1)).unwrap(), Some(b"1".to_vec()));
        put(b"2");
        assert_eq!(rows.peek(&kv_key(1)), None, "a key only written was cached");
        // A read caches it; writes then keep it current, and a merge reads it from there.
        assert_eq!(s.get(KV, &kv_key(1)).unwrap(), Some(b"2".to_vec()));
        put(b"3");
        assert_eq!(rows.peek(&kv_key(1)), Some(b"3".to_vec()));
        assert_eq!(s.get_for_update(KV, &kv_key(1)).unwrap(), Some(b"3".to_vec()));
        assert_eq!(s.get(KV, &kv_key(1)).unwrap(), Some(b"3".to_vec()));
        // Keys outside the value prefix never go through the cache.
        let mut b = WriteBatch::default();
        b.put(KV, b"#keys".to_vec(), b"7".to_vec());
        s.write(&b).unwrap();
        assert_eq!(s.get(KV, b"#keys").unwrap(), Some(b"7".to_vec()));
        assert_eq!(rows.peek(b"#keys"), None);
    }

    #[test]
    fn a_cached_key_deleted_reads_as_absent_and_survives_reopen_uncached() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FjallStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(KV, kv_key(1), b"one".to_vec());
            b.put(KV, kv_key(2), b"two".to_vec());
            s.write(&b).unwrap();
            assert_eq!(s.get(KV, &kv_key(1)).unwrap(), Some(b"one".to_vec()));
            let mut b = WriteBatch::default();
            b.delete(KV, kv_key(1));
            s.write(&b).unwrap();
            assert_eq!(s.get(KV, &kv_key(1)).unwrap(), None);
            s.sync().unwrap();
        }
        // A new process starts cold and reads what is durable.
        let s = FjallStore::open(dir.path()).unwrap();
        assert_eq!(s.get(KV, &kv_key(1)).unwrap(), None);
        assert_eq!(s.get(KV, &kv_key(2)).unwrap(), Some(b"two".to_vec()));
        // Scans see every key whatever the cache holds.
        assert_eq!(s.prefix(KV, tessera_core::kv::VALUE_PREFIX, None, 10).unwrap().len(), 1);
    }

    fn blob_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn blobs_are_files_written_once_and_freed_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = FjallStore::open(dir.path()).unwrap();
        let big = vec![7u8; 1 << 20];
        let mut b = WriteBatch::default();
        b.put(BLOB, b"c1".to_vec(), big.clone());
        b.put(BLOB, b"c2".to_vec(), b"small".to_vec());
        b.put(STATUS, b"rec".to_vec(), b"names c1".to_vec());
        s.write(&b).unwrap();
        s.sync().unwrap();
        assert_eq!(s.get(BLOB, b"c1").unwrap(), Some(big.clone()));
        assert_eq!(blob_files(dir.path()).len(), 2);
        let got = s.range(BLOB, b"c", None, 10).unwrap();
        assert_eq!(got.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![&b"c1"[..], b"c2"]);

        // Replace and delete: the old files outlive the batch until a sync covers it.
        let mut b = WriteBatch::default();
        b.put(BLOB, b"c2".to_vec(), b"other".to_vec());
        b.delete(BLOB, b"c1".to_vec());
        s.write(&b).unwrap();
        assert_eq!(s.get(BLOB, b"c1").unwrap(), None);
        assert_eq!(s.get(BLOB, b"c2").unwrap(), Some(b"other".to_vec()));
        assert_eq!(blob_files(dir.path()).len(), 3);
        s.sync().unwrap();
        assert_eq!(blob_files(dir.path()).len(), 1);
        assert!(s.disk_space() >= 5);
    }

    #[test]
    fn reopen_removes_orphans_and_keeps_named_blobs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FjallStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(BLOB, b"kept".to_vec(), b"bytes".to_vec());
            s.write(&b).unwrap();
            s.sync().unwrap();
            // A delete committed but never synced: the file must survive (the index may too).
            let mut b = WriteBatch::default();
            b.delete(BLOB, b"kept".to_vec());
            s.write(&b).unwrap();
        }
        // A file from a batch that never committed.
        std::fs::write(dir.path().join("blobs").join(format!("{:016x}", 999u64)), b"torn").unwrap();
        let s = FjallStore::open(dir.path()).unwrap();
        let kept = s.get(BLOB, b"kept").unwrap();
        assert!(kept.is_none() || kept == Some(b"bytes".to_vec()));
        assert_eq!(blob_files(dir.path()).len(), usize::from(kept.is_some()));
        // New generations never reuse an old file name.
        let mut b = WriteBatch::default();
        b.put(BLOB, b"new".to_vec(), b"n".to_vec());
        s.write(&b).unwrap();
        s.sync().unwrap();
        assert!(blob_files(dir.path()).iter().all(|n| n.as_str() > "00000000000003e7"));
    }
}
