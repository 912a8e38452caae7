//! Serving encrypted workloads to sealed requests: the node fetches each workload's key from the
//! key broker with fresh evidence, decrypts the package in memory, hands it to the workload's
//! executor ([`enclava_executor`]: ONNX models first, Wasm next), and answers sealed requests on
//! `/v1/infer`, in direct mode (BlindAI) and serverless mode (MOSS), and, as an OpenWhisk action,
//! on `/init` and `/run`. Everything here is the same for every executor; an executor only loads
//! bytes and runs an input.
//!
//! # Models
//!
//! Every model in [`ServeConfig::models`] is listed in the registry from the start, cold. A
//! background task then loads each: attested key release (version 0: the current one), blob
//! `<model>/v<version>.enclava` from the blob folder, [`enclava_model::decrypt_in_place`] (which
//! checks the model id and version the package names and authenticates every chunk), then the
//! executor's [`Executor::load`](enclava_executor::Executor::load) from memory. A loaded workload
//! is shared by every request (an `Arc`) and published hot. Workloads are kept under
//! [`ServeConfig::memory_budget`] (by [`Loaded::memory_bytes`]) by evicting the least recently
//! used (dropping it), which is
//! published cold; a request for a cold model loads it again and waits for it (up to
//! [`LOAD_WAIT`]). A load that fails (the broker refuses this node's measurement, the package is
//! missing or fails authentication, the model does not load) is logged with its reason; the model
//! stays cold, requests for it get 503 with the reason in words, and it is retried at most once
//! every [`RETRY_FAILED_AFTER`]. Nothing is ever served from a package that did not authenticate.
//!
//! # Requests
//!
//! The wire protocol (encodings, HPKE `info`, AAD, plaintext layout, errors) is documented and
//! implemented once, in [`enclava_contracts::sealed`]; this module is its enclave side. The node
//! checks the time (±60 s) and opens the request, then refuses a request id seen in the last 120 s
//! (a bounded replay cache: when it is full the node answers 503 rather than forget), checks the
//! input against the executor's [`Limits`], invokes the workload on a blocking thread (giving up
//! after the limit's timeout), adds what it used to the workload's [`WorkloadUsage`], and seals
//! the output back, in the encoding (JSON or binary) the request came in. Neither keys, inputs nor
//! outputs are logged or put in error messages.
//!
//! - *Direct*: the request is sealed with a secret from an HPKE setup to this node's attested
//!   request key; the answer is sealed with the same secret, which only the client shares.
//! - *Serverless*: the request names a user and a measurement and is sealed with that user's
//!   request key. A request for another measurement than this node's is refused (421) without
//!   asking anyone. Otherwise the node asks the key broker for the user's key with fresh evidence
//!   ([`crate::user_keys`]: one fetch per (model, user) per minute, refusals remembered 10 s, at
//!   most 4 fetches at once); the broker releases it only if the model's owner granted this
//!   measurement for that user (403 otherwise). The answer is sealed with the same key.
//!
//! # OpenWhisk action protocol
//!
//! With [`ServeConfig::openwhisk`], the node also answers like any OpenWhisk action runtime:
//! - `POST /init` with any body (OpenWhisk sends `{"value": {"name", "main", "code", "binary",
//!   "env"}}`): `200 {"ok": true}`. The node's code is the image itself, so there is nothing to
//!   initialise.
//! - `POST /run` with `{"value": <sealed request JSON>, "namespace", "action_name", "api_host",
//!   "api_key", "activation_id", "transaction_id", "deadline"}`: `200` with the sealed response
//!   JSON, or a 4xx/5xx with `{"error": "…", "code": "…"}` (OpenWhisk reports an `error` field as
//!   an application error).
//!
//! Run it as a Docker action: an image whose entry point is `enclava node --platform <tee>
//! --openwhisk --listen 0.0.0.0:8080 --serve-model <model> …` (OpenWhisk talks to port 8080), then
//! `wsk action create acme-tiny --docker <registry>/enclava-node:<tag>` and invoke it with the
//! sealed request's fields as parameters: `wsk action invoke acme-tiny --blocking --result
//! --param-file sealed-request.json`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use enclava_contracts::sealed::{self as proto, InferRequest, InferResponse, Mode, OpenedRequest};
use enclava_core::{Error, ErrorCode};
use enclava_executor::{Executors, Limits, Loaded, WorkloadRef};
use enclava_model::{BlobError, BlobStore, FolderStore, ModelKey, PackageError, decrypt_in_place, package_blob_name};
use tokio::sync::watch;

use crate::user_keys::{Unavailable, UserKeys};
use crate::{DataMap, NodeError, NodeMetrics, RequestKey, set_hot, tee::Tee};

/// Largest request body accepted (a 224×224 f32 image is 0.6 MB, 0.8 MB in base64).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// A failed model load is tried again at most this often.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
/// How long a request waits for a cold model to load.
pub const LOAD_WAIT: Duration = Duration::from_secs(30);
/// Request ids remembered at most; past it, requests are refused (503) rather than risk a replay.
pub const MAX_REPLAY_ENTRIES: usize = 100_000;

/// What a node serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The key broker, `http://host:port`.
    pub key_broker: String,
    /// The blob folder holding the model packages.
    pub blobs: PathBuf,
    /// The workloads to serve: `KIND:ID`, or `ID` for the first executor's kind.
    pub models: Vec<String>,
    /// The executors workloads run on (the first is the default kind).
    pub executors: Executors,
    /// Bytes of loaded models to keep at most (least recently used evicted first); 0: no limit.
    /// One model larger than the budget is still served, alone.
    pub memory_budget: u64,
    /// Also answer OpenWhisk's `/init` and `/run`.
    pub openwhisk: bool,
}

impl ServeConfig {
    /// Checks the configuration; returns the workloads, by id.
    pub(crate) fn workloads(&self) -> Result<BTreeMap<String, WorkloadRef>, NodeError> {
        if self.models.is_empty() {
            return Err(NodeError::Config("serving needs at least one model id".into()));
        }
        if self.key_broker.is_empty() {
            return Err(NodeError::Config("serving needs the key broker's URL".into()));
        }
        let mut out = BTreeMap::new();
        for m in &self.models {
            let w = WorkloadRef::parse(m, &self.executors).map_err(NodeError::Config)?;
            if out.insert(w.id.clone(), w).is_some() {
                return Err(NodeError::Config(format!("workload {m} is listed twice")));
            }
        }
        Ok(out)
    }
}

/// What one workload has used since the node started: its usage report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadUsage {
    /// Invocations answered.
    pub invocations: u64,
    /// Time spent running them, as the executor measured it.
    pub busy: Duration,
    /// Executor-specific work units (Wasm fuel).
    pub units: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// Where a served model stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// Not in memory (never loaded yet, or evicted); a request loads it.
    Cold,
    Loading,
    /// In memory, answering requests.
    Hot,
    /// The last load failed, for this reason.
    Failed(String),
}

enum Slot {
    Cold,
    Loading,
    Hot { model: Arc<dyn Loaded>, bytes: u64, last_used: u64 },
    Failed { public: String, detail: String, at: Instant },
}

/// Why a model did not load.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("the key broker did not release the model key ({}): {}", .0.code, .0.message)]
    Keys(Error),
    #[error("cannot read the model package: {0}")]
    Blob(BlobError),
    #[error("the model package was refused: {0}")]
    Package(PackageError),
    #[error("the decrypted model does not load: {}", .0.message)]
    Model(Error),
    #[error("the loading task failed: {0}")]
    Task(String),
}

impl LoadError {
    /// What a client may be told.
    fn public(&self) -> &'static str {
        match self {
            LoadError::Keys(e) if matches!(e.code, ErrorCode::NotGranted | ErrorCode::PermissionDenied) => {
                "this node's measurement is not granted the model's key"
            }
            LoadError::Keys(_) => "this node could not obtain the model's key from the key broker",
            LoadError::Blob(_) => "the model package cannot be read",
            LoadError::Package(_) => "the model package failed verification",
            LoadError::Model(_) | LoadError::Task(_) => "the model could not be loaded",
        }
    }
}

/// A refused request: the core's error (one code, its HTTP status, a message without secrets).
type Refusal = Error;

fn bad(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Error::new(code, message)
}

/// Request ids seen recently, each kept [`proto::REPLAY_WINDOW_MS`].
#[derive(Default)]
struct ReplayCache {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl ReplayCache {
    fn insert(&mut self, id: &str, now: Instant) -> Result<(), Refusal> {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, old)) = self.order.pop_front()
                && self.seen.get(&old) == Some(&expires)
            {
                self.seen.remove(&old);
            }
        }
        if self.seen.get(id).is_some_and(|expires| *expires > now) {
            return Err(bad(ErrorCode::Replayed, "this requestId was already used: a replayed request is refused"));
        }
        if self.seen.len() >= MAX_REPLAY_ENTRIES {
            return Err(Error::unavailable("too many requests in the replay window; try again shortly"));
        }
        let expires = now + Duration::from_millis(proto::REPLAY_WINDOW_MS);
        self.seen.insert(id.to_owned(), expires);
        self.order.push_back((expires, id.to_owned()));
        Ok(())
    }
}

/// The serving state of a node, shared by its request handlers and loaders.
pub struct Serving {
    config: ServeConfig,
    workloads: BTreeMap<String, WorkloadRef>,
    usage: Mutex<BTreeMap<String, WorkloadUsage>>,
    store: FolderStore,
    key: Arc<RequestKey>,
    tee: Arc<dyn Tee>,
    data: Arc<DataMap>,
    metrics: Arc<NodeMetrics>,
    slots: Mutex<BTreeMap<String, Slot>>,
    replay: Mutex<ReplayCache>,
    user_keys: UserKeys,
    /// Bumped on every change of a slot, so waiters can wake.
    changed: watch::Sender<u64>,
    clock: AtomicU64,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").field("workloads", &self.workloads).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the maps are still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Serving {
    pub(crate) fn new(
        config: ServeConfig,
        key: Arc<RequestKey>,
        tee: Arc<dyn Tee>,
        data: Arc<DataMap>,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Arc<Serving>, NodeError> {
        let workloads = config.workloads()?;
        let slots = workloads.keys().map(|m| (m.clone(), Slot::Cold)).collect();
        Ok(Arc::new(Serving {
            store: FolderStore::new(config.blobs.clone()),
            usage: Mutex::new(workloads.keys().map(|m| (m.clone(), WorkloadUsage::default())).collect()),
            workloads,
            config,
            key,
            tee,
            data,
            metrics,
            slots: Mutex::new(slots),
            replay: Mutex::default(),
            user_keys: UserKeys::default(),
            changed: watch::Sender::new(0),
            clock: AtomicU64::new(0),
        }))
    }

    /// Each workload's usage report.
    pub(crate) fn usage(&self) -> BTreeMap<String, WorkloadUsage> {
        lock(&self.usage).clone()
    }

    /// The executor limits of workload `id`.
    fn limits(&self, id: &str) -> Limits {
        self.workloads.get(id).and_then(|w| self.config.executors.get(&w.kind)).map(|e| e.limits()).unwrap_or_default()
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(crate) fn state(&self, model: &str) -> Option<ModelState> {
        Some(match lock(&self.slots).get(model)? {
            Slot::Cold => ModelState::Cold,
            Slot::Loading => ModelState::Loading,
            Slot::Hot { .. } => ModelState::Hot,
            Slot::Failed { detail, .. } => ModelState::Failed(detail.clone()),
        })
    }

    /// Loads every served model that is still cold, one after the other.
    pub(crate) async fn load_all(self: Arc<Self>) {
        let names: Vec<String> = self.workloads.keys().cloned().collect();
        for name in names {
            let start = {
                let mut slots = lock(&self.slots);
                match slots.get_mut(&name) {
                    Some(slot @ Slot::Cold) => {
                        *slot = Slot::Loading;
                        true
                    }
                    _ => false,
                }
            };
            if start {
                self.clone().load(name).await;
            }
        }
    }

    /// Loads `name` (its slot already says `Loading`) and publishes the result.
    async fn load(self: Arc<Self>, name: String) {
        self.bump();
        let started = Instant::now();
        let result = self.load_inner(&name).await;
        let mut evicted = Vec::new();
        {
            let mut slots = lock(&self.slots);
            match result {
                Ok(model) => {
                    let bytes = model.memory_bytes();
                    let last_used = self.tick();
                    slots.insert(name.clone(), Slot::Hot { model, bytes, last_used });
                    set_hot(&self.data, &name, true);
                    self.metrics.model_loads.inc();
                    tracing::info!(model = %name, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded: hot");
                    evicted = self.enforce_budget(&mut slots, &name);
                }
                Err(e) => {
                    self.metrics.model_load_failures.inc();
                    tracing::error!(model = %name, error = %e, "model not loaded: it stays cold and requests for it are refused");
                    set_hot(&self.data, &name, false);
                    slots.insert(
                        name,
                        Slot::Failed { public: e.public().to_owned(), detail: e.to_string(), at: Instant::now() },
                    );
                }
            }
        }
        for v in evicted {
            self.metrics.model_evictions.inc();
            tracing::info!(model = %v, budget = self.config.memory_budget, "model evicted to stay under the memory budget: cold until requested");
        }
        self.bump();
    }

    /// Evicts least recently used models other than `keep` until the loaded ones fit the budget.
    fn enforce_budget(&self, slots: &mut BTreeMap<String, Slot>, keep: &str) -> Vec<String> {
        let budget = self.config.memory_budget;
        let mut evicted = Vec::new();
        if budget == 0 {
            return evicted;
        }
        loop {
            let total: u64 = slots.values().map(|s| if let Slot::Hot { bytes, .. } = s { *bytes } else { 0 }).sum();
            if total <= budget {
                break;
            }
            let victim = slots
                .iter()
                .filter_map(|(n, s)| match s {
                    Slot::Hot { last_used, .. } if n != keep => Some((*last_used, n.clone())),
                    _ => None,
                })
                .min();
            let Some((_, victim)) = victim else {
                tracing::warn!(model = %keep, budget, loaded = total, "this model alone is larger than the memory budget; serving it anyway");
                break;
            };
            slots.insert(victim.clone(), Slot::Cold);
            set_hot(&self.data, &victim, false);
            evicted.push(victim);
        }
        evicted
    }

    async fn load_inner(&self, name: &str) -> Result<Arc<dyn Loaded>, LoadError> {
        let executor = self
            .workloads
            .get(name)
            .and_then(|w| self.config.executors.get(&w.kind))
            .cloned()
            .ok_or_else(|| LoadError::Task(format!("no executor for {name}")))?;
        let keys =
            crate::fetch_keys(&self.tee, &self.config.key_broker, name, 0, &[]).await.map_err(LoadError::Keys)?;
        let version = keys.version;
        let package = self.store.get(&package_blob_name(name, version)).await.map_err(LoadError::Blob)?;
        let key = ModelKey::from_bytes(*keys.model_key.as_bytes());
        drop(keys);
        let id = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let plain = decrypt_in_place(package, &id, version, &key).map_err(LoadError::Package)?;
            executor.load(&id, plain).map_err(LoadError::Model)
        })
        .await
        .map_err(|e| LoadError::Task(e.to_string()))?
    }

    /// Drops `name` from memory and marks it cold.
    pub(crate) fn evict(&self, name: &str) -> bool {
        let done = {
            let mut slots = lock(&self.slots);
            match slots.get_mut(name) {
                Some(slot @ Slot::Hot { .. }) => {
                    *slot = Slot::Cold;
                    set_hot(&self.data, name, false);
                    true
                }
                _ => false,
            }
        };
        if done {
            self.metrics.model_evictions.inc();
            tracing::info!(model = %name, "model evicted: cold until requested");
            self.bump();
        }
        done
    }

    /// Waits until `name` is hot or its load failed.
    pub(crate) async fn wait_settled(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut changed = self.changed.subscribe();
            match self.state(name) {
                None => return Err(format!("model {name:?} is not served by this node")),
                Some(ModelState::Hot) => return Ok(()),
                Some(ModelState::Failed(reason)) => return Err(reason),
                Some(_) => {}
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Err(format!("model {name:?} is not loaded after {timeout:?} ({:?})", self.state(name)));
            }
        }
    }

    /// The loaded model, loading it first if it is cold.
    async fn ready(self: &Arc<Self>, name: &str) -> Result<Arc<dyn Loaded>, Refusal> {
        let deadline = tokio::time::Instant::now() + LOAD_WAIT;
        loop {
            let mut changed = self.changed.subscribe();
            {
                let mut slots = lock(&self.slots);
                let Some(slot) = slots.get_mut(name) else {
                    return Err(not_served(name));
                };
                match slot {
                    Slot::Hot { model, last_used, .. } => {
                        *last_used = self.tick();
                        return Ok(model.clone());
                    }
                    Slot::Loading => {}
                    Slot::Failed { public, at, .. } if at.elapsed() < RETRY_FAILED_AFTER => {
                        return Err(Error::unavailable(format!(
                            "model {name} is not available on this node: {public}"
                        )));
                    }
                    Slot::Cold | Slot::Failed { .. } => {
                        *slot = Slot::Loading;
                        tokio::spawn(self.clone().load(name.to_owned()));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Err(Error::unavailable(format!("model {name} is still loading; try again shortly")));
            }
        }
    }

    /// Checks, opens, runs and seals one request.
    async fn handle(self: &Arc<Self>, req: InferRequest) -> Result<InferResponse, Refusal> {
        if !self.workloads.contains_key(&req.model) {
            return Err(not_served(&req.model));
        }
        if !proto::valid_request_id(&req.request_id) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "requestId must be 32 lowercase hex characters (16 random bytes)",
            ));
        }
        let now = proto::now_ms();
        if now.abs_diff(req.time_ms) > proto::MAX_SKEW_MS {
            return Err(bad(
                ErrorCode::Stale,
                format!(
                    "timeMs is {} s away from this node's clock (at most {} s allowed)",
                    now.abs_diff(req.time_ms) / 1000,
                    proto::MAX_SKEW_MS / 1000
                ),
            ));
        }
        let opened = match req.mode {
            Mode::Direct => proto::open_request(self.key.pair(), &req).map_err(|_| {
                bad(
                    ErrorCode::Tampered,
                    "the request does not open: it was tampered with, or sealed to another key, model, requestId or time",
                )
            })?,
            Mode::Serverless => self.open_serverless(&req).await?,
        };
        lock(&self.replay).insert(&req.request_id, Instant::now())?;
        let limits = self.limits(&req.model);
        if opened.input_npy.len() > limits.max_input_bytes {
            return Err(bad(
                ErrorCode::PayloadTooLarge,
                format!("the input is larger than this workload takes ({} bytes)", limits.max_input_bytes),
            ));
        }
        let model = self.ready(&req.model).await?;
        let input_len = opened.input_npy.len() as u64;
        let id = req.model.clone();
        let invocation = tokio::task::spawn_blocking(move || {
            let out = model.invoke(&opened.input_npy);
            (out, req, opened)
        });
        let (out, req, opened) = tokio::time::timeout(limits.timeout, invocation)
            .await
            .map_err(|_| {
                Error::unavailable(format!("the workload did not answer within {} s", limits.timeout.as_secs()))
            })?
            .map_err(|_| Error::internal("the workload failed to run on this input"))?;
        let out = out?;
        {
            let mut usage = lock(&self.usage);
            let u = usage.entry(id).or_default();
            u.invocations += 1;
            u.busy += out.usage.busy;
            u.units += out.usage.units;
            u.input_bytes += input_len;
            u.output_bytes += out.bytes.len() as u64;
        }
        self.metrics.workload_busy_us.inc_by(out.usage.busy.as_micros() as u64);
        proto::seal_response(&req, &opened, &out.bytes).map_err(|_| Error::internal("the answer could not be sealed"))
    }

    /// Opens a serverless request with its user's key, fetching the key if this node does not
    /// hold it.
    async fn open_serverless(&self, req: &InferRequest) -> Result<OpenedRequest, Refusal> {
        let mine = self.tee.measurement();
        let theirs = req.measurement.as_deref().unwrap_or("");
        if !theirs.eq_ignore_ascii_case(mine) {
            let shown: String = theirs.chars().take(128).collect();
            return Err(Error::new(
                ErrorCode::OtherMeasurement,
                format!("the request is sealed for measurement {shown:?}; this node runs {mine}"),
            ));
        }
        let user = req.user.as_deref().unwrap_or("");
        if user.is_empty()
            || user.len() > 128
            || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
        {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "a serverless request needs \"user\": the key broker's user id",
            ));
        }
        let key =
            self.user_keys.get(&req.model, user, || self.fetch_user_key(&req.model, user)).await.map_err(|u| {
                if u.refused { Error::new(ErrorCode::NotGranted, u.message) } else { Error::unavailable(u.message) }
            })?;
        proto::open_serverless(key.as_bytes(), req).map_err(|_| {
            bad(
                ErrorCode::Tampered,
                "the request does not open: it was tampered with, or sealed with another key or for another model, \
                 requestId, time, user or measurement (a replaced request key is used within a minute)",
            )
        })
    }

    /// Asks the key broker for `user`'s request key for `model` on this node's measurement.
    async fn fetch_user_key(
        &self,
        model: &str,
        user: &str,
    ) -> Result<enclava_contracts::keys::payload::SecretKey, Unavailable> {
        self.metrics.user_key_fetches.inc();
        let users = [user.to_owned()];
        match crate::fetch_keys(&self.tee, &self.config.key_broker, model, 0, &users).await {
            Ok(mut keys) => match keys.request_keys.pop() {
                Some((u, key)) if u == user => Ok(key),
                _ => {
                    Err(Unavailable { refused: false, message: "the key broker's answer lacks the user's key".into() })
                }
            },
            Err(e) if matches!(e.code, ErrorCode::NotGranted | ErrorCode::PermissionDenied) => {
                tracing::info!(%model, %user, "the key broker does not release this user's request key to this node");
                Err(Unavailable {
                    refused: true,
                    message: format!(
                        "the key broker does not release {user}'s request key for {model} to this node's measurement \
                         {}: the model's owner must grant it for the user (enclava keys grant) and the user must \
                         upload a request key for it (enclava keys request-key)",
                        self.tee.measurement()
                    ),
                })
            }
            Err(e) => {
                tracing::warn!(%model, %user, error = %e, "cannot fetch a user's request key from the key broker");
                Err(Unavailable {
                    refused: false,
                    message: "this node cannot reach the key broker; try again shortly".into(),
                })
            }
        }
    }

    fn answer(&self, result: Result<InferResponse, Refusal>, model: Option<&str>) -> Result<InferResponse, Refusal> {
        match &result {
            Ok(_) => {
                self.metrics.requests_served.inc();
            }
            Err(r) => {
                self.metrics.requests_refused.inc();
                tracing::info!(model = model.unwrap_or("-"), code = %r.code, reason = %r.message, "request refused");
            }
        };
        result
    }
}

fn not_served(model: &str) -> Refusal {
    let shown: String = model.chars().take(256).collect();
    Error::new(ErrorCode::NotServed, format!("model {shown:?} is not served by this node"))
}

/// The serving routes: `/v1/infer`, and `/init`, `/run` in OpenWhisk mode.
pub(crate) fn router(serving: Arc<Serving>) -> Router {
    let mut r = Router::new().route(proto::PATH, post(infer_route));
    if serving.config.openwhisk {
        r = r.route("/init", post(openwhisk_init)).route("/run", post(openwhisk_run));
    }
    r.layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES)).with_state(serving)
}

/// `/v1/infer`: JSON, or binary with [`proto::BINARY_CONTENT_TYPE`]; the answer comes back in the
/// same encoding (errors are always JSON).
async fn infer_route(State(s): State<Arc<Serving>>, headers: HeaderMap, body: Bytes) -> Response {
    s.metrics.requests.inc();
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(proto::BINARY_CONTENT_TYPE));
    let parsed = if binary {
        InferRequest::from_binary(&body)
    } else {
        serde_json::from_slice::<InferRequest>(&body).map_err(|e| e.to_string())
    };
    drop(body);
    let (result, model) = match parsed {
        Ok(req) => {
            let model = req.model.clone();
            (s.handle(req).await, Some(model))
        }
        Err(e) => (Err(bad(ErrorCode::InvalidArgument, format!("not a sealed inference request: {e}"))), None),
    };
    match s.answer(result, model.as_deref()) {
        Ok(resp) if binary => ([(header::CONTENT_TYPE, proto::BINARY_CONTENT_TYPE)], resp.to_binary()).into_response(),
        Ok(resp) => (StatusCode::OK, Json(resp)).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn openwhisk_init(body: Bytes) -> Response {
    tracing::debug!(bytes = body.len(), "OpenWhisk /init");
    (StatusCode::OK, Json(serde_json::json!({ "ok": true }))).into_response()
}

async fn openwhisk_run(State(s): State<Arc<Serving>>, body: Bytes) -> Response {
    s.metrics.requests.inc();
    let (result, model) = match proto::from_openwhisk_run(&body) {
        Ok(req) => {
            let model = req.model.clone();
            (s.handle(req).await, Some(model))
        }
        Err(e) => (Err(bad(ErrorCode::InvalidArgument, e)), None),
    };
    match s.answer(result, model.as_deref()) {
        Ok(resp) => (StatusCode::OK, Json(resp)).into_response(),
        // OpenWhisk reads an `error` field as an application error: the core's body, plus that.
        Err(r) => {
            let status = StatusCode::from_u16(r.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(serde_json::json!({ "code": r.code, "message": r.message, "error": r.message })))
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_cache_refuses_repeats_until_they_expire() {
        let mut c = ReplayCache::default();
        let t0 = Instant::now();
        c.insert("a", t0).expect("first");
        assert_eq!(c.insert("a", t0 + Duration::from_secs(119)).expect_err("replay").code, ErrorCode::Replayed);
        c.insert("b", t0 + Duration::from_secs(2)).expect("other id");
        c.insert("a", t0 + Duration::from_secs(121)).expect("expired: the time check refuses it anyway");
        assert_eq!(c.seen.len(), 2, "b still remembered, a again");
    }
}
