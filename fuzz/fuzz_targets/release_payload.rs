//! Fuzzes the key release payload a node opens (model key, version, users' request keys), and what
//! a node gets from the broker around it. Nothing may panic.
#![no_main]

use enclava_contracts::keys::payload::ReleasePayload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ReleasePayload::decode(data) {
        let again = ReleasePayload::decode(&p.encode()).expect("an encoded payload decodes");
        assert_eq!(again.version, p.version);
    }
});
