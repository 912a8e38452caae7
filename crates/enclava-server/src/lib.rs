//! The control plane's server, `enclava server`: a set of [`Role`]s on one port. Each role brings
//! its gRPC services, its REST routes (mounted under the role's own prefix, so two roles never
//! collide), its part of the OpenAPI document, its metrics, its background tasks and its health;
//! the server merges them into one gRPC + HTTP service with one `/openapi.json`, one `/health`
//! that reports every role, and one `/metrics`. It serves [`Server::run`]`(listener, shutdown)`
//! and, on shutdown, drains in-flight requests before it stops the roles' tasks and the roles.
//!
//! # Layout
//! - [`Role`]: what a role provides; [`Health`]: its health; [`StopSignal`]: when to stop.
//! - [`Server`]: the roles together.
//! - [`limit`]: per-source rate limits for calls anyone may make; [`Source`]: the caller's address.
//!
//! The server knows nothing of the registry, the key store or Redis: a role is a crate of its own
//! (the enclave manager, the key broker), and adding one is a new crate plus one line where roles
//! are listed (`enclava-sandbox`).

pub mod limit;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long background tasks get to finish after the server stopped taking requests.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A role's health: whether it can serve, and details for `/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub ok: bool,
    pub detail: serde_json::Value,
}

impl Health {
    pub fn ok() -> Health {
        Health { ok: true, detail: serde_json::json!({ "status": "ok" }) }
    }

    /// Unhealthy, with why.
    pub fn failing(why: impl Into<String>) -> Health {
        Health { ok: false, detail: serde_json::json!({ "status": why.into() }) }
    }
}

/// Tells background tasks to stop, and whether the server is draining: it accepts no new
/// connections while the requests in flight finish (a task that judges clients by what they
/// sent lately, like a lease sweeper, must not act on that silence).
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>, watch::Receiver<bool>);

impl StopSignal {
    /// Completes once the server is stopping.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Whether the server stopped accepting connections (it is draining, or stopped).
    pub fn is_draining(&self) -> bool {
        *self.1.borrow() || self.is_stopped()
    }
}

/// What a server role provides. Every method but [`Role::name`] has a default: a role gives what
/// it has.
#[tonic::async_trait]
pub trait Role: Send + Sync + std::fmt::Debug {
    /// Its name in `--roles`, `/health` and logs (`manager`, `keys`).
    fn name(&self) -> &'static str;

    /// Where its REST routes and their OpenAPI paths are mounted (`/keys`).
    fn prefix(&self) -> String {
        format!("/{}", self.name())
    }

    /// Adds its gRPC services.
    fn grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        let _ = routes;
    }

    /// Its REST routes, relative to [`Role::prefix`].
    fn rest(&self) -> Option<axum::Router> {
        None
    }

    /// Its part of the OpenAPI document, with paths relative to [`Role::prefix`].
    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        None
    }

    /// Registers its metrics (the registry is the server's, shared by every role).
    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }

    /// Starts its background work; each task ends when `stop` fires.
    fn start(&self, stop: StopSignal) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = stop;
        Vec::new()
    }

    /// Whether it can serve now (called about once a second, never per request).
    async fn health(&self) -> Health {
        Health::ok()
    }

    /// Stops cleanly, after the last request and the background tasks are done.
    async fn stop(&self) {}
}

/// The caller's address, when the server knows it (for per-source rate limits), in REST handlers.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Source, Self::Rejection> {
        Ok(Source(parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// The caller's address in a gRPC handler.
pub fn grpc_source<T>(req: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// A set of roles, served together.
#[derive(Debug, Default)]
pub struct Server {
    roles: Vec<Arc<dyn Role>>,
    title: String,
}

impl Server {
    pub fn new() -> Server {
        Server { roles: Vec::new(), title: "Enclava".into() }
    }

    /// Adds a role. Two roles may not share a name or a prefix.
    pub fn role(mut self, role: Arc<dyn Role>) -> Server {
        self.roles.push(role);
        self
    }

    /// The names of its roles, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.roles.iter().map(|r| r.name()).collect()
    }

    /// The merged OpenAPI document: every role's paths under its prefix.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        let mut doc = utoipa::openapi::OpenApiBuilder::new()
            .info(
                utoipa::openapi::InfoBuilder::new()
                    .title(self.title.clone())
                    .description(Some("Every REST route of this server's roles, each under its role's prefix"))
                    .version(env!("CARGO_PKG_VERSION")),
            )
            .build();
        for role in &self.roles {
            let Some(mut part) = role.openapi() else { continue };
            let prefix = role.prefix();
            let paths = std::mem::take(&mut part.paths.paths);
            part.paths.paths = paths.into_iter().map(|(p, item)| (format!("{prefix}{p}"), item)).collect();
            part.info = doc.info.clone();
            doc.merge(part);
        }
        doc
    }

    /// Checks the roles fit together: names and prefixes unique.
    fn validate(&self) -> std::io::Result<()> {
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        for r in &self.roles {
            if !names.insert(r.name()) {
                return Err(std::io::Error::other(format!("role {} is listed twice", r.name())));
            }
            if r.rest().is_some() && !prefixes.insert(r.prefix()) {
                return Err(std::io::Error::other(format!("two roles mount REST routes at {}", r.prefix())));
            }
        }
        Ok(())
    }

    /// Serves every role on `listener` until `shutdown` completes, then drains: in-flight
    /// requests finish, background tasks are told to stop (and get [`STOP_GRACE`]), and each
    /// role stops.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.validate()?;
        let names = self.names();
        let mut metrics = prometheus_client::registry::Registry::default();
        let mut grpc = tonic::service::RoutesBuilder::default();
        let mut rest = axum::Router::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (drain_tx, drain_rx) = watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = drain_tx.send(true);
        };
        let mut tasks = Vec::new();
        for role in &self.roles {
            role.metrics(&mut metrics);
            role.grpc(&mut grpc);
            if let Some(r) = role.rest() {
                rest = rest.nest(&role.prefix(), r);
            }
            tasks.extend(role.start(StopSignal(stop_rx.clone(), drain_rx.clone())));
        }
        let doc = self.openapi().to_pretty_json().unwrap_or_else(|_| "{}".into());
        rest = rest.route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([("content-type", "application/json")], doc) }
            }),
        );

        // Health is checked in the background (about once a second) and read by /health.
        let health: Arc<Mutex<Vec<(&'static str, Health)>>> =
            Arc::new(Mutex::new(names.iter().map(|n| (*n, Health::failing("starting"))).collect()));
        tasks.push(tokio::spawn(watch_health(
            self.roles.clone(),
            health.clone(),
            StopSignal(stop_rx.clone(), drain_rx.clone()),
        )));
        let check = health.clone();
        let health_fn: enclava_telemetry::HealthCheck = Arc::new(move || {
            let roles = check.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let ok = roles.iter().all(|(_, h)| h.ok);
            let detail: serde_json::Map<String, serde_json::Value> =
                roles.into_iter().map(|(n, h)| (n.to_owned(), h.detail)).collect();
            (ok, serde_json::json!({ "status": if ok { "ok" } else { "degraded" }, "roles": detail }))
        });
        let router =
            grpc.routes().into_axum_router().merge(rest).merge(enclava_telemetry::router(Arc::new(metrics), health_fn));

        let addr = listener.local_addr()?;
        tracing::info!(%addr, roles = ?names, "server listening");
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
        tracing::info!("no more requests in flight: stopping the roles");
        let _ = stop_tx.send(true);
        for mut task in tasks {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
                task.abort();
            }
        }
        for role in &self.roles {
            role.stop().await;
        }
        tracing::info!("server stopped");
        result
    }
}

/// Keeps each role's health up to date.
async fn watch_health(roles: Vec<Arc<dyn Role>>, out: Arc<Mutex<Vec<(&'static str, Health)>>>, mut stop: StopSignal) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.stopped() => return,
        }
        let mut now = Vec::with_capacity(roles.len());
        for r in &roles {
            now.push((r.name(), r.health().await));
        }
        let mut current = out.lock().unwrap_or_else(|p| p.into_inner());
        for ((name, new), (_, old)) in now.iter().zip(current.iter()) {
            if new.ok != old.ok && new.ok {
                tracing::info!(role = name, "role healthy");
            } else if new.ok != old.ok {
                tracing::warn!(role = name, detail = %new.detail, "role unhealthy");
            }
        }
        *current = now;
    }
}
