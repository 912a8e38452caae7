//! The embedded backend: the seed's keys and hashes held in process, with TTLs on tokio's clock
//! (so tests can pause time). Same semantics as Redis, for `enclava dev` and single-process use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::schema::{INFO_TTL_SECS, PRESENCE_TTL_SECS};
use crate::{Index, Keys, Probe, Registry, Result};

#[derive(Debug, Default)]
struct State {
    /// key → (value, expiry)
    strings: HashMap<String, (String, Instant)>,
    /// key → field → value
    hashes: HashMap<String, HashMap<String, String>>,
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
            s.hashes.entry(self.keys.index(index)).or_default().insert(id.to_owned(), value.clone());
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
        Ok(s.hashes
            .get(&self.keys.index(index))
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
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
        if h.is_empty() {
            s.hashes.remove(key);
        }
    }
}
