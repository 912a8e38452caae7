//! The key broker's errors are the core's ([`enclava_core::Error`]): one code that means the same
//! over REST and gRPC (and to the CLI), with the broker's own messages here.

pub use enclava_core::{Error as KeysError, ErrorBody, ErrorCode};

/// No credential, or one the broker does not know.
pub fn unauthenticated() -> KeysError {
    KeysError::new(
        ErrorCode::Unauthenticated,
        "missing or unknown credential: run `enclava keys register` (or check --config-dir)",
    )
}
