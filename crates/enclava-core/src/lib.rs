//! The small core every Enclava crate may depend on; it depends on no other Enclava crate.
//!
//! # Layout
//! - [`platform`]: the platforms (`plaintext` included) and the security status shown for each.
//! - [`error`]: one error space: [`ErrorCode`] (wire name, HTTP status, gRPC code), the JSON
//!   [`ErrorBody`], and [`Error`].
//! - [`id`]: identifier types checked where they enter (model ids, user ids, measurements).
//! - [`clock`]: injectable time.
//! - [`text`]: quoting untrusted input in messages (a short prefix, never a byte slice).

pub mod clock;
pub mod error;
pub mod id;
pub mod platform;
pub mod text;

pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "axum")]
pub use error::json_body;
pub use error::{Error, ErrorBody, ErrorCode};
pub use platform::{Platform, SecurityStatus};
