//! Fuzzes SEV-SNP verification: the report, the VEK certificate and the CRL, each in turn taken
//! from the input while the others are real. Nothing may panic.
#![no_main]

use enclava_attest::{Collateral, Evidence, verify};
use libfuzzer_sys::fuzz_target;

const REPORT: &[u8] = include_bytes!("../../crates/enclava-attest/testdata/sev-snp/milan-virtee/report.bin");
const VCEK: &[u8] = include_bytes!("../../crates/enclava-attest/testdata/sev-snp/milan-virtee/vcek.der");
const CHAIN: &str = include_str!("../../crates/enclava-attest/testdata/sev-snp/amd/milan_cert_chain.pem");

fuzz_target!(|data: &[u8]| {
    let Some((&tag, rest)) = data.split_first() else { return };
    let certs = enclava_attest::roots::pem_certs(CHAIN).unwrap_or_default();
    let (report, vek, crls) = match tag % 3 {
        0 => (rest.to_vec(), VCEK.to_vec(), vec![]),
        1 => (REPORT.to_vec(), rest.to_vec(), vec![]),
        _ => (REPORT.to_vec(), VCEK.to_vec(), vec![rest.to_vec()]),
    };
    let c = Collateral { amd_certs: certs, amd_crls: crls, ..Default::default() };
    let _ = verify(&Evidence::SevSnp { report, vek, chain: Vec::new() }, &c, 1_751_328_000);
});
