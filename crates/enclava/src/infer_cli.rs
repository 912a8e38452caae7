//! `enclava infer`: run a model on an attested enclave. Finds one through the enclave manager,
//! verifies its evidence against your policy before sending anything, seals the input to its
//! attested key, and opens the sealed answer; a refused or unreachable enclave is denied and the
//! next one tried, a bounded number of times.

use std::path::PathBuf;
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
    /// What the enclave must prove (TOML or JSON policy); required: nothing is sent unverified
    #[arg(long, env = "ENCLAVA_POLICY")]
    pub policy: PathBuf,
    /// Enclave manager URL
    #[arg(long, env = "ENCLAVA_SERVER", default_value = "http://127.0.0.1:7000")]
    pub server: String,
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

pub async fn run(a: InferArgs) -> anyhow::Result<ExitCode> {
    let policy = Policy::load(&a.policy).map_err(anyhow::Error::msg)?;
    let raw = std::fs::read(&a.input).with_context(|| format!("cannot read input {}", a.input.display()))?;
    let input = if raw.starts_with(b"\x93NUMPY") {
        Tensor::from_npy(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?
    } else {
        serde_json::from_slice::<Tensor>(&raw).with_context(|| {
            format!("{} is neither .npy nor a JSON tensor {{\"shape\": [...], \"data\": [...]}}", a.input.display())
        })?
    };
    let mut opts = enclava_client::infer::InferOptions::new(a.server.clone(), a.model.clone(), policy);
    opts.max_attempts = a.attempts.max(1);
    let out = enclava_client::infer::infer(&opts, &input.to_npy()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let output = Tensor::from_npy(&out.output_npy).map_err(|e| anyhow::anyhow!("the enclave's output: {e}"))?;
    if let Some(p) = &a.output {
        std::fs::write(p, output.to_npy()).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let top: Vec<(usize, f32)> = output.top_k(5);
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
            a.policy.display()
        );
        if out.platform == "sim" {
            println!("note: sim is a simulated TEE for testing; it is NOT confidential");
        }
        println!(
            "output shape {:?}; top classes: {}",
            output.shape(),
            top.iter().map(|(i, p)| format!("{i} ({p:.4})")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
