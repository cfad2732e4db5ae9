//! An in-memory [`Store`] with a crash model, for the simulator and tests.
//!
//! It keeps two images: what reads see, and what is durable. `sync` copies the unsynced
//! batches into the durable image; `crash` throws away everything not yet synced, which is
//! exactly what a power cut does to a page cache. `fail_next_sync` injects a disk error.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{Entry, KEYSPACES, Op, Store, StoreError, StoreRead, WriteBatch};

type Image = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Default)]
struct Inner {
    visible: Image,
    durable: Image,
    unsynced: Vec<WriteBatch>,
    fail_next_sync: bool,
    poisoned: bool,
    syncs: u64,
}

/// Cheap to clone: clones share one store, as a node's restart shares its disk.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

fn apply(image: &mut Image, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            Op::Put { keyspace, key, value } => {
                image.entry(*keyspace).or_default().insert(key.clone(), value.clone());
            }
            Op::Delete { keyspace, key } => {
                if let Some(ks) = image.get_mut(keyspace) {
                    ks.remove(key);
                }
            }
        }
    }
}

fn check_keyspace(keyspace: &str) -> Result<(), StoreError> {
    if KEYSPACES.contains(&keyspace) { Ok(()) } else { Err(StoreError::UnknownKeyspace(keyspace.to_owned())) }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; it is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses every write not yet synced, and clears a poisoned state (the node restarts).
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.visible = inner.durable.clone();
        inner.unsynced.clear();
        inner.poisoned = false;
        inner.fail_next_sync = false;
    }

    /// The next `sync` fails with an I/O error and poisons the store until `crash`.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Number of durable entries in a keyspace.
    pub fn durable_len(&self, keyspace: &'static str) -> usize {
        self.lock().durable.get(keyspace).map_or(0, BTreeMap::len)
    }
}

impl StoreRead for MemStore {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_keyspace(keyspace)?;
        let inner = self.lock();
        if inner.poisoned {
            return Err(StoreError::Poisoned);
        }
        Ok(inner.visible.get(keyspace).and_then(|ks| ks.get(key)).cloned())
    }

    fn range(
        &self,
        keyspace: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        check_keyspace(keyspace)?;
        let inner = self.lock();
        if inner.poisoned {
            return Err(StoreError::Poisoned);
        }
        let Some(ks) = inner.visible.get(keyspace) else { return Ok(Vec::new()) };
        let upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        Ok(ks
            .range((Bound::Included(start.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Store for MemStore {
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        for op in &batch.ops {
            match op {
                Op::Put { keyspace, .. } | Op::Delete { keyspace, .. } => check_keyspace(keyspace)?,
            }
        }
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(StoreError::Poisoned);
        }
        apply(&mut inner.visible, batch);
        inner.unsynced.push(batch.clone());
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(StoreError::Poisoned);
        }
        if inner.fail_next_sync {
            inner.fail_next_sync = false;
            inner.poisoned = true;
            return Err(StoreError::Io("injected disk error on sync".into()));
        }
        let batches = std::mem::take(&mut inner.unsynced);
        for b in &batches {
            apply(&mut inner.durable, b);
        }
        inner.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::STATUS;

    #[test]
    fn crash_drops_unsynced_writes() {
        let s = MemStore::new();
        let mut b = WriteBatch::default();
        b.put(STATUS, b"a".to_vec(), b"1".to_vec());
        s.write(&b).unwrap();
        s.sync().unwrap();
        let mut b = WriteBatch::default();
        b.put(STATUS, b"b".to_vec(), b"2".to_vec());
        b.delete(STATUS, b"a".to_vec());
        s.write(&b).unwrap();
        assert_eq!(s.get(STATUS, b"a").unwrap(), None);
        s.crash();
        assert_eq!(s.get(STATUS, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(STATUS, b"b").unwrap(), None);
    }

    #[test]
    fn failed_sync_poisons_until_restart() {
        let s = MemStore::new();
        s.fail_next_sync();
        assert!(s.sync().is_err());
        assert_eq!(s.get(STATUS, b"a"), Err(StoreError::Poisoned));
        s.crash();
        assert_eq!(s.get(STATUS, b"a"), Ok(None));
    }

    #[test]
    fn prefix_scan_pages() {
        let s = MemStore::new();
        let mut b = WriteBatch::default();
        for k in [b"pa".as_slice(), b"pb", b"pc", b"q"] {
            b.put(STATUS, k.to_vec(), b"".to_vec());
        }
        s.write(&b).unwrap();
        let page = s.prefix(STATUS, b"p", None, 2).unwrap();
        assert_eq!(page.len(), 2);
        let rest = s.prefix(STATUS, b"p", Some(&page[1].0), 10).unwrap();
        assert_eq!(rest.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), vec![b"pc".to_vec()]);
    }
}
