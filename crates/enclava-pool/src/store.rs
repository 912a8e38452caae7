//! Where a pool's shared state lives: a versioned document per key, written only if nobody wrote
//! it since it was read (compare-and-set). The registry's backends (memory, Redis, Redis Cluster)
//! provide it for the server; [`MemoryStore`] is the one-process store for tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

/// A versioned document store.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The document at `key` and its version (≥ 1), or `None`.
    async fn get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, String>;
    /// Writes `value` at `key` if its version is still `expect` (0: the key is absent); `false`
    /// when someone wrote it meanwhile (nothing was written).
    async fn put(&self, key: &str, expect: u64, value: Vec<u8>) -> Result<bool, String>;
    /// Removes `key`; whether it was there.
    async fn delete(&self, key: &str) -> Result<bool, String>;
}

/// A store in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    docs: Mutex<HashMap<String, (u64, Vec<u8>)>>,
}

impl MemoryStore {
    fn docs(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Vec<u8>)>> {
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, String> {
        Ok(self.docs().get(key).cloned())
    }

    async fn put(&self, key: &str, expect: u64, value: Vec<u8>) -> Result<bool, String> {
        let mut docs = self.docs();
        let now = docs.get(key).map_or(0, |d| d.0);
        if now != expect {
            return Ok(false);
        }
        docs.insert(key.to_owned(), (now + 1, value));
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, String> {
        Ok(self.docs().remove(key).is_some())
    }
}
