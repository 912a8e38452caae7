//! The `enclava` command: parses options (flags, `ENCLAVA_*` environment, config file), sets up
//! logs, and runs `server`, `node`, `find` or `bench`.
//!
//! # Layout
//! - `cli`: the flags. - `config`: the config file and layering. - `dev`: `enclava dev`.
//! - `evidence`: `enclava evidence verify`, `enclava sim init`. - `bench`: `enclava bench …`.
//! - `keys_cli`: `enclava keys …`, the key broker's REST client. - `model_cli`: `enclava model …`.
//! - `infer_cli`: `enclava infer`. - `bench_serving`: `enclava bench serving`. - `bench_keys`: `enclava bench keys`.

mod bench;
mod bench_evidence;
mod bench_keys;
mod bench_serving;
mod cli;
mod config;
mod dev;
mod evidence;
mod infer_cli;
mod keys_cli;
mod model_cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use cli::{Cli, Command, FindArgs, NodeArgs, ServerArgs};
use config::Layer;
use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_contracts::discovery::v1::EnclavePolicy;
use enclava_registry::{Keys, Registry, RegistrySpec};

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
        Command::Server(a) => server(a.or_file(file.server)).await,
        Command::Node(a) => node(a.or_file(file.node), &env).await,
        Command::Find(a) => find(a.or_file(file.find)).await,
        Command::Keys(a) => keys_cli::run(a, &env).await,
        Command::Model(c) => model_cli::run(c, &env).await,
        Command::Infer(a) => infer_cli::run(a, &env).await,
        Command::Dev(a) => dev::dev(a).await,
        Command::Evidence(cli::EvidenceCommand::Verify(a)) => evidence::verify_cmd(a),
        Command::Evidence(cli::EvidenceCommand::DryRun(a)) => evidence::dry_run(a),
        Command::Sim(cli::SimCommand::Init(a)) => evidence::sim_init(a),
        Command::Bench(cli::BenchCommand::Discovery(a)) => bench::discovery(a).await,
        Command::Bench(cli::BenchCommand::Evidence(a)) => bench_evidence::evidence(a),
        Command::Bench(cli::BenchCommand::Keys(a)) => bench_keys::keys(a).await,
        Command::Bench(cli::BenchCommand::Serving(a)) => bench_serving::serving(a).await,
    }
}

fn open_registry(
    registry: Option<&str>,
    namespace: Option<&str>,
    service: Option<&str>,
) -> anyhow::Result<Arc<dyn Registry>> {
    let spec: RegistrySpec = registry.unwrap_or("memory").parse().map_err(anyhow::Error::msg)?;
    let keys = Keys::new(namespace.unwrap_or("enclava"), service.unwrap_or("enclava"))
        .map_err(|e| anyhow::anyhow!("--namespace/--service: {e}"))?;
    Ok(enclava_registry::open(&spec, keys)?)
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}: is another process using it? choose another with --listen")
    })
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

async fn server(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let roles = if a.roles.is_empty() { vec!["manager".to_owned(), "keys".to_owned()] } else { a.roles.clone() };
    if let Some(r) = roles.iter().find(|r| !matches!(r.as_str(), "manager" | "keys")) {
        bail!("unknown role {r:?} in --roles: use manager, keys or both (manager,keys)");
    }
    let config = enclava_server::ServerConfig {
        cache_ttl: Duration::from_millis(a.cache_ttl_ms.unwrap_or(1000)),
        sweep_interval: Duration::from_millis(a.sweep_interval_ms.unwrap_or(10_000).max(100)),
    };
    let mut serve_roles = enclava_server::Roles::default();
    if roles.iter().any(|r| r == "manager") {
        let registry = open_registry(a.registry.as_deref(), a.namespace.as_deref(), a.service.as_deref())?;
        tracing::info!(registry = ?registry, "enclave manager role");
        serve_roles.manager = Some(registry);
    }
    if roles.iter().any(|r| r == "keys") {
        let data_dir = match &a.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir(&env, "server")?,
        };
        serve_roles.keys = Some(Arc::new(open_broker(&a, &data_dir, &env).await?));
    }
    let listener = bind(a.listen.as_deref().unwrap_or("127.0.0.1:7000")).await?;
    enclava_server::serve(config, serve_roles, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the key broker the server flags describe.
pub(crate) async fn open_broker(
    a: &ServerArgs,
    data_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<enclava_keys::Broker> {
    let database = a.database.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("keys.db").display()));
    let kek = if env("ENCLAVA_KEK").is_some() {
        enclava_keys::KekSource::Env("ENCLAVA_KEK".into())
    } else {
        enclava_keys::KekSource::File(a.kek_file.clone().unwrap_or_else(|| data_dir.join("kek.key")))
    };
    let mut config = enclava_keys::BrokerConfig::new(database, data_dir);
    if let Some(p) = &a.policy {
        config.default_policy = Some(enclava_attest::Policy::load(p).map_err(anyhow::Error::msg)?);
    }
    if let Some(c) = &a.collateral {
        config.collateral = Some(enclava_collateral::open_source(c).map_err(|e| anyhow::anyhow!("--collateral: {e}"))?);
    }
    if let Some(r) = &a.registration {
        config.registration = r.parse().map_err(|e: String| anyhow::anyhow!("--registration: {e}"))?;
    }
    if let Some(n) = a.register_rate {
        config.register_per_minute = n;
    }
    if let Some(n) = a.release_rate {
        config.release_per_second = n;
    }
    config.accept_rollback = a.accept_rollback;
    let broker = enclava_keys::Broker::open(config, kek, Arc::new(enclava_keys::KeysMetrics::new())).await?;
    tracing::info!(data_dir = %data_dir.display(), "key broker role");
    Ok(broker)
}

/// The evidence verifier a client uses, with collateral from `spec` (`--collateral`) when given.
pub(crate) fn verifier(spec: Option<&str>) -> anyhow::Result<Arc<enclava_collateral::EvidenceVerifier>> {
    let source =
        spec.map(enclava_collateral::open_source).transpose().map_err(|e| anyhow::anyhow!("--collateral: {e}"))?;
    Ok(Arc::new(enclava_collateral::EvidenceVerifier::new(source)))
}

/// `$XDG_DATA_HOME/enclava/<what>`, else `~/.local/share/enclava/<what>`.
pub(crate) fn default_data_dir(env: &dyn Fn(&str) -> Option<String>, what: &str) -> anyhow::Result<PathBuf> {
    if let Some(d) = env("XDG_DATA_HOME") {
        return Ok(PathBuf::from(d).join("enclava").join(what));
    }
    match env("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/enclava").join(what)),
        None => bail!("no --data-dir given and no HOME to put one in: pass --data-dir DIR"),
    }
}

async fn node(a: NodeArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    if a.registry.as_deref().is_none_or(|r| r == "memory") {
        tracing::warn!(
            "registry is `memory`: only this process can see this node; pass --registry redis://HOST:PORT to be found"
        );
    }
    let registry = open_registry(a.registry.as_deref(), a.namespace.as_deref(), a.service.as_deref())?;
    let config = enclava_node::NodeConfig {
        platform: a.platform.unwrap_or_else(|| "sim".into()),
        data_dir: match a.data_dir {
            Some(d) => d,
            None => default_data_dir(env, "node")?,
        },
        data: a.data,
        advertise: a.advertise,
        sim_root: a.sim_root,
        tsm_dir: None,
        serve: if a.serve_model.is_empty() && !a.openwhisk {
            None
        } else {
            if a.serve_model.is_empty() {
                bail!("--openwhisk serves models: name them with --serve-model MODEL");
            }
            Some(enclava_node::serve::ServeConfig {
                key_broker: a.key_broker.unwrap_or_else(|| "http://127.0.0.1:7000".into()),
                blobs: match a.blobs {
                    Some(b) => b,
                    None => default_data_dir(env, "blobs")?,
                },
                models: a.serve_model,
                memory_budget: a.memory_budget_mb.unwrap_or(0).saturating_mul(1 << 20),
                openwhisk: a.openwhisk,
            })
        },
    };
    if config.platform == "sim" {
        tracing::warn!("platform sim is a simulated TEE for testing: it is NOT confidential");
    }
    let listener = bind(a.listen.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let node = enclava_node::start(config, registry, listener).await?;
    println!("instance {} listening on {}", node.instance_id(), node.addr());
    shutdown_signal().await;
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn find(a: FindArgs) -> anyhow::Result<ExitCode> {
    let url = a.server.unwrap_or_else(|| "http://127.0.0.1:7000".into());
    let mut client = ManagerClient::connect(&url).await?;
    let req = FindEnclaveRequest {
        dataaccess: a.data.clone().unwrap_or_default(),
        platform: a.platform.unwrap_or_default(),
        policy: a.measurement.map(|m| EnclavePolicy { mrenclave: m }),
        limit: a.limit.unwrap_or(1),
        enclave_deny_list: a.deny,
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
