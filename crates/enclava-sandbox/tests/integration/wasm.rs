//! A Wasm workload served like a model: released to an attested sim node, compiled in memory,
//! run per sealed request with the input as stdin, answered sealed, with its fuel in the node's
//! usage report; a module that imports sockets never becomes hot.

use std::time::Duration;

use enclava_client::infer::{InferOptions, infer};
use enclava_sandbox::{NodeSpec, SandboxBuilder};

use crate::support::publish_workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_workload_is_served_sealed_and_metered() {
    let mut sandbox = SandboxBuilder::new().start().await.expect("starts");
    let policy = publish_workload(&sandbox, "acme/reverse", enclava_wasm::examples::REVERSE.as_bytes()).await;
    publish_workload(
        &sandbox,
        "acme/netcat",
        br#"(module (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
             (func (export "_start")))"#,
    )
    .await;
    sandbox.node(NodeSpec::new("n1").serve(&["wasm:acme/reverse", "wasm:acme/netcat"])).await.expect("node");
    let node = &sandbox.nodes()[0];
    node.wait_hot("acme/reverse", Duration::from_secs(30)).await.expect("hot");
    let refused = node.wait_hot("acme/netcat", Duration::from_secs(30)).await.expect_err("never hot");
    assert!(refused.contains("socket"), "the reason reaches the operator: {refused}");

    let opts =
        InferOptions::new(sandbox.url(), "acme/reverse", enclava_attest::Policy::parse(&policy).expect("policy"));
    let out = infer(&opts, b"!msaw morf olleh").await.expect("sealed round trip");
    assert_eq!(out.output_npy, b"hello from wasm!");
    let usage = node.usage()["acme/reverse"];
    assert_eq!(usage.invocations, 1);
    assert!(usage.units > 100, "fuel is the work unit: {}", usage.units);
    sandbox.stop().await;
}
