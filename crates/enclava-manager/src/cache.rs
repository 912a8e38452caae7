//! The FindEnclave result cache (seed note 1). An entry lives at most the configured TTL and never
//! past the presence expiry of any enclave it names, so a dead enclave never comes back from it; any
//! id named in a deny list throws out every entry naming it at once (seed note 4).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use enclava_registry::find::{FindQuery, Found};
use rand::seq::SliceRandom;
use tokio::time::Instant;

/// Entries kept at most; past that, expired ones are dropped, then everything.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
struct Entry {
    live: Vec<Found>,
    expires: Instant,
}

/// Cached FindEnclave results by request.
#[derive(Debug)]
pub struct FindCache {
    ttl: Duration,
    map: Mutex<HashMap<FindQuery, Entry>>,
}

impl FindCache {
    pub fn new(ttl: Duration) -> FindCache {
        FindCache { ttl, map: Mutex::default() }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<FindQuery, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Throws out every entry that names one of `ids`.
    pub fn evict(&self, ids: &BTreeSet<String>) {
        if ids.is_empty() {
            return;
        }
        self.map().retain(|_, e| !e.live.iter().any(|f| ids.contains(&f.info.instance_id)));
    }

    /// Up to `q.limit` cached enclaves, hot ones first, equal ones in random order.
    pub fn get(&self, q: &FindQuery) -> Option<Vec<Found>> {
        // Requests with deny lists are not cached: their keys are the caller's to choose.
        if self.ttl.is_zero() || !q.deny.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut map = self.map();
        let entry = map.get(q)?;
        if entry.expires <= now {
            map.remove(q);
            return None;
        }
        Some(pick(&entry.live, q.limit))
    }

    /// Caches what a registry read found; `started` is when that read began (presence TTLs count
    /// from then, so the entry can only expire early, never late).
    pub fn put(&self, q: &FindQuery, live: &[Found], started: Instant) {
        let Some(min_presence) = live.iter().map(|f| f.presence_ttl).min() else {
            return; // nothing found: ask the registry again next time
        };
        if self.ttl.is_zero() || !q.deny.is_empty() {
            return;
        }
        let expires = started + self.ttl.min(min_presence);
        let mut map = self.map();
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, e| e.expires > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(q.clone(), Entry { live: live.to_vec(), expires });
    }
}

/// `limit` of `live`: hot ones first, each group in random order. Clones only what it returns.
pub fn pick(live: &[Found], limit: usize) -> Vec<Found> {
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.shuffle(&mut rand::rng());
    order.sort_by_key(|&i| !live[i].hot);
    order.into_iter().take(limit).map(|i| live[i].clone()).collect()
}
