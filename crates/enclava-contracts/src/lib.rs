//! Enclava's contracts, in one place: the gRPC messages and tonic clients/servers (one module per
//! protobuf package), the sealed inference wire format, the key release payload, and the key
//! broker's REST bodies. Components serve or call these; none of them imports another component
//! for a format.
//!
//! # Layout
//! - [`sealed`]: sealed inference requests and answers (direct and serverless), both encodings,
//!   OpenWhisk's envelope.
//! - `discovery::v1`: the enclave manager (`FindEnclave`, `ListEnclaves`), from `proto/enclava/discovery/v1`.
//! - `pools::v1`: function pools (`Create`, `List`, `Delete`, `Invoke`, `Instances`), from
//!   `proto/enclava/pools/v1`.
//! - `keys::v1`: the key broker's node protocol (`Challenge`, `Release`), from `proto/enclava/keys/v1`;
//!   `keys::payload`: the sealed release payload inside a `ReleaseResponse`; `keys::rest`: the REST
//!   bodies of the key broker.

pub mod discovery {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("enclava.discovery.v1");
    }
}

pub mod farm;
pub mod fed;
pub mod sealed;

pub mod pools {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("enclava.pools.v1");
    }
}

pub mod keys {
    /// The key broker's REST bodies (JSON, camelCase) with their OpenAPI schemas.
    pub mod rest;
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("enclava.keys.v1");
    }
    /// What a release seals (inside the HPKE ciphertext of `ReleaseResponse`).
    pub mod payload;
}

/// `bytes` fields as base64 strings in JSON (`#[serde(with = "base64_bytes")]`).
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(s).map_err(|_| serde::de::Error::custom("not base64"))
    }
}
