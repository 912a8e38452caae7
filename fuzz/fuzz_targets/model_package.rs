//! Fuzzes the encrypted model package: the header, and decryption with a fixed key (truncated,
//! reordered or forged chunks must be refused, never panic).
#![no_main]

use enclava_model::package::{ModelKey, decrypt, read_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_header(data);
    let key = ModelKey::from_bytes([3; 32]);
    let _ = decrypt(data, "acme/m", 1, &key);
});
