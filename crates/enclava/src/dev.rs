//! `enclava dev`: the whole system in one process on embedded defaults — the enclave manager on the
//! in-memory registry and two `sim` nodes with their identities under a data folder — then a demo a
//! newcomer can follow line by line, then it keeps serving and prints what to try next.

use std::path::PathBuf;
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

/// The data id the demo nodes serve.
const DEMO_DATA: &str = "demo/mobilenet";

/// `enclava dev`
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address of the enclave manager (gRPC, /health, /metrics)
    #[arg(long, env = "ENCLAVA_LISTEN", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Folder for the nodes' sealed identities [default: ./enclava-dev]
    #[arg(long, env = "ENCLAVA_DATA_DIR", default_value = "enclava-dev")]
    data_dir: PathBuf,
    /// Exit after the demo instead of serving
    #[arg(long)]
    demo_only: bool,
}

fn step(n: usize, text: &str) {
    println!("[{n}/5] {text}");
}

async fn start_node(
    registry: Arc<dyn Registry>,
    dir: PathBuf,
    sim_root: PathBuf,
    hot: bool,
) -> anyhow::Result<NodeHandle> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = NodeConfig {
        platform: "sim".into(),
        data_dir: dir,
        data: vec![DEMO_DATA.into()],
        advertise: None,
        sim_root: Some(sim_root),
    };
    let node = enclava_node::start(config, registry, listener).await?;
    node.set_data(DEMO_DATA, hot)?;
    Ok(node)
}

pub async fn dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let registry: Arc<dyn Registry> =
        Arc::new(MemoryRegistry::new(Keys::new("enclava", "enclava").map_err(anyhow::Error::msg)?));
    step(1, &format!("starting the enclave manager on {} (in-memory registry)", a.listen));
    let listener = crate::bind(&a.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(enclava_server::serve(
        Default::default(),
        enclava_server::Roles::manager(registry.clone()),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));

    step(2, &format!("starting two sim nodes with access to {DEMO_DATA} (identities in {})", a.data_dir.display()));
    let root_dir = a.data_dir.join("sim-root");
    let root = SimRoot::load_or_init(&root_dir).map_err(anyhow::Error::msg)?;
    println!("      this deployment's sim root: {} (in {})", root.public().to_hex(), root_dir.display());
    let n1 = start_node(registry.clone(), a.data_dir.join("node1"), root_dir.clone(), true).await?;
    let n2 = start_node(registry.clone(), a.data_dir.join("node2"), root_dir.clone(), false).await?;
    for (n, hot) in [(&n1, "hot: model in memory"), (&n2, "cold")] {
        println!("      node {} on {} ({hot})", n.instance_id(), n.addr());
    }
    println!("      sim is a simulated TEE for testing: NOT confidential");

    step(3, &format!("asking the manager for an enclave with {DEMO_DATA} (FindEnclave over gRPC)"));
    let mut client = ManagerClient::connect(&url).await?;
    let req = FindEnclaveRequest { dataaccess: DEMO_DATA.into(), limit: 2, ..Default::default() };
    let mut found = Vec::new();
    for _ in 0..50 {
        found = client.find(req.clone()).await?.found;
        if found.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(found.len() == 2, "the manager did not find both demo nodes");
    for e in &found {
        println!("      found {} on {} (platform {}, hot {})", e.instance_id, e.connection_string, e.platform, e.hot);
    }
    println!("      the hot node comes first: it has the model in memory");

    step(4, "verifying each enclave's evidence before trusting it (seed note 3)");
    let policy_text =
        format!("[sim]\nroot = \"{}\"\nmeasurements = [\"{}\"]\n", root.public().to_hex(), n1.measurement());
    let policy = Policy::parse(&policy_text).map_err(anyhow::Error::msg)?;
    let policy_path = a.data_dir.join("policy.toml");
    std::fs::write(&policy_path, &policy_text)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    for e in &found {
        match enclava_client::verify_enclave(e, &policy, &Default::default(), now) {
            Ok(c) => println!(
                "      {}: evidence verified — platform {}, measurement {}…, binds its key {}…",
                e.instance_id,
                c.platform,
                &c.measurement_hex()[..16],
                hex::encode(&e.pubkey[..8])
            ),
            Err(reasons) => anyhow::bail!("{} refused: {}", e.instance_id, reasons.join("; ")),
        }
    }
    let other = SimRoot::generate().map_err(anyhow::Error::msg)?;
    let foreign = Policy::parse(&policy_text.replace(&root.public().to_hex(), &other.public().to_hex()))
        .map_err(anyhow::Error::msg)?;
    let refused =
        enclava_client::verify_enclave(&found[0], &foreign, &Default::default(), now).err().unwrap_or_default();
    println!("      under another deployment's root it is refused: {}", refused.join("; "));

    step(5, "denying the first answer, as a client does when an enclave fails it (seed note 4)");
    let denied = FindEnclaveRequest { limit: 1, enclave_deny_list: vec![found[0].instance_id.clone()], ..req.clone() };
    let next = client.find(denied).await?.found;
    let next = next.first().context("no other enclave found")?;
    println!("      next best: {} (hot {})", next.instance_id, next.hot);
    println!("demo done: discovery works");

    if !a.demo_only {
        println!("\nserving; try, in another terminal:");
        println!("  enclava find --server {url} --data {DEMO_DATA} --limit 2");
        println!("  enclava find --server {url} --data {DEMO_DATA} --json");
        println!(
            "  enclava find --server {url} --data {DEMO_DATA} --limit 2 --verify --policy {}",
            policy_path.display()
        );
        println!("  curl {url}/metrics");
        println!("Ctrl-C to stop");
        crate::shutdown_signal().await;
    }
    n1.shutdown().await;
    n2.shutdown().await;
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(ExitCode::SUCCESS)
}
