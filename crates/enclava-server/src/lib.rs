//! The control plane, `enclava server`: its roles on one port — the enclave manager (gRPC
//! `FindEnclave` and `ListEnclaves` over the registry, a result cache, the index sweeper) and the
//! key broker (gRPC `KeyBroker`, REST `/v1/…`, `/openapi.json`) — with `/health` and Prometheus
//! `/metrics`.
//!
//! # Layout
//! - [`manager`]: the `EnclaveManager` gRPC service.
//! - [`cache`]: the in-process FindEnclave result cache (seed notes 1 and 4).
//! - [`metrics`]: the server's Prometheus counters.
//!
//! The manager keeps nothing another replica would need: the cache is only a cache. The key
//! broker's state is in its database; only challenge nonces live in one replica's memory.

pub mod cache;
pub mod manager;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use enclava_contracts::discovery::v1::enclave_manager_server::EnclaveManagerServer;
use enclava_keys::Broker;
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

/// The roles one server runs; each is on when it has what it needs.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// The enclave manager, over this registry.
    pub manager: Option<Arc<dyn Registry>>,
    /// The key broker.
    pub keys: Option<Arc<Broker>>,
}

impl Roles {
    /// Only the enclave manager.
    pub fn manager(registry: Arc<dyn Registry>) -> Roles {
        Roles { manager: Some(registry), keys: None }
    }

    fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.manager.is_some() {
            v.push("manager");
        }
        if self.keys.is_some() {
            v.push("keys");
        }
        v
    }
}

/// Serves the roles' gRPC and HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    roles: Roles,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let names = roles.names();
    let mut registry_metrics = prometheus_client::registry::Registry::default();
    let mut grpc = tonic::service::Routes::default();
    let mut background = Vec::new();
    let mut rest = axum::Router::new();
    let registry_ok = Arc::new(AtomicBool::new(roles.manager.is_none()));
    if let Some(registry) = &roles.manager {
        let metrics =
            Arc::new(metrics::ServerMetrics::new(registry_metrics.sub_registry_with_prefix("enclava_server")));
        let hints = Arc::new(enclava_registry::find::HotHints::new());
        let (pruner, prune_task) = enclava_registry::find::Pruner::start(registry.clone());
        background.push(prune_task);
        let manager = manager::Manager::new(registry.clone(), config.cache_ttl, hints.clone(), pruner, metrics.clone());
        background.push(tokio::spawn(sweeper(registry.clone(), config.sweep_interval, hints, metrics.clone())));
        background.push(tokio::spawn(watch_registry(registry.clone(), registry_ok.clone())));
        grpc = grpc.add_service(EnclaveManagerServer::new(manager));
    }
    if let Some(broker) = &roles.keys {
        broker.metrics().register(registry_metrics.sub_registry_with_prefix("enclava_keys"));
        grpc = grpc.add_service(enclava_keys::grpc::KeyBrokerService::new(broker.clone()).into_server());
        rest = enclava_keys::rest::router(broker.clone());
    }

    let health_ok = registry_ok.clone();
    let health_roles = names.clone();
    let health = Arc::new(move || {
        let ok = health_ok.load(Ordering::Relaxed);
        let status = if ok { "ok" } else { "registry unavailable" };
        (ok, serde_json::json!({ "status": status, "roles": health_roles }))
    });
    let router =
        grpc.into_axum_router().merge(rest).merge(enclava_telemetry::router(Arc::new(registry_metrics), health));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, roles = ?names, cache_ttl_ms = config.cache_ttl.as_millis() as u64, "server listening");
    let result = axum::serve(
        // Small answers go out at once, not after a delayed ACK.
        axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        // Callers' addresses reach the handlers (per-source rate limits).
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    for task in background {
        task.abort();
    }
    if let Some(broker) = &roles.keys {
        // In-flight requests are done: bring the audit anchor up to date and checkpoint the WAL.
        broker.shutdown().await;
    }
    tracing::info!("server stopped");
    result
}

/// Removes expired instances from every index, forever.
async fn sweeper(
    registry: Arc<dyn Registry>,
    every: Duration,
    hints: Arc<enclava_registry::find::HotHints>,
    metrics: Arc<metrics::ServerMetrics>,
) {
    // The first sweep comes one period after start, not at once: replicas started together do
    // not all walk the registry in the same instant.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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
