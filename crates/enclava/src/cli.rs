//! The command line: every subcommand's flags, each with an `ENCLAVA_*` environment twin and a key
//! in the config file's table for that command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const CONFIG_HELP: &str = "Every option can also be set by its ENCLAVA_* environment variable (shown with each option) \
or in the config file (--config, ENCLAVA_CONFIG, or config.toml in ENCLAVA_CONFIG_DIR / ~/.config/enclava), \
in the table named after the command, with the long flag name as key. Flags beat the environment, which beats the file.";

/// Enclava: an attested compute fabric.
#[derive(Debug, Parser)]
#[command(name = "enclava", version, about, after_help = CONFIG_HELP)]
pub struct Cli {
    /// Config file (TOML) with [server], [node] and [find] tables.
    #[arg(long, global = true, env = "ENCLAVA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "ENCLAVA_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process on embedded defaults, with a demo.
    Dev(crate::dev::DevArgs),
    /// Run the control plane: the enclave manager (gRPC FindEnclave, ListEnclaves) and the key
    /// broker (gRPC KeyBroker, REST /v1, /openapi.json), with /health and /metrics.
    #[command(after_help = CONFIG_HELP)]
    Server(ServerArgs),
    /// Run an enclave node: publish its presence and info in the registry.
    #[command(after_help = CONFIG_HELP)]
    Node(NodeArgs),
    /// Ask the enclave manager for live enclaves.
    #[command(after_help = CONFIG_HELP)]
    Find(FindArgs),
    /// Talk to the key broker: identities, model keys, grants, request keys, audit.
    Keys(crate::keys_cli::KeysArgs),
    /// Run a model on an attested enclave: find, verify, seal, send, open.
    Infer(crate::infer_cli::InferArgs),
    /// Models: encrypt and upload one, or generate one to try.
    #[command(subcommand)]
    Model(crate::model_cli::ModelCommand),
    /// Verify attestation evidence and judge it by a policy.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// The simulated TEE, for machines without one.
    #[command(subcommand)]
    Sim(SimCommand),
    /// What this host can give farm jobs, measured (cores, memory, disk, GPUs) and how.
    Capacity(CapacityArgs),
    /// Farm hosts: platform, security status, capacity (and how it is proven), load.
    Hosts(crate::farm_cli::HostsArgs),
    /// Farm jobs: submit (confidential or plaintext), list, status, logs, result, cancel, receipt.
    Job(crate::farm_cli::JobArgs),
    /// Content-addressed job files: add, cat, unpin.
    File(crate::farm_cli::FileArgs),
    /// Federation organisations: create, list, add members with roles.
    Org(crate::fed_cli::OrgArgs),
    /// Federation collaborations: create, list.
    Collab(crate::fed_cli::CollabArgs),
    /// Federation nodes (vantage6's node CLI): new, list, start, stop, attach, files, run.
    FedNode(crate::fed_node_cli::FedNodeArgs),
    /// Federated tasks: create (inputs sealed per organisation), status, results, kill.
    Task(crate::fed_cli::TaskArgs),
    /// Federation diagnostics: `test features` runs a built-in check at every online node.
    Test(crate::fed_cli::TestArgs),
    /// Function pools: create, list (instances, hot models, in flight, queued), delete.
    Pool(crate::pool_cli::PoolArgs),
    /// Measure Enclava against its floors.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `enclava server`: every option is `None` unless given on the command line or in the
/// environment; the config file's `[server]` table (`enclava_sandbox::ServerConfig`) has the rest.
#[derive(Debug, Default, Args)]
pub struct ServerArgs {
    /// Registry: `memory`, `redis://host:port` or `redis+cluster://host:port[,host:port...]` [default: memory]
    #[arg(long, env = "ENCLAVA_REGISTRY")]
    pub registry: Option<String>,
    /// Address for gRPC and HTTP (/health, /metrics) [default: 127.0.0.1:7000]
    #[arg(long, env = "ENCLAVA_LISTEN")]
    pub listen: Option<String>,
    /// Registry key namespace [default: enclava]
    #[arg(long, env = "ENCLAVA_NAMESPACE")]
    pub namespace: Option<String>,
    /// Registry service name [default: enclava]
    #[arg(long, env = "ENCLAVA_SERVICE")]
    pub service: Option<String>,
    /// FindEnclave cache lifetime in ms, never past a returned enclave's presence; 0 disables [default: 1000]
    #[arg(long, env = "ENCLAVA_CACHE_TTL_MS")]
    pub cache_ttl_ms: Option<u64>,
    /// How often expired instances are swept from the indexes, in ms [default: 10000]
    #[arg(long, env = "ENCLAVA_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    /// How long a farm host's lease on a job lasts without renewal, in ms; a host that dies loses
    /// its jobs to others after this [default: 10000]
    #[arg(long, env = "ENCLAVA_FARM_LEASE_MS")]
    pub farm_lease_ms: Option<u64>,
    /// The pools' local backend: the command that starts one serving node for a pool with
    /// `--max` above 0, with `{pool}`, `{n}` and `{models}` filled in, e.g. `enclava node
    /// --platform sim --sim-root ROOT --registry redis://… --listen 127.0.0.1:0 --data-dir
    /// nodes/{pool}-{n} --serve-model {models}` [default: none; scale on the metrics instead]
    #[arg(long, env = "ENCLAVA_POOL_NODE_COMMAND")]
    pub pool_node_command: Option<String>,
    /// How long a pool stays idle before the local backend stops a node it started, in ms
    /// [default: 30000]
    #[arg(long, env = "ENCLAVA_POOL_IDLE_MS")]
    pub pool_idle_ms: Option<u64>,
    /// Roles to run, comma-separated: manager, keys, farm, federation, pools, ui [default: all six]
    #[arg(long, env = "ENCLAVA_ROLES", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Key broker database: sqlite://FILE or postgres://USER@HOST/DB [default: sqlite://DATA_DIR/keys.db]
    #[arg(long, env = "ENCLAVA_DATABASE")]
    pub database: Option<String>,
    /// Folder for the key broker's files (key-encryption key, audit anchor)
    /// [default: ~/.local/share/enclava/server]
    #[arg(long, env = "ENCLAVA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The key-encryption key file (32 bytes; made on first start). ENCLAVA_KEK, when set, holds
    /// the key itself (hex or base64) instead [default: DATA_DIR/kek.key]
    #[arg(long, env = "ENCLAVA_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Release policy for models that set none (TOML or JSON) [default: any confidential platform,
    /// measurements from grants, no debug, TCB up to date, never sim]
    #[arg(long, env = "ENCLAVA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Collateral for real platforms' evidence in releases: an Intel PCS/PCCS- and AMD KDS-style
    /// service (http://HOST:PORT, or intel=URL,amd=URL), a collateral.json, or a folder
    #[arg(long, env = "ENCLAVA_COLLATERAL")]
    pub collateral: Option<String>,
    /// Who may register with the key broker: open (anyone, rate-limited), invite (one-time invites
    /// from an administrator; the first one is written to DATA_DIR/admin-invite), closed [default: open]
    #[arg(long, env = "ENCLAVA_REGISTRATION")]
    pub registration: Option<String>,
    /// Registrations per source address per minute; 0 turns the limit off [default: 10]
    #[arg(long, env = "ENCLAVA_REGISTER_RATE")]
    pub register_rate: Option<u32>,
    /// Key-release challenges and releases per source address per second; 0 turns the limit off [default: 100]
    #[arg(long, env = "ENCLAVA_RELEASE_RATE")]
    pub release_rate: Option<u32>,
    /// Start the key broker on a database older than its audit anchor (after a lost WAL or a
    /// restored backup); the choice is recorded in the audit log
    #[arg(long, env = "ENCLAVA_ACCEPT_ROLLBACK", num_args = 0..=1, default_missing_value = "true")]
    pub accept_rollback: Option<bool>,
}

/// `enclava node`: as `ServerArgs`, over the `[node]` table (`enclava_sandbox::NodeSettings`).
#[derive(Debug, Default, Args)]
pub struct NodeArgs {
    /// TEE platform: sim (no hardware needed; not confidential), sgx, tdx, sev-snp, nitro [default: sim]
    #[arg(long, env = "ENCLAVA_PLATFORM")]
    pub platform: Option<String>,
    /// Registry: `memory`, `redis://host:port` or `redis+cluster://host:port[,...]` [default: memory]
    #[arg(long, env = "ENCLAVA_REGISTRY")]
    pub registry: Option<String>,
    /// A data (model) id this node has access to; repeat for more (env: comma-separated)
    #[arg(long = "data", env = "ENCLAVA_DATA", value_delimiter = ',')]
    pub data: Vec<String>,
    /// Address for the node's endpoints (/health, /metrics) [default: 127.0.0.1:0, any free port]
    #[arg(long, env = "ENCLAVA_LISTEN")]
    pub listen: Option<String>,
    /// Connection string published in the registry [default: the listen address]
    #[arg(long, env = "ENCLAVA_ADVERTISE")]
    pub advertise: Option<String>,
    /// Folder for the node's sealed identity; the same folder keeps the same instance id
    /// [default: ~/.local/share/enclava/node]
    #[arg(long, env = "ENCLAVA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Registry key namespace [default: enclava]
    #[arg(long, env = "ENCLAVA_NAMESPACE")]
    pub namespace: Option<String>,
    /// Registry service name [default: enclava]
    #[arg(long, env = "ENCLAVA_SERVICE")]
    pub service: Option<String>,
    /// For sim (required): the deployment's sim root folder (`enclava sim init --out DIR`) that
    /// certifies this node's simulated hardware key
    #[arg(long, env = "ENCLAVA_SIM_ROOT")]
    pub sim_root: Option<PathBuf>,
    /// Serve this workload, `[KIND:]ID` (decrypted in memory with a key the key broker releases to
    /// this enclave; KIND is an executor, `onnx` by default); repeat for more (env: comma-separated)
    #[arg(long = "serve-model", env = "ENCLAVA_SERVE_MODEL", value_delimiter = ',')]
    pub serve_model: Vec<String>,
    /// Key broker URL for --serve-model [default: http://127.0.0.1:7000]
    #[arg(long, env = "ENCLAVA_KEY_BROKER")]
    pub key_broker: Option<String>,
    /// Blob folder holding the model packages [default: ~/.local/share/enclava/blobs]
    #[arg(long, env = "ENCLAVA_BLOBS")]
    pub blobs: Option<PathBuf>,
    /// Memory for loaded models in MiB; least recently used models are evicted (cold) [default: no limit]
    #[arg(long, env = "ENCLAVA_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// Also answer the OpenWhisk action protocol (POST /init, POST /run) on --listen
    /// (`--openwhisk=false` turns off what the config file turned on)
    #[arg(long, env = "ENCLAVA_OPENWHISK", num_args = 0..=1, default_missing_value = "true")]
    pub openwhisk: Option<bool>,
    /// What this host offers to farm jobs, e.g. `cpu=2,memory=4GiB,disk=10GiB`; refused at start
    /// when it exceeds what is measured (see `enclava capacity`)
    #[arg(long, env = "ENCLAVA_OFFER")]
    pub offer: Option<String>,
    /// Take farm jobs from this server (`http://host:port`), within --offer (default: all measured)
    #[arg(long, env = "ENCLAVA_FARM")]
    pub farm: Option<String>,
    /// Root filesystems offered to sandboxed-process jobs: NAME=DIR, or `busybox` (built from the
    /// host's static busybox); repeatable
    #[arg(long, env = "ENCLAVA_ROOTFS", value_delimiter = ',')]
    pub rootfs: Vec<String>,
    /// Also offer VM jobs (qemu with a guest kernel from ENCLAVA_VM_KERNEL, /boot or
    /// ~/.cache/enclava/vm; confidential ones only with SEV-SNP or TDX)
    #[arg(long, env = "ENCLAVA_VM", num_args = 0..=1, default_missing_value = "true")]
    pub vm: Option<bool>,
}

/// `enclava find`: as `ServerArgs`, over the `[find]` table (`config::FindConfig`).
#[derive(Debug, Default, Args)]
pub struct FindArgs {
    /// Enclave manager URL [default: http://127.0.0.1:7000]
    #[arg(long, env = "ENCLAVA_SERVER")]
    pub server: Option<String>,
    /// Find enclaves with access to this data (model) id
    #[arg(long, env = "ENCLAVA_DATA")]
    pub data: Option<String>,
    /// Find enclaves with this measurement (hex)
    #[arg(long, env = "ENCLAVA_MEASUREMENT")]
    pub measurement: Option<String>,
    /// Only enclaves on this platform
    #[arg(long, env = "ENCLAVA_PLATFORM")]
    pub platform: Option<String>,
    /// How many enclaves to return [default: 1]
    #[arg(long, env = "ENCLAVA_LIMIT")]
    pub limit: Option<i32>,
    /// An instance id not to return; repeat for more (env: comma-separated)
    #[arg(long = "deny", env = "ENCLAVA_DENY", value_delimiter = ',')]
    pub deny: Vec<String>,
    /// Print the FindEnclaveResponse as JSON
    #[arg(long, env = "ENCLAVA_JSON", num_args = 0..=1, default_missing_value = "true")]
    pub json: Option<bool>,
    /// Verify each enclave's evidence against --policy before printing it; refused ones are listed with why
    #[arg(long, env = "ENCLAVA_VERIFY", num_args = 0..=1, default_missing_value = "true")]
    pub verify: Option<bool>,
    /// Policy for --verify (TOML or JSON)
    #[arg(long, env = "ENCLAVA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Collateral for --verify on real platforms: an Intel PCS/PCCS- and AMD KDS-style service
    /// (http://HOST:PORT, or intel=URL,amd=URL), a collateral.json, or a folder
    #[arg(long, env = "ENCLAVA_COLLATERAL")]
    pub collateral: Option<String>,
    /// Verify at this time (RFC 3339) instead of now, e.g. for recorded evidence
    #[arg(long)]
    pub at: Option<String>,
}

/// `enclava capacity`
#[derive(Debug, clap::Args)]
pub struct CapacityArgs {
    /// The folder whose filesystem holds job data [default: the current folder]
    #[arg(long, default_value = ".")]
    pub data_dir: PathBuf,
    /// Also check an offer (`cpu=2,memory=4GiB,disk=10GiB`) against it; exit 1 when it exceeds
    #[arg(long)]
    pub offer: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// FindEnclave and heartbeats against a local redis-server, next to the raw Redis floor.
    Discovery(enclava_bench::discovery::DiscoveryArgs),
    /// Evidence verification per platform, cold and warm, next to its signature floor.
    Evidence(enclava_bench::evidence::EvidenceArgs),
    /// Attested key releases over gRPC with sim evidence, next to verify + seal alone.
    Keys(enclava_bench::keys::KeysBenchArgs),
    /// MobileNetV2 through the sealed path next to plain tract in-process; model decryption and load.
    Serving(enclava_bench::serving::ServingArgs),
    /// The Wasm executor: warm and cold starts, fuel metering, next to a process spawn and unmetered runs.
    Farm(enclava_bench::farm::FarmArgs),
    /// Federation: input sealing, a three-organisation round trip, a task over 100 organisations.
    Federation(enclava_bench::federation::FederationArgs),
    /// Pools: the pool's routing against round-robin, random and FnPacker, simulated then live over sim nodes.
    Pools(enclava_bench::pools::PoolsArgs),
    /// The dashboard with 10,000 enclaves: first screen and change-to-page latency.
    Dashboard(enclava_bench::dashboard::DashboardArgs),
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Verify evidence (exit 0 accepted, 1 denied, 2 unusable input).
    Verify(crate::evidence::VerifyArgs),
    /// Show what a policy would accept or deny over a folder of evidence (or recorded claims).
    DryRun(crate::evidence::DryRunArgs),
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Make a deployment's sim root.
    Init(crate::evidence::SimInitArgs),
}
