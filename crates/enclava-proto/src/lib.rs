//! Enclava's gRPC contracts: the generated messages and tonic clients/servers, one module per
//! protobuf package.
//!
//! # Layout
//! - `discovery::v1`: the enclave manager (`FindEnclave`, `ListEnclaves`), from `proto/enclava/discovery/v1`.
//! - `keys::v1`: the key broker's node protocol (`Challenge`, `Release`), from `proto/enclava/keys/v1`;
//!   `keys::payload`: the sealed release payload inside a `ReleaseResponse`.

pub mod discovery {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("enclava.discovery.v1");
    }
}

pub mod keys {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("enclava.keys.v1");
    }
    /// What a release seals (inside the HPKE ciphertext of `ReleaseResponse`).
    pub mod payload;
}

/// Serializes `bytes` fields as base64 strings in JSON output.
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
}
