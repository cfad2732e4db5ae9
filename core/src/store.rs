//! The storage trait the core reads through, and the write batch it returns.
//!
//! Storage is a set of named, ordered keyspaces. The core only reads ([`StoreRead`]); a
//! driver applies each [`WriteBatch`] with [`Store::write`] (visible, not yet durable) and
//! calls [`Store::sync`] before releasing any reply that depends on it. One `sync` may cover
//! many batches: that is group commit.

/// Every keyspace Tessera uses, so a backend can open them all up front.
pub const KEYSPACES: &[&str] = &[META, STATUS, STATE, UPLOAD, BLOB, CATALOG, KV];

/// Cluster metadata (layout, tenants) and the Raft log that replicates it.
pub const META: &str = "meta";
/// The status registry.
pub const STATUS: &str = "status";
/// The transactional state store (statehouse).
pub const STATE: &str = "state";
/// The document repository: uploads, their chunks and versions.
pub const UPLOAD: &str = "upload";
/// The data catalog (metacat): its resource tree, names, idempotency records.
pub const CATALOG: &str = "catalog";
/// The key-value data plane: this node's replicas of keys, tenants, hints.
pub const KV: &str = "kv";
/// Large values written whole and read whole (upload chunk bodies, up to megabytes each).
/// A backend may keep them outside its log, so each value's bytes are written once.
pub const BLOB: &str = "blob";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unknown keyspace {0:?}")]
    UnknownKeyspace(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("corrupt record in {keyspace}: {reason}")]
    Corrupt { keyspace: &'static str, reason: String },
    #[error("store is poisoned after an earlier failure; restart the node")]
    Poisoned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { keyspace: &'static str, key: Vec<u8>, value: Vec<u8> },
    Delete { keyspace: &'static str, key: Vec<u8> },
}

/// Writes a step wants made durable, applied atomically in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<Op>,
}

impl WriteBatch {
    pub fn put(&mut self, keyspace: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put { keyspace, key: key.into(), value: value.into() });
    }

    pub fn delete(&mut self, keyspace: &'static str, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete { keyspace, key: key.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }
}

pub type Entry = (Vec<u8>, Vec<u8>);

/// Read access to the ordered keyspaces.
pub trait StoreRead {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// [`StoreRead::get`] of a key the caller is about to write (a merge before its write). A
    /// store that caches what it reads may answer from its cache but need not fill it, so
    /// keys that are only ever written take no room there.
    fn get_for_update(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(keyspace, key)
    }

    /// Up to `limit` entries with `start <= key < end` (no `end`: to the keyspace's end), in
    /// key order. Bounded so callers page instead of loading a whole keyspace.
    fn range(
        &self,
        keyspace: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after` (if given).
    fn prefix(
        &self,
        keyspace: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match after {
            Some(a) if a >= prefix => successor(a),
            _ => prefix.to_vec(),
        };
        let end = prefix_end(prefix);
        self.range(keyspace, &start, end.as_deref(), limit)
    }
}

/// A store a driver can write to.
pub trait Store: StoreRead {
    /// Applies the batch atomically: visible to later reads, durable only after `sync`.
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), StoreError>;
}

// A store shared by several drivers (one per log) on one node.
impl<S: StoreRead + ?Sized> StoreRead for std::sync::Arc<S> {
    fn get(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(keyspace, key)
    }
    fn get_for_update(&self, keyspace: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get_for_update(keyspace, key)
    }
    fn range(
        &self,
        keyspace: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        (**self).range(keyspace, start, end, limit)
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        (**self).write(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        (**self).sync()
    }
}

/// Rows one [`for_each_prefix`] read fetches at a time.
const WALK_PAGE: usize = 1024;

/// Visits every entry whose key starts with `prefix`, in key order, reading a page at a time
/// so a long prefix is never loaded whole. `f` may stop the walk early with `Break`.
pub fn for_each_prefix<E: From<StoreError>>(
    store: &dyn StoreRead,
    keyspace: &'static str,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], Vec<u8>) -> Result<std::ops::ControlFlow<()>, E>,
) -> Result<(), E> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let rows = store.prefix(keyspace, prefix, after.as_deref(), WALK_PAGE)?;
        let done = rows.len() < WALK_PAGE;
        for (k, v) in rows {
            let stop = f(&k, v)?.is_break();
            after = Some(k);
            if stop {
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// The smallest key greater than `key`.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The first key after every key that starts with `prefix`; `None` if there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
