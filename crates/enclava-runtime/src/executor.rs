//! The ONNX executor: the node's first workload kind (`onnx`). A workload is an ONNX model loaded
//! with [`Model::load`] from the decrypted bytes; an invocation takes a `.npy` tensor and answers
//! the model's first output as `.npy`.

use std::sync::Arc;
use std::time::Instant;

use enclava_core::{Error, ErrorCode};
use enclava_executor::{Executor, Limits, Loaded, Output, Usage};
use zeroize::Zeroizing;

use crate::{Model, RuntimeError, Tensor};

/// Runs ONNX models with tract.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnnxExecutor;

/// An ONNX model in memory.
#[derive(Debug)]
struct OnnxWorkload {
    model: Model,
}

impl Executor for OnnxExecutor {
    fn kind(&self) -> &'static str {
        "onnx"
    }

    fn load(&self, _id: &str, bytes: Zeroizing<Vec<u8>>) -> Result<Arc<dyn Loaded>, Error> {
        let model = Model::load(&bytes).map_err(|e| Error::invalid(e.to_string()))?;
        Ok(Arc::new(OnnxWorkload { model }))
    }

    fn limits(&self) -> Limits {
        // A 224×224×3 f32 image is 0.6 MB; a batch of them fits many times.
        Limits { max_input_bytes: 64 << 20, ..Limits::default() }
    }
}

impl Loaded for OnnxWorkload {
    fn memory_bytes(&self) -> u64 {
        self.model.memory_estimate() as u64
    }

    fn invoke(&self, input: &[u8]) -> Result<Output, Error> {
        let started = Instant::now();
        let input = Tensor::from_npy(input)
            .map_err(|_| Error::new(ErrorCode::BadInput, "the input is not a valid .npy tensor of numbers"))?;
        let outputs = self.model.run(&input).map_err(|e| match e {
            RuntimeError::InputShape { expected, .. } => Error::new(
                ErrorCode::BadInput,
                format!("the input's shape does not match the model's input shape {expected:?}"),
            ),
            _ => Error::internal("the model failed to run on this input"),
        })?;
        let first = outputs.first().ok_or_else(|| Error::internal("the model has no output"))?;
        let bytes = Zeroizing::new(first.to_npy());
        Ok(Output { bytes, usage: Usage { busy: started.elapsed(), units: 0 } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_runs_and_refuses_bad_input_without_quoting_it() {
        let onnx = crate::generate::tiny(1);
        let w = OnnxExecutor.load("acme/tiny", Zeroizing::new(onnx)).expect("loads");
        assert!(w.memory_bytes() > 0);
        let x = crate::generate::sample_input(&[1, 3, 32, 32], 1).expect("input").to_npy();
        let out = w.invoke(&x).expect("runs");
        assert_eq!(Tensor::from_npy(&out.bytes).expect("npy").shape(), [1, 10]);
        assert_eq!(w.invoke(b"secret-not-npy").expect_err("bad").code, ErrorCode::BadInput);
        let wrong = crate::generate::sample_input(&[1, 3, 8, 8], 1).expect("input").to_npy();
        assert_eq!(w.invoke(&wrong).expect_err("shape").code, ErrorCode::BadInput);
        assert_eq!(
            OnnxExecutor.load("x", Zeroizing::new(b"not onnx".to_vec())).expect_err("load").code,
            ErrorCode::InvalidArgument
        );
    }
}
