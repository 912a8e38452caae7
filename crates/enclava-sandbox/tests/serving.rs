//! Model serving end to end, in one process: the sandbox's manager and key broker (over the
//! in-memory registry and SQLite), `sim` nodes that fetch model keys with evidence, decrypt the
//! packages from a blob folder and answer sealed requests, and the client library's
//! find → verify → seal → send → open loop, with every refusal the protocol promises.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;

use enclava_attest::Policy;
use enclava_client::infer::{self, ErrorBody, InferError, InferOptions, InferRequest, InferResponse, post_json};
use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_keys::{Broker, LocalKek};
use enclava_model::{BlobStore, FolderStore, ModelKey, package_blob_name};
use enclava_node::{ModelState, NodeHandle};
use enclava_runtime::{Model, Tensor, generate};
use enclava_sandbox::{NodeSpec, SandboxBuilder};

const WAIT: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox (manager + key broker), its blob folder and a model owner.
struct Env {
    sandbox: enclava_sandbox::Sandbox,
    url: String,
    broker: Arc<Broker>,
    owner: String,
    blobs: PathBuf,
}

fn measurement() -> String {
    enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes())
}

const OTHER_MEASUREMENT: &str =
    "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111";

impl Env {
    async fn new() -> Env {
        Env::with(|_| {}).await
    }

    async fn with(configure: impl FnOnce(&mut enclava_sandbox::ServerConfig)) -> Env {
        let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[9; 32], "test")));
        let sandbox = SandboxBuilder::new().kek(kek).configure(configure).start().await.expect("sandbox starts");
        let broker = sandbox.broker().expect("keys role").clone();
        let (owner, _) = broker.register(None).await.expect("register");
        Env { url: sandbox.url().to_owned(), blobs: sandbox.blobs(), broker, owner, sandbox }
    }

    fn sim_policy(&self, measurements: &str) -> String {
        format!("[sim]\nroot = \"{}\"\n{measurements}\n", self.sandbox.sim_root().public().to_hex())
    }

    /// Encrypts `onnx` as `model`, stores its key with a sim policy and grants `grant`.
    async fn upload(&self, model: &str, onnx: &[u8], grant: &str) -> u64 {
        let key = ModelKey::generate().expect("key");
        let policy = self.sim_policy("any_measurement = true");
        let version =
            self.broker.put_model_key(&self.owner, model, key.as_bytes(), Some(&policy), false).await.expect("put key");
        self.broker.grant(&self.owner, model, grant, &self.owner).await.expect("grant");
        let package = enclava_model::encrypt(model, version, &key, onnx).expect("encrypt");
        FolderStore::new(&self.blobs).put(&package_blob_name(model, version), &package).await.expect("put blob");
        version
    }

    async fn node_with(&self, name: &str, models: &[&str], budget: u64, advertise: Option<String>) -> NodeHandle {
        let mut spec = NodeSpec::new(name).serve(models).memory_budget(budget).openwhisk();
        if let Some(a) = advertise {
            spec = spec.advertise(a);
        }
        self.sandbox.detached_node(spec).await.expect("node starts")
    }

    async fn node(&self, name: &str, models: &[&str]) -> NodeHandle {
        self.node_with(name, models, 0, None).await
    }

    fn options(&self, model: &str) -> InferOptions {
        let policy = Policy::parse(&self.sim_policy("any_measurement = true")).expect("policy");
        InferOptions::new(self.url.clone(), model, policy)
    }

    async fn find(&self, model: &str) -> Vec<(String, bool)> {
        let mut c = ManagerClient::connect(&self.url).await.expect("manager");
        let req = FindEnclaveRequest { dataaccess: model.into(), limit: 10, ..Default::default() };
        c.find(req).await.expect("find").found.into_iter().map(|e| (e.instance_id, e.hot)).collect()
    }

    /// Waits until FindEnclave lists exactly `node` for `model`, with this hot state.
    async fn listed(&self, model: &str, node: &NodeHandle, hot: bool) {
        let want = vec![(node.instance_id().to_owned(), hot)];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.find(model).await;
            if got == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{model}: listed {got:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn input(seed: u64) -> Vec<u8> {
    generate::sample_input(&[1, 3, 32, 32], seed).expect("input").to_npy()
}

/// The first output of running `onnx` on `input_npy` directly with tract.
fn direct(onnx: &[u8], input_npy: &[u8]) -> Tensor {
    let model = Model::load(onnx).expect("load");
    model.run(&Tensor::from_npy(input_npy).expect("npy")).expect("run").remove(0)
}

fn tensor(npy: &[u8]) -> Tensor {
    Tensor::from_npy(npy).expect("output is .npy")
}

/// Posts a JSON value to the node; returns the status and body.
async fn post(addr: SocketAddr, path: &str, body: &impl serde::Serialize) -> (u16, Vec<u8>) {
    post_json(&format!("http://{addr}{path}"), serde_json::to_vec(body).expect("json"), TIMEOUT).await.expect("post")
}

fn error_code(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).expect("error body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_result_equals_running_the_model_directly() {
    let env = Env::new().await;
    let onnx = generate::tiny(1);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");
    env.listed("acme/tiny", &node, true).await;

    let x = input(7);
    let out = infer::infer(&env.options("acme/tiny"), &x).await.expect("sealed inference");
    assert_eq!(tensor(&out.output_npy), direct(&onnx, &x), "bit for bit the same as tract in-process");
    assert_eq!(out.instance_id, node.instance_id());
    assert_eq!((out.platform.as_str(), out.measurement.as_str()), ("sim", node.measurement()));
    assert_eq!(out.claims.measurement_hex(), measurement());
    assert!(out.passed_over.is_empty());
    assert_eq!((node.metrics().requests.get(), node.metrics().requests_served.get()), (1, 1));
    assert!(!format!("{:?}", node.request_key()).contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_denied_and_the_retry_succeeds_on_another() {
    let env = Env::new().await;
    let onnx = generate::tiny(2);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let n1 = env.node("n1", &["acme/tiny"]).await;
    let n2 = env.node("n2", &["acme/tiny"]).await;
    n1.wait_hot("acme/tiny", WAIT).await.expect("n1 hot");
    n2.wait_hot("acme/tiny", WAIT).await.expect("n2 hot");
    // n2 is listed cold (it still has the model), so FindEnclave offers the hot n1 first.
    n2.set_data("acme/tiny", false).expect("set data");
    let n1_id = n1.instance_id().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    n1.abort(); // killed: still registered until its presence expires (3 s)
    tokio::time::sleep(Duration::from_millis(200)).await;

    let x = input(3);
    let out = infer::infer(&env.options("acme/tiny"), &x).await.expect("retried on n2");
    assert_eq!(out.instance_id, n2.instance_id());
    assert_eq!(out.passed_over.len(), 1, "{:?}", out.passed_over);
    assert_eq!(out.passed_over[0].instance_id, n1_id);
    assert!(out.passed_over[0].outcome.contains("connect"), "{}", out.passed_over[0].outcome);
    assert_eq!(tensor(&out.output_npy), direct(&onnx, &x));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reuses_its_verified_enclave_and_moves_on_when_it_dies() {
    let env = Env::new().await;
    let onnx = generate::tiny(5);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let n1 = env.node("n1", &["acme/tiny"]).await;
    let n2 = env.node("n2", &["acme/tiny"]).await;
    n1.wait_hot("acme/tiny", WAIT).await.expect("n1 hot");
    n2.wait_hot("acme/tiny", WAIT).await.expect("n2 hot");

    let mut session = infer::InferSession::connect(env.options("acme/tiny")).await.expect("session");
    let first = session.infer(&input(1)).await.expect("first");
    for seed in 2..6 {
        let out = session.infer(&input(seed)).await.expect("again");
        assert_eq!(out.instance_id, first.instance_id, "the verified enclave is used again");
        assert_eq!(tensor(&out.output_npy), direct(&onnx, &input(seed)));
    }
    let (dead, alive) = if first.instance_id == n1.instance_id() { (n1, n2) } else { (n2, n1) };
    assert_eq!(dead.metrics().requests_served.get(), 5);
    dead.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = session.infer(&input(9)).await.expect("moved on");
    assert_eq!(out.instance_id, alive.instance_id());
    assert_eq!(out.passed_over.len(), 1, "{:?}", out.passed_over);
    assert_eq!(out.passed_over[0].instance_id, first.instance_id);

    // With reuse off, every request finds and verifies again (and still works).
    let mut opts = env.options("acme/tiny");
    opts.reuse_verified = Duration::ZERO;
    let mut fresh = infer::InferSession::connect(opts).await.expect("session");
    assert_eq!(fresh.infer(&input(3)).await.expect("fresh").instance_id, alive.instance_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_not_granted_never_gets_the_key_and_a_refused_node_gets_nothing() {
    let env = Env::new().await;
    env.upload("acme/secret", &generate::tiny(3), OTHER_MEASUREMENT).await;
    env.upload("acme/tiny", &generate::tiny(4), &measurement()).await;
    let node = env.node("n1", &["acme/secret", "acme/tiny"]).await;

    // Not granted: the broker refuses, the model never becomes hot, requests are refused.
    let err = node.wait_hot("acme/secret", WAIT).await.expect_err("not granted");
    assert!(err.contains("did not release") && err.contains("not_granted"), "{err}");
    assert!(matches!(node.model_state("acme/secret"), Some(ModelState::Failed(_))));
    let audit = env.broker.audit(&env.owner, 1000).await.expect("audit");
    assert!(audit.iter().any(|r| r.action == "deny" && r.detail.contains("not granted")), "{audit:?}");
    assert!(!audit.iter().any(|r| r.action != "deny" && r.detail.contains("acme/secret")));
    assert_eq!(node.metrics().model_load_failures.get(), 1);
    node.wait_hot("acme/tiny", WAIT).await.expect("the granted model is served");
    env.listed("acme/secret", &node, false).await;
    let err = infer::infer(&env.options("acme/secret"), &input(1)).await.expect_err("no node can serve it");
    assert!(err.to_string().contains("not granted"), "{err}");
    let served = node.metrics().requests.get();

    // A client whose policy does not accept the node's measurement sends it nothing.
    let policy = Policy::parse(&env.sim_policy(&format!("measurements = [\"{OTHER_MEASUREMENT}\"]"))).expect("policy");
    let opts = InferOptions::new(env.url.clone(), "acme/tiny", policy);
    let err = infer::infer(&opts, &input(1)).await.expect_err("refused");
    assert!(matches!(err, InferError::NoEnclave { .. }), "{err}");
    assert_eq!(err.tried().len(), 1);
    assert!(err.tried()[0].outcome.contains("refused, nothing sent"), "{err}");
    assert_eq!(node.metrics().requests.get(), served, "the node received nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_never_served() {
    let env = Env::new().await;
    let version = env.upload("acme/tiny", &generate::tiny(5), &measurement()).await;
    let store = FolderStore::new(&env.blobs);
    let name = package_blob_name("acme/tiny", version);
    let mut package = store.get(&name).await.expect("blob");
    let middle = package.len() / 2;
    package[middle] ^= 0x40;
    store.put(&name, &package).await.expect("tamper");

    let node = env.node("n1", &["acme/tiny"]).await;
    let err = node.wait_hot("acme/tiny", WAIT).await.expect_err("tampered");
    assert!(err.contains("failed authentication"), "{err}");
    env.listed("acme/tiny", &node, false).await;

    let (req, _) = infer::seal_request(node.request_key().public(), "acme/tiny", &input(1)).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &req).await;
    let e = error_code(&body);
    assert_eq!((status, e.code.as_str()), (503, "unavailable"), "{e:?}");
    assert!(e.message.contains("failed verification"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_stale_and_malformed_requests_are_refused() {
    let env = Env::new().await;
    let onnx = generate::tiny(6);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");
    let pk = node.request_key().public().to_vec();
    let x = input(9);

    let (req, pending) = infer::seal_request(&pk, "acme/tiny", &x).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp: InferResponse = serde_json::from_slice(&body).expect("sealed response");
    assert_eq!(tensor(&pending.open(&resp).expect("opens")), direct(&onnx, &x));

    // Replayed, byte for byte.
    let (status, body) = post(node.addr(), infer::PATH, &req).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "replayed"));

    // Tampered: ciphertext, a bound field, the encapsulated key.
    let (fresh, _) = infer::seal_request(&pk, "acme/tiny", &x).expect("seal");
    for tamper in [
        |r: &mut InferRequest| r.ciphertext[10] ^= 1,
        |r: &mut InferRequest| r.time_ms -= 1,
        |r: &mut InferRequest| r.enc[0] ^= 1,
        |r: &mut InferRequest| r.enc.truncate(5),
    ] {
        let mut bad = fresh.clone();
        tamper(&mut bad);
        let (status, body) = post(node.addr(), infer::PATH, &bad).await;
        assert_eq!((status, error_code(&body).code.as_str()), (400, "tampered"));
    }
    // The untampered one still goes through: a refused forgery does not burn its id.
    let (status, _) = post(node.addr(), infer::PATH, &fresh).await;
    assert_eq!(status, 200);

    // Stale, unknown model, bad id, garbage, not a tensor, wrong shape.
    let old = infer::now_ms() - 61_000;
    let (stale, _) = infer::seal_request_with(&pk, "acme/tiny", &x, &"ab".repeat(16), old).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &stale).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "stale"));
    let (other, _) = infer::seal_request(&pk, "acme/other", &x).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &other).await;
    assert_eq!((status, error_code(&body).code.as_str()), (404, "not_served"));
    let (bad_id, _) = infer::seal_request_with(&pk, "acme/tiny", &x, "XYZ", infer::now_ms()).expect("seal");
    let (status, _) = post(node.addr(), infer::PATH, &bad_id).await;
    assert_eq!(status, 400);
    let (status, body) = post(node.addr(), infer::PATH, &serde_json::json!({"hello": 1})).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "invalid_argument"));
    let (status, _) = post_json(&format!("http://{}{}", node.addr(), infer::PATH), b"\xff\x00{".to_vec(), TIMEOUT)
        .await
        .expect("post");
    assert_eq!(status, 400);
    let (not_npy, _) = infer::seal_request(&pk, "acme/tiny", b"not a tensor").expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &not_npy).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "bad_input"));
    let wrong = generate::sample_input(&[1, 3, 8, 8], 1).expect("input").to_npy();
    let (wrong_shape, _) = infer::seal_request(&pk, "acme/tiny", &wrong).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &wrong_shape).await;
    let e = error_code(&body);
    assert_eq!((status, e.code.as_str()), (400, "bad_input"), "{e:?}");
    assert!(e.message.contains("[1, 3, 32, 32]"), "{e:?}");
    // The client library reports a refused request as such.
    assert!(node.metrics().requests_refused.get() >= 10);
}

/// A man in the middle that flips one bit of every sealed answer (the last byte: the AEAD tag in
/// the binary encoding, the ciphertext's in JSON).
async fn tampering_proxy(listener: tokio::net::TcpListener, target: SocketAddr) {
    let app = axum::Router::new().route(
        infer::PATH,
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| async move {
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_owned();
            let url = format!("http://{target}{}", infer::PATH);
            let (status, mut body) = infer::post_with(&infer::http_client(TIMEOUT), &url, &ct, body.to_vec(), TIMEOUT)
                .await
                .expect("forward");
            if status == 200 && ct == infer::BINARY_CONTENT_TYPE {
                *body.last_mut().expect("non-empty") ^= 1;
            } else if status == 200 {
                let mut sealed: InferResponse = serde_json::from_slice(&body).expect("sealed");
                sealed.ciphertext[0] ^= 1;
                body = serde_json::to_vec(&sealed).expect("json");
            }
            (StatusCode::from_u16(status).expect("status"), [("content-type", ct)], body)
        }),
    );
    let _ = axum::serve(listener, app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_response_is_refused_by_the_client() {
    let env = Env::new().await;
    env.upload("acme/tiny", &generate::tiny(8), &measurement()).await;
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = proxy.local_addr().expect("addr");
    let node = env.node_with("n1", &["acme/tiny"], 0, Some(proxy_addr.to_string())).await;
    tokio::spawn(tampering_proxy(proxy, node.addr()));
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");

    let err = infer::infer(&env.options("acme/tiny"), &input(1)).await.expect_err("tampered answer");
    match &err {
        InferError::TamperedResponse { instance_id, tried } => {
            assert_eq!(instance_id, node.instance_id());
            assert_eq!(tried.len(), 1, "not retried");
        }
        other => panic!("expected a tampered response, got {other}"),
    }
    assert!(err.to_string().contains("does not open"), "{err}");
    assert_eq!(node.metrics().requests_served.get(), 1, "the node did answer; the client refused the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openwhisk_init_and_run_with_the_shapes_openwhisk_sends() {
    let env = Env::new().await;
    let onnx = generate::tiny(10);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");

    let init = serde_json::json!({
        "value": {"name": "acme-tiny", "main": "main", "code": "", "binary": false, "env": {"__OW_API_HOST": "https://ow"}}
    });
    let (status, body) = post(node.addr(), "/init", &init).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).expect("json"), serde_json::json!({"ok": true}));

    let x = input(4);
    let (req, pending) = infer::seal_request(node.request_key().public(), "acme/tiny", &x).expect("seal");
    let envelope = |value: serde_json::Value| {
        serde_json::json!({
            "value": value,
            "namespace": "guest",
            "action_name": "/guest/acme-tiny",
            "api_host": "https://openwhisk.example",
            "api_key": "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP",
            "activation_id": "5d4c3b2a1f0e4d3c8b7a6f5e4d3c2b1a",
            "transaction_id": "iG7Kx2dL9pQ4",
            "deadline": "1893456000000"
        })
    };
    let (status, body) = post(node.addr(), "/run", &envelope(serde_json::to_value(&req).expect("json"))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp: InferResponse = serde_json::from_slice(&body).expect("sealed response");
    assert_eq!(tensor(&pending.open(&resp).expect("opens")), direct(&onnx, &x));

    // Errors are OpenWhisk application errors: {"error": …} with a 4xx/5xx.
    for (value, want) in [
        (serde_json::to_value(&req).expect("json"), 400), // replayed
        (serde_json::json!({}), 400),
        (serde_json::json!({"model": "acme/none", "requestId": "ab", "timeMs": 1, "enc": "", "ciphertext": ""}), 404),
    ] {
        let (status, body) = post(node.addr(), "/run", &envelope(value)).await;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(status, want, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_share_one_loaded_model() {
    let env = Env::new().await;
    let onnx = generate::tiny(11);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");
    let opts = Arc::new(env.options("acme/tiny"));
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let opts = opts.clone();
            tokio::spawn(async move {
                let x = input(100 + i);
                (x.clone(), infer::infer(&opts, &x).await)
            })
        })
        .collect();
    let reference = Model::load(&onnx).expect("load");
    for t in tasks {
        let (x, out) = t.await.expect("task");
        let out = out.expect("inference");
        let want = reference.run(&Tensor::from_npy(&x).expect("npy")).expect("run").remove(0);
        assert_eq!(tensor(&out.output_npy), want);
    }
    assert_eq!(node.metrics().requests_served.get(), 16);
    assert_eq!(node.metrics().model_loads.get(), 1, "loaded once, shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_under_the_budget_and_reload_on_request() {
    let env = Env::new().await;
    let (a, b) = (generate::tiny(12), generate::tiny(13));
    env.upload("acme/a", &a, &measurement()).await;
    env.upload("acme/b", &b, &measurement()).await;
    let budget = a.len().max(b.len()) as u64 + 16; // room for one of them
    let node = env.node_with("n1", &["acme/a", "acme/b"], budget, None).await;
    node.wait_hot("acme/b", WAIT).await.expect("b hot");
    assert_eq!(node.model_state("acme/a"), Some(ModelState::Cold), "a evicted when b loaded");
    env.listed("acme/a", &node, false).await;

    let x = input(5);
    let out = infer::infer(&env.options("acme/a"), &x).await.expect("a reloaded on request");
    assert_eq!(tensor(&out.output_npy), direct(&a, &x));
    assert_eq!(node.model_state("acme/a"), Some(ModelState::Hot));
    assert_eq!(node.model_state("acme/b"), Some(ModelState::Cold));
    assert_eq!((node.metrics().model_loads.get(), node.metrics().model_evictions.get()), (3, 2));
    assert!(node.evict("acme/a"));
    env.listed("acme/a", &node, false).await;
}

/// Everything the node and client log, at every level, for the log hygiene test.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_keys_inputs_or_outputs() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init()
        .expect("the only subscriber in this binary");

    let env = Env::new().await;
    let key = ModelKey::generate().expect("key");
    let policy = env.sim_policy("any_measurement = true");
    let version =
        env.broker.put_model_key(&env.owner, "acme/tiny", key.as_bytes(), Some(&policy), false).await.expect("key");
    env.broker.grant(&env.owner, "acme/tiny", &measurement(), &env.owner).await.expect("grant");
    let onnx = generate::tiny(14);
    let package = enclava_model::encrypt("acme/tiny", version, &key, &onnx).expect("encrypt");
    FolderStore::new(&env.blobs).put(&package_blob_name("acme/tiny", version), &package).await.expect("blob");
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");

    let x = input(15);
    let (req, pending) = infer::seal_request(node.request_key().public(), "acme/tiny", &x).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &req).await;
    assert_eq!(status, 200);
    let output = pending.open(&serde_json::from_slice(&body).expect("sealed")).expect("opens");
    let (status, _) = post(node.addr(), infer::PATH, &req).await; // replayed: logged as refused
    assert_eq!(status, 400);
    let out = infer::infer(&env.options("acme/tiny"), &x).await.expect("infer");

    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8 logs");
    assert!(text.contains("model loaded: hot") && text.contains("request refused"), "logs were captured");
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let data_start = x.len() - 64; // skip the .npy header, which is not secret
    for (what, secret) in [
        ("model key (hex)", hex::encode(key.as_bytes())),
        ("model key (base64)", b64(key.as_bytes())),
        ("input (hex)", hex::encode(&x[data_start..])),
        ("input (base64)", b64(&x[data_start..data_start + 48])),
        ("output (hex)", hex::encode(&output[output.len() - 16..])),
        ("sealed output (hex)", hex::encode(&out.output_npy[out.output_npy.len() - 16..])),
        ("ciphertext (base64)", b64(&req.ciphertext[..48])),
    ] {
        assert!(!text.contains(&secret), "the logs contain the {what}");
    }
}

/// A user who uploaded a request key for `model` on `measurement`; granted by the owner if `grant`.
async fn serverless_user(env: &Env, model: &str, measurement: &str, grant: bool) -> infer::UserKey {
    let (user, _) = env.broker.register(None).await.expect("register");
    let mut key = [0u8; 32];
    rand_key(&mut key);
    env.broker.put_request_key(&user, model, measurement, &key).await.expect("request key");
    if grant {
        env.broker.grant(&env.owner, model, measurement, &user).await.expect("grant");
    }
    infer::UserKey::new(user, measurement, &key)
}

fn rand_key(key: &mut [u8; 32]) {
    let k = ModelKey::generate().expect("random");
    key.copy_from_slice(k.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverless_requests_open_only_on_nodes_granted_for_the_user() {
    let env = Env::new().await;
    let onnx = generate::tiny(21);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");
    let endpoint = format!("http://{}{}", node.addr(), infer::PATH);

    // Granted: the result equals tract's, in JSON and in binary, and the node fetched the user's
    // key once.
    let alice = serverless_user(&env, "acme/tiny", &measurement(), true).await;
    let x = input(5);
    let mut opts = infer::ServerlessOptions::new(endpoint.clone(), "acme/tiny", alice.clone());
    let out = infer::infer_serverless(&opts, &x).await.expect("serverless inference");
    assert_eq!(tensor(&out), direct(&onnx, &x), "bit for bit the same as tract in-process");
    opts.binary = true;
    let client = infer::ServerlessClient::new(opts).expect("client");
    for seed in 0..4 {
        let x = input(seed);
        assert_eq!(tensor(&client.infer(&x).await.expect("binary")), direct(&onnx, &x));
    }
    assert_eq!(node.metrics().user_key_fetches.get(), 1, "one fetch, then the held key");

    // A user whose measurement grant is missing: the broker does not release the key (403), and
    // the client reports the refusal without retrying.
    let bob = serverless_user(&env, "acme/tiny", &measurement(), false).await;
    let err = infer::infer_serverless(&infer::ServerlessOptions::new(endpoint.clone(), "acme/tiny", bob), &x)
        .await
        .expect_err("not granted");
    match &err {
        infer::ServerlessError::Refused { code, message, .. } => {
            assert_eq!(code, "not_granted", "{message}");
            assert!(message.contains("enclava keys grant"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    // Someone claiming to be alice without her key: the node holds her key, the request does not open.
    let mallory = infer::UserKey::new(alice.user.clone(), &measurement(), &[3; 32]);
    let err = infer::infer_serverless(&infer::ServerlessOptions::new(endpoint.clone(), "acme/tiny", mallory), &x)
        .await
        .expect_err("wrong key");
    assert!(matches!(&err, infer::ServerlessError::Refused { code, .. } if code == "tampered"), "{err}");
    // A user with no request key at all, and a user id that is not one.
    let (carol, _) = env.broker.register(None).await.expect("register");
    let carol = infer::UserKey::new(carol, &measurement(), &[4; 32]);
    let (req, _) = infer::seal_serverless(&carol, "acme/tiny", &x).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &req).await;
    assert_eq!((status, error_code(&body).code.as_str()), (403, "not_granted"));
    let mut bad = req.clone();
    bad.user = Some("../../etc".into());
    let (status, _) = post(node.addr(), infer::PATH, &bad).await;
    assert_eq!(status, 400);

    // Sealed for another measurement: refused at once (421), and retried (the platform may route
    // elsewhere) until the client gives up.
    let other = infer::UserKey::new(alice.user.clone(), OTHER_MEASUREMENT, &[5; 32]);
    let err = infer::infer_serverless(&infer::ServerlessOptions::new(endpoint.clone(), "acme/tiny", other), &x)
        .await
        .expect_err("other measurement");
    match &err {
        infer::ServerlessError::Exhausted { tries, .. } => {
            assert_eq!(tries.len(), 3);
            assert!(tries[0].contains("other_measurement"), "{tries:?}");
        }
        other => panic!("expected exhaustion, got {other}"),
    }
    assert_eq!(node.metrics().user_key_fetches.get(), 3, "alice, bob, carol; nothing for the others");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverless_tampering_replays_and_openwhisk() {
    let env = Env::new().await;
    let onnx = generate::tiny(22);
    env.upload("acme/tiny", &onnx, &measurement()).await;
    let node = env.node("n1", &["acme/tiny"]).await;
    node.wait_hot("acme/tiny", WAIT).await.expect("hot");
    let alice = serverless_user(&env, "acme/tiny", &measurement(), true).await;
    let x = input(6);

    // Through OpenWhisk's /run envelope, as JSON.
    let (req, pending) = infer::seal_serverless(&alice, "acme/tiny", &x).expect("seal");
    let run = serde_json::json!({"value": req, "namespace": "guest", "action_name": "/guest/acme-tiny",
        "activation_id": "0a1b2c3d4e5f", "deadline": "1893456000000"});
    let (status, body) = post(node.addr(), "/run", &run).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp: InferResponse = serde_json::from_slice(&body).expect("sealed response");
    assert_eq!(tensor(&pending.open(&resp).expect("opens")), direct(&onnx, &x));
    // The answer is bound to the request: tampered, it does not open.
    let mut bad = resp.clone();
    bad.ciphertext[15] ^= 1;
    assert_eq!(pending.open(&bad), Err(infer::OpenResponseError::DoesNotOpen));

    // Replayed, to /run or /v1/infer: refused.
    let (status, body) = post(node.addr(), infer::PATH, &req).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "replayed"));

    // Every bound field: tampered.
    for change in [
        |r: &mut InferRequest| r.ciphertext[30] ^= 1,
        |r: &mut InferRequest| r.time_ms -= 1,
        |r: &mut InferRequest| r.request_id = "cd".repeat(16),
        |r: &mut InferRequest| r.measurement = Some(r.measurement.clone().expect("m").to_uppercase()),
    ] {
        let (mut fresh, _) = infer::seal_serverless(&alice, "acme/tiny", &x).expect("seal");
        change(&mut fresh);
        let (status, body) = post(node.addr(), infer::PATH, &fresh).await;
        assert_eq!((status, error_code(&body).code.as_str()), (400, "tampered"));
    }
    // Stale: refused before anything is fetched or opened.
    let old = infer::now_ms() - 61_000;
    let (stale, _) = infer::seal_serverless_with(&alice, "acme/tiny", &x, &"ef".repeat(16), old).expect("seal");
    let (status, body) = post(node.addr(), infer::PATH, &stale).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "stale"));
    // A serverless request is never opened as a direct one, nor the reverse.
    let (mut as_direct, _) = infer::seal_serverless(&alice, "acme/tiny", &x).expect("seal");
    as_direct.mode = infer::Mode::Direct;
    let (status, body) = post(node.addr(), infer::PATH, &as_direct).await;
    assert_eq!((status, error_code(&body).code.as_str()), (400, "tampered"));
    assert_eq!(node.metrics().user_key_fetches.get(), 1);
}

/// One HTTP/1.1 request on loopback with an optional bearer token; (status, lowercase head, body).
async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf)).await.expect("in time").expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (h, b) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_lowercase(), b.to_owned())).unwrap_or_default();
    (status, h, b)
}

/// The pool's view (`GET /pools/NAME`).
async fn pool_view(env: &Env, token: &str, name: &str) -> serde_json::Value {
    let (status, _, body) = call(env.sandbox.addr(), "GET", &format!("/pools/v1/{name}"), Some(token), b"").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

async fn wait_instances(env: &Env, token: &str, name: &str, n: usize) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = pool_view(env, token, name).await;
        if v["status"]["instances"].as_array().map_or(0, Vec::len) == n {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "pool {name} never had {n} instances: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_sequential_requests_where_their_model_is_hot_and_routes_around_a_killed_node() {
    let env = Env::new().await;
    let (a, b) = (generate::tiny(31), generate::tiny(32));
    env.upload("acme/pa", &a, &measurement()).await;
    env.upload("acme/pb", &b, &measurement()).await;
    let n1 = env.node("n1", &["acme/pa", "acme/pb"]).await;
    let n2 = env.node("n2", &["acme/pa", "acme/pb"]).await;
    for n in [&n1, &n2] {
        n.wait_hot("acme/pa", WAIT).await.expect("hot");
        n.wait_hot("acme/pb", WAIT).await.expect("hot");
    }
    let (_, token) = env.broker.register(None).await.expect("register");
    let create =
        serde_json::json!({ "name": "vision", "models": ["acme/pa", "acme/pb"], "measurement": measurement() });
    let (status, _, body) =
        call(env.sandbox.addr(), "POST", "/pools/v1/create", Some(&token), create.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _, _) =
        call(env.sandbox.addr(), "POST", "/pools/v1/create", Some(&token), create.to_string().as_bytes()).await;
    assert_eq!(status, 409, "a pool is created once");
    let (status, _, _) =
        call(env.sandbox.addr(), "POST", "/pools/v1/create", None, create.to_string().as_bytes()).await;
    assert_eq!(status, 401, "creating a pool needs a credential");
    wait_instances(&env, &token, "vision", 2).await;

    // Sealed serverless requests through the pool: the answers are the model's, and sequential
    // requests for one model all go to one node.
    let alice = serverless_user(&env, "acme/pa", &measurement(), true).await;
    let endpoint = format!("{}/pools/v1/vision/invoke", env.url);
    let opts = infer::ServerlessOptions::new(endpoint.clone(), "acme/pa", alice.clone());
    for seed in 0..6 {
        let x = input(seed);
        assert_eq!(tensor(&infer::infer_serverless(&opts, &x).await.expect("through the pool")), direct(&a, &x));
    }
    let served = [n1.metrics().requests.get(), n2.metrics().requests.get()];
    assert!(served == [6, 0] || served == [0, 6], "sequential requests stay on one node: {served:?}");
    let (hot, cold) = if served[0] == 6 { (n1, n2) } else { (n2, n1) };
    let ranked = call(env.sandbox.addr(), "GET", "/pools/v1/vision/instances?model=acme/pa", None, b"").await;
    let ranked: serde_json::Value = serde_json::from_str(&ranked.2).expect("json");
    assert_eq!(ranked["instances"][0]["id"], hot.instance_id(), "direct mode is offered the hot instance first");
    // Direct mode through the pool: the pool names the enclave, the client verifies it, then seals
    // to its key.
    let mut direct_opts = env.options("acme/pa");
    direct_opts.pool = Some("vision".into());
    let x = input(9);
    let out = infer::infer(&direct_opts, &x).await.expect("direct through the pool");
    assert_eq!(tensor(&out.output_npy), direct(&a, &x));
    assert_eq!(out.instance_id, hot.instance_id());
    assert_eq!(out.platform, "sim", "verified before sending");
    let (_, _, metrics) = call(env.sandbox.addr(), "GET", "/metrics", None, b"").await;
    assert!(metrics.contains("enclava_pool_queued{"), "the scaling signal is exported");

    // The node that served them is killed (its registry entry lingers for seconds): requests
    // routed there are retried on the other node, which is then the only one in the pool.
    let killed = hot.instance_id().to_owned();
    hot.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seed in 10..13 {
        let x = input(seed);
        assert_eq!(tensor(&infer::infer_serverless(&opts, &x).await.expect("retried elsewhere")), direct(&a, &x));
    }
    assert_eq!(cold.metrics().requests.get(), 3, "the killed node's requests completed on the other");
    let v = pool_view(&env, &token, "vision").await;
    assert_eq!(v["down"], serde_json::json!([killed]), "{v}");

    // Another user sees nothing of it; its owner deletes it; then it serves nothing.
    let (_, other) = env.broker.register(None).await.expect("register");
    assert_eq!(call(env.sandbox.addr(), "GET", "/pools/v1/vision", Some(&other), b"").await.0, 404);
    let (_, _, list) = call(env.sandbox.addr(), "GET", "/pools/v1/list", Some(&other), b"").await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&list).expect("json")["pools"], serde_json::json!([]));
    assert_eq!(call(env.sandbox.addr(), "DELETE", "/pools/v1/vision", Some(&other), b"").await.0, 404);
    assert_eq!(call(env.sandbox.addr(), "DELETE", "/pools/v1/vision", Some(&token), b"").await.0, 204);
    let (req, _) = infer::seal_serverless(&alice, "acme/pa", &input(1)).expect("seal");
    let body = serde_json::to_vec(&req).expect("json");
    assert_eq!(call(env.sandbox.addr(), "POST", "/pools/v1/vision/invoke", None, &body).await.0, 404);
}

/// A stand-in instance: answers `/v1/infer` after `delay` (counting requests), or, when `drop`,
/// reads the request and closes the connection without answering (it died mid-request).
async fn fake_instance(delay: Duration, drop: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let _ = s.read(&mut buf).await;
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if drop {
                    return;
                }
                tokio::time::sleep(delay).await;
                let body = b"{\"ok\":true}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    (addr, count)
}

/// Lists a stand-in instance in the registry for `model`, kept alive until the test ends.
async fn list_instance(env: &Env, id: &str, addr: SocketAddr, model: &str) {
    let info = serde_json::json!({
        "instanceId": id, "platform": "sim", "policy": { "mrenclave": measurement() },
        "connectionString": addr.to_string(), "dataAccess": { model: { "hot": true } },
    });
    let info = enclava_registry::EnclaveInfoJson::parse(&info.to_string()).expect("info");
    let reg = env.sandbox.registry().clone();
    reg.publish(id, &info.to_json(), &info.index_entries()).await.expect("publish");
    let id = id.to_owned();
    tokio::spawn(async move {
        loop {
            let _ = reg.heartbeat(&id).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

fn fake_request(model: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "mode": "serverless", "model": model, "requestId": "00".repeat(16), "timeMs": 1,
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_queues_then_answers_429_with_retry_after_and_no_request_is_lost_or_doubled() {
    let env = Env::new().await;
    let (addr, count) = fake_instance(Duration::from_millis(300), false).await;
    list_instance(&env, "slow1", addr, "acme/slow").await;
    let (_, token) = env.broker.register(None).await.expect("register");
    let create = serde_json::json!({
        "name": "tight", "models": ["acme/slow"], "measurement": measurement(), "concurrency": 1, "queue": 2,
    });
    let (status, _, body) =
        call(env.sandbox.addr(), "POST", "/pools/v1/create", Some(&token), create.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    wait_instances(&env, &token, "tight", 1).await;
    // One runs, two wait, the rest are refused with a hint; every accepted one is answered once.
    let addr = env.sandbox.addr();
    let first =
        tokio::spawn(
            async move { call(addr, "POST", "/pools/v1/tight/invoke", None, &fake_request("acme/slow")).await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut calls = Vec::new();
    for _ in 0..5 {
        calls.push(tokio::spawn(async move {
            call(addr, "POST", "/pools/v1/tight/invoke", None, &fake_request("acme/slow")).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut outcomes = vec![first.await.expect("task")];
    for c in calls {
        outcomes.push(c.await.expect("task"));
    }
    let ok = outcomes.iter().filter(|(s, _, _)| *s == 200).count();
    let full: Vec<_> = outcomes.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!((ok, full.len()), (3, 3), "{outcomes:?}");
    for (_, head, body) in &full {
        assert!(head.contains("retry-after: "), "{head}");
        assert!(body.contains("\"code\":\"rate_limited\""), "{body}");
    }
    assert!(outcomes.iter().filter(|o| o.0 == 200).all(|(_, h, _)| h.contains("x-enclava-instance: slow1")));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3, "each accepted request reached the instance once");
    // A model the pool does not serve, and a body that is not a request, change nothing.
    assert_eq!(call(addr, "POST", "/pools/v1/tight/invoke", None, &fake_request("acme/other")).await.0, 404);
    assert_eq!(call(addr, "POST", "/pools/v1/tight/invoke", None, b"<script>").await.0, 400);
    // Sealed for another measurement: refused by the pool; the instance is not blamed for it.
    let other = serde_json::json!({
        "mode": "serverless", "model": "acme/slow", "requestId": "00".repeat(16), "timeMs": 1,
        "measurement": OTHER_MEASUREMENT, "user": "u",
    });
    let (status, _, body) = call(addr, "POST", "/pools/v1/tight/invoke", None, other.to_string().as_bytes()).await;
    assert_eq!(status, 421, "{body}");
    // A direct-mode request is sealed to one enclave: the pool says where to ask instead.
    let direct_mode = serde_json::json!({ "model": "acme/slow", "requestId": "00".repeat(16), "timeMs": 1 });
    let (status, _, body) =
        call(addr, "POST", "/pools/v1/tight/invoke", None, direct_mode.to_string().as_bytes()).await;
    assert!(status == 400 && body.contains("instances"), "{status} {body}");
    let v = pool_view(&env, &token, "tight").await;
    assert_eq!((v["status"]["queued"].as_u64(), v["status"]["instances"][0]["in_flight"].as_u64()), (Some(0), Some(0)));
    assert_eq!(v["down"], serde_json::json!([]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_an_instance_that_dies_mid_request_complete_on_another() {
    let env = Env::new().await;
    let (dead, dead_count) = fake_instance(Duration::ZERO, true).await;
    let (live, live_count) = fake_instance(Duration::from_millis(5), false).await;
    list_instance(&env, "dies", dead, "acme/m").await;
    list_instance(&env, "lives", live, "acme/m").await;
    let (_, token) = env.broker.register(None).await.expect("register");
    let create = serde_json::json!({ "name": "p", "models": ["acme/m"], "platform": "sim" });
    let (status, _, body) =
        call(env.sandbox.addr(), "POST", "/pools/v1/create", Some(&token), create.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    wait_instances(&env, &token, "p", 2).await;
    let addr = env.sandbox.addr();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move { call(addr, "POST", "/pools/v1/p/invoke", None, &fake_request("acme/m")).await })
        })
        .collect();
    for c in calls {
        let (status, head, body) = c.await.expect("task");
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("x-enclava-instance: lives"), "{head}");
    }
    assert!(dead_count.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the dying instance took a request");
    assert_eq!(
        live_count.load(std::sync::atomic::Ordering::SeqCst),
        8,
        "every request was answered once, by the live one"
    );
    let v = pool_view(&env, &token, "p").await;
    assert_eq!(v["down"], serde_json::json!(["dies"]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_backend_keeps_min_starts_a_node_while_requests_wait_and_stops_it_when_idle() {
    let env = Env::with(|c| c.pool_idle_ms = 1000).await;
    let onnx = generate::tiny(41);
    env.upload("acme/auto", &onnx, &measurement()).await;
    let (owner, token) = env.broker.register(None).await.expect("register");
    let create = serde_json::json!({
        "name": "auto", "models": ["acme/auto"], "measurement": measurement(), "concurrency": 1, "min": 1, "max": 2,
    });
    let (status, _, body) =
        call(env.sandbox.addr(), "POST", "/pools/v1/create", Some(&token), create.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    // No node serves the model: the backend starts one to reach --min, and it serves.
    wait_instances(&env, &token, "auto", 1).await;
    let alice = serverless_user(&env, "acme/auto", &measurement(), true).await;
    let opts = infer::ServerlessOptions::new(format!("{}/pools/v1/auto/invoke", env.url), "acme/auto", alice);
    let x = input(2);
    assert_eq!(
        tensor(&infer::infer_serverless(&opts, &x).await.expect("served by the started node")),
        direct(&onnx, &x)
    );
    let _ = owner;

    // Another replica holds the only slot and a second request waits: the backend starts a node,
    // which takes the waiting request.
    let store: Arc<dyn enclava_pool::store::Store> =
        Arc::new(enclava_pool::role::RegistryStore(env.sandbox.registry().clone()));
    let replica =
        enclava_pool::pool::Pool::open(store, "", "auto", "test-replica", enclava_pool::pool::Pool::system_clock());
    let held = replica.acquire("acme/auto", Duration::from_secs(1)).await.expect("the slot");
    let waiting = {
        let replica = replica.clone();
        tokio::spawn(
            async move { replica.acquire("acme/auto", Duration::from_secs(20)).await.map(|l| l.instance.clone()) },
        )
    };
    let v = wait_instances(&env, &token, "auto", 2).await;
    let second = waiting.await.expect("task").expect("the waiting request got the new node");
    assert_ne!(second, held.instance, "{v}");
    held.finish().await.expect("finish");

    // Idle for the idle time: it stops the node it started beyond --min.
    wait_instances(&env, &token, "auto", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_over_grpc_create_list_invoke_rank_and_delete_with_the_rest_apis_rules() {
    use enclava_contracts::pools::v1 as pb;
    let env = Env::new().await;
    let onnx = generate::tiny(51);
    env.upload("acme/g", &onnx, &measurement()).await;
    let node = env.node("g1", &["acme/g"]).await;
    node.wait_hot("acme/g", WAIT).await.expect("hot");
    let (_, token) = env.broker.register(None).await.expect("register");
    let mut client = pb::pools_client::PoolsClient::connect(env.url.clone()).await.expect("connect");
    fn signed<T>(token: &str, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        req
    }
    let create = pb::CreateRequest {
        name: "g".into(),
        models: vec!["acme/g".into()],
        measurement: measurement(),
        ..Default::default()
    };
    let refused = client.create(tonic::Request::new(create.clone())).await.expect_err("needs a credential");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let made = client.create(signed(&token, create.clone())).await.expect("created").into_inner();
    assert_eq!((made.name.as_str(), made.concurrency, made.queue), ("g", 8, 256));
    assert_eq!(client.create(signed(&token, create)).await.expect_err("twice").code(), tonic::Code::AlreadyExists);
    wait_instances(&env, &token, "g", 1).await;
    let listed = client.list(signed(&token, pb::ListRequest {})).await.expect("list").into_inner();
    assert_eq!(listed.pools.len(), 1);
    assert_eq!(listed.pools[0].instances[0].id, node.instance_id());

    // A sealed request in the binary encoding, answered sealed: it opens to the model's output.
    let alice = serverless_user(&env, "acme/g", &measurement(), true).await;
    let x = input(4);
    let (req, pending) = infer::seal_serverless(&alice, "acme/g", &x).expect("seal");
    let answer = client
        .invoke(pb::InvokeRequest { name: "g".into(), request: req.clone().to_binary(), queue_ms: 0 })
        .await
        .expect("invoked")
        .into_inner();
    assert_eq!(answer.instance, node.instance_id());
    let resp = InferResponse::from_binary(&answer.response).expect("binary answer");
    assert_eq!(tensor(&pending.open(&resp).expect("opens")), direct(&onnx, &x));
    let bad = client
        .invoke(pb::InvokeRequest { name: "g".into(), request: b"junk".to_vec(), queue_ms: 0 })
        .await
        .expect_err("not a request");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let ranked = client
        .instances(pb::InstancesRequest { name: "g".into(), model: "acme/g".into() })
        .await
        .expect("instances")
        .into_inner();
    assert!(ranked.instances[0].hot);
    client.delete(signed(&token, pb::DeleteRequest { name: "g".into() })).await.expect("deleted");
    let gone = client.invoke(pb::InvokeRequest { name: "g".into(), request: req.to_binary(), queue_ms: 0 }).await;
    assert_eq!(gone.expect_err("deleted").code(), tonic::Code::NotFound);
}
