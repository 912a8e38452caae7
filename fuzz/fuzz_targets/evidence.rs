//! Fuzzes evidence parsing and verification: format detection, DCAP quotes, Nitro documents, sim
//! evidence and Azure vTPM JSON, with real collateral, cold and warm. Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use enclava_attest::{Collateral, Evidence, sim, verify, warm::Verifier};
use libfuzzer_sys::fuzz_target;

const TDX_COLLATERAL: &[u8] = include_bytes!("../../crates/enclava-attest/testdata/tdx-v4/collateral.json");
const GENOA_CHAIN: &str = include_str!("../../crates/enclava-attest/testdata/sev-snp/amd/genoa_cert_chain.pem");

fn collateral() -> &'static Collateral {
    static C: OnceLock<Collateral> = OnceLock::new();
    C.get_or_init(|| Collateral {
        dcap: enclava_attest::dcap::collateral_from_json(TDX_COLLATERAL).ok(),
        amd_certs: enclava_attest::roots::pem_certs(GENOA_CHAIN).unwrap_or_default(),
        amd_crls: Vec::new(),
        sim_root: Some(sim::RootPublicKey([7; 32])),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&tag, rest)) = data.split_first() else { return };
    let now = 1_751_328_000;
    let ev = match tag % 5 {
        0 => Evidence::Dcap(rest.to_vec()),
        1 => Evidence::Nitro(rest.to_vec()),
        2 => Evidence::Sim(rest.to_vec()),
        3 => Evidence::AzureVtpm(rest.to_vec()),
        _ => match Evidence::detect(rest.to_vec()) {
            Ok(e) => e,
            Err(_) => return,
        },
    };
    let _ = verify(&ev, collateral(), now);
    let _ = Verifier::new().verify(&ev, collateral(), now);
});
