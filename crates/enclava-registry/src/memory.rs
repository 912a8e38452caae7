//! The embedded backend: the seed's keys and hashes held in process, with TTLs on tokio's clock
//! (so tests can pause time). Same semantics as Redis, for `enclava dev` and single-process use.
//! Hashes keep their entries in a vector beside a position map, so a random sample costs what it
//! returns and a scan step what it visits, as `HRANDFIELD` and `HSCAN` do on Redis.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::time::Instant;

use crate::schema::{INFO_TTL_SECS, PRESENCE_TTL_SECS};
use crate::{Index, Keys, Probe, Registry, Result};

/// One hash: entries in a vector (for sampling and scanning) and each field's position.
#[derive(Debug, Default)]
struct Hash {
    entries: Vec<(String, String)>,
    pos: HashMap<String, usize>,
}

impl Hash {
    fn set(&mut self, field: &str, value: &str) {
        match self.pos.get(field) {
            Some(&i) => self.entries[i].1 = value.to_owned(),
            None => {
                self.pos.insert(field.to_owned(), self.entries.len());
                self.entries.push((field.to_owned(), value.to_owned()));
            }
        }
    }

    /// Removes `field` by moving the last entry into its place.
    fn remove(&mut self, field: &str) {
        let Some(i) = self.pos.remove(field) else { return };
        self.entries.swap_remove(i);
        if let Some((moved, _)) = self.entries.get(i) {
            self.pos.insert(moved.clone(), i);
        }
    }

    /// Up to `count` distinct entries at random; all of them when there are at most `count`.
    fn sample(&self, count: usize) -> Vec<(String, String)> {
        let n = self.entries.len();
        if count >= n {
            return self.entries.clone();
        }
        let mut rng = rand::rng();
        let mut picked = std::collections::HashSet::with_capacity(count);
        // Rejection sampling: count < n, and it is only called with small counts, so this ends fast.
        while picked.len() < count {
            picked.insert(rng.random_range(0..n));
        }
        picked.into_iter().map(|i| self.entries[i].clone()).collect()
    }
}

#[derive(Debug, Default)]
struct State {
    /// key → (value, expiry)
    strings: HashMap<String, (String, Instant)>,
    /// key → hash
    hashes: HashMap<String, Hash>,
    /// key → (version, document)
    docs: HashMap<String, (u64, Vec<u8>)>,
}

impl State {
    fn get(&mut self, key: &str, now: Instant) -> Option<(&String, Instant)> {
        if self.strings.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.strings.remove(key);
        }
        self.strings.get(key).map(|(v, exp)| (v, *exp))
    }
}

/// An in-process registry.
#[derive(Debug)]
pub struct MemoryRegistry {
    keys: Keys,
    state: Mutex<State>,
    round_trips: AtomicU64,
}

impl MemoryRegistry {
    pub fn new(keys: Keys) -> MemoryRegistry {
        MemoryRegistry { keys, state: Mutex::default(), round_trips: AtomicU64::new(0) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        // A panic while holding the lock cannot leave the maps half-written in a way that matters
        // more than losing the registry; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn heartbeat(&self, id: &str) -> Result<bool> {
        let now = Instant::now();
        let key = self.keys.presence(id);
        let mut s = self.state();
        let existed = s.get(&key, now).is_some();
        s.strings.insert(key, (id.to_owned(), now + Duration::from_secs(PRESENCE_TTL_SECS)));
        Ok(existed)
    }

    async fn publish(&self, id: &str, info_json: &str, entries: &[(Index, String)]) -> Result<()> {
        let now = Instant::now();
        let mut s = self.state();
        s.strings.insert(self.keys.info(id), (info_json.to_owned(), now + Duration::from_secs(INFO_TTL_SECS)));
        for (index, value) in entries {
            s.hashes.entry(self.keys.index(index)).or_default().set(id, value);
        }
        Ok(())
    }

    async fn withdraw(&self, id: &str, entries: &[Index]) -> Result<()> {
        let mut s = self.state();
        s.strings.remove(&self.keys.presence(id));
        s.strings.remove(&self.keys.info(id));
        for index in entries {
            remove_field(&mut s, &self.keys.index(index), id);
        }
        Ok(())
    }

    async fn index(&self, index: &Index) -> Result<Vec<(String, String)>> {
        let s = self.state();
        Ok(s.hashes.get(&self.keys.index(index)).map(|h| h.entries.clone()).unwrap_or_default())
    }

    async fn sample(&self, index: &Index, count: usize) -> Result<Vec<(String, String)>> {
        let s = self.state();
        Ok(s.hashes.get(&self.keys.index(index)).map(|h| h.sample(count)).unwrap_or_default())
    }

    async fn scan_index(&self, index: &Index, cursor: u64, count: usize) -> Result<(u64, Vec<(String, String)>)> {
        // The cursor counts the positions still to visit, from the end down: a removal moves the
        // last entry (already visited) into the hole, so no entry present throughout is missed.
        let s = self.state();
        let Some(h) = s.hashes.get(&self.keys.index(index)) else { return Ok((0, Vec::new())) };
        let top = if cursor == 0 { h.entries.len() } else { (cursor as usize).min(h.entries.len()) };
        let bottom = top.saturating_sub(count.max(1));
        Ok((bottom as u64, h.entries[bottom..top].to_vec()))
    }

    async fn probe(&self, ids: &[String], with_info: bool) -> Result<Vec<Probe>> {
        let now = Instant::now();
        let mut s = self.state();
        Ok(ids
            .iter()
            .map(|id| Probe {
                presence_ttl: s.get(&self.keys.presence(id), now).map(|(_, exp)| exp - now),
                info: if with_info { s.get(&self.keys.info(id), now).map(|(v, _)| v.clone()) } else { None },
            })
            .collect())
    }

    async fn remove(&self, entries: &[(Index, String)]) -> Result<()> {
        let mut s = self.state();
        for (index, id) in entries {
            remove_field(&mut s, &self.keys.index(index), id);
        }
        Ok(())
    }

    async fn indexes(&self) -> Result<Vec<Index>> {
        let s = self.state();
        Ok(s.hashes.keys().filter_map(|k| self.keys.parse_index(k)).collect())
    }

    async fn doc_get(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.state().docs.get(&self.keys.doc(name)).cloned())
    }

    async fn doc_put(&self, name: &str, expect: u64, value: &[u8]) -> Result<bool> {
        let key = self.keys.doc(name);
        let mut s = self.state();
        let version = s.docs.get(&key).map_or(0, |d| d.0);
        if version != expect {
            return Ok(false);
        }
        s.docs.insert(key, (version + 1, value.to_vec()));
        Ok(true)
    }

    async fn doc_delete(&self, name: &str) -> Result<bool> {
        Ok(self.state().docs.remove(&self.keys.doc(name)).is_some())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
}

/// HDEL, dropping the hash when it empties (as Redis does).
fn remove_field(s: &mut State, key: &str, field: &str) {
    if let Some(h) = s.hashes.get_mut(key) {
        h.remove(field);
        if h.entries.is_empty() {
            s.hashes.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_sample_and_removal_keep_positions() {
        let mut h = Hash::default();
        for i in 0..10 {
            h.set(&format!("f{i}"), "v");
        }
        h.remove("f3");
        h.remove("f9");
        h.remove("nope");
        assert_eq!(h.entries.len(), 8);
        for (i, (f, _)) in h.entries.iter().enumerate() {
            assert_eq!(h.pos[f], i);
        }
        let s = h.sample(5);
        let distinct: std::collections::HashSet<_> = s.iter().map(|(f, _)| f.clone()).collect();
        assert_eq!(distinct.len(), 5);
        assert_eq!(h.sample(100).len(), 8);
    }
}
