//! Where options come from, strongest first: the command line, `ENCLAVA_*` environment variables
//! (clap), the config file (`--config`, `ENCLAVA_CONFIG`, or `config.toml` in the config folder),
//! then built-in defaults (written once, in the typed configs' `Default`). The file has one table
//! per command (`[server]`, `[node]`, `[find]`) whose keys are the long flag names; unknown keys
//! are errors. A boolean given as `--flag=false` turns off what the file turned on.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use enclava_sandbox::{NodeSettings, ServerConfig};
use serde::Deserialize;

use crate::cli::{FindArgs, NodeArgs, ServerArgs};

/// `enclava find` (the `[find]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct FindConfig {
    pub server: String,
    pub data: Option<String>,
    pub measurement: Option<String>,
    pub platform: Option<String>,
    pub limit: i32,
    pub deny: Vec<String>,
    pub json: bool,
    pub verify: bool,
    pub policy: Option<PathBuf>,
    pub collateral: Option<String>,
    pub at: Option<String>,
}

impl Default for FindConfig {
    fn default() -> Self {
        FindConfig {
            server: "http://127.0.0.1:7000".into(),
            data: None,
            measurement: None,
            platform: None,
            limit: 1,
            deny: Vec::new(),
            json: false,
            verify: false,
            policy: None,
            collateral: None,
            at: None,
        }
    }
}

impl FindConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.verify && self.policy.is_none() {
            bail!("--verify needs --policy FILE: what the enclaves must prove");
        }
        Ok(())
    }
}

/// The config file's tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default)]
    pub find: FindConfig,
}

/// The folder Enclava keeps its configuration in: `ENCLAVA_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/enclava`, else `~/.config/enclava`.
pub fn config_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = env("ENCLAVA_CONFIG_DIR") {
        return Some(d.into());
    }
    if let Some(d) = env("XDG_CONFIG_HOME") {
        return Some(Path::new(&d).join("enclava"));
    }
    env("HOME").map(|h| Path::new(&h).join(".config/enclava"))
}

/// Reads the config file: `explicit` must exist; the default one is read only if it does.
pub fn load(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<FileConfig> {
    let path = match explicit {
        Some(p) => {
            if !p.is_file() {
                bail!("config file {} does not exist (from --config or ENCLAVA_CONFIG)", p.display());
            }
            p.to_owned()
        }
        None => match config_dir(env).map(|d| d.join("config.toml")) {
            Some(p) if p.is_file() => p,
            _ => return Ok(FileConfig::default()),
        },
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// `$XDG_DATA_HOME/enclava/<what>`, else `~/.local/share/enclava/<what>`.
pub fn default_data_dir(env: &dyn Fn(&str) -> Option<String>, what: &str) -> anyhow::Result<PathBuf> {
    if let Some(d) = env("XDG_DATA_HOME") {
        return Ok(PathBuf::from(d).join("enclava").join(what));
    }
    match env("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/enclava").join(what)),
        None => bail!("no --data-dir given and no HOME to put one in: pass --data-dir DIR"),
    }
}

/// Sets each field from `$from` when it was given.
macro_rules! overlay {
    ($to:ident, $from:ident; $($field:ident),*; opt $($opt:ident),*; list $($list:ident),*) => {
        $(if let Some(v) = $from.$field { $to.$field = v; })*
        $(if let Some(v) = $from.$opt { $to.$opt = Some(v); })*
        $(if !$from.$list.is_empty() { $to.$list = $from.$list; })*
    };
}

impl ServerArgs {
    /// The file's `[server]` table with what the command line and environment gave on top.
    pub fn over(self, mut c: ServerConfig) -> ServerConfig {
        let a = self;
        overlay!(c, a; registry, listen, namespace, service, cache_ttl_ms, sweep_interval_ms, registration,
            register_rate, release_rate, accept_rollback, farm_lease_ms, pool_idle_ms;
            opt database, data_dir, kek_file, policy, collateral, pool_node_command;
            list roles);
        c
    }
}

impl NodeArgs {
    /// The file's `[node]` table with what the command line and environment gave on top.
    pub fn over(self, mut c: NodeSettings) -> NodeSettings {
        let a = self;
        overlay!(c, a; platform, registry, listen, namespace, service, key_broker, memory_budget_mb, openwhisk, vm;
            opt advertise, data_dir, sim_root, blobs, offer, farm;
            list data, serve_model, rootfs);
        c
    }
}

impl FindArgs {
    /// The file's `[find]` table with what the command line and environment gave on top.
    pub fn over(self, mut c: FindConfig) -> FindConfig {
        let a = self;
        overlay!(c, a; server, limit, json, verify; opt data, measurement, platform, policy, collateral, at; list deny);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn file_fills_what_flags_leave_unset_and_false_turns_off() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nregistry = \"redis://file:1\"\nlisten = \"127.0.0.1:9\"\n[node]\ndata = [\"a/b\"]\nopenwhisk = true\n",
        )
        .expect("write");
        let file = load(Some(&path), &no_env).expect("loads");
        let cli = ServerArgs { listen: Some("127.0.0.1:1".into()), ..Default::default() };
        let merged = cli.over(file.server);
        assert_eq!(merged.listen, "127.0.0.1:1", "flag wins");
        assert_eq!(merged.registry, "redis://file:1", "file fills");
        assert_eq!(merged.cache_ttl_ms, 1000, "default from the one place defaults are written");
        let node = NodeArgs { openwhisk: Some(false), ..Default::default() }.over(file.node);
        assert_eq!(node.data, vec!["a/b".to_owned()]);
        assert!(!node.openwhisk, "--openwhisk=false beats the file's true");
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nregistri = \"x\"\n").expect("write");
        let err = format!("{:#}", load(Some(&path), &no_env).expect_err("typo"));
        assert!(err.contains("registri"), "{err}");
        assert!(load(Some(&dir.path().join("nope.toml")), &no_env).is_err());
        let env = |k: &str| (k == "ENCLAVA_CONFIG_DIR").then(|| dir.path().join("none").display().to_string());
        assert!(load(None, &env).is_ok(), "a missing default file is fine");
    }
}
