//! The key broker (MOSS's KeyService, with the enclave-identity check enforced on every release):
//! users and their credentials, models owned by their first uploader, versioned model keys,
//! grants to (enclave measurement, user), per-(model, measurement) request keys, a hash-chained
//! audit log, and attested release sealed with HPKE to the key fresh evidence binds.
//!
//! # Layout
//! - [`broker`]: the operations and the release protocol (nonce, verify, bind, authorize, seal, audit).
//! - [`store`]: the broker's tables on the shared database (`enclava-store`: one pool, migrations
//!   per component, the audit log; [`kek`] is its key-encryption key). Users and credentials are
//!   the identity component's (`enclava-identity`).
//! - [`rest`]: the axum routes and OpenAPI (the bodies are `enclava_contracts::keys::rest`);
//!   [`grpc`]: the tonic service.
//! - [`error`]: one error code for HTTP and gRPC; [`metrics`]: Prometheus counters.
//! - [`role`]: the key broker as a role of `enclava server`.
//!
//! Invariant: a key exists unwrapped only in this process's memory, and leaves it only sealed to
//! a key bound by evidence that passed verification, policy and grants, after the release is in
//! the audit log.

pub mod broker;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod rest;
pub mod role;
pub mod store;

pub use broker::{Broker, BrokerConfig, RateKind, Refusal, Registration, Release, ReleaseRequest, Stop};
pub use enclava_contracts::keys::payload::{self, ReleasePayload, SecretKey};
pub use enclava_store::kek::{self, KekSource, KeyWrapper, LocalKek};
pub use error::{ErrorCode, KeysError};
pub use metrics::KeysMetrics;
pub use role::KeysRole;
