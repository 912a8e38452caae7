//! A federation node (vantage6's node): holds its organisation's private key, checks at start that
//! the server's copy of the public key is its own (uploading it when the server has none), pulls
//! its organisation's runs under leases it renews while they run, opens each input with the key,
//! runs the algorithm through the farm's executors with no network, and seals the result to the
//! task's initiator.
//!
//! An algorithm sees vantage6's contract in its one writable folder, `/work`: `INPUT_FILE`
//! (`{method, args, kwargs}` JSON), `OUTPUT_FILE` (what it writes there is its result; without
//! one, its standard output is), `TEMPORARY_FOLDER` (`/shared`: the job's, shared by a task and
//! its subtasks, kept an hour after the job's last run), and for each database label the task asks
//! for and the node has, `<LABEL>_DATABASE_URI` (a read-only copy under `/work/data`) and
//! `<LABEL>_DATABASE_TYPE`. A process algorithm also gets vantage6's way to the server: `HOST`,
//! `PORT` and `API_PATH` of the node's local proxy, listening on the sandbox's own loopback for
//! this run only, and `TOKEN_FILE` with the run's token ([`crate::proxy`]); through it the
//! algorithm makes subtasks and reads their results, so a `vantage6-algorithm-tools` algorithm
//! runs unchanged. A failed run says why; its standard error goes back only where the
//! node's policy allows (off by default: tracebacks can leak data, vantage6 #675).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use enclava_client::fed::FedClient;
use enclava_contracts::fed::{LeasedRun, RunDone};
use enclava_core::{Error, ErrorCode};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// How a federation node runs.
#[derive(Debug, Clone)]
pub struct FedNodeConfig {
    pub server: String,
    /// The node's API key (from `POST /fed/v1/nodes`).
    pub api_key: Zeroizing<String>,
    /// The organisation's private key seed (hex); made here when missing. Every node of an
    /// organisation uses the same one.
    pub key_file: PathBuf,
    /// Databases by label: files the algorithm may read when a task names their label.
    pub data: BTreeMap<String, PathBuf>,
    /// Where runs' folders are made.
    pub work_dir: PathBuf,
    /// The root filesystem `process` algorithms run on (`None`: this node runs Wasm only).
    pub rootfs: Option<PathBuf>,
    /// Host folders bound read-only into process algorithms' sandboxes (host path, path inside):
    /// an interpreter and its packages.
    pub mounts: Vec<(PathBuf, String)>,
    /// Give process algorithms the local proxy (on by default where the node runs as root,
    /// which opening a port inside a sandbox needs; without it an algorithm cannot make
    /// subtasks).
    pub proxy: bool,
    /// Algorithms (SHA-256) this node runs; `None`: any.
    pub allowed_algorithms: Option<BTreeSet<String>>,
    /// Organisations (ids) whose users may send this node tasks; `None`: any in the
    /// collaboration.
    pub allowed_organisations: Option<BTreeSet<String>>,
    /// Users (ids) who may send this node tasks; `None`: any the server allows.
    pub allowed_users: Option<BTreeSet<String>>,
    /// Return a failed algorithm's standard error with the failure.
    pub return_logs: bool,
    /// How long a job's temporary folder is kept after its last run here.
    pub temp_retention: Duration,
    /// The largest result an algorithm may write.
    pub max_output_bytes: usize,
    /// Runs at once, at most.
    pub max_runs: usize,
    pub timeout: Duration,
    /// A Wasm engine to share (nodes in one process); `None` makes one.
    pub wasm: Option<Arc<enclava_wasm::WasmEngine>>,
    /// The node's TEE: needed to join an attested collaboration (inputs are sealed to its key).
    pub attester: Option<enclava_node::Attester>,
    /// How often it attests again in an attested collaboration (the server holds an admission
    /// for 10 minutes).
    pub reattest: Duration,
}

impl FedNodeConfig {
    pub fn new(server: &str, api_key: Zeroizing<String>, dir: &Path) -> FedNodeConfig {
        FedNodeConfig {
            server: server.to_owned(),
            api_key,
            key_file: dir.join("organisation.key"),
            data: BTreeMap::new(),
            work_dir: dir.join("runs"),
            rootfs: None,
            mounts: Vec::new(),
            proxy: enclava_process::running_as_root(),
            allowed_algorithms: None,
            allowed_organisations: None,
            allowed_users: None,
            return_logs: false,
            temp_retention: Duration::from_secs(3600),
            max_output_bytes: 8 << 20,
            max_runs: 4,
            timeout: Duration::from_secs(300),
            wasm: None,
            attester: None,
            reattest: Duration::from_secs(300),
        }
    }
}

/// A running federation node.
#[derive(Debug)]
pub struct FedNode {
    id: String,
    organisation: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// This node's id.
    node: String,
    /// Its collaboration requires attestation.
    attested: bool,
    /// Runs' folders: in memory (`/dev/shm`) where the machine has it, so opened inputs never
    /// reach a disk.
    jobs_dir: PathBuf,
    config: FedNodeConfig,
    key: enclava_seal::KeyPair,
    wasm: Arc<enclava_wasm::WasmEngine>,
    process: Option<enclava_process::ProcessSandbox>,
}

impl FedNode {
    /// Checks the organisation key against the server's copy (uploading it when the server has
    /// none) and starts pulling runs. Fails, with what to do, when the keys differ.
    pub async fn start(mut config: FedNodeConfig) -> Result<FedNode, Error> {
        let client = FedClient::new(&config.server, Some(config.api_key.clone()));
        let me = client.me().await?;
        let collab = client.collaboration(&me.collaboration.id).await?;
        let attested = collab.require_attestation.is_some();
        if attested {
            let Some(attester) = &config.attester else {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "collaboration {} requires attestation: start this node on a TEE (a node with evidence)",
                        collab.name
                    ),
                ));
            };
            attest(&client, attester).await?;
        }
        let key = load_or_make_key(&config.key_file)?;
        let org = client.organisation(&me.organisation.id).await?;
        if org.public_key.is_empty() {
            client.set_public_key(&org.id, key.public()).await?;
            tracing::info!(org = %org.id, "uploaded this organisation's public key");
        } else if org.public_key != key.public() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the server's public key for organisation {} is not this node's ({}): use the organisation's key \
                     file from its other node, or have an administrator replace the key",
                    org.name,
                    config.key_file.display()
                ),
            ));
        }
        if config.proxy && !enclava_process::running_as_root() {
            tracing::warn!(
                "the local proxy needs this node to run as root: process algorithms run without it (no subtasks)"
            );
            config.proxy = false;
        }
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|e| Error::unavailable(format!("cannot create {}: {e}", config.work_dir.display())))?;
        let wasm = match &config.wasm {
            Some(w) => w.clone(),
            None => Arc::new(enclava_wasm::WasmEngine::new(enclava_wasm::WasmConfig::default())?),
        };
        // Images bring their own root filesystem: a node runs them wherever bubblewrap is.
        let process = match &config.rootfs {
            Some(_) => Some(enclava_process::ProcessSandbox::find()?),
            None => enclava_process::ProcessSandbox::find().ok(),
        };
        let jobs_dir = crate::jobs_dir(&config.work_dir, &format!("fed-{}", me.id));
        let shared = Arc::new(Shared { node: me.id.clone(), attested, jobs_dir, config, key, wasm, process });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(pull(shared, client, stop_rx));
        tracing::info!(node = %me.id, org = %me.organisation.id, collab = %me.collaboration.id, "federation node started");
        Ok(FedNode { id: me.id, organisation: me.organisation.id, stop, task })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn organisation(&self) -> &str {
        &self.organisation
    }

    /// Stops pulling and stops its runs (the server gives them out again when their leases end).
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

/// The organisation key from `path` (a hex seed), or a new one written there (mode 0600).
fn load_or_make_key(path: &Path) -> Result<enclava_seal::KeyPair, Error> {
    let bad = |what: String| Error::new(ErrorCode::FailedPrecondition, what);
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed = Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| bad(format!("{} is not a hex key seed", path.display())))?,
            );
            let seed: [u8; 32] =
                seed.as_slice().try_into().map_err(|_| bad(format!("{} is not 32 bytes", path.display())))?;
            Ok(enclava_seal::KeyPair::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::fill(&mut seed[..]);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
            }
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(hex::encode(&seed[..]).as_bytes()).and_then(|()| f.sync_all()))
                .map_err(|e| bad(format!("cannot write the organisation key {}: {e}", path.display())))?;
            tracing::info!(file = %path.display(), "made a new organisation key");
            Ok(enclava_seal::KeyPair::from_seed(&seed))
        }
        Err(e) => Err(bad(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Joins the node's attested collaboration: fresh evidence binding its key to a nonce of the
/// server's. Fails with the server's reasons when the evidence does not pass.
async fn attest(client: &FedClient, attester: &enclava_node::Attester) -> Result<i64, Error> {
    let nonce = client.node_nonce().await?;
    let evidence = attester.fed_evidence(nonce.as_bytes()).ok_or_else(|| {
        Error::new(ErrorCode::FailedPrecondition, format!("this node ({}) cannot attest", attester.platform()))
    })?;
    let until = client
        .attest(&enclava_contracts::fed::AttestRequest { nonce, public_key: attester.public_key().to_vec(), evidence })
        .await?;
    tracing::info!(until_ms = until, "admitted to the attested collaboration");
    Ok(until)
}

async fn pull(shared: Arc<Shared>, client: FedClient, mut stop: watch::Receiver<bool>) {
    let mut running = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut attest_at = tokio::time::Instant::now() + shared.config.reattest;
    loop {
        while running.try_join_next().is_some() {}
        if *stop.borrow() {
            return;
        }
        if let (true, Some(attester)) = (shared.attested, &shared.config.attester)
            && tokio::time::Instant::now() >= attest_at
        {
            match attest(&client, attester).await {
                Ok(_) => attest_at = tokio::time::Instant::now() + shared.config.reattest,
                Err(e) => {
                    tracing::warn!(error = %e, "attesting again failed; retrying in 5 s");
                    attest_at = tokio::time::Instant::now() + Duration::from_secs(5);
                }
            }
        }
        let free = shared.config.max_runs.saturating_sub(running.len());
        if free == 0 {
            tokio::select! {
                _ = stop.changed() => return,
                _ = running.join_next() => continue,
            }
        }
        let leased = tokio::select! {
            _ = stop.changed() => return,
            r = client.lease(free as u32, Duration::from_secs(5)) => r,
        };
        match leased {
            Ok(runs) => {
                backoff = Duration::from_millis(100);
                for run in runs.into_iter().take(free) {
                    running.spawn(run_leased(shared.clone(), client.clone(), run));
                }
            }
            Err(e) => {
                // A server restarting or a network path cut: keep trying; whatever was missed is
                // still pending on the server and is leased on reconnect.
                tracing::warn!(error = %e, "cannot reach the federation server; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs one leased run, renewing its lease meanwhile, and reports how it ended.
async fn run_leased(shared: Arc<Shared>, client: FedClient, run: LeasedRun) {
    let lease = Duration::from_millis(run.lease_ms.clamp(300, 3_600_000));
    if !run.run_id_ok() {
        // The server's word is not a path: a run id it did not make is not run, nor a folder.
        let done = RunDone {
            lease: run.lease.clone(),
            status: "failed".into(),
            reason: Some(format!("the run id {} is not one the server makes", enclava_core::text::quote(&run.run))),
            result: Vec::new(),
            receipt: None,
        };
        let _ = client.complete(&run.run, &done).await;
        return;
    }
    let work = shared.jobs_dir.join(&run.run);
    let ran = {
        let execute = execute(&shared, &client, &run, &work);
        tokio::pin!(execute);
        // Renew every third of the lease; after a failed renewal (the server away), every 200 ms.
        let mut pause = lease / 3;
        loop {
            tokio::select! {
                r = &mut execute => break Some(r),
                _ = tokio::time::sleep(pause) => {
                    match client.renew(&run.run, &run.lease).await {
                        Ok(()) => pause = lease / 3,
                        Err(e) if e.code == ErrorCode::FailedPrecondition => {
                            tracing::info!(run = %run.run, reason = %e, "run no longer ours: stopping it");
                            break None;
                        }
                        Err(_) => pause = Duration::from_millis(200).min(lease / 3),
                    }
                }
            }
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    let Some(ran) = ran else { return };
    let done = match ran {
        Ok(d) => d,
        Err(e) => RunDone {
            lease: run.lease.clone(),
            status: if e.code == ErrorCode::PermissionDenied { "not allowed".into() } else { "failed".into() },
            reason: Some(e.message),
            result: Vec::new(),
            receipt: None,
        },
    };
    let deadline = tokio::time::Instant::now() + lease * 3;
    let mut pause = Duration::from_millis(50);
    loop {
        match client.complete(&run.run, &done).await {
            Ok(()) => return,
            Err(e) if e.code == ErrorCode::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(run = %run.run, error = %e, "the server did not keep this run's report");
                return;
            }
        }
    }
}

/// What the algorithm left in `OUTPUT_FILE`: only a regular file, not followed through a link
/// (an algorithm must not make the node read its key or another run's input), at most `max`
/// bytes. `None` when it wrote none.
fn read_output(path: &Path, max: usize) -> Result<Option<Vec<u8>>, Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if !meta.file_type().is_file() {
        return Err(Error::invalid(
            "the algorithm's OUTPUT_FILE is not a regular file (a link, a pipe, a folder): refused",
        ));
    }
    let too_big = || Error::invalid(format!("the algorithm's output is over {} MiB", max >> 20));
    if meta.len() > max as u64 {
        return Err(too_big());
    }
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW | O_NONBLOCK: a link or a pipe swapped in after the check is refused, not read.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o400000 | 0o4000)
        .open(path)
        .map_err(|e| Error::invalid(format!("cannot read the algorithm's output: {e}")))?;
    let mut out = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut out).map_err(|e| Error::invalid(format!("reading the output: {e}")))?;
    if out.len() > max {
        return Err(too_big());
    }
    Ok(Some(out))
}

/// Marks a folder used now (its modification time), for [`sweep_job_folders`].
fn touch(dir: &Path) {
    let _ = std::fs::File::open(dir).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// Removes jobs' temporary folders not used for `keep`.
fn sweep_job_folders(jobs_dir: &Path, keep: Duration) {
    let Ok(entries) = std::fs::read_dir(jobs_dir) else { return };
    for e in entries.flatten() {
        let old =
            e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > keep);
        if old && e.file_name().to_string_lossy().starts_with("job-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Environment variable names: a label upper-cased.
fn env_label(label: &str) -> String {
    label.to_ascii_uppercase().replace('-', "_")
}

async fn execute(shared: &Shared, client: &FedClient, run: &LeasedRun, work: &Path) -> Result<RunDone, Error> {
    let config = &shared.config;
    if let Some(allowed) = &config.allowed_algorithms
        && !allowed.contains(&run.algorithm)
    {
        return Err(Error::forbidden(format!(
            "this node's policy does not allow algorithm {}…",
            enclava_core::text::prefix(&run.algorithm, 16)
        )));
    }
    if let Some(users) = &config.allowed_users
        && !users.contains(&run.initiator)
    {
        return Err(Error::forbidden(format!(
            "this node's policy does not take tasks from user {}",
            enclava_core::text::quote(&run.initiator)
        )));
    }
    if let Some(orgs) = &config.allowed_organisations
        && !run.initiator_organisation.as_ref().is_some_and(|o| orgs.contains(o))
    {
        return Err(Error::forbidden(format!(
            "this node's policy does not take tasks from organisation {}",
            enclava_core::text::quote(run.initiator_organisation.as_deref().unwrap_or("(none)"))
        )));
    }
    let missing: Vec<&String> = run.databases.iter().filter(|l| !config.data.contains_key(*l)).collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "this node has no database labelled {}",
            missing.iter().map(|l| enclava_core::text::quote(l)).collect::<Vec<_>>().join(", ")
        )));
    }
    // The server may be away for a moment (a restart): keep asking while the lease could hold.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(run.lease_ms.clamp(300, 3_600_000) * 3);
    let algorithm = Arc::new(loop {
        match client.algorithm(&run.algorithm).await {
            Err(e) if e.code == ErrorCode::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r?,
        }
    });
    let input = match (&shared.config.attester, &run.sealed) {
        (Some(attester), Some(sealed)) if run.attested => attester.open_fed_input(&run.binding().aad(), sealed)?,
        _ if run.attested => {
            return Err(Error::new(ErrorCode::Tampered, "an attested run's input must be sealed to this node's TEE"));
        }
        _ => enclava_client::fed::open_input(&shared.key, run)?,
    };
    let io = |e: std::io::Error| Error::unavailable(format!("cannot prepare the run's folder: {e}"));
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("data")).map_err(io)?;
    // The temporary folder is the job's: shared by a task and its subtasks that run here, kept
    // for `temp_retention` after the job's last run here (vantage6 leaves them for good).
    if run.job.len() != 32 || !run.job.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(Error::invalid("the run's job id is not one the server makes"));
    }
    sweep_job_folders(&shared.jobs_dir, config.temp_retention);
    let job_tmp = shared.jobs_dir.join(format!("job-{}", run.job));
    std::fs::create_dir_all(&job_tmp).map_err(io)?;
    touch(&job_tmp);
    std::fs::write(work.join("input"), input.as_slice()).map_err(io)?;
    let inside = enclava_process::WORK_DIR;
    let mut env = vec![
        ("INPUT_FILE".to_owned(), format!("{inside}/input")),
        ("OUTPUT_FILE".to_owned(), format!("{inside}/output")),
        ("TEMPORARY_FOLDER".to_owned(), enclava_process::SHARED_DIR.to_owned()),
        ("TASK_ID".to_owned(), run.task.clone()),
        ("JOB_ID".to_owned(), run.job.clone()),
        ("ORGANIZATION_ID".to_owned(), run.organisation.clone()),
        ("USER_REQUESTED_DATABASE_LABELS".to_owned(), run.databases.join(",")),
        ("DB_LABELS".to_owned(), run.databases.join(",")),
    ];
    for label in &run.databases {
        let name = format!("{label}.csv");
        if let Some(src) = config.data.get(label) {
            std::fs::copy(src, work.join("data").join(&name)).map_err(io)?;
        }
        env.push((format!("{}_DATABASE_URI", env_label(label)), format!("{inside}/data/{name}")));
        env.push((format!("{}_DATABASE_TYPE", env_label(label)), "csv".into()));
    }
    let (success, outcome, stdout, stderr, work_done) = match run.kind.as_str() {
        "wasm" => {
            let engine = shared.wasm.clone();
            let defaults = engine.config().limits;
            let job = enclava_wasm::Job {
                args: Vec::new(),
                env,
                stdin: input.to_vec(),
                dirs: vec![
                    enclava_wasm::Preopen { host: work.to_owned(), guest: inside.into(), writable: true },
                    enclava_wasm::Preopen {
                        host: job_tmp.clone(),
                        guest: enclava_process::SHARED_DIR.into(),
                        writable: true,
                    },
                ],
                limits: Some(enclava_wasm::RunLimits { timeout: config.timeout, ..defaults }),
            };
            let report = tokio::task::spawn_blocking(move || {
                let compiled = engine.compile(&algorithm)?;
                engine.run(&compiled, job)
            })
            .await
            .map_err(|e| Error::internal(format!("the Wasm run stopped: {e}")))??;
            let done = WorkDone {
                fuel: report.fuel_used,
                wall: report.wall,
                peak_memory: report.peak_memory_bytes,
                isolation: crate::WASM_ISOLATION,
            };
            (report.outcome.success(), report.outcome.to_string(), report.stdout.to_vec(), report.stderr.to_vec(), done)
        }
        "process" | "image" => {
            let Some(sandbox) = &shared.process else {
                return Err(Error::invalid("this node runs no sandboxed algorithms (bubblewrap is not installed)"));
            };
            let (rootfs, command, mounts) = if run.kind == "image" {
                let images = config.work_dir.join("images");
                let (digest, bytes) = (run.algorithm.clone(), algorithm.clone());
                let (rootfs, command) = tokio::task::spawn_blocking(move || unpack_image(&images, &digest, &bytes))
                    .await
                    .map_err(|e| Error::internal(format!("unpacking the image stopped: {e}")))??;
                // An image carries everything it needs: the node's mounts are for its own root
                // filesystem.
                (rootfs, command, Vec::new())
            } else {
                let Some(rootfs) = &config.rootfs else {
                    return Err(Error::invalid(
                        "this node runs no process algorithms (start it with a root filesystem)",
                    ));
                };
                let command = std::str::from_utf8(&algorithm)
                    .map_err(|_| Error::invalid("a process algorithm is a UTF-8 command"))?;
                (rootfs.clone(), command.to_owned(), config.mounts.clone())
            };
            env.push(("PATH".into(), "/bin:/usr/bin".into()));
            let proxy = config.proxy.then(|| {
                Arc::new(crate::proxy::RunProxy::new(
                    client.clone(),
                    run,
                    &shared.node,
                    algorithm.clone(),
                    config.timeout + Duration::from_secs(60),
                ))
            });
            if let Some(proxy) = &proxy {
                std::fs::write(work.join("token"), proxy.token()).map_err(io)?;
                env.extend([
                    ("HOST".to_owned(), "http://127.0.0.1".to_owned()),
                    ("PORT".to_owned(), crate::proxy::PORT.to_string()),
                    ("API_PATH".to_owned(), crate::proxy::API_PATH.to_owned()),
                    ("TOKEN_FILE".to_owned(), format!("{inside}/token")),
                ]);
            }
            let job = enclava_process::ProcessJob {
                rootfs,
                argv: vec!["/bin/sh".into(), "-c".into(), command, "algorithm".into()],
                env,
                work: work.to_owned(),
                shared: Some(job_tmp.clone()),
                binds: mounts,
                stdin: input.to_vec(),
                limits: enclava_process::ProcessLimits { timeout: config.timeout, ..Default::default() },
            };
            // The proxy, and with it the run's token, go when the job ends.
            let listen = proxy.map(|proxy| enclava_process::Listen {
                port: crate::proxy::PORT,
                serve: Box::new(move |listener| proxy.serve(listener)),
            });
            let report = sandbox.run_serving(&job, listen).await?;
            let done = WorkDone { fuel: 0, wall: report.wall, peak_memory: 0, isolation: enclava_process::ISOLATION };
            (report.outcome.success(), report.outcome.to_string(), report.stdout, report.stderr, done)
        }
        other => {
            return Err(Error::invalid(format!("this node runs no {} algorithms", enclava_core::text::quote(other))));
        }
    };
    if !success {
        let mut reason = format!("the algorithm {outcome}");
        if config.return_logs && !stderr.is_empty() {
            reason.push_str(&format!(": {}", enclava_core::text::prefix(&String::from_utf8_lossy(&stderr), 1500)));
        } else if !stderr.is_empty() {
            reason.push_str(" (its error output stays on the node: this node does not return logs)");
        }
        return Err(Error::internal(reason));
    }
    let output = match read_output(&work.join("output"), shared.config.max_output_bytes)? {
        Some(o) => o,
        None => stdout,
    };
    let result = enclava_client::fed::seal_result(run, &output)?;
    // A node on a TEE signs what it did: the run, the algorithm, the input it opened, the result
    // it stored, and the work, bound into fresh evidence.
    let receipt = match &config.attester {
        Some(attester) => Some(attester.receipt(enclava_contracts::farm::Receipt {
            version: 1,
            job: run.run.clone(),
            host: String::new(),
            platform: String::new(),
            executor: run.kind.clone(),
            isolation: work_done.isolation.to_owned(),
            program_sha256: run.algorithm.clone(),
            input_sha256: enclava_contracts::farm::sha256_hex(&input),
            output_sha256: enclava_contracts::farm::sha256_hex(&result),
            bytes_in: input.len() as u64,
            bytes_out: result.len() as u64,
            fuel: work_done.fuel,
            wall_ms: work_done.wall.as_millis() as u64,
            peak_memory_bytes: work_done.peak_memory,
            outcome,
            issued_at: 0,
        })?),
        None => None,
    };
    Ok(RunDone { lease: run.lease.clone(), status: "completed".into(), reason: None, result, receipt })
}

/// Unpacks image `digest` (a tar archive made by [`enclava_client::fed::pack_image`]) into
/// `images/DIGEST` once, and returns its root filesystem and command. The archive cannot write
/// outside its folder (the `tar` crate refuses `..`, absolute paths and writes through links it
/// made), set-user-id bits and owners are not kept, and nothing the archive made is followed on
/// the host: its top level must be the manifest, a regular file, and `rootfs/`, a real folder
/// (a link there would bind the host's own files into the sandbox).
fn unpack_image(images: &Path, digest: &str, bytes: &[u8]) -> Result<(PathBuf, String), Error> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(Error::invalid("an image is named by its SHA-256"));
    }
    let dir = images.join(digest);
    let io = |e: std::io::Error| Error::unavailable(format!("cannot unpack the image: {e}"));
    let manifest_name = enclava_client::fed::IMAGE_MANIFEST;
    if std::fs::symlink_metadata(&dir).is_err() {
        std::fs::create_dir_all(images).map_err(io)?;
        let tmp = images.join(format!("{digest}.part-{}", hex::encode(rand::random::<[u8; 8]>())));
        let mut archive = tar::Archive::new(bytes);
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_unpack_xattrs(false);
        let unpacked = archive.unpack(&tmp).map_err(|e| format!("{e}")).and_then(|()| {
            let top: Vec<_> = std::fs::read_dir(&tmp)
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let manifest = std::fs::symlink_metadata(tmp.join(manifest_name)).map_err(|e| e.to_string())?;
            let rootfs = std::fs::symlink_metadata(tmp.join("rootfs")).map_err(|e| e.to_string())?;
            if top.iter().any(|n| n != manifest_name && n != "rootfs") {
                return Err(format!("its top level holds more than {manifest_name} and rootfs/"));
            }
            if !manifest.file_type().is_file() || !rootfs.file_type().is_dir() {
                return Err(format!("{manifest_name} must be a regular file and rootfs/ a folder, not links"));
            }
            Ok(())
        });
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::invalid(format!("the image is not an archive this node unpacks: {e}")));
        }
        // Another run may have unpacked it meanwhile: either copy is the same. The rename is
        // atomic, so a folder under the digest's name is a complete one.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    // Read without following a link, at most 64 KiB.
    let manifest = read_output(&dir.join(manifest_name), 64 << 10)
        .ok()
        .flatten()
        .ok_or_else(|| Error::invalid("the image has no manifest (enclava-image.json) this node reads"))?;
    let cmd = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|m| m.get("cmd").and_then(|c| c.as_str()).map(str::to_owned))
        .ok_or_else(|| Error::invalid("the image's manifest names no command"))?;
    let rootfs = dir.join("rootfs");
    if !std::fs::symlink_metadata(&rootfs).is_ok_and(|m| m.file_type().is_dir()) {
        return Err(Error::invalid("the image has no root filesystem folder (rootfs/)"));
    }
    Ok((rootfs, cmd))
}

/// What a run's executor reports, for its receipt.
struct WorkDone {
    fuel: u64,
    wall: Duration,
    peak_memory: u64,
    isolation: &'static str,
}
