//! `enclava bench farm`: the Wasm executor's start and metering costs and a sandboxed process's
//! start, next to what the same run measures as floors (a plain process spawn, the same modules
//! run without fuel metering); then the farm service: a trivial job end to end on loopback
//! (submit → placed → run → result opened, confidential and plaintext), and placement throughput
//! with 16 sim hosts on SQLite (and PostgreSQL with `--postgres`).

use std::process::ExitCode;

use anyhow::Context;
use std::time::{Duration, Instant};

use enclava_wasm::bench;
use enclava_wasm::{WasmConfig, WasmEngine};

/// `enclava bench farm`
#[derive(Debug, Clone, clap::Args)]
pub struct FarmArgs {
    /// Seconds per measured row
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Jobs submitted in the placement run
    #[arg(long, default_value_t = 2000)]
    jobs: u32,
    /// Also measure placement on a throwaway PostgreSQL cluster (initdb/pg_ctl), or the server
    /// ENCLAVA_TEST_POSTGRES names
    #[arg(long)]
    postgres: bool,
}

/// What the executor part measured, the floors the service part is compared with.
#[derive(Debug, Clone, Copy)]
pub struct Floors {
    pub spawn: Duration,
    pub sandboxed: Option<Duration>,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `enclava bench farm`: the executors (on a blocking thread), then the service.
pub async fn run(args: FarmArgs) -> anyhow::Result<ExitCode> {
    let a = args.clone();
    let floors = tokio::task::spawn_blocking(move || farm(a)).await??;
    service(&args, floors).await?;
    Ok(ExitCode::SUCCESS)
}

/// The executors' part.
pub fn farm(args: FarmArgs) -> anyhow::Result<Floors> {
    let dur = Duration::from_secs_f64(args.seconds.max(0.05));
    let config = WasmConfig { pool_instances: 16, ..WasmConfig::default() };
    let metered = WasmEngine::new(config)?;
    let plain = WasmEngine::unmetered(config)?;

    println!("Wasm executor (wasmtime, pooling allocator, fuel + epoch deadline), p50 of {:.1} s each", args.seconds);
    let spawn = bench::p50(dur, || {
        let status = std::process::Command::new("/bin/true")
            .status()
            .map_err(|e| enclava_core::Error::internal(e.to_string()))?;
        if status.success() { Ok(()) } else { Err(enclava_core::Error::internal("/bin/true failed")) }
    })?;
    let sandboxed = sandboxed_start(dur)?;
    let instantiate = bench::warm_instantiate(&metered, dur)?;
    let run = bench::warm_run(&metered, dur)?;
    let cold = bench::cold_start(&metered, dur)?;
    println!("{:<44} {:>10}  goal", "", "p50 µs");
    println!("{:<44} {:>10.1}  (floor)", "plain process spawn (/bin/true)", us(spawn));
    match sandboxed {
        Some(d) => println!(
            "{:<44} {:>10.1}  {:.1}× spawn",
            "sandboxed process: bubblewrap + `true`",
            us(d),
            d.as_secs_f64() / spawn.as_secs_f64()
        ),
        None => println!("{:<44} {:>10}  (needs bubblewrap and busybox-static)", "sandboxed process", "skipped"),
    }
    println!("{:<44} {:>10.2}  ≤ 5 µs", "warm start: pooled instance of a cached module", us(instantiate));
    println!("{:<44} {:>10.2}", "warm run: empty command, limits, pipes, report", us(run));
    println!("{:<44} {:>10.1}  ≤ 1000 µs", "cold start: precompiled code loaded and run", us(cold));
    println!(
        "spawn / warm start = {:.0}×; spawn / warm run = {:.0}×",
        spawn.as_secs_f64() / instantiate.as_secs_f64(),
        spawn.as_secs_f64() / run.as_secs_f64()
    );

    println!();
    println!("{:<28} {:>12} {:>12} {:>9} {:>14}  goal", "fuel metering", "metered ms", "plain ms", "ratio", "fuel");
    let mut met_goal = true;
    for (name, text, goal) in
        [("call-heavy (fib 25)", bench::CALLS, Some(1.15)), ("dense loop (dot product)", bench::DENSE, None)]
    {
        let started = Instant::now();
        let (m, fuel) = bench::run_p50(&metered, text, dur)?;
        let (p, _) = bench::run_p50(&plain, text, dur)?;
        let ratio = m.as_secs_f64() / p.as_secs_f64();
        let goal_text = match goal {
            Some(g) => {
                met_goal &= ratio <= g;
                format!("≤ {g:.2}×")
            }
            None => "(reported)".into(),
        };
        println!(
            "{name:<28} {:>12.2} {:>12.2} {:>8.2}× {:>14}  {goal_text}",
            m.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            ratio,
            fuel
        );
        tracing::debug!(?name, elapsed = ?started.elapsed(), "measured");
    }
    let warm_ok = instantiate <= Duration::from_micros(5);
    let cold_ok = cold <= Duration::from_millis(1);
    println!();
    println!(
        "goals: warm start {}, cold start {}, call-heavy metering {}",
        if warm_ok { "met" } else { "missed" },
        if cold_ok { "met" } else { "missed" },
        if met_goal { "met" } else { "missed" }
    );
    Ok(Floors { spawn, sandboxed })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

/// The service's part: end to end and placement.
async fn service(args: &FarmArgs, floors: Floors) -> anyhow::Result<()> {
    use enclava_client::farm::{FarmClient, Submission, accepted_hosts};
    use enclava_contracts::farm::Security;
    let dur = Duration::from_secs_f64(args.seconds.max(0.05));
    let sandbox = enclava_sandbox::SandboxBuilder::new().start().await?;
    let (_, token) = sandbox.broker().context("keys role")?.register(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = FarmClient::new(sandbox.url(), Some(zeroize::Zeroizing::new(token.clone())));
    let (node, agent) =
        sandbox.farm_host(enclava_sandbox::NodeSpec::new("e2e-host"), Some("cpu=1,memory=512MiB"), &[]).await?;
    let policy = enclava_attest::Policy::parse(&sandbox.sim_policy(&[])).map_err(anyhow::Error::msg)?;
    let verifier = enclava_collateral::EvidenceVerifier::default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let hosts = client.hosts().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let (ok, _) = accepted_hosts(&hosts, &policy, &verifier, now, "wasm", 0.1, 16 << 20).await;
    println!();
    println!("farm service on loopback (SQLite), one sim host; a trivial Wasm job, p50 of {:.1} s each", args.seconds);
    println!("{:<52} {:>9} {:>9}  goal", "end to end: submit → placed → run → result opened", "p50 ms", "p90 ms");
    let mut e2e_p50 = Duration::ZERO;
    for security in [Security::Confidential, Security::Plaintext] {
        let sub = Submission {
            kind: "wasm",
            security,
            program: enclava_wasm::bench::EMPTY.as_bytes(),
            stdin: None,
            inputs: &[],
            args: &[],
            rootfs: None,
            cpu: 0.1,
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(10),
        };
        let mut times = Vec::new();
        let started = Instant::now();
        while started.elapsed() < dur || times.len() < 5 {
            let t = Instant::now();
            let job = client.submit_job(&sub, &ok).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let done = client.wait(&job.view.id, Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let (_, result) =
                client.result(&done.id, job.result_seed.as_deref()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(result.success, "the benchmark job {}", result.outcome);
            times.push(t.elapsed());
        }
        times.sort();
        let p50 = pct(&times, 0.5);
        if security == Security::Confidential {
            e2e_p50 = p50;
        }
        println!(
            "{:<52} {:>9.2} {:>9.2}  {}",
            format!("  {} ({} jobs)", security.as_str(), times.len()),
            p50.as_secs_f64() * 1e3,
            pct(&times, 0.9).as_secs_f64() * 1e3,
            if security == Security::Confidential { "≤ 10 ms" } else { "" }
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "floors: plain spawn {:.2} ms, bubblewrap start {}; end to end (confidential) = {:.1}× spawn{}",
        ms(floors.spawn),
        floors.sandboxed.map(|d| format!("{:.2} ms", ms(d))).unwrap_or_else(|| "skipped".into()),
        e2e_p50.as_secs_f64() / floors.spawn.as_secs_f64(),
        floors
            .sandboxed
            .map(|d| format!(", {:.2}× bubblewrap start", e2e_p50.as_secs_f64() / d.as_secs_f64()))
            .unwrap_or_default()
    );
    agent.shutdown().await;
    node.shutdown().await;
    let sqlite = placement(&sandbox, &token, args.jobs).await?;
    sandbox.stop().await;
    println!();
    println!("{:<52} {:>9}  goal", "placement: jobs accepted and placed, 16 sim hosts, batches of 64", "jobs/s");
    println!("{:<52} {:>9.0}  ≥ 1000 ({:.2}×)", "  SQLite", sqlite, sqlite / 1000.0);
    if args.postgres {
        let db = enclava_testkit::PgDatabase::create().await.map_err(anyhow::Error::msg)?;
        let pg =
            enclava_sandbox::SandboxBuilder::new().configure(|c| c.database = Some(db.url.clone())).start().await?;
        let (_, pg_token) =
            pg.broker().context("keys role")?.register(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let rate = placement(&pg, &pg_token, args.jobs).await?;
        pg.stop().await;
        db.drop_db().await;
        println!("{:<52} {:>9.0}  ({:.2}× SQLite)", "  PostgreSQL", rate, rate / sqlite);
    }
    println!(
        "goals: end to end {}, placement {}",
        if e2e_p50 <= Duration::from_millis(10) { "met" } else { "missed" },
        if sqlite >= 1000.0 { "met" } else { "missed" }
    );
    Ok(())
}

/// Submits `jobs` trivial jobs from 8 submitters (in batches of 64) while 16 sim hosts (registered with evidence,
/// leasing but not running) take them; returns jobs per second from the first submit to the last
/// placement.
async fn placement(sandbox: &enclava_sandbox::Sandbox, token: &str, jobs: u32) -> anyhow::Result<f64> {
    use enclava_client::farm::{FarmClient, Submission};
    use enclava_contracts::farm::{HostCapacity, Security};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let mut nodes = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..16 {
        let node = sandbox.detached_node(enclava_sandbox::NodeSpec::new(format!("placement-{i}"))).await?;
        let capacity = serde_json::to_string(&HostCapacity {
            offer_cores: 1.0,
            offer_memory_bytes: 1 << 30,
            cores: 1.0,
            cores_how: "benchmark host".into(),
            memory_bytes: 1 << 30,
            memory_how: "benchmark host".into(),
            disk_bytes: 0,
            gpus: Vec::new(),
            gpus_how: "none".into(),
            bandwidth_bytes_per_s: 0,
            bandwidth_how: String::new(),
            kinds: vec!["wasm".into()],
            rootfs: Vec::new(),
        })?;
        let mut client = FarmClient::new(sandbox.url(), None);
        enclava_host::register(&node.attester(), &mut client, &capacity, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        hosts.push(client);
        nodes.push(node);
    }
    let submitter = FarmClient::new(sandbox.url(), Some(zeroize::Zeroizing::new(token.to_owned())));
    let program = enclava_wasm::bench::EMPTY.as_bytes();
    submitter.add_file(program.to_vec(), false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let placed = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in hosts {
        let placed = placed.clone();
        tasks.spawn(async move {
            while placed.load(Ordering::Relaxed) < jobs {
                match client.lease(16, Duration::from_millis(200), &[]).await {
                    Ok(l) => {
                        placed.fetch_add(l.len() as u32, Ordering::Relaxed);
                    }
                    Err(e) => return Err(anyhow::anyhow!("lease: {e}")),
                }
            }
            Ok(())
        });
    }
    let submitted = Arc::new(AtomicU32::new(0));
    for _ in 0..8 {
        let submitter = submitter.clone();
        let submitted = submitted.clone();
        tasks.spawn(async move {
            let sub = Submission {
                kind: "wasm",
                security: Security::Plaintext,
                program,
                stdin: None,
                inputs: &[],
                args: &[],
                rootfs: None,
                cpu: 0.001,
                memory_bytes: 1 << 20,
                timeout: Duration::from_secs(10),
            };
            // Batches of up to 64, as a submitter with many jobs sends them.
            loop {
                let from = submitted.fetch_add(64, Ordering::Relaxed);
                if from >= jobs {
                    return Ok(());
                }
                let n = (jobs - from).min(64);
                let batch = (0..n)
                    .map(|_| enclava_client::farm::prepare(&sub, &[]))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("prepare: {e}"))?;
                for r in submitter.submit_prepared(batch).await.map_err(|e| anyhow::anyhow!("submit: {e}"))? {
                    r.map_err(|e| anyhow::anyhow!("submit: {e}"))?;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let rate = f64::from(jobs) / started.elapsed().as_secs_f64();
    for n in nodes {
        n.shutdown().await;
    }
    Ok(rate)
}

/// The p50 of a bubblewrap job running busybox `true` on a one-binary root filesystem, or `None`
/// when bubblewrap or a static busybox is missing. Runs on a blocking thread of the runtime.
fn sandboxed_start(dur: Duration) -> anyhow::Result<Option<Duration>> {
    use enclava_process::{ProcessJob, ProcessLimits, ProcessSandbox};
    let Ok(sandbox) = ProcessSandbox::find() else { return Ok(None) };
    let dir = tempfile::tempdir()?;
    let Ok(root) = enclava_process::busybox_root(dir.path(), &["true"]) else { return Ok(None) };
    let work = dir.path().join("work");
    std::fs::create_dir(&work)?;
    let job = ProcessJob {
        rootfs: root,
        shared: None,
        binds: Vec::new(),
        argv: vec!["/bin/true".into()],
        env: vec![],
        work,
        stdin: vec![],
        limits: ProcessLimits::default(),
    };
    let rt = tokio::runtime::Handle::current();
    let d = bench::p50(dur, || {
        let report = rt.block_on(sandbox.run(&job))?;
        if report.outcome.success() {
            Ok(())
        } else {
            Err(enclava_core::Error::internal(format!("the sandboxed `true` {}", report.outcome)))
        }
    })?;
    Ok(Some(d))
}
