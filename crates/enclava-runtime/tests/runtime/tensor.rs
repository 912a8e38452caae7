//! `Tensor`: constructor checks, the JSON form, `argmax` and `top_k`.

use enclava_runtime::{RuntimeError, Tensor};

#[test]
fn constructor_checks_shape_and_caps() {
    let t = Tensor::new(vec![2, 3], vec![0.0; 6]).expect("2x3 holds 6");
    assert_eq!((t.shape(), t.data().len()), (&[2usize, 3][..], 6));
    assert_eq!(Tensor::new(vec![], vec![7.0]).expect("a scalar holds 1").data(), &[7.0]);
    assert_eq!(
        Tensor::new(vec![2, 3], vec![0.0; 5]).expect_err("5 != 6").to_string(),
        "invalid tensor: shape [2,3] holds 6 elements but data has 5"
    );
    let overflow = Tensor::new(vec![1 << 40, 1 << 40], vec![]).expect_err("overflows");
    assert!(overflow.to_string().contains("elements allowed"), "{overflow}");
    let huge = Tensor::zeros(vec![Tensor::MAX_ELEMENTS + 1]).expect_err("past the cap");
    assert!(matches!(huge, RuntimeError::Tensor(_)));
    let deep = Tensor::zeros(vec![1; Tensor::MAX_RANK + 1]).expect_err("rank past the cap");
    assert!(deep.to_string().contains("rank 17"), "{deep}");
}

#[test]
fn json_round_trip() {
    let t = Tensor::new(vec![2, 2], vec![1.0, -2.5, 0.125, 3e-8]).expect("valid");
    let json = serde_json::to_string(&t).expect("serializes");
    assert_eq!(json, r#"{"shape":[2,2],"data":[1.0,-2.5,0.125,3e-8]}"#);
    let back: Tensor = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back, t);
    let scalar: Tensor = serde_json::from_str(r#"{"shape":[],"data":[4]}"#).expect("scalar");
    assert_eq!(scalar.data(), &[4.0]);
}

#[test]
fn invalid_json_is_refused() {
    for (json, needle) in [
        (r#"{"shape":[2,3],"data":[1,2,3]}"#, "shape [2,3] holds 6 elements but data has 3"),
        (r#"{"shape":[1],"data":[1,2]}"#, "holds 1 elements but data has 2"),
        (r#"{"shape":[4294967296,4294967296,4294967296],"data":[]}"#, "elements allowed"),
        (r#"{"shape":[1],"data":[1],"dtype":"f32"}"#, "unknown field `dtype`"),
        (r#"{"shape":[1]}"#, "missing field `data`"),
        (r#"{"shape":[-1],"data":[]}"#, "invalid value"),
        (r#"{"shape":[1],"data":["x"]}"#, "invalid type"),
        (r#"{"shape":[1],"data":[null]}"#, "invalid type"),
    ] {
        let err = serde_json::from_str::<Tensor>(json).expect_err(json).to_string();
        assert!(err.contains(needle), "{json}: {err}");
    }
}

#[test]
fn argmax_and_top_k() {
    let t = Tensor::new(vec![1, 6], vec![0.5, f32::NAN, 2.0, -1.0, 2.0, 1.5]).expect("valid");
    assert_eq!(t.argmax(), Some(2), "first of the tied maxima; NaN is smallest");
    assert_eq!(t.top_k(3), vec![(2, 2.0), (4, 2.0), (5, 1.5)]);
    assert_eq!(t.top_k(10).len(), 6);
    assert_eq!(t.top_k(10)[5].0, 1, "NaN last");
    assert_eq!(Tensor::zeros(vec![0]).expect("empty").argmax(), None);
}
