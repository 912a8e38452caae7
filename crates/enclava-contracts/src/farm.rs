//! The farm's contracts. A [`Receipt`] is what a host says it ran and what that used; a
//! [`SignedReceipt`] carries it with evidence from the host's TEE whose report data binds the
//! receipt's exact bytes (label `enclava/receipt`), so a submitter checks it with the same verifier
//! and policy as any enclave, and a receipt or output changed by one byte is refused.

use serde::{Deserialize, Serialize};

/// What a host ran for a job, and what it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Format version (1).
    pub version: u32,
    pub job: String,
    /// The host's instance id and platform.
    pub host: String,
    pub platform: String,
    /// The executor (`wasm`, `process`) and the isolation it gives, in words.
    pub executor: String,
    pub isolation: String,
    /// SHA-256 (hex) of what ran, of its input and of its output.
    pub program_sha256: String,
    pub input_sha256: String,
    pub output_sha256: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Deterministic work units (Wasm fuel; 0 where there are none).
    pub fuel: u64,
    pub wall_ms: u64,
    pub peak_memory_bytes: u64,
    /// How it ended, in words (`exited with status 0`).
    pub outcome: String,
    /// When it was issued (Unix seconds).
    pub issued_at: u64,
}

/// A receipt as signed: its JSON exactly as bound into the evidence, and the evidence (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: String,
    #[serde(with = "crate::base64_bytes")]
    pub evidence: Vec<u8>,
}

/// SHA-256 (hex) as receipts name content.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
