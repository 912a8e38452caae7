//! The farm end to end: hosts register with evidence binding their key and capacity, a submitter
//! verifies them under its policy, a confidential Wasm job runs only on a host its policy accepted
//! and comes back sealed with a receipt that verifies, a plaintext job runs sandboxed anywhere, a
//! host killed mid-job is replaced and the job ends once, and the farm server restarted loses
//! nothing.

use std::time::Duration;

use enclava_attest::Policy;
use enclava_client::ReceiptExpectations;
use enclava_client::farm::{FarmClient, Submission, accepted_hosts};
use enclava_contracts::farm::Security;
use enclava_sandbox::{NodeSpec, Sandbox, SandboxBuilder};
use zeroize::Zeroizing;

use crate::support::eventually;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs()
}

async fn submitter(sandbox: &Sandbox) -> FarmClient {
    let (_, token) = sandbox.broker().expect("keys role").register(None).await.expect("register");
    FarmClient::new(sandbox.url(), Some(Zeroizing::new(token)))
}

fn wasm<'a>(program: &'a [u8], stdin: Option<&'a [u8]>, security: Security) -> Submission<'a> {
    Submission {
        kind: "wasm",
        security,
        program,
        stdin,
        inputs: &[],
        args: &[],
        rootfs: None,
        cpu: 0.5,
        memory_bytes: 32 << 20,
        timeout: Duration::from_secs(10),
    }
}

fn shell(command: &str) -> Submission<'_> {
    Submission {
        kind: "process",
        security: Security::Plaintext,
        program: command.as_bytes(),
        stdin: None,
        inputs: &[],
        args: &[],
        rootfs: Some("busybox"),
        cpu: 0.5,
        memory_bytes: 256 << 20,
        timeout: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_jobs_run_only_where_the_policy_allows_and_come_back_sealed_with_receipts() {
    let sandbox = SandboxBuilder::new().start().await.expect("starts");
    let client = submitter(&sandbox).await;
    let (sim, sim_agent) =
        sandbox.farm_host(NodeSpec::new("sim-host"), Some("cpu=1,memory=512MiB"), &[]).await.expect("sim");
    let mut plain_spec = NodeSpec::new("plain-host");
    plain_spec.platform = "plaintext".into();
    let (plain, plain_agent) = sandbox.farm_host(plain_spec, None, &["busybox"]).await.expect("plaintext host");

    // Both hosts are listed with their platform's status in words, and load.
    let hosts = client.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let sim_view = hosts.iter().find(|h| h.id == sim.instance_id()).expect("sim listed");
    assert_eq!(sim_view.status, "Simulated TEE: testing only");
    // Its bandwidth was measured (a probe downloaded from the server), not declared.
    let measured: enclava_contracts::farm::HostCapacity = serde_json::from_str(&sim_view.capacity).expect("capacity");
    assert!(measured.bandwidth_bytes_per_s > 0, "{measured:?}");
    assert!(measured.bandwidth_how.contains("downloaded from the farm server"), "{measured:?}");
    let plain_view = hosts.iter().find(|h| h.id == plain.instance_id()).expect("plaintext listed");
    assert_eq!(plain_view.status, "Not confidential: the host can see everything");
    assert!(plain_view.evidence.is_empty());

    // Under a policy that names sim, only the sim host is accepted; the plaintext host is refused.
    let policy = Policy::parse(&sandbox.sim_policy(&[])).expect("policy");
    let verifier = Default::default();
    let (ok, refused) = accepted_hosts(&hosts, &policy, &verifier, now(), "wasm", 0.5, 32 << 20).await;
    assert_eq!(ok.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), vec![sim.instance_id()]);
    let why = &refused.iter().find(|(id, _)| id == plain.instance_id()).expect("refused").1;
    assert!(why[0].contains("cannot attest"), "{why:?}");
    // A host over its offer is not accepted for a job it cannot hold.
    let (none, _) = accepted_hosts(&hosts, &policy, &verifier, now(), "wasm", 2.0, 32 << 20).await;
    assert!(none.iter().all(|h| h.id != sim.instance_id()), "2 cores do not fit an offer of 1");
    // Under a policy that does not name sim, nothing is accepted.
    let tdx_only = Policy::parse("[tdx]\nany_measurement = true\n").expect("tdx policy");
    let (none, _) = accepted_hosts(&hosts, &tdx_only, &verifier, now(), "wasm", 0.5, 32 << 20).await;
    assert!(none.is_empty());
    // A host whose registration was changed after it was bound (another key) fails the binding.
    let mut forged = sim_view.clone();
    forged.pubkey = plain_view.pubkey.clone();
    let (none, refused) = accepted_hosts(&[forged], &policy, &verifier, now(), "wasm", 0.5, 32 << 20).await;
    assert!(none.is_empty() && !refused[0].1.is_empty(), "{refused:?}");

    // A confidential Wasm job: sealed to the sim host, run there, result sealed back.
    let program = enclava_wasm::examples::REVERSE.as_bytes();
    let job = client
        .submit_job(&wasm(program, Some(b"!laitnedifnoc"), Security::Confidential), &ok)
        .await
        .expect("submitted");
    let done = client.wait(&job.view.id, Duration::from_secs(20)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.host.as_deref(), Some(sim.instance_id()));
    let seed = job.result_seed.as_deref().expect("a confidential job keeps its result key");
    let (out, result) = client.result(&job.view.id, Some(seed)).await.expect("opens");
    assert_eq!(result.stdout, b"confidential!");
    assert!(!String::from_utf8_lossy(&out.result).contains("confidential!"), "the stored result is sealed");
    // Without the key, the stored result does not open.
    assert!(client.result(&job.view.id, None).await.is_err());
    // The files the farm stored are ciphertext: it cannot read the program.
    let stored = client.file(&enclava_contracts::farm::sha256_hex(program)).await;
    assert!(stored.is_err(), "the plaintext program was never uploaded");
    // Its arguments travel sealed too, and reach the program.
    let args = vec!["--token".to_owned(), "s3cret-arg".into()];
    let with_args =
        Submission { args: &args, ..wasm(enclava_wasm::examples::ARGS.as_bytes(), None, Security::Confidential) };
    let argued = client.submit_job(&with_args, &ok).await.expect("submitted");
    let done = client.wait(&argued.view.id, Duration::from_secs(20)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");
    let seed = argued.result_seed.as_deref().expect("key");
    let (_, result) = client.result(&argued.view.id, Some(seed)).await.expect("opens");
    assert_eq!(result.stdout, b"--token\ns3cret-arg\n");

    // Its receipt verifies under the policy, for this job, program, input and output.
    let expect = ReceiptExpectations {
        job: Some(&job.view.id),
        program_sha256: Some(&job.program_sha256),
        input_sha256: Some(&job.input_sha256),
        output: Some(&out.result),
    };
    let (receipt, claims) = enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now(), &expect)
        .await
        .expect("the receipt verifies");
    assert_eq!(receipt.host, sim.instance_id());
    assert_eq!(claims.platform.as_str(), "sim");
    assert!(receipt.fuel > 0 && receipt.bytes_out == out.result.len() as u64, "{receipt:?}");
    // One byte changed in the output, or in the receipt, is refused.
    let mut bad_output = out.result.clone();
    bad_output[10] ^= 1;
    let bad = ReceiptExpectations { output: Some(&bad_output), ..expect };
    assert!(enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now(), &bad).await.is_err());
    let mut bad_receipt = out.receipt.clone();
    bad_receipt.receipt = bad_receipt.receipt.replacen("\"fuel\":", "\"fuel\":1", 1);
    assert!(enclava_client::verify_receipt(&bad_receipt, &policy, &verifier, now(), &expect).await.is_err());
    // Any other job's receipt is refused for this one.
    let other = ReceiptExpectations { job: Some("0123456789abcdef0123456789abcdef"), ..expect };
    assert!(enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now(), &other).await.is_err());

    // A plaintext sandboxed job runs on the plaintext host (the only one with a root filesystem);
    // its receipt is the host's word only, and says so.
    let job = client
        .submit_job(&shell("echo hello from $(id -u); cat /etc/hostname 2>&1 | head -c 0"), &[])
        .await
        .expect("plaintext");
    let done = client.wait(&job.view.id, Duration::from_secs(30)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.host.as_deref(), Some(plain.instance_id()));
    let (out, result) = client.result(&job.view.id, None).await.expect("result");
    assert_eq!(String::from_utf8_lossy(&result.stdout), "hello from 1000\n");
    let why = enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now(), &ReceiptExpectations::default())
        .await
        .expect_err("a plaintext host's receipt is not vouched for");
    assert!(why[0].contains("word only"), "{why:?}");

    // With the sim host gone, a confidential job sealed to it waits: the plaintext host never
    // gets it, whatever the farm does.
    sim_agent.shutdown().await;
    sim.shutdown().await;
    let job = client.submit_job(&wasm(program, Some(b"x"), Security::Confidential), &ok).await.expect("submitted");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = client.job(&job.view.id).await.expect("status");
    assert_eq!(view.state, "queued", "{view:?}");
    assert_eq!(view.attempts, 0);
    // A submitter who cancels it is told so.
    assert_eq!(client.cancel(&job.view.id).await.expect("cancel").state, "cancelled");

    // Another user sees none of this.
    let stranger = submitter(&sandbox).await;
    assert!(stranger.job(&job.view.id).await.is_err());
    assert!(stranger.jobs().await.expect("list").is_empty());
    plain_agent.shutdown().await;
    plain.shutdown().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_job_is_replaced_and_a_restarted_farm_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let builder = || SandboxBuilder::new().dir(dir.path().join("farm")).configure(|c| c.farm_lease_ms = 600);
    let sandbox = builder().start().await.expect("starts");
    let client = submitter(&sandbox).await;
    let (a, a_agent) = sandbox.farm_host(NodeSpec::new("host-a"), None, &["busybox"]).await.expect("host a");
    let job = client.submit_job(&shell("sleep 2; echo ran once"), &[]).await.expect("submitted");
    eventually("the job runs on host a", Duration::from_secs(10), || async {
        client.job(&job.view.id).await.is_ok_and(|v| v.state == "running")
    })
    .await;
    // SIGKILL, as far as the farm can tell: the agent and node vanish without a word.
    let a_id = a.instance_id().to_owned();
    a_agent.abort();
    a.abort();
    let (b, b_agent) = sandbox.farm_host(NodeSpec::new("host-b"), None, &["busybox"]).await.expect("host b");
    let done = client.wait(&job.view.id, Duration::from_secs(30)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.host.as_deref(), Some(b.instance_id()));
    assert_eq!(done.attempts, 2, "{done:?}");
    assert!(done.reasons.iter().any(|r| r.contains("stopped renewing")), "{:?}", done.reasons);
    let (_, result) = client.result(&job.view.id, None).await.expect("result");
    assert_eq!(result.stdout, b"ran once\n");
    // Host a, restarted on its folder, reclaims its id at once with the token it kept (anyone
    // else would have to wait out the reclaim time).
    let (a, a_agent) = sandbox.farm_host(NodeSpec::new("host-a"), None, &["busybox"]).await.expect("host a again");
    assert_eq!(a.instance_id(), a_id);
    a_agent.shutdown().await;
    a.shutdown().await;
    b_agent.shutdown().await;
    b.shutdown().await;

    // Queued while no host is up, then the farm server stops and starts again on its files.
    let queued = client.submit_job(&shell("echo after the restart"), &[]).await.expect("submitted");
    sandbox.stop().await;
    let sandbox = builder().start().await.expect("restarts");
    let client = FarmClient::new(sandbox.url(), client_token(&client));
    let (c, c_agent) = sandbox.farm_host(NodeSpec::new("host-c"), None, &["busybox"]).await.expect("host c");
    let done = client.wait(&queued.view.id, Duration::from_secs(30)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.attempts, 1);
    let all = client.jobs().await.expect("list");
    assert_eq!(all.len(), 2, "no job lost or duplicated: {all:?}");
    c_agent.shutdown().await;
    c.shutdown().await;
    sandbox.stop().await;
}

fn client_token(c: &FarmClient) -> Option<Zeroizing<String>> {
    c.token().map(|t| Zeroizing::new(t.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_job_runs_in_a_plain_guest_and_no_host_here_offers_a_confidential_vm() {
    let sandbox = SandboxBuilder::new().start().await.expect("starts");
    let client = submitter(&sandbox).await;
    let mut spec = NodeSpec::new("vm-host");
    spec.platform = "plaintext".into();
    let settings = enclava_sandbox::NodeSettings { vm: true, ..Default::default() };
    let (node, agent) = sandbox.farm_host_with(spec, settings).await.expect("vm host");
    let inputs: &[(&str, &[u8])] = &[("words.txt", b"b\na\nc\n")];
    let sub = Submission {
        kind: "vm",
        inputs,
        memory_bytes: 192 << 20,
        timeout: Duration::from_secs(120),
        rootfs: None,
        ..shell("sort /in/words.txt | tr -d '\\n'; echo; uname -s")
    };
    let job = client.submit_job(&sub, &[]).await.expect("submitted");
    let done = client.wait(&job.view.id, Duration::from_secs(150)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");
    let (out, result) = client.result(&job.view.id, None).await.expect("result");
    assert_eq!(String::from_utf8_lossy(&result.stdout), "abc\nLinux\n");
    let receipt: enclava_contracts::farm::Receipt = serde_json::from_str(&out.receipt.receipt).expect("receipt");
    assert!(receipt.isolation.contains("plain VM") && receipt.isolation.starts_with("Not confidential"), "{receipt:?}");

    // A confidential VM needs SEV-SNP or TDX: no host here offers one, so nothing is sent.
    let policy = Policy::parse(&sandbox.sim_policy(&[])).expect("policy");
    let hosts = client.hosts().await.expect("hosts");
    let (ok, refused) =
        accepted_hosts(&hosts, &policy, &Default::default(), now(), "confidential-vm", 1.0, 192 << 20).await;
    assert!(ok.is_empty());
    assert!(refused[0].1[0].contains("confidential-vm"), "{refused:?}");
    agent.shutdown().await;
    node.shutdown().await;
    sandbox.stop().await;
}
