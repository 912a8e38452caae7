//! Receipts for work done: a node signs what a Wasm run used with evidence bound to the receipt's
//! exact bytes; the submitter's check accepts it under its policy, and refuses a receipt, an output
//! or evidence changed by one byte.

use enclava_attest::Policy;
use enclava_client::ReceiptExpectations;
use enclava_contracts::farm::{Receipt, sha256_hex};
use enclava_sandbox::{NodeSpec, SandboxBuilder};
use enclava_wasm::{Job, WasmConfig, WasmEngine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_receipt_verifies_and_any_changed_byte_is_refused() {
    let mut sandbox = SandboxBuilder::new().start().await.expect("starts");
    sandbox.node(NodeSpec::new("host1")).await.expect("node");
    let node = &sandbox.nodes()[0];

    let engine = WasmEngine::new(WasmConfig { pool_instances: 4, ..WasmConfig::default() }).expect("engine");
    let program = engine.compile(enclava_wasm::examples::REVERSE.as_bytes()).expect("compiles");
    let input = b"tpiecer a htiw".to_vec();
    let job = Job { stdin: input.clone(), ..Job::default() };
    let report = tokio::task::spawn_blocking(move || engine.run(&program, job).map(|r| (r, program.digest())))
        .await
        .expect("joined")
        .expect("runs");
    let (report, digest) = report;
    assert_eq!(report.stdout.as_slice(), b"with a receipt");

    let receipt = Receipt {
        version: 1,
        job: "job-1".into(),
        host: "whatever the caller says".into(),
        platform: "tdx".into(),
        executor: "wasm".into(),
        isolation: "wasmtime: no sockets, no folders".into(),
        program_sha256: hex::encode(digest),
        input_sha256: sha256_hex(&input),
        output_sha256: sha256_hex(&report.stdout),
        bytes_in: input.len() as u64,
        bytes_out: report.stdout.len() as u64,
        fuel: report.fuel_used,
        wall_ms: report.wall.as_millis() as u64,
        peak_memory_bytes: report.peak_memory_bytes,
        outcome: report.outcome.to_string(),
        issued_at: 0,
    };
    let signed = node.issue_receipt(receipt).expect("signed");
    let policy = Policy::parse(&sandbox.sim_policy(&[])).expect("policy");
    let verifier = Default::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();

    let program = hex::encode(digest);
    let expect = ReceiptExpectations {
        job: Some("job-1"),
        program_sha256: Some(&program),
        input_sha256: None,
        output: Some(&report.stdout),
    };
    let (r, claims) = enclava_client::verify_receipt(&signed, &policy, &verifier, now, &expect)
        .await
        .expect("a genuine receipt verifies");
    assert_eq!((r.host.as_str(), r.platform.as_str()), (node.instance_id(), "sim"), "the node names itself");
    assert_eq!(r.fuel, report.fuel_used);
    assert_eq!(claims.measurement_hex(), node.measurement());

    // One byte changed anywhere is refused.
    let mut forged = signed.clone();
    forged.receipt = forged.receipt.replace(&format!("\"fuel\":{}", r.fuel), &format!("\"fuel\":{}", r.fuel + 1));
    assert_ne!(forged.receipt, signed.receipt);
    let e = enclava_client::verify_receipt(&forged, &policy, &verifier, now, &Default::default())
        .await
        .expect_err("forged receipt");
    assert!(e.iter().any(|f| f.contains("report data")), "{e:?}");

    let mut other = report.stdout.to_vec();
    other[0] ^= 1;
    let wrong_output = ReceiptExpectations { output: Some(&other), ..expect };
    let e = enclava_client::verify_receipt(&signed, &policy, &verifier, now, &wrong_output).await.expect_err("output");
    assert!(e.iter().any(|f| f.contains("output")), "{e:?}");
    // A genuine receipt for another job is not this job's.
    let other_job = ReceiptExpectations { job: Some("job-2"), ..expect };
    let e = enclava_client::verify_receipt(&signed, &policy, &verifier, now, &other_job).await.expect_err("job");
    assert!(e.iter().any(|f| f.contains("job-1")), "{e:?}");

    let mut bad_evidence = signed.clone();
    let last = bad_evidence.evidence.len() - 1;
    bad_evidence.evidence[last] ^= 1;
    assert!(enclava_client::verify_receipt(&bad_evidence, &policy, &verifier, now, &expect).await.is_err());

    // A policy that does not name sim never believes a sim host.
    let strict = Policy::parse("[tdx]\nany_measurement = true\n").expect("policy");
    let e = enclava_client::verify_receipt(&signed, &strict, &verifier, now, &expect).await.expect_err("sim refused");
    assert!(e.iter().any(|f| f.contains("not allowed")), "{e:?}");
    sandbox.stop().await;
}
