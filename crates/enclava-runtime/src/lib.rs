//! Runs ONNX models inside the enclave with tract: a model is loaded from bytes in memory (never
//! from a path), optimized once, and run from many threads at once. Inputs and outputs are a
//! plain f32 [`Tensor`] that reads and writes JSON and NumPy `.npy`. Generated models
//! ([`generate::mobilenet_v2`], [`generate::tiny`]) let tests, demos and benchmarks run without downloads.
//! It knows nothing of networks, attestation or keys.
//!
//! # Layout
//! - [`model`]: [`Model`]: load from bytes, fix the input shape, optimize, run (`Send + Sync`).
//! - [`tensor`]: [`Tensor`]: shape and f32 data, its JSON form, `argmax` and `top_k`.
//! - [`npy`]: `.npy` reading and writing for [`Tensor`], by hand.
//! - [`generate`]: ONNX model generators (MobileNetV2, a tiny classifier) and sample inputs.
//! - [`bench`](mod@bench): timing helpers for inference and model loading.
//! - [`error`]: [`RuntimeError`], every way loading, running or reading can fail.
//! - [`executor`]: [`OnnxExecutor`], this crate as the node's `onnx` workload executor.

pub mod bench;
pub mod error;
pub mod executor;
pub mod generate;
pub mod model;
pub mod npy;
pub mod tensor;

pub use error::RuntimeError;
pub use executor::OnnxExecutor;
pub use model::Model;
pub use tensor::Tensor;
