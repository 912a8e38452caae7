//! `Model`: loading the generated models, running them, shape checks, malformed and unsupported
//! models, and concurrent runs on one shared model.

use std::time::Instant;

use enclava_runtime::generate::{mobilenet_v2, sample_input, tiny};
use enclava_runtime::{Model, RuntimeError, Tensor};
use prost::Message;
use tract_onnx::pb;

use crate::Rng;

fn run_one(model: &Model, input: &Tensor) -> Tensor {
    let mut outputs = model.run(input).expect("runs");
    assert_eq!(outputs.len(), 1);
    outputs.remove(0)
}

#[test]
fn model_is_send_sync_and_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Model>();
}

#[test]
fn tiny_loads_runs_and_is_deterministic() {
    let bytes = tiny(1);
    assert!(bytes.len() < 50_000, "tiny is {} bytes", bytes.len());
    assert_eq!(bytes, tiny(1), "generation is deterministic");
    assert_ne!(bytes, tiny(2), "the seed matters");

    let model = Model::load(&bytes).expect("tiny loads");
    assert_eq!(model.input_shape(), &[1, 3, 32, 32], "symbolic batch fixed to 1");
    assert_eq!(model.memory_estimate(), bytes.len());
    let input = sample_input(&[1, 3, 32, 32], 7).expect("input");
    let out = run_one(&model, &input);
    assert_eq!(out.shape(), &[1, 10]);
    assert!(out.data().iter().all(|v| v.is_finite()), "{out:?}");
    assert!(out.data().iter().any(|&v| v != out.data()[0]), "outputs vary: {out:?}");
    assert_eq!(run_one(&model, &input), out, "same model, same input, same output");
    let reloaded = Model::load(&bytes).expect("loads again");
    assert_eq!(run_one(&reloaded, &input), out, "a second load gives the same output");
    let other = sample_input(&[1, 3, 32, 32], 8).expect("input");
    assert_ne!(run_one(&model, &other), out, "the output depends on the input");
}

#[test]
fn mobilenet_v2_loads_and_runs() {
    let started = Instant::now();
    let bytes = mobilenet_v2(1);
    let generated = started.elapsed();
    let model = Model::load(&bytes).expect("mobilenet_v2 loads");
    let loaded = started.elapsed();
    assert_eq!(model.input_shape(), &[1, 3, 224, 224]);
    let out = run_one(&model, &sample_input(&[1, 3, 224, 224], 1).expect("input"));
    eprintln!(
        "mobilenet_v2: {} bytes; generate {generated:?}, load {:?}, one run {:?}",
        bytes.len(),
        loaded - generated,
        started.elapsed() - loaded
    );
    assert_eq!(out.shape(), &[1, 1000]);
    assert!(out.data().iter().all(|v| v.is_finite()), "finite");
    let spread = out.data().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
        - out.data().iter().fold(f32::INFINITY, |a, &b| a.min(b));
    assert!(spread > 1e-3, "outputs vary (spread {spread})");
    assert!(out.argmax().is_some());

    let wrong = Tensor::zeros(vec![1, 3, 10, 10]).expect("small");
    let err = model.run(&wrong).expect_err("wrong shape");
    assert_eq!(err.to_string(), "input has shape [1,3,10,10]; model expects [1,3,224,224]");
}

#[test]
fn mobilenet_v2_has_the_real_architecture() {
    let proto = pb::ModelProto::decode(&mobilenet_v2(1)[..]).expect("decodes");
    assert_eq!(proto.opset_import[0].version, 13);
    let graph = proto.graph.expect("graph");
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    let group = |n: &pb::NodeProto| n.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i);
    let depthwise = graph.node.iter().filter(|n| n.op_type == "Conv" && group(n) > 1).count();
    // Stem, 17 blocks (16 expand + 17 depthwise + 17 project), last 1x1: 52 convolutions.
    assert_eq!((count("Conv"), depthwise), (52, 17));
    // ReLU6 after the stem, each expansion and depthwise, and the last 1x1.
    assert_eq!(count("Clip"), 35);
    // Residuals where stride 1 and channels in == out: 1 + 2 + 3 + 2 + 2.
    assert_eq!(count("Add"), 10);
    assert_eq!((count("GlobalAveragePool"), count("Flatten"), count("Gemm")), (1, 1, 1));
    let params: i64 = graph.initializer.iter().map(|w| w.dims.iter().product::<i64>()).sum();
    // torchvision's 3 504 872, less one of batch norm's two per-channel parameters (17 056
    // channels; the other is our conv bias), plus Clip's two scalar bounds.
    assert_eq!(params, 3_504_872 - 17_056 + 2);
}

#[test]
fn input_shape_mismatch_is_refused() {
    let model = Model::load(&tiny(1)).expect("loads");
    for shape in [vec![1, 3, 10, 10], vec![2, 3, 32, 32], vec![3, 32, 32], vec![]] {
        let err = model.run(&Tensor::zeros(shape.clone()).expect("small")).expect_err("wrong shape");
        assert_eq!(err, RuntimeError::InputShape { got: shape, expected: vec![1, 3, 32, 32] });
    }
}

fn load_error(bytes: &[u8]) -> String {
    match Model::load(bytes) {
        Err(RuntimeError::Load(message)) => message,
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn malformed_bytes_are_load_errors() {
    let mut rng = Rng::new(1);
    for len in [0, 1, 7, 100, 4096] {
        let message = load_error(&rng.bytes(len));
        assert!(!message.is_empty());
    }
    assert_eq!(load_error(b""), "model proto has no graph");
    assert!(load_error(b"\xff\xff\xff").starts_with("not an ONNX model"));
    let bytes = tiny(1);
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        load_error(&bytes[..cut]);
    }
}

/// Seeded mutations of the tiny model: each is an error or a model that runs. `load` and `run`
/// turn a panic inside tract into an error saying so; none is expected (5 000 rounds found none
/// once outputs naming no value were refused before tract sees them).
#[test]
fn mutated_models_never_panic() {
    const ROUNDS: usize = 200;
    let bytes = tiny(3);
    let input = sample_input(&[1, 3, 32, 32], 1).expect("input");
    let mut rng = Rng::new(99);
    let (mut loaded, mut tract_panics) = (0, Vec::new());
    for _ in 0..ROUNDS {
        // The graph's structure follows the weights, so the whole file is the hot zone.
        let result = Model::load(&rng.mutate(&bytes, bytes.len())).and_then(|model| {
            loaded += 1;
            match model.input_shape() == input.shape() {
                true => model.run(&input).map(drop),
                false => Ok(()),
            }
        });
        if let Err(RuntimeError::Load(m) | RuntimeError::Run(m)) = result
            && m.contains("tract panicked")
        {
            tract_panics.push(m);
        }
    }
    assert!(loaded > 0, "some mutations still load");
    assert!(tract_panics.is_empty(), "{tract_panics:#?}");
}

fn tiny_proto() -> pb::ModelProto {
    pb::ModelProto::decode(&tiny(1)[..]).expect("tiny decodes")
}

fn edit_input(edit: impl FnOnce(&mut pb::type_proto::Tensor)) -> Vec<u8> {
    let mut proto = tiny_proto();
    let graph = proto.graph.as_mut().expect("graph");
    let Some(pb::type_proto::Value::TensorType(t)) = graph.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        panic!("tiny's input is a tensor");
    };
    edit(t);
    proto.encode_to_vec()
}

#[test]
fn unsupported_models_say_why() {
    let int_input = edit_input(|t| t.elem_type = pb::tensor_proto::DataType::Int64 as i32);
    assert_eq!(load_error(&int_input), "model input 'input' is INT64; only FLOAT (f32) inputs are supported");

    let symbolic = edit_input(|t| {
        let dim = &mut t.shape.as_mut().expect("shape").dim[2];
        dim.value = Some(pb::tensor_shape_proto::dimension::Value::DimParam("height".into()));
    });
    assert_eq!(
        load_error(&symbolic),
        "model input 'input' dimension 2 is symbolic ('height'); only the batch dimension may be symbolic"
    );

    let huge = edit_input(|t| {
        t.shape.as_mut().expect("shape").dim[2].value =
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(1 << 40));
    });
    assert!(load_error(&huge).contains("too large"));

    let mut proto = tiny_proto();
    let graph = proto.graph.as_mut().expect("graph");
    let second = graph.input[0].clone();
    graph.input.push(pb::ValueInfoProto { name: "second".into(), ..second });
    assert_eq!(load_error(&proto.encode_to_vec()), "model has 2 inputs; exactly one is supported");

    let mut proto = tiny_proto();
    let weight = &mut proto.graph.as_mut().expect("graph").initializer[0];
    weight.raw_data.clear();
    weight.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    weight.external_data = vec![pb::StringStringEntryProto { key: "location".into(), value: "/etc/passwd".into() }];
    assert!(load_error(&proto.encode_to_vec()).contains("external data is not supported"));

    let mut proto = tiny_proto();
    proto.graph.as_mut().expect("graph").node[0].op_type = "NoSuchOp".into();
    let message = load_error(&proto.encode_to_vec());
    assert!(message.contains("NoSuchOp"), "{message}");

    let mut proto = tiny_proto();
    proto.graph.as_mut().expect("graph").output[0].name = "nowhere".into();
    assert_eq!(load_error(&proto.encode_to_vec()), "model output 'nowhere' is not produced by any node");
}

#[test]
fn concurrent_runs_on_one_model_agree() {
    let model = Model::load(&tiny(5)).expect("loads");
    let inputs: Vec<Tensor> = (0..8).map(|seed| sample_input(&[1, 3, 32, 32], seed).expect("input")).collect();
    let expected: Vec<Tensor> = inputs.iter().map(|input| run_one(&model, input)).collect();
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let (model, inputs, expected) = (&model, &inputs, &expected);
            scope.spawn(move || {
                for round in 0..25 {
                    let i = (thread + round) % inputs.len();
                    assert_eq!(run_one(model, &inputs[i]), expected[i], "thread {thread} round {round}");
                }
            });
        }
    });
}
