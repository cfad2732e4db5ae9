//! The newest value of hot keys, in front of fjall's point reads.
//!
//! Every key-value read, and every write's merge, looks its key up in fjall's memtable: a
//! skiplist holding each entry written since the last flush (three per put). Under load that
//! lookup was the largest single cost of a replica answering reads (perf: 18 % of its CPU).
//! As ScyllaDB's row cache (and Cassandra's and RocksDB's) does, this keeps the latest
//! value of recently used keys in hash maps, so a hit costs a hash and a copy.
//!
//! Reads fill it; writes only update keys it holds, so keys that are written and never read
//! (a write-heavy load) cost a write one lookup here and take no room. The read a write
//! does of its own key first (its merge) is served from the cache when the key is there,
//! and fills nothing otherwise.
//!
//! Coherence: the store updates the cache after each batch is committed to fjall, with
//! batches that touch cached keys taken one at a time, so the cache follows the commit
//! order. A reader that missed fills the cache from fjall only if no write reached the
//! key's shard between its miss and its fill ([`Lookup::Miss`] carries the shard's write
//! count), so a fill never installs a value older than the store's. A fill that lands
//! between a write's commit and its cache update makes the key cached, so the update then
//! replaces it.
//!
//! Eviction is by generations, with nothing tracked per entry: each shard fills a current
//! map; once that outgrows half the shard's budget it becomes the previous map and the older
//! one is dropped. A hit in the previous map moves the entry back to the current one, so
//! keys in use stay and the rest age out.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

/// Shards, so readers on several threads and the writer rarely wait on one lock.
const SHARDS: usize = 16;
/// Bookkeeping per entry, counted with its bytes.
const ENTRY_OVERHEAD: usize = 64;

pub struct RowCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    /// Bytes the current map of one shard may hold before it ages.
    generation_bytes: usize,
    /// Largest entry kept: one large value must not push out many small ones.
    max_entry: usize,
}

#[derive(Default)]
struct Shard {
    current: HashMap<Vec<u8>, Vec<u8>>,
    previous: HashMap<Vec<u8>, Vec<u8>>,
    current_bytes: usize,
    /// Writes (puts and removals) this shard has seen: a fill that raced one is dropped.
    writes: u64,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Vec<u8>),
    /// Not cached: the shard's write count, to pass to [`RowCache::fill`] with the value
    /// read from the store.
    Miss(u64),
}

fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Shard {
    fn insert(&mut self, key: &[u8], value: &[u8], generation_bytes: usize) {
        self.previous.remove(key);
        let added = cost(key, value);
        if let Some(old) = self.current.insert(key.to_vec(), value.to_vec()) {
            self.current_bytes -= cost(key, &old);
        }
        self.current_bytes += added;
        if self.current_bytes > generation_bytes {
            self.previous = std::mem::take(&mut self.current);
            self.current_bytes = 0;
        }
    }
}

impl RowCache {
    /// A cache of about `budget` bytes (keys, values and bookkeeping) in all.
    pub fn new(budget: usize) -> RowCache {
        let per_shard = budget / SHARDS;
        RowCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            generation_bytes: per_shard / 2,
            max_entry: (per_shard / 16).max(1),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding a shard leaves maps that are still whole: go on with them.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &[u8]) -> Lookup {
        let mut shard = self.shard(key);
        if let Some(v) = shard.current.get(key) {
            return Lookup::Hit(v.clone());
        }
        match shard.previous.remove(key) {
            Some(v) => {
                let out = v.clone();
                let limit = self.generation_bytes;
                shard.insert(key, &v, limit);
                Lookup::Hit(out)
            }
            None => Lookup::Miss(shard.writes),
        }
    }

    /// Caches `value`, read from the store after a [`Lookup::Miss`] that saw `writes`, unless
    /// a write reached the shard since (the value read may then be the older one).
    pub fn fill(&self, key: &[u8], value: &[u8], writes: u64) {
        if cost(key, value) > self.max_entry {
            return;
        }
        let mut shard = self.shard(key);
        if shard.writes == writes {
            let limit = self.generation_bytes;
            shard.insert(key, value, limit);
        }
    }

    /// A value just committed to the store. Replaces the cached one, if the key is cached:
    /// keys are cached by reads, so keys that are only written never take room here.
    pub fn update(&self, key: &[u8], value: &[u8]) {
        let mut shard = self.shard(key);
        shard.writes += 1;
        let cached = shard.current.contains_key(key) || shard.previous.contains_key(key);
        if !cached {
            return;
        }
        if cost(key, value) > self.max_entry {
            if let Some(old) = shard.current.remove(key) {
                shard.current_bytes -= cost(key, &old);
            }
            shard.previous.remove(key);
            return;
        }
        let limit = self.generation_bytes;
        shard.insert(key, value, limit);
    }

    /// A lookup that fills nothing: the value when cached.
    pub fn peek(&self, key: &[u8]) -> Option<Vec<u8>> {
        let shard = self.shard(key);
        shard.current.get(key).or_else(|| shard.previous.get(key)).cloned()
    }

    /// A key just deleted from the store.
    pub fn remove(&self, key: &[u8]) {
        let mut shard = self.shard(key);
        shard.writes += 1;
        if let Some(old) = shard.current.remove(key) {
            shard.current_bytes -= cost(key, &old);
        }
        shard.previous.remove(key);
    }

    /// Bytes held, bookkeeping included.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.current_bytes + s.previous.iter().map(|(k, v)| cost(k, v)).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caches `value` as a read that missed would.
    fn read(c: &RowCache, key: &[u8], value: &[u8]) {
        match c.get(key) {
            Lookup::Miss(seen) => c.fill(key, value, seen),
            Lookup::Hit(v) => assert_eq!(v, value),
        }
    }

    #[test]
    fn reads_cache_writes_update_and_a_removal_forgets() {
        let c = RowCache::new(1 << 20);
        assert_eq!(c.get(b"k"), Lookup::Miss(0));
        // Written, never read: not cached.
        c.update(b"k", b"v1");
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)) && c.peek(b"k").is_none());
        read(&c, b"k", b"v1");
        assert_eq!(c.get(b"k"), Lookup::Hit(b"v1".to_vec()));
        c.update(b"k", b"v2");
        assert_eq!(c.get(b"k"), Lookup::Hit(b"v2".to_vec()));
        assert_eq!(c.peek(b"k"), Some(b"v2".to_vec()));
        c.remove(b"k");
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
    }

    #[test]
    fn a_fill_that_raced_a_write_is_dropped() {
        let c = RowCache::new(1 << 20);
        let Lookup::Miss(seen) = c.get(b"k") else { panic!("hit in an empty cache") };
        // The writer commits a newer value while the reader reads the store.
        c.update(b"k", b"new");
        c.fill(b"k", b"old", seen);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)), "the older read was cached");
        // The fill lands between the write's commit and its cache update: the update wins.
        let Lookup::Miss(seen) = c.get(b"k") else { panic!() };
        c.fill(b"k", b"old", seen);
        c.update(b"k", b"new");
        assert_eq!(c.get(b"k"), Lookup::Hit(b"new".to_vec()));
        // A removal races the same way: the old value must not come back.
        c.remove(b"k");
        let Lookup::Miss(seen) = c.get(b"k") else { panic!("removed key still cached") };
        c.remove(b"k");
        c.fill(b"k", b"old", seen);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
        // Without a race, the fill is kept.
        let Lookup::Miss(seen) = c.get(b"k") else { panic!() };
        c.fill(b"k", b"stored", seen);
        assert_eq!(c.get(b"k"), Lookup::Hit(b"stored".to_vec()));
    }

    #[test]
    fn it_stays_within_its_budget_and_keeps_keys_in_use() {
        let budget = 64 << 10;
        let c = RowCache::new(budget);
        let value = [7u8; 100];
        read(&c, b"hot", &value);
        for i in 0..10_000u32 {
            read(&c, &i.to_be_bytes(), &value);
            // Read often enough to be moved back before its generation is dropped.
            if i % 8 == 0 {
                assert_eq!(c.get(b"hot"), Lookup::Hit(value.to_vec()), "hot key lost at {i}");
            }
            assert!(c.bytes() <= budget + 2 * cost(b"hot", &value), "{} bytes at {i}", c.bytes());
        }
        // Cold keys written early are gone.
        assert!(matches!(c.get(&0u32.to_be_bytes()), Lookup::Miss(_)));
    }

    #[test]
    fn a_value_too_large_to_keep_replaces_nothing_stale() {
        let c = RowCache::new(16 << 10);
        read(&c, b"k", b"small");
        let big = vec![1u8; 16 << 10];
        c.update(b"k", &big);
        // The small value must not be served for a key now holding the big one.
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
        let Lookup::Miss(seen) = c.get(b"k") else { panic!() };
        c.fill(b"k", &big, seen);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
    }
}
