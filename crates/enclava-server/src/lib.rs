//! The control plane, `enclava server`: the enclave manager role (gRPC `FindEnclave` and
//! `ListEnclaves` over the registry, a result cache, the index sweeper), with `/health` and
//! Prometheus `/metrics` on the same port as gRPC.
//!
//! # Layout
//! - [`manager`]: the `EnclaveManager` gRPC service.
//! - [`cache`]: the in-process FindEnclave result cache (seed notes 1 and 4).
//! - [`metrics`]: the server's Prometheus counters.
//!
//! The server keeps nothing another replica would need: the cache is only a cache.

pub mod cache;
pub mod manager;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use enclava_proto::discovery::v1::enclave_manager_server::EnclaveManagerServer;
use enclava_registry::Registry;
use tokio::net::TcpListener;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a FindEnclave result may be served from the cache (capped by the presence TTL of
    /// the enclaves it names); zero turns the cache off.
    pub cache_ttl: Duration,
    /// How often the sweeper removes expired instances from the indexes.
    pub sweep_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { cache_ttl: Duration::from_millis(1000), sweep_interval: Duration::from_secs(10) }
    }
}

/// Serves gRPC and HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    registry: Arc<dyn Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Arc::new(metrics::ServerMetrics::new());
    let manager = manager::Manager::new(registry.clone(), config.cache_ttl, metrics.clone());
    let registry_ok = Arc::new(AtomicBool::new(false));
    let background = [
        tokio::spawn(sweeper(registry.clone(), config.sweep_interval, metrics.clone())),
        tokio::spawn(watch_registry(registry.clone(), registry_ok.clone())),
    ];

    let health_ok = registry_ok.clone();
    let health = Arc::new(move || {
        let ok = health_ok.load(Ordering::Relaxed);
        let status = if ok { "ok" } else { "registry unavailable" };
        (ok, serde_json::json!({ "status": status, "roles": ["manager"] }))
    });
    let router = tonic::service::Routes::new(EnclaveManagerServer::new(manager))
        .into_axum_router()
        .merge(enclava_telemetry::router(metrics.registry(), health));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, cache_ttl_ms = config.cache_ttl.as_millis() as u64, "enclave manager listening");
    let result = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
    for task in background {
        task.abort();
    }
    tracing::info!("server stopped");
    result
}

/// Removes expired instances from every index, forever.
async fn sweeper(registry: Arc<dyn Registry>, every: Duration, metrics: Arc<metrics::ServerMetrics>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match enclava_registry::sweep::sweep(registry.as_ref()).await {
            Ok(r) => {
                metrics.sweeps.inc();
                metrics.swept_entries.inc_by(r.removed as u64);
                if r.removed > 0 {
                    tracing::info!(removed = r.removed, instances = r.instances, "swept expired index entries");
                }
            }
            Err(e) => tracing::debug!(error = %e, "sweep skipped"),
        }
    }
}

/// Keeps `ok` up to date with whether the registry answers, for `/health`.
async fn watch_registry(registry: Arc<dyn Registry>, ok: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
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
