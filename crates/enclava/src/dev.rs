//! `enclava dev`: the whole system in one process on embedded defaults, started by the sandbox
//! builder (the same wiring as `enclava server` and the tests) — the enclave manager and the key
//! broker on one port over the in-memory registry, a SQLite file and a local blob folder, and two
//! `sim` nodes serving a bundled model — then a demo a newcomer can follow line by line
//! (register, encrypt and upload, grant, find, verify, sealed inference in direct mode, then in
//! serverless mode with a request key), then it keeps serving and prints what to try next.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use enclava_attest::Policy;
use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_runtime::{Model, Tensor};
use enclava_sandbox::{NodeSpec, SandboxBuilder};

/// The model the demo serves: a small generated classifier (32×32×3 → 10 classes).
const DEMO_MODEL: &str = "demo/tiny-classifier";
/// The Wasm workload the demo serves beside it: a WASI command that reverses its input.
const DEMO_WASM: &str = "demo/reverse";
const STEPS: usize = 13;

/// `enclava dev`: the server's options (flags, `ENCLAVA_*`, the config file's `[server]` table)
/// apply, with `--data-dir` the folder for everything the demo keeps [default: ./enclava-dev].
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    server: crate::cli::ServerArgs,
    /// Exit after the demo instead of serving
    #[arg(long)]
    demo_only: bool,
}

fn step(n: usize, text: &str) {
    println!("[{n}/{STEPS}] {text}");
}

pub async fn dev(
    a: DevArgs,
    file: enclava_sandbox::ServerConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> anyhow::Result<ExitCode> {
    let mut config = a.server.over(file);
    let dir = config.data_dir.clone().unwrap_or_else(|| PathBuf::from("enclava-dev"));
    config.data_dir = Some(dir.join("server"));
    // The demo needs every role, whatever the file says.
    config.roles =
        vec!["manager".into(), "keys".into(), "farm".into(), "federation".into(), "pools".into(), "ui".into()];
    let listen = config.listen.clone();
    let registry = config.registry.clone();
    let database = config.database.clone();
    let env: enclava_sandbox::Env = {
        let vars: std::collections::HashMap<String, String> =
            ["ENCLAVA_KEK"].iter().filter_map(|k| Some((k.to_string(), env(k)?))).collect();
        Arc::new(move |k| vars.get(k).cloned())
    };
    step(1, &format!("starting the enclave manager, the key broker and the farm on {listen} (registry {registry})"));
    let mut sandbox = SandboxBuilder::new().config(config).dir(&dir).env(env).start().await?;
    let url = sandbox.url().to_owned();
    println!(
        "      key database {}, key-encryption key in {}",
        database.unwrap_or_else(|| format!("sqlite://{}", dir.join("server/keys.db").display())),
        dir.join("server/kek.key").display()
    );

    step(2, "registering a user with the key broker (enclava keys register)");
    let config_dir = dir.join("config");
    let user = match crate::keys_cli::session(&url, &config_dir) {
        Ok((_, user)) => user,
        Err(_) => crate::keys_cli::register(&url, &config_dir, None).await?,
    };
    println!("      user {user}; credential in {}", config_dir.join("credentials.json").display());

    step(3, &format!("encrypting the bundled model and uploading it as {DEMO_MODEL} (enclava model upload)"));
    let root = sandbox.sim_root();
    let measurement = enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes());
    let policy_text = format!("[sim]\nroot = \"{}\"\nmeasurements = [\"{measurement}\"]\n", root.public().to_hex());
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &policy_text)?;
    let onnx = enclava_runtime::generate::tiny(1);
    let blobs = sandbox.blobs();
    let (up, _) = crate::model_cli::upload(
        &url,
        &config_dir,
        &blobs,
        DEMO_MODEL,
        &onnx,
        Some(&policy_text),
        std::slice::from_ref(&measurement),
    )
    .await?;
    println!(
        "      {} bytes of ONNX → {} bytes, AES-256-GCM, key version {}, in {}",
        onnx.len(),
        up.package_len,
        up.version,
        blobs.join(&up.blob).display()
    );
    println!(
        "      release policy: sim from this deployment's root {}…, measurement {}…",
        &root.public().to_hex()[..16],
        &measurement[..16]
    );
    println!("      (sim is a simulated TEE for testing: NOT confidential)");
    let wasm = enclava_wasm::examples::REVERSE.as_bytes();
    let (up, _) = crate::model_cli::upload(
        &url,
        &config_dir,
        &blobs,
        DEMO_WASM,
        wasm,
        Some(&policy_text),
        std::slice::from_ref(&measurement),
    )
    .await?;
    println!(
        "      and a Wasm workload, {DEMO_WASM}: {} bytes → {} bytes, key version {}",
        wasm.len(),
        up.package_len,
        up.version
    );

    step(4, "starting two sim nodes; each fetches the keys with fresh evidence and decrypts in memory");
    let wasm_ref = format!("wasm:{DEMO_WASM}");
    for name in ["node1", "node2"] {
        sandbox.node(NodeSpec::new(name).serve(&[DEMO_MODEL, &wasm_ref]).openwhisk()).await?;
    }
    let (n1, n2) = (&sandbox.nodes()[0], &sandbox.nodes()[1]);
    for n in [n1, n2] {
        n.wait_hot(DEMO_MODEL, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        n.wait_hot(DEMO_WASM, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        println!(
            "      node {} on {}: keys released, {DEMO_MODEL} (onnx) and {DEMO_WASM} (wasm) hot",
            n.instance_id(),
            n.addr()
        );
    }

    step(5, &format!("finding an enclave serving {DEMO_MODEL} and verifying its evidence (seed note 3)"));
    let mut client = ManagerClient::connect(&url).await?;
    let req = FindEnclaveRequest { dataaccess: DEMO_MODEL.into(), limit: 2, ..Default::default() };
    let mut found = Vec::new();
    for _ in 0..100 {
        found = client.find(req.clone()).await?.found;
        if found.len() == 2 && found.iter().all(|e| e.hot) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(!found.is_empty(), "the manager found no enclave serving {DEMO_MODEL}");
    let policy = Policy::parse(&policy_text).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    for e in &found {
        match enclava_client::verify_enclave(e, &policy, &Default::default(), now).await {
            Ok(c) => println!(
                "      {}: platform {}, measurement {}…, evidence binds its request key {}… — accepted",
                e.instance_id,
                c.platform,
                &c.measurement_hex()[..16],
                hex::encode(&e.pubkey[..8])
            ),
            Err(reasons) => anyhow::bail!("{} refused: {}", e.instance_id, reasons.join("; ")),
        }
    }

    step(6, "sealed inference: input sealed to the verified enclave's key, answer sealed back (enclava infer)");
    let input = enclava_runtime::generate::sample_input(&[1, 3, 32, 32], 7).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(dir.join("input.npy"), input.to_npy())?;
    let opts = enclava_client::infer::InferOptions::new(url.clone(), DEMO_MODEL, policy);
    let out = enclava_client::infer::infer(&opts, &input.to_npy()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let output = Tensor::from_npy(&out.output_npy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let top: Vec<String> = output.top_k(3).iter().map(|(i, p)| format!("class {i} ({p:.4})")).collect();
    println!("      ran on {} ({}); top: {}", out.instance_id, out.platform, top.join(", "));

    step(7, "checking the answer against the same model run directly with tract");
    let local =
        Model::load(&onnx).map_err(|e| anyhow::anyhow!("{e}"))?.run(&input).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        local.first().map(|t| t.data()) == Some(output.data()),
        "the sealed answer differs from a local run"
    );
    println!("      identical: {} outputs", output.data().len());

    step(
        8,
        "serverless mode (MOSS): sealed with your request key; the node fetches it from the key broker with evidence",
    );
    let (rest, _) = crate::keys_cli::session(&url, &config_dir)?;
    let key_file = match crate::keys_cli::upload_request_key(&rest, &config_dir, DEMO_MODEL, &measurement, None).await?
    {
        Some(p) => p,
        None => anyhow::bail!("the request key was not kept"),
    };
    println!(
        "      request key for {DEMO_MODEL} on measurement {}… kept in {}",
        &measurement[..16],
        key_file.display()
    );
    let key = crate::keys_cli::read_request_key(&key_file)?;
    let endpoint = format!("http://{}{}", n2.addr(), enclava_client::infer::PATH);
    let user_key = enclava_client::infer::UserKey::new(user.clone(), &measurement, &key);
    let sl = enclava_client::infer::ServerlessOptions::new(endpoint.clone(), DEMO_MODEL, user_key);
    let out =
        enclava_client::infer::infer_serverless(&sl, &input.to_npy()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let served = Tensor::from_npy(&out).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(served.data() == output.data(), "the serverless answer differs from the direct one");
    println!("      sent to {endpoint} (the platform's choice, not verified by the client); identical answer");

    step(9, "a function pool (MOSS's FnPacker, done properly): requests go where their model is hot (enclava pool)");
    pool_demo(&sandbox, &url, &config_dir, &measurement, &sl, &input.to_npy(), output.data()).await?;

    step(10, &format!("a Wasm workload ({DEMO_WASM}): sealed in, run by wasmtime with fuel metering, sealed out"));
    let policy = Policy::parse(&policy_text).map_err(anyhow::Error::msg)?;
    let wopts = enclava_client::infer::InferOptions::new(url.clone(), DEMO_WASM, policy);
    let said = b"!msaw morf olleh";
    let out = enclava_client::infer::infer(&wopts, said).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = sandbox.nodes().iter().find(|n| n.instance_id() == out.instance_id);
    let fuel = node.and_then(|n| n.usage().get(DEMO_WASM).map(|u| u.units)).unwrap_or(0);
    println!(
        "      {:?} → {:?} on {} ({}): {fuel} units of fuel; no sockets linked, no folders opened",
        String::from_utf8_lossy(said),
        String::from_utf8_lossy(&out.output_npy),
        out.instance_id,
        out.platform
    );

    step(11, "the farm: a confidential Wasm job on a sim host, a sandboxed plaintext job and a VM job, with receipts");
    let farm_policy = dir.join("farm-policy.toml");
    // Any sim host of this deployment: the farm hosts run the node program, not the model.
    std::fs::write(&farm_policy, sandbox.sim_policy(&[]))?;
    let farm = farm_demo(&sandbox, &url, &config_dir, &farm_policy).await?;

    step(12, "federation (vantage6): a mean over a CSV split across three organisations, each input sealed to its own");
    let fed_nodes = fed_demo(&sandbox, &url, &dir, &user).await?;
    step(13, "the dashboard: every enclave and what its evidence proved, your models, the farm, federation and pools");
    let http = enclava_client::infer::http_client(Duration::from_secs(3));
    let (status, body) =
        enclava_client::infer::get_with(&http, &format!("{url}/ui/api/enclaves"), Duration::from_secs(10)).await?;
    anyhow::ensure!(status == 200, "the dashboard answered {status}");
    let listed: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "      {url}/ui lists {} live enclaves (first screen served in {:.1} ms); sign in there with the token in {}",
        listed["items"].as_array().map_or(0, Vec::len),
        listed["servedMs"].as_f64().unwrap_or(0.0),
        config_dir.join("credentials.json").display()
    );
    println!(
        "demo done: register → encrypt → grant → release → find → verify → sealed inference, direct and serverless, ONNX and Wasm; a function pool; farm jobs with verified receipts; a federated mean sealed end to end; the dashboard"
    );

    if !a.demo_only {
        let cfg = config_dir.display();
        println!("\ndashboard: {url}/ui (sign in with the token in {}/credentials.json)", cfg);
        println!("\nserving; try, in another terminal:");
        println!(
            "  enclava infer --server {url} --model {DEMO_MODEL} --input {} --policy {}",
            dir.join("input.npy").display(),
            policy_path.display()
        );
        println!(
            "  ENCLAVA_CONFIG_DIR={cfg} enclava infer --server {url} --model {DEMO_MODEL} --input {} --serverless {endpoint}",
            dir.join("input.npy").display()
        );
        println!(
            "  enclava find --server {url} --data {DEMO_MODEL} --limit 2 --verify --policy {}",
            policy_path.display()
        );
        println!(
            "  ENCLAVA_CONFIG_DIR={cfg} enclava infer --server {url} --model {DEMO_MODEL} --input {} --pool demo",
            dir.join("input.npy").display()
        );
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava pool --server {url} list");
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava keys --server {url} list");
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava keys --server {url} audit --verify");
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava hosts --server {url} --policy {}", farm_policy.display());
        println!(
            "  ENCLAVA_CONFIG_DIR={cfg} enclava job --server {url} submit --plaintext --cmd 'uname -a; id' --wait"
        );
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava job --server {url} list");
        println!("  curl {url}/openapi.json    curl {url}/metrics");
        println!("Ctrl-C to stop");
        crate::shutdown_signal().await;
    }
    for (node, agent) in farm {
        agent.shutdown().await;
        node.shutdown().await;
    }
    for node in fed_nodes {
        node.shutdown().await;
    }
    sandbox.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Step 9: a pool over the two nodes (by measurement); sequential serverless requests through it
/// all go to the node where the model is hot, and `pool list` shows it.
async fn pool_demo(
    sandbox: &enclava_sandbox::Sandbox,
    url: &str,
    config_dir: &std::path::Path,
    measurement: &str,
    direct: &enclava_client::infer::ServerlessOptions,
    input_npy: &[u8],
    expected: &[f32],
) -> anyhow::Result<()> {
    let token = crate::keys_cli::token(url, config_dir)?;
    let pools = enclava_client::pools::PoolClient::new(url, Some(token));
    let spec = serde_json::json!({ "name": "demo", "models": [DEMO_MODEL], "measurement": measurement });
    pools.create(&spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut view = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        view = pools.list().await.map_err(|e| anyhow::anyhow!("{e}"))?.into_iter().next().unwrap_or_default();
        if view["status"]["instances"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "      pool demo: {} instance(s) with measurement {}… serving {DEMO_MODEL} (enclava pool create demo --models {DEMO_MODEL} --select measurement=…)",
        view["status"]["instances"].as_array().map_or(0, Vec::len),
        &measurement[..16]
    );
    let before: Vec<u64> = sandbox.nodes().iter().map(|n| n.metrics().requests.get()).collect();
    let mut opts = direct.clone();
    opts.endpoint = enclava_client::pools::invoke_url(url, "demo");
    for _ in 0..5 {
        let out =
            enclava_client::infer::infer_serverless(&opts, input_npy).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let served = Tensor::from_npy(&out).map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(served.data() == expected, "the pool's answer differs from the direct one");
    }
    let took: Vec<String> = sandbox
        .nodes()
        .iter()
        .zip(before)
        .map(|(n, b)| format!("{} served {}", n.instance_id(), n.metrics().requests.get() - b))
        .collect();
    println!("      5 sequential sealed requests through {}: {}; identical answers", opts.endpoint, took.join(", "));
    let view = pools.list().await.map_err(|e| anyhow::anyhow!("{e}"))?.into_iter().next().unwrap_or_default();
    let m = &view["status"]["models"][DEMO_MODEL];
    println!(
        "      scaling signal (enclava pool list, /metrics enclava_pool_*): {} in flight, {} queued, hot on {} instance(s)",
        m["in_flight"], m["queued"], m["hot_on"]
    );
    // The local backend: a pool that wants three instances gets a third node started for it.
    let spec =
        serde_json::json!({ "name": "scaled", "models": [DEMO_MODEL], "measurement": measurement, "min": 3, "max": 4 });
    pools.create(&spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut instances = 0;
    while tokio::time::Instant::now() < deadline {
        let listed = pools.list().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let scaled = listed.iter().find(|p| p["spec"]["name"] == "scaled");
        instances = scaled.and_then(|p| p["status"]["instances"].as_array().map(Vec::len)).unwrap_or(0);
        if instances == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(instances == 3, "the local backend did not bring pool scaled to 3 instances ({instances})");
    println!(
        "      pool scaled (--min 3 --max 4): the local backend started a third node for it; it starts more while \
         requests wait and stops what it started after 30 s idle"
    );
    pools.delete("scaled").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Step 11: two farm hosts (sim, and plaintext when this machine has a process sandbox), a
/// confidential Wasm job and a plaintext sandboxed job, each with its receipt checked.
async fn farm_demo(
    sandbox: &enclava_sandbox::Sandbox,
    url: &str,
    config_dir: &std::path::Path,
    policy_path: &std::path::Path,
) -> anyhow::Result<Vec<(enclava_node::NodeHandle, enclava_host::HostAgent)>> {
    use enclava_client::farm::{FarmClient, Submission, accepted_hosts};
    use enclava_contracts::farm::{Security, security_status};
    let mut hosts_started = Vec::new();
    let (sim, agent) = sandbox.farm_host(NodeSpec::new("farm-sim"), Some("cpu=1,memory=512MiB"), &[]).await?;
    let sim_id = sim.instance_id().to_owned();
    hosts_started.push((sim, agent));
    let sandboxed = enclava_process::ProcessSandbox::find().is_ok() && std::path::Path::new("/bin/busybox").exists();
    let mut plain_spec = NodeSpec::new("farm-plain");
    plain_spec.platform = "plaintext".into();
    let vm = enclava_vm::VmLauncher::find(None);
    let plain = if sandboxed {
        let settings = enclava_sandbox::NodeSettings {
            offer: Some("cpu=1,memory=512MiB".into()),
            rootfs: vec!["busybox".into()],
            vm: vm.is_ok(),
            ..Default::default()
        };
        let (plain, agent) = sandbox.farm_host_with(plain_spec, settings).await?;
        let platform = plain.platform().to_owned();
        hosts_started.push((plain, agent));
        Some(platform)
    } else {
        println!(
            "      (no bubblewrap or static busybox here: the plaintext sandboxed host is skipped; `.ci/run` installs them)"
        );
        None
    };
    let client = FarmClient::new(url, Some(crate::keys_cli::token(url, config_dir)?));
    let policy = Policy::load(policy_path).map_err(anyhow::Error::msg)?;
    let verifier = enclava_collateral::EvidenceVerifier::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let hosts = client.hosts().await.map_err(crate::keys_cli::said)?;
    for h in &hosts {
        println!("      host {} [{}]: {}", h.id, h.platform, h.status);
    }
    let (ok, refused) = accepted_hosts(&hosts, &policy, &verifier, now, "wasm", 0.5, 32 << 20).await;
    for (id, why) in &refused {
        println!("      host {id} refused for confidential work: {}", why.join("; "));
    }
    let program = enclava_wasm::examples::REVERSE.as_bytes();
    let sub = Submission {
        kind: "wasm",
        security: Security::Confidential,
        program,
        stdin: Some(b"!laitnedifnoc dna dedaol-erp"),
        inputs: &[],
        args: &[],
        rootfs: None,
        cpu: 0.5,
        memory_bytes: 32 << 20,
        timeout: Duration::from_secs(30),
    };
    let job = client.submit_job(&sub, &ok).await.map_err(crate::keys_cli::said)?;
    let done = client.wait(&job.view.id, Duration::from_secs(60)).await.map_err(crate::keys_cli::said)?;
    let (out, result) = client.result(&job.view.id, job.result_seed.as_deref()).await.map_err(crate::keys_cli::said)?;
    let expect = enclava_client::ReceiptExpectations {
        job: Some(&job.view.id),
        program_sha256: Some(&job.program_sha256),
        input_sha256: Some(&job.input_sha256),
        output: Some(&out.result),
    };
    let (receipt, _) = enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now, &expect)
        .await
        .map_err(|r| anyhow::anyhow!("the receipt did not verify: {}", r.join("; ")))?;
    println!(
        "      confidential job {} on {} ({}): {} → {:?}; receipt VERIFIED ({} fuel, {} ms, output sealed to you)",
        done.id,
        receipt.host,
        security_status(&receipt.platform),
        done.state,
        String::from_utf8_lossy(&result.stdout),
        receipt.fuel,
        receipt.wall_ms
    );
    debug_assert_eq!(receipt.host, sim_id);
    if let Some(plain) = plain {
        let command = "echo sandboxed as uid $(id -u); ls /";
        let sub = Submission {
            kind: "process",
            security: Security::Plaintext,
            program: command.as_bytes(),
            rootfs: Some("busybox"),
            memory_bytes: 256 << 20,
            stdin: None,
            ..sub
        };
        let job = client.submit_job(&sub, &[]).await.map_err(crate::keys_cli::said)?;
        let done = client.wait(&job.view.id, Duration::from_secs(60)).await.map_err(crate::keys_cli::said)?;
        let (out, result) = client.result(&job.view.id, None).await.map_err(crate::keys_cli::said)?;
        let verdict = enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now, &Default::default()).await;
        println!(
            "      plaintext job {} on {} ({}): {} → {:?}; receipt: {}",
            done.id,
            done.host.as_deref().unwrap_or("-"),
            security_status(&plain),
            done.state,
            String::from_utf8_lossy(&result.stdout).replace('\n', " "),
            match verdict {
                Ok(_) => "verified".to_owned(),
                Err(r) => r.join("; "),
            }
        );
        match &vm {
            Ok(_) => {
                let sub = Submission { kind: "vm", rootfs: None, timeout: Duration::from_secs(120), ..sub };
                let sub = Submission { program: b"echo a VM of its own: $(uname -sr)", ..sub };
                let job = client.submit_job(&sub, &[]).await.map_err(crate::keys_cli::said)?;
                let done = client.wait(&job.view.id, Duration::from_secs(180)).await.map_err(crate::keys_cli::said)?;
                let (_, result) = client.result(&job.view.id, None).await.map_err(crate::keys_cli::said)?;
                println!(
                    "      VM job {} (qemu, TCG; not confidential): {} → {:?}; a confidential VM needs SEV-SNP or TDX{}",
                    done.id,
                    done.state,
                    String::from_utf8_lossy(&result.stdout).trim(),
                    if enclava_vm::detect().is_some() { "" } else { ", which this host does not have" }
                );
            }
            Err(e) => println!("      (no VM jobs here: {e})"),
        }
    }
    Ok(hosts_started)
}

/// The demo's organisations and their share of the trial data (a value per line).
const FED_SHARES: [(&str, &str); 3] = [("acme", "61\n74\n58\n"), ("globex", "80\n67\n"), ("initech", "55\n70\n71\n")];

/// The demo's algorithm: a sandboxed process at each node, the partial sum and count of its
/// `trial` database.
const FED_PARTIAL: &str = r#"awk '{ s += $1; n += 1 } END { printf "{\"sum\": %d, \"count\": %d}", s, n }' "$TRIAL_DATABASE_URI" > "$OUTPUT_FILE""#;

/// Step 12: three organisations with a node each in collaboration `demo`, the demo user as a
/// researcher of the first; a task whose inputs are sealed to each organisation and whose
/// results come back sealed to the user. Re-running reuses what the last run made.
async fn fed_demo(
    sandbox: &enclava_sandbox::Sandbox,
    url: &str,
    dir: &std::path::Path,
    user: &str,
) -> anyhow::Result<Vec<enclava_host::fed::FedNode>> {
    use enclava_client::fed::{FedClient, TaskRequest};
    use enclava_core::ErrorCode;
    let said = crate::keys_cli::said;
    let fed_dir = dir.join("federation");
    std::fs::create_dir_all(&fed_dir)?;
    let admin_file = fed_dir.join("admin-credential");
    let admin_token = match std::fs::read_to_string(&admin_file) {
        Ok(t) => t.trim().to_owned(),
        Err(_) => {
            let t = sandbox.admin().await?;
            crate::keys_cli::write_private(&admin_file, t.as_bytes())?;
            t
        }
    };
    let admin = FedClient::new(url, Some(zeroize::Zeroizing::new(admin_token)));
    for (org, _) in FED_SHARES {
        match admin.create_organisation(org).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => return Err(said(e)),
        }
    }
    admin.add_member("acme", user, &["researcher"]).await.map_err(said)?;
    let collab = match admin
        .create_collaboration(&enclava_contracts::fed::NewCollaboration {
            name: "demo".into(),
            organisations: FED_SHARES.iter().map(|(o, _)| o.to_string()).collect(),
            encrypted: true,
            require_attestation: None,
        })
        .await
    {
        Ok(c) => c,
        Err(e) if e.code == ErrorCode::AlreadyExists => admin.collaboration("demo").await.map_err(said)?,
        Err(e) => return Err(said(e)),
    };
    let sandboxed = enclava_process::ProcessSandbox::find().is_ok() && std::path::Path::new("/bin/busybox").exists();
    if !sandboxed {
        println!(
            "      (no bubblewrap or static busybox here: the federation step is skipped; `.ci/run` installs them)"
        );
        return Ok(Vec::new());
    }
    // vantage6 Python algorithms, where this machine has what they need: the local proxy (which
    // opens a port inside each sandbox, so the node runs as root) and vantage6-algorithm-tools.
    let v6 = if enclava_process::running_as_root() {
        enclava_sandbox::Vantage6Python::find()
    } else {
        Err("the local proxy needs root".into())
    };
    let algorithms = fed_dir.join("algorithms");
    if v6.is_ok() {
        std::fs::create_dir_all(algorithms.join("v6_mean"))?;
        std::fs::write(algorithms.join("v6_mean/__init__.py"), enclava_sandbox::VANTAGE6_EXAMPLE)?;
    }
    let mut nodes = Vec::new();
    for (org, share) in FED_SHARES {
        let node_dir = fed_dir.join(org);
        std::fs::create_dir_all(&node_dir)?;
        let key_file = node_dir.join("api-key");
        if !key_file.exists() {
            let created = admin
                .create_node(&enclava_contracts::fed::NewNode {
                    collaboration: collab.id.clone(),
                    organisation: Some(org.into()),
                    name: Some(format!("{org}-node")),
                })
                .await
                .map_err(said)?;
            crate::keys_cli::write_private(&key_file, created.api_key.as_bytes())?;
        }
        let data = node_dir.join("trial.csv");
        std::fs::write(&data, share)?;
        let api_key = zeroize::Zeroizing::new(std::fs::read_to_string(&key_file)?.trim().to_owned());
        let mut config = enclava_host::fed::FedNodeConfig::new(url, api_key, &node_dir);
        config.data.insert("trial".into(), data);
        config.rootfs =
            Some(enclava_process::busybox_root(&node_dir.join("fs"), enclava_sandbox::BUSYBOX_APPLETS).map_err(said)?);
        if let (Ok(v6), Some(rootfs)) = (&v6, &config.rootfs) {
            config.mounts = v6.mounts(rootfs, &algorithms)?;
            let cohort = node_dir.join("cohort.csv");
            std::fs::write(&cohort, format!("value\n{share}"))?;
            config.data.insert("cohort".into(), cohort);
        }
        nodes.push(enclava_host::fed::FedNode::start(config).await.map_err(said)?);
        println!(
            "      {org}: node up with {} rows of its own (never sent anywhere); its organisation key stays in {}",
            share.lines().count(),
            node_dir.join("organisation.key").display()
        );
    }
    let me = FedClient::new(url, Some(crate::keys_cli::token(url, &dir.join("config"))?));
    let inputs: Vec<(&str, serde_json::Value)> = FED_SHARES
        .iter()
        .map(|(o, _)| (*o, serde_json::json!({ "method": "partial_mean", "kwargs": { "column": 0 } })))
        .collect();
    let request = TaskRequest {
        collaboration: &collab.id,
        name: "federated mean",
        kind: "process",
        algorithm: FED_PARTIAL.as_bytes(),
        inputs: &inputs,
        databases: &["trial"],
        readable: false,
        policy: None,
        parent: None,
    };
    let (task, seed) = me.start_task(&request).await.map_err(said)?;
    let done = me.wait(&task.id, Duration::from_secs(120)).await.map_err(said)?;
    let runs = me.runs(&task.id).await.map_err(said)?;
    let names: std::collections::BTreeMap<String, String> =
        me.organisations().await.map_err(said)?.into_iter().map(|o| (o.id, o.name)).collect();
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    for r in &runs {
        println!(
            "      {}: run {} {}; the server holds its input and result only sealed ({} bytes of ciphertext)",
            name(&r.organisation.id),
            r.id,
            r.status,
            r.result.len()
        );
    }
    anyhow::ensure!(done.status == "completed", "the federated task ended {}: {:?}", done.status, runs);
    let (mut sum, mut count) = (0i64, 0i64);
    for o in me.results(&task.id, &seed, false, None).await.map_err(said)? {
        let v: serde_json::Value = serde_json::from_slice(o.result.as_deref().unwrap_or_default())?;
        let (s, n) = (v["sum"].as_i64().unwrap_or(0), v["count"].as_i64().unwrap_or(0));
        println!("      you opened {}'s result: sum {s} over {n} rows", name(&o.organisation));
        sum += s;
        count += n;
    }
    anyhow::ensure!(count > 0, "no rows came back");
    for (org, checks) in me.test_features(&collab.id, &["trial"], None).await.map_err(said)? {
        match checks {
            Ok(v) => println!("      feature test at {}: {v}", name(&org)),
            Err(why) => println!("      feature test at {}: did not run: {why}", name(&org)),
        }
    }
    println!(
        "      federated mean: {sum} / {count} = {:.2} (no organisation saw another's rows)",
        sum as f64 / count as f64
    );
    match &v6 {
        Ok(v6) => {
            let command = v6.command("v6_mean");
            let first = FED_SHARES[0].0;
            let inputs = [(first, serde_json::json!({"method": "central", "kwargs": {"column": "value"}}))];
            let request = TaskRequest {
                name: "vantage6 mean",
                algorithm: command.as_bytes(),
                inputs: &inputs,
                databases: &["cohort"],
                ..request
            };
            let (task, seed) = me.start_task(&request).await.map_err(said)?;
            let done = me.wait(&task.id, Duration::from_secs(180)).await.map_err(said)?;
            anyhow::ensure!(
                done.status == "completed",
                "the vantage6 task ended {}: {:?}",
                done.status,
                me.runs(&task.id).await.map_err(said)?
            );
            let out = me.results(&task.id, &seed, false, None).await.map_err(said)?;
            let v: serde_json::Value = serde_json::from_slice(out[0].result.as_deref().unwrap_or_default())?;
            println!(
                "      vantage6 algorithm (Python, vantage6-algorithm-tools {}, unchanged): `central` at {first} made a \
                 subtask at {} organisations through its node's local proxy, inputs sealed there per organisation: \
                 mean {:.2} over {} rows",
                enclava_sandbox::VANTAGE6_TOOLS,
                v["organisations"],
                v["mean"].as_f64().unwrap_or(f64::NAN),
                v["count"]
            );
        }
        Err(why) => println!("      (the vantage6 Python algorithm is not shown: {why})"),
    }
    Ok(nodes)
}
