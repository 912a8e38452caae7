//! `enclava keys …`: the key broker's REST API from the command line (through
//! [`enclava_client::keys::KeysClient`]). Keeps this user's credential for each server
//! in `credentials.json` in the config folder (mode 0600), and keys it generates under
//! `model-keys/` and `request-keys/` there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use enclava_client::keys::KeysClient;
use enclava_contracts::keys::rest::*;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// `enclava keys`
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Key broker URL
    #[arg(long, env = "ENCLAVA_SERVER", default_value = "http://127.0.0.1:7000", global = true)]
    pub server: String,
    /// Folder holding this user's credentials and generated keys [default: ~/.config/enclava]
    #[arg(long, env = "ENCLAVA_CONFIG_DIR", global = true)]
    pub config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a new user identity on the broker and keep its credential; prints the user id.
    Register {
        /// A one-time invite (where the broker registers by invite; an administrator invite, such
        /// as the one in the broker's DATA_DIR/admin-invite, makes an administrator)
        #[arg(long, env = "ENCLAVA_INVITE")]
        invite: Option<String>,
    },
    /// Make a one-time invite for a new user (administrators only); prints it once.
    Invite {
        /// The invite makes an administrator
        #[arg(long)]
        admin: bool,
    },
    /// Print this identity's user id.
    Whoami,
    /// Upload a model key (or generate one), as the model's new version; the first uploader owns the model.
    ModelKey {
        #[arg(long)]
        model: String,
        /// 32-byte key file (raw, or 64 hex characters); generated and kept in the config folder when absent
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The model's release policy (TOML or JSON); the broker's default when never set
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Let enclaves with this measurement serve this user's requests to a model (owner only).
    Grant {
        #[arg(long)]
        model: String,
        #[arg(long)]
        measurement: String,
        #[arg(long)]
        user: String,
    },
    /// Upload (or generate) this user's key for requests to a model on one enclave measurement.
    RequestKey {
        #[arg(long)]
        model: String,
        #[arg(long)]
        measurement: String,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Revoke active grants of a model (owner only); without --measurement/--user, all of them.
    Revoke {
        #[arg(long)]
        model: String,
        #[arg(long)]
        measurement: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
    /// A new key version for a model (generated unless --key-file); re-encrypt the model with it.
    Rotate {
        #[arg(long)]
        model: String,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// List your models, their grants and your request keys.
    List {
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log about you and your models; --verify checks the whole chain (exit 1 if broken).
    Audit {
        #[arg(long)]
        verify: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Credential {
    pub(crate) user_id: String,
    token: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// A refusal or failure from the key broker as the CLI says it: the message, then the code the
/// broker sent (the same code gRPC, REST and the nodes use).
pub(crate) fn said(e: enclava_core::Error) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e.message, e.code)
}

fn credentials_path(dir: &Path) -> PathBuf {
    dir.join("credentials.json")
}

pub(crate) fn read_credentials(dir: &Path) -> anyhow::Result<BTreeMap<String, Credential>> {
    let path = credentials_path(dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a secret file atomically, readable only by its owner.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot install {}", path.display()))
}

/// A key from a file (32 raw bytes or 64 hex characters).
pub(crate) fn read_key(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let raw = Zeroizing::new(std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?);
    if raw.len() == 32 {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&raw);
    match hex::decode(text.trim()) {
        Ok(k) if k.len() == 32 => Ok(Zeroizing::new(k)),
        _ => bail!("{} is not a key: it must hold 32 bytes, raw or as 64 hex characters", path.display()),
    }
}

/// A 32-byte key from a file, as an array (a request key).
pub(crate) fn read_request_key(path: &Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let raw = read_key(path)?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&raw);
    Ok(key)
}

pub(crate) fn generate_key() -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use ring::rand::SecureRandom;
    let mut k = Zeroizing::new(vec![0u8; 32]);
    ring::rand::SystemRandom::new().fill(&mut k).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(k)
}

pub(crate) fn key_path(dir: &Path, kind: &str, model: &str, name: &str) -> PathBuf {
    let mut p = dir.join(kind);
    for seg in model.split('/') {
        p.push(seg);
    }
    p.join(format!("{name}.key"))
}

/// The config folder credentials live in.
pub(crate) fn credentials_dir(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<PathBuf> {
    match explicit.map(Path::to_owned).or_else(|| crate::config::config_dir(env)) {
        Some(d) => Ok(d),
        None => bail!("no --config-dir and no HOME to keep credentials in: pass --config-dir DIR"),
    }
}

/// Registers a new identity on `server` and keeps its credential in `dir`; returns the user id.
pub(crate) async fn register(server: &str, dir: &Path, invite: Option<&str>) -> anyhow::Result<String> {
    let server = server.trim_end_matches('/').to_owned();
    let mut creds = read_credentials(dir)?;
    if let Some(c) = creds.get(&server) {
        bail!(
            "this config folder already holds identity {} for {server}; use another --config-dir for a new one",
            c.user_id
        );
    }
    let r = KeysClient::new(&server, None).register(invite).await.map_err(said)?;
    creds.insert(server, Credential { user_id: r.user_id.clone(), token: r.token });
    let json = Zeroizing::new(serde_json::to_vec_pretty(&creds)?);
    write_private(&credentials_path(dir), &json)?;
    Ok(r.user_id)
}

/// Uploads this user's request key for `model` on `measurement`: the one in `key_file`, or a fresh
/// one kept in `dir` (returned).
pub(crate) async fn upload_request_key(
    rest: &KeysClient,
    dir: &Path,
    model: &str,
    measurement: &str,
    key_file: Option<&Path>,
) -> anyhow::Result<Option<PathBuf>> {
    let (key, saved) = match key_file {
        Some(f) => (read_key(f)?, None),
        None => (generate_key()?, Some(key_path(dir, "request-keys", model, &measurement.to_lowercase()))),
    };
    rest.put_request_key(model, measurement, &key).await.map_err(said)?;
    if let Some(p) = &saved {
        write_private(p, hex::encode(key.as_slice()).as_bytes())?;
    }
    Ok(saved)
}

/// The credential kept in `dir` for `server`, and its user id.
fn credential(server: &str, dir: &Path) -> anyhow::Result<Credential> {
    let server = server.trim_end_matches('/');
    let mut creds = read_credentials(dir)?;
    let Some(cred) = creds.remove(server) else {
        bail!(
            "no identity for {server} in {}: run `enclava keys --server {server} register` first",
            credentials_path(dir).display()
        );
    };
    Ok(cred)
}

/// The bearer credential kept in `dir` for `server`.
pub(crate) fn token(server: &str, dir: &Path) -> anyhow::Result<Zeroizing<String>> {
    Ok(Zeroizing::new(credential(server, dir)?.token.clone()))
}

/// A REST session as the identity kept in `dir` for `server`, and that identity's user id.
pub(crate) fn session(server: &str, dir: &Path) -> anyhow::Result<(KeysClient, String)> {
    let cred = credential(server, dir)?;
    let server = server.trim_end_matches('/');
    Ok((KeysClient::new(server, Some(Zeroizing::new(cred.token.clone()))), cred.user_id.clone()))
}

pub async fn run(a: KeysArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let dir = credentials_dir(a.config_dir.as_deref(), env)?;
    let server = a.server.trim_end_matches('/').to_owned();
    if let KeysCommand::Register { invite } = &a.command {
        let user = register(&server, &dir, invite.as_deref()).await?;
        println!("{user}");
        eprintln!("registered; credential kept in {}", credentials_path(&dir).display());
        return Ok(ExitCode::SUCCESS);
    }
    let (rest, _) = session(&server, &dir)?;
    match a.command {
        KeysCommand::Register { .. } => unreachable!("handled above"),
        KeysCommand::Invite { admin } => {
            let i = rest.invite(admin).await.map_err(said)?;
            println!("{}", i.token);
            eprintln!(
                "one-time {}invite, valid until {}: `enclava keys register --invite TOKEN`",
                if admin { "administrator " } else { "" },
                enclava_attest::time::format_rfc3339(i.expires_at_ms / 1000)
            );
        }
        KeysCommand::Whoami => {
            let w = rest.whoami().await.map_err(said)?;
            println!("{}", w.user_id);
        }
        KeysCommand::ModelKey { model, key_file, policy } => {
            upload_model_key(&rest, &dir, &model, key_file.as_deref(), policy.as_deref(), false).await?;
        }
        KeysCommand::Rotate { model, key_file } => {
            upload_model_key(&rest, &dir, &model, key_file.as_deref(), None, true).await?;
        }
        KeysCommand::Grant { model, measurement, user } => {
            rest.grant(&model, &measurement, &user).await.map_err(said)?;
            println!("granted: {user}'s requests to {model} may be served by that measurement");
        }
        KeysCommand::RequestKey { model, measurement, key_file } => {
            match upload_request_key(&rest, &dir, &model, &measurement, key_file.as_deref()).await? {
                Some(p) => println!("request key stored; your copy is in {}", p.display()),
                None => println!("request key stored"),
            }
        }
        KeysCommand::Revoke { model, measurement, user } => {
            let r = rest.revoke(&RevokeRequest { model: model.clone(), measurement, user }).await.map_err(said)?;
            println!("revoked {} grant(s) of {model}", r.revoked);
        }
        KeysCommand::List { model, json } => {
            let l = rest.list(model.as_deref()).await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                print_listing(&l);
            }
        }
        KeysCommand::Audit { verify: true, .. } => {
            let c = rest.verify_audit().await.map_err(said)?;
            if c.ok {
                println!("audit log intact: {} records, chain and anchor verified", c.records);
            } else {
                println!("audit log TAMPERED: {}", c.problem.unwrap_or_default());
                return Ok(ExitCode::from(1));
            }
        }
        KeysCommand::Audit { verify: false, limit, json } => {
            let rows = rest.audit(limit).await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    println!(
                        "{:>6}  {}  {:<11} {:<24} {} {} {}",
                        r.seq,
                        enclava_attest::time::format_rfc3339((r.at_ms / 1000) as u64),
                        r.action,
                        r.model,
                        r.actor,
                        if r.subject.is_empty() { String::new() } else { format!("for {}", r.subject) },
                        r.detail
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn upload_model_key(
    rest: &KeysClient,
    dir: &Path,
    model: &str,
    key_file: Option<&Path>,
    policy: Option<&Path>,
    rotate: bool,
) -> anyhow::Result<()> {
    let key = match key_file {
        Some(f) => read_key(f)?,
        None => generate_key()?,
    };
    let policy = policy
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read policy {}", p.display())))
        .transpose()?;
    let v = rest.put_model_key(model, &key, policy.as_deref(), rotate).await.map_err(said)?;
    if key_file.is_none() {
        let p = key_path(dir, "model-keys", model, &format!("v{}", v.version));
        write_private(&p, hex::encode(key.as_slice()).as_bytes())?;
        println!("{model}: key version {} stored; your copy is in {}", v.version, p.display());
    } else {
        println!("{model}: key version {} stored", v.version);
    }
    Ok(())
}

fn print_listing(l: &Listing) {
    if l.models.is_empty() {
        println!("you own no models");
    }
    for m in &l.models {
        println!(
            "{}  version {}{}",
            m.id,
            m.current_version,
            if m.has_policy { "  (own policy)" } else { "  (broker's default policy)" }
        );
        for g in &m.grants {
            let state = if g.revoked_at_ms.is_some() { "revoked" } else { "active" };
            println!("  {state:<8} measurement {}  user {}", g.measurement, g.user);
        }
    }
    if !l.request_keys.is_empty() {
        println!("your request keys:");
        for r in &l.request_keys {
            println!("  {}  measurement {}", r.model, r.measurement);
        }
    }
}
