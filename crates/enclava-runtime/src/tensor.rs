//! `Tensor`: the crate's own f32 tensor (a shape and C-order data), its JSON form
//! `{"shape":[...],"data":[...]}` with the same checks as the constructor, and the `argmax`/`top_k`
//! helpers that turn a classifier's output into something to print.

use serde::{Deserialize, Serialize};

use crate::error::{RuntimeError, fmt_shape};

/// A dense f32 tensor in C (row-major) order. The invariant `product(shape) == data.len()` and the
/// size caps ([`Tensor::MAX_RANK`], [`Tensor::MAX_ELEMENTS`]) hold for every value: the
/// constructor, JSON and `.npy` readers all check them.
///
/// JSON has no NaN or infinity: serde_json writes them as `null`, which does not read back. Use
/// `.npy` ([`Tensor::to_npy`]) for tensors that may hold them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TensorRepr")]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// The unchecked wire form; `TryFrom` applies [`Tensor::new`]'s checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorRepr {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl TryFrom<TensorRepr> for Tensor {
    type Error = RuntimeError;

    fn try_from(repr: TensorRepr) -> Result<Self, Self::Error> {
        Tensor::new(repr.shape, repr.data)
    }
}

impl Tensor {
    /// Most dimensions a tensor may have.
    pub const MAX_RANK: usize = 16;
    /// Most elements a tensor may hold: 64 Mi f32, 256 MiB (a batch of 64 224×224 RGB images
    /// needs 9.6 Mi).
    pub const MAX_ELEMENTS: usize = 64 << 20;

    /// A tensor of `shape` holding `data` in C order. Refuses a `data` whose length is not the
    /// product of `shape`, and tensors past the size caps.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, RuntimeError> {
        let count = element_count(&shape)?;
        if count != data.len() {
            return Err(RuntimeError::Tensor(format!(
                "shape {} holds {count} elements but data has {}",
                fmt_shape(&shape),
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` filled with zeros.
    pub fn zeros(shape: Vec<usize>) -> Result<Tensor, RuntimeError> {
        let count = element_count(&shape)?;
        Ok(Tensor { shape, data: vec![0.0; count] })
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements in C order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements in C order, without copying.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Index (into [`Tensor::data`]) of the largest element; the first one on ties, NaN counts
    /// as smallest. `None` for an empty tensor. For a `[1, classes]` output this is the class.
    pub fn argmax(&self) -> Option<usize> {
        self.top_k(1).first().map(|&(index, _)| index)
    }

    /// The `k` largest elements as `(index into data, value)`, largest first; ties keep index
    /// order, NaN counts as smallest. Fewer than `k` when the tensor is smaller.
    pub fn top_k(&self, k: usize) -> Vec<(usize, f32)> {
        let mut ranked: Vec<(usize, f32)> = self.data.iter().copied().enumerate().collect();
        // Stable sort, so equal values stay in index order.
        ranked.sort_by(|a, b| rank_key(b.1).total_cmp(&rank_key(a.1)));
        ranked.truncate(k);
        ranked
    }
}

/// NaN sorts below every number (and `total_cmp` keeps the order total, so sorting never panics).
fn rank_key(value: f32) -> f32 {
    if value.is_nan() { f32::NEG_INFINITY } else { value }
}

/// `product(shape)`, refusing overflow and tensors past the caps.
pub(crate) fn element_count(shape: &[usize]) -> Result<usize, RuntimeError> {
    if shape.len() > Tensor::MAX_RANK {
        return Err(RuntimeError::Tensor(format!(
            "rank {} is more than the {} dimensions allowed",
            shape.len(),
            Tensor::MAX_RANK
        )));
    }
    let too_big = || {
        RuntimeError::Tensor(format!(
            "shape {} is more than the {} elements allowed",
            fmt_shape(shape),
            Tensor::MAX_ELEMENTS
        ))
    };
    let count = shape.iter().try_fold(1usize, |acc, &dim| acc.checked_mul(dim)).ok_or_else(too_big)?;
    if count > Tensor::MAX_ELEMENTS {
        return Err(too_big());
    }
    Ok(count)
}
