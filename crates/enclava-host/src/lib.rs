//! A farm host: a node's agent that registers with a farm server (its request key and measured
//! capacity bound into fresh evidence with the server's nonce, re-bound periodically), pulls jobs
//! under a lease and renews it while they run, runs each in the executor it asked for (Wasm in
//! process, or a sandboxed process in a root filesystem this host offers), and returns the result
//! with a receipt signed by the node's TEE. A confidential job's files open only with the job key
//! its submitter sealed to this node's attested key; its result is sealed back to the submitter.
//!
//! The host keeps nothing a restart needs: a job whose host died is placed again by the farm when
//! its lease expires, and only the completion under the current lease is kept.

pub mod fed;
mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use enclava_client::farm::FarmClient;
use enclava_contracts::farm::{
    Completion, FILE_CONTEXT, HostCapacity, HostRegistration, Leased, RESULT_INFO, Receipt, RunResult, SealedBlob,
    Security, inputs_digest, sha256_hex,
};
use enclava_core::{Error, ErrorCode};
use enclava_node::Attester;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// What a Wasm job's isolation is, in words.
pub const WASM_ISOLATION: &str = "Wasm (wasmtime) in the host's process: no sockets linked, only /in (read-only) \
    and /tmp pre-opened, fuel-metered, memory-limited, stopped at its deadline";

/// How a host runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The farm server (`http://host:port`).
    pub server: String,
    /// What it offers, within `capacity`.
    pub offer_cores: f64,
    pub offer_memory_bytes: u64,
    /// What it measured.
    pub capacity: enclava_node::capacity::Capacity,
    /// Where jobs' folders are made.
    pub work_dir: PathBuf,
    /// Root filesystems offered to `process` jobs, by name.
    pub rootfs: BTreeMap<String, PathBuf>,
    /// Jobs run at once, at most.
    pub max_jobs: usize,
    /// Offer VM jobs (qemu, a guest kernel and a static busybox must be present).
    pub vm: bool,
    /// How often it re-binds its capacity with a fresh nonce.
    pub rebind: Duration,
    /// Job files kept in memory for the next job that names them, in bytes.
    pub file_cache_bytes: usize,
}

impl HostConfig {
    pub fn new(server: &str, capacity: enclava_node::capacity::Capacity, work_dir: PathBuf) -> HostConfig {
        HostConfig {
            server: server.to_owned(),
            offer_cores: capacity.cores,
            offer_memory_bytes: capacity.memory_bytes,
            capacity,
            work_dir,
            rootfs: BTreeMap::new(),
            max_jobs: 16,
            vm: false,
            rebind: Duration::from_secs(60),
            file_cache_bytes: 256 << 20,
        }
    }

    /// Where the host keeps its farm token (mode 0600).
    pub fn token_file(&self) -> PathBuf {
        self.work_dir.join("farm-token")
    }
}

/// The executors this host runs.
#[derive(Debug, Clone)]
struct Runners {
    wasm: Arc<enclava_wasm::WasmEngine>,
    vm: Option<enclava_vm::VmLauncher>,
    process: Option<enclava_process::ProcessSandbox>,
    rootfs: BTreeMap<String, PathBuf>,
}

/// A running host agent.
#[derive(Debug)]
pub struct HostAgent {
    id: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Shared {
    attester: Attester,
    runners: Runners,
    /// Where jobs' folders go: in memory (`/dev/shm`) where the machine has it, so a confidential
    /// job's opened inputs never reach a disk; else the work folder.
    jobs_dir: PathBuf,
    running: AtomicUsize,
    files: std::sync::Mutex<FileCache>,
}

/// Job files this host fetched, as stored (a confidential job's sealed), by hash, most recently
/// used last, within a byte budget: a job whose files are here starts without fetching them, and
/// the farm places such jobs here first.
#[derive(Debug, Default)]
struct FileCache {
    budget: usize,
    used: usize,
    files: std::collections::VecDeque<(String, Arc<Vec<u8>>)>,
}

impl FileCache {
    fn new(budget: usize) -> FileCache {
        FileCache { budget, ..Default::default() }
    }

    fn get(&mut self, hash: &str) -> Option<Arc<Vec<u8>>> {
        let i = self.files.iter().position(|(h, _)| h == hash)?;
        let entry = self.files.remove(i)?;
        let bytes = entry.1.clone();
        self.files.push_back(entry);
        Some(bytes)
    }

    fn put(&mut self, hash: &str, bytes: &[u8]) {
        if bytes.len() > self.budget / 4 || self.files.iter().any(|(h, _)| h == hash) {
            return;
        }
        self.used += bytes.len();
        self.files.push_back((hash.to_owned(), Arc::new(bytes.to_vec())));
        while self.used > self.budget {
            let Some((_, old)) = self.files.pop_front() else { break };
            self.used -= old.len();
        }
    }

    /// The most recently used hashes, for a lease request.
    fn hashes(&self) -> Vec<String> {
        self.files.iter().rev().take(256).map(|(h, _)| h.clone()).collect()
    }
}

/// A folder for this agent's jobs in memory (`/dev/shm`), or under `work_dir` without one.
pub(crate) fn jobs_dir(work_dir: &Path, id: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let name: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(64).collect();
    let dir = shm.join(format!("enclava-host-{name}-{}", std::process::id()));
    if shm.is_dir() && std::fs::create_dir_all(&dir).is_ok() {
        return dir;
    }
    tracing::warn!("no /dev/shm here: jobs' opened inputs are written under the work folder, on disk");
    work_dir.join("jobs")
}

impl HostAgent {
    /// Registers with the farm (failing here, with the reason, if it cannot) and starts pulling.
    pub async fn start(attester: Attester, config: HostConfig) -> Result<HostAgent, Error> {
        let wasm = Arc::new(enclava_wasm::WasmEngine::new(enclava_wasm::WasmConfig::default())?);
        let process = if config.rootfs.is_empty() {
            None
        } else {
            match enclava_process::ProcessSandbox::find() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "no process sandbox here: this host runs Wasm jobs only");
                    None
                }
            }
        };
        let vm = if config.vm {
            match enclava_vm::VmLauncher::find(None) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "no VM launcher here: this host runs no VM jobs");
                    None
                }
            }
        } else {
            None
        };
        let runners = Runners { wasm, vm, process, rootfs: config.rootfs.clone() };
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|e| Error::unavailable(format!("cannot create {}: {e}", config.work_dir.display())))?;
        let mut client = FarmClient::new(&config.server, None);
        // Measured, not declared: a probe downloaded from the server (4 MiB; 0 and the reason
        // when it fails). It is bound into the evidence with the rest of the capacity.
        let bandwidth = client.measure_bandwidth(4 << 20).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot measure the bandwidth to the farm");
            (0, format!("not measured: {}", enclava_core::text::prefix(&e.message, 120)))
        });
        let capacity = capacity_json(&config, &runners, bandwidth)?;
        let lease = register(&attester, &mut client, &capacity, Some(&config.token_file())).await?;
        let id = attester.instance_id().to_owned();
        tracing::info!(host = %id, server = %config.server, platform = %attester.platform(), "farm host registered");
        let shared = Arc::new(Shared {
            jobs_dir: jobs_dir(&config.work_dir, &id),
            attester,
            runners,
            running: AtomicUsize::new(0),
            files: std::sync::Mutex::new(FileCache::new(config.file_cache_bytes)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(pull(shared, client, capacity, config, lease, stop_rx));
        Ok(HostAgent { id, stop, task })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops pulling and stops its running jobs (the farm places them again when their leases
    /// expire).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops at once, as a crash would.
    pub fn abort(self) {
        self.task.abort();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.jobs_dir);
    }
}

fn capacity_json(config: &HostConfig, runners: &Runners, bandwidth: (u64, String)) -> Result<String, Error> {
    let c = &config.capacity;
    let mut kinds = vec!["wasm".to_owned()];
    if runners.process.is_some() {
        kinds.push("process".into());
    }
    // Not `confidential-vm`, even with SEV-SNP or TDX: the job key would be opened here, outside
    // the guest, until keys are released into an attested guest.
    if runners.vm.is_some() {
        kinds.push("vm".into());
    }
    let capacity = HostCapacity {
        offer_cores: config.offer_cores,
        offer_memory_bytes: config.offer_memory_bytes,
        cores: c.cores,
        cores_how: c.cores_how.clone(),
        memory_bytes: c.memory_bytes,
        memory_how: c.memory_how.clone(),
        disk_bytes: c.disk_bytes,
        gpus: c.gpus.iter().map(|g| format!("{} ({} MiB)", g.name, g.memory_bytes >> 20)).collect(),
        gpus_how: c.gpus_how.clone(),
        bandwidth_bytes_per_s: bandwidth.0,
        bandwidth_how: bandwidth.1,
        kinds,
        rootfs: if runners.process.is_some() { runners.rootfs.keys().cloned().collect() } else { Vec::new() },
    };
    serde_json::to_string(&capacity).map_err(|e| Error::internal(e.to_string()))
}

/// Registers (or re-binds) `attester`'s node with a fresh nonce, its evidence binding its key and
/// `capacity` (a `HostCapacity` as JSON); `client` keeps the token, and `token_file` (when given)
/// keeps it across restarts, so a restarted host reclaims its id at once while nobody else can.
/// Returns the lease length.
pub async fn register(
    attester: &Attester,
    client: &mut FarmClient,
    capacity: &str,
    token_file: Option<&Path>,
) -> Result<Duration, Error> {
    if let (None, Some(path)) = (client.token(), token_file)
        && let Ok(saved) = std::fs::read_to_string(path)
    {
        client.set_token(Zeroizing::new(saved.trim().to_owned()));
    }
    let nonce = client.nonce().await?;
    let key = enclava_contracts::farm::host_binding_key(attester.public_key(), capacity);
    let evidence = attester.farm_evidence(&key, nonce.as_bytes()).unwrap_or_default();
    let reg = HostRegistration {
        id: attester.instance_id().to_owned(),
        platform: attester.platform().to_owned(),
        measurement: attester.measurement().to_owned(),
        pubkey: attester.public_key().to_vec(),
        capacity: capacity.to_owned(),
        nonce,
        evidence,
    };
    let (token, lease) = client.register(&reg).await?;
    if let Some(path) = token_file
        && client.token() != Some(token.as_str())
    {
        save_token(path, &token);
    }
    client.set_token(token);
    Ok(lease)
}

/// Writes a host token readable by this user only (a failure is logged: the host still runs, it
/// just cannot reclaim its id at once after a restart).
fn save_token(path: &Path, token: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(token.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(error = %e, file = %path.display(), "cannot keep the host token");
    }
}

async fn pull(
    shared: Arc<Shared>,
    mut client: FarmClient,
    capacity: String,
    config: HostConfig,
    mut lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut rebind_at = Instant::now() + config.rebind;
    let mut backoff = Duration::from_millis(100);
    // Jobs run in this set: when the agent stops (or is aborted), its jobs stop with it.
    let mut jobs_running = tokio::task::JoinSet::new();
    loop {
        while jobs_running.try_join_next().is_some() {}
        if *stop.borrow() {
            return;
        }
        if Instant::now() >= rebind_at {
            match register(&shared.attester, &mut client, &capacity, Some(&config.token_file())).await {
                Ok(l) => {
                    lease = l;
                    rebind_at = Instant::now() + config.rebind;
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-bind this host's capacity; retrying"),
            }
        }
        let free = config.max_jobs.saturating_sub(shared.running.load(Ordering::Relaxed));
        if free == 0 {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
            }
        }
        let cached = shared.files.lock().unwrap_or_else(|p| p.into_inner()).hashes();
        let leased = tokio::select! {
            _ = stop.changed() => return,
            r = client.lease(free.min(16) as u32, Duration::from_secs(2), &cached) => r,
        };
        match leased {
            Ok(jobs) => {
                backoff = Duration::from_millis(100);
                for job in jobs {
                    shared.running.fetch_add(1, Ordering::Relaxed);
                    jobs_running.spawn(run_leased(shared.clone(), client.clone(), job, lease));
                }
            }
            Err(e) if e.code == ErrorCode::Unauthenticated => {
                tracing::warn!("the farm does not know this host's token: registering again");
                rebind_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease jobs; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs one leased job while renewing its lease, then completes it (retrying while the farm is
/// unreachable, for as long as the lease could still be current).
async fn run_leased(shared: Arc<Shared>, client: FarmClient, leased: Leased, lease: Duration) {
    let id = leased.job.id.clone();
    let renew_every = (lease / 3).max(Duration::from_millis(50));
    let run = run_job(&shared, &client, &leased);
    tokio::pin!(run);
    let done = loop {
        tokio::select! {
            r = &mut run => break Some(r),
            _ = tokio::time::sleep(renew_every) => {
                if let Err(e) = client.renew(&id, &leased.lease).await
                    && e.code == ErrorCode::FailedPrecondition
                {
                    tracing::info!(job = %id, reason = %e, "lease lost: stopping the job");
                    break None;
                }
            }
        }
    };
    // Only a job id the spec check accepts names a folder (the server's word is not a path).
    if leased.job.validate().is_ok() {
        let _ = std::fs::remove_dir_all(shared.jobs_dir.join(&id));
    }
    if let Some(completion) = done {
        let completion = match completion {
            Ok(c) => c,
            Err(e) => match failure(&shared, &leased, &e) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "cannot even report the failure");
                    shared.running.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let deadline = Instant::now() + lease * 3;
        let mut pause = Duration::from_millis(50);
        loop {
            match client.complete(&id, &completion).await {
                Ok(()) => break,
                Err(e) if e.code == ErrorCode::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "the farm did not keep this result");
                    break;
                }
            }
        }
    }
    shared.running.fetch_sub(1, Ordering::Relaxed);
}

/// A job file, fetched and (for a confidential job) opened with the job key.
async fn fetch(
    shared: &Shared,
    client: &FarmClient,
    hash: &str,
    key: Option<&[u8; 32]>,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let cached = shared.files.lock().unwrap_or_else(|p| p.into_inner()).get(hash);
    let bytes = match cached {
        Some(b) => b.to_vec(),
        None => {
            let b = client.file(hash).await?;
            shared.files.lock().unwrap_or_else(|p| p.into_inner()).put(hash, &b);
            b
        }
    };
    match key {
        None => Ok(Zeroizing::new(bytes)),
        Some(k) => enclava_seal::symmetric::open_shared(k, FILE_CONTEXT, b"", &bytes).map_err(|_| {
            Error::new(
                ErrorCode::Tampered,
                format!("job file {}… does not open with the job key", enclava_core::text::prefix(hash, 16)),
            )
        }),
    }
}

/// What a run reports back, before sealing.
struct Ran {
    result: RunResult,
    fuel: u64,
    wall: Duration,
    peak_memory: u64,
    isolation: &'static str,
}

async fn run_job(shared: &Shared, client: &FarmClient, leased: &Leased) -> Result<Completion, Error> {
    let spec = &leased.job;
    spec.validate().map_err(|e| Error::invalid(format!("the farm sent a job that is not valid: {e}")))?;
    let key = match spec.security {
        Security::Plaintext => None,
        Security::Confidential => {
            let me = shared.attester.instance_id();
            let wrap = spec.key_wraps.get(me).ok_or_else(|| {
                Error::new(ErrorCode::FailedPrecondition, "this confidential job was not sealed to this host")
            })?;
            Some(shared.attester.open_job_key(spec, wrap)?)
        }
    };
    let key = key.as_deref();
    let program = fetch(shared, client, &spec.program, key).await?;
    let args = match &spec.args_file {
        None => spec.args.clone(),
        Some(h) => {
            let list = fetch(shared, client, h, key).await?;
            let args: Vec<String> = serde_json::from_slice(&list)
                .map_err(|_| Error::invalid("the job's sealed arguments are not a list of strings"))?;
            enclava_contracts::farm::check_args(&args).map_err(Error::invalid)?;
            args
        }
    };
    let stdin = match &spec.stdin {
        Some(h) => fetch(shared, client, h, key).await?,
        None => Zeroizing::new(Vec::new()),
    };
    let mut inputs = Vec::new();
    for f in &spec.inputs {
        inputs.push((f.name.clone(), fetch(shared, client, &f.sha256, key).await?));
    }
    let named: Vec<(&str, &[u8])> = inputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let input_sha256 = inputs_digest(&stdin, &named);
    let bytes_in = (program.len() + stdin.len() + inputs.iter().map(|(_, b)| b.len()).sum::<usize>()) as u64;
    let dir = shared.jobs_dir.join(&spec.id);
    let _ = std::fs::remove_dir_all(&dir);
    let in_dir = dir.join("in");
    let tmp_dir = dir.join("tmp");
    for d in [&in_dir, &tmp_dir] {
        std::fs::create_dir_all(d).map_err(|e| Error::unavailable(format!("cannot make the job's folder: {e}")))?;
    }
    for (name, bytes) in &inputs {
        std::fs::write(in_dir.join(name), bytes.as_slice())
            .map_err(|e| Error::unavailable(format!("cannot write the job's input: {e}")))?;
    }
    let timeout = Duration::from_millis(spec.timeout_ms);
    let ran = match spec.kind.as_str() {
        "wasm" => run_wasm(&shared.runners, spec, args, program.to_vec(), stdin.to_vec(), &dir, timeout).await?,
        "process" => run_process(&shared.runners, spec, args, &program, stdin.to_vec(), &dir, timeout).await?,
        "vm" => run_vm(&shared.runners, spec, &program, &inputs, &dir, timeout).await?,
        other => return Err(Error::invalid(format!("this host does not run {other} jobs"))),
    };
    finish(shared, leased, ran, sha256_hex(&program), input_sha256, bytes_in)
}

async fn run_wasm(
    runners: &Runners,
    spec: &enclava_contracts::farm::JobSpec,
    args: Vec<String>,
    program: Vec<u8>,
    stdin: Vec<u8>,
    dir: &Path,
    timeout: Duration,
) -> Result<Ran, Error> {
    let (in_dir, tmp_dir) = (dir.join("in"), dir.join("tmp"));
    let engine = runners.wasm.clone();
    let defaults = engine.config().limits;
    let job = enclava_wasm::Job {
        args,
        env: Vec::new(),
        stdin,
        dirs: vec![
            enclava_wasm::Preopen { host: in_dir, guest: "/in".into(), writable: false },
            enclava_wasm::Preopen { host: tmp_dir, guest: "/tmp".into(), writable: true },
        ],
        limits: Some(enclava_wasm::RunLimits { memory_bytes: spec.memory_bytes, timeout, ..defaults }),
    };
    let report = tokio::task::spawn_blocking(move || {
        let compiled = engine.compile(&program)?;
        engine.run(&compiled, job)
    })
    .await
    .map_err(|e| Error::internal(format!("the Wasm run stopped: {e}")))??;
    Ok(Ran {
        result: RunResult {
            success: report.outcome.success(),
            outcome: report.outcome.to_string(),
            stdout: report.stdout.to_vec(),
            stderr: report.stderr.to_vec(),
        },
        fuel: report.fuel_used,
        wall: report.wall,
        peak_memory: report.peak_memory_bytes,
        isolation: WASM_ISOLATION,
    })
}

async fn run_process(
    runners: &Runners,
    spec: &enclava_contracts::farm::JobSpec,
    args: Vec<String>,
    program: &[u8],
    stdin: Vec<u8>,
    dir: &Path,
    timeout: Duration,
) -> Result<Ran, Error> {
    let sandbox = runners
        .process
        .as_ref()
        .ok_or_else(|| Error::new(ErrorCode::FailedPrecondition, "this host has no process sandbox"))?;
    let name = spec.rootfs.as_deref().unwrap_or("busybox");
    let rootfs = runners.rootfs.get(name).ok_or_else(|| {
        Error::invalid(format!("this host offers no root filesystem {}", enclava_core::text::quote(name)))
    })?;
    let command = command_text(program)?;
    let mut argv = vec!["/bin/sh".to_owned(), "-c".into(), command.to_owned(), "job".into()];
    argv.extend(args);
    let job = enclava_process::ProcessJob {
        rootfs: rootfs.clone(),
        shared: None,
        binds: Vec::new(),
        argv,
        env: vec![("PATH".into(), "/bin:/usr/bin".into())],
        work: dir.to_owned(),
        stdin,
        limits: enclava_process::ProcessLimits {
            timeout,
            memory_bytes: spec.memory_bytes,
            cpu_seconds: (timeout.as_secs_f64() * spec.cpu).ceil().max(1.0) as u64,
            ..Default::default()
        },
    };
    let report = sandbox.run(&job).await?;
    Ok(Ran {
        result: RunResult {
            success: report.outcome.success(),
            outcome: report.outcome.to_string(),
            stdout: report.stdout,
            stderr: report.stderr,
        },
        fuel: 0,
        wall: report.wall,
        peak_memory: 0,
        isolation: enclava_process::ISOLATION,
    })
}

/// A `process` or `vm` job's program: the shell command, as text.
fn command_text(program: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(program).map_err(|_| Error::invalid("a job's command is not UTF-8"))
}

async fn run_vm(
    runners: &Runners,
    spec: &enclava_contracts::farm::JobSpec,
    program: &[u8],
    inputs: &[(String, Zeroizing<Vec<u8>>)],
    dir: &Path,
    timeout: Duration,
) -> Result<Ran, Error> {
    let launcher =
        runners.vm.as_ref().ok_or_else(|| Error::new(ErrorCode::FailedPrecondition, "this host runs no VM jobs"))?;
    let command = command_text(program)?;
    let job = enclava_vm::VmJob {
        command: command.to_owned(),
        inputs: inputs.iter().map(|(n, b)| (n.clone(), b.to_vec())).collect(),
        memory_mib: (spec.memory_bytes >> 20).clamp(64, u64::from(u32::MAX)) as u32,
        cpus: spec.cpu.ceil().max(1.0) as u32,
        timeout,
        confidential: spec.security == Security::Confidential,
        work: dir.join("vm"),
    };
    let report = launcher.run(&job).await?;
    Ok(Ran {
        result: RunResult {
            success: report.outcome.success(),
            outcome: report.outcome.to_string(),
            stdout: report.output,
            stderr: Vec::new(),
        },
        fuel: 0,
        wall: report.wall,
        peak_memory: 0,
        isolation: report.isolation,
    })
}

/// The stored result (sealed to the submitter for a confidential job) and its receipt.
fn finish(
    shared: &Shared,
    leased: &Leased,
    ran: Ran,
    program_sha256: String,
    input_sha256: String,
    bytes_in: u64,
) -> Result<Completion, Error> {
    let spec = &leased.job;
    let plain = Zeroizing::new(serde_json::to_vec(&ran.result).map_err(|e| Error::internal(e.to_string()))?);
    let stored = match spec.security {
        Security::Plaintext => plain.to_vec(),
        Security::Confidential => {
            let s = enclava_seal::seal(&spec.result_key, RESULT_INFO, spec.id.as_bytes(), &plain)
                .map_err(|e| Error::internal(format!("cannot seal the result: {e}")))?;
            serde_json::to_vec(&SealedBlob { enc: s.enc, ciphertext: s.ciphertext })
                .map_err(|e| Error::internal(e.to_string()))?
        }
    };
    let receipt = Receipt {
        version: 1,
        job: spec.id.clone(),
        host: String::new(),
        platform: String::new(),
        executor: spec.kind.clone(),
        isolation: ran.isolation.to_owned(),
        program_sha256,
        input_sha256,
        output_sha256: sha256_hex(&stored),
        bytes_in,
        bytes_out: stored.len() as u64,
        fuel: ran.fuel,
        wall_ms: ran.wall.as_millis() as u64,
        peak_memory_bytes: ran.peak_memory,
        outcome: ran.result.outcome.clone(),
        issued_at: 0,
    };
    let receipt = shared.attester.receipt(receipt)?;
    Ok(Completion { lease: leased.lease.clone(), success: ran.result.success, result: stored, receipt })
}

/// A job that could not run at all (a file that does not open, a missing root filesystem): a
/// failed result saying why, with a receipt like any other.
fn failure(shared: &Shared, leased: &Leased, e: &Error) -> Result<Completion, Error> {
    tracing::warn!(job = %leased.job.id, error = %e, "job could not run");
    let ran = Ran {
        result: RunResult {
            success: false,
            outcome: format!("could not run: {}", e.message),
            stdout: Vec::new(),
            stderr: Vec::new(),
        },
        fuel: 0,
        wall: Duration::ZERO,
        peak_memory: 0,
        isolation: match leased.job.kind.as_str() {
            "process" => enclava_process::ISOLATION,
            "vm" => enclava_vm::ISOLATION,
            _ => WASM_ISOLATION,
        },
    };
    finish(shared, leased, ran, String::new(), String::new(), 0)
}

#[cfg(test)]
mod tests {
    use super::FileCache;

    #[test]
    fn the_file_cache_keeps_the_most_recently_used_within_its_budget() {
        let mut c = FileCache::new(100);
        c.put("a", &[1; 20]);
        c.put("b", &[2; 20]);
        c.put("too-big", &[0; 30]);
        assert!(c.get("too-big").is_none(), "over a quarter of the budget is not kept");
        assert_eq!(c.get("a").as_deref().map(Vec::len), Some(20));
        for name in ["c", "d", "e"] {
            c.put(name, &[3; 20]);
        }
        // 100 bytes: a (used last) stays, b (least recently used) goes first.
        c.put("f", &[4; 20]);
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some());
        assert_eq!(c.hashes().first().map(String::as_str), Some("a"));
        assert!(c.used <= 100);
    }
}
