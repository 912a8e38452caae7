//! The server roles `enclava server --roles` knows, and how each is built from the server's
//! configuration, and the executors a node runs workloads on. Adding a role is a crate
//! implementing [`enclava_server::Role`] and one line in [`ROLES`]; adding an executor is a crate
//! implementing [`enclava_executor::Executor`] and one line in [`executors`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use enclava_keys::{Broker, BrokerConfig, KekSource, KeysMetrics};
use enclava_registry::Registry;
use enclava_server::Role;
use futures::future::BoxFuture;

use crate::config::ServerConfig;

/// What building a role may use.
pub struct RoleContext<'a> {
    pub config: &'a ServerConfig,
    /// The server's own folder (the key broker's files), resolved.
    pub data_dir: &'a Path,
    /// The registry, shared with nodes started in the same process.
    pub registry: Arc<dyn Registry>,
    /// The environment (passed in: tests supply their own).
    pub env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// Adjusts the key broker's settings before it opens (tests and benchmarks).
    pub tune_broker: Option<&'a (dyn Fn(&mut BrokerConfig) + Sync)>,
    /// The key-encryption key to use instead of `ENCLAVA_KEK` or the file.
    pub kek: Option<KekSource>,
    /// The key broker, once built (the sandbox hands it to tests).
    pub broker: Mutex<Option<Arc<Broker>>>,
    /// The pools role, once built (the sandbox gives it its local backend).
    pub pools: Mutex<Option<enclava_pool::role::PoolsRole>>,
    /// The dashboard, once built (told the server's URL once it listens).
    pub ui: Mutex<Option<enclava_ui::UiRole>>,
}

impl std::fmt::Debug for RoleContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleContext").field("config", &self.config).field("data_dir", &self.data_dir).finish()
    }
}

/// Builds one role.
pub type BuildRole = for<'a> fn(&'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>>;

/// Every role, by the name `--roles` uses.
pub const ROLES: &[(&str, BuildRole)] =
    &[("manager", manager), ("keys", keys), ("farm", farm), ("federation", federation), ("pools", pools), ("ui", ui)];

/// The executors every node runs, the default kind first.
pub fn executors() -> enclava_executor::Executors {
    enclava_executor::Executors::new()
        .with(Arc::new(enclava_runtime::OnnxExecutor))
        .with(Arc::new(enclava_wasm::WasmExecutor::with_defaults()))
}

/// The roles `config.roles` names, in order (the key broker is built first: the farm and the
/// federation use its users and database).
pub async fn build(ctx: &RoleContext<'_>) -> anyhow::Result<Vec<Arc<dyn Role>>> {
    let mut names: Vec<&String> = ctx.config.roles.iter().collect();
    names.sort_by_key(|n| *n != "keys");
    let mut built = Vec::new();
    for name in names {
        let (_, build) = ROLES
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("unknown role {}", enclava_core::text::quote(name)))?;
        built.push((name.clone(), build(ctx).await?));
    }
    Ok(ctx.config.roles.iter().filter_map(|n| built.iter().find(|(b, _)| b == n).map(|(_, r)| r.clone())).collect())
}

fn manager<'a>(ctx: &'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>> {
    Box::pin(async move {
        let config = enclava_manager::ManagerConfig {
            cache_ttl: std::time::Duration::from_millis(ctx.config.cache_ttl_ms),
            sweep_interval: std::time::Duration::from_millis(ctx.config.sweep_interval_ms.max(100)),
        };
        tracing::info!(registry = ?ctx.registry, "enclave manager role");
        Ok(Arc::new(enclava_manager::ManagerRole::new(ctx.registry.clone(), config)) as Arc<dyn Role>)
    })
}

fn keys<'a>(ctx: &'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>> {
    Box::pin(async move {
        let c = ctx.config;
        let dir = ctx.data_dir;
        let database = c.database.clone().unwrap_or_else(|| format!("sqlite://{}", dir.join("keys.db").display()));
        let kek = match (&ctx.kek, (ctx.env)("ENCLAVA_KEK")) {
            (Some(k), _) => k.clone(),
            (None, Some(_)) => KekSource::Env("ENCLAVA_KEK".into()),
            (None, None) => KekSource::File(c.kek_file.clone().unwrap_or_else(|| dir.join("kek.key"))),
        };
        let mut config = BrokerConfig::new(database, dir);
        if let Some(p) = &c.policy {
            config.default_policy = Some(enclava_attest::Policy::load(p).map_err(anyhow::Error::msg)?);
        }
        if let Some(spec) = &c.collateral {
            config.collateral =
                Some(enclava_collateral::open_source(spec).map_err(|e| anyhow::anyhow!("--collateral: {e}"))?);
        }
        config.registration = c.registration.parse().map_err(|e: String| anyhow::anyhow!("--registration: {e}"))?;
        config.register_per_minute = c.register_rate;
        config.release_per_second = c.release_rate;
        config.accept_rollback = c.accept_rollback;
        if let Some(tune) = ctx.tune_broker {
            tune(&mut config);
        }
        let broker = Arc::new(Broker::open(config, kek, Arc::new(KeysMetrics::new())).await?);
        tracing::info!(data_dir = %dir.display(), "key broker role");
        *ctx.broker.lock().unwrap_or_else(|p| p.into_inner()) = Some(broker.clone());
        Ok(Arc::new(enclava_keys::KeysRole::new(broker)) as Arc<dyn Role>)
    })
}

fn farm<'a>(ctx: &'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>> {
    Box::pin(async move {
        let broker = ctx.broker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let broker = broker.context("the farm role needs the keys role (its users and database)")?;
        let config = enclava_farm::FarmConfig {
            lease: std::time::Duration::from_millis(ctx.config.farm_lease_ms),
            ..Default::default()
        };
        let farm = enclava_farm::Farm::open(broker.store().audit().clone(), broker.identity().clone(), config).await?;
        tracing::info!(lease_ms = ctx.config.farm_lease_ms, "farm role");
        Ok(Arc::new(enclava_farm::role::FarmRole::new(Arc::new(farm))) as Arc<dyn Role>)
    })
}

fn federation<'a>(ctx: &'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>> {
    Box::pin(async move {
        let broker = ctx.broker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let broker = broker.context("the federation role needs the keys role (its users and database)")?;
        let verifier = match &ctx.config.collateral {
            Some(spec) => enclava_collateral::EvidenceVerifier::new(Some(
                enclava_collateral::open_source(spec).map_err(|e| anyhow::anyhow!("--collateral: {e}"))?,
            )),
            None => enclava_collateral::EvidenceVerifier::default(),
        };
        let config = enclava_fed::FedConfig {
            lease: std::time::Duration::from_millis(ctx.config.farm_lease_ms),
            verifier: Arc::new(verifier),
            ..Default::default()
        };
        let fed = enclava_fed::Fed::open(broker.store().audit().clone(), broker.identity().clone(), config).await?;
        tracing::info!("federation role");
        Ok(Arc::new(enclava_fed::role::FedRole::new(Arc::new(fed))) as Arc<dyn Role>)
    })
}

fn pools<'a>(ctx: &'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>> {
    Box::pin(async move {
        let broker = ctx.broker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let broker = broker.context("the pools role needs the keys role (its users)")?;
        tracing::info!(registry = ?ctx.registry, "pools role");
        let config = enclava_pool::role::PoolsConfig {
            scale_down_after: std::time::Duration::from_millis(ctx.config.pool_idle_ms),
            ..Default::default()
        };
        let role = enclava_pool::role::PoolsRole::new(ctx.registry.clone(), broker.identity().clone(), config);
        if let Some(command) = &ctx.config.pool_node_command {
            let backend = enclava_pool::role::ProcessBackend::new(command)
                .map_err(|e| anyhow::anyhow!("--pool-node-command: {e}"))?;
            role.set_backend(Arc::new(backend));
        }
        *ctx.pools.lock().unwrap_or_else(|p| p.into_inner()) = Some(role.clone());
        Ok(Arc::new(role) as Arc<dyn Role>)
    })
}

fn ui<'a>(ctx: &'a RoleContext<'a>) -> BoxFuture<'a, anyhow::Result<Arc<dyn Role>>> {
    Box::pin(async move {
        let broker = ctx.broker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let broker = broker.context("the ui role needs the keys role (its users)")?;
        let role = enclava_ui::UiRole::new(ctx.registry.clone(), broker.identity().clone());
        if let Some(p) = &ctx.config.policy {
            role.set_policy(enclava_attest::Policy::load(p).map_err(anyhow::Error::msg)?);
        }
        tracing::info!("dashboard role (/ui)");
        *ctx.ui.lock().unwrap_or_else(|p| p.into_inner()) = Some(role.clone());
        Ok(Arc::new(role) as Arc<dyn Role>)
    })
}
