//! Throughput of package encryption and decryption, for `enclava bench serving`: plain functions
//! that return numbers and print nothing, so the caller decides how to report them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::package::{ModelKey, PackageError, decrypt, decrypt_in_place, encrypt_with_chunk_size};

/// The best of several timed runs over `bytes` of plaintext.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub bytes: u64,
    pub runs: u32,
    pub best: Duration,
}

impl Throughput {
    /// Plaintext gigabytes (10^9 bytes) per second in the best run.
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.best.as_secs_f64().max(1e-9) / 1e9
    }
}

const BENCH_MODEL: &str = "bench/model";

fn setup(size: usize) -> Result<(ModelKey, Vec<u8>), PackageError> {
    // Not all zeros, so nothing downstream can take a shortcut on trivial data.
    let plaintext = (0..size).map(|i| (i as u8).wrapping_mul(31)).collect();
    Ok((ModelKey::generate()?, plaintext))
}

/// Times `run` on a fresh input from `prepare` (made before the clock starts) `runs` times and
/// keeps the best. The output is dropped after the clock stops: wiping it is not decryption.
fn best_of<I, T>(
    runs: u32,
    mut prepare: impl FnMut() -> I,
    mut run: impl FnMut(I) -> Result<T, PackageError>,
) -> Result<Throughput, PackageError> {
    let runs = runs.max(1);
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let input = prepare();
        let start = Instant::now();
        let output = black_box(run(black_box(input))?);
        best = best.min(start.elapsed());
        drop(output);
    }
    Ok(Throughput { bytes: 0, runs, best })
}

/// [`decrypt`] of a `size`-byte model in `chunk_size` chunks, best of `runs`. The output is fresh
/// memory each run, as it is for a node, so the kernel's page faults are part of the time.
pub fn decrypt_throughput(size: usize, chunk_size: u32, runs: u32) -> Result<Throughput, PackageError> {
    let (key, plaintext) = setup(size)?;
    let package = encrypt_with_chunk_size(BENCH_MODEL, 1, &key, &plaintext, chunk_size)?;
    drop(plaintext);
    let t = best_of(runs, || &package[..], |p| decrypt(p, BENCH_MODEL, 1, &key))?;
    Ok(Throughput { bytes: size as u64, ..t })
}

/// [`decrypt_in_place`] of a `size`-byte model in `chunk_size` chunks, best of `runs`. Each run
/// opens a fresh copy of the package, as a node opens the bytes it just read from its blob store.
pub fn decrypt_in_place_throughput(size: usize, chunk_size: u32, runs: u32) -> Result<Throughput, PackageError> {
    let (key, plaintext) = setup(size)?;
    let package = encrypt_with_chunk_size(BENCH_MODEL, 1, &key, &plaintext, chunk_size)?;
    drop(plaintext);
    let t = best_of(runs, || package.clone(), |p| decrypt_in_place(p, BENCH_MODEL, 1, &key))?;
    Ok(Throughput { bytes: size as u64, ..t })
}

/// [`encrypt_with_chunk_size`] of a `size`-byte model in `chunk_size` chunks, best of `runs`.
pub fn encrypt_throughput(size: usize, chunk_size: u32, runs: u32) -> Result<Throughput, PackageError> {
    let (key, plaintext) = setup(size)?;
    let t = best_of(runs, || &plaintext[..], |p| encrypt_with_chunk_size(BENCH_MODEL, 1, &key, p, chunk_size))?;
    Ok(Throughput { bytes: size as u64, ..t })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::MIN_CHUNK_SIZE;

    #[test]
    fn measurements_run_on_small_sizes() {
        for measure in [decrypt_throughput, decrypt_in_place_throughput, encrypt_throughput] {
            let t = measure(3 * MIN_CHUNK_SIZE as usize + 1, MIN_CHUNK_SIZE, 2).expect("measure");
            assert_eq!((t.bytes, t.runs), (3 * MIN_CHUNK_SIZE as u64 + 1, 2));
            assert!(t.gb_per_s() > 0.0);
        }
        assert!(matches!(decrypt_throughput(1, 1, 1), Err(PackageError::InvalidChunkSize(1))));
    }
}
