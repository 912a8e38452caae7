//! The `enclava` command: parses options (flags, `ENCLAVA_*` environment, config file), sets up
//! logs, and runs `server`, `node`, `find` or `bench`.
//!
//! # Layout
//! - `cli`: the flags. - `config`: the config file and layering. - `dev`: `enclava dev`.
//! - `evidence`: `enclava evidence verify`, `enclava sim init`.
//! - `keys_cli`: `enclava keys …` (through the client library's key broker client).
//! - `model_cli`: `enclava model …`. - `infer_cli`: `enclava infer`.
//! - `enclava bench …` runs the `enclava-bench` crate; everything else is library calls.

mod cli;
mod config;
mod dev;
mod evidence;
mod farm_cli;
mod fed_cli;
mod fed_node_cli;
mod infer_cli;
mod keys_cli;
mod model_cli;
mod pool_cli;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use config::FindConfig;
use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_contracts::discovery::v1::EnclavePolicy;
use enclava_sandbox::{NodeSettings, ServerConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A benchmark prints a table and the demo its steps; only warnings belong beside them.
    let default_filter = if matches!(cli.command, Command::Bench(_) | Command::Dev(_)) { "warn" } else { "info" };
    enclava_telemetry::init_logs(
        match cli.log_format {
            cli::LogFormat::Text => enclava_telemetry::LogFormat::Text,
            cli::LogFormat::Json => enclava_telemetry::LogFormat::Json,
        },
        default_filter,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let file = config::load(cli.config.as_deref(), &env)?;
    match cli.command {
        Command::Server(a) => server(a.over(file.server), &env).await,
        Command::Node(a) => node(a.over(file.node), &env).await,
        Command::Find(a) => find(a.over(file.find)).await,
        Command::Keys(a) => keys_cli::run(a, &env).await,
        Command::Model(c) => model_cli::run(c, &env).await,
        Command::Infer(a) => infer_cli::run(a, &env).await,
        Command::Dev(a) => dev::dev(a, file.server, &env).await,
        Command::Evidence(cli::EvidenceCommand::Verify(a)) => evidence::verify_cmd(a),
        Command::Evidence(cli::EvidenceCommand::DryRun(a)) => evidence::dry_run(a),
        Command::Sim(cli::SimCommand::Init(a)) => evidence::sim_init(a),
        Command::Capacity(a) => capacity(a),
        Command::Hosts(a) => farm_cli::hosts(a, &env).await,
        Command::Job(a) => farm_cli::job(a, &env).await,
        Command::File(a) => farm_cli::file(a, &env).await,
        Command::Org(a) => fed_cli::org(a, &env).await,
        Command::Collab(a) => fed_cli::collab(a, &env).await,
        Command::FedNode(a) => fed_node_cli::fed_node(a, &env).await,
        Command::Task(a) => fed_cli::task(a, &env).await,
        Command::Test(a) => fed_cli::test(a, &env).await,
        Command::Pool(a) => pool_cli::pool(a, &env).await,
        Command::Bench(cli::BenchCommand::Discovery(a)) => enclava_bench::discovery::discovery(a).await,
        Command::Bench(cli::BenchCommand::Evidence(a)) => enclava_bench::evidence::evidence(a),
        Command::Bench(cli::BenchCommand::Keys(a)) => enclava_bench::keys::keys(a).await,
        Command::Bench(cli::BenchCommand::Serving(a)) => enclava_bench::serving::serving(a).await,
        Command::Bench(cli::BenchCommand::Farm(a)) => enclava_bench::farm::run(a).await,
        Command::Bench(cli::BenchCommand::Federation(a)) => enclava_bench::federation::federation(a).await,
        Command::Bench(cli::BenchCommand::Pools(a)) => enclava_bench::pools::pools(a).await,
        Command::Bench(cli::BenchCommand::Dashboard(a)) => enclava_bench::dashboard::dashboard(a).await,
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

async fn server(config: ServerConfig, env: &(dyn Fn(&str) -> Option<String> + Sync)) -> anyhow::Result<ExitCode> {
    config.validate().map_err(anyhow::Error::msg)?;
    let data_dir = match &config.data_dir {
        Some(d) => d.clone(),
        None => config::default_data_dir(env, "server")?,
    };
    enclava_sandbox::serve(&config, &data_dir, env, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The evidence verifier a client uses, with collateral from `spec` (`--collateral`) when given.
pub(crate) fn verifier(spec: Option<&str>) -> anyhow::Result<Arc<enclava_collateral::EvidenceVerifier>> {
    let source =
        spec.map(enclava_collateral::open_source).transpose().map_err(|e| anyhow::anyhow!("--collateral: {e}"))?;
    Ok(Arc::new(enclava_collateral::EvidenceVerifier::new(source)))
}

async fn node(settings: NodeSettings, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    settings.validate().map_err(anyhow::Error::msg)?;
    if settings.registry == "memory" {
        tracing::warn!(
            "registry is `memory`: only this process can see this node; pass --registry redis://HOST:PORT to be found"
        );
    }
    let registry = enclava_sandbox::open_registry(&settings.registry, &settings.namespace, &settings.service)?;
    let data_dir = match &settings.data_dir {
        Some(d) => d.clone(),
        None => config::default_data_dir(env, "node")?,
    };
    let blobs = match &settings.blobs {
        Some(b) => b.clone(),
        None => config::default_data_dir(env, "blobs")?,
    };
    let node = enclava_sandbox::start_node(&settings, &data_dir, &blobs, registry).await?;
    println!("instance {} listening on {}", node.instance_id(), node.addr());
    let host = match &settings.farm {
        Some(farm) => {
            let agent = enclava_sandbox::start_host(&node, &settings, &data_dir).await?;
            println!(
                "farm host {} taking jobs from {farm} ({})",
                agent.id(),
                enclava_contracts::farm::security_status(node.platform())
            );
            Some(agent)
        }
        None => None,
    };
    shutdown_signal().await;
    if let Some(h) = host {
        h.shutdown().await;
    }
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `enclava capacity`: what this host measures, each figure with how, and an offer checked.
fn capacity(a: cli::CapacityArgs) -> anyhow::Result<ExitCode> {
    let c = enclava_node::capacity::measure(&a.data_dir);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!("cores   {:<10} {}", c.cores, c.cores_how);
        println!("memory  {:<10} {}", format!("{} MiB", c.memory_bytes >> 20), c.memory_how);
        println!("disk    {:<10} {}", format!("{} MiB", c.disk_bytes >> 20), c.disk_how);
        let gpus: Vec<String> = c.gpus.iter().map(|g| format!("{} ({} MiB)", g.name, g.memory_bytes >> 20)).collect();
        println!(
            "gpus    {:<10} {}{}",
            c.gpus.len(),
            c.gpus_how,
            if gpus.is_empty() { String::new() } else { format!(": {}", gpus.join(", ")) }
        );
        println!("(measured, not declared; on a plaintext host nothing vouches for these figures but this host)");
    }
    if let Some(offer) = a.offer {
        let offer = enclava_node::capacity::Offer::parse(&offer).map_err(anyhow::Error::msg)?;
        if let Err(e) = offer.within(&c) {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        if !a.json {
            println!("offer accepted: within what was measured");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn find(a: FindConfig) -> anyhow::Result<ExitCode> {
    a.validate()?;
    let mut client = ManagerClient::connect(&a.server).await?;
    let req = FindEnclaveRequest {
        dataaccess: a.data.clone().unwrap_or_default(),
        platform: a.platform.clone().unwrap_or_default(),
        policy: a.measurement.clone().map(|m| EnclavePolicy { mrenclave: m }),
        limit: a.limit,
        enclave_deny_list: a.deny.clone(),
    };
    let mut resp = client.find(req).await?;
    let mut refused = Vec::new();
    if a.verify {
        let path = a.policy.as_deref().context("--verify needs --policy FILE")?;
        let policy = enclava_attest::Policy::load(path).map_err(anyhow::Error::msg)?;
        let now = match &a.at {
            Some(t) => enclava_attest::time::parse_rfc3339(t).map_err(|e| anyhow::anyhow!("--at: {e}"))?,
            None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        };
        let verifier = verifier(a.collateral.as_deref())?;
        let mut kept = Vec::new();
        for e in std::mem::take(&mut resp.found) {
            match enclava_client::verify_enclave(&e, &policy, &verifier, now).await {
                Ok(_) => kept.push(e),
                Err(reasons) => refused.push((e.instance_id.clone(), reasons)),
            }
        }
        resp.found = kept;
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let mut v = serde_json::to_value(&resp)?;
        if a.verify {
            v["refused"] =
                refused.iter().map(|(id, r)| serde_json::json!({ "instanceId": id, "reasons": r })).collect();
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(if a.verify && resp.found.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    for (id, reasons) in &refused {
        writeln!(out, "REFUSED {id}:")?;
        for r in reasons {
            writeln!(out, "  - {r}")?;
        }
    }
    if a.verify && resp.found.is_empty() {
        writeln!(out, "no enclave passed verification")?;
        return Ok(ExitCode::from(1));
    }
    if resp.found.is_empty() {
        writeln!(
            out,
            "no live enclave matches; check that a node with that data or measurement is running and uses the same --registry, --namespace and --service"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if let (true, Some(p)) = (a.verify, &a.policy) {
        writeln!(out, "verified against {}:", p.display())?;
    }
    writeln!(out, "{:<34} {:<9} {:<18} {:<5} CONNECTION", "INSTANCE", "PLATFORM", "MEASUREMENT", "HOT")?;
    for e in &resp.found {
        let m = e.policy.as_ref().map(|p| p.mrenclave.as_str()).unwrap_or("");
        // Everything here was read from the registry, which anyone with write access can fill:
        // shown cut on characters, never sliced by bytes.
        let cut = |s: &str, n| enclava_core::text::prefix(s, n);
        writeln!(
            out,
            "{:<34} {:<9} {:<18} {:<5} {}",
            cut(&e.instance_id, 33),
            cut(&e.platform, 9),
            cut(m, 16),
            e.hot,
            cut(&e.connection_string, 64)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
