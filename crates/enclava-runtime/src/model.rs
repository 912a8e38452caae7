//! `Model`: an ONNX model loaded from bytes in memory (never from a path: inside the enclave the
//! plaintext model exists only in memory), its input fixed and optimized into a tract plan that
//! many threads run at once.

use std::collections::HashSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::pb::{self, type_proto};
use tract_onnx::prelude::{
    DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TractError, TractResult,
    TypedRunnableModel, tvec,
};

use crate::error::{RuntimeError, fmt_shape};
use crate::tensor::{Tensor, element_count};

/// A loaded, optimized model with one f32 input of a fixed shape.
///
/// `Model` is `Send + Sync` and cheap to clone (the plan is shared): [`Model::run`] takes `&self`
/// and each call makes its own scratch state, so one `Model` serves many threads at once.
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    onnx_len: usize,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("input_shape", &self.input_shape)
            .field("outputs", &self.plan.model().outputs.len())
            .field("onnx_len", &self.onnx_len)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Parses ONNX bytes, fixes the input to the model's declared shape (a symbolic batch
    /// dimension becomes 1; any other symbolic dimension is refused) and optimizes into a
    /// runnable plan.
    ///
    /// The model must have exactly one f32 input, and carry all its weights inline: external
    /// data (weights in side files) is refused, no file is ever opened. Malformed bytes give
    /// [`RuntimeError::Load`] with tract's message; a panic inside tract is caught and reported
    /// the same way (the process's panic hook still prints it).
    pub fn load(onnx_bytes: &[u8]) -> Result<Model, RuntimeError> {
        let started = Instant::now();
        let model = catch_unwind(AssertUnwindSafe(|| load(onnx_bytes)))
            .unwrap_or_else(|panic| Err(RuntimeError::Load(format!("tract panicked: {}", panic_message(&*panic)))))?;
        tracing::debug!(
            bytes = onnx_bytes.len(),
            input_shape = %fmt_shape(&model.input_shape),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(model)
    }

    /// Runs the model on `input`, whose shape must be [`Model::input_shape`]. Returns the
    /// outputs in the model's order, converted to f32. Safe to call from many threads at once.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, RuntimeError> {
        if input.shape() != self.input_shape {
            return Err(RuntimeError::InputShape { got: input.shape().to_vec(), expected: self.input_shape.clone() });
        }
        let value = tract_onnx::prelude::Tensor::from_shape(input.shape(), input.data()).map_err(run_error)?;
        let outputs = catch_unwind(AssertUnwindSafe(|| self.plan.run(tvec![value.into_tvalue()])))
            .map_err(|panic| RuntimeError::Run(format!("tract panicked: {}", panic_message(&*panic))))?
            .map_err(run_error)?;
        outputs.into_iter().map(to_tensor).collect()
    }

    /// The input shape `run` expects, e.g. `[1, 3, 224, 224]`.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Rough memory the loaded model holds, in bytes: the size of the ONNX bytes it was loaded
    /// from, which is dominated by the weights. It leaves out the per-run activations (for
    /// MobileNetV2 a few MB per concurrent run) and tract's packing overhead.
    pub fn memory_estimate(&self) -> usize {
        self.onnx_len
    }
}

fn load(bytes: &[u8]) -> Result<Model, RuntimeError> {
    let proto = pb::ModelProto::decode(bytes).map_err(|e| RuntimeError::Load(format!("not an ONNX model: {e}")))?;
    let graph = proto.graph.as_ref().ok_or_else(|| RuntimeError::Load("model proto has no graph".into()))?;
    if graph.initializer.iter().any(is_external) {
        return Err(RuntimeError::Load(
            "external data is not supported: weights must be inside the model bytes".into(),
        ));
    }
    check_outputs_exist(graph)?;
    let input_shape = declared_input_shape(graph)?;

    let plan = optimize(&proto, &input_shape).map_err(|e| RuntimeError::Load(format!("{e:#}")))?;
    Ok(Model { plan, input_shape, onnx_len: bytes.len() })
}

/// Tract's part of loading: ONNX to an inference model, the input fact fixed, optimized, planned.
fn optimize(proto: &pb::ModelProto, input_shape: &[usize]) -> TractResult<Arc<TypedRunnableModel>> {
    // No model directory is given, so tract refuses external data itself; the resolver makes
    // sure no path is ever read even so.
    let onnx = tract_onnx::Onnx { provider: Arc::new(NoFiles), ..tract_onnx::onnx() };
    let model = onnx.model_for_proto_model(proto)?;
    if model.inputs.len() != 1 {
        return Err(TractError::msg(format!("model has {} inputs; exactly one is supported", model.inputs.len())));
    }
    let model = model.with_input_fact(0, f32::fact(input_shape).into())?;
    model.into_optimized()?.into_runnable()
}

/// Every graph output must be some node's output, an initializer or an input (tract 0.23 panics
/// on a dangling one; `load` would catch that, but an error is cleaner).
fn check_outputs_exist(graph: &pb::GraphProto) -> Result<(), RuntimeError> {
    let produced: HashSet<&str> = (graph.node.iter().flat_map(|n| n.output.iter()))
        .chain(graph.initializer.iter().map(|w| &w.name))
        .chain(graph.input.iter().map(|i| &i.name))
        .map(String::as_str)
        .collect();
    match graph.output.iter().find(|o| !produced.contains(o.name.as_str())) {
        Some(o) => Err(RuntimeError::Load(format!("model output '{}' is not produced by any node", o.name))),
        None => Ok(()),
    }
}

fn is_external(tensor: &pb::TensorProto) -> bool {
    tensor.data_location == Some(DataLocation::External as i32) || !tensor.external_data.is_empty()
}

/// The concrete shape of the graph's one real input (inputs that are also initializers are
/// weights, as older exporters write them): the batch dimension may be symbolic and becomes 1.
fn declared_input_shape(graph: &pb::GraphProto) -> Result<Vec<usize>, RuntimeError> {
    let load_err = |message: String| RuntimeError::Load(message);
    let weights: HashSet<&str> = graph.initializer.iter().map(|w| w.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph.input.iter().filter(|i| !weights.contains(i.name.as_str())).collect();
    let [input] = inputs.as_slice() else {
        return Err(load_err(format!("model has {} inputs; exactly one is supported", inputs.len())));
    };
    let name = &input.name;
    let Some(type_proto::Value::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(load_err(format!("model input '{name}' is not a tensor")));
    };
    if tensor.elem_type != DataType::Float as i32 {
        let dtype = DataType::try_from(tensor.elem_type).map_or("unknown", |d| d.as_str_name());
        return Err(load_err(format!("model input '{name}' is {dtype}; only FLOAT (f32) inputs are supported")));
    }
    let dims = tensor.shape.as_ref().ok_or_else(|| load_err(format!("model input '{name}' declares no shape")))?;
    let shape =
        dims.dim
            .iter()
            .enumerate()
            .map(|(axis, dim)| match (&dim.value, axis) {
                (Some(dimension::Value::DimValue(v)), _) if *v > 0 => usize::try_from(*v)
                    .map_err(|_| load_err(format!("model input '{name}' dimension {v} is too large"))),
                (_, 0) => Ok(1),
                (value, _) => {
                    let what = match value {
                        Some(dimension::Value::DimParam(p)) => format!("symbolic ('{p}')"),
                        Some(dimension::Value::DimValue(v)) => format!("{v}"),
                        None => "unknown".into(),
                    };
                    Err(load_err(format!(
                        "model input '{name}' dimension {axis} is {what}; only the batch dimension may be symbolic"
                    )))
                }
            })
            .collect::<Result<Vec<usize>, RuntimeError>>()?;
    element_count(&shape)
        .map_err(|e| load_err(format!("model input '{name}' shape {} is too large: {e}", fmt_shape(&shape))))?;
    Ok(shape)
}

/// A tract output as our f32 tensor (integer or f64 outputs are cast).
fn to_tensor(value: TValue) -> Result<Tensor, RuntimeError> {
    let tensor = value.cast_to::<f32>().map_err(run_error)?;
    let array = tensor.into_owned().into_plain_array::<f32>().map_err(run_error)?;
    Tensor::new(array.shape().to_vec(), array.iter().copied().collect())
}

fn run_error(e: tract_onnx::prelude::TractError) -> RuntimeError {
    RuntimeError::Run(format!("{e:#}"))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "unknown panic".into(),
    }
}

/// Refuses every external-data read: models come from memory only.
struct NoFiles;

impl ModelDataResolver for NoFiles {
    fn read_bytes_from_path(
        &self,
        _buf: &mut Vec<u8>,
        path: &Path,
        _offset: usize,
        _length: Option<usize>,
    ) -> TractResult<()> {
        Err(TractError::msg(format!(
            "external data ({}) is not supported: weights must be inside the model bytes",
            path.display()
        )))
    }
}
