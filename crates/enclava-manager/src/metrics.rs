//! The enclave manager's Prometheus metrics (`enclava_server_*`): finds by outcome, cache hits and misses, FindEnclave latency,
//! pruned instances and sweeps.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Metrics;

/// The outcome label of `enclava_server_finds_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct ServerMetrics {
    pub finds: Family<Outcome, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub find_seconds: Histogram,
    pub pruned: Counter,
    pub sweeps: Counter,
    pub swept_entries: Counter,
}

impl ServerMetrics {
    pub fn new() -> ServerMetrics {
        ServerMetrics {
            finds: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            find_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            pruned: Counter::default(),
            sweeps: Counter::default(),
            swept_entries: Counter::default(),
        }
    }

    /// Exposes these metrics in `r` (give it an `enclava_server` sub-registry).
    pub fn register(&self, r: &mut Metrics) {
        let m = self;
        r.register("finds", "FindEnclave calls by outcome (found, empty, invalid, unavailable)", m.finds.clone());
        r.register("find_cache_hits", "FindEnclave answers served from the cache", m.cache_hits.clone());
        r.register("find_cache_misses", "FindEnclave answers read from the registry", m.cache_misses.clone());
        r.register("find_seconds", "FindEnclave latency", m.find_seconds.clone());
        r.register("pruned_instances", "Absent instances removed from indexes by FindEnclave", m.pruned.clone());
        r.register("sweeps", "Completed index sweeps", m.sweeps.clone());
        r.register("swept_entries", "Index entries removed by the sweeper", m.swept_entries.clone());
    }

    pub fn count(&self, outcome: &'static str) {
        self.finds.get_or_create(&Outcome { outcome }).inc();
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}
