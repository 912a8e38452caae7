//! Where options come from, strongest first: the command line, `ENCLAVA_*` environment variables
//! (clap), the config file (`--config`, `ENCLAVA_CONFIG`, or `config.toml` in the config folder),
//! then built-in defaults. The file has one table per command (`[server]`, `[node]`, `[find]`)
//! whose keys are the long flag names; unknown keys are errors.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::cli::{FindArgs, NodeArgs, ServerArgs};

/// The config file's tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerArgs,
    #[serde(default)]
    pub node: NodeArgs,
    #[serde(default)]
    pub find: FindArgs,
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

/// Fills every option the command line and environment left unset from the file's value.
pub trait Layer {
    fn or_file(self, file: Self) -> Self;
}

/// Implements [`Layer`] field by field: `Option`s take the file's value when unset, lists when empty.
macro_rules! layer {
    ($ty:ty { $($opt:ident),* } lists { $($list:ident),* } flags { $($flag:ident),* }) => {
        impl Layer for $ty {
            fn or_file(self, file: Self) -> Self {
                Self {
                    $($opt: self.$opt.or(file.$opt),)*
                    $($list: if self.$list.is_empty() { file.$list } else { self.$list },)*
                    $($flag: self.$flag || file.$flag,)*
                }
            }
        }
    };
}

layer!(ServerArgs { registry, listen, namespace, service, cache_ttl_ms, sweep_interval_ms, database, data_dir, kek_file, policy, collateral, registration, register_rate, release_rate } lists { roles } flags { accept_rollback });
layer!(NodeArgs { registry, listen, advertise, platform, data_dir, namespace, service, sim_root, key_broker, blobs, memory_budget_mb } lists { data, serve_model } flags { openwhisk });
layer!(FindArgs { server, data, measurement, platform, limit, policy, collateral, at } lists { deny } flags { json, verify });

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nregistry = \"redis://file:1\"\nlisten = \"127.0.0.1:9\"\n[node]\ndata = [\"a/b\"]\n",
        )
        .expect("write");
        let file = load(Some(&path), &no_env).expect("loads");
        let cli = ServerArgs { listen: Some("127.0.0.1:1".into()), ..Default::default() };
        let merged = cli.or_file(file.server);
        assert_eq!(merged.listen.as_deref(), Some("127.0.0.1:1"), "flag wins");
        assert_eq!(merged.registry.as_deref(), Some("redis://file:1"), "file fills");
        assert_eq!(NodeArgs::default().or_file(file.node).data, vec!["a/b".to_owned()]);
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
