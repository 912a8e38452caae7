//! Prints package throughput: `cargo run -p enclava-model --release --example throughput`.

use enclava_model::bench::{decrypt_in_place_throughput, decrypt_throughput, encrypt_throughput};
use enclava_model::package::DEFAULT_CHUNK_SIZE;

fn main() -> Result<(), enclava_model::PackageError> {
    const MIB: usize = 1 << 20;
    for (size, chunk, runs) in
        [(64 * MIB, DEFAULT_CHUNK_SIZE, 10), (256 * MIB, DEFAULT_CHUNK_SIZE, 5), (64 * MIB, 64 << 10, 10)]
    {
        println!("{} MiB, chunk {} KiB, best of {runs}:", size / MIB, chunk >> 10);
        for (what, measure) in [
            ("decrypt_in_place", decrypt_in_place_throughput as fn(usize, u32, u32) -> _),
            ("decrypt", decrypt_throughput),
            ("encrypt", encrypt_throughput),
        ] {
            let t = measure(size, chunk, runs)?;
            println!("  {what:<16} {:>6.2} GB/s  ({:.1} ms)", t.gb_per_s(), t.best.as_secs_f64() * 1e3);
        }
    }
    Ok(())
}
