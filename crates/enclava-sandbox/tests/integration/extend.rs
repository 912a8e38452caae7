//! The system is open where it should be: a server role and a node executor that exist only in
//! this test each join with one registration line (`SandboxBuilder::role`, `NodeSpec::executor`),
//! and get everything the built-in ones get: REST under their own prefix, a part of the one
//! OpenAPI document, their health in `/health`, their metrics in `/metrics`, background tasks that
//! are drained on shutdown; attested key release, sealed requests and a usage report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::routing::get;
use enclava_core::Error;
use enclava_executor::{Executor, Limits, Loaded, Output, Usage};
use enclava_sandbox::{NodeSpec, SandboxBuilder};
use enclava_server::{Health, Role, StopSignal};
use prometheus_client::metrics::counter::Counter;
use zeroize::Zeroizing;

use crate::support::{eventually, http_get, publish_workload};

/// A role: `GET /greeter/hello`, `GET /greeter/slow` (answers after 300 ms), a counter, a ticking
/// background task, a switch for its health, and a record of being stopped.
#[derive(Debug, Default)]
struct Greeter {
    greetings: Counter,
    ticks: Arc<AtomicU64>,
    sick: Arc<AtomicBool>,
    task_ended: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Role for Greeter {
    fn name(&self) -> &'static str {
        "greeter"
    }

    fn rest(&self) -> Option<axum::Router> {
        let greetings = self.greetings.clone();
        Some(
            axum::Router::new()
                .route(
                    "/hello",
                    get(move || {
                        greetings.inc();
                        async { "hello" }
                    }),
                )
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        "finally"
                    }),
                ),
        )
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        let op = utoipa::openapi::path::OperationBuilder::new().summary(Some("Says hello")).build();
        let item = utoipa::openapi::PathItem::new(utoipa::openapi::HttpMethod::Get, op);
        let paths = utoipa::openapi::path::PathsBuilder::new().path("/hello", item).build();
        Some(utoipa::openapi::OpenApiBuilder::new().paths(paths).build())
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("greeter_greetings", "Greetings given", self.greetings.clone());
    }

    fn start(&self, mut stop: StopSignal) -> Vec<tokio::task::JoinHandle<()>> {
        let (ticks, ended) = (self.ticks.clone(), self.task_ended.clone());
        vec![tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => { ticks.fetch_add(1, Ordering::Relaxed); }
                    _ = stop.stopped() => break,
                }
            }
            ended.store(true, Ordering::Relaxed);
        })]
    }

    async fn health(&self) -> Health {
        if self.sick.load(Ordering::Relaxed) { Health::failing("the greeter lost its voice") } else { Health::ok() }
    }

    async fn stop(&self) {
        self.stopped.store(self.task_ended.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_role_joins_with_one_line() {
    let greeter = Arc::new(Greeter::default());
    let (sick, ticks, stopped) = (greeter.sick.clone(), greeter.ticks.clone(), greeter.stopped.clone());
    let sandbox = SandboxBuilder::new().role(greeter).start().await.expect("starts");
    let addr = sandbox.addr();
    assert_eq!(sandbox.roles(), ["manager", "keys", "farm", "federation", "pools", "ui", "greeter"]);

    assert_eq!(http_get(addr, "/greeter/hello").await, (200, "hello".into()));
    let (_, doc) = http_get(addr, "/openapi.json").await;
    assert!(doc.contains("\"/greeter/hello\"") && doc.contains("\"/keys/v1/grants\""), "one document: {doc}");
    assert!(doc.contains("\"/fed/v1/tasks\"") && doc.contains("\"NewTask\""), "the federation's part: {doc}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("greeter_greetings_total 1") && metrics.contains("enclava_keys_"), "{metrics}");
    eventually("the role reports healthy", Duration::from_secs(5), || async {
        let (status, body) = http_get(addr, "/health").await;
        status == 200 && body.contains("\"greeter\":{\"status\":\"ok\"}")
    })
    .await;
    sick.store(true, Ordering::Relaxed);
    eventually("/health names the failing role", Duration::from_secs(5), || async {
        let (status, body) = http_get(addr, "/health").await;
        status == 503 && body.contains("the greeter lost its voice") && body.contains("\"keys\":{\"status\":\"ok\"}")
    })
    .await;
    assert!(ticks.load(Ordering::Relaxed) > 0, "its background task runs");

    // Shutdown drains: the request in flight is answered, then the task ends, then the role stops.
    let slow = tokio::spawn(http_get(addr, "/greeter/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    sandbox.stop().await;
    assert_eq!(slow.await.expect("joined"), (200, "finally".into()));
    assert!(stopped.load(Ordering::Relaxed), "stopped after its task ended");
}

/// An executor: reverses its input; one unit of work per byte; refuses empty inputs as bad.
#[derive(Debug)]
struct Reverse;

#[derive(Debug)]
struct Reversing {
    salt: Vec<u8>,
}

impl Executor for Reverse {
    fn kind(&self) -> &'static str {
        "rev"
    }

    fn load(&self, _id: &str, bytes: Zeroizing<Vec<u8>>) -> Result<Arc<dyn Loaded>, Error> {
        Ok(Arc::new(Reversing { salt: bytes.to_vec() }))
    }

    fn limits(&self) -> Limits {
        Limits { max_input_bytes: 64, ..Limits::default() }
    }
}

impl Loaded for Reversing {
    fn memory_bytes(&self) -> u64 {
        self.salt.len() as u64
    }

    fn invoke(&self, input: &[u8]) -> Result<Output, Error> {
        if input.is_empty() {
            return Err(Error::new(enclava_core::ErrorCode::BadInput, "nothing to reverse"));
        }
        let mut out: Vec<u8> = input.iter().rev().copied().collect();
        out.extend_from_slice(&self.salt);
        Ok(Output {
            bytes: Zeroizing::new(out),
            usage: Usage { busy: Duration::from_micros(1), units: input.len() as u64 },
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_executor_joins_with_one_line() {
    use enclava_client::infer::{InferError, InferOptions, infer};
    let mut sandbox = SandboxBuilder::new().start().await.expect("starts");
    let policy = publish_workload(&sandbox, "acme/rev", b"!").await;

    let spec = NodeSpec::new("n1").serve(&["rev:acme/rev"]).executor(Arc::new(Reverse));
    sandbox.node(spec).await.expect("node");
    let node = &sandbox.nodes()[0];
    node.wait_hot("acme/rev", Duration::from_secs(30)).await.expect("hot");

    let opts = InferOptions::new(sandbox.url(), "acme/rev", enclava_attest::Policy::parse(&policy).expect("policy"));
    let out = infer(&opts, b"olleh").await.expect("sealed round trip");
    assert_eq!(out.output_npy, b"hello!", "the workload's answer, sealed back");
    let usage = node.usage()["acme/rev"];
    assert_eq!((usage.invocations, usage.units, usage.input_bytes, usage.output_bytes), (1, 5, 5, 6));

    // The executor's refusal and its limit reach the client with the same code.
    match infer(&opts, b"").await {
        Err(InferError::Refused { code, .. }) => assert_eq!(code, enclava_core::ErrorCode::BadInput),
        other => panic!("{other:?}"),
    }
    match infer(&opts, &[1; 65]).await {
        Err(InferError::Refused { code, .. }) => assert_eq!(code, enclava_core::ErrorCode::PayloadTooLarge),
        other => panic!("{other:?}"),
    }
    // A kind no executor runs is a clear configuration error.
    let e = sandbox.detached_node(NodeSpec::new("n2").serve(&["gpu:acme/rev"])).await.expect_err("unknown kind");
    assert!(e.to_string().contains("this node runs onnx"), "{e}");
    sandbox.stop().await;
}
