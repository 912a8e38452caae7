//! The node's registration loop: presence every second (TTL 3 s), info and index entries every 30 s
//! (TTL 40 s) and at once when the data or its hot state changes, a full re-registration whenever a
//! heartbeat finds the registry had lost the node (Redis restarted or flushed, or presence expired),
//! and withdrawal on clean shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use enclava_registry::schema::{DataAccessJson, EnclaveInfoJson, HEARTBEAT_PERIOD, INFO_PERIOD};
use enclava_registry::{Index, Registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as Metrics;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// A heartbeat that completes later than this after its tick counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(500);

/// The node's counters, exported at `/metrics`.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Arc<Metrics>,
    pub heartbeats: Counter,
    pub heartbeats_late: Counter,
    pub heartbeats_failed: Counter,
    pub info_publishes: Counter,
    pub reregistrations: Counter,
    /// Sealed inference requests received (direct and OpenWhisk), whatever became of them.
    pub requests: Counter,
    /// Requests answered with a sealed result.
    pub requests_served: Counter,
    /// Requests refused (bad, tampered, replayed, model unavailable).
    pub requests_refused: Counter,
    /// Models loaded (key released, package decrypted, model built).
    pub model_loads: Counter,
    /// Model loads that failed (not granted, missing or tampered package, bad model).
    pub model_load_failures: Counter,
    /// Models dropped from memory to stay under the memory budget (or on request).
    pub model_evictions: Counter,
    /// Users' request keys fetched from the key broker (serverless mode), granted or not.
    pub user_key_fetches: Counter,
    /// Time workloads spent running, in microseconds (the executors' measure).
    pub workload_busy_us: Counter,
    registered: AtomicBool,
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let mut r = Metrics::with_prefix("enclava_node");
        let m = NodeMetrics {
            registry: Arc::default(),
            heartbeats: Counter::default(),
            heartbeats_late: Counter::default(),
            heartbeats_failed: Counter::default(),
            info_publishes: Counter::default(),
            reregistrations: Counter::default(),
            requests: Counter::default(),
            requests_served: Counter::default(),
            requests_refused: Counter::default(),
            model_loads: Counter::default(),
            model_load_failures: Counter::default(),
            model_evictions: Counter::default(),
            user_key_fetches: Counter::default(),
            workload_busy_us: Counter::default(),
            registered: AtomicBool::new(false),
        };
        r.register("heartbeats", "Presence heartbeats written", m.heartbeats.clone());
        r.register(
            "heartbeats_late",
            "Heartbeats completed more than 500 ms after their tick",
            m.heartbeats_late.clone(),
        );
        r.register("heartbeats_failed", "Heartbeats the registry did not accept", m.heartbeats_failed.clone());
        r.register("info_publishes", "Info and index publications", m.info_publishes.clone());
        r.register(
            "reregistrations",
            "Full re-registrations after the registry lost this node",
            m.reregistrations.clone(),
        );
        r.register("requests", "Sealed inference requests received", m.requests.clone());
        r.register("requests_served", "Sealed inference requests answered", m.requests_served.clone());
        r.register("requests_refused", "Sealed inference requests refused", m.requests_refused.clone());
        r.register("model_loads", "Models loaded into memory", m.model_loads.clone());
        r.register("model_load_failures", "Model loads that failed", m.model_load_failures.clone());
        r.register("model_evictions", "Models evicted from memory", m.model_evictions.clone());
        r.register(
            "user_key_fetches",
            "Users' request keys asked of the key broker (serverless mode)",
            m.user_key_fetches.clone(),
        );
        r.register(
            "workload_busy_microseconds",
            "Time workloads spent running, as their executors measured it",
            m.workload_busy_us.clone(),
        );
        NodeMetrics { registry: Arc::new(r), ..m }
    }

    pub fn registry(&self) -> Arc<Metrics> {
        self.registry.clone()
    }

    /// Whether the last heartbeat and publication succeeded.
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes fresh evidence for the info's `attestation` field (empty when the node cannot attest).
pub type Attest = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Runs until `stop` turns true, then withdraws.
pub async fn run(
    registry: Arc<dyn Registry>,
    mut info: EnclaveInfoJson,
    mut data: watch::Receiver<BTreeMap<String, DataAccessJson>>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<NodeMetrics>,
    attest: Attest,
) {
    let id = info.instance_id.clone();
    info.data_access = data.borrow_and_update().clone();
    let mut published: BTreeSet<Index> = BTreeSet::new();
    // Must publish at start even if presence survives from a previous run: the key pair is new.
    let mut need_publish = true;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_PERIOD);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval_at(Instant::now() + INFO_PERIOD, INFO_PERIOD);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    // After registering from an absence, publish once more a heartbeat later: a FindEnclave prune
    // or a sweep that saw us absent just before we came back may have removed fresh index entries.
    let mut confirm = false;
    let mut confirm_next_tick = false;

    loop {
        tokio::select! {
            tick = heartbeat.tick() => {
                match registry.heartbeat(&id).await {
                    Ok(was_present) => {
                        metrics.heartbeats.inc();
                        if tick.elapsed() > LATE_AFTER {
                            metrics.heartbeats_late.inc();
                        }
                        if failing {
                            tracing::info!(instance = %id, "registry reachable again");
                            failing = false;
                        }
                        if !was_present && !need_publish {
                            tracing::warn!(instance = %id, "the registry lost this node; registering again in full");
                            metrics.reregistrations.inc();
                            need_publish = true;
                        }
                        if !was_present {
                            confirm = true;
                        }
                        if std::mem::take(&mut confirm_next_tick) {
                            need_publish = true;
                        }
                    }
                    Err(e) => {
                        metrics.heartbeats_failed.inc();
                        metrics.registered.store(false, Ordering::Relaxed);
                        if !failing {
                            tracing::warn!(instance = %id, error = %e, "heartbeat failed; retrying every second");
                            failing = true;
                        }
                        // Whatever happened to the store, register in full once it answers.
                        need_publish = true;
                        continue;
                    }
                }
            }
            _ = refresh.tick() => need_publish = true,
            changed = data.changed() => {
                if changed.is_err() {
                    break; // the handle is gone
                }
                info.data_access = data.borrow_and_update().clone();
                need_publish = true;
            }
            _ = stop.changed() => break,
        }
        if need_publish {
            info.attestation = attest();
            match publish(registry.as_ref(), &info, &mut published).await {
                Ok(()) => {
                    need_publish = false;
                    metrics.info_publishes.inc();
                    metrics.registered.store(true, Ordering::Relaxed);
                    refresh.reset();
                    confirm_next_tick = std::mem::take(&mut confirm);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "info publication failed; retrying")
                }
            }
        }
    }
    let entries: Vec<Index> = info.index_entries().into_iter().map(|(ix, _)| ix).chain(published).collect();
    match registry.withdraw(&id, &entries).await {
        Ok(()) => tracing::info!(instance = %id, "withdrawn from the registry"),
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "could not withdraw; entries expire on their own")
        }
    }
}

/// Publishes info and index entries, and removes entries for data the node no longer has.
async fn publish(
    registry: &dyn Registry,
    info: &EnclaveInfoJson,
    published: &mut BTreeSet<Index>,
) -> enclava_registry::Result<()> {
    let entries = info.index_entries();
    registry.publish(&info.instance_id, &info.to_json(), &entries).await?;
    let now: BTreeSet<Index> = entries.into_iter().map(|(ix, _)| ix).collect();
    let stale: Vec<(Index, String)> =
        published.difference(&now).map(|ix| (ix.clone(), info.instance_id.clone())).collect();
    registry.remove(&stale).await?;
    *published = now;
    tracing::debug!(instance = %info.instance_id, data = info.data_access.len(), "info published");
    Ok(())
}
