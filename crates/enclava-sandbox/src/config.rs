//! Typed configuration of `enclava server` and `enclava node`: the `[server]` and `[node]` tables
//! of the config file, each default written once (in `Default`), checked by `validate()`. The
//! command line fills these from flags, `ENCLAVA_*` variables and the file; `enclava dev` reads
//! the same `[server]` table. Paths that default under a home folder are resolved by the caller,
//! which passes its environment in.

use std::path::PathBuf;

use serde::Deserialize;

/// `enclava server` (the `[server]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServerConfig {
    /// `memory`, `redis://host:port` or `redis+cluster://host:port[,…]`.
    pub registry: String,
    pub listen: String,
    pub namespace: String,
    pub service: String,
    pub cache_ttl_ms: u64,
    pub sweep_interval_ms: u64,
    /// The roles to run, from [`crate::roles::ROLES`].
    pub roles: Vec<String>,
    /// `sqlite://FILE` or `postgres://…`; `None`: `sqlite://DATA_DIR/keys.db`.
    pub database: Option<String>,
    /// The key broker's files; `None`: the caller's default (`~/.local/share/enclava/server`).
    pub data_dir: Option<PathBuf>,
    /// `None`: `DATA_DIR/kek.key` (or `ENCLAVA_KEK` when set).
    pub kek_file: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub collateral: Option<String>,
    /// `open`, `invite` or `closed`.
    pub registration: String,
    pub register_rate: u32,
    pub release_rate: u32,
    pub accept_rollback: bool,
    /// How long a farm host's lease on a job, and a federation node's on a run, lasts without renewal.
    pub farm_lease_ms: u64,
    /// The pools' local backend outside the sandbox: the command that starts one node for a pool
    /// (`{pool}`, `{n}`, `{models}` filled in); `None`: pools scale only by an external autoscaler.
    pub pool_node_command: Option<String>,
    /// How long a pool stays idle before the local backend stops a node it started.
    pub pool_idle_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            registry: "memory".into(),
            listen: "127.0.0.1:7000".into(),
            namespace: "enclava".into(),
            service: "enclava".into(),
            cache_ttl_ms: 1000,
            sweep_interval_ms: 10_000,
            roles: vec![
                "manager".into(),
                "keys".into(),
                "farm".into(),
                "federation".into(),
                "pools".into(),
                "ui".into(),
            ],
            database: None,
            data_dir: None,
            kek_file: None,
            policy: None,
            collateral: None,
            registration: "open".into(),
            register_rate: 10,
            release_rate: 100,
            accept_rollback: false,
            farm_lease_ms: 10_000,
            pool_node_command: None,
            pool_idle_ms: 30_000,
        }
    }
}

impl ServerConfig {
    /// Checks what can be checked without opening anything.
    pub fn validate(&self) -> Result<(), String> {
        let known: Vec<&str> = crate::roles::ROLES.iter().map(|(n, _)| *n).collect();
        if self.roles.is_empty() {
            return Err(format!("no roles: run at least one of {}", known.join(", ")));
        }
        for r in &self.roles {
            if !known.contains(&r.as_str()) {
                return Err(format!(
                    "unknown role {} in --roles: use {}",
                    enclava_core::text::quote(r),
                    known.join(", ")
                ));
            }
        }
        self.registry.parse::<enclava_registry::RegistrySpec>()?;
        enclava_registry::Keys::new(&self.namespace, &self.service)
            .map_err(|e| format!("--namespace/--service: {e}"))?;
        self.registration.parse::<enclava_keys::Registration>().map_err(|e| format!("--registration: {e}"))?;
        if self.runs("farm") && !self.runs("keys") {
            return Err("the farm role needs the keys role (its users and database): add keys to --roles".into());
        }
        if self.runs("ui") && !self.runs("keys") {
            return Err("the ui role needs the keys role (its users): add keys to --roles".into());
        }
        if self.runs("pools") && !self.runs("keys") {
            return Err("the pools role needs the keys role (its users): add keys to --roles".into());
        }
        if self.farm_lease_ms < 200 {
            return Err(format!("farm-lease-ms is {}: at least 200", self.farm_lease_ms));
        }
        if self.sweep_interval_ms < 100 {
            return Err(format!("--sweep-interval-ms is {}: at least 100", self.sweep_interval_ms));
        }
        Ok(())
    }

    pub fn runs(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// `enclava node` (the `[node]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NodeSettings {
    pub platform: String,
    pub registry: String,
    pub data: Vec<String>,
    /// `127.0.0.1:0`: any free port.
    pub listen: String,
    pub advertise: Option<String>,
    /// `None`: the caller's default (`~/.local/share/enclava/node`).
    pub data_dir: Option<PathBuf>,
    pub namespace: String,
    pub service: String,
    pub sim_root: Option<PathBuf>,
    pub serve_model: Vec<String>,
    pub key_broker: String,
    /// `None`: the caller's default (`~/.local/share/enclava/blobs`).
    pub blobs: Option<PathBuf>,
    /// 0: no limit.
    pub memory_budget_mb: u64,
    pub openwhisk: bool,
    /// What the host offers to farm jobs (`cpu=2,memory=4GiB,disk=10GiB`), checked against what
    /// is measured at start. `None`: nothing offered.
    pub offer: Option<String>,
    /// The farm server to take jobs from (`http://host:port`); `None`: no farm work.
    pub farm: Option<String>,
    /// Root filesystems offered to sandboxed-process jobs, each `NAME=DIR`, or `busybox` (a root
    /// made from the host's static busybox in the data folder).
    pub rootfs: Vec<String>,
    /// Offer VM jobs (qemu with a guest kernel; confidential ones only on SEV-SNP or TDX).
    pub vm: bool,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            platform: "sim".into(),
            registry: "memory".into(),
            data: Vec::new(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            data_dir: None,
            namespace: "enclava".into(),
            service: "enclava".into(),
            sim_root: None,
            serve_model: Vec::new(),
            key_broker: "http://127.0.0.1:7000".into(),
            blobs: None,
            memory_budget_mb: 0,
            openwhisk: false,
            offer: None,
            farm: None,
            rootfs: Vec::new(),
            vm: false,
        }
    }
}

impl NodeSettings {
    pub fn validate(&self) -> Result<(), String> {
        self.platform.parse::<enclava_core::Platform>()?;
        self.registry.parse::<enclava_registry::RegistrySpec>()?;
        enclava_registry::Keys::new(&self.namespace, &self.service)
            .map_err(|e| format!("--namespace/--service: {e}"))?;
        if self.openwhisk && self.serve_model.is_empty() {
            return Err("--openwhisk serves models: name them with --serve-model MODEL".into());
        }
        if let Some(offer) = &self.offer {
            enclava_node::capacity::Offer::parse(offer).map_err(|e| format!("--offer: {e}"))?;
        }
        if (!self.rootfs.is_empty() || self.vm) && self.farm.is_none() {
            return Err("--rootfs and --vm are offered to farm jobs: name the farm with --farm URL".into());
        }
        for r in &self.rootfs {
            if r != "busybox" && r.split_once('=').is_none_or(|(n, d)| n.is_empty() || d.is_empty()) {
                return Err(format!("--rootfs {}: use NAME=DIR or busybox", enclava_core::text::quote(r)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_tables_are_strict() {
        ServerConfig::default().validate().expect("default server");
        NodeSettings::default().validate().expect("default node");
        let s: ServerConfig = toml::from_str("registry = \"redis://h:1\"\naccept-rollback = true\n").expect("parses");
        assert_eq!((s.registry.as_str(), s.accept_rollback, s.cache_ttl_ms), ("redis://h:1", true, 1000));
        assert!(toml::from_str::<ServerConfig>("registri = \"x\"\n").is_err(), "unknown keys are errors");
        let bad = ServerConfig { roles: vec!["quantum".into()], ..Default::default() };
        assert!(bad.validate().expect_err("unknown role").contains("manager, keys"));
        let ow = NodeSettings { openwhisk: true, ..Default::default() };
        assert!(ow.validate().is_err());
    }
}
