//! Wasm workloads on wasmtime: one [`WasmEngine`] per process (pooling allocator, fuel, epoch
//! deadlines), [`Program`]s compiled once and cached by the SHA-256 of their bytes, and
//! [`WasmEngine::run`], which runs a WASI preview 1 command with only the folders its job names
//! pre-opened, no sockets, a memory limit, a fuel budget and a wall-clock deadline, and reports
//! what it used. [`WasmExecutor`] puts it behind the node's workload interface (kind `wasm`).
//!
//! # Isolation, and what it does not give
//!
//! A module sees only what WASI preview 1 hands it: its arguments and environment, its stdin and
//! stdout, a clock, random bytes, and the folders pre-opened for it (paths cannot leave them:
//! `..` and absolute paths fail with `ENOTCAPABLE`). Modules that import sockets (`sock_*`) or
//! anything outside `wasi_snapshot_preview1` are refused when they are compiled, so no network
//! function is ever linked. Memory is capped per run; fuel counts every instruction (the
//! deterministic work unit receipts report) and runs out at the budget; the epoch deadline stops a
//! run at its wall-clock limit. The host is as trustworthy as the process it runs in: confidential
//! only where the node runs in a TEE.

pub mod bench;
pub mod examples;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enclava_core::{Error, ErrorCode};
use enclava_executor::{Executor, Limits, Loaded, Output, Usage};
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};
use zeroize::Zeroizing;

/// How often the deadline clock ticks: a run stops at most this long after its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The only import module a program may use.
const WASI_P1: &str = "wasi_snapshot_preview1";

/// How the engine is built, and the limits a run gets unless its job asks for less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmConfig {
    /// Instances the pooling allocator keeps ready (runs at once, at most).
    pub pool_instances: u32,
    /// The largest linear memory any run may have, in bytes.
    pub max_memory_bytes: u64,
    /// The default limits of one run.
    pub limits: RunLimits,
}

impl Default for WasmConfig {
    fn default() -> WasmConfig {
        WasmConfig { pool_instances: 32, max_memory_bytes: 256 << 20, limits: RunLimits::default() }
    }
}

/// What one run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Linear memory, in bytes (capped at the engine's `max_memory_bytes`).
    pub memory_bytes: u64,
    /// Fuel: roughly one unit per Wasm instruction.
    pub fuel: u64,
    /// Wall-clock time.
    pub timeout: Duration,
    /// Bytes of stdout (and, separately, of stderr) kept.
    pub max_output_bytes: usize,
}

impl Default for RunLimits {
    fn default() -> RunLimits {
        RunLimits {
            memory_bytes: 64 << 20,
            fuel: 20_000_000_000,
            timeout: Duration::from_secs(60),
            max_output_bytes: 16 << 20,
        }
    }
}

/// A folder a run sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The folder on the host.
    pub host: PathBuf,
    /// Its name inside the module (`/input`, `/output`, `/tmp`).
    pub guest: String,
    /// Whether the module may create and change files in it.
    pub writable: bool,
}

/// One run of a program. Its `Debug` shows sizes, never the input or the environment's values.
#[derive(Clone, Default)]
pub struct Job {
    /// `argv[1..]` (`argv[0]` is the program's name).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub dirs: Vec<Preopen>,
    /// Limits lower than the engine's defaults; `None` takes the defaults.
    pub limits: Option<RunLimits>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("args", &self.args.len())
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("stdin_bytes", &self.stdin.len())
            .field("dirs", &self.dirs)
            .field("limits", &self.limits)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `_start` returned (status 0) or the program called `proc_exit`.
    Exited(i32),
    /// It used all its fuel.
    OutOfFuel { fuel: u64 },
    /// It ran past its wall-clock limit.
    Deadline { timeout: Duration },
    /// It asked for more memory than its limit.
    MemoryLimit { limit: u64 },
    /// It wrote more than its output limit.
    OutputLimit { limit: usize },
    /// It trapped (an unreachable instruction, an out-of-bounds access, a stack overflow, …).
    Trapped(String),
}

impl Outcome {
    /// Whether the program ran to completion with status 0.
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::OutOfFuel { fuel } => write!(f, "ran out of fuel after {fuel} units (raise the job's fuel)"),
            Outcome::Deadline { timeout } => {
                write!(f, "stopped at its deadline of {:.3} s (raise the job's timeout)", timeout.as_secs_f64())
            }
            Outcome::MemoryLimit { limit } => write!(
                f,
                "stopped when it asked for more than its memory limit of {} MiB (raise the job's memory)",
                limit >> 20
            ),
            Outcome::OutputLimit { limit } => {
                write!(f, "wrote more than its output limit of {limit} bytes (raise the job's output limit)")
            }
            Outcome::Trapped(why) => write!(f, "trapped: {why}"),
        }
    }
}

/// What a run did and used. Its `Debug` shows the outputs' sizes, not their bytes.
pub struct RunReport {
    pub outcome: Outcome,
    /// Stdout or stderr reached `max_output_bytes` and the rest was refused to the module.
    pub output_truncated: bool,
    pub stdout: Zeroizing<Vec<u8>>,
    pub stderr: Zeroizing<Vec<u8>>,
    /// Fuel consumed (the deterministic work unit).
    pub fuel_used: u64,
    pub wall: Duration,
    /// The largest linear memory it had, in bytes.
    pub peak_memory_bytes: u64,
}

impl std::fmt::Debug for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunReport")
            .field("outcome", &self.outcome)
            .field("output_truncated", &self.output_truncated)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr_bytes", &self.stderr.len())
            .field("fuel_used", &self.fuel_used)
            .field("wall", &self.wall)
            .field("peak_memory_bytes", &self.peak_memory_bytes)
            .finish()
    }
}

/// A compiled module, checked and ready to instantiate.
#[derive(Clone)]
pub struct Program {
    digest: [u8; 32],
    size: usize,
    pre: InstancePre<RunState>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("digest", &hex::encode(self.digest)).field("size", &self.size).finish()
    }
}

impl Program {
    /// The SHA-256 of the module's bytes, as receipts name what ran.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The module's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// What a store holds for one run.
struct RunState {
    wasi: WasiP1Ctx,
    memory: MemoryLimiter,
}

/// Caps linear memory and remembers the largest it was and whether the cap was hit.
#[derive(Debug, Default)]
struct MemoryLimiter {
    limit: u64,
    peak: u64,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Past the module's own maximum the growth fails anyway (memory.grow answers -1): not a
        // limit hit, and not memory it ever had.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        if desired as u64 > self.limit {
            self.hit = true;
            // An error makes `memory.grow` trap instead of answering -1: the run stops with a
            // clear reason rather than failing somewhere later.
            return Err(wasmtime::format_err!("memory limit exceeded"));
        }
        self.peak = self.peak.max(desired as u64);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// One engine per process: compiled programs, the pooling allocator and the deadline clock.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<RunState>,
    config: WasmConfig,
    metered: bool,
    programs: Mutex<HashMap<[u8; 32], Program>>,
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").field("config", &self.config).finish()
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

impl WasmEngine {
    /// An engine with fuel, epochs and a pooling allocator sized by `config`, and its deadline
    /// clock (a thread that ticks every [`EPOCH_TICK`] while the engine lives).
    pub fn new(config: WasmConfig) -> Result<WasmEngine, Error> {
        Self::build(config, true)
    }

    /// The same engine without fuel metering (to measure what metering costs).
    pub fn unmetered(config: WasmConfig) -> Result<WasmEngine, Error> {
        Self::build(config, false)
    }

    fn build(config: WasmConfig, fuel: bool) -> Result<WasmEngine, Error> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_memories(config.pool_instances)
            .total_tables(config.pool_instances)
            .total_core_instances(config.pool_instances)
            .total_stacks(config.pool_instances)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX));
        let mut c = Config::new();
        c.consume_fuel(fuel)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(|e| Error::internal(format!("the Wasm engine cannot start: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut RunState| &mut s.wasi)
            .map_err(|e| Error::internal(format!("WASI does not link: {e}")))?;
        let ticking = Arc::new(AtomicBool::new(true));
        let (clock, alive) = (engine.clone(), ticking.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while alive.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    clock.increment_epoch();
                }
            })
            .map_err(|e| Error::internal(format!("the Wasm deadline clock cannot start: {e}")))?;
        Ok(WasmEngine { engine, linker, config, metered: fuel, programs: Mutex::new(HashMap::new()), ticking })
    }

    /// Compiles a module (binary, or text when it starts like WAT) once: the same bytes again
    /// return the cached program. A module that imports anything but WASI preview 1's
    /// non-socket functions is refused here, before it can run.
    pub fn compile(&self, bytes: &[u8]) -> Result<Program, Error> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(p) = self.programs.lock().unwrap_or_else(|e| e.into_inner()).get(&digest) {
            return Ok(p.clone());
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| invalid_module(&e))?;
        let program = self.prepare(module, digest, bytes.len())?;
        self.programs.lock().unwrap_or_else(|e| e.into_inner()).insert(digest, program.clone());
        Ok(program)
    }

    /// Loads a module [`WasmEngine::precompile`] made: no compiling, only loading its code.
    pub fn load_precompiled(&self, precompiled: &PrecompiledModule) -> Result<Program, Error> {
        // SAFETY: a `PrecompiledModule` can only be made by `WasmEngine::precompile` from a
        // module this process compiled and checked; its bytes are private and never read from
        // outside the process, which is what `Module::deserialize` requires.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(&self.engine, &precompiled.code) }
            .map_err(|e| Error::internal(format!("the precompiled module does not load: {e}")))?;
        self.prepare(module, precompiled.digest, precompiled.size)
    }

    /// Compiles a module to this engine's machine code, as a value only this process can make, to
    /// load later with [`WasmEngine::load_precompiled`] without compiling again.
    pub fn precompile(&self, bytes: &[u8]) -> Result<PrecompiledModule, Error> {
        let code = self.engine.precompile_module(bytes).map_err(|e| invalid_module(&e))?;
        Ok(PrecompiledModule { code, digest: Sha256::digest(bytes).into(), size: bytes.len() })
    }

    fn prepare(&self, module: Module, digest: [u8; 32], size: usize) -> Result<Program, Error> {
        for import in module.imports() {
            let (m, name) = (import.module(), import.name());
            if m != WASI_P1 {
                return Err(Error::invalid(format!(
                    "the module imports {}::{}, which a Wasm job cannot have: only WASI preview 1 ({WASI_P1}) is provided",
                    enclava_core::text::quote(m),
                    enclava_core::text::quote(name)
                )));
            }
            if name == "poll_oneoff" {
                return Err(Error::invalid(
                    "the module imports poll_oneoff (sleeping or waiting on clocks): a waiting Wasm job would hold its \
                     host thread past its deadline, so Wasm jobs cannot wait; compute, then exit",
                ));
            }
            if name.starts_with("sock_") {
                return Err(Error::invalid(format!(
                    "the module imports the socket function {}: Wasm jobs have no network, so no socket function is linked",
                    enclava_core::text::quote(name)
                )));
            }
        }
        if module.get_export("_start").is_none() {
            return Err(Error::invalid(
                "the module has no _start function: build it as a WASI command (wasm32-wasip1)",
            ));
        }
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            Error::invalid(format!("the module does not link: {}", enclava_core::text::quote(&e.to_string())))
        })?;
        Ok(Program { digest, size, pre })
    }

    /// A store for one run: the WASI context, the memory limit, the fuel budget and the deadline.
    fn store(&self, wasi: WasiP1Ctx, limits: &RunLimits) -> Result<Store<RunState>, Error> {
        let memory = MemoryLimiter { limit: limits.memory_bytes, ..MemoryLimiter::default() };
        let mut store = Store::new(&self.engine, RunState { wasi, memory });
        store.limiter(|s| &mut s.memory);
        if self.metered {
            store.set_fuel(limits.fuel).map_err(|e| Error::internal(format!("fuel: {e}")))?;
        }
        let ticks = limits.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1));
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// Runs a program's `_start` for one job, on the calling thread (a blocking thread, never a
    /// runtime worker). A program that fails, runs out of fuel or time, or asks for too much memory
    /// is an [`Outcome`], not an error; an error means the run could not be set up.
    pub fn run(&self, program: &Program, job: Job) -> Result<RunReport, Error> {
        // A job may ask for less than the engine's defaults, never more.
        let defaults = self.config.limits;
        let asked = job.limits.unwrap_or(defaults);
        let limits = RunLimits {
            memory_bytes: asked.memory_bytes.min(defaults.memory_bytes).min(self.config.max_memory_bytes),
            fuel: asked.fuel.min(defaults.fuel),
            timeout: asked.timeout.min(defaults.timeout),
            max_output_bytes: asked.max_output_bytes.min(defaults.max_output_bytes),
        };
        let stdout = MemoryOutputPipe::new(limits.max_output_bytes);
        let stderr = MemoryOutputPipe::new(limits.max_output_bytes);
        let mut wasi = WasiCtxBuilder::new();
        let mut argv = vec![format!("{}.wasm", &hex::encode(program.digest)[..12])];
        argv.extend(job.args.iter().cloned());
        wasi.args(&argv)
            .stdin(MemoryInputPipe::new(job.stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (k, v) in &job.env {
            wasi.env(k, v);
        }
        for dir in &job.dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| Error::unavailable(format!("the job's folder {} cannot be opened: {e}", dir.guest)))?;
        }
        let mut store = self.store(wasi.build_p1(), &limits)?;
        let metered = self.metered;

        let started = Instant::now();
        let instance = match program.pre.instantiate(&mut store) {
            // Not the module's doing (no trap, no limit): the host has no instance free.
            Err(e) if !store.data().memory.hit && e.downcast_ref::<Trap>().is_none() => {
                return Err(Error::unavailable(format!(
                    "the Wasm job could not start here ({}); retry later",
                    root_cause(&e)
                )));
            }
            other => other,
        };
        let result = instance
            .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));
        let wall = started.elapsed();
        let fuel_used = if metered { limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)) } else { 0 };
        let memory = &store.data().memory;
        let outcome = match result {
            Ok(()) => Outcome::Exited(0),
            Err(e) => {
                // proc_exit's status may sit under the backtrace wasmtime wraps around it.
                let exit = e
                    .downcast_ref::<I32Exit>()
                    .map(|x| x.0)
                    .or_else(|| e.chain().find_map(|c| c.downcast_ref::<I32Exit>().map(|x| x.0)));
                if let Some(exit) = exit {
                    Outcome::Exited(exit)
                } else if e.chain().any(|c| c.to_string().contains("write beyond capacity")) {
                    Outcome::OutputLimit { limit: limits.max_output_bytes }
                } else if memory.hit {
                    Outcome::MemoryLimit { limit: limits.memory_bytes }
                } else {
                    match e.downcast_ref::<Trap>() {
                        Some(Trap::OutOfFuel) => Outcome::OutOfFuel { fuel: limits.fuel },
                        Some(Trap::Interrupt) => Outcome::Deadline { timeout: limits.timeout },
                        Some(trap) => Outcome::Trapped(trap.to_string()),
                        None => Outcome::Trapped(root_cause(&e)),
                    }
                }
            }
        };
        let peak_memory_bytes = memory.peak;
        drop(store);
        // The store (and the WASI context's handles on the pipes) is gone: take the buffers.
        let take = |pipe: MemoryOutputPipe| match pipe.try_into_inner() {
            Some(buf) => buf.to_vec(),
            None => Vec::new(),
        };
        let (stdout, stderr) = (take(stdout), take(stderr));
        let output_truncated = stdout.len() >= limits.max_output_bytes || stderr.len() >= limits.max_output_bytes;
        Ok(RunReport {
            outcome,
            output_truncated,
            stdout: Zeroizing::new(stdout),
            stderr: Zeroizing::new(stderr),
            fuel_used,
            wall,
            peak_memory_bytes,
        })
    }

    /// The engine's configuration.
    pub fn config(&self) -> &WasmConfig {
        &self.config
    }
}

/// A module precompiled by this process (see [`WasmEngine::load_precompiled`]).
pub struct PrecompiledModule {
    code: Vec<u8>,
    digest: [u8; 32],
    size: usize,
}

impl std::fmt::Debug for PrecompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrecompiledModule")
            .field("digest", &hex::encode(self.digest))
            .field("code", &self.code.len())
            .finish()
    }
}

fn invalid_module(e: &wasmtime::Error) -> Error {
    Error::invalid(format!("not a valid Wasm module: {}", enclava_core::text::quote(&e.to_string())))
}

/// The innermost cause of a wasmtime error, quoted.
fn root_cause(e: &wasmtime::Error) -> String {
    enclava_core::text::quote(&e.chain().last().map(|c| c.to_string()).unwrap_or_default()).to_string()
}

/// The node's `wasm` executor: a workload is a WASI command; an invocation runs it with the
/// request's input as stdin and answers its stdout. Fuel used is the invocation's work units. The
/// engine (its pool and deadline clock) is made on the first load, so a node that serves no Wasm
/// pays nothing for it.
#[derive(Debug, Clone)]
pub struct WasmExecutor {
    config: WasmConfig,
    engine: Arc<Mutex<Option<Arc<WasmEngine>>>>,
}

impl WasmExecutor {
    /// An executor whose engine will be built with `config`.
    pub fn new(config: WasmConfig) -> WasmExecutor {
        WasmExecutor { config, engine: Arc::new(Mutex::new(None)) }
    }

    /// An executor on a default engine.
    pub fn with_defaults() -> WasmExecutor {
        WasmExecutor::new(WasmConfig::default())
    }

    /// The engine, built on first use.
    pub fn engine(&self) -> Result<Arc<WasmEngine>, Error> {
        let mut slot = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = slot.as_ref() {
            return Ok(engine.clone());
        }
        let engine = Arc::new(WasmEngine::new(self.config)?);
        *slot = Some(engine.clone());
        Ok(engine)
    }
}

impl Executor for WasmExecutor {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn load(&self, _id: &str, bytes: Zeroizing<Vec<u8>>) -> Result<Arc<dyn Loaded>, Error> {
        let engine = self.engine()?;
        let program = engine.compile(&bytes)?;
        Ok(Arc::new(WasmWorkload { engine, program }))
    }

    fn limits(&self) -> Limits {
        // The node's own timeout is a backstop; the epoch deadline stops the run first.
        Limits { max_input_bytes: 16 << 20, timeout: self.config.limits.timeout + Duration::from_secs(1) }
    }
}

/// A WASI command in memory.
#[derive(Debug)]
struct WasmWorkload {
    engine: Arc<WasmEngine>,
    program: Program,
}

impl Loaded for WasmWorkload {
    fn memory_bytes(&self) -> u64 {
        // The compiled code is several times the module; its memory is pooled by the engine.
        (self.program.size as u64).saturating_mul(4)
    }

    fn invoke(&self, input: &[u8]) -> Result<Output, Error> {
        let report = self.engine.run(&self.program, Job { stdin: input.to_vec(), ..Job::default() })?;
        if !report.outcome.success() {
            return Err(Error::new(ErrorCode::BadInput, format!("the Wasm workload {} on this input", report.outcome)));
        }
        if report.output_truncated {
            return Err(Error::new(
                ErrorCode::BadInput,
                format!(
                    "the Wasm workload's output reached its limit of {} bytes on this input",
                    self.engine.config.limits.max_output_bytes
                ),
            ));
        }
        Ok(Output { bytes: report.stdout, usage: Usage { busy: report.wall, units: report.fuel_used } })
    }
}
