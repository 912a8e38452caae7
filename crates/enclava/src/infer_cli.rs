//! `enclava infer`: run a model on an attested enclave.
//!
//! Direct mode (the default): finds an enclave through the enclave manager, verifies its evidence
//! against your policy before sending anything, seals the input to its attested key, and opens the
//! sealed answer; a refused or unreachable enclave is denied and the next one tried, a bounded
//! number of times (`--pool NAME --direct`: the pool names the enclave instead, verified all the
//! same). Serverless mode (`--serverless URL`, or `--pool NAME` for a function pool on the server):
//! seals with your request key for the model and measurement and sends it to the platform, which
//! picks the instance.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use enclava_attest::Policy;
use enclava_runtime::Tensor;

/// `enclava infer`
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Model id, e.g. acme/mobilenet
    #[arg(long)]
    pub model: String,
    /// Input tensor: a .npy file, or JSON {"shape": [...], "data": [...]}
    #[arg(long)]
    pub input: PathBuf,
    /// What the enclave must prove (TOML or JSON policy); required in direct mode: nothing is sent
    /// unverified (serverless mode does not use it)
    #[arg(long, env = "ENCLAVA_POLICY", required_unless_present_any = ["serverless", "pool"])]
    pub policy: Option<PathBuf>,
    /// Collateral for verifying real platforms' evidence: an Intel PCS/PCCS- and AMD KDS-style
    /// service (http://HOST:PORT, or intel=URL,amd=URL), a collateral.json, or a folder
    #[arg(long, env = "ENCLAVA_COLLATERAL")]
    pub collateral: Option<String>,
    /// Enclave manager URL (and, in serverless mode, the key broker your identity is kept for)
    #[arg(long, env = "ENCLAVA_SERVER", default_value = "http://127.0.0.1:7000")]
    pub server: String,
    /// Serverless mode (MOSS): send to this platform URL (a node's http://HOST:PORT/v1/infer, an
    /// OpenWhisk web action), sealed with your request key; only enclaves the key broker attested
    /// with a measurement granted for you can open it
    #[arg(long, value_name = "URL", conflicts_with = "pool")]
    pub serverless: Option<String>,
    /// Serverless mode through function pool NAME on --server (`enclava pool create`): the pool
    /// sends it to an instance where the model is hot, queueing it when all are busy
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
    /// With --pool: direct mode through the pool instead: the pool names the enclave (where the
    /// model is hot, least loaded), and the input is sealed to that enclave's key only after its
    /// evidence passes --policy
    #[arg(long, requires = "pool", requires = "policy")]
    pub direct: bool,
    /// Serverless: the measurement your request key is for [default: the only one you have a key
    /// for]
    #[arg(long)]
    pub measurement: Option<String>,
    /// Serverless: your request key file [default: the one `enclava keys request-key` kept]
    #[arg(long)]
    pub request_key: Option<PathBuf>,
    /// Serverless: your key broker user id [default: your identity for --server]
    #[arg(long)]
    pub user: Option<String>,
    /// Folder holding your credentials and keys [default: ~/.config/enclava]
    #[arg(long, env = "ENCLAVA_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Write the output tensor here (.npy)
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print the output and what was verified as JSON
    #[arg(long)]
    pub json: bool,
    /// Enclaves to try at most
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
}

fn read_input(path: &Path) -> anyhow::Result<Tensor> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?;
    if raw.starts_with(b"\x93NUMPY") {
        Tensor::from_npy(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    } else {
        serde_json::from_slice::<Tensor>(&raw).with_context(|| {
            format!("{} is neither .npy nor a JSON tensor {{\"shape\": [...], \"data\": [...]}}", path.display())
        })
    }
}

/// Writes the output if asked, and returns its top classes.
fn finish(a: &InferArgs, output_npy: &[u8]) -> anyhow::Result<(Tensor, Vec<(usize, f32)>)> {
    let output = Tensor::from_npy(output_npy).map_err(|e| anyhow::anyhow!("the enclave's output: {e}"))?;
    if let Some(p) = &a.output {
        std::fs::write(p, output.to_npy()).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let top = output.top_k(5);
    Ok((output, top))
}

fn top_line(output: &Tensor, top: &[(usize, f32)]) -> String {
    format!(
        "output shape {:?}; top classes: {}",
        output.shape(),
        top.iter().map(|(i, p)| format!("{i} ({p:.4})")).collect::<Vec<_>>().join(", ")
    )
}

pub async fn run(a: InferArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let input = read_input(&a.input)?;
    let endpoint = match (&a.serverless, &a.pool) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(pool)) if !a.direct => Some(enclava_client::pools::invoke_url(&a.server, pool)),
        _ => None,
    };
    if let Some(endpoint) = endpoint {
        return serverless(a, endpoint, input, env).await;
    }
    for (given, name) in [
        (a.measurement.is_some(), "--measurement"),
        (a.request_key.is_some(), "--request-key"),
        (a.user.is_some(), "--user"),
    ] {
        if given {
            anyhow::bail!("{name} is for serverless mode: add --serverless URL or --pool NAME");
        }
    }
    let policy_path = a.policy.clone().context("--policy is required in direct mode")?;
    let policy = Policy::load(&policy_path).map_err(anyhow::Error::msg)?;
    let mut opts = enclava_client::infer::InferOptions::new(a.server.clone(), a.model.clone(), policy);
    opts.verifier = crate::verifier(a.collateral.as_deref())?;
    opts.max_attempts = a.attempts.max(1);
    opts.pool = a.pool.clone();
    let out = enclava_client::infer::infer(&opts, &input.to_npy()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let (output, top) = finish(&a, &out.output_npy)?;
    if a.json {
        let v = serde_json::json!({
            "output": output,
            "top": top,
            "enclave": { "instanceId": out.instance_id, "platform": out.platform, "measurement": out.measurement },
            "passedOver": out.passed_over.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for t in &out.passed_over {
            println!("passed over {t}");
        }
        println!(
            "ran on enclave {} (platform {}, measurement {}…), evidence verified against {}",
            out.instance_id,
            out.platform,
            out.measurement.get(..16).unwrap_or(&out.measurement),
            policy_path.display()
        );
        if out.platform == "sim" {
            println!("note: sim is a simulated TEE for testing; it is NOT confidential");
        }
        println!("{}", top_line(&output, &top));
    }
    Ok(ExitCode::SUCCESS)
}

/// The request key file for `model`: the one for `measurement`, or the only one kept.
fn find_request_key(dir: &Path, model: &str, measurement: Option<&str>) -> anyhow::Result<(PathBuf, String)> {
    if let Some(m) = measurement {
        let m = m.to_ascii_lowercase();
        return Ok((crate::keys_cli::key_path(dir, "request-keys", model, &m), m));
    }
    let folder = crate::keys_cli::key_path(dir, "request-keys", model, "x").with_file_name("");
    let mut found: Vec<String> = match std::fs::read_dir(&folder) {
        Ok(entries) => {
            entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".key").map(str::to_owned)).collect()
        }
        Err(_) => Vec::new(),
    };
    found.sort();
    match found.as_slice() {
        [one] => Ok((folder.join(format!("{one}.key")), one.clone())),
        [] => anyhow::bail!(
            "no request key for {model} in {}: run `enclava keys request-key --model {model} --measurement HEX` first, \
             or pass --request-key FILE --measurement HEX",
            folder.display()
        ),
        many => {
            anyhow::bail!("request keys for {model} on several measurements ({}): pass --measurement", many.join(", "))
        }
    }
}

async fn serverless(
    a: InferArgs,
    endpoint: String,
    input: Tensor,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<ExitCode> {
    let dir = crate::keys_cli::credentials_dir(a.config_dir.as_deref(), env)?;
    let (key_file, measurement) = match &a.request_key {
        Some(f) => {
            let m = a.measurement.clone().context("--request-key needs --measurement: the measurement it is for")?;
            (f.clone(), m.to_ascii_lowercase())
        }
        None => find_request_key(&dir, &a.model, a.measurement.as_deref())?,
    };
    let user = match &a.user {
        Some(u) => u.clone(),
        None => {
            let server = a.server.trim_end_matches('/');
            match crate::keys_cli::read_credentials(&dir)?.get(server) {
                Some(c) => c.user_id.clone(),
                None => anyhow::bail!(
                    "no identity for {server} in {}: pass --user, or --server the key broker you registered with",
                    dir.display()
                ),
            }
        }
    };
    let key = crate::keys_cli::read_request_key(&key_file)?;
    let user_key = enclava_client::infer::UserKey::new(user.clone(), &measurement, &key);
    let mut opts = enclava_client::infer::ServerlessOptions::new(endpoint.clone(), a.model.clone(), user_key);
    opts.max_attempts = a.attempts.max(1);
    let out =
        enclava_client::infer::infer_serverless(&opts, &input.to_npy()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let (output, top) = finish(&a, &out)?;
    if a.json {
        let v = serde_json::json!({
            "output": output,
            "top": top,
            "serverless": { "endpoint": endpoint, "user": user, "measurement": measurement },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "ran at {endpoint}, sealed with {user}'s request key for measurement {}…: only enclaves the key broker \
             attested with that measurement could open it",
            measurement.get(..16).unwrap_or(&measurement)
        );
        println!("{}", top_line(&output, &top));
    }
    Ok(ExitCode::SUCCESS)
}
