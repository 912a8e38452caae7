//! `enclava hosts`, `enclava job …` and `enclava file …`: the farm from the command line (through
//! [`enclava_client::farm::FarmClient`], as the identity `enclava keys register` kept). A
//! confidential job is sealed here, to the hosts whose evidence passed the submitter's policy; what
//! it needs later (its result key, the digests its receipt must carry) is kept in
//! `farm-jobs/ID.json` in the config folder (mode 0600).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use enclava_client::farm::{FarmClient, Submission, accepted_hosts};
use enclava_contracts::farm::{HostCapacity, Security, security_status};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys_cli::{credentials_dir, said, write_private};

/// Where and as whom.
#[derive(Debug, Args)]
pub struct FarmTarget {
    /// Farm server URL
    #[arg(long, env = "ENCLAVA_SERVER", default_value = "http://127.0.0.1:7000", global = true)]
    pub server: String,
    /// Folder holding this user's credentials and job keys [default: ~/.config/enclava]
    #[arg(long, env = "ENCLAVA_CONFIG_DIR", global = true)]
    pub config_dir: Option<PathBuf>,
}

/// `enclava hosts`
#[derive(Debug, Args)]
pub struct HostsArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    /// Also verify each host's evidence against this policy (TOML or JSON)
    #[arg(long, env = "ENCLAVA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Collateral for real platforms' evidence: a folder or a PCS/KDS-style URL
    #[arg(long, env = "ENCLAVA_COLLATERAL")]
    pub collateral: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `enclava job`
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job: a Wasm module (`app.wasm`), or with --cmd a shell command in a sandbox.
    Submit(SubmitArgs),
    /// Your jobs, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A job's state, host, attempts and why.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// A finished job's standard error and its history.
    Logs { id: String },
    /// A finished job's output (opened with your key for a confidential job).
    Result {
        id: String,
        /// Write stdout and stderr into this folder instead of printing stdout
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// What was run, where, on what evidence, how much work, which output.
    Receipt {
        id: String,
        /// Check it: evidence under --policy, bound to these exact bytes, for this job, program,
        /// input and output
        #[arg(long)]
        verify: bool,
        #[arg(long, env = "ENCLAVA_POLICY")]
        policy: Option<PathBuf>,
        #[arg(long, env = "ENCLAVA_COLLATERAL")]
        collateral: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The Wasm module (WASI preview 1) to run; omit with --cmd
    pub program: Option<PathBuf>,
    /// Run only on a host whose evidence passes --policy; inputs sealed to its attested key
    #[arg(long, conflicts_with = "plaintext")]
    pub confidential: bool,
    /// Run on any host, which can see everything (a sandboxed process with --cmd)
    #[arg(long)]
    pub plaintext: bool,
    /// What a confidential job's host must prove (TOML or JSON)
    #[arg(long, env = "ENCLAVA_POLICY")]
    pub policy: Option<PathBuf>,
    #[arg(long, env = "ENCLAVA_COLLATERAL")]
    pub collateral: Option<String>,
    /// A shell command run by /bin/sh -c in a sandboxed process (plaintext only), or with --vm
    /// in a VM
    #[arg(long)]
    pub cmd: Option<String>,
    /// Run --cmd in a VM: plain (TCG) with --plaintext; with --confidential only on a host with
    /// SEV-SNP or TDX
    #[arg(long, requires = "cmd")]
    pub vm: bool,
    /// The root filesystem for --cmd, one the host offers by name
    #[arg(long, default_value = "busybox")]
    pub rootfs: String,
    #[arg(long, default_value_t = 1.0)]
    pub cpu: f64,
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// e.g. 60s, 500ms, 2m
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// A file put read-only in the job's /in folder; repeatable
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// A file given as standard input
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// An argument for the program; repeatable
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Wait for the job and print its output
    #[arg(long)]
    pub wait: bool,
}

/// `enclava file`
#[derive(Debug, Args)]
pub struct FileArgs {
    #[command(flatten)]
    pub target: FarmTarget,
    #[command(subcommand)]
    pub command: FileCommand,
}

#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Store a job file; prints its SHA-256, which names it. Unpinned files no job needs are
    /// deleted a day after they were last stored.
    Add {
        file: PathBuf,
        /// Keep it until `file unpin`
        #[arg(long)]
        pin: bool,
    },
    /// Print a job file by its SHA-256 (one you stored).
    Cat { hash: String },
    /// Remove your pin on a job file.
    Unpin { hash: String },
}

/// What the submitter keeps of a job.
#[derive(Serialize, Deserialize)]
struct Kept {
    server: String,
    security: Security,
    program_sha256: String,
    input_sha256: String,
    /// Hex seed of the result key (confidential jobs).
    result_seed: Option<String>,
}

fn kept_path(dir: &Path, id: &str) -> anyhow::Result<PathBuf> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} is not a job id (32 hex digits)", enclava_core::text::quote(id));
    }
    Ok(dir.join("farm-jobs").join(format!("{id}.json")))
}

fn read_kept(dir: &Path, id: &str) -> anyhow::Result<Option<Kept>> {
    let path = kept_path(dir, id)?;
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("{} is damaged", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn client(target: &FarmTarget, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<(FarmClient, PathBuf)> {
    let dir = credentials_dir(target.config_dir.as_deref(), env)?;
    let token = crate::keys_cli::token(&target.server, &dir)?;
    Ok((FarmClient::new(&target.server, Some(token)), dir))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `60s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{} is not a duration (60s, 500ms, 2m)", enclava_core::text::quote(t)))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("{} is not a duration (60s, 500ms, 2m)", enclava_core::text::quote(t)),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        bail!("a timeout is between 1 ms and 24 h");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `enclava hosts`
pub async fn hosts(a: HostsArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (client, _) = client(&a.target, env)?;
    let hosts = client.hosts().await.map_err(said)?;
    let verdicts: Vec<Option<Result<(), Vec<String>>>> = match &a.policy {
        Some(p) => {
            let policy = enclava_attest::Policy::load(p).map_err(anyhow::Error::msg)?;
            let verifier = crate::verifier(a.collateral.as_deref())?;
            let mut out = Vec::new();
            for h in &hosts {
                out.push(Some(enclava_client::farm::verify_host(h, &policy, &verifier, now()).await.map(|_| ())));
            }
            out
        }
        None => hosts.iter().map(|_| None).collect(),
    };
    if a.json {
        let list: Vec<serde_json::Value> = hosts
            .iter()
            .zip(&verdicts)
            .map(|(h, v)| {
                let mut j = serde_json::json!({
                    "id": h.id, "platform": h.platform, "status": h.status, "measurement": h.measurement,
                    "online": h.online, "capacity": serde_json::from_str::<serde_json::Value>(&h.capacity).unwrap_or_default(),
                    "capacityProof": proof(h, v.as_ref()), "running": h.running, "cpuUsed": h.cpu_used,
                    "memoryUsed": h.memory_used, "lastSeenMs": h.last_seen_ms,
                });
                if let Some(Err(r)) = v {
                    j["refused"] = serde_json::json!(r);
                }
                j
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if hosts.is_empty() {
        println!("no hosts: start one with `enclava node --farm {} --offer cpu=1,memory=1GiB`", a.target.server);
        return Ok(ExitCode::SUCCESS);
    }
    for (h, v) in hosts.iter().zip(&verdicts) {
        let c: Option<HostCapacity> = serde_json::from_str(&h.capacity).ok();
        let cut = |s: &str, n| enclava_core::text::prefix(s, n);
        println!(
            "{} [{}] {} — {}",
            cut(&h.id, 40),
            cut(&h.platform, 12),
            if h.online { "online" } else { "OFFLINE" },
            h.status
        );
        if let Some(c) = c {
            println!(
                "  offers {} cores, {} MiB of {} cores ({}), {} MiB ({}); disk {} MiB; GPUs: {}; bandwidth {}; runs {}{}",
                c.offer_cores,
                c.offer_memory_bytes >> 20,
                c.cores,
                cut(&c.cores_how, 60),
                c.memory_bytes >> 20,
                cut(&c.memory_how, 60),
                c.disk_bytes >> 20,
                if c.gpus.is_empty() { format!("none ({})", cut(&c.gpus_how, 40)) } else { c.gpus.join(", ") },
                if c.bandwidth_bytes_per_s == 0 {
                    format!("unknown ({})", cut(&c.bandwidth_how, 60))
                } else {
                    format!("{} MB/s ({})", c.bandwidth_bytes_per_s / 1_000_000, cut(&c.bandwidth_how, 60))
                },
                c.kinds.join(", "),
                if c.rootfs.is_empty() {
                    String::new()
                } else {
                    format!(" (root filesystems: {})", c.rootfs.join(", "))
                }
            );
        }
        println!("  capacity: {}", proof(h, v.as_ref()));
        println!("  load: {} jobs, {} cores, {} MiB", h.running, h.cpu_used, h.memory_used >> 20);
        if let Some(Err(reasons)) = v {
            for r in reasons {
                println!("  refused by your policy: {r}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a host's capacity is proven, in words.
fn proof(h: &enclava_contracts::farm::HostView, verdict: Option<&Result<(), Vec<String>>>) -> String {
    match (h.evidence.is_empty(), verdict) {
        (true, _) => "unverified: a plaintext host's word only".into(),
        (false, Some(Ok(()))) => {
            format!("bound into {} evidence with the farm's nonce; verified against your policy", h.platform)
        }
        (false, Some(Err(_))) => "its evidence FAILED your policy".into(),
        (false, None) => {
            format!("bound into {} evidence with the farm's nonce (pass --policy to verify it)", h.platform)
        }
    }
}

pub async fn job(a: JobArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (client, dir) = client(&a.target, env)?;
    match a.command {
        JobCommand::Submit(s) => submit(&client, &dir, &a.target.server, s).await,
        JobCommand::List { json } => {
            let jobs = client.jobs().await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs yet: `enclava job submit app.wasm --confidential --policy policy.toml`");
            } else {
                println!("{:<32}  {:<12} {:<7} {:<10} HOST", "JOB", "SECURITY", "KIND", "STATE");
                for j in jobs {
                    println!(
                        "{:<32}  {:<12} {:<7} {:<10} {}",
                        j.id,
                        j.security.as_str(),
                        j.kind,
                        j.state,
                        j.host.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Status { id, json } => {
            let j = client.job(&id).await.map_err(said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                print_status(&j);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Logs { id } => {
            let j = client.job(&id).await.map_err(said)?;
            for r in &j.reasons {
                println!("# {r}");
            }
            if matches!(j.state.as_str(), "succeeded" | "failed") {
                let (_, result) = open(&client, &dir, &id).await?;
                print!("{}", String::from_utf8_lossy(&result.stderr));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Result { id, out } => {
            let (_, result) = open(&client, &dir, &id).await?;
            match out {
                Some(d) => {
                    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
                    std::fs::write(d.join("stdout"), &result.stdout)?;
                    std::fs::write(d.join("stderr"), &result.stderr)?;
                    println!(
                        "{} ({} bytes of stdout, {} of stderr in {})",
                        result.outcome,
                        result.stdout.len(),
                        result.stderr.len(),
                        d.display()
                    );
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&result.stdout)?;
                }
            }
            if !result.success {
                eprintln!("the job {}", result.outcome);
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Cancel { id } => {
            let j = client.cancel(&id).await.map_err(said)?;
            println!("job {} is {}", j.id, j.state);
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Receipt { id, verify, policy, collateral } => {
            let out = client.output(&id).await.map_err(said)?;
            let receipt: serde_json::Value = serde_json::from_str(&out.receipt.receipt)?;
            println!("{}", serde_json::to_string_pretty(&receipt)?);
            if !verify {
                println!("(not verified: pass --verify --policy FILE)");
                return Ok(ExitCode::SUCCESS);
            }
            let path = policy.context("--verify needs --policy FILE: what the host must have proven")?;
            let policy = enclava_attest::Policy::load(&path).map_err(anyhow::Error::msg)?;
            let verifier = crate::verifier(collateral.as_deref())?;
            let kept = read_kept(&dir, &id)?;
            let expect = enclava_client::ReceiptExpectations {
                job: Some(&id),
                program_sha256: kept.as_ref().map(|k| k.program_sha256.as_str()),
                input_sha256: kept.as_ref().map(|k| k.input_sha256.as_str()),
                output: Some(&out.result),
            };
            match enclava_client::verify_receipt(&out.receipt, &policy, &verifier, now(), &expect).await {
                Ok((r, claims)) => {
                    println!(
                        "VERIFIED: job {} ran on {} ({}, measurement {}…), {}; output {} bytes as received",
                        r.job,
                        r.host,
                        security_status(claims.platform.as_str()),
                        enclava_core::text::prefix(&claims.measurement_hex(), 16),
                        r.outcome,
                        r.bytes_out
                    );
                    if kept.is_none() {
                        println!("(program and input not checked: this config folder did not submit the job)");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(reasons) => {
                    println!("REFUSED:");
                    for r in reasons {
                        println!("  - {r}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn print_status(j: &enclava_contracts::farm::JobView) {
    println!("job {}: {} ({} {} job)", j.id, j.state, j.security.as_str(), j.kind);
    if let Some(h) = &j.host {
        let platform = j.host_platform.as_deref().unwrap_or("unknown");
        println!("  host {h} [{platform}]: {}", security_status(platform));
    }
    println!("  attempts {}", j.attempts);
    for r in &j.reasons {
        println!("  - {r}");
    }
}

async fn open(
    client: &FarmClient,
    dir: &Path,
    id: &str,
) -> anyhow::Result<(enclava_contracts::farm::JobOutput, enclava_contracts::farm::RunResult)> {
    let kept = read_kept(dir, id)?;
    let seed = match kept.as_ref().and_then(|k| k.result_seed.as_deref()) {
        Some(h) => {
            let mut s = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(h, &mut s[..]).context("the kept result key is damaged")?;
            Some(s)
        }
        None => None,
    };
    if seed.is_none() && kept.as_ref().is_some_and(|k| k.security == Security::Confidential) {
        bail!("the result key of confidential job {id} is missing from {}", dir.display());
    }
    client.result(id, seed.as_deref()).await.map_err(said)
}

async fn submit(client: &FarmClient, dir: &Path, server: &str, s: SubmitArgs) -> anyhow::Result<ExitCode> {
    let security = match (s.confidential, s.plaintext) {
        (true, _) => Security::Confidential,
        (false, true) => Security::Plaintext,
        (false, false) => bail!(
            "choose --confidential (only hosts your --policy accepts) or --plaintext (any host, which sees everything)"
        ),
    };
    let (kind, program) = match (&s.program, &s.cmd) {
        (Some(p), None) => ("wasm", std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        (None, Some(c)) => (if s.vm { "vm" } else { "process" }, c.as_bytes().to_vec()),
        _ => bail!("give a Wasm module (app.wasm) or --cmd \"...\", not both"),
    };
    if kind == "process" && security == Security::Confidential {
        bail!(
            "a sandboxed process is not confidential (the host sees everything): use --plaintext, or a Wasm module with --confidential"
        );
    }
    let memory = enclava_node::capacity::parse_size(&s.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    let timeout = parse_duration(&s.timeout).context("--timeout")?;
    let stdin = s
        .stdin
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let mut inputs = Vec::new();
    for p in &s.input {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", p.display()))?;
        inputs.push((name.to_owned(), std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?));
    }
    let named: Vec<(&str, &[u8])> = inputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let sub = Submission {
        kind,
        security,
        program: &program,
        stdin: stdin.as_deref(),
        inputs: &named,
        args: &s.args,
        rootfs: (kind == "process").then_some(s.rootfs.as_str()),
        cpu: s.cpu,
        memory_bytes: memory,
        timeout,
    };
    let hosts = match security {
        Security::Plaintext => {
            println!("security: Not confidential: the host can see everything (a sandboxed {kind} job on any host)");
            Vec::new()
        }
        Security::Confidential => {
            let path = s
                .policy
                .as_ref()
                .context("--confidential needs --policy FILE: what a host must prove before it sees anything")?;
            let policy = enclava_attest::Policy::load(path).map_err(anyhow::Error::msg)?;
            let verifier = crate::verifier(s.collateral.as_deref())?;
            let all = client.hosts().await.map_err(said)?;
            let executor = if kind == "vm" { "confidential-vm" } else { kind };
            let (ok, refused) = accepted_hosts(&all, &policy, &verifier, now(), executor, s.cpu, memory).await;
            for (id, reasons) in &refused {
                println!("host {} refused: {}", enclava_core::text::prefix(id, 40), reasons.join("; "));
            }
            if ok.is_empty() {
                bail!("no online host passed your policy {} with room for this job: nothing was sent", path.display());
            }
            let words: std::collections::BTreeSet<&str> = ok.iter().map(|h| security_status(&h.platform)).collect();
            println!(
                "security: {} ({} host{} passed your policy; inputs sealed to their attested keys)",
                words.into_iter().collect::<Vec<_>>().join(" / "),
                ok.len(),
                if ok.len() == 1 { "" } else { "s" }
            );
            ok
        }
    };
    // What opens and checks the result is kept before anything is sent: a job the farm accepted
    // is never left without its result key.
    let prepared = enclava_client::farm::prepare(&sub, &hosts).map_err(said)?;
    let id = prepared.spec.id.clone();
    let kept = Kept {
        server: server.trim_end_matches('/').to_owned(),
        security,
        program_sha256: prepared.program_sha256.clone(),
        input_sha256: prepared.input_sha256.clone(),
        result_seed: prepared.result_seed.as_ref().map(|s| hex::encode(&s[..])),
    };
    let kept_at = kept_path(dir, &id)?;
    write_private(&kept_at, &Zeroizing::new(serde_json::to_vec(&kept)?))?;
    let answer = client.submit_prepared(vec![prepared]).await.and_then(|r| {
        r.into_iter().next().unwrap_or_else(|| Err(enclava_core::Error::internal("the farm answered no job")))
    });
    let submitted = match answer {
        Ok(s) => s,
        Err(e) => {
            // Refused for certain: nothing to keep. Unreachable or unanswered: the job may have
            // been accepted, so its key stays (`enclava job status ID` tells).
            if !matches!(e.code, enclava_core::ErrorCode::Unavailable | enclava_core::ErrorCode::Internal) {
                let _ = std::fs::remove_file(&kept_at);
            } else {
                eprintln!("job {id}: its result key is kept in {} in case the farm accepted it", kept_at.display());
            }
            return Err(said(e));
        }
    };
    println!("job {id} {}", submitted.view.state);
    if !s.wait {
        println!("follow it with `enclava job status {id}`; its output with `enclava job result {id}`");
        return Ok(ExitCode::SUCCESS);
    }
    let done = client.wait(&id, timeout + Duration::from_secs(60)).await.map_err(said)?;
    print_status(&done);
    if !matches!(done.state.as_str(), "succeeded" | "failed") {
        return Ok(ExitCode::from(1));
    }
    let (_, result) = open(client, dir, &id).await?;
    use std::io::Write;
    std::io::stdout().write_all(&result.stdout)?;
    Ok(if result.success { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn file(a: FileArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let (client, _) = client(&a.target, env)?;
    match a.command {
        FileCommand::Add { file, pin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            println!("{}", client.add_file(bytes, pin).await.map_err(said)?);
        }
        FileCommand::Unpin { hash } => {
            client.unpin(&hash).await.map_err(said)?;
            eprintln!("unpinned: it is deleted once no job needs it and nobody stored it for a day");
        }
        FileCommand::Cat { hash } => {
            use std::io::Write;
            std::io::stdout().write_all(&client.file(&hash).await.map_err(said)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
