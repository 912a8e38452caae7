//! `enclava dev`: the whole system in one process on embedded defaults — the enclave manager and
//! the key broker on one port over the in-memory registry, a SQLite file and a local blob folder,
//! and two `sim` nodes serving a bundled model — then a demo a newcomer can follow line by line
//! (register, encrypt and upload, grant, find, verify, sealed inference in direct mode, then in
//! serverless mode with a request key), then it keeps serving and prints what to try next.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use enclava_attest::Policy;
use enclava_attest::sim::SimRoot;
use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_node::{NodeConfig, NodeHandle};
use enclava_registry::memory::MemoryRegistry;
use enclava_registry::{Keys, Registry};
use enclava_runtime::{Model, Tensor};

/// The model the demo serves: a small generated classifier (32×32×3 → 10 classes).
const DEMO_MODEL: &str = "demo/tiny-classifier";
const STEPS: usize = 8;

/// `enclava dev`
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address of the server (gRPC, REST, /health, /metrics)
    #[arg(long, env = "ENCLAVA_LISTEN", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Folder for everything the demo keeps (database, blobs, identities) [default: ./enclava-dev]
    #[arg(long, env = "ENCLAVA_DATA_DIR", default_value = "enclava-dev")]
    data_dir: PathBuf,
    /// Exit after the demo instead of serving
    #[arg(long)]
    demo_only: bool,
}

fn step(n: usize, text: &str) {
    println!("[{n}/{STEPS}] {text}");
}

async fn start_node(
    registry: Arc<dyn Registry>,
    dir: PathBuf,
    sim_root: &Path,
    broker: &str,
    blobs: &Path,
) -> anyhow::Result<NodeHandle> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = NodeConfig {
        platform: "sim".into(),
        data_dir: dir,
        data: vec![],
        advertise: None,
        sim_root: Some(sim_root.to_owned()),
        tsm_dir: None,
        serve: Some(enclava_node::serve::ServeConfig {
            key_broker: broker.to_owned(),
            blobs: blobs.to_owned(),
            models: vec![DEMO_MODEL.into()],
            memory_budget: 0,
            openwhisk: true,
        }),
    };
    Ok(enclava_node::start(config, registry, listener).await?)
}

pub async fn dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let dir = &a.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let registry: Arc<dyn Registry> =
        Arc::new(MemoryRegistry::new(Keys::new("enclava", "enclava").map_err(anyhow::Error::msg)?));
    step(1, &format!("starting the enclave manager and the key broker on {} (in-memory registry)", a.listen));
    let server_args = crate::cli::ServerArgs::default();
    let broker = Arc::new(crate::open_broker(&server_args, &dir.join("server"), &|k| std::env::var(k).ok()).await?);
    println!(
        "      key database sqlite://{}, key-encryption key in {}",
        dir.join("server/keys.db").display(),
        dir.join("server/kek.key").display()
    );
    let listener = crate::bind(&a.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let roles = enclava_server::Roles { manager: Some(registry.clone()), keys: Some(broker) };
    let server = tokio::spawn(enclava_server::serve(Default::default(), roles, listener, async {
        let _ = stop_rx.await;
    }));

    step(2, "registering a user with the key broker (enclava keys register)");
    let config_dir = dir.join("config");
    let user = match crate::keys_cli::session(&url, &config_dir) {
        Ok((_, user)) => user,
        Err(_) => crate::keys_cli::register(&url, &config_dir, None).await?,
    };
    println!("      user {user}; credential in {}", config_dir.join("credentials.json").display());

    step(3, &format!("encrypting the bundled model and uploading it as {DEMO_MODEL} (enclava model upload)"));
    let root_dir = dir.join("sim-root");
    let root = SimRoot::load_or_init(&root_dir).map_err(anyhow::Error::msg)?;
    let measurement = enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes());
    let policy_text = format!("[sim]\nroot = \"{}\"\nmeasurements = [\"{measurement}\"]\n", root.public().to_hex());
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &policy_text)?;
    let onnx = enclava_runtime::generate::tiny(1);
    let blobs = dir.join("blobs");
    let up = crate::model_cli::upload(
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
        up.blob.display()
    );
    println!(
        "      release policy: sim from this deployment's root {}…, measurement {}…",
        &root.public().to_hex()[..16],
        &measurement[..16]
    );
    println!("      (sim is a simulated TEE for testing: NOT confidential)");

    step(4, "starting two sim nodes; each fetches the model key with fresh evidence and decrypts in memory");
    let n1 = start_node(registry.clone(), dir.join("node1"), &root_dir, &url, &blobs).await?;
    let n2 = start_node(registry.clone(), dir.join("node2"), &root_dir, &url, &blobs).await?;
    for n in [&n1, &n2] {
        n.wait_hot(DEMO_MODEL, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        println!("      node {} on {}: key released, model hot", n.instance_id(), n.addr());
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
    println!(
        "demo done: register → encrypt → grant → release → find → verify → sealed inference, direct and serverless"
    );

    if !a.demo_only {
        let cfg = config_dir.display();
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
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava keys --server {url} list");
        println!("  ENCLAVA_CONFIG_DIR={cfg} enclava keys --server {url} audit --verify");
        println!("  curl {url}/openapi.json    curl {url}/metrics");
        println!("Ctrl-C to stop");
        crate::shutdown_signal().await;
    }
    n1.shutdown().await;
    n2.shutdown().await;
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(ExitCode::SUCCESS)
}
