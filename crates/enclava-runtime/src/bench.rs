//! Timing helpers for `enclava bench serving`: plain in-process inference and model-load timings,
//! and their summary. No output, no harness; the caller prints.

use std::time::{Duration, Instant};

use crate::error::RuntimeError;
use crate::model::Model;
use crate::tensor::Tensor;

/// Percentiles of a set of timings (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// How many timings.
    pub count: usize,
    /// Fastest.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

/// Summarises `samples`; `None` when there are none.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let (&min, &max) = (sorted.first()?, sorted.last()?);
    let count = sorted.len();
    // Nearest rank: the smallest sample with at least p% of samples at or below it.
    let rank = |p: usize| sorted[(count * p).div_ceil(100).clamp(1, count) - 1];
    let total: Duration = sorted.iter().sum();
    let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
    Some(Summary { count, min, p50: rank(50), p90: rank(90), p99: rank(99), max, mean })
}

/// Runs `model` on `input` `warmup` times untimed, then `iterations` times, one after another on
/// the calling thread; returns each timed run's wall time.
pub fn time_inference(
    model: &Model,
    input: &Tensor,
    warmup: usize,
    iterations: usize,
) -> Result<Vec<Duration>, RuntimeError> {
    for _ in 0..warmup {
        model.run(input)?;
    }
    (0..iterations)
        .map(|_| {
            let started = Instant::now();
            model.run(input)?;
            Ok(started.elapsed())
        })
        .collect()
}

/// Loads `onnx` (parse, fix the input, optimize into a plan: all of [`Model::load`])
/// `iterations` times; returns each load's wall time.
pub fn time_load(onnx: &[u8], iterations: usize) -> Result<Vec<Duration>, RuntimeError> {
    (0..iterations)
        .map(|_| {
            let started = Instant::now();
            Model::load(onnx)?;
            Ok(started.elapsed())
        })
        .collect()
}
