//! Binding a public key (and, for key release, a nonce) into evidence's 64-byte report data. One
//! helper computes it, one checks it; everything in Enclava that binds keys uses these.

use sha2::{Digest, Sha512};

/// Report data for `label` (what the key is for), `public_key` and an optional `nonce`:
/// `SHA-512("enclava/binding/v1" ‖ 0 ‖ len(label) ‖ label ‖ len(key) ‖ key ‖ len(nonce) ‖ nonce)`
/// with 32-bit big-endian lengths, so no two inputs share an encoding.
pub fn report_data(label: &str, public_key: &[u8], nonce: Option<&[u8]>) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"enclava/binding/v1\0");
    for part in [label.as_bytes(), public_key, nonce.unwrap_or_default()] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Whether `report_data` binds exactly this label, key and nonce.
pub fn check(report_data_in_evidence: &[u8], label: &str, public_key: &[u8], nonce: Option<&[u8]>) -> bool {
    report_data_in_evidence == report_data(label, public_key, nonce).as_slice()
}

/// The label nodes use for the key requests are sealed to.
pub const NODE_KEY: &str = "enclava/node-request-key";

/// The label for farm receipts: the bound "key" is the SHA-256 of the receipt's exact JSON.
pub const RECEIPT: &str = "enclava/receipt";

/// Report data binding a receipt's exact bytes: what a host's evidence carries and what a
/// submitter checks.
pub fn receipt(receipt_json: &[u8]) -> [u8; 64] {
    use sha2::Sha256;
    report_data(RECEIPT, &Sha256::digest(receipt_json), None)
}

/// The label for a farm host's registration: the bound "key" is
/// `enclava_contracts::farm::host_binding_key` (its request key and capacity), with the farm
/// server's nonce.
pub const FARM_HOST: &str = "enclava/farm-host";

/// The label for a federation node joining an attested collaboration: its request key (inputs
/// are sealed to it) with the federation server's nonce.
pub const FED_NODE: &str = "enclava/fed-node";

/// The label for key release: the key broker seals keys to the bound key, for this nonce only.
pub const KEY_RELEASE: &str = "enclava/key-release";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_label_key_and_nonce() {
        let rd = report_data(NODE_KEY, b"key", Some(b"nonce"));
        assert!(check(&rd, NODE_KEY, b"key", Some(b"nonce")));
        assert!(!check(&rd, NODE_KEY, b"key", None));
        assert!(!check(&rd, NODE_KEY, b"kex", Some(b"nonce")));
        assert!(!check(&rd, "other", b"key", Some(b"nonce")));
        // Lengths are encoded: moving a byte from key to nonce changes the result.
        assert_ne!(report_data("l", b"ab", Some(b"c")), report_data("l", b"a", Some(b"bc")));
    }
}
