//! Fuzzes policy parsing (TOML, JSON, the seed's EnclavePolicy, BlindAI manifests), policy checks
//! and RFC 3339 times. Nothing may panic.
#![no_main]

use enclava_attest::policy::{Policy, check};
use enclava_attest::{Claims, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = enclava_attest::time::parse_rfc3339(text);
    if let Ok(p) = Policy::parse(text) {
        for platform in Platform::ALL {
            let claims = Claims {
                platform,
                measurement: vec![0xab; 48],
                signer: vec![1; 32],
                product_id: Some(1),
                security_version: Some(2),
                tcb_status: Some("UpToDate".into()),
                advisories: vec!["INTEL-SA-00001".into()],
                debug: true,
                report_data: vec![0; 64],
                issued_at: Some(5),
                raw: [("attributes".to_owned(), "00".repeat(16)), ("sim_root".to_owned(), "11".repeat(32))].into(),
            };
            let _ = check(&p, &claims, u64::MAX, Some(&[0; 64]));
        }
    }
});
