//! Function pools: a pool fronts instances (serving nodes) and routes each request for a model to
//! the instance that should serve it. [`router`] is the routing decision itself, deterministic and
//! clock-injected so every rule is tested exactly; [`fnpacker`] is MOSS's FnPacker algorithm,
//! re-implemented as the baseline the pool is measured against; [`pool`] puts the router behind
//! async calls that wait in its queue under a deadline, its state shared by every replica through a
//! [`store`]; [`role`] is the `pools` role of `enclava server`: the REST API (gRPC in `grpc`), forwarding,
//! the metrics, the local backend.

pub mod fnpacker;
mod grpc;
pub mod pool;
pub mod role;
pub mod router;
pub mod store;
