//! The production [`Store`]: fjall 3.x, one fjall keyspace per Tessera keyspace.
//!
//! Batches are committed without their own fsync (`manual_journal_persist`); the driver calls
//! [`Store::sync`] once per group, which is `PersistMode::SyncAll`. fjall poisons itself after
//! an I/O failure, so any error here is fatal for the node: the driver stops and the process
//! exits, and a restart recovers from the journal.

use std::collections::BTreeMap;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tessera_core::store::{Entry, KEYSPACES, Op, Store, StoreError, StoreRead, WriteBatch};

pub struct FjallStore {
    db: Database,
    keyspaces: BTreeMap<&'static str, Keyspace>,
}

fn io(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Poisoned => StoreError::Poisoned,
        other => StoreError::Io(other.to_string()),
    }
}

impl FjallStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::builder(dir).manual_journal_persist(true).open().map_err(io)?;
        let mut keyspaces = BTreeMap::new();
        for name in KEYSPACES {
            keyspaces.insert(*name, db.keyspace(name, KeyspaceCreateOptions::default).map_err(io)?);
        }
        Ok(Self { db, keyspaces })
    }

    fn ks(&self, name: &str) -> Result<&Keyspace, StoreError> {
        self.keyspaces.get(name).ok_or_else(|| StoreError::UnknownKeyspace(name.to_owned()))
    }

    /// Bytes on disk, for metrics and node listings.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

impl StoreRead for FjallStore {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.ks(keyspace)?.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        keyspace: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
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
        let mut b = self.db.batch();
        for op in &batch.ops {
            match op {
                Op::Put { keyspace, key, value } => b.insert(self.ks(keyspace)?, key.as_slice(), value.as_slice()),
                Op::Delete { keyspace, key } => b.remove(self.ks(keyspace)?, key.as_slice()),
            }
        }
        b.commit().map_err(io)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
