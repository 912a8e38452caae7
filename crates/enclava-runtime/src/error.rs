//! `RuntimeError`: every way loading a model, running it or reading a tensor can fail.

/// Why a model did not load or run, or why bytes are not a tensor. Every variant says what failed
/// in words a caller can show as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The bytes are not an ONNX model this runtime can run (tract's message, or ours for
    /// unsupported inputs such as several inputs or a non-f32 input).
    #[error("cannot load model: {0}")]
    Load(String),
    /// The input tensor's shape is not the model's input shape.
    #[error("input has shape {}; model expects {}", fmt_shape(.got), fmt_shape(.expected))]
    InputShape {
        /// The shape of the tensor given to `Model::run`.
        got: Vec<usize>,
        /// The model's (fixed) input shape.
        expected: Vec<usize>,
    },
    /// Tract failed (or panicked) while running a loaded model.
    #[error("inference failed: {0}")]
    Run(String),
    /// A tensor's shape and data disagree, or it is larger than [`crate::Tensor::MAX_ELEMENTS`].
    #[error("invalid tensor: {0}")]
    Tensor(String),
    /// The bytes are not a `.npy` file this crate reads.
    #[error("invalid .npy: {0}")]
    Npy(String),
}

/// `[1,3,224,224]`: the shape form used in every message of this crate.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(","))
}
