//! `enclava fed-node …`: federation nodes by name, with vantage6's node verbs. `new` makes the
//! node on the server and keeps its API key and settings in `CONFIG/fed-nodes/NAME/`; `start`
//! runs it in the background (its log in `node.log`, its process id in `node.pid`), `stop` ends
//! it, `attach` follows its log, `files` shows where everything is, `list` shows the local nodes
//! and the server's, and `run` runs one in this terminal. (`enclava node` is the serving node,
//! so the federation node has its own command.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use enclava_client::fed::FedClient;
use enclava_contracts::fed::NewNode;
use zeroize::Zeroizing;

use crate::farm_cli::FarmTarget;
use crate::keys_cli::{credentials_dir, said, write_private};

/// `enclava fed-node`
#[derive(Debug, Args)]
pub struct FedNodeArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: FedNodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum FedNodeCommand {
    /// Create an organisation's node in a collaboration and keep it here under NAME.
    New {
        name: String,
        #[arg(long)]
        collab: String,
        /// The organisation (yours when you belong to one)
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Local nodes (running or not), then the nodes the server shows you.
    List {
        #[arg(long)]
        collab: Option<String>,
    },
    /// Start node NAME in the background.
    Start {
        name: String,
        /// Follow its log afterwards
        #[arg(long)]
        attach: bool,
    },
    /// Stop node NAME (it finishes reporting what it was running).
    Stop { name: String },
    /// Follow node NAME's log until it stops or Ctrl-C.
    Attach { name: String },
    /// Where node NAME keeps its settings, keys, data and log.
    Files { name: String },
    /// Run node NAME in this terminal until Ctrl-C or SIGTERM.
    Run { name: String },
}

/// A node's settings (kept in `node.json`).
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// A database: LABEL=FILE (repeatable)
    #[arg(long = "data")]
    data: Vec<String>,
    /// Run process algorithms on a busybox root filesystem made in the node's folder
    #[arg(long)]
    process: bool,
    /// A host folder bound read-only into process algorithms: HOST:INSIDE (repeatable), e.g. a
    /// Python installation and its packages
    #[arg(long = "mount")]
    mount: Vec<String>,
    /// No local proxy for process algorithms (it needs the node to run as root; without it they
    /// cannot make subtasks)
    #[arg(long)]
    no_proxy: bool,
    /// Only these algorithms (SHA-256), repeatable; any when none given
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Only tasks from users of these organisations (ids), repeatable
    #[arg(long = "allow-org")]
    allow_org: Vec<String>,
    /// Only tasks from these users (ids), repeatable
    #[arg(long = "allow-user")]
    allow_user: Vec<String>,
    /// Return a failed algorithm's error output with its failure (off: tracebacks can leak data)
    #[arg(long)]
    return_logs: bool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Settings {
    server: String,
    collaboration: String,
    organisation: String,
    data: BTreeMap<String, PathBuf>,
    process: bool,
    mounts: Vec<(PathBuf, String)>,
    proxy: bool,
    allow: BTreeSet<String>,
    allow_org: BTreeSet<String>,
    allow_user: BTreeSet<String>,
    return_logs: bool,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

fn node_dir(target: &FarmTarget, env: &dyn Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<PathBuf> {
    if !name_ok(name) {
        bail!("a node name is 1-64 letters, digits, '-' or '_'");
    }
    Ok(credentials_dir(target.config_dir.as_deref(), env)?.join("fed-nodes").join(name))
}

fn load(dir: &Path, name: &str) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(dir.join("node.json"))
        .with_context(|| format!("no node {name} here: make it with `enclava fed-node new {name} --collab …`"))?;
    serde_json::from_str(&text).with_context(|| format!("{} is damaged", dir.join("node.json").display()))
}

/// The running node's process id, if it is running.
fn running(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("node.pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    // Only `… fed-node … run NAME` is the node: not `start NAME` or `attach NAME`, nor an
    // unrelated process that took over a stale pid.
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.contains(&&b"fed-node"[..]) && args.windows(2).any(|w| w[0] == b"run" && w[1] == name.as_bytes());
    ours.then_some(pid)
}

pub async fn fed_node(a: FedNodeArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    match a.command {
        FedNodeCommand::New { name, collab, org, settings } => {
            let dir = node_dir(&a.target, env, &name)?;
            if dir.join("node.json").exists() {
                bail!("there is already a node {name} here ({}): choose another name", dir.display());
            }
            let mut data = BTreeMap::new();
            for d in &settings.data {
                let (label, path) = d.split_once('=').context("--data takes LABEL=FILE")?;
                if !enclava_contracts::fed::label_ok(label) {
                    bail!("--data: a label is 1-64 letters, digits, '_' or '-'");
                }
                let path = std::fs::canonicalize(path).with_context(|| format!("--data {label}: no file {path}"))?;
                data.insert(label.to_owned(), path);
            }
            let mut mounts = Vec::new();
            for m in &settings.mount {
                let (host, inside) = m.split_once(':').context("--mount takes HOST:INSIDE")?;
                if !inside.starts_with('/') || inside.split('/').any(|c| c == "..") {
                    bail!("--mount: INSIDE is an absolute path inside the sandbox, without '..'");
                }
                let host = std::fs::canonicalize(host).with_context(|| format!("--mount: no folder {host}"))?;
                mounts.push((host, inside.to_owned()));
            }
            let user =
                crate::keys_cli::token(&a.target.server, &credentials_dir(a.target.config_dir.as_deref(), env)?)?;
            let c = FedClient::new(&a.target.server, Some(user));
            let created = c
                .create_node(&NewNode { collaboration: collab, organisation: org, name: Some(name.clone()) })
                .await
                .map_err(said)?;
            let kept = Settings {
                server: a.target.server.clone(),
                collaboration: created.node.collaboration.id.clone(),
                organisation: created.node.organisation.id.clone(),
                data,
                process: settings.process,
                mounts,
                proxy: !settings.no_proxy,
                allow: settings.allow.into_iter().collect(),
                allow_org: settings.allow_org.into_iter().collect(),
                allow_user: settings.allow_user.into_iter().collect(),
                return_logs: settings.return_logs,
            };
            write_private(&dir.join("api-key"), created.api_key.as_bytes())?;
            write_private(&dir.join("node.json"), &serde_json::to_vec_pretty(&kept)?)?;
            println!(
                "node {name} ({}) of {} in {}; start it with `enclava fed-node start {name}`",
                created.node.id, kept.organisation, kept.collaboration
            );
        }
        FedNodeCommand::List { collab } => {
            let root = credentials_dir(a.target.config_dir.as_deref(), env)?.join("fed-nodes");
            let mut names: Vec<String> = std::fs::read_dir(&root)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            names.sort();
            println!("local nodes ({}):", root.display());
            for name in names.iter().filter(|n| name_ok(n)) {
                let dir = root.join(name);
                let Ok(s) = load(&dir, name) else { continue };
                let state = match running(&dir) {
                    Some(pid) => format!("running (pid {pid})"),
                    None => "stopped".into(),
                };
                println!("  {name}: {state}; {} in {} on {}", s.organisation, s.collaboration, s.server);
            }
            if let Ok(token) =
                crate::keys_cli::token(&a.target.server, &credentials_dir(a.target.config_dir.as_deref(), env)?)
            {
                let c = FedClient::new(&a.target.server, Some(token));
                println!("on {}:", a.target.server);
                for n in c.nodes(collab.as_deref()).await.map_err(said)? {
                    println!(
                        "  {} {} — {} in {}, {}",
                        n.id,
                        n.name,
                        n.organisation.id,
                        n.collaboration.id,
                        if n.online { "online" } else { "offline" }
                    );
                }
            }
        }
        FedNodeCommand::Start { name, attach } => {
            let dir = node_dir(&a.target, env, &name)?;
            load(&dir, &name)?;
            if let Some(pid) = running(&dir) {
                bail!("node {name} is already running (pid {pid}); `enclava fed-node stop {name}` stops it");
            }
            let log_path = dir.join("node.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open {}", log_path.display()))?;
            let from = log.metadata().map(|m| m.len()).unwrap_or(0);
            let exe = std::env::current_exe().context("cannot find this program to start the node with")?;
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("fed-node");
            if let Some(c) = &a.target.config_dir {
                cmd.arg("--config-dir").arg(c);
            }
            use std::os::unix::process::CommandExt;
            let child = cmd
                .args(["run", &name])
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("cannot start the node")?;
            std::fs::write(dir.join("node.pid"), child.id().to_string())?;
            // Wait until it says it runs, or ends.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (text, _) = read_from(&log_path, from);
                if text.contains("federation node") && text.contains("running") {
                    println!("node {name} started (pid {}); its log: {}", child.id(), log_path.display());
                    break;
                }
                if running(&dir).is_none() || std::time::Instant::now() > deadline {
                    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                    let _ = std::fs::remove_file(dir.join("node.pid"));
                    eprint!("{text}");
                    bail!("node {name} did not start: its log is above ({})", log_path.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if attach {
                follow(&dir, &log_path).await?;
            }
        }
        FedNodeCommand::Stop { name } => {
            let dir = node_dir(&a.target, env, &name)?;
            let Some(pid) = running(&dir) else {
                println!("node {name} is not running");
                return Ok(ExitCode::SUCCESS);
            };
            let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
            if !status.success() {
                bail!("cannot signal node {name} (pid {pid})");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while running(&dir).is_some() {
                if std::time::Instant::now() > deadline {
                    bail!("node {name} (pid {pid}) is still finishing after 30 s; run stop again or kill it");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = std::fs::remove_file(dir.join("node.pid"));
            println!("node {name} stopped");
        }
        FedNodeCommand::Attach { name } => {
            let dir = node_dir(&a.target, env, &name)?;
            load(&dir, &name)?;
            follow(&dir, &dir.join("node.log")).await?;
        }
        FedNodeCommand::Files { name } => {
            let dir = node_dir(&a.target, env, &name)?;
            let s = load(&dir, &name)?;
            println!("folder:           {}", dir.display());
            println!("settings:         {}", dir.join("node.json").display());
            println!("API key:          {}", dir.join("api-key").display());
            println!("organisation key: {}", dir.join("organisation.key").display());
            println!("log:              {}", dir.join("node.log").display());
            println!("runs:             {}", dir.join("runs").display());
            for (label, path) in &s.data {
                println!("database {label}: {}", path.display());
            }
            for (host, inside) in &s.mounts {
                println!("mount {inside}: {} (read-only)", host.display());
            }
        }
        FedNodeCommand::Run { name } => {
            let dir = node_dir(&a.target, env, &name)?;
            let s = load(&dir, &name)?;
            match running(&dir) {
                Some(pid) if pid != std::process::id() => {
                    bail!("node {name} is already running (pid {pid}); `enclava fed-node stop {name}` stops it")
                }
                _ => std::fs::write(dir.join("node.pid"), std::process::id().to_string())?,
            }
            let key = std::fs::read_to_string(dir.join("api-key"))
                .with_context(|| format!("no API key in {}", dir.display()))?;
            let mut config =
                enclava_host::fed::FedNodeConfig::new(&s.server, Zeroizing::new(key.trim().to_owned()), &dir);
            config.data = s.data;
            if s.process {
                config.rootfs = Some(
                    enclava_process::busybox_root(&dir.join("fs"), enclava_sandbox::BUSYBOX_APPLETS).map_err(said)?,
                );
            }
            config.mounts = s.mounts;
            config.proxy = s.proxy;
            config.allowed_algorithms = (!s.allow.is_empty()).then_some(s.allow);
            config.allowed_organisations = (!s.allow_org.is_empty()).then_some(s.allow_org);
            config.allowed_users = (!s.allow_user.is_empty()).then_some(s.allow_user);
            config.return_logs = s.return_logs;
            let node = enclava_host::fed::FedNode::start(config).await.map_err(said)?;
            println!("federation node {name} ({}) of {} running; Ctrl-C stops it", node.id(), node.organisation());
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                _ = term.recv() => {}
            }
            println!("federation node {name} stopping");
            node.shutdown().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `path` holds past byte `from`, and how many bytes that is.
fn read_from(path: &Path, from: u64) -> (String, u64) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let tail = bytes.get(from as usize..).unwrap_or_default();
    (String::from_utf8_lossy(tail).into_owned(), tail.len() as u64)
}

/// Prints the log, then what is added to it, until the node stops or Ctrl-C.
async fn follow(dir: &Path, log: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut at = 0u64;
    loop {
        let (text, n) = read_from(log, at);
        at += n;
        print!("{text}");
        let _ = std::io::stdout().flush();
        if running(dir).is_none() {
            println!("(the node is not running)");
            return Ok(());
        }
        tokio::select! {
            r = tokio::signal::ctrl_c() => return Ok(r?),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}
