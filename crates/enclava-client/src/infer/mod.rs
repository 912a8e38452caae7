//! Sealed inference, both modes of issue 5: *direct* (BlindAI), where the client finds and verifies
//! an enclave and seals to its attested key ([`infer`], [`InferSession`]), and *serverless*
//! (MOSS), where the platform picks the instance and the client seals with its request key, which
//! the key broker releases only to enclaves with a granted measurement ([`infer_serverless`]).
//!
//! The wire protocol both modes speak is [`enclava_contracts::sealed`]: the node serves that
//! contract, and this module is the client's side of it.

mod direct;
pub(crate) mod http;
mod serverless;

pub use direct::*;
pub use enclava_contracts::sealed::*;
pub use http::*;
pub use serverless::*;
