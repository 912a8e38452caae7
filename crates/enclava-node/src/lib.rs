//! The enclave node: its TEE identity (stable instance id, measurement), its request key, and the
//! publisher that keeps its presence, info and index entries in the registry (seed: presence every
//! second, info every 30 s, at once on change, re-registration after the registry lost it, removal on
//! clean shutdown), with `/health` and `/metrics`; with a [`ServeConfig`], it also serves encrypted
//! models to sealed requests.
//!
//! # Layout
//! - [`tee`]: the platform adapter trait and the `sim` platform (sealing key in the data folder).
//! - [`tsm`]: TDX and SEV-SNP guests, through the kernel's configfs-tsm reports.
//! - [`keys`]: the node's side of attested key release (challenge, evidence, sealed keys).
//! - [`publisher`]: the heartbeat and info loop.
//! - [`serve`]: workload loading (attested key release, decryption in memory, the executor's load,
//!   LRU under a budget), the sealed request endpoints (`/v1/infer`, OpenWhisk `/init` and
//!   `/run`) and per-workload usage; the executors themselves are other crates
//!   ([`enclava_executor`]), so the node links neither tract nor wasmtime.
//! - [`NodeHandle`]: a started node; change its data, read its identity, shut it down.

pub mod capacity;
pub mod keys;
pub mod publisher;
pub mod serve;
pub mod tee;
pub mod tsm;
mod user_keys;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use enclava_registry::Registry;
use enclava_registry::schema::{DataAccessJson, EnclaveInfoJson, PolicyJson, check_name};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use enclava_executor::{Executor, Executors};
pub use publisher::NodeMetrics;
pub use serve::{ModelState, ServeConfig, WorkloadUsage};

/// What can stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(String),
    #[error(
        "platform {0:?} is not available on this host: it needs TEE hardware this machine does not have; use --platform sim to test without one"
    )]
    PlatformUnavailable(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `sim` here; real platforms report themselves unavailable until hardware exists.
    pub platform: String,
    /// Where the node keeps its sealed identity.
    pub data_dir: PathBuf,
    /// Data (model) ids this node has access to, all cold at start.
    pub data: Vec<String>,
    /// The connection string published in the registry; defaults to the listen address.
    pub advertise: Option<String>,
    /// For `sim`: the deployment's sim root folder (`enclava sim init`), which certifies this
    /// node's simulated hardware key. Required for `sim`.
    pub sim_root: Option<PathBuf>,
    /// Serve encrypted models to sealed requests; `None`: discovery only.
    pub serve: Option<ServeConfig>,
    /// For `tdx` and `sev-snp`: the kernel's configfs-tsm report folder [default:
    /// `/sys/kernel/config/tsm/report`].
    pub tsm_dir: Option<PathBuf>,
}

/// The node's request key: an X25519 HPKE key pair made at each start, which sealed requests are
/// sealed to. The private half never leaves this process and is not printed by `Debug`.
#[derive(Debug)]
pub struct RequestKey {
    pair: enclava_seal::KeyPair,
}

impl RequestKey {
    fn generate() -> RequestKey {
        RequestKey { pair: enclava_seal::KeyPair::generate() }
    }

    pub fn public(&self) -> &[u8] {
        self.pair.public()
    }

    pub(crate) fn pair(&self) -> &enclava_seal::KeyPair {
        &self.pair
    }
}

/// Data ids and their hot state, as published.
pub(crate) type DataMap = watch::Sender<BTreeMap<String, DataAccessJson>>;

/// Sets `data`'s hot state (adding it if new); republished at once when it changed.
pub(crate) fn set_hot(data: &DataMap, id: &str, hot: bool) {
    data.send_if_modified(|m| m.insert(id.to_owned(), DataAccessJson { hot }) != Some(DataAccessJson { hot }));
}

/// Fetches `model`'s key (and `users`' request keys) from the key broker at `broker` with fresh
/// evidence from `tee` binding the broker's nonce.
pub(crate) async fn fetch_keys(
    tee: &Arc<dyn tee::Tee>,
    broker: &str,
    model: &str,
    version: u64,
    users: &[String],
) -> Result<enclava_contracts::keys::payload::ReleasePayload, enclava_core::Error> {
    let mut client = keys::KeyClient::connect(broker).await?;
    let tee = tee.clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let keys = client.fetch(model, version, users, move |rd| tee.evidence(rd, now)).await?;
    tracing::info!(%model, version = keys.version, users = keys.request_keys.len(), "keys fetched from the key broker");
    Ok(keys)
}

/// A node's TEE and request key, for work done outside its own server (a farm host agent):
/// receipts, registration evidence, job keys. Keys never leave it.
#[derive(Debug, Clone)]
pub struct Attester {
    tee: Arc<dyn tee::Tee>,
    request_key: Arc<RequestKey>,
}

impl Attester {
    /// A receipt as this node can give it: signed with evidence where it can attest; on a
    /// `plaintext` host, with no evidence (its word only, and shown so).
    pub fn receipt(
        &self,
        receipt: enclava_contracts::farm::Receipt,
    ) -> Result<enclava_contracts::farm::SignedReceipt, enclava_core::Error> {
        if self.tee.platform() != "plaintext" {
            return sign_receipt(&self.tee, receipt);
        }
        let receipt = enclava_contracts::farm::Receipt {
            host: self.tee.instance_id().to_owned(),
            platform: "plaintext".into(),
            issued_at: now_secs(),
            ..receipt
        };
        let json = serde_json::to_string(&receipt).map_err(|e| enclava_core::Error::internal(e.to_string()))?;
        Ok(enclava_contracts::farm::SignedReceipt { receipt: json, evidence: Vec::new() })
    }

    /// The platform this node runs on (`sim`, `plaintext`, `tdx`, …).
    pub fn platform(&self) -> &str {
        self.tee.platform()
    }

    /// Fresh evidence binding a farm registration (`binding::FARM_HOST`): this node's request key
    /// and capacity (`key` is `farm::host_binding_key`) with the farm's `nonce`. `None` where the
    /// node cannot attest.
    pub fn farm_evidence(&self, key: &[u8; 32], nonce: &[u8]) -> Option<Vec<u8>> {
        let rd = enclava_attest::binding::report_data(enclava_attest::binding::FARM_HOST, key, Some(nonce));
        self.tee.evidence(&rd, now_secs())
    }

    /// Fresh evidence binding this node's request key for a federation server's `nonce`
    /// (`binding::FED_NODE`). `None` where the node cannot attest.
    pub fn fed_evidence(&self, nonce: &[u8]) -> Option<Vec<u8>> {
        let rd = enclava_attest::binding::report_data(
            enclava_attest::binding::FED_NODE,
            self.request_key.public(),
            Some(nonce),
        );
        self.tee.evidence(&rd, now_secs())
    }

    /// Opens a federated run's input sealed to this node's attested key (`fed::INPUT_INFO`, bound
    /// to `aad`, the run's task, run and organisation). The input stays in this process.
    pub fn open_fed_input(
        &self,
        aad: &[u8],
        sealed: &enclava_contracts::farm::SealedBlob,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, enclava_core::Error> {
        let s = enclava_seal::Sealed { enc: sealed.enc.clone(), ciphertext: sealed.ciphertext.clone() };
        self.request_key.pair().open(enclava_contracts::fed::INPUT_INFO, aad, &s).map_err(|_| {
            enclava_core::Error::new(
                enclava_core::ErrorCode::Tampered,
                "the input does not open with this node's attested key: sealed to another node, run or organisation, or changed",
            )
        })
    }

    /// Opens a farm job's key, which its submitter sealed to this node's request key for this
    /// exact job spec only. The key stays in this process.
    pub fn open_job_key(
        &self,
        job: &enclava_contracts::farm::JobSpec,
        wrap: &enclava_contracts::farm::SealedBlob,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, enclava_core::Error> {
        let sealed = enclava_seal::Sealed { enc: wrap.enc.clone(), ciphertext: wrap.ciphertext.clone() };
        let key =
            self.request_key.pair().open(enclava_contracts::farm::JOB_KEY_INFO, &job.key_aad(), &sealed).map_err(
                |_| {
                    enclava_core::Error::new(
                        enclava_core::ErrorCode::Tampered,
                        "the job key does not open here: it was sealed to another host, or the job was changed after its submitter sealed it",
                    )
                },
            )?;
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| enclava_core::Error::new(enclava_core::ErrorCode::Tampered, "the job key is not 32 bytes"))?;
        Ok(zeroize::Zeroizing::new(key))
    }

    pub fn instance_id(&self) -> &str {
        self.tee.instance_id()
    }

    pub fn measurement(&self) -> &str {
        self.tee.measurement()
    }

    /// The public half of the request key (what job keys are sealed to).
    pub fn public_key(&self) -> &[u8] {
        self.request_key.public()
    }
}

fn sign_receipt(
    tee: &Arc<dyn tee::Tee>,
    mut receipt: enclava_contracts::farm::Receipt,
) -> Result<enclava_contracts::farm::SignedReceipt, enclava_core::Error> {
    receipt.host = tee.instance_id().to_owned();
    receipt.platform = tee.platform().to_owned();
    let now = now_secs();
    receipt.issued_at = now;
    let json = serde_json::to_string(&receipt).map_err(|e| enclava_core::Error::internal(e.to_string()))?;
    let rd = enclava_attest::binding::receipt(json.as_bytes());
    let evidence = tee.evidence(&rd, now).ok_or_else(|| {
        enclava_core::Error::unavailable(format!(
            "this node ({}) cannot attest, so it cannot sign receipts",
            tee.platform()
        ))
    })?;
    Ok(enclava_contracts::farm::SignedReceipt { receipt: json, evidence })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A started node.
#[derive(Debug)]
pub struct NodeHandle {
    instance_id: String,
    measurement: String,
    addr: SocketAddr,
    data: Arc<DataMap>,
    stop: watch::Sender<bool>,
    publisher: JoinHandle<()>,
    http: JoinHandle<()>,
    serving: Option<(Arc<serve::Serving>, JoinHandle<()>)>,
    metrics: Arc<NodeMetrics>,
    request_key: Arc<RequestKey>,
    tee: Arc<dyn tee::Tee>,
}

impl NodeHandle {
    /// Signs a receipt for work this node did: its host and platform are set to this node's, and
    /// fresh evidence binds the receipt's exact JSON (`binding::RECEIPT`). Fails on a platform
    /// that cannot attest (a plaintext host's receipts cannot be vouched for).
    pub fn issue_receipt(
        &self,
        receipt: enclava_contracts::farm::Receipt,
    ) -> Result<enclava_contracts::farm::SignedReceipt, enclava_core::Error> {
        sign_receipt(&self.tee, receipt)
    }

    /// The platform this node runs on (`sim`, `plaintext`, `tdx`, …).
    pub fn platform(&self) -> &str {
        self.tee.platform()
    }

    /// What a farm host agent uses of this node: its TEE and request key, shared.
    pub fn attester(&self) -> Attester {
        Attester { tee: self.tee.clone(), request_key: self.request_key.clone() }
    }

    /// Fetches `model`'s key (and `users`' request keys) from the key broker at `broker`, with
    /// fresh evidence from this node's TEE binding the broker's nonce. The keys stay in memory.
    pub async fn fetch_keys(
        &self,
        broker: &str,
        model: &str,
        version: u64,
        users: &[String],
    ) -> Result<enclava_contracts::keys::payload::ReleasePayload, enclava_core::Error> {
        fetch_keys(&self.tee, broker, model, version, users).await
    }

    /// Where a served model stands; `None` when this node does not serve it.
    pub fn model_state(&self, model: &str) -> Option<ModelState> {
        self.serving.as_ref()?.0.state(model)
    }

    /// Waits until `model` is loaded (hot). Fails at once with the reason when its load failed
    /// (not granted, tampered package, …), when it is not served here, or after `timeout`.
    pub async fn wait_hot(&self, model: &str, timeout: Duration) -> Result<(), String> {
        match &self.serving {
            Some((s, _)) => s.wait_settled(model, timeout).await,
            None => Err("this node serves no models".into()),
        }
    }

    /// Each served workload's usage since the node started (empty when it serves none).
    pub fn usage(&self) -> BTreeMap<String, WorkloadUsage> {
        self.serving.as_ref().map(|(s, _)| s.usage()).unwrap_or_default()
    }

    /// Drops `model` from memory now (as the LRU would) and marks it cold; the next request for
    /// it loads it again. `false` if it was not loaded.
    pub fn evict(&self, model: &str) -> bool {
        self.serving.as_ref().is_some_and(|(s, _)| s.evict(model))
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn measurement(&self) -> &str {
        &self.measurement
    }

    /// The address `/health` and `/metrics` are served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    pub fn request_key(&self) -> &RequestKey {
        &self.request_key
    }

    /// Gives the node access to `data`, or changes its hot state; republished at once.
    pub fn set_data(&self, data: &str, hot: bool) -> Result<(), NodeError> {
        check_name("data id", data).map_err(NodeError::Config)?;
        set_hot(&self.data, data, hot);
        Ok(())
    }

    /// Takes access to `data` away; republished at once.
    pub fn remove_data(&self, data: &str) {
        self.data.send_if_modified(|m| m.remove(data).is_some());
    }

    /// Withdraws from the registry and stops serving.
    pub async fn shutdown(self) {
        if let Some((_, loader)) = &self.serving {
            loader.abort();
        }
        let _ = self.stop.send(true);
        let _ = self.publisher.await;
        self.http.abort();
        let _ = self.http.await;
    }

    /// Stops without withdrawing, as a crash would (for tests).
    pub fn abort(self) {
        if let Some((_, loader)) = &self.serving {
            loader.abort();
        }
        self.publisher.abort();
        self.http.abort();
    }
}

/// Starts a node: opens its TEE identity, serves `/health` and `/metrics` on `listener`, and
/// publishes it in `registry` until [`NodeHandle::shutdown`].
pub async fn start(
    config: NodeConfig,
    registry: Arc<dyn Registry>,
    listener: TcpListener,
) -> Result<NodeHandle, NodeError> {
    let tee: Arc<dyn tee::Tee> =
        tee::open(&config.platform, &config.data_dir, config.sim_root.as_deref(), config.tsm_dir.as_deref())?.into();
    let addr = listener.local_addr().map_err(|source| NodeError::Io {
        what: "cannot read the address of",
        path: "listener".into(),
        source,
    })?;
    let mut data = BTreeMap::new();
    for d in &config.data {
        check_name("data id", d).map_err(NodeError::Config)?;
        data.insert(d.clone(), DataAccessJson { hot: false });
    }
    if let Some(serve) = &config.serve {
        // Served workloads are listed from the start, cold until loaded.
        for id in serve.workloads()?.into_keys() {
            data.insert(id, DataAccessJson { hot: false });
        }
    }
    let request_key = Arc::new(RequestKey::generate());
    let info = EnclaveInfoJson {
        instance_id: tee.instance_id().to_owned(),
        service_name: registry.keys().service().to_owned(),
        platform: tee.platform().to_owned(),
        service_version: env!("CARGO_PKG_VERSION").to_owned(),
        policy: PolicyJson { mrenclave: tee.measurement().to_owned(), extra: Default::default() },
        // Refreshed before every publication; empty when this TEE cannot attest, never a fake.
        attestation: Vec::new(),
        pubkey: request_key.public().to_vec(),
        connection_string: config.advertise.clone().unwrap_or_else(|| addr.to_string()),
        data_access: BTreeMap::new(),
        extra: Default::default(),
    };
    let metrics = Arc::new(NodeMetrics::new());
    let (data_tx, data_rx) = watch::channel(data);
    let data_tx = Arc::new(data_tx);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Evidence binds the request key, so a client can check it is talking to this enclave.
    let report_data =
        enclava_attest::binding::report_data(enclava_attest::binding::NODE_KEY, request_key.public(), None);
    let attest_tee = tee.clone();
    let attest: publisher::Attest = Arc::new(move || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        attest_tee.evidence(&report_data, now).unwrap_or_default()
    });
    if tee.platform() == "plaintext" {
        tracing::warn!(
            "platform plaintext has no TEE: this node publishes no evidence and is never trusted with confidential work"
        );
    } else if attest().is_empty() {
        tracing::warn!(platform = %tee.platform(), "this node cannot attest (for sim, pass --sim-root); clients that verify will refuse it");
    }
    let publisher = tokio::spawn(publisher::run(registry.clone(), info, data_rx, stop_rx, metrics.clone(), attest));

    let health_metrics = metrics.clone();
    let instance_id = tee.instance_id().to_owned();
    let id_for_health = instance_id.clone();
    let router = enclava_telemetry::router(
        metrics.registry(),
        Arc::new(move || {
            let ok = health_metrics.registered();
            let details = serde_json::json!({
                "status": if ok { "ok" } else { "registry unreachable" },
                "instanceId": id_for_health,
            });
            (ok, details)
        }),
    );
    let (router, serving) = match config.serve {
        Some(serve) => {
            let serving =
                serve::Serving::new(serve, request_key.clone(), tee.clone(), data_tx.clone(), metrics.clone())?;
            let router = router.merge(serve::router(serving.clone()));
            let loader = tokio::spawn(serving.clone().load_all());
            (router, Some((serving, loader)))
        }
        None => (router, None),
    };
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener.tap_io(|tcp| {
                // Small answers go out at once, not after a delayed ACK.
                let _ = tcp.set_nodelay(true);
            }),
            router,
        )
        .await
        {
            tracing::error!(error = %e, "node http server stopped");
        }
    });
    tracing::info!(instance = %instance_id, platform = %tee.platform(), measurement = %tee.measurement(), %addr, "node started");
    Ok(NodeHandle {
        instance_id,
        measurement: tee.measurement().to_owned(),
        addr,
        data: data_tx,
        stop: stop_tx,
        publisher,
        http,
        serving,
        metrics,
        request_key,
        tee,
    })
}
