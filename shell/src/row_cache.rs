//! The newest value of hot keys, in front of fjall's point reads.
//!
//! Every key-value read, and every write's merge, looks its key up in fjall's memtable: a
//! skiplist holding each entry written since the last flush (three per put). Under load that
//! lookup was the largest single cost of a replica answering reads (perf: 18 % of its CPU).
//! As ScyllaDB's row cache (and Cassandra's and RocksDB's) does, this keeps the latest
//! value of recently used keys in hash maps, so a hit costs a hash and a copy.
//!
//! Reads fill it; writes only refresh keys it holds, so keys that are written and never read
//! (a write-heavy load) cost a write two short shard locks here and take no room. The read a write
//! does of its own key first (its merge) is served from the cache when the key is there,
//! and fills nothing otherwise.
//!
//! Coherence: a batch that touches cached keys is committed under one lock, so the cache
//! follows fjall's commit order. Before the commit, [`RowCache::begin_write`] takes each
//! written key out and marks its shard as written to; after it, [`RowCache::end_write`]
//! puts the new value back (if the key was cached) and clears the mark. Meanwhile readers of
//! the key find nothing cached and read fjall, whose own visibility never goes back. A
//! reader that missed fills the cache from fjall only if no write is under way in the key's
//! shard and none ended there since its miss ([`Lookup::Miss`] carries the shard's count of
//! ended writes): so no fill installs a value older than the store's, and two readers on
//! either side of a commit cannot leave the older value cached after the newer was read.
//!
//! Eviction is by generations, with nothing tracked per entry: each shard fills a current
//! map; once that outgrows half the shard's budget it becomes the previous map and the older
//! one is dropped. A hit in the previous map moves the entry back to the current one, so
//! keys in use stay and the rest age out.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
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
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache has done and holds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Keys, values and bookkeeping.
    pub bytes: usize,
}

#[derive(Default)]
struct Shard {
    current: HashMap<Vec<u8>, Vec<u8>>,
    previous: HashMap<Vec<u8>, Vec<u8>>,
    current_bytes: usize,
    previous_bytes: usize,
    /// Writes this shard has seen end: a fill that raced one is dropped.
    writes: u64,
    /// Writes begun and not yet ended: no fill is taken meanwhile.
    in_flight: u32,
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
    fn insert(&mut self, key: &[u8], value: Vec<u8>, generation_bytes: usize) {
        self.remove_previous(key);
        let added = cost(key, &value);
        if let Some(old) = self.current.insert(key.to_vec(), value) {
            self.current_bytes -= cost(key, &old);
        }
        self.current_bytes += added;
        if self.current_bytes > generation_bytes {
            self.previous = std::mem::take(&mut self.current);
            self.previous_bytes = std::mem::take(&mut self.current_bytes);
        }
    }

    fn remove_previous(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let old = self.previous.remove(key)?;
        self.previous_bytes -= cost(key, &old);
        Some(old)
    }

    fn remove_current(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let old = self.current.remove(key)?;
        self.current_bytes -= cost(key, &old);
        Some(old)
    }

    /// Takes `key` out of both generations; whether it was there.
    fn take_out(&mut self, key: &[u8]) -> bool {
        let in_current = self.remove_current(key).is_some();
        self.remove_previous(key).is_some() || in_current
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
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding a shard leaves maps that are still whole: go on with them.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &[u8]) -> Lookup {
        let mut shard = self.shard(key);
        let found = match shard.current.get(key) {
            Some(v) => Lookup::Hit(v.clone()),
            None => match shard.remove_previous(key) {
                Some(v) => {
                    let out = v.clone();
                    let limit = self.generation_bytes;
                    shard.insert(key, v, limit);
                    Lookup::Hit(out)
                }
                None => Lookup::Miss(shard.writes),
            },
        };
        self.count(matches!(found, Lookup::Hit(_)));
        found
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Caches `value`, read from the store after a [`Lookup::Miss`] that saw `writes`, unless
    /// a write is under way in the shard or one ended there since (the value read may then be
    /// the older one).
    pub fn fill(&self, key: &[u8], value: &[u8], writes: u64) {
        if cost(key, value) > self.max_entry {
            return;
        }
        let mut shard = self.shard(key);
        if shard.writes == writes && shard.in_flight == 0 {
            let limit = self.generation_bytes;
            shard.insert(key, value.to_vec(), limit);
        }
    }

    /// Before a write of `key` is committed: takes the key out (readers go to the store
    /// until [`RowCache::end_write`]) and returns whether it was cached.
    pub fn begin_write(&self, key: &[u8]) -> bool {
        let mut shard = self.shard(key);
        shard.in_flight += 1;
        shard.take_out(key)
    }

    /// After the write begun by [`RowCache::begin_write`] (`was` what it returned) is
    /// committed (`committed`: the value put, or `None` for a delete) or has failed (`None`):
    /// a key that was cached holds the new value again.
    pub fn end_write(&self, key: &[u8], committed: Option<&[u8]>, was: bool) {
        let mut shard = self.shard(key);
        shard.writes += 1;
        shard.in_flight = shard.in_flight.saturating_sub(1);
        match committed {
            Some(value) if was && cost(key, value) <= self.max_entry => {
                let limit = self.generation_bytes;
                shard.insert(key, value.to_vec(), limit);
            }
            // A key written twice in one batch: the later write decides.
            _ => {
                shard.take_out(key);
            }
        }
    }

    /// A lookup that fills nothing: the value when cached.
    pub fn peek(&self, key: &[u8]) -> Option<Vec<u8>> {
        let shard = self.shard(key);
        let found = shard.current.get(key).or_else(|| shard.previous.get(key)).cloned();
        self.count(found.is_some());
        found
    }

    pub fn stats(&self) -> RowCacheStats {
        let bytes = self
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.current_bytes + s.previous_bytes
            })
            .sum();
        RowCacheStats { hits: self.hits.load(Ordering::Relaxed), misses: self.misses.load(Ordering::Relaxed), bytes }
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

    /// A committed write, as the store makes one.
    fn write(c: &RowCache, key: &[u8], value: Option<&[u8]>) {
        let was = c.begin_write(key);
        c.end_write(key, value, was);
    }

    #[test]
    fn reads_cache_writes_refresh_and_a_delete_forgets() {
        let c = RowCache::new(1 << 20);
        assert_eq!(c.get(b"k"), Lookup::Miss(0));
        // Written, never read: not cached.
        write(&c, b"k", Some(b"v1"));
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)) && c.peek(b"k").is_none());
        read(&c, b"k", b"v1");
        assert_eq!(c.get(b"k"), Lookup::Hit(b"v1".to_vec()));
        write(&c, b"k", Some(b"v2"));
        assert_eq!(c.get(b"k"), Lookup::Hit(b"v2".to_vec()));
        assert_eq!(c.peek(b"k"), Some(b"v2".to_vec()));
        write(&c, b"k", None);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
    }

    #[test]
    fn a_fill_that_raced_a_write_is_dropped() {
        let c = RowCache::new(1 << 20);
        // A reader misses and reads the store; the write begins, commits and ends meanwhile.
        let Lookup::Miss(seen) = c.get(b"k") else { panic!("hit in an empty cache") };
        write(&c, b"k", Some(b"new"));
        c.fill(b"k", b"old", seen);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)), "the older read was cached");
        // Two readers on either side of a commit: the one that read the newer value fills
        // first, the one that read the older value last. Neither fill may leave "old".
        read(&c, b"k", b"new");
        let Lookup::Hit(_) = c.get(b"k") else { panic!() };
        let was = c.begin_write(b"k");
        let Lookup::Miss(early) = c.get(b"k") else { panic!("a key being written is still cached") };
        // (the store commits "newer" here)
        let Lookup::Miss(late) = c.get(b"k") else { panic!() };
        c.fill(b"k", b"newer", late);
        c.fill(b"k", b"new", early);
        assert!(c.peek(b"k").is_none(), "a fill was taken while the write was under way");
        c.end_write(b"k", Some(b"newer"), was);
        assert_eq!(c.get(b"k"), Lookup::Hit(b"newer".to_vec()));
        // A miss before the write began, filled after it ended, is dropped too.
        write(&c, b"k", None);
        let Lookup::Miss(seen) = c.get(b"k") else { panic!() };
        write(&c, b"k", None);
        c.fill(b"k", b"old", seen);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
        // Without a race, the fill is kept.
        let Lookup::Miss(seen) = c.get(b"k") else { panic!() };
        c.fill(b"k", b"stored", seen);
        assert_eq!(c.get(b"k"), Lookup::Hit(b"stored".to_vec()));
    }

    #[test]
    fn writes_reach_keys_in_the_older_generation() {
        let c = RowCache::new(SHARDS * 4096);
        let keys: Vec<[u8; 4]> = (0..2_000u32).map(|i| i.to_be_bytes()).collect();
        for k in &keys {
            read(&c, k, b"v1");
        }
        // Some keys now sit in their shard's previous generation; a write must replace or
        // remove them there as well.
        assert!(c.shards.iter().any(|s| !s.lock().unwrap().previous.is_empty()), "no generation aged");
        for k in &keys {
            write(&c, k, Some(b"v2"));
        }
        for k in &keys {
            assert!(matches!(c.get(k), Lookup::Miss(_)) || c.get(k) == Lookup::Hit(b"v2".to_vec()));
        }
        for k in &keys {
            write(&c, k, None);
            assert!(matches!(c.get(k), Lookup::Miss(_)), "a deleted key is still cached");
        }
    }

    #[test]
    fn it_stays_within_its_budget_and_keeps_keys_in_use() {
        let budget = 64 << 10;
        let c = RowCache::new(budget);
        let value = [7u8; 100];
        read(&c, b"hot", &value);
        // Each shard holds at most its two generations: half its share each, plus the entry
        // that made the current one overflow.
        let bound = budget + SHARDS * cost(&0u32.to_be_bytes(), &value);
        for i in 0..10_000u32 {
            read(&c, &i.to_be_bytes(), &value);
            // Read often enough to be moved back before its generation is dropped.
            if i % 8 == 0 {
                assert_eq!(c.get(b"hot"), Lookup::Hit(value.to_vec()), "hot key lost at {i}");
            }
            let held = c.stats().bytes;
            assert!(held <= bound, "{held} bytes at {i}");
        }
        // Cold keys read early are gone.
        assert!(matches!(c.get(&0u32.to_be_bytes()), Lookup::Miss(_)));
        // The running byte counts are the entries' own.
        let counted: usize = c
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.iter().chain(s.previous.iter()).map(|(k, v)| cost(k, v)).sum::<usize>()
            })
            .sum();
        assert_eq!(c.stats().bytes, counted);
        let stats = c.stats();
        assert!(stats.hits >= 10_000 / 8 && stats.misses >= 10_000, "{stats:?}");
    }

    #[test]
    fn a_value_too_large_to_keep_replaces_nothing_stale() {
        let c = RowCache::new(64 << 10);
        read(&c, b"k", b"small");
        assert_eq!(c.peek(b"k"), Some(b"small".to_vec()));
        // Over the largest entry (a sixteenth of a shard's share).
        let big = vec![1u8; 1 << 10];
        write(&c, b"k", Some(&big));
        // The small value must not be served for a key now holding the big one.
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
        let Lookup::Miss(seen) = c.get(b"k") else { panic!() };
        c.fill(b"k", &big, seen);
        assert!(matches!(c.get(b"k"), Lookup::Miss(_)));
    }
}
