//! `enclava pool …`: function pools from the command line (create, list, delete), through
//! [`enclava_client::pools::PoolClient`] as the identity `enclava keys register` kept. Requests go
//! through a pool with `enclava infer --pool NAME`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use enclava_client::pools::PoolClient;

use crate::keys_cli::{credentials_dir, said};

/// `enclava pool`
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Server URL (the pools role)
    #[arg(long, env = "ENCLAVA_SERVER", default_value = "http://127.0.0.1:7000", global = true)]
    pub server: String,
    /// Folder holding this user's credentials [default: ~/.config/enclava]
    #[arg(long, env = "ENCLAVA_CONFIG_DIR", global = true)]
    pub config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: PoolCommand,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool of the serving nodes the selector picks, for these models.
    Create {
        name: String,
        /// The models it serves, comma-separated (every instance must serve all of them)
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        /// Which registry instances: measurement=HEX[,platform=P]
        #[arg(long)]
        select: String,
        /// Requests one instance serves at once
        #[arg(long)]
        concurrency: Option<u32>,
        /// Requests that may wait; past it requests get 429 with Retry-After
        #[arg(long)]
        queue: Option<usize>,
        /// Models an instance's memory holds at once
        #[arg(long)]
        models_per_instance: Option<usize>,
        /// Instances the pool should have at least (the scaling signal's floor)
        #[arg(long)]
        min: Option<u32>,
        /// Instances the pool should have at most
        #[arg(long)]
        max: Option<u32>,
    },
    /// Your pools: instances, which models are hot where, in flight, queued.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a pool (requests waiting in it are refused).
    Delete { name: String },
}

/// `measurement=HEX,platform=P` → (measurement, platform).
fn parse_select(text: &str) -> anyhow::Result<(Option<String>, Option<String>)> {
    let (mut measurement, mut platform) = (None, None);
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("measurement", v)) => measurement = Some(v.to_owned()),
            Some(("platform", v)) => platform = Some(v.to_owned()),
            _ => bail!(
                "--select takes measurement=HEX and platform=P, comma-separated; not {}",
                enclava_core::text::quote(part)
            ),
        }
    }
    if measurement.is_none() && platform.is_none() {
        bail!("--select names a measurement or a platform: measurement=HEX[,platform=sim]");
    }
    Ok((measurement, platform))
}

pub async fn pool(a: PoolArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let dir = credentials_dir(a.config_dir.as_deref(), env)?;
    let token = crate::keys_cli::token(&a.server, &dir)?;
    let client = PoolClient::new(&a.server, Some(token));
    match a.command {
        PoolCommand::Create { name, models, select, concurrency, queue, models_per_instance, min, max } => {
            let (measurement, platform) = parse_select(&select)?;
            let spec = serde_json::json!({
                "name": name, "models": models, "measurement": measurement, "platform": platform,
                "concurrency": concurrency, "queue": queue, "modelsPerInstance": models_per_instance,
                "min": min, "max": max,
            });
            let view = client.create(&spec).await.map_err(said)?;
            println!("pool {name} created");
            print_pool(&view);
            println!(
                "send requests through it: enclava infer --model {} --input x.npy --pool {name}",
                models.first().map_or("MODEL", String::as_str)
            );
        }
        PoolCommand::List { json } => {
            let pools = client.list().await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
            } else if pools.is_empty() {
                println!("no pools: create one with `enclava pool create NAME --models M --select measurement=HEX`");
            }
            if !json {
                for p in &pools {
                    print_pool(p);
                }
            }
        }
        PoolCommand::Delete { name } => {
            client.delete(&name).await.map_err(said)?;
            println!("pool {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One pool in words: what it serves, each instance with its hot models, load and claim, and per
/// model the scaling signal.
fn print_pool(v: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let spec = &v["spec"];
    let status = &v["status"];
    let cut = |t: String, n| enclava_core::text::prefix(&t, n).to_owned();
    let select = [
        spec["measurement"].as_str().map(|m| format!("measurement {}", cut(m.to_owned(), 16))),
        spec["platform"].as_str().map(|p| format!("platform {p}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    let models: Vec<String> = spec["models"].as_array().into_iter().flatten().map(s).collect();
    println!(
        "{} — {} instance(s) [{select}], serves {}; {} per instance, queue {} ({} waiting), {} model loads",
        s(&spec["name"]),
        status["instances"].as_array().map_or(0, Vec::len),
        models.join(", "),
        spec["config"]["concurrency"],
        spec["config"]["queue"],
        status["queued"],
        status["cold_loads"],
    );
    for i in status["instances"].as_array().into_iter().flatten() {
        let id = s(&i["id"]);
        let hot: Vec<String> = i["hot"].as_array().into_iter().flatten().map(s).collect();
        println!(
            "  {} at {}: hot {}; {} in flight{}",
            cut(id.clone(), 40),
            cut(s(&v["endpoints"][&id]), 60),
            if hot.is_empty() { "nothing".into() } else { hot.join(", ") },
            i["in_flight"],
            i["claimed_by"].as_str().map(|c| format!(", claimed by {c}")).unwrap_or_default()
        );
    }
    for d in v["down"].as_array().into_iter().flatten() {
        println!("  {} kept out: it failed a request", cut(s(d), 40));
    }
    for m in &models {
        let st = &status["models"][m];
        println!(
            "  model {m}: {} in flight, {} queued, hot on {} instance(s), loaded {} time(s)",
            st["in_flight"].as_u64().unwrap_or(0),
            st["queued"].as_u64().unwrap_or(0),
            st["hot_on"].as_u64().unwrap_or(0),
            st["cold_loads"].as_u64().unwrap_or(0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_names_a_measurement_or_a_platform() {
        assert_eq!(parse_select("measurement=ab,platform=sim").expect("ok"), (Some("ab".into()), Some("sim".into())));
        assert_eq!(parse_select("platform=sim").expect("ok"), (None, Some("sim".into())));
        assert!(parse_select("").is_err());
        assert!(parse_select("region=eu").is_err());
    }
}
