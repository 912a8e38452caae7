//! Model generators: ONNX models built in Rust from tract-onnx's protobuf types, with
//! deterministic weights from a seed, so tests, the demo and the benchmark need no downloaded
//! model. The weights are random: outputs are finite and vary, but classify nothing.

use prost::Message;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType, type_proto,
};

use crate::error::RuntimeError;
use crate::tensor::{Tensor, element_count};

/// ONNX operator set of the generated models (Clip takes min/max as inputs from 11 on).
const OPSET: i64 = 13;
/// The IR version that goes with opset 13.
const IR_VERSION: i64 = 7;

/// MobileNetV2 (width 1.0): input `input` `[1,3,224,224]` f32 NCHW, output `logits` `[1,1000]`.
///
/// The real architecture: a 3×3 stride-2 convolution to 32 channels; 17 inverted residual blocks
/// (1×1 expansion by 6, except in the first; 3×3 depthwise via `group` = channels; linear 1×1
/// projection; a residual `Add` where the stride is 1 and channels in equal channels out); a 1×1
/// convolution to 1280; GlobalAveragePool, Flatten and a Gemm to 1000 classes. ReLU6 is
/// `Clip(0, 6)`. Batch norm is folded away (convolutions carry a bias). About 3.5 M parameters,
/// 14 MB of ONNX. Weights are He-scaled uniform from `seed`.
pub fn mobilenet_v2(seed: u64) -> Vec<u8> {
    // (expansion t, channels out c, repeats n, first stride s), from the paper's table 2.
    const BLOCKS: [(usize, usize, usize, usize); 7] =
        [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
    let mut g = Builder::new(seed);
    let mut x = g.conv("input", 3, 32, 3, 2, 1, Act::Relu6);
    let mut channels = 32;
    for (t, c, n, s) in BLOCKS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = channels * t;
            let mut h = x.clone();
            if t != 1 {
                h = g.conv(&h, channels, hidden, 1, 1, 1, Act::Relu6);
            }
            h = g.conv(&h, hidden, hidden, 3, stride, hidden, Act::Relu6);
            h = g.conv(&h, hidden, c, 1, 1, 1, Act::Linear);
            if stride == 1 && channels == c {
                h = g.node("Add", &[&x, &h], vec![]);
            }
            x = h;
            channels = c;
        }
    }
    x = g.conv(&x, channels, 1280, 1, 1, 1, Act::Relu6);
    g.classifier(&x, 1280, 1000);
    g.finish("mobilenet_v2", &[Some(1), Some(3), Some(224), Some(224)], 1000)
}

/// A small classifier for the demo and fast tests: input `input` `[N,3,32,32]` f32 (the batch
/// dimension is symbolic, so loading fixes it to 1), two 3×3 convolutions with ReLU, global
/// average pooling, Flatten and a Gemm to 10 classes (`logits`). About 7 KB.
pub fn tiny(seed: u64) -> Vec<u8> {
    let mut g = Builder::new(seed);
    let x = g.conv("input", 3, 8, 3, 1, 1, Act::Relu);
    let x = g.conv(&x, 8, 16, 3, 2, 1, Act::Relu);
    g.classifier(&x, 16, 10);
    g.finish("tiny", &[None, Some(3), Some(32), Some(32)], 10)
}

/// A tensor of `shape` with values uniform in [0, 1) from `seed` (an image-like input).
/// Errors only when `shape` is past the [`Tensor`] caps.
pub fn sample_input(shape: &[usize], seed: u64) -> Result<Tensor, RuntimeError> {
    let mut rng = XorShift::new(seed);
    let data = (0..element_count(shape)?).map(|_| rng.unit()).collect();
    Tensor::new(shape.to_vec(), data)
}

/// xorshift64*: tiny, deterministic across platforms, good enough for weights.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Mix the seed so that 0 (a fixed point of xorshift) and nearby seeds differ.
        let mixed = (seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        XorShift(if mixed == 0 { 1 } else { mixed })
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1), 24 bits.
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in [-bound, bound).
    fn symmetric(&mut self, bound: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * bound
    }
}

/// What follows a convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Linear,
    Relu,
    /// `Clip(x, 0, 6)`.
    Relu6,
}

/// Accumulates nodes and initializers; names values `t0`, `t1`, ….
#[derive(Debug)]
struct Builder {
    rng: XorShift,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next_id: usize,
    relu6_bounds: Option<(String, String)>,
}

impl Builder {
    fn new(seed: u64) -> Builder {
        Builder { rng: XorShift::new(seed), nodes: vec![], initializers: vec![], next_id: 0, relu6_bounds: None }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    /// An f32 initializer.
    fn constant(&mut self, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh("w");
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..TensorProto::default()
        });
        name
    }

    /// An f32 initializer uniform in [-bound, bound).
    fn random(&mut self, dims: &[usize], bound: f32) -> String {
        let values: Vec<f32> = (0..dims.iter().product()).map(|_| self.rng.symmetric(bound)).collect();
        self.constant(dims, &values)
    }

    /// One node with one fresh output; returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let output = self.fresh("t");
        self.node_to(op, inputs, attribute, output)
    }

    /// One node writing `output`; returns it.
    fn node_to(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, output: String) -> String {
        self.nodes.push(NodeProto {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute,
            ..NodeProto::default()
        });
        output
    }

    /// A `k`×`k` convolution with bias, "same" padding, then `act`. `group == c_in` makes it
    /// depthwise. Weights are He-uniform for fan-in `c_in / group * k * k` (variance 2/fan-in
    /// before a ReLU, 1/fan-in for the linear projections).
    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, x: &str, c_in: usize, c_out: usize, k: usize, stride: usize, group: usize, act: Act) -> String {
        let fan_in = c_in / group * k * k;
        let gain = if act == Act::Linear { 3.0 } else { 6.0 };
        let w = self.random(&[c_out, c_in / group, k, k], (gain / fan_in as f32).sqrt());
        let b = self.random(&[c_out], 0.05);
        let pad = (k / 2) as i64;
        let (k, stride) = (k as i64, stride as i64);
        let y = self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[stride, stride]),
                ints("pads", &[pad, pad, pad, pad]),
                int("group", group as i64),
            ],
        );
        match act {
            Act::Linear => y,
            Act::Relu => self.node("Relu", &[&y], vec![]),
            Act::Relu6 => {
                let (lo, hi) = match &self.relu6_bounds {
                    Some(bounds) => bounds.clone(),
                    None => {
                        let bounds = (self.constant(&[], &[0.0]), self.constant(&[], &[6.0]));
                        self.relu6_bounds = Some(bounds.clone());
                        bounds
                    }
                };
                self.node("Clip", &[&y, &lo, &hi], vec![])
            }
        }
    }

    /// GlobalAveragePool, Flatten, Gemm to `classes` values named `logits`.
    fn classifier(&mut self, x: &str, channels: usize, classes: usize) {
        let pooled = self.node("GlobalAveragePool", &[x], vec![]);
        let flat = self.node("Flatten", &[&pooled], vec![int("axis", 1)]);
        let w = self.random(&[classes, channels], (3.0 / channels as f32).sqrt());
        let b = self.random(&[classes], 0.05);
        self.node_to("Gemm", &[&flat, &w, &b], vec![int("transB", 1)], "logits".into());
    }

    /// The encoded model: one f32 input `input` of `input_dims` (`None`: the symbolic `N`) and
    /// the output `logits`, `[batch, classes]`.
    fn finish(self, name: &str, input_dims: &[Option<usize>], classes: usize) -> Vec<u8> {
        let graph = GraphProto {
            name: name.into(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info("input", input_dims)],
            output: vec![value_info("logits", &[input_dims[0], Some(classes)])],
            doc_string: "generated by enclava-runtime with random weights".into(),
            ..GraphProto::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "enclava-runtime".into(),
            graph: Some(graph),
            ..ModelProto::default()
        }
        .encode_to_vec()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: value, ..AttributeProto::default() }
}

/// An f32 tensor value; `None` dimensions are the symbolic `N`.
fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v as i64),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}
