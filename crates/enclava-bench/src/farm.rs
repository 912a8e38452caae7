//! `enclava bench farm`: the Wasm executor's start and metering costs and a sandboxed process's
//! start (the farm's first parts), next to what the same run measures as floors: a plain process
//! spawn, and the same modules run without fuel metering.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use enclava_wasm::bench;
use enclava_wasm::{WasmConfig, WasmEngine};

/// `enclava bench farm`
#[derive(Debug, clap::Args)]
pub struct FarmArgs {
    /// Seconds per measured row
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `enclava bench farm`
pub fn farm(args: FarmArgs) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
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
