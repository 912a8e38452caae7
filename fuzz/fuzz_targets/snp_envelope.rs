//! Fuzzes SEV-SNP evidence as nodes publish it: the envelope (report, VEK, chain) and the host's
//! certificate table it is built from. Nothing may panic.
#![no_main]

use enclava_attest::{Collateral, snp, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = snp::decode_envelope(data) {
        let _ = verify(&ev, &Collateral::default(), 1_751_328_000);
    }
    let _ = snp::parse_cert_table(data);
    let _ = snp::envelope_from_table(&[0; snp::REPORT_LEN], data);
    let _ = snp::product_of(data);
});
