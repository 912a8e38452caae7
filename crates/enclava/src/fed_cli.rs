//! `enclava org …`, `enclava collab …` and `enclava task …`: federation
//! from the command line (through `enclava_client::fed`). The seed of each task's result key is
//! kept in the config folder (`fed-tasks/ID.json`, mode 0600) before the task is sent, so its
//! initiator can open the results later.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use enclava_client::fed::{FedClient, TaskRequest};
use enclava_contracts::fed::NewCollaboration;
use zeroize::Zeroizing;

use crate::farm_cli::FarmTarget;
use crate::keys_cli::{credentials_dir, said, write_private};

/// `enclava org`
#[derive(Debug, Args)]
pub struct OrgArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: OrgCommand,
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organisation (administrators).
    Create { name: String },
    /// Organisations you may see, with their public keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put a user in an organisation, with roles (viewer, researcher, organisation-admin,
    /// collaboration-admin).
    AddMember {
        org: String,
        user: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

/// `enclava collab`
#[derive(Debug, Args)]
pub struct CollabArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: CollabCommand,
}

#[derive(Debug, Subcommand)]
pub enum CollabCommand {
    /// Create a collaboration of organisations (administrators). Encrypted unless --unencrypted.
    Create {
        name: String,
        /// Organisation names or ids, comma-separated
        #[arg(long, value_delimiter = ',', required = true)]
        orgs: Vec<String>,
        /// Let inputs and results travel readable (vantage6's `encrypted: false`)
        #[arg(long)]
        unencrypted: bool,
        /// Admit only nodes whose evidence passes this policy (TOML), re-checked every 10
        /// minutes; inputs are then sealed to each node's attested key
        #[arg(long)]
        require_attestation: Option<PathBuf>,
    },
    /// Collaborations you may see.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// `enclava task`
#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task at organisations of a collaboration: each input sealed to its
    /// organisation's key, results sealed to you.
    Create {
        #[arg(long)]
        collab: String,
        /// Organisation names or ids, comma-separated
        #[arg(long, value_delimiter = ',', required = true)]
        orgs: Vec<String>,
        /// A Wasm module
        #[arg(long, conflicts_with = "cmd")]
        algorithm: Option<PathBuf>,
        /// A command run by /bin/sh -c in a sandbox at each node (on the node's root filesystem,
        /// or with --image on the image's)
        #[arg(long)]
        cmd: Option<String>,
        /// An image: a root filesystem folder sent with the task and run with --cmd (vantage6's
        /// algorithm image; named by the SHA-256 of its packed archive)
        #[arg(long, conflicts_with = "algorithm", requires = "cmd")]
        image: Option<PathBuf>,
        /// The input every organisation gets: {"method": …, "kwargs": {…}}
        #[arg(long, default_value = "{\"method\": \"main\"}")]
        input: String,
        /// Database labels the algorithm reads (repeatable)
        #[arg(long = "database")]
        databases: Vec<String>,
        #[arg(long, default_value = "task")]
        name: String,
        /// Wait for the results and print them
        #[arg(long)]
        wait: bool,
        /// Send the inputs readable (a collaboration created --unencrypted only)
        #[arg(long)]
        readable: bool,
        /// The policy (TOML) each node's evidence must pass before its input is sealed to it:
        /// required in an attested collaboration
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// A task's status and its runs.
    Status { id: String },
    /// A task's results, opened with your key.
    Results {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Kill a task and its subtasks.
    Kill { id: String },
}

fn client(target: &FarmTarget, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<(FedClient, PathBuf)> {
    let dir = credentials_dir(target.config_dir.as_deref(), env)?;
    let token = crate::keys_cli::token(&target.server, &dir)?;
    Ok((FedClient::new(&target.server, Some(token)), dir))
}

pub async fn org(a: OrgArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (c, _) = client(&a.target, env)?;
    match a.command {
        OrgCommand::Create { name } => {
            let o = c.create_organisation(&name).await.map_err(said)?;
            println!("organisation {} ({})", o.name, o.id);
        }
        OrgCommand::List { json } => {
            let list = c.organisations().await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for o in list {
                    let key =
                        if o.public_key.is_empty() { "no key yet".to_owned() } else { hex::encode(&o.public_key) };
                    println!("{} {} — {}", o.id, o.name, key);
                }
            }
        }
        OrgCommand::AddMember { org, user, roles } => {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            c.add_member(&org, &user, &roles).await.map_err(said)?;
            println!(
                "{user} is in {org}{}",
                if roles.is_empty() { String::new() } else { format!(" as {}", roles.join(", ")) }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn collab(a: CollabArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (c, _) = client(&a.target, env)?;
    match a.command {
        CollabCommand::Create { name, orgs, unencrypted, require_attestation } => {
            let policy = require_attestation
                .map(|p| std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display())))
                .transpose()?;
            let v = c
                .create_collaboration(&NewCollaboration {
                    name,
                    organisations: orgs,
                    encrypted: !unencrypted,
                    require_attestation: policy,
                })
                .await
                .map_err(said)?;
            println!(
                "collaboration {} ({}), {} organisations, encrypted: {}",
                v.name,
                v.id,
                v.organisations.len(),
                v.encrypted
            );
        }
        CollabCommand::List { json } => {
            let list = c.collaborations().await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for v in list {
                    let orgs: Vec<&str> = v.organisations.iter().map(|o| o.id.as_str()).collect();
                    println!("{} {} — {} (encrypted: {})", v.id, v.name, orgs.join(", "), v.encrypted);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptTask {
    server: String,
    result_seed: String,
    /// The inputs went readable (and so come the results).
    #[serde(default)]
    readable: bool,
    /// The policy the nodes were judged by (its results' receipts must verify under it).
    #[serde(default)]
    policy: Option<String>,
}

fn kept_path(dir: &std::path::Path, id: &str) -> anyhow::Result<PathBuf> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} is not a task id (32 hex digits)", enclava_core::text::quote(id));
    }
    Ok(dir.join("fed-tasks").join(format!("{id}.json")))
}

pub async fn task(a: TaskArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (c, dir) = client(&a.target, env)?;
    match a.command {
        TaskCommand::Create { collab, orgs, algorithm, cmd, image, input, databases, name, wait, readable, policy } => {
            let policy_text = policy
                .map(|p| std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display())))
                .transpose()?;
            let policy = policy_text
                .as_deref()
                .map(|t| enclava_attest::Policy::parse(t).map_err(|e| anyhow::anyhow!("--policy: {e}")))
                .transpose()?;
            let (kind, program) = match (algorithm, cmd, image) {
                (_, Some(c), Some(dir)) => ("image", enclava_client::fed::pack_image(&dir, &c).map_err(said)?),
                (Some(p), None, None) => {
                    ("wasm", std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?)
                }
                (None, Some(c), None) => ("process", c.into_bytes()),
                _ => bail!("give --algorithm app.wasm, --cmd \"...\", or --image DIR --cmd \"...\""),
            };
            let input: serde_json::Value = serde_json::from_str(&input).context("--input is not JSON")?;
            let inputs: Vec<(&str, serde_json::Value)> = orgs.iter().map(|o| (o.as_str(), input.clone())).collect();
            let dbs: Vec<&str> = databases.iter().map(String::as_str).collect();
            let request = TaskRequest {
                collaboration: &collab,
                name: &name,
                kind,
                algorithm: &program,
                inputs: &inputs,
                databases: &dbs,
                readable,
                policy: policy.as_ref(),
                parent: None,
            };
            let (task, seed) = c.start_task(&request).await.map_err(said)?;
            let kept = KeptTask {
                server: a.target.server.clone(),
                result_seed: hex::encode(&seed[..]),
                readable,
                policy: policy_text.clone(),
            };
            write_private(&kept_path(&dir, &task.id)?, &Zeroizing::new(serde_json::to_vec(&kept)?))?;
            println!("task {} {} at {} organisations (job {})", task.id, task.status, orgs.len(), task.job);
            if wait {
                let done = c.wait(&task.id, Duration::from_secs(600)).await.map_err(said)?;
                println!("task {} {}", done.id, done.status);
                return results(&c, &dir, &task.id, false).await;
            }
        }
        TaskCommand::Status { id } => {
            let t = c.task(&id).await.map_err(said)?;
            println!(
                "task {} ({}) {} — job {}, algorithm {}…",
                t.id,
                t.name,
                t.status,
                t.job,
                &t.algorithm[..16.min(t.algorithm.len())]
            );
            for r in c.runs(&id).await.map_err(said)? {
                println!("  run {} at {}: {} (attempts {})", r.id, r.organisation.id, r.status, r.attempts);
                for why in &r.reasons {
                    println!("    {why}");
                }
            }
        }
        TaskCommand::Results { id, json } => return results(&c, &dir, &id, json).await,
        TaskCommand::Kill { id } => {
            let t = c.kill(&id).await.map_err(said)?;
            println!("task {} {}", t.id, t.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn results(c: &FedClient, dir: &std::path::Path, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let path = kept_path(dir, id)?;
    let kept: KeptTask = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("no result key for task {id} in {}", path.display()))?,
    )?;
    let seed: [u8; 32] = hex::decode(&kept.result_seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("the kept result key is damaged")?;
    let seed = Zeroizing::new(seed);
    let policy = kept
        .policy
        .as_deref()
        .map(|t| enclava_attest::Policy::parse(t).map_err(|e| anyhow::anyhow!("the kept policy: {e}")))
        .transpose()?;
    let outcomes = c.results(id, &seed, kept.readable, policy.as_ref()).await.map_err(said)?;
    let mut ok = true;
    if json {
        let list: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                serde_json::json!({
                    "organisation": o.organisation,
                    "status": o.status,
                    "result": o.result.as_deref().map(|r| String::from_utf8_lossy(r).into_owned()),
                    "reasons": o.reasons,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    }
    for o in &outcomes {
        ok &= o.status == "completed";
        if !json {
            match &o.result {
                Some(r) => println!(
                    "{}: {}{}",
                    o.organisation,
                    String::from_utf8_lossy(r),
                    match &o.receipt {
                        Some(rc) =>
                            format!(" (receipt VERIFIED: {} on {}, {} ms)", rc.executor, rc.platform, rc.wall_ms),
                        None => String::new(),
                    }
                ),
                None => println!("{}: {} — {}", o.organisation, o.status, o.reasons.join("; ")),
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `enclava test`
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: TestCommand,
}

#[derive(Debug, Subcommand)]
pub enum TestCommand {
    /// Run the built-in diagnostic at every online node of a collaboration: environment, input,
    /// temporary folder, databases, and that the algorithm cannot reach the network.
    Features {
        #[arg(long)]
        collab: String,
        /// Database labels to check (repeatable)
        #[arg(long = "database")]
        databases: Vec<String>,
        /// For an attested collaboration: the policy its nodes' evidence must pass
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

pub async fn test(a: TestArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (c, _) = client(&a.target, env)?;
    let TestCommand::Features { collab, databases, policy } = a.command;
    let policy =
        policy.map(|p| enclava_attest::Policy::load(&p).map_err(|e| anyhow::anyhow!("--policy: {e}"))).transpose()?;
    let dbs: Vec<&str> = databases.iter().map(String::as_str).collect();
    let report = c.test_features(&collab, &dbs, policy.as_ref()).await.map_err(said)?;
    let mut ok = true;
    for (org, checks) in report {
        match checks {
            Ok(v) => {
                let failed: Vec<String> = v
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(_, ok)| **ok != serde_json::Value::Bool(true))
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                ok &= failed.is_empty();
                if failed.is_empty() {
                    println!("{org}: every check passed ({v})");
                } else {
                    println!("{org}: FAILED {} ({v})", failed.join(", "));
                }
            }
            Err(why) => {
                ok = false;
                println!("{org}: did not run: {why}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
