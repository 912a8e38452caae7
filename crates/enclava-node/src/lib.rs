//! The enclave node: its TEE identity (stable instance id, measurement), its request key, and the
//! publisher that keeps its presence, info and index entries in the registry (seed: presence every
//! second, info every 30 s, at once on change, re-registration after the registry lost it, removal on
//! clean shutdown), with `/health` and `/metrics`.
//!
//! # Layout
//! - [`tee`]: the platform adapter trait and the `sim` platform (sealing key in the data folder).
//! - [`publisher`]: the heartbeat and info loop.
//! - [`NodeHandle`]: a started node; change its data, read its identity, shut it down.

pub mod publisher;
pub mod tee;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use enclava_registry::Registry;
use enclava_registry::schema::{DataAccessJson, EnclaveInfoJson, PolicyJson, check_name};
use hpke::Serializable;
use hpke::kem::{Kem as _, X25519HkdfSha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use publisher::NodeMetrics;

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
    /// node's simulated hardware key. Without it the node publishes no evidence.
    pub sim_root: Option<PathBuf>,
}

/// The node's request key: an X25519 HPKE key pair made at each start. The private half never
/// leaves this process and is not printed by `Debug`.
pub struct RequestKey {
    #[allow(dead_code)] // used to open sealed requests (serving issue)
    private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl RequestKey {
    fn generate() -> RequestKey {
        let (private, public) = X25519HkdfSha256::gen_keypair();
        RequestKey { private, public: public.to_bytes().to_vec() }
    }

    pub fn public(&self) -> &[u8] {
        &self.public
    }
}

/// A started node.
#[derive(Debug)]
pub struct NodeHandle {
    instance_id: String,
    measurement: String,
    addr: SocketAddr,
    data: watch::Sender<BTreeMap<String, DataAccessJson>>,
    stop: watch::Sender<bool>,
    publisher: JoinHandle<()>,
    http: JoinHandle<()>,
    metrics: Arc<NodeMetrics>,
    request_key: Arc<RequestKey>,
    tee: Arc<dyn tee::Tee>,
}

impl NodeHandle {
    /// Fetches `model`'s key (and `users`' request keys) from the key broker at `broker`, with
    /// fresh evidence from this node's TEE binding the broker's nonce. The keys stay in memory.
    pub async fn fetch_keys(
        &self,
        broker: &str,
        model: &str,
        version: u64,
        users: &[String],
    ) -> Result<enclava_proto::keys::payload::ReleasePayload, enclava_client::ClientError> {
        let mut client = enclava_client::keys::KeyClient::connect(broker).await?;
        let tee = self.tee.clone();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let keys = client.fetch(model, version, users, move |rd| tee.evidence(rd, now)).await?;
        tracing::info!(%model, version = keys.version, users = keys.request_keys.len(), "keys fetched from the key broker");
        Ok(keys)
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
        self.data
            .send_if_modified(|m| m.insert(data.to_owned(), DataAccessJson { hot }) != Some(DataAccessJson { hot }));
        Ok(())
    }

    /// Takes access to `data` away; republished at once.
    pub fn remove_data(&self, data: &str) {
        self.data.send_if_modified(|m| m.remove(data).is_some());
    }

    /// Withdraws from the registry and stops serving.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.publisher.await;
        self.http.abort();
        let _ = self.http.await;
    }

    /// Stops without withdrawing, as a crash would (for tests).
    pub fn abort(self) {
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
    let tee: Arc<dyn tee::Tee> = tee::open(&config.platform, &config.data_dir, config.sim_root.as_deref())?.into();
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
    let (stop_tx, stop_rx) = watch::channel(false);
    // Evidence binds the request key, so a client can check it is talking to this enclave.
    let report_data =
        enclava_attest::binding::report_data(enclava_attest::binding::NODE_KEY, request_key.public(), None);
    let attest_tee = tee.clone();
    let attest: publisher::Attest = Arc::new(move || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        attest_tee.evidence(&report_data, now).unwrap_or_default()
    });
    if attest().is_empty() {
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
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
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
        metrics,
        request_key,
        tee,
    })
}
