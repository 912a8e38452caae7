//! The key broker's Prometheus metrics: releases by outcome, release latency, challenges issued
//! and audit commits.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct KeysMetrics {
    pub releases: Family<Outcome, Counter>,
    pub release_seconds: Histogram,
    pub challenges: Counter,
    pub audit_batches: Counter,
    /// Unauthenticated calls refused by a per-source rate limit.
    pub rate_limited: Counter,
}

impl KeysMetrics {
    pub fn new() -> KeysMetrics {
        KeysMetrics {
            releases: Family::default(),
            release_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            challenges: Counter::default(),
            audit_batches: Counter::default(),
            rate_limited: Counter::default(),
        }
    }

    /// Exposes these metrics in `registry` (give it an `enclava_keys` sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "releases",
            "Key releases by outcome (released, nonce, evidence, denied, error); nonce refusals are not audited",
            m.releases.clone(),
        );
        registry.register("release_seconds", "Key release latency", m.release_seconds.clone());
        registry.register("challenges", "Challenge nonces issued", m.challenges.clone());
        registry.register("audit_commits", "Audit log commits (each may carry many records)", m.audit_batches.clone());
        registry.register(
            "rate_limited",
            "Unauthenticated calls refused by a per-source rate limit",
            m.rate_limited.clone(),
        );
    }

    pub fn count(&self, outcome: &'static str) {
        self.releases.get_or_create(&Outcome { outcome }).inc();
    }
}

impl Default for KeysMetrics {
    fn default() -> Self {
        KeysMetrics::new()
    }
}
