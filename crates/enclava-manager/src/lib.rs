//! The enclave manager role of `enclava server`: gRPC `FindEnclave` and `ListEnclaves` over the
//! registry (the seed's steps 1–3), a result cache (seed notes 1 and 4), the sweeper that walks
//! every index, and the pruner that removes the dead FindEnclave met after it answered. Its health
//! is whether the registry answers.
//!
//! # Layout
//! - [`service`]: the `EnclaveManager` gRPC service.
//! - [`cache`]: the in-process FindEnclave result cache.
//! - [`metrics`]: its Prometheus counters (`enclava_server_*`).
//!
//! It keeps nothing another replica would need: the cache and the hot hints are only caches.

pub mod cache;
pub mod metrics;
pub mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use enclava_contracts::discovery::v1::enclave_manager_server::EnclaveManagerServer;
use enclava_registry::Registry;
use enclava_registry::find::{HotHints, Pruner};
use enclava_server::{Health, Role, StopSignal};

/// How the enclave manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// How long a FindEnclave result may be served from the cache (capped by the presence TTL of
    /// the enclaves it names); zero turns the cache off.
    pub cache_ttl: Duration,
    /// How often the sweeper removes expired instances from the indexes.
    pub sweep_interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig { cache_ttl: Duration::from_millis(1000), sweep_interval: Duration::from_secs(10) }
    }
}

/// The enclave manager role over one registry.
#[derive(Debug)]
pub struct ManagerRole {
    registry: Arc<dyn Registry>,
    config: ManagerConfig,
    metrics: Arc<metrics::ServerMetrics>,
    hints: Arc<HotHints>,
    pruner: std::sync::Mutex<Option<(Pruner, tokio::task::JoinHandle<()>)>>,
    registry_ok: Arc<AtomicBool>,
}

impl ManagerRole {
    pub fn new(registry: Arc<dyn Registry>, config: ManagerConfig) -> ManagerRole {
        ManagerRole {
            registry,
            config,
            metrics: Arc::new(metrics::ServerMetrics::new()),
            hints: Arc::new(HotHints::new()),
            pruner: std::sync::Mutex::new(None),
            registry_ok: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The pruner, started on first use (it needs the runtime).
    fn pruner(&self) -> Pruner {
        let mut p = self.pruner.lock().unwrap_or_else(|e| e.into_inner());
        p.get_or_insert_with(|| Pruner::start(self.registry.clone())).0.clone()
    }
}

#[tonic::async_trait]
impl Role for ManagerRole {
    fn name(&self) -> &'static str {
        "manager"
    }

    fn grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        let service = service::Manager::new(
            self.registry.clone(),
            self.config.cache_ttl,
            self.hints.clone(),
            self.pruner(),
            self.metrics.clone(),
        );
        routes.add_service(EnclaveManagerServer::new(service));
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry.sub_registry_with_prefix("enclava_server"));
    }

    fn start(&self, stop: StopSignal) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(sweeper(
                self.registry.clone(),
                self.config.sweep_interval,
                self.hints.clone(),
                self.metrics.clone(),
                stop.clone(),
            )),
            tokio::spawn(watch_registry(self.registry.clone(), self.registry_ok.clone(), stop)),
        ]
    }

    async fn health(&self) -> Health {
        if self.registry_ok.load(Ordering::Relaxed) { Health::ok() } else { Health::failing("registry unavailable") }
    }

    async fn stop(&self) {
        // Dropping the last sender lets the pruner finish what it was handed.
        if let Some((p, task)) = self.pruner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(p);
            task.abort();
        }
    }
}

/// Removes expired instances from every index, until told to stop. The first sweep comes one
/// period after start, not at once: replicas started together do not all walk the registry in
/// the same instant.
async fn sweeper(
    registry: Arc<dyn Registry>,
    every: Duration,
    hints: Arc<HotHints>,
    metrics: Arc<metrics::ServerMetrics>,
    mut stop: StopSignal,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.stopped() => return,
        }
        match enclava_registry::sweep::sweep(registry.as_ref(), Some(&hints)).await {
            Ok(r) => {
                metrics.sweeps.inc();
                metrics.swept_entries.inc_by(r.removed as u64);
                if r.removed > 0 {
                    tracing::info!(removed = r.removed, entries = r.entries, "swept expired index entries");
                }
            }
            Err(e) => tracing::debug!(error = %e, "sweep skipped"),
        }
    }
}

/// Keeps `ok` up to date with whether the registry answers, for `/health`.
async fn watch_registry(registry: Arc<dyn Registry>, ok: Arc<AtomicBool>, mut stop: StopSignal) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.stopped() => return,
        }
        let now_ok = registry.ping().await.is_ok();
        if ok.swap(now_ok, Ordering::Relaxed) != now_ok {
            if now_ok {
                tracing::info!("registry reachable");
            } else {
                tracing::warn!("registry unreachable; FindEnclave answers UNAVAILABLE until it is back");
            }
        }
    }
}
