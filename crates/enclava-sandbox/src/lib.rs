//! The one place the system is wired. `enclava server` and `enclava node` build their parts here
//! ([`serve`], [`start_node`]); `enclava dev`, the integration tests and the benchmarks start the
//! whole system in-process with [`SandboxBuilder`]: server roles on a free port, a registry (in
//! memory, or Redis / Redis Cluster), the key broker on SQLite or PostgreSQL, a sim root, and any
//! number of nodes. Nothing else wires the system by hand.
//!
//! # Layout
//! - [`config`]: the typed `[server]` and `[node]` configuration.
//! - [`roles`]: the roles `--roles` knows (one line per role) and how each is built; the
//!   executors nodes run (one line per executor).
//! - [`SandboxBuilder`] / [`Sandbox`]: the system in one process.

pub mod config;
pub mod roles;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use enclava_attest::sim::SimRoot;
use enclava_keys::{Broker, BrokerConfig, KekSource};
use enclava_node::{NodeConfig, NodeHandle, ServeConfig};
use enclava_registry::{Keys, Registry, RegistrySpec};
use enclava_server::{Role, Server};
use tokio::net::TcpListener;

pub use config::{NodeSettings, ServerConfig};

/// The environment as a function (so tests pass their own).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Opens the registry a spec names, under `namespace` and `service`.
pub fn open_registry(spec: &str, namespace: &str, service: &str) -> anyhow::Result<Arc<dyn Registry>> {
    let spec: RegistrySpec = spec.parse().map_err(anyhow::Error::msg)?;
    let keys = Keys::new(namespace, service).map_err(|e| anyhow::anyhow!("--namespace/--service: {e}"))?;
    Ok(enclava_registry::open(&spec, keys)?)
}

/// Binds `listen`, with a message that says what to do when it is taken.
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}: is another process using it? choose another with --listen")
    })
}

/// The URL the server reaches itself on (loopback when it listens on every address).
fn self_url(addr: std::net::SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
    format!("http://{}", std::net::SocketAddr::new(host, addr.port()))
}

/// What the roles were built with, and the broker among them.
struct Built {
    server: Server,
    broker: Option<Arc<Broker>>,
    pools: Option<enclava_pool::role::PoolsRole>,
    ui: Option<enclava_ui::UiRole>,
}

async fn build_server(
    config: &ServerConfig,
    data_dir: &Path,
    registry: Arc<dyn Registry>,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    kek: Option<KekSource>,
    tune_broker: Option<&(dyn Fn(&mut BrokerConfig) + Sync)>,
    extra: Vec<Arc<dyn Role>>,
) -> anyhow::Result<Built> {
    config.validate().map_err(anyhow::Error::msg)?;
    let ctx = roles::RoleContext {
        config,
        data_dir,
        registry,
        env,
        tune_broker,
        kek,
        broker: Mutex::new(None),
        pools: Mutex::new(None),
        ui: Mutex::new(None),
    };
    let mut server = Server::new();
    for role in roles::build(&ctx).await? {
        server = server.role(role);
    }
    for role in extra {
        server = server.role(role);
    }
    let broker = ctx.broker.lock().unwrap_or_else(|p| p.into_inner()).take();
    let pools = ctx.pools.lock().unwrap_or_else(|p| p.into_inner()).take();
    let ui = ctx.ui.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Built { server, broker, pools, ui })
}

/// `enclava server`: the configured roles on `config.listen` until `shutdown`; `data_dir` is the
/// resolved `config.data_dir`.
pub async fn serve(
    config: &ServerConfig,
    data_dir: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = open_registry(&config.registry, &config.namespace, &config.service)?;
    let built = build_server(config, data_dir, registry, env, None, None, Vec::new()).await?;
    let listener = bind(&config.listen).await?;
    if let Some(ui) = &built.ui {
        ui.set_self_url(&self_url(listener.local_addr()?));
    }
    built.server.run(listener, shutdown).await?;
    Ok(())
}

/// `enclava node`: a node as `settings` describe it, on `registry`. `data_dir` and `blobs` are the
/// resolved folders.
pub async fn start_node(
    settings: &NodeSettings,
    data_dir: &Path,
    blobs: &Path,
    registry: Arc<dyn Registry>,
) -> anyhow::Result<NodeHandle> {
    let config = node_config(settings, data_dir, blobs)?;
    if let Some(offer) = &settings.offer {
        check_offer(offer, data_dir)?;
    }
    launch_node(config, &settings.listen, registry).await
}

/// Starts `node`'s farm host agent, taking jobs from `settings.farm` within `settings.offer` (or
/// all that was measured), offering `settings.rootfs` to sandboxed-process jobs.
pub async fn start_host(
    node: &NodeHandle,
    settings: &NodeSettings,
    data_dir: &Path,
) -> anyhow::Result<enclava_host::HostAgent> {
    let server = settings.farm.as_deref().context("no --farm server to take jobs from")?;
    let measured = match &settings.offer {
        Some(offer) => check_offer(offer, data_dir)?,
        None => enclava_node::capacity::measure(data_dir),
    };
    let mut config = enclava_host::HostConfig::new(server, measured, data_dir.join("farm"));
    config.vm = settings.vm;
    if let Some(offer) = &settings.offer {
        let offer = enclava_node::capacity::Offer::parse(offer).map_err(anyhow::Error::msg)?;
        config.offer_cores = offer.cores;
        config.offer_memory_bytes = offer.memory_bytes;
    }
    for r in &settings.rootfs {
        let (name, dir) = match r.split_once('=') {
            Some((n, d)) => (n.to_owned(), PathBuf::from(d)),
            None => {
                let dir = enclava_process::busybox_root(&data_dir.join("rootfs"), BUSYBOX_APPLETS)
                    .map_err(|e| anyhow::anyhow!("--rootfs busybox: {e}"))?;
                ("busybox".to_owned(), dir)
            }
        };
        config.rootfs.insert(name, dir);
    }
    let agent = enclava_host::HostAgent::start(node.attester(), config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot join the farm at {server}: {e}"))?;
    if node.platform() == "sim" {
        tracing::warn!(
            "this farm host runs on platform sim: its jobs are NOT confidential (simulated TEE, testing only)"
        );
    }
    Ok(agent)
}

/// The applets the `busybox` root filesystem links.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "true",
    "false",
    "cat",
    "echo",
    "ls",
    "wc",
    "tr",
    "sort",
    "uniq",
    "head",
    "tail",
    "sleep",
    "id",
    "grep",
    "sed",
    "awk",
    "cut",
    "od",
    "sha256sum",
    "ln",
    "wget",
    "env",
];

/// The vantage6-algorithm-tools version Enclava shows vantage6 algorithms with.
pub const VANTAGE6_TOOLS: &str = "4.15.2";

/// The example vantage6 algorithm (`examples/vantage6/v6_mean`), a Python package written with
/// vantage6-algorithm-tools.
pub const VANTAGE6_EXAMPLE: &str = include_str!("../../../examples/vantage6/v6_mean/__init__.py");

/// What a node needs to run vantage6 Python algorithms in its sandbox: the host's Python, and
/// vantage6-algorithm-tools installed for it (scripts/test installs it into
/// `~/.cache/enclava/python/vantage6-algorithm-tools-VERSION`; `ENCLAVA_V6_TOOLS` names another
/// folder).
#[derive(Debug, Clone)]
pub struct Vantage6Python {
    /// The Python installation (`sys.base_prefix`), bound at the same path inside.
    pub prefix: PathBuf,
    /// The folder vantage6-algorithm-tools and its dependencies were installed into.
    pub tools: PathBuf,
}

impl Vantage6Python {
    /// Finds them, or says what is missing.
    pub fn find() -> Result<Vantage6Python, String> {
        let tools = std::env::var_os("ENCLAVA_V6_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(format!(".cache/enclava/python/vantage6-algorithm-tools-{VANTAGE6_TOOLS}"))
        });
        if !tools.join("vantage6/algorithm/tools/wrap.py").exists() {
            return Err(format!(
                "vantage6-algorithm-tools {VANTAGE6_TOOLS} is not in {}: `python3 -m pip install --target {} \
                 vantage6-algorithm-tools=={VANTAGE6_TOOLS}` (scripts/test does)",
                tools.display(),
                tools.display()
            ));
        }
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.base_prefix)"])
            .output()
            .map_err(|e| format!("no python3 here ({e})"))?;
        let prefix = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !out.status.success() || !prefix.join("bin/python3").exists() {
            return Err("python3 does not say where it is installed".into());
        }
        Ok(Vantage6Python { prefix, tools })
    }

    /// Makes `rootfs` (a busybox root filesystem) ready for the host's `/usr` and returns the
    /// read-only mounts: `/usr` (and `/lib`, `/lib64` where they are folders), the Python
    /// installation, the tools at `/opt/vantage6` and `algorithms` (a folder of packages) at
    /// `/opt/algorithm`.
    pub fn mounts(&self, rootfs: &Path, algorithms: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
        std::fs::create_dir_all(rootfs.join("usr"))?;
        let mut mounts = vec![(PathBuf::from("/usr"), "/usr".to_owned())];
        for dir in ["lib", "lib64"] {
            let host = Path::new("/").join(dir);
            match std::fs::symlink_metadata(&host) {
                // A merged /usr: the same links inside.
                Ok(m) if m.file_type().is_symlink() => {
                    let to = std::fs::read_link(&host)?;
                    match std::os::unix::fs::symlink(&to, rootfs.join(dir)) {
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        r => r?,
                    }
                }
                Ok(_) => mounts.push((host, format!("/{dir}"))),
                Err(_) => {}
            }
        }
        mounts.push((self.prefix.clone(), self.prefix.display().to_string()));
        mounts.push((self.tools.clone(), "/opt/vantage6".into()));
        mounts.push((algorithms.to_owned(), "/opt/algorithm".into()));
        Ok(mounts)
    }

    /// The command that runs package `package` with vantage6's own wrapper (what a vantage6
    /// image's `CMD` does).
    pub fn command(&self, package: &str) -> String {
        format!(
            "PKG_NAME={package} PYTHONPATH=/opt/vantage6:/opt/algorithm OPENBLAS_NUM_THREADS=1 exec {}/bin/python3 -c \
             'from vantage6.algorithm.tools.wrap import wrap_algorithm; wrap_algorithm()'",
            self.prefix.display()
        )
    }
}

/// Measures this host and refuses an offer beyond it: a host does not sell what it does not have.
pub fn check_offer(offer: &str, data_dir: &Path) -> anyhow::Result<enclava_node::capacity::Capacity> {
    let offer = enclava_node::capacity::Offer::parse(offer).map_err(|e| anyhow::anyhow!("--offer: {e}"))?;
    std::fs::create_dir_all(data_dir)?;
    let measured = enclava_node::capacity::measure(data_dir);
    offer.within(&measured).map_err(anyhow::Error::msg)?;
    tracing::info!(
        cores = offer.cores,
        memory_mib = offer.memory_bytes >> 20,
        disk_mib = offer.disk_bytes >> 20,
        gpus = offer.gpus,
        measured_cores = measured.cores,
        measured_memory_mib = measured.memory_bytes >> 20,
        "offer within the measured capacity"
    );
    Ok(measured)
}

/// The node's own configuration from its settings.
fn node_config(settings: &NodeSettings, data_dir: &Path, blobs: &Path) -> anyhow::Result<NodeConfig> {
    settings.validate().map_err(anyhow::Error::msg)?;
    let serve = (!settings.serve_model.is_empty()).then(|| ServeConfig {
        key_broker: settings.key_broker.clone(),
        blobs: blobs.to_owned(),
        models: settings.serve_model.clone(),
        memory_budget: settings.memory_budget_mb.saturating_mul(1 << 20),
        openwhisk: settings.openwhisk,
        executors: roles::executors(),
    });
    Ok(NodeConfig {
        platform: settings.platform.clone(),
        data_dir: data_dir.to_owned(),
        data: settings.data.clone(),
        advertise: settings.advertise.clone(),
        sim_root: settings.sim_root.clone(),
        tsm_dir: None,
        serve,
    })
}

async fn launch_node(config: NodeConfig, listen: &str, registry: Arc<dyn Registry>) -> anyhow::Result<NodeHandle> {
    if config.platform == "sim" {
        tracing::warn!("platform sim is a simulated TEE for testing: it is NOT confidential");
    }
    let listener = bind(listen).await?;
    Ok(enclava_node::start(config, registry, listener).await?)
}

/// Adjusts the key broker's settings before it opens.
pub type TuneBroker = dyn Fn(&mut BrokerConfig) + Send + Sync;

/// Builds a [`Sandbox`].
pub struct SandboxBuilder {
    config: ServerConfig,
    dir: Option<PathBuf>,
    registry: Option<Arc<dyn Registry>>,
    extra_roles: Vec<Arc<dyn Role>>,
    kek: Option<KekSource>,
    tune_broker: Option<Box<TuneBroker>>,
    env: Env,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder").field("config", &self.config).field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder::new()
    }
}

impl SandboxBuilder {
    /// The manager and the key broker on a free loopback port, over an in-memory registry, with
    /// SQLite in a temporary folder; no environment.
    pub fn new() -> SandboxBuilder {
        SandboxBuilder {
            config: ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() },
            dir: None,
            registry: None,
            extra_roles: Vec::new(),
            kek: None,
            tune_broker: None,
            env: Arc::new(|_| None),
        }
    }

    /// The server's configuration (its `listen` included).
    pub fn config(mut self, config: ServerConfig) -> SandboxBuilder {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut ServerConfig)) -> SandboxBuilder {
        f(&mut self.config);
        self
    }

    /// Keeps everything in `dir` (otherwise a temporary folder, removed when the sandbox drops).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> SandboxBuilder {
        self.dir = Some(dir.into());
        self
    }

    /// Uses this registry (otherwise the one the configuration names).
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> SandboxBuilder {
        self.registry = Some(registry);
        self
    }

    /// Runs these roles, by name.
    pub fn roles(mut self, roles: &[&str]) -> SandboxBuilder {
        self.config.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    /// Adds a role that is not in [`roles::ROLES`] (a test's own).
    pub fn role(mut self, role: Arc<dyn Role>) -> SandboxBuilder {
        self.extra_roles.push(role);
        self
    }

    /// The key broker's key-encryption key.
    pub fn kek(mut self, kek: KekSource) -> SandboxBuilder {
        self.kek = Some(kek);
        self
    }

    /// Adjusts the key broker's settings (rate limits, nonce lifetime) before it opens.
    pub fn tune_broker(mut self, f: impl Fn(&mut BrokerConfig) + Send + Sync + 'static) -> SandboxBuilder {
        self.tune_broker = Some(Box::new(f));
        self
    }

    /// The environment the roles read (`ENCLAVA_KEK`).
    pub fn env(mut self, env: Env) -> SandboxBuilder {
        self.env = env;
        self
    }

    /// Starts the server.
    pub async fn start(self) -> anyhow::Result<Sandbox> {
        let (temp, dir) = match self.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().context("a temporary folder for the sandbox")?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let data_dir = self.config.data_dir.clone().unwrap_or_else(|| dir.join("server"));
        let registry = match self.registry {
            Some(r) => r,
            None => open_registry(&self.config.registry, &self.config.namespace, &self.config.service)?,
        };
        let env = self.env.clone();
        let tune = self.tune_broker.as_deref().map(|f| f as &(dyn Fn(&mut BrokerConfig) + Sync));
        let built =
            build_server(&self.config, &data_dir, registry.clone(), &*env, self.kek, tune, self.extra_roles).await?;
        let roles = built.server.names();
        let listener = bind(&self.config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(built.server.run(listener, async {
            let _ = stopped.await;
        }));
        let sim_root_dir = dir.join("sim-root");
        let sim_root = SimRoot::load_or_init(&sim_root_dir).map_err(anyhow::Error::msg)?;
        let launcher = Launcher { url: format!("http://{addr}"), sim_root_dir, dir, registry };
        if let Some(pools) = &built.pools {
            pools.set_backend(Arc::new(PoolNodes { launcher: launcher.clone(), nodes: Default::default() }));
        }
        if let Some(ui) = &built.ui {
            ui.set_self_url(&self_url(addr));
            // The deployment's own sim root: the dashboard shows what each enclave's evidence proves.
            if self.config.policy.is_none() {
                ui.set_policy(enclava_attest::Policy::parse(&sim_policy(&sim_root, &[])).map_err(anyhow::Error::msg)?);
            }
        }
        Ok(Sandbox {
            launcher,
            addr,
            roles,
            broker: built.broker,
            sim_root,
            data_dir,
            _temp: temp,
            nodes: Vec::new(),
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A policy accepting sim evidence from `root`, for `measurements` (any when empty).
fn sim_policy(root: &SimRoot, measurements: &[&str]) -> String {
    let root = root.public().to_hex();
    if measurements.is_empty() {
        format!("[sim]\nroot = \"{root}\"\nany_measurement = true\n")
    } else {
        let list: Vec<String> = measurements.iter().map(|m| format!("\"{m}\"")).collect();
        format!("[sim]\nroot = \"{root}\"\nmeasurements = [{}]\n", list.join(", "))
    }
}

/// What starting a node in a sandbox takes (the sandbox's and its pools' local backend's).
#[derive(Clone)]
struct Launcher {
    url: String,
    sim_root_dir: PathBuf,
    dir: PathBuf,
    registry: Arc<dyn Registry>,
}

impl Launcher {
    /// Where model packages are kept.
    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    async fn launch(&self, spec: NodeSpec) -> anyhow::Result<NodeHandle> {
        let settings = NodeSettings {
            platform: spec.platform.clone(),
            data: spec.data.clone(),
            sim_root: Some(spec.sim_root.clone().unwrap_or_else(|| self.sim_root_dir.clone())),
            serve_model: spec.serve.clone(),
            key_broker: self.url.clone(),
            openwhisk: spec.openwhisk,
            advertise: spec.advertise,
            ..Default::default()
        };
        let mut config = node_config(&settings, &self.dir.join(&spec.name), &self.blobs())?;
        if let Some(serve) = &mut config.serve {
            serve.memory_budget = spec.memory_budget;
            for e in spec.executors {
                serve.executors = std::mem::take(&mut serve.executors).with(e);
            }
        }
        launch_node(config, &settings.listen, self.registry.clone()).await
    }
}

/// The pools' local backend in a sandbox: sim nodes in this process, named `pool-NAME-N`.
struct PoolNodes {
    launcher: Launcher,
    nodes: tokio::sync::Mutex<std::collections::HashMap<String, NodeHandle>>,
}

impl std::fmt::Debug for PoolNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolNodes").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl enclava_pool::role::Backend for PoolNodes {
    async fn start(&self, spec: &enclava_pool::pool::PoolSpec, n: u64) -> Result<(String, Option<String>), String> {
        let models: Vec<&str> = spec.models.iter().map(String::as_str).collect();
        let node = self
            .launcher
            .launch(NodeSpec::new(format!("pool-{}-{n}", spec.name)).serve(&models))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let id = node.instance_id().to_owned();
        self.nodes.lock().await.insert(id.clone(), node);
        Ok((id.clone(), Some(id)))
    }

    async fn stop(&self, handle: &str) {
        let node = self.nodes.lock().await.remove(handle);
        if let Some(node) = node {
            node.shutdown().await;
        }
    }
}

/// A node to start in a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its data folder's name in the sandbox (the same name keeps the same instance id).
    pub name: String,
    /// Data ids it has access to (discovery only).
    pub data: Vec<String>,
    /// Models it serves, from the sandbox's blob folder, with keys from the sandbox's broker.
    pub serve: Vec<String>,
    /// Bytes of decrypted models to keep loaded; 0: no limit.
    pub memory_budget: u64,
    pub openwhisk: bool,
    /// `sim` (on the sandbox's root) by default.
    pub platform: String,
    /// The sim root to certify it with, instead of the sandbox's (another deployment's).
    pub sim_root: Option<PathBuf>,
    /// The address it publishes instead of its own (a proxy in front of it).
    pub advertise: Option<String>,
    /// Executors besides the ones every node runs (a test's own).
    pub executors: Vec<Arc<dyn enclava_executor::Executor>>,
}

impl NodeSpec {
    /// A sim node named `name` with access to `data`.
    pub fn new(name: impl Into<String>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            data: Vec::new(),
            serve: Vec::new(),
            memory_budget: 0,
            openwhisk: false,
            platform: "sim".into(),
            sim_root: None,
            advertise: None,
            executors: Vec::new(),
        }
    }

    pub fn data(mut self, data: &[&str]) -> NodeSpec {
        self.data = data.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn serve(mut self, models: &[&str]) -> NodeSpec {
        self.serve = models.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn memory_budget(mut self, bytes: u64) -> NodeSpec {
        self.memory_budget = bytes;
        self
    }

    pub fn openwhisk(mut self) -> NodeSpec {
        self.openwhisk = true;
        self
    }

    pub fn sim_root(mut self, root: impl Into<PathBuf>) -> NodeSpec {
        self.sim_root = Some(root.into());
        self
    }

    /// Adds an executor this node runs (after the default ones).
    pub fn executor(mut self, executor: Arc<dyn enclava_executor::Executor>) -> NodeSpec {
        self.executors.push(executor);
        self
    }

    pub fn advertise(mut self, addr: impl Into<String>) -> NodeSpec {
        self.advertise = Some(addr.into());
        self
    }
}

/// The system in one process: the server's roles, a registry, a sim root, and nodes.
pub struct Sandbox {
    /// Its URL, folder, sim root folder and registry, as nodes are started with them.
    launcher: Launcher,
    addr: std::net::SocketAddr,
    roles: Vec<&'static str>,
    broker: Option<Arc<Broker>>,
    sim_root: SimRoot,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    nodes: Vec<NodeHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("url", &self.launcher.url).field("roles", &self.roles).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// `http://127.0.0.1:PORT`: gRPC, REST, `/health`, `/metrics`.
    pub fn url(&self) -> &str {
        &self.launcher.url
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn roles(&self) -> &[&'static str] {
        &self.roles
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.launcher.registry
    }

    /// The key broker, when the `keys` role runs.
    pub fn broker(&self) -> Option<&Arc<Broker>> {
        self.broker.as_ref()
    }

    /// Registers the server's first administrator with the one-time invite it wrote at start
    /// (`DATA_DIR/admin-invite`); returns the administrator's credential. Works once.
    pub async fn admin(&self) -> anyhow::Result<String> {
        let broker = self.broker.as_ref().context("the keys role (its users)")?;
        let path = enclava_identity::Identity::admin_invite_path(&self.data_dir);
        let invite =
            std::fs::read_to_string(&path).with_context(|| format!("no admin invite at {}", path.display()))?;
        let (_, token) = broker.identity().register(Some(invite.trim())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(token)
    }

    /// The sandbox's folder.
    pub fn dir(&self) -> &Path {
        &self.launcher.dir
    }

    /// Where model packages are kept.
    pub fn blobs(&self) -> PathBuf {
        self.launcher.blobs()
    }

    /// The deployment's sim root and its folder.
    pub fn sim_root(&self) -> &SimRoot {
        &self.sim_root
    }

    pub fn sim_root_dir(&self) -> &Path {
        &self.launcher.sim_root_dir
    }

    /// A policy accepting sim evidence from this sandbox's root, for `measurements` (any when empty).
    pub fn sim_policy(&self, measurements: &[&str]) -> String {
        sim_policy(&self.sim_root, measurements)
    }

    /// Starts a node the sandbox keeps (and stops with itself); returns it.
    pub async fn node(&mut self, spec: NodeSpec) -> anyhow::Result<&NodeHandle> {
        let node = self.detached_node(spec).await?;
        self.nodes.push(node);
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// Starts a node the caller owns (to stop, kill or restart it).
    pub async fn detached_node(&self, spec: NodeSpec) -> anyhow::Result<NodeHandle> {
        self.launcher.launch(spec).await
    }

    /// Starts a node the caller owns with a farm host agent taking jobs from this sandbox's farm,
    /// offering `offer` (`cpu=1,memory=1GiB`; `None`: all measured) and `rootfs` (`busybox` or
    /// `NAME=DIR`) to sandboxed-process jobs.
    pub async fn farm_host(
        &self,
        spec: NodeSpec,
        offer: Option<&str>,
        rootfs: &[&str],
    ) -> anyhow::Result<(NodeHandle, enclava_host::HostAgent)> {
        let settings = NodeSettings {
            offer: offer.map(str::to_owned),
            rootfs: rootfs.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        self.farm_host_with(spec, settings).await
    }

    /// As [`Sandbox::farm_host`], with the host's settings (`offer`, `rootfs`, `vm`) given whole;
    /// the farm is this sandbox's.
    pub async fn farm_host_with(
        &self,
        spec: NodeSpec,
        settings: NodeSettings,
    ) -> anyhow::Result<(NodeHandle, enclava_host::HostAgent)> {
        let dir = self.launcher.dir.join(&spec.name);
        let node = self.detached_node(spec).await?;
        let settings = NodeSettings { farm: Some(self.launcher.url.clone()), ..settings };
        let agent = start_host(&node, &settings, &dir).await?;
        Ok((node, agent))
    }

    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// Shuts every node down, then the server (draining it).
    pub async fn stop(mut self) {
        for n in std::mem::take(&mut self.nodes) {
            n.shutdown().await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
