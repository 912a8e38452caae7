//! Fuzzes what the registry reads from others: enclave info JSON, index entries, registry specs
//! and FindEnclave requests. Nothing may panic.
#![no_main]

use enclava_registry::find::{FindQuery, parse_data_entry};
use enclava_registry::schema::EnclaveInfoJson;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(info) = EnclaveInfoJson::parse(text) {
        let _ = info.index_entries();
        let _ = EnclaveInfoJson::parse(&info.to_json());
    }
    let _ = parse_data_entry(text);
    let _ = text.parse::<enclava_registry::RegistrySpec>();
    let parts: Vec<&str> = text.splitn(4, '\n').collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or_default();
    let deny: Vec<String> = get(3).split(',').map(str::to_owned).collect();
    let _ = FindQuery::new(get(0), get(1), get(2), data.len() as i64 - 8, &deny);
});
