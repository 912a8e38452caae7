//! What `enclava bench farm` measures of the Wasm engine: a warm start (a pooled instance of a
//! cached module), a whole run of an empty command, a cold start from precompiled code, and the
//! cost of fuel metering on call-heavy and on dense numeric code (metered against unmetered, in the
//! same run).

use std::time::{Duration, Instant};

use enclava_core::Error;
use wasmtime_wasi::WasiCtxBuilder;

use crate::{Job, WasmEngine};

/// A command that does nothing.
pub const EMPTY: &str = r#"(module (func (export "_start")))"#;

/// Call-heavy code: a recursive Fibonacci of 25.
pub const CALLS: &str = r#"(module
  (global $sink (mut i32) (i32.const 0))
  (func $fib (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
      (then (local.get $n))
      (else (i32.add (call $fib (i32.sub (local.get $n) (i32.const 1)))
                     (call $fib (i32.sub (local.get $n) (i32.const 2)))))))
  (func (export "_start") (global.set $sink (call $fib (i32.const 25)))))"#;

/// Dense numeric code: a dot product over 32 KiB of f64s, 300 times.
pub const DENSE: &str = r#"(module (memory 1)
  (global $sink (mut f64) (f64.const 0))
  (func (export "_start") (local $r i32) (local $i i32) (local $acc f64)
    (loop $outer
      (local.set $i (i32.const 0))
      (loop $inner
        (local.set $acc (f64.add (local.get $acc)
          (f64.mul (f64.load (local.get $i)) (f64.load offset=8 (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br_if $inner (i32.lt_u (local.get $i) (i32.const 32768))))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br_if $outer (i32.lt_u (local.get $r) (i32.const 300))))
    (global.set $sink (local.get $acc))))"#;

/// The median of `f`'s time, calling it for `dur` (at least 5 times).
pub fn p50(dur: Duration, mut f: impl FnMut() -> Result<(), Error>) -> Result<Duration, Error> {
    let end = Instant::now() + dur;
    let mut times = Vec::new();
    while Instant::now() < end || times.len() < 5 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// A pooled instance of a cached module, with a fresh WASI context: what starting a job costs
/// before its code runs.
pub fn warm_instantiate(engine: &WasmEngine, dur: Duration) -> Result<Duration, Error> {
    let program = engine.compile(EMPTY.as_bytes())?;
    let limits = engine.config.limits;
    p50(dur, || {
        let mut store = engine.store(WasiCtxBuilder::new().build_p1(), &limits)?;
        program.pre.instantiate(&mut store).map_err(|e| Error::internal(e.to_string()))?;
        Ok(())
    })
}

/// A whole run of the empty command through [`WasmEngine::run`] (limits, pipes, report).
pub fn warm_run(engine: &WasmEngine, dur: Duration) -> Result<Duration, Error> {
    let program = engine.compile(EMPTY.as_bytes())?;
    p50(dur, || engine.run(&program, Job::default()).map(drop))
}

/// Loading precompiled code and running it: a node that has the module's code but no instance.
pub fn cold_start(engine: &WasmEngine, dur: Duration) -> Result<Duration, Error> {
    let precompiled = engine.precompile(CALLS.replace("25", "1").as_bytes())?;
    p50(dur, || {
        let program = engine.load_precompiled(&precompiled)?;
        engine.run(&program, Job::default()).map(drop)
    })
}

/// The median time of one run of `text`, and the fuel it used.
pub fn run_p50(engine: &WasmEngine, text: &str, dur: Duration) -> Result<(Duration, u64), Error> {
    let program = engine.compile(text.as_bytes())?;
    let mut fuel = 0;
    let t = p50(dur, || {
        let report = engine.run(&program, Job::default())?;
        if !report.outcome.success() {
            return Err(Error::internal(format!("the benchmark module {}", report.outcome)));
        }
        fuel = report.fuel_used;
        Ok(())
    })?;
    Ok((t, fuel))
}
