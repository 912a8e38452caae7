//! The enclave registry: presence, enclave info and the three indexes of the seed's Redis scheme
//! (`service-discovery.md`), behind one small [`Registry`] trait with an in-memory and a Redis
//! (standalone or Cluster) backend, plus the algorithms that run on any backend: FindEnclave's
//! steps 1–3, listing, and the sweeper.
//!
//! # Layout
//! - [`schema`]: key names, the info JSON, index values, TTLs (the seed, letter for letter).
//! - [`memory`]: the embedded backend, for one process.
//! - [`redis`](mod@redis): Redis and Redis Cluster.
//! - [`find`]: FindEnclave's candidate selection, presence checks and pruning.
//! - [`list`]: paged listing for operators.
//! - [`sweep`]: removes index entries whose presence has expired.
//! - `testsuite` (feature `testsuite`): the conformance suite every backend passes.
//!
//! The registry knows nothing of gRPC, HTTP or the node runtime.

pub mod find;
pub mod list;
pub mod memory;
pub mod redis;
pub mod schema;
pub mod sweep;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use schema::{EnclaveInfoJson, Index, Keys};

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backing store cannot be reached or did not answer in time; retrying later may work.
    #[error("registry unavailable ({target}): {reason}")]
    Unavailable { target: String, reason: String },
    /// The caller asked for something malformed; nothing was read or written.
    #[error("{0}")]
    Invalid(String),
    /// The store answered something this code cannot read.
    #[error("registry backend error ({target}): {reason}")]
    Backend { target: String, reason: String },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What a presence (and optionally info) lookup found for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// Time left on the presence key; `None` when the instance is absent.
    pub presence_ttl: Option<Duration>,
    /// The raw info JSON, when asked for and present.
    pub info: Option<String>,
}

/// The storage primitives of the seed's scheme. Backends implement these; every algorithm above
/// them ([`find`], [`list`], [`sweep`]) is written once, so all backends behave alike.
///
/// Each method is one round trip to the store (for Redis: one pipeline, or one wave of concurrent
/// single-slot commands on a Cluster), whatever the number of ids.
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// The key names this registry uses.
    fn keys(&self) -> &Keys;

    /// Writes presence (`id`, TTL 3 s). Returns whether presence was still there before this
    /// write; `false` means the store lost or expired it, and the caller must re-register in full.
    async fn heartbeat(&self, id: &str) -> Result<bool>;

    /// Writes the info JSON (TTL 40 s) and sets each index entry.
    async fn publish(&self, id: &str, info_json: &str, entries: &[(Index, String)]) -> Result<()>;

    /// Removes presence, info and the given index entries of `id`.
    async fn withdraw(&self, id: &str, entries: &[Index]) -> Result<()>;

    /// Every `(instance id, value)` of one index (listing; FindEnclave never reads a whole index).
    async fn index(&self, index: &Index) -> Result<Vec<(String, String)>>;

    /// Up to `count` distinct entries of one index, chosen at random; every entry when the index
    /// has at most `count` (Redis `HRANDFIELD key count WITHVALUES`). Costs what it returns, not
    /// the size of the index.
    async fn sample(&self, index: &Index, count: usize) -> Result<Vec<(String, String)>>;

    /// One step through an index (Redis `HSCAN`): about `count` entries from `cursor` (0 to
    /// start) and the cursor to go on from, 0 when done. Every entry present for the whole walk is
    /// returned at least once.
    async fn scan_index(&self, index: &Index, cursor: u64, count: usize) -> Result<(u64, Vec<(String, String)>)>;

    /// Presence TTL (and info, when `with_info`) of each id, in order.
    async fn probe(&self, ids: &[String], with_info: bool) -> Result<Vec<Probe>>;

    /// Removes `(index, instance id)` entries.
    async fn remove(&self, entries: &[(Index, String)]) -> Result<()>;

    /// Every index that currently exists in this namespace and service.
    async fn indexes(&self) -> Result<Vec<Index>>;

    /// A versioned document ([`Keys::doc`]; the pools' shared state): its version (≥ 1) and
    /// bytes, or `None`.
    async fn doc_get(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>>;

    /// Writes a document if its version is still `expect` (0: absent), atomically (compare and
    /// set); `false` when someone wrote it meanwhile, and nothing was written.
    async fn doc_put(&self, name: &str, expect: u64, value: &[u8]) -> Result<bool>;

    /// Removes a document; whether it was there.
    async fn doc_delete(&self, name: &str) -> Result<bool>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<()>;

    /// Round trips made so far (for tests and metrics).
    fn round_trips(&self) -> u64;
}

/// Which backend to use, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySpec {
    /// In-process, for one process (`memory`).
    Memory,
    /// One Redis server (`redis://host:port[/db]`).
    Redis(String),
    /// A Redis Cluster, from one or more seed nodes (`redis+cluster://host:port[,host:port...]`).
    Cluster(Vec<String>),
}

impl std::str::FromStr for RegistrySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "memory" {
            return Ok(RegistrySpec::Memory);
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            return Ok(RegistrySpec::Redis(s.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Err("redis+cluster:// needs at least one host:port".into());
            }
            return Ok(RegistrySpec::Cluster(nodes));
        }
        Err(format!(
            "unknown registry {:?}: use `memory`, `redis://host:port` or `redis+cluster://host:port[,host:port...]`",
            redis::redact(s)
        ))
    }
}

/// Opens the registry `spec` names. Nothing is contacted yet: a Redis that is down now is tried
/// again on each call, so a server started before its Redis recovers without a restart.
pub fn open(spec: &RegistrySpec, keys: Keys) -> Result<Arc<dyn Registry>> {
    Ok(match spec {
        RegistrySpec::Memory => Arc::new(memory::MemoryRegistry::new(keys)),
        RegistrySpec::Redis(url) => Arc::new(redis::RedisRegistry::standalone(url, keys)?),
        RegistrySpec::Cluster(nodes) => Arc::new(redis::RedisRegistry::cluster(nodes, keys)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_specs_parse() {
        assert_eq!("memory".parse::<RegistrySpec>(), Ok(RegistrySpec::Memory));
        assert_eq!(
            "redis://127.0.0.1:6379".parse::<RegistrySpec>(),
            Ok(RegistrySpec::Redis("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            "redis+cluster://a:1,b:2".parse::<RegistrySpec>(),
            Ok(RegistrySpec::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert!("redis+cluster://".parse::<RegistrySpec>().is_err());
        assert!("postgres://x".parse::<RegistrySpec>().is_err());
    }
}
