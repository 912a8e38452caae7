//! Enclava's gRPC contracts: the generated messages and tonic clients/servers, one module per
//! protobuf package.
//!
//! # Layout
//! - `discovery::v1`: the enclave manager (`FindEnclave`, `ListEnclaves`), from `proto/enclava/discovery/v1`.

pub mod discovery {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("enclava.discovery.v1");
    }
}
