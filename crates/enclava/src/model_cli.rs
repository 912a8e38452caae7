//! `enclava model …`: make a model to try (`gen`), and `upload` one: generate a fresh key, register
//! it with the key broker as the model's next version, encrypt the ONNX file into a package bound
//! to (id, version), store it in the blob folder, and grant measurements.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use enclava_client::model::Uploaded;
use enclava_model::blob::FolderStore;

use crate::keys_cli::said;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Encrypt a model, store it, register its key with the key broker and grant measurements.
    Upload(UploadArgs),
    /// Write a generated ONNX model (and a matching input .npy) to try Enclava with.
    Gen(GenArgs),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The ONNX file
    pub file: PathBuf,
    /// Model id, e.g. acme/mobilenet (the first uploader owns it)
    #[arg(long)]
    pub id: String,
    /// Release policy for the model's key (TOML or JSON) [default: the broker's]
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// An enclave measurement (hex) to grant for your own requests; repeat for more
    #[arg(long = "grant")]
    pub grants: Vec<String>,
    /// Key broker URL
    #[arg(long, env = "ENCLAVA_SERVER", default_value = "http://127.0.0.1:7000")]
    pub server: String,
    /// Folder holding your credentials [default: ~/.config/enclava]
    #[arg(long, env = "ENCLAVA_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Blob folder the nodes read packages from [default: ~/.local/share/enclava/blobs]
    #[arg(long, env = "ENCLAVA_BLOBS")]
    pub blobs: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GenKind {
    /// MobileNetV2, 224×224×3 → 1000 classes (14 MB)
    Mobilenet,
    /// A tiny classifier, 32×32×3 → 10 classes (7 KB)
    Tiny,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    pub kind: GenKind,
    /// Where to write the model
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a sample input here (.npy)
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Seed of the generated weights
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn run(cmd: ModelCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Gen(a) => gen_model(&a),
        ModelCommand::Upload(a) => {
            let dir = crate::keys_cli::credentials_dir(a.config_dir.as_deref(), env)?;
            let blobs = match a.blobs.clone() {
                Some(b) => b,
                None => crate::config::default_data_dir(env, "blobs")?,
            };
            let onnx = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
            let policy = a
                .policy
                .as_ref()
                .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read policy {}", p.display())))
                .transpose()?;
            let (r, user) = upload(&a.server, &dir, &blobs, &a.id, &onnx, policy.as_deref(), &a.grants).await?;
            println!(
                "{}: version {} encrypted ({} bytes) and stored as {}",
                a.id,
                r.version,
                r.package_len,
                blobs.join(&r.blob).display()
            );
            if a.grants.is_empty() {
                println!(
                    "grant an enclave measurement next: enclava keys grant --model {} --measurement HEX --user {}",
                    a.id, user
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The upload as `enclava model upload` and `enclava dev` do it: as the identity kept in
/// `config_dir` for `server`, into the blob folder `blobs`; prints each grant. Returns what was
/// stored and the uploader's user id.
pub async fn upload(
    server: &str,
    config_dir: &Path,
    blobs: &Path,
    id: &str,
    onnx: &[u8],
    policy: Option<&str>,
    grants: &[String],
) -> anyhow::Result<(Uploaded, String)> {
    enclava_core::id::check_model_id(id).map_err(said)?;
    let (keys, user) = crate::keys_cli::session(server, config_dir)?;
    let up = enclava_client::model::upload(&keys, &user, &FolderStore::new(blobs), id, onnx, policy, grants)
        .await
        .map_err(said)?;
    for m in grants {
        println!("granted measurement {m} for your requests to {id}");
    }
    Ok((up, user))
}

fn gen_model(a: &GenArgs) -> anyhow::Result<ExitCode> {
    let (onnx, shape): (Vec<u8>, &[usize]) = match a.kind {
        GenKind::Mobilenet => (enclava_runtime::generate::mobilenet_v2(a.seed), &[1, 3, 224, 224]),
        GenKind::Tiny => (enclava_runtime::generate::tiny(a.seed), &[1, 3, 32, 32]),
    };
    std::fs::write(&a.out, &onnx).with_context(|| format!("cannot write {}", a.out.display()))?;
    println!("wrote {} ({} bytes)", a.out.display(), onnx.len());
    if let Some(p) = &a.input {
        let t = enclava_runtime::generate::sample_input(shape, a.seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(p, t.to_npy()).with_context(|| format!("cannot write {}", p.display()))?;
        println!("wrote {} (input of shape {shape:?})", p.display());
    }
    if a.out.extension().is_some_and(|e| e != "onnx") {
        bail!("wrote the model, but give it an .onnx name so tools recognise it");
    }
    Ok(ExitCode::SUCCESS)
}
