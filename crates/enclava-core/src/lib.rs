//! The small core every Enclava crate may depend on; it depends on no other Enclava crate.
//!
//! # Layout
//! - [`text`]: quoting untrusted input in messages (a short prefix, never a byte slice).

pub mod text;
