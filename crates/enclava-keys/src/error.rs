//! The key broker's errors are the core's ([`enclava_core::Error`]): one code that means the same
//! over REST and gRPC (and to the CLI), with the broker's own messages here.

pub use enclava_core::{Error as KeysError, ErrorBody, ErrorCode};

pub use enclava_identity::unauthenticated;
