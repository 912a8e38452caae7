//! The `pools` role of `enclava server`: MOSS's FnPacker API (`/create`, `/list`, `/invoke`,
//! `/delete`) with Enclava's fields under `/pools/v1`, the pools' instances kept in line with the
//! registry, serverless requests forwarded to the instance the router picks, the "which
//! instance" answer for direct mode, and the scaling signal as Prometheus metrics.
//!
//! # Routes (under `/pools/v1`)
//!
//! - `POST /create` `{name, models, measurement?, platform?, concurrency?, queue?,
//!   modelsPerInstance?, min?, max?}` (signed in): a pool. Its instances are the live nodes in the
//!   registry with that measurement (and platform) that serve every one of its models.
//! - `GET /list` (signed in): the caller's pools (an admin sees all), each with its instances, the
//!   models hot on each, claims, in flight and queued, per model and in all.
//! - `GET /{name}`: one of them. `POST /delete` `{name}` or `DELETE /{name}`: deletes it.
//! - `POST /{name}/invoke`: a sealed serverless request, in the body and content type a node's
//!   `/v1/infer` takes; the answer is the node's, unchanged. `POST /invoke` `{name, request}`:
//!   the same in MOSS's shape (JSON only). A request waits in the pool's queue for at most
//!   `X-Enclava-Queue-Ms` (default 30 s); a full queue answers 429 with `Retry-After`. An instance
//!   that does not answer, or answers that it does not serve the request's model or measurement,
//!   is taken out of the pool for a while and the request is sent once more, elsewhere.
//! - `GET /{name}/instances?model=M`: the pool's instances for a direct-mode request, best first
//!   (hot, then least loaded), with where each is reached; the client verifies the one it picks.
//!
//! # Scaling
//!
//! The scaling signal (per pool and model: queued, in flight, hot instances, loads) is on
//! `/metrics` for an external autoscaler. With a [`Backend`] (the local backend: nodes started in
//! this process by `enclava dev` and the sandbox, or node processes from `--pool-node-command`),
//! the role acts on it itself for pools with `max > 0`: it starts a node while the pool has fewer
//! than `min` instances, or while requests wait and it has fewer than `max` (one start at a time),
//! and stops a node it started once the pool has been idle for [`PoolsConfig::scale_down_after`]
//! and has more than `min`. It scales only from one replica: the local backend is for one host.
//!
//! The same operations over gRPC: [`crate::grpc`].
//!
//! Invocations need no credential: the request is sealed with the user's request key, which only
//! enclaves the key broker attested and found granted can obtain; the pool sees only the model id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enclava_contracts::sealed as proto;
use enclava_core::text::quote;
use enclava_core::{Error, ErrorCode};
use enclava_identity::http::Caller;
use enclava_identity::{Identity, Principal};
use enclava_registry::schema::{EnclaveInfoJson, check_measurement, check_name, is_known_platform};
use enclava_registry::{Index, Registry};
use enclava_server::{Health, Role, StopSignal};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::pool::{self, Found, Lease, Pool, PoolError, PoolSpec, PoolView, Refused};
use crate::router::RouterConfig;
use crate::store::Store;

/// Where the role's routes are mounted.
pub const PREFIX: &str = "/pools";
/// The largest request an invocation takes.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// The header that bounds a request's wait in the queue (milliseconds).
pub const QUEUE_HEADER: &str = "x-enclava-queue-ms";
/// The header naming the instance that served a request.
pub const INSTANCE_HEADER: &str = "x-enclava-instance";

/// The registry as the pools' document store.
#[derive(Debug, Clone)]
pub struct RegistryStore(pub Arc<dyn Registry>);

#[async_trait]
impl Store for RegistryStore {
    async fn get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, String> {
        self.0.doc_get(key).await.map_err(|e| e.to_string())
    }
    async fn put(&self, key: &str, expect: u64, value: Vec<u8>) -> Result<bool, String> {
        self.0.doc_put(key, expect, &value).await.map_err(|e| e.to_string())
    }
    async fn delete(&self, key: &str) -> Result<bool, String> {
        self.0.doc_delete(key).await.map_err(|e| e.to_string())
    }
}

/// How the role runs.
#[derive(Debug, Clone)]
pub struct PoolsConfig {
    /// How often pools are brought in line with the registry (and metrics refreshed).
    pub sync_every: Duration,
    /// Time allowed for an instance to answer one request.
    pub request_timeout: Duration,
    /// A request's longest wait in the queue, unless it asks for less.
    pub queue_wait: Duration,
    /// With a [`Backend`], a pool idle this long gives back a node it started (down to `min`).
    pub scale_down_after: Duration,
}

impl Default for PoolsConfig {
    fn default() -> PoolsConfig {
        PoolsConfig {
            sync_every: Duration::from_millis(500),
            request_timeout: Duration::from_secs(60),
            queue_wait: Duration::from_secs(30),
            scale_down_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    pool: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    pool: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Metrics {
    instances: Family<PoolLabel, Gauge>,
    queued: Family<ModelLabel, Gauge>,
    in_flight: Family<ModelLabel, Gauge>,
    hot_instances: Family<ModelLabel, Gauge>,
    cold_loads: Family<ModelLabel, Gauge>,
    requests: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    fn show(&self, view: &PoolView) {
        let pool = view.spec.name.clone();
        self.instances.get_or_create(&PoolLabel { pool: pool.clone() }).set(view.status.instances.len() as i64);
        for model in &view.spec.models {
            let s = view.status.models.get(model).cloned().unwrap_or_default();
            let l = ModelLabel { pool: pool.clone(), model: model.clone() };
            self.queued.get_or_create(&l).set(s.queued as i64);
            self.in_flight.get_or_create(&l).set(i64::from(s.in_flight));
            self.hot_instances.get_or_create(&l).set(s.hot_on as i64);
            self.cold_loads.get_or_create(&l).set(s.cold_loads as i64);
        }
    }

    fn count(&self, pool: &str, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabel { pool: pool.to_owned(), outcome }).inc();
    }
}

/// Starts and stops serving nodes for pools (the local backend).
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Starts the `n`-th node for pool `spec.name`, serving its models. Returns a handle to stop it
    /// by and, when known at once, the instance id it registers under.
    async fn start(&self, spec: &PoolSpec, n: u64) -> Result<(String, Option<String>), String>;
    /// Stops a node this backend started.
    async fn stop(&self, handle: &str);
}

/// How long a started node may take to join its pool before it no longer counts as starting.
const JOIN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Started {
    handle: String,
    instance: Option<String>,
    at: Instant,
}

/// What the scaler knows of one pool.
#[derive(Debug, Default)]
struct Scale {
    started: Vec<Started>,
    idle_since: Option<Instant>,
    next: u64,
}

/// The local backend's processes: `enclava node …` (or any command) per started node, from a
/// template whose `{pool}`, `{n}` and `{models}` (comma-separated) are filled in; stopped by
/// killing the process. Its output goes to this process's stderr.
#[derive(Debug)]
pub struct ProcessBackend {
    template: Vec<String>,
    children: tokio::sync::Mutex<HashMap<String, tokio::process::Child>>,
}

impl ProcessBackend {
    /// A backend running `template` (split on whitespace; the program first).
    pub fn new(template: &str) -> Result<ProcessBackend, String> {
        let template: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
        if template.is_empty() {
            return Err("the pool node command is empty".into());
        }
        if !template.iter().any(|t| t.contains("{models}")) {
            return Err(
                "the pool node command must serve the pool's models: put {models} in it (e.g. --serve-model {models})"
                    .into(),
            );
        }
        Ok(ProcessBackend { template, children: tokio::sync::Mutex::new(HashMap::new()) })
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    async fn start(&self, spec: &PoolSpec, n: u64) -> Result<(String, Option<String>), String> {
        let fill = |t: &String| {
            t.replace("{pool}", &spec.name).replace("{n}", &n.to_string()).replace("{models}", &spec.models.join(","))
        };
        let args: Vec<String> = self.template.iter().map(fill).collect();
        let child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", quote(&args[0])))?;
        let handle = format!("{}-{n}-{}", spec.name, child.id().unwrap_or(0));
        self.children.lock().await.insert(handle.clone(), child);
        Ok((handle, None))
    }

    async fn stop(&self, handle: &str) {
        if let Some(mut child) = self.children.lock().await.remove(handle) {
            let _ = child.kill().await;
        }
    }
}

pub(crate) struct Inner {
    registry: Arc<dyn Registry>,
    store: Arc<dyn Store>,
    pub(crate) identity: Arc<Identity>,
    replica: String,
    config: PoolsConfig,
    opened: Mutex<HashMap<String, Arc<Pool>>>,
    http: Client<HttpConnector, Full<Bytes>>,
    metrics: Metrics,
    backend: OnceLock<Arc<dyn Backend>>,
    scale: Mutex<HashMap<String, Scale>>,
    syncing: tokio::sync::Mutex<()>,
}

/// The pools role.
#[derive(Clone)]
pub struct PoolsRole {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PoolsRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolsRole").field("replica", &self.inner.replica).finish_non_exhaustive()
    }
}

impl PoolsRole {
    /// The role on `registry` (instances and the pools' shared state), signing users in with
    /// `identity`.
    pub fn new(registry: Arc<dyn Registry>, identity: Arc<Identity>, config: PoolsConfig) -> PoolsRole {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let replica = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        PoolsRole {
            inner: Arc::new(Inner {
                store: Arc::new(RegistryStore(registry.clone())),
                registry,
                identity,
                replica,
                config,
                opened: Mutex::new(HashMap::new()),
                http,
                metrics: Metrics::default(),
                backend: OnceLock::new(),
                scale: Mutex::new(HashMap::new()),
                syncing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Lets the role start and stop nodes for pools with `max > 0` (once; `false` if it had one).
    pub fn set_backend(&self, backend: Arc<dyn Backend>) -> bool {
        self.inner.backend.set(backend).is_ok()
    }

    /// Stops every node the backend started for any pool.
    pub async fn stop_started(&self) {
        self.inner.stop_started(|_| true).await;
    }

    /// Brings every pool in line with the registry now (the background task does it every
    /// [`PoolsConfig::sync_every`]).
    pub async fn sync_all(&self) -> Result<(), PoolError> {
        self.inner.sync_all().await
    }
}

impl Inner {
    fn pool(&self, name: &str) -> Arc<Pool> {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened
            .entry(name.to_owned())
            .or_insert_with(|| Pool::open(self.store.clone(), "", name, &self.replica, Pool::system_clock()))
            .clone()
    }

    /// The live registry instances a pool takes.
    async fn find(&self, spec: &PoolSpec) -> Result<Vec<Found>, PoolError> {
        let index = match (&spec.measurement, &spec.platform) {
            (Some(m), _) => Index::Measurement(m.clone()),
            (None, Some(p)) => Index::Platform(p.clone()),
            (None, None) => Index::Data(spec.models.first().cloned().unwrap_or_default()),
        };
        let store = |e: enclava_registry::RegistryError| PoolError::Store(e.to_string());
        let ids: Vec<String> =
            self.registry.index(&index).await.map_err(store)?.into_iter().map(|(id, _)| id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let probes = self.registry.probe(&ids, true).await.map_err(store)?;
        let mut found = Vec::new();
        for (id, probe) in ids.iter().zip(probes) {
            let (Some(_), Some(raw)) = (probe.presence_ttl, probe.info) else { continue };
            let Ok(info) = EnclaveInfoJson::parse(&raw) else { continue };
            let fits = &info.instance_id == id
                && spec.measurement.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(&info.policy.mrenclave))
                && spec.platform.as_ref().is_none_or(|p| p == &info.platform)
                && spec.models.iter().all(|m| info.data_access.contains_key(m));
            if fits {
                let hot =
                    spec.models.iter().filter(|m| info.data_access.get(*m).is_some_and(|a| a.hot)).cloned().collect();
                found.push(Found { id: id.clone(), endpoint: info.connection_string.clone(), hot });
            }
        }
        Ok(found)
    }

    async fn sync_all(&self) -> Result<(), PoolError> {
        // One at a time (the loop, and a pool just created): the scaler decides on what it saw.
        let _one = self.syncing.lock().await;
        let names = pool::names(self.store.as_ref(), "").await?;
        self.opened.lock().unwrap_or_else(|e| e.into_inner()).retain(|n, _| names.contains(n));
        // Nodes started for pools since deleted go.
        self.stop_started(|pool| !names.iter().any(|n| n == pool)).await;
        let mut failed = None;
        for name in names {
            if let Err(e) = self.sync_one(&name).await {
                tracing::warn!(pool = %name, error = %e, "pool not brought in line with the registry; retrying");
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Stops the nodes the backend started for the pools `which` names.
    async fn stop_started(&self, which: impl Fn(&str) -> bool) {
        let handles: Vec<String> = {
            let mut scale = self.scale.lock().unwrap_or_else(|e| e.into_inner());
            let pools: Vec<String> = scale.keys().filter(|p| which(p)).cloned().collect();
            pools.iter().filter_map(|p| scale.remove(p)).flat_map(|s| s.started.into_iter().map(|n| n.handle)).collect()
        };
        if let Some(b) = self.backend.get() {
            for h in handles {
                tracing::info!(node = %h, "stopping a node the local backend started");
                b.stop(&h).await;
            }
        }
    }

    async fn sync_one(&self, name: &str) -> Result<(), PoolError> {
        let pool = self.pool(name);
        let spec = match pool.view().await {
            Ok(v) => v.spec,
            Err(PoolError::Gone(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let found = self.find(&spec).await?;
        let synced = pool.sync(&found).await?;
        for id in &synced.joined {
            tracing::info!(pool = %name, instance = %id, "instance joined the pool");
        }
        for id in &synced.left {
            tracing::info!(pool = %name, instance = %id, "instance left the pool (gone from the registry)");
        }
        self.metrics.show(&synced.view);
        self.scale(&pool, &synced.view).await;
        Ok(())
    }

    /// With a backend, starts or stops one node of pool `view` as the scaling signal says.
    async fn scale(&self, pool: &Arc<Pool>, view: &PoolView) {
        let Some(backend) = self.backend.get() else { return };
        let spec = &view.spec;
        if spec.max == 0 {
            return;
        }
        enum Act {
            Start(u64, &'static str),
            Stop(String, Option<String>),
        }
        let act = {
            let mut scale = self.scale.lock().unwrap_or_else(|e| e.into_inner());
            let s = scale.entry(spec.name.clone()).or_default();
            let joined =
                |i: &Option<String>| i.as_ref().is_some_and(|i| view.status.instances.iter().any(|x| &x.id == i));
            let starting = s.started.iter().filter(|x| !joined(&x.instance) && x.at.elapsed() < JOIN_GRACE).count();
            let n = view.status.instances.len() + starting;
            let busy = view.status.queued > 0 || view.status.instances.iter().any(|i| i.in_flight > 0);
            if busy {
                s.idle_since = None;
            } else if s.idle_since.is_none() {
                s.idle_since = Some(Instant::now());
            }
            let idle_long = s.idle_since.is_some_and(|t| t.elapsed() >= self.config.scale_down_after);
            if n < spec.min as usize && starting == 0 {
                s.next += 1;
                Some(Act::Start(s.next - 1, "below --min"))
            } else if view.status.queued > 0 && n < spec.max as usize && starting == 0 {
                s.next += 1;
                Some(Act::Start(s.next - 1, "requests are waiting"))
            } else if idle_long && n > spec.min as usize && !s.started.is_empty() {
                s.idle_since = Some(Instant::now());
                s.started.pop().map(|x| Act::Stop(x.handle, x.instance))
            } else {
                None
            }
        };
        match act {
            Some(Act::Start(n, why)) => match backend.start(spec, n).await {
                Ok((handle, instance)) => {
                    tracing::info!(pool = %spec.name, node = %handle, why, "local backend started a node");
                    let mut scale = self.scale.lock().unwrap_or_else(|e| e.into_inner());
                    scale.entry(spec.name.clone()).or_default().started.push(Started {
                        handle,
                        instance,
                        at: Instant::now(),
                    });
                }
                Err(e) => tracing::warn!(pool = %spec.name, error = %e, "local backend could not start a node"),
            },
            Some(Act::Stop(handle, instance)) => {
                tracing::info!(pool = %spec.name, node = %handle, "pool idle: local backend stops a node it started");
                if let Some(id) = instance
                    && let Err(e) = pool.remove(&id).await
                {
                    tracing::warn!(pool = %spec.name, error = %e, "could not take the node out of the pool first");
                }
                backend.stop(&handle).await;
            }
            None => {}
        }
    }

    /// How long a request may wait in the queue: what it asked for (ms), at most the server's.
    pub(crate) fn queue_wait(&self, asked_ms: Option<u64>) -> Duration {
        asked_ms
            .filter(|ms| *ms > 0)
            .map_or(self.config.queue_wait, |ms| Duration::from_millis(ms).min(self.config.queue_wait))
    }

    /// Runs one sealed request through pool `name`: an instance from the router, the request
    /// forwarded to it, once more elsewhere if that instance failed.
    pub(crate) async fn invoke(&self, name: &str, binary: bool, body: Bytes, wait: Duration) -> Result<Answer, Error> {
        if check_name("a pool name", name).is_err() {
            return Err(Error::not_found(format!("no pool {}", quote(name))));
        }
        let head = proto::request_head(&body, binary)
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, enclava_core::text::prefix(&e, 160).to_string()))?;
        if head.mode == proto::Mode::Direct {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a direct-mode request is sealed to one enclave: ask GET /pools/v1/{name}/instances?model=… for one, \
                     verify it, and send it there; through a pool, seal in serverless mode"
                ),
            ));
        }
        let pool = self.pool(name);
        let mut tries = Vec::new();
        for attempt in 0..2 {
            let lease = match pool.acquire_sealed(&head.model, head.measurement.as_deref(), wait).await {
                Ok(l) => l,
                Err(Refused::Full { retry_after_ms }) => {
                    self.metrics.count(name, "full");
                    let secs = retry_after_ms.div_ceil(1000).max(1);
                    return Err(Error {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "pool {name} is full (every instance busy, the queue at its bound): try again in {secs} s"
                        ),
                        retry_after: Some(secs),
                    });
                }
                Err(Refused::Deadline) => {
                    self.metrics.count(name, "deadline");
                    return Err(Error::unavailable(format!(
                        "no instance of pool {name} was free within {} ms",
                        wait.as_millis()
                    )));
                }
                Err(Refused::NotServed(models)) => {
                    return Err(Error::new(
                        ErrorCode::NotServed,
                        format!(
                            "pool {name} does not serve model {}; it serves {}",
                            quote(&head.model),
                            models.join(", ")
                        ),
                    ));
                }
                Err(Refused::OtherMeasurement(m)) => {
                    return Err(Error::new(
                        ErrorCode::OtherMeasurement,
                        format!(
                            "pool {name} runs measurement {}; the request is sealed for another",
                            enclava_core::text::prefix(&m, 16)
                        ),
                    ));
                }
                Err(Refused::Pool(e)) => return Err(pool_error(e)),
            };
            match self.forward(&lease, binary, body.clone()).await {
                Forwarded::Answer(answer) => {
                    let instance = lease.instance.clone();
                    if let Err(e) = lease.finish().await {
                        // Answered all the same; the slot is given back later.
                        tracing::warn!(pool = %name, %instance, error = %e, "could not record the end of a request");
                    }
                    self.metrics.count(name, if attempt == 0 { "served" } else { "served_on_retry" });
                    return Ok(answer);
                }
                Forwarded::NotHere(why) => {
                    // The instance is up but not for this request (another measurement, or it no
                    // longer serves the model): try another, keep this one.
                    tries.push(format!("{}: {why}", lease.instance));
                    let _ = lease.finish().await;
                }
                Forwarded::Failed(why) => {
                    tracing::warn!(pool = %name, instance = %lease.instance, reason = %why, "instance failed a request: taken out of the pool, retrying elsewhere");
                    tries.push(format!("{}: {why}", lease.instance));
                    lease.failed().await.map_err(pool_error)?;
                }
            }
        }
        self.metrics.count(name, "failed");
        Err(Error::new(
            ErrorCode::Unavailable,
            format!("pool {name}: two instances failed the request ({}); try again", tries.join("; ")),
        ))
    }

    /// Sends the request to the lease's instance.
    async fn forward(&self, lease: &Lease, binary: bool, body: Bytes) -> Forwarded {
        match self.send(lease, binary, body).await {
            Ok(answer) if matches!(answer.status.as_u16(), 404 | 421) => {
                let code = serde_json::from_slice::<enclava_core::ErrorBody>(&answer.body)
                    .map(|b| b.code.as_str())
                    .unwrap_or("?");
                Forwarded::NotHere(format!("answered {} ({code})", answer.status.as_u16()))
            }
            Ok(answer) if matches!(answer.status.as_u16(), 502 | 504) => {
                Forwarded::Failed(format!("answered {}", answer.status.as_u16()))
            }
            Ok(answer) => Forwarded::Answer(answer),
            Err(why) => Forwarded::Failed(why),
        }
    }

    /// One HTTP exchange with the lease's instance. `Err`: no (whole) answer.
    async fn send(&self, lease: &Lease, binary: bool, body: Bytes) -> Result<Answer, String> {
        let uri = format!("http://{}{}", lease.endpoint, proto::PATH);
        let content_type = if binary { proto::BINARY_CONTENT_TYPE } else { "application/json" };
        let req = axum::http::Request::post(&uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| format!("bad instance address {}: {e}", quote(&lease.endpoint)))?;
        let (parts, bytes) = tokio::time::timeout(self.config.request_timeout, async {
            let resp = self.http.request(req).await.map_err(|e| format!("no answer: {e}"))?;
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, proto::MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("the answer broke off: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, bytes))
        })
        .await
        .map_err(|_| format!("no answer within {} s", self.config.request_timeout.as_secs()))??;
        Ok(Answer {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
            body: bytes,
            instance: lease.instance.clone(),
        })
    }

    /// Creates a pool for `caller`, then brings it in line with the registry at once.
    pub(crate) async fn create_pool(self: &Arc<Self>, caller: &Principal, body: CreateBody) -> Result<PoolView, Error> {
        let spec = body.spec(&caller.id)?;
        let name = spec.name.clone();
        pool::create(self.store.as_ref(), "", spec).await.map_err(pool_error)?;
        tracing::info!(pool = %name, owner = %caller.id, "pool created");
        // In a task of its own: the scaler may start a node, which must not be left half-started.
        let inner = self.clone();
        let synced = tokio::spawn(async move { inner.sync_all().await }).await;
        if let Ok(Err(e)) | Err(e) = synced.map_err(|e| PoolError::Store(e.to_string())) {
            tracing::warn!(error = %e, "pools not brought in line with the registry yet; retrying");
        }
        self.pool(&name).view().await.map_err(pool_error)
    }

    /// The pools `caller` may see.
    pub(crate) async fn list_pools(&self, caller: &Principal) -> Result<Vec<PoolView>, Error> {
        let mut pools = Vec::new();
        for name in pool::names(self.store.as_ref(), "").await.map_err(pool_error)? {
            match self.visible(caller, &name).await {
                Ok(v) => pools.push(v),
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pools)
    }

    pub(crate) async fn delete_pool(&self, caller: &Principal, name: &str) -> Result<(), Error> {
        self.visible(caller, name).await?;
        pool::delete(self.store.as_ref(), "", name).await.map_err(pool_error)?;
        tracing::info!(pool = %name, by = %caller.id, "pool deleted");
        Ok(())
    }

    pub(crate) async fn rank(&self, name: &str, model: &str) -> Result<Vec<crate::pool::Ranked>, Error> {
        self.pool(name).rank(model).await.map_err(pool_error)
    }

    /// Pool `name` if `caller` may see it (its owner, or an admin).
    pub(crate) async fn visible(&self, caller: &Principal, name: &str) -> Result<PoolView, Error> {
        let view = self.pool(name).view().await.map_err(pool_error)?;
        if view.spec.owner != caller.id && !caller.is_admin() {
            return Err(Error::not_found(format!("no pool {}", quote(name))));
        }
        Ok(view)
    }
}

/// How a forwarded request went.
enum Forwarded {
    /// The instance's answer, for the caller.
    Answer(Answer),
    /// The instance answered that the request is not for it.
    NotHere(String),
    /// The instance did not answer (or its gateway said so).
    Failed(String),
}

/// An instance's answer to a forwarded request, passed on unchanged.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
    /// The instance that gave it.
    pub instance: String,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut out = Response::new(axum::body::Body::from(self.body));
        *out.status_mut() = self.status;
        if let Some(ct) = self.content_type {
            out.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        if let Some(ra) = self.retry_after {
            out.headers_mut().insert(header::RETRY_AFTER, ra);
        }
        if let Ok(v) = HeaderValue::from_str(&self.instance) {
            out.headers_mut().insert(INSTANCE_HEADER, v);
        }
        out
    }
}

pub(crate) fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Gone(name) => Error::not_found(format!("no pool {}", quote(&name))),
        PoolError::Exists(name) => {
            Error::new(ErrorCode::AlreadyExists, format!("a pool {} already exists", quote(&name)))
        }
        PoolError::Contended | PoolError::Dropped => Error::unavailable(e.to_string()),
        PoolError::Store(_) => Error::unavailable(e.to_string()),
        PoolError::Corrupt(_) => Error::internal(e.to_string()),
    }
}

/// `POST /create`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    pub models: Vec<String>,
    #[serde(default)]
    pub measurement: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub queue: Option<usize>,
    #[serde(default)]
    pub models_per_instance: Option<usize>,
    #[serde(default)]
    pub min: Option<u32>,
    #[serde(default)]
    pub max: Option<u32>,
}

impl CreateBody {
    /// The pool it asks for, checked.
    fn spec(self, owner: &str) -> Result<PoolSpec, Error> {
        check_name("a pool name", &self.name).map_err(Error::invalid)?;
        if ["create", "list", "delete", "invoke"].contains(&self.name.as_str()) || self.name.contains('/') {
            return Err(Error::invalid(format!("{} cannot name a pool (it names a route)", quote(&self.name))));
        }
        if self.models.is_empty() || self.models.len() > 64 {
            return Err(Error::invalid("a pool serves 1 to 64 models"));
        }
        for m in &self.models {
            check_name("a model id", m).map_err(Error::invalid)?;
        }
        let measurement = self.measurement.map(|m| m.to_ascii_lowercase());
        if let Some(m) = &measurement {
            check_measurement(m).map_err(Error::invalid)?;
        }
        if let Some(p) = &self.platform
            && !is_known_platform(p)
        {
            return Err(Error::invalid(format!("unknown platform {}", quote(p))));
        }
        let d = RouterConfig::default();
        let config = RouterConfig {
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            queue: self.queue.unwrap_or(d.queue),
            models_per_instance: self.models_per_instance.unwrap_or(d.models_per_instance),
            ..d
        };
        if !(1..=1024).contains(&config.concurrency) {
            return Err(Error::invalid("concurrency is 1 to 1024 requests per instance"));
        }
        if config.queue > 100_000 {
            return Err(Error::invalid("the queue holds at most 100000 requests"));
        }
        if !(1..=64).contains(&config.models_per_instance) {
            return Err(Error::invalid("modelsPerInstance is 1 to 64"));
        }
        let (min, max) = (self.min.unwrap_or(0), self.max.unwrap_or(0));
        if min > max || max > 256 {
            return Err(Error::invalid("min ≤ max ≤ 256"));
        }
        let mut models: Vec<String> = Vec::new();
        for m in self.models {
            if !models.contains(&m) {
                models.push(m);
            }
        }
        Ok(PoolSpec {
            name: self.name,
            models,
            measurement,
            platform: self.platform,
            config,
            min,
            max,
            owner: owner.to_owned(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

#[derive(Debug, Deserialize)]
struct MossInvoke {
    name: String,
    request: Box<serde_json::value::RawValue>,
}

#[derive(Debug, Deserialize)]
struct RankQuery {
    model: String,
}

type S = State<Arc<Inner>>;

async fn create(State(s): S, Caller(caller): Caller, body: Bytes) -> Result<Response, Error> {
    let body = enclava_core::json_body::<CreateBody>(&body)?;
    let view = s.create_pool(&caller, body).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(State(s): S, Caller(caller): Caller) -> Result<Json<serde_json::Value>, Error> {
    Ok(Json(serde_json::json!({ "pools": s.list_pools(&caller).await? })))
}

async fn show(State(s): S, Caller(caller): Caller, Path(name): Path<String>) -> Result<Json<PoolView>, Error> {
    s.visible(&caller, &name).await.map(Json)
}

async fn delete_moss(State(s): S, Caller(caller): Caller, body: Bytes) -> Result<StatusCode, Error> {
    let body = enclava_core::json_body::<NameBody>(&body)?;
    s.delete_pool(&caller, &body.name).await.map(|()| StatusCode::NO_CONTENT)
}

async fn delete_rest(State(s): S, Caller(caller): Caller, Path(name): Path<String>) -> Result<StatusCode, Error> {
    s.delete_pool(&caller, &name).await.map(|()| StatusCode::NO_CONTENT)
}

async fn invoke(State(s): S, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Answer, Error> {
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(proto::BINARY_CONTENT_TYPE));
    let asked = headers.get(QUEUE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    s.invoke(&name, binary, body, s.queue_wait(asked)).await
}

async fn invoke_moss(State(s): S, headers: HeaderMap, body: Bytes) -> Result<Answer, Error> {
    let call = enclava_core::json_body::<MossInvoke>(&body)?;
    let asked = headers.get(QUEUE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    s.invoke(&call.name, false, Bytes::from(call.request.get().to_owned()), s.queue_wait(asked)).await
}

async fn rank(
    State(s): S,
    Path(name): Path<String>,
    Query(q): Query<RankQuery>,
) -> Result<Json<serde_json::Value>, Error> {
    let instances = s.rank(&name, &q.model).await?;
    // With each its registry info (evidence, key, measurement): the client verifies the one it
    // picks before sending anything. Instances whose presence has gone are left out.
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    let probes = if ids.is_empty() {
        Vec::new()
    } else {
        s.registry.probe(&ids, true).await.map_err(|e| Error::unavailable(e.to_string()))?
    };
    let listed: Vec<serde_json::Value> = instances
        .into_iter()
        .zip(probes)
        .filter_map(|(i, p)| {
            let info = EnclaveInfoJson::parse(p.info.as_deref()?).ok().filter(|info| info.instance_id == i.id)?;
            p.presence_ttl?;
            let mut v = serde_json::to_value(&i).ok()?;
            v["info"] = serde_json::to_value(&info).ok()?;
            Some(v)
        })
        .collect();
    Ok(Json(serde_json::json!({ "pool": name, "model": q.model, "instances": listed })))
}

/// The role's REST routes (relative to [`PREFIX`]).
fn router(inner: Arc<Inner>) -> Router {
    let identity = inner.identity.clone();
    Router::new()
        .route("/v1/create", post(create))
        .route("/v1/list", get(list))
        .route("/v1/delete", post(delete_moss))
        .route("/v1/invoke", post(invoke_moss))
        .route("/v1/{name}", get(show).delete(delete_rest))
        .route("/v1/{name}/invoke", post(invoke))
        .route("/v1/{name}/instances", get(rank))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(enclava_identity::http::layer(identity))
        .with_state(inner)
}

#[async_trait]
impl Role for PoolsRole {
    fn name(&self) -> &'static str {
        "pools"
    }

    fn prefix(&self) -> String {
        PREFIX.into()
    }

    fn rest(&self) -> Option<Router> {
        Some(router(self.inner.clone()))
    }

    fn grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        let service = crate::grpc::PoolsService { inner: self.inner.clone() };
        routes.add_service(enclava_contracts::pools::v1::pools_server::PoolsServer::with_interceptor(
            service,
            enclava_identity::grpc::interceptor,
        ));
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let m = &self.inner.metrics;
        let r = registry.sub_registry_with_prefix("enclava_pool");
        r.register("instances", "Instances in each pool", m.instances.clone());
        r.register("queued", "Requests waiting per pool and model (the scaling signal)", m.queued.clone());
        r.register("in_flight", "Requests running per pool and model", m.in_flight.clone());
        r.register("hot_instances", "Instances where each model is loaded", m.hot_instances.clone());
        r.register("cold_loads", "Model loads per pool and model", m.cold_loads.clone());
        r.register("requests", "Requests through this replica by outcome", m.requests.clone());
    }

    fn start(&self, mut stop: StopSignal) -> Vec<JoinHandle<()>> {
        let inner = self.inner.clone();
        vec![tokio::spawn(async move {
            loop {
                if let Err(e) = inner.sync_all().await {
                    tracing::warn!(error = %e, "pools not brought in line with the registry; retrying");
                }
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = tokio::time::sleep(inner.config.sync_every) => {}
                }
            }
        })]
    }

    async fn stop(&self) {
        self.stop_started().await;
    }

    async fn health(&self) -> Health {
        match self.inner.registry.ping().await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failing(format!("the pools' store does not answer: {e}")),
        }
    }
}
