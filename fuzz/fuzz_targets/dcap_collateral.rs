//! Fuzzes DCAP collateral JSON: parsed, then used to verify a real quote. Nothing may panic.
#![no_main]

use enclava_attest::{Collateral, Evidence, dcap, verify};
use libfuzzer_sys::fuzz_target;

const QUOTE: &[u8] = include_bytes!("../../crates/enclava-attest/testdata/tdx-v4/quote.dat");

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = dcap::collateral_from_json(data) {
        let coll = Collateral { dcap: Some(c), ..Default::default() };
        let _ = verify(&Evidence::Dcap(QUOTE.to_vec()), &coll, 1_751_328_000);
    }
});
