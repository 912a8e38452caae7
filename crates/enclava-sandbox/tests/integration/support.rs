//! Helpers on the sandbox: a server (the manager role) and nodes over a given registry, bounded
//! waits, plain HTTP.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_contracts::discovery::v1::EnclavePolicy;
use enclava_manager::ManagerConfig as ServerConfig;
use enclava_node::NodeHandle;
use enclava_registry::redis::RedisRegistry;
use enclava_registry::{Keys, Registry, RegistrySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub fn keys() -> Keys {
    Keys::new("enclava", "enclava").expect("valid")
}

pub fn redis(url: &str, keys: Keys) -> Arc<dyn Registry> {
    match url.parse::<RegistrySpec>().expect("registry url") {
        RegistrySpec::Cluster(nodes) => Arc::new(RedisRegistry::cluster(&nodes, keys).expect("cluster")),
        spec => enclava_registry::open(&spec, keys).expect("registry"),
    }
}

/// A running in-process server: the sandbox with the enclave manager alone.
pub struct Server {
    pub url: String,
    pub http: std::net::SocketAddr,
    sandbox: enclava_sandbox::Sandbox,
}

impl Server {
    pub async fn start(registry: Arc<dyn Registry>, config: ServerConfig) -> Server {
        let sandbox = enclava_sandbox::SandboxBuilder::new()
            .registry(registry)
            .roles(&["manager"])
            .configure(|c| {
                c.cache_ttl_ms = config.cache_ttl.as_millis() as u64;
                c.sweep_interval_ms = config.sweep_interval.as_millis() as u64;
            })
            .start()
            .await
            .expect("server starts");
        Server { url: sandbox.url().to_owned(), http: sandbox.addr(), sandbox }
    }

    pub async fn client(&self) -> ManagerClient {
        ManagerClient::connect(&self.url).await.expect("connect")
    }

    pub async fn stop(self) {
        self.sandbox.stop().await;
    }
}

/// This test binary's sim deployment root (made once, in a temporary folder).
pub fn sim_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        enclava_attest::sim::SimRoot::load_or_init(&dir.path().join("root")).expect("sim root");
        dir
    })
    .path()
}

/// Starts a `sim` node with its identity in `dir`, on this binary's sim root (the sandbox's node
/// wiring).
pub async fn node(registry: Arc<dyn Registry>, dir: &Path, data: &[&str]) -> NodeHandle {
    let settings = enclava_sandbox::NodeSettings {
        data: data.iter().map(|s| s.to_string()).collect(),
        sim_root: Some(sim_root().join("root")),
        ..Default::default()
    };
    enclava_sandbox::start_node(&settings, dir, &dir.join("blobs"), registry).await.expect("node starts")
}

pub fn find_req(data: &str, limit: i32) -> FindEnclaveRequest {
    FindEnclaveRequest { dataaccess: data.into(), limit, ..Default::default() }
}

pub fn by_measurement(m: &str, limit: i32) -> FindEnclaveRequest {
    FindEnclaveRequest { policy: Some(EnclavePolicy { mrenclave: m.into() }), limit, ..Default::default() }
}

/// Ids FindEnclave returns.
pub async fn found(client: &mut ManagerClient, req: FindEnclaveRequest) -> Vec<String> {
    let mut ids: Vec<String> = client.find(req).await.expect("find").found.into_iter().map(|e| e.instance_id).collect();
    ids.sort();
    ids
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET on loopback; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("in time").expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.1 POST of a JSON body on loopback; returns (status, headers in lowercase, body).
pub async fn http_post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // The server may answer (413) before reading the whole body.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("in time");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (headers, body) =
        text.split_once("\r\n\r\n").map(|(h, b)| (h.to_lowercase(), b.to_owned())).unwrap_or_default();
    (status, headers, body)
}

/// Publishes `bytes` as workload `id` in a sandbox the way a model owner does: a fresh key in the
/// key broker under the sandbox's sim policy, a grant to the sim node's measurement for the owner,
/// and the encrypted package in the blob folder. Answers the policy a client verifies against.
pub async fn publish_workload(sandbox: &enclava_sandbox::Sandbox, id: &str, bytes: &[u8]) -> String {
    let broker = sandbox.broker().expect("keys role").clone();
    let (owner, _) = broker.register(None).await.expect("register");
    let policy = sandbox.sim_policy(&[]);
    let key = enclava_model::ModelKey::generate().expect("key");
    let v = broker.put_model_key(&owner, id, key.as_bytes(), Some(&policy), false).await.expect("key");
    let m = enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes());
    broker.grant(&owner, id, &m, &owner).await.expect("grant");
    let package = enclava_model::encrypt(id, v, &key, bytes).expect("encrypt");
    let store = enclava_model::FolderStore::new(sandbox.blobs());
    enclava_model::BlobStore::put(&store, &enclava_model::package_blob_name(id, v), &package).await.expect("blob");
    policy
}
